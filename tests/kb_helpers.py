"""Helpers shared by the core tests (a plain module: several test folders have their own conftest.py,
so importing names from ``conftest`` would pick whichever one was imported first)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

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


def run_cli(*args: str, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (exit codes, stderr, no traceback)."""
    proc = subprocess.run([sys.executable, "-m", "kalm_bench.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
