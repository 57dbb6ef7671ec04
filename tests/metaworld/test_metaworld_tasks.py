"""Static facts: levels, slot layout, instruction lists (no simulator)."""

import json
from importlib import resources

import numpy as np
import pytest

from kalm_bench_plugins.metaworld import tasks


def test_levels_match_kalm():
    assert [len(tasks.LEVEL_TASKS[k]) for k in ("seen", "rephrase", "easy", "hard")] == [10, 10, 8, 4]
    assert tasks.LEVEL_TASKS["rephrase"] == tasks.LEVEL_TASKS["seen"]
    assert len(tasks.ALL_TASKS) == 22  # 24 task envs, rephrase reuses the 10 seen simulators
    assert set(tasks.TASK_ENTITIES) == set(tasks.ALL_TASKS)


def test_slots_tile_the_91d_state():
    covered = np.zeros(tasks.STATE_DIM, int)
    for name in tasks.SLOTS:
        covered[tasks.slot(name)] += 1
    assert (covered == 1).all()
    assert len(tasks.ENTITIES) == 12


def test_slot_state_fills_only_task_entities():
    obs18 = np.arange(18, dtype=float) + 1
    s = tasks.slot_state("hammer", obs18, np.array([7.0, 8.0, 9.0]))
    assert (s[tasks.slot("hammer")] == obs18[4:11]).all()
    assert (s[tasks.slot("nail")] == obs18[11:18]).all()
    assert (s[4:7] == [7, 8, 9]).all()
    assert np.count_nonzero(s) == 4 + 3 + 14
    w = tasks.slot_state("push-wall", obs18, np.zeros(3))
    assert tuple(w[tasks.slot("wall")]) == tasks.WALL_POSE["push-wall"]


def _shipped():
    return json.loads(resources.files("kalm_bench_plugins.metaworld").joinpath("instructions.json").read_text())


def test_at_least_20_distinct_instructions_per_task_and_level():
    table = _shipped()
    for level, level_tasks in tasks.LEVEL_TASKS.items():
        assert set(table[level]) == set(level_tasks)
        for task in level_tasks:
            texts = table[level][task]
            assert len(texts) >= 20 and len(set(texts)) == len(texts), (level, task)


def test_rephrase_wording_differs_from_seen():
    table = _shipped()
    for task in tasks.SEEN_TASKS:
        assert not set(table["seen"][task]) & set(table["rephrase"][task])
    everything = [t for lv in table.values() for texts in lv.values() for t in texts]
    assert len(everything) == len(set(everything))


def test_unknown_level_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown Meta-world level"):
        tasks.tasks_of("medium")
