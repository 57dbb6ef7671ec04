"""The plugin contract: first-party plugins use the public API only, the harness and KALM read declared
capabilities instead of probing plugin objects, and every bundled environment declares what it must."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kalm_bench import api

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

# Files exempt from the scan (none: shared code such as kalm_bench_plugins.d3rlpy_layer is a module of its
# own, which the scan allows, not another plugin's package).
ALLOWED_PRIVATE_IMPORTS: set[str] = set()

PUBLIC_MODULES = {"kalm_bench", "kalm_bench.api"}


def _plugin_package(path: Path) -> str | None:
    """``X`` of ``kalm_bench_plugins.X`` for a file of plugins/X/; None for plugins/*.py modules."""
    rel = path.relative_to(PLUGINS)
    return rel.parts[0] if len(rel.parts) > 1 else None


def _imports(tree: ast.AST) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import, lazy ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def import_violations(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    own = _plugin_package(path)
    problems = []
    for line, module, names in _imports(ast.parse(path.read_text(), str(path))):
        where = f"{rel}:{line}"
        if module == "kalm_bench" or module.startswith("kalm_bench."):
            if module not in PUBLIC_MODULES:
                problems.append(f"{where}: imports {module} (only kalm_bench / kalm_bench.api are public)")
            for name in names:
                if name.startswith("_"):
                    problems.append(f"{where}: imports the private name {name} from {module}")
                elif module == "kalm_bench.api" and name != "*" and name not in api.__all__:
                    problems.append(f"{where}: imports {name}, which kalm_bench.api does not export")
        elif module.startswith("kalm_bench_plugins."):
            other = module.split(".")[1]
            if own is not None and other != own and (ROOT / "plugins" / other).is_dir():
                problems.append(f"{where}: imports the plugin package kalm_bench_plugins.{other}")
    return problems


def test_first_party_plugins_import_only_the_public_api():
    problems = []
    for path in sorted(PLUGINS.rglob("*.py")):
        if path.relative_to(ROOT).as_posix() not in ALLOWED_PRIVATE_IMPORTS:
            problems += import_violations(path)
    assert problems == []


def test_the_import_scan_catches_each_kind_of_violation(tmp_path, monkeypatch):
    fake_root = tmp_path
    (fake_root / "plugins" / "kalm").mkdir(parents=True)
    (fake_root / "plugins" / "clevr").mkdir()
    bad = fake_root / "plugins" / "kalm" / "x.py"
    bad.write_text("from kalm_bench.errors import UserError\n"
                   "from kalm_bench.api import _secret\n"
                   "def f():\n    from kalm_bench_plugins.clevr import env\n"
                   "from kalm_bench_plugins.kalm import tasks\n"
                   "from kalm_bench.api import Environment\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    monkeypatch.setattr(sys.modules[__name__], "PLUGINS", fake_root / "plugins")
    found = import_violations(bad)
    assert len(found) == 3, found
    assert "kalm_bench.errors" in found[0] or any("kalm_bench.errors" in f for f in found)
    assert any("_secret" in f for f in found) and any("kalm_bench_plugins.clevr" in f for f in found)


def test_allow_listed_files_exist():
    for rel in ALLOWED_PRIVATE_IMPORTS:
        assert (ROOT / rel).is_file(), rel


# ---------------------------------------------------------------------------------------------------------
# No probing of plugin objects

# (file, first argument of the getattr call as source text): the legitimate uses, none on a plugin object.
ALLOWED_GETATTR = {
    ("harness/cli.py", "origin"),  # typing objects
    ("harness/cli.py", "annotation"),
    ("harness/cli.py", "exc"),  # a YAML/pydantic exception
    ("harness/yamlio.py", "exc"),  # PyYAML's marked errors
    ("harness/datasets.py", "p"),  # the dataset's own arrays by field name
    ("harness/datasets.py", "self"),
    ("harness/datasets.py", "ds"),
    ("harness/plugins.py", "ep"),  # importlib.metadata entry points
    ("harness/plugins.py", "pm.hook"),  # pluggy's hook relay
    ("harness/plugins.py", "obj"),  # the registration check itself, on a class being registered
    ("harness/suite.py", "self.suite"),  # a pydantic model's sections
    ("harness/logs.py", "h"),  # logging handlers
    ("plugins/kalm/hf.py", "cfg"),  # a transformers config
}


def getattr_uses(paths: list[Path]) -> set[tuple[str, str]]:
    uses = set()
    for path in paths:
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                    and node.args:
                uses.add((rel, ast.unparse(node.args[0])))
    return uses


def test_no_getattr_probing_of_plugin_objects():
    files = sorted((ROOT / "harness").rglob("*.py")) + sorted((ROOT / "plugins" / "kalm").rglob("*.py"))
    unexpected = getattr_uses(files) - ALLOWED_GETATTR
    assert unexpected == set(), "declare a capability on the API instead of probing: " + repr(unexpected)


def test_the_getattr_scan_sees_probes(tmp_path, monkeypatch):
    f = tmp_path / "harness" / "x.py"
    f.parent.mkdir()
    f.write_text("def h(env):\n    return getattr(env, 'horizon', 50)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert getattr_uses([f]) == {("harness/x.py", "env")}


# ---------------------------------------------------------------------------------------------------------
# Declared capabilities


def _envs():
    from kalm_bench_plugins.clevr.plugin import ClevrRobot
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    sys.path.insert(0, str(ROOT / "tests"))
    from kb_testplugins import LineWorld

    return [ClevrRobot, MetaworldEnvironment, LineWorld]


@pytest.mark.parametrize("cls", _envs(), ids=lambda c: c.name)
def test_bundled_envs_declare_every_required_capability(cls):
    assert cls.missing_declarations() == []
    assert isinstance(cls.action_size, int) and cls.action_size > 0
    assert isinstance(cls.state_dim, int) and cls.state_dim > 0
    assert isinstance(cls.levels, dict) and cls.action_kind in ("discrete", "continuous")
    assert cls.can_label is True
    assert "instruction" in cls.case_fields and set(cls.imagination_case_fields) >= {"instruction",
                                                                                      "initial_state"}


def test_line_world_cases_carry_their_declared_fields_and_goals_round_trip():
    line = _envs()[2]()
    cases = line.test_cases("seen", 5, 0)
    assert line.missing_case_fields(cases, line.case_fields) == []
    for case in cases:
        goal = line.goal_of(case)
        assert goal == case["goal"]
        states = np.array([case["initial_state"], [goal]], np.float32)
        assert line.label_rollout("seen", line.case_for_goal(goal), states, np.array([1])).success


def test_clevr_declares_its_table_as_state_bounds():
    from kalm_bench_plugins.clevr.env import OBS_HIGH, OBS_LOW
    from kalm_bench_plugins.clevr.plugin import ClevrRobot

    env = ClevrRobot()
    lo, hi = env.state_bounds()
    np.testing.assert_array_equal(lo, OBS_LOW)
    np.testing.assert_array_equal(hi, OBS_HIGH)
    assert len(lo) == env.state_dim
    case = env.test_cases("seen", 1, 0)[0]
    assert env.missing_case_fields([case], env.case_fields) == []
    assert env.case_for_goal(env.goal_of(case)) == {"goal": case["goal"]}


def test_metaworld_state_bounds_match_its_width():
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    lo, hi = MetaworldEnvironment().state_bounds()
    assert lo.shape == hi.shape == (MetaworldEnvironment.state_dim,) and np.all(lo <= hi)
    goal = {"task": "reach", "rand_vec": [0.0]}
    assert MetaworldEnvironment().case_for_goal(goal)["task"] == "reach"


def test_defining_label_rollout_declares_can_label_and_the_default_cannot():
    class Labels(api.Environment):
        def label_rollout(self, level, case, states, actions):
            raise AssertionError

    class Declines(Labels):
        can_label = False

    assert Labels.can_label and not Declines.can_label and not api.Environment.can_label
    assert set(Labels.missing_declarations()) == set(api.REQUIRED_ENV_DECLARATIONS)


# ---------------------------------------------------------------------------------------------------------
# An env without what KALM needs fails with one line naming the env and the field


class _NoStart(api.Environment):
    """Cases without ``initial_state``: fine for ``base``, not for KALM."""

    name = "no-start"
    levels = {"seen": "s", "far": "f"}
    action_kind = "discrete"
    action_size = 2
    state_dim = 1
    horizon = 3

    def make(self, level):
        raise AssertionError("must fail before making an env")

    def generate_dataset(self, n_episodes, seed, progress=api.no_progress, **options):
        raise AssertionError

    def test_cases(self, level, n, seed):
        return [{"instruction": "go", "goal": 1} for _ in range(n or 2)]

    def label_rollout(self, level, case, states, actions):
        raise AssertionError


def _ctx(env, labels="oracle", llm=None):
    return api.ImagineContext(model_dir=None, env=env, level="far", goals=env.sample_goals("far", 2, 0), seed=0,
                              labels=labels, llm=llm)


def test_kalm_backend_refuses_goals_without_initial_state_before_loading_a_model(tmp_path):
    from kalm_bench_plugins.kalm.backends import EmbeddedBackend

    with pytest.raises(api.UserError) as err:
        EmbeddedBackend().imagine(_ctx(_NoStart()))
    msg = str(err.value)
    assert "'no-start'" in msg and "'initial_state'" in msg and "\n" not in msg


@pytest.mark.parametrize("source", ["llm", "random"])
def test_rollout_sources_refuse_goals_without_initial_state(source):
    from kalm_bench.builtin.sources import LLMSource, RandomSource

    env = _NoStart()
    llm = api.LLMHandle(backend=None, path=Path("."))  # never reached
    src = LLMSource() if source == "llm" else RandomSource()
    with pytest.raises(api.UserError, match=r"'no-start'.*'initial_state'"):
        src.propose(_ctx(env, llm=llm))


def test_oracle_labels_need_label_rollout():
    class NoLabels(_NoStart):
        can_label = False

        def sample_goals(self, level, n, seed):
            return [{"instruction": "go", "goal": 1, "initial_state": [0.0]}]

    with pytest.raises(api.UserError, match="cannot label rollouts"):
        NoLabels().require_imagination("far", labels="oracle")
    NoLabels().require_imagination("far", labels="model")  # the model's own labels need none


def test_missing_declarations_are_named():
    class Bare(api.Environment):
        name = "bare"
        levels = {"seen": "s"}
        action_kind = "discrete"
        horizon = 2
        make = generate_dataset = test_cases = _NoStart.make

    assert Bare.missing_declarations() == ["action_size", "state_dim"]
    with pytest.raises(api.UserError, match="'bare' does not declare action_size, state_dim"):
        Bare().require_imagination("seen", goals=[])
    assert _NoStart.missing_declarations() == []


def test_measure_takes_components_instead_of_building_the_registry():
    import inspect

    from kalm_bench_plugins.kalm import measure

    params = inspect.signature(measure.main).parameters
    assert {"env", "backend", "tasks"} <= set(params)
    assert "build_registry" not in Path(measure.__file__).read_text()


# ---------------------------------------------------------------------------------------------------------
# The example packages


EXAMPLES = ROOT / "examples"
CORRIDOR = EXAMPLES / "kalm-bench-corridor"
LOOKUP = EXAMPLES / "kalm-bench-lookup-llm"


def _cli(args: list[str], tmp_path: Path, modules: str, paths: list[Path], load: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALM_BENCH_")}
    env.update(KALM_BENCH_PLUGIN_MODULES=modules, KALM_BENCH_LOAD_PLUGINS=load, KALM_BENCH_IN_PROCESS="1",
               KALM_BENCH_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join([*(str(p) for p in paths), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "kalm_bench.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)


def test_example_environment_declares_the_whole_contract():
    sys.path.insert(0, str(CORRIDOR))
    try:
        from kalm_bench_corridor import Corridor
    finally:
        sys.path.remove(str(CORRIDOR))
    env = Corridor()
    assert Corridor.missing_declarations() == [] and Corridor.can_label
    assert (CORRIDOR / "pyproject.toml").read_text().count('corridor = "kalm_bench_corridor"') == 1
    for level in env.levels:
        env.require_imagination(level, labels="oracle")
        cases = env.test_cases(level, 5, 0)
        assert env.missing_case_fields(cases, env.case_fields) == []
    ds = env.generate_dataset(20, 0)
    assert ds.state_dim == env.state_dim and int(ds.action_size) == env.action_size
    lo, hi = env.state_bounds()
    assert np.all(env.realistic_states(ds.states)) and np.all((ds.states >= lo) & (ds.states <= hi))
    res = env.evaluate(_Expert(), "far", env.test_cases("far", 6, 0), seed=0)
    assert res.success.all()  # the expert solves every case: make/reset/step agree with label_rollout
    with pytest.raises(api.UserError, match="unknown dataset option"):
        env.generate_dataset(2, 0, speed=1)


class _Expert(api.Policy):
    def act(self, batch):
        return np.array([1 if int(i.split()[-1]) > s[0] else 0 for i, s in zip(batch.instructions, batch.states)])

    def save(self, path):
        raise AssertionError


def test_example_environment_validates_and_runs_base_bc(tmp_path):
    suite = tmp_path / "corridor.yaml"
    suite.write_text("suite: corridor-test\nenv: {name: corridor}\ndata: {episodes: 60}\n"
                     "encoder: {name: hash, config: {size: 32}}\n"
                     "algorithms: [{name: discrete-bc, label: BC, variants: [base]}]\nseeds: [0]\n"
                     "train: {steps: 10, checkpoint_every: 10}\neval: {episodes: 10}\n")
    args = dict(tmp_path=tmp_path, modules="kalm_bench_corridor,kb_testplugins", load="offline_rl",
                paths=[CORRIDOR, ROOT / "tests"])
    shipped = _cli(["validate", str(CORRIDOR / "suite.yaml")], **{**args, "load": "offline_rl,text"})
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    assert _cli(["validate", str(suite)], **args).returncode == 0
    run = _cli(["run", str(suite), "-o", str(tmp_path / "res")], **args)
    assert run.returncode == 0, run.stdout + run.stderr
    import json

    records = [json.loads(line) for line in (tmp_path / "res" / "records.jsonl").read_text().splitlines()]
    assert {r["level"] for r in records} == {"seen", "far"} and all(r["status"] == "ok" for r in records)


def test_example_llm_backend_imagines_labels_and_judges_through_the_engine_route(tmp_path):
    sys.path[:0] = [str(LOOKUP), str(ROOT / "tests")]
    try:
        from kalm_bench_lookup_llm import LookupLLM
        from kb_testplugins import LineWorld
    finally:
        del sys.path[:2]
    from kalm_bench_plugins.kalm.backends import KalmBackend

    env = LineWorld()
    data = env.generate_dataset(40, 0)
    backend = LookupLLM({"diagnostics_goals": 5, "diagnostics_explain": 3})
    assert isinstance(backend, KalmBackend)
    backend.ground(api.GroundingContext(dataset=data, env=env, tasks=[], seed=0, workdir=tmp_path / "m"))
    goals = env.sample_goals("far", 6, 1)
    ctx = api.ImagineContext(model_dir=tmp_path / "m", env=env, level="far", goals=goals, seed=0, labels="oracle")
    imagined = backend.imagine(ctx)
    assert imagined.n_episodes == 6 and imagined.env == env.name and int(imagined.action_size) == 3
    assert [str(i) for i in imagined.instructions] == [g["instruction"] for g in goals]
    assert np.all(imagined.lengths <= env.horizon)
    judged = backend.judge(tmp_path / "m", env, "far", goals, [(e.states, e.actions) for e in imagined.episodes()])
    assert not any(lab.success for lab in judged)  # this model's success head never fires
    diag = backend.diagnostics(tmp_path / "m", env, data, 0)
    assert "goal_match_far" in diag and "out_of_workbench_rate_far" in diag
    with pytest.raises(api.UserError, match="lookup-llm model directory"):
        backend.engine(tmp_path)
