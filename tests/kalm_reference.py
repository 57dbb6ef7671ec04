"""KALM's released data files, shipped pickle-free in ``tests/data/kalm/`` (see ``tests/data/README.md``).

Each released ``.npy`` held a pickled dict. Here every dict is stored as ``<name>.npz`` (plain arrays, read
with ``allow_pickle=False``) plus ``<name>.json`` (key order, plain scalars, and which keys were lists of
arrays). ``load(name)`` rebuilds the dict exactly as ``np.load(original, allow_pickle=True).item()`` gave it;
``write_npy(name, folder)`` writes it back as a pickled ``.npy`` for the tests of the ``.npy`` importers.

A plain module (not a conftest), imported as ``kalm_reference``: ``tests/conftest.py`` puts ``tests/`` on
``sys.path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "kalm"
NAMES = ("clevr_robot", "clevr_rephrase_prompt", "meta_world")
_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _item_key(key: str, i: int) -> str:
    return f"{key}.{i:03d}"


def pack(d: dict[str, Any], npz: str | Path) -> None:
    """Store ``d`` (values: arrays, lists of arrays, or plain scalars) as ``npz`` + the ``.json`` beside it."""
    npz = Path(npz)
    arrays: dict[str, np.ndarray] = {}
    keys: list[dict[str, Any]] = []
    for key, value in d.items():
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{key}: object arrays would need pickle")
            arrays[key] = value
            keys.append({"key": key, "kind": "array"})
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, np.ndarray) or item.dtype == object:
                    raise TypeError(f"{key}[{i}]: only lists of plain arrays are supported")
                arrays[_item_key(key, i)] = item
            keys.append({"key": key, "kind": "list", "length": len(value)})
        elif type(value) in _SCALARS.values():
            keys.append({"key": key, "kind": "scalar", "type": type(value).__name__, "value": value})
        else:
            raise TypeError(f"{key}: unsupported value type {type(value).__name__}")
    np.savez_compressed(npz, **arrays)
    npz.with_suffix(".json").write_text(json.dumps({"keys": keys}, indent=1) + "\n")


def unpack(npz: str | Path) -> dict[str, Any]:
    """The dict stored by ``pack``: same keys in the same order, same arrays (dtype and shape)."""
    npz = Path(npz)
    meta = json.loads(npz.with_suffix(".json").read_text())
    out: dict[str, Any] = {}
    with np.load(npz, allow_pickle=False) as z:
        for entry in meta["keys"]:
            key, kind = entry["key"], entry["kind"]
            if kind == "array":
                out[key] = z[key]
            elif kind == "list":
                out[key] = [z[_item_key(key, i)] for i in range(entry["length"])]
            else:
                out[key] = _SCALARS[entry["type"]](entry["value"])
    return out


def load(name: str) -> dict[str, Any]:
    """The dict of KALM's ``<name>.npy`` (``name`` in ``NAMES``), rebuilt from the shipped files."""
    if name not in NAMES:
        raise ValueError(f"unknown KALM data file {name!r}; known: {', '.join(NAMES)}")
    return unpack(DATA / f"{name}.npz")


def write_npy(name: str, folder: str | Path) -> Path:
    """Write KALM's ``<name>.npy`` as released (a pickled dict in an object array) into ``folder``."""
    path = Path(folder) / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(load(name), dtype=object), allow_pickle=True)
    return path
