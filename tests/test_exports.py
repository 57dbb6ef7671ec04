"""Machine-readable exports (tidy CSV per table, JSON), plain LaTeX, and the figures' layout."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from kb_helpers import run_cli
from test_stats_report import RECORDS

from kalm_bench.report import gain_tables, success_tables


def _records_file(tmp_path, records=RECORDS):
    path = tmp_path / "records.jsonl"
    path.write_text("".join(json.dumps({"suite": "t", "env": "e", **r}) + "\n" for r in records))
    return path


def test_tidy_success_numbers_in_their_own_columns():
    _, tidy = success_tables(RECORDS)
    row = tidy[(tidy["row"] == "CQL") & (tidy["level"] == "seen")].iloc[0]
    # 20, 40, 90: mean 50, sd 36.06, t(0.975, 2) = 4.3027 → half-width 4.3027 · 36.06 / √3 = 89.57
    assert row["n"] == 3 and row["mean"] == pytest.approx(50.0) and row["std"] == pytest.approx(36.0555, abs=1e-3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((50 - 89.566, 50 + 89.566), abs=1e-2)
    assert set(tidy["level"]) == {"seen", "a", "b", "novel mean"}
    one = success_tables([r for r in RECORDS if r["seed"] == 0])[1]
    single = one[(one["row"] == "CQL") & (one["level"] == "seen")].iloc[0]
    assert single["n"] == 1 and math.isnan(single["std"]) and math.isnan(single["ci_low"])  # n = 1: no interval


def test_tidy_gains_match_the_display_cells():
    display, tidy = gain_tables(RECORDS)
    row = tidy[(tidy["difference"] == "CQL +KALM − CQL") & (tidy["level"] == "b")].iloc[0]
    assert (row["treated"], row["control"], row["n"]) == ("CQL +KALM", "CQL", 2)
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((30.0, -224.1, 284.1), abs=0.05)
    assert display.loc["CQL +KALM − CQL", "b"] == "+30.0 [-224.1, +284.1] (2)"


def test_report_csv_is_one_tidy_table_and_json_holds_them_all(core_env, tmp_path):
    path = _records_file(tmp_path)
    csv = run_cli("report", str(path), "--format", "csv", check=True).stdout
    df = pd.read_csv(io.StringIO(csv))
    assert list(df.columns[:9]) == ["row", "algorithm", "variant", "level", "n", "mean", "std", "ci_low", "ci_high"]
    assert "±" not in csv and "\n\n" not in csv
    gains = pd.read_csv(io.StringIO(run_cli("report", str(path), "--format", "csv", "--table", "gains",
                                            check=True).stdout))
    assert set(gains["difference"]) == {"CQL +KALM − CQL"}
    doc = json.loads(run_cli("report", str(path), "--format", "json", check=True).stdout)
    assert [t["name"] for t in doc["tables"]] == ["success", "gains"]
    one_seed = [r for r in doc["tables"][0]["rows"] if r["row"] == "CQL +KALM" and r["level"] == "seen"][0]
    assert one_seed["n"] == 2 and one_seed["std"] == 0.0
    bad = run_cli("report", str(path), "--table", "nope")
    assert bad.returncode == 2 and "--table" in bad.stderr and "success, gains" in bad.stderr


def test_latex_is_plain_right_aligned_and_results_only(core_env, tmp_path):
    path = _records_file(tmp_path)
    tex = run_cli("report", str(path), "--format", "latex", check=True).stdout
    assert "±" not in tex and "−" not in tex and "$\\pm$" in tex
    assert "toprule" not in tex and "booktabs" not in tex
    assert "\\begin{tabular}{lrrrr}" in tex  # the label column left, every number column right
    assert "Wall time" not in tex


def test_run_writes_one_csv_per_table_and_the_json(core_env, suite_file):
    out = core_env / "out"
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    names = sorted(p.name for p in (out / "tables").iterdir())
    assert "success.csv" in names and "timing.csv" in names
    doc = json.loads((out / "tables.json").read_text())
    assert {t["name"] for t in doc["tables"]} == {n.removesuffix(".csv") for n in names}
    assert "runs ok" in doc["notes"]


def test_missing_reference_after_the_runs_warns_and_still_writes_the_tables(core_env, suite_file, tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("env,level,algorithm,kalm,success_mean_pct,std_pct\n")
    text = suite_file.read_text() + f"report: {{reference: {ref}}}\n"
    suite_file.write_text(text)
    out = core_env / "out"
    run_cli("run", str(suite_file), "-o", str(out), check=True)
    (out / "reference.csv").unlink()
    ref.unlink()
    got = run_cli("report", str(out))
    assert got.returncode == 0 and "reference CSV not found" in got.stderr
    assert "success rate" in got.stdout


def test_figures_have_a_fixed_page_width_and_one_panel_per_level(core_env, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    recs = [{**r, "curve": [{"step": 50, "success_rate": r["success_rate"]},
                            {"step": 100, "success_rate": r["success_rate"]}], "last_k": 1} for r in RECORDS]
    path = _records_file(tmp_path, recs)
    out = tmp_path / "png"
    got = run_cli("plot", str(path), "-o", str(out), check=True)
    assert "gains.png" in got.stdout
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert set(sizes) == {"success_bars.png", "learning_curves.png", "gains.png"}  # no rollouts: no diagnostics
    assert {w for w, _ in sizes.values()} == {1125}  # 7.5 in at 150 dpi, whatever the number of rows
    # three levels → a 2 × 2 grid (one panel hidden); the same width with many more algorithm rows
    many = [{**r, "algorithm": f"{r['algorithm']}{i}"} for r in recs for i in range(6)]
    out2 = tmp_path / "png2"
    run_cli("plot", str(_records_file(tmp_path, many)), "-o", str(out2), check=True)
    assert Image.open(out2 / "success_bars.png").size == sizes["success_bars.png"]


def test_an_llm_without_diagnostics_still_gets_every_table(core_env, tmp_path):
    recs = [{**r, "llm_backend": "scripted", "llm_diagnostics": {}, "data_keys": {"grounding": "g"}} for r in RECORDS]
    doc = json.loads(run_cli("report", str(_records_file(tmp_path, recs)), "--format", "json", check=True).stdout)
    diag = [t for t in doc["tables"] if t["name"] == "diagnostics"]
    assert diag == [] or diag[0]["rows"] == []
