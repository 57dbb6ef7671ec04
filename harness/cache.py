"""Content-addressed store of stage artifacts.

An entry lives at ``<root>/<kind>/<key[:2]>/<key>/`` and is complete only when it holds ``DONE``. It is
built in a temporary sibling directory and renamed into place, under a per-key file lock, so a killed
process leaves either nothing or a whole entry, and two workers never build the same entry twice.
The root is ``$KALM_BENCH_CACHE`` or ``~/.cache/kalm-bench``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

CACHE_VERSION = 1
DONE = "DONE"
MANIFEST = "stage.json"


def default_root() -> Path:
    env = os.environ.get("KALM_BENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "kalm-bench"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON-serialisable in a stage config: {type(obj).__name__}")


def stage_key(kind: str, spec: dict[str, Any], deps: dict[str, str]) -> str:
    blob = canonical_json({"cache_version": CACHE_VERSION, "kind": kind, "spec": spec, "deps": deps})
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass
class CacheEntry:
    kind: str
    key: str
    path: Path
    size: int
    created: float
    label: str
    wall_s: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "path": str(self.path), "size_bytes": self.size,
                "created": self.created, "label": self.label, "wall_s": self.wall_s}


class ArtifactStore:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def done(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / DONE).is_file()

    def _lock(self, key: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"))

    def build(self, kind: str, key: str, fn: Callable[[Path], dict[str, Any] | None],
              meta: dict[str, Any]) -> tuple[Path, bool]:
        """Return the entry's path, building it with ``fn(tmpdir)`` if absent. (path, built_now)."""
        final = self.path(kind, key)
        if (final / DONE).is_file():
            return final, False
        with self._lock(key):
            if (final / DONE).is_file():  # another worker finished it while we waited
                return final, False
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".tmp-{key[:12]}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            try:
                t0 = time.time()
                extra = fn(tmp) or {}
                manifest = dict(meta, kind=kind, key=key, created=time.time(), wall_s=time.time() - t0, **extra)
                (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
                (tmp / DONE).write_text("")
                if final.exists():  # a stale, incomplete entry from a killed process
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        return final, True

    def manifest(self, kind: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(kind, key) / MANIFEST).read_text())

    def entries(self, kind: str | None = None) -> Iterator[CacheEntry]:
        if not self.root.is_dir():
            return
        kinds = [kind] if kind else sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for k in kinds:
            base = self.root / k
            if not base.is_dir():
                continue
            for d in sorted(base.glob("*/*")):
                if not (d / DONE).is_file():
                    continue
                try:
                    m = json.loads((d / MANIFEST).read_text())
                except (OSError, json.JSONDecodeError):
                    m = {}
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                yield CacheEntry(k, d.name, d, size, m.get("created", 0.0), m.get("label", ""), m.get("wall_s"))

    def clear(self, kind: str | None = None, key_prefix: str | None = None) -> int:
        """Delete complete entries (and leftovers of killed builds); returns how many entries went."""
        removed = 0
        for entry in list(self.entries(kind)):
            if key_prefix and not entry.key.startswith(key_prefix):
                continue
            with self._lock(entry.key):
                shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        if not key_prefix and self.root.is_dir():
            for tmp in self.root.glob(f"{kind or '*'}/*/.tmp-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        return removed
