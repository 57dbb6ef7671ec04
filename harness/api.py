"""The types a plugin implements and the contexts kalm-bench hands to them.

Each registered thing is a class with a ``name``, a ``version`` (part of every cache key: bump it when a
change alters results) and a pydantic ``Config`` whose fields are what a suite may set. Presets are named
partial configs (``preset: paper``). A configured instance serialises to ``{"type": name, "params": {...}}``
like d3rlpy's configs.

Nothing here imports torch, d3rlpy or gymnasium at module level.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

# Everything a plugin needs is importable from here: the errors and the dataset types are defined in their
# own modules and re-exported.
from .datasets import Episode, TrajectoryDataset, sha256_file
from .errors import PluginError, UserError

if TYPE_CHECKING:  # pragma: no cover
    import gymnasium
    import pandas as pd

# The public API: what a plugin may import (a test holds first-party plugins to it).
__all__ = ["ActionKind", "Algorithm", "Component", "Environment", "Episode", "EvalResult", "Executor",
    "GroundingContext", "GroundingTask", "ImagineContext", "ItemLost", "LLMBackend", "LLMHandle", "PluginError",
    "Policy", "PolicyBatch", "Progress", "Reporter", "ResultTable", "RolloutLabels", "RolloutSource",
    "StrictConfig", "TRUST_PICKLE_ENV", "TextEncoder", "TrainContext", "TrajectoryDataset", "TransitionData",
    "UserError", "evaluate_batched", "no_progress", "pickle_trusted", "sha256_file",
    "REQUIRED_ENV_DECLARATIONS", "OPTION_SCOPES", "OptionScope", "registry"]

ActionKind = Literal["discrete", "continuous"]
Progress = Callable[[int, int], None]
"""``progress(done, total)``: report progress of a long stage; cheap to call often."""


def no_progress(done: int, total: int) -> None:
    """A :data:`Progress` that reports nothing: the default of every ``progress`` parameter."""
    return None


TRUST_PICKLE_ENV = "KALM_BENCH_TRUST_PICKLE"


def pickle_trusted() -> bool:
    """Whether the person running kalm-bench allows loading pickled files (KALM's released ``.npy``
    files), which can run code when loaded: ``kalm-bench --trust-pickle ...`` or
    ``KALM_BENCH_TRUST_PICKLE=1`` in the environment (worker processes inherit it). Never taken from a suite
    or another file; a plugin that loads a pickle asks this first and refuses the file otherwise."""
    return os.environ.get(TRUST_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def registry() -> Any:
    """The process's plugin registry (built on first use): ``registry().get(kind, name)`` is the registered
    class, e.g. ``registry().get("envs", "clevr-robot")``. For scripts and tools; a plugin component gets
    the objects it works on through its context instead."""
    from .plugins import get_registry

    return get_registry()


class StrictConfig(BaseModel):
    """Base for plugin configs: unknown keys are errors, so a typo in a suite is caught by ``validate``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(abc.ABC):
    """Common base of everything a plugin registers."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    Config: ClassVar[type[StrictConfig]] = StrictConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    default_preset: ClassVar[str | None] = None
    libraries: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions decide this component's results (e.g. ``("d3rlpy", "torch")``): their
    versions are written into every stage and record that uses it."""

    def __init__(self, config: StrictConfig | dict[str, Any] | None = None):
        if config is None or isinstance(config, dict):
            config = self.make_config(overrides=config or {})
        self.config = config

    @classmethod
    def make_config(cls, preset: str | None = None, overrides: dict[str, Any] | None = None) -> StrictConfig:
        """Defaults < preset < overrides, validated by the class's ``Config``."""
        preset = preset if preset is not None else cls.default_preset
        values: dict[str, Any] = {}
        if preset is not None:
            if preset not in cls.presets:
                raise KeyError(preset)
            values.update(cls.presets[preset])
        values.update(overrides or {})
        return cls.Config(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.name, "params": self.config.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------------------
# Environments


@dataclass(frozen=True)
class RolloutLabels:
    """Labels an environment's own checks give to a (possibly imagined) state sequence.

    ``rewards[t]`` is the reward of transition t; ``end`` is the number of transitions kept (the episode
    stops at the first success); ``success`` whether the goal was reached within them.
    """

    rewards: np.ndarray
    end: int
    success: bool


@dataclass
class EvalResult:
    """Outcome of evaluating one policy on a list of test cases."""

    success: np.ndarray  # (n_cases,) bool
    returns: np.ndarray  # (n_cases,) float
    lengths: np.ndarray  # (n_cases,) int

    @property
    def success_rate(self) -> float:
        return float(np.mean(self.success)) if len(self.success) else float("nan")


OptionScope = Literal["data", "imagination", "evaluation"]
OPTION_SCOPES: tuple[OptionScope, ...] = ("data", "imagination", "evaluation")
REQUIRED_ENV_DECLARATIONS = ("levels", "action_kind", "action_size", "state_dim", "horizon")
"""The class variables every :class:`Environment` declares."""


class Environment(Component):
    """A task family with goal levels (e.g. seen / rephrase / easy / hard).

    Test cases and goals are JSON-serialisable dicts carrying at least the fields of :attr:`case_fields`
    (``"instruction"``); the Gymnasium env from :meth:`make` accepts one as ``env.reset(seed=...,
    options=case)`` and then plays that case. ``info["is_success"]`` after a step tells whether the goal
    is reached.

    Every environment declares :attr:`levels`, :attr:`action_kind`, :attr:`action_size`,
    :attr:`state_dim` and :attr:`horizon` and implements :meth:`make`, :meth:`generate_dataset` and
    :meth:`test_cases`. KALM's imaginary rollouts need more: goals with the fields of
    :attr:`imagination_case_fields` from :meth:`sample_goals`, :meth:`label_rollout` for oracle labels
    (declared by :attr:`can_label`), :meth:`goal_of` and :meth:`case_for_goal`. An environment without
    them still runs every variant that needs no rollouts (``base``).
    """

    levels: ClassVar[dict[str, str]]
    """Level name → one-line description. The first one is the level of the offline data."""
    action_kind: ClassVar[ActionKind]
    """``"discrete"`` (actions are ints ``0 .. action_size - 1``) or ``"continuous"`` (float vectors)."""
    action_size: ClassVar[int]
    """Number of discrete actions, or the width of a continuous action vector."""
    state_dim: ClassVar[int]
    """Width of the raw state vector (the observation of :meth:`make`'s envs)."""
    horizon: ClassVar[int]
    """Step limit of an episode: evaluation, random rollouts and imagination stop there. An instance may
    replace it with a configured value (``self.horizon = ...`` in ``__init__``)."""

    case_fields: ClassVar[tuple[str, ...]] = ("instruction",)
    """Fields every test case (and every goal of :meth:`sample_goals`) carries."""
    imagination_case_fields: ClassVar[tuple[str, ...]] = ("instruction", "initial_state")
    """Fields KALM reads from each goal of :meth:`sample_goals`: the instruction it imagines for and
    ``initial_state`` (a list of :attr:`state_dim` numbers) it starts from; :meth:`goal_of` and
    :meth:`label_rollout` read whatever else the env puts there. Extend it when they need more."""
    can_label: ClassVar[bool] = False
    """True when :meth:`label_rollout` is implemented (oracle labels of imagined rollouts). A subclass that
    defines ``label_rollout`` gets True unless it sets the flag itself."""

    option_scopes: ClassVar[dict[str, OptionScope]] = {}
    """Config option → the first stage that reads it, so that each stage's cache key covers exactly the
    options it reads: ``"data"`` (the offline data and everything built from them: the default for an
    option not named here), ``"imagination"`` (read when the env labels, checks or plays rollouts: the LLM's
    grounding and diagnostics, imaginary rollouts and evaluation, but not the data or policy training) or
    ``"evaluation"`` (evaluation only). A stage's env is built from the options of its scopes alone (the
    others at their defaults), so a stage cannot read an option its key leaves out."""
    level_options: ClassVar[tuple[str, ...]] = ()
    """Config options that map a level name to a value (e.g. a goal file per level). Each entry counts only
    for the stages of its level (rollouts and evaluation of that level, the diagnostics) and, for the data
    level, for every stage; a new entry for a novel level rebuilds its rollouts and evaluations only."""

    file_options: ClassVar[tuple[str, ...]] = ()
    """Config options whose value (or, for a level option, each entry) is the path of a file the env reads
    (relative paths are read from the working directory). A stage's key covers the file's content (its
    sha256), so a file edited in place rebuilds what reads it; a file that does not exist is refused when
    the suite is planned."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "label_rollout" in cls.__dict__ and "can_label" not in cls.__dict__:
            cls.can_label = True

    @classmethod
    def config_view(cls, config: dict[str, Any], scopes: Sequence[OptionScope],
                    levels: Sequence[str] | None = None) -> dict[str, Any]:
        """The part of ``config`` (a dumped :attr:`Config`) that a stage reading the options of ``scopes``
        sees: the options of those scopes, and of each :attr:`level_options` mapping the entries of
        ``levels`` (None: every level) and always the data level's."""
        wanted = set(scopes)
        keep_levels = None if levels is None else {*levels, next(iter(cls.levels))}
        out: dict[str, Any] = {}
        for name, value in config.items():
            if name in cls.level_options and isinstance(value, dict):
                out[name] = {lv: v for lv, v in value.items() if keep_levels is None or lv in keep_levels}
            elif cls.option_scopes.get(name, "data") in wanted:
                out[name] = value
        return out

    @classmethod
    def missing_declarations(cls) -> list[str]:
        """The required class variables this environment class does not declare (empty when complete)."""
        return [name for name in REQUIRED_ENV_DECLARATIONS if not any(name in vars(k) for k in cls.__mro__)]

    def missing_case_fields(self, cases: Sequence[dict[str, Any]],
                            fields: Sequence[str] | None = None) -> list[str]:
        """Fields of ``fields`` (default :attr:`imagination_case_fields`) that some case of ``cases``
        lacks, in declaration order."""
        need = tuple(self.imagination_case_fields if fields is None else fields)
        return [f for f in need if any(not isinstance(c, dict) or f not in c for c in cases)]

    def require_imagination(self, level: str, goals: Sequence[dict[str, Any]] | None = None,
                            labels: str = "oracle") -> None:
        """Check that this env supports KALM's imaginary rollouts at ``level``, before any work is done: a
        one-line :class:`UserError` names the env and what it lacks (a required class variable, a goal
        field of :attr:`imagination_case_fields`, or :meth:`label_rollout` for ``labels="oracle"``).
        ``goals`` are the goals to check; None draws one with :meth:`sample_goals` (what ``validate``
        can afford)."""
        missing = self.missing_declarations()
        if missing:
            raise UserError(f"environment {self.name!r} does not declare {', '.join(missing)}", field="env")
        if labels == "oracle" and not self.can_label:
            raise UserError(f"environment {self.name!r} cannot label rollouts (no label_rollout); use "
                            "rollouts.labels: model", field="rollouts.labels")
        if goals is None:
            goals = self.sample_goals(level, 1, 0)
        lacking = self.missing_case_fields(goals)
        if lacking:
            raise UserError(f"environment {self.name!r} cannot give imaginary rollouts: its goals of level "
                            f"{level!r} lack {', '.join(repr(f) for f in lacking)} (KALM needs "
                            f"{', '.join(self.imagination_case_fields)})", field="env")

    @property
    def data_level(self) -> str:
        """The level of the offline data: the first of :attr:`levels`."""
        return next(iter(self.levels))

    @abc.abstractmethod
    def make(self, level: str) -> gymnasium.Env:
        """A Gymnasium env whose observation is the raw state vector (no instruction embedding)."""

    @abc.abstractmethod
    def generate_dataset(self, n_episodes: int, seed: int, progress: Progress = no_progress,
                         **options: Any) -> TrajectoryDataset:
        """Offline data for the data level, deterministic per seed. ``options`` are the suite's
        ``data.options``; refuse unknown ones with a :class:`UserError` naming ``options``."""

    @abc.abstractmethod
    def test_cases(self, level: str, n: int | None, seed: int) -> list[dict[str, Any]]:
        """The level's fixed evaluation cases (initial state, goal, instruction).

        ``n=None`` means the level's default count (e.g. the paper's protocol); the harness passes None
        unless the suite sets ``eval.episodes``.
        """

    # -- used by KALM's imaginary rollouts only ------------------------------------------------------
    def sample_goals(self, level: str, n: int, seed: int) -> list[dict[str, Any]]:
        """KALM only. Goals with initial states from the env's initial-state distribution, for imaginary
        rollouts; each carries the fields of :attr:`imagination_case_fields`."""
        return self.test_cases(level, n, seed)

    def label_rollout(self, level: str, case: dict[str, Any], states: np.ndarray,
                      actions: np.ndarray) -> RolloutLabels:
        """KALM only (oracle labels). Rewards / end / success of a state sequence (``states`` has one more
        row than ``actions``). Implementing it sets :attr:`can_label`."""
        raise NotImplementedError(f"environment {self.name!r} cannot label rollouts")

    def goal_of(self, case: dict[str, Any]) -> Any:
        """KALM only. What an episode played or imagined for ``case`` records as its goal (JSON-
        serialisable): by default the case's ``"goal"``, else the case without its ``initial_state``."""
        if "goal" in case:
            return case["goal"]
        return {k: v for k, v in case.items() if k != "initial_state"}

    def case_for_goal(self, goal: Any) -> dict[str, Any]:
        """KALM only. A case that :meth:`label_rollout` accepts for a goal recorded by :meth:`goal_of` (the
        grounding data's goals are relabelled with it). The default inverts the default :meth:`goal_of`:
        ``{"goal": goal}``, plus the goal's own keys when it is a dict."""
        return {**goal, "goal": goal} if isinstance(goal, dict) else {"goal": goal}

    def state_bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension ``(low, high)`` bounds (each of length :attr:`state_dim`, raw units) that every real
        state lies within, or None (the default) when the env declares none. Diagnostics count imagined
        states outside them; without bounds they use the data's range."""
        return None

    def realistic_states(self, states: np.ndarray) -> np.ndarray | None:
        """Which rows of ``states`` (shape ``(N, state_dim)``, raw units) are physically possible: a bool
        array of length N. None (the default) means the env declares no realism check.

        Imagined states can satisfy a goal check while being impossible (two objects in one place, an
        object off the table); the rollouts stage uses this check as a filter (``rollouts.realistic``)
        and reports the share of realistic rollouts next to goal match. Every state of the env's real
        data must pass it.
        """
        return None

    def evaluate(self, policy: Policy, level: str, cases: Sequence[dict[str, Any]], seed: int,
                 embed: Callable[[list[str]], np.ndarray] | None = None,
                 progress: Progress = no_progress, batch_size: int = 128) -> EvalResult:
        """Play every case once with ``policy``, many episodes at a time. Override for a faster path."""
        return evaluate_batched(self, policy, level, cases, seed, embed=embed, progress=progress,
                                batch_size=batch_size)


# ---------------------------------------------------------------------------------------------------------
# Data handed to algorithms


@dataclass
class TransitionData:
    """Transitions of many episodes, contiguous per episode, with instructions kept by reference.

    The policy input of transition i is ``states[i] ⊕ embeddings[instruction_ids[i]]``; it is only
    materialised on demand (:attr:`observations`) because 100k episodes × 384-d embeddings do not fit.
    """

    states: np.ndarray  # (N, S) float32
    actions: np.ndarray  # (N,) int64 or (N, A) float32
    rewards: np.ndarray  # (N,) float32
    next_states: np.ndarray  # (N, S) float32
    terminals: np.ndarray  # (N,) float32: 1 where the episode ended by reaching its goal
    timeouts: np.ndarray  # (N,) float32: 1 where it ended otherwise (never both)
    instruction_ids: np.ndarray  # (N,) int64 into embeddings / instructions
    embeddings: np.ndarray  # (K, E) float32, one row per unique instruction
    instructions: list[str]
    episode_starts: np.ndarray  # (n_episodes,) int64

    def __len__(self) -> int:
        return len(self.states)

    @property
    def observations(self) -> np.ndarray:
        return np.concatenate([self.states, self.embeddings[self.instruction_ids]], axis=1)

    @property
    def next_observations(self) -> np.ndarray:
        return np.concatenate([self.next_states, self.embeddings[self.instruction_ids]], axis=1)

    @property
    def observation_dim(self) -> int:
        return self.states.shape[1] + self.embeddings.shape[1]


@dataclass
class PolicyBatch:
    """What a policy sees at one step of a batch of episodes."""

    states: np.ndarray  # (B, S)
    instructions: list[str]
    embeddings: np.ndarray | None  # (B, E) or None when no encoder is used
    t: np.ndarray  # (B,) step index within each episode
    initial_states: np.ndarray  # (B, S)
    history_states: list[np.ndarray] = field(default_factory=list)  # per episode (t+1, S)
    history_actions: list[np.ndarray] = field(default_factory=list)  # per episode (t, ...) actions
    history_rewards: list[np.ndarray] = field(default_factory=list)  # per episode (t,) rewards received

    @property
    def observations(self) -> np.ndarray:
        if self.embeddings is None:
            return self.states.astype(np.float32)
        return np.concatenate([self.states, self.embeddings], axis=1).astype(np.float32)


class Policy(abc.ABC):
    """A trained policy. ``act`` is called once per step for a whole batch of episodes."""

    @abc.abstractmethod
    def act(self, batch: PolicyBatch) -> np.ndarray:
        """Actions for every episode of the batch: (B,) ints or (B, A) floats."""

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the policy into the (existing, empty) directory ``path``."""


@dataclass
class LLMHandle:
    """A grounded LLM: the backend that made it and the directory of its artifact."""

    backend: LLMBackend
    path: Path


@dataclass
class TrainContext:
    """Everything ``Algorithm.train`` needs. Call :meth:`save_checkpoint` every ``checkpoint_every`` steps."""

    config: StrictConfig
    seed: int
    real: TransitionData
    imaginary: TransitionData | None
    imaginary_fraction: float  # share of each batch drawn from ``imaginary`` (0.5 = the paper's 1:1)
    steps: int
    checkpoint_every: int
    action_kind: ActionKind
    action_size: int  # number of discrete actions, or the continuous action dimension
    workdir: Path
    save_checkpoint: Callable[[int, Policy], None]
    progress: Progress = no_progress
    llm: LLMHandle | None = None
    env: Environment | None = None
    log: Callable[[int, dict[str, float]], None] = lambda step, metrics: None
    """``log(step, {"loss": ...})``: training metrics kept in the stage artifact and the run's record."""

    def checkpoint_steps(self) -> list[int]:
        every = max(1, self.checkpoint_every)
        steps = list(range(every, self.steps + 1, every))
        if not steps or steps[-1] != self.steps:
            steps.append(self.steps)
        return steps


class Algorithm(Component):
    """A way of learning a policy from offline data (optionally plus imaginary data)."""

    action_kinds: ClassVar[tuple[ActionKind, ...]] = ("discrete", "continuous")
    needs_llm: ClassVar[bool] = False
    """True for algorithms that act through the grounded LLM (LLM-as-policy, LLM-backbone DT)."""
    trains: ClassVar[bool] = True
    """False for algorithms that make no updates (their one checkpoint is step 0): the run's train stage then
    ignores ``train.steps`` and ``checkpoint_every``, so changing them does not rebuild it."""

    @abc.abstractmethod
    def train(self, ctx: TrainContext) -> None:
        """Train, calling ``ctx.save_checkpoint(step, policy)`` at each of ``ctx.checkpoint_steps()``."""

    @abc.abstractmethod
    def load_policy(self, path: Path, ctx: TrainContext) -> Policy:
        """Load a policy saved by :meth:`Policy.save` (``ctx`` has the data shapes, no data arrays)."""


# ---------------------------------------------------------------------------------------------------------
# Language


class TextEncoder(Component):
    """Instruction text → fixed-size float vector."""

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Embedding size."""

    @abc.abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32."""


class GroundingTask(Component):
    """Turns trajectories into supervised examples for grounding an LLM (e.g. dynamics prediction)."""

    @abc.abstractmethod
    def examples(self, dataset: TrajectoryDataset, rng: np.random.Generator) -> list[dict[str, Any]]:
        """One epoch of examples. Their format is agreed between tasks and the backends that use them."""


@dataclass
class GroundingContext:
    dataset: TrajectoryDataset
    env: Environment
    tasks: list[GroundingTask]
    seed: int
    workdir: Path  # write the grounded model here
    progress: Progress = no_progress


@dataclass
class ImagineContext:
    """What a rollout source (or an LLM backend's ``imagine``) reads to propose rollouts for ``goals``."""

    model_dir: Path | None  # the grounded model's directory (None for a source that uses no LLM)
    env: Environment
    level: str
    goals: list[dict[str, Any]]
    seed: int
    labels: str  # "oracle" (the env's own checks) | "model" (the grounded model's success judgement)
    progress: Progress = no_progress
    llm: LLMHandle | None = None  # the grounded model, when the suite's LLM section provides one


class LLMBackend(Component):
    """An LLM that is grounded on environment data and then imagines rollouts for new goals."""

    @abc.abstractmethod
    def ground(self, ctx: GroundingContext) -> None:
        """Fine-tune on ``ctx.dataset`` with ``ctx.tasks`` and save the result into ``ctx.workdir``."""

    @abc.abstractmethod
    def imagine(self, ctx: ImagineContext) -> TrajectoryDataset:
        """One imagined rollout per goal of ``ctx.goals``."""

    def diagnostics(self, model_dir: Path, env: Environment, dataset: TrajectoryDataset,
                    seed: int) -> dict[str, float]:
        """Optional model-quality metrics recorded next to each run that used this model. Called in a stage of
        its own after the grounding (a new process may run it): read the model from ``model_dir``. Its env
        has every level's goals, so a goal file of a novel level re-measures it without grounding again."""
        return {}

    def policy(self, model_dir: Path, env: Environment) -> Policy:
        """Optional: the grounded model acting directly in ``env`` (the LLM-as-policy baseline).

        At every step the policy reads each episode's instruction, initial state and real history
        (``PolicyBatch.history_states`` / ``history_actions``) and returns the next actions, batched across
        episodes. Backends that cannot act raise :class:`NotImplementedError`.
        """
        raise NotImplementedError(f"LLM backend {self.name!r} cannot act as a policy")

    def judge(self, model_dir: Path, env: Environment, level: str, goals: Sequence[dict[str, Any]],
              rollouts: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[RolloutLabels]:
        """Optional: the grounded model's own labels of rollouts it did not generate (``labels: model`` for a
        rollout source other than the LLM). ``rollouts`` holds ``(states, actions)`` in raw units, states
        with one more row than actions. Backends that cannot judge raise :class:`NotImplementedError`."""
        raise NotImplementedError(f"LLM backend {self.name!r} cannot judge rollouts it did not generate")

    def backbone(self, model_dir: Path, device: str) -> Any:
        """Optional: the model's transformer as a trainable torch module, for a Decision Transformer whose
        backbone is the LLM (the paper's DT baseline used Llama-2-7b-chat this way).

        The module maps input embeddings ``(B, L, hidden_size)`` to causal hidden states of the same shape
        and has an ``int`` attribute ``hidden_size``. Backends without one raise :class:`NotImplementedError`.
        """
        raise NotImplementedError(f"LLM backend {self.name!r} has no backbone for a Decision Transformer")


class RolloutSource(Component):
    """Proposes one labelled rollout per goal of a novel level: the imaginary data of a KALM-style variant.

    ``llm`` (the grounded LLM's imagination) is KALM itself; ``random`` (random actions in the simulator
    from the same initial states) is its no-LLM control. A suite names sources as algorithm variants
    (``variants: [base, kalm, random]``; ``kalm`` is the ``llm`` source). The rollouts stage then applies
    the suite's filters (``rollouts.keep``, ``rollouts.realistic``) to what the source returns.
    """

    needs_llm: ClassVar[bool] = False
    """True when the source reads ``ImagineContext.llm`` (the plan then grounds an LLM for it)."""

    @abc.abstractmethod
    def propose(self, ctx: ImagineContext) -> TrajectoryDataset:
        """One rollout per goal of ``ctx.goals``, in order, labelled as ``ctx.labels`` says: ``oracle`` with
        ``ctx.env.label_rollout``, ``model`` with ``ctx.llm.backend.judge`` (or the model's own heads).
        Each episode keeps its goal's instruction and goal; ``success`` is its label."""


# ---------------------------------------------------------------------------------------------------------
# Running and reporting


@dataclass
class ItemLost:
    """What an executor yields for an item that produced no result: its worker died or ``fn`` raised. The
    runner fails that item's runs with ``reason`` and goes on with the others."""

    item: Any
    reason: str


class Executor(Component):
    """Runs independent jobs; results are yielded as they complete (in any order)."""

    @abc.abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], jobs: int) -> Iterator[Any]:
        """Apply a picklable top-level ``fn`` to every item; yield its result, or an :class:`ItemLost` for an
        item whose worker died or whose ``fn`` raised (never raise for one item)."""

    def close(self) -> None:
        """Release workers and other resources; the runner calls it once when the suite ends."""


@dataclass
class ResultTable:
    """One table of a report, in two forms: ``display`` with formatted string cells (``50.0 ± 3.1 (3)``)
    and ``tidy`` with one row per observation and numbers in their own columns (``mean``, ``std``, ``n``,
    ``ci_low``, ``ci_high``, ...)."""

    name: str
    """Short, file-name-safe name: ``success``, ``gains``, ``comparison-1``, ``rollouts``, ``diagnostics``,
    ``timing``."""
    title: str
    display: pd.DataFrame
    tidy: pd.DataFrame
    result: bool = True
    """False for bookkeeping tables (wall time) that are not results."""


class Reporter(Component):
    """Renders the tables of a report as text (Markdown, CSV, LaTeX, JSON, ...)."""

    extension: ClassVar[str]
    single_table: ClassVar[bool] = False
    """True for formats that hold one table per file (CSV): ``report`` then asks for one table by name, and a
    run writes one file per table."""

    @abc.abstractmethod
    def render(self, table: pd.DataFrame, title: str | None = None) -> str:
        """Text of one display table; ``table`` has string cells and named index/columns."""

    def render_tables(self, tables: Sequence[ResultTable], footer: str | None = None) -> str:
        """Text of a whole report. The default renders each display table with its title, then the footer
        (a Markdown paragraph); override it to use the tidy forms or to leave tables out."""
        parts = [self.render(t.display, title=t.title) for t in tables]
        return "\n".join(parts + ([footer] if footer else []))


# ---------------------------------------------------------------------------------------------------------
# The default evaluator


def evaluate_batched(env_plugin: Environment, policy: Policy, level: str, cases: Sequence[dict[str, Any]],
                     seed: int, embed: Callable[[list[str]], np.ndarray] | None = None,
                     progress: Progress = no_progress, batch_size: int = 128) -> EvalResult:
    """Play every case once with ``policy`` on ``env_plugin.make(level)`` envs, in lockstep: one
    ``policy.act`` call per step for every unfinished episode, so a neural policy pays one forward pass per
    step instead of one per episode. Episodes end on ``terminated``/``truncated`` or after
    ``env_plugin.horizon`` steps; ``info["is_success"]`` marks success. The default of
    :meth:`Environment.evaluate`; plugins may call it from their own override."""
    n = len(cases)
    success = np.zeros(n, bool)
    returns = np.zeros(n, np.float64)
    lengths = np.zeros(n, np.int64)
    if n == 0:
        return EvalResult(success, returns, lengths)
    width = max(1, min(batch_size, n))
    envs = [env_plugin.make(level) for _ in range(width)]
    horizon = int(env_plugin.horizon)
    try:
        for start in range(0, n, width):
            idx = list(range(start, min(n, start + width)))
            states, instr = [], []
            for slot, i in enumerate(idx):
                obs, _ = envs[slot].reset(seed=seed + i, options=dict(cases[i]))
                states.append(np.asarray(obs, np.float32))
                instr.append(str(cases[i]["instruction"]))
            emb = embed(instr) if embed is not None else None
            init = np.stack(states)
            # Histories live in preallocated arrays; policies get views, so a step costs O(batch), not O(t).
            hist_s = np.zeros((len(idx), horizon + 1) + init.shape[1:], np.float32)
            hist_s[:, 0] = init
            hist_r = np.zeros((len(idx), horizon), np.float32)
            hist_a: np.ndarray | None = None
            active = list(range(len(idx)))
            t = 0
            while active and t < horizon:
                batch = PolicyBatch(
                    states=hist_s[active, t],
                    instructions=[instr[j] for j in active],
                    embeddings=None if emb is None else emb[active],
                    t=np.full(len(active), t, np.int64),
                    initial_states=init[active],
                    history_states=[hist_s[j, : t + 1] for j in active],
                    history_actions=[hist_a[j, :t] if hist_a is not None else np.zeros((0,)) for j in active],
                    history_rewards=[hist_r[j, :t] for j in active],
                )
                actions = np.asarray(policy.act(batch))
                if hist_a is None:
                    hist_a = np.zeros((len(idx), horizon) + actions.shape[1:], actions.dtype)
                still = []
                for k, j in enumerate(active):
                    a = actions[k]
                    obs, reward, terminated, truncated, info = envs[j].step(a.item() if a.ndim == 0 else a)
                    i = idx[j]
                    returns[i] += float(reward)
                    lengths[i] += 1
                    hist_s[j, t + 1] = np.asarray(obs, np.float32)
                    hist_a[j, t] = a
                    hist_r[j, t] = float(reward)
                    if info.get("is_success", False):
                        success[i] = True
                    if not (terminated or truncated):
                        still.append(j)
                active = still
                t += 1
            progress(idx[-1] + 1, n)
    finally:
        for env in envs:
            env.close()
    return EvalResult(success=success, returns=returns, lengths=lengths)
