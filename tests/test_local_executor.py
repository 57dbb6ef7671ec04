"""The local executor's worker processes: results, thread share, and no third-party noise on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os
    from kalm_bench.builtin.executors import LocalExecutor

    def work(i):
        import gym  # noqa: F401 - d3rlpy imports it in every worker; it must not print its banner
        return i * i, os.environ["OMP_NUM_THREADS"]

    if __name__ == "__main__":
        out = sorted(LocalExecutor().map(work, range(4), jobs=2))
        print(out)
""")


def test_workers_return_results_and_stay_quiet(tmp_path):
    pytest.importorskip("gym")
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert proc.stdout.strip() == str([(i * i, threads) for i in range(4)])
    assert "Gym has been unmaintained" not in proc.stderr
