"""Which 91-d Meta-world states are physically possible (``MetaworldEnvironment.realistic_states``).

The state (see :mod:`.tasks`) holds the hand xyz and gripper opening, the goal, and one position +
quaternion slot per entity kind; slots of entities the task does not use are zero. A state is realistic
when

* every number is finite;
* the hand is inside the arm's workspace (``HAND_LOW`` .. ``HAND_HIGH``) and the gripper opening inside
  [0, 1] (metaworld clips it there), with a small tolerance;
* every entity present (a slot whose position is not ~0: real objects have y >= 0.36) is over the table top
  (``TABLE_X`` x ``TABLE_Y``) and not below it (z >= ``OBJECT_Z_MIN``);
* no entity floats: its z is at most ``Z_TOP[entity]``, the highest it gets without being carried, unless it
  can be carried (``CARRIABLE``: puck, mug, hammer, ball) and the hand is within ``HOLD_DIST`` of it.

The goal slot is not checked (it is a target, not an object), nor are quaternions. Limits were measured on
``generate_dataset(300, seed=0)`` and ``(1000, seed=1)`` (78 490 transitions), 12 + 30 scripted episodes
(half with action noise 0.1) of every easy and hard task, KALM's 10 released demonstrations and the
distractor bank (193 000 states and next states in all); every one of them passes. Measured figures and
margins are next to each constant.
"""

from __future__ import annotations

import numpy as np

from .tasks import ENTITIES, SLOTS

# metaworld's mocap box is x [-0.5, 0.5], y [0.4, 1.0], z [0.05 (-0.15 for door/faucet tasks), 0.5]; widened by
# 0.05, with the floor at the table top (z = 0) since the table stops the hand. Measured hand: x [-0.4989,
# 0.3554], y [0.3856, 0.8938] (the hand lags the mocap below y = 0.4), z [0.0460, 0.3970].
HAND_LOW = np.array([-0.55, 0.35, 0.0])
HAND_HIGH = np.array([0.55, 1.05, 0.55])
# Gripper opening: metaworld clips it into [0, 1]; measured [0.2609, 1.0].
GRIPPER_RANGE = (-0.01, 1.01)
# The table top is a box of half-size 0.7 x 0.4 around (0, 0.6) with its surface at z = 0. Measured object
# positions: x [-0.2916, 0.2906], y [0.3605, 0.8661], z from -0.0115 (the mug's origin sits a little below
# the surface when it tips); the z floor keeps a 0.0285 margin.
TABLE_X = (-0.7, 0.7)
TABLE_Y = (0.2, 1.0)
OBJECT_Z_MIN = -0.04
# A slot whose position has no coordinate beyond this is empty (the task does not use that entity).
ABSENT = 0.05
# Highest z of each entity unless it is carried: measured maximum + 0.03. For carriable entities, the
# maximum with the hand more than HOLD_DIST away (overall maxima: puck 0.2610, mug 0.0423, hammer 0.1287,
# ball 0.0739); for fixed / articulated ones the overall maximum (lock: lever turned, 0.2594).
Z_TOP = {
    "target_object": 0.05,  # 0.0208
    "button": 0.145,  # 0.1151
    "lock": 0.29,  # 0.2594
    "handle": 0.18,  # 0.15
    "window": 0.23,  # 0.20
    "faucet": 0.145,  # 0.114
    "wall": 0.09,  # 0.06
    "coffee": 0.06,  # 0.0285
    "coffee-button": 0.33,  # 0.3010
    "hammer": 0.065,  # 0.0346
    "nail": 0.14,  # 0.11
    "soccer": 0.06,  # 0.03
}
CARRIABLE = ("target_object", "coffee", "hammer", "soccer")
# Largest hand-to-entity distance measured while a carriable entity was above its Z_TOP: 0.0463 (puck),
# 0.0548 (hammer), 0.0786 (ball); the limit keeps 0.07 over the largest.
HOLD_DIST = 0.15


def realistic(states: np.ndarray) -> np.ndarray:
    """(N,) bool: which rows of ``states`` ((N, 91)) are physically possible (see the module docstring)."""
    s = np.asarray(states, np.float64)
    if s.ndim != 2 or s.shape[1] < 7 + 7 * len(ENTITIES):
        raise ValueError(f"states must have shape (N, 91), got {s.shape}")
    ok = np.all(np.isfinite(s), axis=1)
    s = np.where(np.isfinite(s), s, 0.0)
    hand = s[:, 0:3]
    ok &= np.all((hand >= HAND_LOW) & (hand <= HAND_HIGH), axis=1)
    ok &= (s[:, 3] >= GRIPPER_RANGE[0]) & (s[:, 3] <= GRIPPER_RANGE[1])
    for entity in ENTITIES:
        start, _ = SLOTS[entity]
        pos = s[:, start:start + 3]
        present = np.any(np.abs(pos) > ABSENT, axis=1)
        x, y, z = pos[:, 0], pos[:, 1], pos[:, 2]
        placed = ((x >= TABLE_X[0]) & (x <= TABLE_X[1]) & (y >= TABLE_Y[0]) & (y <= TABLE_Y[1])
                  & (z >= OBJECT_Z_MIN))
        supported = z <= Z_TOP[entity]
        if entity in CARRIABLE:
            held = np.linalg.norm(pos - hand, axis=1) <= HOLD_DIST
            supported |= held & (z <= HAND_HIGH[2])
        ok &= ~present | (placed & supported)
    return ok


def state_bounds() -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension bounds of the 91-d state (the Gymnasium observation space), wide enough for every
    realistic state and for the zeros of absent entities: the hand inside its workspace, the gripper
    opening, every position over the table (x ``TABLE_X``, y from 0 for an absent slot to ``TABLE_Y``'s
    end, z from ``OBJECT_Z_MIN`` to the hand's ceiling, which a carried entity can reach), quaternions in
    [-1, 1]. The goal slot gets the same box as an entity's position."""
    low = np.zeros(7 + 7 * len(ENTITIES), np.float32)
    high = np.zeros_like(low)
    low[0:3], high[0:3] = HAND_LOW, HAND_HIGH
    low[3], high[3] = GRIPPER_RANGE
    position_low = np.array([TABLE_X[0], -ABSENT, OBJECT_Z_MIN])
    position_high = np.array([TABLE_X[1], TABLE_Y[1], HAND_HIGH[2]])
    start, _ = SLOTS["target_location"]
    low[start:start + 3], high[start:start + 3] = position_low, position_high
    for entity in ENTITIES:
        start, _ = SLOTS[entity]
        low[start:start + 3], high[start:start + 3] = position_low, position_high
        low[start + 3:start + 7], high[start + 3:start + 7] = -1.0, 1.0
    return low, high
