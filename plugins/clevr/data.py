"""Offline data for CLEVR-Robot: generation with the scripted expert, import of KALM's released
``clevr_robot.npy``, open-loop replay in the simulator, and export to Minari.

Datasets use kalm-bench's trajectory format (``kalm_bench.datasets``: ``manifest.json`` + ``data.npz``, no
pickles). For this env: states are the 10 ball coordinates, actions are push indices 0..39, goals are the
JSON goal dicts of :mod:`.goals`, and ``attrs["instructions_by_goal"]`` lists every phrasing of each goal
(KALM's grounding samples an instruction per goal and epoch).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kalm_bench.api import pickle_trusted

from . import goals as G
from . import language as L
from . import physics as P
from .config import TRUST_PICKLE_HINT, ClevrConfig
from .tasks import level_rng

ENV_NAME = "clevr-robot"
EXPERT_NAME = "pair-lookahead-v1"
KALM_DATASET_SHA256 = "546f04c70f06fa9e9a084c9adb6c5ef2eff97eef5d78f794ef80842ffe0288f2"


def _user_error(msg: str, file: Any = None, field: str | None = None) -> Exception:
    from kalm_bench.api import UserError

    return UserError(msg, file=file, field=field)


def _instruction_table(goals: list[dict[str, Any]]) -> dict[str, list[str]]:
    return {G.goal_key(g): L.seen_instructions(g) for g in goals}


# ---------------------------------------------------------------------------------------------------------
# Generation


def generate_episode(sim: P.ClevrSim, goal: dict[str, Any], rng: np.random.Generator, *, epsilon: float,
                     reward_variant: str, horizon: int = 50):
    """One expert episode for a pair goal: (states (T+1, 10), actions (T,), rewards (T,), success, s0)."""
    from kalm_bench.api import Episode

    from .expert import PairExpert

    while True:
        s0 = P.sample_scene(rng)
        if not G.pair_success(s0, goal):
            break
    states = [sim.reset(s0)]
    actions, rewards = [], []
    expert = PairExpert(sim, goal, rng, epsilon)
    success = False
    for _ in range(horizon):
        a = expert.act()
        s = sim.step(a)
        success = G.pair_success(s, goal)
        rewards.append(G.reward(goal, states[-1], s, success, reward_variant))
        actions.append(a)
        states.append(s)
        if success:
            break
    instruction = L.pick_instruction(goal, "seen", rng)
    return Episode(states=np.array(states), actions=np.array(actions, np.int64),
                   rewards=np.array(rewards, np.float32), instruction=instruction, goal=goal, level="seen",
                   success=success)


def _episode_range(args: tuple) -> list:
    """Episodes ``start..stop`` of a generation run (a top-level function so worker processes can run it)."""
    start, stop, seed, order, config_json, eps, horizon = args
    config = ClevrConfig.model_validate_json(config_json)
    goals = G.seen_goals()
    sim = P.ClevrSim(P.get_model(patch=config.compat_patches, patch_margin=config.compat_patches))
    out = []
    for i in range(start, stop):
        rng = np.random.default_rng([int(seed), 7919, i])
        out.append(generate_episode(sim, goals[order[i - start]], rng, epsilon=eps, reward_variant=config.reward,
                                    horizon=horizon))
    return out


# Named settings of the behaviour options. An option given explicitly beside ``preset`` wins.
DATA_PRESETS: dict[str, dict[str, Any]] = {
    # The noiseless expert: the defaults (epsilon from the config's expert_epsilon).
    "expert": {},
    # Behaviour noise like KALM's released clevr_robot.npy (80 episodes, one per seen goal), measured with
    # behaviour_stats. KALM / ours, ours = 4,000 episodes generated at seed 0 (3,995 succeeded and are kept):
    #   matched: success 80/80 -> keep_failures False (ours 100% of the kept episodes, 99.9% generated);
    #     50-push limit (KALM pads to 50, longest 49 / ours 50); epsilon picked to match the length
    #     distribution: geometric mean 6.7 / 6.6, mean 11.2 / 9.8, q25 3 / 4, q75 13.25 / 14;
    #   not matched: median 5 / 7, q90 31 / 21, one-push episodes 0% / 9%; pushes of a third ball (neither
    #     source nor destination) 4.8% / 42%; pushes bringing the source closer to its target 70% / 63%;
    #     disagreement with the noiseless expert 83% / 67% (KALM's pushes follow another policy, mostly
    #     pushing the destination ball, so this overstates its noise).
    # plugins/clevr/README.md has the full table.
    "paper-like": {"epsilon": 0.7, "keep_failures": False, "horizon": 50},
}


def data_options(preset: str | None, **options: Any) -> dict[str, Any]:
    """The behaviour options of ``preset`` (see :data:`DATA_PRESETS`), updated with the explicit ones."""
    if preset is None:
        return dict(options)
    if preset not in DATA_PRESETS:
        raise _user_error(f"unknown data preset {preset!r} for {ENV_NAME} (one of {', '.join(DATA_PRESETS)})",
                          field="preset")
    return {**DATA_PRESETS[preset], **options}


def generate_dataset(n_episodes: int, seed: int, config: ClevrConfig | None = None,
                     progress: Callable[[int, int], None] | None = None, *, epsilon: float | None = None,
                     keep_failures: bool | None = None, horizon: int | None = None, jobs: int = 1,
                     preset: str | None = None):
    """``n_episodes`` expert trajectories for the 80 seen goals (each goal equally often, in a seeded
    order), deterministic per ``seed``. Episode i draws from its own random stream, so the result does not
    depend on how the work is split: ``jobs`` > 1 generates chunks in that many processes and gives the
    same dataset. ``preset`` names a set of behaviour options (:data:`DATA_PRESETS`); options given
    explicitly override it. With ``keep_failures`` False the dataset holds only the successful episodes."""
    from kalm_bench.api import TrajectoryDataset

    config = config or ClevrConfig()
    given = {k: v for k, v in (("epsilon", epsilon), ("keep_failures", keep_failures), ("horizon", horizon))
             if v is not None}
    opts = data_options(preset, **given)
    eps = config.expert_epsilon if opts.get("epsilon") is None else float(opts["epsilon"])
    keep_failures = bool(opts.get("keep_failures", True))
    horizon = int(opts.get("horizon", 50))
    if horizon < 1:
        raise ValueError("horizon must be >= 1")
    if n_episodes < 0:
        raise ValueError("n_episodes must be >= 0")
    goals = G.seen_goals()
    order_rng = level_rng(seed, "seen", "goal-order")
    order: list[int] = []
    while len(order) < n_episodes:
        order += order_rng.permutation(len(goals)).tolist()
    chunk = 50
    tasks = [(a, min(a + chunk, n_episodes), seed, order[a:a + chunk], config.model_dump_json(), eps, horizon)
             for a in range(0, n_episodes, chunk)]
    episodes = []
    done = 0

    def collect(part: list) -> None:
        nonlocal done
        episodes.extend(ep for ep in part if ep.success or keep_failures)
        done += len(part)
        if progress is not None:
            progress(done, n_episodes)

    if jobs <= 1 or len(tasks) <= 1:
        for t in tasks:
            collect(_episode_range(t))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for part in pool.map(_episode_range, tasks):  # map keeps episode order
                collect(part)
    attrs = {
        "level": "seen", "generator": EXPERT_NAME, "epsilon": eps, "reward": config.reward,
        "horizon": horizon, "keep_failures": keep_failures, "preset": preset, "mujoco": P.mujoco_version(),
        "compat_patches": config.compat_patches, "state_layout": "x,y of red, blue, green, purple, cyan",
        "instructions_by_goal": _instruction_table(goals),
    }
    ds = TrajectoryDataset.from_episodes(episodes, env=ENV_NAME, action_kind="discrete",
                                         action_size=P.N_ACTIONS, seed=seed, source=f"generated:{EXPERT_NAME}",
                                         attrs=attrs, state_dim=2 * P.N_BALLS)
    return ds


# ---------------------------------------------------------------------------------------------------------
# Import of KALM's released data


_KALM_KEYS = ("observations", "next_observations", "actions", "rewards", "masks", "goals", "instructions")


def import_kalm_dataset(path: str | os.PathLike[str], trust_pickle: bool | None = None):
    """Convert KALM's ``clevr_robot.npy`` (a pickled dict) to a :class:`TrajectoryDataset`.

    Loading runs the pickle, so it needs ``trust_pickle=True`` (``None``: whether pickles are trusted on the
    command line, :func:`kalm_bench.api.pickle_trusted`). Each trajectory keeps its valid prefix
    (``masks``); its instruction is the first of its 54 phrasings, and all phrasings go to
    ``attrs["instructions_by_goal"]``. Goals become pair-goal dicts, rewards are kept as stored.
    """
    from kalm_bench.api import Episode, TrajectoryDataset, sha256_file

    path = Path(path)
    if not path.is_file():
        raise _user_error("file does not exist", file=path)
    if trust_pickle is None:
        trust_pickle = pickle_trusted()
    if not trust_pickle:
        raise _user_error("KALM's .npy datasets are pickles and can run code when loaded; pass "
                          f"trust_pickle=True in Python, or {TRUST_PICKLE_HINT}", file=path)
    try:
        raw = np.load(path, allow_pickle=True)
        data = raw.item() if raw.dtype == object and raw.shape == () else raw
    except Exception as exc:
        raise _user_error(f"cannot read ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(data, dict):
        raise _user_error("expected a pickled dict (KALM's clevr_robot.npy layout)", file=path)
    for key in _KALM_KEYS:
        if key not in data:
            raise _user_error(f"key {key!r} is missing", file=path, field=key)
    obs = np.asarray(data["observations"])
    n = obs.shape[0] if obs.ndim == 3 else -1
    if obs.ndim != 3 or obs.shape[2] != 10:
        raise _user_error(f"observations must be (N, T, 10), got {obs.shape}", file=path, field="observations")
    arrays = {k: np.asarray(data[k]) for k in _KALM_KEYS}
    for key in ("next_observations", "actions", "rewards", "masks", "goals", "instructions"):
        if arrays[key].shape[0] != n:
            raise _user_error(f"{key} has {arrays[key].shape[0]} trajectories, observations {n}", file=path,
                              field=key)
    episodes, table = [], {}
    for i in range(n):
        length = int(np.sum(arrays["masks"][i]))
        if length < 1:
            raise _user_error("trajectory has no valid step", file=path, field=f"masks[{i}]")
        goal_arr = arrays["goals"][i].reshape(-1, arrays["goals"].shape[-1])[0]
        try:
            goal = G.pair_goal_from_array(goal_arr)
        except ValueError as exc:
            raise _user_error(str(exc), file=path, field=f"goals[{i}]") from None
        actions = arrays["actions"][i][:length].astype(np.int64)
        if actions.min() < 0 or actions.max() >= P.N_ACTIONS:
            raise _user_error("actions outside 0..39", file=path, field=f"actions[{i}]")
        states = np.concatenate([obs[i][:length], arrays["next_observations"][i][length - 1:length]])
        instr = [str(s) for s in arrays["instructions"][i].reshape(-1)]
        table.setdefault(G.goal_key(goal), instr)
        terminals = data.get("terminals")
        success = bool(np.asarray(terminals)[i].reshape(-1)[length - 1]) if terminals is not None else True
        episodes.append(Episode(states=states.astype(np.float32), actions=actions,
                                rewards=arrays["rewards"][i].reshape(-1)[:length].astype(np.float32),
                                instruction=instr[0], goal=goal, level="seen", success=success))
    attrs = {"level": "seen", "imported_from": path.name, "source_sha256": sha256_file(path),
             "known_release": sha256_file(path) == KALM_DATASET_SHA256,
             "state_layout": "x,y of red, blue, green, purple, cyan", "instructions_by_goal": table}
    return TrajectoryDataset.from_episodes(episodes, env=ENV_NAME, action_kind="discrete",
                                           action_size=P.N_ACTIONS, seed=None, source="kalm:clevr_robot.npy",
                                           attrs=attrs)


# ---------------------------------------------------------------------------------------------------------
# Replay


@dataclass
class ReplayReport:
    """Open-loop replay of a dataset's action sequences from each episode's first state.

    ``errors``: per transition, the largest absolute difference between a simulated and a stored ball
    coordinate. ``reached``: per episode, whether the replay satisfies the goal at some step (an env
    episode would end there).
    """

    errors: np.ndarray
    episode_max_error: np.ndarray
    reached: np.ndarray
    recorded_success: np.ndarray
    tolerance: float
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_error(self) -> float:
        return float(np.median(self.errors)) if len(self.errors) else 0.0

    @property
    def max_error(self) -> float:
        return float(np.max(self.errors)) if len(self.errors) else 0.0

    @property
    def n_reached(self) -> int:
        return int(np.sum(self.reached))

    @property
    def n_success_reproduced(self) -> int:
        return int(np.sum(self.reached & self.recorded_success))

    @property
    def ok(self) -> bool:
        """Every recorded success is reproduced and the median error is within tolerance."""
        return bool(np.all(self.reached[self.recorded_success]) and self.median_error <= self.tolerance)

    def summary(self) -> dict[str, Any]:
        n = len(self.reached)
        return {
            "episodes": n, "transitions": int(len(self.errors)),
            "recorded_successes": int(np.sum(self.recorded_success)),
            "replay_reaches_goal": self.n_reached, "successes_reproduced": self.n_success_reproduced,
            "median_error": self.median_error, "max_error": self.max_error,
            "p90_error": float(np.quantile(self.errors, 0.9)) if len(self.errors) else 0.0,
            "transitions_within_1e-6": float(np.mean(self.errors <= 1e-6)) if len(self.errors) else 1.0,
            "episodes_within_tolerance": int(np.sum(self.episode_max_error <= self.tolerance)),
            "tolerance": self.tolerance, "ok": self.ok, "seconds": round(self.seconds, 3),
        }


def replay_dataset(dataset, config: ClevrConfig | None = None, tolerance: float = 1e-4,
                   episodes: list[int] | None = None) -> ReplayReport:
    """Replay every episode's actions in the simulator and compare states (see :class:`ReplayReport`).

    Goals are judged with the checks of each episode's goal type (easy goals with the configured
    ``easy_check``).
    """
    config = config or ClevrConfig()
    if dataset.state_dim < 10:
        raise _user_error(f"states have {dataset.state_dim} numbers; CLEVR-Robot needs 10")
    sim = P.ClevrSim(P.get_model(patch=config.compat_patches, patch_margin=config.compat_patches))
    idx = range(dataset.n_episodes) if episodes is None else episodes
    errors, ep_max, reached, recorded = [], [], [], []
    t0 = time.perf_counter()
    for i in idx:
        ep = dataset.episode(i)
        try:
            goal = G.as_goal(ep.goal)
        except ValueError as exc:
            raise _user_error(f"episode {i}: {exc}", field="goals") from None
        states = np.asarray(ep.states, np.float64)[:, :10]
        sim.reset(states[0])
        prev = states[0]
        err = []
        ok = False
        for t, a in enumerate(np.asarray(ep.actions).reshape(-1)):
            s = sim.step(int(a))
            err.append(float(np.max(np.abs(s - states[t + 1]))))
            # An env episode ends at the first success, so reaching the goal at any step counts.
            ok = ok or G.is_success(goal, prev, s, int(a), config.easy_check, config.hard_obs)
            prev = s
        errors += err
        ep_max.append(max(err) if err else 0.0)
        reached.append(ok)
        recorded.append(ep.success)
    return ReplayReport(errors=np.array(errors), episode_max_error=np.array(ep_max), reached=np.array(reached, bool),
                        recorded_success=np.array(recorded, bool), tolerance=tolerance,
                        seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------------
# Behaviour statistics


NOOP_DIST = 1e-3  # a push after which no ball coordinate changed by more than this is a no-op


def behaviour_stats(dataset, config: ClevrConfig | None = None, expert: bool = True,
                    episodes: list[int] | None = None) -> dict[str, Any]:
    """How a pair-goal dataset behaves, for comparing data sources (KALM's release, our presets).

    Per episode: success, length (mean, geometric mean, quantiles), whether the start already satisfies
    the goal, steps left after the goal first holds. Per push: no-ops (no ball coordinate changes by more
    than ``NOOP_DIST``), pushes whose own ball does not move, pushes of the destination ball and of a third
    ball (neither source nor destination), and ``progress_share``: pushes after which the source is closer
    to the reward's target point (``dst`` + 0.195 × the goal direction).

    ``expert`` also replays each episode in the simulator (ball velocities carry over between pushes) and
    asks :meth:`PairExpert.choices` at every step until the goal holds: ``expert_disagreement`` is the share
    of actions that are none of the noiseless expert's choices, and ``epsilon_estimate`` that share divided
    by the mean share of the 40 pushes that are not a choice, i.e. the noise level of an "expert, else a
    uniformly random push" mix that would disagree as often. This part simulates 40 pushes or more per
    step (about 30 ms); ``episodes`` restricts all statistics to those episode indices.
    """
    from .expert import PairExpert

    config = config or ClevrConfig()
    idx = list(range(dataset.n_episodes)) if episodes is None else list(episodes)
    sim = P.ClevrSim(P.get_model(patch=config.compat_patches, patch_margin=config.compat_patches)) \
        if expert else None
    lengths, success, goal_keys = [], [], set()
    noop = pushed_still = other_ball = dst_ball = progress = 0
    after_goal, start_solved = [], 0
    disagree = not_choice = 0.0
    n_checked = fallback = 0
    rng = np.random.default_rng(0)
    for i in idx:
        ep = dataset.episode(i)
        goal = G.as_goal(ep.goal)
        if goal["type"] != "pair":
            raise _user_error(f"episode {i}: behaviour statistics need pair goals, got {goal['type']!r}")
        states = np.asarray(ep.states, np.float64)[:, :10]
        actions = np.asarray(ep.actions).reshape(-1).astype(int)
        lengths.append(len(actions))
        success.append(bool(ep.success))
        goal_keys.add(G.goal_key(goal))
        start_solved += G.pair_success(states[0], goal)
        hits = [t for t in range(1, len(states)) if G.pair_success(states[t], goal)]
        if hits:
            after_goal.append(len(actions) - hits[0])
        moved = np.abs(np.diff(states, axis=0)).reshape(len(actions), P.N_BALLS, 2).max(axis=2)
        noop += int(np.sum(moved.max(axis=1) <= NOOP_DIST))
        balls = actions // 8
        pushed_still += int(np.sum(moved[np.arange(len(actions)), balls] <= NOOP_DIST))
        other_ball += int(np.sum((balls != goal["src"]) & (balls != goal["dst"])))
        dst_ball += int(np.sum(balls == goal["dst"]))
        xy = states.reshape(len(states), P.N_BALLS, 2)
        to_target = np.linalg.norm(xy[:, goal["src"]] - xy[:, goal["dst"]] - G.TARGET_OFFSET * G.DIR_UNIT[goal["dir"]],
                                   axis=1)
        progress += int(np.sum(np.diff(to_target) < 0))
        if sim is None:
            continue
        sim.reset(states[0])
        planner = PairExpert(sim, goal, rng)
        for t, a in enumerate(actions):
            if t and G.pair_success(sim.positions(), goal):
                break  # the expert has nothing to do once the goal holds
            ok, fb = planner.choices()
            disagree += a not in ok
            not_choice += 1 - len(ok) / P.N_ACTIONS
            fallback += fb
            n_checked += 1
            sim.step(int(a))
    lengths_a = np.array(lengths)
    total = int(lengths_a.sum())
    q = np.quantile(lengths_a, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(lengths_a) else np.zeros(5)
    out: dict[str, Any] = {
        "episodes": len(idx), "transitions": total, "success_rate": float(np.mean(success)) if idx else 0.0,
        "distinct_goals": len(goal_keys), "start_solved": int(start_solved),
        "length_mean": float(lengths_a.mean()) if len(idx) else 0.0,
        "length_geomean": float(np.exp(np.mean(np.log(np.maximum(lengths_a, 1))))) if len(idx) else 0.0,
        "length_q10": float(q[0]), "length_q25": float(q[1]), "length_median": float(q[2]),
        "length_q75": float(q[3]), "length_q90": float(q[4]),
        "length_max": int(lengths_a.max()) if len(idx) else 0,
        "length_min": int(lengths_a.min()) if len(idx) else 0,
        "share_length_1": float(np.mean(lengths_a == 1)) if len(idx) else 0.0,
        "noop_share": noop / total if total else 0.0,
        "pushed_ball_still_share": pushed_still / total if total else 0.0,
        "other_ball_share": other_ball / total if total else 0.0,
        "dst_ball_share": dst_ball / total if total else 0.0,
        "progress_share": progress / total if total else 0.0,
        "steps_after_goal_mean": float(np.mean(after_goal)) if after_goal else 0.0,
        "episodes_past_goal": int(np.sum(np.array(after_goal) > 0)),
    }
    if sim is not None:
        out.update({
            "expert_checked_steps": n_checked, "expert_fallback_steps": fallback,
            "expert_disagreement": disagree / n_checked if n_checked else 0.0,
            "epsilon_estimate": min(1.0, disagree / not_choice) if not_choice else 0.0,
        })
    return out


# ---------------------------------------------------------------------------------------------------------
# Minari


def export_minari(dataset, dataset_id: str = "kalm_bench/clevr-robot/seen-v0", root: str | os.PathLike[str] | None = None,
                  author: str | None = None, description: str | None = None):
    """Write a Minari dataset (``minari.create_dataset_from_buffers``) and return it.

    Observations are the 10 ball coordinates (``Box``), actions ``Discrete(40)``. Per-step ``infos`` carry
    ``goal_array`` (KALM's 6 numbers) and ``is_success``; instructions and goal dicts, which Minari cannot
    store per step, go to ``kalm_bench_episodes.json`` next to the Minari data (one entry per episode id).
    ``root`` sets ``MINARI_DATASETS_PATH`` for the call. Needs ``pip install minari`` (tested with 0.5.4).
    """
    try:
        import minari
        from minari.data_collector import EpisodeBuffer
    except ImportError:
        raise _user_error("exporting to Minari needs the 'minari' package: pip install minari") from None
    from gymnasium import spaces

    if dataset.action_kind != "discrete" or dataset.state_dim != 10:
        raise _user_error("only CLEVR-Robot datasets (10 state numbers, 40 discrete actions) can be exported")
    old = os.environ.get("MINARI_DATASETS_PATH")
    if root is not None:
        os.environ["MINARI_DATASETS_PATH"] = str(Path(root).resolve())
    try:
        buffers, side = [], []
        for i, ep in enumerate(dataset.episodes()):
            goal_arr = G.goal_to_array(G.as_goal(ep.goal))
            goal_arr = np.concatenate([goal_arr, np.zeros(max(0, 6 - len(goal_arr)), np.float32)])[:6]
            T = len(ep.actions)
            succ = np.zeros(T + 1, bool)
            if ep.success and T:
                succ[-1] = True
            term = [False] * T
            trunc = [False] * T
            if T:
                term[-1] = bool(ep.success)
                trunc[-1] = not ep.success
            buffers.append(EpisodeBuffer(
                id=i, observations=np.asarray(ep.states, np.float32), actions=np.asarray(ep.actions, np.int64),
                rewards=list(map(float, ep.rewards)), terminations=term, truncations=trunc,
                infos={"goal_array": np.tile(goal_arr.astype(np.float32), (T + 1, 1)), "is_success": succ}))
            side.append({"id": i, "instruction": ep.instruction, "goal": ep.goal, "level": ep.level})
        from . import env as _env  # registers the Gymnasium id that Minari records

        obs_space = spaces.Box(_env.OBS_LOW, _env.OBS_HIGH, dtype=np.float32)  # the env's own, bounded
        with warnings.catch_warnings():
            # Minari nags about missing contact e-mail addresses; not ours to invent.
            warnings.filterwarnings("ignore", message=".*(author_email|code_permalink).*", category=UserWarning)
            mds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, env=_env.ENV_ID, eval_env=_env.ENV_ID,
                action_space=spaces.Discrete(P.N_ACTIONS), observation_space=obs_space,
                algorithm_name=str(dataset.source or "kalm-bench"), author=author or "kalm-bench",
                description=description or "CLEVR-Robot (KALM) trajectories exported from kalm-bench",
                requirements=[f"mujoco=={P.mujoco_version()}", "kalm-bench"])
        from minari.storage import get_dataset_path

        out = get_dataset_path(dataset_id)
        (out / "kalm_bench_episodes.json").write_text(json.dumps(side))
        return mds
    finally:
        if root is not None:
            if old is None:
                os.environ.pop("MINARI_DATASETS_PATH", None)
            else:
                os.environ["MINARI_DATASETS_PATH"] = old
