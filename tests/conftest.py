"""Shared fixtures. Core tests run against the test-only plugins in kb_testplugins.py, with entry-point
plugins switched off, so they check the harness and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))


@pytest.fixture
def core_env(monkeypatch, tmp_path):
    """Only the built-in and test plugins; a private cache. Also exported for subprocesses."""
    from kalm_bench.plugins import set_registry

    monkeypatch.setenv("KALM_BENCH_LOAD_PLUGINS", "")
    monkeypatch.setenv("KALM_BENCH_PLUGIN_MODULES", "kb_testplugins")
    monkeypatch.setenv("KALM_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("KALM_BENCH_STRICT_PLUGINS", raising=False)
    set_registry(None)
    yield tmp_path
    set_registry(None)


SUITE = """\
suite: line
version: 1
env: {name: line-world}
data: {episodes: 120, seed: 0}
encoder: {name: hash}
llm: {backend: scripted-llm, grounding_tasks: [scripted]}
rollouts: {counts: {rephrase: 40, far: 40}, for_level: {seen: rephrase}}
algorithms:
  - {name: tabular-bc, variants: [base, kalm]}
seeds: [0, 1]
train: {steps: 12, checkpoint_every: 4}
"""


@pytest.fixture
def suite_file(core_env):
    path = core_env / "suite.yaml"
    path.write_text(SUITE)
    return path


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (exit codes, stderr, no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "kalm_bench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
