"""KALM's four grounding tasks as plugins, and the example format every backend of this plugin reads.

An example is a dict::

    {"task": "generation", "episode": 3, "goal": "<goal json>",
     "segments": [Segment, ...]}

and a segment is a dict with ``kind`` in ``text`` / ``state`` / ``action``:

* ``{"kind": "text", "text": str, "role": "template" | "instruction", "loss": bool}``: prompt text or the
  instruction. ``loss`` marks text the model must produce (rollout explanation).
* ``{"kind": "state", "value": (S,) float32, "loss": bool, "done": float | None, "reward": float | None}``:
  a state slot. ``loss``: regress this state from the position before it. ``done`` (when not None):
  target of the success head read at this slot (1 on the final state of a successful episode).
  ``reward``: target of the reward head at this slot (reward of the transition that led here).
* ``{"kind": "action", "value": int | (A,) float32, "loss": bool}``: an action slot; ``loss``: predict it
  (classification for discrete actions, regression for continuous ones) from the position before it.

Predictions are next-position style, as in KALM: the element at position i is read from the hidden state
at position i-1. Text is rendered as in KALM's prompts (kalm-method.md §4.2); the HF backends tokenise it,
the embedded backend encodes each text segment into one slot with a frozen sentence encoder.

Only numpy is imported here, so registering the tasks stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kalm_bench.api import GroundingTask, StrictConfig

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.datasets import TrajectoryDataset

GENERATION_PREFIX = "Translate the textual instruction to state/action trajectory.\nInstruction: "
GENERATION_MID = ".\nTrajectory:"
EXPLANATION_PREFIX = "Translate the state/action trajectory to textual instruction.\nTrajectory:"
EXPLANATION_MID = "\nInstruction: "
# The unseen explanation prompt of the paper's Fig. 7 (paper-results.md §3a).
UNSEEN_EXPLANATION_PREFIX = ("Suppose you are playing gaming of five balls with different colours. "
                             "Please explain the following rollout briefly.\n rollout:")
UNSEEN_EXPLANATION_MID = "\n Answer: "
DYNAMICS_PREFIX = ("You are an expert in identifying dynamics change in the environment. "
                   "Current state is")
DYNAMICS_MID1 = ", after executing action"
DYNAMICS_MID2 = ", we get next state"
CONSEQUENCE_PREFIX = "Initial state is"
CONSEQUENCE_MID1 = ', after completing the instruction "'
CONSEQUENCE_MID2 = '", we get terminal state'


def text(value: str, *, role: str = "template", loss: bool = False) -> dict[str, Any]:
    return {"kind": "text", "text": value, "role": role, "loss": loss}


def state(value: np.ndarray, *, loss: bool, done: float | None = None,
          reward: float | None = None) -> dict[str, Any]:
    return {"kind": "state", "value": np.asarray(value, np.float32), "loss": loss, "done": done,
            "reward": reward}


def action(value: Any, *, loss: bool) -> dict[str, Any]:
    return {"kind": "action", "value": value, "loss": loss}


def strip_instruction(inst: str) -> str:
    """KALM removes a trailing full stop before filling templates."""
    inst = str(inst).strip()
    return inst[:-1].rstrip() if inst.endswith(".") else inst


def _action_value(dataset: TrajectoryDataset, a: Any) -> Any:
    return int(a) if dataset.action_kind == "discrete" else np.asarray(a, np.float32)


def rollout_segments(states: np.ndarray, actions: np.ndarray, rewards: np.ndarray | None,
                     success: bool, *, loss: bool, action_kind: str,
                     labels: bool = True) -> list[dict[str, Any]]:
    """s_0 a_0 s_1 … s_n as slots; ``labels`` adds success/reward targets at every state slot."""
    segs: list[dict[str, Any]] = []
    n = len(actions)
    for t in range(n + 1):
        done = (1.0 if (success and t == n) else 0.0) if labels else None
        reward = float(rewards[t - 1]) if (labels and rewards is not None and t > 0) else None
        segs.append(state(states[t], loss=loss, done=done, reward=reward))
        if t < n:
            a = int(actions[t]) if action_kind == "discrete" else np.asarray(actions[t], np.float32)
            segs.append(action(a, loss=loss))
    return segs


class _Task(GroundingTask):
    """Common part: one example per non-empty episode per epoch (KALM's epoch structure)."""

    version = "1"

    class Config(StrictConfig):
        pass

    def examples(self, dataset: TrajectoryDataset, rng: np.random.Generator) -> list[dict[str, Any]]:
        out = []
        starts = dataset.episode_starts
        for i in range(dataset.n_episodes):
            n = int(dataset.lengths[i])
            if n == 0:
                continue
            s0 = int(starts[i])
            states = np.concatenate([dataset.states[s0:s0 + n], dataset.next_states[s0 + n - 1:s0 + n]])
            ex = self.build(dataset, states, dataset.actions[s0:s0 + n], dataset.rewards[s0:s0 + n],
                            bool(dataset.success[i]), str(dataset.instructions[i]), rng)
            ex.update(task=self.name, episode=i, goal=str(dataset.goals[i]))
            out.append(ex)
        return out

    def build(self, dataset: TrajectoryDataset, states: np.ndarray, actions: np.ndarray,
              rewards: np.ndarray, success: bool, instruction: str,
              rng: np.random.Generator) -> dict[str, Any]:
        raise NotImplementedError


class RolloutGeneration(_Task):
    """Instruction (+ initial state) → whole rollout (KALM pattern 0). s_0 is regressed too, as in KALM."""

    name: ClassVar[str] = "generation"
    description: ClassVar[str] = "rollout generation: text → states and actions (KALM pattern 0)"

    def build(self, dataset, states, actions, rewards, success, instruction, rng):
        segs = [text(GENERATION_PREFIX), text(strip_instruction(instruction), role="instruction"),
                text(GENERATION_MID)]
        segs += rollout_segments(states, actions, rewards, success, loss=True,
                                 action_kind=dataset.action_kind)
        return {"segments": segs}


class DynamicsPrediction(_Task):
    """(s_k, a_k) → s_{k+1} for one uniformly drawn step k (KALM pattern 1); no instruction."""

    name: ClassVar[str] = "dynamics"
    description: ClassVar[str] = "dynamics prediction: state, action → next state (KALM pattern 1)"

    def build(self, dataset, states, actions, rewards, success, instruction, rng):
        k = int(rng.integers(len(actions)))
        segs = [text(DYNAMICS_PREFIX), state(states[k], loss=False),
                text(DYNAMICS_MID1), action(_action_value(dataset, actions[k]), loss=False),
                text(DYNAMICS_MID2), state(states[k + 1], loss=True), text(".")]
        return {"segments": segs, "step": k}


class ConsequencePrediction(_Task):
    """Initial state + instruction → final state (KALM pattern 2)."""

    name: ClassVar[str] = "consequence"
    description: ClassVar[str] = "consequence prediction: initial state + text → final state (pattern 2)"

    def build(self, dataset, states, actions, rewards, success, instruction, rng):
        segs = [text(CONSEQUENCE_PREFIX), state(states[0], loss=False), text(CONSEQUENCE_MID1),
                text(strip_instruction(instruction), role="instruction"), text(CONSEQUENCE_MID2),
                state(states[-1], loss=True), text(".")]
        return {"segments": segs}


class RolloutExplanation(_Task):
    """Whole rollout → instruction text (KALM pattern 3); the loss covers the instruction and its '.'."""

    name: ClassVar[str] = "explanation"
    description: ClassVar[str] = "rollout explanation: states and actions → text (KALM pattern 3)"

    def build(self, dataset, states, actions, rewards, success, instruction, rng):
        return {"segments": explanation_segments(states, actions, dataset.action_kind,
                                                 strip_instruction(instruction), seen=True)}


def explanation_segments(states: np.ndarray, actions: np.ndarray, action_kind: str,
                         instruction: str | None, *, seen: bool = True) -> list[dict[str, Any]]:
    """The explanation prompt (seen = the training template, else the paper's unseen prompt).

    With ``instruction=None`` the segments stop where the model must start answering.
    """
    prefix, mid = (EXPLANATION_PREFIX, EXPLANATION_MID) if seen else \
        (UNSEEN_EXPLANATION_PREFIX, UNSEEN_EXPLANATION_MID)
    segs = [text(prefix)]
    segs += rollout_segments(states, actions, None, False, loss=False, action_kind=action_kind,
                             labels=False)
    segs.append(text(mid))
    if instruction is not None:
        segs.append(text(instruction, role="instruction", loss=True))
        segs.append(text(".", loss=True))
    return segs


def generation_prefix(instruction: str) -> list[dict[str, Any]]:
    """The prompt that rollout generation continues from (the initial state is added by the caller)."""
    return [text(GENERATION_PREFIX), text(strip_instruction(instruction), role="instruction"),
            text(GENERATION_MID)]


TASKS: tuple[type[_Task], ...] = (DynamicsPrediction, RolloutExplanation, RolloutGeneration,
                                  ConsequencePrediction)
