"""Records → tables: rows = algorithm (± KALM), columns = levels (+ mean of the novel levels).

Cells are ``mean ± std (n)`` of per-seed success rates in percent, or ``IQM [lo, hi] (n)`` with a
stratified-bootstrap 95 % CI. A reference CSV of published numbers (``env, level, algorithm, kalm,
success_mean_pct, std_pct``) adds a "paper" column beside each level.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import stats
from .api import ResultTable
from .errors import UserError
from .suite import BASE, KALM, row_label

log = logging.getLogger(__name__)

NOVEL = "novel mean"
REFERENCE_COLUMNS = ("env", "level", "algorithm", "kalm", "success_mean_pct", "std_pct")


def load_reference(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError("reference CSV not found", file=path)
    try:
        df = pd.read_csv(path, dtype={"kalm": str})
    except Exception as exc:
        raise UserError(f"cannot read CSV: {exc}", file=path) from None
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"missing column(s) {', '.join(missing)} (expected {', '.join(REFERENCE_COLUMNS)})",
                        file=path)
    df["kalm"] = df["kalm"].fillna("").str.strip().str.lower()
    return df


def _levels(records: list[dict[str, Any]]) -> tuple[list[str], str | None]:
    for r in records:
        if r.get("levels"):
            return list(r["levels"]), r.get("data_level")
    seen = list(OrderedDict.fromkeys(r["level"] for r in records))
    return seen, None


def variant_of(record: dict[str, Any]) -> str:
    return str(record.get("variant") or (KALM if record.get("kalm") else BASE))


def _variant_order(variant: str) -> tuple[int, str]:
    return (0 if variant == BASE else 1 if variant == KALM else 2, variant)


def _groups(records: list[dict[str, Any]]) -> OrderedDict[tuple[str, str], dict[str, dict[int, float]]]:
    """(algorithm, variant) → level → seed → success % (ok records only; base, KALM, then controls)."""
    out: OrderedDict[tuple[str, str], dict[str, dict[int, float]]] = OrderedDict()
    for r in sorted(records, key=lambda r: (r.get("row_index", 0), _variant_order(variant_of(r)), r["seed"])):
        if r.get("status") != "ok":
            continue
        key = (r["algorithm"], variant_of(r))
        out.setdefault(key, {}).setdefault(r["level"], {})[int(r["seed"])] = 100.0 * float(r["success_rate"])
    return out


def _summary(values: list[float], stat: str, reps: int) -> dict[str, float]:
    """The numbers behind one cell: n, mean, std and a Student-t 95 % interval of the mean (n ≥ 2), and with
    ``iqm_ci`` the IQM and its stratified-bootstrap 95 % interval."""
    nan = float("nan")
    m, sd, n = stats.mean_std(values)
    out = {"n": n, "mean": m, "std": sd if n > 1 else nan, "ci_low": nan, "ci_high": nan}
    if n > 1:
        lo, hi = stats.t_interval(values)
        out.update(ci_low=lo, ci_high=hi)
    if stat == "iqm_ci":
        out.update(iqm=nan, iqm_ci_low=nan, iqm_ci_high=nan)
        if n:
            point, lo, hi = stats.stratified_bootstrap_ci(np.array(values)[:, None], reps=reps)
            out.update(iqm=point, **({"iqm_ci_low": lo, "iqm_ci_high": hi} if n > 1 else {}))
    return out


def _format(s: dict[str, float], stat: str) -> str:
    """The cell of one row and level; n is always shown, and n = 1 gets no spread or interval."""
    n = int(s["n"])
    if n == 0:
        return "–"
    if stat == "iqm_ci":
        return f"{s['iqm']:.1f} (1)" if n == 1 else f"{s['iqm']:.1f} [{s['iqm_ci_low']:.1f}, {s['iqm_ci_high']:.1f}] ({n})"
    return f"{s['mean']:.1f} (1)" if n == 1 else f"{s['mean']:.1f} ± {s['std']:.1f} ({n})"


def _cell(values: list[float], stat: str, reps: int) -> str:
    return _format(_summary(values, stat, reps), stat)


def _novel_matrix(per_level: dict[str, dict[int, float]], novel: list[str]) -> np.ndarray:
    """(seeds × novel levels) for the seeds that have every novel level."""
    seeds = sorted(set.intersection(*(set(per_level.get(lv, {})) for lv in novel))) if novel else []
    return np.array([[per_level[lv][s] for lv in novel] for s in seeds]) if seeds else np.zeros((0, len(novel)))


def success_tables(records: list[dict[str, Any]], stat: str = "mean_std", reference: pd.DataFrame | None = None,
                   reference_env: str | None = None, reps: int = 2000) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The success-rate table (rows = algorithm ± variant, columns = levels, the novel mean and the paper's
    numbers), as display cells and as tidy rows (one per row and level)."""
    if stat not in ("mean_std", "iqm_ci"):
        raise UserError(f"unknown statistic {stat!r}; valid: mean_std, iqm_ci", field="--stat")
    levels, data_level = _levels(records)
    novel = [lv for lv in levels if lv != (data_level or levels[0])] if levels else []
    groups = _groups(records)
    refname = {(r["algorithm"], variant_of(r)): r.get("reference_name") or r["algorithm"] for r in records}
    rows, tidy = [], []
    for (algo, variant), per_level in groups.items():
        label = row_label(algo, variant)
        row: dict[str, str] = {"algorithm": label}
        ref_means = {}
        for lv in levels:
            summary = _summary(list(per_level.get(lv, {}).values()), stat, reps)
            row[lv] = _format(summary, stat)
            paper: tuple[str, float | None, float | None] = ("–", None, None)
            if reference is not None:
                # The paper has base and KALM rows only; a control row has no published number.
                if variant in (BASE, KALM):
                    paper = _reference_cell(reference, reference_env, lv, refname[(algo, variant)], variant == KALM)
                row[f"{lv} (paper)"] = paper[0]
                ref_means[lv] = paper[1]
            tidy.append({"row": label, "algorithm": algo, "variant": variant, "level": lv, **summary,
                         "paper_mean": paper[1], "paper_std": paper[2]})
        if len(novel) > 1:
            mat = _novel_matrix(per_level, novel)
            summary = _summary(list(mat.mean(axis=1)) if len(mat) else [], "mean_std", reps)
            if stat == "iqm_ci" and len(mat) > 1:
                point, lo, hi = stats.stratified_bootstrap_ci(mat, reps=reps)
                summary.update(iqm=point, iqm_ci_low=lo, iqm_ci_high=hi)
                row[NOVEL] = f"{point:.1f} [{lo:.1f}, {hi:.1f}] ({len(mat)})"
            else:
                row[NOVEL] = _format(summary, "mean_std")
            paper_novel = None
            if reference is not None:
                vals = [ref_means.get(lv) for lv in novel]
                paper_novel = float(np.mean(vals)) if all(v is not None for v in vals) else None
                row[f"{NOVEL} (paper)"] = f"{paper_novel:.1f}" if paper_novel is not None else "–"
            tidy.append({"row": label, "algorithm": algo, "variant": variant, "level": NOVEL, **summary,
                         "paper_mean": paper_novel, "paper_std": None})
        rows.append(row)
    if not rows:
        raise UserError("no successful runs to report")
    return pd.DataFrame(rows).set_index("algorithm"), pd.DataFrame(tidy)


def build_table(records: list[dict[str, Any]], stat: str = "mean_std", reference: pd.DataFrame | None = None,
                reference_env: str | None = None, reps: int = 2000) -> pd.DataFrame:
    return success_tables(records, stat, reference, reference_env, reps)[0]


def _reference_cell(ref: pd.DataFrame, env: str | None, level: str, algorithm: str,
                    kalm: bool) -> tuple[str, float | None, float | None]:
    sel = ref[(ref["level"] == level) & (ref["algorithm"] == algorithm)]
    if env:
        sel = sel[sel["env"] == env]
    flag = sel["kalm"]
    sel = sel[(flag == ("yes" if kalm else "no")) | ((flag == "") & (not kalm))]
    if sel.empty:
        return "–", None, None
    m = float(sel["success_mean_pct"].iloc[0])
    sd = sel["std_pct"].iloc[0]
    return (f"{m:.1f} ± {float(sd):.1f}" if pd.notna(sd) else f"{m:.1f}"), m, (float(sd) if pd.notna(sd) else None)


def gain_tables(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Paired differences of success (points) per level and over the novel levels: each variant with imaginary
    data against the base run of its replication (``BC +KALM − BC``, ``BC +random − BC``), and KALM against
    each control (``BC +KALM − BC +random``: what the LLM adds beyond the control's rollouts). A row without
    a base of its own (one that only changes the LLM) is compared with the base and controls of the first
    row that trains the same policy (algorithm, config, steps, encoder), at the replications where both
    trained on the same data. A cell is the mean of the per-replication differences with a 95 % Student-t
    interval and the number of pairs; one pair gets no interval. Replications that only one side has are
    left out of the pairing."""
    levels, data_level = _levels(records)
    novel = [lv for lv in levels if lv != (data_level or levels[0])] if levels else []
    groups = _groups(records)

    def novel_mean(per_level: dict[str, dict[int, float]]) -> dict[int, float]:
        seeds = set.intersection(*(set(per_level.get(lv, {})) for lv in novel)) if novel else set()
        return {sd: float(np.mean([per_level[lv][sd] for lv in novel])) for sd in seeds}

    comparisons = []  # (minuend, subtrahend): per algorithm every variant − base, then KALM − each control
    policies = _policy_identities(records)
    for algo in OrderedDict.fromkeys(a for a, _ in groups):
        variants = [v for a, v in groups if a == algo]
        # A row without its own base (e.g. a row that only changes the LLM) is compared with the base and
        # controls of the first row that trains the same policy on the same data.
        twin = algo if BASE in variants else next(
            (a for a, v in groups if v == BASE and a != algo and policies.get((a, v)) is not None
             and policies.get((a, v)) == policies.get((algo, KALM if KALM in variants else variants[0]))), None)
        if twin is None:
            continue
        comparisons += [((algo, v), (twin, BASE)) for v in variants if v != BASE]
        if KALM in variants:
            controls = [v for a, v in groups if a == twin and v not in (BASE, KALM)]
            comparisons += [((algo, KALM), (twin, v)) for v in controls]
    rows, tidy = [], []
    for mine, other in comparisons:
        per_level = groups[mine]
        same_data = _same_data_seeds(records, mine, other)
        if same_data is not None and not same_data and mine[0] != other[0]:
            continue  # another row's base trained on other data: nothing to pair with
        row = {"difference": f"{row_label(*mine)} − {row_label(*other)}"}
        columns = [(lv, _only(per_level.get(lv, {}), same_data), groups[other].get(lv, {})) for lv in levels]
        if len(novel) > 1:
            columns.append((NOVEL, _only(novel_mean(per_level), same_data), novel_mean(groups[other])))
        for col, a_vals, b_vals in columns:
            d, lo, hi, n = stats.paired_t_ci(a_vals, b_vals)
            row[col] = "–" if n == 0 else f"{d:+.1f} (1)" if n == 1 else f"{d:+.1f} [{lo:+.1f}, {hi:+.1f}] ({n})"
            tidy.append({"difference": row["difference"], "treated": row_label(*mine), "control": row_label(*other),
                         "level": col, "n": n, "mean": d, "ci_low": lo, "ci_high": hi})
        rows.append(row)
    return (pd.DataFrame(rows).set_index("difference"), pd.DataFrame(tidy)) if rows else None


def _policy_identities(records: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(row, variant) → what its policy is apart from the imaginary data: the algorithm with its config, the
    training length and the encoder. Records without these fields (older ones) get no identity."""
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    for r in records:
        if r.get("status") != "ok" or "algorithm_name" not in r:
            continue
        ident = (r["algorithm_name"], json.dumps(r.get("algorithm_config"), sort_keys=True), r.get("train_steps"),
                 json.dumps(r.get("encoder"), sort_keys=True), json.dumps(r.get("encoder_config"), sort_keys=True))
        out.setdefault((r["algorithm"], variant_of(r)), ident)
    return out


def _same_data_seeds(records: list[dict[str, Any]], mine: tuple[str, str], other: tuple[str, str]) -> set[int] | None:
    """Seeds at which both rows trained on the same dataset (None: every seed, when records carry no keys)."""
    data: dict[tuple[str, str], dict[int, Any]] = {mine: {}, other: {}}
    for r in records:
        key = (r["algorithm"], variant_of(r))
        if key in data and r.get("status") == "ok":
            data[key][int(r["seed"])] = (r.get("data_keys") or {}).get("dataset")
    if all(v is None for d in data.values() for v in d.values()):
        return None
    return {sd for sd, k in data[mine].items() if k is not None and data[other].get(sd) == k}


def _only(values: dict[int, float], seeds: set[int] | None) -> dict[int, float]:
    return values if seeds is None else {sd: v for sd, v in values.items() if sd in seeds}


def build_gain_table(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    tables = gain_tables(records)
    return tables[0] if tables else None


def diagnostics_tables(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """LLM diagnostics and rollout goal-match rates per level: one column per LLM setting (backend, config,
    grounding tasks), each cell ``mean ± std (n)`` over that setting's groundings (one per replication when
    the suite re-grounds the LLM per seed; a single grounding shows its value alone)."""
    # setting → grounding key → metric → value
    values: dict[str, dict[str, dict[str, float | str]]] = OrderedDict()
    for r in records:
        if r.get("status") != "ok" or not r.get("llm_backend"):
            continue
        tasks = "+".join(r.get("llm_tasks") or [])
        config = json.dumps(r.get("llm_config") or {}, sort_keys=True)
        setting = values.setdefault(f"{r['llm_backend']} {_short_hash(config + tasks)}"
                                    + (f" [{tasks}]" if tasks else ""), OrderedDict())
        metrics = setting.setdefault(r["data_keys"].get("grounding", ""), {})
        for k, v in (r.get("llm_diagnostics") or {}).items():
            metrics[k] = 100 * v if _is_rate(k, v) else v
        ro = r.get("rollouts")
        if variant_of(r) == KALM and ro and r.get("imaginary_level") and ro.get("goal_match_rate") is not None:
            metrics[f"goal_match_{r['imaginary_level']}"] = 100 * ro["goal_match_rate"]
            if ro.get("realistic_goal_match_rate") is not None:
                metrics[f"realistic_goal_match_{r['imaginary_level']}"] = 100 * ro["realistic_goal_match_rate"]
    if not values:
        return None
    columns: dict[str, dict[str, str]] = OrderedDict()
    tidy = []
    for setting, groundings in values.items():
        names = list(OrderedDict.fromkeys(k for m in groundings.values() for k in m))
        col = columns.setdefault(setting, {})
        for name in names:
            got = [m[name] for m in groundings.values() if name in m]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in got):
                # NaN is a figure a grounding could not compute (e.g. recall with no positive): left out.
                summary = _summary([float(v) for v in got if not np.isnan(v)], "mean_std", 0)
                col[name] = _format(summary, "mean_std")
                tidy.append({"setting": setting, "metric": name, **summary, "value": None})
            else:
                col[name] = ", ".join(sorted({str(v) for v in got}))
                tidy.append({"setting": setting, "metric": name, "n": len(got), "value": col[name]})
    # One row per metric: there are many metrics and few models.
    table = pd.DataFrame(columns).fillna("–")
    table.index.name = "metric"
    tidy_df = pd.DataFrame(tidy, columns=["setting", "metric", "n", "mean", "std", "ci_low", "ci_high", "value"])
    return table.sort_index(), tidy_df.sort_values(["setting", "metric"], kind="stable").reset_index(drop=True)


def _is_rate(name: str, value: Any) -> bool:
    """A diagnostic shown in percent: a share in [0, 1]; errors (``…_mse``, ``…_nmse``) and counts are not."""
    return isinstance(value, float) and 0 <= value <= 1 and not name.endswith(("_mse", "_nmse"))


def build_diagnostics_table(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    tables = diagnostics_tables(records)
    return tables[0] if tables else None


def rollouts_tables(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The imaginary data per source and level, over its replications (``mean ± std (n)``): rollouts proposed,
    goal match (labelled successful), realistic (every state passes the env's realism check), realistic goal
    match (both), and the episodes kept by the suite's filters."""
    per: dict[tuple[str, str], dict[str, dict[str, float]]] = OrderedDict()  # (source, level) → key → figures
    for r in sorted(records, key=lambda r: _variant_order(variant_of(r))):
        ro = r.get("rollouts")
        if r.get("status") != "ok" or not ro or not r.get("imaginary_level"):
            continue
        source = "LLM (kalm)" if variant_of(r) == KALM else variant_of(r)
        if variant_of(r) == KALM and r.get("llm_backend"):
            source = f"LLM: {r['llm_backend']}"
        figures = per.setdefault((source, r["imaginary_level"]), {}).setdefault(r["data_keys"]["rollouts"], {})
        for name, key, scale in (("proposed", "n_proposed", 1), ("goal match %", "goal_match_rate", 100),
                                 ("realistic %", "realistic_rate", 100),
                                 ("realistic goal match %", "realistic_goal_match_rate", 100),
                                 ("kept", "n_episodes", 1)):
            if ro.get(key) is not None:
                figures[name] = scale * float(ro[key])
    if not per:
        return None
    levels, _ = _levels(records)
    order = {lv: i for i, lv in enumerate(levels)}
    rows, tidy = [], []
    first = {src: i for i, src in enumerate(OrderedDict.fromkeys(src for src, _ in per))}
    for (source, level), by_key in sorted(per.items(), key=lambda kv: (first[kv[0][0]], order.get(kv[0][1], 99))):
        row = {"source": source, "level": level}
        for name in ("proposed", "goal match %", "realistic %", "realistic goal match %", "kept"):
            vals = [f[name] for f in by_key.values() if name in f]
            summary = _summary(vals, "mean_std", 0)
            if name in ("proposed", "kept") and vals and len(set(vals)) == 1:
                row[name] = f"{vals[0]:.0f} ({len(vals)})"  # a count that every replication shares
            else:
                row[name] = _format(summary, "mean_std")
            if vals:
                tidy.append({"source": source, "level": level, "metric": name, **summary})
        rows.append(row)
    return pd.DataFrame(rows).set_index("source"), pd.DataFrame(
        tidy, columns=["source", "level", "metric", "n", "mean", "std", "ci_low", "ci_high"])


def build_rollouts_table(records: list[dict[str, Any]]) -> pd.DataFrame | None:
    tables = rollouts_tables(records)
    return tables[0] if tables else None


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def build_comparison_table(table: pd.DataFrame, rows: list[str], levels: list[str] | None) -> pd.DataFrame:
    """The main table restricted to ``rows`` and ``levels`` (with their paper columns), in the given order."""
    cols = [c for c in table.columns if levels is None or c in levels or c.removesuffix(" (paper)") in levels]
    out = table.reindex(index=rows, columns=cols).fillna("–")
    out.index.name = table.index.name
    return out


def timing_tables(timings: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """Wall time per stage kind from a results directory's ``timings.json``: every stage the results use, with
    the time its build took, whichever invocation built it."""
    stages = [s for s in timings.get("stages", []) if s.get("wall_s") is not None]
    if not stages:
        return None
    rows, tidy = [], []
    for kind in ("dataset", "grounding", "diagnostics", "rollouts", "train", "eval"):
        walls = [float(s["wall_s"]) for s in stages if s["kind"] == kind]
        if walls:
            rows.append({"stage": kind, "n": str(len(walls)), "total (min)": f"{sum(walls) / 60:.1f}",
                         "mean (s)": f"{np.mean(walls):.1f}", "max (s)": f"{max(walls):.1f}"})
            tidy.append({"stage": kind, "n": len(walls), "total_s": sum(walls), "mean_s": float(np.mean(walls)),
                         "max_s": max(walls)})
    invocations = timings.get("invocations", [])
    if invocations:
        total = sum(float(i.get("wall_s", 0.0)) for i in invocations)
        stopped = sum(1 for i in invocations if i.get("finished") is False)
        rows.append({"stage": "suite (wall clock)",
                     "n": f"{len(invocations)} invocation(s)" + (f", {stopped} stopped early" if stopped else ""),
                     "total (min)": f"{total / 60:.1f}", "mean (s)": "–", "max (s)": "–"})
        tidy.append({"stage": "suite (wall clock)", "n": len(invocations), "total_s": total, "mean_s": None,
                     "max_s": None})
    return pd.DataFrame(rows).set_index("stage"), pd.DataFrame(tidy)


def build_timing_table(timings: dict[str, Any]) -> pd.DataFrame | None:
    tables = timing_tables(timings)
    return tables[0] if tables else None


def provenance_lines(records: list[dict[str, Any]], timings: dict[str, Any] | None) -> list[str]:
    """Where the numbers come from: commits, library versions, machines, dates and wall time."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return []

    def distinct(values: Any) -> str:
        vals = sorted({str(v) for v in values if v is not None})
        return ", ".join(vals) if vals else "unknown"

    lines = [f"- code: kalm-bench {distinct(r.get('harness_version') for r in ok)}, "
             f"git {distinct(r.get('git_sha') for r in ok)}"]
    libs = sorted({k for r in ok for k in (r.get("versions") or {})})
    lines.append("- versions: " + "; ".join(f"{k} {distinct((r.get('versions') or {}).get(k) for r in ok)}"
                                          for k in libs))
    machines = {json.dumps(r.get("machine"), sort_keys=True) for r in ok}
    lines.append("- machine: " + " | ".join(
        f"{m.get('platform', '?')}, {m.get('cpu_model') or m.get('processor', '?')}, {m.get('cpus', '?')} CPUs"
        for m in (json.loads(x) or {} for x in sorted(machines))))
    lines.append(f"- runs finished: {min(r.get('finished_at', '') for r in ok)} to "
                 f"{max(r.get('finished_at', '') for r in ok)}")
    inv = (timings or {}).get("invocations", [])
    if inv:
        total = sum(float(i.get("wall_s", 0.0)) for i in inv)
        jobs = distinct(i.get("jobs") for i in inv)
        lines.append(f"- suite wall time: {total / 60:.1f} min over {len(inv)} invocation(s) (--jobs {jobs})")
    return lines



# ---------------------------------------------------------------------------------------------------------
# A results directory → its report


@dataclass
class Report:
    tables: list[ResultTable]
    footer: str
    """How to read the cells, and the provenance (Markdown)."""


def _plan_config(results: Path) -> tuple[dict[str, Any], Path | None]:
    """The suite's ``report`` section and the suite file, from a results directory's ``plan.json``."""
    plan_file = results / "plan.json" if results.is_dir() else None
    if not (plan_file and plan_file.is_file()):
        return {}, None
    try:
        plan = json.loads(plan_file.read_text())
        cfg = plan.get("config", {}).get("report", {}) or {}
        # Written relative to the results directory (older results hold an absolute path, which `/` keeps).
        return cfg, results / plan.get("suite_file", ".")
    except (json.JSONDecodeError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"not a plan file ({exc})", file=plan_file) from None


def reference_for(results: Path, reference: str | None = None,
                  reference_env: str | None = None) -> tuple[pd.DataFrame | None, str | None]:
    """The published numbers to show beside a results directory's: ``reference`` when given (an error if it
    cannot be read), else the copy the run saved, else the suite's ``report.reference`` (a warning, and no
    paper columns, if that file has gone)."""
    cfg, suite_file = _plan_config(results)
    if reference is not None:
        return load_reference(reference), reference_env or cfg.get("reference_env")
    copy = results / "reference.csv" if results.is_dir() else None
    path = None
    if copy is not None and copy.is_file():
        path = copy  # the copy the run saved: the suite file may be elsewhere or gone
    elif cfg.get("reference"):
        path = Path(cfg["reference"])
        if not path.is_absolute() and suite_file is not None:
            path = suite_file.parent / path
        if not path.is_file():
            log.warning("%s: reference CSV not found; the tables are written without the paper's numbers", path)
            return None, None
    if path is None:
        return None, None
    return load_reference(path), reference_env or cfg.get("reference_env")


def build_report(results: Path, stat: str | None = None, reference: str | None = None,
                 reference_env: str | None = None, title: str | None = None) -> Report:
    """Every table of a results directory (or records file): success, gains, the suite's comparisons,
    imaginary rollouts, LLM diagnostics and wall time, with the footer that says how to read them."""
    from .records import load_records

    records = load_records(results)
    cfg, _ = _plan_config(results)
    stat = stat or cfg.get("stat", "mean_std")
    ref_df, ref_env = reference_for(results, reference, reference_env)
    reps = int(cfg.get("reps", 2000))
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    suite_name = records[0]["suite"] if records else "results"
    display, tidy = success_tables(records, stat=stat, reference=ref_df, reference_env=ref_env, reps=reps)
    tables = [ResultTable("success", title or f"{suite_name}: success rate (%)", display, tidy)]
    gains = gain_tables(records)
    if gains is not None:
        tables.append(ResultTable("gains", "Gains (points): mean of the differences paired by replication "
                                           "[95% Student-t CI] (n pairs); KALM − control is what the LLM adds "
                                           "beyond the control's rollouts", *gains))
    for i, comp in enumerate(cfg.get("comparisons", []) or [], 1):
        rows, levels = comp["rows"], comp.get("levels")
        sub = tidy[tidy["row"].isin(rows) & (tidy["level"].isin(levels) if levels else True)]
        tables.append(ResultTable(f"comparison-{i}", comp["title"], build_comparison_table(display, rows, levels),
                                  sub.reset_index(drop=True)))
    imaginary = rollouts_tables(records)
    if imaginary is not None:
        tables.append(ResultTable("rollouts", "Imaginary rollouts per source and level (mean ± std (n "
                                              "replications))", *imaginary))
    diag = diagnostics_tables(records)
    if diag is not None:
        tables.append(ResultTable("diagnostics", "LLM diagnostics (%)", *diag))
    timings_file = results / "timings.json" if results.is_dir() else None
    timings = None
    if timings_file is not None and timings_file.is_file():
        try:
            timings = json.loads(timings_file.read_text())
            timing = timing_tables(timings)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"corrupt timings file ({exc})", file=timings_file) from None
        if timing is not None:
            tables.append(ResultTable("timing", "Wall time per stage (each stage's build time, also for stages an "
                                                "earlier invocation built into the cache)", *timing, result=False))
    cell = "mean ± std (n seeds)" if stat == "mean_std" else "IQM [95% stratified-bootstrap CI] (n seeds)"
    ks = sorted({int(r["last_k"]) for r in ok if r.get("last_k") is not None}, reverse=True)
    untrained = sorted({r["algorithm"] for r in ok if len(ks) > 1 and r.get("last_k") == ks[-1]})
    window = (f"{ks[0]} checkpoints" + (f" ({ks[-1]} for {', '.join(untrained)})" if len(ks) > 1 else "")
              if ks else "? checkpoints")
    footer = (f"{len(ok)} runs ok, {len(failed)} failed. Cells: {cell} of the per-seed success rate, each the mean "
              f"over the last {window}; a cell of one seed shows its value alone. Each seed is a replication: it "
              f"re-runs the stages {', '.join(ok[0].get('replicate') or ['policy']) if ok else 'policy'}.\n")
    prov = provenance_lines(records, timings)
    if prov:
        footer += "\nProvenance:\n\n" + "\n".join(prov) + "\n"
    return Report(tables, footer)
