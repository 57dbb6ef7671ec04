"""Gymnasium ids of the first-party environments, registered when ``kalm_bench_plugins`` is imported.

Gymnasium 1.x loads no plugin entry points; its convention for third-party ids is the ``module:id`` form,
which imports the module first::

    gymnasium.make("kalm_bench_plugins:kalm_bench/CLEVRRobot-v0", level="hard")
    gymnasium.make("kalm_bench_plugins:kalm_bench/MetaWorld-v0", level="easy")

After ``import kalm_bench_plugins`` (or any of its plugins) the plain ids work too. Registration names
entry points by string, so nothing heavy (MuJoCo, Meta-world) is imported until an env is made.
"""

from __future__ import annotations

CLEVR_ID = "kalm_bench/CLEVRRobot-v0"
METAWORLD_ID = "kalm_bench/MetaWorld-v0"


def register() -> None:
    import gymnasium

    if CLEVR_ID not in gymnasium.registry:
        gymnasium.register(id=CLEVR_ID, entry_point="kalm_bench_plugins.clevr.env:ClevrRobotEnv",
                           max_episode_steps=50, disable_env_checker=False)
    if METAWORLD_ID not in gymnasium.registry:
        # KalmMetaworldEnv truncates at its own horizon (the env config's, 100 by default).
        gymnasium.register(id=METAWORLD_ID, entry_point="kalm_bench_plugins.metaworld.gym_env:make_env",
                           disable_env_checker=False)
