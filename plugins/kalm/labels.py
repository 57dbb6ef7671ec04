"""Labels of imagined rollouts: the env's oracle checks, the model's own success head, and how they agree.

numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import Rollout, StopRule

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import Environment, RolloutLabels, TrajectoryDataset


def model_labels(r: Rollout, threshold: float) -> tuple[np.ndarray, int, bool]:
    """Labels from the model's own judgement: stop at the first state its success head accepts."""
    hits = np.nonzero(r.done_prob[1:] >= threshold)[0]
    if len(hits):
        end = int(hits[0]) + 1
        return r.reward_pred[:end].astype(np.float32), end, True
    return r.reward_pred.astype(np.float32), len(r.actions), False


def oracle_stop(env: Environment, level: str, cases: Sequence[dict[str, Any]]) -> StopRule:
    """Stop a rollout as soon as the environment's own check ends it (KALM's oracle termination)."""

    def stop(i: int, states: np.ndarray, actions: np.ndarray, done_prob: np.ndarray) -> bool:
        # Checking the whole prefix every step is quadratic in the horizon; after two steps only the newest
        # transition is checked. Stopping only saves compute: the final labels always come from the whole
        # rollout, so an env whose episode ended earlier still truncates it there.
        if len(actions) <= 2:
            lab = env.label_rollout(level, cases[i], states, actions)
            return bool(lab.success) or int(lab.end) < len(actions)
        return bool(env.label_rollout(level, cases[i], states[-2:], actions[-1:]).success)

    return stop


def model_stop(threshold: float) -> StopRule:
    """Stop a rollout once the model's success head fires."""

    def stop(i: int, states: np.ndarray, actions: np.ndarray, done_prob: np.ndarray) -> bool:
        return bool(done_prob[-1] >= threshold)

    return stop


def judged_stop(env: Environment, level: str, cases: Sequence[dict[str, Any]], threshold: float) -> StopRule:
    """Stop once both judges have had their say: the env's episode is over (success or its own end) and the
    success head has fired or can no longer matter. Generation is greedy, so a rollout stopped later holds
    exactly the rollouts either stop rule alone would have produced, as prefixes."""
    env_stop = oracle_stop(env, level, cases)
    ended: dict[int, bool] = {}

    def stop(i: int, states: np.ndarray, actions: np.ndarray, done_prob: np.ndarray) -> bool:
        if not ended.get(i):
            ended[i] = env_stop(i, states, actions, done_prob)
        return ended[i] and bool((done_prob[1:] >= threshold).any())

    return stop


def rollouts_to_dataset(env: Environment, level: str, cases: Sequence[dict[str, Any]],
                        rollouts: Sequence[Rollout], labels: str, threshold: float, *,
                        source: str, seed: int, state_dim: int) -> TrajectoryDataset:
    """Label every rollout (oracle and model, when the env can) and keep the chosen labels."""
    from kalm_bench.api import Episode, TrajectoryDataset

    episodes = []
    oracle_success, model_success, oracle_on_model = [], [], []
    can_label = labels == "oracle" or env.can_label
    for case, r in zip(cases, rollouts):
        m_rew, m_end, m_succ = model_labels(r, threshold)
        o: RolloutLabels | None = None
        if can_label:
            o = env.label_rollout(level, case, r.states, r.actions)
            oracle_success.append(bool(o.success))
            # Agreement is judged on the rollout the model itself would keep (cut where its head fires).
            oracle_on_model.append(bool(env.label_rollout(level, case, r.states[:m_end + 1],
                                                          r.actions[:m_end]).success))
        model_success.append(m_succ)
        if labels == "oracle":
            assert o is not None
            end, rewards, success = int(o.end), np.asarray(o.rewards, np.float32)[:int(o.end)], bool(o.success)
        else:
            end, rewards, success = m_end, m_rew, m_succ
        episodes.append(Episode(states=r.states[:end + 1], actions=r.actions[:end], rewards=rewards,
                                instruction=str(case["instruction"]), goal=env.goal_of(case), level=level,
                                success=success))
    attrs: dict[str, Any] = {"labels": labels, "model_success_rate": mean(model_success)}
    if oracle_success:
        stats = agreement_stats(oracle_on_model, model_success)
        attrs.update(oracle_success_rate=mean(oracle_success),
                     **{f"label_{k}": v for k, v in stats.items()})
    return TrajectoryDataset.from_episodes(
        episodes, env=env.name, action_kind=env.action_kind, action_size=int(env.action_size), seed=seed,
        source=source, attrs=attrs, state_dim=state_dim)


def success_checker(env: Environment, dataset: TrajectoryDataset
                    ) -> Callable[[str, np.ndarray, np.ndarray], tuple[int, bool]] | None:
    """``check(goal_json, states, actions) -> (end, success)`` for goals of the grounding data, from the env's
    own ``label_rollout`` at the data's level (the case is ``env.case_for_goal(goal)``); None when the env
    cannot label or its cases need more than the recorded goal."""
    if not env.can_label:
        return None
    level = str(dataset.levels[0]) if dataset.n_episodes else env.data_level

    def check(goal_json: str, states: np.ndarray, actions: np.ndarray) -> tuple[int, bool]:
        lab = env.label_rollout(level, env.case_for_goal(json.loads(goal_json)), states, actions)
        return int(lab.end), bool(lab.success)

    try:
        if dataset.n_episodes and int(dataset.lengths[0]) > 0:
            ep = dataset.episode(0)
            check(str(dataset.goals[0]), ep.states, ep.actions)
    except Exception:  # noqa: BLE001 - an env whose cases need more than the goal cannot relabel
        return None
    return check


def agreement_stats(oracle: Sequence[bool], model: Sequence[bool]) -> dict[str, float]:
    """How well the model's success flags match the env's: ``agreement`` (accuracy), ``precision`` (share of
    model successes the env confirms), ``recall`` (share of env successes the model flags) and
    ``balanced`` (mean of the true-positive and true-negative rates; unlike accuracy it does not reward a
    judge that always says "fail" on a level where almost nothing succeeds). NaN where undefined."""
    o, m = np.asarray(oracle, bool), np.asarray(model, bool)
    if len(o) != len(m):
        raise ValueError(f"{len(o)} oracle flags for {len(m)} model flags")
    if not len(o):
        return {"agreement": float("nan"), "precision": float("nan"), "recall": float("nan"),
                "balanced": float("nan")}
    tp, pos, neg = int((o & m).sum()), int(o.sum()), int((~o).sum())
    tpr = tp / pos if pos else float("nan")
    tnr = int((~o & ~m).sum()) / neg if neg else float("nan")
    return {"agreement": float((o == m).mean()),
            "precision": tp / int(m.sum()) if m.any() else float("nan"),
            "recall": tpr,
            "balanced": float(np.nanmean([tpr, tnr])) if pos or neg else float("nan")}


def mean(xs: Sequence[bool | float]) -> float:
    """Mean, NaN for an empty sequence."""
    return float(np.mean(xs)) if len(xs) else float("nan")
