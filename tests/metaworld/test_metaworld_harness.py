"""Meta-world end to end through the harness: scripted data → continuous offline RL (bc, td3+bc from the
offline_rl plugin) → batched evaluation → records and table."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SUITE = """\
suite: mw-e2e
env: {name: metaworld, levels: [seen, easy]}
data: {episodes: 20, seed: 0}
encoder: {name: minilm}
algorithms:
  - {name: bc, label: BC}
  - {name: td3+bc, label: TD3+BC, config: {batch_size: 64}}
seeds: [0]
train: {steps: 60, checkpoint_every: 30}
eval: {episodes: 8, last_k: 2, seed: 0}
"""


@pytest.mark.slow
def test_continuous_algorithms_train_and_evaluate_on_metaworld(tmp_path):
    suite = tmp_path / "mw.yaml"
    suite.write_text(SUITE)
    env = {**os.environ, "KALM_BENCH_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "kalm_bench.cli", "run", str(suite), "-o", str(tmp_path / "res")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "res" / "records.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    for r in records:
        assert r["n_eval_episodes"] == 8 and len(r["curve"]) == 2
        assert r["algorithm_config"]["type"] in ("bc", "td3+bc")
        assert 0.0 <= r["success_rate"] <= 1.0
        assert r["train_log"], "training losses are recorded"
    assert "| TD3+BC" in proc.stdout and "| BC" in proc.stdout
