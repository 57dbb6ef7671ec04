"""The hooks a kalm-bench plugin can implement.

Every hook is a ``register_*`` callback in the style of simonw/llm: kalm-bench calls the hook with a
``register`` function and the plugin calls it once per thing it provides. Built-in features (the local
executor, the table reporters) are registered through the same plugin manager as third-party ones.

A plugin is any importable module or object with ``@hookimpl``-decorated functions, exposed through the
``kalm_bench`` entry-point group::

    [project.entry-points.kalm_bench]
    myalgo = "kalm_bench_myalgo"

Hooks must not import heavy libraries (torch, d3rlpy, transformers) at module level or inside the hook
itself: register lightweight classes and import inside their methods, so ``kalm-bench --help``,
``plugins`` and ``validate`` stay fast.

``tests/test_hookspecs.py`` fails if a hook here has no docstring, lacks type hints, or is missing from
the plugin-author section of the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from .api import (
        Algorithm,
        Environment,
        Executor,
        GroundingTask,
        LLMBackend,
        Reporter,
        RolloutSource,
        TextEncoder,
    )

hookspec = pluggy.HookspecMarker("kalm_bench")
hookimpl = pluggy.HookimplMarker("kalm_bench")


@hookspec
def register_envs(register: Callable[[type[Environment]], None]) -> None:
    """Register environments.

    :param register: call ``register(EnvClass)`` with a subclass of :class:`kalm_bench.api.Environment`.
        The class declares its ``name``, ``version`` and ``levels`` (goal levels with a description each);
        instances make Gymnasium envs, generate offline datasets, and provide a level's test cases.
    """


@hookspec
def register_algorithms(register: Callable[[type[Algorithm]], None]) -> None:
    """Register policy-learning algorithms (offline RL, imitation, LLM-as-policy, sequence models).

    :param register: call ``register(AlgoClass)`` with a subclass of :class:`kalm_bench.api.Algorithm`.
        The class carries a pydantic ``Config`` (its fields are the suite's ``config:`` keys), named
        ``presets``, and ``train(ctx)``, which returns nothing and saves policy checkpoints through
        ``ctx.save_checkpoint``.
    """


@hookspec
def register_llm_backends(register: Callable[[type[LLMBackend]], None]) -> None:
    """Register LLM backends: models that are grounded on environment data and imagine rollouts.

    :param register: call ``register(BackendClass)`` with a subclass of :class:`kalm_bench.api.LLMBackend`.
    """


@hookspec
def register_grounding_tasks(register: Callable[[type[GroundingTask]], None]) -> None:
    """Register grounding tasks: ways of turning trajectories into supervised examples for an LLM.

    :param register: call ``register(TaskClass)`` with a subclass of :class:`kalm_bench.api.GroundingTask`.
        A suite selects tasks by name (``llm.grounding_tasks``).
    """


@hookspec
def register_rollout_sources(register: Callable[[type[RolloutSource]], None]) -> None:
    """Register rollout sources: where a KALM-style variant's imaginary rollouts come from.

    :param register: call ``register(SourceClass)`` with a subclass of :class:`kalm_bench.api.RolloutSource`.
        A suite names a source as an algorithm variant (``variants: [base, kalm, random]``).
    """


@hookspec
def register_encoders(register: Callable[[type[TextEncoder]], None]) -> None:
    """Register instruction encoders: text → fixed-size vector appended to the policy's state input.

    :param register: call ``register(EncoderClass)`` with a subclass of :class:`kalm_bench.api.TextEncoder`.
    """


@hookspec
def register_executors(register: Callable[[type[Executor]], None]) -> None:
    """Register executors: ways of running a suite's independent runs (local processes, a cluster).

    :param register: call ``register(ExecutorClass)`` with a subclass of :class:`kalm_bench.api.Executor`.
        ``kalm-bench run --executor NAME`` selects one.
    """


@hookspec
def register_reporters(register: Callable[[type[Reporter]], None]) -> None:
    """Register table formats for ``kalm-bench report --format NAME``.

    :param register: call ``register(ReporterClass)`` with a subclass of :class:`kalm_bench.api.Reporter`.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add sub-commands to the ``kalm-bench`` command line.

    :param cli: the root :class:`click.Group`; decorate new commands with ``@cli.command()``.
    """
