"""Errors that name where the problem is: file, line or index, and field."""

from __future__ import annotations


class DraftsmithError(Exception):
    """Base class: a user-facing error, printed without a traceback by the CLI."""


class InputError(DraftsmithError):
    """A user-supplied file (data, store, checkpoint, config) is wrong at a known place."""

    def __init__(self, message: str, *, path: object = None, line: int | None = None,
                 index: int | None = None, field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if index is not None:
            where.append(f"index {index}")
        if field is not None:
            where.append(f"field {field!r}")
        self.path, self.line, self.index, self.field = path, line, index, field
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")


class StrictRowError(DraftsmithError):
    """--strict: the first row a data stage would skip ends the run (the CLI exits 2)."""

    def __init__(self, description: str):
        super().__init__(f"--strict: {description}")
