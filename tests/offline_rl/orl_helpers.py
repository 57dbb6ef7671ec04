"""Helpers for the offline-RL tests: synthetic transition data, a TrainContext that saves checkpoints like
the core, and a small continuous goal-reaching environment (``point-goal``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kalm_bench.api import (
    Environment,
    StrictConfig,
    TrainContext,
    TransitionData,
)
from kalm_bench.datasets import Episode, TrajectoryDataset
from kalm_bench.stages import to_transitions as core_to_transitions


def synthetic(n_eps: int = 40, length: int = 10, state_dim: int = 6, emb_dim: int = 8, n_instr: int = 5,
              kind: str = "discrete", action_size: int = 5, seed: int = 0) -> TransitionData:
    """Random transitions; even episodes end in a goal (terminal), odd ones by time-out."""
    rng = np.random.default_rng(seed)
    n = n_eps * length
    if kind == "discrete":
        actions = rng.integers(0, action_size, n).astype(np.int64)
    else:
        actions = rng.uniform(-1, 1, (n, action_size)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    timeouts = np.zeros(n, np.float32)
    ends = np.arange(length - 1, n, length)
    terminals[ends[0::2]] = 1.0
    timeouts[ends[1::2]] = 1.0
    # consecutive within an episode, as recorded trajectories are: next_states[i] == states[i + 1]
    path = rng.normal(size=(n_eps, length + 1, state_dim)).astype(np.float32)
    states = path[:, :-1].reshape(n, state_dim)
    next_states = path[:, 1:].reshape(n, state_dim)
    return TransitionData(
        states=states,
        actions=actions,
        rewards=rng.normal(size=n).astype(np.float32),
        next_states=next_states,
        terminals=terminals, timeouts=timeouts,
        instruction_ids=np.repeat(rng.integers(0, n_instr, n_eps), length).astype(np.int64),
        embeddings=rng.normal(size=(n_instr, emb_dim)).astype(np.float32),
        instructions=[f"instruction {i}" for i in range(n_instr)],
        episode_starts=np.arange(0, n, length, dtype=np.int64),
    )


def make_ctx(algo, data: TransitionData, tmp_path: Path, *, steps: int = 20, every: int = 10, seed: int = 0,
             imaginary: TransitionData | None = None, fraction: float = 0.5, kind: str | None = None,
             action_size: int | None = None) -> tuple[TrainContext, dict[int, Path], list[tuple[int, int]]]:
    """A TrainContext that saves checkpoints as the core does (``policy.save`` into a fresh directory)."""
    saved: dict[int, Path] = {}
    progress: list[tuple[int, int]] = []
    kind = kind or ("discrete" if data.actions.ndim == 1 else "continuous")
    size = action_size or (int(data.actions.max()) + 1 if kind == "discrete" else data.actions.shape[1])

    def save(step: int, policy) -> None:
        d = tmp_path / "checkpoints" / f"{step:09d}"
        d.mkdir(parents=True)
        policy.save(d)
        saved[step] = d

    ctx = TrainContext(config=algo.config, seed=seed, real=data, imaginary=imaginary, imaginary_fraction=fraction,
                       steps=steps, checkpoint_every=every, action_kind=kind, action_size=size,
                       workdir=tmp_path, save_checkpoint=save, progress=lambda d, t: progress.append((d, t)))
    return ctx, saved, progress


def to_transitions(ds: TrajectoryDataset, embed) -> TransitionData:
    """What the core's stage graph hands to ``Algorithm.train`` (one embedding row per unique instruction)."""
    table = sorted({str(t) for t in ds.instructions})
    index = {t: i for i, t in enumerate(table)}
    return core_to_transitions(ds, table, index, np.asarray(embed(table), np.float32))


# ---------------------------------------------------------------------------------------------------------
# point-goal: a 2-d point must reach the corner its instruction names (continuous actions).

CORNERS = {"upper left": (-0.7, 0.7), "upper right": (0.7, 0.7), "lower left": (-0.7, -0.7),
           "lower right": (0.7, -0.7)}
PHRASES = ["move the point to the {c} corner", "go to the {c} corner", "reach the {c} corner please"]


class PointGoal(Environment):
    name = "point-goal"
    description = "test env: a point moves by action*0.15 per step and must come within 0.2 of a corner"
    levels = {"seen": "the four corners"}
    action_kind = "continuous"
    horizon = 25
    Config = StrictConfig

    def make(self, level: str):
        import gymnasium as gym

        class Env(gym.Env):
            observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
            action_space = gym.spaces.Box(-1, 1, (2,), np.float32)

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                case = options
                self.pos = np.asarray(case["initial_state"], np.float32)
                self.goal = np.asarray(CORNERS[case["goal"]], np.float32)
                self.t = 0
                return self.pos.copy(), {"is_success": False}

            def step(self, action):
                a = np.clip(np.asarray(action, np.float32), -1, 1)
                self.pos = np.clip(self.pos + 0.15 * a, -1, 1).astype(np.float32)
                self.t += 1
                ok = bool(np.linalg.norm(self.pos - self.goal) < 0.2)
                reward = 10.0 if ok else -float(np.linalg.norm(self.pos - self.goal))
                return self.pos.copy(), reward, ok, self.t >= PointGoal.horizon, {"is_success": ok}

        return Env()

    def test_cases(self, level: str, n: int | None, seed: int) -> list[dict[str, Any]]:
        rng = np.random.default_rng(seed)
        goals = sorted(CORNERS)
        cases = []
        for _ in range(n or 40):
            g = goals[int(rng.integers(len(goals)))]
            cases.append({"initial_state": rng.uniform(-0.3, 0.3, 2).tolist(), "goal": g,
                          "instruction": PHRASES[int(rng.integers(len(PHRASES)))].format(c=g)})
        return cases

    def generate_dataset(self, n_episodes: int, seed: int, progress=None, noise: float = 0.3,
                         **options: Any) -> TrajectoryDataset:
        """A noisy proportional controller towards the goal (a 'medium-expert' behaviour policy)."""
        rng = np.random.default_rng(seed + 1)
        env = self.make("seen")
        episodes = []
        for i, case in enumerate(self.test_cases("seen", n_episodes, seed)):
            obs, _ = env.reset(seed=seed + i, options=case)
            states, actions, rewards, ok = [obs], [], [], False
            for _ in range(self.horizon):
                a = np.clip(4.0 * (env.goal - obs) + rng.normal(0, noise, 2), -1, 1).astype(np.float32)
                obs, r, term, trunc, info = env.step(a)
                states.append(obs)
                actions.append(a)
                rewards.append(r)
                ok = info["is_success"]
                if term or trunc:
                    break
            episodes.append(Episode(states=np.stack(states), actions=np.stack(actions),
                                    rewards=np.array(rewards, np.float32), instruction=case["instruction"],
                                    goal=case["goal"], level="seen", success=ok))
        return TrajectoryDataset.from_episodes(episodes, env=self.name, action_kind="continuous",
                                               action_size=2, seed=seed)
