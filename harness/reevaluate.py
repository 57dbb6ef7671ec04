"""Evaluate the trained policies of a results directory again, under changed env options or on other levels.

The suite is rebuilt from the results' ``plan.json``; the changed settings give new evaluation stages only.
Every evaluation reads a policy that the original plan trained (its train stage key, so the cache serves
it): a KALM policy keeps the imaginary rollouts it was trained on, even when a new goal file changes the
goals that its level would imagine for now.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from .cache import stage_key
from .errors import UserError
from .plan import STAGE_ORDER, Plan, Run, Stage, build_plan
from .plugins import Registry
from .records import load_records
from .suite import BASE, load_suite


def _results_tree(results: Path) -> tuple[dict[str, Any], Path]:
    """The merged suite of ``results/plan.json`` and the suite-file path its relative paths refer to."""
    plan_file = results / "plan.json"
    if not plan_file.is_file():
        raise UserError("not a results directory of `kalm-bench run` (no plan.json inside)", file=results)
    try:
        doc = json.loads(plan_file.read_text())
        tree, suite_file = doc["config"], doc["suite_file"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"unreadable plan ({type(exc).__name__}: {exc})", file=plan_file) from None
    if not isinstance(tree, dict) or not isinstance(suite_file, str):
        raise UserError("unreadable plan (config must be a mapping, suite_file a path)", file=plan_file)
    suite_path = (results / suite_file).resolve()
    report = tree.get("report")
    if isinstance(report, dict) and isinstance(report.get("reference"), str):
        # The suite file may have moved; the copy that travels with the results is the same table.
        ref = Path(report["reference"])
        if not (ref if ref.is_absolute() else suite_path.parent / ref).is_file():
            copy = results / "reference.csv"
            tree = {**tree, "report": {**report, "reference": str(copy.resolve()) if copy.is_file() else None}}
    return tree, suite_path


def reevaluation_plan(results: str | Path, registry: Registry, env_settings: tuple[str, ...] = (),
                      levels: list[str] | None = None, eval_overrides: tuple[str, ...] = ()) -> tuple[Plan, list[str]]:
    """A plan whose runs evaluate the finished runs' policies of ``results`` again.

    ``env_settings`` are ``KEY=VALUE`` env options (``goal_files.rephrase=FILE``), ``levels`` the levels
    to evaluate (default: those of the results), ``eval_overrides`` ``-x`` overrides of ``eval.*`` fields.
    Returns the plan and one line per planned evaluation that has no trained policy to read.
    """
    results = Path(results)
    tree, suite_path = _results_tree(results)
    source = str(results / "plan.json")
    for text in eval_overrides:
        if not text.split("=", 1)[0].strip().startswith("eval."):
            raise UserError(f"{text!r}: only eval.* fields change without training again", field="-x")
    for text in env_settings:
        if "=" not in text:
            raise UserError(f"{text!r}: expected KEY=VALUE (an env option, e.g. goal_files.rephrase=FILE)",
                            field="--set")
    original = build_plan(load_suite(suite_path, tree=tree, tree_source=source), registry)
    overrides = [f"env.config.{s}" for s in env_settings] + list(eval_overrides)
    if levels:
        overrides.append(f"env.levels={json.dumps(levels)}")
    changed = build_plan(load_suite(suite_path, overrides, tree=tree, tree_source=source), registry)

    done = {r["run_id"] for r in load_records(results) if r.get("status") == "ok"}
    # A policy of the original plan, by what identifies it: base policies serve every level, a KALM policy
    # the levels that read its imaginary level's rollouts.
    policies: dict[tuple[str, str, int, str | None], Run] = {}
    for run in original.runs:
        if run.run_id in done:
            policies.setdefault((run.row, run.variant, run.seed, None if run.variant == BASE else run.imaginary_level),
                                run)
    stages: dict[str, Stage] = {}
    runs: list[Run] = []
    missing: list[str] = []
    for run in changed.runs:
        trained_for = None if run.variant == BASE else run.imaginary_level
        source_run = policies.get((run.row, run.variant, run.seed, trained_for))
        if source_run is None:
            missing.append(f"{run.describe()}: no finished run of {results} trained this policy")
            continue
        for kind, key in source_run.stages.items():
            if kind != "eval":
                stages.setdefault(key, original.stages[key])
        new_eval = changed.stages[run.stages["eval"]]
        deps = {"train": source_run.stages["train"]}
        key = stage_key("eval", new_eval.spec, deps)
        stages.setdefault(key, Stage("eval", key, new_eval.spec, deps, new_eval.label))
        run_stages = {k: v for k, v in source_run.stages.items() if k != "eval"} | {"eval": key}
        run_id = hashlib.sha256(f"{key}:{run.row}".encode()).hexdigest()[:16]
        runs.append(replace(run, run_id=run_id, imaginary_level=source_run.imaginary_level, stages=run_stages))
    if not runs:
        raise UserError("no finished run to evaluate again" + (f" ({missing[0]})" if missing else ""), file=results)
    ordered = dict(sorted(stages.items(), key=lambda kv: STAGE_ORDER.index(kv[1].kind)))
    return Plan(changed.loaded, ordered, runs, levels=changed.levels, data_level=changed.data_level,
                replicate=changed.replicate), missing
