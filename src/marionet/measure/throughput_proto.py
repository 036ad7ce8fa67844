"""The throughput server's protocol: one request line, then the payload.

Why a protocol of our own rather than iperf3's: the PAM'25 method needs the
*receiver's* kernel timestamps at two byte counts (after the first ``skip``
bytes, and at the end), and for an upload the receiver is the server, so the
server must report them back. iperf3's JSON reports per-interval user-space
figures only. The protocol is a line and raw bytes, so a measurement driving
a TCP socket on an endpoint (``nsend``/``ndata``) speaks it as easily as a
plain socket client does.

    client → server   ``MNTPUT1 <download|upload> <size> <skip>\\n``
    download          server sends exactly ``size`` pseudo-random bytes, then
                      FIN; the client measures.
    upload            client sends exactly ``size`` bytes, then FIN; the
                      server measures and answers one JSON line (``Report``)
                      and closes.
    error             server answers ``ERR <reason>\\n`` and closes.

Throughput from a receiver's (b, t0, t1): ``8 × (size − b) / (t1 − t0)``,
where b is the byte count at the first receive that reached ``skip`` bytes
and t0 its kernel time, t1 the kernel time of the receive that completed
``size``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAGIC", "DEFAULT_PORT", "MAX_SIZE", "MAX_LINE", "Request", "Report", "parse_request",
           "format_request", "parse_report", "throughput_bps", "ProtocolError"]

MAGIC = "MNTPUT1"
DEFAULT_PORT = 5301            # iperf3 uses 5201
MAX_SIZE = 4 << 30             # bytes in one transfer
MAX_LINE = 128                 # the request line, newline included
MAX_REPORT = 4 << 20           # an upload report line (samples included)
DIRECTIONS = ("download", "upload")


class ProtocolError(ValueError):
    """A request or report that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Request:
    direction: str
    size: int
    skip: int

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ProtocolError(f"direction must be download or upload, got {self.direction!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 < self.size <= MAX_SIZE:
            raise ProtocolError(f"size must be 1..{MAX_SIZE} bytes, got {self.size!r}")
        if isinstance(self.skip, bool) or not isinstance(self.skip, int) or not 0 <= self.skip < self.size:
            raise ProtocolError(f"skip must be 0..size-1 bytes, got {self.skip!r}")


def format_request(req: Request) -> bytes:
    return f"{MAGIC} {req.direction} {req.size} {req.skip}\n".encode()


def parse_request(line: bytes) -> Request:
    """The request from one line (with or without its newline)."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request line longer than {MAX_LINE} bytes")
    try:
        text = line.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ProtocolError("request line is not ASCII") from None
    parts = text.split()
    if len(parts) != 4 or parts[0] != MAGIC:
        raise ProtocolError(f"expected '{MAGIC} <download|upload> <size> <skip>', got {text[:60]!r}")
    try:
        size, skip = int(parts[2]), int(parts[3])
    except ValueError:
        raise ProtocolError(f"size and skip must be integers, got {parts[2][:20]!r} {parts[3][:20]!r}") from None
    return Request(parts[1], size, skip)


@dataclass(slots=True)
class Report:
    """What a receiver measured (the server's answer to an upload)."""

    ok: bool
    bytes: int = 0
    b: int = 0
    t0_ns: int = 0
    t1_ns: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)   # (kernel rx ns, cumulative bytes)
    ts_source: str = "kernel"
    error: str | None = None

    def to_line(self) -> bytes:
        d: dict[str, Any] = {"ok": self.ok, "bytes": self.bytes, "b": self.b, "t0_ns": self.t0_ns,
                             "t1_ns": self.t1_ns, "samples": [list(s) for s in self.samples],
                             "ts_source": self.ts_source}
        if self.error is not None:
            d["error"] = self.error
        return json.dumps(d, separators=(",", ":")).encode() + b"\n"


def parse_report(line: bytes) -> Report:
    if len(line) > MAX_REPORT:
        raise ProtocolError(f"report longer than {MAX_REPORT} bytes")
    if line.startswith(b"ERR"):
        raise ProtocolError("server: " + line[3:].decode("utf-8", "replace").strip()[:200])
    try:
        d = json.loads(line)
        samples = [(int(t), int(n)) for t, n in d.get("samples", [])]
        return Report(bool(d["ok"]), int(d.get("bytes", 0)), int(d.get("b", 0)), int(d.get("t0_ns", 0)),
                      int(d.get("t1_ns", 0)), samples, str(d.get("ts_source", "kernel")), d.get("error"))
    except (ValueError, TypeError, KeyError) as e:
        raise ProtocolError(f"malformed report: {e}") from None


def throughput_bps(size: int, b: int, t0_ns: int, t1_ns: int) -> float:
    """The PAM'25 figure, bits per second; raises if the interval is empty."""
    if t1_ns <= t0_ns or size <= b:
        raise ValueError(f"no interval to measure over (b={b}, size={size}, t0={t0_ns}, t1={t1_ns})")
    return 8 * (size - b) / ((t1_ns - t0_ns) / 1e9)
