"""Execute a plan: shared upstream stages first, then one job per trained policy (train + its evaluations).

Resume is the default: runs with an ``ok`` record are skipped, stages already in the cache are reused, and
a run's record is written the moment its evaluation finishes. A failing stage fails only the runs that
depend on it; the suite goes on and the failure is recorded.
"""

from __future__ import annotations

import json
import os
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cache import ArtifactStore, atomic_write_text
from .errors import UserError
from .logs import configure_worker, log, progress_logger
from .plan import Plan, Run, Stage
from .plugins import get_registry
from .records import SCHEMA_VERSION, git_sha, load_records, machine, write_jsonl, write_record
from .stages import StageResult, run_stage, versions

UPSTREAM_KINDS = ("dataset", "grounding", "rollouts")
REFERENCE_COPY = "reference.csv"


@dataclass
class PlanStatus:
    """What a run of ``plan`` into a results directory would do with each run, before it starts."""

    done: list[Run] = field(default_factory=list)
    failed_earlier: list[Run] = field(default_factory=list)
    todo: list[Run] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # finished runs recorded there that this plan does not have


def plan_status(plan: Plan, output: Path, rerun_failed: bool = False) -> PlanStatus:
    existing = ({r["run_id"]: r for r in load_records(output, current_only=False)}
                if (Path(output) / "records").is_dir() else {})
    status = PlanStatus()
    for run in plan.runs:
        state = (existing.get(run.run_id) or {}).get("status")
        if state == "ok":
            status.done.append(run)
        elif state == "failed" and not rerun_failed:
            status.failed_earlier.append(run)
        else:
            status.todo.append(run)
    # Failed records of runs no longer planned (a config fixed after a failure) hold no result to hide.
    planned = {r.run_id for r in plan.runs}
    status.foreign = sorted(k for k, r in existing.items() if k not in planned and r.get("status") == "ok")
    return status


def refuse_foreign(status: PlanStatus, output: Path) -> None:
    """A results directory holds one plan's records: a run may add runs to it, never hide any."""
    if status.foreign:
        raise UserError(f"holds {len(status.foreign)} finished run(s) that are not in this plan (another suite "
                        "or other settings); running here would rewrite its plan, tables and timings. Choose "
                        "another output directory", file=output, field="--output")


@dataclass
class RunSummary:
    planned: int = 0
    skipped_ok: int = 0
    skipped_failed: int = 0
    ok: int = 0
    failed: int = 0
    stages_built: int = 0
    stages_cached: int = 0
    wall_s: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = "; ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)
    return f"{type(exc).__name__}: {exc} [{where}]"


def _named(stage: Stage) -> str:
    label = stage.label.removeprefix(f"{stage.kind} ")  # eval labels already start with their kind
    return f"{stage.kind:9s} {label}"


def execute_chain(payload: dict[str, Any]) -> list[StageResult]:
    """Worker entry point: build stages in order; after a failure the rest fail as its dependents.

    Each stage logs a line when it starts and when it ends (kind, label, seconds), from the process that
    builds it, so the lines appear as the work happens whichever executor runs the chain.
    """
    configure_worker()
    store = ArtifactStore(payload["root"])
    progress = payload.get("progress")
    results: list[StageResult] = []
    failed: str | None = None
    for stage in payload["stages"]:
        if failed is not None:
            results.append(StageResult(stage.key, stage.kind, False, False, f"upstream stage failed: {failed}"))
            continue
        was_done = store.done(stage.kind, stage.key)
        if not was_done:
            log.info("start  %s", _named(stage))
        t0 = time.time()
        try:
            run_stage(stage, store, progress(stage) if progress else progress_logger(stage.label))
            wall = time.time() - t0
            if was_done:
                log.debug("cached %s", _named(stage))
            else:
                log.info("built  %s in %.1f s", _named(stage), wall)
            results.append(StageResult(stage.key, stage.kind, True, not was_done, wall_s=wall))
        except Exception as exc:  # recorded, never fatal for the suite
            failed = f"{stage.label}: {_error_text(exc)}"
            log.warning("FAILED %s after %.1f s: %s", _named(stage), time.time() - t0, _error_text(exc))
            results.append(StageResult(stage.key, stage.kind, False, False, _error_text(exc),
                                       wall_s=time.time() - t0))
    return results


class Runner:
    def __init__(self, plan: Plan, output: Path, store: ArtifactStore, executor: str = "local", jobs: int = 1,
                 rerun_failed: bool = False,
                 progress_factory: Callable[[Stage], Callable[[int, int], None]] | None = None):
        self.plan = plan
        self.output = Path(output)
        self.store = store
        self.executor = get_registry().get("executors", executor, field="--executor")()
        self.jobs = max(1, int(jobs))
        self.rerun_failed = rerun_failed
        self.progress_factory = progress_factory
        self.stage_errors: dict[str, str] = {}
        self.started_at = _now()
        self.invocation_id = uuid.uuid4().hex  # two invocations may start in the same second
        self._t0 = time.time()
        self.git_sha = git_sha()
        self.versions = versions()
        self.machine = machine()

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _write_plan(self) -> None:
        s = self.plan.loaded.suite
        if s.report.reference:
            # A copy travels with the results, so `report` works wherever the results directory goes.
            ref = self.plan.loaded.resolve(s.report.reference)
            if ref.is_file():
                atomic_write_text(self.output / REFERENCE_COPY, ref.read_text())
        # Relative to the results directory, so a plan names no path of the machine that ran it.
        suite_file = os.path.relpath(Path(self.plan.loaded.path).resolve(), self.output.resolve())
        atomic_write_text(self.output / "plan.json", json.dumps({
            "suite": s.suite, "suite_version": s.version, "suite_file": suite_file,
            "config": self.plan.loaded.merged, "run_ids": [r.run_id for r in self.plan.runs],
            "planned_at": _now()}, indent=2, sort_keys=True, default=str))

    # -- execution --------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        t0 = self._t0 = time.time()
        status = plan_status(self.plan, self.output, self.rerun_failed)
        refuse_foreign(status, self.output)
        summary = RunSummary(planned=len(self.plan.runs), skipped_ok=len(status.done),
                             skipped_failed=len(status.failed_earlier))
        todo = status.todo
        if summary.skipped_ok or summary.skipped_failed:
            log.info(f"resuming: {summary.skipped_ok} run(s) already done, {summary.skipped_failed} failed earlier"
                     + (" (use --rerun-failed to retry them)" if summary.skipped_failed else ""))
        if not todo and (self.output / "plan.json").is_file():
            # Nothing to run: what is there (plan, timings, records.jsonl, tables) stays as it was written.
            summary.records = load_records(self.output, current_only=True)
            summary.wall_s = time.time() - t0
            return summary
        self.output.mkdir(parents=True, exist_ok=True)
        self._write_plan()
        needed = {key for run in todo for key in run.stages.values()}
        log.info("%d run(s) to do over %d stage(s), %d of them not in the cache yet", len(todo), len(needed),
                 sum(not self.store.done(self.plan.stages[k].kind, k) for k in needed))

        # Phase 1: shared upstream stages, kind by kind (each kind's stages are independent).
        for kind in UPSTREAM_KINDS:
            stages = [s for s in self.plan.stages_of(kind) if s.key in needed]
            ready = []
            for st in stages:
                bad = [self.stage_errors[d] for d in st.deps.values() if d in self.stage_errors]
                if bad:
                    self.stage_errors[st.key] = f"upstream stage failed: {bad[0]}"
                else:
                    ready.append(st)
            self._execute([[s] for s in ready], summary, lambda results: None)

        # Phase 2: one job per trained policy: train, then evaluate it on each level; records as they finish.
        by_train: dict[str, list[Run]] = defaultdict(list)
        for run in todo:
            by_train[run.stages["train"]].append(run)
        chains = []
        for train_key, runs in by_train.items():
            upstream_bad = [self.stage_errors[k] for r in runs[:1] for kind, k in r.stages.items()
                            if kind in UPSTREAM_KINDS and k in self.stage_errors]
            if upstream_bad:
                for run in runs:
                    self._finish(run, summary, f"upstream stage failed: {upstream_bad[0]}")
                continue
            chains.append([self.plan.stages[train_key]] + [self.plan.stages[r.stages["eval"]] for r in runs])

        def on_chain(results: list[StageResult]) -> None:
            train_res = results[0]
            for res in results[1:]:
                run = next(r for r in by_train[train_res.key] if r.stages["eval"] == res.key)
                self._finish(run, summary, None if res.ok else res.error)

        self._execute(chains, summary, on_chain)
        summary.wall_s = time.time() - t0
        self._write_timings(summary, finished=True)
        current = load_records(self.output, current_only=True)
        atomic_write_text(self.output / "records.jsonl", write_jsonl(current))
        summary.records = current
        return summary

    def _execute(self, chains: list[list[Stage]], summary: RunSummary,
                 on_done: Callable[[list[StageResult]], None]) -> None:
        if not chains:
            return
        payloads = [{"stages": chain, "root": str(self.store.root),
                     "progress": self.progress_factory if (self.jobs == 1 and self.executor.name == "local") else None} for chain in chains]
        for results in self.executor.map(execute_chain, payloads, self.jobs):
            for res in results:
                if res.ok:
                    summary.stages_built += int(res.built)
                    summary.stages_cached += int(not res.built)
                else:
                    self.stage_errors[res.key] = res.error or "failed"
            on_done(results)

    def _write_timings(self, summary: RunSummary, finished: bool) -> None:
        """``timings.json``: wall time of every planned stage that is built, and of each invocation.

        Stage times come from the cache manifests, so a resumed suite still reports the stages an earlier
        invocation built; invocations accumulate (a resumed suite's total is their sum). It is rewritten
        after every run, so an invocation that is killed keeps its time up to its last finished run.
        """
        path = self.output / "timings.json"
        try:
            previous = json.loads(path.read_text()) if path.is_file() else {}
            invocations = list(previous.get("invocations", []))
            earlier = {st.get("key"): st.get("wall_s") for st in previous.get("stages", []) if isinstance(st, dict)}
        except (json.JSONDecodeError, AttributeError, TypeError):
            invocations, earlier = [], {}  # a damaged timings file must not stop a finished suite from reporting
        invocations = [i for i in invocations if i.get("id") != self.invocation_id]
        invocations.append({"id": self.invocation_id, "started_at": self.started_at,
                            "wall_s": round(time.time() - self._t0, 3), "finished": finished, "jobs": self.jobs,
                            "executor": self.executor.name, "runs_done": summary.ok, "runs_failed": summary.failed,
                            "stages_built": summary.stages_built, "stages_cached": summary.stages_cached,
                            "machine": self.machine, "git_sha": self.git_sha})
        # A stage built into another cache (the results came from elsewhere) keeps the time recorded then.
        stages = []
        for st in self.plan.stages.values():
            wall = (self.store.manifest(st.kind, st.key).get("wall_s") if self.store.done(st.kind, st.key)
                    else earlier.get(st.key))
            stages.append({"kind": st.kind, "label": st.label, "key": st.key, "wall_s": wall})
        atomic_write_text(path, json.dumps({"invocations": invocations, "stages": stages}, indent=2))

    def _finish(self, run: Run, summary: RunSummary, error: str | None) -> None:
        record = self.make_record(run, error)
        write_record(self.output, record)
        if record["status"] == "ok":
            summary.ok += 1
            log.info("run ok: %s: success %.3f", run.describe(), record["success_rate"])
        else:
            summary.failed += 1
            log.warning("run FAILED: %s: %s", run.describe(), record["error"])
        self._write_timings(summary, finished=False)

    def make_record(self, run: Run, error: str | None) -> dict[str, Any]:
        s = self.plan.loaded.suite
        entry = next(a for a in s.algorithms if a.row == run.row)
        algo_spec = self.plan.stages[run.stages["train"]].spec["algorithm"]
        train_spec = self.plan.stages[run.stages["train"]].spec
        gspec = self.plan.stages[run.stages["grounding"]].spec if "grounding" in run.stages else None
        rec: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "run_id": run.run_id, "suite": s.suite, "suite_version": s.version,
            "env": run.env, "level": run.level, "algorithm": run.row, "algorithm_name": run.algorithm,
            "algorithm_config": {"type": algo_spec["name"], "params": algo_spec["config"]},
            "algorithm_version": algo_spec["version"], "reference_name": entry.reference or run.row,
            "row_index": [a.row for a in s.algorithms].index(run.row), "levels": self.plan.levels,
            "data_level": self.plan.data_level,
            "variant": run.variant, "kalm": run.variant == "kalm", "imaginary_level": run.imaginary_level,
            "seed": run.seed, "eval_seed": s.eval.seed, "replicate": list(self.plan.replicate),
            "stage_seeds": {kind: self.plan.stages[key].spec.get("seed") for kind, key in run.stages.items()},
            "train_steps": train_spec["steps"],
            "encoder": train_spec["encoder"]["name"], "data_keys": dict(run.stages),
            "llm_backend": gspec["backend"]["name"] if gspec else None,
            "llm_config": gspec["backend"]["config"] if gspec else None,
            "llm_tasks": [t["name"] for t in gspec["tasks"]] if gspec else None,
            "status": "ok" if error is None else "failed", "error": error,
            "git_sha": self.git_sha, "harness_version": __version__, "versions": self.versions,
            "machine": self.machine, "started_at": self.started_at, "finished_at": _now(),
        }
        timings = {}
        for kind, key in run.stages.items():
            if self.store.done(kind, key):
                m = self.store.manifest(kind, key)
                timings[kind] = m.get("wall_s")
                if kind == "train":
                    rec["train_log"] = m.get("train_log", [])
                if kind == "grounding":
                    rec["llm_diagnostics"] = m.get("diagnostics", {})
                if kind == "rollouts":
                    rec["rollouts"] = {k: m.get(k) for k in ("n_episodes", "n_transitions", "n_proposed",
                                                             "goal_match_rate", "realistic_rate",
                                                             "realistic_goal_match_rate", "keep", "realistic",
                                                             "attrs")}
                    rec["rollout_source"] = self.plan.stages[key].spec["source"]["name"]
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
        if error is None and "success_rate" not in rec:
            rec.update(status="failed", error="evaluation artifact missing")
        return rec
