"""Ping results: one ``Ping`` per measurement, one ``PingReply`` per reply.

Why ns integers inside: the endpoint reports kernel timestamps in
nanoseconds; keeping them lets marionet compare placements (native /
endpoint / remote) below scamper's microsecond resolution.  Researchers see
``datetime``/``timedelta`` properties, exactly like scamper's Python module.

The statistics follow scamper's definitions (``scamper_ping_stats``):

* a probe *answered* if at least one reply to it is "from the target"
  (echo reply for icmp-echo, timestamp reply for icmp-time, any TCP reply
  for tcp-*, a UDP reply or an ICMP port unreachable from ``dst`` for
  udp-*);
* ``nreplies`` = answered probes; ``ndups`` = extra from-target replies;
  ``nloss`` = ``ping_sent - nreplies``; ``nerrs`` = replies not from the
  target (e.g. an ICMP unreachable from a router);
* min/max/avg/stddev are over all from-target replies (dups included),
  stddev is the population standard deviation.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import (Addr, StopReason, TimedReply, complete_times, check_int, ns_to_datetime,
                     ns_to_timedelta, seconds_to_ns, to_addr)

__all__ = ["Ping", "PingReply", "PingStop", "PingV4TS", "PingTsReply", "PING_METHODS", "PING_FLAGS"]

PING_METHODS = (
    "icmp-echo", "icmp-time", "udp", "udp-dport", "udp-sport", "tcp-syn",
    "tcp-syn-sport", "tcp-synack", "tcp-ack", "tcp-ack-sport", "tcp-rst",
)

TS_SOURCES = ("kernel", "user")

#: scamper's ping flags, in its bit order (warts flag bit ``1 << index``).
PING_FLAGS = ("v4rr", "spoof", "payload", "tsonly", "tsandaddr", "icmpsum", "dl", "tbt", "nosrc", "raw")


@dataclass(frozen=True, slots=True)
class PingV4TS:
    """The IP timestamp option of a reply (scamper's ``v4ts``): the
    timestamps routers wrote (ms since midnight UTC, RFC 791) and, for
    tsandaddr / prespecified, the address paired with each (``ips`` None
    for tsonly)."""

    tss: tuple[int, ...]
    ips: tuple[Addr, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tss", tuple(self.tss))
        for t in self.tss:
            check_int("v4ts timestamp", t, minimum=0)
        if self.ips is not None:
            ips = tuple(to_addr(a) for a in self.ips)
            if len(ips) != len(self.tss) or any(a is None for a in ips):
                raise ValueError("PingV4TS.ips must hold one address per timestamp")
            object.__setattr__(self, "ips", ips)


@dataclass(frozen=True, slots=True)
class PingTsReply:
    """An ICMP timestamp reply's three stamps (scamper's ``tsreply``):
    originate (ours, echoed), receive and transmit (the target's), each in
    ms since midnight UTC."""

    tso: int
    tsr: int
    tst: int

    def __post_init__(self) -> None:
        for name in ("tso", "tsr", "tst"):
            check_int(name, getattr(self, name), minimum=0)


class PingStop(StopReason):
    """Why a ping stopped (scamper's ping stop reasons)."""
    NONE = "none"
    DONE = "done"
    ERROR = "error"
    HALTED = "halted"


@dataclass(slots=True, kw_only=True)
class PingReply(TimedReply):
    """One reply to one ping probe.

    Build it from raw numbers: ``PingReply(src="127.0.0.1", attempt=0,
    tx_ns=..., rx_ns=...)``.  ``rtt_ns`` defaults to ``rx_ns - tx_ns``;
    ``rx_ns`` defaults to ``tx_ns + rtt_ns`` (scamper files carry tx and rtt).
    ``attempt`` is the 0-based probe number (scamper's ``seq``/probe id).
    """

    src: Addr
    attempt: int
    tx_ns: int | None = None
    rx_ns: int | None = None
    rtt_ns: int | None = None
    probe_ipid: int | None = None
    reply_ipid: int | None = None
    reply_ttl: int | None = None
    reply_tos: int | None = None
    reply_size: int | None = None
    reply_proto: str | int = "icmp"
    icmp_type: int | None = None
    icmp_code: int | None = None
    tcp_flags: int | None = None
    tx_ts_source: str | None = None
    rx_ts_source: str | None = None
    ifname: str | None = None
    v4rr: tuple[Addr, ...] | None = None  # record-route addresses (scamper "RR")
    v4ts: PingV4TS | None = None  # IP timestamp option ("tsonly" / "tsandaddr")
    tsreply: PingTsReply | None = None  # icmp-time: the timestamp reply's stamps
    extra: dict[str, Any] = field(default_factory=dict)
    # set by Ping so that is_from_target() works without an argument
    _ctx: tuple[str, Addr] | None = field(default=None, init=False,
                                          repr=False, compare=False)

    def __post_init__(self) -> None:
        src = to_addr(self.src)
        if src is None:
            raise ValueError("PingReply.src is required")
        self.src = src
        check_int("attempt", self.attempt, minimum=0)
        complete_times(self, "PingReply")
        for name in ("probe_ipid", "reply_ipid", "reply_ttl", "reply_tos",
                     "reply_size", "icmp_type", "icmp_code", "tcp_flags"):
            check_int(name, getattr(self, name), optional=True, minimum=0)
        if isinstance(self.reply_proto, str):
            self.reply_proto = self.reply_proto.lower()
            if self.reply_proto == "icmpv6":
                self.reply_proto = "icmp"
        else:
            check_int("reply_proto", self.reply_proto, minimum=0)
            self.reply_proto = {1: "icmp", 58: "icmp", 6: "tcp", 17: "udp"}.get(
                self.reply_proto, self.reply_proto)
        for name in ("tx_ts_source", "rx_ts_source"):
            v = getattr(self, name)
            if v is not None and v not in TS_SOURCES:
                raise ValueError(f"{name} must be one of {TS_SOURCES} or None, got {v!r}")
        if self.v4rr is not None:
            rr = tuple(to_addr(a) for a in self.v4rr)
            if any(a is None for a in rr):
                raise ValueError("PingReply.v4rr must hold addresses")
            self.v4rr = rr  # type: ignore[assignment]
        if self.v4ts is not None and not isinstance(self.v4ts, PingV4TS):
            raise TypeError(f"PingReply.v4ts must be a PingV4TS, got {type(self.v4ts).__name__}")
        if self.tsreply is not None and not isinstance(self.tsreply, PingTsReply):
            raise TypeError(f"PingReply.tsreply must be a PingTsReply, got {type(self.tsreply).__name__}")
        if not isinstance(self.extra, dict):
            raise TypeError("extra must be a dict")

    # -- scamper-style projections --------------------------------------
    @property
    def probe_id(self) -> int:
        """scamper's name for the probe number."""
        return self.attempt

    # -- predicates, as on scamper's ScamperPingReply --------------------
    def is_icmp(self) -> bool:
        return self.reply_proto == "icmp"

    def is_tcp(self) -> bool:
        return self.reply_proto == "tcp"

    def is_udp(self) -> bool:
        return self.reply_proto == "udp"

    def _icmp(self, v4: tuple[int, int | None], v6: tuple[int, int | None]) -> bool:
        if not self.is_icmp():
            return False
        t, c = v4 if self.src.is_ipv4() else v6
        return self.icmp_type == t and (c is None or self.icmp_code == c)

    def is_icmp_echo_reply(self) -> bool:
        return self._icmp((0, None), (129, None))

    def is_icmp_unreach(self) -> bool:
        return self._icmp((3, None), (1, None))

    def is_icmp_unreach_port(self) -> bool:
        return self._icmp((3, 3), (1, 4))

    def is_icmp_ttl_exp(self) -> bool:
        return self._icmp((11, None), (3, None))

    def is_icmp_ptb(self) -> bool:
        return self._icmp((3, 4), (2, None))

    def is_icmp_tsreply(self) -> bool:
        return self._icmp((14, None), (-1, None))

    def is_from_target(self, ping: "Ping | None" = None) -> bool:
        """Did this reply come from the target in the way the method asks
        for?  Needs the ping's method and dst: pass ``ping``, or use a reply
        that belongs to a ``Ping`` (which records them)."""
        if ping is not None:
            method, dst = ping.method, ping.dst
        elif self._ctx is not None:
            method, dst = self._ctx
        else:
            raise ValueError("is_from_target() needs the Ping: reply is not attached to one")
        return reply_from_target(method, dst, self)

    def __str__(self) -> str:
        """As scamper's module prints a reply (``seq`` counts from 0)."""
        us = (self.rtt_ns or 0) // 1000
        return (f"{self.reply_size or 0} bytes from {self.src}, seq={self.attempt} "
                f"ttl={self.reply_ttl or 0} time={us // 1000}.{us % 1000:03d} ms")


def reply_from_target(method: str, dst: Addr, reply: PingReply) -> bool:
    """scamper's SCAMPER_PING_REPLY_IS_FROM_TARGET, by method family."""
    if method == "icmp-echo":
        return reply.is_icmp_echo_reply()
    if method == "icmp-time":
        return reply.is_icmp_tsreply()
    if method.startswith("tcp"):
        return reply.is_tcp()
    if method.startswith("udp"):
        return reply.is_udp() or (reply.is_icmp_unreach_port() and reply.src == dst)
    return False


class PingReplies(list):  # type: ignore[type-arg]
    """``Ping.replies``: the list of replies, also callable — ``ping.replies()``
    iterates them as scamper's module spells it, ``ping.replies`` is the list."""

    __slots__ = ()

    def __call__(self) -> Iterator[PingReply]:
        return iter(list(self))


@dataclass(slots=True, kw_only=True)
class Ping:
    """A ping measurement toward ``dst`` and every reply it drew.

    ``replies`` holds all replies in arrival order, duplicates included.
    ``vp`` is the vantage point's name (serialised); ``inst`` is the live
    instance object the client attaches (never serialised, not compared).
    Durations (``wait_probe``, ``wait_timeout``) accept timedelta or seconds.
    """

    dst: Addr
    start_ns: int
    src: Addr | None = None
    method: str = "icmp-echo"
    ping_sent: int = 0
    probe_size: int | None = None
    ttl: int | None = None
    tos: int | None = None
    wait_probe: _dt.timedelta = _dt.timedelta(seconds=1)
    wait_timeout: _dt.timedelta = _dt.timedelta(seconds=1)
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    tcp_seq: int | None = None
    tcp_ack: int | None = None
    userid: int = 0
    stop_reason: PingStop | str | None = None
    replies: list[PingReply] = field(default_factory=list)
    flags: tuple[str, ...] = ()  # scamper's ping flags ("v4rr", "tsonly", "tsandaddr", ...)
    probe_tsps: tuple[Addr, ...] = ()  # prespecified IP timestamp addresses
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inst: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        dst = to_addr(self.dst)
        if dst is None:
            raise ValueError("Ping.dst is required")
        self.dst = dst
        self.src = to_addr(self.src)
        check_int("start_ns", self.start_ns)
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"Ping.method must be a non-empty string, got {self.method!r}")
        check_int("ping_sent", self.ping_sent, minimum=0)
        check_int("userid", self.userid, minimum=0)
        for name in ("probe_size", "ttl", "tos", "sport", "dport", "icmp_id",
                     "tcp_seq", "tcp_ack"):
            check_int(name, getattr(self, name), optional=True, minimum=0)
        for name in ("wait_probe", "wait_timeout"):
            v = getattr(self, name)
            if not isinstance(v, _dt.timedelta):
                setattr(self, name, _dt.timedelta(microseconds=seconds_to_ns(v) // 1000))
        self.stop_reason = PingStop.coerce(self.stop_reason)
        if isinstance(self.flags, str) or not all(isinstance(f, str) for f in self.flags):
            raise ValueError(f"Ping.flags must be a sequence of flag names, got {self.flags!r}")
        self.flags = tuple(self.flags)
        tsps = tuple(to_addr(a) for a in self.probe_tsps)
        if any(a is None for a in tsps):
            raise ValueError("Ping.probe_tsps must hold addresses")
        self.probe_tsps = tsps  # type: ignore[assignment]
        if self.vp is not None and not isinstance(self.vp, str):
            raise TypeError(f"Ping.vp must be a string, got {self.vp!r}")
        self.replies = PingReplies(self.replies)
        for r in self.replies:
            if not isinstance(r, PingReply):
                raise TypeError(f"Ping.replies must hold PingReply, got {type(r).__name__}")
            r._ctx = (self.method, self.dst)

    # -- times ----------------------------------------------------------
    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    # -- grouping -------------------------------------------------------
    def replies_to(self, attempt: int) -> list[PingReply]:
        """All replies to probe ``attempt`` (0-based), in arrival order."""
        return [r for r in self.replies if r.attempt == attempt]

    def is_from_target(self, reply: PingReply) -> bool:
        return reply_from_target(self.method, self.dst, reply)

    def from_target(self) -> Iterator[PingReply]:
        """Replies that count toward the RTT statistics."""
        return (r for r in self.replies if self.is_from_target(r))

    # -- statistics (scamper's definitions; see module docstring) ------
    @property
    def nreplies(self) -> int:
        return len({r.attempt for r in self.from_target()})

    @property
    def ndups(self) -> int:
        return sum(1 for _ in self.from_target()) - self.nreplies

    @property
    def nloss(self) -> int:
        return max(self.ping_sent - self.nreplies, 0)

    @property
    def nerrs(self) -> int:
        return sum(1 for r in self.replies if not self.is_from_target(r))

    def _rtts(self) -> list[int]:
        return [r.rtt_ns for r in self.from_target() if r.rtt_ns is not None]

    @property
    def min_rtt(self) -> _dt.timedelta | None:
        rtts = self._rtts()
        return ns_to_timedelta(min(rtts)) if rtts else None

    @property
    def max_rtt(self) -> _dt.timedelta | None:
        rtts = self._rtts()
        return ns_to_timedelta(max(rtts)) if rtts else None

    @property
    def avg_rtt(self) -> _dt.timedelta | None:
        rtts = self._rtts()
        return ns_to_timedelta(sum(rtts) // len(rtts)) if rtts else None

    @property
    def stddev_rtt(self) -> _dt.timedelta | None:
        rtts = self._rtts()
        if not rtts:
            return None
        mean = sum(rtts) / len(rtts)
        var = sum((x - mean) ** 2 for x in rtts) / len(rtts)
        return ns_to_timedelta(int(math.sqrt(var)))

    @property
    def loss_rate(self) -> float | None:
        """Fraction of probes unanswered; None when nothing was sent."""
        return None if self.ping_sent == 0 else self.nloss / self.ping_sent

    # -- scamper module names (marionet.compat.scamper) --------------------
    def __iter__(self) -> Iterator[PingReply]:
        """As scamper's ``for r in ping``: for each probe that drew a reply,
        in probe order, its first reply (duplicates are in ``replies``)."""
        first: dict[int, PingReply] = {}
        for r in self.replies:
            first.setdefault(r.attempt, r)
        return iter([first[a] for a in sorted(first)])

    def reply(self, i: int) -> PingReply | None:
        """The first reply to probe ``i`` (counted from 0, as scamper's
        ``reply(i)``), or None when that probe drew none."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"reply index must be an int, got {i!r}")
        return next((r for r in self.replies if r.attempt == i), None)

    @property
    def probe_count(self) -> int:
        """Probes sent (scamper's ``probe_count``)."""
        return self.ping_sent

    @property
    def probe_ttl(self) -> int | None:
        return self.ttl

    @property
    def probe_tos(self) -> int | None:
        return self.tos

    @property
    def probe_sport(self) -> int | None:
        return self.sport if self.is_tcp() or self.is_udp() else None

    @property
    def probe_dport(self) -> int | None:
        return self.dport if self.is_tcp() or self.is_udp() else None

    @property
    def probe_tcp_seq(self) -> int | None:
        return self.tcp_seq if self.is_tcp() else None

    @property
    def probe_tcp_ack(self) -> int | None:
        return self.tcp_ack if self.is_tcp() else None

    def is_icmp(self) -> bool:
        return self.method.startswith("icmp")

    def is_icmp_time(self) -> bool:
        return self.method == "icmp-time"

    def is_tcp(self) -> bool:
        return self.method.startswith("tcp")

    def is_tcp_ack_sport(self) -> bool:
        return self.method == "tcp-ack-sport"

    def is_udp(self) -> bool:
        return self.method.startswith("udp")

    def is_vary_sport(self) -> bool:
        return self.method in ("udp-sport", "tcp-syn-sport", "tcp-ack-sport")

    def is_vary_dport(self) -> bool:
        return self.method == "udp-dport"

    @property
    def stop_reason_str(self) -> str:
        """The stop reason as scamper prints it ("none" when unset)."""
        return str(self.stop_reason if self.stop_reason is not None else PingStop.NONE)

    def is_stop_noreason(self) -> bool:
        return self.stop_reason in (None, PingStop.NONE)

    def is_stop_done(self) -> bool:
        return self.stop_reason == PingStop.DONE

    def is_stop_error(self) -> bool:
        return self.stop_reason == PingStop.ERROR

    def is_stop_halted(self) -> bool:
        return self.stop_reason == PingStop.HALTED

    def to_json(self) -> str:
        """scamper's JSON line for this ping."""
        from .jsonline import json_line
        return json_line(self)
    def to_text(self) -> str:
        """Text in the style of the classic tool (``marionet.results.text``)."""
        from .text import ping_text

        return ping_text(self)
