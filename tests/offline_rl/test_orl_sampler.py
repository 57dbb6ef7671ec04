"""The fast sampler yields exactly d3rlpy's mini-batches, and updates through it equal ``algo.update``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from orl_helpers import synthetic

from kalm_bench_plugins.d3rlpy_layer import split_batch
from kalm_bench_plugins.offline_rl.sampler import TransitionSampler


def _d3rlpy_dataset(data, kind, action_size):
    import d3rlpy

    space = d3rlpy.ActionSpace.DISCRETE if kind == "discrete" else d3rlpy.ActionSpace.CONTINUOUS
    return d3rlpy.dataset.MDPDataset(observations=data.observations, actions=data.actions, rewards=data.rewards,
                                     terminals=data.terminals, timeouts=data.timeouts, action_space=space,
                                     action_size=action_size)


def _shared_rows(data, dataset, rng, n):
    """Random (row, episode, index) triples that d3rlpy also keeps (it drops the last step of a time-out)."""
    starts = data.episode_starts
    rows = []
    while len(rows) < n:
        e = int(rng.integers(len(starts)))
        ep = dataset.episodes[e]
        j = int(rng.integers(ep.transition_count))
        rows.append((int(starts[e]) + j, e, j))
    return rows


@pytest.mark.parametrize("kind,size", [("discrete", 5), ("continuous", 3)])
def test_batches_equal_d3rlpy_transition_picker(kind, size):
    from d3rlpy.dataset import BasicTransitionPicker, TransitionMiniBatch

    data = synthetic(kind=kind, action_size=size)
    dataset = _d3rlpy_dataset(data, kind, size)
    rows = _shared_rows(data, dataset, np.random.default_rng(0), 64)
    # include every episode end, where terminals, zero next observations and next_actions matter
    for e, ep in enumerate(dataset.episodes):
        rows.append((int(data.episode_starts[e]) + ep.transition_count - 1, e, ep.transition_count - 1))
    picker = BasicTransitionPicker()
    ref = TransitionMiniBatch.from_transitions([picker(dataset.episodes[e], j) for _, e, j in rows])
    ours = TransitionSampler([(data, 8)], kind, seed=0).gather(np.array([r for r, _, _ in rows]))
    for field in ("observations", "actions", "rewards", "next_observations", "next_actions", "terminals",
                  "intervals"):
        np.testing.assert_array_equal(getattr(ours, field).numpy(), getattr(ref, field), err_msg=field)


def test_timeout_ends_are_kept_and_bootstrap():
    data = synthetic()
    s = TransitionSampler([(data, 4)], "discrete", seed=0)
    last_timeout = int(np.flatnonzero(data.timeouts)[0])
    b = s.gather(np.array([last_timeout]))
    assert b.terminals.item() == 0.0
    np.testing.assert_array_equal(b.next_observations.numpy()[0, :6], data.next_states[last_timeout])
    s2 = TransitionSampler([(data, 4)], "discrete", seed=0, timeouts_as_terminals=True)
    b2 = s2.gather(np.array([last_timeout]))
    assert b2.terminals.item() == 1.0 and not b2.next_observations.any()


def test_gamma_bug_sets_intervals_to_terminals():
    data = synthetic()
    ends = np.flatnonzero(data.terminals)
    idx = np.concatenate([ends[:3], ends[:3] - 1])
    ok = TransitionSampler([(data, 4)], "discrete", seed=0).gather(idx)
    bug = TransitionSampler([(data, 4)], "discrete", seed=0, gamma_one_bug=True).gather(idx)
    assert ok.intervals.eq(1).all()
    np.testing.assert_array_equal(bug.intervals.numpy().ravel(), [1, 1, 1, 0, 0, 0])


def test_mixing_draws_fixed_shares_from_each_source_reproducibly():
    real, imag = synthetic(n_eps=30, seed=1), synthetic(n_eps=10, seed=2)
    n_real, n_imag = split_batch(32, 0.5, True)
    assert (n_real, n_imag) == (16, 16)
    assert split_batch(32, 0.5, False) == (32, 0)
    assert split_batch(100, 0.25, True) == (75, 25)
    s = TransitionSampler([(real, n_real), (imag, n_imag)], "discrete", seed=3)
    for _ in range(20):
        idx = s.sample_indices()
        assert len(idx) == 32
        assert (idx[:16] < len(real)).all() and (idx[16:] >= len(real)).all()
    # imaginary rows carry their own embeddings
    b = s.gather(np.array([len(real)]))
    np.testing.assert_array_equal(b.observations.numpy()[0, 6:], imag.embeddings[imag.instruction_ids[0]])
    again = TransitionSampler([(real, n_real), (imag, n_imag)], "discrete", seed=3)
    other = TransitionSampler([(real, n_real), (imag, n_imag)], "discrete", seed=4)
    first = [again.sample_indices() for _ in range(3)]
    s2 = TransitionSampler([(real, n_real), (imag, n_imag)], "discrete", seed=3)
    assert all((a == b).all() for a, b in zip(first, [s2.sample_indices() for _ in range(3)]))
    assert not (first[0] == other.sample_indices()).all()


def test_inconsistent_data_is_rejected():
    data = synthetic()
    data.instruction_ids[0] = 99
    with pytest.raises(ValueError, match="instruction_ids point outside the embedding table"):
        TransitionSampler([(data, 4)], "discrete", seed=0)
    a, b = synthetic(), synthetic(emb_dim=4)
    with pytest.raises(ValueError, match="different state or embedding sizes"):
        TransitionSampler([(a, 4), (b, 4)], "discrete", seed=0)


@pytest.mark.parametrize("name,kind,size", [("discrete-bc", "discrete", 5), ("discrete-cql", "discrete", 5),
                                            ("bc", "continuous", 3), ("td3+bc", "continuous", 3),
                                            ("iql", "continuous", 3), ("awac", "continuous", 3),
                                            ("cql", "continuous", 3)])
def test_update_through_the_sampler_equals_d3rlpy_update(name, kind, size):
    """Same initial weights + same transitions → bitwise the same weights as d3rlpy's own update()."""
    import d3rlpy
    from d3rlpy.dataset import BasicTransitionPicker, TransitionMiniBatch

    from kalm_bench.plugins import build_registry
    from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config
    from kalm_bench_plugins.offline_rl.trainer import update

    cls = build_registry().get("algorithms", name)
    cfg = cls.make_config(overrides={"batch_size": 16, "hidden_units": [32, 32]})
    data = synthetic(kind=kind, action_size=size)
    dataset = _d3rlpy_dataset(data, kind, size)
    sampler = TransitionSampler([(data, 16)], kind, seed=0)
    algos = []
    for _ in range(2):
        d3rlpy.seed(5)
        algo = build_d3rlpy_config(cfg).create(device="cpu:0")
        algo.create_impl((data.observation_dim,), size)
        algos.append(algo)
    ref, ours = algos
    rng = np.random.default_rng(1)
    picker = BasicTransitionPicker()
    for step in range(4):
        rows = _shared_rows(data, dataset, rng, 16)
        torch.manual_seed(100 + step)  # stochastic parts (policy samples, target noise) see the same stream
        loss_ref = ref.update(TransitionMiniBatch.from_transitions([picker(dataset.episodes[e], j)
                                                                    for _, e, j in rows]))
        torch.manual_seed(100 + step)
        loss_ours = update(ours, sampler.gather(np.array([r for r, _, _ in rows])))
        assert loss_ref == loss_ours
    assert ref.grad_step == ours.grad_step == 4
    a = ref.impl.modules.get_torch_modules()
    b = ours.impl.modules.get_torch_modules()
    for k in a:
        for (n1, p1), (n2, p2) in zip(a[k].state_dict().items(), b[k].state_dict().items()):
            assert n1 == n2 and torch.equal(p1, p2), (k, n1)
