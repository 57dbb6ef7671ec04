"""Bad datasets: each is refused with one line naming the file and the field (exit 2), never a traceback.

Every case writes a good dataset with the format's own writer, corrupts one thing, then runs
``kalm-bench data info`` on it; a selection also runs a tiny suite with ``data: {path: ...}``, whose failed
runs must each be one line and whose records must say which file and field is wrong.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kalm_bench.datasets import MAX_MANIFEST_BYTES, TrajectoryDataset, sha256_file
from kalm_bench.errors import UserError

DATA, MANIFEST = "data.npz", "manifest.json"


def _good() -> TrajectoryDataset:
    from kb_testplugins import LineWorld

    return LineWorld().generate_dataset(6, 0)


def _arrays(d: Path) -> dict[str, np.ndarray]:
    with np.load(d / DATA, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _write_arrays(d: Path, arrays: dict[str, np.ndarray], allow_pickle: bool = False) -> None:
    np.savez(d / DATA, allow_pickle=allow_pickle, **arrays)
    _edit_manifest(d, lambda m: {**m, "files": {DATA: sha256_file(d / DATA)}})


def _edit_manifest(d: Path, change) -> None:
    m = change(json.loads((d / MANIFEST).read_text()))
    (d / MANIFEST).write_text(m if isinstance(m, str) else json.dumps(m))


def npz(**changes):
    """Replace (a callable of the old arrays) or drop (None) arrays, keeping the checksum right."""
    def corrupt(d: Path) -> None:
        arrays = _arrays(d)
        for k, v in changes.items():
            if v is None:
                arrays.pop(k)
            else:
                arrays[k] = v(arrays)
        _write_arrays(d, arrays)
    return corrupt


def manifest(**changes):
    def corrupt(d: Path) -> None:
        _edit_manifest(d, lambda m: {**m, **changes})
    return corrupt


def _nan_row(a: np.ndarray, row: int = 1) -> np.ndarray:
    a = a.astype(np.float32).copy()
    a[row] = np.nan
    return a


def _negative_length(a):
    lengths = a["lengths"].copy()
    lengths[0] += lengths[1] + 2
    lengths[1] = -2  # the sum stays right: only the sign is wrong
    return lengths


def _object_goals(d: Path) -> None:
    arrays = _arrays(d)
    arrays["goals"] = np.array([{"g": 1}] * len(arrays["goals"]), dtype=object)
    _write_arrays(d, arrays, allow_pickle=True)


def _huge_declared_shape(d: Path) -> None:
    """states.npy whose header claims 10^12 rows while the file holds a few bytes."""
    arrays = _arrays(d)
    path = d / DATA
    with zipfile.ZipFile(path, "w") as zf:
        for k, a in arrays.items():
            with zf.open(f"{k}.npy", "w") as f:
                if k == "states":
                    header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                              "shape": (10**12, 1)}
                    np.lib.format.write_array_header_1_0(f, header)
                    f.write(a.tobytes())
                else:
                    np.lib.format.write_array(f, a, allow_pickle=False)
    _edit_manifest(d, lambda m: {**m, "files": {DATA: sha256_file(path)}})


def _truncate(d: Path) -> None:
    (d / DATA).write_bytes((d / DATA).read_bytes()[:300])


def _not_utf8(d: Path) -> None:
    (d / MANIFEST).write_bytes(b'{"format": "\xff\xfe"}')


def _deeply_nested(d: Path) -> None:
    (d / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)


def _oversized(d: Path) -> None:
    m = json.loads((d / MANIFEST).read_text())
    m["attrs"] = {"padding": "x" * (MAX_MANIFEST_BYTES + 10)}
    (d / MANIFEST).write_text(json.dumps(m))


def _continuous_for_discrete_env(d: Path) -> None:
    """Self-consistent continuous data that claims to be line-world's (whose actions are discrete)."""
    arrays = _arrays(d)
    arrays["actions"] = np.zeros((len(arrays["actions"]), 2), np.float32)
    _write_arrays(d, arrays)
    _edit_manifest(d, lambda m: {**m, "action_kind": "continuous", "action_size": 2})


# id -> (corruption, file named, field named (None: the file alone), extra data-info arguments)
CASES = {
    # arrays
    "success-strings": (npz(success=lambda a: np.array(["yes"] * len(a["success"]))), DATA, "success", ()),
    "states-1d": (npz(states=lambda a: a["states"][:, 0]), DATA, "states", ()),
    "float-actions-discrete": (npz(actions=lambda a: a["actions"].astype(np.float32) + 0.5), DATA, "actions", ()),
    "nan-state": (npz(states=lambda a: _nan_row(a["states"])), DATA, "states", ()),
    "inf-next-state": (npz(next_states=lambda a: np.full_like(a["next_states"], np.inf)), DATA, "next_states", ()),
    "nan-reward": (npz(rewards=lambda a: _nan_row(a["rewards"], 0)), DATA, "rewards", ()),
    "goals-not-json": (npz(goals=lambda a: np.array(["{oops"] * len(a["goals"]))), DATA, "goals", ()),
    "negative-length": (npz(lengths=_negative_length), DATA, "lengths", ()),
    "float-lengths": (npz(lengths=lambda a: a["lengths"].astype(np.float64)), DATA, "lengths", ()),
    "lengths-sum": (npz(lengths=lambda a: a["lengths"] + 1), DATA, "lengths", ()),
    "action-out-of-range": (npz(actions=lambda a: np.full_like(a["actions"], 7)), DATA, "actions", ()),
    "discrete-actions-2d": (npz(actions=lambda a: a["actions"][:, None]), DATA, "actions", ()),
    "next-states-width": (npz(next_states=lambda a: np.zeros((len(a["next_states"]), 3), np.float32)), DATA,
                          "next_states", ()),
    "rewards-2d": (npz(rewards=lambda a: a["rewards"][:, None]), DATA, "rewards", ()),
    "rewards-rows": (npz(rewards=lambda a: a["rewards"][:-1]), DATA, "rewards", ()),
    "instructions-ints": (npz(instructions=lambda a: np.arange(len(a["instructions"]))), DATA, "instructions",
                          ()),
    "missing-array": (npz(levels=None), DATA, "levels", ()),
    "pickled-goals": (_object_goals, DATA, "goals", ()),
    "huge-declared-shape": (_huge_declared_shape, DATA, "states", ()),
    "truncated": (_truncate, DATA, None, ()),
    # manifest
    "manifest-list": (lambda d: _edit_manifest(d, lambda m: json.dumps([m])), MANIFEST, None, ()),
    "files-list": (lambda d: _edit_manifest(d, lambda m: {**m, "files": [m["files"]]}), MANIFEST, "files", ()),
    "checksum-number": (manifest(files={DATA: 5}), MANIFEST, "files.data.npz", ()),
    "action-size-string": (manifest(action_size="3"), MANIFEST, "action_size", ()),
    "action-size-zero": (manifest(action_size=0), MANIFEST, "action_size", ()),
    "action-kind-unknown": (manifest(action_kind="both"), MANIFEST, "action_kind", ()),
    "env-number": (manifest(env=5), MANIFEST, "env", ()),
    "env-missing": (lambda d: _edit_manifest(d, lambda m: {k: v for k, v in m.items() if k != "env"}), MANIFEST,
                    "env", ()),
    "attrs-list": (manifest(attrs=[1, 2]), MANIFEST, "attrs", ()),
    "seed-string": (manifest(seed="zero"), MANIFEST, "seed", ()),
    "state-dim-wrong": (manifest(state_dim=4), MANIFEST, "state_dim", ()),
    "n-success-wrong": (manifest(n_success=99), MANIFEST, "n_success", ()),
    "manifest-not-utf8": (_not_utf8, MANIFEST, None, ()),
    "manifest-deeply-nested": (_deeply_nested, MANIFEST, None, ()),
    "manifest-oversized": (_oversized, MANIFEST, None, ()),
    # the env
    "other-env": (manifest(env="metaworld"), MANIFEST, "env", ("--env", "line-world")),
    "continuous-for-discrete-env": (_continuous_for_discrete_env, MANIFEST, "action_kind", ()),
}


def _bad(tmp_path: Path, case: str) -> Path:
    d = tmp_path / case
    _good().save(d)
    CASES[case][0](d)
    return d


def _cli(capsys, *args: str) -> tuple[int, list[str]]:
    """``kalm-bench ARGS`` in this process: (exit code, non-empty output lines)."""
    from kalm_bench.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.strip()]
    return code, lines


def _assert_one_line(code: int, lines: list[str], file: Path, field: str | None) -> None:
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    assert f"{file}:" in lines[0], lines[0]
    if field is not None:
        assert f"{file}: {field}: " in lines[0], lines[0]


@pytest.mark.parametrize("case", sorted(CASES))
def test_data_info_refuses_bad_dataset(core_env, capsys, case):
    d = _bad(core_env, case)
    _, file, field, extra = CASES[case]
    code, lines = _cli(capsys, "data", "info", str(d), *extra)
    _assert_one_line(code, lines, d / file, field)


def test_the_good_dataset_passes(core_env, capsys):
    _good().save(core_env / "good")
    code, lines = _cli(capsys, "data", "info", str(core_env / "good"))
    assert code == 0 and json.loads("\n".join(lines))["n_episodes"] == 6
    assert TrajectoryDataset.inspect(core_env / "good")["env"] == "line-world"


def test_arrays_larger_than_the_limit_are_refused_before_loading(core_env, capsys, monkeypatch):
    _good().save(core_env / "d")
    monkeypatch.setenv("KALM_BENCH_MAX_DATASET_BYTES", "200")
    code, lines = _cli(capsys, "data", "info", str(core_env / "d"))
    _assert_one_line(code, lines, core_env / "d" / DATA, None)
    assert "KALM_BENCH_MAX_DATASET_BYTES" in lines[0]


def test_a_huge_declared_shape_is_never_allocated(core_env, monkeypatch):
    d = _bad(core_env, "huge-declared-shape")

    def refuse(*a, **k):
        raise AssertionError("an array was loaded")

    monkeypatch.setattr(np, "load", refuse)
    with pytest.raises(UserError, match=r"shape \(1000000000000, 1\)"):
        TrajectoryDataset.load(d)


@pytest.mark.parametrize("case", ["success-strings", "states-1d", "manifest-list", "files-list",
                                  "float-actions-discrete", "pickled-goals", "huge-declared-shape"])
def test_inspect_refuses_without_loading_arrays(core_env, monkeypatch, case):
    """The header-only check (for ``validate``) already refuses what dtypes and shapes show."""
    d = _bad(core_env, case)
    monkeypatch.setattr(np, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    with pytest.raises(UserError) as exc:
        TrajectoryDataset.inspect(d)
    _, file, field, _ = CASES[case]
    assert exc.value.file == d / file and exc.value.field == field


def test_inspect_checks_the_env(core_env):
    from kb_testplugins import LineWorld

    d = _bad(core_env, "other-env")
    with pytest.raises(UserError) as exc:
        TrajectoryDataset.inspect(d, env=LineWorld)
    assert exc.value.field == "env" and exc.value.file == d / MANIFEST


# -- a suite using the bad dataset --------------------------------------------------------------------------

SUITE = """\
suite: tiny
version: 1
env: {{name: line-world}}
data: {{path: {path}}}
encoder: {{name: hash}}
algorithms:
  - {{name: tabular-bc{config}}}
seeds: [0]
train: {{steps: 4, checkpoint_every: 4}}
"""


def _run_suite(core_env: Path, data: Path, config: str = ""):
    from kb_helpers import run_cli
    from kalm_bench.records import load_records

    suite = core_env / "suite.yaml"
    suite.write_text(SUITE.format(path=data, config=config))
    proc = run_cli("run", str(suite), "-o", str(core_env / "out"), "-q")
    return proc, load_records(core_env / "out") if (core_env / "out" / "records").is_dir() else []


# What the array headers and the manifest show is refused when the suite is planned (validate and run exit 2,
# nothing is written); what only the values show is refused by the dataset stage, which fails every run.
AT_PLAN_TIME = {"success-strings", "states-1d", "files-list", "float-actions-discrete", "other-env"}


@pytest.mark.parametrize("case", ["success-strings", "states-1d", "files-list", "float-actions-discrete",
                                  "nan-state", "goals-not-json", "negative-length", "other-env"])
def test_run_records_bad_dataset_as_one_line(core_env, case):
    d = _bad(core_env, case)
    _, file, field, _ = CASES[case]
    proc, records = _run_suite(core_env, d)
    assert "Traceback" not in proc.stderr + proc.stdout
    if case in AT_PLAN_TIME:
        assert proc.returncode == 2 and records == [], proc.stderr
        [line] = proc.stderr.strip().splitlines()
        assert f"{d / file}: {field}: " in line, line
        return
    assert proc.returncode == 1, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if "run FAILED" in line]
    assert len(failed) == len(records) == 3  # one line per failed run (one per level)
    where = f"{d / file}: {field}: "
    assert all(where in line for line in failed), failed
    for r in records:
        assert r["status"] == "failed" and where in r["error"] and "\n" not in r["error"]
        assert "Error:" not in r["error"]  # the message, not a Python exception


def test_run_records_an_unexpected_exception_with_its_location(core_env):
    _good().save(core_env / "good")
    proc, records = _run_suite(core_env, core_env / "good", ", config: {fail: true}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "run FAILED" in line]) == 3
    for r in records:
        # The plugin's own frame, then the innermost kalm-bench one, each by module (no path of this machine).
        assert re.search(r"RuntimeError: training failed on purpose \(at kb_testplugins\.py:\d+ in train, "
                         r"from kalm_bench/stages\.py:\d+ in _build_train\)$", r["error"]), r["error"]


def test_error_text_is_one_line_with_the_innermost_location():
    from kalm_bench.runner import _error_text

    assert _error_text(UserError("two\nlines", file="a/b.json", field="x")) == "a/b.json: x: two lines"
    ds = TrajectoryDataset.__new__(TrajectoryDataset)
    ds.lengths = np.array([-1])
    with pytest.raises(ValueError) as exc:
        ds.episode_index()
    text = _error_text(exc.value)
    assert "\n" not in text and text.startswith("ValueError: ")
    # The innermost frame is numpy's; the innermost kalm-bench frame is named too, by module, not by path.
    assert re.search(r"\(at numpy/\S+\.py:\d+ in \w+, from kalm_bench/datasets\.py:\d+ in episode_index\)$",
                     text), text
    try:
        {}["initial_state"]
    except KeyError as e:
        assert re.fullmatch(r"KeyError: 'initial_state' \(at test_hardening_data\.py:\d+ in \S+\)",
                            _error_text(e))


# -- data generate: env options ------------------------------------------------------------------------------


@pytest.mark.parametrize("args, key", [
    (("-c", "bogus=1"), "bogus"),
    (("-c", "noise=abc"), "noise"),
    (("-c", "noise=[1,"), "noise"),
    (("-O", "x=[1,"), "x"),
])
def test_data_generate_refuses_bad_options(core_env, capsys, args, key):
    code, lines = _cli(capsys, "data", "generate", "line-world", "-n", "2", "--out", str(core_env / "d"), *args)
    assert code == 2 and len(lines) == 1 and "Traceback" not in lines[0], lines
    assert re.search(rf"(--env-config|--option): {key}: ", lines[0]), lines[0]
    assert not (core_env / "d").exists()


def test_data_generate_honours_env_config(core_env, capsys):
    outs = []
    for noise in ("0.0", "1.0"):
        out = core_env / f"d{noise}"
        code, _ = _cli(capsys, "data", "generate", "line-world", "-n", "20", "--out", str(out), "-c",
                       f"noise={noise}")
        assert code == 0
        outs.append(TrajectoryDataset.load(out))
    assert not np.array_equal(outs[0].actions[:20], outs[1].actions[:20])


def test_clevr_goal_file_for_the_data_level_is_refused(tmp_path):
    from kalm_bench_plugins.clevr.plugin import ClevrRobot

    goals = tmp_path / "goals.json"
    goals.write_text("[]")
    with pytest.raises(UserError) as exc:
        ClevrRobot({"goal_files": {"seen": str(goals)}}).generate_dataset(1, 0)
    assert exc.value.field == "goal_files.seen" and "no effect on generated data" in exc.value.message


def test_clevr_data_generate_with_a_goal_file_is_one_line(tmp_path):
    from kb_helpers import run_cli

    goals = tmp_path / "goals.json"
    goals.write_text("[]")
    proc = run_cli("data", "generate", "clevr-robot", "-n", "1", "--out", str(tmp_path / "d"), "-c",
                   f"goal_files={{seen: {goals}}}",
                   env={"KALM_BENCH_LOAD_PLUGINS": "clevr", "KALM_BENCH_PLUGIN_MODULES": "",
                        "KALM_BENCH_CACHE": str(tmp_path / "cache")})
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "goal_files.seen: " in lines[0], lines
    proc = run_cli("data", "generate", "clevr-robot", "-n", "1", "--out", str(tmp_path / "d"), "-c",
                   "goal_file=x.json", env={"KALM_BENCH_LOAD_PLUGINS": "clevr", "KALM_BENCH_PLUGIN_MODULES": ""})
    assert proc.returncode == 2 and "--env-config: goal_file: unknown option" in proc.stderr, proc.stderr


@pytest.mark.parametrize("options, field", [({"noise": "abc"}, "options.noise"),
                                            ({"tasks": "pick-place"}, "options.tasks"),
                                            ({"horizon": 0}, "options.horizon")])
def test_metaworld_data_options_are_checked(options, field):
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    with pytest.raises(UserError) as exc:
        MetaworldEnvironment().generate_dataset(1, 0, **options)
    assert exc.value.field == field
