"""Throughput: gradient updates per second through the harness vs a bare d3rlpy ``fit()`` on the same data.

Run the comparison with::

    OMP_NUM_THREADS=1 pytest tests/offline_rl/test_bench_offline_rl.py --benchmark-enable \
        --benchmark-json=/tmp/orl-bench.json
    python tests/offline_rl/bench_table.py /tmp/orl-bench.json

Each of 5 rounds (after one warm-up round) trains ``steps`` updates: the harness path is ``Algorithm.train``
with its sampler and one checkpoint snapshot at the end; the d3rlpy path is ``algo.fit`` with a no-op
logger. ``calibration`` times a plain torch MLP so figures from a busy machine can be told apart. With
``--benchmark-disable`` (CI) every function runs once with a handful of steps, as a smoke test of both
paths.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from orl_helpers import synthetic

from kalm_bench.api import TrainContext
from kalm_bench.plugins import build_registry

# Updates per benchmark round: a few seconds each, so per-round set-up (both paths build the algorithm and
# index the data every round) and a busy neighbour's bursts weigh little.
# "name@preset" benchmarks another preset than `paper` (discrete-cql@cpu: what suites/clevr.yaml trains).
STEPS = {"discrete-bc": 600, "discrete-cql": 600, "discrete-cql@cpu": 300, "bc": 600, "td3+bc": 200, "awac": 60,
         "iql": 200, "cql": 100}
ROUNDS = 5
KIND = {"discrete-bc": "discrete", "discrete-cql": "discrete"}


def _config(key: str):
    """The algorithm class and config a STEPS key names."""
    name, _, preset = key.partition("@")
    cls = build_registry().get("algorithms", name)
    return cls, cls.make_config(preset or None), KIND.get(name, "continuous")


STATE, EMB = 10, 384  # CLEVR state ⊕ minilm embedding


@pytest.fixture(scope="module")
def data():
    return make_data()


def make_data():
    """Per action kind: (TransitionData, the equivalent d3rlpy MDPDataset, action size)."""
    import d3rlpy

    out = {}
    for kind, size in (("discrete", 40), ("continuous", 4)):
        td = synthetic(n_eps=400, length=50, state_dim=STATE, emb_dim=EMB, n_instr=80, kind=kind,
                       action_size=size, seed=1)
        space = d3rlpy.ActionSpace.DISCRETE if kind == "discrete" else d3rlpy.ActionSpace.CONTINUOUS
        ds = d3rlpy.dataset.MDPDataset(observations=td.observations, actions=td.actions, rewards=td.rewards,
                                       terminals=td.terminals, timeouts=td.timeouts, action_space=space,
                                       action_size=size)
        out[kind] = (td, ds, size)
    # d3rlpy/torch initialise lazily on the first create_impl (seconds): keep that out of every round
    d3rlpy.algos.TD3PlusBCConfig().create(device="cpu:0").create_impl((STATE + EMB,), 4)
    return out


def _steps(benchmark, name: str) -> int:
    return 3 if benchmark.disabled else STEPS[name]


def _harness_run(name, data, tmp_path, steps, saved):
    cls, config, kind = _config(name)
    algo = cls(config)
    td, _, size = data[kind]

    def run():
        ctx = TrainContext(config=algo.config, seed=0, real=td, imaginary=None, imaginary_fraction=0.5,
                           steps=steps, checkpoint_every=steps, action_kind=kind,
                           action_size=size, workdir=Path(tmp_path), save_checkpoint=lambda s, p: saved.append(s))
        algo.train(ctx)

    return run


def _fit_run(name, data, steps, saved, split=None):
    from d3rlpy.logging import NoopAdapterFactory

    from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config

    _, config, kind = _config(name)
    cfg = build_d3rlpy_config(config)
    _, ds, _ = data[kind]

    def run():
        algo = cfg.create(device="cpu:0")
        epochs = algo.fit(ds, n_steps=steps, n_steps_per_epoch=steps, logger_adapter=NoopAdapterFactory(),
                          show_progress=False, save_interval=10**9)
        saved.append(algo.grad_step)
        if split is not None:  # fit()'s own per-step means: the harness can only save the sampling part
            metrics = epochs[-1][1]
            split.update(fit_sample_ms=1000 * metrics["time_sample_batch"],
                         fit_update_ms=1000 * metrics["time_algorithm_update"])

    return run


# Both paths of one algorithm run back to back, so a change in the machine's load hits them alike.
@pytest.mark.parametrize("name,path", [(n, p) for n in STEPS for p in ("harness", "d3rlpy-fit")])
def test_bench_updates(benchmark, data, name, path, tmp_path):
    steps = _steps(benchmark, name)
    saved: list[int] = []
    split: dict[str, float] = {}
    run = (_harness_run(name, data, tmp_path, steps, saved) if path == "harness"
           else _fit_run(name, data, steps, saved, split))
    benchmark.group = name
    benchmark.extra_info.update(updates_per_round=steps, path=path)
    benchmark.pedantic(run, rounds=ROUNDS, iterations=1, warmup_rounds=0 if benchmark.disabled else 1)
    assert saved and saved[-1] == steps
    if path == "d3rlpy-fit":
        assert split["fit_sample_ms"] > 0 and split["fit_update_ms"] > 0
        benchmark.extra_info.update(split)


def test_bench_calibration(benchmark):
    """A fixed torch workload (DiscreteBC-sized MLP, batch 256): its rate says how busy the CPU was."""
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
    benchmark.extra_info.update(updates_per_round=steps, path="torch-mlp", threads=torch.get_num_threads(),
                                started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    benchmark.pedantic(run, rounds=3, iterations=1)
    assert np.isfinite(net(x).detach().numpy()).all()
