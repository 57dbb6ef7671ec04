"""The Gymnasium CLEVR-Robot env. Importing this module registers ``kalm_bench/CLEVRRobot-v0``::

    import gymnasium, kalm_bench_plugins.clevr.env
    env = gymnasium.make("kalm_bench/CLEVRRobot-v0", level="hard", config={"stale_scene": True})

Observation: the 10 ball coordinates ``[x_red, y_red, …, x_cyan, y_cyan]`` (plus the instruction embedding
when ``embed`` is given). Action: ``Discrete(40)``, ball = a // 8, push direction = a % 8. An episode ends
(terminated) on success — and after the first push for easy goals, which are one-step tasks — or is
truncated after 50 pushes. ``info``: ``is_success``, ``instruction``, ``goal`` (JSON dict), ``goal_array``
(KALM's numbers), ``level``.

``reset(options=case)`` plays a test case (``initial_state``, ``goal``, ``instruction``); a plain reset
draws a goal of the level and a start from the original initial-state distribution (``options`` with only
``initial_state`` draws the goal and keeps that start).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from kalm_bench.api import pickle_trusted

from . import goals as G
from . import physics as P
from .config import ClevrConfig
from .tasks import LEVELS, GoalEntry, GoalSource, load_goal_file

ENV_ID = "kalm_bench/CLEVRRobot-v0"
HORIZON = 50
OBS_LOW = np.tile(np.array([-0.6, -0.4], np.float32), P.N_BALLS)
OBS_HIGH = np.tile(np.array([0.6, 0.7], np.float32), P.N_BALLS)


@functools.lru_cache(maxsize=32)
def _cached_goal_file(path: str, mtime: float, trust: bool) -> tuple[GoalEntry, ...]:
    return tuple(load_goal_file(path, trust))


def goal_source(level: str, config: ClevrConfig) -> GoalSource:
    entries = None
    if level in config.goal_files:
        path = Path(config.goal_files[level]).expanduser()
        mtime = path.stat().st_mtime if path.exists() else 0.0
        entries = list(_cached_goal_file(str(path), mtime, pickle_trusted()))
    return GoalSource(level, entries, easy_still=config.easy_still)


def _as_config(config: ClevrConfig | dict[str, Any] | None) -> ClevrConfig:
    if isinstance(config, ClevrConfig):
        return config
    return ClevrConfig(**(config or {}))


class ClevrRobotEnv(gymnasium.Env):
    metadata = {"render_modes": []}

    def __init__(self, level: str = "seen", config: ClevrConfig | dict[str, Any] | None = None,
                 embed: Callable[[list[str]], np.ndarray] | None = None, max_episode_steps: int = HORIZON):
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r} (one of {LEVELS})")
        self.level = level
        self.config = _as_config(config)
        self.source = goal_source(level, self.config)
        self.sim = P.ClevrSim(P.get_model(patch=self.config.compat_patches,
                                          patch_margin=self.config.compat_patches))
        self.max_episode_steps = int(max_episode_steps)
        self.embed = embed
        self._embedding = np.zeros(0, np.float32)
        low, high = OBS_LOW, OBS_HIGH
        if embed is not None:
            dim = np.asarray(embed(["probe"])).reshape(-1).shape[0]
            low = np.concatenate([low, np.full(dim, -np.inf, np.float32)])
            high = np.concatenate([high, np.full(dim, np.inf, np.float32)])
        self.observation_space = spaces.Box(low, high, dtype=np.float32)
        self.action_space = spaces.Discrete(P.N_ACTIONS)
        self.case: dict[str, Any] | None = None
        self.goal: dict[str, Any] = {}
        self._t = 0
        self._state = np.zeros(2 * P.N_BALLS)
        self._done = False

    # -- gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if options and "goal" in options:
            case = dict(options)
            try:
                case["goal"] = G.as_goal(case["goal"])
            except ValueError as exc:
                raise ValueError(f"reset options: {exc}") from None
            init = np.asarray(case.get("initial_state", P.sample_scene(self.np_random)), np.float64)
            if init.shape != (2 * P.N_BALLS,):
                raise ValueError("reset options: initial_state must be 10 numbers")
            case["initial_state"] = init.tolist()
            case.setdefault("instruction", "")
        else:
            case = self.source.sample(self.np_random)
            if options and "initial_state" in options:
                init = np.asarray(options["initial_state"], np.float64).reshape(-1)
                if init.shape != (2 * P.N_BALLS,):
                    raise ValueError("reset options: initial_state must be 10 numbers")
                case["initial_state"] = init.tolist()
        self.case, self.goal = case, case["goal"]
        self._goal_array = G.goal_to_array(self.goal)
        aim = P.sample_scene(self.np_random) if self.config.stale_scene else None
        self._state = self.sim.reset(np.asarray(case["initial_state"], np.float64), aim=aim)
        self._t = 0
        self._done = False
        if self.embed is not None:
            self._embedding = np.asarray(self.embed([case["instruction"]]), np.float32).reshape(-1)
        return self._obs(), self._info(False)

    def step(self, action):
        if self.case is None:
            raise RuntimeError("call reset() before step()")
        prev = self._state
        self._state = self.sim.step(int(action))
        self._t += 1
        success = G.is_success(self.goal, prev, self._state, int(action), self.config.easy_check,
                               self.config.hard_obs)
        rew = G.reward(self.goal, prev, self._state, success, self.config.reward)
        terminated = bool(success or self.goal["type"] == "move")
        truncated = bool(not terminated and self._t >= self.max_episode_steps)
        return self._obs(), float(rew), terminated, truncated, self._info(success)

    def close(self) -> None:
        self.case = None

    # -- helpers ----------------------------------------------------------------------------------------
    @property
    def state(self) -> np.ndarray:
        """The 10 ball coordinates (float64)."""
        return self._state.copy()

    def _obs(self) -> np.ndarray:
        s = self._state.astype(np.float32)
        return np.concatenate([s, self._embedding]) if self.embed is not None else s

    def _info(self, success: bool) -> dict[str, Any]:
        assert self.case is not None
        return {"is_success": bool(success), "instruction": self.case["instruction"],
                "goal": _copy_goal(self.goal),
                "goal_array": self._goal_array.copy(), "level": self.level, "t": self._t}


def _copy_goal(goal: dict[str, Any]) -> dict[str, Any]:
    # Each info gets its own goal object (Gymnasium's checker flags shared ones); deepcopy costs 17 µs.
    if "pairs" in goal:
        return {**goal, "pairs": [dict(p) for p in goal["pairs"]]}
    return dict(goal)


def register() -> None:
    if ENV_ID not in gymnasium.registry:
        gymnasium.register(id=ENV_ID, entry_point=f"{__name__}:ClevrRobotEnv",
                           max_episode_steps=HORIZON, disable_env_checker=False)


register()
