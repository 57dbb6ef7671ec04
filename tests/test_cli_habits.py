"""Command-line habits: `ls` with and without a kind, one component's options, `-V`, shell completion."""

from __future__ import annotations

import json

from kb_helpers import run_cli

from kalm_bench import __version__


def test_ls_without_a_kind_lists_every_kind(core_env):
    out = run_cli("ls", check=True).stdout
    assert "envs:\n  line-world" in out and "algorithms:\n" in out and "  tabular-bc" in out
    assert "reporters:\n" in out and "  json" in out
    rows = json.loads(run_cli("ls", "--json", check=True).stdout)
    assert {"envs", "algorithms", "reporters", "rollout_sources"} <= {r["kind"] for r in rows}


def test_ls_one_component_shows_types_defaults_and_presets(core_env):
    out = run_cli("ls", "algorithms", "tabular-bc", check=True).stdout
    assert "batch_size: int (default 32)" in out
    assert "preset tiny: batch_size=4" in out
    doc = json.loads(run_cli("ls", "algorithms", "tabular-bc", "--json", check=True).stdout)
    opt = {o["name"]: o for o in doc["options"]}["batch_size"]
    assert (opt["type"], opt["default"], opt["required"]) == ("int", 32, False)
    env = run_cli("ls", "envs", "line-world", check=True).stdout
    assert "case_offset: int (default 0; read from the evaluation stage on)" in env
    assert "wording: dict[str, str] (default {}; per level)" in env
    assert "noise: float (default 0.0; read from the data" in env
    doc = json.loads(run_cli("ls", "envs", "line-world", "--json").stdout)
    scopes = {o["name"]: o["scope"] for o in doc["options"]}
    assert scopes["unrealistic_cell"] == "imagination"
    bad = run_cli("ls", "algorithms", "nope")
    assert bad.returncode == 2 and "unknown algorithm 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_short_version_flag_and_completion_script(core_env):
    assert run_cli("-V", check=True).stdout.strip() == f"kalm-bench, version {__version__}"
    script = run_cli(env={"_KALM_BENCH_COMPLETE": "bash_source"}, check=True).stdout
    assert "_kalm_bench_completion" in script


def test_rerun_failed_says_it_retries_what_failed(core_env, suite_file):
    out = core_env / "out"
    failing = ("-x", "algorithms[0].config.fail=true")
    first = run_cli("run", str(suite_file), "-o", str(out), *failing, "-x", "seeds=[0]")
    assert first.returncode == 1 and "failed" in first.stdout
    n_failed = int(first.stdout.split(" ok, ")[1].split(" failed")[0])
    plain = run_cli("run", str(suite_file), "-o", str(out), *failing, "-x", "seeds=[0]")
    assert f"{n_failed} failed earlier" in plain.stdout and "retried" not in plain.stdout
    dry = run_cli("run", str(suite_file), "-o", str(out), *failing, "-x", "seeds=[0]", "--dry-run",
                  "--rerun-failed").stdout
    assert f"({n_failed} of them failed earlier)" in dry and "to run again (failed earlier)" in dry
    again = run_cli("run", str(suite_file), "-o", str(out), *failing, "-x", "seeds=[0]", "--rerun-failed")
    assert f"({n_failed} of these retried after failing earlier)" in again.stdout
    assert "0 failed earlier" not in again.stdout and "0 failed earlier" not in again.stderr
    assert f"retrying {n_failed} that failed earlier" in again.stderr


def test_show_config_resolves_presets_and_defaults(core_env, suite_file):
    import yaml

    shown = yaml.safe_load(run_cli("run", str(suite_file), "--show-config", "-x", "algorithms[0].preset=tiny",
                                   check=True).stdout)
    algo = shown["resolved"]["algorithms"]["tabular-bc"]
    assert algo["name"] == "tabular-bc" and algo["config"]["batch_size"] == 4  # the preset's value
    assert algo["config"]["sleep_s"] == 0.0 and algo["config"]["fail"] is False  # the defaults
    assert shown["resolved"]["env"]["name"] == "line-world"
    assert shown["resolved"]["llm_backends"]["tabular-bc"]["name"] == "scripted-llm"


def test_help_imports_no_heavy_library():
    import subprocess
    import sys

    # What the console script does: every plugin is loaded (their commands are listed), then --help. (Gymnasium
    # is imported: the first-party plugins register their Gymnasium ids on import.)
    code = ("import sys\nfrom kalm_bench.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'kalm_bench_plugins.clevr' in sys.modules\n"
            "print(sorted(m for m in ('pandas', 'torch', 'd3rlpy', 'transformers', 'mujoco', 'metaworld', 'tabulate')"
            " if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # every plugin loaded, none of its heavy imports
