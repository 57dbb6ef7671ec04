"""Progress lines of a run through stdlib ``logging`` (logger ``kalm_bench``), on stderr.

A line per started and finished stage and per finished run, so a run whose output goes to a file or a CI log
shows what it does as it goes, not only when the first run ends. ``--quiet`` keeps warnings and errors,
``--verbose`` adds debug lines (cached stages) and logs progress every few seconds. Worker processes
configure themselves (:func:`configure_worker`) from ``KALM_BENCH_LOG_LEVEL``, which :func:`configure` exports.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

LOGGER = "kalm_bench"
LEVEL_ENV = "KALM_BENCH_LOG_LEVEL"
# Without a terminal, a stage's own progress is logged at most this often (a CLEVR grounding takes minutes).
PROGRESS_EVERY_S = 60.0

log = logging.getLogger(LOGGER)


def configure(verbosity: int = 0) -> None:
    """Send ``kalm_bench`` log lines to stderr: warnings only (< 0), info (0) or debug (> 0)."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    os.environ[LEVEL_ENV] = logging.getLevelName(level)
    _install(level)


def configure_worker() -> None:
    """In a worker process (any executor): the level the parent chose; nothing when the parent chose none
    or when this process is already configured (a serial run builds its stages in the parent)."""
    if any(getattr(h, "_kalm_bench", False) for h in log.handlers):
        return
    name = os.environ.get(LEVEL_ENV)
    level = logging.getLevelName(name) if name else None
    if isinstance(level, int):
        _install(level)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time, so a live progress display that redirects it
    (rich, on a terminal) prints the lines above its bars instead of being torn by them."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _install(level: int) -> None:
    for old in [h for h in log.handlers if getattr(h, "_kalm_bench", False)]:
        log.removeHandler(old)
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
    handler._kalm_bench = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def progress_logger(what: str, every_s: float = PROGRESS_EVERY_S) -> Callable[[int, int], None]:
    """A stage progress callback that logs ``what: done/total`` at most once per ``every_s`` seconds."""
    last = [time.monotonic()]

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= (min(every_s, 5.0) if log.isEnabledFor(logging.DEBUG) else every_s):
            last[0] = now
            log.info("  %s: %d/%d", what, done, total)
    return update
