"""Realism checks of the first-party environments (``Environment.realistic_states``): every real state
passes with the stated margins, impossible states are rejected."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

pytest.importorskip("mujoco")


# ---------------------------------------------------------------------------------------------------------
# CLEVR-Robot


@pytest.fixture(scope="module")
def clevr():
    from kalm_bench_plugins.clevr.plugin import ClevrRobot

    return ClevrRobot()


@pytest.fixture(scope="module")
def kalm_clevr_states(kalm_npy):
    from kalm_bench_plugins.clevr.data import import_kalm_dataset

    ds = import_kalm_dataset(kalm_npy, trust_pickle=True)
    return np.concatenate([ds.states, ds.next_states])


def _all_states(ds) -> np.ndarray:
    return np.concatenate([ds.states, ds.next_states])


# a valid scene: balls well apart, inside the walls
SCENE = np.array([-0.3, 0.0, 0.1, 0.0, 0.4, 0.3, -0.3, 0.4, 0.05, 0.4])


def test_clevr_accepts_kalm_reference_data_with_margin(clevr, kalm_clevr_states):
    from kalm_bench_plugins.clevr import realism as R

    s = kalm_clevr_states
    assert clevr.realistic_states(s).all()
    d = R.pair_distances(s)
    # the data holds stacked balls (closer than two radii), so the overlap limit is well under 2 r ...
    assert d.min() < R.CONTACT_DISTANCE
    # ... and keeps its stated margin (KALM's minimum 0.12966, limit 0.11)
    assert d.min() >= R.MIN_PAIR_DISTANCE + 0.015
    x, y = s[:, 0::2], s[:, 1::2]
    assert x.min() >= R.TABLE_X[0] + 0.015 and x.max() <= R.TABLE_X[1] - 0.015
    assert y.min() >= R.TABLE_Y[0] + 0.015 and y.max() <= R.TABLE_Y[1] - 0.015


@pytest.mark.parametrize("options", [{}, {"epsilon": 0.3}])
def test_clevr_accepts_generated_data(clevr, options):
    ds = clevr.generate_dataset(60, seed=0, **options)
    ok = clevr.realistic_states(_all_states(ds))
    assert ok.dtype == bool and ok.shape == (ds.n_transitions * 2,)
    assert ok.all()


def test_clevr_rejects_overlapping_balls(clevr):
    from kalm_bench_plugins.clevr import realism as R

    assert clevr.realistic_states(SCENE[None]).tolist() == [True]
    rows = []
    for gap in (0.0, 0.05, R.MIN_PAIR_DISTANCE - 1e-3, R.MIN_PAIR_DISTANCE + 1e-3):
        s = SCENE.copy()
        s[2:4] = s[0:2] + (gap, 0.0)  # blue onto red
        rows.append(s)
    assert clevr.realistic_states(np.array(rows)).tolist() == [False, False, False, True]
    # the strict variant rejects stacked pairs too
    assert not R.realistic(rows[-1][None], min_pair_distance=R.CONTACT_DISTANCE)[0]


def test_clevr_rejects_three_balls_piled(clevr):
    # one ball on another is possible (real data has it), three balls pairwise overlapping are not
    pair = np.array([0.0, 0.0, 0.2, 0.0, -0.4, 0.45, 0.4, 0.45, -0.4, -0.2])
    pile = pair.copy()
    pile[4:6] = (0.1, 0.17)  # green 0.197 from red and blue, which are 0.2 apart
    # one ball resting on two others (also seen in real data): green on red and blue, 0.26 apart
    on_two = pair.copy()
    on_two[2:4] = (0.26, 0.0)
    on_two[4:6] = (0.13, 0.05)
    assert clevr.realistic_states(np.array([pair, pile, on_two])).tolist() == [True, False, True]


@pytest.mark.parametrize("ball,xy", [(0, (0.75, 0.0)), (2, (0.0, -0.45)), (4, (0.0, 0.75)), (3, (-0.56, 0.2))])
def test_clevr_rejects_ball_off_the_table(clevr, ball, xy):
    s = SCENE.copy()
    s[2 * ball: 2 * ball + 2] = xy
    assert not clevr.realistic_states(s[None])[0]


def test_clevr_rejects_non_finite_and_bad_shape(clevr):
    s = np.array([SCENE, SCENE])
    s[1, 3] = np.nan
    assert clevr.realistic_states(s).tolist() == [True, False]
    assert clevr.realistic_states(np.zeros((0, 10))).shape == (0,)
    with pytest.raises(ValueError):
        clevr.realistic_states(SCENE[:8][None])


# ---------------------------------------------------------------------------------------------------------
# Meta-world


@pytest.fixture(scope="module")
def mw():
    from kalm_bench_plugins.metaworld.environment import MetaworldEnvironment

    return MetaworldEnvironment()


@pytest.fixture(scope="module")
def mw_data(mw):
    return mw.generate_dataset(20, seed=3)  # two noisy scripted episodes per seen task


def _pick_place_lifted(mw_data) -> np.ndarray:
    """A real pick-place state with the puck in the hand, well above the table."""
    from kalm_bench_plugins.metaworld.realism import Z_TOP
    from kalm_bench_plugins.metaworld.tasks import slot

    s = _all_states(mw_data)
    z = s[:, slot("target_object")][:, 2]
    i = int(np.argmax(z))
    assert z[i] > Z_TOP["target_object"] + 0.03
    return s[i].copy()


def test_metaworld_accepts_generated_data(mw, mw_data):
    ok = mw.realistic_states(_all_states(mw_data))
    assert ok.dtype == bool and ok.shape == (2 * mw_data.n_transitions,) and ok.all()


def test_metaworld_accepts_kalm_demos_start_states_and_distractors(mw):
    import kalm_reference

    from kalm_bench_plugins.metaworld.tasks import slot

    raw = kalm_reference.load("meta_world")
    mask = raw["masks"][..., 0].astype(bool)
    assert mw.realistic_states(raw["observations"][mask]).all()
    assert mw.realistic_states(raw["next_observations"][mask]).all()
    starts = np.array([c["initial_state"] for level in ("easy", "hard")
                       for c in mw.sample_goals(level, 8, seed=0)])
    assert mw.realistic_states(starts).all()
    # every distractor pose of the bank, put into a real start state
    for entity, poses in mw.distractor_bank.items():
        s = np.repeat(starts[:1], len(poses), axis=0)
        s[:, slot(entity)] = poses
        assert mw.realistic_states(s).all(), entity


def test_metaworld_lifted_objects_keep_the_margin(mw_data):
    from kalm_bench_plugins.metaworld import realism as R
    from kalm_bench_plugins.metaworld.tasks import slot

    s = _all_states(mw_data)
    for entity in R.CARRIABLE:
        pos = s[:, slot(entity)][:, :3]
        up = (np.abs(pos).max(1) > R.ABSENT) & (pos[:, 2] > R.Z_TOP[entity])
        if up.any():  # carried: the hand is much closer than the limit
            assert np.linalg.norm(pos[up] - s[up, :3], axis=1).max() <= R.HOLD_DIST - 0.05, entity


def test_metaworld_rejects_objects_outside_the_workspace(mw, mw_data):
    from kalm_bench_plugins.metaworld.tasks import slot

    base = _pick_place_lifted(mw_data)
    obj = slot("target_object").start
    cases = []
    for axis, value in ((0, 1.5), (1, 0.05), (1, 1.3), (2, -0.2)):  # far right, off the front/back edge, in the table
        s = base.copy()
        s[obj + axis] = value
        cases.append(s)
    hand_out = base.copy()
    hand_out[2] = 0.8
    grip = base.copy()
    grip[3] = 1.5
    nan = base.copy()
    nan[obj + 1] = np.nan
    ok = mw.realistic_states(np.array([base] + cases + [hand_out, grip, nan]))
    assert ok.tolist() == [True] + [False] * (len(cases) + 3)


def test_metaworld_rejects_floating_objects(mw, mw_data):
    from kalm_bench_plugins.metaworld.tasks import slot

    held = _pick_place_lifted(mw_data)
    away = held.copy()
    away[0:3] = (-0.3, 0.45, 0.3)  # the hand far from the lifted puck: the puck floats
    handle = held.copy()  # a door handle lifted with the hand: doors cannot be carried
    handle[2] = 0.3
    handle[slot("target_object")] = 0.0
    handle[slot("handle")] = np.concatenate([handle[0:3], [1.0, 0.0, 0.0, 0.0]])
    handle_low = handle.copy()
    handle_low[slot("handle").start + 2] = 0.15
    ok = mw.realistic_states(np.array([held, away, handle, handle_low]))
    assert ok.tolist() == [True, False, False, True]
