"""Offline data for the Meta-world plugin: scripted demonstrations, KALM's ``meta_world.npy``, checks.

Heavy libraries (mujoco, metaworld) are imported inside the functions that simulate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kalm_bench.api import Episode, TrajectoryDataset
from kalm_bench.api import UserError

from .tasks import SEEN_TASKS, STATE_DIM

Progress = Callable[[int, int], None]


def _quiet(done: int, total: int) -> None:
    return None


@dataclass
class RolloutResult:
    states: np.ndarray  # (T+1, 91)
    actions: np.ndarray  # (T, 4)
    rewards: np.ndarray  # (T,)
    success: bool
    rand_vec: list[float]


def scripted_rollout(env: Any, task: str, rng: np.random.Generator, *, horizon: int = 100,
                     noise: float = 0.0, rand_vec: Sequence[float] | None = None) -> RolloutResult:
    """One episode of ``task``'s scripted policy on the KALM wrapper ``env`` (a :class:`KalmMetaworldEnv`
    of a level containing the task, normally without distractor).

    Gaussian noise of std ``noise`` is added to the policy's action before clipping to [-1, 1]; the
    policy itself sees the true Meta-world observation. The episode ends on success or after
    ``horizon`` steps.
    """
    from .policies import scripted_policy

    seed = int(rng.integers(2**31))
    options: dict[str, Any] = {"task": task, "instruction": ""}
    if rand_vec is not None:
        options["rand_vec"] = list(rand_vec)
    obs, info = env.reset(seed=seed, options=options)
    policy = scripted_policy(task)
    states = [env.last_state.copy()]
    actions, rewards = [], []
    success = False
    for _ in range(horizon):
        a = policy(env.last_obs39)
        if noise > 0:
            a = np.clip(a + rng.normal(0.0, noise, size=4), -1.0, 1.0)
        obs, r, terminated, _, info = env.step(a)
        states.append(env.last_state.copy())
        actions.append(np.asarray(a, np.float32))
        rewards.append(r)
        if terminated:
            success = True
            break
    return RolloutResult(np.asarray(states), np.asarray(actions, np.float32).reshape(-1, 4),
                         np.asarray(rewards, np.float32), success, list(info["rand_vec"]))


def generate_scripted_dataset(n_episodes: int, seed: int, instructions: Mapping[str, Sequence[str]], *,
                              tasks: Sequence[str] = SEEN_TASKS, horizon: int = 100, noise: float = 0.1,
                              level: str = "seen", env_name: str = "metaworld", version: str = "",
                              progress: Progress = _quiet) -> TrajectoryDataset:
    """``n_episodes`` scripted episodes in total, tasks taken round-robin (episode i plays
    ``tasks[i % len(tasks)]``), each with an instruction drawn from that task's list.

    Deterministic per seed: episode i uses its own generator seeded by ``(seed, i)``.
    """
    from .gym_env import KalmMetaworldEnv

    if n_episodes < 0:
        raise ValueError("n_episodes must be >= 0")
    for t in tasks:
        if t not in SEEN_TASKS:
            raise UserError(f"scripted data is for the seen tasks, not {t!r}", field="tasks")
    env = KalmMetaworldEnv("seen", {t: instructions.get(t, [""]) or [""] for t in SEEN_TASKS},
                           horizon=horizon, distractor=False)
    episodes = []
    t0 = time.perf_counter()
    try:
        for i in range(n_episodes):
            task = tasks[i % len(tasks)]
            rng = np.random.default_rng([seed, i])
            pool = list(instructions[task])
            instruction = pool[int(rng.integers(len(pool)))]
            res = scripted_rollout(env, task, rng, horizon=horizon, noise=noise)
            episodes.append(Episode(states=res.states, actions=res.actions, rewards=res.rewards,
                                    instruction=instruction, goal={"task": task, "rand_vec": res.rand_vec},
                                    level=level, success=res.success))
            progress(i + 1, n_episodes)
    finally:
        env.close()
    attrs = {"generator": "metaworld v3 scripted policies + Gaussian action noise", "noise_std": noise,
             "horizon": horizon, "tasks": list(tasks), "plugin_version": version,
             "seconds": round(time.perf_counter() - t0, 2)}
    return TrajectoryDataset.from_episodes(episodes, env=env_name, action_kind="continuous", action_size=4,
                                           seed=seed, source="scripted", attrs=attrs, state_dim=STATE_DIM)


# ---------------------------------------------------------------------------------------------------
# KALM's meta_world.npy

_KALM_KEYS = ("observations", "next_observations", "actions", "rewards", "masks", "is_successes",
              "env_names", "instructions")


def import_kalm_npy(path: str | Path, *, trust_pickle: bool | None = None, env_name: str = "metaworld",
                    instruction_index: int = 0) -> TrajectoryDataset:
    """Convert KALM's ``data/meta_world.npy`` (a pickled dict) into a :class:`TrajectoryDataset`.

    The file is a pickle: it is only loaded with ``trust_pickle=True``, or when pickles are trusted on the
    command line (``kalm-bench --trust-pickle``, ``KALM_BENCH_TRUST_PICKLE=1``) and ``trust_pickle`` is None.
    Each trajectory becomes one
    episode with its valid steps (``masks``); its instruction is the ``instruction_index``-th of its 20
    (all 20 are kept in the goal JSON under ``"instructions"``). States are KALM's 91-d slots, which
    are the same layout as this plugin's.
    """
    path = Path(path)
    if trust_pickle is None:
        from kalm_bench.api import pickle_trusted

        trust_pickle = pickle_trusted()
    if not trust_pickle:
        raise UserError("this .npy holds a pickled dict; loading it can run arbitrary code. Pass "
                        "--trust-pickle (or set KALM_BENCH_TRUST_PICKLE=1) only for a file you trust", file=path)
    if not path.is_file():
        raise UserError("file does not exist", file=path)
    try:
        raw = np.load(path, allow_pickle=True)
        data = raw.item() if isinstance(raw, np.ndarray) and raw.dtype == object and raw.shape == () else raw
    except Exception as exc:  # truncated or foreign files raise many kinds of errors
        raise UserError(f"cannot read as a numpy pickle ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(data, dict):
        raise UserError(f"expected a pickled dict, found {type(data).__name__}", file=path)
    for key in _KALM_KEYS:
        if key not in data:
            raise UserError("key is missing", file=path, field=key)
    obs = np.asarray(data["observations"], np.float64)
    nxt = np.asarray(data["next_observations"], np.float64)
    acts = np.asarray(data["actions"], np.float64)
    rews = np.asarray(data["rewards"], np.float64)
    masks = np.asarray(data["masks"], np.float64)
    if obs.ndim != 3 or obs.shape[2] != STATE_DIM:
        raise UserError(f"expected shape (N, T, {STATE_DIM}), got {obs.shape}", file=path, field="observations")
    n, horizon = obs.shape[:2]
    if nxt.shape != obs.shape:
        raise UserError(f"expected shape {obs.shape}, got {nxt.shape}", file=path, field="next_observations")
    if acts.shape != (n, horizon, 4):
        raise UserError(f"expected shape ({n}, {horizon}, 4), got {acts.shape}", file=path, field="actions")
    if masks.size != n * horizon:
        raise UserError(f"expected {n}x{horizon} entries, got shape {masks.shape}", file=path, field="masks")
    if rews.size != n * horizon:
        raise UserError(f"expected {n}x{horizon} entries, got shape {rews.shape}", file=path, field="rewards")
    masks = masks.reshape(n, -1)
    rews = rews.reshape(n, -1)
    succ = np.asarray(data["is_successes"]).reshape(n, -1)[:, 0].astype(bool)
    names = [str(x) for x in np.asarray(data["env_names"]).reshape(-1)]
    instr = np.asarray(data["instructions"])
    if len(names) != n or instr.shape[0] != n:
        raise UserError(f"{len(names)} env_names / {instr.shape[0]} instruction lists for {n} trajectories",
                        file=path, field="env_names")
    episodes = []
    for i in range(n):
        length = int(masks[i].sum())
        if length < 1:
            raise UserError(f"trajectory {i} has no valid step", file=path, field="masks")
        task = names[i][4:] if names[i].startswith("rep-") else names[i]
        task = task.removesuffix("-v2-goal-observable")
        texts = [str(x) for x in np.asarray(instr[i]).reshape(-1)]
        states = np.concatenate([obs[i, :length], nxt[i, length - 1:length]])
        goal = {"task": task, "instructions": texts, "source_index": i}
        episodes.append(Episode(states=states, actions=acts[i, :length], rewards=rews[i, :length],
                                instruction=texts[instruction_index % len(texts)], goal=goal, level="seen",
                                success=bool(succ[i])))
    return TrajectoryDataset.from_episodes(episodes, env=env_name, action_kind="continuous", action_size=4,
                                           source=f"kalm:{path.name}", attrs={"imported_from": str(path)},
                                           state_dim=STATE_DIM)


# ---------------------------------------------------------------------------------------------------
# check


def check_scripted(tasks: Sequence[str], episodes: int, seed: int = 0, *, horizon: int = 100,
                   noise: float = 0.0, progress: Progress = _quiet) -> list[dict[str, Any]]:
    """Run each task's scripted policy for ``episodes`` random resets; per task: successes, rate,
    mean steps of successful episodes, environment steps per second."""
    from .gym_env import KalmMetaworldEnv
    from .tasks import level_of_task

    rows = []
    for k, task in enumerate(tasks):
        level = level_of_task(task)
        env = KalmMetaworldEnv(level, {t: [""] for t in _level_tasks(level)}, horizon=horizon, distractor=False)
        succ, lens, steps = 0, [], 0
        t0 = time.perf_counter()
        for i in range(episodes):
            rng = np.random.default_rng([seed, k, i])
            res = scripted_rollout(env, task, rng, horizon=horizon, noise=noise)
            steps += len(res.actions)
            if res.success:
                succ += 1
                lens.append(len(res.actions))
        dt = time.perf_counter() - t0
        env.close()
        rows.append({"task": task, "level": level, "episodes": episodes, "successes": succ,
                     "success_rate": succ / max(episodes, 1),
                     "mean_steps_to_success": float(np.mean(lens)) if lens else float("nan"),
                     "steps_per_s": steps / dt if dt > 0 else float("nan"), "seconds": dt})
        progress(k + 1, len(tasks))
    return rows


def _level_tasks(level: str) -> tuple[str, ...]:
    from .tasks import tasks_of

    return tasks_of(level)


def load_instruction_file(path: str | Path) -> dict[str, dict[str, list[str]]]:
    """Read a ``{level: {task: [instruction, ...]}}`` JSON file, checking every list."""
    from .tasks import LEVEL_TASKS

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("instruction file does not exist", file=path) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"not valid JSON ({exc.msg} at line {exc.lineno})", file=path) from None
    if not isinstance(data, dict):
        raise UserError("expected an object {level: {task: [instructions]}}", file=path)
    out: dict[str, dict[str, list[str]]] = {}
    for level, per_task in data.items():
        if level not in LEVEL_TASKS:
            raise UserError(f"unknown level (known: {', '.join(LEVEL_TASKS)})", file=path, field=level)
        if not isinstance(per_task, dict):
            raise UserError("expected an object {task: [instructions]}", file=path, field=level)
        out[level] = {}
        for task, texts in per_task.items():
            where = f"{level}.{task}"
            if task not in LEVEL_TASKS[level]:
                raise UserError(f"task is not in level {level!r}", file=path, field=where)
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                raise UserError("expected a non-empty list of non-empty strings", file=path, field=where)
            out[level][task] = list(texts)
    return out
