"""Scripted experts reach the goals; the oracle agrees with the simulator on all task kinds."""

import numpy as np
import pytest

from kalm_bench_plugins.metaworld import tasks
from kalm_bench_plugins.metaworld.data import check_scripted, scripted_rollout
from kalm_bench_plugins.metaworld.oracle import TCP_OFFSET, label


@pytest.mark.slow
def test_scripted_experts_succeed_on_every_task():
    # 4 seeded episodes per task (the full figures come from `kalm-bench metaworld check -n 100`)
    rows = check_scripted(list(tasks.ALL_TASKS), episodes=4, seed=0)
    by_task = {r["task"]: r for r in rows}
    assert set(by_task) == set(tasks.ALL_TASKS)
    total = sum(r["successes"] for r in rows) / sum(r["episodes"] for r in rows)
    # measured 87/88 = 0.99: 4/4 on every task but door-open (3/4). Contact physics can tip a noisy expert's
    # borderline episode the other way on another CPU, so the bars leave 12 episodes overall and 1-2 per task
    assert total >= 0.85
    for task, r in by_task.items():
        assert r["successes"] >= 2, (task, r)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["make-coffee", "locked-door-open"])
def test_composite_tasks_are_solved_by_our_policies_and_need_both_stages(mw_env, task):
    env = mw_env.make("hard", distractor=False)
    wins = 0
    for i in range(8):
        res = scripted_rollout(env, task, np.random.default_rng([9, i]))
        wins += res.success
        rewards, end, success = label(task, res.states)  # the oracle sees the same staged success
        assert success == res.success and (not success or end == len(res.actions))
    assert wins >= 6  # measured 8/8 for both tasks; 2 episodes of room for CPU-dependent contact physics
    # doing only the first stage's skill is not enough
    first = "coffee-push" if task == "make-coffee" else "door-unlock"
    from kalm_bench_plugins.metaworld.policies import scripted_policy

    stage1 = scripted_policy(first)
    env.reset(seed=0, options={"task": task, "instruction": "x"})
    stages = set()
    for _ in range(100):
        _, _, term, _, info = env.step(stage1(env.last_obs39))
        stages.add(info["stage"])
        assert not term
    assert 1 in stages  # the first stage was completed, yet no success


def test_locked_door_does_not_open_before_unlocking(mw_env):
    import mujoco

    env = mw_env.make("hard", distractor=False)
    env.reset(seed=0, options={"task": "locked-door-open", "instruction": "x"})
    mw = env.simulator("locked-door-open")
    dof = mw.model.joint("doorjoint").dofadr.item()
    for _ in range(30):
        mw.data.qfrc_applied[dof] = -2.0  # pull the door hard while it is locked
        env.step(np.zeros(4))
    assert mw.door_angle() > -0.01
    mw.data.qpos[mw.model.joint("lockjoint").qposadr.item()] = 0.0  # unlocked lever
    mujoco.mj_forward(mw.model, mw.data)
    for _ in range(30):
        mw.data.qfrc_applied[dof] = -2.0
        env.step(np.zeros(4))
    assert mw.door_angle() < -0.2
    from kalm_bench_plugins.metaworld import oracle, sim

    assert oracle.OPEN_ANGLE == sim.OPEN_ANGLE


@pytest.mark.slow
def test_oracle_matches_simulator_success_on_all_tasks(mw_env):
    for level in ("easy", "hard"):
        env = mw_env.make(level, distractor=False)
        for k, task in enumerate(tasks.LEVEL_TASKS[level]):
            for i in range(2):
                res = scripted_rollout(env, task, np.random.default_rng([k, i]), noise=0.05)
                rewards, end, success = label(task, res.states)
                if task == "reach-wall":
                    dist = np.linalg.norm(res.states[-1, 0:3] + TCP_OFFSET - res.states[-1, 4:7])
                    assert (dist <= 0.054) == res.success
                    continue
                assert success == res.success, (task, i)
                if success:
                    assert end == len(res.actions), (task, i)
        env.close()


@pytest.mark.slow
def test_harness_evaluation_with_the_expert_policy(mw_env):
    from kalm_bench_plugins.metaworld.environment import expert_policy

    cases = mw_env.test_cases("rephrase", n=20, seed=0)
    result = mw_env.evaluate(expert_policy(mw_env, "rephrase"), "rephrase", cases, seed=0)
    # measured 19/20 = 0.95, but three successes come at steps 93-96 of 100: the bar (14/20) leaves room for
    # those and two more to run out of time on another CPU's physics; uniform random actions score 0/20
    assert result.success.shape == (20,) and result.success_rate >= 0.7
    assert (result.lengths[result.success] < 100).all()
    # shaped rewards telescope: return = dense reward before the last step (>= 0) + 10 for success
    assert (result.returns[result.success] >= 10.0).all()
