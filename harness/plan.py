"""Suite → plan: resolve every name against the plugin registry and expand the stage graph.

A run is (env, level, algorithm, variant, seed). Its stages::

    dataset ──► grounding ──► rollouts[level']      (only when an LLM is needed)
       │            │              │
       └────────────┴──────────────┴──► train[algorithm, variant, level', seed] ──► eval[level]

Each stage's key hashes its spec (names, versions, configs, seeds) and its upstream keys, so changing
anything invalidates exactly the stages downstream of it. Base-variant training does not depend on the
level, so one trained policy serves every level's evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from . import api
from .cache import stage_key
from .errors import UserError
from .plugins import Registry
from .suite import BASE, KALM, REPLICABLE, REPLICATION_STRIDE, LoadedSuite, format_loc, row_label, variant_source

STAGE_ORDER = ("dataset", "grounding", "rollouts", "train", "eval")


@dataclass
class Stage:
    kind: str
    key: str
    spec: dict[str, Any]
    deps: dict[str, str]  # role -> key of the upstream stage (its kind is the role's prefix)
    label: str


@dataclass
class Run:
    run_id: str
    env: str
    level: str
    row: str  # table row label of the algorithm
    algorithm: str
    variant: str  # "base" | "kalm" | another rollout source's name
    seed: int
    imaginary_level: str | None
    stages: dict[str, str] = field(default_factory=dict)  # kind -> key

    def describe(self) -> str:
        return f"{row_label(self.row, self.variant)} / {self.level} / seed {self.seed}"


@dataclass
class Plan:
    loaded: LoadedSuite
    stages: dict[str, Stage]
    runs: list[Run]
    levels: list[str] = field(default_factory=list)
    data_level: str = ""
    replicate: list[str] = field(default_factory=lambda: ["policy"])  # the stages each seed re-runs

    def stages_of(self, kind: str) -> list[Stage]:
        return [s for s in self.stages.values() if s.kind == kind]


def _component(registry: Registry, kind: str, name: str, preset: str | None, config: dict[str, Any],
               loaded: LoadedSuite, loc: tuple, name_field: str = "name",
               config_loc: tuple | None = None) -> dict[str, Any]:
    """Validate a (name, preset, config) triple; return its spec with versions. ``config_loc`` is where the
    options sit in the suite (default: ``loc`` + ``config``)."""
    cls = registry.get(kind, name, file=loaded.source_of(loc + (name_field,)), field=_f(loc, name_field))
    try:
        cfg = cls.make_config(preset=preset, overrides=config)
    except KeyError:
        valid = ", ".join(sorted(cls.presets)) or "none"
        raise loaded.error(loc + ("preset",), f"unknown preset {preset!r} for {name!r}; valid: {valid}") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        sub = tuple(err["loc"])
        msg = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
        allowed = ", ".join(sorted(cls.Config.model_fields))
        where = (loc + ("config",) if config_loc is None else config_loc) + sub
        raise loaded.error(where, f"{msg} for {kind[:-1]} {name!r} (options: {allowed})") from None
    plugin = registry.plugin_of(kind, name)
    return {"name": name, "version": str(cls.version), "plugin_version": plugin.version,
            "config": cfg.model_dump(mode="json")}


def _f(loc: tuple, last: str) -> str:
    return format_loc(loc + (last,))


def build_plan(loaded: LoadedSuite, registry: Registry) -> Plan:
    s = loaded.suite
    env_spec = _component(registry, "envs", s.env.name, None, s.env.config, loaded, ("env",))
    env_cls = registry.get("envs", s.env.name)
    env_levels = list(env_cls.levels)
    levels = s.env.levels or env_levels
    for i, lv in enumerate(levels):
        if lv not in env_levels:
            raise loaded.error(("env", "levels", i), f"unknown level {lv!r} for {s.env.name!r}; valid: "
                               f"{', '.join(env_levels)}")
    data_level = env_levels[0]

    stages: dict[str, Stage] = {}
    sources = _rollout_sources(registry, loaded)

    def variant_needs_llm(variant: str) -> bool:
        """The kalm variant's source reads the LLM; any source's rollouts do when the model labels them."""
        return variant != BASE and (sources[variant][1].needs_llm or s.rollouts.labels == "model")

    if s.rollouts.realistic and env_cls.realistic_states is api.Environment.realistic_states:
        raise loaded.error(("rollouts", "realistic"), f"{s.env.name!r} declares no realism check "
                           "(Environment.realistic_states)")
    uses_llm = any(registry.get("algorithms", e.name).needs_llm or any(variant_needs_llm(v) for v in e.variants)
                   for e in s.algorithms if e.name in registry.names("algorithms"))
    uses_rollouts = any(v != BASE for e in s.algorithms for v in e.variants)
    replicate = set(s.replicate if s.replicate is not None else
                    ("policy",) + (("rollouts",) if uses_rollouts else ()) + (("llm",) if uses_llm else ()))

    def stage_seed(what: str, base: int, rep: int) -> int:
        """A replicated stage's seed differs per replication; replication 0 keeps the section's own seed."""
        return base + REPLICATION_STRIDE * rep if what in replicate else base

    def rep_label(what: str, rep: int) -> str:
        return f" rep {rep}" if what in replicate else ""

    def add(kind: str, spec: dict[str, Any], deps: dict[str, str], label: str) -> str:
        key = stage_key(kind, spec, deps)
        stages.setdefault(key, Stage(kind, key, spec, deps, label))
        return key

    # -- dataset (one per replication when the data are replicated)
    dataset_keys: dict[int, str] = {}
    if s.data.path:
        path = loaded.resolve(s.data.path)
        ds_manifest = _dataset_identity(path, loaded)
        fixed = add("dataset", {"env": env_spec, "path": str(path.resolve()), "content": ds_manifest}, {},
                    f"{s.env.name} data")
        dataset_keys = {seed: fixed for seed in s.seed_list}
    else:
        for seed in s.seed_list:
            dataset_keys[seed] = add("dataset", {"env": env_spec, "episodes": s.data.episodes,
                                                 "seed": stage_seed("data", s.data.seed, seed),
                                                 "options": s.data.options}, {},
                                     f"{s.env.name} data{rep_label('data', seed)}")

    # -- encoder
    encoder_spec = _component(registry, "encoders", s.encoder.name, None, s.encoder.config, loaded, ("encoder",))

    # -- algorithms
    algo_specs = []
    for i, entry in enumerate(s.algorithms):
        spec = _component(registry, "algorithms", entry.name, entry.preset, entry.config, loaded, ("algorithms", i))
        cls = registry.get("algorithms", entry.name)
        if env_cls.action_kind not in cls.action_kinds:
            raise loaded.error(("algorithms", i, "name"), f"{entry.name!r} handles {'/'.join(cls.action_kinds)} "
                               f"actions, but {s.env.name!r} has {env_cls.action_kind} actions")
        if cls.needs_llm and entry.variants != [BASE]:
            raise loaded.error(("algorithms", i, "variants"), f"{entry.name!r} acts through the LLM itself; "
                               "it has no variant with imaginary data")
        algo_specs.append((entry, spec, cls))

    # -- LLM grounding: one stage per distinct LLM section (the suite's, or an entry's changes to it)
    def grounding_for(i: int, entry: Any, seed: int) -> str:
        loc: tuple = ("llm",) if entry.llm is None else ("algorithms", i, "llm")
        if s.llm is None and (entry.llm is None or not entry.llm.backend):
            raise loaded.error(loc, "required: a KALM variant or an LLM-based algorithm needs an 'llm' section")
        llm = s.llm if entry.llm is None else entry.llm.apply(s.llm)
        if len(set(llm.grounding_tasks)) != len(llm.grounding_tasks):
            raise loaded.error(loc + ("grounding_tasks",), "grounding tasks must be unique")
        backend_spec = _component(registry, "llm_backends", llm.backend, llm.preset, llm.config, loaded,
                                  loc, name_field="backend")
        tasks = []
        for j, t in enumerate(llm.grounding_tasks):
            tcls = registry.get("grounding_tasks", t, file=loaded.source_of(loc + ("grounding_tasks", j)),
                                field=format_loc(loc + ("grounding_tasks", j)))
            tasks.append({"name": t, "version": str(tcls.version),
                          "plugin_version": registry.plugin_of("grounding_tasks", t).version})
        if not tasks:
            raise loaded.error(loc + ("grounding_tasks",), "at least one grounding task is needed")
        suffix = ("" if entry.llm is None else f" ({entry.row})") + rep_label("llm", seed)
        key = add("grounding", {"env": env_spec, "backend": backend_spec, "tasks": tasks,
                                "seed": stage_seed("llm", llm.seed, seed)},
                  {"dataset": dataset_keys[seed]}, f"{llm.backend} grounding{suffix}")
        llm_suffix.setdefault(key, suffix)
        return key

    grounding_of: dict[tuple[int, int], str] = {}  # (entry, replication) → grounding key
    llm_suffix: dict[str, str] = {}  # grounding key → label suffix naming the row that changed the LLM
    for i, (entry, _, cls) in enumerate(algo_specs):
        if cls.needs_llm or any(variant_needs_llm(v) for v in entry.variants):
            for seed in s.seed_list:
                grounding_of[(i, seed)] = grounding_for(i, entry, seed)
        elif entry.llm is not None:  # an override nothing reads would silently change nothing
            raise loaded.error(("algorithms", i, "llm"), f"{entry.name!r} with variants {list(entry.variants)} "
                               "uses no LLM; an entry's llm section needs the kalm variant or an LLM-based "
                               "algorithm")

    def rollouts_for(level: str, grounding_key: str | None, seed: int, variant: str) -> tuple[str, str]:
        target = s.rollouts.for_level.get(level, level)
        if target not in env_levels:
            raise loaded.error(("rollouts", "for_level", level), f"unknown level {target!r}")
        if target not in s.rollouts.counts:
            raise loaded.error(("rollouts", "counts"), f"KALM runs on level {level!r} need imaginary rollouts of "
                               f"level {target!r}: add rollouts.counts.{target}")
        rollout_seed = stage_seed("rollouts", s.rollouts.seed, seed)
        deps = {"dataset": dataset_keys[seed]}
        label = f"{target} rollouts" + ("" if variant == KALM else f" ({variant})")
        if variant_needs_llm(variant):
            assert grounding_key is not None
            deps["grounding"] = grounding_key
            label += llm_suffix[grounding_key]
            if "rollouts" in replicate and "llm" not in replicate:
                label += rep_label("rollouts", seed)
        else:
            label += rep_label("rollouts", seed)
        # Same seed, so every source of a replication proposes for the same goals and initial states.
        key = add("rollouts", {"env": env_spec, "level": target, "count": s.rollouts.counts[target],
                               "seed": rollout_seed, "labels": s.rollouts.labels, "source": sources[variant][0],
                               "keep": s.rollouts.keep, "realistic": s.rollouts.realistic},
                  deps, label)
        return target, key

    for lv in s.rollouts.for_level:
        if lv not in env_levels:
            raise loaded.error(("rollouts", "for_level", lv), f"unknown level {lv!r}; valid: {', '.join(env_levels)}")
    for lv in s.rollouts.counts:
        if lv not in env_levels:
            raise loaded.error(("rollouts", "counts", lv), f"unknown level {lv!r}; valid: {', '.join(env_levels)}")

    if isinstance(s.eval.episodes, dict):
        for lv in s.eval.episodes:
            if lv not in env_levels:
                raise loaded.error(("eval", "episodes", lv), f"unknown level {lv!r}; valid: {', '.join(env_levels)}")

    rows = {row_label(e.row, v) for e, _, _ in algo_specs for v in e.variants}
    for i, comp in enumerate(s.report.comparisons):
        for j, row in enumerate(comp.rows):
            if row not in rows:
                raise loaded.error(("report", "comparisons", i, "rows", j),
                                   f"no table row {row!r}; rows: {', '.join(sorted(rows))}")
        for j, lv in enumerate(comp.levels or []):
            if lv not in levels:
                raise loaded.error(("report", "comparisons", i, "levels", j),
                                   f"level {lv!r} is not evaluated; levels: {', '.join(levels)}")

    runs: list[Run] = []
    for i, (entry, algo_spec, cls) in enumerate(algo_specs):
        tr = entry.train.model_dump(exclude_none=True) if entry.train else {}
        train_common = {"steps": tr.get("steps", s.train.steps),
                        "checkpoint_every": tr.get("checkpoint_every", s.train.checkpoint_every)}
        if not cls.trains:
            train_common = {"steps": 0, "checkpoint_every": 0}
        imaginary_fraction = tr.get("imaginary_fraction", s.train.imaginary_fraction)
        for variant in entry.variants:
            for seed in s.seed_list:
                base_train = None
                grounding_key = grounding_of.get((i, seed))
                dataset_key = dataset_keys[seed]
                for level in levels:
                    deps = {"dataset": dataset_key}
                    imag_level = None
                    if cls.needs_llm:
                        deps["grounding"] = grounding_key  # type: ignore[assignment]
                    if variant != BASE:
                        imag_level, rkey = rollouts_for(level, grounding_key, seed, variant)
                        deps["rollouts"] = rkey
                        if variant_needs_llm(variant):
                            deps["grounding"] = grounding_key  # type: ignore[assignment]
                    train_spec = {"env": env_spec, "algorithm": algo_spec, "encoder": encoder_spec, "seed": seed,
                                  **train_common,
                                  "imaginary_fraction": imaginary_fraction if variant != BASE else 0.0}
                    if variant == BASE and base_train is not None:
                        train_key = base_train
                    else:
                        train_key = add("train", train_spec, deps, f"{row_label(entry.row, variant)}"
                                        f"{f' ({imag_level})' if imag_level else ''} seed {seed}")
                        if variant == BASE:
                            base_train = train_key
                    n_eval = s.eval.episodes.get(level) if isinstance(s.eval.episodes, dict) else s.eval.episodes
                    eval_key = add("eval", {"env": env_spec, "level": level, "episodes": n_eval, "seed": s.eval.seed,
                                            "batch_size": s.eval.batch_size, "algorithm": algo_spec,
                                            "encoder": encoder_spec,
                                            "checkpoints": "all" if s.eval.curve else s.eval.last_k},
                                   {"train": train_key}, f"eval {row_label(entry.row, variant)} {level} seed {seed}")
                    run_stages = {"dataset": dataset_key, "train": train_key, "eval": eval_key}
                    if "grounding" in deps:
                        run_stages["grounding"] = grounding_key  # type: ignore[assignment]
                    if "rollouts" in deps:
                        run_stages["rollouts"] = deps["rollouts"]
                    # Two rows may share a config (and so every stage); the row name keeps their runs apart.
                    run_id = hashlib.sha256(f"{eval_key}:{entry.row}".encode()).hexdigest()[:16]
                    runs.append(Run(run_id=run_id, env=s.env.name, level=level, row=entry.row,
                                    algorithm=entry.name, variant=variant, seed=seed, imaginary_level=imag_level,
                                    stages=run_stages))
    ordered = dict(sorted(stages.items(), key=lambda kv: STAGE_ORDER.index(kv[1].kind)))
    return Plan(loaded, ordered, runs, levels=list(levels), data_level=data_level,
                replicate=[k for k in REPLICABLE if k in replicate])


def _rollout_sources(registry: Registry, loaded: LoadedSuite) -> dict[str, tuple[dict[str, Any], type]]:
    """Variant → (spec, class) of its rollout source, for every variant other than base."""
    s = loaded.suite
    valid = sorted({BASE, KALM} | {n for n in registry.names("rollout_sources") if n != "llm"})
    for name in s.rollouts.sources:
        if name not in registry.names("rollout_sources"):
            raise loaded.error(("rollouts", "sources", name), f"unknown rollout source {name!r}; valid: "
                               f"{', '.join(sorted(registry.names('rollout_sources')))}")
    out: dict[str, tuple[dict[str, Any], type]] = {}
    for i, entry in enumerate(s.algorithms):
        for j, variant in enumerate(entry.variants):
            source = variant_source(variant)
            if source is None or variant in out:
                continue
            if source not in registry.names("rollout_sources"):
                raise loaded.error(("algorithms", i, "variants", j), f"unknown variant {variant!r}; valid: "
                                   f"{', '.join(valid)} (a variant other than base names a rollout source)")
            spec = _component(registry, "rollout_sources", source, None, s.rollouts.sources.get(source, {}), loaded,
                              ("algorithms", i, "variants", j), config_loc=("rollouts", "sources", source))
            out[variant] = (spec, registry.get("rollout_sources", source))
    return out


def _dataset_identity(path: Any, loaded: LoadedSuite) -> dict[str, Any]:
    """What identifies an existing dataset directory: its manifest's checksums and counts."""
    import json

    mpath = path / "manifest.json"
    if not mpath.is_file():
        raise loaded.error(("data", "path"), f"{mpath} does not exist (expected a kalm-bench dataset directory)")
    try:
        m = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt manifest ({exc.msg})", file=mpath) from None
    return {k: m.get(k) for k in ("files", "n_episodes", "n_transitions", "format_version")}
