"""The option scopes the first-party envs declare are true: the data do not read an option declared for
rollouts or evaluation only, nor a novel level's goal file, so leaving it out of the data's cache key is safe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kalm_bench.api import TrajectoryDataset


def _arrays(ds: TrajectoryDataset) -> dict[str, np.ndarray]:
    return {"states": ds.states, "actions": ds.actions, "rewards": ds.rewards,
            "instructions": np.asarray([str(t) for t in ds.instructions])}


def _same(a: TrajectoryDataset, b: TrajectoryDataset) -> bool:
    x, y = _arrays(a), _arrays(b)
    return all(np.array_equal(x[k], y[k]) for k in x)


def _goal_file(tmp_path, level_goal):
    path = tmp_path / "goals.json"
    path.write_text(json.dumps({"format": "kalm-bench-clevr-goals", "version": 1,
                                "goals": [{"goal": level_goal, "instructions": ["a wording of my own"]}]}))
    return str(path)


def test_clevr_data_ignore_every_option_not_declared_as_data(tmp_path):
    from kalm_bench_plugins.clevr.plugin import ClevrRobot

    base = ClevrRobot().generate_dataset(6, 3)
    goals = _goal_file(tmp_path, {"type": "pair", "src": 0, "dst": 1, "dir": "left"})
    changed = {"stale_scene": True, "easy_check": "state_any", "hard_obs": "kalm15", "easy_still": True,
               "goal_files": {"rephrase": goals, "easy": goals}}
    assert set(changed) == set(ClevrRobot.option_scopes) | set(ClevrRobot.level_options)
    for name, value in changed.items():
        assert _same(base, ClevrRobot({name: value}).generate_dataset(6, 3)), name
    # A data option does change them: the check can fail.
    assert not _same(base, ClevrRobot({"reward": "imaginebench"}).generate_dataset(6, 3))
    assert ClevrRobot.config_view({"reward": "kalm", "stale_scene": True, "goal_files": {"easy": goals}},
                                  ["data"], []) == {"reward": "kalm", "goal_files": {}}


def test_metaworld_data_ignore_the_distractor():
    pytest.importorskip("metaworld")
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    assert set(MetaworldEnvironment.option_scopes) == {"distractor"}
    a = MetaworldEnvironment({"distractor": True}).generate_dataset(2, seed=5)
    b = MetaworldEnvironment({"distractor": False}).generate_dataset(2, seed=5)
    assert _same(a, b)
    assert not _same(a, MetaworldEnvironment({"data_noise": 0.3}).generate_dataset(2, seed=5))
