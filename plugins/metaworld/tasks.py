"""KALM's Meta-world task lists, goal levels and the 91-d entity-slot layout (no heavy imports).

As in KALM's Meta-world setting: four levels (seen 10 / rephrase 10 / easy 8 / hard 4), one
fixed 7-d slot (position + quaternion) per entity kind, the gripper (hand xyz + opening) and the goal
position up front. A task's first Meta-world object goes into the slot of its first entity, the second
object into its second entity's slot; every other slot is zero.
"""

from __future__ import annotations

import numpy as np

SEEN_TASKS = ("reach", "push", "pick-place", "button-press", "door-unlock", "door-open", "window-open",
              "faucet-open", "coffee-push", "coffee-button")
EASY_TASKS = ("reach-wall", "push-wall", "pick-place-wall", "button-press-wall", "door-lock", "door-close",
              "window-close", "faucet-close")
HARD_TASKS = ("make-coffee", "locked-door-open", "hammer", "soccer")
COMPOSITE_TASKS = ("make-coffee", "locked-door-open")

LEVEL_TASKS: dict[str, tuple[str, ...]] = {
    "seen": SEEN_TASKS,
    "rephrase": SEEN_TASKS,  # same dynamics, new wording (KALM's ``rep-`` aliases)
    "easy": EASY_TASKS,
    "hard": HARD_TASKS,
}
LEVEL_DESCRIPTIONS = {
    "seen": "the 10 tasks of the offline data, with the instructions seen in training",
    "rephrase": "the same 10 tasks, described in new (indirect, preference/complaint style) wording",
    "easy": "4 wall variants of seen skills and 4 reverse skills (lock, close, close, close)",
    "hard": "2 new two-stage tasks (make-coffee, locked-door-open) and 2 unseen objects (hammer, soccer)",
}
ALL_TASKS = tuple(dict.fromkeys(SEEN_TASKS + EASY_TASKS + HARD_TASKS))

# name -> (start index, size) in the 91-d state
SLOTS: dict[str, tuple[int, int]] = {
    "gripper": (0, 4),
    "target_location": (4, 3),
    "target_object": (7, 7),
    "button": (14, 7),
    "lock": (21, 7),
    "handle": (28, 7),
    "window": (35, 7),
    "faucet": (42, 7),
    "wall": (49, 7),
    "coffee": (56, 7),
    "coffee-button": (63, 7),
    "hammer": (70, 7),
    "nail": (77, 7),
    "soccer": (84, 7),
}
STATE_DIM = 91
ENTITIES = tuple(k for k in SLOTS if k not in ("gripper", "target_location"))  # the 12 object kinds

TASK_ENTITIES: dict[str, tuple[str, ...]] = {
    "reach": ("target_object",), "push": ("target_object",), "pick-place": ("target_object",),
    "button-press": ("button",), "door-unlock": ("lock",), "door-lock": ("lock",),
    "door-open": ("handle",), "door-close": ("handle",),
    "window-open": ("window",), "window-close": ("window",),
    "faucet-open": ("faucet",), "faucet-close": ("faucet",),
    "coffee-push": ("coffee",), "coffee-button": ("coffee-button",),
    "reach-wall": ("target_object", "wall"), "push-wall": ("target_object", "wall"),
    "pick-place-wall": ("target_object", "wall"), "button-press-wall": ("button", "wall"),
    "make-coffee": ("coffee", "coffee-button"), "locked-door-open": ("lock", "handle"),
    "hammer": ("hammer", "nail"), "soccer": ("soccer",),
}

# v3 wall envs leave their second object slot empty; the wall is a static body whose pose is the same
# in v2 and v3 (body centre, identity quaternion), so KALM's wall slot is reproduced as a constant.
WALL_POSE = {
    "reach-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "push-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "pick-place-wall": (0.1, 0.75, 0.06, 1.0, 0.0, 0.0, 0.0),
    "button-press-wall": (0.1, 0.6, 0.0, 1.0, 0.0, 0.0, 0.0),
}


def slot(name: str) -> slice:
    start, size = SLOTS[name]
    return slice(start, start + size)


def tasks_of(level: str) -> tuple[str, ...]:
    try:
        return LEVEL_TASKS[level]
    except KeyError:
        raise KeyError(f"unknown Meta-world level {level!r}; known: {', '.join(LEVEL_TASKS)}") from None


def level_of_task(task: str) -> str:
    for level, tasks in LEVEL_TASKS.items():
        if task in tasks:
            return level
    raise KeyError(task)


def slot_state(task: str, obs18: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The 91-d KALM state from a Meta-world current-frame vector (hand 3, gripper 1, 2 × pos+quat)."""
    out = np.zeros(STATE_DIM, np.float64)
    out[0:4] = obs18[0:4]
    out[4:7] = goal
    ents = TASK_ENTITIES[task]
    out[slot(ents[0])] = obs18[4:11]
    if len(ents) > 1:
        if ents[1] == "wall":
            out[slot("wall")] = WALL_POSE[task]
        else:
            out[slot(ents[1])] = obs18[11:18]
    return out


def unused_entities(task: str) -> tuple[str, ...]:
    used = set(TASK_ENTITIES[task])
    return tuple(e for e in ENTITIES if e not in used)
