"""KALM's training objective on the numeric slots, shared by every backend (imports torch when called)."""

from __future__ import annotations

from typing import Any


def numeric_losses(heads: Any, h: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """KALM's numeric losses at the masked slots, plus the success and reward heads: next-state MSE, action
    cross-entropy (discrete) or MSE (continuous), done BCE, reward MSE. ``heads`` has ``state_out``,
    ``action_out``, ``done_out``, ``reward_out`` and ``action_kind``; every backend shares this objective."""
    import torch.nn.functional as F

    parts: dict[str, Any] = {}
    m = batch["st_m"] > 0
    if m.any():
        parts["state"] = F.mse_loss(heads.state_out(h[m]), batch["st_t"][m])
    m = batch["ac_m"] > 0
    if m.any():
        out = heads.action_out(h[m])
        parts["action"] = F.cross_entropy(out, batch["ac_t"][m]) if heads.action_kind == "discrete" \
            else F.mse_loss(out, batch["ac_t"][m])
    m = batch["dn_m"] > 0
    if m.any():
        parts["done"] = F.binary_cross_entropy_with_logits(heads.done_out(h[m])[:, 0], batch["dn_t"][m])
    m = batch["rw_m"] > 0
    if m.any():
        parts["reward"] = F.mse_loss(heads.reward_out(h[m])[:, 0], batch["rw_t"][m])
    return parts
