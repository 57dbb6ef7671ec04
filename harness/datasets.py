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

Loading checks a dataset before trusting it, and every problem is a :class:`~kalm_bench.errors.UserError`
naming the file and the field: the manifest (at most ``MAX_MANIFEST_BYTES``, a JSON object with the fields
above and the right types), the array headers (dtype and shape, read before any array is loaded, so an
array whose declared shape does not match its stored bytes, or arrays larger than
``KALM_BENCH_MAX_DATASET_BYTES`` — default: the machine's memory — are refused without allocating them),
then rows, lengths and action ranges, finite numbers, and goals that parse as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from .errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from .api import Environment

FORMAT = "kalm-bench-trajectories"
FORMAT_VERSION = 1
_STEP_ARRAYS = ("states", "actions", "rewards", "next_states")
_EPISODE_ARRAYS = ("lengths", "success", "instructions", "goals", "levels")
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest holds counts and a few attributes; a larger file is refused before it is parsed."""
MAX_BYTES_VARIABLE = "KALM_BENCH_MAX_DATASET_BYTES"
# numpy dtype kinds each array may have (f float, i/u integer, b bool, U str); actions depend on action_kind.
_KINDS = {"states": "fiu", "next_states": "fiu", "rewards": "fiu", "lengths": "iu", "success": "b",
          "instructions": "U", "goals": "U", "levels": "U"}
_ACTION_KINDS = {"discrete": "iu", "continuous": "f"}
_KIND_NAMES = {"f": "float", "i": "integer", "u": "integer", "b": "bool", "U": "str"}
_FINITE_CHUNK = 1 << 22  # elements checked at a time, so the check needs little memory


class DatasetProblem(ValueError):
    """Arrays that do not form a dataset; ``problems`` holds ``(field, message)`` pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" for f, m in problems))


class Manifest(BaseModel):
    """The fields of ``manifest.json`` the loader reads (others are kept but ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: StrictStr
    format_version: StrictInt
    env: StrictStr = Field(min_length=1)
    action_kind: Literal["discrete", "continuous"]
    action_size: StrictInt = Field(ge=1)
    state_dim: StrictInt | None = Field(None, ge=0)
    n_episodes: StrictInt | None = Field(None, ge=0)
    n_transitions: StrictInt | None = Field(None, ge=0)
    n_success: StrictInt | None = Field(None, ge=0)
    seed: StrictInt | None = None
    source: StrictStr = ""
    attrs: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, StrictStr] = Field(default_factory=dict)


def max_dataset_bytes() -> int:
    """Largest total size of a dataset's arrays that loading accepts: ``$KALM_BENCH_MAX_DATASET_BYTES``, or
    the machine's physical memory."""
    raw = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if raw:
        try:
            value = int(float(raw))
        except ValueError:
            raise UserError(f"expected a number of bytes, got {raw!r}", field=MAX_BYTES_VARIABLE) from None
        if value < 1:
            raise UserError(f"expected a positive number of bytes, got {raw!r}", field=MAX_BYTES_VARIABLE)
        return value
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return 64 << 30


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked manifest of the dataset directory ``path`` (a :class:`UserError` names any problem)."""
    mpath = Path(path) / "manifest.json"
    if not mpath.exists():
        raise UserError(f"no dataset manifest: {mpath} does not exist", file=mpath)
    if not mpath.is_file():
        raise UserError("the manifest is not a regular file", file=mpath)
    try:
        size = mpath.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise UserError(f"manifest is {size} bytes, more than a dataset manifest holds "
                            f"({MAX_MANIFEST_BYTES} bytes at most)", file=mpath)
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise UserError(f"cannot read the manifest ({exc.strerror or exc})", file=mpath) from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UserError(f"manifest is more than {MAX_MANIFEST_BYTES} bytes", file=mpath)
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError("corrupt manifest (not UTF-8 text)", file=mpath) from None
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt manifest ({exc.msg} at line {exc.lineno})", file=mpath) from None
    except RecursionError:
        raise UserError("corrupt manifest (nested too deeply)", file=mpath) from None
    if not isinstance(manifest, dict):
        raise UserError(f"corrupt manifest: expected a JSON object, got {_json_type(manifest)}", file=mpath)
    if manifest.get("format") != FORMAT:
        raise UserError(f"not a {FORMAT} dataset (format={manifest.get('format')!r})", file=mpath,
                        field="format")
    if manifest.get("format_version") != FORMAT_VERSION or isinstance(manifest.get("format_version"), bool):
        raise UserError(f"unsupported format_version {manifest.get('format_version')!r} "
                        f"(this kalm-bench reads {FORMAT_VERSION})", file=mpath, field="format_version")
    try:
        Manifest.model_validate(manifest)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or None
        value = err.get("input")
        shown = f" (got {_json_type(value)} {_short(value)})" if err["type"] != "missing" else ""
        raise UserError(f"{err['msg']}{shown}", file=mpath, field=where) from None
    return manifest


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def check_env(manifest: dict[str, Any], env: type[Environment] | Environment, file: Path) -> None:
    """Refuse a dataset (its checked manifest) that is not ``env``'s: another env name or action kind."""
    if manifest["env"] != env.name:
        raise UserError(f"dataset is for env {manifest['env']!r}, not {env.name!r}", file=file, field="env")
    if manifest["action_kind"] != env.action_kind:
        raise UserError(f"dataset has {manifest['action_kind']} actions, env {env.name!r} has "
                        f"{env.action_kind} actions", file=file, field="action_kind")


def _require_file(dpath: Path) -> None:
    if not dpath.exists():
        raise UserError("data file is missing", file=dpath)
    if not dpath.is_file():
        raise UserError("the data file is not a regular file", file=dpath)


def _check_file_size(dpath: Path, limit: int) -> None:
    try:
        size = dpath.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read the data file ({exc.strerror or exc})", file=dpath) from None
    if size > limit:
        raise UserError(f"data file is {_size(size)}, more than the {_size(limit)} loading allows "
                        f"({MAX_BYTES_VARIABLE})", file=dpath)


def _read_headers(dpath: Path, limit: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of each array of ``data.npz``, from the .npy headers only (nothing is loaded)."""
    headers: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    try:
        with zipfile.ZipFile(dpath) as zf:
            members = {info.filename: info for info in zf.infolist()}
            for key in _STEP_ARRAYS + _EPISODE_ARRAYS:
                info = members.get(f"{key}.npy")
                if info is None:
                    raise UserError(f"array {key} is missing", file=dpath, field=key)
                with zf.open(info) as f:
                    try:
                        version = np.lib.format.read_magic(f)
                        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                else np.lib.format.read_array_header_2_0)
                        shape, _fortran, dtype = read(f)
                    except (ValueError, EOFError, OSError) as exc:
                        raise UserError(f"not a valid .npy array ({exc})", file=dpath, field=key) from None
                    header = f.tell()
                if dtype.hasobject:
                    raise UserError("holds Python objects (a pickle), which kalm-bench never loads", file=dpath,
                                    field=key)
                if any(d < 0 for d in shape):
                    raise UserError(f"negative dimension in shape {shape}", file=dpath, field=key)
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
                if nbytes != info.file_size - header:
                    raise UserError(f"header declares shape {shape} of {dtype} ({_size(nbytes)}), the file holds "
                                    f"{_size(max(info.file_size - header, 0))} of data", file=dpath, field=key)
                total += nbytes
                headers[key] = (tuple(int(d) for d in shape), dtype)
    except UserError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise UserError(f"cannot read arrays ({type(exc).__name__}: {exc})", file=dpath) from None
    if total > limit:
        raise UserError(f"arrays hold {_size(total)}, more than the {_size(limit)} loading allows "
                        f"({MAX_BYTES_VARIABLE})", file=dpath)
    return headers


def _raise_first(problems: list[tuple[str, str]], mpath: Path, dpath: Path) -> None:
    """The first problem as a :class:`UserError` naming its file (manifest fields, else the data file)."""
    if not problems:
        return
    name, message = problems[0]
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    raise UserError(message + more, file=mpath if name in ("action_kind", "action_size") else dpath, field=name)


def _first_not_finite(a: np.ndarray) -> int | None:
    """Row of the first NaN or infinite value of a float array (checked a chunk at a time), or None."""
    if a.dtype.kind != "f" or a.size == 0:
        return None
    rows = max(1, _FINITE_CHUNK // max(1, a.size // max(1, len(a))))
    for start in range(0, len(a), rows):
        ok = np.isfinite(a[start:start + rows])
        if not ok.all():
            bad = np.nonzero(~ok.reshape(len(ok), -1).all(axis=1))[0]
            return start + int(bad[0])
    return None


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
        """Check that the arrays form a dataset: dtypes, shapes, rows, lengths and action range.

        Raises :class:`DatasetProblem` (a ``ValueError``) listing each problem with the array it is in.
        """
        problems = self.problems()
        if problems:
            raise DatasetProblem(problems)

    def problems(self, limit: int = 10, values: bool = True) -> list[tuple[str, str]]:
        """``(field, message)`` for what is wrong with the arrays (at most ``limit``; empty when valid).
        ``values=False`` checks only dtypes and shapes (what the array headers tell)."""
        problems: list[tuple[str, str]] = []
        arrays = {k: getattr(self, k) for k in _STEP_ARRAYS + _EPISODE_ARRAYS}
        for k, a in arrays.items():
            if not isinstance(a, np.ndarray):
                problems.append((k, f"expected a numpy array, got {type(a).__name__}"))
        if problems:
            return problems
        if self.action_kind not in _ACTION_KINDS:
            problems.append(("action_kind", f"{self.action_kind!r} is not 'discrete' or 'continuous'"))
        if isinstance(self.action_size, bool) or not isinstance(self.action_size, (int, np.integer)) \
                or self.action_size < 1:
            problems.append(("action_size", f"expected a positive integer, got {self.action_size!r}"))
        if problems:
            return problems
        kinds = {**_KINDS, "actions": _ACTION_KINDS[self.action_kind]}
        for k, a in arrays.items():
            if a.dtype.kind not in kinds[k]:
                want = " or ".join(dict.fromkeys(_KIND_NAMES[c] for c in kinds[k]))
                extra = f" ({self.action_kind} actions)" if k == "actions" else ""
                problems.append((k, f"expected {want} values{extra}, got dtype {a.dtype}"))
        ndims = {**{k: 1 for k in arrays}, "states": 2, "next_states": 2,
                 "actions": 1 if self.action_kind == "discrete" else 2}
        for k, a in arrays.items():
            if a.ndim != ndims[k]:
                shape = "(N,)" if k in _STEP_ARRAYS else "(E,)"
                shape = {"states": "(N, state_dim)", "next_states": "(N, state_dim)",
                         "actions": f"(N, {self.action_size})"}.get(k, shape) if ndims[k] == 2 else shape
                problems.append((k, f"expected shape {shape}, got {a.shape}"))
        if problems:
            return problems[:limit]
        n, e = len(self.states), len(self.lengths)
        for k in _STEP_ARRAYS:
            if len(arrays[k]) != n:
                problems.append((k, f"{k} has {len(arrays[k])} rows, states has {n}"))
        for k in _EPISODE_ARRAYS:
            if len(arrays[k]) != e:
                problems.append((k, f"{k} has {len(arrays[k])} rows, lengths has {e}"))
        if self.next_states.shape[1:] != self.states.shape[1:]:
            problems.append(("next_states", f"rows have {self.next_states.shape[1]} numbers, states rows have "
                                            f"{self.states.shape[1]}"))
        if self.action_kind == "continuous" and self.actions.shape[1] != self.action_size:
            problems.append(("actions", f"rows have {self.actions.shape[1]} numbers, action_size is "
                                        f"{self.action_size}"))
        if not values:
            return problems[:limit]
        if e and self.lengths.min() < 0:
            i = int(np.argmin(self.lengths))
            problems.append(("lengths", f"episode {i} has negative length {int(self.lengths[i])}"))
        elif int(np.sum(self.lengths, dtype=np.int64)) != n:
            problems.append(("lengths", f"lengths sum to {int(np.sum(self.lengths, dtype=np.int64))}, but there "
                                        f"are {n} transitions"))
        if self.action_kind == "discrete" and n and (self.actions.min() < 0 or self.actions.max() >= self.action_size):
            bad = int(np.nonzero((self.actions < 0) | (self.actions >= self.action_size))[0][0])
            problems.append(("actions", f"discrete actions outside [0, {self.action_size}) (row {bad}: "
                                        f"{int(self.actions[bad])})"))
        return problems[:limit]

    def content_problems(self) -> list[tuple[str, str]]:
        """``(field, message)`` for values that are not usable: NaN or infinite numbers, goals that are not
        JSON. Run by :meth:`load` on data it has not written itself (``verify=True``)."""
        problems: list[tuple[str, str]] = []
        for k in ("states", "next_states", "rewards") + (("actions",) if self.action_kind == "continuous" else ()):
            row = _first_not_finite(getattr(self, k))
            if row is not None:
                problems.append((k, f"row {row} holds a NaN or infinite value"))
        for i, g in enumerate(self.goals):
            try:
                json.loads(str(g))
            except (json.JSONDecodeError, RecursionError):
                problems.append(("goals", f"goal of episode {i} is not JSON: {_short(str(g), 40)}"))
                break
        return problems

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
    def inspect(cls, path: str | os.PathLike[str],
                env: type[Environment] | Environment | None = None) -> dict[str, Any]:
        """Check a dataset directory without loading its arrays: the manifest, ``env`` (name and action kind)
        when given, and the dtypes and shapes the array headers declare. Returns the manifest. Cheap enough
        for ``validate``; :meth:`load` also checks the values."""
        path = Path(path)
        mpath, dpath = path / "manifest.json", path / "data.npz"
        manifest = read_manifest(path)
        if env is not None:
            check_env(manifest, env, mpath)
        _require_file(dpath)
        limit = max_dataset_bytes()
        _check_file_size(dpath, limit)
        headers = _read_headers(dpath, limit)
        # Zero-strided stand-ins of the declared shapes: the shape checks run without reading any data.
        shells = {k: np.broadcast_to(np.zeros((), dtype), shape) for k, (shape, dtype) in headers.items()}
        ds = cls.__new__(cls)
        ds.__dict__.update(shells, env=manifest["env"], action_kind=manifest["action_kind"],
                           action_size=int(manifest["action_size"]), seed=manifest.get("seed"),
                           source=manifest.get("source", ""), attrs=manifest.get("attrs", {}))
        _raise_first(ds.problems(values=False), mpath, dpath)
        for key in ("n_episodes", "n_transitions", "state_dim"):
            if manifest.get(key) is not None and manifest[key] != getattr(ds, key):
                raise UserError(f"{key} is {manifest[key]} but the arrays hold {getattr(ds, key)}", file=mpath,
                                field=key)
        return manifest

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify: bool = True,
             env: type[Environment] | Environment | None = None) -> TrajectoryDataset:
        """Load and check a dataset directory; any problem is a :class:`UserError` naming the file and field.

        The manifest and the array headers are checked before any array is read. ``verify`` also checks the
        data file's checksum and the values (finite numbers, JSON goals): leave it on for data from outside
        (it is off only for artifacts kalm-bench wrote and checked itself). With ``env``, a dataset of another
        env or action kind is refused.
        """
        path = Path(path)
        mpath = path / "manifest.json"
        manifest = read_manifest(path)
        if env is not None:
            check_env(manifest, env, mpath)
        dpath = path / "data.npz"
        _require_file(dpath)
        limit = max_dataset_bytes()
        _check_file_size(dpath, limit)
        expected = manifest.get("files", {}).get("data.npz")
        if verify and expected and sha256_file(dpath) != expected:
            raise UserError("checksum mismatch: the file is corrupt or truncated "
                            f"(manifest files.data.npz = {expected[:12]}…)", file=dpath)
        headers = _read_headers(dpath, limit)
        try:
            with np.load(dpath, allow_pickle=False) as z:
                arrays = {k: z[k] for k in headers}
        except Exception as exc:  # zipfile/zlib/ValueError on truncated or foreign files
            raise UserError(f"cannot read arrays ({type(exc).__name__}: {exc})", file=dpath) from None
        try:
            ds = cls(**arrays, env=manifest["env"], action_kind=manifest["action_kind"],
                     action_size=int(manifest["action_size"]), seed=manifest.get("seed"),
                     source=manifest.get("source", ""), attrs=manifest.get("attrs", {}))
            problems = ds.content_problems() if verify else []
        except DatasetProblem as exc:
            problems = exc.problems
        _raise_first(problems, mpath, dpath)
        held = {"n_episodes": ds.n_episodes, "n_transitions": ds.n_transitions, "state_dim": ds.state_dim,
                "n_success": int(np.sum(ds.success))}
        for key, value in held.items():
            if manifest.get(key) is not None and manifest[key] != value:
                raise UserError(f"{key} is {manifest[key]} but the arrays hold {value}", file=mpath, field=key)
        return ds
