"""A grounded model directory's metadata file, ``kalm_model.json``: writing and checked reading."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kalm_bench.api import UserError

MODEL_META = "kalm_model.json"


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def read_meta(model_dir: Path, backend: str) -> dict[str, Any]:
    path = Path(model_dir) / "kalm_model.json"
    if not path.is_file():
        raise UserError(f"not a grounded model directory of backend {backend!r} (kalm_model.json missing)",
                        file=path)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"corrupt model metadata ({exc.msg})", file=path) from None
    if meta.get("backend") != backend:
        raise UserError(f"model was grounded by backend {meta.get('backend')!r}, not {backend!r}", file=path,
                        field="backend")
    return meta
