"""``File``: read and write result files the way scamper's ``ScamperFile`` does.

Why the rules below:

* kind from the suffix (``.json``/``.jsonl``, ``.warts``), compression from
  the suffix when writing (``.gz``/``.bz2``/``.xz``), but **magic bytes when
  reading** — files get renamed, and a ``.json`` that is really gzip should
  still open;
* a cycle-start line at open and a cycle-stop at close when writing, as
  scamper does, so analysis code that groups by cycle works on our files
  (``cycles=False`` turns that off, e.g. when appending results to a file
  whose cycle someone else manages);
* bad records raise ``FormatError`` naming the file and line, never a bare
  ``json`` or ``KeyError`` from deep inside.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import socket
import time
from typing import IO, Any, Iterable, Iterator

from . import jsonfmt
from .cycle import CycleStart, CycleStop, UnknownResult
from .dealias import Dealias
from .errors import FormatError
from .ping import Ping
from .trace import Trace

__all__ = ["File", "detect_kind"]

_COMPRESSORS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
_WARTS_MAGIC = b"\x12\x05"
_KINDS = ("json", "warts")

_TYPE_NAMES: dict[str, type] = {
    "ping": Ping, "trace": Trace, "cycle-start": CycleStart,
    "cycle-stop": CycleStop,
    "dealias": Dealias,
}


def _split_suffix(path: str) -> tuple[str | None, str | None]:
    """(kind, compression) named by a file name's suffixes."""
    name = os.path.basename(path).lower()
    comp = None
    for suf, c in _COMPRESSORS.items():
        if name.endswith(suf):
            comp, name = c, name[: -len(suf)]
            break
    if name.endswith((".json", ".jsonl")):
        return "json", comp
    if name.endswith(".warts"):
        return "warts", comp
    return None, comp


def detect_kind(head: bytes) -> str | None:
    """Guess the kind from the first decompressed bytes of a file."""
    if head.startswith(_WARTS_MAGIC):
        return "warts"
    stripped = head.lstrip()
    if stripped.startswith(b"{") or not stripped:
        return "json"
    return None


def _open_decompressed(path: str) -> tuple[IO[bytes], IO[bytes], str | None]:
    """(decompressed stream, raw file, compression) chosen by magic bytes."""
    raw = open(path, "rb")
    head = raw.read(6)
    raw.seek(0)
    for magic, comp in _MAGIC:
        if head.startswith(magic):
            if comp == "gzip":
                return gzip.GzipFile(fileobj=raw, mode="rb"), raw, comp
            if comp == "bz2":
                return bz2.BZ2File(raw, "rb"), raw, comp
            return lzma.LZMAFile(raw, "rb"), raw, comp
    return raw, raw, None


class File:
    """A result file: ``File(path, mode='r'|'w'|'a', kind=None,
    filter_types=None, cycles=True)``.

    * ``kind``: ``"json"`` or ``"warts"`` (warts holds ping and trace
      results; not in append mode); None means
      from the suffix, and when reading, from the content if the suffix
      says nothing.
    * ``filter_types``: when reading, only return these types; give classes
      (``Ping``) or scamper type names (``"ping"``, ``"cycle-start"``).
    * ``cycles``: when writing, write a cycle-start at open and a
      cycle-stop at close (``list_name``, ``cycle_id``, ``hostname``
      describe it).
    """

    def __init__(self, path: str | os.PathLike[str], mode: str = "r",
                 kind: str | None = None,
                 filter_types: Iterable[type | str] | None = None, *,
                 cycles: bool = True, list_name: str = "default",
                 cycle_id: int = 0, hostname: str | None = None) -> None:
        self.filename = os.fspath(path)
        if mode not in ("r", "w", "a"):
            raise ValueError(f"mode must be 'r', 'w' or 'a', got {mode!r}")
        if kind is not None and kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
        self.mode = mode
        self._filter = self._make_filter(filter_types)
        self._line = 0
        self._closed = False
        self._cycle_open = False
        self._cycles = cycles
        self._list_name = list_name
        self._cycle_id = cycle_id
        self._hostname = hostname if hostname is not None else socket.gethostname()
        self._warts: Any = None
        suffix_kind, comp = _split_suffix(self.filename)
        if mode == "r":
            self._fh, self._raw, self.compression = _open_decompressed(self.filename)
            try:
                if kind is None:
                    kind = suffix_kind
                if kind is None:
                    kind = detect_kind(self._fh.peek(8) if hasattr(self._fh, "peek")
                                       else b"{")
                if kind is None:
                    raise FormatError("cannot tell the file kind from its name or content",
                                      path=self.filename)
                self.kind = kind
                if kind == "warts":
                    from .warts import WartsReader  # optional, heavier
                    self._warts = WartsReader(self._fh, path=self.filename)
                else:
                    self._text: IO[str] = io.TextIOWrapper(self._fh, encoding="utf-8",
                                                           errors="strict")
            except BaseException:
                self._fh.close()
                self._raw.close()
                raise
        else:
            self.kind = kind or suffix_kind or "json"
            if self.kind == "warts" and mode == "a":
                raise ValueError("appending to a warts file is not supported (its list and cycle "
                                 "ids are numbered per file); write a new file")
            self.compression = comp
            bmode = mode + "b"
            fh: IO[bytes]
            if comp == "gzip":
                fh = gzip.open(self.filename, bmode)  # type: ignore[assignment]
            elif comp == "bz2":
                fh = bz2.open(self.filename, bmode)  # type: ignore[assignment]
            elif comp == "xz":
                fh = lzma.open(self.filename, bmode)  # type: ignore[assignment]
            else:
                fh = open(self.filename, bmode)
            self._fh = fh
            self._raw = fh
            if self.kind == "warts":
                from .warts_writer import WartsWriter
                self._warts = WartsWriter(fh)
            if cycles:
                self.write(CycleStart(start_time=int(time.time()),
                                      list_name=list_name, cycle_id=cycle_id,
                                      hostname=self._hostname))

    # -- filtering ---------------------------------------------------------
    @staticmethod
    def _make_filter(types: Iterable[type | str] | None
                     ) -> tuple[tuple[type, ...], frozenset[str]] | None:
        """Classes to accept, plus type names of records we do not model
        (``"tracelb"`` keeps UnknownResults of that type only)."""
        if types is None:
            return None
        if isinstance(types, (str, type)):
            types = [types]
        classes: list[type] = []
        names: set[str] = set()
        for t in types:
            if isinstance(t, str):
                if t in _TYPE_NAMES:
                    classes.append(_TYPE_NAMES[t])
                else:
                    names.add(t)
            elif isinstance(t, type):
                classes.append(t)
            else:
                raise TypeError(f"filter_types entries must be classes or names, got {t!r}")
        return tuple(classes), frozenset(names)

    def _wanted(self, obj: Any) -> bool:
        if self._filter is None:
            return True
        classes, names = self._filter
        if isinstance(obj, classes):
            return True
        return isinstance(obj, UnknownResult) and obj.type in names

    # -- reading -------------------------------------------------------------
    def read(self) -> Any:
        """The next record (after filtering), or None at the end."""
        if self.mode != "r":
            raise OSError("file not open for reading")
        if self._closed:
            raise ValueError("I/O on a closed File")
        while True:
            obj = self._next_record()
            if obj is None:
                return None
            if self._wanted(obj):
                return obj

    def _next_record(self) -> Any:
        if self._warts is not None:
            return self._warts.read()
        while True:
            try:
                line = self._text.readline()
            except UnicodeDecodeError as e:
                raise FormatError(f"not UTF-8 text: {e}", path=self.filename,
                                  line=self._line + 1) from None
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise FormatError(f"cannot decompress: {e}", path=self.filename,
                                  line=self._line + 1) from None
            if not line:
                return None
            self._line += 1
            if not line.strip():
                continue
            try:
                return jsonfmt.loads(line)
            except FormatError as e:
                raise FormatError(e.message, path=self.filename, line=self._line) from None

    def __iter__(self) -> Iterator[Any]:
        while (obj := self.read()) is not None:
            yield obj

    # -- writing ---------------------------------------------------------------
    def write(self, obj: Any) -> None:
        """Write a result object, a cycle marker, or an UnknownResult."""
        if self.mode == "r":
            raise OSError("file not open for writing")
        if self._closed:
            raise ValueError("I/O on a closed File")
        if self._warts is not None:
            self._warts.write(obj)
        else:
            line = jsonfmt.dumps(jsonfmt.to_json(obj)) + "\n"
            self._fh.write(line.encode("utf-8"))
        if isinstance(obj, CycleStart):
            self._cycle_open = True
        elif isinstance(obj, CycleStop):
            self._cycle_open = False

    def flush(self) -> None:
        self._fh.flush()

    # -- lifetime ----------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        try:
            if self.mode != "r" and self._cycles and self._cycle_open:
                self.write(CycleStop(stop_time=int(time.time()),
                                     list_name=self._list_name,
                                     cycle_id=self._cycle_id,
                                     hostname=self._hostname))
        finally:
            self._closed = True
            if self.mode == "r" and self._warts is None:
                self._text.close()
            self._fh.close()
            self._raw.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "File":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"File({self.filename!r}, mode={self.mode!r}, kind={self.kind!r})"

