"""One error type for bad input: it always names the file (and row) and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input data. ``str(err)`` reads ``FILE[:ROW]: problem``."""

    def __init__(self, path: str | Path | None, problem: str, row: int | None = None):
        self.path = None if path is None else str(path)
        self.row = row
        self.problem = problem
        where = self.path or "<input>"
        if row is not None:
            where = f"{where}:{row}"
        super().__init__(f"{where}: {problem}")


class ConfigError(ValueError):
    """An invalid configuration (unknown field, value out of range, size that the model
    cannot take); the message names the config and every problem found."""
