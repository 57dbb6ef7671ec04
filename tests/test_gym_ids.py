"""The environments' Gymnasium ids: available by Gymnasium's `module:id` convention (no private import),
cheap to register, and clean under gymnasium's env checker."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=300)


def test_registering_the_ids_imports_no_simulator():
    got = _python("import sys, gymnasium, kalm_bench_plugins\n"
                  "print('kalm_bench/CLEVRRobot-v0' in gymnasium.registry, 'kalm_bench/MetaWorld-v0' in "
                  "gymnasium.registry, 'mujoco' in sys.modules, 'metaworld' in sys.modules)")
    assert got.returncode == 0, got.stderr
    assert got.stdout.split() == ["True", "True", "False", "False"]


@pytest.mark.parametrize("env_id, level", [("kalm_bench/CLEVRRobot-v0", "hard"), ("kalm_bench/MetaWorld-v0", "easy")])
def test_module_prefixed_id_makes_a_checked_env_without_warnings(env_id, level):
    got = _python(
        "import warnings, gymnasium\n"
        "from gymnasium.utils.env_checker import check_env\n"
        f"env = gymnasium.make('kalm_bench_plugins:{env_id}', level={level!r})\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    check_env(env.unwrapped, skip_render_check=True)\n"
        "print('WARNINGS', len(caught), [str(w.message)[:80] for w in caught])\n"
        "obs, info = env.reset(seed=0)\n"
        "print('BOUNDED', bool((abs(env.observation_space.low) < 1e6).all() and (abs(env.observation_space.high) < 1e6).all()))\n"
        "print('INSIDE', env.observation_space.contains(obs))\n")
    assert got.returncode == 0, got.stderr
    assert "WARNINGS 0 []" in got.stdout and "BOUNDED True" in got.stdout and "INSIDE True" in got.stdout


def test_metaworld_states_of_every_level_lie_inside_the_observation_space():
    import numpy as np

    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    env_plugin = MetaworldEnvironment()
    data = env_plugin.generate_dataset(12, seed=0)
    for level in env_plugin.levels:
        env = env_plugin.make(level)
        low, high = env.observation_space.low, env.observation_space.high
        states = np.concatenate([data.states] + [np.asarray([c["initial_state"]]) for c in env_plugin.test_cases(level, 8, 0)])
        assert ((states >= low) & (states <= high)).all(), level
