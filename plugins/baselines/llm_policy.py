"""LLM as policy: the grounded LLM itself picks every action in the real environment (no policy training).

The paper's baseline: a_t = M(GOP, s0, a0, …, s_t) with the fine-tuned LLM M. The acting itself is the LLM
backend's :meth:`~kalm_bench.api.LLMBackend.policy`; this algorithm only makes it selectable in a suite
next to the offline-RL algorithms. Its train stage performs no updates: it saves one checkpoint at step 0
that names the grounded model, and evaluation reloads that model from the run's grounding stage.

This module is imported at registration time, so it only uses pydantic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from kalm_bench.api import ActionKind, Algorithm, Policy, StrictConfig, TrainContext
from kalm_bench.api import UserError

CHECKPOINT_FILE = "llm_policy.json"
"""What a backend's LLM policy writes in ``Policy.save``: JSON with at least ``{"backend": name}``."""


class LLMPolicyConfig(StrictConfig):
    act_batch_size: int | None = Field(None, ge=1, description="episodes per forward pass of the LLM "
                                                               "(default: the evaluator's whole batch); "
                                                               "lower it to bound memory with a large LLM")
    kv_cache: bool = Field(True, description="reuse the previous step's KV cache when the evaluator's batch "
                                             "allows it (same actions; only speed changes)")


class LLMAsPolicy(Algorithm):

    libraries: ClassVar[tuple[str, ...]] = ("torch",)
    name: ClassVar[str] = "llm-policy"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("LLM as policy: the grounded LLM outputs each action from the goal-oriented "
                                  "prompt, the initial state and the real history (no policy training)")
    action_kinds: ClassVar[tuple[ActionKind, ...]] = ("discrete", "continuous")
    needs_llm: ClassVar[bool] = True
    trains: ClassVar[bool] = False
    Config: ClassVar[type[StrictConfig]] = LLMPolicyConfig

    def _policy(self, ctx: TrainContext) -> Policy:
        if ctx.llm is None:
            raise UserError("llm-policy acts through a grounded LLM, but this run has none (add an 'llm' "
                            "section to the suite)", field="llm")
        if ctx.env is None:
            raise UserError("llm-policy needs the run's environment", field="env")
        try:
            policy = ctx.llm.backend.policy(Path(ctx.llm.path), ctx.env)
        except NotImplementedError as exc:
            raise UserError(f"llm-policy cannot use LLM backend {ctx.llm.backend.name!r}: {exc}",
                            field="llm.backend") from None
        # Batching knobs, for backends' policies that have them (the KALM backends' LLMPolicy does).
        for attr, value in (("batch_size", self.config.act_batch_size), ("kv_cache", self.config.kv_cache)):
            if hasattr(policy, attr):
                setattr(policy, attr, value)
        return policy

    def train(self, ctx: TrainContext) -> None:
        policy = self._policy(ctx)
        ctx.progress(1, 1)
        # Step 0: the record's curve then says truthfully that no update was made, and evaluation runs once.
        ctx.save_checkpoint(0, policy)

    def load_policy(self, path: Path, ctx: TrainContext) -> Policy:
        info = read_checkpoint(Path(path))
        if ctx.llm is not None and info.get("backend") != ctx.llm.backend.name:
            raise UserError(f"checkpoint was made with LLM backend {info.get('backend')!r}, the run's is "
                            f"{ctx.llm.backend.name!r}", file=Path(path) / CHECKPOINT_FILE, field="backend")
        return self._policy(ctx)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """What the saved policy recorded (at least ``backend``); the weights themselves come from ``ctx.llm``."""
    f = path / CHECKPOINT_FILE
    if not f.is_file():
        raise UserError("not an llm-policy checkpoint (file missing)", file=f)
    try:
        info = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt llm-policy checkpoint ({exc.msg})", file=f) from None
    if not isinstance(info, dict) or not isinstance(info.get("backend"), str):
        raise UserError("llm-policy checkpoint names no LLM backend", file=f, field="backend")
    return info

ALGORITHMS: tuple[type[Algorithm], ...] = (LLMAsPolicy,)
