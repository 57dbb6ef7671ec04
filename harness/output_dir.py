"""Checking a directory the harness will write to, before any work is done."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def check_writable_dir(path: Path, field: str, create: bool = True) -> None:
    """Refuse ``path`` unless it is (or can be made) a writable directory.

    With ``create`` the directory is made and a probe file written and removed in it; without, only the
    nearest existing ancestor is checked, and nothing is created.
    """
    def fail(message: str) -> UserError:
        return UserError(message, file=path, field=field)

    if os.path.lexists(path) and not path.is_dir():
        raise fail("exists and is not a directory")
    ancestor = path
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise fail(f"{ancestor} is not a directory, so nothing can be created under it")
    if not create:
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise fail(f"{ancestor} is not writable")
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise fail(f"cannot be written ({exc.strerror or exc})") from None
