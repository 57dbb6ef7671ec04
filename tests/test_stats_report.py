"""Table statistics against hand-computed values, and the table layout."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kalm_bench import stats
from kalm_bench.errors import UserError
from kalm_bench.report import build_gain_table, build_table, load_reference


def test_mean_std_is_sample_std():
    m, sd, n = stats.mean_std([0.2, 0.4, 0.9])
    assert (m, n) == (pytest.approx(0.5), 3)
    assert sd == pytest.approx(math.sqrt(0.13))  # ((.3² + .1² + .4²) / (3 − 1)) ** .5
    assert stats.mean_std([0.7]) == (0.7, 0.0, 1)


def test_iqm_hand_computed():
    assert stats.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert stats.iqm(np.array([0, 10, 20, 30, 1000])) == pytest.approx(20.0)  # one trimmed each side


def test_stratified_bootstrap_is_reproducible_and_brackets_the_point():
    x = np.array([[10, 50], [20, 60], [30, 70], [40, 80]], float)
    a = stats.stratified_bootstrap_ci(x, reps=500, seed=3)
    b = stats.stratified_bootstrap_ci(x, reps=500, seed=3)
    assert a == b
    point, lo, hi = a
    assert point == pytest.approx(stats.iqm(x)) and lo <= point <= hi
    const = stats.stratified_bootstrap_ci(np.full((3, 2), 5.0), reps=200)
    assert const == (5.0, 5.0, 5.0)


def test_stratification_keeps_columns_apart():
    # Column 0 is all 0, column 1 all 100: every resample keeps one of each per row, so the mean is 50.
    x = np.array([[0.0, 100.0]] * 5)
    point, lo, hi = stats.stratified_bootstrap_ci(x, statistic=np.mean, reps=300)
    assert (point, lo, hi) == (50.0, 50.0, 50.0)


def test_paired_t_interval_hand_computed():
    # differences 1, 2, 3 (seed 9 has no pair): mean 2, sd 1, se 1/sqrt(3), t(0.975, df 2) = 4.302652729911275
    d, lo, hi, n = stats.paired_t_ci({0: 11.0, 1: 22.0, 2: 33.0, 9: 99.0}, {0: 10.0, 1: 20.0, 2: 30.0})
    half = 4.302652729911275 / math.sqrt(3)
    assert n == 3 and d == pytest.approx(2.0)
    assert (lo, hi) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    d1, lo1, hi1, n1 = stats.paired_t_ci({0: 5.0}, {0: 3.0})
    assert (d1, n1) == (2.0, 1) and math.isnan(lo1) and math.isnan(hi1)  # n = 1: no interval
    assert stats.paired_t_ci({0: 1.0}, {1: 1.0})[3] == 0


def test_vectorised_iqm_bootstrap_equals_one_call_per_resample():
    x = np.random.default_rng(4).uniform(0, 100, size=(5, 3))
    fast = stats.stratified_bootstrap_ci(x, reps=400, seed=2)
    slow = stats.stratified_bootstrap_ci(x, statistic=lambda s: stats.iqm(s), reps=400, seed=2)
    assert fast == pytest.approx(slow, abs=1e-9)


def test_wilson():
    lo, hi = stats.wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert stats.wilson_interval(0, 10)[0] == 0.0


def _rec(algo, kalm, level, seed, rate, **kw):
    return {"run_id": f"{algo}{kalm}{level}{seed}", "algorithm": algo, "kalm": kalm, "level": level, "seed": seed,
            "success_rate": rate, "status": "ok", "levels": ["seen", "a", "b"], "data_level": "seen", **kw}


RECORDS = [
    _rec("CQL", False, "seen", 0, 0.2), _rec("CQL", False, "seen", 1, 0.4), _rec("CQL", False, "seen", 2, 0.9),
    _rec("CQL", False, "a", 0, 0.1), _rec("CQL", False, "a", 1, 0.5),
    _rec("CQL", False, "b", 0, 0.3), _rec("CQL", False, "b", 1, 0.7),
    _rec("CQL", True, "seen", 0, 0.5), _rec("CQL", True, "a", 0, 0.6), _rec("CQL", True, "b", 0, 0.8),
    _rec("CQL", True, "seen", 1, 0.5), _rec("CQL", True, "a", 1, 0.6), _rec("CQL", True, "b", 1, 0.8),
    {**_rec("CQL", False, "a", 2, 0.99), "status": "failed"},  # failed runs never enter a cell
]


def test_table_cells_hand_computed():
    t = build_table(RECORDS)
    assert list(t.columns) == ["seen", "a", "b", "novel mean"]
    assert list(t.index) == ["CQL", "CQL +KALM"]
    assert t.loc["CQL", "seen"] == "50.0 ± 36.1 (3)"
    assert t.loc["CQL", "a"] == "30.0 ± 28.3 (2)"
    # novel mean per seed: seed 0 (10 + 30) / 2 = 20, seed 1 (50 + 70) / 2 = 60; seed 2 lacks levels a, b
    assert t.loc["CQL", "novel mean"] == "40.0 ± 28.3 (2)"
    assert t.loc["CQL +KALM", "b"] == "80.0 ± 0.0 (2)"


def test_iqm_table_and_gain_table():
    t = build_table(RECORDS, stat="iqm_ci", reps=200)
    assert t.loc["CQL +KALM", "a"] == "60.0 [60.0, 60.0] (2)"
    g = build_gain_table(RECORDS)
    # paired by seed: 80 − 30 = 50 and 80 − 70 = 10; mean 30, se 20, t(0.975, df 1) = 12.706 → ± 254.1
    assert g.loc["CQL +KALM − CQL", "b"] == "+30.0 [-224.1, +284.1] (2)"
    one = build_gain_table([r for r in RECORDS if r["seed"] == 0])
    assert one.loc["CQL +KALM − CQL", "b"] == "+50.0 (1)"  # one pair: no interval
    assert build_table([r for r in RECORDS if r["seed"] == 0]).loc["CQL", "seen"] == "20.0 (1)"
    with pytest.raises(UserError):
        build_table(RECORDS, stat="median")


def test_reference_side_by_side(tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("env,level,algorithm,kalm,success_mean_pct,error_bar_pct,std_pct,source\n"
                   "clevr,seen,CQL,no,60.0,1.0,2.0,figure\nclevr,a,CQL,yes,33.3,,,figure\n"
                   "clevr,b,CQL,yes,20.0,0.5,1.0,figure\nother,seen,CQL,no,1.0,0.5,1.0,figure\n")
    t = build_table(RECORDS, reference=load_reference(ref), reference_env="clevr")
    assert t.loc["CQL", "seen (paper)"] == "60.0 ± 2.0"
    assert t.loc["CQL +KALM", "a (paper)"] == "33.3"
    assert t.loc["CQL +KALM", "novel mean (paper)"] == "26.6"  # (33.3 + 20.0) / 2, rounded
    assert t.loc["CQL", "a (paper)"] == "–"
    bad = tmp_path / "bad.csv"
    bad.write_text("env,level\nx,y\n")
    with pytest.raises(UserError, match="missing column"):
        load_reference(bad)


def test_shipped_paper_reference_loads():
    from kb_helpers import ROOT

    df = load_reference(ROOT / "suites" / "reference" / "kalm_paper_results.csv")
    cql = df[(df.env == "clevr") & (df.level == "rephrase") & (df.algorithm == "CQL") & (df.kalm == "yes")]
    assert len(cql) == 1 and isinstance(df, pd.DataFrame)


def test_control_rows_and_llm_contribution_hand_computed():
    control = [{**_rec("CQL", False, lv, sd, rate), "variant": "random", "run_id": f"r{lv}{sd}"}
               for lv, sd, rate in (("seen", 0, 0.4), ("a", 0, 0.2), ("b", 0, 0.5),
                                    ("seen", 1, 0.3), ("a", 1, 0.4), ("b", 1, 0.6))]
    records = RECORDS + control
    t = build_table(records)
    assert list(t.index) == ["CQL", "CQL +KALM", "CQL +random"]
    assert t.loc["CQL +random", "a"] == "30.0 ± 14.1 (2)"
    g = build_gain_table(records)
    assert list(g.index) == ["CQL +KALM − CQL", "CQL +random − CQL", "CQL +KALM − CQL +random"]
    # KALM − control on a: 60 − 20 = 40 and 60 − 40 = 20 → mean 30, sd 14.142, se 10, t(0.975, 1) 12.706
    assert g.loc["CQL +KALM − CQL +random", "a"] == "+30.0 [-97.1, +157.1] (2)"
    # control − base on b: 50 − 30 = 20, 60 − 70 = −10 → mean 5, se 15 → ± 190.6
    assert g.loc["CQL +random − CQL", "b"] == "+5.0 [-185.6, +195.6] (2)"
    # novel mean, KALM − control: seed 0 (70 − 35) = 35, seed 1 (70 − 50) = 20 → mean 27.5, se 7.5 → ± 95.3
    assert g.loc["CQL +KALM − CQL +random", "novel mean"] == "+27.5 [-67.8, +122.8] (2)"


def test_a_row_that_only_changes_the_llm_is_paired_with_the_base_of_the_same_policy():
    def policy(rec, config=None, dataset="d"):
        return {**rec, "algorithm_name": "cql", "algorithm_config": {"type": "cql", "params": config or {"lr": 1}},
                "train_steps": 10, "encoder": "minilm", "data_keys": {"dataset": f"{dataset}{rec['seed']}"}}

    control = [policy({**_rec("CQL", False, lv, sd, rate), "variant": "random", "run_id": f"r{lv}{sd}"})
               for lv, sd, rate in (("seen", 0, 0.4), ("a", 0, 0.2), ("b", 0, 0.5),
                                    ("seen", 1, 0.3), ("a", 1, 0.4), ("b", 1, 0.6))]
    other_llm = [policy(_rec("CQL (other llm)", True, lv, sd, rate)) for lv, sd, rate in
                 (("seen", 0, 0.3), ("a", 0, 0.3), ("b", 0, 0.4), ("seen", 1, 0.5), ("a", 1, 0.7), ("b", 1, 0.9))]
    other_policy = [policy(_rec("CQL big", True, lv, sd, 0.5), config={"lr": 2}) for lv in ("seen", "a", "b")
                    for sd in (0, 1)]
    other_data = [policy(_rec("CQL other data", True, lv, sd, 0.5), dataset="e") for lv in ("seen", "a", "b")
                  for sd in (0, 1)]
    records = [policy(r) for r in RECORDS] + control + other_llm + other_policy + other_data
    g = build_gain_table(records)
    assert "CQL (other llm) +KALM − CQL" in g.index and "CQL (other llm) +KALM − CQL +random" in g.index
    # a: 30 − 10 = 20 and 70 − 50 = 20 → +20, no spread; b: 40 − 30 = 10, 90 − 70 = 20 → 15 ± 12.706 × 5
    assert g.loc["CQL (other llm) +KALM − CQL", "a"] == "+20.0 [+20.0, +20.0] (2)"
    assert g.loc["CQL (other llm) +KALM − CQL", "b"] == "+15.0 [-48.5, +78.5] (2)"
    # against the control: a: 30 − 20 = 10, 70 − 40 = 30 → +20 ± 127.1
    assert g.loc["CQL (other llm) +KALM − CQL +random", "a"] == "+20.0 [-107.1, +147.1] (2)"
    # Another policy config has no base to compare with, nor a row trained on other data.
    assert not any(ix.startswith(("CQL big", "CQL other data")) for ix in g.index)
