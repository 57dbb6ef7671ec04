"""Figures from a report, sized to read at page width (7.5 × 2.6 in per row of panels, 150 dpi):

- ``success_bars.png``: one panel per level (the KALM paper's Fig. 4 layout), a bar per algorithm row with
  the paper's number hatched beside ours, error bars ± one std over seeds;
- ``learning_curves.png``: success per evaluated checkpoint (mean ± std over seeds), one panel per level,
  with the scored window (the checkpoints the table averages) shaded;
- ``gains.png``: each paired difference with its 95 % Student-t interval, one panel per level;
- ``diagnostics.png``: the imaginary rollouts' goal match and realistic goal match per source and level.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError
from .report import NOVEL, Report, _levels, _variant_order, variant_of
from .suite import row_label

WIDTH_IN = 7.5
ROW_IN = 2.6
DPI = 150
OURS, PAPER = "#1f77b4", "#bbbbbb"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'kalm-bench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "legend.fontsize": 8})
    return plt


def _grid(plt, n: int, cols: int = 2, sharey: bool = True):
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH_IN, ROW_IN * rows + 0.5), squeeze=False, sharey=sharey)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _save(plt, fig, out: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def _table(report: Report, name: str) -> pd.DataFrame | None:
    for t in report.tables:
        if t.name == name:
            return t.tidy
    return None


def plot_bars(report: Report, out: Path, title: str | None = None) -> Path:
    plt = _pyplot()
    tidy = _table(report, "success")
    if tidy is None or tidy.empty:
        raise UserError("no successful runs to plot")
    levels = [lv for lv in dict.fromkeys(tidy["level"]) if lv != NOVEL]
    rows = list(dict.fromkeys(tidy["row"]))
    has_paper = "paper_mean" in tidy and tidy["paper_mean"].notna().any()
    fig, axes = _grid(plt, len(levels))
    x = np.arange(len(rows))
    width = 0.4 if has_paper else 0.7
    for ax, lv in zip(axes, levels):
        sel = tidy[tidy["level"] == lv].set_index("row").reindex(rows)
        ours = sel["mean"].astype(float).to_numpy()
        err = sel["std"].astype(float).fillna(0.0).to_numpy()
        ax.bar(x - (width / 2 if has_paper else 0), ours, width, yerr=err, color=OURS, capsize=2,
               edgecolor="black", linewidth=0.4, label="ours (mean ± std over seeds)")
        if has_paper:
            paper = sel["paper_mean"].astype(float).to_numpy()
            paper_err = sel["paper_std"].astype(float).fillna(0.0).to_numpy()
            ax.bar(x + width / 2, paper, width, yerr=paper_err, color=PAPER, hatch="//", capsize=2,
                   edgecolor="black", linewidth=0.4, label="paper")
        for xi, v, n in zip(x, ours, sel["n"].fillna(0).astype(int)):
            if not np.isnan(v):
                ax.annotate(f"n={n}", (xi - (width / 2 if has_paper else 0), 1), ha="center", va="bottom",
                            fontsize=6, color="white")
        ax.set_title(lv)
        ax.set_xticks(x, rows, rotation=25, ha="right")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("success rate (%)")
    axes[0].legend(loc="upper right")
    suite = title or "success rate per level"
    return _save(plt, fig, out, suite)


def plot_curves(records: list[dict[str, Any]], out: Path, title: str | None = None) -> Path:
    plt = _pyplot()
    levels, _ = _levels(records)
    curves: OrderedDict[tuple[str, str], list[list[tuple[int, float]]]] = OrderedDict()
    windows: dict[tuple[str, str], tuple[int, int]] = {}
    for r in sorted(records, key=lambda r: (r.get("row_index", 0), _variant_order(variant_of(r)))):
        if r.get("status") != "ok" or not r.get("curve"):
            continue
        key = (row_label(r["algorithm"], variant_of(r)), r["level"])
        points = [(c["step"], 100 * c["success_rate"]) for c in r["curve"]]
        curves.setdefault(key, []).append(points)
        k = int(r.get("last_k") or len(points))
        scored = [s for s, _ in points][-k:]
        if len(points) > 1:  # a policy that is not trained (LLM-as-policy) has one point and no window
            windows[key] = (min(scored), max(scored))
    if not curves:
        raise UserError("no learning curves in these records")
    fig, axes = _grid(plt, len(levels))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(label for label, _ in curves))
    for ax, lv in zip(axes, levels):
        spans = [windows[key] for key in curves if key[1] == lv and key in windows]
        if spans:
            ax.axvspan(min(a for a, _ in spans), max(b for _, b in spans), color="#f0e0a0", alpha=0.5, lw=0,
                       label="scored window")
        for (label, level), runs in curves.items():
            if level != lv:
                continue
            steps = [s for s, _ in runs[0]]
            ys = np.array([[v for _, v in run] for run in runs if len(run) == len(steps)])
            mean = ys.mean(axis=0)
            color = colors[labels.index(label) % len(colors)]
            if len(steps) == 1:  # not trained: its one evaluation as a level line
                ax.axhline(mean[0], color=color, ls="--", lw=1, label=f"{label} (n={len(ys)}, not trained)")
                continue
            ax.plot(steps, mean, label=f"{label} (n={len(ys)})", marker="o", markersize=2, color=color)
            if len(ys) > 1:
                sd = ys.std(axis=0, ddof=1)
                ax.fill_between(steps, mean - sd, mean + sd, alpha=0.15, color=color)
        ax.set_title(lv)
        ax.set_xlabel("gradient steps")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success rate (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), frameon=False)
    fig.subplots_adjust(bottom=0.2)
    plt_title = title or "learning curves (mean ± std over seeds)"
    fig.suptitle(plt_title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * math.ceil(len(names) / 4), 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def plot_gains(report: Report, out: Path, title: str | None = None) -> Path | None:
    plt = _pyplot()
    tidy = _table(report, "gains")
    if tidy is None or tidy.empty:
        return None
    levels = list(dict.fromkeys(tidy["level"]))
    diffs = list(dict.fromkeys(tidy["difference"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    step = len(diffs) + 1  # one blank row between levels
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.8 + 0.22 * step * len(levels)))
    ax.axvline(0, color="black", lw=0.6)
    for j, diff in enumerate(diffs):
        sel = tidy[tidy["difference"] == diff].set_index("level").reindex(levels)
        y = -(np.arange(len(levels)) * step + j)
        mean = sel["mean"].astype(float).to_numpy()
        lo = sel["ci_low"].astype(float).to_numpy()
        hi = sel["ci_high"].astype(float).to_numpy()
        n = sel["n"].fillna(0).astype(int).to_numpy()
        ci = ~np.isnan(lo)
        color = colors[j % len(colors)]
        ax.errorbar(mean[ci], y[ci], xerr=[mean[ci] - lo[ci], hi[ci] - mean[ci]], fmt="o", color=color,
                    capsize=3, markersize=4, label=f"{diff} (n={max(n) if len(n) else 0})")
        if (~ci).any():  # one pair: a point, no interval
            ax.plot(mean[~ci], y[~ci], "o", mfc="white", color=color)
    centres = -(np.arange(len(levels)) * step + (len(diffs) - 1) / 2)
    ax.set_yticks(centres, levels)
    ax.set_xlabel("difference in success rate (points), mean of the paired differences [95% t-interval]")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="best")
    return _save(plt, fig, out, title or "gains: paired differences per replication")


def plot_diagnostics(report: Report, out: Path, title: str | None = None) -> Path | None:
    plt = _pyplot()
    tidy = _table(report, "rollouts")
    if tidy is None or tidy.empty:
        return None
    metrics = [m for m in ("goal match %", "realistic goal match %") if m in set(tidy["metric"])]
    if not metrics:
        return None
    levels = list(dict.fromkeys(tidy["level"]))
    sources = list(dict.fromkeys(tidy["source"]))
    fig, axes = _grid(plt, len(metrics), cols=len(metrics))
    x = np.arange(len(levels))
    width = 0.8 / len(sources)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, metrics):
        for i, src in enumerate(sources):
            sel = tidy[(tidy["metric"] == metric) & (tidy["source"] == src)].set_index("level").reindex(levels)
            ax.bar(x - 0.4 + width * (i + 0.5), sel["mean"].astype(float), width,
                   yerr=sel["std"].astype(float).fillna(0.0), color=colors[i % len(colors)], capsize=2,
                   edgecolor="black", linewidth=0.4, label=src)
        ax.set_title(metric.replace(" %", " (%)"))
        ax.set_xticks(x, levels)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("% of imagined rollouts")
    axes[0].legend()
    return _save(plt, fig, out, title or "imaginary rollouts: goal match per source and level (mean ± std)")
