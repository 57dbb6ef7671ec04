"""Which CLEVR-Robot states are physically possible (``ClevrRobot.realistic_states``).

A state holds only the x, y of the five balls (radius 0.13), so a ball resting on top of others looks
like an overlap: in real data a pushed ball rides up onto its neighbour and can stay there for many
pushes. Replaying the data shows such balls 0.08-0.23 above their resting height, at centre distances
down to 0.1297 in KALM's released data and 0.1021 in 9 800 of our generated episodes. A state is realistic
when

* every number is finite;
* every ball is on the table: x in [-0.5, 0.5], y in [-0.3, 0.57] (the initial-scene box joined with the
  box that settled balls reach inside the walls) widened by ``TABLE_MARGIN``;
* no two balls are closer than ``MIN_PAIR_DISTANCE``: only a ball almost exactly on top of another could
  be (an unstable, passing position never seen in real data);
* the balls closer than ``CONTACT_DISTANCE`` (one rests on the other) can be split into balls on the table
  and balls on top of them: no ball on top of a ball that is itself on top, e.g. no three balls pairwise
  closer than that.

Measured on every state and next state of KALM's 80 released trajectories and of 9 800 generated
episodes: ``generate_dataset`` with 400 episodes (seed 0) with the default expert and with ``epsilon=0.3``,
1 500 (seed 1 default, seed 2 ``epsilon=0.3``) and 3 000 (seed 3 ``epsilon=0.3``, seed 4 default); all
69 722 pass. What a state alone cannot tell apart: two balls 0.07-0.25 apart may be stacked (real: 6.4 %
of KALM's states and about 1 % of ours have a pair closer than 0.25) or interpenetrating (impossible). A
caller that wants to reject both can pass ``min_pair_distance=CONTACT_DISTANCE``, which rejects those real
states too.
"""

from __future__ import annotations

import itertools

import numpy as np

from .physics import BALL_RADIUS, INIT_X, INIT_Y, N_BALLS, REACH_X, REACH_Y

# Ball centres seen in real data: x in [-0.49999, 0.50000] and y in [-0.30000, 0.57482] (over KALM's data
# and ours; y's top is 0.0048 past REACH_Y, balls pressed against the front wall). The limits keep 0.02
# (x, y bottom) and 0.015 (y top) beyond the measured extremes.
TABLE_MARGIN = 0.02
TABLE_X = (min(INIT_X[0], REACH_X[0]) - TABLE_MARGIN, max(INIT_X[1], REACH_X[1]) + TABLE_MARGIN)
TABLE_Y = (min(INIT_Y[0], REACH_Y[0]) - TABLE_MARGIN, max(INIT_Y[1], REACH_Y[1]) + TABLE_MARGIN)
# Smallest centre distance in real data: 0.12966 in KALM's (a ball almost on top of another, 0.23 above the
# table), 0.10207 in ours (3 000 episodes, seed 4; 6 of 62 202 states are under 0.16). The limit keeps 0.032
# (a quarter radius) under the smallest.
MIN_PAIR_DISTANCE = 0.07
# Two balls side by side on the table are 2 r = 0.26 apart (less the 0.002 contact margin); closer than
# 2 r - 0.01 one of them is lifted onto the other (at least 0.07 higher, the replay confirms it). Real data
# has at most three such pairs per state, always sharing one ball (a ball resting on the others).
CONTACT_DISTANCE = 2 * BALL_RADIUS - 0.01

_PAIRS = np.array(list(itertools.combinations(range(N_BALLS), 2)))  # (10, 2)
# Every split of the balls into "on the table" (0) and "on top" (1): (32, 5) levels, and for each split
# which of the 10 pairs lie on the same level (such a pair cannot overlap).
_LEVELS = np.array(list(itertools.product((0, 1), repeat=N_BALLS)))
_SAME_LEVEL = (_LEVELS[:, _PAIRS[:, 0]] == _LEVELS[:, _PAIRS[:, 1]])  # (32, 10)


def pair_distances(states: np.ndarray) -> np.ndarray:
    """(N, 10) centre distances of the ball pairs, in ``itertools.combinations`` order."""
    pos = np.asarray(states, np.float64).reshape(len(states), N_BALLS, 2)
    return np.linalg.norm(pos[:, _PAIRS[:, 0]] - pos[:, _PAIRS[:, 1]], axis=-1)


def realistic(states: np.ndarray, min_pair_distance: float = MIN_PAIR_DISTANCE) -> np.ndarray:
    """(N,) bool: which rows of ``states`` ((N, 10) or more columns; the first 10 are read) are possible."""
    s = np.asarray(states, np.float64)
    if s.ndim != 2 or s.shape[1] < 2 * N_BALLS:
        raise ValueError(f"states must have shape (N, {2 * N_BALLS}), got {s.shape}")
    s = s[:, :2 * N_BALLS]
    ok = np.all(np.isfinite(s), axis=1)
    s = np.where(np.isfinite(s), s, 0.0)
    x, y = s[:, 0::2], s[:, 1::2]
    ok &= np.all((x >= TABLE_X[0]) & (x <= TABLE_X[1]) & (y >= TABLE_Y[0]) & (y <= TABLE_Y[1]), axis=1)
    d = pair_distances(s)
    ok &= np.all(d >= min_pair_distance, axis=1)
    overlapping = d < CONTACT_DISTANCE  # (N, 10)
    # possible if some split puts every overlapping pair on two levels
    conflicts = overlapping.astype(np.int32) @ _SAME_LEVEL.T.astype(np.int32)  # (N, 32)
    ok &= np.any(conflicts == 0, axis=1)
    return ok
