"""Suite files: YAML → merged dict (``include:`` and ``-x`` overrides) → validated :class:`Suite`.

Precedence, lowest first: schema defaults < included base suites (in order) < the suite file <
``-x key.path=value`` overrides. Every leaf remembers which file (or override) set it, so an error names
the file that is actually wrong.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from . import yamlio
from .errors import UserError
from .yamlio import format_loc

OVERRIDE_SOURCE = "-x override"

# Bounds of numeric fields: far beyond any real suite, low enough that a typo fails here, not hours later.
MAX_STEPS = 10**9  # train.steps, checkpoint_every, eval.last_k
MAX_EPISODES = 10**7  # data episodes, imaginary rollouts per level, test cases per level
MAX_SEEDS = 1000  # replications (seeds) in one suite
MAX_SEED = 10**6  # a replication's seed; a replicated stage's seed adds REPLICATION_STRIDE × it
MAX_SECTION_SEED = 10**9  # data.seed, llm.seed, rollouts.seed, eval.seed
MAX_FILES = 64  # suite files read for one suite, an include counted each time it is read

# Whole numbers only: YAML's 12.5, 1.0e+32, true or "12" are refused, not converted.
Steps = Annotated[int, Field(strict=True, ge=1, le=MAX_STEPS)]
Episodes = Annotated[int, Field(strict=True, ge=1, le=MAX_EPISODES)]
SectionSeed = Annotated[int, Field(strict=True, ge=0, le=MAX_SECTION_SEED)]
SeedValue = Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvSection(_Model):
    name: str
    levels: list[str] | None = Field(None, description="levels to evaluate; default: all of the env's levels")
    config: dict[str, Any] = Field(default_factory=dict, description="the environment's own options")


class DataSection(_Model):
    episodes: Episodes = Field(6400, description="offline episodes to generate")
    seed: SectionSeed = 0
    options: dict[str, Any] = Field(default_factory=dict, description="passed to generate_dataset")
    path: str | None = Field(None, description="use this dataset directory instead of generating one (relative "
                                               "to the file that writes it)")


class EncoderSection(_Model):
    name: str = "minilm"
    config: dict[str, Any] = Field(default_factory=dict)


class LLMSection(_Model):
    backend: str
    preset: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    grounding_tasks: list[str] = Field(default_factory=lambda: ["dynamics", "explanation", "generation",
                                                                 "consequence"])
    seed: SectionSeed = 0

    @field_validator("grounding_tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return _unique_tasks(v)


def _unique_tasks(v: list[str] | None) -> list[str] | None:
    if v is not None and len(set(v)) != len(v):
        dupes = sorted({t for t in v if v.count(t) > 1})
        raise ValueError(f"grounding tasks must be unique; named more than once: {', '.join(dupes)}")
    return v


class RolloutsSection(_Model):
    counts: dict[str, Episodes] = Field(default_factory=dict, description="imaginary rollouts per level")
    seed: SectionSeed = 0
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
    seed: SectionSeed | None = None

    @field_validator("grounding_tasks")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        return _unique_tasks(v)

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
    steps: Steps | None = None
    checkpoint_every: Steps | None = None
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
    n: int = Field(strict=True, ge=1, le=MAX_SEEDS, description=f"number of seeds (at most {MAX_SEEDS})")
    start: SeedValue = 0

    @model_validator(mode="after")
    def _bounded(self) -> SeedRange:
        if self.start + self.n - 1 > MAX_SEED:
            raise ValueError(f"the last seed, {self.start + self.n - 1}, is above the largest allowed, {MAX_SEED}")
        return self


def _seeds_form(value: Any) -> str:
    return "seed range" if isinstance(value, (dict, SeedRange)) else "seed list"


def _episodes_form(value: Any) -> str:
    return "episodes per level" if isinstance(value, dict) else "episodes"


class TrainSection(_Model):
    steps: Steps = 10_000
    checkpoint_every: Steps = 2_000
    imaginary_fraction: float = Field(0.5, ge=0.0, le=1.0)


class EvalSection(_Model):
    episodes: Annotated[Union[Annotated[Episodes, Tag("episodes")],
                              Annotated[dict[str, Episodes], Tag("episodes per level")]],
                        Discriminator(_episodes_form)] | None = Field(
        None, description="test cases per level (one number, or level → number); default: env's")
    seed: SectionSeed = 7
    last_k: Steps = Field(5, description="report the mean over the last k checkpoints")
    curve: bool = Field(False, description="evaluate every checkpoint (learning curves), not only the last k")
    batch_size: int = Field(128, strict=True, ge=1, le=10**6)


class ComparisonSpec(_Model):
    title: str = Field(min_length=1)
    rows: list[str] = Field(min_length=1, description="table rows to compare: labels, '<label> +KALM' for KALM "
                                                      "variants, '<label> +<source>' for other sources")
    levels: list[str] | None = Field(None, description="columns; default: every evaluated level")


class ReportSection(_Model):
    reference: str | None = Field(None, description="CSV of published numbers, relative to the file that writes "
                                                    "it; it must exist")
    reference_env: str | None = None
    stat: Literal["mean_std", "iqm_ci"] = "mean_std"
    reps: int = Field(2000, strict=True, ge=100, le=10**6)
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
    suite: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=100,
                       description="name of the results directory runs/<suite>: letters, digits, - _ .")
    version: int = Field(1, strict=True, ge=0, le=10**9)
    description: str = ""
    env: EnvSection
    data: DataSection = Field(default_factory=DataSection)
    encoder: EncoderSection = Field(default_factory=EncoderSection)
    llm: LLMSection | None = None
    rollouts: RolloutsSection = Field(default_factory=RolloutsSection)
    algorithms: list[AlgorithmEntry] = Field(min_length=1)
    seeds: Annotated[Union[Annotated[list[SeedValue], Field(min_length=1, max_length=MAX_SEEDS), Tag("seed list")],
                           Annotated[SeedRange, Tag("seed range")]],
                     Discriminator(_seeds_form)] = Field(
        default_factory=lambda: [0], description=f"a list of seeds, or {{n, start}}; at most {MAX_SEEDS} seeds, each "
                                                 f"0 to {MAX_SEED}")
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

    @field_validator("suite")
    @classmethod
    def _one_path_component(cls, value: str) -> str:
        if value in (".", ".."):
            raise ValueError("names the results directory (runs/<suite>), so it cannot be '.' or '..'")
        return value

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: Any) -> Any:
        if isinstance(value, list) and len(set(value)) != len(value):
            dupes = sorted({s for s in value if value.count(s) > 1})
            raise ValueError(f"each seed may be named once; repeated: {', '.join(map(str, dupes))}")
        return value

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
        """A path written in the suite, relative to the suite file (see :func:`load_suite`: a path an
        included file wrote is rewritten relative to the suite file when it is loaded)."""
        p = Path(relative)
        return p if p.is_absolute() else (self.path.parent / p)

    def _rebase(self, loc: tuple) -> None:
        """Make the path at ``loc``, written relative to the included file that set it, relative to the suite
        file (where :meth:`resolve` and the runs look for it)."""
        node: Any = self.merged
        for part in loc[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        value = node.get(loc[-1]) if isinstance(node, dict) else None
        src = self.source_of(loc)
        if not isinstance(value, str) or Path(value).is_absolute() or src in ("", OVERRIDE_SOURCE):
            return
        src_dir = Path(src).parent
        if src_dir == self.path.parent:
            return
        node[loc[-1]] = os.path.relpath(src_dir / value, self.path.parent)
        section = getattr(self.suite, loc[0])
        setattr(section, loc[1], node[loc[-1]])


def _read_yaml(path: Path, included_from: Path | None, budget: yamlio.Budget) -> dict[str, Any]:
    suffix = f" (included from {included_from})" if included_from else ""
    data = yamlio.load_file(path, budget=budget, suffix=suffix)
    if data is None:
        if included_from is None:
            raise UserError("the suite file is empty (a suite is a YAML mapping: suite, env, algorithms, ...)",
                            file=path)
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"a suite must be a mapping, got {type(data).__name__}{suffix}", file=path)
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


def _load_tree(path: Path, sources: dict[tuple, str], stack: tuple[Path, ...],
               budget: yamlio.Budget) -> dict[str, Any]:
    try:
        path = path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: reading the file says so
        path = Path(os.path.abspath(path))
    if path in stack:
        chain = " → ".join(str(p) for p in stack + (path,))
        raise UserError(f"include cycle: {chain}", file=stack[-1], field="include")
    budget.files += 1
    if budget.files > MAX_FILES:
        raise UserError(f"more than {MAX_FILES} suite files read through include (is a file included many times "
                        "at several levels?)", file=stack[-1], field="include")
    data = _read_yaml(path, stack[-1] if stack else None, budget)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise UserError("include must be a file name or a list of file names", file=path, field="include")
    merged: dict[str, Any] = {}
    for inc in includes:
        base_sources: dict[tuple, str] = {}
        base = _load_tree(path.parent / inc, base_sources, stack + (path,), budget)
        merged = _merge(merged, base, (), "", sources)
        sources.update(base_sources)
    return _merge(merged, data, (), str(path), sources)


_KEY = re.compile(r"[^.\[\]]+")


def _override_error(text: str, key: str, message: str) -> UserError:
    return UserError(f"override {text!r}: {message}", file=OVERRIDE_SOURCE, field=key or None)


def _parse_key(text: str, key: str) -> list[str | int]:
    """``a.b[0].c`` → ``['a', 'b', 0, 'c']``; a segment of ASCII digits after a dot is an index too."""
    path: list[str | int] = []
    i = 0
    while i < len(key):
        if key[i] == "[":
            close = key.find("]", i)
            if close < 0:
                raise _override_error(text, key, "unclosed '['")
            index = key[i + 1:close]
            if not (index.isascii() and index.isdigit()):
                raise _override_error(text, key, f"list index {index!r} must be a whole number ≥ 0, e.g. seeds[0]")
            path.append(int(index))
            i = close + 1
            if i < len(key) and key[i] not in ".[":
                raise _override_error(text, key, f"expected '.' or '[' after ']', found {key[i]!r}")
            if i < len(key) and key[i] == ".":
                i += 1
                if i == len(key):
                    raise _override_error(text, key, "has an empty path segment")
            continue
        if key[i] == "]":
            raise _override_error(text, key, "']' without '['")
        m = _KEY.match(key, i)
        if m is None:
            raise _override_error(text, key, "has an empty path segment")
        part = m.group()
        path.append(int(part) if part.isascii() and part.isdigit() else part)
        i = m.end()
        if i < len(key) and key[i] == ".":
            i += 1
            if i == len(key):
                raise _override_error(text, key, "has an empty path segment")
    if len(path) > yamlio.MAX_DEPTH:
        raise _override_error(text, key, f"more than {yamlio.MAX_DEPTH} path segments")
    return path


def parse_override(text: str, budget: yamlio.Budget | None = None) -> tuple[list[str | int], str, Any]:
    """``a.b[0].c=value`` or ``a.b+=value`` → (path, op, parsed YAML value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key.path=value", file=OVERRIDE_SOURCE,
                        field=text or None)
    key, raw = text.split("=", 1)
    op = "="
    if key.endswith("+"):
        key, op = key[:-1], "+="
    if not key:
        raise _override_error(text, key, "has an empty key")
    path = _parse_key(text, key)
    if raw == "":
        return path, op, ""
    if len(raw) > yamlio.MAX_FILE_BYTES:
        raise _override_error(text[:40] + "…", key, f"value longer than {yamlio.MAX_FILE_BYTES >> 20} MiB")
    try:
        value = yamlio.load(raw, OVERRIDE_SOURCE, prefix=tuple(path), budget=budget)
    except UserError as exc:
        if not exc.message.startswith("invalid YAML"):
            raise
        value = raw  # not YAML: the text itself (e.g. a Windows path)
    return path, op, value


def apply_override(tree: dict[str, Any], text: str, sources: dict[tuple, str],
                   budget: yamlio.Budget | None = None) -> None:
    path, op, value = parse_override(text, budget)
    key = format_loc(tuple(path))
    node: Any = tree
    for i, part in enumerate(path):
        here = format_loc(tuple(path[:i]))
        if isinstance(node, list):
            if not isinstance(part, int):
                raise _override_error(text, key, f"{here} is a list: index it as {here}[i]")
            if part >= len(node):
                raise _override_error(text, key, f"index {part} is out of range ({here} has {len(node)} item(s))")
        elif isinstance(node, dict):
            if isinstance(part, int) and part not in node:
                part = path[i] = str(part)  # a mapping's keys are names
        else:
            raise _override_error(text, key, f"{here} is {type(node).__name__} {_shown(node)}, not a mapping or a "
                                             "list")
        if i == len(path) - 1:
            break
        if isinstance(node, dict) and node.get(part) is None:
            node[part] = [] if isinstance(path[i + 1], int) else {}
        node = node[part]
    last = path[-1]
    if op == "+=":
        current = node[last] if (isinstance(node, list) or last in node) else []
        if not isinstance(current, list):
            raise _override_error(text, key, f"+= needs a list, found {type(current).__name__}")
        node[last] = current + (value if isinstance(value, list) else [value])
    else:
        node[last] = value
    for k in [k for k in sources if k[:len(path)] == tuple(path)]:
        del sources[k]
    _record_sources(node[last], tuple(path), OVERRIDE_SOURCE, sources)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def load_suite(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
               tree: dict[str, Any] | None = None, tree_source: str | None = None) -> LoadedSuite:
    """Read, merge and validate a suite; errors are :class:`UserError` naming file and field.

    ``tree`` is an already merged suite (a results directory's ``plan.json`` keeps one) to validate instead
    of reading ``path``; paths in it stay relative to ``path``, and errors name ``tree_source``."""
    path = Path(path)
    sources: dict[tuple, str] = {}
    budget = yamlio.Budget()
    given = tree
    if tree is None:
        tree = _load_tree(path, sources, (), budget)
    else:
        tree = copy.deepcopy(tree)
        sources.update({(k,): tree_source or str(path) for k in tree})
    for text in overrides:
        apply_override(tree, text, sources, budget)
    try:
        top = path.resolve()
    except (OSError, RuntimeError):
        top = Path(os.path.abspath(path))
    loaded = LoadedSuite(None, top, tree, sources)  # type: ignore[arg-type]
    try:
        loaded.suite = Suite.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _clean_loc(tree, tuple(err["loc"]))
        what = _describe(err, loc)
        if loc and loc[-1] == "[key]":  # a mapping key of the wrong type
            loc, what = loc[:-1], f"key {loc[-2]!r}: {what}"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise loaded.error(loc, what + more) from None
    for loc in (("report", "reference"), ("data", "path")):
        if given is None:  # a merged tree's paths are relative to the suite file already
            loaded._rebase(loc)
    ref = loaded.suite.report.reference
    if ref is not None and not loaded.resolve(ref).is_file():
        written = loaded.source_of(("report", "reference"))
        raise loaded.error(("report", "reference"), f"reference CSV not found: {loaded.resolve(ref)} (a path "
                           f"relative to {Path(written).name if written != OVERRIDE_SOURCE else 'the suite file'})")
    return loaded


def _clean_loc(tree: Any, loc: tuple) -> tuple:
    """pydantic's error location without the names it gives union members (they are not in the suite)."""
    out: list[Any] = []
    node = tree
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif isinstance(part, str) and part in _UNION_TAGS:
            continue
        else:
            node = None
        out.append(part)
    return tuple(out)


# pydantic puts union member names into error locations; they mean nothing to a suite author.
_UNION_TAGS = {"list[int]", "SeedRange", "int", "dict[str,int]", "function-after[_positive(), dict[str,int]]",
               "LLMSection", "seed list", "seed range", "episodes", "episodes per level"}


def _describe(err: dict[str, Any], loc: tuple = ()) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        return "unknown field" + (f"; allowed here: {', '.join(allowed)}" if allowed else " (check the spelling)")
    if kind == "missing":
        return "required field is missing"
    got = err.get("input")
    shown = _shown(got) if not isinstance(got, (dict, list)) else type(got).__name__
    msg = err.get("msg", "invalid value")
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    return f"{msg} (got {shown})"


def _fields_at(loc: tuple) -> list[str]:
    """The fields of the suite section at ``loc`` (``()``: the top level), or [] where it is no section."""
    model: Any = Suite
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = next((t for t in _types_in(field.annotation) if isinstance(t, type) and issubclass(t, BaseModel)),
                     None)
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _types_in(annotation: Any) -> list[Any]:
    """``annotation`` and every type nested in it (``list[X] | None`` → list, X, None, ...)."""
    out, todo = [], [annotation]
    while todo:
        t = todo.pop()
        out.append(t)
        todo.extend(get_args(t))
    return out


def schema_fields() -> dict[str, Any]:
    """JSON schema of a suite (for documentation and editors)."""
    return Suite.model_json_schema()
