"""``kalm-bench clevr …`` commands: import KALM's data, replay a dataset, export to Minari, show cases."""

from __future__ import annotations

import json
import sys

import click


def _config(options: tuple[str, ...]):
    from pydantic import ValidationError

    from kalm_bench.api import UserError

    from .config import ClevrConfig

    values = {}
    for opt in options:
        key, sep, val = opt.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {opt!r}", param_hint="--set")
        try:
            values[key] = json.loads(val)
        except json.JSONDecodeError:
            values[key] = val
    try:
        return ClevrConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"{msg} (options: {', '.join(sorted(ClevrConfig.model_fields))})",
                        field=f"--set {where}" if where else "--set") from None


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def add_commands(cli: click.Group) -> None:
    @cli.group("clevr")
    def clevr() -> None:
        """CLEVR-Robot tools: import KALM's data, replay datasets, export to Minari."""

    @clevr.command("import")
    @click.argument("path", type=click.Path(dir_okay=False))
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="dataset directory")
    @click.option("--trust-pickle", is_flag=True,
                  help="allow loading the pickle (only for files you trust); same as kalm-bench --trust-pickle")
    def import_cmd(path: str, out: str, trust_pickle: bool) -> None:
        """Convert KALM's clevr_robot.npy into a kalm-bench dataset directory."""
        from kalm_bench.api import UserError

        from .data import import_kalm_dataset

        try:
            # Without the flag here, the global one (or KALM_BENCH_TRUST_PICKLE) decides.
            ds = import_kalm_dataset(path, trust_pickle=True if trust_pickle else None)
        except UserError as exc:
            _fail(exc)
        ds.save(out)
        click.echo(f"wrote {out}: {ds.n_episodes} episodes, {ds.n_transitions} transitions, "
                   f"{int(ds.success.sum())} successful")

    @clevr.command("replay")
    @click.argument("dataset_dir", type=click.Path(file_okay=False))
    @click.option("--tol", default=1e-4, show_default=True, help="median per-step error allowed")
    @click.option("--set", "settings", multiple=True, help="env option KEY=VALUE (e.g. compat_patches=false)")
    @click.option("--json", "as_json", is_flag=True, help="print the statistics as JSON")
    def replay_cmd(dataset_dir: str, tol: float, settings: tuple[str, ...], as_json: bool) -> None:
        """Replay a dataset's action sequences in the simulator; exit 1 on a mismatch."""
        from kalm_bench.api import TrajectoryDataset
        from kalm_bench.api import UserError

        from .data import replay_dataset

        try:
            ds = TrajectoryDataset.load(dataset_dir)
            report = replay_dataset(ds, _config(settings), tolerance=tol)
        except UserError as exc:
            _fail(exc)
        summary = report.summary()
        if as_json:
            click.echo(json.dumps(summary, indent=2))
        else:
            for k, v in summary.items():
                click.echo(f"{k:28s} {v}")
            click.echo("MATCH" if report.ok else "MISMATCH")
        sys.exit(0 if report.ok else 1)

    @clevr.command("export-minari")
    @click.argument("dataset_dir", type=click.Path(file_okay=False))
    @click.option("--id", "dataset_id", default="kalm_bench/clevr-robot/seen-v0", show_default=True)
    @click.option("--root", type=click.Path(file_okay=False), default=None,
                  help="Minari datasets directory (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    def export_cmd(dataset_dir: str, dataset_id: str, root: str | None) -> None:
        """Export a CLEVR-Robot dataset to Minari (needs `pip install minari`)."""
        from kalm_bench.api import TrajectoryDataset
        from kalm_bench.api import UserError

        from .data import export_minari

        try:
            ds = TrajectoryDataset.load(dataset_dir)
            mds = export_minari(ds, dataset_id, root=root)
        except UserError as exc:
            _fail(exc)
        click.echo(f"exported {mds.total_episodes} episodes as Minari dataset {dataset_id}")

    @clevr.command("cases")
    @click.argument("level")
    @click.option("-n", "n", type=int, default=None, help="number of cases (default 111; 666 for easy)")
    @click.option("--seed", default=7, show_default=True)
    @click.option("--set", "settings", multiple=True, help="env option KEY=VALUE")
    def cases_cmd(level: str, n: int | None, seed: int, settings: tuple[str, ...]) -> None:
        """Print a level's test cases as JSON lines."""
        from kalm_bench.api import UserError

        from .plugin import ClevrRobot

        try:
            cases = ClevrRobot(_config(settings)).test_cases(level, n, seed)
        except UserError as exc:
            _fail(exc)
        for c in cases:
            click.echo(json.dumps(c))
