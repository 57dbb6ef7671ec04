"""LLM backends, grounding tasks and KALM's imaginary rollouts.

Registers the backends ``embedded`` (default), ``smollm2``, ``gemma3-270m`` and ``hf-local`` and the grounding tasks
``dynamics``, ``explanation``, ``generation`` and ``consequence``. Only light modules are imported here.
"""

from __future__ import annotations

from collections.abc import Callable

from kalm_bench import hookimpl


@hookimpl
def register_llm_backends(register: Callable[[type], None]) -> None:
    from .backends import EmbeddedBackend, Gemma3Backend, HFLocalBackend, SmolLM2Backend

    register(EmbeddedBackend)
    register(SmolLM2Backend)
    register(Gemma3Backend)
    register(HFLocalBackend)


@hookimpl
def register_grounding_tasks(register: Callable[[type], None]) -> None:
    from .tasks import TASKS

    for task in TASKS:
        register(task)
