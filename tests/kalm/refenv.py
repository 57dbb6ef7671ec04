"""A CLEVR stand-in built on KALM's released files, so these tests need no simulator. The files ship
pickle-free in ``tests/data/kalm/``; ``tests/kalm/conftest.py`` writes them back as ``.npy`` for the loaders.

Success is KALM's pair check (direction sector and distance < 0.39 between the two balls) on 6-number
goals; rewards follow the real data's
offset-distance formula. ``make`` is not available (no physics here).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from kalm_bench.api import Environment, RolloutLabels, StrictConfig

_OFFSET = {0: (0.0, 0.195), 1: (-0.195, 0.0), 2: (0.0, -0.195), 3: (0.195, 0.0)}
_SECTOR = {0: (45, 135), 1: (135, 225), 2: (225, 315), 3: (315, 405)}


def _pair(goal: list[float]) -> tuple[int, int, int]:
    f = [int(x) for x in goal[:5]]
    return f.index(1), f.index(2), int(goal[5])


def pair_success(state: np.ndarray, goal: list[float]) -> bool:
    src, dst, direction = _pair(goal)
    v = state[2 * src:2 * src + 2] - state[2 * dst:2 * dst + 2]
    v = np.where(np.abs(v) < 1e-3, 0.0, v)
    ang = math.degrees(math.atan2(v[1], v[0])) % 360
    lo, hi = _SECTOR[direction]
    in_sector = lo <= ang < hi or lo <= ang + 360 < hi
    return bool(in_sector and np.linalg.norm(v) < 0.39 + 1e-3)


def _dist(state: np.ndarray, goal: list[float]) -> float:
    src, dst, direction = _pair(goal)
    target = state[2 * dst:2 * dst + 2] + np.asarray(_OFFSET[direction])
    return float(np.linalg.norm(state[2 * src:2 * src + 2] - target))


class RefClevr(Environment):
    name: ClassVar[str] = "ref-clevr"
    levels: ClassVar[dict[str, str]] = {"seen": "KALM toy data goals", "rephrase": "KALM rephrase prompts"}
    action_kind: ClassVar[str] = "discrete"
    action_size: ClassVar[int] = 40
    state_dim: ClassVar[int] = 10
    horizon: ClassVar[int] = 50

    class Config(StrictConfig):
        pass

    def __init__(self, dataset: Any = None, prompts: list[dict[str, Any]] | None = None):
        super().__init__()
        self.dataset, self.prompts = dataset, prompts or []

    def make(self, level: str):
        raise NotImplementedError("no simulator in the reference stand-in")

    def generate_dataset(self, n_episodes: int, seed: int, progress=None, **options: Any):
        return self.dataset

    def test_cases(self, level: str, n: int, seed: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        if level == "rephrase":
            pool = self.prompts
        else:
            ds = self.dataset
            pool = [{"instruction": str(ds.instructions[i]), "goal": __import__("json").loads(str(ds.goals[i])),
                     "initial_state": ds.states[int(ds.episode_starts[i])].tolist()}
                    for i in range(ds.n_episodes)]
        idx = rng.choice(len(pool), size=n, replace=n > len(pool))
        return [pool[int(i)] for i in idx]

    def label_rollout(self, level, case, states, actions) -> RolloutLabels:
        goal = case["goal"]
        n = len(actions)
        rewards = np.zeros(n, np.float32)
        for t in range(n):
            if pair_success(states[t + 1], goal):
                rewards[t] = 100.0
                return RolloutLabels(rewards=rewards[:t + 1], end=t + 1, success=True)
            rewards[t] = 10.0 * (_dist(states[t], goal) - _dist(states[t + 1], goal))
        return RolloutLabels(rewards=rewards, end=n, success=False)
