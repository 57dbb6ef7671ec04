"""Malformed suites and overrides: every one is refused with exit status 2 and one line naming the file and
the field, quickly and in bounded memory, by both ``kalm-bench validate`` and ``kalm-bench run``.

Each case is (id, files, arguments, expected substrings). ``files`` maps names (in the test's directory) to
their content: text, bytes, a :class:`Link` (symbolic link), :data:`DIR` (a directory) or a callable that
returns text (for the large inputs, built only when the case runs). The first file is the suite unless the
case names another one with ``suite=``.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kb_helpers import SUITE

MEMORY_LIMIT = 1 << 30  # address space of the checking process: 1 GiB
TIME_LIMIT = 30  # s


@dataclass(frozen=True)
class Link:
    target: str


DIR = object()
OV = "-x override"


@dataclass
class Case:
    id: str
    files: dict[str, Any]
    expect: list[str]
    overrides: list[str] = field(default_factory=list)
    suite: str | None = None  # default: the first file
    heavy: bool = False  # large or explosive input: checked in a bounded subprocess by `run` too


def _replace(old: str, new: str) -> str:
    assert old in SUITE, old
    return SUITE.replace(old, new)


def _bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return _replace("data: {episodes: 120, seed: 0}\n",
                    "data:\n  episodes: 120\n  options:\n" + "".join(f"    {ln}\n" for ln in lines))


def _big_list() -> str:
    return SUITE.replace("seeds: [0, 1]", "seeds: [" + "0, " * (17 * 1024 * 1024) + "0]")


def _big_string() -> str:
    return SUITE + 'description: "' + "x" * (50 * 1024 * 1024) + '"\n'


def _deep() -> str:
    return _replace("data: {episodes: 120, seed: 0}\n", "data:\n  options:\n    x: " + "[" * 10_000 + "]" * 10_000 + "\n")


def _fanout(n_levels: int = 4, width: int = 40) -> dict[str, Any]:
    files: dict[str, Any] = {"bad.yaml": "include: [" + ", ".join(["f1.yaml"] * width) + "]\n" + SUITE}
    for lv in range(1, n_levels):
        files[f"f{lv}.yaml"] = "include: [" + ", ".join([f"f{lv + 1}.yaml"] * width) + "]\n"
    files[f"f{n_levels}.yaml"] = "description: leaf\n"
    return files


B = "bad.yaml"
CASES = [
    # -- hangs and memory blow-ups
    Case("alias-bomb", {B: _bomb}, [B, "data.options"], heavy=True),
    Case("list-50MB", {B: _big_list}, [B, "MiB"], heavy=True),
    Case("string-50MB", {B: _big_string}, [B, "MiB"], heavy=True),
    Case("include-fan-out", _fanout(), ["f3.yaml", "include", "64"], heavy=True),
    # -- tracebacks
    Case("latin-1", {B: SUITE.encode() + "description: caf\u00e9\n".encode("latin-1")}, [B, "UTF-8", "line 12"]),
    Case("utf-16", {B: SUITE.encode("utf-16")}, [B, "UTF-16"]),
    Case("include-binary", {B: "include: blob.bin\n" + SUITE, "blob.bin": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
         ["blob.bin", "UTF-8", "include"]),
    Case("include-nul-bytes", {B: "include: blob.bin\n" + SUITE, "blob.bin": b"a: \x00\x01\x02\n"},
         ["blob.bin", "character"]),
    Case("include-symlink-loop", {B: "include: loop.yaml\n" + SUITE, "loop.yaml": Link("loop.yaml")},
         ["loop.yaml", "symbolic link"]),
    Case("suite-symlink-loop", {"loop.yaml": Link("loop.yaml")}, ["loop.yaml", "symbolic link"]),
    Case("nesting-10000", {B: _deep}, [B, "data.options.x", "deep"], heavy=True),
    Case("int-5000-digits", {B: _replace("steps: 12", "steps: 1" + "0" * 5000)}, [B, "train.steps"]),
    Case("seeds-n-1e9", {B: _replace("seeds: [0, 1]", "seeds: {n: 1000000000}")}, [B, "seeds.n", "1000"], heavy=True),
    Case("entry-llm-duplicate-task",
         {B: _replace("{name: tabular-bc, variants: [base, kalm]}",
                      "{name: tabular-bc, variants: [base, kalm], llm: {grounding_tasks: [scripted, scripted]}}")},
         [B, "algorithms[0].llm.grounding_tasks", "unique"]),
    Case("ov-superscript-index", {B: SUITE}, [OV, "seeds"], overrides=["seeds[\u00b2]=1"]),
    Case("ov-key-under-int", {B: SUITE}, [OV, "seeds[0]"], overrides=["seeds[0].x=1"]),
    Case("ov-index-under-int", {B: SUITE}, [OV, "seeds[0]"], overrides=["seeds[0][1]=3"]),
    # -- accepted by validate before, wrong at run time
    Case("duplicate-key", {B: SUITE + "seeds: [3]\n"}, [B, "seeds", "line 12"]),
    Case("duplicate-nested-key", {B: _replace("steps: 12,", "steps: 12, steps: 13,")},
         [B, "train.steps", "column 20"]),
    Case("negative-seed", {B: _replace("seeds: [0, 1]", "seeds: [-1, 0]")}, [B, "seeds[0]"]),
    Case("steps-1e32-int", {B: _replace("steps: 12", "steps: 1" + "0" * 32)}, [B, "train.steps"], heavy=True),
    Case("steps-1e32-float", {B: _replace("steps: 12", "steps: 1.0e+32")}, [B, "train.steps"], heavy=True),
    Case("steps-float", {B: _replace("steps: 12", "steps: 12.5")}, [B, "train.steps"]),
    Case("steps-bool", {B: _replace("steps: 12", "steps: true")}, [B, "train.steps"]),
    Case("eval-episodes-0", {B: SUITE + "eval: {episodes: 0}\n"}, [B, "eval.episodes"]),
    Case("eval-episodes-level-0", {B: SUITE + "eval: {episodes: {seen: 0}}\n"}, [B, "eval.episodes.seen"]),
    Case("suite-dotdot", {B: _replace("suite: line", "suite: '..'")}, [B, "suite"]),
    Case("suite-dot", {B: _replace("suite: line", "suite: '.'")}, [B, "suite"]),
    Case("suite-slash", {B: _replace("suite: line", "suite: a/b")}, [B, "suite"]),
    Case("suite-too-long", {B: _replace("suite: line", "suite: " + "a" * 300)}, [B, "suite"]),
    Case("missing-reference", {B: SUITE + "report: {reference: nothere.csv}\n"}, [B, "report.reference", "nothere.csv"]),
    Case("included-missing-reference", {B: "include: sub/base.yaml\nsuite: child\n",
                                        "sub": DIR, "sub/base.yaml": SUITE + "report: {reference: ref.csv}\n",
                                        "ref.csv": "env,level\n"},
         ["base.yaml", "report.reference", "ref.csv"]),
    Case("included-data-path", {B: "include: sub/base.yaml\nsuite: child\n", "sub": DIR,
                                "sub/base.yaml": _replace("data: {episodes: 120, seed: 0}", "data: {path: nodata}")},
         ["base.yaml", "data.path", "sub/nodata"]),
    Case("last-k-too-large", {B: SUITE + "eval: {last_k: 5}\n"}, [B, "eval.last_k", "5", "3"]),
    Case("last-k-entry-train", {B: _replace("variants: [base, kalm]}",
                                            "variants: [base, kalm], train: {steps: 4}}") + "eval: {last_k: 2}\n"},
         [B, "eval.last_k", "algorithms[0]"]),
    # -- other realistic mistakes
    Case("empty-file", {B: ""}, [B, "empty"]),
    Case("comments-only", {B: "# nothing here\n"}, [B, "empty"]),
    Case("file-is-list", {B: "- just\n- a list\n"}, [B, "mapping"]),
    Case("file-is-scalar", {B: "hello\n"}, [B, "mapping"]),
    Case("directory-as-suite", {"suitedir": DIR}, ["suitedir", "directory"]),
    Case("missing-file", {}, ["nothere.yaml", "not found"], suite="nothere.yaml"),
    Case("device-as-suite", {}, ["/dev/zero", "regular file"], suite="/dev/zero"),
    Case("include-missing", {B: "include: nothere.yaml\n" + SUITE}, ["nothere.yaml", "not found"]),
    Case("include-cycle", {B: "include: b.yaml\n" + SUITE, "b.yaml": "include: bad.yaml\n"}, ["include", "cycle"]),
    Case("include-not-a-list", {B: "include: {a: 1}\n" + SUITE}, [B, "include"]),
    Case("include-directory", {B: "include: sub\n" + SUITE, "sub": DIR}, ["sub", "directory"]),
    Case("invalid-yaml", {B: "suite: x\n  bad: indentation: here\n"}, [B, "line 2"]),
    Case("tab-indentation", {B: "suite: x\nenv:\n\tname: line-world\n"}, [B, "line 3"]),
    Case("two-documents", {B: SUITE + "---\nsuite: other\n"}, [B, "document"]),
    Case("python-tag", {B: SUITE + "description: !!python/object/apply:os.system [ls]\n"}, [B, "line 12"]),
    Case("unhashable-key", {B: SUITE + "? [a, b]\n: 1\n"}, [B, "line 12"]),
    Case("recursive-alias", {B: _replace("data: {episodes: 120, seed: 0}", "data: &d {options: {again: *d}}")}, [B, "data.options.again"]),
    Case("wrong-type-steps", {B: _replace("steps: 12", "steps: many")}, [B, "train.steps"]),
    Case("wrong-type-section", {B: SUITE + "eval: 5\n"}, [B, "eval"]),
    Case("algorithms-not-list", {B: _replace("algorithms:\n  - {name: tabular-bc, variants: [base, kalm]}",
                                             "algorithms: tabular-bc")}, [B, "algorithms"]),
    Case("unknown-top-key", {B: SUITE + "tarin: {steps: 3}\n"}, [B, "tarin", "unknown field", "train"]),
    Case("unknown-nested-key", {B: _replace("checkpoint_every: 4", "checkpoint_evry: 4")},
         [B, "train.checkpoint_evry", "unknown field", "checkpoint_every"]),
    Case("unknown-entry-key", {B: _replace("variants: [base, kalm]}", "variants: [base, kalm], lable: BC}")},
         [B, "algorithms[0].lable", "unknown field", "label"]),
    Case("unknown-env", {B: _replace("name: line-world", "name: moon-world")}, [B, "env.name"]),
    Case("unknown-algorithm", {B: _replace("name: tabular-bc", "name: tabular-cql")}, [B, "algorithms[0].name"]),
    Case("unknown-backend", {B: _replace("backend: scripted-llm", "backend: gpt-9")}, [B, "llm.backend"]),
    Case("unknown-encoder", {B: _replace("encoder: {name: hash}", "encoder: {name: bert}")}, [B, "encoder.name"]),
    Case("unknown-variant", {B: _replace("[base, kalm]", "[base, magic]")}, [B, "algorithms[0].variants[1]"]),
    Case("unknown-grounding-task", {B: _replace("[scripted]", "[telepathy]")}, [B, "llm.grounding_tasks[0]"]),
    Case("unknown-level", {B: _replace("far: 40", "moon: 40")}, [B, "rollouts.counts"]),
    Case("unknown-stat", {B: SUITE + "report: {stat: median}\n"}, [B, "report.stat"]),
    Case("seeds-duplicate", {B: _replace("seeds: [0, 1]", "seeds: [0, 0]")}, [B, "seeds"]),
    Case("seeds-scalar", {B: _replace("seeds: [0, 1]", "seeds: 5")}, [B, "seeds"]),
    Case("seeds-range-too-many", {B: _replace("seeds: [0, 1]", "seeds: {n: 5000}")}, [B, "seeds.n"], heavy=True),
    Case("seeds-range-start-huge", {B: _replace("seeds: [0, 1]", "seeds: {n: 2, start: 1000000000000}")},
         [B, "seeds.start"], heavy=True),
    Case("seeds-list-too-long", {B: _replace("seeds: [0, 1]", "seeds: [" + ", ".join(map(str, range(2000))) + "]")},
         [B, "seeds"], heavy=True),
    Case("negative-section-seed", {B: _replace("grounding_tasks: [scripted]}", "grounding_tasks: [scripted], seed: -3}")},
         [B, "llm.seed"]),
    Case("fraction-nan", {B: _replace("checkpoint_every: 4", "checkpoint_every: 4, imaginary_fraction: .nan")},
         [B, "train.imaginary_fraction"]),
    Case("counts-int-key", {B: _replace("far: 40", "1: 40")}, [B, "rollouts.counts", "key 1"]),
    Case("seeds-empty", {B: _replace("seeds: [0, 1]", "seeds: []")}, [B, "seeds", "at least 1"]),
    Case("data-path-missing", {B: _replace("data: {episodes: 120, seed: 0}", "data: {path: nodata}")}, [B, "data.path"]),
    Case("error-in-included-file", {B: "include: base.yaml\nsuite: child\n",
                                    "base.yaml": _replace("steps: 12", "steps: -1")}, ["base.yaml", "train.steps"]),
    # -- overrides
    Case("ov-unknown-field", {B: SUITE}, [OV, "train.stepz"], overrides=["train.stepz=3"]),
    Case("ov-wrong-type", {B: SUITE}, [OV, "train.steps"], overrides=["train.steps=lots"]),
    Case("ov-index-out-of-range", {B: SUITE}, [OV, "algorithms[3]"], overrides=["algorithms[3].name=x"]),
    Case("ov-negative-index", {B: SUITE}, [OV, "seeds"], overrides=["seeds[-1]=3"]),
    Case("ov-append-to-int", {B: SUITE}, [OV, "train.steps"], overrides=["train.steps+=3"]),
    Case("ov-key-under-int-field", {B: SUITE}, [OV, "train.steps"], overrides=["train.steps.x=1"]),
    Case("ov-no-equals", {B: SUITE}, [OV, "key.path=value"], overrides=["train.steps"]),
    Case("ov-empty-segment", {B: SUITE}, [OV, "train..steps"], overrides=["train..steps=3"]),
    Case("ov-unclosed-bracket", {B: SUITE}, [OV, "seeds[0"], overrides=["seeds[0=3"]),
    Case("ov-alias-bomb", {B: SUITE}, [OV, "data.options"],
         overrides=["data.options={a: &a [x, x, x, x, x, x, x, x, x], " + ", ".join(
             f"{c}: &{c} [" + ", ".join([f"*{p}"] * 9) + "]" for p, c in zip("abcdefgh", "bcdefghi")) + "}"], heavy=True),
    Case("ov-duplicate-key", {B: SUITE}, [OV, "train.steps"], overrides=["train={steps: 3, steps: 4}"]),
    Case("ov-negative-seed", {B: SUITE}, [OV, "seeds[1]"], overrides=["seeds[1]=-4"]),
]


def _materialise(case: Case, where: Path) -> Path:
    for name, content in case.files.items():
        path = where / name
        if isinstance(content, Link):
            os.symlink(content.target, path)
        elif content is DIR:
            path.mkdir(parents=True, exist_ok=True)
        else:
            if callable(content):
                content = content()
            if isinstance(content, str):
                content = content.encode()
            path.write_bytes(content)
    first = case.suite or next(iter(case.files))
    return Path(first) if Path(first).is_absolute() else where / first


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real command line in a subprocess with 1 GiB of address space and a 30 s limit."""
    return subprocess.run([sys.executable, "-m", "kalm_bench.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=TIME_LIMIT, preexec_fn=_limit_memory, env=dict(os.environ))


def _assert_one_line(rc: int, output: str, expect: list[str]) -> None:
    assert "Traceback" not in output, output[-3000:]
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}: {output[-3000:]}"
    assert len(lines) == 1, output[-3000:]
    for word in expect:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"


def _args(case: Case, suite: Path) -> list[str]:
    return [str(suite)] + [a for o in case.overrides for a in ("-x", o)]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_validate_refuses_with_one_line(core_env, case):
    suite = _materialise(case, core_env)
    proc = _cli("validate", *_args(case, suite), cwd=core_env)
    _assert_one_line(proc.returncode, proc.stdout + proc.stderr, case.expect)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_refuses_with_one_line(core_env, case, capsys, monkeypatch):
    suite = _materialise(case, core_env)
    args = ["run", *_args(case, suite), "-o", str(core_env / "out")]
    if case.heavy:
        proc = _cli(*args, cwd=core_env)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    else:
        from kalm_bench.cli import main

        monkeypatch.chdir(core_env)
        with pytest.raises(SystemExit) as exc:
            main(args)
        rc, output = exc.value.code, "".join(capsys.readouterr())
    _assert_one_line(rc, output, case.expect)
    assert not (core_env / "out").exists()


def test_valid_suite_still_validates(core_env):
    (core_env / "ok.yaml").write_text(SUITE)
    proc = _cli("validate", str(core_env / "ok.yaml"), cwd=core_env)
    assert proc.returncode == 0 and proc.stdout.startswith("ok: line v1"), proc.stdout + proc.stderr


@pytest.mark.parametrize("where", ["under-file", "read-only"])
def test_run_output_that_cannot_be_written_is_refused_before_any_work(core_env, where):
    (core_env / "ok.yaml").write_text(SUITE)
    if where == "under-file":
        (core_env / "afile").write_text("x")
        out = core_env / "afile" / "results"
    elif os.geteuid() != 0:
        ro = core_env / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "results"
    else:  # root writes through permission bits; a location no one can create
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc")
        out = Path("/proc/kalm-bench-results")
    cache = core_env / "cache"
    proc = _cli("run", str(core_env / "ok.yaml"), "-o", str(out), "--cache", str(cache), cwd=core_env)
    _assert_one_line(proc.returncode, proc.stdout + proc.stderr, [out.name, "--output"])
    assert not (cache / "dataset").exists() and not list(cache.glob("**/stage.json"))


def test_output_that_is_a_file_is_refused(core_env):
    (core_env / "ok.yaml").write_text(SUITE)
    (core_env / "afile").write_text("x")
    proc = _cli("run", str(core_env / "ok.yaml"), "-o", str(core_env / "afile"), cwd=core_env)
    _assert_one_line(proc.returncode, proc.stdout + proc.stderr, ["afile", "--output"])


# -- what stays accepted


ALIASES = """\
suite: line
env: {name: line-world}
data: {episodes: 120, options: &o {a: 1}}
encoder: {name: hash}
llm: {backend: scripted-llm, grounding_tasks: [scripted]}
rollouts: {counts: {rephrase: 40, far: 40}, for_level: {seen: rephrase}, sources: {x: *o}}
algorithms:
  - {name: tabular-bc, variants: [base, kalm]}
seeds: [0, 1]
train: {<<: {steps: 12, checkpoint_every: 4}, steps: 16}
"""


def test_moderate_aliases_merge_keys_and_overrides_still_load(core_env):
    from kalm_bench.suite import load_suite

    path = core_env / "ok.yaml"
    path.write_text(ALIASES)
    loaded = load_suite(path, ["seeds.0=3", "seeds[1]=4", "rollouts.counts.far=7", "algorithms[0].config.x=1",
                               "data.options.win=C:\\data\\[x"])
    s = loaded.suite
    assert s.train.steps == 16 and s.train.checkpoint_every == 4
    assert s.seed_list == [3, 4] and s.rollouts.counts["far"] == 7
    assert s.rollouts.sources == {"x": {"a": 1}} and s.data.options == {"a": 1, "win": "C:\\data\\[x"}
    assert loaded.source_of(("rollouts", "counts", "far")) == "-x override"


def test_default_last_k_adapts_to_fewer_checkpoints(core_env):
    from kalm_bench.plan import build_plan
    from kalm_bench.plugins import get_registry
    from kalm_bench.suite import load_suite

    path = core_env / "ok.yaml"
    path.write_text(SUITE)  # 3 checkpoints, last_k left at its default of 5
    build_plan(load_suite(path), get_registry())
    build_plan(load_suite(path, ["eval.last_k=3"]), get_registry())


def test_reference_and_data_path_written_by_an_included_file_are_relative_to_it(core_env):
    from kalm_bench.suite import load_suite

    sub = core_env / "sub"
    sub.mkdir()
    (sub / "ref.csv").write_text("env,level\n")
    (sub / "base.yaml").write_text(SUITE.replace("data: {episodes: 120, seed: 0}", "data: {path: ds}")
                                   + "report: {reference: ref.csv}\n")
    (core_env / "child.yaml").write_text("include: sub/base.yaml\nsuite: child\n")
    loaded = load_suite(core_env / "child.yaml")
    assert loaded.resolve(loaded.suite.report.reference) == sub / "ref.csv"
    assert loaded.resolve(loaded.suite.data.path) == sub / "ds"


def test_suites_are_read_with_libyaml_when_available():
    import yaml

    from kalm_bench import yamlio

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    assert yamlio._Loader is yaml.CSafeLoader
