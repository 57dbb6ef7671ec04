"""User-facing errors: printed as one line by the CLI, never as a traceback."""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (suite, dataset, plugin name, model file).

    ``file`` and ``field`` say where; the message says what was expected.
    """

    def __init__(self, message: str, *, file: str | os.PathLike[str] | None = None,
                 field: str | None = None):
        self.message = message
        self.file = Path(file) if file is not None else None
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.field:
            where.append(self.field)
        return f"{': '.join(where)}: {self.message}" if where else self.message


class PluginError(UserError):
    """A plugin failed to load or registered something invalid."""
