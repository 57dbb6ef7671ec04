"""Suite → plan: resolve every name against the plugin registry and expand the stage graph.

A run is (env, level, algorithm, variant, seed). Its stages::

    dataset ──► grounding ──► rollouts[level']      (only when an LLM is needed)
       │            │   └──► diagnostics       │
       └────────────┴──────────────────────────┴──► train[algorithm, variant, level', seed] ──► eval[level]

Each stage's key hashes its spec (names, versions, configs, seeds) and its upstream keys, so changing
anything invalidates exactly the stages downstream of it. A stage's spec holds only the env options it
reads (the env declares each option's scope and its per-level options; see
:meth:`kalm_bench.api.Environment.config_view`): a goal file for a novel level changes that level's
rollouts and evaluations, not the data, the grounding or the base policies. Base-variant training does
not depend on the level, so one trained policy serves every level's evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from . import api
from .cache import stage_key
from .errors import UserError
from .plugins import Registry
from .suite import BASE, KALM, REPLICABLE, REPLICATION_STRIDE, LoadedSuite, format_loc, row_label, variant_source

DATA = ("data",)
IMAGINATION = ("data", "imagination")
STAGE_ORDER = ("dataset", "grounding", "diagnostics", "rollouts", "train", "eval")


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
    """Check a loaded suite against the registry and expand it into stages and runs."""
    return _Planner(loaded, registry).plan()


class _Planner:
    """Builds a plan one section at a time, in the order a reader checks a suite: the env and its levels,
    the rollout settings, the data, the algorithms, the LLM groundings, the report's rows, then the runs
    (each with its train and eval stages, and the rollouts it reads)."""

    def __init__(self, loaded: LoadedSuite, registry: Registry):
        self.loaded, self.registry, self.s = loaded, registry, loaded.suite
        s = self.s
        self.env_spec = _component(registry, "envs", s.env.name, None, s.env.config, loaded, ("env",))
        self.env_cls = registry.get("envs", s.env.name)
        self.env_levels = list(self.env_cls.levels)
        self.levels = s.env.levels or self.env_levels
        for i, lv in enumerate(self.levels):
            if lv not in self.env_levels:
                raise loaded.error(("env", "levels", i), f"unknown level {lv!r} for {s.env.name!r}; valid: "
                                   f"{', '.join(self.env_levels)}")
        self.data_level = self.env_levels[0]
        self.stages: dict[str, Stage] = {}
        self.sources = _rollout_sources(registry, loaded)
        self.grounding_of: dict[tuple[int, int], str] = {}  # (entry, replication) → grounding key
        self.llm_suffix: dict[str, str] = {}  # grounding key → label suffix naming the row that changed the LLM
        self.diagnostics_of: dict[str, str] = {}  # grounding key → key of its diagnostics stage
        self.digests: dict[str, str] = {}  # path → sha256 of a file an env option names

    def plan(self) -> Plan:
        self.check_rollout_settings()
        self.replicate = self.replicated_stages()
        self.dataset_keys = self.datasets()
        self.encoder_spec = _component(self.registry, "encoders", self.s.encoder.name, None, self.s.encoder.config,
                                       self.loaded, ("encoder",))
        self.algo_specs = self.algorithms()
        self.groundings()
        self.check_level_references()
        runs = [run for i, (entry, spec, cls) in enumerate(self.algo_specs) for run in self.runs_of(i, entry, spec, cls)]
        ordered = dict(sorted(self.stages.items(), key=lambda kv: STAGE_ORDER.index(kv[1].kind)))
        return Plan(self.loaded, ordered, runs, levels=list(self.levels), data_level=self.data_level,
                    replicate=[k for k in REPLICABLE if k in self.replicate])

    # -- helpers ---------------------------------------------------------------------------------------
    def variant_needs_llm(self, variant: str) -> bool:
        """The kalm variant's source reads the LLM; any source's rollouts do when the model labels them."""
        return variant != BASE and (self.sources[variant][1].needs_llm or self.s.rollouts.labels == "model")

    def stage_seed(self, what: str, base: int, rep: int) -> int:
        """A replicated stage's seed differs per replication; replication 0 keeps the section's own seed."""
        return base + REPLICATION_STRIDE * rep if what in self.replicate else base

    def rep_label(self, what: str, rep: int) -> str:
        return f" rep {rep}" if what in self.replicate else ""

    def env_for(self, scopes: tuple[str, ...], levels: tuple[str, ...] | None = None) -> dict[str, Any]:
        """The env's spec with the options a stage reading ``scopes`` at ``levels`` sees (None: all levels),
        and the content digest of every file those options name."""
        view = self.env_cls.config_view(self.env_spec["config"], scopes, levels)
        files = {}
        for name in self.env_cls.file_options:
            value = view.get(name)
            entries = value.items() if isinstance(value, dict) else [(None, value)] if isinstance(value, str) else []
            for sub, path in entries:
                loc = ("env", "config", name) + (() if sub is None else (sub,))
                files[format_loc(loc[2:])] = self.file_digest(loc, str(path))
        return {**self.env_spec, "config": view, **({"files": files} if files else {})}

    def file_digest(self, loc: tuple, path: str) -> str:
        if path not in self.digests:
            p = Path(path).expanduser()
            if not p.is_file():
                raise self.loaded.error(loc, f"file not found: {path}")
            self.digests[path] = api.sha256_file(p)
        return self.digests[path]

    def add(self, kind: str, spec: dict[str, Any], deps: dict[str, str], label: str) -> str:
        key = stage_key(kind, spec, deps)
        self.stages.setdefault(key, Stage(kind, key, spec, deps, label))
        return key

    # -- sections --------------------------------------------------------------------------------------
    def check_rollout_settings(self) -> None:
        s, loaded = self.s, self.loaded
        if s.rollouts.realistic and self.env_cls.realistic_states is api.Environment.realistic_states:
            raise loaded.error(("rollouts", "realistic"), f"{s.env.name!r} declares no realism check "
                               "(Environment.realistic_states)")
        self.uses_llm = any(
            self.registry.get("algorithms", e.name).needs_llm or any(self.variant_needs_llm(v) for v in e.variants)
            for e in s.algorithms if e.name in self.registry.names("algorithms"))
        self.uses_rollouts = any(v != BASE for e in s.algorithms for v in e.variants)
        if self.uses_rollouts:  # an env that cannot give imaginary rollouts is refused here, not in a stage
            env_obj = self.env_cls(self.env_cls.Config(**self.env_spec["config"]))
            for lv in (lv for lv in self.levels if lv != self.data_level):
                try:
                    env_obj.require_imagination(lv, labels=s.rollouts.labels)
                except UserError as exc:
                    loc = tuple(exc.field.split(".")) if exc.field else ("env",)
                    raise loaded.error(loc, exc.message) from None

    def replicated_stages(self) -> set[str]:
        s = self.s
        if s.replicate is not None:
            return set(s.replicate)
        return set(("policy",) + (("rollouts",) if self.uses_rollouts else ()) + (("llm",) if self.uses_llm else ()))

    def datasets(self) -> dict[int, str]:
        """One dataset stage, or one per replication when the data are replicated."""
        s = self.s
        if s.data.path:
            path = self.loaded.resolve(s.data.path)
            ds_manifest = _dataset_identity(path, self.loaded, self.env_cls)
            fixed = self.add("dataset", {"env": self.env_for(DATA, ()), "path": str(path.resolve()),
                                         "content": ds_manifest}, {}, f"{s.env.name} data")
            return {seed: fixed for seed in s.seed_list}
        return {seed: self.add("dataset", {"env": self.env_for(DATA, ()), "episodes": s.data.episodes,
                                           "seed": self.stage_seed("data", s.data.seed, seed),
                                           "options": s.data.options}, {},
                               f"{s.env.name} data{self.rep_label('data', seed)}")
                for seed in s.seed_list}

    def algorithms(self) -> list[tuple[Any, dict[str, Any], type]]:
        s, out = self.s, []
        for i, entry in enumerate(s.algorithms):
            spec = _component(self.registry, "algorithms", entry.name, entry.preset, entry.config, self.loaded,
                              ("algorithms", i))
            cls = self.registry.get("algorithms", entry.name)
            if self.env_cls.action_kind not in cls.action_kinds:
                raise self.loaded.error(("algorithms", i, "name"), f"{entry.name!r} handles "
                                        f"{'/'.join(cls.action_kinds)} actions, but {s.env.name!r} has "
                                        f"{self.env_cls.action_kind} actions")
            if cls.needs_llm and entry.variants != [BASE]:
                raise self.loaded.error(("algorithms", i, "variants"), f"{entry.name!r} acts through the LLM "
                                        "itself; it has no variant with imaginary data")
            out.append((entry, spec, cls))
        return out

    def groundings(self) -> None:
        """One grounding stage per distinct LLM section (the suite's, or an entry's changes to it) and
        replication, for every entry that reads an LLM."""
        for i, (entry, _, cls) in enumerate(self.algo_specs):
            if cls.needs_llm or any(self.variant_needs_llm(v) for v in entry.variants):
                for seed in self.s.seed_list:
                    self.grounding_of[(i, seed)] = self.grounding_for(i, entry, seed)
            elif entry.llm is not None:  # an override nothing reads would silently change nothing
                raise self.loaded.error(("algorithms", i, "llm"), f"{entry.name!r} with variants "
                                        f"{list(entry.variants)} uses no LLM; an entry's llm section needs the "
                                        "kalm variant or an LLM-based algorithm")

    def grounding_for(self, i: int, entry: Any, seed: int) -> str:
        s, loaded, registry = self.s, self.loaded, self.registry
        loc: tuple = ("llm",) if entry.llm is None else ("algorithms", i, "llm")
        if s.llm is None and (entry.llm is None or not entry.llm.backend):
            raise loaded.error(loc, "required: a KALM variant or an LLM-based algorithm needs an 'llm' section")
        try:
            llm = s.llm if entry.llm is None else entry.llm.apply(s.llm)
        except ValidationError as exc:  # the entry's changes make an invalid llm section
            err = exc.errors()[0]
            raise loaded.error(loc + tuple(err["loc"]), err["msg"]) from None
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
        suffix = ("" if entry.llm is None else f" ({entry.row})") + self.rep_label("llm", seed)
        llm_seed = self.stage_seed("llm", llm.seed, seed)
        key = self.add("grounding", {"env": self.env_for(IMAGINATION, ()), "backend": backend_spec, "tasks": tasks,
                                     "seed": llm_seed},
                       {"dataset": self.dataset_keys[seed]}, f"{llm.backend} grounding{suffix}")
        self.llm_suffix.setdefault(key, suffix)
        # What the grounded model imagines at every level: its own stage, so a new goal file re-measures it
        # without grounding again.
        self.diagnostics_of[key] = self.add(
            "diagnostics", {"env": self.env_for(IMAGINATION), "backend": backend_spec, "seed": llm_seed},
            {"grounding": key, "dataset": self.dataset_keys[seed]}, f"{llm.backend} diagnostics{suffix}")
        return key

    def rollouts_for(self, level: str, grounding_key: str | None, seed: int, variant: str) -> tuple[str, str]:
        s, loaded = self.s, self.loaded
        target = s.rollouts.for_level.get(level, level)
        if target not in self.env_levels:
            raise loaded.error(("rollouts", "for_level", level), f"unknown level {target!r}")
        if target not in s.rollouts.counts:
            raise loaded.error(("rollouts", "counts"), f"KALM runs on level {level!r} need imaginary rollouts of "
                               f"level {target!r}: add rollouts.counts.{target}")
        rollout_seed = self.stage_seed("rollouts", s.rollouts.seed, seed)
        deps = {"dataset": self.dataset_keys[seed]}
        label = f"{target} rollouts" + ("" if variant == KALM else f" ({variant})")
        if self.variant_needs_llm(variant):
            assert grounding_key is not None
            deps["grounding"] = grounding_key
            label += self.llm_suffix[grounding_key]
            if "rollouts" in self.replicate and "llm" not in self.replicate:
                label += self.rep_label("rollouts", seed)
        else:
            label += self.rep_label("rollouts", seed)
        # Same seed, so every source of a replication proposes for the same goals and initial states.
        key = self.add("rollouts", {"env": self.env_for(IMAGINATION, (target,)), "level": target,
                                    "count": s.rollouts.counts[target],
                                    "seed": rollout_seed, "labels": s.rollouts.labels,
                                    "source": self.sources[variant][0], "keep": s.rollouts.keep,
                                    "realistic": s.rollouts.realistic},
                       deps, label)
        return target, key

    def check_level_references(self) -> None:
        """Levels named in rollouts and eval exist, and the report's comparison rows and levels are planned."""
        s, loaded, env_levels = self.s, self.loaded, self.env_levels
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
        rows = {row_label(e.row, v) for e, _, _ in self.algo_specs for v in e.variants}
        for i, comp in enumerate(s.report.comparisons):
            for j, row in enumerate(comp.rows):
                if row not in rows:
                    raise loaded.error(("report", "comparisons", i, "rows", j),
                                       f"no table row {row!r}; rows: {', '.join(sorted(rows))}")
            for j, lv in enumerate(comp.levels or []):
                if lv not in self.levels:
                    raise loaded.error(("report", "comparisons", i, "levels", j),
                                       f"level {lv!r} is not evaluated; levels: {', '.join(self.levels)}")

    def training_budget(self, i: int, entry: Any, cls: type) -> dict[str, int]:
        s = self.s
        tr = entry.train.model_dump(exclude_none=True) if entry.train else {}
        budget = {"steps": tr.get("steps", s.train.steps),
                  "checkpoint_every": tr.get("checkpoint_every", s.train.checkpoint_every)}
        if not cls.trains:
            return {"steps": 0, "checkpoint_every": 0}
        if ("eval", "last_k") in self.loaded.sources:  # written: honoured or refused (the default adapts)
            steps, every = budget["steps"], budget["checkpoint_every"]
            saved = -(-steps // every)  # a checkpoint every checkpoint_every steps and at the last step
            if s.eval.last_k > saved:
                raise self.loaded.error(("eval", "last_k"), f"last_k is {s.eval.last_k}, but {entry.row!r} "
                                        f"(algorithms[{i}]) saves only {saved} checkpoint(s) (train.steps {steps}, "
                                        f"checkpoint_every {every}); lower eval.last_k or save more checkpoints")
        return budget

    def runs_of(self, i: int, entry: Any, algo_spec: dict[str, Any], cls: type) -> list[Run]:
        """Every (variant, seed, level) run of one algorithm entry, adding its train and eval stages."""
        s = self.s
        train_common = self.training_budget(i, entry, cls)
        tr = entry.train.model_dump(exclude_none=True) if entry.train else {}
        imaginary_fraction = tr.get("imaginary_fraction", s.train.imaginary_fraction)
        runs = []
        for variant in entry.variants:
            for seed in s.seed_list:
                base_train = None
                grounding_key = self.grounding_of.get((i, seed))
                dataset_key = self.dataset_keys[seed]
                for level in self.levels:
                    deps = {"dataset": dataset_key}
                    imag_level = None
                    if cls.needs_llm:
                        deps["grounding"] = grounding_key  # type: ignore[assignment]
                    if variant != BASE:
                        imag_level, rkey = self.rollouts_for(level, grounding_key, seed, variant)
                        deps["rollouts"] = rkey
                        if self.variant_needs_llm(variant):
                            deps["grounding"] = grounding_key  # type: ignore[assignment]
                    train_spec = {"env": self.env_for(DATA, ()), "algorithm": algo_spec, "encoder": self.encoder_spec,
                                  "seed": seed, **train_common,
                                  "imaginary_fraction": imaginary_fraction if variant != BASE else 0.0}
                    if variant == BASE and base_train is not None:
                        train_key = base_train
                    else:
                        train_key = self.add("train", train_spec, deps, f"{row_label(entry.row, variant)}"
                                             f"{f' ({imag_level})' if imag_level else ''} seed {seed}")
                        if variant == BASE:
                            base_train = train_key
                    n_eval = s.eval.episodes.get(level) if isinstance(s.eval.episodes, dict) else s.eval.episodes
                    eval_key = self.add("eval", {"env": self.env_for(api.OPTION_SCOPES, (level,)), "level": level,
                                                 "episodes": n_eval, "seed": s.eval.seed,
                                                 "batch_size": s.eval.batch_size,
                                                 "algorithm": algo_spec, "encoder": self.encoder_spec,
                                                 "checkpoints": "all" if s.eval.curve else s.eval.last_k},
                                        {"train": train_key}, f"eval {row_label(entry.row, variant)} {level} seed {seed}")
                    run_stages = {"dataset": dataset_key, "train": train_key, "eval": eval_key}
                    if "grounding" in deps:
                        run_stages["grounding"] = grounding_key  # type: ignore[assignment]
                        run_stages["diagnostics"] = self.diagnostics_of[grounding_key]  # type: ignore[index]
                    if "rollouts" in deps:
                        run_stages["rollouts"] = deps["rollouts"]
                    # Two rows may share a config (and so every stage); the row name keeps their runs apart.
                    run_id = hashlib.sha256(f"{eval_key}:{entry.row}".encode()).hexdigest()[:16]
                    runs.append(Run(run_id=run_id, env=s.env.name, level=level, row=entry.row,
                                    algorithm=entry.name, variant=variant, seed=seed, imaginary_level=imag_level,
                                    stages=run_stages))
        return runs


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


def _dataset_identity(path: Any, loaded: LoadedSuite, env_cls: type) -> dict[str, Any]:
    """What identifies an existing dataset directory (its manifest's checksums and counts), after the checks
    that need no array loaded: the manifest, the suite's env (name, action kind) and the array headers."""
    if not (path / "manifest.json").is_file():
        raise loaded.error(("data", "path"), f"{path / 'manifest.json'} does not exist (expected a kalm-bench "
                           "dataset directory)")
    m = api.TrajectoryDataset.inspect(path, env=env_cls)
    return {k: m.get(k) for k in ("files", "n_episodes", "n_transitions", "format_version")}
