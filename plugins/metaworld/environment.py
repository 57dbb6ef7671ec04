"""The ``metaworld`` environment: KALM's four Meta-world goal levels on metaworld 3.1 (v3 tasks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, ValidationError

from kalm_bench.api import Environment, Progress, RolloutLabels, StrictConfig, no_progress
from kalm_bench.api import UserError

from .tasks import LEVEL_DESCRIPTIONS, LEVEL_TASKS, SEEN_TASKS, STATE_DIM, tasks_of

EPISODES_PER_TASK = 11  # KALM's meta_offline_test.py: eval_sample_num = 11 per task and level


class MetaworldConfig(StrictConfig):
    distractor: bool = Field(True, description="fill one slot the task does not use with a random "
                                               "entity pose at every step (KALM's evaluation)")
    horizon: int = Field(100, ge=1, description="episode length limit (KALM: 100)")
    instruction_file: str | None = Field(None, description="JSON {level: {task: [instructions]}} replacing "
                                                           "the shipped lists for the levels/tasks it names")
    data_noise: float = Field(0.1, ge=0.0, description="std of the Gaussian noise added to the scripted "
                                                       "policy's actions in generated data")
    data_horizon: int | None = Field(None, ge=1, description="episode limit for generated data "
                                                             "(default: horizon)")


class _DataOptions(StrictConfig):
    """``data.options`` of generated Meta-world data (see ``MetaworldEnvironment.generate_dataset``)."""

    tasks: list[str] | None = None
    noise: float | None = Field(None, ge=0.0)
    horizon: int | None = Field(None, ge=1)


class MetaworldEnvironment(Environment):
    """Meta-world (Sawyer arm) with KALM's seen / rephrase / easy / hard task levels."""

    libraries: ClassVar[tuple[str, ...]] = ("metaworld", "mujoco")

    name: ClassVar[str] = "metaworld"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("Meta-world v3 (metaworld 3.1.1) with KALM's 91-d entity-slot state, "
                                  "24 tasks in 4 goal levels, scripted offline data")
    Config: ClassVar[type[StrictConfig]] = MetaworldConfig
    levels: ClassVar[dict[str, str]] = dict(LEVEL_DESCRIPTIONS)
    action_kind: ClassVar[str] = "continuous"
    action_size: ClassVar[int] = 4  # hand x/y/z displacement and gripper effort
    state_dim: ClassVar[int] = STATE_DIM
    horizon: ClassVar[int] = 100
    case_fields: ClassVar[tuple[str, ...]] = ("task", "instruction", "level", "rand_vec", "distractor",
                                              "initial_state")
    imagination_case_fields: ClassVar[tuple[str, ...]] = ("task", "instruction", "initial_state")
    can_label: ClassVar[bool] = True
    # Generated data never place a distractor; test cases and the Gymnasium env that rollouts replay in do.
    # The horizon bounds the data's episodes too (data_horizon defaults to it).
    option_scopes: ClassVar[dict[str, Any]] = {"distractor": "imagination"}
    file_options: ClassVar[tuple[str, ...]] = ("instruction_file",)
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"distractor": True, "horizon": 100},
        "clean": {"distractor": False, "horizon": 100},
    }

    def __init__(self, config: StrictConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self.horizon = int(self.config.horizon)  # the batched evaluator reads the instance's horizon

    # -- instructions ---------------------------------------------------------------------------------
    @cached_property
    def instruction_table(self) -> dict[str, dict[str, list[str]]]:
        """{level: {task: [instructions]}}: the shipped lists, overridden by ``instruction_file``."""
        table = json.loads(resources.files(__package__).joinpath("instructions.json").read_text())
        if self.config.instruction_file:
            from .data import load_instruction_file

            for level, per_task in load_instruction_file(self.config.instruction_file).items():
                table[level].update(per_task)
        return table

    def instructions(self, level: str, task: str) -> list[str]:
        self._check_level(level)
        return list(self.instruction_table[level][task])

    @cached_property
    def distractor_bank(self) -> dict[str, np.ndarray]:
        """Entity kind → (n, 7) initial poses from real resets (see ``gym_env.build_distractor_bank``)."""
        # Kept as JSON text (float32 values round-trip exactly) rather than a binary file in git.
        raw = json.loads(resources.files(__package__).joinpath("distractor_states.json").read_text())
        return {k: np.asarray(v, np.float32) for k, v in raw.items()}

    def _check_level(self, level: str) -> None:
        if level not in LEVEL_TASKS:
            raise UserError(f"unknown level {level!r} of environment 'metaworld' "
                            f"(known: {', '.join(LEVEL_TASKS)})", field="level")

    # -- Environment API ------------------------------------------------------------------------------
    def make(self, level: str, embed: Callable[[list[str]], np.ndarray] | None = None,
             distractor: bool | None = None):
        """A Gymnasium env for ``level``; observation = 91-d state (⊕ ``embed(instruction)`` if given)."""
        from .gym_env import KalmMetaworldEnv

        self._check_level(level)
        use = self.config.distractor if distractor is None else distractor
        return KalmMetaworldEnv(level, self.instruction_table[level], horizon=self.horizon,
                                distractor=use, distractor_bank=self.distractor_bank, embed=embed)

    def test_cases(self, level: str, n: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` cases (default: 11 per task, KALM's count), tasks in round-robin order.

        A case fixes the task, the instruction, Meta-world's reset vector (``rand_vec``: object and goal
        positions), the distractor entity (or null) and records the 91-d initial state without
        distractor. Deterministic per (level, n, seed).
        """
        self._check_level(level)
        tasks = tasks_of(level)
        if n is None:
            n = EPISODES_PER_TASK * len(tasks)
        return self._cases(level, n, seed, with_distractor=self.config.distractor)

    def sample_goals(self, level: str, n: int, seed: int) -> list[dict[str, Any]]:
        """Goals for imaginary rollouts: like test cases (initial state from a real reset), no distractor."""
        self._check_level(level)
        return self._cases(level, n, seed + 7_919, with_distractor=False)

    def _cases(self, level: str, n: int, seed: int, with_distractor: bool) -> list[dict[str, Any]]:
        from .gym_env import KalmMetaworldEnv
        from .tasks import unused_entities

        tasks = tasks_of(level)
        env = KalmMetaworldEnv(level, self.instruction_table[level], horizon=self.horizon, distractor=False)
        cases = []
        try:
            for i in range(n):
                task = tasks[i % len(tasks)]
                rng = np.random.default_rng([seed, i, tasks.index(task)])
                pool = self.instruction_table[level][task]
                instruction = pool[int(rng.integers(len(pool)))]
                distractor = None
                if with_distractor:
                    choices = unused_entities(task)
                    distractor = choices[int(rng.integers(len(choices)))]
                env.reset(seed=int(rng.integers(2**31)), options={"task": task, "instruction": instruction})
                cases.append({"task": task, "instruction": instruction, "level": level,
                              "rand_vec": [round(float(x), 10) for x in env.rand_vec],
                              "distractor": distractor,
                              "initial_state": [float(x) for x in env.last_state]})
        finally:
            env.close()
        return cases

    def label_rollout(self, level: str, case: dict[str, Any], states: np.ndarray,
                      actions: np.ndarray) -> RolloutLabels:
        """Oracle labels from the task's success criterion on the 91-d states (see ``oracle.py``)."""
        from .oracle import label

        states = np.asarray(states, np.float64)
        if states.ndim != 2 or states.shape[1] != STATE_DIM:
            raise ValueError(f"states must have shape (T+1, {STATE_DIM}), got {states.shape}")
        if len(actions) != len(states) - 1:
            raise ValueError(f"{len(actions)} actions for {len(states)} states (need one fewer)")
        rewards, end, success = label(case["task"], states)
        return RolloutLabels(rewards=rewards, end=end, success=success)

    def goal_of(self, case: dict[str, Any]) -> Any:
        """The case without its initial state: the task, instruction, level, reset vector and distractor."""
        return {k: v for k, v in case.items() if k != "initial_state"}

    def case_for_goal(self, goal: Any) -> dict[str, Any]:
        """``label_rollout`` reads the goal's ``task``."""
        return dict(goal)

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The workspace box of every entity slot (see ``realism.state_bounds``)."""
        from .realism import state_bounds

        return state_bounds()

    def realistic_states(self, states: np.ndarray) -> np.ndarray:
        """Hand and objects inside the workspace, nothing below the table or floating (see ``realism.py``)."""
        from .realism import realistic

        return realistic(states)

    def generate_dataset(self, n_episodes: int, seed: int, progress: Progress = no_progress,
                         **options: Any):
        """``n_episodes`` scripted episodes in total over the 10 seen tasks (round-robin), instructions
        from the seen lists. Options: ``tasks`` (subset of the seen tasks), ``noise``, ``horizon``."""
        from .data import generate_scripted_dataset

        unknown = set(options) - {"tasks", "noise", "horizon"}
        if unknown:
            raise UserError(f"unknown dataset option(s) {sorted(unknown)} (known: tasks, noise, horizon)",
                            field="options")
        try:
            opts = _DataOptions(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise UserError(f"{err['msg']} (got {err.get('input')!r})", field=f"options.{where}") from None
        tasks = tuple(opts.tasks or SEEN_TASKS)
        noise = float(self.config.data_noise if opts.noise is None else opts.noise)
        horizon = int(opts.horizon or self.config.data_horizon or self.horizon)
        return generate_scripted_dataset(n_episodes, seed, self.instruction_table["seen"], tasks=tasks,
                                         horizon=horizon, noise=noise, env_name=self.name,
                                         version=self.version, progress=progress)


def instruction_file_default() -> Path:
    """Path of the shipped instruction lists."""
    return Path(str(resources.files(__package__).joinpath("instructions.json")))


def expert_policy(env: MetaworldEnvironment, level: str):
    """The scripted experts as a harness ``Policy`` for ``level`` (task looked up from the instruction)."""
    from .policies import ExpertSlotPolicy

    mapping = {text: task for task, texts in env.instruction_table[level].items() for text in texts}
    return ExpertSlotPolicy(mapping)
