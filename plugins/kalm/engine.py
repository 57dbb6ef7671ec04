"""The route by which a grounded model plugs into KALM's imagination, labels, diagnostics and policy.

A backend (a subclass of :class:`~.backends.KalmBackend`) grounds a model and loads it as an
:class:`Engine`: an object with the three methods below. Everything else (imagined rollouts and their
labels, model judgements of other rollouts, the paper's diagnostics) is shared code that only calls them.
``examples/kalm_engine`` holds a minimal engine and backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .normalise import Normalizers

StopRule = Callable[[int, np.ndarray, np.ndarray, np.ndarray], bool]
"""``stop(i, states, actions, done_prob) -> bool``: end rollout ``i`` of a :meth:`Engine.generate` batch now
(``states`` so far, one row more than ``actions``; ``done_prob`` the success head's probability at each)."""


@dataclass
class Rollout:
    """One generated rollout in raw (de-normalised) units plus the model's own per-state judgements."""

    states: np.ndarray  # (T+1, S)
    actions: np.ndarray  # (T,) or (T, A)
    done_prob: np.ndarray  # (T+1,) success-head probability at each state
    reward_pred: np.ndarray  # (T,) reward-head prediction of each transition
    # Under teacher forcing only: what the model itself predicted at each step before the given action
    # and next state replaced it (held-out dynamics and action accuracy).
    predicted_actions: np.ndarray | None = None  # (T,) or (T, A)
    predicted_states: np.ndarray | None = None  # (T, S)


class Engine(Protocol):
    """What the shared imagination / labelling / diagnostics code needs from a loaded grounded model.

    An engine implements :meth:`generate`, :meth:`explain` and :meth:`goal_of_text`; all arrays are in the
    env's raw units (an engine normalises internally if it wants to).
    """

    def generate(self, instructions: list[str], initial_states: np.ndarray, max_steps: int,
                 stop: StopRule | None, batch_size: int, use_cache: bool = True,
                 forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        """One greedy rollout per instruction from the matching row of ``initial_states`` ``(B, S)``, at most
        ``max_steps`` actions long, ended early where ``stop`` says so, ``batch_size`` rollouts per forward
        pass (``use_cache``: reuse attention key/values between steps). With ``forced``, the given ``(states,
        actions)`` replace the model's own choices step by step, so the heads' success and reward
        judgements are of someone else's rollout (:meth:`KalmBackend.judge`); the returned rollouts then
        also carry the model's own ``predicted_actions`` and ``predicted_states`` at each step."""

    def explain(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool) -> list[str]:
        """The goal (as the text of a recorded goal, ``str(dataset.goals[i])``) the model reads from each
        ``(states, actions)`` rollout; ``seen``: with the training prompt, else with an unseen one. Used by
        the explanation-accuracy diagnostic only: return ``[""] * len(rollouts)`` when unsupported."""

    def goal_of_text(self, texts: list[str]) -> list[str]:
        """The recorded goal (as text) that each free text most likely names (see :class:`GoalMatcher`)."""


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


def forced_predictions(actions: list[list[Any]], states: list[list[Any]], k: int, action_kind: str,
                       action_size: int) -> dict[str, np.ndarray]:
    """The ``predicted_actions`` / ``predicted_states`` fields of forced rollout ``k`` (empty when none)."""
    cont = action_kind == "continuous"
    a = np.asarray(actions[k], np.float32 if cont else np.int64).reshape((-1, action_size) if cont else (-1,))
    return {"predicted_actions": a, "predicted_states": np.asarray(states[k], np.float32)}
