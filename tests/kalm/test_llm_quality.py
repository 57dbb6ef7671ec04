"""Plan success, realistic goal match and held-out prediction: the diagnostics that compare LLM backends."""

from __future__ import annotations

import numpy as np
import pytest

from kalm_bench.plugins import build_registry
from kalm_bench_plugins.kalm.diagnostics import compute_diagnostics, heldout_prediction, plan_success
from kalm_bench_plugins.kalm.engine import Rollout


@pytest.fixture(scope="module")
def clevr():
    env = build_registry().get("envs", "clevr-robot")()
    return env, env.generate_dataset(30, seed=3)


def _episodes(ds):
    eps = [ds.episode(i) for i in range(ds.n_episodes) if ds.lengths[i] > 0 and ds.success[i]]
    cases = [{"instruction": e.instruction, "goal": e.goal, "initial_state": e.states[0].tolist()} for e in eps]
    return eps, cases


def _rollout(states, actions):
    return Rollout(np.asarray(states, np.float32), np.asarray(actions), np.zeros(len(states), np.float32),
                   np.zeros(len(actions), np.float32))


def test_replaying_the_experts_actions_succeeds_and_other_actions_do_not(clevr):
    env, ds = clevr
    eps, cases = _episodes(ds)
    assert len(eps) >= 10
    expert = plan_success(env, "seen", cases, [_rollout(e.states, e.actions) for e in eps])
    # Each action of another episode's plan: the same number of pushes, aimed at another goal.
    other = plan_success(env, "seen", cases, [_rollout(e.states, eps[(i + 1) % len(eps)].actions)
                                              for i, e in enumerate(eps)])
    # The simulator is deterministic from the recorded initial state: every successful expert episode
    # replays to success (margin: none needed). Borrowed plans succeed far less often (margin 0.3).
    assert np.mean(expert) == 1.0
    assert np.mean(other) < np.mean(expert) - 0.3


class _Replay:
    """An engine that 'imagines' given rollouts and, under teacher forcing, predicts with a given rule."""

    def __init__(self, predict):
        self.predict = predict

    def generate(self, instructions, initial_states, max_steps, stop, batch_size, use_cache=True, forced=None):
        out = []
        for s, a in forced:
            ps, pa = self.predict(s, a)
            out.append(Rollout(s, a, np.zeros(len(s), np.float32), np.zeros(len(a), np.float32),
                               predicted_actions=pa, predicted_states=ps))
        return out


def test_heldout_prediction_scores_a_perfect_and_a_copying_model(clevr):
    env, ds = clevr
    perfect = heldout_prediction(_Replay(lambda s, a: (s[1:], a)), env, ds, 12, seed=0, batch_size=8)
    assert perfect["heldout_state_nmse"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["heldout_action_acc"] == 1.0
    assert perfect["heldout_copy_state_nmse"] > 0.01
    copying = heldout_prediction(_Replay(lambda s, a: (s[:-1], (a + 1) % 40)), env, ds, 12, seed=0,
                                 batch_size=8)
    assert copying["heldout_state_nmse"] == pytest.approx(copying["heldout_copy_state_nmse"], rel=1e-6)
    assert copying["heldout_action_acc"] == 0.0
    assert 0.0 <= copying["heldout_action_majority"] <= 1.0


def test_heldout_episodes_are_not_the_grounding_data(clevr):
    env, ds = clevr
    seen = []

    def spy(s, a):
        seen.append(s[0])
        return s[1:], a

    heldout_prediction(_Replay(spy), env, ds, 5, seed=0, batch_size=8)
    train_starts = ds.states[ds.episode_starts]
    assert not any(np.allclose(s, t) for s in seen for t in train_starts)


class _Imagine:
    """An engine whose imagined rollout for each goal is a fixed real episode (no forcing)."""

    def __init__(self, eps):
        self.eps = eps

    def generate(self, instructions, initial_states, max_steps, stop, batch_size, use_cache=True, forced=None):
        e = self.eps[0]
        out = []
        for i, s0 in enumerate(initial_states):
            states = np.concatenate([s0[None], e.states[1:]]).astype(np.float32)
            out.append(Rollout(states, e.actions, np.zeros(len(states), np.float32),
                               np.zeros(len(e.actions), np.float32)))
        return out

    def explain(self, rollouts, seen):
        return [""] * len(rollouts)


def test_every_level_gets_plan_success_and_realistic_goal_match(clevr):
    env, ds = clevr
    eps, _ = _episodes(ds)
    out = compute_diagnostics(_Imagine(eps), env, ds, 0, n_explain=0, n_goals=6, max_steps=5, batch_size=8,
                              threshold=0.5)
    for level in env.levels:
        assert 0.0 <= out[f"plan_success_{level}"] <= 1.0
        assert out[f"realistic_goal_match_{level}"] <= out[f"goal_match_{level}"]
