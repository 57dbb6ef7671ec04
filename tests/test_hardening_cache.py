"""The cache and the runner under crashes: killed builds, damaged entries, dying workers, resumed trainings,
concurrent runs. Kills are real (SIGKILL of a subprocess's process group) or the state on disk a kill leaves."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kb_helpers import TESTS, run_cli
from kalm_bench.cache import DONE, MANIFEST, RESUMABLE, ArtifactStore, DamagedEntry
from kalm_bench.records import load_records

KEY = "ab" * 32
SUITE = """\
suite: crash
version: 1
env: {name: line-world}
data: {episodes: 40, seed: 0}
encoder: {name: hash}
algorithms:
%s
seeds: [0]
train: {steps: 12, checkpoint_every: 4}
"""


@pytest.fixture
def crash_env(core_env, monkeypatch):
    monkeypatch.setenv("KALM_BENCH_PLUGIN_MODULES", "kb_testplugins,kb_crashplugins")
    monkeypatch.setenv("KB_CRASH_DIR", str(core_env))
    return core_env


def _suite(folder: Path, *rows: str, name: str = "suite.yaml") -> Path:
    path = folder / name
    path.write_text(SUITE % "\n".join(f"  - {r}" for r in rows))
    return path


def _rates(out: Path) -> dict[str, float]:
    return {r["run_id"]: r["success_rate"] for r in load_records(out) if r["status"] == "ok"}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warnings_seen():
    handler = _Lines()
    logger = logging.getLogger("kalm_bench")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


# -- leftovers of killed builds -------------------------------------------------------------------------


def test_orphaned_tmp_dirs_go_live_and_recent_resumable_ones_stay(tmp_path):
    store = ArtifactStore(tmp_path)
    orphan = store.tmp_path("dataset", "01" * 32)
    old_style = tmp_path / "dataset" / "02" / ".tmp-020202020202-1a2b3c4d"
    live = store.tmp_path("train", "03" * 32)
    resumable = store.tmp_path("train", "04" * 32)
    stale = store.tmp_path("train", "05" * 32)
    for d in (orphan, old_style, live, resumable, stale):
        d.mkdir(parents=True)
        (d / "half-written").write_bytes(b"x" * 100)
    for d in (resumable, stale):
        (d / RESUMABLE).touch()
    week_ago = time.time() - 8 * 24 * 3600
    for p in (stale, stale / RESUMABLE, stale / "half-written"):
        os.utime(p, (week_ago, week_ago))
    holder = store._lock("03" * 32)  # a build of another process in progress
    holder.acquire()
    try:
        assert store.clean_partials() == 3
    finally:
        holder.release()
    assert not orphan.exists() and not old_style.exists() and not stale.exists()
    assert live.exists() and resumable.exists()
    store.clear()  # clearing the cache takes every orphan, resumable or not
    assert not resumable.exists() and not live.exists()


def test_a_killed_dataset_build_leaves_nothing_after_the_next_run(crash_env):
    """kill -9 of the whole run while the dataset is generated; the rerun removes the temporary directory."""
    slow = _suite(crash_env, "{name: tabular-bc}").read_text().replace("episodes: 40", "episodes: 200000")
    suite = crash_env / "slow.yaml"
    suite.write_text(slow)
    cache = crash_env / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "kalm_bench.cli", "run", str(suite), "-o", str(crash_env / "o")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not list(cache.glob("dataset/*/.tmp-*")) and time.time() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert list(cache.glob("dataset/*/.tmp-*"))
    suite.write_text(slow.replace("episodes: 200000", "episodes: 40"))  # another plan: the orphan is nobody's
    run_cli("run", str(suite), "-o", str(crash_env / "o2"), check=True)
    assert not list(cache.glob("*/*/.tmp-*"))


# -- damaged entries ---------------------------------------------------------------------------------------


def _build(store: ArtifactStore, calls: list[int], key: str = KEY):
    def fn(out):
        calls.append(1)
        (out / "data").mkdir()
        (out / "data" / "arrays.bin").write_bytes(bytes(range(256)) * 4)
        (out / "curve.json").write_text(json.dumps([{"step": 4, "success_rate": 0.25}]))
        return {"curve": [{"step": 4, "success_rate": 0.25}]}
    return store.build("eval", key, fn, {"label": "e"})


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


DAMAGE = {
    "stage.json missing": lambda d: (d / MANIFEST).unlink(),
    "stage.json truncated": lambda d: _truncate(d / MANIFEST),
    "curve edited in stage.json": lambda d: (d / MANIFEST).write_text(
        (d / MANIFEST).read_text().replace("0.25", "1.0")),
    "curve.json edited": lambda d: (d / "curve.json").write_text("[]"),
    "data file truncated": lambda d: _truncate(d / "data" / "arrays.bin"),
    "one byte flipped": lambda d: (d / "data" / "arrays.bin").write_bytes(
        b"\xff" + (d / "data" / "arrays.bin").read_bytes()[1:]),
    "data file missing": lambda d: shutil.rmtree(d / "data"),
    "DONE emptied": lambda d: (d / DONE).write_text(""),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_detected_and_rebuilt_with_a_warning(tmp_path, damage, warnings_seen):
    store = ArtifactStore(tmp_path)
    calls: list[int] = []
    path, built = _build(store, calls)
    assert built and store.problem("eval", KEY) is None
    files = store.manifest("eval", KEY)["files"]
    assert set(files) == {"curve.json", "data/arrays.bin"} and all(len(h) == 64 for h in files.values())
    DAMAGE[damage](path)
    fresh = ArtifactStore(tmp_path)  # another process: nothing remembered
    if damage != "DONE emptied":  # an emptied DONE reads as an entry of before checksums, still checked by files
        assert fresh.problem("eval", KEY) is not None
        with pytest.raises(DamagedEntry):
            fresh.entry("eval", KEY)
    else:
        assert fresh.problem("eval", KEY) is None
        return
    path, built = _build(fresh, calls)
    assert built and len(calls) == 2
    assert any("is damaged" in line and "rebuilding" in line for line in warnings_seen), warnings_seen
    assert fresh.manifest("eval", KEY)["curve"][0]["success_rate"] == 0.25 and fresh.problem("eval", KEY) is None
    assert _build(fresh, calls)[1] is False  # and then it is used


def test_an_edit_is_seen_by_the_process_that_checked_the_entry_before(tmp_path):
    store = ArtifactStore(tmp_path)
    path, _ = _build(store, [])
    assert store.problem("eval", KEY) is None
    time.sleep(0.01)
    (path / "curve.json").write_text("[]")
    assert "curve.json" in store.problem("eval", KEY)


def test_an_entry_from_before_checksums_is_still_used(tmp_path):
    store = ArtifactStore(tmp_path)
    d = store.path("dataset", KEY)
    d.mkdir(parents=True)
    (d / MANIFEST).write_text(json.dumps({"kind": "dataset", "key": KEY, "label": "old"}))
    (d / DONE).write_text("")
    assert store.problem("dataset", KEY) is None
    assert store.build("dataset", KEY, lambda out: pytest.fail("rebuilt"), {})[1] is False


def test_damaged_cache_entries_are_rebuilt_by_the_next_run(crash_env):
    """Missing or truncated stage.json, truncated checkpoints, a truncated dataset, an edited curve: the next
    run warns, rebuilds what is damaged and records the results of a clean run, without a traceback."""
    suite = _suite(crash_env, "{name: tabular-bc}")
    cache = crash_env / "cache"
    run_cli("run", str(suite), "-o", str(crash_env / "ref"), check=True)
    ref = _rates(crash_env / "ref")
    assert len(ref) == 3

    def entries(kind):
        return sorted(p.parent for p in (cache / kind).glob("*/*/stage.json") if not p.parent.name.startswith("."))

    def truncated_checkpoints(c):
        for p in (c / "train").rglob("table.json"):
            _truncate(p)
        shutil.rmtree(c / "eval")  # not evaluated yet: the evaluation reads the checkpoints

    def truncated_dataset(c):
        _truncate(next((c / "dataset").rglob("data.npz")))
        shutil.rmtree(c / "train")
        shutil.rmtree(c / "eval")

    def edited_curves(c):
        for m in (c / "eval").glob("*/*/stage.json"):
            stage = json.loads(m.read_text())
            for point in stage["curve"]:
                point["success_rate"] = 1.0
            m.write_text(json.dumps(stage))

    cases = {"dataset stage.json missing": lambda c: (entries("dataset")[0] / MANIFEST).unlink(),
             "train stage.json truncated": lambda c: _truncate(entries("train")[0] / MANIFEST),
             "checkpoints truncated": truncated_checkpoints, "dataset truncated": truncated_dataset,
             "curves edited": edited_curves}
    shutil.copytree(cache, crash_env / "clean")
    for i, (case, damage) in enumerate(cases.items()):
        shutil.rmtree(cache)
        shutil.copytree(crash_env / "clean", cache)
        damage(cache)
        proc = run_cli("run", str(suite), "-o", str(crash_env / f"o{i}"))
        assert proc.returncode == 0, (case, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr, case
        assert "is damaged" in proc.stderr, case
        assert _rates(crash_env / f"o{i}") == ref, case


# -- crashing plugins and workers ---------------------------------------------------------------------------


def test_the_local_executor_survives_dying_workers(monkeypatch):
    from kalm_bench.builtin.executors import ItemLost, LocalExecutor

    monkeypatch.delenv("KALM_BENCH_IN_PROCESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    import kb_crashplugins

    for jobs in (1, 2):
        ex = LocalExecutor()
        try:
            out = list(ex.map(kb_crashplugins.executor_item, range(8), jobs=jobs))
        finally:
            ex.close()
        results = sorted(o for o in out if not isinstance(o, ItemLost))
        lost = {o.item: o.reason for o in out if isinstance(o, ItemLost)}
        assert results == [0, 1, 36, 49], jobs
        assert lost == {2: "the worker process died (SIGSEGV)", 3: "the worker process exited with status 5",
                        4: "SystemExit: 3", 5: "ValueError: bad item"}, jobs


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_plugin_that_exits_or_crashes_fails_its_runs_not_the_suite(crash_env, jobs):
    suite = _suite(crash_env, "{name: tabular-bc}", "{name: crash-bc, label: exits, config: {crash: exit}}",
                   "{name: crash-bc, label: segfaults, config: {crash: segv, at_step: 4}}",
                   "{name: crash-bc, label: os-exits, config: {crash: os_exit}}")
    proc = run_cli("run", str(suite), "-o", str(crash_env / "o"), "--jobs", jobs, env={"KALM_BENCH_IN_PROCESS": ""})
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "3 ok, 9 failed" in proc.stdout
    recs = load_records(crash_env / "o")
    assert len(recs) == 12
    errors = {r["algorithm"]: r["error"] for r in recs}
    assert errors["tabular-bc"] is None
    assert "the stage called sys.exit(3)" in errors["exits"]
    assert "the worker process died (SIGSEGV) during the train stage" in errors["segfaults"]
    assert "the worker process exited with status 7 during the train stage" in errors["os-exits"]


def test_sys_exit_in_a_plugin_run_in_process_fails_only_its_runs(crash_env):
    suite = _suite(crash_env, "{name: crash-bc, config: {crash: exit}}", "{name: tabular-bc}")
    proc = run_cli("run", str(suite), "-o", str(crash_env / "o"))  # KALM_BENCH_IN_PROCESS=1 (conftest)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    recs = load_records(crash_env / "o")
    assert {r["algorithm"]: r["status"] for r in recs} == {"crash-bc": "failed", "tabular-bc": "ok"}


# -- resuming a killed training -----------------------------------------------------------------------------


def _kill_when_hanging(args: list[str], marker: Path, env: dict | None = None) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "kalm_bench.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        deadline = time.time() + 60
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the training never reached its checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_killed_training_resumes_from_its_last_checkpoint(crash_env, jobs):
    suite = _suite(crash_env, "{name: crash-bc, config: {crash: hang, at_step: 8, once: true}}")
    env = {"KALM_BENCH_IN_PROCESS": ""} if jobs == "1" else {}
    _kill_when_hanging(["run", str(suite), "-o", str(crash_env / "o"), "--jobs", jobs], crash_env / "hanging-0", env)
    cache = crash_env / "cache"
    partial = list(cache.glob("train/*/.tmp-*"))
    assert len(partial) == 1 and sorted(p.name for p in (partial[0] / "checkpoints").iterdir()) == \
        ["000000004", "000000008"]
    proc = run_cli("run", str(suite), "-o", str(crash_env / "o"), "--jobs", jobs, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (crash_env / "starts").read_text().split("\n")[:2] == ["0 0", "0 8"]  # continued after step 8
    assert not list(cache.glob("*/*/.tmp-*"))
    resumed = load_records(crash_env / "o")
    # The same training, never killed, in another cache: the same records.
    clean = _suite(crash_env, "{name: crash-bc}", name="clean.yaml")
    run_cli("run", str(clean), "-o", str(crash_env / "clean"), env={"KALM_BENCH_CACHE": str(crash_env / "c2")},
            check=True)
    fresh = load_records(crash_env / "clean")
    key = ("level", "success_rate", "curve", "train_log")
    assert sorted([[r[k] for k in key] for r in resumed], key=str) == sorted([[r[k] for k in key] for r in fresh],
                                                                               key=str)
    manifest = json.loads(next(cache.glob("train/*/*/stage.json")).read_text())
    assert manifest["resumed_from_checkpoint"] == 8 and manifest["checkpoints"] == [4, 8, 12]


def test_a_partial_checkpoint_of_a_killed_build_is_dropped(tmp_path, core_env):
    """A kill while a checkpoint is written leaves ``.<step>.partial``: the resumed build removes it."""
    from kalm_bench.plan import build_plan
    from kalm_bench.plugins import get_registry
    from kalm_bench.stages import build_stage
    from kalm_bench.suite import load_suite

    plan = build_plan(load_suite(_suite(core_env, "{name: tabular-bc}"), []), get_registry())
    store = ArtifactStore()
    stages = sorted(plan.stages.values(), key=lambda s: ["dataset", "train", "eval"].index(s.kind))
    build_stage(stages[0], store)
    train = stages[1]
    tmp = store.tmp_path("train", train.key)
    (tmp / "checkpoints" / ".000000004.partial").mkdir(parents=True)
    (tmp / "checkpoints" / ".000000004.partial" / "table.json").write_text("{")
    (tmp / RESUMABLE).touch()
    manifest, built = build_stage(train, store)
    assert built and manifest["checkpoints"] == [4, 8, 12]
    final = store.path("train", train.key)
    assert not list(final.rglob("*.partial")) and not tmp.exists()
    assert "train_state.json" not in manifest["files"]


# -- d3rlpy trainings resume bit for bit ---------------------------------------------------------------------


class _Stop(Exception):
    pass


def _transitions(kind: str, seed: int = 0):
    from kalm_bench.api import TransitionData

    rng = np.random.default_rng(seed)
    n_eps, length = 12, 8
    n = n_eps * length
    actions = rng.integers(0, 3, n).astype(np.int64) if kind == "discrete" else \
        rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[length - 1::2 * length] = 1.0
    timeouts = np.zeros(n, np.float32)
    timeouts[2 * length - 1::2 * length] = 1.0
    states = rng.normal(size=(n, 3)).astype(np.float32)
    return TransitionData(states=states, actions=actions, rewards=rng.normal(size=n).astype(np.float32),
                          next_states=np.roll(states, -1, 0), terminals=terminals, timeouts=timeouts,
                          instruction_ids=np.repeat(rng.integers(0, 2, n_eps), length).astype(np.int64),
                          embeddings=rng.normal(size=(2, 4)).astype(np.float32), instructions=["a", "b"],
                          episode_starts=np.arange(0, n, length, dtype=np.int64))


def _train(cls, overrides, data, kind, workdir: Path, stop_at: int | None = None) -> dict[int, Path]:
    from kalm_bench.api import TrainContext

    algo = cls(cls.make_config(overrides=overrides))
    saved: dict[int, Path] = {}

    def save(step, policy):
        d = workdir / "checkpoints" / f"{step:09d}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        policy.save(d)
        saved[step] = d

    def progress(done, total):
        if done == stop_at:
            raise _Stop  # killed right after the checkpoint of this step

    ctx = TrainContext(config=algo.config, seed=3, real=data, imaginary=None, imaginary_fraction=0.0, steps=30,
                       checkpoint_every=10, action_kind=kind, action_size=3 if kind == "discrete" else 2,
                       workdir=workdir, save_checkpoint=save, progress=progress)
    try:
        algo.train(ctx)
    except _Stop:
        pass
    return saved


@pytest.mark.parametrize("name,kind,overrides,weights", [
    ("discrete-cql", "discrete", {"batch_size": 8, "hidden_units": [8]}, "modules.pt"),
    ("td3+bc", "continuous", {"batch_size": 8, "hidden_units": [8]}, "modules.pt"),
    ("discrete-dt", "discrete", {"batch_size": 4, "context_size": 3}, "transformer.pt"),
])
def test_a_resumed_d3rlpy_training_is_bit_identical_to_an_uninterrupted_one(tmp_path, name, kind, overrides,
                                                                             weights):
    torch = pytest.importorskip("torch")
    from kalm_bench.plugins import build_registry

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cls = build_registry().get("algorithms", name)
        data = _transitions(kind)
        whole = _train(cls, overrides, data, kind, tmp_path / "whole")
        first = _train(cls, overrides, data, kind, tmp_path / "killed", stop_at=20)
        assert sorted(first) == [10, 20] and (tmp_path / "killed" / "resume.pt").is_file()
        rest = _train(cls, overrides, data, kind, tmp_path / "killed")
        assert sorted(rest) == [30]  # continued after step 20
        assert not (tmp_path / "killed" / "resume.pt").exists()
    finally:
        torch.set_num_threads(threads)
    a = torch.load(whole[30] / weights, weights_only=True)
    b = torch.load(rest[30] / weights, weights_only=True)

    def flat(state):
        if all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
        return {f"{k}.{n}": t for k, v in state.items() for n, t in v.items()}

    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    ma = json.loads((whole[30] / "policy.json").read_text())["loss"]
    mb = json.loads((rest[30] / "policy.json").read_text())["loss"]
    assert ma == mb


# -- concurrent runs -----------------------------------------------------------------------------------------


def test_a_build_that_waited_for_another_reports_it_did_not_build(tmp_path):
    store = ArtifactStore(tmp_path)
    started, release = threading.Event(), threading.Event()
    results = {}

    def slow(out):
        started.set()
        release.wait(10)
        (out / "x").write_text("1")

    def first():
        results["first"] = store.build("dataset", KEY, slow, {})[1]

    def second():
        results["second"] = ArtifactStore(tmp_path).build("dataset", KEY, lambda out: pytest.fail("built twice"), {})[1]

    a = threading.Thread(target=first)
    a.start()
    started.wait(10)
    b = threading.Thread(target=second)
    b.start()
    time.sleep(0.2)
    release.set()
    a.join(10)
    b.join(10)
    assert results == {"first": True, "second": False}


def test_two_concurrent_runs_count_only_the_stages_each_built(crash_env):
    suite = _suite(crash_env, "{name: tabular-bc}")
    cmd = [sys.executable, "-m", "kalm_bench.cli", "run", str(suite), "-o", str(crash_env / "o")]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    built = [int(re.search(r"stages built (\d+)", o).group(1)) for o, _ in outs]
    n_stages = len([p for p in (crash_env / "cache").glob("*/*/*/stage.json")])
    assert n_stages == 5 and sum(built) == n_stages, built
    started = sum(len(re.findall(r"start  ", e)) for _, e in outs)
    assert started == n_stages  # a stage is announced by the process that builds it, once
