"""CLEVR-Robot environment plugin for kalm-bench (KALM's 5-ball pushing task on MuJoCo).

Registers the ``clevr-robot`` environment and the ``kalm-bench clevr`` commands. Importing
``kalm_bench_plugins.clevr.env`` registers the Gymnasium id ``kalm_bench/CLEVRRobot-v0``.
Public functions: :func:`import_kalm_dataset`, :func:`replay_dataset`, :func:`export_minari`,
:func:`generate_dataset` (in :mod:`.data`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from kalm_bench import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import click

__all__ = ["import_kalm_dataset", "replay_dataset", "export_minari", "generate_dataset"]


@hookimpl
def register_envs(register: Callable[[type], None]) -> None:
    from .plugin import ClevrRobot

    register(ClevrRobot)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from .cli import add_commands

    add_commands(cli)


def __getattr__(name: str) -> Any:
    # Public data functions without importing mujoco when the plugin is merely registered.
    if name in __all__:
        from . import data

        return getattr(data, name)
    raise AttributeError(name)
