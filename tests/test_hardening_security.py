"""Security: trust in pickled files comes only from the command line, and plugins cannot take the names of
first-party plugins (or of each other) by the order they load in."""

from __future__ import annotations

import json
import logging
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from kb_helpers import run_cli
from kalm_bench.api import pickle_trusted
from kalm_bench.errors import PluginError
from kalm_bench.plugins import build_registry

TRUST = "KALM_BENCH_TRUST_PICKLE"
OFFLINE_RL = {"discrete-bc", "discrete-cql", "bc", "cql", "td3+bc", "awac", "iql"}


# ---------------------------------------------------------------------------------------------------------
# Pickled goal files


class _MakeMarker:
    """Unpickling this creates a directory: stands for code a hostile pickle runs when loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def hostile_goal_file(kalm_prompt_npy, tmp_path):
    """A valid KALM prompt file whose unpickling also creates ``marker``."""
    data = np.load(kalm_prompt_npy, allow_pickle=True).item()
    data["payload"] = _MakeMarker(tmp_path / "marker")
    path = tmp_path / "prompts.npy"
    np.save(path, np.array(data, dtype=object), allow_pickle=True)
    return path, tmp_path / "marker"


def _suite(tmp_path: Path, goal_file: Path, extra_env: str = "", name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""\
        suite: pickled
        env:
          name: clevr-robot
          levels: [seen, rephrase]
          config:
            goal_files: {{rephrase: {json.dumps(str(goal_file))}}}
            {extra_env}
        data: {{episodes: 20, seed: 0}}
        encoder: {{name: minilm}}
        algorithms: [{{name: discrete-bc}}]
        seeds: [0]
        train: {{steps: 2, checkpoint_every: 1}}
        eval: {{episodes: 2}}
        """))
    return path


def _plugin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """First-party entry points on, no test plugins, trust off, a private cache."""
    env = {"KALM_BENCH_LOAD_PLUGINS": "clevr,offline_rl,text,kalm", "KALM_BENCH_PLUGIN_MODULES": "",
           "KALM_BENCH_CACHE": str(tmp_path / "cache"), TRUST: ""}
    env.update(extra)
    return env


def _one_line_error(proc, *parts: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def test_pickle_trusted_reads_only_the_environment(monkeypatch):
    monkeypatch.delenv(TRUST, raising=False)
    assert pickle_trusted() is False
    for value, expected in [("1", True), ("true", True), ("YES", True), ("0", False), ("", False),
                            ("no", False), ("maybe", False)]:
        monkeypatch.setenv(TRUST, value)
        assert pickle_trusted() is expected, value


def test_validate_and_run_refuse_an_untrusted_pickled_goal_file(hostile_goal_file, tmp_path):
    goal_file, marker = hostile_goal_file
    suite = _suite(tmp_path, goal_file)
    for args in (["validate", str(suite)], ["run", str(suite), "-o", str(tmp_path / "out")],
                 ["run", str(suite), "--dry-run"]):
        proc = run_cli(*args, env=_plugin_env(tmp_path))
        _one_line_error(proc, str(suite), "env.config.goal_files.rephrase", str(goal_file), "--trust-pickle",
                        "KALM_BENCH_TRUST_PICKLE=1")
        assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_trust_from_the_environment_or_the_global_flag_loads_it(hostile_goal_file, tmp_path):
    goal_file, marker = hostile_goal_file
    suite = _suite(tmp_path, goal_file)
    ok = run_cli("validate", str(suite), env=_plugin_env(tmp_path, **{TRUST: "1"}))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    ok = run_cli("--trust-pickle", "validate", str(suite), env=_plugin_env(tmp_path))
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    assert not marker.exists()  # validate checks the trust, it does not load the file

    setting = "goal_files=" + json.dumps({"rephrase": str(goal_file)})
    refused = run_cli("clevr", "cases", "rephrase", "-n", "2", "--set", setting, env=_plugin_env(tmp_path))
    _one_line_error(refused, "goal_files.rephrase", str(goal_file), "--trust-pickle")
    assert not marker.exists()
    for prefix, env in ((["--trust-pickle"], _plugin_env(tmp_path)), ([], _plugin_env(tmp_path, **{TRUST: "1"}))):
        proc = run_cli(*prefix, "clevr", "cases", "rephrase", "-n", "2", "--set", setting, env=env)
        assert proc.returncode == 0, proc.stderr
        cases = [json.loads(line) for line in proc.stdout.splitlines()]
        assert len(cases) == 2 and all(c["level"] == "rephrase" for c in cases)
        assert marker.is_dir()  # the file was really unpickled
        marker.rmdir()


def test_the_env_config_loads_a_pickled_goal_file_only_when_trusted(hostile_goal_file, monkeypatch):
    from pydantic import ValidationError

    from kalm_bench_plugins.clevr.plugin import ClevrRobot

    goal_file, marker = hostile_goal_file
    monkeypatch.delenv(TRUST, raising=False)
    with pytest.raises(ValidationError, match="--trust-pickle"):
        ClevrRobot({"goal_files": {"rephrase": str(goal_file)}})
    assert not marker.exists()
    monkeypatch.setenv(TRUST, "1")
    env = ClevrRobot({"goal_files": {"rephrase": str(goal_file)}})
    monkeypatch.setenv(TRUST, "0")  # trust withdrawn after the config was made: the loader checks again
    from kalm_bench.errors import UserError

    with pytest.raises(UserError, match="--trust-pickle"):
        env.test_cases("rephrase", 2, seed=0)
    assert not marker.exists()


@pytest.mark.parametrize("value", ["true", "false"])
def test_trust_pickle_in_a_suite_is_refused(hostile_goal_file, tmp_path, value):
    goal_file, marker = hostile_goal_file
    suite = _suite(tmp_path, goal_file, extra_env=f"trust_pickle: {value}")
    for args in (["validate", str(suite)], ["run", str(suite), "-o", str(tmp_path / "out")]):
        proc = run_cli(*args, env=_plugin_env(tmp_path))
        _one_line_error(proc, str(suite), "env.config.trust_pickle", "--trust-pickle")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_trust_pickle_in_an_include_or_override_is_refused(hostile_goal_file, tmp_path):
    goal_file, marker = hostile_goal_file
    base = _suite(tmp_path, goal_file, name="base.yaml")
    inc = tmp_path / "inc.yaml"
    inc.write_text("include: base.yaml\nenv: {config: {trust_pickle: true}}\n")
    top = tmp_path / "top.yaml"
    top.write_text("include: inc.yaml\nsuite: top\n")
    proc = run_cli("validate", str(top), env=_plugin_env(tmp_path))
    _one_line_error(proc, str(inc), "env.config.trust_pickle", "--trust-pickle")
    proc = run_cli("run", str(base), "-x", "env.config.trust_pickle=true", env=_plugin_env(tmp_path))
    _one_line_error(proc, "-x", "env.config.trust_pickle", "--trust-pickle")
    assert not marker.exists()


def test_clevr_import_takes_its_own_or_the_global_flag(kalm_npy, tmp_path):
    env = _plugin_env(tmp_path)
    proc = run_cli("clevr", "import", str(kalm_npy), "--out", str(tmp_path / "a"), env=env)
    _one_line_error(proc, str(kalm_npy), "--trust-pickle")
    assert not (tmp_path / "a").exists()
    for i, args in enumerate((["clevr", "import", str(kalm_npy), "--trust-pickle"],
                              ["--trust-pickle", "clevr", "import", str(kalm_npy)])):
        out = tmp_path / f"ok{i}"
        proc = run_cli(*args, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr
        assert (out / "manifest.json").is_file()


def test_clevr_set_errors_are_one_line(tmp_path):
    for setting, field in (("trust_pickle=true", "--set trust_pickle"), ("nope=1", "--set nope")):
        proc = run_cli("clevr", "cases", "seen", "-n", "1", "--set", setting, env=_plugin_env(tmp_path))
        _one_line_error(proc, field)


# ---------------------------------------------------------------------------------------------------------
# Plugin names


ALGO = '''
from kalm_bench import hookimpl
from kalm_bench.api import Algorithm


def _algorithm(algo_name):
    class Fake(Algorithm):
        name = algo_name
        description = "registered by {module}"

        def train(self, ctx):
            raise RuntimeError("{module} ran")

        def load_policy(self, path, ctx):
            raise RuntimeError("{module} ran")

    return Fake


@hookimpl{marker}
def register_algorithms(register):
    for n in {names!r}:
        register(_algorithm(n))
'''


def _fake_dist(root: Path, dist: str, entry_points: dict[str, str]) -> None:
    """An installed distribution ``dist`` (a .dist-info folder on sys.path) with kalm_bench entry points."""
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kalm_bench]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def _fake_module(root: Path, module: str, names: list[str], marker: str = "") -> None:
    (root / f"{module}.py").write_text(ALGO.format(module=module, names=names, marker=marker))


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("KALM_BENCH_PLUGIN_MODULES", raising=False)
    monkeypatch.delenv("KALM_BENCH_STRICT_PLUGINS", raising=False)
    monkeypatch.setenv("KALM_BENCH_CACHE", str(tmp_path / "cache"))
    return root


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def warned():
    """Warning lines of the plugin loader (collected on its own logger, whatever else is configured)."""
    handler = _Collect()
    logger = logging.getLogger("kalm_bench.plugins")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


@pytest.mark.parametrize("marker", ["", "(trylast=True)", "(tryfirst=True)"])
def test_an_impostor_cannot_replace_a_builtin_algorithm(site, monkeypatch, warned, marker):
    _fake_module(site, "aaa_impostor", ["discrete-bc", "aaa-extra"], marker)
    _fake_dist(site, "aaa-impostor", {"aaa": "aaa_impostor"})
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "aaa,offline_rl")
    reg = build_registry()
    assert reg.plugin_of("algorithms", "discrete-bc").name == "offline_rl"
    assert set(reg.names("algorithms")) == OFFLINE_RL  # all seven; nothing of the impostor's
    assert reg.plugins["offline_rl"].error is None and reg.plugins["offline_rl"].first_party
    aaa = reg.plugins["aaa"]
    assert not aaa.first_party and aaa.registered == {}
    assert "discrete-bc" in aaa.error and "offline_rl" in aaa.error
    assert reg.pm.get_plugin("aaa") is None  # none of its hooks (e.g. commands) is called later
    [line] = warned
    assert "'aaa'" in line and "'offline_rl'" in line and "'discrete-bc'" in line


def test_an_entry_point_named_like_a_first_party_one_cannot_replace_it(site, monkeypatch, warned):
    _fake_module(site, "evil_offline_rl", ["discrete-bc"])
    _fake_dist(site, "evil", {"offline_rl": "evil_offline_rl"})
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "offline_rl")
    reg = build_registry()
    assert reg.plugins["offline_rl"].dist == "kalm-bench" and reg.plugins["offline_rl"].error is None
    assert set(reg.names("algorithms")) == OFFLINE_RL
    assert reg.plugin_of("algorithms", "discrete-bc").module == "kalm_bench_plugins.offline_rl"
    [refused] = [p for p in reg.failures()]
    assert refused.dist == "evil" and "offline_rl" in refused.error
    assert any("offline_rl" in w and "refused" in w for w in warned)


def test_a_plugin_module_named_like_a_loaded_plugin_does_not_switch_it_off(site, monkeypatch):
    import types

    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "offline_rl")
    reg = build_registry(extra=[("offline_rl", types.ModuleType("other"))])
    assert reg.plugins["offline_rl"].error is None and set(reg.names("algorithms")) == OFFLINE_RL
    assert any("already taken" in (p.error or "") for p in reg.failures())


def test_two_third_party_plugins_colliding_first_by_name_wins(site, monkeypatch, warned):
    _fake_module(site, "bbb_mod", ["shared-algo", "bbb-only"])
    _fake_module(site, "aaa_mod", ["shared-algo", "aaa-only"])
    _fake_dist(site, "zz-dist", {"bbb": "bbb_mod"})
    _fake_dist(site, "aa-second", {"aaa": "aaa_mod"})
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "aaa,bbb")
    reg = build_registry()
    assert reg.names("algorithms") == ["aaa-only", "shared-algo"]
    assert reg.plugin_of("algorithms", "shared-algo").name == "aaa"
    assert "shared-algo" in reg.plugins["bbb"].error and "'aaa'" in reg.plugins["bbb"].error
    [line] = warned
    assert "'bbb'" in line and "'aaa'" in line and "'shared-algo'" in line


def test_strict_mode_makes_a_refusal_an_error(site, monkeypatch):
    _fake_module(site, "aaa_impostor", ["discrete-bc"])
    _fake_dist(site, "aaa-impostor", {"aaa": "aaa_impostor"})
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "aaa,offline_rl")
    monkeypatch.setenv("KALM_BENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="'aaa'.*discrete-bc.*offline_rl"):
        build_registry()


def test_cli_shows_the_refusal_and_keeps_the_builtin(site, tmp_path):
    _fake_module(site, "aaa_impostor", ["discrete-bc"])
    _fake_dist(site, "aaa-impostor", {"aaa": "aaa_impostor"})
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "KALM_BENCH_LOAD_PLUGINS": "aaa,offline_rl", "KALM_BENCH_PLUGIN_MODULES": ""}
    proc = run_cli("plugins", env=env)
    assert proc.returncode == 0, proc.stderr
    refusal = "FAILED TO LOAD: refused: algorithm 'discrete-bc' is already registered by plugin 'offline_rl'"
    assert refusal in proc.stdout
    warning = [line for line in proc.stderr.splitlines() if "refused" in line]
    assert len(warning) == 1 and "'aaa'" in warning[0] and "'offline_rl'" in warning[0]
    rows = json.loads(run_cli("ls", "algorithms", "--json", env=env, check=True).stdout)
    assert {r["name"]: r["plugin"] for r in rows}["discrete-bc"] == "offline_rl"
    assert {r["name"] for r in rows} == OFFLINE_RL
    strict = run_cli("plugins", env={**env, "KALM_BENCH_STRICT_PLUGINS": "1"})
    # strict mode still lists every plugin and the refusal, then fails with one error line
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert refusal in strict.stdout and "offline_rl" in strict.stdout
    last = strict.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "'aaa'" in last and "discrete-bc" in last
    _one_line_error(run_cli("validate", "nothing.yaml", env={**env, "KALM_BENCH_STRICT_PLUGINS": "1"}),
                    "'aaa'", "discrete-bc", "offline_rl")


CMD_PLUGIN = '''
import click
from kalm_bench import hookimpl


@hookimpl
def register_commands(cli):
    @cli.command("run")
    def run():
        """impostor"""
        click.echo("HIJACKED")

    @cli.command("extra-cmd")
    def extra():
        click.echo("extra ok")
'''


def test_a_plugin_command_cannot_replace_a_builtin_command(site, tmp_path):
    (site / "cmd_impostor.py").write_text(CMD_PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "KALM_BENCH_LOAD_PLUGINS": "", "KALM_BENCH_PLUGIN_MODULES": "cmd_impostor"}
    proc = run_cli("run", "--help", env=env)
    assert proc.returncode == 0 and "HIJACKED" not in proc.stdout and "Run a suite" in proc.stdout
    assert "command 'run' refused" in proc.stderr and "'kalm-bench'" in proc.stderr
    assert run_cli("extra-cmd", env=env, check=True).stdout.strip() == "extra ok"  # the others still load
    listed = run_cli("plugins", env=env).stdout
    assert "command 'run' refused" in listed


BROKEN = """
import not_installed_dependency_xyz
"""


def test_an_unknown_name_points_at_the_plugin_that_failed_to_load(site, monkeypatch):
    (site / "broken_algos.py").write_text(BROKEN)
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "offline_rl")
    monkeypatch.setenv("KALM_BENCH_PLUGIN_MODULES", "broken_algos")
    reg = build_registry()
    with pytest.raises(Exception) as info:
        reg.get("algorithms", "their-algo")
    text = str(info.value)
    assert "unknown algorithm 'their-algo'" in text and "'broken_algos'" in text
    assert "not_installed_dependency_xyz" in text and "kalm-bench plugins" in text


def test_a_first_party_plugin_without_its_extra_names_the_pip_command(site, monkeypatch):
    import kalm_bench.plugins as plugins_mod

    (site / "needs_extra.py").write_text(BROKEN)
    _fake_dist(site, "extra-dist", {"metaworld_like": "needs_extra"})
    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "metaworld_like")
    monkeypatch.setattr(plugins_mod, "is_first_party", lambda ep: ep.name == "metaworld_like")
    reg = build_registry()
    assert "pip install 'kalm-bench[metaworld_like]'" in reg.plugins["metaworld_like"].error
