"""Ground a backend on an environment's generated data and imagine rollouts for every novel level.

    OMP_NUM_THREADS=2 python -m kalm_bench_plugins.kalm.measure --episodes 4000 --goals 1000 \\
        --config '{"threads": 2}' --out runs/kalm-measure

Prints and writes ``results.json``: minutes per stage, goal-match and label figures per level (the
model's success flags against the env's: agreement, precision, recall, balanced accuracy), the
diagnostics, and a CPU calibration figure (256×256 matmul+tanh iterations per second) to read timings by.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any


def calibration() -> float:
    import torch

    x = torch.randn(256, 256)
    t = time.perf_counter()
    for _ in range(200):
        x = torch.tanh(x @ x.T / 16)
    return 200 / (time.perf_counter() - t)


def main(argv: list[str] | None = None, *, env: Any = None, backend: Any = None,
         tasks: list[Any] | None = None) -> dict[str, Any]:
    """Run the measurement. ``env``, ``backend`` and ``tasks`` (components) replace ``--env``, ``--backend``
    with ``--config`` and ``--tasks``; names given on the command line are looked up in the plugin
    registry."""
    import torch

    from kalm_bench.api import GroundingContext, ImagineContext, TrajectoryDataset, registry

    from .diagnostics import novel_levels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="clevr-robot")
    p.add_argument("--backend", default="embedded")
    p.add_argument("--episodes", type=int, default=4000)
    p.add_argument("--goals", type=int, default=1000, help="imagined rollouts per novel level")
    p.add_argument("--config", default="{}", help="backend config as JSON")
    p.add_argument("--tasks", default="dynamics,explanation,generation,consequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default="oracle", choices=("oracle", "model"),
                   help="labels of the imagined rollouts (model: the success judge ends them)")
    p.add_argument("--diagnostics", type=int, default=1)
    p.add_argument("--out", default="kalm-measure")
    a = p.parse_args(argv)
    if env is None:
        env = registry().get("envs", a.env)()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"calibration_matmul256_it_s": calibration(), "threads": torch.get_num_threads(),
                           "args": vars(a)}
    t = time.perf_counter()
    dsdir = out / f"data{a.episodes}-seed{a.seed}"
    if (dsdir / "manifest.json").exists():
        ds = TrajectoryDataset.load(dsdir)
    else:
        ds = env.generate_dataset(a.episodes, a.seed)
        ds.save(dsdir)
    res["dataset_min"] = (time.perf_counter() - t) / 60
    res["dataset"] = {"episodes": ds.n_episodes, "transitions": ds.n_transitions,
                      "success": float(ds.success.mean()), "mean_len": float(ds.lengths.mean())}
    if backend is None:
        backend = registry().get("llm_backends", a.backend)(json.loads(a.config))
    if tasks is None:
        tasks = [registry().get("grounding_tasks", n)() for n in a.tasks.split(",")]
    wd = out / "model"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir()
    t0 = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % max(1, total // 20) == 0 or done == total:
            print(f"grounding step {done}/{total} ({time.perf_counter() - t0:.0f} s)", flush=True)

    backend.ground(GroundingContext(ds, env, tasks, a.seed, wd, progress))
    res["ground_min"] = (time.perf_counter() - t0) / 60
    meta = json.loads((wd / "kalm_model.json").read_text())
    res["final_losses"] = meta.get("history", [{}])[-1]
    res["steps"] = meta.get("steps")
    for level in novel_levels(env):
        goals = env.sample_goals(level, a.goals, a.seed + 1)
        t = time.perf_counter()
        im = backend.imagine(ImagineContext(wd, env, level, goals, a.seed, a.labels))
        dt = (time.perf_counter() - t) / 60
        res[f"imagine_{level}"] = {"min": dt, "n": im.n_episodes, "min_per_1000": dt / max(1, im.n_episodes) * 1000,
                                   "mean_len": float(im.lengths.mean()) if im.n_episodes else 0.0, **im.attrs}
        print(level, res[f"imagine_{level}"], flush=True)
    if a.diagnostics:
        t = time.perf_counter()
        res["diagnostics"] = backend.diagnostics(wd, env, ds, a.seed)
        res["diagnostics_min"] = (time.perf_counter() - t) / 60
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
