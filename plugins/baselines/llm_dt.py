"""Decision Transformer whose backbone is the grounded LLM's transformer (the paper's DT baseline).

KALM's Fig. 5 compares against a Decision Transformer with Llama-2-7b-chat as its backbone, trained on the
offline data. ``llm-dt`` builds that model around whatever LLM the suite grounds: the backend's
:meth:`~kalm_bench.api.LLMBackend.backbone` gives its transformer, and learned linear embeddings of
return-to-go, state ⊕ instruction embedding and action (plus a timestep embedding) are fed to it as
``inputs_embeds``, three tokens per step; the action head reads the state token's output. The backbone is
fine-tuned fully, through fresh LoRA adapters (``backbone_lora_rank``) or not at all (``backbone_lr: 0``).

This module is imported at registration time, so it only uses pydantic; torch is imported by
:mod:`.llm_dt_train` when a run trains or loads a policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from kalm_bench.api import ActionKind, Algorithm, Policy, StrictConfig, TrainContext


class LLMDTConfig(StrictConfig):
    context_size: int = Field(10, ge=1, description="K: number of past steps the transformer sees")
    batch_size: int = Field(32, ge=1, description="sub-trajectories per gradient step (real + imaginary)")
    learning_rate: float = Field(1e-3, gt=0, description="lr of the DT's own embeddings and action head")
    backbone_lr: float = Field(1e-4, ge=0, description="lr of the backbone (or of its LoRA adapters); "
                                                       "0 freezes it")
    backbone_lora_rank: int | None = Field(None, ge=1, description="train LoRA adapters of this rank on the "
                                                                   "backbone's linear layers instead of all "
                                                                   "its weights (for a 7B backbone)")
    lora_alpha: float = Field(16.0, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup: int = Field(100, ge=0, description="linear lr warm-up steps")
    grad_clip: float = Field(1.0, gt=0, description="gradient-norm clipping")
    max_timestep: int = Field(1000, ge=2, description="size of the timestep embedding table "
                                                      "(must exceed the longest episode)")
    target_return: float | None = Field(None, description="return-to-go the policy is conditioned on at t=0; "
                                                          "default: the best episode return in the real data")
    return_scale: float | None = Field(None, gt=0, description="returns-to-go are divided by this; default: "
                                                               "the largest |episode return| in the real data")
    act_batch_size: int | None = Field(None, ge=1, description="episodes per forward pass when acting "
                                                               "(default: the evaluator's whole batch)")
    device: str = Field("cpu", description="torch device of the backbone and heads, e.g. cpu or "
                                             "cuda:0; auto: cuda when available")


class LLMDecisionTransformer(Algorithm):

    libraries: ClassVar[tuple[str, ...]] = ("d3rlpy", "torch")
    name: ClassVar[str] = "llm-dt"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("Decision Transformer whose backbone is the grounded LLM's transformer (the "
                                  "paper: Llama-2-7b-chat), on return-to-go, state ⊕ instruction embedding "
                                  "and action tokens")
    action_kinds: ClassVar[tuple[ActionKind, ...]] = ("discrete", "continuous")
    needs_llm: ClassVar[bool] = True
    Config: ClassVar[type[StrictConfig]] = LLMDTConfig
    default_preset: ClassVar[str | None] = "cpu"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Small windows and batches: the embedded backbone then trains at a usable rate on one CPU core.
        "cpu": {"context_size": 10, "batch_size": 32, "learning_rate": 1e-3, "backbone_lr": 1e-4,
                "warmup": 100},
        # Chen et al. (2021)'s gym settings (K 20, batch 64, lr 1e-4, weight decay 1e-4, 10k warm-up steps,
        # clip 0.25) with LoRA rank 8 on the 7B backbone, which fits one GPU; KALM gives no DT settings.
        "paper": {"context_size": 20, "batch_size": 64, "learning_rate": 1e-4, "backbone_lr": 1e-4,
                  "backbone_lora_rank": 8, "weight_decay": 1e-4, "warmup": 10000, "grad_clip": 0.25,
                  "device": "auto"},
    }

    def train(self, ctx: TrainContext) -> None:
        from .llm_dt_train import train

        train(self, ctx)

    def load_policy(self, path: Path, ctx: TrainContext) -> Policy:
        from .llm_dt_train import load_policy

        return load_policy(Path(path), ctx, self.config.device, self.config.act_batch_size)


ALGORITHMS: tuple[type[Algorithm], ...] = (LLMDecisionTransformer,)
