"""Meta-world environment plugin (KALM's four goal levels on metaworld 3.1.1, v3 tasks).

Entry-point module: registers the ``metaworld`` environment and the ``kalm-bench metaworld`` commands.
Heavy libraries (gymnasium, mujoco, metaworld) are imported only inside methods.
"""

from __future__ import annotations

from kalm_bench import hookimpl


@hookimpl
def register_envs(register):
    from .environment import MetaworldEnvironment

    register(MetaworldEnvironment)


@hookimpl
def register_commands(cli):
    from .cli import add_commands

    add_commands(cli)
