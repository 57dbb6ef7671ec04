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
at position i-1. Text is rendered as in the prompts of KALM's official code; the HF backends tokenise it,
the embedded backend encodes each text segment into one slot with a frozen sentence encoder.

Only numpy is imported here, so registering the tasks stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from kalm_bench.api import GroundingTask, StrictConfig

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import TrajectoryDataset

GENERATION_PREFIX = "Translate the textual instruction to state/action trajectory.\nInstruction: "
GENERATION_MID = ".\nTrajectory:"
EXPLANATION_PREFIX = "Translate the state/action trajectory to textual instruction.\nTrajectory:"
EXPLANATION_MID = "\nInstruction: "
# The unseen explanation prompt of the paper's Fig. 7, as the paper prints it.
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

    # 2: the embedded backend trains its success head with relabelled negatives next to these examples.
    version = "2"

    class Config(StrictConfig):
        pass

    def examples(self, dataset: TrajectoryDataset, rng: np.random.Generator) -> list[dict[str, Any]]:
        out = []
        for i, s0, n, states in episode_arrays(dataset):
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


def episode_arrays(dataset: TrajectoryDataset) -> Iterator[tuple[int, int, int, np.ndarray]]:
    """(episode, first transition, length, states (length + 1, S)) of every non-empty episode."""
    starts = dataset.episode_starts
    for i in range(dataset.n_episodes):
        n = int(dataset.lengths[i])
        if n == 0:
            continue
        s0 = int(starts[i])
        yield i, s0, n, np.concatenate([dataset.states[s0:s0 + n], dataset.next_states[s0 + n - 1:s0 + n]])


def instructions_by_goal(dataset: TrajectoryDataset, clean: Callable[[Any], str]) -> dict[str, list[str]]:
    """Goal → its distinct instructions (after ``clean``), in first-seen order."""
    by_goal: dict[str, list[str]] = {}
    for inst, goal in zip(dataset.instructions, dataset.goals):
        lst, text = by_goal.setdefault(str(goal), []), clean(inst)
        if text not in lst:
            lst.append(text)
    return by_goal


def state_scale(dataset: TrajectoryDataset) -> np.ndarray:
    """Per-dimension standard deviation of every state in the data: the unit of the noise added to states."""
    return np.concatenate([dataset.states, dataset.next_states]).std(0).astype(np.float32)


def success_judge_examples(dataset: TrajectoryDataset, check: Callable[[str, np.ndarray, np.ndarray],
                                                                      tuple[int, bool]],
                           rng: np.random.Generator, *, noise: float = 0.3) -> list[dict[str, Any]]:
    """Examples that teach the success head "does this state satisfy *this* instruction", with negatives.

    Expert data alone has one positive per episode, always on the state where the rollout ends, so a head
    can learn "the expert stopped here" instead of "the goal holds here". One example per episode: with
    probability 1/2 the real rollout is paired with the instruction of a *different* goal; otherwise its
    states (after s_0) get Gaussian noise of up to ``noise`` standard deviations per dimension, the size of
    the model's own generation errors, which turns many final states into near misses. Either way the
    rollout is relabelled by ``check(goal_json, states, actions) -> (end, success)`` (the env's own check:
    it stops at the first success), so a rollout that happens to satisfy the other goal, or still
    satisfies its own after the noise, is a positive. Only success targets: these rollouts are not expert
    demonstrations of their instruction, so there is no state/action/reward loss.
    """
    by_goal = instructions_by_goal(dataset, str)
    goal_keys = sorted(by_goal)
    if not len(goal_keys) or not dataset.n_transitions:
        return []
    scale = state_scale(dataset)
    out = []
    for i, s0, n, states in episode_arrays(dataset):
        actions = dataset.actions[s0:s0 + n]
        goal, inst = str(dataset.goals[i]), str(dataset.instructions[i])
        kind = "other-goal" if len(goal_keys) > 1 and rng.random() < 0.5 else "noisy"
        if kind == "other-goal":
            others = [g for g in goal_keys if g != goal]
            goal = others[int(rng.integers(len(others)))]
            inst = by_goal[goal][int(rng.integers(len(by_goal[goal])))]
        else:
            states = states.copy()
            sigma = rng.uniform(0.0, noise)
            states[1:] += (rng.normal(0.0, 1.0, states[1:].shape) * sigma * scale).astype(np.float32)
        end, success = check(goal, states, actions)
        end = int(min(max(end, 0), n))
        if end == 0:
            continue  # nothing after s_0 to judge
        segs = generation_prefix(inst)
        segs += rollout_segments(states[:end + 1], actions[:end], None, bool(success), loss=False,
                                 action_kind=dataset.action_kind)
        out.append({"task": "success-judge", "episode": i, "goal": goal, "judge": kind, "segments": segs})
    return out


def judge_transitions(dataset: TrajectoryDataset, check: Callable[[str, np.ndarray, np.ndarray],
                                                                  tuple[int, bool]],
                      rng: np.random.Generator, *, other_goals: int = 4, noisy_copies: int = 2,
                      noise: float = 0.3, max_transitions: int = 12_000) -> dict[str, Any]:
    """Relabelled transitions for a success judge: "after s --a--> s', does *this* instruction hold?".

    Every real transition is paired with its own goal (positive on the transition where the expert
    reached it, negative before), with ``other_goals`` instructions of other goals (labelled by the env's
    check: mostly negatives, the occasional accidental success a positive), and ``noisy_copies`` of it with
    its own goal and s' moved by Gaussian noise of up to ``noise`` standard deviations (near misses on both
    sides of the goal's boundary, the kind of error generated states have). Datasets with more than
    ``max_transitions`` transitions (long Meta-World episodes) use a random subset of that size, which
    bounds the env checks and memory. Returns arrays ``prev`` (N, S),
    ``action`` (N,) or (N, A), ``next`` (N, S), ``label`` (N,) bool and ``instruction`` (N,) str.
    """
    by_goal = instructions_by_goal(dataset, lambda inst: strip_instruction(str(inst)))
    goal_keys = sorted(by_goal)
    prev, act, nxt, lab, inst_out = [], [], [], [], []
    if not dataset.n_transitions:
        return {"prev": np.zeros((0, dataset.state_dim), np.float32), "action": dataset.actions[:0],
                "next": np.zeros((0, dataset.state_dim), np.float32), "label": np.zeros(0, bool),
                "instruction": np.array([], dtype=str)}
    scale = state_scale(dataset)
    starts = dataset.episode_starts
    use = np.ones(dataset.n_transitions, bool)
    if dataset.n_transitions > max_transitions:
        use[:] = False
        use[rng.choice(dataset.n_transitions, size=max_transitions, replace=False)] = True
    for i in range(dataset.n_episodes):
        own = str(dataset.goals[i])
        others = [g for g in goal_keys if g != own]
        for t in range(int(starts[i]), int(starts[i]) + int(dataset.lengths[i])):
            if not use[t]:
                continue
            s, a, s2 = dataset.states[t], dataset.actions[t], dataset.next_states[t]
            pairs = [(own, s2)]
            pairs += [(others[int(k)], s2) for k in rng.integers(len(others), size=other_goals)] if others else []
            for _ in range(noisy_copies):
                sigma = rng.uniform(0.0, noise)
                pairs.append((own, (s2 + rng.normal(0.0, 1.0, s2.shape) * sigma * scale).astype(np.float32)))
            for goal, s_next in pairs:
                end, ok = check(goal, np.stack([s, s_next]), np.asarray(a)[None])
                phr = by_goal[goal]
                prev.append(s)
                act.append(a)
                nxt.append(s_next)
                lab.append(bool(ok) and end == 1)
                inst_out.append(phr[int(rng.integers(len(phr)))])
    return {"prev": np.asarray(prev, np.float32), "action": np.asarray(act), "next": np.asarray(nxt, np.float32),
            "label": np.asarray(lab, bool), "instruction": np.asarray(inst_out, dtype=str)}


TASKS: tuple[type[_Task], ...] = (DynamicsPrediction, RolloutExplanation, RolloutGeneration,
                                  ConsequencePrediction)
