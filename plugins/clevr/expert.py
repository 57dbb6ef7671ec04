"""A scripted expert for pairwise goals that plans with the simulator itself.

Each step it tries the pushes that can matter — the source ball in the directions that head towards the
target point (dst + 0.195 × goal direction), and the destination ball in every direction — by simulating
each one from the current state (one push = 40 MuJoCo steps), and takes a push that reaches the goal, else
the one that leaves the source closest to the target point. The target point is clamped into the region
ball centres can reach, and the part outside is charged, so a destination ball against a wall gets pushed
away first. When no simulated push makes progress it takes a random push of the source or destination
ball, which breaks the rare loops of a greedy planner.

Optional ``epsilon`` replaces an action by a uniformly random one (more varied offline data).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import goals as G
from .physics import DIRECTIONS, REACH_X, REACH_Y, ClevrSim

_UNIT_DIRS = DIRECTIONS / np.linalg.norm(DIRECTIONS, axis=1, keepdims=True)
_MARGIN = 0.02  # keep the target a little inside the reachable box


def _score(xy: np.ndarray, goal: dict[str, Any]) -> float:
    src, dst = xy[goal["src"]], xy[goal["dst"]]
    target = dst + G.TARGET_OFFSET * G.DIR_UNIT[goal["dir"]]
    lo = np.array([REACH_X[0] + _MARGIN, REACH_Y[0] + _MARGIN])
    hi = np.array([REACH_X[1] - _MARGIN, REACH_Y[1] - _MARGIN])
    clamped = np.clip(target, lo, hi)
    return float(np.linalg.norm(src - clamped) + 2.0 * np.linalg.norm(target - clamped))


class PairExpert:
    """Greedy one-push lookahead on the simulator for a ``pair`` goal."""

    def __init__(self, sim: ClevrSim, goal: dict[str, Any], rng: np.random.Generator, epsilon: float = 0.0):
        if goal["type"] != "pair":
            raise ValueError("the scripted expert handles pair goals (seen/rephrase levels)")
        self.sim, self.goal, self.rng, self.epsilon = sim, goal, rng, float(epsilon)

    def candidates(self, xy: np.ndarray) -> list[int]:
        g = self.goal
        src, dst = xy[g["src"]], xy[g["dst"]]
        to_target = dst + G.TARGET_OFFSET * G.DIR_UNIT[g["dir"]] - src
        norm = np.linalg.norm(to_target)
        acts = []
        if norm > 1e-9:
            cos = _UNIT_DIRS @ (to_target / norm)
            acts += [8 * g["src"] + int(k) for k in np.flatnonzero(cos > -0.1)]
        acts += [8 * g["dst"] + k for k in range(8)]
        return acts

    def plan(self) -> tuple[int | None, float, float]:
        """The greedy choice without noise: (action or None, its score, the current score). The score is
        ``-inf`` for a push that reaches the goal."""
        sim, goal = self.sim, self.goal
        start = sim.get_state()
        xy0 = sim.positions().reshape(-1, 2)
        base = _score(xy0, goal)
        best, best_score = None, np.inf
        for a in self.candidates(xy0):
            sim.set_state(start)
            after = sim.step(a)
            if G.pair_success(after, goal):
                best, best_score = a, -np.inf
                break
            s = _score(after.reshape(-1, 2), goal)
            if s < best_score:
                best, best_score = a, s
        sim.set_state(start)
        return best, best_score, base

    def choices(self) -> tuple[set[int], bool]:
        """Every push the noiseless expert could take here, and whether it is in its random fallback.

        Pushes that score as well as its greedy pick count as its choice (any push that reaches the goal
        when one does); in the fallback these are the 16 pushes of the source and destination balls.
        Simulates all 40 pushes; used to compare other data with this expert.
        """
        best, best_score, base = self.plan()
        g = self.goal
        if best is None or best_score > base - 1e-3:
            return {8 * b + k for b in (g["src"], g["dst"]) for k in range(8)}, True
        sim = self.sim
        start = sim.get_state()
        out = set()
        for a in range(40):
            sim.set_state(start)
            after = sim.step(a)
            if G.pair_success(after, g):
                score = -np.inf
            elif best_score == -np.inf:
                continue
            else:
                score = _score(after.reshape(-1, 2), g)
            if score <= best_score + 1e-9:
                out.add(a)
        sim.set_state(start)
        return out or {int(best)}, False

    def act(self) -> int:
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return int(self.rng.integers(40))
        best, best_score, base = self.plan()
        if best is None or best_score > base - 1e-3:
            goal = self.goal
            ball = goal["src"] if self.rng.random() < 0.5 else goal["dst"]
            return 8 * ball + int(self.rng.integers(8))
        return int(best)
