"""Training loop, model and policies of ``llm-dt`` (Decision Transformer on the grounded LLM's transformer).

Data and acting windows are the d3rlpy-based DT's (:class:`.dt_train.TrajectorySampler`,
:meth:`.dt_train.DTPolicy._windows`): rows of K steps ending at a uniformly drawn transition, front-padded
and masked, return-to-go from that step on divided by ``return_scale``. Each step becomes three tokens
(return-to-go, state ⊕ instruction embedding, action), each a learned linear embedding plus a learned
timestep embedding, LayerNorm-ed and fed to the backbone as ``inputs_embeds``; the action head reads the
state token's output, which by causality has seen everything up to the current state but not its action.

A saved policy holds the DT's own weights and the backbone weights it trained (all of them, only the LoRA
adapters, or none when frozen); the rest of the backbone is reloaded from the run's grounded LLM.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kalm_bench.api import LLMHandle, PolicyBatch, TrainContext
from kalm_bench.api import UserError
from kalm_bench_plugins.d3rlpy_layer import (
    LOG,
    META_FILE,
    check_train_inputs,
    end_training_state,
    load_training_state,
    read_policy_meta,
    save_training_state,
    seed_everything,
    set_rng_state,
    write_policy_files,
)

from .dt_train import DTPolicy, trajectory_setup

if TYPE_CHECKING:  # pragma: no cover
    from .llm_dt import LLMDecisionTransformer, LLMDTConfig

WEIGHTS_FILE = "llm_dt.pt"
FORMAT = "kalm-bench-llm-dt-policy"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


# -------------------------------------------------------------------------------------------------------
# Model


class DTTokens(nn.Module):
    """The Decision Transformer's own parameters: token embeddings in, action head out."""

    def __init__(self, obs_dim: int, action_kind: str, action_size: int, hidden: int, max_timestep: int):
        super().__init__()
        self.action_kind, self.action_size = action_kind, int(action_size)
        self.rtg_in = nn.Linear(1, hidden)
        self.obs_in = nn.Linear(obs_dim, hidden)
        self.act_in: nn.Module = nn.Embedding(action_size, hidden) if action_kind == "discrete" \
            else nn.Linear(action_size, hidden)
        self.time_emb = nn.Embedding(max_timestep, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.act_out = nn.Linear(hidden, action_size)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def forward(self, backbone: nn.Module, obs: torch.Tensor, act: torch.Tensor, rtg: torch.Tensor,
                ts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,K,O), (B,K,1|A), (B,K,1), (B,K), (B,K) → action logits / tanh actions (B,K,n|A)."""
        b, k = ts.shape
        a = self.act_in(act[..., 0].long().clamp_min(0)) if self.action_kind == "discrete" else self.act_in(act)
        t = self.time_emb(ts)
        x = torch.stack([self.rtg_in(rtg) + t, self.obs_in(obs) + t, a + t], dim=2).reshape(b, 3 * k, -1)
        h = backbone(self.ln(x), mask.repeat_interleave(3, dim=1))
        out = self.act_out(h.reshape(b, k, 3, -1)[:, :, 1].to(self.act_out.weight.dtype))
        return out if self.action_kind == "discrete" else torch.tanh(out)


def dt_loss(out: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor, action_kind: str) -> torch.Tensor:
    m = mask > 0
    if action_kind == "discrete":
        return F.cross_entropy(out[m], actions[..., 0][m].long())
    return F.mse_loss(out[m], actions[m])


# -------------------------------------------------------------------------------------------------------
# Backbone


def get_backbone(llm: LLMHandle, device: str) -> nn.Module:
    """The grounded LLM's transformer (``LLMBackend.backbone``) on ``device``."""
    backend = llm.backend
    try:
        module = backend.backbone(Path(llm.path), device)
    except NotImplementedError as exc:
        raise UserError(f"llm-dt cannot use LLM backend {backend.name!r}: {exc}", field="llm.backend") from None
    if not isinstance(getattr(module, "hidden_size", None), int):
        raise UserError(f"LLM backend {backend.name!r} gave a backbone without an int 'hidden_size'",
                        field="llm.backend")
    return module.to(device)


def lora_targets(backbone: nn.Module) -> list[str]:
    """Every linear layer of the backbone (full module names, so that nothing else matches)."""
    return sorted(n for n, m in backbone.named_modules() if isinstance(m, nn.Linear))


def prepare_backbone(backbone: nn.Module, mode: str, rank: int | None, alpha: float,
                     targets: list[str] | None = None) -> list[str]:
    """Freeze / LoRA-wrap the backbone in place for ``mode`` (full | lora | frozen); returns LoRA targets."""
    if mode == "full":
        backbone.requires_grad_(True)
        return []
    backbone.requires_grad_(False)
    if mode == "frozen":
        return []
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets or lora_targets(backbone)
    if not targets:
        raise UserError("the backbone has no linear layers for LoRA", field="backbone_lora_rank")
    inject_adapter_in_model(LoraConfig(r=int(rank or 8), lora_alpha=alpha, target_modules=targets, bias="none"),
                            backbone)
    for n, p in backbone.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n and p.is_floating_point():
            # Adapters of a bf16 backbone train in fp32 (peft casts their inputs and outputs).
            p.data = p.data.float()
    return targets


def trained_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone weights training changes (nothing of a frozen one, only adapters of a LoRA one)."""
    return {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}


# -------------------------------------------------------------------------------------------------------
# Policy


class LLMDTPolicy(DTPolicy):
    """Greedy (discrete) or tanh (continuous) actions from the last K steps; windows as :class:`DTPolicy`."""

    def __init__(self, state: dict[str, Any], meta: dict[str, Any], device: str,
                 make_backbone: Callable[[], nn.Module], act_batch_size: int | None = None):
        super().__init__("", state, meta, device)
        self.make_backbone = make_backbone
        self.act_batch_size = act_batch_size
        self._tokens: DTTokens | None = None

    @property
    def net(self) -> nn.Module:
        if self._net is None:
            meta = self.meta
            backbone = self.make_backbone()
            prepare_backbone(backbone, meta["backbone_mode"], meta.get("lora_rank"), float(meta.get("lora_alpha", 16)),
                             meta.get("lora_targets") or None)
            if int(backbone.hidden_size) != int(meta["hidden_size"]):
                raise ValueError(f"backbone hidden size {backbone.hidden_size}, the policy was trained with "
                                 f"{meta['hidden_size']}")
            tokens = DTTokens(int(meta["observation_dim"]), meta["action_kind"], int(meta["action_size"]),
                              int(meta["hidden_size"]), int(meta["max_timestep"]))
            tokens.load_state_dict(self.state["tokens"])
            trained = dict(self.state["backbone"])
            expected = {n for n, p in backbone.named_parameters() if p.requires_grad}
            if set(trained) != expected:
                missing, extra = sorted(expected - set(trained)), sorted(set(trained) - expected)
                raise ValueError(f"backbone weights do not match the model (missing {missing[:3]}, "
                                 f"unexpected {extra[:3]})")
            backbone.load_state_dict(trained, strict=False)
            self._tokens = tokens.to(self.device).eval()
            self._net = backbone.to(self.device).eval()
        return self._net

    def act(self, batch: PolicyBatch) -> np.ndarray:
        obs, act, rtg, ts, mask = self._windows(batch)
        backbone = self.net
        tokens = self._tokens
        assert tokens is not None
        dev = torch.device(self.device)
        n = len(obs)
        step = self.act_batch_size or max(1, n)
        outs = []
        with torch.no_grad():
            for i in range(0, n, step):
                sl = slice(i, i + step)
                out = tokens(backbone, *(torch.from_numpy(a[sl]).to(dev) for a in (obs, act, rtg, ts, mask)))
                outs.append(out[:, -1].float().cpu())
        out = torch.cat(outs) if outs else torch.zeros(0, int(self.meta["action_size"]))
        if self.meta["action_kind"] == "discrete":
            return out.argmax(dim=-1).numpy().astype(np.int64)
        return out.numpy().astype(np.float32)

    def save(self, path: Path) -> None:
        write_policy_files(Path(path), self.state, self.meta, json.dumps(self.meta["config"]), FORMAT,
                           WEIGHTS_FILE)


_META_KEYS = ("action_kind", "action_size", "state_dim", "embedding_dim", "observation_dim", "context_size",
              "target_return", "return_scale", "max_timestep", "backend", "hidden_size", "backbone_mode", "config")


def load_policy(path: Path, ctx: TrainContext, device: str | None = None,
                act_batch_size: int | None = None) -> LLMDTPolicy:
    """Load a policy directory written by :meth:`LLMDTPolicy.save`; the backbone comes from ``ctx.llm``."""
    mpath, wpath = path / META_FILE, path / WEIGHTS_FILE
    meta = read_policy_meta(mpath, FORMAT, "llm-dt policy", required=_META_KEYS)
    if ctx.llm is None:
        raise UserError("llm-dt policies run on the grounded LLM, but this run has none", field="llm")
    if ctx.llm.backend.name != meta["backend"]:
        raise UserError(f"policy was trained on LLM backend {meta['backend']!r}, the run's is "
                        f"{ctx.llm.backend.name!r}", file=mpath, field="backend")
    if not wpath.is_file():
        raise UserError("policy weights are missing", file=wpath)
    device = resolve_device(device or str(meta.get("device", "cpu")))
    try:
        state = torch.load(wpath, map_location=device, weights_only=True)
    except Exception as exc:  # truncated zip, foreign file
        raise UserError(f"cannot load policy weights ({type(exc).__name__}: {exc})", file=wpath) from None
    if not isinstance(state, dict) or not {"tokens", "backbone"} <= set(state):
        raise UserError("policy weights lack the 'tokens' or 'backbone' part", file=wpath)
    llm = ctx.llm
    policy = LLMDTPolicy(state, meta, device, lambda: get_backbone(llm, device), act_batch_size)
    try:
        policy.net  # noqa: B018 - build now, so that a mismatch is reported naming the file
    except (ValueError, RuntimeError, KeyError) as exc:
        raise UserError(f"cannot load policy weights ({type(exc).__name__}: {exc})", file=wpath) from None
    return policy


# -------------------------------------------------------------------------------------------------------
# Training


def make_optimizer(cfg: LLMDTConfig, tokens: DTTokens, backbone: nn.Module) -> tuple[Any, Any, list]:
    """AdamW with the DT's own lr and the backbone's, linear warm-up; also the clipped parameters."""
    bb_params = [p for p in backbone.parameters() if p.requires_grad]
    groups = [{"params": list(tokens.parameters()), "lr": cfg.learning_rate}]
    if bb_params:
        groups.append({"params": bb_params, "lr": cfg.backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    warm = max(1, cfg.warmup)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return opt, sched, [p for g in groups for p in g["params"]]


def update(tokens: DTTokens, backbone: nn.Module, batch: Any, opt: Any, sched: Any, params: list,
           grad_clip: float) -> float:
    """One gradient step on a ``TrajectorySampler`` batch; returns the loss."""
    out = tokens(backbone, batch.observations, batch.actions, batch.returns_to_go, batch.timesteps, batch.masks)
    loss = dt_loss(out.float(), batch.actions, batch.masks, tokens.action_kind)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    return float(loss.detach())


def backbone_mode(cfg: LLMDTConfig) -> str:
    if cfg.backbone_lr == 0:
        return "frozen"
    return "lora" if cfg.backbone_lora_rank else "full"


def train(algorithm: LLMDecisionTransformer, ctx: TrainContext) -> None:
    cfg: LLMDTConfig = algorithm.config  # type: ignore[assignment]
    check_train_inputs(algorithm, ctx)
    if ctx.llm is None:
        raise UserError("llm-dt trains on the grounded LLM's transformer, but this run has none (add an 'llm' "
                        "section to the suite)", field="llm")
    seed_everything(ctx.seed)
    device = resolve_device(cfg.device)
    sampler, target, scale, (n_real, n_imag) = trajectory_setup(cfg, ctx, device)

    llm = ctx.llm
    backbone = get_backbone(llm, device)
    mode = backbone_mode(cfg)
    targets = prepare_backbone(backbone, mode, cfg.backbone_lora_rank, cfg.lora_alpha)
    backbone.train()
    torch.manual_seed(ctx.seed)  # the DT's own weights do not depend on what loading the backbone drew
    hidden = int(backbone.hidden_size)
    tokens = DTTokens(sampler.observation_dim, ctx.action_kind, ctx.action_size, hidden, cfg.max_timestep)
    tokens.to(device).train()
    opt, sched, params = make_optimizer(cfg, tokens, backbone)
    meta = {"algorithm": algorithm.name, "algorithm_version": algorithm.version, "action_kind": ctx.action_kind,
            "action_size": int(ctx.action_size), "state_dim": int(sampler.state_dim),
            "embedding_dim": int(sampler.observation_dim - sampler.state_dim),
            "observation_dim": int(sampler.observation_dim), "context_size": int(cfg.context_size),
            "max_timestep": int(cfg.max_timestep), "target_return": target, "return_scale": scale,
            "device": device, "seed": int(ctx.seed), "batch": {"real": n_real, "imaginary": n_imag},
            "backend": llm.backend.name, "model_dir": str(llm.path), "hidden_size": hidden,
            "backbone_mode": mode, "lora_rank": cfg.backbone_lora_rank if mode == "lora" else None,
            "lora_alpha": cfg.lora_alpha, "lora_targets": targets,
            "backbone_trained_parameters": int(sum(p.numel() for p in backbone.parameters() if p.requires_grad)),
            "config": cfg.model_dump(mode="json")}
    checkpoints = set(ctx.checkpoint_steps())
    every = max(1, min(100, ctx.steps // 100 or 1))
    recent: deque[float] = deque(maxlen=1000)
    since_log: list[float] = []
    first = 1
    resume = load_training_state(algorithm, ctx, device)  # a killed build of this training: continue it
    if resume is not None:
        tokens.load_state_dict(resume["tokens"])
        backbone.load_state_dict(resume["backbone"], strict=False)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        sampler.rng.bit_generator.state = resume["sampler_rng"]
        recent = deque(resume["recent"], maxlen=1000)
        since_log = list(resume["since_log"])
        set_rng_state(resume["rng"])
        first = int(resume["step"]) + 1
        LOG.info("  continuing %s from its checkpoint at step %d", algorithm.name, first - 1)
        ctx.progress(first - 1, ctx.steps)
    for step in range(first, ctx.steps + 1):
        value = update(tokens, backbone, sampler.sample(), opt, sched, params, cfg.grad_clip)
        recent.append(value)
        since_log.append(value)
        if step % every == 0 or step == ctx.steps:
            ctx.log(step, {"loss": float(np.mean(since_log))})
            since_log.clear()
            ctx.progress(step, ctx.steps)
        if step in checkpoints:
            snap = dict(meta, step=step, loss=float(np.mean(recent)))
            state = {"tokens": {k: v.detach().clone() for k, v in tokens.state_dict().items()},
                     "backbone": trained_state(backbone)}
            ctx.save_checkpoint(step, LLMDTPolicy(state, snap, device, lambda: get_backbone(llm, device),
                                                  cfg.act_batch_size))
            save_training_state(algorithm, ctx, step, {
                "tokens": tokens.state_dict(), "backbone": trained_state(backbone), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "sampler_rng": sampler.rng.bit_generator.state,
                "recent": list(recent), "since_log": list(since_log)})
    end_training_state(ctx)
