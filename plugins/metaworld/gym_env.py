"""The Gymnasium view KALM's policies get of a Meta-world level (imports gymnasium, mujoco, metaworld).

One :class:`KalmMetaworldEnv` plays any task of its level: ``reset(options=case)`` switches to the case's
task. Each task's simulator is built lazily on first use and kept by this env instance, so an evaluator
that makes many envs and resets them with cases of different tasks pays a task's construction
(~30 ms with the per-process model cache in :mod:`.sim`) only once per env and task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np

from . import sim
from .realism import state_bounds
from .tasks import STATE_DIM, TASK_ENTITIES, slot, slot_state, tasks_of, unused_entities

SUCCESS_REWARD = 10.0


class KalmMetaworldEnv(gymnasium.Env):
    """A KALM goal level of Meta-world as a Gymnasium env.

    Observation: the 91-d entity-slot state (float32), optionally followed by the instruction's
    embedding (``embed`` given). Action: 4-d in [-1, 1] (xyz hand displacement, gripper effort).
    Reward: difference of the task's dense reward between steps, replaced by +10 on the success step
    (KALM's shaping). ``terminated`` on success, ``truncated`` after ``horizon`` steps.

    ``reset(seed, options)``: ``options`` is a test case (``task``, ``instruction``, optional
    ``rand_vec`` = Meta-world's reset vector fixing object/goal positions, optional ``distractor`` =
    entity name or null); missing fields are drawn from the env's RNG. ``info`` carries
    ``is_success``, ``task``, ``level``, ``instruction``, ``rand_vec``, ``distractor``, ``stage``.
    """

    metadata = {"render_modes": []}

    def __init__(self, level: str, instructions: Mapping[str, Sequence[str]], *, horizon: int = 100,
                 distractor: bool = True, distractor_bank: Mapping[str, np.ndarray] | None = None,
                 embed: Callable[[list[str]], np.ndarray] | None = None, embedding_dim: int | None = None):
        self.level = level
        self.tasks = tasks_of(level)
        self.instructions = {t: list(instructions[t]) for t in self.tasks}
        self.horizon = int(horizon)
        self.distractor = bool(distractor)
        self.bank = distractor_bank
        if self.distractor and self.bank is None:
            raise ValueError("distractor=True needs a distractor_bank")
        self.embed = embed
        dim = STATE_DIM
        if embed is not None:
            if embedding_dim is None:
                embedding_dim = int(np.asarray(embed(["probe"])).shape[-1])
            dim += int(embedding_dim)
        low, high = state_bounds()
        if dim > STATE_DIM:  # a sentence embedding: unit-norm vectors, every entry in [-1, 1]
            low = np.concatenate([low, np.full(dim - STATE_DIM, -1.0, np.float32)])
            high = np.concatenate([high, np.full(dim - STATE_DIM, 1.0, np.float32)])
        self.observation_space = gymnasium.spaces.Box(low, high, dtype=np.float32)
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._sims: dict[str, Any] = {}
        self._sim: Any = None
        self.task: str | None = None
        self._t = 0
        self._prev_reward = 0.0
        self._done = True
        self._embedding: np.ndarray | None = None

    # -- helpers ------------------------------------------------------------------------------------
    def simulator(self, task: str) -> Any:
        """The metaworld env of ``task`` owned by this wrapper (built on first use)."""
        env = self._sims.get(task)
        if env is None:
            env = self._sims[task] = sim.build(task)
        return env

    def _observe(self, obs39: np.ndarray) -> np.ndarray:
        state = slot_state(self.task, obs39[:18], obs39[36:39])
        if self._distractor is not None:
            pool = self.bank[self._distractor]
            state[slot(self._distractor)] = pool[self._rng.integers(len(pool))]
        self.last_state = state
        out = state.astype(np.float32)
        if self._embedding is not None:
            out = np.concatenate([out, self._embedding])
        return out

    def _info(self, success: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        info = {"is_success": bool(success), "task": self.task, "level": self.level,
                "instruction": self.instruction, "rand_vec": self.rand_vec, "distractor": self._distractor,
                "t": self._t}
        if extra:
            info.update(extra)
        return info

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        case = dict(options or {})
        task = case.get("task")
        if task is None:
            task = self.tasks[int(self.np_random.integers(len(self.tasks)))]
        if task not in self.tasks:
            raise ValueError(f"task {task!r} is not in level {self.level!r} ({', '.join(self.tasks)})")
        self.task = task
        self._sim = self.simulator(task)
        instruction = case.get("instruction")
        if instruction is None:
            pool = self.instructions[task]
            instruction = pool[int(self.np_random.integers(len(pool)))]
        self.instruction = str(instruction)
        # one generator per episode for the simulator's reset draw and the distractor draws
        self._rng = np.random.default_rng(int(self.np_random.integers(2**63)))
        rand_vec = case.get("rand_vec")
        obs39 = sim.reset_sim(self._sim, None if rand_vec is None else np.asarray(rand_vec, np.float64),
                              self._rng)
        self.rand_vec = [float(x) for x in self._sim._last_rand_vec]
        if "distractor" in case:
            d = case["distractor"]
            if d is not None and (d not in unused_entities(task)):
                raise ValueError(f"distractor {d!r} is not an entity unused by {task!r} "
                                 f"(choose from {', '.join(unused_entities(task))})")
            self._distractor = d
        elif self.distractor:
            choices = unused_entities(task)
            self._distractor = choices[int(self._rng.integers(len(choices)))]
        else:
            self._distractor = None
        if self._distractor is not None and self.bank is None:
            raise ValueError("this env has no distractor bank (distractor=False)")
        self._embedding = None
        if self.embed is not None:
            self._embedding = np.asarray(self.embed([self.instruction]), np.float32).reshape(-1)
        self._t = 0
        self._prev_reward = 0.0
        self._done = False
        self.last_obs39 = obs39
        return self._observe(obs39), self._info(False, {"stage": 0})

    def step(self, action):
        if self._sim is None:
            raise RuntimeError("call reset() before step()")
        a = np.clip(np.asarray(action, np.float64).reshape(4), -1.0, 1.0)
        obs39, dense, _, _, mw_info = self._sim.step(a)
        self._t += 1
        success = bool(mw_info.get("success", 0.0))
        dense = float(dense)
        reward = SUCCESS_REWARD if success else dense - self._prev_reward
        self._prev_reward = dense
        terminated = success
        truncated = (not success) and self._t >= self.horizon
        self.last_obs39 = obs39
        extra = {"stage": int(mw_info.get("stage", 1 if success else 0)), "dense_reward": dense}
        return self._observe(obs39), float(reward), terminated, truncated, self._info(success, extra)

    def close(self) -> None:
        for env in self._sims.values():
            env.close()
        self._sims.clear()
        self._sim = None


def build_distractor_bank(n_per_task: int = 100, seed: int = 0,
                          progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
    """Initial poses (7-d: position + quaternion) of every entity kind, from real v3 resets.

    KALM drew its distractor states from a file of stored initial states that is not public; this
    rebuilds the equivalent from the standard tasks that contain each entity (``n_per_task`` resets of
    each such task). Deterministic per seed.
    """
    pools: dict[str, list[np.ndarray]] = {}
    standard = [t for t in TASK_ENTITIES if not sim.is_composite(t)]
    for k, task in enumerate(standard):
        env = sim.build(task)
        rng = np.random.default_rng([seed, k])
        for _ in range(n_per_task):
            obs = sim.reset_sim(env, None, rng)
            state = slot_state(task, obs[:18], obs[36:39])
            for ent in TASK_ENTITIES[task]:
                pools.setdefault(ent, []).append(state[slot(ent)].copy())
        env.close()
        if progress is not None:
            progress(k + 1, len(standard))
    return {ent: np.stack(v).astype(np.float32) for ent, v in sorted(pools.items())}


def make_env(level: str = "seen", config: dict[str, Any] | None = None,
             embed: Callable[[list[str]], np.ndarray] | None = None) -> KalmMetaworldEnv:
    """The Gymnasium entry point of ``kalm_bench/MetaWorld-v0``: a level of the ``metaworld`` environment
    with ``config`` (the suite's ``env.config``) applied."""
    from .environment import MetaworldEnvironment

    return MetaworldEnvironment(config or {}).make(level, embed=embed)
