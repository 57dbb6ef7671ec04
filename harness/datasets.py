"""The trajectory dataset format shared by every environment, importer and LLM backend.

On disk a dataset is a directory::

    manifest.json   format name and version, counts, seed, source, sha256 of data.npz, free-form attrs
    data.npz        numpy arrays, written without pickling (loaded with ``allow_pickle=False``)

Arrays (N = total transitions, E = episodes, S = state size):

==================  ==============  ==========================================================
``states``          (N, S) float32  state before each action
``actions``         (N,) int64      discrete action index, or (N, A) float32 continuous actions
``rewards``         (N,) float32
``next_states``     (N, S) float32  state after each action
``lengths``         (E,) int64      transitions per episode (episodes are stored back to back)
``success``         (E,) bool       whether the episode reached its goal
``instructions``    (E,) str        the episode's natural-language goal
``goals``           (E,) str        the goal as JSON (environment-specific)
``levels``          (E,) str        goal level of the episode
==================  ==============  ==========================================================

An episode's last transition is terminal when ``success`` is true, a time-out otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

FORMAT = "kalm-bench-trajectories"
FORMAT_VERSION = 1
_STEP_ARRAYS = ("states", "actions", "rewards", "next_states")
_EPISODE_ARRAYS = ("lengths", "success", "instructions", "goals", "levels")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Episode:
    """One trajectory, used to build datasets (``TrajectoryDataset.from_episodes``)."""

    states: np.ndarray  # (T+1, S): initial state followed by the state after each action
    actions: np.ndarray  # (T,) or (T, A)
    rewards: np.ndarray  # (T,)
    instruction: str
    goal: Any  # JSON-serialisable
    level: str
    success: bool


@dataclass
class TrajectoryDataset:
    states: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_states: np.ndarray
    lengths: np.ndarray
    success: np.ndarray
    instructions: np.ndarray
    goals: np.ndarray
    levels: np.ndarray
    env: str
    action_kind: str  # "discrete" | "continuous"
    action_size: int
    seed: int | None = None
    source: str = ""
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- construction -----------------------------------------------------------------------------------
    @classmethod
    def from_episodes(cls, episodes: Sequence[Episode], *, env: str, action_kind: str, action_size: int,
                      seed: int | None = None, source: str = "", attrs: dict[str, Any] | None = None,
                      state_dim: int | None = None) -> TrajectoryDataset:
        episodes = list(episodes)
        if not episodes and state_dim is None:
            raise ValueError("an empty dataset needs state_dim")
        s_dim = state_dim if state_dim is not None else np.asarray(episodes[0].states).shape[1]
        act_tail: tuple[int, ...] = () if action_kind == "discrete" else (action_size,)
        act_dtype = np.int64 if action_kind == "discrete" else np.float32
        if episodes:
            states = np.concatenate([np.asarray(e.states[:-1], np.float32) for e in episodes])
            next_states = np.concatenate([np.asarray(e.states[1:], np.float32) for e in episodes])
            actions = np.concatenate([np.asarray(e.actions, act_dtype).reshape((-1,) + act_tail)
                                      for e in episodes])
            rewards = np.concatenate([np.asarray(e.rewards, np.float32).reshape(-1) for e in episodes])
        else:
            states = next_states = np.zeros((0, s_dim), np.float32)
            actions = np.zeros((0,) + act_tail, act_dtype)
            rewards = np.zeros((0,), np.float32)
        return cls(
            states=states, actions=actions, rewards=rewards, next_states=next_states,
            lengths=np.array([len(e.actions) for e in episodes], np.int64),
            success=np.array([bool(e.success) for e in episodes], bool),
            instructions=np.array([e.instruction for e in episodes], dtype=str),
            goals=np.array([json.dumps(e.goal, sort_keys=True) for e in episodes], dtype=str),
            levels=np.array([e.level for e in episodes], dtype=str),
            env=env, action_kind=action_kind, action_size=action_size, seed=seed, source=source,
            attrs=dict(attrs or {}),
        )

    @classmethod
    def concatenate(cls, parts: Sequence[TrajectoryDataset], **meta: Any) -> TrajectoryDataset:
        first = parts[0]
        arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _STEP_ARRAYS + _EPISODE_ARRAYS}
        kw = dict(env=first.env, action_kind=first.action_kind, action_size=first.action_size,
                  seed=first.seed, source=first.source, attrs=dict(first.attrs))
        kw.update(meta)
        return cls(**arrays, **kw)

    # -- access -----------------------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self.lengths)

    @property
    def n_transitions(self) -> int:
        return len(self.states)

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64) if len(self.lengths) \
            else np.zeros(0, np.int64)

    def episode(self, i: int) -> Episode:
        start = int(self.episode_starts[i])
        end = start + int(self.lengths[i])
        states = np.concatenate([self.states[start:end], self.next_states[end - 1:end]]) if end > start \
            else np.zeros((0, self.state_dim), np.float32)
        return Episode(states=states, actions=self.actions[start:end], rewards=self.rewards[start:end],
                       instruction=str(self.instructions[i]), goal=json.loads(str(self.goals[i])),
                       level=str(self.levels[i]), success=bool(self.success[i]))

    def episodes(self) -> Iterable[Episode]:
        for i in range(self.n_episodes):
            yield self.episode(i)

    def episode_index(self) -> np.ndarray:
        """(N,) episode number of every transition."""
        return np.repeat(np.arange(self.n_episodes), self.lengths)

    def end_flags(self) -> tuple[np.ndarray, np.ndarray]:
        """(terminals, timeouts) per transition: the last step of each episode is one of the two."""
        terminals = np.zeros(self.n_transitions, np.float32)
        timeouts = np.zeros(self.n_transitions, np.float32)
        ends = np.cumsum(self.lengths) - 1
        nonempty = self.lengths > 0
        terminals[ends[nonempty & self.success]] = 1.0
        timeouts[ends[nonempty & ~self.success]] = 1.0
        return terminals, timeouts

    def validate(self) -> None:
        n, e = len(self.states), len(self.lengths)
        problems = []
        for k in _STEP_ARRAYS:
            if len(getattr(self, k)) != n:
                problems.append(f"{k} has {len(getattr(self, k))} rows, states has {n}")
        for k in _EPISODE_ARRAYS:
            if len(getattr(self, k)) != e:
                problems.append(f"{k} has {len(getattr(self, k))} rows, lengths has {e}")
        if int(np.sum(self.lengths)) != n:
            problems.append(f"lengths sum to {int(np.sum(self.lengths))}, but there are {n} transitions")
        if self.action_kind not in ("discrete", "continuous"):
            problems.append(f"action_kind {self.action_kind!r} is not 'discrete' or 'continuous'")
        elif self.action_kind == "discrete" and n and (self.actions.min() < 0 or self.actions.max() >= self.action_size):
            problems.append(f"discrete actions outside [0, {self.action_size})")
        if problems:
            raise ValueError("; ".join(problems))

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "env": self.env,
            "action_kind": self.action_kind, "action_size": int(self.action_size),
            "state_dim": int(self.state_dim), "n_episodes": int(self.n_episodes),
            "n_transitions": int(self.n_transitions), "n_success": int(np.sum(self.success)),
            "seed": self.seed, "source": self.source, "attrs": self.attrs,
        }

    # -- disk -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: into a temporary sibling directory, then rename over ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            arrays = {k: getattr(self, k) for k in _STEP_ARRAYS + _EPISODE_ARRAYS}
            np.savez(tmp / "data.npz", **arrays)
            manifest = self.manifest()
            manifest["files"] = {"data.npz": sha256_file(tmp / "data.npz")}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            # Keep the old dataset until the new one is in place: a failed rename must lose nothing.
            backup = path.with_name(f".{path.name}.old-{os.getpid()}") if path.exists() else None
            if backup is not None:
                os.rename(path, backup)
            try:
                os.replace(tmp, path)
            except BaseException:
                if backup is not None:
                    os.rename(backup, path)
                raise
            if backup is not None:
                shutil.rmtree(backup, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True) -> TrajectoryDataset:
        """Load and check a dataset directory; any problem is a :class:`UserError` naming the file."""
        path = Path(path)
        mpath = path / "manifest.json"
        if not mpath.is_file():
            raise UserError(f"no dataset manifest: {mpath} does not exist", file=mpath)
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"corrupt manifest ({exc.msg} at line {exc.lineno})", file=mpath) from None
        if manifest.get("format") != FORMAT:
            raise UserError(f"not a {FORMAT} dataset (format={manifest.get('format')!r})", file=mpath,
                            field="format")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise UserError(f"unsupported format_version {manifest.get('format_version')!r} "
                            f"(this kalm-bench reads {FORMAT_VERSION})", file=mpath, field="format_version")
        dpath = path / "data.npz"
        if not dpath.is_file():
            raise UserError("data file is missing", file=dpath)
        expected = manifest.get("files", {}).get("data.npz")
        if verify and expected and sha256_file(dpath) != expected:
            raise UserError("checksum mismatch: the file is corrupt or truncated "
                            f"(manifest files.data.npz = {expected[:12]}…)", file=dpath)
        try:
            with np.load(dpath, allow_pickle=False) as z:
                arrays = {k: z[k] for k in _STEP_ARRAYS + _EPISODE_ARRAYS}
        except KeyError as exc:
            raise UserError(f"array {exc.args[0]} is missing", file=dpath) from None
        except Exception as exc:  # zipfile/zlib/ValueError on truncated or foreign files
            raise UserError(f"cannot read arrays ({type(exc).__name__}: {exc})", file=dpath) from None
        try:
            ds = cls(**arrays, env=manifest["env"], action_kind=manifest["action_kind"],
                     action_size=int(manifest["action_size"]), seed=manifest.get("seed"),
                     source=manifest.get("source", ""), attrs=manifest.get("attrs", {}))
        except KeyError as exc:
            raise UserError(f"field {exc.args[0]} is missing", file=mpath, field=str(exc.args[0])) from None
        except ValueError as exc:
            raise UserError(f"inconsistent arrays: {exc}", file=dpath) from None
        for key in ("n_episodes", "n_transitions"):
            if key in manifest and manifest[key] != getattr(ds, key):
                raise UserError(f"{key} is {manifest[key]} but the arrays hold {getattr(ds, key)}",
                                file=mpath, field=key)
        return ds
