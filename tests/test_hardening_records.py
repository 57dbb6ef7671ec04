"""Malformed run records: `report` and `export` stop with one line naming the file and the field."""

from __future__ import annotations

import json

import pytest

from kb_helpers import run_cli

GOOD = {"run_id": "r1", "suite": "s", "env": "e", "level": "seen", "algorithm": "BC", "seed": 0, "status": "ok",
        "success_rate": 0.5}


@pytest.mark.parametrize("record, field", [
    ([1, 2], "not an object"),
    ({**GOOD, "seed": "zero"}, "seed"),
    ({**GOOD, "status": "maybe"}, "status"),
    ({k: v for k, v in GOOD.items() if k != "env"}, "env"),
    ({**GOOD, "success_rate": None}, "success_rate is missing"),
    ({**GOOD, "curve": [{"step": "a", "success_rate": 0.1}]}, "curve.0.step"),
    ({**GOOD, "data_keys": {"train": 3}}, "data_keys.train"),
])
def test_a_malformed_record_is_one_line(core_env, tmp_path, record, field):
    results = tmp_path / "res"
    (results / "records").mkdir(parents=True)
    (results / "records" / "r1.json").write_text(json.dumps(record))
    for args in (["report", str(results)], ["export", str(results)]):
        got = run_cli(*args)
        assert got.returncode == 2 and "Traceback" not in got.stderr
        [line] = got.stderr.strip().splitlines()
        assert "r1.json" in line and field in line, line
    lines = tmp_path / "records.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n" + json.dumps(record) + "\n")
    got = run_cli("report", str(lines))
    assert got.returncode == 2 and "records.jsonl (line 2)" in got.stderr and field in got.stderr


def test_a_record_that_is_not_utf8_is_one_line(core_env, tmp_path):
    results = tmp_path / "res"
    (results / "records").mkdir(parents=True)
    (results / "records" / "r1.json").write_bytes(b"\xff\xfe{\x00")
    got = run_cli("report", str(results))
    assert got.returncode == 2 and "Traceback" not in got.stderr and "r1.json" in got.stderr
