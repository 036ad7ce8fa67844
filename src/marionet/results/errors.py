"""Errors raised while reading or writing result files."""

from __future__ import annotations

__all__ = ["FormatError"]


class FormatError(ValueError):
    """A record could not be decoded.

    Carries where it happened (``path``, 1-based ``line`` for JSON lines or
    byte ``offset`` for warts) so a researcher with a million-line file can
    find the bad record; ``str()`` includes them.
    """

    def __init__(self, message: str, *, path: str | None = None,
                 line: int | None = None, offset: int | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.offset = offset
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
