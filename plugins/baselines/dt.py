"""Decision Transformer algorithms (d3rlpy ``DiscreteDecisionTransformer`` / ``DecisionTransformer``).

This module is imported at registration time, so it only uses pydantic; d3rlpy and torch are imported by
:mod:`.dt_train` when a run trains or loads a policy.

Presets:

* ``cpu`` (the default): a small transformer that trains at a usable rate on a CPU (2 layers, 2 heads,
  embedding 64, context 10, batch 64; see the README for measured updates/s);
* ``paper``: d3rlpy's own defaults for the class (DiscreteDT: 6 layers, 8 heads, GELU, global position
  encoding, embedding 256, context 20, batch 128, lr 6e-4; DT: 3 layers, 1 head, embedding 256, context 20,
  batch 64, lr 1e-4). KALM's paper does not list DT hyper-parameters, so d3rlpy's are the reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, model_validator

from kalm_bench.api import ActionKind, Algorithm, Policy, StrictConfig, TrainContext

# Fields of d3rlpy's transformer configs this plugin deliberately does not pass through: the scalers would
# have to be applied to the hand-built trajectory batches and to the policy's inputs/outputs (use
# ``return_scale`` for returns), gamma is unused by DT, and graph compilation needs CUDA.
_NOT_PASSED = ("observation_scaler", "action_scaler", "reward_scaler", "gamma", "compile_graph")


class DTConfig(StrictConfig):
    """Options shared by both Decision Transformers."""

    d3rlpy_config: ClassVar[str] = ""

    @classmethod
    def passed_fields(cls) -> tuple[str, ...]:
        """The d3rlpy fields this config sets or lets ``d3rlpy`` override: every field of the dataclass, read
        from d3rlpy (imports it), except the ones the Decision Transformers cannot take."""
        from kalm_bench_plugins.d3rlpy_layer import d3rlpy_fields

        return tuple(f for f in d3rlpy_fields(cls.d3rlpy_config) if f not in _NOT_PASSED)

    context_size: int = Field(10, ge=1, description="K: number of past steps the transformer sees")
    num_layers: int = Field(2, ge=1, description="transformer blocks")
    num_heads: int = Field(2, ge=1, description="attention heads (must divide the embedding size)")
    hidden_units: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=lambda: [64], min_length=1,
        description="MLP state encoder (ReLU); its last width is the transformer's embedding size")
    batch_size: int = Field(64, ge=1, description="sub-trajectories per gradient step (real + imaginary)")
    learning_rate: float = Field(6e-4, gt=0)
    max_timestep: int = Field(1000, ge=2, description="size of the timestep embedding table "
                                                      "(must exceed the longest episode)")
    target_return: float | None = Field(None, description="return-to-go the policy is conditioned on at "
                                                          "t=0; default: the best episode return in the "
                                                          "real data")
    return_scale: float | None = Field(None, gt=0, description="returns-to-go are divided by this before "
                                                               "the transformer sees them; default: the "
                                                               "largest |episode return| in the real data")
    device: str = Field("cpu:0", description="torch device, e.g. cpu:0 or cuda:0")
    d3rlpy: dict[str, Any] = Field(default_factory=dict,
                                   description="any other field of the d3rlpy config, e.g. "
                                               "{attn_dropout: 0.0} or {activation_type: gelu}")

    @model_validator(mode="after")
    def _check(self) -> DTConfig:
        if self.hidden_units[-1] % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide the embedding size "
                             f"(last of hidden_units = {self.hidden_units[-1]})")
        if not self.d3rlpy:
            return self
        own = set(type(self).model_fields)
        for key in self.d3rlpy:
            if key in own or key == "encoder_factory":
                raise ValueError(f"d3rlpy.{key}: set it through this algorithm's own options instead of "
                                 f"under 'd3rlpy'")
            if key in _NOT_PASSED:
                raise ValueError(f"d3rlpy.{key}: not supported by the kalm-bench Decision Transformer")
            if key not in self.passed_fields():
                raise ValueError(f"d3rlpy.{key}: unknown field of d3rlpy {self.d3rlpy_config}; valid: "
                                 f"{', '.join(sorted(set(self.passed_fields()) - own))}")
        from kalm_bench_plugins.d3rlpy_layer import build_d3rlpy_config  # imports d3rlpy: only when overridden

        build_d3rlpy_config(self)
        return self


class DiscreteDTConfig(DTConfig):
    d3rlpy_config: ClassVar[str] = "DiscreteDecisionTransformerConfig"


class ContinuousDTConfig(DTConfig):
    d3rlpy_config: ClassVar[str] = "DecisionTransformerConfig"

    learning_rate: float = Field(3e-4, gt=0)


class DTAlgorithm(Algorithm):
    """Base of both Decision Transformers; training and policies live in :mod:`.dt_train`."""

    libraries: ClassVar[tuple[str, ...]] = ("d3rlpy", "torch")

    version: ClassVar[str] = "1"
    default_preset: ClassVar[str | None] = "cpu"

    def train(self, ctx: TrainContext) -> None:
        from .dt_train import train

        train(self, ctx)

    def load_policy(self, path: Path, ctx: TrainContext) -> Policy:
        from .dt_train import load_policy

        return load_policy(path)


_CPU = {"context_size": 10, "num_layers": 2, "num_heads": 2, "hidden_units": [64], "batch_size": 64}


class DiscreteDT(DTAlgorithm):
    name: ClassVar[str] = "discrete-dt"
    description: ClassVar[str] = ("Decision Transformer, discrete actions (d3rlpy DiscreteDecisionTransformer) "
                                  "on state ⊕ instruction embedding and return-to-go")
    action_kinds: ClassVar[tuple[ActionKind, ...]] = ("discrete",)
    Config: ClassVar[type[StrictConfig]] = DiscreteDTConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": dict(_CPU, learning_rate=6e-4),
        # d3rlpy 2.8 DiscreteDecisionTransformerConfig defaults (its encoder: ReLU MLP [256, 256]).
        "paper": {"context_size": 20, "num_layers": 6, "num_heads": 8, "hidden_units": [256, 256],
                  "batch_size": 128, "learning_rate": 6e-4},
    }


class ContinuousDT(DTAlgorithm):
    name: ClassVar[str] = "dt"
    description: ClassVar[str] = ("Decision Transformer, continuous actions (d3rlpy DecisionTransformer) on "
                                  "state ⊕ instruction embedding and return-to-go")
    action_kinds: ClassVar[tuple[ActionKind, ...]] = ("continuous",)
    Config: ClassVar[type[StrictConfig]] = ContinuousDTConfig
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": dict(_CPU, learning_rate=3e-4),
        # d3rlpy 2.8 DecisionTransformerConfig defaults.
        "paper": {"context_size": 20, "num_layers": 3, "num_heads": 1, "hidden_units": [256, 256],
                  "batch_size": 64, "learning_rate": 1e-4},
    }


ALGORITHMS: tuple[type[DTAlgorithm], ...] = (DiscreteDT, ContinuousDT)
