"""The operator's audit trail: one JSON line per session and per denial.

Why a file of JSON lines: an operator answers "who used my VP, when, for
what, and what did the guard refuse" with grep and jq, and ships the file
to whatever log system they run. Rotation by size keeps a busy VP's disk
bounded (``path``, ``path.1`` … ``path.<keep>``). A write that fails (a
full disk) never breaks a session: it is counted and logged once.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("marionet.audit")

#: Lines kept in memory (for ``info()`` and tests) whether or not a file is set.
RECENT = 1000


def iso(ns: int | None = None) -> str:
    t = dt.datetime.now(dt.timezone.utc) if ns is None else dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only JSON lines, rotated when the file passes ``max_bytes``."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, max_bytes: int = 10 << 20,
                 keep: int = 5) -> None:
        if max_bytes < 1024:
            raise ValueError(f"audit max_bytes {max_bytes} is too small (at least 1024)")
        if keep < 1:
            raise ValueError(f"audit keep {keep} must be at least 1")
        self.path = Path(path) if path is not None else None
        self.max_bytes = max_bytes
        self.keep = keep
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.write_errors = 0
        self._fh: Any = None
        self._size = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()

    def _open(self) -> None:
        assert self.path is not None
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")
        self._size = os.fstat(fd).st_size

    def _rotate(self) -> None:
        assert self.path is not None
        self._fh.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, record: dict[str, Any]) -> None:
        record = {"t": iso(), **record}
        self.recent.append(record)
        if self._fh is None:
            return
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        try:
            if self._size and self._size + len(line) > self.max_bytes:
                self._rotate()
            self._fh.write(line)
            self._fh.flush()
            self._size += len(line.encode())
        except OSError as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.error("audit log %s: cannot write (%s); counting further failures", self.path, exc)

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
