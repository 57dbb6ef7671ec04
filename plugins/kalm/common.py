"""Parts shared by every backend of this plugin: normalisation, labelling imagined rollouts, diagnostics.

numpy only; torch code lives in ``embedded.py`` and ``hf.py``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from kalm_bench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import Environment, RolloutLabels
    from kalm_bench.datasets import TrajectoryDataset


# ---------------------------------------------------------------------------------------------------------
# Normalisation


@dataclass
class Normalizer:
    """Per-dimension affine map fitted on the grounding data; identity when disabled (KALM fed raw numbers)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True, min_std: float = 1e-6) -> Normalizer:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        if not enabled or len(x) == 0:
            d = x.shape[1]
            return cls(np.zeros(d, np.float32), np.ones(d, np.float32))
        return cls(x.mean(0).astype(np.float32), np.maximum(x.std(0), min_std).astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.std).astype(np.float32)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return (np.asarray(z, np.float32) * self.std + self.mean).astype(np.float32)

    def to_dict(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_mean": self.mean, f"{prefix}_std": self.std}

    @classmethod
    def from_dict(cls, d: Any, prefix: str) -> Normalizer:
        return cls(np.asarray(d[f"{prefix}_mean"], np.float32), np.asarray(d[f"{prefix}_std"], np.float32))


@dataclass
class Normalizers:
    state: Normalizer
    action: Normalizer | None  # continuous actions only
    reward: Normalizer

    @classmethod
    def fit(cls, dataset: TrajectoryDataset, enabled: bool) -> Normalizers:
        states = np.concatenate([dataset.states, dataset.next_states]) if dataset.n_transitions else \
            np.zeros((0, dataset.state_dim), np.float32)
        act = Normalizer.fit(dataset.actions, enabled) if dataset.action_kind == "continuous" else None
        # Rewards only feed the model-label head; they are always scaled so that loss weights mean the same
        # thing across environments.
        return cls(Normalizer.fit(states, enabled), act, Normalizer.fit(dataset.rewards[:, None], True))

    def save(self, path: Path) -> None:
        arrays = {**self.state.to_dict("state"), **self.reward.to_dict("reward")}
        if self.action is not None:
            arrays.update(self.action.to_dict("action"))
        np.savez(path, **arrays)

    @classmethod
    def load(cls, path: Path) -> Normalizers:
        with np.load(path, allow_pickle=False) as z:
            act = Normalizer.from_dict(z, "action") if "action_mean" in z else None
            return cls(Normalizer.from_dict(z, "state"), act, Normalizer.from_dict(z, "reward"))


# ---------------------------------------------------------------------------------------------------------
# Model directory metadata


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def read_meta(model_dir: Path, backend: str) -> dict[str, Any]:
    path = Path(model_dir) / "kalm_model.json"
    if not path.is_file():
        raise UserError(f"not a grounded model directory of backend {backend!r} (kalm_model.json missing)",
                        file=path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt model metadata ({exc.msg})", file=path) from None
    if meta.get("backend") != backend:
        raise UserError(f"model was grounded by backend {meta.get('backend')!r}, not {backend!r}", file=path,
                        field="backend")
    return meta


# ---------------------------------------------------------------------------------------------------------
# Imagined rollouts


@dataclass
class Rollout:
    """One generated rollout in raw (de-normalised) units plus the model's own per-state judgements."""

    states: np.ndarray  # (T+1, S)
    actions: np.ndarray  # (T,) or (T, A)
    done_prob: np.ndarray  # (T+1,) success-head probability at each state
    reward_pred: np.ndarray  # (T,) reward-head prediction of each transition


class Engine(Protocol):
    """What the shared imagination / diagnostics code needs from a loaded grounded model."""

    def generate(self, instructions: list[str], initial_states: np.ndarray, max_steps: int,
                 stop: Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool] | None,
                 batch_size: int, use_cache: bool = True,
                 forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        """Greedy rollouts; with ``forced``, the given ``(states, actions)`` replace the model's own choices
        step by step (the heads' success and reward judgements of someone else's rollout)."""

    def explain(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool) -> list[str]: ...

    def goal_of_text(self, texts: list[str]) -> list[str]: ...


def forced_step(forced: Sequence[tuple[np.ndarray, np.ndarray]], active: list[int], t: int, what: str,
                norms: Normalizers, action_kind: str, like: Any) -> Any:
    """Teacher forcing in an engine's generation loop: step ``t`` of the given ``(states, actions)`` rollouts
    for the active rows (``what``: ``"action"`` t, or ``"state"`` t + 1), normalised, shaped and placed
    like the model's own output ``like``."""
    import torch

    if what == "action":
        a = np.stack([np.asarray(forced[k][1][t]) for k in active])
        if action_kind == "continuous" and norms.action is not None:
            a = norms.action.encode(a.astype(np.float32))
        return torch.as_tensor(a).to(like.dtype).to(like.device).reshape(like.shape)
    st = np.stack([np.asarray(forced[k][0][t + 1], np.float32) for k in active])
    return torch.as_tensor(norms.state.encode(st)).to(like.dtype).to(like.device)


def case_goal(case: dict[str, Any]) -> Any:
    return case["goal"] if "goal" in case else {k: v for k, v in case.items() if k != "initial_state"}


def model_labels(r: Rollout, threshold: float) -> tuple[np.ndarray, int, bool]:
    """Labels from the model's own judgement: stop at the first state its success head accepts."""
    hits = np.nonzero(r.done_prob[1:] >= threshold)[0]
    if len(hits):
        end = int(hits[0]) + 1
        return r.reward_pred[:end].astype(np.float32), end, True
    return r.reward_pred.astype(np.float32), len(r.actions), False


def oracle_stop(env: Environment, level: str, cases: Sequence[dict[str, Any]]
                ) -> Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool]:
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


def model_stop(threshold: float) -> Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool]:
    def stop(i: int, states: np.ndarray, actions: np.ndarray, done_prob: np.ndarray) -> bool:
        return bool(done_prob[-1] >= threshold)

    return stop


def rollouts_to_dataset(env: Environment, level: str, cases: Sequence[dict[str, Any]],
                        rollouts: Sequence[Rollout], labels: str, threshold: float, *,
                        source: str, seed: int, state_dim: int) -> TrajectoryDataset:
    """Label every rollout (oracle and model, when the env can) and keep the chosen labels."""
    from kalm_bench.datasets import Episode, TrajectoryDataset

    episodes = []
    oracle_success, model_success, oracle_on_model = [], [], []
    can_label = labels == "oracle" or _can_label(env)
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
                                instruction=str(case["instruction"]), goal=case_goal(case), level=level,
                                success=success))
    attrs: dict[str, Any] = {"labels": labels, "model_success_rate": _mean(model_success)}
    if oracle_success:
        stats = agreement_stats(oracle_on_model, model_success)
        attrs.update(oracle_success_rate=_mean(oracle_success),
                     **{f"label_{k}": v for k, v in stats.items()})
    return TrajectoryDataset.from_episodes(
        episodes, env=env.name, action_kind=env.action_kind, action_size=_action_size(env), seed=seed,
        source=source, attrs=attrs, state_dim=state_dim)


def success_checker(env: Environment | None, dataset: TrajectoryDataset
                    ) -> Callable[[str, np.ndarray, np.ndarray], tuple[int, bool]] | None:
    """``check(goal_json, states, actions) -> (end, success)`` for goals of the grounding data, from the env's
    own ``label_rollout`` at the data's level; None when no env can label. Without an env the dataset's
    env is built from the registry by name (default configuration: success checks of the data level do
    not depend on presets in the bundled envs)."""
    import json

    if env is None:
        try:
            from kalm_bench.plugins import build_registry

            env = build_registry().get("envs", str(dataset.env))()
        except Exception:  # noqa: BLE001 - an env that is not registered cannot label; fall back
            return None
    if not _can_label(env):
        return None
    level = str(dataset.levels[0]) if dataset.n_episodes else str(getattr(env, "data_level", "seen"))

    def check(goal_json: str, states: np.ndarray, actions: np.ndarray) -> tuple[int, bool]:
        goal = json.loads(goal_json)
        # Both bundled case layouts: CLEVR reads case["goal"], Meta-World the goal's own keys ("task").
        case = {**goal, "goal": goal} if isinstance(goal, dict) else {"goal": goal}
        lab = env.label_rollout(level, case, states, actions)
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


def judged_stop(env: Environment, level: str, cases: Sequence[dict[str, Any]], threshold: float
                ) -> Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool]:
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


def _can_label(env: Environment) -> bool:
    from kalm_bench.api import Environment as Base

    fn = getattr(type(env), "label_rollout", None)  # duck-typed envs (tests, scripts) may not have one
    return fn is not None and fn is not Base.label_rollout


def _action_size(env: Environment) -> int:
    size = getattr(env, "action_size", None)
    if size is None:
        space = env.make(env.data_level).action_space
        size = int(space.n) if hasattr(space, "n") else int(np.prod(space.shape))
    return int(size)


def _mean(xs: Sequence[bool | float]) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")


# ---------------------------------------------------------------------------------------------------------
# Text → goal (explanation accuracy)

_WORD = re.compile(r"[a-z]+")


def words(s: str) -> list[str]:
    return _WORD.findall(s.lower())


@dataclass
class GoalMatcher:
    """Maps free text to the goal of the most similar known instruction (order-aware word matching).

    The paper's Fig. 7 scores explanations by keyword match against the goal label. Word order matters
    for CLEVR ("red behind blue" is not "blue behind red"), so the match is difflib's ratio over word
    sequences against known instructions, and the explanation counts as correct when the best match has
    the true goal.
    """

    texts: list[str]
    goals: list[str]
    _words: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._words = [words(t) for t in self.texts]

    @classmethod
    def from_dataset(cls, dataset: TrajectoryDataset, per_goal: int = 6) -> GoalMatcher:
        seen: dict[str, list[str]] = {}
        for inst, goal in zip(dataset.instructions, dataset.goals):
            lst = seen.setdefault(str(goal), [])
            inst = str(inst)
            if inst not in lst and len(lst) < per_goal:
                lst.append(inst)
        texts = [t for g in seen for t in seen[g]]
        goals = [g for g in seen for _ in seen[g]]
        return cls(texts, goals)

    def goal_of(self, text: str) -> str:
        w = words(text)
        if not w or not self.texts:
            return ""
        sm = difflib.SequenceMatcher(autojunk=False)
        sm.set_seq2(w)
        best, best_i = -1.0, 0
        for i, cw in enumerate(self._words):
            sm.set_seq1(cw)
            r = sm.ratio()
            if r > best:
                best, best_i = r, i
        return self.goals[best_i]


# ---------------------------------------------------------------------------------------------------------
# Diagnostics (paper Fig. 7, Table 1, Fig. 12, Table 4)


def realism_limits(env: Environment, dataset: TrajectoryDataset, margin: float = 0.05
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Workbench box and per-dimension step limit: from the env when it declares them, else from the data.

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
    box = getattr(env, "workbench_bounds", None)
    if box is not None:
        lo, hi = (np.asarray(b, np.float32) for b in box)
    else:
        lo, hi = lo - margin * span, hi + margin * span
    limit = getattr(env, "max_state_delta", None)
    if limit is None:
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
                        threshold: float, matcher: GoalMatcher | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    rng = np.random.default_rng(seed)
    # Fig. 7: explanation accuracy on real rollouts, with the training prompt and with an unseen prompt.
    ok = np.nonzero((dataset.lengths > 0))[0]
    pick = rng.choice(ok, size=min(n_explain, len(ok)), replace=False) if len(ok) else ok
    if len(pick):
        eps = [dataset.episode(int(i)) for i in pick]
        pairs = [(e.states, e.actions) for e in eps]
        truth = [str(dataset.goals[int(i)]) for i in pick]
        for seen in (True, False):
            pred = engine.explain(pairs, seen)
            out["explain_acc_seen" if seen else "explain_acc_unseen"] = _mean(
                [p == t for p, t in zip(pred, truth)])
    lo, hi, limit = realism_limits(env, dataset)
    levels = list(env.levels)
    can_label = _can_label(env)
    for j, level in enumerate(levels):
        if progress:
            progress(j, len(levels))
        try:
            cases = env.sample_goals(level, n_goals, seed + 1000 + j)
        except NotImplementedError:
            continue
        if not cases:
            continue
        insts = [str(c["instruction"]) for c in cases]
        s0 = np.stack([np.asarray(c["initial_state"], np.float32) for c in cases])
        stop = judged_stop(env, level, cases, threshold) if can_label else model_stop(threshold)
        rolls = engine.generate(insts, s0, max_steps, stop, batch_size)
        m_labels = [model_labels(r, threshold) for r in rolls]
        out[f"model_success_{level}"] = _mean([m[2] for m in m_labels])
        if can_label:
            labs = [env.label_rollout(level, c, r.states, r.actions) for c, r in zip(cases, rolls)]
            succ = [bool(lab.success) for lab in labs]
            out[f"goal_match_{level}"] = _mean(succ)
            # The rollouts KALM's oracle stop would have produced (the realism figures are about those).
            shown = [_cut(r, int(lab.end)) for r, lab in zip(rolls, labs)]
            on_model = [bool(env.label_rollout(level, c, r.states[:m[1] + 1], r.actions[:m[1]]).success)
                        for c, r, m in zip(cases, rolls, m_labels)]
            for k, v in agreement_stats(on_model, [m[2] for m in m_labels]).items():
                out[f"label_{k}_{level}"] = v
            if "easy" in level:
                out.update(_single_step_match(env, level, cases, rolls))
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
    res = {f"{level}_step_state_match": _mean(state_ok)}
    if action_ok:
        res[f"{level}_step_action_match"] = _mean(action_ok)
    return res


def numeric_losses(heads: Any, h: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """KALM's numeric losses at the masked slots, plus the success and reward heads: next-state MSE, action
    cross-entropy (discrete) or MSE (continuous), done BCE, reward MSE. ``heads`` has ``state_out``,
    ``action_out``, ``done_out``, ``reward_out`` and ``action_kind``; every backend shares this objective."""
    import torch.nn.functional as F

    parts: dict[str, Any] = {}
    m = batch["st_m"] > 0
    if m.any():
        parts["state"] = F.mse_loss(heads.state_out(h[m]), batch["st_t"][m])
    m = batch["ac_m"] > 0
    if m.any():
        out = heads.action_out(h[m])
        parts["action"] = F.cross_entropy(out, batch["ac_t"][m]) if heads.action_kind == "discrete" \
            else F.mse_loss(out, batch["ac_t"][m])
    m = batch["dn_m"] > 0
    if m.any():
        parts["done"] = F.binary_cross_entropy_with_logits(heads.done_out(h[m])[:, 0], batch["dn_t"][m])
    m = batch["rw_m"] > 0
    if m.any():
        parts["reward"] = F.mse_loss(heads.reward_out(h[m])[:, 0], batch["rw_t"][m])
    return parts
