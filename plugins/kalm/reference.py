"""Import KALM's released CLEVR files (``clevr_robot.npy``, ``clevr_rephrase_prompt.npy``).

They are numpy pickles, so loading needs ``trust_pickle=True``, or pickles trusted on the command line
(``kalm-bench --trust-pickle``, ``KALM_BENCH_TRUST_PICKLE=1``) with ``trust_pickle=None``: only for files of
known origin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from kalm_bench.api import UserError


def _load_pickled_dict(path: str | os.PathLike[str], trust_pickle: bool | None, keys: tuple[str, ...]) -> dict:
    path = Path(path)
    if trust_pickle is None:
        from kalm_bench.api import pickle_trusted

        trust_pickle = pickle_trusted()
    if not trust_pickle:
        raise UserError("this file is a numpy pickle; pass trust_pickle=True only for a file of known origin",
                        file=path, field="trust_pickle")
    if not path.is_file():
        raise UserError("file not found", file=path)
    try:
        d = np.load(path, allow_pickle=True).item()
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        raise UserError(f"cannot read KALM data ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(d, dict):
        raise UserError("expected a pickled dict", file=path)
    for k in keys:
        if k not in d:
            raise UserError(f"key {k!r} is missing", file=path, field=k)
    return d


def load_clevr_dataset(path: str | os.PathLike[str], *, trust_pickle: bool | None = None,
                       phrasings_per_trajectory: int = 1, seed: int = 0, env: str = "clevr-robot",
                       level: str = "seen") -> Any:
    """``clevr_robot.npy`` → TrajectoryDataset; each trajectory is repeated with that many phrasings."""
    from kalm_bench.api import Episode, TrajectoryDataset

    d = _load_pickled_dict(path, trust_pickle, ("observations", "next_observations", "actions", "rewards",
                                                "masks", "instructions", "goals", "terminals"))
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(len(d["observations"])):
        n = int(np.asarray(d["masks"][i]).sum())
        states = np.concatenate([d["observations"][i][:1], d["next_observations"][i][:n]]).astype(np.float32)
        insts = [str(s) for s in d["instructions"][i]]
        goal = [float(x) for x in np.asarray(d["goals"][i][0]).reshape(-1)]
        success = bool(np.asarray(d["terminals"][i]).reshape(-1)[n - 1]) if n else False
        for j in rng.choice(len(insts), size=min(phrasings_per_trajectory, len(insts)), replace=False):
            episodes.append(Episode(states=states, actions=np.asarray(d["actions"][i][:n], np.int64),
                                    rewards=np.asarray(d["rewards"][i][:n], np.float32).reshape(-1),
                                    instruction=insts[j], goal=goal, level=level, success=success))
    return TrajectoryDataset.from_episodes(episodes, env=env, action_kind="discrete", action_size=40,
                                           seed=seed, source=f"kalm:{Path(path).name}")


def load_clevr_prompts(path: str | os.PathLike[str], *, trust_pickle: bool | None = None) -> list[dict[str, Any]]:
    """``clevr_rephrase_prompt.npy`` → goal dicts (instruction, initial_state, goal) for imagination."""
    d = _load_pickled_dict(path, trust_pickle, ("instructions", "observations", "goals"))
    return [{"instruction": str(np.asarray(inst).reshape(-1)[0]),
             "initial_state": [float(x) for x in np.asarray(obs)[0, :10]],
             "goal": [float(x) for x in np.asarray(goal).reshape(-1)]}
            for inst, obs, goal in zip(d["instructions"], d["observations"], d["goals"])]
