"""``kalm-bench metaworld ...`` commands (click imported lazily by the hook)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


def add_commands(cli: click.Group) -> None:
    @cli.group("metaworld")
    def metaworld() -> None:
        """Meta-world environment tools: import KALM data, check scripted policies, generate data."""

    @metaworld.command("import")
    @click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
                  help="dataset directory to write")
    @click.option("--trust-pickle", is_flag=True, help="the .npy is a pickle: load it only if you trust it")
    def import_cmd(path: Path, out: Path, trust_pickle: bool) -> None:
        """Convert KALM's meta_world.npy into a kalm-bench trajectory dataset."""
        from .data import import_kalm_npy

        ds = import_kalm_npy(path, trust_pickle=True if trust_pickle else None)
        ds.save(out)
        click.echo(f"wrote {ds.n_episodes} episodes, {ds.n_transitions} transitions to {out}")

    @metaworld.command("check")
    @click.option("--episodes", "-n", default=100, show_default=True, help="episodes per task")
    @click.option("--task", "tasks", multiple=True, help="task name (repeatable); default: all 24")
    @click.option("--level", "levels", multiple=True, help="level whose tasks to check (repeatable)")
    @click.option("--horizon", default=100, show_default=True)
    @click.option("--noise", default=0.0, show_default=True, help="Gaussian action-noise std")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--json", "as_json", is_flag=True, help="print JSON rows instead of a table")
    def check_cmd(episodes: int, tasks: tuple[str, ...], levels: tuple[str, ...], horizon: int, noise: float,
                  seed: int, as_json: bool) -> None:
        """Run each task's scripted policy and print its success rate."""
        from kalm_bench.api import UserError

        from .data import check_scripted
        from .tasks import ALL_TASKS, LEVEL_TASKS

        chosen = list(tasks)
        for level in levels:
            if level not in LEVEL_TASKS:
                raise UserError(f"unknown level {level!r} (known: {', '.join(LEVEL_TASKS)})", field="--level")
            chosen += [t for t in LEVEL_TASKS[level] if t not in chosen]
        chosen = chosen or list(ALL_TASKS)
        for t in chosen:
            if t not in ALL_TASKS:
                raise UserError(f"unknown task {t!r}", field="--task")
        t0 = time.perf_counter()
        rows = check_scripted(chosen, episodes, seed, horizon=horizon, noise=noise)
        if as_json:
            click.echo(json.dumps(rows, indent=1))
            return
        click.echo(f"{'task':18s} {'level':8s} {'success':>9s} {'rate':>6s} {'steps':>6s} {'steps/s':>8s}")
        for r in rows:
            click.echo(f"{r['task']:18s} {r['level']:8s} {r['successes']:4d}/{r['episodes']:<4d} "
                       f"{100 * r['success_rate']:5.1f}% {r['mean_steps_to_success']:6.1f} {r['steps_per_s']:8.0f}")
        click.echo(f"total {time.perf_counter() - t0:.1f} s (horizon {horizon}, noise {noise}, seed {seed})")

    @metaworld.command("generate")
    @click.option("--episodes", "-n", default=1000, show_default=True, help="episodes in total (round-robin "
                  "over the 10 seen tasks)")
    @click.option("--seed", default=0, show_default=True)
    @click.option("--noise", default=None, type=float, help="action-noise std (default: config, 0.1)")
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path))
    def generate_cmd(episodes: int, seed: int, noise: float | None, out: Path) -> None:
        """Generate the scripted offline dataset for the seen tasks."""
        from .environment import MetaworldEnvironment

        env = MetaworldEnvironment()
        opts = {} if noise is None else {"noise": noise}
        t0 = time.perf_counter()
        ds = env.generate_dataset(episodes, seed, **opts)
        ds.save(out)
        click.echo(f"wrote {ds.n_episodes} episodes ({int(ds.success.sum())} successful), {ds.n_transitions} "
                   f"transitions to {out} in {time.perf_counter() - t0:.1f} s")
