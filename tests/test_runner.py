"""Running suites: records, failures, resume after a kill, parallel jobs, atomic record writes."""

from __future__ import annotations

import json
import os

import pytest

from kb_helpers import run_cli
from kalm_bench.cache import ArtifactStore
from kalm_bench.plan import build_plan
from kalm_bench.plugins import get_registry
from kalm_bench.records import load_records, write_csv, write_record
from kalm_bench.runner import Runner
from kalm_bench.suite import load_suite

REQUIRED = {"run_id", "suite", "suite_version", "env", "level", "algorithm", "algorithm_config", "variant", "kalm",
            "llm_backend", "data_keys", "seed", "eval_seed", "n_eval_episodes", "success_rate", "return_mean",
            "timings_s", "status", "error", "git_sha", "versions", "curve", "started_at", "finished_at",
            "replicate", "stage_seeds"}


def _run(suite_file, out, *overrides, **kw):
    plan = build_plan(load_suite(suite_file, list(overrides)), get_registry())
    return Runner(plan, out, ArtifactStore(), **kw).run(), plan


def test_records_have_every_field_and_are_deterministic(core_env, suite_file):
    summary, plan = _run(suite_file, core_env / "a")
    assert summary.ok == len(plan.runs) == 12 and summary.failed == 0
    recs = load_records(core_env / "a")
    assert len(recs) == 12
    for r in recs:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["status"] == "ok" and 0.0 <= r["success_rate"] <= 1.0
        assert r["versions"]["python"] and r["algorithm_config"]["type"] == "tabular-bc"
        assert len(r["curve"]) == 3 and r["last_k"] == 3
        assert [e["step"] for e in r["train_log"]] == [4, 8, 12] and r["train_log"][0]["table_size"] > 0
        assert r["success_rate"] == pytest.approx(sum(c["success_rate"] for c in r["curve"]) / 3)
        assert r["replicate"] == ["policy", "rollouts", "llm"] and r["stage_seeds"]["train"] == r["seed"]
        comps = r["components"]
        assert set(comps) >= {"env", "algorithm", "encoder"}
        for role, c in comps.items():  # every component: what it is, its options, version and where it came from
            assert {"type", "params", "version", "plugin", "distribution", "distribution_version"} <= set(c), role
        assert comps["algorithm"]["type"] == "tabular-bc" and comps["algorithm"]["params"] == \
            r["algorithm_config"]["params"]
        assert comps["encoder"]["params"] == r["encoder_config"] and comps["env"]["plugin"] == "kb_testplugins"
        assert ("llm_backend" in comps) == r["kalm"] and ("rollout_source" in comps) == r["kalm"]
    kalm = [r for r in recs if r["kalm"]]
    # every stage's seed is in the record: here each seed has its own grounding and rollouts
    assert {(r["seed"], r["stage_seeds"]["grounding"], r["stage_seeds"]["rollouts"]) for r in kalm} == \
        {(0, 0, 0), (1, 1000, 1000)}
    assert {r["imaginary_level"] for r in kalm} == {"rephrase", "far"}
    assert all(r["llm_diagnostics"]["explain_acc_seen"] == 1.0 for r in kalm)
    # Same seeds, fresh cache and output: identical results.
    os.environ["KALM_BENCH_CACHE"] = str(core_env / "cache2")
    _run(suite_file, core_env / "b")
    again = {r["run_id"]: r["success_rate"] for r in load_records(core_env / "b")}
    assert again == {r["run_id"]: r["success_rate"] for r in recs}


def test_second_run_reuses_everything(core_env, suite_file):
    _run(suite_file, core_env / "a")
    summary, _ = _run(suite_file, core_env / "a")
    assert summary.skipped_ok == 12 and summary.stages_built == 0 and summary.ok == 0
    # A new output directory re-evaluates nothing either: every stage comes from the cache.
    summary, _ = _run(suite_file, core_env / "c")
    assert summary.ok == 12 and summary.stages_built == 0


def test_failing_run_is_recorded_and_the_suite_goes_on(core_env, suite_file):
    text = suite_file.read_text().replace(
        "  - {name: tabular-bc, variants: [base, kalm]}",
        "  - {name: tabular-bc, variants: [base, kalm]}\n  - {name: tabular-bc, label: broken, config: {fail: true}}")
    suite_file.write_text(text)
    summary, _ = _run(suite_file, core_env / "a")
    assert summary.ok == 12 and summary.failed == 6
    recs = load_records(core_env / "a")
    broken = [r for r in recs if r["algorithm"] == "broken"]
    assert len(broken) == 6 and all(r["status"] == "failed" for r in broken)
    assert all("training failed on purpose" in r["error"] for r in broken)
    # Without --rerun-failed they stay failed; with it they are retried (and fail again here).
    summary, _ = _run(suite_file, core_env / "a")
    assert summary.skipped_failed == 6 and summary.ok == 0
    summary, _ = _run(suite_file, core_env / "a", rerun_failed=True)
    assert summary.failed == 6 and summary.skipped_ok == 12
    summary, _ = _run(suite_file, core_env / "a", "algorithms[1].config.fail=false", rerun_failed=True)
    assert summary.failed == 0 and summary.ok == 6


def test_failing_upstream_stage_fails_its_runs_only(core_env, suite_file):
    summary, _ = _run(suite_file, core_env / "a", "data.options.fail=true")
    assert summary.failed == 12
    assert all("generation failed on purpose" in r["error"] for r in load_records(core_env / "a"))


def test_resume_after_kill_loses_and_duplicates_nothing(core_env, suite_file):
    out = core_env / "res"
    env = {"KB_TEST_KILL_AFTER_TRAINS": "2", "KB_TEST_COUNTER": str(core_env / "counter")}
    killed = run_cli("run", str(suite_file), "-o", str(out), env=env)
    assert killed.returncode in (137, -9)  # died like a SIGKILL, in the third training
    first = {p.name for p in (out / "records").glob("*.json")}
    assert 0 < len(first) < 12
    assert not list(out.rglob("*.tmp"))
    # Resume: nothing finished is recomputed; the counter tells how many trainings ran this time.
    (core_env / "counter").write_text("0")
    resumed = run_cli("run", str(suite_file), "-o", str(out), env={**env, "KB_TEST_KILL_AFTER_TRAINS": "100"})
    assert resumed.returncode == 0, resumed.stderr
    recs = load_records(out)
    assert len(recs) == 12 and len({r["run_id"] for r in recs}) == 12
    assert int((core_env / "counter").read_text()) == 6 - 2  # only the trainings not finished before the kill
    # Both invocations are timed; the killed one up to its last finished run.
    inv = json.loads((out / "timings.json").read_text())["invocations"]
    assert [i["finished"] for i in inv] == [False, True] and inv[0]["wall_s"] > 0
    assert inv[0]["runs_done"] == len(first)
    assert "1 stopped early" in run_cli("report", str(out), check=True).stdout
    assert len((out / "records.jsonl").read_text().splitlines()) == 12
    fresh = run_cli("run", str(suite_file), "-o", str(core_env / "fresh"),
                    env={"KALM_BENCH_CACHE": str(core_env / "cache-fresh")}, check=True)
    del fresh
    ref = {r["run_id"]: r["success_rate"] for r in load_records(core_env / "fresh")}
    assert {r["run_id"]: r["success_rate"] for r in recs} == ref


def test_parallel_jobs_give_the_same_records(core_env, suite_file):
    proc = run_cli("run", str(suite_file), "-o", str(core_env / "par"), "--jobs", "2", check=True)
    assert "12 ok" in proc.stdout
    os.environ["KALM_BENCH_CACHE"] = str(core_env / "cache-serial")
    _run(suite_file, core_env / "ser")
    par = {r["run_id"]: r["success_rate"] for r in load_records(core_env / "par")}
    ser = {r["run_id"]: r["success_rate"] for r in load_records(core_env / "ser")}
    assert par == ser


def test_record_write_is_atomic(core_env, monkeypatch):
    out = core_env / "res"
    write_record(out, {"run_id": "r1", "status": "ok", "success_rate": 0.5})

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_record(out, {"run_id": "r1", "status": "ok", "success_rate": 0.9})
    monkeypatch.undo()
    assert json.loads((out / "records" / "r1.json").read_text())["success_rate"] == 0.5
    assert [p.name for p in (out / "records").iterdir()] == ["r1.json"]


def test_export_csv_and_jsonl(core_env, suite_file):
    _run(suite_file, core_env / "a")
    proc = run_cli("export", str(core_env / "a"), "--format", "csv", check=True)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("run_id,suite,") and len(lines) == 13
    jl = run_cli("export", str(core_env / "a"), check=True).stdout.strip().splitlines()
    assert len(jl) == 12 and json.loads(jl[0])["suite"] == "line"
    assert write_csv([]).startswith("run_id")


def test_corrupt_record_is_a_clear_error(core_env, suite_file):
    _run(suite_file, core_env / "a")
    victim = next((core_env / "a" / "records").glob("*.json"))
    victim.write_text('{"run_id": "x", "success')
    proc = run_cli("report", str(core_env / "a"))
    assert proc.returncode == 2 and victim.name in proc.stderr and "corrupt record" in proc.stderr


def test_plot_writes_pngs(core_env, suite_file):
    pytest.importorskip("matplotlib")
    _run(suite_file, core_env / "a")
    ref = core_env / "ref.csv"
    ref.write_text("env,level,algorithm,kalm,success_mean_pct,error_bar_pct,std_pct,source\n"
                   "line,seen,tabular-bc,no,60.0,1.0,2.0,figure\n")
    proc = run_cli("plot", str(core_env / "a"), "--reference", str(ref), "--reference-env", "line", check=True)
    for name in ("success_bars.png", "learning_curves.png"):
        data = (core_env / "a" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert "success_bars.png" in proc.stdout


def test_timings_and_comparison_tables_in_the_report(core_env, suite_file):
    text = suite_file.read_text() + (
        "report:\n  comparisons:\n    - {title: 'Fig. X: tabular-bc vs its KALM variant', "
        "rows: [tabular-bc +KALM, tabular-bc], levels: [rephrase]}\n")
    suite_file.write_text(text)
    _run(suite_file, core_env / "a")
    timings = json.loads((core_env / "a" / "timings.json").read_text())
    assert len(timings["invocations"]) == 1 and timings["invocations"][0]["runs_done"] == 12
    kinds = {s["kind"] for s in timings["stages"]}
    assert kinds == {"dataset", "grounding", "diagnostics", "rollouts", "train", "eval"}
    assert all(s["wall_s"] is not None and s["wall_s"] >= 0 for s in timings["stages"])
    _run(suite_file, core_env / "a")  # an invocation that runs nothing leaves the timings as they were
    assert json.loads((core_env / "a" / "timings.json").read_text()) == timings
    sorted((core_env / "a" / "records").glob("*.json"))[0].unlink()
    _run(suite_file, core_env / "a")  # a resumed invocation that redoes a run is added, stage times stay
    assert len(json.loads((core_env / "a" / "timings.json").read_text())["invocations"]) == 2
    out = run_cli("report", str(core_env / "a"), check=True).stdout
    comp = out.split("Fig. X: tabular-bc vs its KALM variant")[1].split("\n\n")[1]
    lines = [ln for ln in comp.splitlines() if ln.startswith("|")]
    assert "rephrase" in lines[0] and "seen" not in lines[0] and "far" not in lines[0]
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["tabular-bc +KALM", "tabular-bc"]
    assert "Wall time per stage" in out and "2 invocation(s)" in out
    prov = out.split("Provenance:")[1]
    # versions: the core's, and those the components declare (the test plugins declare none)
    assert "git " in prov and "numpy" in prov and "torch" not in prov and "CPUs" in prov and "suite wall time" in prov
    # A damaged timings file is one clear error naming it.
    (core_env / "a" / "timings.json").write_text('{"stages": [{"kind": "train", "wall_s": "x"}]}')
    bad = run_cli("report", str(core_env / "a"))
    assert bad.returncode == 2 and "timings.json" in bad.stderr


def test_comparison_rows_must_exist(core_env, suite_file):
    suite_file.write_text(suite_file.read_text() + "report:\n  comparisons:\n    - {title: T, rows: [tabular-bc, nope]}\n")
    proc = run_cli("validate", str(suite_file))
    assert proc.returncode == 2
    assert "report.comparisons[0].rows[1]" in proc.stderr and "nope" in proc.stderr


def test_results_carry_their_reference_copy(core_env, suite_file):
    import shutil

    ref = core_env / "ref.csv"
    ref.write_text("env,level,algorithm,kalm,success_mean_pct,error_bar_pct,std_pct,source\n"
                   "line,seen,tabular-bc,no,12.5,,,test\n")
    suite_file.write_text(suite_file.read_text() + "report: {reference: ref.csv, reference_env: line}\n")
    _run(suite_file, core_env / "a")
    assert (core_env / "a" / "reference.csv").read_text() == ref.read_text()
    # The results move, the suite and its reference go: the report still has the paper column.
    moved = core_env / "elsewhere" / "results"
    shutil.move(str(core_env / "a"), moved)
    suite_file.unlink()
    ref.unlink()
    out = run_cli("report", str(moved), check=True).stdout
    assert "seen (paper)" in out and "12.5" in out


def test_versions_name_the_distribution_of_a_third_party_component(tmp_path, monkeypatch):
    from kalm_bench.stages import versions

    (tmp_path / "zzz_corridor_plugin.py").write_text("class Env:\n    libraries = ()\n")
    info = tmp_path / "zzz_corridor-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zzz-corridor\nVersion: 0.3\n")
    (info / "top_level.txt").write_text("zzz_corridor_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import zzz_corridor_plugin

    got = versions([zzz_corridor_plugin.Env])
    assert got["zzz-corridor"] == "0.3" and "kalm-bench" in got
    assert "zzz-corridor" not in versions()
