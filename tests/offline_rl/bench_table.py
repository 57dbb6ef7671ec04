"""Markdown table of harness vs bare d3rlpy ``fit()`` throughput from a pytest-benchmark JSON file.

    python tests/offline_rl/bench_table.py /tmp/orl-bench.json
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    doc = json.loads(open(path).read())
    rate: dict[tuple[str, str], float] = {}
    share: dict[str, float] = {}
    for b in doc["benchmarks"]:
        info = b["extra_info"]
        # median seconds per round → updates per second
        rate[(b["group"], info["path"])] = info["updates_per_round"] / b["stats"]["median"]
        if "fit_sample_ms" in info:
            share[b["group"]] = info["fit_sample_ms"] / (info["fit_sample_ms"] + info["fit_update_ms"])
    calib = rate.get(("calibration", "torch-mlp"))
    print(f"calibration (torch MLP 394→256→256→40, batch 256, Adam): {calib:.0f} it/s" if calib else "")
    print()
    print("| algorithm | harness updates/s | d3rlpy fit() updates/s | harness / fit | fit(): sampling share |")
    print("|---|---|---|---|---|")
    groups = sorted({g for g, _ in rate if g != "calibration"})
    for g in groups:
        h, f = rate.get((g, "harness")), rate.get((g, "d3rlpy-fit"))
        if h and f:
            cell = f"{share[g]:.0%}" if g in share else "–"
            print(f"| {g} | {h:.1f} | {f:.1f} | {h / f:.2f}× | {cell} |")
    print()
    print(f"machine: {doc.get('machine_info', {}).get('cpu', {}).get('brand_raw', '?')}, "
          f"started {doc.get('datetime', '?')}")


if __name__ == "__main__":
    main(sys.argv[1])
