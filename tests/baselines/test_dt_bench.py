"""Throughput of the Decision Transformers: updates/s of the ``cpu`` preset vs d3rlpy's defaults (``paper``),
and this plugin's trajectory sampler vs d3rlpy's ``sample_trajectory_batch``.

Run the measurement with::

    OMP_NUM_THREADS=1 pytest tests/baselines/test_dt_bench.py --benchmark-enable \
        --benchmark-columns=median,ops,rounds --benchmark-sort=name

Updates are ``impl.update`` on batches sampled beforehand (sampling is measured on its own).
``calibration`` times the same plain torch MLP as the offline-RL benchmarks, so figures from a busy
machine can be told apart. With ``--benchmark-disable`` (CI) each function runs once with one or two
updates, as a smoke test.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from dt_helpers import synthetic

STATE, EMB = 10, 384  # CLEVR state ⊕ minilm embedding
KINDS = {"discrete-dt": ("discrete", 40), "dt": ("continuous", 4)}
# updates per benchmark round: d3rlpy's DiscreteDT defaults take seconds per update on a CPU
STEPS = {("discrete-dt", "cpu"): 40, ("discrete-dt", "paper"): 2, ("dt", "cpu"): 40, ("dt", "paper"): 5}


@pytest.fixture(scope="module")
def data():
    return {kind: synthetic(n_eps=200, length=50, state_dim=STATE, emb_dim=EMB, n_instr=80, kind=kind,
                            action_size=size, seed=1, vary=False)
            for kind, size in KINDS.values()}


@pytest.mark.parametrize("preset", ["cpu", "paper"])
@pytest.mark.parametrize("name", ["discrete-dt", "dt"])
def test_dt_bench_update(benchmark, registry, data, name, preset):
    from kalm_bench_plugins.baselines.dt_train import TrajectorySampler, build_algo

    kind, size = KINDS[name]
    cfg = registry.get("algorithms", name).make_config(preset)
    algo = build_algo(cfg)
    algo.create_impl((STATE + EMB,), size)
    sampler = TrajectorySampler([(data[kind], cfg.batch_size)], kind, cfg.context_size, seed=0, return_scale=10.0)
    steps = 1 if benchmark.disabled else STEPS[(name, preset)]
    batches = [sampler.sample() for _ in range(steps)]
    losses: list[float] = []

    def run():
        for b in batches:
            losses.append(algo.impl.update(b, 0)["loss"])

    benchmark.group = f"{name} update"
    benchmark.extra_info.update(updates_per_round=steps, batch_size=cfg.batch_size, context=cfg.context_size,
                                layers=cfg.num_layers, heads=cfg.num_heads, embed=cfg.hidden_units[-1],
                                threads=torch.get_num_threads(),
                                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert losses and np.isfinite(losses).all()


@pytest.mark.parametrize("path", ["kalm-bench", "d3rlpy"])
def test_dt_bench_sampling(benchmark, data, path):
    """Batch 64 × context 10 from 10k transitions (obs 394)."""
    import d3rlpy

    from kalm_bench_plugins.baselines.dt_train import TrajectorySampler

    td = data["discrete"]
    n = 3 if benchmark.disabled else 50
    if path == "kalm-bench":
        sampler = TrajectorySampler([(td, 64)], "discrete", 10, seed=0)

        def run():
            for _ in range(n):
                out = sampler.sample()
            return out.observations.shape
    else:
        ds = d3rlpy.dataset.MDPDataset(observations=td.observations, actions=td.actions, rewards=td.rewards,
                                       terminals=td.terminals, timeouts=td.timeouts,
                                       action_space=d3rlpy.ActionSpace.DISCRETE, action_size=40)

        def run():
            for _ in range(n):
                out = ds.sample_trajectory_batch(64, 10)
            return out.observations.shape

    benchmark.group = "trajectory sampling"
    benchmark.extra_info.update(batches_per_round=n)
    shape = benchmark.pedantic(run, rounds=1 if benchmark.disabled else 3, iterations=1)
    assert tuple(shape) == (64, 10, STATE + EMB)


def test_dt_bench_calibration(benchmark):
    """A fixed torch workload (DiscreteBC-sized MLP, batch 256), as in tests/offline_rl: CPU busyness."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(STATE + EMB, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 40))
    opt = torch.optim.Adam(net.parameters())
    x = torch.randn(256, STATE + EMB)
    steps = 3 if benchmark.disabled else 200

    def run():
        for _ in range(steps):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()

    benchmark.group = "calibration"
    benchmark.extra_info.update(updates_per_round=steps, threads=torch.get_num_threads())
    benchmark.pedantic(run, rounds=3, iterations=1)
    assert np.isfinite(net(x).detach().numpy()).all()
