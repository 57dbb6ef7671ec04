"""Workarounds for third-party behaviour that would otherwise leak into kalm-bench's output."""

from __future__ import annotations


def quiet_gym_banner() -> None:
    """d3rlpy imports the unmaintained ``gym``, which prints a deprecation banner to stderr on every import
    (i.e. in the middle of every run's output, once per worker process). The banner comes from
    ``gym_notices``; drop its entry for the installed gym version before anything imports gym."""
    try:
        import importlib.metadata as md

        import gym_notices.notices as notices

        notices.notices.pop(md.version("gym"), None)
    except Exception:  # noqa: BLE001 - purely cosmetic
        pass
