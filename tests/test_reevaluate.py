"""`kalm-bench eval`: trained policies of a results directory evaluated again under changed env options,
building the evaluation stages only."""

from __future__ import annotations

import json
import re

from kb_helpers import run_cli
from kalm_bench.records import load_records


def _built(text: str) -> tuple[int, int]:
    m = re.search(r"stages built (\d+), reused (\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_a_new_goal_wording_rebuilds_only_that_levels_evaluations(core_env, suite_file):
    first = run_cli("run", str(suite_file), "-o", str(core_env / "a"), check=True)
    assert _built(first.stdout)[0] > 12
    proc = run_cli("eval", str(core_env / "a"), "--set", "wording.far=walk to cell {t}", "-o",
                   str(core_env / "b"), check=True)
    # 12 runs: the 4 far evaluations (2 seeds × base and KALM) read the new wording; nothing else is built.
    # Reused: the dataset, 2 groundings and their diagnostics, 4 rollouts, 6 trainings and the 8 other evaluations.
    assert _built(proc.stdout) == (4, 1 + 2 + 2 + 4 + 6 + 8), proc.stdout
    assert "stages to build: 4 eval" in proc.stderr
    before = {(r["algorithm"], r["variant"], r["level"], r["seed"]): r for r in load_records(core_env / "a")}
    after = {(r["algorithm"], r["variant"], r["level"], r["seed"]): r for r in load_records(core_env / "b")}
    assert set(before) == set(after)
    for key, rec in after.items():
        assert rec["data_keys"]["train"] == before[key]["data_keys"]["train"]  # the same trained policy
        wording = rec["components"]["env"]["params"]["wording"]
        if key[2] == "far":
            assert wording == {"far": "walk to cell {t}"}
            assert rec["data_keys"]["eval"] != before[key]["data_keys"]["eval"]
            # The policies never saw this wording (a lookup table of observations): they stand still.
            assert rec["success_rate"] == 0.0
        else:
            assert wording == {} and rec == {**rec, "success_rate": before[key]["success_rate"]}
    assert any(before[k]["success_rate"] > 0 for k in before if k[2] == "far")
    plan = json.loads((core_env / "b" / "plan.json").read_text())
    assert plan["config"]["env"]["config"]["wording"] == {"far": "walk to cell {t}"}
    # Once more: everything is done.
    again = run_cli("eval", str(core_env / "a"), "--set", "wording.far=walk to cell {t}", "-o", str(core_env / "b"),
                    check=True)
    assert "0 ok, 0 failed, 12 already done" in again.stdout


def test_other_levels_and_eval_fields(core_env, suite_file):
    run_cli("run", str(suite_file), "-o", str(core_env / "a"), check=True)
    only_seen = run_cli("eval", str(core_env / "a"), "--levels", "seen", "-o", str(core_env / "s"), check=True)
    assert _built(only_seen.stdout)[0] == 0 and "4 ok" in only_seen.stdout  # the same evaluations: cached
    more = run_cli("eval", str(core_env / "a"), "-x", "eval.episodes=7", "--levels", "seen,far", "-o",
                   str(core_env / "m"), check=True)
    assert _built(more.stdout)[0] == 8  # 2 levels × 2 variants × 2 seeds, 7 cases each
    assert {r["n_eval_episodes"] for r in load_records(core_env / "m")} == {7}


def test_bad_requests_are_one_line(core_env, suite_file):
    run_cli("run", str(suite_file), "-o", str(core_env / "a"), check=True)
    cases = [
        (["-x", "train.steps=3"], "-x", "only eval.*"),
        (["--set", "nope=1"], "env.config.nope", "unknown option"),
        (["--set", "wording"], "--set", "KEY=VALUE"),
        (["--levels", "moon"], "env.levels", "unknown level"),
        (["-o", str(core_env / "a")], "--output", "own results directory"),
    ]
    for args, field, text in cases:
        proc = run_cli("eval", str(core_env / "a"), *args)
        assert proc.returncode == 2 and field in proc.stderr and text in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
    nothing = run_cli("eval", str(core_env / "nowhere"))
    assert nothing.returncode == 2 and "plan.json" in nothing.stderr
