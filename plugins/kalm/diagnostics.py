"""The grounded model's diagnostics (paper Fig. 7, Table 1, Fig. 12, Table 4). numpy only."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .engine import Engine, Rollout
from .goal_matcher import GoalMatcher
from .labels import agreement_stats, judged_stop, mean, model_labels, model_stop

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import Environment, TrajectoryDataset


def realism_limits(env: Environment, dataset: TrajectoryDataset, margin: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Workbench box (the env's :meth:`state_bounds` when it declares them, else the data's range with a
    margin) and per-dimension step limit (the data's largest step with a margin).

    A dimension that never varies in the data (an empty entity slot, a fixed object) has no range to scale
    a margin by; it gets the margin of the typical varying dimension, so that a model's rounding noise on it
    is not counted as leaving the workbench or breaking the dynamics.
    """
    states = np.concatenate([dataset.states, dataset.next_states])
    lo, hi = states.min(0), states.max(0)
    span = hi - lo
    varying = span > 1e-6
    typical = float(np.median(span[varying])) if varying.any() else 1.0
    span = np.where(varying, span, typical)
    box = env.state_bounds()
    if box is not None:
        lo, hi = (np.asarray(b, np.float32) for b in box)
    else:
        lo, hi = lo - margin * span, hi + margin * span
    step = np.abs(dataset.next_states - dataset.states).max(0)
    limit = np.where(step > 1e-6, step * (1 + margin), margin * span) + 1e-6
    return np.asarray(lo, np.float32), np.asarray(hi, np.float32), np.asarray(limit, np.float32)


def unrealistic_rates(rollouts: Sequence[Rollout], lo: np.ndarray, hi: np.ndarray, limit: np.ndarray
                      ) -> tuple[float, float, float]:
    """Shares of generated transitions whose next state leaves the workbench, jumps beyond the limit,
    or does either (paper Table 4)."""
    out, jump, either, n = 0, 0, 0, 0
    for r in rollouts:
        if len(r.actions) == 0:
            continue
        nxt, cur = r.states[1:], r.states[:-1]
        o = np.any((nxt < lo) | (nxt > hi), axis=1)
        j = np.any(np.abs(nxt - cur) > limit, axis=1)
        out, jump, either, n = out + int(o.sum()), jump + int(j.sum()), either + int((o | j).sum()), n + len(nxt)
    return (out / n, jump / n, either / n) if n else (float("nan"),) * 3


def novel_levels(env: Environment) -> list[str]:
    return [lv for lv in env.levels if lv != env.data_level]


def compute_diagnostics(engine: Engine, env: Environment, dataset: TrajectoryDataset, seed: int, *,
                        n_explain: int, n_goals: int, max_steps: int, batch_size: int,
                        threshold: float, matcher: GoalMatcher | None = None, n_heldout: int = 0,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """The paper's model-quality figures: explanation accuracy (Fig. 7), goal match and label agreement per
    level (Table 1), single-step match on easy levels (Fig. 12), unrealistic-transition rates (Table 4);
    and ours: realistic goal match and plan success per level, and next-action / next-state prediction on
    ``n_heldout`` real episodes the model never saw."""
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    if n_heldout:
        out.update(heldout_prediction(engine, env, dataset, n_heldout, seed, batch_size))
    # Fig. 7: explanation accuracy on real rollouts, with the training prompt and with an unseen prompt.
    ok = np.nonzero((dataset.lengths > 0))[0]
    pick = rng.choice(ok, size=min(n_explain, len(ok)), replace=False) if len(ok) else ok
    if len(pick):
        eps = [dataset.episode(int(i)) for i in pick]
        pairs = [(e.states, e.actions) for e in eps]
        truth = [str(dataset.goals[int(i)]) for i in pick]
        for seen in (True, False):
            pred = engine.explain(pairs, seen)
            out["explain_acc_seen" if seen else "explain_acc_unseen"] = mean(
                [p == t for p, t in zip(pred, truth)])
    lo, hi, limit = realism_limits(env, dataset)
    levels = list(env.levels)
    can_label = env.can_label
    for j, level in enumerate(levels):
        if progress:
            progress(j, len(levels))
        try:
            cases = env.sample_goals(level, n_goals, seed + 1000 + j)
        except NotImplementedError:
            continue
        if not cases or env.missing_case_fields(cases):  # goals KALM cannot imagine from give no figures
            continue
        insts = [str(c["instruction"]) for c in cases]
        s0 = np.stack([np.asarray(c["initial_state"], np.float32) for c in cases])
        stop = judged_stop(env, level, cases, threshold) if can_label else model_stop(threshold)
        rolls = engine.generate(insts, s0, max_steps, stop, batch_size)
        m_labels = [model_labels(r, threshold) for r in rolls]
        out[f"model_success_{level}"] = mean([m[2] for m in m_labels])
        if can_label:
            labs = [env.label_rollout(level, c, r.states, r.actions) for c, r in zip(cases, rolls)]
            succ = [bool(lab.success) for lab in labs]
            out[f"goal_match_{level}"] = mean(succ)
            # The rollouts KALM's oracle stop would have produced (the realism figures are about those).
            shown = [_cut(r, int(lab.end)) for r, lab in zip(rolls, labs)]
            on_model = [bool(env.label_rollout(level, c, r.states[:m[1] + 1], r.actions[:m[1]]).success)
                        for c, r, m in zip(cases, rolls, m_labels)]
            for k, v in agreement_stats(on_model, [m[2] for m in m_labels]).items():
                out[f"label_{k}_{level}"] = v
            if "easy" in level:
                out.update(_single_step_match(env, level, cases, rolls))
            real = _realistic(env, shown)
            if real is not None:
                out[f"realistic_goal_match_{level}"] = mean([s and r for s, r in zip(succ, real)])
            plan = plan_success(env, level, cases, shown)
            if plan is not None:
                out[f"plan_success_{level}"] = mean(plan)
        else:
            shown = list(rolls)
        o_out, o_jump, o_any = unrealistic_rates(shown, lo, hi, limit)
        out[f"out_of_workbench_rate_{level}"] = o_out
        out[f"dynamics_violation_rate_{level}"] = o_jump
        out[f"unrealistic_rate_{level}"] = o_any
    return out


def _cut(r: Rollout, end: int) -> Rollout:
    return Rollout(r.states[:end + 1], r.actions[:end], r.done_prob[:end + 1], r.reward_pred[:end])


def _single_step_match(env: Environment, level: str, cases: Sequence[dict[str, Any]],
                       rolls: Sequence[Rollout]) -> dict[str, float]:
    """Fig. 12: is the first generated state right (env check on it), is the first action right (run it)?"""
    state_ok, action_ok = [], []
    gym_env = None
    try:
        gym_env = env.make(level)
    except Exception:  # noqa: BLE001 - an env without a simulator for this level gives no action figure
        gym_env = None
    for k, (case, r) in enumerate(zip(cases, rolls)):
        if len(r.actions) == 0:
            state_ok.append(False)
            action_ok.append(False)
            continue
        lab = env.label_rollout(level, case, r.states[:2], r.actions[:1])
        state_ok.append(bool(lab.success))
        if gym_env is not None:
            gym_env.reset(seed=k, options=case)
            a = r.actions[0]
            _, _, _, _, info = gym_env.step(int(a) if env.action_kind == "discrete" else a)
            action_ok.append(bool(info.get("is_success", False)))
    if gym_env is not None:
        gym_env.close()
    res = {f"{level}_step_state_match": mean(state_ok)}
    if action_ok:
        res[f"{level}_step_action_match"] = mean(action_ok)
    return res


def _realistic(env: Environment, rollouts: Sequence[Rollout]) -> list[bool] | None:
    """Per rollout: does every state pass the env's realism check? None when the env has none."""
    if env.realistic_states(np.zeros((0, env.state_dim), np.float32)) is None:
        return None
    return [bool(np.asarray(env.realistic_states(r.states), bool).all()) for r in rollouts]


def plan_success(env: Environment, level: str, cases: Sequence[dict[str, Any]], rollouts: Sequence[Rollout]
                 ) -> list[bool] | None:
    """Per rollout: does replaying its imagined actions open-loop in the real simulator, from the same initial
    state, reach the goal (the env reports ``is_success`` at some step)? It needs no judgement of imagined
    states, only the actions. None when the env has no simulator for ``level``."""
    try:
        gym_env = env.make(level)
    except Exception:  # noqa: BLE001 - an env without a simulator for this level gives no plan figure
        return None
    out = []
    try:
        for k, (case, r) in enumerate(zip(cases, rollouts)):
            gym_env.reset(seed=k, options=case)
            ok = False
            for a in r.actions:
                _, _, terminated, truncated, info = gym_env.step(int(a) if env.action_kind == "discrete" else a)
                if info.get("is_success", False):
                    ok = True
                    break
                if terminated or truncated:
                    break
            out.append(ok)
    finally:
        gym_env.close()
    return out


def heldout_prediction(engine: Engine, env: Environment, dataset: TrajectoryDataset, n: int, seed: int,
                       batch_size: int) -> dict[str, float]:
    """Next-action and next-state prediction on ``n`` fresh expert episodes (generated with a seed the
    grounding data do not use), each fed through the generation prompt with teacher forcing.

    ``heldout_action_acc`` (discrete) or ``heldout_action_nmse`` (continuous) beside the majority-action
    rate of the grounding data; ``heldout_state_nmse``, the mean squared next-state error in units of each
    dimension's variance in the grounding data (varying dimensions only), beside
    ``heldout_copy_state_nmse``, the same error of predicting no change.
    """
    try:
        fresh = env.generate_dataset(n, seed=10_000_019 + seed)
    except NotImplementedError:
        return {}
    eps = [fresh.episode(i) for i in range(len(fresh.lengths)) if fresh.lengths[i] > 0][:n]
    if not eps:
        return {}
    rolls = engine.generate([str(e.instruction) for e in eps], np.stack([e.states[0] for e in eps]),
                            max(len(e.actions) for e in eps), None, batch_size,
                            forced=[(e.states, e.actions) for e in eps])
    ok = [(e, r) for e, r in zip(eps, rolls) if r.predicted_states is not None and len(r.predicted_states)]
    if not ok:
        return {}
    var = np.concatenate([dataset.states, dataset.next_states]).var(0)
    vary = var > 1e-12
    true_s = np.concatenate([e.states[1:len(r.predicted_states) + 1] for e, r in ok])[:, vary]
    prev_s = np.concatenate([e.states[:len(r.predicted_states)] for e, r in ok])[:, vary]
    pred_s = np.concatenate([r.predicted_states for _, r in ok])[:, vary]
    v = var[vary]
    out = {"heldout_state_nmse": float(np.mean((pred_s - true_s) ** 2 / v)),
           "heldout_copy_state_nmse": float(np.mean((prev_s - true_s) ** 2 / v)),
           "heldout_transitions": float(len(true_s))}
    true_a = np.concatenate([e.actions[:len(r.predicted_actions)] for e, r in ok])
    pred_a = np.concatenate([r.predicted_actions for _, r in ok])
    if env.action_kind == "discrete":
        out["heldout_action_acc"] = float(np.mean(pred_a.reshape(-1) == true_a.reshape(-1)))
        counts = np.bincount(np.asarray(dataset.actions, np.int64).reshape(-1))
        out["heldout_action_majority"] = float(np.mean(true_a.reshape(-1) == int(counts.argmax())))
    else:
        a_var = np.maximum(np.asarray(dataset.actions, np.float32).var(0), 1e-12)
        out["heldout_action_nmse"] = float(np.mean((pred_a - true_a) ** 2 / a_var))
    return out
