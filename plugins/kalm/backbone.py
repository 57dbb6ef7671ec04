"""The grounded model's transformer as a Decision Transformer backbone (``LLMBackend.backbone``).

The paper's DT baseline used Llama-2-7b-chat as the backbone of a Decision Transformer. Each backend gives
the transformer it grounded, without its input projections and output heads, as a module that maps input
embeddings ``(B, L, hidden_size)`` (plus an optional ``(B, L)`` padding mask, 1 on real tokens) to causal
hidden states of the same shape:

* ``embedded``: the :class:`~.embedded.SlotDecoder`'s blocks and final LayerNorm;
* ``hf-local`` / ``smollm2`` / ``gemma3-270m``: the causal LM's decoder (``lm.get_decoder()``, e.g. ``LlamaModel``) called with
  ``inputs_embeds``. A LoRA-grounded model comes back with its adapters merged into the weights (as
  :func:`.hf.load_engine` loads it for imagination), so the backbone is exactly the grounded model.

Every parameter is left trainable; the Decision Transformer decides what to freeze or adapt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from kalm_bench.api import UserError


class SlotBackbone(nn.Module):
    """The embedded backend's causal blocks + final LayerNorm."""

    def __init__(self, blocks: nn.ModuleList, ln_f: nn.Module, hidden_size: int):
        super().__init__()
        self.blocks, self.ln_f = blocks, ln_f
        self.hidden_size = int(hidden_size)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        # The blocks have no padding mask (they are causal only). Padding is always at the front of a
        # sequence, so every real token sees the same fixed padding tokens in training and when acting.
        x = inputs_embeds
        for blk in self.blocks:
            x, _ = blk(x, None)
        return self.ln_f(x)


class HFBackbone(nn.Module):
    """A Hugging Face decoder (no LM head) fed ``inputs_embeds``; positions count real tokens only."""

    def __init__(self, decoder: nn.Module, hidden_size: int):
        super().__init__()
        self.decoder = decoder
        self.hidden_size = int(hidden_size)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = next(self.decoder.parameters()).dtype
        b, n, _ = inputs_embeds.shape
        if attention_mask is None:
            attention_mask = torch.ones(b, n, dtype=torch.long, device=inputs_embeds.device)
        mask = attention_mask.long()
        # As in grounding (hf.Grounded.forward): front padding does not shift the real tokens' positions.
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        out = self.decoder(inputs_embeds=inputs_embeds.to(dtype), attention_mask=mask, position_ids=pos,
                           use_cache=False)
        return out.last_hidden_state.float()


def embedded_backbone(model_dir: Path, device: str = "cpu") -> SlotBackbone:
    """The embedded backend's grounded decoder in ``model_dir`` as a backbone."""
    from .embedded import load_engine

    model = load_engine(Path(model_dir), device).model
    d_model = model.ln_f.normalized_shape[0]
    backbone = SlotBackbone(model.blocks, model.ln_f, d_model).to(device)
    backbone.train()
    return backbone


def hf_backbone(model_dir: Path, backend: str, config: Any, device: str | None = None) -> HFBackbone:
    """The decoder of an ``hf-local`` / ``smollm2`` grounded model (LoRA merged) as a backbone.

    ``config`` is the backend's config (dtype, threads, device); ``device`` overrides its device.
    """
    from .hf import load_engine

    if device is not None:
        config = config.model_copy(update={"device": device})
    lm = load_engine(Path(model_dir), backend, config).model.lm
    decoder = lm.get_decoder()
    hidden = int(lm.get_input_embeddings().weight.shape[1])
    backbone = HFBackbone(decoder, hidden)
    backbone.train()
    return backbone


def build_backbone(backend: Any, model_dir: Path, device: str) -> nn.Module:
    """``LLMBackend.backbone`` for the KALM plugin's backends (dispatches on the backend's name)."""
    if backend.name == "embedded":
        return embedded_backbone(model_dir, device)
    from .backends import HFLocalBackend

    if isinstance(backend, HFLocalBackend):
        return hf_backbone(model_dir, backend.name, backend.config, device)
    raise UserError(f"LLM backend {backend.name!r} has no Decision Transformer backbone", field="llm.backend")
