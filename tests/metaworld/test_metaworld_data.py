"""Offline data: scripted generation, KALM import, oracle labels, consumption by d3rlpy."""

import json

import numpy as np
import pytest

from kalm_bench.datasets import TrajectoryDataset
from kalm_bench.errors import UserError
from kalm_bench_plugins.metaworld import tasks
from kalm_bench_plugins.metaworld.data import import_kalm_npy
from kalm_bench_plugins.metaworld.oracle import label, success_flags



def test_generated_dataset_format(small_dataset, tmp_path):
    ds = small_dataset
    assert ds.env == "metaworld" and ds.action_kind == "continuous" and ds.action_size == 4
    assert ds.n_episodes == 20 and ds.state_dim == 91
    assert set(ds.levels) == {"seen"}
    goal_tasks = [json.loads(g)["task"] for g in ds.goals]
    assert goal_tasks == [tasks.SEEN_TASKS[i % 10] for i in range(20)]
    assert np.abs(ds.actions).max() <= 1.0
    for ep in ds.episodes():
        assert ep.instruction.strip()
        if ep.success:
            assert ep.rewards[-1] == 10.0
        assert len(ep.actions) <= 100
    assert ds.success.mean() >= 0.8  # noisy scripted experts
    ds.save(tmp_path / "d")
    back = TrajectoryDataset.load(tmp_path / "d")
    np.testing.assert_array_equal(back.states, ds.states)


def test_generation_is_deterministic_per_seed(mw_env, small_dataset):
    again = mw_env.generate_dataset(20, seed=3)
    np.testing.assert_array_equal(again.actions, small_dataset.actions)
    np.testing.assert_array_equal(again.instructions, small_dataset.instructions)
    other = mw_env.generate_dataset(2, seed=4)
    assert not np.array_equal(other.states[:5], small_dataset.states[:5])
    with pytest.raises(UserError, match="unknown dataset option"):
        mw_env.generate_dataset(1, seed=0, nosie=0.2)


def test_oracle_agrees_with_the_simulator_on_generated_data(small_dataset, mw_env):
    from kalm_bench_plugins.metaworld.oracle import TCP_OFFSET

    for i, ep in enumerate(small_dataset.episodes()):
        labels = mw_env.label_rollout("seen", {"task": ep.goal["task"]}, ep.states, ep.actions)
        if ep.goal["task"] == "reach":  # the pad centre is approximated (documented): ~3 mm slack
            dist = np.linalg.norm(ep.states[-1, 0:3] + TCP_OFFSET - ep.states[-1, 4:7])
            assert (dist <= 0.054) == ep.success
            continue
        assert labels.success == ep.success, (i, ep.goal["task"])
        if ep.success:
            assert labels.end == len(ep.actions) and labels.rewards[-1] == 10.0


def test_import_kalm_meta_world_npy(kalm_meta_world_npy):
    with pytest.raises(UserError, match="--trust-pickle"):
        import_kalm_npy(kalm_meta_world_npy)
    ds = import_kalm_npy(kalm_meta_world_npy, trust_pickle=True)
    assert ds.n_episodes == 10 and ds.state_dim == 91
    assert list(ds.lengths) == [31, 35, 43, 40, 29, 69, 61, 44, 36, 28]
    assert [json.loads(g)["task"] for g in ds.goals] == list(tasks.SEEN_TASKS)
    assert all(len(json.loads(g)["instructions"]) == 20 for g in ds.goals)
    # the oracle, written against v3, finds success exactly at the end of KALM's (v2) demonstrations
    for ep in ds.episodes():
        rewards, end, success = label(ep.goal["task"], ep.states)
        assert success and end == len(ep.actions), ep.goal["task"]
        assert not success_flags(ep.goal["task"], ep.states)[:-1].any()


def test_import_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError) as err:
        import_kalm_npy(bad, trust_pickle=True)
    assert err.value.file == bad
    partial = tmp_path / "partial.npy"
    np.save(partial, np.array({"observations": np.zeros((1, 5, 91))}, dtype=object), allow_pickle=True)
    with pytest.raises(UserError) as err:
        import_kalm_npy(partial, trust_pickle=True)
    assert err.value.field == "next_observations"
    shape = tmp_path / "shape.npy"
    d = {k: np.zeros((1, 5, 91)) for k in ("observations", "next_observations")}
    d.update(actions=np.zeros((1, 5, 3)), rewards=np.zeros((1, 5, 1)), masks=np.ones((1, 5, 1)),
             is_successes=np.ones((1, 1)), env_names=np.array(["reach"]), instructions=np.array([["go."]]))
    np.save(shape, np.array(d, dtype=object), allow_pickle=True)
    with pytest.raises(UserError) as err:
        import_kalm_npy(shape, trust_pickle=True)
    assert err.value.field == "actions"
    d["actions"] = np.zeros((1, 5, 4))
    np.save(shape, np.array(d, dtype=object), allow_pickle=True)
    ds = import_kalm_npy(shape, trust_pickle=True)
    assert ds.n_episodes == 1 and ds.lengths[0] == 5 and ds.instructions[0] == "go."


def test_label_rollout_checks_shapes(mw_env):
    with pytest.raises(ValueError, match="shape"):
        mw_env.label_rollout("seen", {"task": "reach"}, np.zeros((3, 90)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="actions"):
        mw_env.label_rollout("seen", {"task": "reach"}, np.zeros((3, 91)), np.zeros((3, 4)))
    states = np.zeros((4, 91))
    states[:, 6] = 1.0  # goal 1 m above the hand
    labels = mw_env.label_rollout("seen", {"task": "reach"}, states, np.zeros((3, 4)))
    assert labels.end == 3 and not labels.success and labels.rewards.shape == (3,)
    states[2:, 6] = 0.0  # reached at the second transition
    labels = mw_env.label_rollout("seen", {"task": "reach"}, states, np.zeros((3, 4)))
    assert labels.end == 2 and labels.success and list(labels.rewards) == [0.0, 10.0]


@pytest.mark.slow
def test_d3rlpy_bc_trains_on_generated_data(small_dataset):
    import d3rlpy
    import torch

    torch.set_num_threads(1)
    ds = small_dataset
    instruction_vec = np.linspace(-1, 1, 8, dtype=np.float32)  # a fixed stand-in embedding
    obs = np.concatenate([ds.states, np.tile(instruction_vec, (ds.n_transitions, 1))], axis=1)
    terminals, timeouts = ds.end_flags()
    mdp = d3rlpy.dataset.MDPDataset(observations=obs, actions=ds.actions, rewards=ds.rewards,
                                    terminals=terminals, timeouts=timeouts,
                                    action_space=d3rlpy.constants.ActionSpace.CONTINUOUS)
    assert mdp.size() == ds.n_episodes
    bc = d3rlpy.algos.BCConfig(batch_size=64).create(device="cpu:0")
    bc.build_with_dataset(mdp)
    before = np.mean((bc.predict(obs[:256]) - ds.actions[:256]) ** 2)
    metrics = bc.fit(mdp, n_steps=300, n_steps_per_epoch=300, show_progress=False, save_interval=10**9,
                     experiment_name="mw-bc-test", with_timestamp=False,
                     logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    loss = metrics[-1][1]["loss"]
    after = np.mean((bc.predict(obs[:256]) - ds.actions[:256]) ** 2)
    # measured MSE 0.33 -> 0.15 (AVX2 kernels: 0.29 -> 0.14); always acting 0 gives 0.31
    assert np.isfinite(loss) and after < 0.7 * before
    assert bc.predict(obs[:3]).shape == (3, 4)


def test_generation_speed(benchmark, mw_env):
    calls = []
    ds = benchmark.pedantic(mw_env.generate_dataset, args=(10, 0), kwargs={"progress": lambda d, t: calls.append(d)},
                            rounds=1, iterations=1)
    assert ds.n_episodes == 10 and calls[-1] == 10
