"""The ``clevr-robot`` environment as a kalm-bench component (mujoco/gymnasium are imported lazily)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from kalm_bench.api import Environment, EvalResult, Policy, Progress, RolloutLabels, no_progress

from .config import ClevrConfig

_LEVELS = {
    "seen": "the 80 pairwise goals of the offline data (ordered colour pair x behind/front/left/right)",
    "rephrase": "the same 80 goals in other wording",
    "easy": "move one ball one step in a direction (one-push episodes)",
    "hard": "two or three pairwise goals at once, the colour-ordered line, all balls around green",
}


class ClevrRobot(Environment):

    libraries: ClassVar[tuple[str, ...]] = ("mujoco",)
    name = "clevr-robot"
    version = "1"
    description = "CLEVR-Robot (KALM): 5 balls, 40 push actions, MuJoCo port faithful to KALM's data"
    Config = ClevrConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # KALM's clevr_offline_test.py: stale scene graph on reset; its hard judge reads the right numbers.
        "original": {"stale_scene": True},
        # ImagineBench's BallEnv: the same reset, its rewards, and the 15-number slice in the hard judge.
        "imaginebench": {"reward": "imaginebench", "stale_scene": True, "hard_obs": "kalm15"},
    }
    levels: ClassVar[dict[str, str]] = _LEVELS
    action_kind = "discrete"
    action_size: ClassVar[int] = 40
    state_dim: ClassVar[int] = 10
    horizon = 50
    case_fields: ClassVar[tuple[str, ...]] = ("instruction", "initial_state", "goal")
    imagination_case_fields: ClassVar[tuple[str, ...]] = ("instruction", "initial_state", "goal")
    can_label: ClassVar[bool] = True
    gym_id: ClassVar[str] = "kalm_bench/CLEVRRobot-v0"
    # The expert data read the dynamics and the reward only; these are read from the labels, goals and resets
    # of rollouts and evaluations (the random control resets the same Gymnasium env as evaluation does).
    option_scopes: ClassVar[dict[str, Any]] = {"stale_scene": "imagination", "easy_check": "imagination",
                                                "hard_obs": "imagination", "easy_still": "imagination"}
    level_options: ClassVar[tuple[str, ...]] = ("goal_files",)
    file_options: ClassVar[tuple[str, ...]] = ("goal_files",)

    config: ClevrConfig

    def _check_level(self, level: str) -> None:
        if level not in self.levels:
            from kalm_bench.api import UserError

            raise UserError(f"unknown level {level!r} for {self.name} (one of {', '.join(self.levels)})",
                            field="level")

    # -- envs -------------------------------------------------------------------------------------------
    def make(self, level: str):
        self._check_level(level)
        from .env import ClevrRobotEnv

        return ClevrRobotEnv(level=level, config=self.config)

    # -- data -------------------------------------------------------------------------------------------
    def generate_dataset(self, n_episodes: int, seed: int, progress: Progress = no_progress,
                         **options: Any):
        """Expert data for the seen goals. Options: ``epsilon`` (random-push probability, default the
        config's ``expert_epsilon``), ``keep_failures`` (default True), ``horizon`` (default 50), ``jobs``
        (worker processes; the data do not depend on it), ``preset`` (``expert`` or ``paper-like``: named
        values of the first three, which explicit options override; see ``data.DATA_PRESETS``)."""
        from .data import generate_dataset

        unknown = set(options) - {"epsilon", "keep_failures", "horizon", "jobs", "preset"}
        if unknown:
            from kalm_bench.api import UserError

            raise UserError(f"unknown dataset option(s) {sorted(unknown)} for {self.name} "
                            "(epsilon, keep_failures, horizon, jobs, preset)", field="options")
        if self.data_level in self.config.goal_files:
            from kalm_bench.api import UserError

            # The expert plays the built-in seen goals: a goal file there would change the test cases only.
            raise UserError(f"has no effect on generated data: the expert plays the {self.data_level} level's "
                            "built-in goals. Generate the data without it and give them with data.path, or "
                            f"leave goal_files.{self.data_level} out", field=f"goal_files.{self.data_level}")
        return generate_dataset(n_episodes, seed, self.config, progress, **options)

    def test_cases(self, level: str, n: int | None = None, seed: int = 7) -> list[dict[str, Any]]:
        """``n`` cases (default 111, 666 for easy), deterministic per (seed, level)."""
        self._check_level(level)
        from .env import goal_source
        from .tasks import DEFAULT_TEST_CASES, level_rng

        n = DEFAULT_TEST_CASES[level] if n is None else int(n)
        return goal_source(level, self.config).cases(n, level_rng(seed, level, "test-cases"))

    def sample_goals(self, level: str, n: int, seed: int) -> list[dict[str, Any]]:
        """Goals of ``level`` with starts from the initial-state distribution, drawn from a stream
        separate from the test cases'."""
        self._check_level(level)
        from .env import goal_source
        from .tasks import level_rng

        return goal_source(level, self.config).cases(int(n), level_rng(seed, level, "imagination-goals"))

    def label_rollout(self, level: str, case: dict[str, Any], states: np.ndarray,
                      actions: np.ndarray) -> RolloutLabels:
        """Oracle labels of a (possibly imagined) rollout: the level's success check on every transition,
        the configured reward; it stops at the first success, easy goals after one push, and before the
        first non-finite state. Only the first 10 numbers of each state are read."""
        from . import goals as G

        goal = G.as_goal(case["goal"])
        s = np.asarray(states, np.float64)
        s = s.reshape(len(s), -1)[:, :10]
        a = np.asarray(actions).reshape(-1)
        n = min(len(a), len(s) - 1)
        if goal["type"] == "move":
            n = min(n, 1)
        rewards = []
        for t in range(n):
            if not np.all(np.isfinite(s[t + 1])):
                # An imagined state that is not a number ends the usable part of the rollout.
                return RolloutLabels(np.array(rewards, np.float32), t, False)
            act = int(a[t]) if np.isfinite(a[t]) else -1
            ok = G.is_success(goal, s[t], s[t + 1], act, self.config.easy_check, self.config.hard_obs)
            rewards.append(G.reward(goal, s[t], s[t + 1], ok, self.config.reward))
            if ok:
                return RolloutLabels(np.array(rewards, np.float32), t + 1, True)
        return RolloutLabels(np.array(rewards, np.float32), n, False)

    def goal_of(self, case: dict[str, Any]) -> Any:
        """The case's ``goal`` dict (its type and arguments; see ``goals.py``)."""
        return case["goal"]

    def case_for_goal(self, goal: Any) -> dict[str, Any]:
        """``label_rollout`` reads ``case["goal"]`` only."""
        return {"goal": goal}

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The table: the observation space's per-ball x/y bounds (``env.OBS_LOW`` / ``OBS_HIGH``)."""
        from .env import OBS_HIGH, OBS_LOW

        return OBS_LOW.copy(), OBS_HIGH.copy()

    def realistic_states(self, states: np.ndarray) -> np.ndarray:
        """Balls on the table and not inside one another (stacking allowed; see ``realism.py``)."""
        from .realism import realistic

        return realistic(states)

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate(self, policy: Policy, level: str, cases: Sequence[dict[str, Any]], seed: int,
                 embed: Callable[[list[str]], np.ndarray] | None = None,
                 progress: Progress = no_progress, batch_size: int = 128) -> EvalResult:
        self._check_level(level)
        return super().evaluate(policy, level, cases, seed, embed=embed, progress=progress,
                                batch_size=batch_size)

    # -- helpers for other plugins ----------------------------------------------------------------------
    def instructions(self, goal: dict[str, Any], level: str = "seen") -> list[str]:
        """Every built-in phrasing of ``goal`` at ``level``."""
        from . import language

        return language.instructions(goal, level)
