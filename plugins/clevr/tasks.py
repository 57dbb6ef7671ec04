"""Goal levels: goal sampling, test cases, and user goal files.

A *case* is a JSON-able dict::

    {"level": "seen", "goal": {...}, "instruction": "...", "initial_state": [10 floats],
     "goal_array": [KALM goal numbers]}

Goal files (``goal_files: {level: path}`` in the env config) replace a level's built-in goals:

* ``*.json``: ``{"format": "kalm-bench-clevr-goals", "version": 1, "goals": [ENTRY, ...]}`` (or just the
  list), where ENTRY is ``{"goal": GOAL, "instructions": ["...", ...], "initial_state": [10 floats]}``
  (``initial_state`` optional: drawn from the initial-state distribution when absent).
* ``*.npy``: KALM's released instruction files (``clevr_rephrase_prompt.npy``: keys ``instructions``,
  ``observations``, ``goals``). These are pickles, which can run code when loaded, so the env loads them
  only when the person running kalm-bench trusts pickles (``kalm-bench --trust-pickle``, or
  ``KALM_BENCH_TRUST_PICKLE=1``: :func:`kalm_bench.api.pickle_trusted`); a suite cannot turn this on.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import goals as G
from . import language as L
from .config import TRUST_PICKLE_HINT, is_pickled_goal_file
from .physics import N_BALLS, REACH_X, REACH_Y, sample_scene

LEVELS = ("seen", "rephrase", "easy", "hard")
GOAL_FILE_FORMAT = "kalm-bench-clevr-goals"
GOAL_FILE_VERSION = 1
DEFAULT_TEST_CASES = {"seen": 111, "rephrase": 111, "easy": 666, "hard": 111}


def _error(msg: str, file: Any = None, field: str | None = None) -> Exception:
    from kalm_bench.api import UserError

    return UserError(msg, file=file, field=field)


def level_rng(seed: int, level: str, stream: str = "") -> np.random.Generator:
    """Independent, reproducible random stream per (seed, level, purpose)."""
    return np.random.default_rng([int(seed), zlib.crc32(level.encode()), zlib.crc32(stream.encode())])


@dataclass(frozen=True)
class GoalEntry:
    goal: dict[str, Any]
    instructions: tuple[str, ...]
    initial_state: tuple[float, ...] | None = None


# ---------------------------------------------------------------------------------------------------------
# Goal files


def load_goal_file(path: str | Path, trust_pickle: bool = False) -> list[GoalEntry]:
    """A goal file's entries; a pickled (``.npy``) one only with ``trust_pickle=True``."""
    path = Path(path)
    if not path.is_file():
        raise _error("goal file does not exist", file=path)
    if is_pickled_goal_file(path):
        return _load_kalm_prompt_file(path, trust_pickle)
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _error(f"not valid JSON ({exc})", file=path) from None
    if isinstance(raw, dict):
        if raw.get("format") != GOAL_FILE_FORMAT:
            raise _error(f"format must be {GOAL_FILE_FORMAT!r}", file=path, field="format")
        if raw.get("version") != GOAL_FILE_VERSION:
            raise _error(f"unsupported version {raw.get('version')!r}", file=path, field="version")
        raw = raw.get("goals")
    if not isinstance(raw, list) or not raw:
        raise _error("expected a non-empty list of goals", file=path, field="goals")
    entries = []
    for i, item in enumerate(raw):
        where = f"goals[{i}]"
        if not isinstance(item, dict):
            raise _error("each goal entry must be an object", file=path, field=where)
        try:
            goal = G.validate_goal(item.get("goal"))
        except ValueError as exc:
            raise _error(str(exc), file=path, field=f"{where}.goal") from None
        instr = item.get("instructions")
        if isinstance(instr, str):
            instr = [instr]
        if not isinstance(instr, list) or not instr or not all(isinstance(s, str) and s for s in instr):
            raise _error("instructions must be a non-empty list of strings", file=path,
                         field=f"{where}.instructions")
        init = item.get("initial_state")
        if init is not None:
            try:
                init = tuple(float(v) for v in init)
            except (TypeError, ValueError):
                init = ()
            if len(init) != 2 * N_BALLS or not all(math.isfinite(v) for v in init):
                raise _error("initial_state must be 10 finite numbers", file=path,
                             field=f"{where}.initial_state")
        entries.append(GoalEntry(goal, tuple(instr), init))
    return entries


def _load_kalm_prompt_file(path: Path, trust_pickle: bool) -> list[GoalEntry]:
    if not trust_pickle:
        raise _error(f"KALM .npy files are pickles and can run code when loaded; to load it, {TRUST_PICKLE_HINT}",
                     file=path)
    try:
        data = np.load(path, allow_pickle=True).item()
    except Exception as exc:  # corrupt / truncated / not an object array
        raise _error(f"cannot read ({type(exc).__name__}: {exc})", file=path) from None
    if not isinstance(data, dict):
        raise _error("expected a pickled dict", file=path)
    for key in ("instructions", "goals"):
        if key not in data:
            raise _error(f"key {key!r} is missing", file=path, field=key)
    n = len(data["goals"])
    obs = data.get("observations")
    entries = []
    for i in range(n):
        try:
            goal = G.pair_goal_from_array(data["goals"][i])
        except ValueError as exc:
            raise _error(str(exc), file=path, field=f"goals[{i}]") from None
        instr = [str(s) for s in np.asarray(data["instructions"][i]).reshape(-1)]
        init = None
        if obs is not None:
            first = np.asarray(obs[i], np.float64).reshape(-1, np.asarray(obs[i]).shape[-1])[0, :10]
            init = tuple(float(v) for v in first)
        entries.append(GoalEntry(goal, tuple(instr), init))
    return entries


# ---------------------------------------------------------------------------------------------------------
# Built-in goals


def move_goals(still: bool = False) -> list[dict[str, Any]]:
    dirs = G.DIR_NAMES + ((G.STILL,) if still else ())
    return [{"type": "move", "ball": b, "dir": d} for b in range(N_BALLS) for d in dirs]


def _relation(a_xy: np.ndarray, b_xy: np.ndarray, margin_deg: float = 8.0) -> str | None:
    """KALM direction of a relative to b if clearly inside a sector (not within margin of an edge)."""
    ang = G.pair_angle(a_xy, b_xy)
    for d in G.DIR_NAMES:
        lo, _ = G.SECTORS[d]
        centre = (lo + 45.0) % 360.0
        off = abs((ang - centre + 180.0) % 360.0 - 180.0)
        if off <= 45.0 - margin_deg:
            return d
    return None


def sample_multi_goal(rng: np.random.Generator, k: int) -> dict[str, Any]:
    """k pairwise relations that hold together in some layout (read off a sampled compact layout), so
    the goal is geometrically satisfiable; the k ball pairs are distinct."""
    lo = np.array([REACH_X[0] + 0.03, REACH_Y[0] + 0.03])
    hi = np.array([REACH_X[1] - 0.03, REACH_Y[1] - 0.03])
    while True:
        pts: list[np.ndarray] = []
        while len(pts) < N_BALLS:
            p = rng.uniform(lo, hi)
            if all(np.linalg.norm(p - q) >= 0.29 for q in pts):
                pts.append(p)
        close = []
        for a in range(N_BALLS):
            for b in range(a + 1, N_BALLS):
                if np.linalg.norm(pts[a] - pts[b]) < G.SUCCESS_DIST - 0.03:
                    src, dst = (a, b) if rng.random() < 0.5 else (b, a)
                    rel = _relation(pts[src], pts[dst])
                    if rel is not None:
                        close.append(G.pair_goal(src, dst, rel))
        if len(close) >= k:
            pick = rng.choice(len(close), size=k, replace=False)
            return {"type": "multi", "pairs": [close[int(i)] for i in sorted(pick)]}


def sample_level_goal(level: str, rng: np.random.Generator, easy_still: bool = False) -> dict[str, Any]:
    if level in ("seen", "rephrase"):
        pool = G.seen_goals()
        return pool[int(rng.integers(len(pool)))]
    if level == "easy":
        pool = move_goals(easy_still)
        return pool[int(rng.integers(len(pool)))]
    if level == "hard":
        kind = G.HARD_KINDS[int(rng.integers(len(G.HARD_KINDS)))]
        if kind == "tau2":
            return sample_multi_goal(rng, 2)
        if kind == "tau3":
            return sample_multi_goal(rng, 3)
        return {"type": "order"} if kind == "order" else {"type": "sort", "center": 2}
    raise ValueError(f"unknown level {level!r} (one of {LEVELS})")


def _initial_state(goal: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    # A start that already satisfies the goal would be a free success; draw again.
    while True:
        s = sample_scene(rng)
        if not G.satisfied(goal, s):
            return s


def make_case(level: str, goal: dict[str, Any], instruction: str, initial_state: np.ndarray) -> dict[str, Any]:
    return {"level": level, "goal": goal, "instruction": instruction,
            "initial_state": [float(v) for v in initial_state],
            "goal_array": [float(v) for v in G.goal_to_array(goal)]}


class GoalSource:
    """Where a level's goals come from: the built-in generator or a goal file's entries."""

    def __init__(self, level: str, entries: list[GoalEntry] | None = None, easy_still: bool = False):
        if level not in LEVELS:
            raise ValueError(f"unknown level {level!r} (one of {LEVELS})")
        self.level, self.entries, self.easy_still = level, entries, easy_still

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        if self.entries:
            return self._from_entry(self.entries[int(rng.integers(len(self.entries)))], rng)
        goal = sample_level_goal(self.level, rng, self.easy_still)
        return make_case(self.level, goal, L.pick_instruction(goal, self.level, rng), _initial_state(goal, rng))

    def _from_entry(self, e: GoalEntry, rng: np.random.Generator) -> dict[str, Any]:
        instr = e.instructions[int(rng.integers(len(e.instructions)))]
        init = np.array(e.initial_state) if e.initial_state is not None else _initial_state(e.goal, rng)
        return make_case(self.level, e.goal, instr, init)

    def cases(self, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
        """n cases; a goal file's entries are drawn without replacement while they last (as KALM's test
        sampler does), then again in a fresh order."""
        if not self.entries:
            return [self.sample(rng) for _ in range(n)]
        order: list[int] = []
        while len(order) < n:
            order += rng.permutation(len(self.entries)).tolist()
        return [self._from_entry(self.entries[i], rng) for i in order[:n]]
