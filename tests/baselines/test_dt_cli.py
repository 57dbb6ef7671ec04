"""Decision Transformer through the real command line: a tiny CLEVR-Robot suite with DT next to BC."""

from __future__ import annotations

import os

import pytest

from dt_helpers import run_cli
from kalm_bench.records import load_records

SUITE = """\
suite: dt-tiny
version: 1
env: {name: clevr-robot, levels: [seen, rephrase]}
data: {episodes: 60, seed: 0}
encoder: {name: minilm}
algorithms:
  - {name: discrete-bc, label: BC}
  - {name: discrete-dt, label: DT, config: {context_size: 4, batch_size: 16}}
seeds: [0]
train: {steps: 30, checkpoint_every: 15}
eval: {episodes: 8, last_k: 2}
"""


@pytest.mark.slow
def test_suite_with_discrete_dt_runs_end_to_end(registry, tmp_path):
    if "clevr-robot" not in registry.names("envs"):
        pytest.skip("the clevr-robot environment plugin is not installed")
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    env = {"KALM_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "KALM_BENCH_PLUGIN_MODULES": os.environ.get("KALM_BENCH_PLUGIN_MODULES", "")}
    run_cli("validate", str(suite), env=env, check=True)
    out = tmp_path / "results"
    proc = run_cli("run", str(suite), "-o", str(out), env=env, check=True)
    records = load_records(out)
    dt = [r for r in records if r["algorithm_name"] == "discrete-dt"]
    assert len(dt) == 2 and {r["level"] for r in dt} == {"seen", "rephrase"}, records
    for r in dt:
        assert r["status"] == "ok" and r["algorithm"] == "DT" and r["train_steps"] == 30
        assert 0.0 <= r["success_rate"] <= 1.0 and r["n_eval_episodes"] == 8
    report = run_cli("report", str(out), env=env, check=True)
    assert "DT" in report.stdout and "BC" in report.stdout, proc.stdout + report.stdout
