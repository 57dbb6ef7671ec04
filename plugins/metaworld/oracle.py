"""Success of a Meta-world task judged from a sequence of 91-d slot states alone (numpy only).

This labels imagined rollouts, whose states never went through a simulator (KALM used a numpy
re-implementation of the v2 code, "FakeEnv", for the same job). Each task's check is the v3 success
criterion restated on the slots:

* the criteria that only compare an object's position with the goal (push, pick-place, coffee-push,
  the button tasks, door-unlock/-lock, door-open/-close, window, faucet, soccer, and the wall variants)
  are exact, with metaworld's thresholds;
* reach / reach-wall measure from the gripper's pad centre, which the state does not hold: it is
  approximated as hand position + a constant offset (mean measured on noisy scripted reaching; the
  true offset varies by up to ~3 mm, so the success step can be off by a step or two);
* hammer succeeds when the nail has been driven 0.09 m along +y (its slide joint), read from the change of
  the nail slot's y since the first state;
* make-coffee: stage 1 when the mug is within 0.07 m of its spot (the goal slot of the first state),
  success when afterwards the button is within 0.02 m of the pressed position (resting button y from the
  first state + 0.03) while the mug is still in place;
* locked-door-open: stage 1 when the lock slot's x is within 0.02 m of the unlock target (goal slot of the
  first state), success when afterwards the door (orientation in the lock slot) is open ≥ 0.7 rad.

Not checked: whether the imagined states are physically reachable (contacts, joint limits, objects
passing through the wall), and dense rewards: the labels give +10 on the success step and 0 otherwise,
because metaworld's dense rewards need simulator quantities (pad positions, contacts, initial tcp) that
the slots do not contain.
"""

from __future__ import annotations

import numpy as np

from .tasks import slot

SUCCESS_REWARD = 10.0
TCP_OFFSET = np.array([-0.0007, 0.0032, -0.0449])  # mean pad centre - hand, noisy scripted reaching
OPEN_ANGLE = 0.7  # keep equal to sim.OPEN_ANGLE (checked by the tests)
BUTTON_TRAVEL = 0.03


def _pos(states: np.ndarray, name: str) -> np.ndarray:
    return states[:, slot(name)][:, :3]


def _quat(states: np.ndarray, name: str) -> np.ndarray:
    return states[:, slot(name)][:, 3:7]


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=-1)


def success_flags(task: str, states: np.ndarray) -> np.ndarray:
    """(T,) bool: whether the task's success criterion holds in each state of the sequence."""
    s = np.asarray(states, np.float64)
    if s.ndim != 2 or s.shape[1] != 91:
        raise ValueError(f"expected states of shape (T, 91), got {s.shape}")
    goal = s[:, 4:7]
    hand = s[:, 0:3]
    if task in ("reach", "reach-wall"):
        return _dist(hand + TCP_OFFSET, goal) <= 0.05
    if task == "push":
        return _dist(_pos(s, "target_object"), goal) <= 0.05
    if task in ("pick-place", "push-wall", "pick-place-wall"):
        return _dist(_pos(s, "target_object"), goal) <= 0.07
    if task == "button-press":
        return np.abs(goal[:, 1] - _pos(s, "button")[:, 1]) <= 0.02
    if task == "button-press-wall":
        return np.abs(goal[:, 1] - _pos(s, "button")[:, 1]) <= 0.03
    if task == "coffee-button":
        return np.abs(goal[:, 1] - _pos(s, "coffee-button")[:, 1]) <= 0.02
    if task == "coffee-push":
        return _dist(_pos(s, "coffee"), goal) <= 0.07
    if task == "door-unlock":
        return np.abs(goal[:, 0] - _pos(s, "lock")[:, 0]) <= 0.02
    if task == "door-lock":
        return np.abs(goal[:, 2] - _pos(s, "lock")[:, 2]) <= 0.02
    if task == "door-open":
        return np.abs(_pos(s, "handle")[:, 0] - goal[:, 0]) <= 0.08
    if task == "door-close":
        return _dist(_pos(s, "handle"), goal) <= 0.08
    if task in ("window-open", "window-close"):
        return np.abs(_pos(s, "window")[:, 0] - goal[:, 0]) <= 0.05
    if task == "faucet-open":
        return _dist(_pos(s, "faucet") + np.array([-0.04, 0.0, 0.03]), goal) <= 0.07
    if task == "faucet-close":
        return _dist(_pos(s, "faucet"), goal) <= 0.07
    if task == "soccer":
        return _dist(_pos(s, "soccer"), goal) <= 0.07  # v3 scales x only in the reward, not in success
    if task == "hammer":
        nail = _pos(s, "nail")
        return nail[:, 1] - nail[0, 1] > 0.09
    if task == "make-coffee":
        spot = s[0, 4:7]
        mug_ok = _dist(_pos(s, "coffee"), spot) <= 0.07
        pressed = np.abs(_pos(s, "coffee-button")[:, 1] - (s[0, slot("coffee-button")][1] + BUTTON_TRAVEL)) <= 0.02
        stage = np.maximum.accumulate(mug_ok)
        return stage & mug_ok & pressed
    if task == "locked-door-open":
        unlock_target = s[0, 4:7]
        unlocked = np.abs(_pos(s, "lock")[:, 0] - unlock_target[0]) <= 0.02
        q = _quat(s, "lock")
        opening = -2.0 * np.arctan2(q[:, 3], q[:, 0])
        stage = np.maximum.accumulate(unlocked)
        return stage & (opening >= OPEN_ANGLE)
    raise KeyError(f"unknown Meta-world task {task!r}")


def label(task: str, states: np.ndarray) -> tuple[np.ndarray, int, bool]:
    """(rewards, end, success) for ``len(states) - 1`` transitions, cut at the first success."""
    flags = success_flags(task, states)[1:]
    n = len(flags)
    rewards = np.zeros(n, np.float32)
    hits = np.flatnonzero(flags)
    if len(hits):
        end = int(hits[0]) + 1
        rewards[end - 1] = SUCCESS_REWARD
        return rewards[:end], end, True
    return rewards, n, False
