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
from typing import Any

from .cache import atomic_write_text
from .errors import UserError

SCHEMA_VERSION = 1


def record_path(results: Path, run_id: str) -> Path:
    return results / "records" / f"{run_id}.json"


def write_record(results: Path, record: dict[str, Any]) -> Path:
    path = record_path(results, record["run_id"])
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=True))
    return path


def read_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt record ({exc.msg} at line {exc.lineno})", file=path) from None
    if not isinstance(rec, dict) or "run_id" not in rec:
        raise UserError("not a kalm-bench run record (no run_id)", file=path, field="run_id")
    return rec


def load_records(source: str | Path, current_only: bool = True) -> list[dict[str, Any]]:
    """Records from a results directory, a records.jsonl file, or a single record file."""
    source = Path(source)
    if source.is_file():
        if source.suffix == ".jsonl":
            out = []
            for n, line in enumerate(source.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise UserError(f"corrupt JSON on line {n} ({exc.msg})", file=source) from None
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
            "cpus": os.cpu_count()}
