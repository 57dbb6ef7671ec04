"""The ray executor runs a suite on a local 2-CPU Ray instance with the same records as the local one."""

from __future__ import annotations

import pytest

from kb_helpers import run_cli
from kalm_bench.records import load_records

pytest.importorskip("ray")


@pytest.mark.slow
def test_ray_executor_matches_local(core_env, suite_file, monkeypatch):
    env = {"KALM_BENCH_LOAD_PLUGINS": "ray"}
    proc = run_cli("run", str(suite_file), "-o", str(core_env / "ray"), "--executor", "ray", "--jobs", "2", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ray_recs = {r["run_id"]: r["success_rate"] for r in load_records(core_env / "ray")}
    assert len(ray_recs) == 12
    local = run_cli("run", str(suite_file), "-o", str(core_env / "local"),
                    env={**env, "KALM_BENCH_CACHE": str(core_env / "cache-local")}, check=True)
    assert "12 ok" in local.stdout
    assert {r["run_id"]: r["success_rate"] for r in load_records(core_env / "local")} == ray_recs
    # Resume through ray: nothing left to do.
    again = run_cli("run", str(suite_file), "-o", str(core_env / "ray"), "--executor", "ray", "--jobs", "2", env=env,
                    check=True)
    assert "12 already done" in again.stdout
