"""Content-addressed store of stage artifacts.

An entry lives at ``<root>/<kind>/<key[:2]>/<key>/`` and is complete only when it holds ``DONE``. It is
built in a temporary sibling directory (``.tmp-<key>``) and renamed into place, under a per-key file lock,
so a killed process leaves either nothing or a whole entry, and two workers never build the same entry
twice.

Every entry's ``stage.json`` lists the sha256 of each of its files, and ``DONE`` holds the sha256 of
``stage.json``. An entry is checked against them whenever it is read: a missing, truncated or edited file
makes it *damaged*, and the next build of its key rebuilds it (with a warning) instead of using it.
Temporary directories whose builder is gone (a killed process) are removed by :meth:`ArtifactStore.clean_partials`;
those marked resumable (a training that saved checkpoints) are kept for a while so the next build of the
same key continues from them.
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

from filelock import FileLock, Timeout

from .errors import UserError
from .logs import log

CACHE_VERSION = 1
DONE = "DONE"
MANIFEST = "stage.json"
TMP_PREFIX = ".tmp-"
RESUMABLE = "RESUMABLE"  # in a temporary build directory: a later build of the key may continue it
KEEP_RESUMABLE_S = 7 * 24 * 3600.0  # how long an orphaned resumable build waits for the build that continues it
_HASH_CHUNK = 1 << 20


class DamagedEntry(UserError):
    """A cache entry whose files do not match the checksums recorded when it was built."""

    def __init__(self, kind: str, key: str, reason: str, path: Path | None = None):
        super().__init__(f"cache entry {kind} {key[:12]}… is damaged ({reason}); the next build of it "
                         "rebuilds it", file=path)
        self.kind, self.key, self.reason = kind, key, reason


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entry_files(d: Path) -> list[Path]:
    """Every regular file under ``d`` except the two the checksums live in, in a stable order."""
    out = []
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.parent == d and name in (MANIFEST, DONE):
                continue
            if p.is_file():
                out.append(p)
    return out


def hash_files(d: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file of an entry (what ``stage.json`` records)."""
    return {p.relative_to(d).as_posix(): sha256_of_file(p) for p in _entry_files(d)}


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
        # Entries this process has checked, with the (size, mtime) of their files then: unchanged files are
        # not hashed again by the same process.
        self._checked: dict[str, tuple[Any, ...]] = {}

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key[:2] / key

    def tmp_path(self, kind: str, key: str) -> Path:
        """Where ``key`` is built before it is renamed into place (one at a time: under the key's lock)."""
        return self.root / kind / key[:2] / f"{TMP_PREFIX}{key}"

    def done(self, kind: str, key: str) -> bool:
        """The entry is complete (``DONE`` is there); :meth:`problem` says whether its files are intact."""
        return (self.path(kind, key) / DONE).is_file()

    def _lock(self, key: str) -> FileLock:
        locks = self.root / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"))

    # -- integrity --------------------------------------------------------------------------------------
    def problem(self, kind: str, key: str) -> str | None:
        """Why the complete entry ``kind/key`` cannot be used (None: it is intact).

        ``DONE`` must hold the sha256 of ``stage.json``, which must be a JSON object whose ``files`` match
        every listed file's sha256. Entries written before checksums were recorded (an empty ``DONE``, no
        ``files``) are checked for a readable ``stage.json`` only.
        """
        d = self.path(kind, key)
        try:
            done = (d / DONE).read_text().strip()
            raw = (d / MANIFEST).read_bytes()
        except FileNotFoundError as exc:
            return f"{Path(exc.filename).name} is missing"
        except OSError as exc:
            return f"unreadable: {exc}"
        if done and done != sha256_bytes(raw):
            return f"{MANIFEST} does not match its checksum in {DONE}"
        try:
            manifest = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{MANIFEST} is not valid JSON (truncated?)"
        if not isinstance(manifest, dict):
            return f"{MANIFEST} is not a JSON object"
        files = manifest.get("files")
        if files is None and not done:
            return None  # written before checksums were recorded
        if not isinstance(files, dict):
            return f"{MANIFEST} lists no file checksums"
        stats = []
        for rel in sorted(files):
            try:
                st = (d / rel).stat()
            except OSError:
                return f"file {rel} is missing"
            stats.append((rel, st.st_size, st.st_mtime_ns))
        signature = (done, tuple(stats))
        if self._checked.get(str(d)) == signature:
            return None
        for rel in sorted(files):
            if sha256_of_file(d / rel) != files[rel]:
                return f"file {rel} does not match its checksum (truncated or edited)"
        self._checked[str(d)] = signature
        return None

    def entry(self, kind: str, key: str) -> Path:
        """The path of an intact, complete entry; :class:`DamagedEntry` if it is damaged or incomplete."""
        if not self.done(kind, key):
            raise DamagedEntry(kind, key, "not built (no DONE)", self.path(kind, key))
        reason = self.problem(kind, key)
        if reason is not None:
            raise DamagedEntry(kind, key, reason, self.path(kind, key))
        return self.path(kind, key)

    # -- building ---------------------------------------------------------------------------------------
    def build(self, kind: str, key: str, fn: Callable[[Path], dict[str, Any] | None],
              meta: dict[str, Any], resumable: bool = False) -> tuple[Path, bool]:
        """Return the entry's path, building it with ``fn(tmpdir)`` if absent or damaged. (path, built_now).

        ``built_now`` is True only when this call ran ``fn``: a build that waited for another process's
        build of the same key reads that one's entry. With ``resumable``, a temporary directory left by a
        killed build of the same key is handed to ``fn`` as it is (``fn`` continues from what it holds);
        otherwise ``fn`` always gets an empty one.
        """
        final = self.path(kind, key)
        if (final / DONE).is_file() and self.problem(kind, key) is None:
            return final, False
        with self._lock(key):
            if (final / DONE).is_file():
                reason = self.problem(kind, key)
                if reason is None:  # another worker finished it while we waited
                    return final, False
                log.warning("cache entry %s %s… is damaged (%s): rebuilding it", kind, key[:12], reason)
            if final.exists():  # damaged, or a stale, incomplete entry
                shutil.rmtree(final)
            self._checked.pop(str(final), None)
            tmp = self.tmp_path(kind, key)
            if tmp.exists() and not (resumable and (tmp / RESUMABLE).is_file()):
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            if resumable:
                (tmp / RESUMABLE).touch()
            try:
                t0 = time.time()
                extra = fn(tmp) or {}
                (tmp / RESUMABLE).unlink(missing_ok=True)
                manifest = {**meta, "kind": kind, "key": key, "created": time.time(), "wall_s": time.time() - t0,
                            **extra, "files": hash_files(tmp)}
                text = json.dumps(manifest, indent=2, sort_keys=True, default=_json_default)
                _write_synced(tmp / MANIFEST, text)
                _write_synced(tmp / DONE, sha256_bytes(text.encode()) + "\n")
                os.replace(tmp, final)
            except BaseException as exc:
                # A failing build leaves nothing; an interrupted resumable one stays for the next build.
                if not (resumable and isinstance(exc, KeyboardInterrupt)) and tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final, True

    def manifest(self, kind: str, key: str) -> dict[str, Any]:
        """The entry's ``stage.json``; :class:`DamagedEntry` when it is missing, unreadable or not the one
        ``DONE`` holds the checksum of (the file checksums are :meth:`problem`'s)."""
        path = self.path(kind, key)
        try:
            raw = (path / MANIFEST).read_bytes()
            done = (path / DONE).read_text().strip() if (path / DONE).is_file() else ""
            if done and done != sha256_bytes(raw):
                raise DamagedEntry(kind, key, f"{MANIFEST} does not match its checksum in {DONE}", path)
            m = json.loads(raw)
        except FileNotFoundError:
            raise DamagedEntry(kind, key, f"{MANIFEST} is missing", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            raise DamagedEntry(kind, key, f"{MANIFEST} is not valid JSON (truncated?)", path) from None
        if not isinstance(m, dict):
            raise DamagedEntry(kind, key, f"{MANIFEST} is not a JSON object", path)
        return m

    # -- leftovers of killed builds --------------------------------------------------------------------
    def _partials(self, kind: str | None = None) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for tmp in self.root.glob(f"{kind or '*'}/*/{TMP_PREFIX}*"):
            if tmp.is_dir() and not tmp.parent.parent.name.startswith("."):
                yield tmp

    def _try_locks(self, tmp: Path) -> list[FileLock] | None:
        """The locks of the key ``tmp`` is built for, all taken; None when one is held (a live build)."""
        name = tmp.name[len(TMP_PREFIX):]
        if len(name) == 64:
            keys = [name]
        else:  # the older ``.tmp-<key[:12]>-<random>`` form: every key that starts so
            keys = [p.name[:-len(".lock")] for p in (self.root / ".locks").glob(f"{name[:12]}*.lock")]
        taken: list[FileLock] = []
        for k in keys:
            lock = self._lock(k)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                for t in taken:
                    t.release()
                return None
            taken.append(lock)
        return taken

    def clean_partials(self, kind: str | None = None, keep_resumable_s: float = KEEP_RESUMABLE_S) -> int:
        """Remove temporary build directories whose builder is gone; returns how many went.

        A directory is orphaned when nobody holds its key's lock (a build holds it from start to rename),
        so a concurrent run's live build is never touched. An orphaned resumable one (a killed training's
        checkpoints) is kept while it is younger than ``keep_resumable_s``, for the build that continues it.
        """
        removed = 0
        now = time.time()
        for tmp in list(self._partials(kind)):
            locks = self._try_locks(tmp)
            if locks is None:
                continue
            try:
                if not tmp.exists():
                    continue
                if (tmp / RESUMABLE).is_file():
                    try:
                        age = now - max(p.stat().st_mtime for p in [tmp, *tmp.iterdir()])
                    except OSError:
                        age = 0.0
                    if age < keep_resumable_s:
                        continue
                shutil.rmtree(tmp, ignore_errors=True)
                removed += 1
            finally:
                for lock in locks:
                    lock.release()
        return removed

    # -- listing ----------------------------------------------------------------------------------------
    def entries(self, kind: str | None = None) -> Iterator[CacheEntry]:
        if not self.root.is_dir():
            return
        kinds = [kind] if kind else sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for k in kinds:
            base = self.root / k
            if not base.is_dir():
                continue
            for d in sorted(base.glob("*/*")):
                if d.name.startswith(".") or not (d / DONE).is_file():
                    continue
                try:
                    m = json.loads((d / MANIFEST).read_text())
                    if not isinstance(m, dict):
                        m = {}
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
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
        if not key_prefix:
            self.clean_partials(kind, keep_resumable_s=0.0)
        return removed


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
