"""Offline-RL algorithms on d3rlpy: discrete BC/CQL (CLEVR-Robot) and BC, CQL, TD3+BC, AWAC, IQL (Meta-world).

Each algorithm wraps the upstream d3rlpy implementation; the policy input is state ⊕ instruction
embedding, and training can mix real and imaginary (KALM) data in every batch. d3rlpy and torch are
imported only when a run trains or loads a policy.
"""

from __future__ import annotations

from typing import Callable

from kalm_bench import hookimpl


@hookimpl
def register_algorithms(register: Callable[[type], None]) -> None:
    from .algorithms import ALGORITHMS

    for cls in ALGORITHMS:
        register(cls)
