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
from .errors import PluginError, UserError


def _registry():
    from .plugins import get_registry

    return get_registry()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="kalm-bench")
@click.option("--trust-pickle", is_flag=True,
              help="Allow loading pickled files (KALM's released .npy files), which can run code when loaded: "
                   "only for files from a source you trust. Same as KALM_BENCH_TRUST_PICKLE=1; a suite "
                   "cannot turn this on.")
def cli(trust_pickle: bool) -> None:
    """Benchmark harness for LLM-grounded offline RL (KALM): suites → runs → records → tables."""
    if trust_pickle:
        from .api import TRUST_PICKLE_ENV

        # Through the environment, so worker processes (any executor) see the same choice.
        os.environ[TRUST_PICKLE_ENV] = "1"


OVERRIDE = click.option("-x", "overrides", multiple=True, metavar="KEY.PATH=VALUE",
                        help="Override a suite field (repeatable; KEY+=VALUE appends to a list).")


def _plan(suite_file: str, overrides: tuple[str, ...]):
    from .plan import build_plan
    from .suite import load_suite

    loaded = load_suite(suite_file, overrides)
    return build_plan(loaded, _registry())


@cli.command()
@click.argument("suite_file", type=click.Path())
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
@click.argument("suite_file", type=click.Path())
@OVERRIDE
@click.option("--output", "-o", type=click.Path(), default=None,
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
    from .output_dir import check_writable_dir

    plan = _plan(suite_file, overrides)
    suite = plan.loaded.suite
    if show_config:
        click.echo(yaml.safe_dump({**suite.model_dump(mode="json"), "resolved": _resolved_components(plan)},
                                  sort_keys=False), nl=False)
        return
    out = Path(output) if output else DEFAULT_OUTPUT / suite.suite
    check_writable_dir(out, "--output", create=not dry_run)  # before any stage runs
    store = ArtifactStore(cache_dir)
    if dry_run:
        _dry_run(plan, out, store, rerun_failed)
        return
    _registry().get("reporters", fmt, field="--format")
    _configure_logging(quiet, verbose)
    _report_outcome(_execute(plan, out, store, executor, jobs, rerun_failed), out, fmt)


def _report_outcome(summary: Any, out: Path, fmt: str) -> None:
    """After `run` or `eval`: the counts line, the tables (written when this invocation ran something), and
    exit status 1 when a run failed."""
    click.echo(f"\n{summary.ok} ok, {summary.failed} failed"
               f"{f' ({summary.retried} of these retried after failing earlier)' if summary.retried else ''}, "
               f"{summary.skipped_ok} already done"
               f"{f', {summary.skipped_failed} failed earlier' if summary.skipped_failed else ''}; "
               f"stages built {summary.stages_built}, reused {summary.stages_cached}; {summary.wall_s:.0f} s → {out}")
    if any(r.get("status") == "ok" for r in summary.records):
        # An invocation that ran nothing leaves the written tables as they are.
        written = _write_tables(out, fmt) if summary.ok or summary.failed else {}
        text = written.get(fmt) or _render_report(out, fmt=fmt, stat=None, reference=None, reference_env=None)
        click.echo("\n" + text)
    if summary.failed or summary.skipped_failed:
        sys.exit(1)


@cli.command(name="eval")
@click.argument("results", type=click.Path())
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Env option for the new evaluations (repeatable), e.g. goal_files.rephrase=my_goals.json.")
@click.option("--levels", default=None, metavar="L1,L2", help="Levels to evaluate [default: those of RESULTS].")
@OVERRIDE
@click.option("--output", "-o", type=click.Path(), default=None,
              help=f"Results directory of the new evaluations [default: {DEFAULT_OUTPUT}/<suite>-eval].")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="Artifact cache holding the trained policies [default: $KALM_BENCH_CACHE or ~/.cache/kalm-bench].")
@click.option("--jobs", "-j", type=click.IntRange(1), default=1, show_default=True)
@click.option("--dry-run", is_flag=True, help="List what would be evaluated and built, and exit.")
@click.option("--format", "fmt", default="md", show_default=True, help="Table format printed at the end.")
@click.option("--quiet", "-q", is_flag=True, help="Log only warnings and errors.")
def eval_cmd(results: str, settings: tuple[str, ...], levels: str | None, overrides: tuple[str, ...],
             output: str | None, cache_dir: str | None, jobs: int, dry_run: bool, fmt: str, quiet: bool) -> None:
    """Evaluate the trained policies of RESULTS again, with changed env options (your own goal file) or on
    other levels, without training anything: only the evaluation stages are built (-x takes eval.* fields)."""
    from .cache import ArtifactStore
    from .output_dir import check_writable_dir
    from .reevaluate import reevaluation_plan

    level_list = [lv.strip() for lv in levels.split(",") if lv.strip()] if levels else None
    plan, missing = reevaluation_plan(results, _registry(), settings, level_list, overrides)
    for line in missing:
        click.echo(f"skipped: {line}", err=True)
    out = Path(output) if output else DEFAULT_OUTPUT / f"{plan.loaded.suite.suite}-eval"
    if out.resolve() == Path(results).resolve():
        raise UserError("the new evaluations need their own results directory", file=out, field="--output")
    check_writable_dir(out, "--output", create=not dry_run)
    store = ArtifactStore(cache_dir)
    to_build: dict[str, int] = {}
    for st in plan.stages.values():
        if not store.done(st.kind, st.key):
            to_build[st.kind] = to_build.get(st.kind, 0) + 1
    untrained = to_build.get("train", 0)
    click.echo(f"{len(plan.runs)} evaluation(s) of {len({r.stages['train'] for r in plan.runs})} trained "
               f"policies; stages to build: {', '.join(f'{n} {k}' for k, n in to_build.items()) or 'none'}", err=True)
    if untrained:
        click.echo(f"warning: {untrained} trained policies are not in the cache {store.root}; they are trained "
                   "again first (the cache that ran RESULTS holds them: --cache)", err=True)
    if dry_run:
        _dry_run(plan, out, store, False)
        return
    _registry().get("reporters", fmt, field="--format")
    _configure_logging(quiet, False)
    _report_outcome(_execute(plan, out, store, "local", jobs, False), out, fmt)


def _resolved_components(plan: Any) -> dict[str, Any]:
    """Every component's configuration as the stages will use it: defaults < preset < the suite's values."""
    out: dict[str, Any] = {"env": None, "encoder": None, "algorithms": {}, "llm_backends": {}}
    for run in plan.runs:
        train = plan.stages[run.stages["train"]].spec
        out["algorithms"].setdefault(run.row, {"name": train["algorithm"]["name"],
                                               "config": train["algorithm"]["config"]})
        out["encoder"] = out["encoder"] or {"name": train["encoder"]["name"], "config": train["encoder"]["config"]}
        if "grounding" in run.stages:
            backend = plan.stages[run.stages["grounding"]].spec["backend"]
            out["llm_backends"].setdefault(f"{run.row}", {"name": backend["name"], "config": backend["config"]})
        if out["env"] is None:
            env = plan.stages[run.stages["dataset"]].spec["env"]
            out["env"] = {"name": env["name"], "config": env["config"]}
    return out


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
    state.update({r.run_id: "to run again (failed earlier)" for r in status.retried})
    click.echo(f"runs ({len(plan.runs)}) → {out}")
    for r in plan.runs:
        click.echo(f"  {state.get(r.run_id, 'to run'):12s} {r.describe()}")
    needed = {key for r in status.todo for key in r.stages.values()}
    click.echo(f"stages the runs to do need ({len(needed)} of {len(plan.stages)})")
    for st in plan.stages.values():
        if st.key in needed:
            click.echo(f"  {'cached' if store.done(st.kind, st.key) else 'to build':8s} {st.kind:9s} "
                       f"{st.key[:12]}  {st.label}")
    click.echo(f"{len(status.done)} done, {len(status.failed_earlier)} failed earlier, {len(status.todo)} to run"
               + (f" ({len(status.retried)} of them failed earlier)" if status.retried else ""))
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
    """Every table of the report into ``results``: ``table.md`` (all tables, with how to read them and the
    provenance), ``tables/<name>.csv`` (one tidy CSV per table), ``tables.json`` (all tidy tables) and
    ``table.<ext>`` of ``fmt`` when that is another format; returns the text to print per format."""
    from .cache import atomic_write_text
    from .report import build_report

    report = build_report(results)
    written = {}
    for name in dict.fromkeys(("md", "csv", "json", fmt)):
        reporter = _registry().get("reporters", name, field="--format")()
        if reporter.single_table:
            for table in report.tables:
                text = reporter.render_tables([table], report.footer)
                atomic_write_text(results / "tables" / f"{table.name}.{reporter.extension}", text)
            written[name] = reporter.render_tables(report.tables[:1], report.footer)
        else:
            written[name] = reporter.render_tables(report.tables, report.footer)
            atomic_write_text(results / (f"tables.{reporter.extension}" if name == "json"
                                         else f"table.{reporter.extension}"), written[name])
    stale = results / "table.csv"  # older results held every table in one CSV; tables/ replaces it
    if stale.is_file():
        stale.unlink()
    return written


def _render_report(results: Path, fmt: str, stat: str | None, reference: str | None, reference_env: str | None,
                   title: str | None = None, table: str | None = None) -> str:
    from .report import build_report

    reporter = _registry().get("reporters", fmt, field="--format")()
    report = build_report(results, stat=stat, reference=reference, reference_env=reference_env, title=title)
    tables = report.tables
    names = [t.name for t in tables]
    if table is not None:
        if table not in names:
            raise UserError(f"no table {table!r} in these results; tables: {', '.join(names)}", field="--table")
        tables = [t for t in tables if t.name == table]
    elif reporter.single_table:
        tables = tables[:1]
    return reporter.render_tables(tables, report.footer)


@cli.command()
@click.argument("results", type=click.Path(exists=False))
@click.option("--format", "fmt", default="md", show_default=True,
              help="md, latex, csv, json, or a reporter plugin (see `kalm-bench ls reporters`).")
@click.option("--stat", type=click.Choice(["mean_std", "iqm_ci"]), default=None,
              help="Cell statistic [default: the suite's report.stat].")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="CSV of published numbers shown beside ours [default: the suite's report.reference].")
@click.option("--reference-env", default=None, help="Value of the reference CSV's env column to use.")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default=None, help="Write to a file.")
@click.option("--summary", is_flag=True, help="Also append the Markdown table to $GITHUB_STEP_SUMMARY.")
@click.option("--write", "write_files", is_flag=True,
              help="Also (re)write the table files of the results directory, as a run does (table.md, tables/).")
@click.option("--table", default=None, metavar="NAME",
              help="Only this table: success, gains, comparison-N, rollouts, diagnostics or timing [default: all; "
                   "success for one-table formats such as csv].")
def report(results: str, fmt: str, stat: str | None, reference: str | None, reference_env: str | None,
           output: str | None, summary: bool, table: str | None, write_files: bool) -> None:
    """Print the tables of a results directory (or records .jsonl): md and latex show formatted cells; csv
    (one table) and json (all tables) give tidy rows with numbers in their own columns."""
    if write_files:
        if not Path(results).is_dir():
            raise UserError("--write needs a results directory", file=results, field="--write")
        _write_tables(Path(results), fmt)
    text = _render_report(Path(results), fmt, stat, reference, reference_env, table=table)
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
    """Draw the figures as PNG: success bars per level (paper beside ours), learning curves with the scored
    window, the paired gains with their intervals, and the imaginary rollouts' goal match per source."""
    from .plot import plot_bars, plot_curves, plot_diagnostics, plot_gains
    from .records import load_records
    from .report import build_report

    path = Path(results)
    report = build_report(path, reference=reference, reference_env=reference_env)
    records = load_records(path)
    suite = records[0].get("suite", "") if records else ""
    out = Path(out_dir) if out_dir else (path if path.is_dir() else path.parent)
    written = [plot_bars(report, out / "success_bars.png", f"{suite}: success rate per level")]
    try:
        written.append(plot_curves(records, out / "learning_curves.png", f"{suite}: learning curves"))
    except UserError as exc:
        click.echo(f"no learning curves: {exc}", err=True)
    written.append(plot_gains(report, out / "gains.png", f"{suite}: paired gains [95% t-interval]"))
    written.append(plot_diagnostics(report, out / "diagnostics.png", f"{suite}: imaginary rollouts"))
    click.echo("wrote " + ", ".join(str(w) for w in written if w is not None))


def _reference_for(results: Path, reference: str | None, reference_env: str | None):
    from .report import reference_for

    return reference_for(results, reference, reference_env)


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
        from .plugins import _strict

        if _strict():  # listed first, so that the failures can be read; then the error
            raise PluginError(f"{len(failures)} plugin(s) failed to load: "
                              + "; ".join(f"{p.name!r}: {p.error}" for p in failures) + " (KALM_BENCH_STRICT_PLUGINS is set)")
        click.echo(f"\n{len(failures)} plugin(s) failed to load and were skipped "
                   "(KALM_BENCH_STRICT_PLUGINS=1 makes this an error).")


KINDS = ("envs", "algorithms", "llm_backends", "grounding_tasks", "rollout_sources", "encoders", "executors",
         "reporters")


def _type_name(annotation: Any) -> str:
    """A config field's type as a user writes it: ``list[int]``, ``'none' | 'standard'``, ``float | None``."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _options(cls: Any) -> list[dict[str, Any]]:
    from pydantic_core import PydanticUndefined

    out = []
    for name, info in cls.Config.model_fields.items():
        default = None if info.default is PydanticUndefined else info.default
        if info.default_factory is not None:
            default = info.default_factory()
        out.append({"name": name, "type": _type_name(info.annotation), "default": default,
                    "required": info.is_required(), "description": info.description or ""})
    return out


@cli.command(name="ls")
@click.argument("kind", type=click.Choice(KINDS), required=False)
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True)
def ls_cmd(kind: str | None, name: str | None, as_json: bool) -> None:
    """List what plugins registered: every kind, one kind, or one component in detail (options with types,
    defaults and descriptions, presets with their values)."""
    reg = _registry()
    if name is not None:
        cls = reg.get(kind, name, field=kind)
        row = {"kind": kind, "name": name, "plugin": reg.plugin_of(kind, name).name, "version": cls.version,
               "description": cls.description, "options": _options(cls), "presets": dict(cls.presets)}
        if kind == "envs":
            row["levels"] = dict(cls.levels)
            for opt in row["options"]:  # which stages read it (their cache keys hold it)
                opt["scope"] = cls.option_scopes.get(opt["name"], "data")
                opt["per_level"] = opt["name"] in cls.level_options
                opt["file"] = opt["name"] in cls.file_options
        if as_json:
            click.echo(json.dumps(row, indent=2, default=str))
            return
        click.echo(f"{name}  [{kind}, plugin {row['plugin']}, version {cls.version}]\n  {cls.description}")
        for lv, text in (row.get("levels") or {}).items():
            click.echo(f"  level {lv}: {text}")
        if row["options"]:
            click.echo("  options:")
            for opt in row["options"]:
                default = "required" if opt["required"] else f"default {opt['default']!r}"
                if "scope" in opt:
                    default += "; per level" if opt["per_level"] else f"; read from the {opt['scope']} stage on"
                    default += "; a file, keyed by its content" if opt["file"] else ""
                click.echo(f"    {opt['name']}: {opt['type']} ({default})"
                           + (f"  {opt['description']}" if opt["description"] else ""))
        for preset, values in row["presets"].items():
            click.echo(f"  preset {preset}: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
        return
    rows = []
    for k in ([kind] if kind else KINDS):
        for n in reg.names(k):
            cls = reg.get(k, n)
            row = {"kind": k, "name": n, "plugin": reg.plugin_of(k, n).name, "version": cls.version,
                   "description": cls.description, "options": sorted(cls.Config.model_fields),
                   "presets": sorted(cls.presets)}
            if k == "envs":
                row["levels"] = dict(cls.levels)
            rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    current = None
    for row in rows:
        if kind is None and row["kind"] != current:
            current = row["kind"]
            click.echo(f"{current}:")
        indent = "  " if kind is None else ""
        click.echo(f"{indent}{row['name']}  [{row['plugin']}]  {row['description']}")
        if row.get("levels"):
            click.echo(f"{indent}  levels: {', '.join(row['levels'])}")
        if row["presets"]:
            click.echo(f"{indent}  presets: {', '.join(row['presets'])}")
        if row["options"]:
            click.echo(f"{indent}  options: {', '.join(row['options'])}")


@cli.group()
def cache() -> None:
    """Inspect or clear the stage-artifact cache."""


@cache.command(name="ls")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None)
@click.option("--kind", default=None, help="dataset, grounding, diagnostics, rollouts, train or eval.")
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
    env_obj = cls(_env_config(cls, _kv(env_config, "--env-config")))
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
@click.option("--env", "env_name", default=None, metavar="ENV",
              help="Also check that the dataset is ENV's (name and action kind) [default: the env the manifest "
                   "names, when it is installed].")
def data_info(path: str, env_name: str | None) -> None:
    """Verify a dataset directory (manifest, checksums, dtypes and shapes, finite values, JSON goals) and print
    its manifest."""
    from .datasets import TrajectoryDataset, read_manifest

    reg = _registry()
    if env_name is not None:
        env_cls = reg.get("envs", env_name, field="--env")
    else:
        named = read_manifest(path)["env"]
        env_cls = reg.get("envs", named) if named in reg.names("envs") else None
    ds = TrajectoryDataset.load(path, env=env_cls)
    click.echo(json.dumps(ds.manifest(), indent=2, sort_keys=True))


def _env_config(cls: Any, values: dict[str, Any]) -> Any:
    """``values`` (from ``--env-config``) validated by the env's config schema: a bad key or value is a
    one-line error naming it."""
    from pydantic import ValidationError

    try:
        return cls.make_config(overrides=values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(config)"
        msg = "unknown option" if err["type"] == "extra_forbidden" else " ".join(str(err["msg"]).split())
        allowed = ", ".join(sorted(cls.Config.model_fields)) or "none"
        raise UserError(f"{key}: {msg} for env {cls.name!r} (options: {allowed})", field="--env-config") from None


def _kv(pairs: tuple[str, ...], flag: str) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for p in pairs:
        if "=" not in p:
            raise UserError(f"{p!r} must look like KEY=VALUE", field=flag)
        k, v = p.split("=", 1)
        try:
            out[k] = yaml.safe_load(v)
        except yaml.YAMLError as exc:
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise UserError(f"{k}: value {v!r} is not valid YAML ({problem})", field=flag) from None
    return out


def _add_plugin_commands() -> None:
    """Let plugins add sub-commands; a failing plugin is reported by `plugins`, not fatal here. Each plugin
    adds its commands to a group of its own first, so that a name already taken (a built-in command or
    another plugin's) is refused for the newcomer, with a warning, instead of replacing the command."""
    import logging

    reg = _registry()
    owner = {name: "kalm-bench" for name in cli.commands}
    for impl in reg.pm.hook.register_commands.get_hookimpls():
        info = reg.plugins.get(impl.plugin_name)
        staging = click.Group(name=impl.plugin_name)
        try:
            impl.function(cli=staging)
        except Exception as exc:  # noqa: BLE001 - isolation, as for the other hooks
            if info is not None and not info.error:
                info.error = f"register_commands: {type(exc).__name__}: {exc}"
            continue
        for name, command in staging.commands.items():
            if name in cli.commands:
                message = (f"plugin {impl.plugin_name!r}: command {name!r} refused: it is already defined by "
                           f"{owner[name]!r}")
                logging.getLogger("kalm_bench").warning(message)
                if info is not None and not info.error:
                    info.error = f"register_commands: {message}"
                continue
            cli.add_command(command, name)
            owner[name] = impl.plugin_name


def main(argv: list[str] | None = None) -> None:
    quiet_gym_banner()
    args = sys.argv[1:] if argv is None else argv
    try:
        if next((a for a in args if not a.startswith("-")), None) == "plugins":
            # `plugins` lists every plugin and its failure even in strict mode, and fails afterwards.
            from .plugins import build_registry, set_registry

            set_registry(build_registry(strict=False))
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
