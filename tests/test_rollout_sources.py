"""Rollout sources and filters: the random control proposes for KALM's goals, labels like KALM, and the
suite's keep / realism filters decide what becomes imaginary data."""

from __future__ import annotations

import numpy as np
import pytest

from kb_helpers import run_cli
from kalm_bench.cache import ArtifactStore
from kalm_bench.datasets import TrajectoryDataset
from kalm_bench.errors import UserError
from kalm_bench.plan import build_plan
from kalm_bench.plugins import get_registry
from kalm_bench.records import load_records
from kalm_bench.runner import Runner
from kalm_bench.suite import load_suite

CONTROL = ["-x", "algorithms[0].variants=[base, kalm, random]"]


def _plan(suite_file, *overrides):
    return build_plan(load_suite(suite_file, list(overrides)), get_registry())


def _rollouts(plan, store, level, seed):
    """{variant: dataset} of the rollouts that the runs of ``level`` / ``seed`` train on."""
    out = {}
    for run in plan.runs:
        if run.seed == seed and run.level == level and "rollouts" in run.stages:
            out[run.variant] = TrajectoryDataset.load(store.path("rollouts", run.stages["rollouts"]) / "dataset")
    return out


def test_control_row_plans_rollouts_for_the_same_goals_without_the_llm(core_env, suite_file):
    plan = _plan(suite_file, *CONTROL[1:])
    rollouts = plan.stages_of("rollouts")
    by = {(s.spec["source"]["name"], s.spec["level"], s.spec["seed"]): s for s in rollouts}
    assert len(rollouts) == 8  # (llm, random) × (rephrase, far) × 2 replications
    for level in ("rephrase", "far"):
        for seed in (0, 1000):
            llm, rnd = by[("llm", level, seed)], by[("random", level, seed)]
            assert llm.spec["count"] == rnd.spec["count"] == 40
            assert "grounding" in llm.deps and "grounding" not in rnd.deps  # oracle labels: no LLM needed
            assert llm.deps["dataset"] == rnd.deps["dataset"]
    assert {r.variant for r in plan.runs} == {"base", "kalm", "random"}
    trains = {r.stages["train"] for r in plan.runs if r.variant == "random"}
    assert all(plan.stages[k].deps["rollouts"] in {s.key for s in rollouts if s.spec["source"]["name"] == "random"}
               for k in trains)


def test_random_source_uses_kalms_initial_states_and_labels(core_env, suite_file):
    plan = _plan(suite_file, *CONTROL[1:])
    store = ArtifactStore()
    summary = Runner(plan, core_env / "out", store).run()
    assert summary.failed == 0
    env = get_registry().get("envs", "line-world")()
    for level in ("rephrase", "far"):
        ds = _rollouts(plan, store, level, 0)
        llm, rnd = ds["kalm"], ds["random"]
        assert llm.n_episodes == rnd.n_episodes == 40
        assert [str(t) for t in llm.instructions] == [str(t) for t in rnd.instructions]
        starts_llm = llm.states[llm.episode_starts]
        starts_rnd = rnd.states[rnd.episode_starts]
        np.testing.assert_array_equal(starts_llm, starts_rnd)
        assert rnd.source == "random"
        # Labelled by the env's own check, exactly as the llm source's rollouts are.
        for i in range(rnd.n_episodes):
            ep = rnd.episode(i)
            case = {"goal": int(ep.goal), "instruction": ep.instruction, "initial_state": [float(ep.states[0, 0])]}
            lab = env.label_rollout(level, case, ep.states, ep.actions)
            assert bool(lab.success) == bool(ep.success) and lab.end == len(ep.actions)
    # Random pushes reach a goal less often than the scripted imagination (accuracy 1.0): the two differ.
    recs = [r for r in load_records(core_env / "out") if r["level"] == "far" and r["variant"] != "base"]
    rates = {r["variant"]: r["rollouts"]["goal_match_rate"] for r in recs}
    assert rates["kalm"] == 1.0 and rates["random"] < 1.0
    table = run_cli("report", str(core_env / "out"), check=True).stdout
    assert "tabular-bc +random" in table and "tabular-bc +KALM − tabular-bc +random" in table


def test_keep_success_keeps_only_successful_rollouts(core_env, suite_file):
    plan = _plan(suite_file, *CONTROL[1:], "rollouts.keep=success")
    store = ArtifactStore()
    assert Runner(plan, core_env / "out", store).run().failed == 0
    rnd = _rollouts(plan, store, "far", 0)["random"]
    assert rnd.n_episodes and bool(np.all(rnd.success))
    m = store.manifest("rollouts", next(r.stages["rollouts"] for r in plan.runs if r.variant == "random"
                                       and r.level == "far" and r.seed == 0))
    assert m["n_proposed"] == 40 and m["n_episodes"] == round(40 * m["goal_match_rate"])


def test_realism_filter_drops_rollouts_with_a_rejected_state(core_env, suite_file):
    plan = _plan(suite_file, *CONTROL[1:], "env.config.unrealistic_cell=4", "rollouts.realistic=true")
    store = ArtifactStore()
    assert Runner(plan, core_env / "out", store).run().failed == 0
    for variant, ds in _rollouts(plan, store, "far", 0).items():
        assert ds.n_episodes < 40  # far targets 8-9: many starts below 4 pass through it
        assert not np.any(ds.states[:, 0] == 4) and not np.any(ds.next_states[:, 0] == 4), variant
    rec = next(r for r in load_records(core_env / "out") if r["variant"] == "random" and r["level"] == "far")
    ro = rec["rollouts"]
    assert ro["n_episodes"] == round(40 * ro["realistic_rate"])
    assert ro["realistic_goal_match_rate"] <= min(ro["realistic_rate"], ro["goal_match_rate"])


def test_realism_filter_needs_an_env_check(core_env, suite_file, monkeypatch):
    from kb_testplugins import LineWorld

    from kalm_bench.api import Environment

    with monkeypatch.context() as m:
        m.setattr(LineWorld, "realistic_states", Environment.realistic_states)
        with pytest.raises(UserError, match="declares no realism check") as exc:
            _plan(suite_file, "rollouts.realistic=true")
    assert exc.value.field == "rollouts.realistic"


def test_model_labels_of_random_rollouts_need_a_backend_that_judges(core_env, suite_file):
    # The scripted test backend cannot judge rollouts it did not generate: each run that needs it fails with
    # one line saying so, and the base runs are unaffected.
    proc = run_cli("run", str(suite_file), "-o", str(core_env / "m"), "-x", "algorithms[0].variants=[base, random]",
                   "-x", "rollouts.labels=model")
    assert "Traceback" not in proc.stderr
    recs = load_records(core_env / "m")
    control = [r for r in recs if r["variant"] == "random"]
    assert control and all(r["status"] == "failed" and "cannot judge" in r["error"] for r in control)
    assert all(r["status"] == "ok" for r in recs if r["variant"] == "base")


def test_unknown_variant_names_the_field(core_env, suite_file):
    proc = run_cli("validate", str(suite_file), "-x", "algorithms[0].variants=[base, nope]")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "algorithms[0].variants[1]" in proc.stderr and "unknown variant 'nope'" in proc.stderr


def test_source_options_are_checked_where_they_are_written(core_env, suite_file):
    with pytest.raises(UserError, match="unknown option for rollout_source 'random'") as exc:
        _plan(suite_file, *CONTROL[1:], "rollouts.sources={random: {steps: 3}}")
    assert exc.value.field == "rollouts.sources.random.steps"
    with pytest.raises(UserError, match="unknown rollout source 'nope'") as exc:
        _plan(suite_file, "rollouts.sources={nope: {}}")
    assert exc.value.field == "rollouts.sources.nope"
    plan = _plan(suite_file, *CONTROL[1:], "rollouts.sources={random: {max_rollout_length: 3}}")
    assert all(s.spec["source"]["config"]["max_rollout_length"] == 3 for s in plan.stages_of("rollouts")
               if s.spec["source"]["name"] == "random")


def test_a_control_without_an_llm_replicates_its_rollouts(core_env, suite_file):
    text = suite_file.read_text().replace("llm: {backend: scripted-llm, grounding_tasks: [scripted]}\n", "")
    suite_file.write_text(text.replace("variants: [base, kalm]", "variants: [base, random]"))
    plan = _plan(suite_file)
    assert plan.replicate == ["policy", "rollouts"] and not plan.stages_of("grounding")
    assert sorted({s.spec["seed"] for s in plan.stages_of("rollouts")}) == [0, 1000]
