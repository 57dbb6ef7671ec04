"""Baselines that are not offline-RL value methods: Decision Transformer (discrete and continuous) on d3rlpy,
and LLM as policy (the grounded LLM acting directly).

The DT policy input is state ⊕ instruction embedding, as for every other algorithm, and the transformer is
additionally conditioned on return-to-go. d3rlpy and torch are imported only when a run trains or loads.
"""

from __future__ import annotations

from typing import Callable

from kalm_bench import hookimpl


@hookimpl
def register_algorithms(register: Callable[[type], None]) -> None:
    from .dt import ALGORITHMS
    from .llm_dt import ALGORITHMS as LLM_DT_ALGORITHMS
    from .llm_policy import ALGORITHMS as LLM_ALGORITHMS

    for cls in ALGORITHMS + LLM_ALGORITHMS + LLM_DT_ALGORITHMS:
        register(cls)
