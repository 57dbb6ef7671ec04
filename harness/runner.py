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

from . import __version__
from .api import ItemLost
from .builtin.executors import LocalExecutor, emit
from .cache import ArtifactStore, DamagedEntry, atomic_write_text
from .errors import UserError
from .logs import configure_worker, log, progress_logger
from .plan import Plan, Run, Stage
from .plugins import get_registry
from .records import build_record, git_sha, load_records, machine, write_jsonl, write_record
from .stages import StageResult, build_stage, spec_components, versions

UPSTREAM_KINDS = ("dataset", "grounding", "diagnostics", "rollouts")
REFERENCE_COPY = "reference.csv"


@dataclass
class PlanStatus:
    """What a run of ``plan`` into a results directory would do with each run, before it starts."""

    done: list[Run] = field(default_factory=list)
    failed_earlier: list[Run] = field(default_factory=list)
    retried: list[Run] = field(default_factory=list)  # failed earlier, run again (--rerun-failed); also in todo
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
            if state == "failed":
                status.retried.append(run)
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
    retried: int = 0  # runs that had failed in an earlier invocation and ran again (--rerun-failed)
    ok: int = 0
    failed: int = 0
    stages_built: int = 0
    stages_cached: int = 0
    wall_s: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


ERROR_TEXT_LIMIT = 500


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT - 1] + "…"


def _frame_place(frame: Any, lineno: int) -> str:
    """``package/module.py:LINE in FUNCTION``, the file named by its module (no directory of this machine)."""
    module = str(frame.f_globals.get("__name__") or "")
    name = Path(frame.f_code.co_filename).name
    if name == "__init__.py" and module:
        prefix = module.replace(".", "/")
    else:
        prefix = module.rpartition(".")[0].replace(".", "/")
    return f"{prefix + '/' if prefix else ''}{name}:{lineno} in {frame.f_code.co_name}"


def _error_text(exc: BaseException) -> str:
    """What a run's record (and the log line of its failure) says about ``exc``: one line.

    A :class:`UserError` is its message, which already names the file and field. Any other exception is a
    bug to report: ``Type: message (at package/file.py:LINE in function)``, the innermost frame, and the
    innermost kalm-bench frame too when the innermost one is in another library.
    """
    if isinstance(exc, UserError):
        return _one_line(str(exc))
    frames = list(traceback.walk_tb(exc.__traceback__))
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not frames:
        return _one_line(message)
    places = [_frame_place(*frames[-1])]
    ours = [f for f in frames if str(f[0].f_globals.get("__name__") or "").startswith("kalm_bench")]
    if ours and ours[-1] is not frames[-1] and not places[0].startswith("kalm_bench"):
        places.append(f"from {_frame_place(*ours[-1])}")
    return _one_line(message) + f" (at {', '.join(places)})"


def _named(stage: Stage) -> str:
    label = stage.label.removeprefix(f"{stage.kind} ")  # eval labels already start with their kind
    return f"{stage.kind:11s} {label}"


def execute_chain(payload: dict[str, Any]) -> list[StageResult]:
    """Worker entry point: build stages in order; after a failure the rest fail as its dependents.

    Each stage logs a line when it starts and when it ends (kind, label, seconds), from the process that
    builds it, so the lines appear as the work happens whichever executor runs the chain.
    """
    configure_worker()
    store = _worker_store(payload["root"])
    chain = payload["stages"][0].key
    results: list[StageResult] = []
    failed: str | None = None
    for stage in payload["stages"]:
        if failed is not None:
            results.append(StageResult(stage.key, stage.kind, False, False, f"upstream stage failed: {failed}"))
            continue
        emit(("stage", chain, stage.key))
        t0 = time.time()
        progress = _progress_events(stage) if payload.get("progress_events") else progress_logger(stage.label)
        try:
            _, built = build_stage(stage, store, progress, on_start=lambda st=stage: log.info("start  %s", _named(st)))
            wall = time.time() - t0
            if built:
                log.info("built  %s in %.1f s", _named(stage), wall)
            else:
                log.debug("cached %s", _named(stage))
            results.append(StageResult(stage.key, stage.kind, True, built, wall_s=wall))
        except (Exception, SystemExit) as exc:  # recorded, never fatal for the suite
            text = _exit_text(exc) if isinstance(exc, SystemExit) else _error_text(exc)
            failed = f"{stage.label}: {text}"
            log.warning("FAILED %s after %.1f s: %s", _named(stage), time.time() - t0, text)
            results.append(StageResult(stage.key, stage.kind, False, False, text, wall_s=time.time() - t0))
        emit(("result", chain, results[-1]))
    return results


_STORES: dict[str, ArtifactStore] = {}


def _worker_store(root: str) -> ArtifactStore:
    """One store per cache root and process, so an entry checked by one chain is not hashed again by the next
    chain the same worker runs (unless its files changed)."""
    if root not in _STORES:
        _STORES[root] = ArtifactStore(root)
    return _STORES[root]


def _exit_text(exc: SystemExit) -> str:
    """A plugin that calls ``sys.exit`` (or ``exit()``) fails its stage, not the suite."""
    return f"the stage called sys.exit({exc.code!r})"


def _progress_events(stage: Stage, every_s: float = 0.2) -> Callable[[int, int], None]:
    """Progress sent to the parent process (its bars), at most every ``every_s`` seconds and at the end."""
    last = [0.0]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or done >= total:
            last[0] = now
            emit(("progress", stage.key, int(done), int(total)))
    return update


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
        self.versions = versions(cls for st in plan.stages.values() for cls in spec_components(st.spec))
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
        try:
            return self._run()
        finally:
            self.executor.close()

    def _run(self) -> RunSummary:
        t0 = self._t0 = time.time()
        status = plan_status(self.plan, self.output, self.rerun_failed)
        refuse_foreign(status, self.output)
        summary = RunSummary(planned=len(self.plan.runs), skipped_ok=len(status.done),
                             skipped_failed=len(status.failed_earlier), retried=len(status.retried))
        todo = status.todo
        if summary.skipped_ok or summary.skipped_failed or summary.retried:
            log.info(f"resuming: {summary.skipped_ok} run(s) already done"
                     + (f", {summary.skipped_failed} failed earlier (use --rerun-failed to retry them)"
                        if summary.skipped_failed else "")
                     + (f", retrying {summary.retried} that failed earlier" if summary.retried else ""))
        if not todo and (self.output / "plan.json").is_file():
            # Nothing to run: what is there (plan, timings, records.jsonl, tables) stays as it was written.
            summary.records = load_records(self.output, current_only=True)
            summary.wall_s = time.time() - t0
            return summary
        self.output.mkdir(parents=True, exist_ok=True)
        self._write_plan()
        cleaned = self.store.clean_partials()
        if cleaned:
            log.info("removed %d temporary build director%s left in the cache by killed runs", cleaned,
                     "y" if cleaned == 1 else "ies")
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
        local = isinstance(self.executor, LocalExecutor)
        bars = self.progress_factory if (self.jobs == 1 and local) else None
        payloads = [{"stages": chain, "root": str(self.store.root), "progress_events": bars is not None}
                    for chain in chains]
        # What each chain's worker reported so far: the stage it runs and the results of those it finished,
        # so a worker that dies keeps the results it had and fails only the stage it was in.
        running: dict[str, str] = {}
        finished: dict[str, list[StageResult]] = defaultdict(list)
        updates: dict[str, Callable[[int, int], None]] = {}

        def on_event(event: Any) -> None:
            if event[0] == "stage":
                running[event[1]] = event[2]
            elif event[0] == "result":
                finished[event[1]].append(event[2])
            elif event[0] == "progress" and bars is not None and event[1] in self.plan.stages:
                if event[1] not in updates:
                    updates[event[1]] = bars(self.plan.stages[event[1]])
                updates[event[1]](event[2], event[3])

        def handle(results: list[StageResult]) -> None:
            for res in results:
                if res.ok:
                    summary.stages_built += int(res.built)
                    summary.stages_cached += int(not res.built)
                else:
                    self.stage_errors[res.key] = res.error or "failed"
            on_done(results)

        pending = {chain[0].key: chain for chain in chains}
        kwargs = {"on_event": on_event} if local else {}
        try:
            for out in self.executor.map(execute_chain, payloads, self.jobs, **kwargs):
                if isinstance(out, ItemLost):
                    chain = out.item["stages"]
                    results = self._lost_chain(chain, out.reason, finished.get(chain[0].key, []),
                                               running.get(chain[0].key))
                else:
                    results = out
                pending.pop(results[0].key, None)
                handle(results)
        except Exception as exc:  # an executor that gives up: the chains it did not finish fail, the suite goes on
            reason = f"the executor failed: {type(exc).__name__}: {exc}"
            log.warning("%s", reason)
            for key, chain in list(pending.items()):
                pending.pop(key)
                handle(self._lost_chain(chain, reason, finished.get(key, []), running.get(key)))
        for key, chain in list(pending.items()):  # an executor that returned fewer results than items
            handle(self._lost_chain(chain, "the executor returned no result", finished.get(key, []),
                                    running.get(key)))

    @staticmethod
    def _lost_chain(chain: list[Stage], reason: str, finished: list[StageResult],
                    running: str | None) -> list[StageResult]:
        """Results of a chain whose worker gave none: the stages it reported finished keep their result,
        the one it was running (else the first unfinished one) fails with ``reason``, the rest after it."""
        done = {r.key: r for r in finished}
        results: list[StageResult] = []
        failed: str | None = None
        for stage in chain:
            if stage.key in done and failed is None:
                results.append(done[stage.key])
                if not done[stage.key].ok:
                    failed = f"{stage.label}: {done[stage.key].error}"
            elif failed is None and (running is None or stage.key == running or stage.key not in done):
                text = f"{reason} during the {stage.kind} stage"
                log.warning("FAILED %s: %s", _named(stage), text)
                results.append(StageResult(stage.key, stage.kind, False, False, text))
                failed = f"{stage.label}: {text}"
            else:
                results.append(StageResult(stage.key, stage.kind, False, False, f"upstream stage failed: {failed}"))
        return results

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
            wall = earlier.get(st.key)
            if self.store.done(st.kind, st.key):
                try:
                    wall = self.store.manifest(st.kind, st.key).get("wall_s")
                except DamagedEntry:  # rebuilt by the next run that needs it
                    pass
            stages.append({"kind": st.kind, "label": st.label, "key": st.key, "wall_s": wall})
        atomic_write_text(path, json.dumps({"invocations": invocations, "stages": stages}, indent=2))

    def _finish(self, run: Run, summary: RunSummary, error: str | None) -> None:
        record = build_record(self.plan, run, self.store, error, {
            "git_sha": self.git_sha, "harness_version": __version__, "versions": self.versions,
            "machine": self.machine, "started_at": self.started_at, "finished_at": _now()})
        write_record(self.output, record)
        if record["status"] == "ok":
            summary.ok += 1
            log.info("run ok: %s: success %.3f", run.describe(), record["success_rate"])
        else:
            summary.failed += 1
            log.warning("run FAILED: %s: %s", run.describe(), record["error"])
        self._write_timings(summary, finished=False)
