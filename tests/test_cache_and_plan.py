"""Stage keys: a change invalidates exactly what depends on it; builds are atomic and locked."""

from __future__ import annotations

import threading

import pytest

from kalm_bench.cache import ArtifactStore
from kalm_bench.plan import build_plan
from kalm_bench.plugins import get_registry
from kalm_bench.suite import load_suite


def _keys(suite_file, *overrides):
    plan = build_plan(load_suite(suite_file, list(overrides)), get_registry())
    return {(s.kind, s.label): s.key for s in plan.stages.values()}, plan


def _changed(a, b):
    return sorted({kind for (kind, label), key in a.items() if b.get((kind, label)) != key})


def test_plan_shape(core_env, suite_file):
    keys, plan = _keys(suite_file)
    kinds = [s.kind for s in plan.stages.values()]
    # 2 seeds × (1 base policy shared by 3 levels + 2 KALM policies: seen and rephrase both train on the
    # rephrase rollouts, so they share one policy, as in the paper)
    assert kinds.count("train") == 2 * (1 + 2)
    assert kinds.count("eval") == len(plan.runs) == 2 * 2 * 3
    # each seed re-grounds the LLM and re-imagines its rollouts (the default for a suite with KALM runs);
    # seen reuses the rephrase rollouts
    assert kinds.count("grounding") == 2 and kinds.count("rollouts") == 2 * 2 and kinds.count("dataset") == 1
    assert kinds.count("diagnostics") == 2  # one per grounding
    assert kinds == sorted(kinds, key=["dataset", "grounding", "diagnostics", "rollouts", "train", "eval"].index)
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)


def _seeds(plan, kind):
    return sorted({s.spec["seed"] for s in plan.stages.values() if s.kind == kind})


@pytest.mark.parametrize("replicate,datasets,groundings,rollouts", [
    (None, [0], [0, 1000], [0, 1000]),  # default with KALM runs: policy, rollouts, llm
    ("[policy]", [0], [0], [0]),
    ("[policy, rollouts]", [0], [0], [0, 1000]),
    ("[policy, rollouts, llm, data]", [0, 1000], [0, 1000], [0, 1000]),
])
def test_replication_seeds_reach_every_replicated_stage(core_env, suite_file, replicate, datasets, groundings,
                                                         rollouts):
    overrides = [f"replicate={replicate}"] if replicate else []
    _, plan = _keys(suite_file, *overrides)
    assert _seeds(plan, "dataset") == datasets
    assert _seeds(plan, "grounding") == groundings
    assert _seeds(plan, "rollouts") == rollouts
    assert _seeds(plan, "train") == [0, 1]
    for run in plan.runs:  # each run's stages are those of its own replication
        spec_seed = {kind: plan.stages[key].spec.get("seed") for kind, key in run.stages.items()}
        assert spec_seed["train"] == run.seed
        if "grounding" in spec_seed:
            assert spec_seed["grounding"] == (1000 * run.seed if len(groundings) > 1 else 0)
        if "rollouts" in spec_seed:
            assert spec_seed["rollouts"] == (1000 * run.seed if len(rollouts) > 1 else 0)
        assert spec_seed["dataset"] == (1000 * run.seed if len(datasets) > 1 else 0)
    # Replication 0 keeps the sections' own seeds, so its stages are those of an unreplicated suite.
    single, _ = _keys(suite_file, "replicate=[policy]")
    both, _ = _keys(suite_file, *overrides)
    rep0 = both.get(("grounding", "scripted-llm grounding rep 0"), both.get(("grounding", "scripted-llm grounding")))
    assert rep0 == single[("grounding", "scripted-llm grounding")]


def test_replicate_must_name_the_policy(core_env, suite_file):
    from kb_helpers import run_cli

    proc = run_cli("validate", str(suite_file), "-x", "replicate=[llm]")
    assert proc.returncode == 2 and "replicate" in proc.stderr and "policy" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override,expected", [
    ("data.seed=5", ["dataset", "diagnostics", "eval", "grounding", "rollouts", "train"]),
    ("llm.config.accuracy=0.5", ["diagnostics", "eval", "grounding", "rollouts", "train"]),
    ("rollouts.seed=3", ["eval", "rollouts", "train"]),
    ("algorithms[0].config.batch_size=7", ["eval", "train"]),
    ("train.steps=16", ["eval", "train"]),
    ("eval.seed=1", ["eval"]),
    ("report.stat=iqm_ci", []),
])
def test_change_invalidates_exactly_its_dependents(core_env, suite_file, override, expected):
    before, _ = _keys(suite_file)
    after, _ = _keys(suite_file, override)
    assert _changed(before, after) == expected


@pytest.mark.parametrize("override,expected", [
    # A data option: everything.
    ("env.config.noise=0.2", ["dataset", "diagnostics", "eval", "grounding", "rollouts", "train"]),
    # An imagination option: not the data, and not the base policies (checked below).
    ("env.config.unrealistic_cell=9", ["diagnostics", "eval", "grounding", "rollouts", "train"]),
    # An evaluation option: the evaluations only.
    ("env.config.case_offset=3", ["eval"]),
    # A novel level's entry of a per-level option: that level's rollouts and what reads them, the diagnostics.
    ("env.config.wording.far='go to {t} please'", ["diagnostics", "eval", "rollouts", "train"]),
])
def test_env_options_invalidate_the_stages_that_read_them(core_env, suite_file, override, expected):
    before, _ = _keys(suite_file)
    after, _ = _keys(suite_file, override)
    assert _changed(before, after) == expected
    changed = {label for (kind, label), key in before.items() if after.get((kind, label)) != key}
    if "data" not in override and "noise" not in override:
        assert not any(label.startswith("tabular-bc seed") for label in changed)  # base policies kept
    if "wording.far" in override:
        assert {label for label in changed if "diagnostics" not in label} == {
            "far rollouts rep 0", "far rollouts rep 1",
            "tabular-bc +KALM (far) seed 0", "tabular-bc +KALM (far) seed 1",
            "eval tabular-bc far seed 0", "eval tabular-bc far seed 1",
            "eval tabular-bc +KALM far seed 0", "eval tabular-bc +KALM far seed 1"}


def test_a_stage_sees_only_the_env_options_it_reads(core_env, suite_file):
    _, plan = _keys(suite_file, "env.config.wording={far: 'to {t}', rephrase: 'at {t}'}", "env.config.case_offset=2",
                    "env.config.unrealistic_cell=9")
    by_kind = {}
    for st in plan.stages.values():
        by_kind.setdefault(st.kind, []).append(st)
    assert by_kind["dataset"][0].spec["env"]["config"] == {"noise": 0.0, "wording": {}}
    assert all(st.spec["env"]["config"] == by_kind["dataset"][0].spec["env"]["config"] for st in by_kind["train"])
    assert by_kind["grounding"][0].spec["env"]["config"] == {"noise": 0.0, "unrealistic_cell": 9, "wording": {}}
    far = next(st for st in by_kind["rollouts"] if st.spec["level"] == "far")
    assert far.spec["env"]["config"]["wording"] == {"far": "to {t}"}
    seen_eval = next(st for st in by_kind["eval"] if st.spec["level"] == "seen")
    assert seen_eval.spec["env"]["config"] == {"noise": 0.0, "unrealistic_cell": 9, "case_offset": 2, "wording": {}}
    assert by_kind["diagnostics"][0].spec["env"]["config"]["wording"] == {"far": "to {t}", "rephrase": "at {t}"}


def test_a_file_named_by_an_env_option_is_keyed_by_its_content(core_env, tmp_path, monkeypatch):
    from kalm_bench.api import Environment

    from kb_helpers import SUITE

    import kb_testplugins

    monkeypatch.setattr(kb_testplugins.LineWorld, "file_options", ("wording",), raising=False)
    assert Environment.file_options == ()
    goals = tmp_path / "far.txt"
    suite = tmp_path / "s.yaml"
    suite.write_text(SUITE)
    with pytest.raises(Exception) as exc:
        _keys(suite, f"env.config.wording.far={goals}")
    assert "env.config.wording.far" in str(exc.value) and "file not found" in str(exc.value)
    goals.write_text("one")
    first, _ = _keys(suite, f"env.config.wording.far={goals}")
    goals.write_text("two")  # edited in place: same path, other content
    second, _ = _keys(suite, f"env.config.wording.far={goals}")
    assert _changed(first, second) == ["diagnostics", "eval", "rollouts", "train"]


def test_kalm_trainings_depend_on_rollouts_but_base_does_not(core_env, suite_file):
    before, p1 = _keys(suite_file)
    after, p2 = _keys(suite_file, "rollouts.counts.far=41")
    changed = {label for (kind, label), key in before.items() if after.get((kind, label)) != key and kind == "train"}
    assert changed == {"tabular-bc +KALM (far) seed 0", "tabular-bc +KALM (far) seed 1"}


def test_plugin_version_is_part_of_the_key(core_env, suite_file, monkeypatch):
    import kb_testplugins

    before, _ = _keys(suite_file)
    monkeypatch.setattr(kb_testplugins.TabularBC, "version", "2")
    after, _ = _keys(suite_file)
    assert _changed(before, after) == ["eval", "train"]


def test_failed_build_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)

    def boom(out):
        (out / "half-written").write_text("x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("train", "ab" * 32, boom, {})
    assert not store.done("train", "ab" * 32)
    assert list(store.entries()) == []
    assert not list((tmp_path / "train").rglob("half-written"))


def test_concurrent_builds_of_one_key_run_once(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []
    gate = threading.Barrier(4)

    def build(out):
        calls.append(1)
        (out / "x").write_text("1")

    def worker():
        gate.wait()
        store.build("dataset", "cd" * 32, build, {"label": "t"})

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert [e.key for e in store.entries()] == ["cd" * 32]


def test_cache_ls_and_clear(tmp_path):
    store = ArtifactStore(tmp_path)
    store.build("dataset", "01" * 32, lambda out: (out / "f").write_text("abc") and None, {"label": "d"})
    store.build("train", "02" * 32, lambda out: None, {"label": "t"})
    assert {e.kind for e in store.entries()} == {"dataset", "train"}
    assert store.clear(kind="train") == 1
    assert [e.kind for e in store.entries()] == ["dataset"]
    assert store.clear() == 1 and list(store.entries()) == []


def test_an_entry_can_change_the_llm_for_an_ablation(core_env, suite_file):
    base, _ = _keys(suite_file)
    keys, plan = _keys(suite_file, "algorithms+={name: tabular-bc, label: ablated, variants: [kalm], "
                                   "llm: {config: {accuracy: 0.5}}}")
    groundings = sorted(k for (kind, _), k in keys.items() if kind == "grounding")
    assert len(groundings) == 2 * 2  # the suite's LLM and the ablated one, each grounded once per seed
    # The suite's own LLM stages are untouched; the ablated row trains on its own LLM's rollouts.
    assert {k: v for k, v in keys.items() if k in base} == base
    ablated = [r for r in plan.runs if r.row == "ablated"]
    assert ablated and all(r.stages["grounding"] not in base.values() for r in ablated)
    assert all(plan.stages[r.stages["rollouts"]].deps["grounding"] == r.stages["grounding"] for r in ablated)
    spec = plan.stages[ablated[0].stages["grounding"]].spec
    assert spec["backend"]["config"]["accuracy"] == 0.5


def test_an_unknown_task_in_an_entry_llm_names_its_field(core_env, suite_file):
    from kalm_bench.errors import UserError

    with pytest.raises(UserError) as err:
        _keys(suite_file, "algorithms[0].llm={grounding_tasks: [scripted, nope]}")
    assert "algorithms[0].llm.grounding_tasks[1]" in str(err.value) and "nope" in str(err.value)


def test_an_entry_llm_that_nothing_reads_is_an_error(core_env, suite_file):
    from kalm_bench.errors import UserError

    with pytest.raises(UserError) as err:
        _keys(suite_file, "algorithms+={name: tabular-bc, label: plain, variants: [base], "
                          "llm: {config: {accuracy: 0.5}}}")
    assert "algorithms[1].llm" in str(err.value) and "uses no LLM" in str(err.value)


def test_an_entry_can_change_its_training_budget(core_env, suite_file):
    before, _ = _keys(suite_file)
    after, plan = _keys(suite_file, "algorithms[0].train={steps: 8, checkpoint_every: 2}")
    assert _changed(before, after) == ["eval", "train"]
    trains = [s for s in plan.stages.values() if s.kind == "train"]
    assert {(s.spec["steps"], s.spec["checkpoint_every"]) for s in trains} == {(8, 2)}
