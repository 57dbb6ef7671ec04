"""Paired harness-vs-``fit()`` rounds in one process, alternating which goes first (not collected by pytest).

pytest-benchmark runs all rounds of one path, then all of the other; on a VM whose host load drifts, a
ratio near 1 can then flip either way between runs. Here the two paths alternate round by round, and the
ratio of each pair is reported::

    OMP_NUM_THREADS=1 python tests/offline_rl/bench_paired.py discrete-cql@cpu --rounds 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_bench_offline_rl as bench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="+", help=f"benchmark keys: {', '.join(bench.STEPS)}")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = bench.make_data()
    for name in args.names:
        steps, saved = bench.STEPS[name], []
        runs = {"harness": bench._harness_run(name, data, tempfile.mkdtemp(), steps, saved),
                "fit": bench._fit_run(name, data, steps, saved)}
        for run in runs.values():  # warm-up
            run()
        rates: dict[str, list[float]] = {"harness": [], "fit": []}
        for i in range(args.rounds):
            for path in ("harness", "fit") if i % 2 == 0 else ("fit", "harness"):
                t0 = time.perf_counter()
                runs[path]()
                rates[path].append(steps / (time.perf_counter() - t0))
        pairs = [h / f for h, f in zip(rates["harness"], rates["fit"])]
        h, f = statistics.median(rates["harness"]), statistics.median(rates["fit"])
        print(f"{name}: harness {h:.1f}/s, fit {f:.1f}/s; paired ratio median {statistics.median(pairs):.2f} "
              f"(min {min(pairs):.2f}, max {max(pairs):.2f}, {args.rounds} pairs)")


if __name__ == "__main__":
    main()
