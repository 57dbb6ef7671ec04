import json

import numpy as np
import pytest

from kalm_bench.api import Policy
from kalm_bench.errors import UserError
from kalm_bench_plugins.clevr import goals as G
from kalm_bench_plugins.clevr.plugin import ClevrRobot


def test_registered_through_entry_point():
    from kalm_bench.plugins import build_registry

    reg = build_registry()
    cls = reg.get("envs", "clevr-robot")
    assert cls is ClevrRobot
    assert list(cls.levels) == ["seen", "rephrase", "easy", "hard"] and cls.horizon == 50
    assert cls.make_config("original").stale_scene is True


@pytest.mark.parametrize("level,n", [("seen", 111), ("rephrase", 111), ("easy", 666), ("hard", 111)])
def test_test_cases_default_counts_and_determinism(level, n):
    env = ClevrRobot()
    a, b = env.test_cases(level, seed=7), env.test_cases(level, seed=7)
    assert len(a) == n and a == b
    assert a != env.test_cases(level, seed=8)
    json.dumps(a)
    for c in a:
        G.validate_goal(c["goal"])
        assert len(c["initial_state"]) == 10 and c["instruction"]
        assert not G.satisfied(c["goal"], np.array(c["initial_state"]))
    assert env.sample_goals(level, 5, 7) != a[:5]


def test_hard_level_mixes_all_kinds():
    kinds = {G.goal_level_kind(c["goal"]) for c in ClevrRobot().test_cases("hard", seed=0)}
    assert kinds == {"tau2", "tau3", "order", "sort"}


def test_unknown_level_is_user_error():
    with pytest.raises(UserError, match="level"):
        ClevrRobot().test_cases("medium")


def test_label_rollout_pair_stops_at_success():
    env = ClevrRobot()
    case = {"goal": G.pair_goal(0, 2, "behind"), "instruction": "x"}
    far = [-0.45, -0.15, 0.45, -0.15, 0.0, 0.2, -0.45, 0.55, 0.45, 0.55]
    s0 = np.array(far)
    s0[0:2] = (0.0, -0.15)
    s1 = s0.copy()
    s1[0:2] = (0.3, 0.3)
    s2 = s0.copy()
    s2[0:2] = (0.0, 0.5)  # success
    s3 = s0.copy()
    labels = env.label_rollout("seen", case, np.stack([s0, s1, s2, s3]), np.array([0, 1, 2]))
    assert labels.end == 2 and labels.success and labels.rewards[-1] == 100.0 and len(labels.rewards) == 2
    labels = env.label_rollout("seen", case, np.stack([s0, s1]), np.array([0]))
    assert labels.end == 1 and not labels.success
    # extra columns (an instruction embedding) are ignored
    labels = env.label_rollout("seen", case, np.hstack([np.stack([s0, s2]), np.ones((2, 4))]), np.array([0]))
    assert labels.success


def test_label_rollout_easy_uses_action_and_one_step():
    env = ClevrRobot()
    case = {"goal": {"type": "move", "ball": 1, "dir": "behind"}, "instruction": "x"}
    s = np.zeros((3, 10))
    assert env.label_rollout("easy", case, s, np.array([8 + 4, 0])).success
    lab = env.label_rollout("easy", case, s, np.array([8 + 3, 8 + 4]))
    assert not lab.success and lab.end == 1
    state_env = ClevrRobot({"easy_check": "state"})
    s2 = s.copy()
    s2[1, 3] = 0.2
    assert state_env.label_rollout("easy", case, s2, np.array([0, 0])).success


class RandomPolicy(Policy):
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def act(self, batch):
        return self.rng.integers(0, 40, size=len(batch.states))

    def save(self, path):
        pass


def test_random_policy_evaluation_runs_a_level(benchmark):
    env = ClevrRobot()
    cases = env.test_cases("hard", seed=7)

    def run():
        return env.evaluate(RandomPolicy(0), "hard", cases, seed=0)

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(result.success) == 111
    assert np.all((result.lengths >= 1) & (result.lengths <= 50))
    benchmark.extra_info["episodes"] = 111
    benchmark.extra_info["env_steps"] = int(result.lengths.sum())


def test_kalm_prompt_file_as_rephrase_goals(kalm_prompt_npy, monkeypatch):
    monkeypatch.delenv("KALM_BENCH_TRUST_PICKLE", raising=False)
    with pytest.raises(ValueError, match="--trust-pickle"):  # pydantic's ValidationError
        ClevrRobot({"goal_files": {"rephrase": str(kalm_prompt_npy)}})
    monkeypatch.setenv("KALM_BENCH_TRUST_PICKLE", "1")
    env = ClevrRobot({"goal_files": {"rephrase": str(kalm_prompt_npy)}})
    cases = env.test_cases("rephrase", 80, seed=0)
    raw = np.load(kalm_prompt_npy, allow_pickle=True).item()
    texts = {str(i[0]) for i in raw["instructions"]}
    assert {c["instruction"] for c in cases} == texts  # drawn without replacement: every prompt once
    c = next(c for c in cases if c["instruction"].startswith("I can't stand the red ball ahead"))
    assert c["goal"] == G.pair_goal(0, 1, "behind")
    i = [str(x[0]) for x in raw["instructions"]].index(c["instruction"])
    assert np.allclose(c["initial_state"], raw["observations"][i][0, :10])
    obs, info = env.make("rephrase").reset(seed=0)
    assert info["instruction"] in texts


def test_json_goal_file(tmp_path):
    path = tmp_path / "goals.json"
    path.write_text(json.dumps({"format": "kalm-bench-clevr-goals", "version": 1, "goals": [
        {"goal": {"type": "sort", "center": 2}, "instructions": ["Huddle up around green"]},
        {"goal": {"type": "pair", "src": 4, "dst": 0, "dir": "left"}, "instructions": ["cyan west of red"],
         "initial_state": [-0.4, 0.0, 0.4, 0.0, 0.0, 0.3, -0.4, 0.45, 0.4, 0.45]},
    ]}))
    env = ClevrRobot({"goal_files": {"hard": str(path)}})
    cases = env.test_cases("hard", 4, seed=0)
    assert sorted(c["instruction"] for c in cases) == ["Huddle up around green"] * 2 + ["cyan west of red"] * 2
    fixed = next(c for c in cases if c["goal"]["type"] == "pair")
    assert fixed["initial_state"][0] == -0.4
    path.write_text(json.dumps([{"goal": {"type": "pair", "src": 0, "dst": 9, "dir": "left"},
                                 "instructions": ["x"]}]))
    with pytest.raises(UserError) as exc:
        ClevrRobot({"goal_files": {"hard": str(path)}}).test_cases("hard", 1)
    assert "goals[0].goal" in str(exc.value) and "goals.json" in str(exc.value)
    with pytest.raises(UserError, match="does not exist"):
        ClevrRobot({"goal_files": {"seen": str(tmp_path / "nope.json")}}).make("seen")


def test_stale_scene_option_changes_first_push_only_when_set():
    case = ClevrRobot().test_cases("seen", 1, seed=3)[0]
    a = case["goal"]["src"] * 8  # push the source ball right

    def first_push(cfg):
        env = ClevrRobot(cfg).make("seen")
        env.reset(seed=1, options=case)
        return env.step(a)[0]

    fixed, fixed2, stale = first_push({}), first_push({}), first_push({"stale_scene": True})
    assert np.array_equal(fixed, fixed2)
    src = case["goal"]["src"]
    moved = np.abs(fixed[2 * src] - case["initial_state"][2 * src])
    assert moved > 0.1  # the corrected reset aims at the ball
    assert not np.allclose(stale, fixed)


def test_label_rollout_stops_before_non_finite_state():
    env = ClevrRobot()
    case = {"goal": G.pair_goal(0, 2, "right"), "instruction": "x"}
    s = np.zeros((3, 10))
    s[0, 4:6] = (0.3, 0.3)
    s[1, 4:6] = (0.3, 0.3)
    s[2, :] = np.nan
    lab = env.label_rollout("seen", case, s, np.array([0, 0]))
    assert lab.end == 1 and not lab.success and np.all(np.isfinite(lab.rewards))
    assert not G.pair_success(np.full(10, np.nan), case["goal"])


def test_config_rejects_unknown_options():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="goal_files"):
        ClevrRobot({"goal_files": {"medium": "x.json"}})
    with pytest.raises(pydantic.ValidationError):
        ClevrRobot({"stale_scenes": True})
