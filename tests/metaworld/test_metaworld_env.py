"""The Gymnasium env: all 24 task envs step headless, KALM's observation/termination semantics."""

import json

import numpy as np
import pytest

from kalm_bench.errors import UserError
from kalm_bench_plugins.metaworld import tasks


@pytest.mark.parametrize("level", ["seen", "rephrase", "easy", "hard"])
def test_every_task_env_steps_headless(mw_env, level):
    env = mw_env.make(level, distractor=False)
    rng = np.random.default_rng(0)
    try:
        for task in tasks.LEVEL_TASKS[level]:
            obs, info = env.reset(seed=1, options={"task": task, "instruction": "x"})
            assert obs.shape == (91,) and obs.dtype == np.float32 and np.isfinite(obs).all()
            used = np.zeros(91, bool)
            used[0:7] = True
            for ent in tasks.TASK_ENTITIES[task]:
                used[tasks.slot(ent)] = True
            assert not obs[~used].any(), task  # slots of other entities stay empty
            assert np.abs(obs[tasks.slot(tasks.TASK_ENTITIES[task][0])]).sum() > 0, task
            for _ in range(3):
                obs, r, term, trunc, info = env.step(rng.uniform(-1, 1, 4))
                assert np.isfinite(obs).all() and np.isfinite(r)
            assert info["task"] == task and info["level"] == level and info["instruction"] == "x"
            assert info["is_success"] in (True, False)
    finally:
        env.close()


def test_reset_observation_is_not_stale(mw_env):
    # metaworld's reset returns window/faucet positions from before the physics is forwarded
    env = mw_env.make("seen", distractor=False)
    for task, site, ent in (("window-open", "handleOpenStart", "window"),
                            ("faucet-open", "handleStartOpen", "faucet")):
        obs, _ = env.reset(seed=4, options={"task": task, "instruction": "x"})
        expected = env.simulator(task)._get_site_pos(site)
        if task == "faucet-open":
            expected = expected + np.array([0.0, 0.0, -0.01])
        np.testing.assert_allclose(obs[tasks.slot(ent)][:3], expected, atol=1e-6)
    env.close()


def test_case_replay_is_deterministic_including_distractor(mw_env):
    case = mw_env.test_cases("easy", n=3, seed=5)[2]
    json.dumps(case)
    runs = []
    for _ in range(2):
        env = mw_env.make("easy")
        obs, info = env.reset(seed=11, options=case)
        seq = [obs]
        for a in np.linspace(-1, 1, 12).reshape(3, 4):
            seq.append(env.step(a)[0])
        runs.append(np.stack(seq))
        env.close()
    np.testing.assert_array_equal(runs[0], runs[1])
    dslot = tasks.slot(case["distractor"])
    assert case["distractor"] not in tasks.TASK_ENTITIES[case["task"]]
    assert np.abs(runs[0][:, dslot]).sum(axis=1).min() > 0  # filled at every step ...
    assert len({tuple(r) for r in runs[0][:, dslot]}) > 1  # ... with fresh draws
    np.testing.assert_allclose(np.delete(runs[0][0], np.r_[dslot]),
                               np.delete(np.array(case["initial_state"]), np.r_[dslot]), atol=1e-5)


def test_truncation_at_horizon_and_success_reward():
    from kalm_bench_plugins.metaworld.data import scripted_rollout
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    env_plugin = MetaworldEnvironment({"horizon": 5, "distractor": False})
    env = env_plugin.make("seen")
    env.reset(seed=0, options={"task": "door-open", "instruction": "x"})
    flags = [env.step(np.zeros(4))[2:4] for _ in range(5)]
    assert flags[-1] == (False, True) and all(f == (False, False) for f in flags[:-1])

    env = MetaworldEnvironment({"distractor": False}).make("seen")
    res = scripted_rollout(env, "reach", np.random.default_rng(0))
    assert res.success and res.rewards[-1] == 10.0 and len(res.actions) < 100
    assert np.all(res.rewards[:-1] < 10.0)


def test_embedding_appended_view(mw_env):
    def embed(texts):
        return np.array([[len(t), t.count("e"), 1.0] for t in texts], np.float32)

    env = mw_env.make("hard", embed=embed)
    assert env.observation_space.shape == (94,)
    obs, info = env.reset(seed=0)
    assert info["task"] in tasks.HARD_TASKS
    np.testing.assert_array_equal(obs[91:], embed([info["instruction"]])[0])
    obs, *_ = env.step(np.zeros(4))
    np.testing.assert_array_equal(obs[91:], embed([info["instruction"]])[0])


def test_bad_input_errors(mw_env):
    env = mw_env.make("seen")
    with pytest.raises(ValueError, match="not in level"):
        env.reset(options={"task": "hammer", "instruction": "x"})
    with pytest.raises(ValueError, match="distractor"):
        env.reset(options={"task": "reach", "instruction": "x", "distractor": "target_object"})
    with pytest.raises(UserError, match="unknown level"):
        mw_env.make("medium")


def test_test_cases_default_to_11_per_task(mw_env):
    cases = mw_env.test_cases("hard", seed=0)
    assert len(cases) == 44
    assert {t: sum(c["task"] == t for c in cases) for t in tasks.HARD_TASKS} == dict.fromkeys(tasks.HARD_TASKS, 11)
    again = mw_env.test_cases("hard", n=5, seed=0)
    assert again == cases[:5]
    other = mw_env.test_cases("hard", n=5, seed=1)
    assert [c["rand_vec"] for c in other] != [c["rand_vec"] for c in again]
    for c in cases:
        assert c["instruction"] in mw_env.instructions("hard", c["task"])
        assert c["distractor"] in tasks.unused_entities(c["task"])
    goals = mw_env.sample_goals("rephrase", 4, seed=0)
    assert all(g["distractor"] is None and len(g["initial_state"]) == 91 for g in goals)


def test_instruction_file_override_and_errors(mw_env, tmp_path):
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    good = tmp_path / "instr.json"
    good.write_text(json.dumps({"hard": {"soccer": ["Score, please."]}}))
    env = MetaworldEnvironment({"instruction_file": str(good)})
    assert env.instructions("hard", "soccer") == ["Score, please."]
    assert env.instructions("hard", "hammer") == mw_env.instructions("hard", "hammer")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hard": {"reach": ["x"]}}))
    with pytest.raises(UserError) as err:
        MetaworldEnvironment({"instruction_file": str(bad)}).instruction_table
    assert err.value.file == bad and err.value.field == "hard.reach"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        MetaworldEnvironment({"instruction_file": str(bad)}).instruction_table


def test_plugin_is_registered():
    from kalm_bench.plugins import build_registry

    cls = build_registry().get("envs", "metaworld")
    assert list(cls.levels) == ["seen", "rephrase", "easy", "hard"]
    assert cls.action_kind == "continuous" and cls.horizon == 100


def test_env_steps_per_second(benchmark, mw_env):
    env = mw_env.make("seen")
    env.reset(seed=0, options={"task": "push", "instruction": "x"})
    actions = np.random.default_rng(0).uniform(-1, 1, (50, 4))

    def run():
        env.reset(seed=0, options={"task": "push", "instruction": "x"})
        for a in actions:
            env.step(a)

    benchmark(run)
    env.close()
