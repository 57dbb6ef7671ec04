"""``corridor``: a complete, minimal kalm-bench environment plugin.

An agent stands on one of 8 cells of a corridor and must reach the cell its instruction names. Actions:
0 = left, 1 = right, 2 = stay. Levels: ``seen`` (targets 0-5, the offline data's), ``far`` (targets 6-7,
absent from the data: KALM's imaginary rollouts would target them).

Everything an environment must provide comes first; the methods only KALM's imaginary rollouts use are
marked "KALM only": an env without them still runs every ``base`` variant.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from kalm_bench import hookimpl
from kalm_bench.api import (
    Environment,
    Episode,
    Progress,
    RolloutLabels,
    StrictConfig,
    TrajectoryDataset,
    UserError,
    no_progress,
)

N_CELLS = 8
TARGETS = {"seen": range(0, 6), "far": range(6, 8)}
PHRASES = {"seen": ["walk to cell {t}", "go to square {t}"], "far": ["head all the way to cell {t}"]}


def _case(level: str, rng: np.random.Generator) -> dict[str, Any]:
    target = int(rng.choice(list(TARGETS[level])))
    start = int(rng.integers(N_CELLS))
    while start == target:
        start = int(rng.integers(N_CELLS))
    phrase = PHRASES[level][int(rng.integers(len(PHRASES[level])))]
    return {"instruction": phrase.format(t=target), "initial_state": [float(start)], "goal": target}


def _step(pos: float, action: int) -> float:
    return float(np.clip(pos + (-1, 1, 0)[int(action)], 0, N_CELLS - 1))


class Corridor(Environment):
    # -- required declarations --------------------------------------------------------------------------
    name: ClassVar[str] = "corridor"
    version: ClassVar[str] = "1"  # part of every cache key: bump it when a change alters results
    description: ClassVar[str] = "example env: walk along 8 cells to the one the instruction names"
    levels: ClassVar[dict[str, str]] = {"seen": "targets 0-5 (the offline data's level)",
                                        "far": "targets 6-7, absent from the data"}
    action_kind: ClassVar[str] = "discrete"
    action_size: ClassVar[int] = 3
    state_dim: ClassVar[int] = 1
    horizon: ClassVar[int] = 12
    case_fields: ClassVar[tuple[str, ...]] = ("instruction", "initial_state", "goal")

    class Config(StrictConfig):  # what a suite may set under env.config
        noise: float = 0.0  # share of random actions in the generated data

    # -- required methods ---------------------------------------------------------------------------------
    def make(self, level: str):
        """A Gymnasium env; ``reset(options=case)`` plays that case, ``info["is_success"]`` tells success."""
        import gymnasium as gym

        self._check_level(level)
        horizon = self.horizon

        class CorridorEnv(gym.Env):
            observation_space = gym.spaces.Box(0, N_CELLS - 1, (1,), np.float32)
            action_space = gym.spaces.Discrete(3)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                case = options or _case(level, self.np_random)
                self.pos, self.goal, self.t = float(case["initial_state"][0]), int(case["goal"]), 0
                return np.array([self.pos], np.float32), {"is_success": False}

            def step(self, action):
                self.pos, self.t = _step(self.pos, int(action)), self.t + 1
                ok = self.pos == self.goal
                return (np.array([self.pos], np.float32), 10.0 if ok else -1.0, ok, self.t >= horizon,
                        {"is_success": ok})

        return CorridorEnv()

    def generate_dataset(self, n_episodes: int, seed: int, progress: Progress = no_progress,
                         **options: Any) -> TrajectoryDataset:
        """Expert episodes of the seen level, deterministic per seed. No options."""
        if options:
            raise UserError(f"unknown dataset option(s) {sorted(options)} for {self.name}", field="options")
        rng = np.random.default_rng(seed)
        episodes = []
        for i in range(n_episodes):
            case = _case("seen", rng)
            pos, goal = case["initial_state"][0], case["goal"]
            states, actions, rewards = [[pos]], [], []
            for _ in range(self.horizon):
                a = 1 if goal > pos else 0
                if rng.random() < self.config.noise:
                    a = int(rng.integers(3))
                pos = _step(pos, a)
                states.append([pos])
                actions.append(a)
                rewards.append(10.0 if pos == goal else -1.0)
                if pos == goal:
                    break
            episodes.append(Episode(states=np.array(states, np.float32), actions=np.array(actions, np.int64),
                                    rewards=np.array(rewards, np.float32), instruction=case["instruction"],
                                    goal=self.goal_of(case), level="seen", success=pos == goal))
            progress(i + 1, n_episodes)
        return TrajectoryDataset.from_episodes(episodes, env=self.name, action_kind="discrete",
                                               action_size=self.action_size, seed=seed, source="expert",
                                               state_dim=self.state_dim)

    def test_cases(self, level: str, n: int | None, seed: int) -> list[dict[str, Any]]:
        """``n`` cases (default 20) of ``level``, deterministic per (level, seed)."""
        self._check_level(level)
        rng = np.random.default_rng([seed, list(self.levels).index(level)])
        return [_case(level, rng) for _ in range(20 if n is None else int(n))]

    # -- optional ----------------------------------------------------------------------------------------
    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(1, np.float32), np.full(1, N_CELLS - 1, np.float32)

    def realistic_states(self, states: np.ndarray) -> np.ndarray:
        """On a cell of the corridor (imagined states can be anywhere)."""
        s = np.asarray(states, np.float64)[:, 0]
        return (s >= 0) & (s <= N_CELLS - 1) & (s == np.round(s))

    # -- KALM only ---------------------------------------------------------------------------------------
    def sample_goals(self, level: str, n: int, seed: int) -> list[dict[str, Any]]:
        """KALM only: goals for imaginary rollouts, from a stream separate from the test cases'."""
        self._check_level(level)
        rng = np.random.default_rng([seed, list(self.levels).index(level), 1])
        return [_case(level, rng) for _ in range(int(n))]

    def label_rollout(self, level: str, case: dict[str, Any], states: np.ndarray,
                      actions: np.ndarray) -> RolloutLabels:
        """KALM only: oracle labels of a (possibly imagined) rollout; it ends at the first success."""
        s = np.asarray(states, np.float64)[1:, 0]
        hit = np.nonzero(s == case["goal"])[0]
        end = int(hit[0]) + 1 if len(hit) else len(actions)
        rewards = np.where(s[:end] == case["goal"], 10.0, -1.0).astype(np.float32)
        return RolloutLabels(rewards=rewards, end=end, success=bool(len(hit)))

    def goal_of(self, case: dict[str, Any]) -> Any:
        """KALM only: what an episode records as its goal (JSON-serialisable)."""
        return int(case["goal"])

    def case_for_goal(self, goal: Any) -> dict[str, Any]:
        """KALM only: a case ``label_rollout`` accepts for a recorded goal."""
        return {"goal": int(goal)}

    # -- helpers -----------------------------------------------------------------------------------------
    def _check_level(self, level: str) -> None:
        if level not in self.levels:
            raise UserError(f"unknown level {level!r} of {self.name} (one of {', '.join(self.levels)})",
                            field="env.levels")


@hookimpl
def register_envs(register):
    register(Corridor)
