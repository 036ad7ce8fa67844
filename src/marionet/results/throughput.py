"""TCP throughput results (the PAM'25 §5.2 pipe-saturation method).

Why this shape: the figure is ``8 × (size − b) / (t1 − t0)`` from the
*receiver's* kernel receive times — b bytes counted at the first receive that
reached ``skip`` (time t0), t1 the receive that completed ``size`` — so slow
start and the request's round trip are left out. The receiver is the VP for
a download (count mode on the endpoint) and the server for an upload (its
report), which ``measured_by`` says. ``samples`` (kernel rx ns, cumulative
bytes) at most every interval give per-interval rates (``intervals()``) for
CDFs and slow-start plots.

There is no scamper counterpart; the JSON is flat, in the style of the
other results, with ``"type": "throughput"``. Failures (refused, reset,
timeout, short transfer, a server's ERR) are results with a ``stop_reason``
and an ``error`` text, never exceptions.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from .common import Addr, StopReason, check_int, ns_to_datetime, to_addr
from .jsonfmt import _Fields, register

__all__ = ["Throughput", "ThroughputStop", "THROUGHPUT_VERSION"]

THROUGHPUT_VERSION = "0.1"


class ThroughputStop(StopReason):
    NONE = "none"
    DONE = "done"            # the whole size moved, figure computed
    REFUSED = "refused"      # the connect failed
    TIMEOUT = "timeout"      # connect or transfer exceeded the timeout
    RESET = "reset"          # the connection failed mid-transfer
    SHORT = "short"          # the peer closed before size bytes moved
    SERVER = "server-error"  # the server answered ERR or a bad report
    HALTED = "halted"
    ERROR = "error"


@dataclass
class Throughput:
    """One TCP transfer of ``size`` bytes and its receiver-side figure."""

    dst: Addr
    port: int
    direction: str
    size: int
    skip: int
    b: int = 0
    t0_ns: int = 0
    t1_ns: int = 0
    bps: float | None = None
    bytes: int = 0
    samples: list[tuple[int, int]] = field(default_factory=list)
    measured_by: str = "vp"      # "vp" (download) or "server" (upload)
    ts_source: str | None = None
    start_ns: int = 0
    stop_reason: ThroughputStop | str | None = ThroughputStop.NONE
    error: str | None = None
    #: the sender's kernel TX times of the first and last byte (upload: the
    #: VP's fill), for reference; not part of the figure
    tx_first_ns: int | None = None
    tx_last_ns: int | None = None
    userid: int = 0
    vp: str | None = None

    def __post_init__(self) -> None:
        self.dst = to_addr(self.dst)  # type: ignore[assignment]
        for name in ("port", "size", "skip", "b", "t0_ns", "t1_ns", "bytes", "start_ns"):
            check_int(name, getattr(self, name))
        self.samples = [(int(t), int(n)) for t, n in self.samples]
        self.stop_reason = ThroughputStop.coerce(self.stop_reason)

    # -- views ------------------------------------------------------------------
    @property
    def mbps(self) -> float | None:
        return None if self.bps is None else self.bps / 1e6

    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def duration_ns(self) -> int:
        return max(0, self.t1_ns - self.t0_ns)

    def is_stop_done(self) -> bool:
        return self.stop_reason == ThroughputStop.DONE

    def intervals(self, after_skip: bool = False) -> list[tuple[int, float]]:
        """Per-interval Mbit/s between consecutive samples: (interval end ns,
        Mbit/s). ``after_skip`` drops intervals ending before ``t0`` (the
        slow start the figure leaves out)."""
        out = []
        for (ta, na), (tb, nb) in zip(self.samples, self.samples[1:]):
            if tb <= ta or (after_skip and tb <= self.t0_ns):
                continue
            out.append((tb, 8 * (nb - na) / ((tb - ta) / 1e9) / 1e6))
        return out

    # -- output -------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return throughput_to_json(self)

    def to_text(self) -> str:
        """iperf3-like lines: a header, intervals of about a tenth of the
        transfer each, and the figure (or why there is none)."""
        from .text import throughput_text

        return throughput_text(self)


def throughput_to_json(r: Throughput) -> dict[str, Any]:
    d: dict[str, Any] = {
        "type": "throughput", "version": THROUGHPUT_VERSION, "dst": str(r.dst), "port": r.port,
        "direction": r.direction, "size": r.size, "skip": r.skip, "b": r.b, "t0_ns": r.t0_ns,
        "t1_ns": r.t1_ns, "bps": r.bps, "bytes": r.bytes, "samples": [[t, n] for t, n in r.samples],
        "measured_by": r.measured_by, "ts_source": r.ts_source, "start_ns": r.start_ns,
        "stop_reason": str(r.stop_reason) if r.stop_reason is not None else None, "userid": r.userid,
    }
    for key in ("error", "tx_first_ns", "tx_last_ns", "vp"):
        v = getattr(r, key)
        if v is not None:
            d[key] = v
    return d


def throughput_from_json(d: dict[str, Any]) -> Throughput:
    f = _Fields(d, "throughput")
    raw = f.list("samples")
    samples = []
    for i, s in enumerate(raw):
        if (not isinstance(s, (list, tuple)) or len(s) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in s)):
            raise f.fail("samples", f"item {i} is not [ns, bytes]: {s!r}")
        samples.append((s[0], s[1]))
    bps = d.get("bps")
    if bps is not None and (isinstance(bps, bool) or not isinstance(bps, (int, float))):
        raise f.fail("bps", f"must be a number, got {bps!r}")
    return Throughput(
        dst=f.addr("dst", True), port=f.int("port", default=0), direction=f.str("direction") or "download",
        size=f.int("size", default=0), skip=f.int("skip", default=0), b=f.int("b", default=0),
        t0_ns=f.int("t0_ns", default=0), t1_ns=f.int("t1_ns", default=0),
        bps=None if bps is None else float(bps), bytes=f.int("bytes", default=0), samples=samples,
        measured_by=f.str("measured_by") or "vp", ts_source=f.str("ts_source"),
        start_ns=f.int("start_ns", default=0), stop_reason=f.str("stop_reason") or "none",
        error=f.str("error"), tx_first_ns=f.int("tx_first_ns"), tx_last_ns=f.int("tx_last_ns"),
        userid=f.int("userid", default=0), vp=f.str("vp"))


register("throughput", Throughput, throughput_to_json, throughput_from_json)
