"""The ``kalm-bench`` command line.

User errors (a bad suite, an unknown name, a corrupt file) print one line naming the file and field and
exit with status 2; only bugs print tracebacks. Heavy libraries are imported by the commands that need
them, so ``--help``, ``plugins`` and ``validate`` stay fast.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .compat import quiet_gym_banner
from .errors import UserError


def _registry():
    from .plugins import get_registry

    return get_registry()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kalm-bench")
def cli() -> None:
    """Benchmark harness for LLM-grounded offline RL (KALM): suites → runs → records → tables."""


OVERRIDE = click.option("-x", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                        help="Override a suite field (repeatable; KEY+=VALUE appends to a list).")


def _plan(suite_file: str, overrides: tuple[str, ...]):
    from .plan import build_plan
    from .suite import load_suite

    loaded = load_suite(suite_file, overrides)
    return build_plan(loaded, _registry())


@cli.command()
@click.argument("suite_file", type=click.Path(dir_okay=False))
@OVERRIDE
def validate(suite_file: str, overrides: tuple[str, ...]) -> None:
    """Check a suite: schema, names of plugins, presets and options, levels."""
    plan = _plan(suite_file, overrides)
    kinds: dict[str, int] = {}
    for st in plan.stages.values():
        kinds[st.kind] = kinds.get(st.kind, 0) + 1
    detail = ", ".join(f"{n} {k}" for k, n in kinds.items())
    click.echo(f"ok: {plan.loaded.suite.suite} v{plan.loaded.suite.version}: {len(plan.runs)} runs over "
               f"{len(plan.stages)} stages ({detail})")


DEFAULT_OUTPUT = Path("runs")


@cli.command()
@click.argument("suite_file", type=click.Path(dir_okay=False))
@OVERRIDE
@click.option("--output", "-o", type=click.Path(file_okay=False), default=None,
              help=f"Results directory [default: {DEFAULT_OUTPUT}/<suite>; the committed results/ are never "
                   "written unless named here].")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact cache [default: $KALM_BENCH_CACHE or ~/.cache/kalm-bench].")
@click.option("--jobs", "-j", type=click.IntRange(1), default=1, show_default=True,
              help="Independent runs executed in parallel processes.")
@click.option("--executor", default="local", show_default=True, help="Executor plugin (see `kalm-bench ls executors`).")
@click.option("--rerun-failed", is_flag=True, help="Retry runs whose record says failed.")
@click.option("--show-config", is_flag=True, help="Print the merged, validated suite and exit.")
@click.option("--dry-run", is_flag=True, help="List the runs (done, failed earlier, to run) and the stages the "
                                               "runs to do need (cached or to build), and exit.")
@click.option("--format", "fmt", default="md", show_default=True, help="Table format printed at the end.")
@click.option("--quiet", "-q", is_flag=True, help="Log only warnings and errors (no stage or run lines).")
@click.option("--verbose", "-v", is_flag=True, help="Also log cached stages, and progress every few seconds.")
def run(suite_file: str, overrides: tuple[str, ...], output: str | None, cache_dir: str | None, jobs: int,
        executor: str, rerun_failed: bool, show_config: bool, dry_run: bool, fmt: str, quiet: bool,
        verbose: bool) -> None:
    """Run a suite (resumes by default), write one record per run, print the table.

    A line per started and finished stage and per finished run goes to stderr (stdlib logging), so the
    progress shows in a CI log or a file too.
    """
    import yaml

    from .cache import ArtifactStore

    plan = _plan(suite_file, overrides)
    suite = plan.loaded.suite
    if show_config:
        click.echo(yaml.safe_dump(suite.model_dump(mode="json"), sort_keys=False), nl=False)
        return
    store = ArtifactStore(cache_dir)
    out = Path(output) if output else DEFAULT_OUTPUT / suite.suite
    if dry_run:
        _dry_run(plan, out, store, rerun_failed)
        return
    _registry().get("reporters", fmt, field="--format")
    _configure_logging(quiet, verbose)
    summary = _execute(plan, out, store, executor, jobs, rerun_failed)
    click.echo(f"\n{summary.ok} ok, {summary.failed} failed, {summary.skipped_ok} already done"
               f"{f', {summary.skipped_failed} failed earlier' if summary.skipped_failed else ''}; "
               f"stages built {summary.stages_built}, reused {summary.stages_cached}; {summary.wall_s:.0f} s → {out}")
    if any(r.get("status") == "ok" for r in summary.records):
        # An invocation that ran nothing leaves the written tables as they are.
        written = _write_tables(out, fmt) if summary.ok or summary.failed else {}
        text = written.get(fmt) or _render_report(out, fmt=fmt, stat=None, reference=None, reference_env=None)
        click.echo("\n" + text)
    if summary.failed or summary.skipped_failed:
        sys.exit(1)


def _configure_logging(quiet: bool, verbose: bool) -> None:
    from .logs import configure

    if quiet and verbose:
        raise UserError("--quiet and --verbose exclude each other", field="--quiet")
    configure(-1 if quiet else 1 if verbose else 0)


def _dry_run(plan, out: Path, store, rerun_failed: bool) -> None:
    from .runner import plan_status

    status = plan_status(plan, out, rerun_failed)
    state = {r.run_id: "done" for r in status.done}
    state.update({r.run_id: "failed earlier (--rerun-failed retries it)" for r in status.failed_earlier})
    click.echo(f"runs ({len(plan.runs)}) → {out}")
    for r in plan.runs:
        click.echo(f"  {state.get(r.run_id, 'to run'):12s} {r.describe()}")
    needed = {key for r in status.todo for key in r.stages.values()}
    click.echo(f"stages the runs to do need ({len(needed)} of {len(plan.stages)})")
    for st in plan.stages.values():
        if st.key in needed:
            click.echo(f"  {'cached' if store.done(st.kind, st.key) else 'to build':8s} {st.kind:9s} "
                       f"{st.key[:12]}  {st.label}")
    click.echo(f"{len(status.done)} done, {len(status.failed_earlier)} failed earlier, {len(status.todo)} to run")
    if status.foreign:
        click.echo(f"warning: {out} holds {len(status.foreign)} finished run(s) not in this plan: a run there "
                   "is refused; choose another --output", err=True)


def _execute(plan, out: Path, store, executor: str, jobs: int, rerun_failed: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .runner import Runner

    console = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bars:
        def factory(stage):
            task = bars.add_task(f"{stage.kind}: {stage.label}", total=None)

            def update(done: int, total: int) -> None:
                bars.update(task, completed=done, total=total)
            return update

        runner = Runner(plan, out, store, executor=executor, jobs=jobs, rerun_failed=rerun_failed,
                        progress_factory=factory if console.is_terminal else None)
        return runner.run()


def _write_tables(results: Path, fmt: str) -> dict[str, str]:
    """``table.md`` and ``table.csv`` (and ``table.<ext>`` of ``fmt``), each with every table of ``report``;
    returns the text written per format."""
    from .cache import atomic_write_text

    written = {}
    for name in dict.fromkeys(("md", "csv", fmt)):
        reporter = _registry().get("reporters", name, field="--format")
        written[name] = _render_report(results, fmt=name, stat=None, reference=None, reference_env=None)
        atomic_write_text(results / f"table.{reporter.extension}", written[name])
    return written


def _render_report(results: Path, fmt: str, stat: str | None, reference: str | None, reference_env: str | None,
                   title: str | None = None) -> str:
    from .records import load_records
    from .report import (build_comparison_table, build_diagnostics_table, build_gain_table, build_rollouts_table,
                         build_table, build_timing_table, provenance_lines)

    records = load_records(results)
    cfg: dict[str, Any] = {}
    plan_file = results / "plan.json" if results.is_dir() else None
    if plan_file and plan_file.is_file():
        cfg = json.loads(plan_file.read_text()).get("config", {}).get("report", {}) or {}
    stat = stat or cfg.get("stat", "mean_std")
    ref_df, reference_env = _reference_for(results, reference, reference_env)
    reps = int(cfg.get("reps", 2000))
    reporter = _registry().get("reporters", fmt, field="--format")()
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    suite_name = records[0]["suite"] if records else "results"
    table = build_table(records, stat=stat, reference=ref_df, reference_env=reference_env, reps=reps)
    parts = [reporter.render(table, title=title or f"{suite_name}: success rate (%)")]
    gains = build_gain_table(records)
    if gains is not None:
        parts.append(reporter.render(gains, title="Gains (points): mean of the differences paired by replication "
                                                  "[95% Student-t CI] (n pairs); KALM − control is what the LLM "
                                                  "adds beyond the control's rollouts"))
    for comp in cfg.get("comparisons", []) or []:
        parts.append(reporter.render(build_comparison_table(table, comp["rows"], comp.get("levels")),
                                     title=comp["title"]))
    imaginary = build_rollouts_table(records)
    if imaginary is not None:
        parts.append(reporter.render(imaginary, title="Imaginary rollouts per source and level (mean ± std (n "
                                                      "replications))"))
    diag = build_diagnostics_table(records)
    if diag is not None:
        parts.append(reporter.render(diag, title="LLM diagnostics (%)"))
    timings_file = results / "timings.json" if results.is_dir() else None
    timings = None
    if timings_file is not None and timings_file.is_file():
        try:
            timings = json.loads(timings_file.read_text())
            timing = build_timing_table(timings)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"corrupt timings file ({exc})", file=timings_file) from None
        if timing is not None:
            parts.append(reporter.render(timing, title="Wall time per stage (each stage's build time, also for "
                                                       "stages an earlier invocation built into the cache)"))
    cell = "mean ± std (n seeds)" if stat == "mean_std" else "IQM [95% stratified-bootstrap CI] (n seeds)"
    ks = sorted({int(r["last_k"]) for r in ok if r.get("last_k") is not None}, reverse=True)
    untrained = sorted({r["algorithm"] for r in ok if len(ks) > 1 and r.get("last_k") == ks[-1]})
    window = (f"{ks[0]} checkpoints" + (f" ({ks[-1]} for {', '.join(untrained)})" if len(ks) > 1 else "")
              if ks else "? checkpoints")
    footer = (f"{len(ok)} runs ok, {len(failed)} failed. Cells: {cell} of the per-seed success rate, each the mean "
              f"over the last {window}; a cell of one seed shows its "
              "value alone. Each seed is a replication: it re-runs the stages "
              f"{', '.join(ok[0].get('replicate') or ['policy']) if ok else 'policy'}.")
    if fmt == "md":
        parts.append(footer + "\n")
        prov = provenance_lines(records, timings)
        if prov:
            parts.append("Provenance:\n\n" + "\n".join(prov) + "\n")
    return "\n".join(parts)


@cli.command()
@click.argument("results", type=click.Path(exists=False))
@click.option("--format", "fmt", default="md", show_default=True, help="md, csv, latex, or a reporter plugin.")
@click.option("--stat", type=click.Choice(["mean_std", "iqm_ci"]), default=None,
              help="Cell statistic [default: the suite's report.stat].")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="CSV of published numbers shown beside ours [default: the suite's report.reference].")
@click.option("--reference-env", default=None, help="Value of the reference CSV's env column to use.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file.")
@click.option("--summary", is_flag=True, help="Also append the Markdown table to $GITHUB_STEP_SUMMARY.")
def report(results: str, fmt: str, stat: str | None, reference: str | None, reference_env: str | None,
           output: str | None, summary: bool) -> None:
    """Print the results table of a results directory (or records .jsonl)."""
    text = _render_report(Path(results), fmt, stat, reference, reference_env)
    if output:
        from .cache import atomic_write_text

        atomic_write_text(Path(output), text)
    else:
        click.echo(text, nl=False)
    if summary and os.environ.get("GITHUB_STEP_SUMMARY"):
        md = text if fmt == "md" else _render_report(Path(results), "md", stat, reference, reference_env)
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as f:
            f.write(md + "\n")


@cli.command()
@click.argument("results", type=click.Path(exists=False))
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for the PNG files [default: RESULTS itself].")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="CSV of published numbers drawn beside ours [default: the suite's report.reference].")
@click.option("--reference-env", default=None, help="Value of the reference CSV's env column to use.")
def plot(results: str, out_dir: str | None, reference: str | None, reference_env: str | None) -> None:
    """Draw success-rate bars per level (paper beside ours) and learning curves as PNG."""
    from .plot import plot_bars, plot_curves
    from .records import load_records

    path = Path(results)
    records = load_records(path)
    ref_df, ref_env = _reference_for(path, reference, reference_env)
    out = Path(out_dir) if out_dir else (path if path.is_dir() else path.parent)
    bars = plot_bars(records, out / "success_bars.png", ref_df, ref_env)
    curves = plot_curves(records, out / "learning_curves.png")
    click.echo(f"wrote {bars} and {curves}")


def _reference_for(results: Path, reference: str | None, reference_env: str | None):
    from .report import load_reference

    cfg: dict[str, Any] = {}
    suite_file = None
    plan_file = results / "plan.json" if results.is_dir() else None
    if plan_file and plan_file.is_file():
        plan = json.loads(plan_file.read_text())
        cfg = plan.get("config", {}).get("report", {}) or {}
        # Written relative to the results directory (older results hold an absolute path, which `/` keeps).
        suite_file = results / plan.get("suite_file", ".")
    ref_path = reference or cfg.get("reference")
    if not ref_path:
        return None, None
    p = Path(ref_path)
    if reference is None and not p.is_absolute() and suite_file is not None:
        p = suite_file.parent / p
    copy = results / "reference.csv" if results.is_dir() else None
    if reference is None and copy is not None and copy.is_file():
        p = copy  # the copy the run saved: the suite file may be elsewhere or gone
    return load_reference(p), reference_env or cfg.get("reference_env")


@cli.command()
@click.argument("results", type=click.Path(exists=False))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None)
@click.option("--all", "all_records", is_flag=True, help="Include records of runs no longer in the suite's plan.")
def export(results: str, fmt: str, output: str | None, all_records: bool) -> None:
    """Export run records as JSON lines or a tidy CSV (one row per run)."""
    from .records import load_records, write_csv, write_jsonl

    records = load_records(results, current_only=not all_records)
    text = write_jsonl(records) if fmt == "jsonl" else write_csv(records)
    if output:
        from .cache import atomic_write_text

        atomic_write_text(Path(output), text)
    else:
        click.echo(text, nl=False)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed plugins: version, hooks, what each registered, and load failures."""
    reg = _registry()
    infos = [p.as_dict() for p in reg.plugins.values()]
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    for p in infos:
        version = f" {p['version']}" if p["version"] else ""
        origin = "built-in" if p["builtin"] else (p["distribution"] or p["module"])
        click.echo(f"{p['name']}{version}  ({origin})")
        if p["error"]:
            click.echo(f"  FAILED TO LOAD: {p['error']}")
        for kind, names in sorted(p["registered"].items()):
            click.echo(f"  {kind}: {', '.join(names)}")
    failures = reg.failures()
    if failures:
        click.echo(f"\n{len(failures)} plugin(s) failed to load and were skipped "
                   "(KALM_BENCH_STRICT_PLUGINS=1 makes this an error).")


@cli.command(name="ls")
@click.argument("kind", type=click.Choice(["envs", "algorithms", "llm_backends", "grounding_tasks",
                                           "rollout_sources", "encoders", "executors", "reporters"]))
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(kind: str, as_json: bool) -> None:
    """List what plugins registered of one kind, with presets, levels and options."""
    reg = _registry()
    rows = []
    for name in reg.names(kind):
        cls = reg.get(kind, name)
        row = {"name": name, "plugin": reg.plugin_of(kind, name).name, "version": cls.version,
               "description": cls.description, "options": sorted(cls.Config.model_fields),
               "presets": sorted(cls.presets)}
        if kind == "envs":
            row["levels"] = dict(cls.levels)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['name']}  [{row['plugin']}]  {row['description']}")
        if row.get("levels"):
            click.echo(f"  levels: {', '.join(row['levels'])}")
        if row["presets"]:
            click.echo(f"  presets: {', '.join(row['presets'])}")
        if row["options"]:
            click.echo(f"  options: {', '.join(row['options'])}")


@cli.group()
def cache() -> None:
    """Inspect or clear the stage-artifact cache."""


@cache.command(name="ls")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None)
@click.option("--kind", default=None, help="dataset, grounding, rollouts, train or eval.")
@click.option("--json", "as_json", is_flag=True)
def cache_ls(cache_dir: str | None, kind: str | None, as_json: bool) -> None:
    """List complete cache entries."""
    from .cache import ArtifactStore

    store = ArtifactStore(cache_dir)
    entries = list(store.entries(kind))
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    total = 0
    for e in entries:
        total += e.size
        wall = f"{e.wall_s:.1f}s" if e.wall_s is not None else "-"
        click.echo(f"{e.kind:9s} {e.key[:12]}  {e.size / 1e6:8.2f} MB  {wall:>8s}  {e.label}")
    click.echo(f"{len(entries)} entries, {total / 1e6:.1f} MB in {store.root}")


@cache.command(name="clear")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None)
@click.option("--kind", default=None, help="Only this stage kind.")
@click.option("--key", default=None, help="Only entries whose key starts with this.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cache_clear(cache_dir: str | None, kind: str | None, key: str | None, yes: bool) -> None:
    """Delete cache entries (all, one kind, or by key prefix)."""
    from .cache import ArtifactStore

    store = ArtifactStore(cache_dir)
    what = f"{kind or 'all'} entries{f' with key {key}…' if key else ''} in {store.root}"
    if not yes and not click.confirm(f"Delete {what}?"):
        return
    n = store.clear(kind, key)
    click.echo(f"removed {n} entries")


@cli.group()
def data() -> None:
    """Generate and inspect offline datasets."""


@data.command(name="generate")
@click.argument("env")
@click.option("--episodes", "-n", type=click.IntRange(1), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--option", "-O", "options", multiple=True, metavar="KEY=VALUE",
              help="Option passed to the env's generate_dataset (YAML value).")
@click.option("--env-config", "-c", "env_config", multiple=True, metavar="KEY=VALUE", help="Env config field.")
def data_generate(env: str, episodes: int, seed: int, out: str, options: tuple[str, ...],
                  env_config: tuple[str, ...]) -> None:
    """Generate N offline episodes of ENV's data level into a dataset directory."""
    import time

    from tqdm import tqdm

    from .stages import seed_everything

    cls = _registry().get("envs", env, field="ENV")
    env_obj = cls(_kv(env_config, "--env-config"))
    bar = tqdm(total=episodes, unit="ep", disable=not sys.stderr.isatty())

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    t0 = time.time()
    seed_everything(seed)
    ds = env_obj.generate_dataset(episodes, seed, progress, **_kv(options, "--option"))
    bar.close()
    ds.save(out)
    click.echo(f"wrote {ds.n_episodes} episodes / {ds.n_transitions} transitions "
               f"({100 * ds.success.mean():.1f}% successful) to {out} in {time.time() - t0:.1f} s")


@data.command(name="info")
@click.argument("path", type=click.Path(file_okay=False))
def data_info(path: str) -> None:
    """Verify a dataset directory (checksums, shapes) and print its manifest."""
    from .datasets import TrajectoryDataset

    ds = TrajectoryDataset.load(path)
    click.echo(json.dumps(ds.manifest(), indent=2, sort_keys=True))


def _kv(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"{p!r} must look like KEY=VALUE", field=flag)
        k, v = p.split("=", 1)
        out[k] = yaml.safe_load(v)
    return out


def _add_plugin_commands() -> None:
    """Let plugins add sub-commands; a failing plugin is reported by `plugins`, not fatal here."""
    reg = _registry()
    for impl in reg.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # noqa: BLE001 - isolation, as for the other hooks
            info = reg.plugins.get(impl.plugin_name)
            if info is not None and not info.error:
                info.error = f"register_commands: {type(exc).__name__}: {exc}"


def main(argv: list[str] | None = None) -> None:
    quiet_gym_banner()
    try:
        _add_plugin_commands()
        cli.main(args=argv, prog_name="kalm-bench", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted: finished runs are recorded; run the same command again to resume", err=True)
        sys.exit(130)
    except SystemExit:
        raise


if __name__ == "__main__":  # pragma: no cover
    main()
