"""Every shipped suite validates against the installed plugins, and the results a header names exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITES = sorted((ROOT / "suites").glob("*.yaml"))


@pytest.mark.parametrize("suite", SUITES, ids=[p.stem for p in SUITES])
def test_shipped_suite_validates(suite, tmp_path):
    out = subprocess.run([sys.executable, "-m", "kalm_bench.cli", "validate", str(suite)], capture_output=True,
                         text=True, timeout=120, cwd=tmp_path, env={"KALM_BENCH_CACHE": str(tmp_path),
                                                                    "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok:")


@pytest.mark.parametrize("suite", SUITES, ids=[p.stem for p in SUITES])
def test_results_named_in_a_header_are_committed(suite):
    header = "".join(line for line in suite.read_text().splitlines(keepends=True) if line.startswith("#"))
    for name in re.findall(r"Results: (results/[\w.-]+)", header):
        assert (ROOT / name / "records.jsonl").is_file(), f"{suite.name} names {name}, which has no records"
