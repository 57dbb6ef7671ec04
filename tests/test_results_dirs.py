"""Where a run writes, what it leaves alone, what --dry-run says, and the progress lines it logs."""

from __future__ import annotations

import json
import re

from kb_helpers import run_cli


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_default_output_is_runs_not_the_committed_results(core_env, suite_file, monkeypatch):
    monkeypatch.chdir(core_env)
    (core_env / "results" / "line").mkdir(parents=True)  # where committed results would live
    proc = run_cli("run", str(suite_file), check=True)
    assert "→ runs/line" in proc.stdout
    assert (core_env / "runs" / "line" / "records").is_dir()
    assert list((core_env / "results" / "line").iterdir()) == []
    plan = json.loads((core_env / "runs" / "line" / "plan.json").read_text())
    assert plan["suite_file"] == "../../suite.yaml"  # relative: no path of the machine that ran it


def test_stage_and_run_lines_without_a_terminal(core_env, suite_file):
    proc = run_cli("run", str(suite_file), "-o", str(core_env / "a"), check=True)
    lines = proc.stderr.splitlines()
    # A line when each stage starts and when it ends (kind, label, seconds), and one per finished run.
    assert any(re.search(r"start +dataset +line-world data$", ln) for ln in lines), proc.stderr
    assert any(re.search(r"built +train +tabular-bc seed 0 in \d+\.\d s$", ln) for ln in lines), proc.stderr
    assert sum("run ok:" in ln for ln in lines) == 12
    built = [ln for ln in lines if re.search(r"built +(dataset|grounding|diagnostics|rollouts|train|eval) ", ln)]
    assert len(built) == int(re.search(r"stages built (\d+)", proc.stdout).group(1))
    quiet = run_cli("run", str(suite_file), "-o", str(core_env / "b"), "--quiet", check=True)
    assert quiet.stderr.strip() == ""
    verbose = run_cli("run", str(suite_file), "-o", str(core_env / "c"), "-v", check=True)
    assert "cached dataset" in verbose.stderr  # stages reused from the cache are named at debug level


def test_rerun_of_a_finished_suite_rewrites_nothing(core_env, suite_file):
    out = core_env / "a"
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    before = _files(out)
    proc = run_cli("run", str(suite_file), "-o", str(out), check=True)
    assert "0 ok, 0 failed, 12 already done" in proc.stdout and "success rate" in proc.stdout
    assert _files(out) == before


def test_dry_run_says_which_runs_are_done(core_env, suite_file):
    out = core_env / "a"
    fresh = run_cli("run", str(suite_file), "-o", str(out), "--dry-run", check=True).stdout
    assert "0 done, 0 failed earlier, 12 to run" in fresh and not out.exists()
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    done = run_cli("run", str(suite_file), "-o", str(out), "--dry-run", check=True).stdout
    assert "12 done, 0 failed earlier, 0 to run" in done
    assert "stages the runs to do need (0 of" in done
    # One record gone: that run is to do again, and only the stages it needs are listed (all cached).
    victim = sorted((out / "records").glob("*.json"))[0]
    level = json.loads(victim.read_text())["level"]
    victim.unlink()
    one = run_cli("run", str(suite_file), "-o", str(out), "--dry-run", check=True).stdout
    assert "11 done, 0 failed earlier, 1 to run" in one
    needed = [ln for ln in one.splitlines() if ln.startswith("  cached") or ln.startswith("  to build")]
    assert needed and all(ln.startswith("  cached") for ln in needed)
    assert sum(" eval " in ln for ln in needed) == 1 and any(level in ln for ln in needed if " eval " in ln)


def test_another_plans_results_are_refused_not_rewritten(core_env, suite_file):
    out = core_env / "a"
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    before = _files(out)
    proc = run_cli("run", str(suite_file), "-o", str(out), "-x", "seeds=[5]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(out) in proc.stderr and "--output" in proc.stderr and "12 finished run(s)" in proc.stderr
    assert _files(out) == before
    dry = run_cli("run", str(suite_file), "-o", str(out), "-x", "seeds=[5]", "--dry-run", check=True)
    assert "not in this plan" in dry.stderr
    # Adding runs to the same plan (a third seed) is a resume, not another plan.
    more = run_cli("run", str(suite_file), "-o", str(out), "-x", "seeds=[0, 1, 2]", check=True)
    assert "6 ok, 0 failed, 12 already done" in more.stdout


def test_timings_keep_stage_times_built_into_another_cache(core_env, suite_file):
    out = core_env / "a"
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    walls = {s["key"]: s["wall_s"] for s in json.loads((out / "timings.json").read_text())["stages"]}
    assert all(w is not None for w in walls.values())
    # The results travel to a machine with an empty cache; one run is redone there.
    sorted((out / "records").glob("*.json"))[0].unlink()
    run_cli("run", str(suite_file), "-o", str(out), env={"KALM_BENCH_CACHE": str(core_env / "other")}, check=True)
    after = {s["key"]: s["wall_s"] for s in json.loads((out / "timings.json").read_text())["stages"]}
    assert set(after) == set(walls) and all(w is not None for w in after.values())
    assert "Wall time per stage" in (out / "table.md").read_text()
    assert (out / "tables" / "timing.csv").read_text().startswith("stage,n,total_s,mean_s,max_s")
    assert not (out / "table.csv").exists()  # one tidy CSV per table instead of one file of several

