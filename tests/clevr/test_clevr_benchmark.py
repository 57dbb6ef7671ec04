"""Speed of the env against a bare ``mujoco.mj_step`` loop doing the same physics work.

``pytest tests/clevr/test_benchmark.py --benchmark-enable`` reports both: env steps (one step = one push =
40 ``mj_step`` calls, with the teleport, goal check, reward and info) and the bare loop, which replays
the very states the env pushed from (``qpos``/``qvel``/``ctrl`` written, then ``mj_step(nstep=40)``).
The ratio of the two medians is the env's efficiency. In CI (benchmarks disabled) each runs once.
"""

import time

import mujoco
import numpy as np

from kalm_bench_plugins.clevr import physics as P
from kalm_bench_plugins.clevr.plugin import ClevrRobot

N_STEPS = 200
GOAL = {"type": "pair", "src": 0, "dst": 1, "dir": "left"}


def _workload():
    rng = np.random.default_rng(0)
    return [P.sample_scene(rng) for _ in range(N_STEPS // 50)], rng.integers(0, 40, N_STEPS)


def _push_states(scenes, actions):
    """The (qpos, qvel, ctrl) each of the env's pushes starts its 40 physics steps from."""
    sim = P.ClevrSim()
    out = []
    for i, a in enumerate(actions):
        if i % 50 == 0:
            sim.reset(scenes[i // 50])
        sim.prepare_push(int(a))
        out.append((sim.data.qpos.copy(), sim.data.qvel.copy(), sim.data.ctrl.copy()))
        mujoco.mj_step(sim.model, sim.data, nstep=P.PUSH_SUBSTEPS)
        sim.finish_push()
    return out


def test_bench_env_steps(benchmark):
    scenes, actions = _workload()
    env = ClevrRobot().make("seen")

    def env_loop():
        for i, a in enumerate(actions):
            if i % 50 == 0:
                env.reset(options={"goal": GOAL, "initial_state": scenes[i // 50], "instruction": ""})
            env.step(int(a))
        return env.state

    out = benchmark(env_loop)
    assert out.shape == (10,) and np.all(np.isfinite(out))
    benchmark.extra_info["env_steps"] = N_STEPS
    benchmark.extra_info["mj_steps_per_env_step"] = P.PUSH_SUBSTEPS
    if not getattr(benchmark, "disabled", True):
        # The ratio needs both loops timed under the same conditions: time the bare loop right here.
        bare = _bare_runner(_push_states(scenes, actions))
        times = []
        for _ in range(max(3, len(benchmark.stats.stats.data))):
            t = time.perf_counter()
            bare()
            times.append(time.perf_counter() - t)
        env_s = benchmark.stats.stats.median
        bare_s = float(np.median(times))
        benchmark.extra_info["env_steps_per_s"] = round(N_STEPS / env_s, 1)
        benchmark.extra_info["bare_mj_step_env_steps_per_s"] = round(N_STEPS / bare_s, 1)
        benchmark.extra_info["env_speed_over_bare"] = round(bare_s / env_s, 3)
        print(f"\nCLEVR env: {N_STEPS / env_s:.0f} steps/s; bare mj_step loop: {N_STEPS / bare_s:.0f} "
              f"steps/s; ratio {bare_s / env_s:.2f}")


def _bare_runner(states):
    model = P.get_model()
    data = mujoco.MjData(model)

    def bare_loop():
        for qpos, qvel, ctrl in states:
            data.qpos[:] = qpos
            data.qvel[:] = qvel
            data.ctrl[:] = ctrl
            mujoco.mj_step(model, data, nstep=P.PUSH_SUBSTEPS)
        return data.qpos.copy()

    return bare_loop


def test_bench_bare_mj_step(benchmark):
    scenes, actions = _workload()
    out = benchmark(_bare_runner(_push_states(scenes, actions)))
    assert np.all(np.isfinite(out))
    benchmark.extra_info["env_steps"] = N_STEPS
