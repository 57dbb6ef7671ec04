"""The success head's relabelled negatives and the model-label agreement metric (numpy only, no training)."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from kalm_bench.datasets import Episode, TrajectoryDataset
from kalm_bench_plugins.kalm import tasks as T
from kalm_bench_plugins.kalm.engine import Rollout
from kalm_bench_plugins.kalm.labels import agreement_stats, judged_stop, model_labels, success_checker

# Goals on a 1-d state: "up" holds once x > 1, "down" once x < -1, "nudge" once x > 0.2.
HOLDS = {"up": lambda x: x > 1.0, "down": lambda x: x < -1.0, "nudge": lambda x: x > 0.2}


def check(goal_json: str, states: np.ndarray, actions: np.ndarray) -> tuple[int, bool]:
    """An env-style check: stops at the first success."""
    holds = HOLDS[json.loads(goal_json)["name"]]
    for t in range(len(actions)):
        if holds(float(states[t + 1][0])):
            return t + 1, True
    return len(actions), False


def toy() -> TrajectoryDataset:
    eps = [Episode(states=np.array([[0.0], [0.5], [1.5]], np.float32), actions=np.array([1, 1]),
                   rewards=np.zeros(2, np.float32), instruction="go up.", goal={"name": "up"}, level="seen",
                   success=True),
           Episode(states=np.array([[0.0], [-0.5], [-1.5]], np.float32), actions=np.array([0, 0]),
                   rewards=np.zeros(2, np.float32), instruction="go down.", goal={"name": "down"},
                   level="seen", success=True),
           Episode(states=np.array([[0.0], [0.3]], np.float32), actions=np.array([1]),
                   rewards=np.zeros(1, np.float32), instruction="nudge it.", goal={"name": "nudge"},
                   level="seen", success=True)]
    return TrajectoryDataset.from_episodes(eps, env="toy", action_kind="discrete", action_size=2, state_dim=1)


def judged(ex):
    """(instruction, states, done targets) of a judge example."""
    inst = [s["text"] for s in ex["segments"] if s.get("role") == "instruction"][0]
    st = [s for s in ex["segments"] if s["kind"] == "state"]
    return inst, [float(s["value"][0]) for s in st], [s["done"] for s in st]


def test_judge_examples_relabel_rollouts_with_the_paired_goals_check():
    ds = toy()
    seen_kinds, seen_pairs = set(), set()
    for seed in range(40):  # enough draws to hit every episode x other-goal pairing
        for ex in T.success_judge_examples(ds, check, np.random.default_rng(seed), noise=0.0):
            inst, xs, done = judged(ex)
            seen_kinds.add(ex["judge"])
            # no state/action/reward targets: these are not demonstrations of their instruction
            assert not any(s["loss"] for s in ex["segments"])
            assert all(s["reward"] is None for s in ex["segments"] if s["kind"] == "state")
            assert ex["segments"][:3] == T.generation_prefix(inst)
            key = (ex["episode"], inst)
            seen_pairs.add(key)
            expected = {
                (0, "go up"): ([0.0, 0.5, 1.5], [0, 0, 1]),       # own goal, reached at the end
                (0, "go down"): ([0.0, 0.5, 1.5], [0, 0, 0]),     # another goal, never holds: negatives only
                (0, "nudge it"): ([0.0, 0.5], [0, 1]),            # another goal that holds midway: cut there
                (1, "go down"): ([0.0, -0.5, -1.5], [0, 0, 1]),
                (1, "go up"): ([0.0, -0.5, -1.5], [0, 0, 0]),
                (1, "nudge it"): ([0.0, -0.5, -1.5], [0, 0, 0]),
                (2, "nudge it"): ([0.0, 0.3], [0, 1]),
                (2, "go up"): ([0.0, 0.3], [0, 0]),
                (2, "go down"): ([0.0, 0.3], [0, 0]),
            }[key]
            assert (np.round(xs, 4).tolist(), done) == expected, key
            if ex["judge"] == "other-goal":
                assert json.loads(ex["goal"])["name"] != json.loads(str(ds.goals[ex["episode"]]))["name"]
    assert seen_kinds == {"other-goal", "noisy"} and len(seen_pairs) == 9


def test_noisy_judge_examples_keep_s0_and_follow_the_check():
    ds = toy()
    exs = [ex for seed in range(20) for ex in T.success_judge_examples(ds, check, np.random.default_rng(seed),
                                                                        noise=3.0) if ex["judge"] == "noisy"]
    assert exs
    moved = False
    for ex in exs:
        inst, xs, done = judged(ex)
        goal = {"go up": "up", "go down": "down", "nudge it": "nudge"}[inst]
        assert xs[0] == 0.0  # the real initial state is kept: generation starts from one
        moved |= xs[1:] != [0.5, 1.5][:len(xs) - 1]
        holds = [HOLDS[goal](x) for x in xs[1:]]
        # positive exactly at the first state where the noisy rollout satisfies its goal, if any
        assert done == [0.0] + ([0.0] * (len(xs) - 2) + [1.0] if holds[-1] else [0.0] * (len(xs) - 1))
        assert not any(holds[:-1])
    assert moved


def test_judge_examples_with_the_reference_envs_check(ref_dataset, ref_env):
    chk = success_checker(ref_env, ref_dataset)
    assert chk is not None
    ep = ref_dataset.episode(0)  # KALM's data: every rollout ends on its goal's first success
    assert chk(str(ref_dataset.goals[0]), ep.states, ep.actions) == (len(ep.actions), True)
    exs = T.success_judge_examples(ref_dataset, chk, np.random.default_rng(0))
    assert 0 < len(exs) <= ref_dataset.n_episodes
    pos = [any(s["done"] == 1.0 for s in ex["segments"] if s["kind"] == "state") for ex in exs]
    assert 0 < np.mean(pos) < 1  # both classes present
    assert success_checker(types.SimpleNamespace(can_label=False), toy()) is None  # an env that cannot label


def test_agreement_stats_on_a_hand_case():
    oracle = [True, True, False, False, False]
    model = [True, False, True, False, False]
    s = agreement_stats(oracle, model)
    assert s["agreement"] == pytest.approx(3 / 5)
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 2)
    assert s["balanced"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    always_no = agreement_stats([True] + [False] * 9, [False] * 10)
    assert always_no["agreement"] == pytest.approx(0.9) and always_no["balanced"] == pytest.approx(0.5)
    assert np.isnan(always_no["precision"]) and always_no["recall"] == 0.0
    with pytest.raises(ValueError):
        agreement_stats([True], [])


def test_judged_stop_waits_for_both_judges_and_model_labels_cut_at_the_head():
    class Env:
        def label_rollout(self, level, case, states, actions):
            from kalm_bench.api import RolloutLabels

            ok, end = check(json.dumps({"name": case["goal"]}), states, actions)[::-1]
            return RolloutLabels(np.zeros(end, np.float32), end, ok)

    stop = judged_stop(Env(), "seen", [{"goal": "up"}], 0.5)
    xs = np.array([[0.0], [1.5], [0.0], [0.0]], np.float32)  # the goal holds after step 1 only
    acts = np.zeros(3, np.int64)
    assert not stop(0, xs[:2], acts[:1], np.array([0.1, 0.2]))  # env done, head not yet
    assert not stop(0, xs[:3], acts[:2], np.array([0.1, 0.2, 0.3]))  # the env's verdict is remembered
    assert stop(0, xs[:4], acts[:3], np.array([0.1, 0.2, 0.3, 0.9]))
    r = Rollout(xs, acts, np.array([0.1, 0.2, 0.3, 0.9], np.float32), np.zeros(3, np.float32))
    rew, end, succ = model_labels(r, 0.5)
    assert (end, succ) == (3, True) and len(rew) == 3


def test_judge_transitions_pair_each_transition_with_its_own_and_other_goals():
    ds = toy()
    d = T.judge_transitions(ds, check, np.random.default_rng(0), other_goals=2, noisy_copies=1, noise=0.0)
    assert len(d["label"]) == ds.n_transitions * 4 and d["prev"].shape == (20, 1)
    goal_of = {"go up": "up", "go down": "down", "nudge it": "nudge"}
    for prev, nxt, lab, inst in zip(d["prev"][:, 0], d["next"][:, 0], d["label"], d["instruction"]):
        assert lab == HOLDS[goal_of[str(inst)]](float(nxt)), (prev, nxt, inst)  # the check's verdict
    own = d["instruction"][::4]  # the first of every group of four is the transition's own goal
    assert [str(x) for x in own] == ["go up", "go up", "go down", "go down", "nudge it"]
    assert d["label"][::4].tolist() == [False, True, False, True, True]  # success only where it was reached
    assert 0 < d["label"].mean() < 1


def test_judge_transitions_subsample_long_datasets():
    ds = toy()
    d = T.judge_transitions(ds, check, np.random.default_rng(1), other_goals=1, noisy_copies=0, max_transitions=2)
    assert len(d["label"]) == 2 * 2
    real = {(float(p[0]), float(n[0])) for p, n in zip(ds.states, ds.next_states)}
    assert {(float(p[0]), float(n[0])) for p, n in zip(d["prev"], d["next"])} <= real


def test_realism_limits_tolerate_noise_on_constant_dimensions():
    import types

    from kalm_bench_plugins.kalm.diagnostics import realism_limits, unrealistic_rates

    rng = np.random.default_rng(0)
    eps = []
    for _ in range(5):
        moving = np.cumsum(rng.normal(0, 0.1, size=(4, 1)), axis=0)
        states = np.concatenate([moving, np.full((4, 1), 3.0)], axis=1).astype(np.float32)  # dim 1 never moves
        eps.append(Episode(states=states, actions=np.zeros(3, np.int64), rewards=np.zeros(3, np.float32),
                           instruction="x", goal={}, level="seen", success=True))
    ds = TrajectoryDataset.from_episodes(eps, env="toy", action_kind="discrete", action_size=2)
    lo, hi, limit = realism_limits(types.SimpleNamespace(state_bounds=lambda: None), ds)
    quiet = ds.episode(0).states.copy()
    quiet[:, 1] += 1e-5  # a regression head's rounding noise on the constant dimension
    far = quiet.copy()
    far[-1, 1] += 1.0  # the fixed object really moves
    rates = [unrealistic_rates([Rollout(states=s, actions=np.zeros(3, np.int64), done_prob=np.zeros(4, np.float32),
                                        reward_pred=np.zeros(3, np.float32))], lo, hi, limit)[2] for s in (quiet, far)]
    assert rates[0] == 0.0 and rates[1] == pytest.approx(1 / 3)
