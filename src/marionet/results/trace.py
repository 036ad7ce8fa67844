"""Traceroute results: ``Trace`` and one ``TraceHop`` per reply.

Why ``hop_records`` holds every reply while ``hops()`` yields one per TTL:
scamper keeps every reply (several attempts per TTL, several responders with
Paris traceroute), and analyses need both views — the raw records for
load-balancing and loss questions, and the classic "one address per TTL,
None for silence" path for everything else.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import (Addr, StopReason, TimedReply, complete_times, check_int, ns_to_datetime,
                     seconds_to_ns, to_addr)

__all__ = ["Trace", "TraceHop", "TraceStop", "IcmpExt", "MplsLabel",
           "TRACE_METHODS"]

TRACE_METHODS = ("udp-paris", "icmp-paris", "icmp-echo-paris", "udp",
                 "icmp", "icmp-echo", "tcp", "tcp-ack")


class TraceStop(StopReason):
    """Why a traceroute stopped.  Values are lower case; scamper's JSON
    writes them upper case ("COMPLETED"), which the JSON layer maps."""
    NONE = "none"
    COMPLETED = "completed"
    UNREACH = "unreach"
    ICMP = "icmp"
    LOOP = "loop"
    GAPLIMIT = "gaplimit"
    ERROR = "error"
    HOPLIMIT = "hoplimit"
    GSS = "gss"
    HALTED = "halted"


@dataclass(slots=True, frozen=True)
class MplsLabel:
    """One MPLS label stack entry quoted in an ICMP extension (RFC 4950)."""
    label: int
    exp: int = 0
    s: int = 0
    ttl: int = 0


@dataclass(slots=True, kw_only=True)
class IcmpExt:
    """One ICMP extension object (RFC 4884): class number, class type, and
    for MPLS (cn=1, ct=1) the decoded label stack; other objects keep their
    raw bytes in ``data`` when the reader had them."""
    cn: int
    ct: int
    dl: int = 0
    mpls_labels: list[MplsLabel] = field(default_factory=list)
    data: bytes | None = None

    def is_mpls(self) -> bool:
        return self.cn == 1 and self.ct == 1

    # scamper's ScamperIcmpExt names (marionet.compat.scamper)
    @property
    def mpls_count(self) -> int:
        return len(self.mpls_labels) if self.is_mpls() else 0

    def mpls(self) -> Iterator[MplsLabel] | None:
        return iter(list(self.mpls_labels)) if self.is_mpls() else None

    def mpls_lse(self, i: int) -> MplsLabel | None:
        return self.mpls_labels[i] if self.is_mpls() and 0 <= i < len(self.mpls_labels) else None

    def mpls_label(self, i: int) -> int | None:
        e = self.mpls_lse(i)
        return None if e is None else e.label

    def mpls_ttl(self, i: int) -> int | None:
        e = self.mpls_lse(i)
        return None if e is None else e.ttl

    def mpls_exp(self, i: int) -> int | None:
        e = self.mpls_lse(i)
        return None if e is None else e.exp

    def mpls_s(self, i: int) -> int | None:
        e = self.mpls_lse(i)
        return None if e is None else e.s


@dataclass(slots=True, kw_only=True)
class TraceHop(TimedReply):
    """One reply to one traceroute probe.

    ``probe_id`` is the attempt number at this TTL, 1-based like scamper's.
    ``rx_ns`` defaults to ``tx_ns + rtt_ns``; ``rtt_ns`` defaults to
    ``rx_ns - tx_ns``.
    """

    src: Addr
    probe_ttl: int
    rtt_ns: int | None = None
    probe_id: int = 1
    probe_size: int | None = None
    tx_ns: int | None = None
    rx_ns: int | None = None
    name: str | None = None
    reply_ttl: int | None = None
    reply_tos: int | None = None
    reply_ipid: int | None = None
    reply_size: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_q_ttl: int | None = None
    icmp_q_ipl: int | None = None
    icmp_q_tos: int | None = None
    icmp_nhmtu: int | None = None
    tcp_flags: int | None = None
    icmpext: list[IcmpExt] = field(default_factory=list)
    tx_ts_source: str | None = None
    rx_ts_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        src = to_addr(self.src)
        if src is None:
            raise ValueError("TraceHop.src is required")
        self.src = src
        check_int("probe_ttl", self.probe_ttl, minimum=0)
        check_int("probe_id", self.probe_id, minimum=0)
        complete_times(self, "TraceHop")
        for name in ("probe_size", "reply_ttl", "reply_tos", "reply_ipid",
                     "reply_size", "icmp_type", "icmp_code", "icmp_q_ttl",
                     "icmp_q_ipl", "icmp_q_tos", "icmp_nhmtu", "tcp_flags"):
            check_int(name, getattr(self, name), optional=True, minimum=0)
        for name in ("tx_ts_source", "rx_ts_source"):
            v = getattr(self, name)
            if v is not None and v not in ("kernel", "user"):
                raise ValueError(f"{name} must be 'kernel', 'user' or None, got {v!r}")
        self.icmpext = list(self.icmpext)

    @property
    def addr(self) -> Addr:
        """scamper's JSON calls the responder ``addr``."""
        return self.src

    @property
    def mpls_labels(self) -> list[MplsLabel]:
        """All MPLS label stack entries from all extension objects."""
        return [lab for ie in self.icmpext if ie.is_mpls() for lab in ie.mpls_labels]

    # predicates, as on scamper's ScamperTraceHop
    def is_icmp(self) -> bool:
        return self.icmp_type is not None

    def is_tcp(self) -> bool:
        return self.tcp_flags is not None and self.icmp_type is None

    def is_icmp_ttl_exp(self) -> bool:
        return self.icmp_type == (11 if self.src.is_ipv4() else 3)

    def is_icmp_unreach(self) -> bool:
        return self.icmp_type == (3 if self.src.is_ipv4() else 1)

    def is_icmp_unreach_port(self) -> bool:
        if self.src.is_ipv4():
            return self.icmp_type == 3 and self.icmp_code == 3
        return self.icmp_type == 1 and self.icmp_code == 4

    def is_icmp_echo_reply(self) -> bool:
        return self.icmp_type == (0 if self.src.is_ipv4() else 129)

    def is_icmp_ptb(self) -> bool:
        if self.src.is_ipv4():
            return self.icmp_type == 3 and self.icmp_code == 4
        return self.icmp_type == 2

    # -- scamper module names (marionet.compat.scamper) --------------------
    @property
    def attempt(self) -> int:
        """The attempt number at this TTL, from 1 (scamper's ``attempt``)."""
        return self.probe_id

    def is_icmp_q(self) -> bool:
        """The reply quoted the probe (scamper: an ICMP quotation)."""
        return self.icmp_q_ttl is not None or self.icmp_q_ipl is not None

    def __str__(self) -> str:
        """As scamper's module prints a hop: ``[name ]addr 1.234 ms``."""
        us = (self.rtt_ns or 0) // 1000
        return f"{self.name + ' ' if self.name else ''}{self.src} {us // 1000}.{us % 1000:03d} ms"


@dataclass(slots=True, kw_only=True)
class Trace:
    """A traceroute toward ``dst``.

    ``hop_records`` holds every reply (all attempts, all TTLs) in the order
    recorded.  ``hop_count`` is the number of TTLs probed (scamper's
    meaning); it defaults to the largest ``probe_ttl`` seen.
    """

    dst: Addr
    start_ns: int
    src: Addr | None = None
    method: str = "udp-paris"
    sport: int | None = None
    dport: int | None = None
    icmp_sum: int | None = None
    stop_reason: TraceStop | str | None = TraceStop.NONE
    stop_data: int = 0
    hop_count: int | None = None
    attempts: int = 2
    hoplimit: int = 0
    firsthop: int = 1
    wait_timeout: _dt.timedelta = _dt.timedelta(seconds=5)
    wait_probe: _dt.timedelta = _dt.timedelta(0)
    tos: int = 0
    probe_size: int | None = None
    probe_count: int | None = None
    userid: int = 0
    hop_records: list[TraceHop] = field(default_factory=list)
    confidence: int = 0  # scamper trace -c: 0 (off), 95 or 99; warts only (scamper's JSON omits it)
    gaplimit: int = 5  # warts only, like loops and all_attempts
    loops: int = 1
    all_attempts: bool = False
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inst: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        dst = to_addr(self.dst)
        if dst is None:
            raise ValueError("Trace.dst is required")
        self.dst = dst
        self.src = to_addr(self.src)
        check_int("start_ns", self.start_ns)
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"Trace.method must be a non-empty string, got {self.method!r}")
        for name in ("sport", "dport", "icmp_sum", "probe_size", "probe_count"):
            check_int(name, getattr(self, name), optional=True, minimum=0)
        for name in ("stop_data", "attempts", "hoplimit", "tos", "userid", "confidence", "gaplimit", "loops"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("firsthop", self.firsthop, minimum=1)
        for name in ("wait_timeout", "wait_probe"):
            v = getattr(self, name)
            if not isinstance(v, _dt.timedelta):
                setattr(self, name, _dt.timedelta(microseconds=seconds_to_ns(v) // 1000))
        self.stop_reason = TraceStop.coerce(self.stop_reason)
        self.hop_records = list(self.hop_records)
        for h in self.hop_records:
            if not isinstance(h, TraceHop):
                raise TypeError(f"Trace.hop_records must hold TraceHop, got {type(h).__name__}")
        if self.hop_count is None:
            self.hop_count = max((h.probe_ttl for h in self.hop_records), default=0)
        check_int("hop_count", self.hop_count, minimum=0)
        if self.probe_count is None:
            self.probe_count = len(self.hop_records)

    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def wait(self) -> _dt.timedelta:
        """scamper's name for the per-probe timeout."""
        return self.wait_timeout

    def hop(self, ttl: int) -> TraceHop | None:
        """The first reply recorded for probes sent with this TTL, or None."""
        for h in self.hop_records:
            if h.probe_ttl == ttl:
                return h
        return None

    def hops(self) -> Iterator[TraceHop | None]:
        """One item per TTL from ``firsthop`` to ``hop_count``: the first
        reply at that TTL, or None for a silent hop.  Use
        ``enumerate(trace.hops(), start=trace.firsthop)`` for the TTL."""
        first: dict[int, TraceHop] = {}
        for h in self.hop_records:
            first.setdefault(h.probe_ttl, h)
        for ttl in range(self.firsthop, (self.hop_count or 0) + 1):
            yield first.get(ttl)

    def addrs(self) -> list[Addr]:
        """Distinct responding addresses, in order of first appearance."""
        seen: dict[Addr, None] = {}
        for h in sorted(self.hop_records, key=lambda h: h.probe_ttl):
            seen.setdefault(h.src, None)
        return list(seen)

    def is_completed(self) -> bool:
        return self.stop_reason == TraceStop.COMPLETED

    # -- scamper module names (marionet.compat.scamper) --------------------
    def is_udp(self) -> bool:
        return self.method.startswith("udp")

    def is_tcp(self) -> bool:
        return self.method.startswith("tcp")

    def is_icmp(self) -> bool:
        return self.method.startswith("icmp")

    @property
    def probe_sport(self) -> int | None:
        return self.sport if self.is_udp() or self.is_tcp() else None

    @property
    def probe_dport(self) -> int | None:
        return self.dport if self.is_udp() or self.is_tcp() else None

    @property
    def probe_icmp_sum(self) -> int | None:
        return self.icmp_sum if self.method in ("icmp-paris", "icmp-echo-paris") else None

    @property
    def stop_reason_str(self) -> str:
        """The stop reason as scamper prints it, lower case ("completed")."""
        return str(self.stop_reason if self.stop_reason is not None else TraceStop.NONE)

    def _stopped(self, *reasons: TraceStop) -> bool:
        return self.stop_reason in reasons

    def is_stop_noreason(self) -> bool:
        return self.stop_reason is None or self._stopped(TraceStop.NONE)

    def is_stop_completed(self) -> bool:
        return self._stopped(TraceStop.COMPLETED)

    def is_stop_unreach(self) -> bool:
        return self._stopped(TraceStop.UNREACH)

    def is_stop_icmp(self) -> bool:
        return self._stopped(TraceStop.ICMP)

    def is_stop_loop(self) -> bool:
        return self._stopped(TraceStop.LOOP)

    def is_stop_gaplimit(self) -> bool:
        return self._stopped(TraceStop.GAPLIMIT)

    def is_stop_error(self) -> bool:
        return self._stopped(TraceStop.ERROR)

    def is_stop_hoplimit(self) -> bool:
        return self._stopped(TraceStop.HOPLIMIT)

    def is_stop_gss(self) -> bool:
        return self._stopped(TraceStop.GSS)

    def is_stop_halted(self) -> bool:
        return self._stopped(TraceStop.HALTED)

    def to_json(self) -> str:
        """scamper's JSON line for this traceroute."""
        from .jsonline import json_line
        return json_line(self)
    def to_text(self) -> str:
        """Text in the style of the classic tool (``marionet.results.text``)."""
        from .text import trace_text

        return trace_text(self)
