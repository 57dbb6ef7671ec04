"""Figures from records: success-rate bars per level (ours beside a reference, like the KALM paper's
Fig. 4) and learning curves (success rate per checkpoint, mean ± std over seeds)."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError
from .report import _groups, _levels, _reference_cell, _variant_order, variant_of
from .suite import BASE, KALM, row_label


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install 'kalm-bench[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bars(records: list[dict[str, Any]], out: Path, reference=None, reference_env: str | None = None,
              title: str | None = None) -> Path:
    plt = _pyplot()
    levels, _ = _levels(records)
    groups = _groups(records)
    if not groups:
        raise UserError("no successful runs to plot")
    refname = {(r["algorithm"], variant_of(r)): r.get("reference_name") or r["algorithm"] for r in records}
    series = []  # (label, means, stds, hatched)
    for (algo, variant), per_level in groups.items():
        vals = [list(per_level.get(lv, {}).values()) for lv in levels]
        series.append((row_label(algo, variant), [np.mean(v) if v else np.nan for v in vals],
                       [np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals], False))
        if reference is not None and variant in (BASE, KALM):
            cells = [_reference_cell(reference, reference_env, lv, refname[(algo, variant)], variant == KALM)
                     for lv in levels]
            means = [c[1] if c[1] is not None else np.nan for c in cells]
            if not all(np.isnan(means)):
                series.append((row_label(algo, variant) + " (paper)", means, [0.0] * len(levels), True))
    width = 0.8 / len(series)
    x = np.arange(len(levels))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(levels) * max(1, len(series) / 3)), 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    base_color: dict[str, str] = {}
    for i, (label, means, stds, hatched) in enumerate(series):
        key = label.replace(" (paper)", "")
        color = base_color.setdefault(key, colors[len(base_color) % len(colors)])
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, label=label, color=color,
               alpha=0.45 if hatched else 0.9, hatch="//" if hatched else None, capsize=2, edgecolor="black",
               linewidth=0.4)
    ax.set_xticks(x, levels)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"{records[0].get('suite', '')}: success rate per level (mean ± std over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_curves(records: list[dict[str, Any]], out: Path) -> Path:
    plt = _pyplot()
    levels, _ = _levels(records)
    curves: OrderedDict[tuple[str, str], list[list[tuple[int, float]]]] = OrderedDict()
    for r in sorted(records, key=lambda r: (r.get("row_index", 0), _variant_order(variant_of(r)))):
        if r.get("status") != "ok" or not r.get("curve"):
            continue
        key = (row_label(r["algorithm"], variant_of(r)), r["level"])
        curves.setdefault(key, []).append([(c["step"], 100 * c["success_rate"]) for c in r["curve"]])
    if not curves:
        raise UserError("no learning curves in these records")
    fig, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 3.2), squeeze=False, sharey=True)
    for j, lv in enumerate(levels):
        ax = axes[0, j]
        for (label, level), runs in curves.items():
            if level != lv:
                continue
            steps = [s for s, _ in runs[0]]
            ys = np.array([[v for _, v in run] for run in runs if len(run) == len(steps)])
            mean = ys.mean(axis=0)
            ax.plot(steps, mean, label=label, marker="o", markersize=2)
            if len(ys) > 1:
                sd = ys.std(axis=0, ddof=1)
                ax.fill_between(steps, mean - sd, mean + sd, alpha=0.2)
        ax.set_title(lv)
        ax.set_xlabel("gradient steps")
        ax.set_ylim(0, 100)
    axes[0, 0].set_ylabel("success rate (%)")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out
