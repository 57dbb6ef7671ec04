"""The embedded backend's frozen sentence encoder: the registered ``minilm`` text encoder.

Loading the model and remembering embeddings are the encoder plugin's job (one loader, one cache); this
module only holds the one instance every embedded model of the process shares, so grounding, imagination,
diagnostics and the LLM policy encode each text once.
"""

from __future__ import annotations

import threading
from typing import Any

DIM = 384  # all-MiniLM-L6-v2's embedding width: the slot decoder's text slots have this size
ENCODER = "minilm"

_LOCK = threading.Lock()
_SHARED: dict[str, Any] = {}


def sentence_encoder() -> Any:
    """The process's instance of the registered ``minilm`` encoder (a ``TextEncoder``: ``encode(texts)``
    gives ``(len(texts), 384)`` float32 unit vectors)."""
    from kalm_bench.api import UserError, registry

    with _LOCK:
        if ENCODER not in _SHARED:
            encoder = registry().get("encoders", ENCODER)()
            if encoder.dim != DIM:
                raise UserError(f"the embedded backend needs {DIM}-d sentence embeddings; the registered "
                                f"{ENCODER!r} encoder gives {encoder.dim}", field="llm.backend")
            _SHARED[ENCODER] = encoder
        return _SHARED[ENCODER]
