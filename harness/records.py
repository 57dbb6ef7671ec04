"""One JSON record per run, written atomically; loading and export (JSONL / CSV).

A results directory holds ``records/<run_id>.json`` (the source of truth, one file per run, written when
the run finishes), ``plan.json`` (the run ids of the suite as last planned) and ``records.jsonl`` (the
current plan's records, rebuilt at the end of ``kalm-bench run``).
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError, model_validator

from .cache import ArtifactStore, DamagedEntry, atomic_write_text
from .errors import UserError
from .suite import KALM

if TYPE_CHECKING:  # pragma: no cover
    from .plan import Plan, Run

SCHEMA_VERSION = 1


def build_record(plan: Plan, run: Run, store: ArtifactStore, error: str | None,
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """The record of one finished (or failed) run: what ran (suite, env, level, algorithm row and config,
    variant, LLM, encoder, every stage's key and seed), what came out (success over the scored checkpoints,
    the curve, returns, lengths, rollout statistics, LLM diagnostics, stage wall times) and ``provenance``
    (git SHA, versions, machine, times). ``error`` (one line) marks it failed."""
    s = plan.loaded.suite
    entry = next(a for a in s.algorithms if a.row == run.row)
    algo_spec = plan.stages[run.stages["train"]].spec["algorithm"]
    train_spec = plan.stages[run.stages["train"]].spec
    gspec = plan.stages[run.stages["grounding"]].spec if "grounding" in run.stages else None
    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "run_id": run.run_id, "suite": s.suite, "suite_version": s.version,
        "env": run.env, "level": run.level, "algorithm": run.row, "algorithm_name": run.algorithm,
        "algorithm_config": {"type": algo_spec["name"], "params": algo_spec["config"]},
        "algorithm_version": algo_spec["version"], "reference_name": entry.reference or run.row,
        "row_index": [a.row for a in s.algorithms].index(run.row), "levels": plan.levels,
        "data_level": plan.data_level,
        "variant": run.variant, "kalm": run.variant == KALM, "imaginary_level": run.imaginary_level,
        "seed": run.seed, "eval_seed": s.eval.seed, "replicate": list(plan.replicate),
        "stage_seeds": {kind: plan.stages[key].spec.get("seed") for kind, key in run.stages.items()},
        "train_steps": train_spec["steps"],
        "encoder": train_spec["encoder"]["name"], "encoder_config": train_spec["encoder"]["config"],
        "components": run_components(plan, run), "data_keys": dict(run.stages),
        "llm_backend": gspec["backend"]["name"] if gspec else None,
        "llm_config": gspec["backend"]["config"] if gspec else None,
        "llm_tasks": [t["name"] for t in gspec["tasks"]] if gspec else None,
        "status": "ok" if error is None else "failed", "error": error,
        **provenance,
    }
    timings = {}
    for kind, key in run.stages.items():
        if store.done(kind, key):
            try:
                m = store.manifest(kind, key)
            except DamagedEntry as exc:
                if error is None:
                    rec.update(status="failed", error=str(exc))
                continue
            timings[kind] = m.get("wall_s")
            if kind == "train":
                rec["train_log"] = m.get("train_log", [])
            if kind == "diagnostics":
                rec["llm_diagnostics"] = m.get("diagnostics", {})
            if kind == "rollouts":
                rec["rollouts"] = {k: m.get(k) for k in ("n_episodes", "n_transitions", "n_proposed",
                                                         "goal_match_rate", "realistic_rate",
                                                         "realistic_goal_match_rate", "keep", "realistic",
                                                         "attrs")}
                rec["rollout_source"] = plan.stages[key].spec["source"]["name"]
            if kind == "eval":
                curve = m["curve"]
                k = min(s.eval.last_k, len(curve))
                last = [c["success_rate"] for c in curve[-k:]]
                rec.update({
                    "curve": curve, "n_eval_episodes": m["n_cases"],
                    "success_rate": float(np.mean(last)), "success_rate_last": curve[-1]["success_rate"],
                    "success_rate_best": max(c["success_rate"] for c in curve),
                    "return_mean": float(np.mean([c["return_mean"] for c in curve[-k:]])),
                    "length_mean": float(np.mean([c["length_mean"] for c in curve[-k:]])),
                    "last_k": k,
                })
    rec["timings_s"] = timings
    rec["wall_s"] = float(sum(v for v in timings.values() if v))
    if rec["error"] is None and "success_rate" not in rec:
        rec.update(status="failed", error="evaluation artifact missing")
    return rec


# A record names a component by its role where the stage-spec section's name says less.
_ROLE_OF_SECTION = {"backend": "llm_backend", "source": "rollout_source"}


def run_components(plan: Plan, run: Run) -> dict[str, dict[str, Any]]:
    """Role → ``{type, params, version, plugin, distribution, distribution_version}`` of every component the
    run's stages name (env, algorithm, encoder, and where used the LLM backend and rollout source)."""
    from .plugins import get_registry
    from .stages import COMPONENT_SECTIONS

    registry = get_registry()
    out: dict[str, dict[str, Any]] = {}
    for kind in ("eval", "train", "grounding", "rollouts", "dataset"):  # eval's env has every option
        if kind not in run.stages:
            continue
        spec = plan.stages[run.stages[kind]].spec
        for section, reg_kind in COMPONENT_SECTIONS.items():
            role = _ROLE_OF_SECTION.get(section, section)
            comp = spec.get(section)
            if role in out or not isinstance(comp, dict) or "name" not in comp:
                continue
            entry: dict[str, Any] = {"type": comp["name"], "params": comp.get("config", {}),
                                     "version": comp.get("version")}
            if comp["name"] in registry.names(reg_kind):
                info = registry.plugin_of(reg_kind, comp["name"])
                entry.update(plugin=info.name, distribution=info.dist, distribution_version=info.version)
            out[role] = entry
    return out


def record_path(results: Path, run_id: str) -> Path:
    return results / "records" / f"{run_id}.json"


def write_record(results: Path, record: dict[str, Any]) -> Path:
    path = record_path(results, record["run_id"])
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=True))
    return path


class CurvePoint(BaseModel):
    model_config = ConfigDict(extra="allow")
    step: StrictInt
    success_rate: float
    return_mean: float | None = None
    length_mean: float | None = None


class Record(BaseModel):
    """The fields of a run record that tables, plots and exports read, with their types. A record may hold
    more (configs, diagnostics, provenance); those are kept as written."""

    model_config = ConfigDict(extra="allow")
    run_id: StrictStr
    suite: StrictStr
    env: StrictStr
    level: StrictStr
    algorithm: StrictStr
    variant: StrictStr | None = None
    seed: StrictInt
    status: Literal["ok", "failed"]
    error: StrictStr | None = None
    success_rate: float | None = None
    curve: list[CurvePoint] | None = None
    last_k: StrictInt | None = None
    levels: list[StrictStr] | None = None
    data_keys: dict[str, StrictStr] = {}

    @model_validator(mode="after")
    def _ok_has_a_result(self) -> Record:
        if self.status == "ok" and self.success_rate is None:
            raise ValueError("status is ok but success_rate is missing")
        return self


def check_record(rec: Any, path: Path | str, line: int | None = None) -> dict[str, Any]:
    """``rec`` if it is a well-formed record, else a one-line :class:`UserError` naming the file and field."""
    where = f"{path}" + (f" (line {line})" if line else "")
    if not isinstance(rec, dict):
        raise UserError(f"not a kalm-bench run record (a JSON {type(rec).__name__}, not an object)", file=where)
    try:
        Record.model_validate(rec)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or None
        raise UserError(f"not a valid run record: {err['msg']}", file=where, field=field) from None
    return rec


def read_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt record ({exc.msg} at line {exc.lineno})", file=path) from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"cannot read the record ({type(exc).__name__})", file=path) from None
    return check_record(rec, path)


def load_records(source: str | Path, current_only: bool = True) -> list[dict[str, Any]]:
    """Records from a results directory, a records.jsonl file, or a single record file."""
    source = Path(source)
    if source.is_file():
        if source.suffix == ".jsonl":
            out = []
            for n, line in enumerate(source.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"corrupt JSON on line {n} ({exc.msg})", file=source) from None
                    out.append(check_record(rec, source, n))
            return out
        return [read_record(source)]
    if not source.is_dir():
        raise UserError("no such results directory or records file", file=source)
    rec_dir = source / "records"
    if not rec_dir.is_dir():
        raise UserError("not a results directory (no records/ inside)", file=source)
    records = [read_record(p) for p in sorted(rec_dir.glob("*.json"))]
    plan = source / "plan.json"
    if current_only and plan.is_file():
        wanted = set(json.loads(plan.read_text()).get("run_ids", []))
        records = [r for r in records if r["run_id"] in wanted]
    return records


def write_jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)


CSV_COLUMNS = ["run_id", "suite", "suite_version", "env", "level", "algorithm", "algorithm_name", "variant", "kalm",
               "imaginary_level", "seed", "eval_seed", "n_eval_episodes", "success_rate", "success_rate_last",
               "success_rate_best", "return_mean", "length_mean", "status", "error", "llm_backend", "encoder",
               "train_steps", "wall_s", "git_sha", "harness_version", "started_at", "finished_at"]


def write_csv(records: list[dict[str, Any]]) -> str:
    """Tidy CSV: one row per run; nested fields (configs, curves, versions) as JSON strings."""
    extra = sorted({k for r in records for k in r} - set(CSV_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS + extra, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        row = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in r.items()}
        writer.writerow(row)
    return buf.getvalue()


def git_sha() -> str | None:
    """Commit of the kalm-bench checkout (with '-dirty' for local changes), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict[str, Any]:
    import os

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": _cpu_model(), "cpus": os.cpu_count()}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux): float results of the same seed differ between CPU models."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
