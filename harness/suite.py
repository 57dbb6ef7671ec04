"""Suite files: YAML → merged dict (``include:`` and ``-x`` overrides) → validated :class:`Suite`.

Precedence, lowest first: schema defaults < included base suites (in order) < the suite file <
``-x key.path=value`` overrides. Every leaf remembers which file (or override) set it, so an error names
the file that is actually wrong.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserError

OVERRIDE_SOURCE = "-x override"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvSection(_Model):
    name: str
    levels: list[str] | None = Field(None, description="levels to evaluate; default: all of the env's levels")
    config: dict[str, Any] = Field(default_factory=dict, description="the environment's own options")


class DataSection(_Model):
    episodes: int = Field(6400, ge=1, description="offline episodes to generate")
    seed: int = 0
    options: dict[str, Any] = Field(default_factory=dict, description="passed to generate_dataset")
    path: str | None = Field(None, description="use this dataset directory instead of generating one")


class EncoderSection(_Model):
    name: str = "minilm"
    config: dict[str, Any] = Field(default_factory=dict)


class LLMSection(_Model):
    backend: str
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    grounding_tasks: list[str] = Field(default_factory=lambda: ["dynamics", "explanation", "generation",
                                                                 "consequence"])
    seed: int = 0

    @field_validator("grounding_tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("grounding tasks must be unique")
        return v


class RolloutsSection(_Model):
    counts: dict[str, int] = Field(default_factory=dict, description="imaginary rollouts per level")
    seed: int = 0
    labels: Literal["oracle", "model"] = "oracle"
    for_level: dict[str, str] = Field(default_factory=dict,
                                      description="level → level whose rollouts its KALM runs train on")
    keep: Literal["all", "success"] = Field("all", description="which rollouts become imaginary data: all, or "
                                                               "only those labelled successful")
    realistic: bool = Field(False, description="drop rollouts with a state the env's realism check rejects")
    sources: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                               description="rollout source → its options (e.g. random: "
                                                           "{max_rollout_length: 20})")

    @field_validator("counts")
    @classmethod
    def _positive(cls, v: dict[str, int]) -> dict[str, int]:
        for level, n in v.items():
            if n < 1:
                raise ValueError(f"count for level {level!r} must be ≥ 1, got {n}")
        return v


class LLMOverride(_Model):
    """Per-algorithm changes to the suite's ``llm`` section (e.g. a grounding-task ablation)."""

    backend: str | None = None
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="merged over the suite's llm.config")
    grounding_tasks: list[str] | None = None
    seed: int | None = None

    def apply(self, base: LLMSection | None) -> LLMSection:
        if base is None:
            return LLMSection(backend=self.backend or "", preset=self.preset, config=dict(self.config),
                              **({"grounding_tasks": self.grounding_tasks} if self.grounding_tasks else {}),
                              seed=self.seed or 0)
        return LLMSection(backend=self.backend or base.backend,
                          preset=self.preset if self.preset is not None else base.preset,
                          config={**base.config, **self.config},
                          grounding_tasks=self.grounding_tasks if self.grounding_tasks is not None
                          else base.grounding_tasks,
                          seed=self.seed if self.seed is not None else base.seed)


class TrainOverride(_Model):
    steps: int | None = Field(None, ge=1)
    checkpoint_every: int | None = Field(None, ge=1)
    imaginary_fraction: float | None = Field(None, ge=0.0, le=1.0)


class AlgorithmEntry(_Model):
    name: str
    label: str | None = Field(None, description="row name in tables; default: the algorithm name")
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    variants: list[str] = Field(default_factory=lambda: ["base"], min_length=1,
                                description="base (real data only), kalm (plus the LLM's imagined rollouts) "
                                            "or another rollout source's name (plus its rollouts, e.g. "
                                            "random: the no-LLM control)")
    reference: str | None = Field(None, description="algorithm name in the reference CSV; default: label")
    llm: LLMOverride | None = Field(None, description="this entry's changes to the suite's llm section")
    train: TrainOverride | None = Field(None, description="this entry's changes to the suite's train section "
                                                          "(e.g. fewer steps for a slow algorithm)")

    @field_validator("variants")
    @classmethod
    def _distinct_variants(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("each variant may be named once")
        if "llm" in v:
            raise ValueError("the llm rollout source is the kalm variant: write kalm")
        return v

    @property
    def row(self) -> str:
        return self.label or self.name


class SeedRange(_Model):
    n: int = Field(ge=1)
    start: int = 0


class TrainSection(_Model):
    steps: int = Field(10_000, ge=1)
    checkpoint_every: int = Field(2_000, ge=1)
    imaginary_fraction: float = Field(0.5, ge=0.0, le=1.0)


class EvalSection(_Model):
    episodes: int | dict[str, int] | None = Field(None, description="test cases per level; default: env's")
    seed: int = 7
    last_k: int = Field(5, ge=1, description="report the mean over the last k checkpoints")
    curve: bool = Field(False, description="evaluate every checkpoint (learning curves), not only the last k")
    batch_size: int = Field(128, ge=1)


class ComparisonSpec(_Model):
    title: str = Field(min_length=1)
    rows: list[str] = Field(min_length=1, description="table rows to compare: labels, '<label> +KALM' for KALM "
                                                      "variants, '<label> +<source>' for other sources")
    levels: list[str] | None = Field(None, description="columns; default: every evaluated level")


class ReportSection(_Model):
    reference: str | None = Field(None, description="CSV of published numbers, relative to the suite file")
    reference_env: str | None = None
    stat: Literal["mean_std", "iqm_ci"] = "mean_std"
    reps: int = Field(2000, ge=100)
    comparisons: list[ComparisonSpec] = Field(default_factory=list,
                                              description="extra tables picking rows and levels of the main "
                                                          "one, e.g. the paper's Fig. 5")


BASE, KALM, LLM_SOURCE = "base", "kalm", "llm"  # variants: real data only; plus the LLM's rollouts (its source)


def variant_source(variant: str) -> str | None:
    """The rollout source of an algorithm variant (None for base: no imaginary data)."""
    return None if variant == BASE else LLM_SOURCE if variant == KALM else variant


def row_label(row: str, variant: str) -> str:
    """Table row of an algorithm entry's variant: ``BC``, ``BC +KALM``, ``BC +random``."""
    return row if variant == BASE else f"{row} +KALM" if variant == KALM else f"{row} +{variant}"


REPLICABLE = ("policy", "rollouts", "llm", "data")
REPLICATION_STRIDE = 1000  # a replicated stage's seed: its section's seed + REPLICATION_STRIDE × the replication's


class Suite(_Model):
    suite: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    version: int = 1
    description: str = ""
    env: EnvSection
    data: DataSection = Field(default_factory=DataSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    llm: LLMSection | None = None
    rollouts: RolloutsSection = Field(default_factory=RolloutsSection)
    algorithms: list[AlgorithmEntry] = Field(min_length=1)
    seeds: list[int] | SeedRange = Field(default_factory=lambda: [0])
    replicate: list[Literal["policy", "rollouts", "llm", "data"]] | None = Field(
        None, description="the stages each seed re-runs with a seed of its own (policy always); default: "
                          "policy, plus rollouts when a run uses imaginary data, plus llm when a run uses an "
                          "LLM")
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    report: ReportSection = Field(default_factory=ReportSection)

    @model_validator(mode="after")
    def _distinct_rows(self) -> Suite:
        rows = [a.row for a in self.algorithms]
        dupes = sorted({r for r in rows if rows.count(r) > 1})
        if dupes:
            raise ValueError(f"algorithm rows must be distinct; give a 'label' to: {', '.join(dupes)}")
        if self.replicate is not None and "data" in self.replicate and self.data.path:
            raise ValueError("replicate cannot include 'data' when data.path names a fixed dataset")
        return self

    @field_validator("replicate")
    @classmethod
    def _policy_is_replicated(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and "policy" not in value:
            raise ValueError("must include 'policy': a seed always re-trains the policy")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each stage may be named once")
        return value

    @property
    def seed_list(self) -> list[int]:
        if isinstance(self.seeds, SeedRange):
            return list(range(self.seeds.start, self.seeds.start + self.seeds.n))
        return list(self.seeds)


class LoadedSuite:
    """A validated suite plus where it came from (for error messages and relative paths)."""

    def __init__(self, suite: Suite, path: Path, merged: dict[str, Any], sources: dict[tuple, str]):
        self.suite = suite
        self.path = path
        self.merged = merged
        self.sources = sources

    def source_of(self, loc: tuple) -> str:
        """The file (or override) that set ``loc`` or its closest ancestor."""
        loc = tuple(loc)
        while loc:
            if loc in self.sources:
                return self.sources[loc]
            loc = loc[:-1]
        return str(self.path)

    def error(self, loc: tuple, message: str) -> UserError:
        return UserError(message, file=self.source_of(loc), field=format_loc(loc))

    def resolve(self, relative: str) -> Path:
        """A path written in the suite, relative to the file that wrote it."""
        p = Path(relative)
        return p if p.is_absolute() else (self.path.parent / p)


def format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _read_yaml(path: Path, included_from: Path | None) -> dict[str, Any]:
    if not path.is_file():
        where = f" (included from {included_from})" if included_from else ""
        raise UserError(f"suite file not found{where}", file=path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"invalid YAML{at}: {getattr(exc, 'problem', exc)}", file=path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"a suite must be a mapping, got {type(data).__name__}", file=path)
    return data


def _record_sources(value: Any, loc: tuple, source: str, sources: dict[tuple, str]) -> None:
    sources[loc] = source
    if isinstance(value, dict):
        for k, v in value.items():
            _record_sources(v, loc + (k,), source, sources)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _record_sources(v, loc + (i,), source, sources)


def _merge(base: dict[str, Any], top: dict[str, Any], loc: tuple, source: str,
           sources: dict[tuple, str]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, loc + (k,), source, sources)
            sources[loc + (k,)] = source
        else:
            for key in [s for s in sources if s[:len(loc) + 1] == loc + (k,)]:
                del sources[key]
            out[k] = copy.deepcopy(v)
            _record_sources(v, loc + (k,), source, sources)
    return out


def _load_tree(path: Path, sources: dict[tuple, str], stack: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in stack:
        chain = " → ".join(str(p) for p in stack + (path,))
        raise UserError(f"include cycle: {chain}", file=stack[-1], field="include")
    data = _read_yaml(path, stack[-1] if stack else None)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise UserError("include must be a file name or a list of file names", file=path, field="include")
    merged: dict[str, Any] = {}
    for inc in includes:
        base_sources: dict[tuple, str] = {}
        base = _load_tree(path.parent / inc, base_sources, stack + (path,))
        merged = _merge(merged, base, (), "", sources)
        sources.update(base_sources)
    return _merge(merged, data, (), str(path), sources)


def parse_override(text: str) -> tuple[list[str | int], str, Any]:
    """``a.b[0].c=value`` or ``a.b+=value`` → (path, op, parsed YAML value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key.path=value", field=OVERRIDE_SOURCE)
    key, raw = text.split("=", 1)
    op = "="
    if key.endswith("+"):
        key, op = key[:-1], "+="
    if not key:
        raise UserError(f"override {text!r} has an empty key", field=OVERRIDE_SOURCE)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    path: list[str | int] = []
    for part in key.replace("[", ".").replace("]", "").split("."):
        if part == "":
            raise UserError(f"override {text!r} has an empty path segment", field=OVERRIDE_SOURCE)
        path.append(int(part) if part.isdigit() else part)
    return path, op, value


def apply_override(tree: dict[str, Any], text: str, sources: dict[tuple, str]) -> None:
    path, op, value = parse_override(text)
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise UserError(f"override {text!r}: index {part} is out of range", field=format_loc(tuple(path)))
            node = node[part]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
        if not isinstance(node, (dict, list)):
            raise UserError(f"override {text!r}: {format_loc(tuple(path[:i + 1]))} is not a mapping",
                            field=format_loc(tuple(path)))
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise UserError(f"override {text!r}: index {last} is out of range", field=format_loc(tuple(path)))
    if op == "+=":
        current = node[last] if (isinstance(node, list) or last in node) else []
        if not isinstance(current, list):
            raise UserError(f"override {text!r}: += needs a list, found {type(current).__name__}",
                            field=format_loc(tuple(path)))
        node[last] = current + (value if isinstance(value, list) else [value])
    else:
        node[last] = value
    _record_sources(node[last], tuple(path), OVERRIDE_SOURCE, sources)


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedSuite:
    """Read, merge and validate a suite; errors are :class:`UserError` naming file and field."""
    path = Path(path)
    sources: dict[tuple, str] = {}
    tree = _load_tree(path, sources, ())
    for text in overrides:
        apply_override(tree, text, sources)
    loaded = LoadedSuite(None, path.resolve(), tree, sources)  # type: ignore[arg-type]
    try:
        loaded.suite = Suite.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise loaded.error(loc, _describe(err) + more) from None
    return loaded


# pydantic puts union member names into error locations; they mean nothing to a suite author.
_UNION_TAGS = {"list[int]", "SeedRange", "int", "dict[str,int]", "function-after[_positive(), dict[str,int]]",
               "LLMSection"}


def _describe(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; `kalm-bench validate` lists allowed fields in docs)"
    if kind == "missing":
        return "required field is missing"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return f"{err.get('msg', 'invalid value')} (got {shown})"


def schema_fields() -> dict[str, Any]:
    """JSON schema of a suite (for documentation and editors)."""
    return Suite.model_json_schema()
