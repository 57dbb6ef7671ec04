"""The MuJoCo port: compiled model, patches, initial scenes, and fidelity to KALM's data."""

import mujoco
import numpy as np
import pytest

from kalm_bench_plugins.clevr import physics as P
from kalm_bench_plugins.clevr.data import replay_dataset
from kalm_bench_plugins.clevr.config import ClevrConfig


def test_model_structure_and_patches():
    m = P.get_model()
    assert (m.nq, m.nv, m.nu, m.nbody) == (37, 32, 2, 7)
    assert m.opt.solver == mujoco.mjtSolver.mjSOL_NEWTON
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert m.opt.timestep == 0.01
    body = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "point_mass")
    w = 1.0 / (m.body_mass[body] + 0.04)
    assert m.dof_invweight0[-2:] == pytest.approx([w, w])
    assert m.body_invweight0[body, 0] == pytest.approx(2 / 3 * w)
    ball = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "obj0")
    assert m.body_mass[ball] == pytest.approx(4 / 3 * np.pi * 0.13 ** 3, rel=1e-6)
    raw = P.get_model(patch=False, patch_margin=False)
    assert raw.dof_invweight0[-1] == pytest.approx(1.0 / m.body_mass[body])  # MuJoCo >= 3.0 semantics


def test_margin_probe_matches_this_mujoco():
    m = P.get_model()
    d = mujoco.MjData(m)
    mujoco.mj_forward(m, d)
    # After the probe (and halving where needed) every contact includes a 0.002 margin, as in 2.x.
    assert d.ncon > 0 and d.contact[0].includemargin == pytest.approx(0.002)


def test_sample_scene_follows_original_rules():
    rng = np.random.default_rng(0)
    for _ in range(200):
        xy = P.sample_scene(rng).reshape(5, 2)
        assert np.all((xy[:, 0] >= -0.5) & (xy[:, 0] <= 0.5) & (xy[:, 1] >= -0.3) & (xy[:, 1] <= 0.5))
        for i in range(5):
            for j in range(i + 1, 5):
                d = xy[i] - xy[j]
                assert np.hypot(*d) >= 0.36
                assert not (0 < abs(d[0]) < 0.01 or 0 < abs(d[1]) < 0.01)
    assert np.array_equal(P.sample_scene(np.random.default_rng(5)), P.sample_scene(np.random.default_rng(5)))


def test_push_moves_target_ball_as_documented():
    sim = P.ClevrSim()
    start = np.array([-0.3, 0.0, 0.3, 0.3, 0.0, 0.45, -0.35, 0.45, 0.35, -0.1])
    sim.reset(start)
    after = sim.step(8 * 0 + 0)  # red, +x
    # a fresh cardinal push, on the physics that replays KALM's data
    assert after[0] - start[0] == pytest.approx(0.2504, abs=2e-3)
    assert abs(after[1] - start[1]) < 5e-3
    state = sim.get_state()
    a1 = sim.step(1)
    sim.set_state(state)
    a2 = sim.step(1)
    assert np.array_equal(a1, a2)  # set_state restores everything a push depends on
    with pytest.raises(ValueError):
        sim.step(40)


def test_stale_scene_aims_at_old_positions():
    sim = P.ClevrSim()
    start = np.array([-0.3, 0.0, 0.3, 0.3, 0.0, 0.45, -0.35, 0.45, 0.35, -0.1])
    aim = start.copy()
    aim[0:2] = (0.3, -0.1)  # the scene graph still thinks red is elsewhere
    sim.reset(start, aim=aim)
    after = sim.step(0)
    assert abs(after[0] - start[0]) < 0.05  # the pusher missed red


def test_replay_kalm_dataset_fidelity(kalm_dataset):
    report = replay_dataset(kalm_dataset)
    s = report.summary()
    assert s["episodes"] == 80
    assert s["replay_reaches_goal"] == 80 and s["successes_reproduced"] == 80
    assert s["median_error"] <= 1e-4
    # Two episodes diverge late from float32-rounded starts (errors 0.27 and 0.054); the next worst is
    # 4.7e-6, 21x under the 1e-4 tolerance. Two more episodes of margin for other CPUs' float rounding.
    assert s["episodes_within_tolerance"] >= 76
    assert report.ok


def test_unpatched_modern_mujoco_does_not_reproduce_data(kalm_dataset):
    report = replay_dataset(kalm_dataset, ClevrConfig(compat_patches=False), episodes=list(range(20)))
    assert report.median_error > 1e-3


def test_built_in_self_check_passes():
    P.get_model()
    info = P.model_info()
    assert info["self_check_error"] < 1e-5  # measured 1.55e-7; unpatched it is 0.056
    # Without the compatibility patches the same check fails by centimetres.
    assert P.self_check(P.get_model(patch=False, patch_margin=False)) > 1e-3
