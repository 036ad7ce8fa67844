"""Packet capture (scamper's ``do_sniff``), once over the packet interface.

``sniff(io, src, icmp_id=…)`` records, as scamper's sniff does, the ICMP
echo replies with that id arriving for ``src`` and the ICMP errors quoting
an echo request of ours with that id; ``sniff(io, src, expr="udp port 53")``
records every packet arriving for ``src`` that a tcpdump expression
matches. Either stops at ``limit_pkt_count`` packets or after
``limit_time``, and every packet carries its kernel receive time.

Why it is built this way:

* **The endpoint's capture.** ``ncap`` compiles the expression with libpcap
  on the endpoint and runs it in the kernel on a raw socket bound to
  ``src`` (IPv4: one socket each for ICMP, TCP and UDP, the protocols a raw
  socket can receive; IPv6: a packet socket seeing whole IPv6 packets), so
  nothing that does not match reaches Python, locally or over the wire.
  "Arriving for ``src``" is always part of the filter: scamper's ``-S``.
* **Exact matching in Python** for the ICMP-id form: the kernel filter
  passes echo replies with the id and ICMP errors; ``matches_icmp_id``
  then checks what the error quotes (an echo request from ``src`` with that
  id), which a BPF program cannot do across a variable-length quoted header.
* **Validation first** (``plan_sniff``), as every primitive.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import NotificationStream, PacketSession
from marionet.measure.params import NS, MAX_TASK_S, address, integer, seconds, shown, task_duration
from marionet.measure.rawio import HALTED, HaltWatch
from marionet.results.sniff import Sniff, SniffPkt, SniffStop

__all__ = ["sniff", "plan_sniff", "SniffPlan", "matches_icmp_id", "icmp_id_filter"]

#: scamper's bounds: 1..5000 packets, at most 1200 s.
MAX_PKTS = 5000
MAX_TIME_S = 1200.0
_MAX_EXPR = 1000
_V4_PROTOS = (1, 6, 17)
_V4_ERRORS = (3, 4, 5, 11, 12)
_V6_ERRORS = (1, 2, 3, 4)


@dataclass(frozen=True)
class SniffPlan:
    src: str
    family: int
    icmp_id: int | None
    expr: str | None
    limit_pkt_count: int
    limit_time_ns: int
    userid: int

    def kernel_filter(self) -> str:
        """The tcpdump expression ``ncap`` runs on the endpoint."""
        if self.icmp_id is not None:
            return icmp_id_filter(self.src, self.family, self.icmp_id)
        lead = "ip6 and " if self.family == 6 else ""
        return f"{lead}dst host {self.src} and ({self.expr})"

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        task_duration("sniff", self.limit_time_ns / NS, f"limit_time {self.limit_time_ns / NS:g} s", max_s)


def icmp_id_filter(src: str, family: int, icmp_id: int) -> str:
    """Echo replies with ``icmp_id`` and ICMP errors, arriving for ``src``."""
    if family == 4:
        errs = " or ".join(f"icmp[0] == {t}" for t in _V4_ERRORS)
        return f"dst host {src} and icmp and ((icmp[0] == 0 and icmp[4:2] == {icmp_id}) or {errs})"
    errs = " or ".join(f"ip6[40] == {t}" for t in _V6_ERRORS)
    return (f"ip6 and dst host {src} and ip6[6] == 58 and "
            f"((ip6[40] == 129 and ip6[44:2] == {icmp_id}) or {errs})")


def plan_sniff(src: Any, *, icmp_id: Any = None, expr: Any = None, limit_pkt_count: Any = 100,
               limit_time: Any = 60.0, userid: Any = 0) -> SniffPlan:
    """Check every parameter (``ValueError`` naming it).

    Exactly one of ``icmp_id`` (0..65535) and ``expr`` (a tcpdump
    expression; it is compiled on the endpoint, which refuses a bad one
    before capturing) selects the packets. ``limit_pkt_count`` 1..5000,
    ``limit_time`` (seconds or timedelta) above 0 and at most 1200 s.
    """
    s = address("src", src)
    if s.is_multicast or s.is_unspecified:
        raise ValueError(f"src {s} is a multicast or unspecified address: give the address packets arrive at")
    if (icmp_id is None) == (expr is None):
        raise ValueError("give exactly one of icmp_id (scamper's icmp[icmpid] == ID) and expr "
                         "(a tcpdump filter expression)")
    iid = integer("icmp_id", icmp_id, 0, 65535, optional=True)
    if expr is not None:
        if not isinstance(expr, str) or not expr.strip():
            raise ValueError(f"expr must be a non-empty tcpdump expression, got {shown(expr)}")
        if len(expr) > _MAX_EXPR or "\0" in expr:
            raise ValueError(f"expr must be at most {_MAX_EXPR} characters without NUL, got {shown(expr)}")
        expr = expr.strip()
    return SniffPlan(src=str(s), family=s.version, icmp_id=iid, expr=expr,
                     limit_pkt_count=integer("limit_pkt_count", limit_pkt_count, 1, MAX_PKTS),  # type: ignore[arg-type]
                     limit_time_ns=seconds("limit_time", limit_time, 0, MAX_TIME_S, lo_open=True),
                     userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


def _v4_src_dst(pkt: bytes) -> tuple[int, bytes, bytes, bytes]:
    ihl = (pkt[0] & 0x0F) * 4
    return pkt[9], pkt[12:16], pkt[16:20], pkt[ihl:]


def matches_icmp_id(pkt: bytes, src: str, icmp_id: int) -> bool:
    """scamper's sniff signature: an echo reply with ``icmp_id`` to ``src``, or
    an ICMP error quoting an echo request from ``src`` with ``icmp_id``.
    Never raises: a short or garbled packet does not match."""
    try:
        me = ipaddress.ip_address(src).packed
        ver = pkt[0] >> 4
        if ver == 4 and len(me) == 4:
            proto, _s, dst, l4 = _v4_src_dst(pkt)
            if proto != 1 or dst != me or len(l4) < 8:
                return False
            if l4[0] == 0:
                return int.from_bytes(l4[4:6], "big") == icmp_id
            if l4[0] not in _V4_ERRORS:
                return False
            q = l4[8:]
            qproto, qsrc, _qd, ql4 = _v4_src_dst(q)
            return (qproto == 1 and qsrc == me and len(ql4) >= 6 and ql4[0] == 8
                    and int.from_bytes(ql4[4:6], "big") == icmp_id)
        if ver == 6 and len(me) == 16:
            if pkt[6] != 58 or pkt[24:40] != me:
                return False
            l4 = pkt[40:]
            if len(l4) < 8:
                return False
            if l4[0] == 129:
                return int.from_bytes(l4[4:6], "big") == icmp_id
            if l4[0] not in _V6_ERRORS:
                return False
            q = l4[8:]
            return (len(q) >= 46 and q[6] == 58 and q[8:24] == me and q[40] == 128
                    and int.from_bytes(q[44:46], "big") == icmp_id)
    except IndexError:
        return False
    return False


class _Capture:
    """The capture sockets of one sniff and their packets (sans result building)."""

    def __init__(self, plan: SniffPlan) -> None:
        self.plan = plan
        self.pkts: list[SniffPkt] = []
        self.drops = 0

    def offer(self, note: Any) -> bool:
        """Take an ``ndata``; True once the packet limit is reached."""
        data = bytes(note.data)
        p = self.plan
        if p.icmp_id is not None and not matches_icmp_id(data, p.src, p.icmp_id):
            return False
        self.pkts.append(SniffPkt(rx_ns=note.time_ns, data=data,
                                  rx_ts_source=note.ts_source if note.ts_source in ("kernel", "user") else None))
        return len(self.pkts) >= p.limit_pkt_count


async def sniff(io: PacketSession, src: Any, *, icmp_id: Any = None, expr: Any = None,
                limit_pkt_count: Any = 100, limit_time: Any = 60.0, userid: Any = 0,
                halt: asyncio.Event | None = None) -> Sniff:
    """Capture packets arriving for ``src`` on the endpoint behind ``io``.

    Stop reasons are scamper's: ``limit-pktc``, ``limit-time``, ``halted``,
    ``error`` (the endpoint refused the capture or the session was lost;
    see ``error``)."""
    plan = plan_sniff(src, icmp_id=icmp_id, expr=expr, limit_pkt_count=limit_pkt_count,
                      limit_time=limit_time, userid=userid)
    cap = _Capture(plan)
    socks: list[int] = []
    stop, error = SniffStop.LIMIT_TIME, None
    start_ns = time.time_ns()
    with io.stream() as stream:
        try:
            protos = (58,) if plan.family == 6 else ((1,) if plan.icmp_id is not None else _V4_PROTOS)
            for proto in protos:
                sid = await io.nopen("raw", family=plan.family, ipproto=proto, laddr=plan.src, stream=stream)
                socks.append(sid)
            start_ns = time.time_ns()
            until = start_ns + plan.limit_time_ns
            filt = plan.kernel_filter()
            for sid in socks:
                await io.ncap(sid, filt, until=until)
            stop = await _gather(cap, stream, set(socks), time.monotonic() + plan.limit_time_ns / NS, halt)
        except EndpointError as exc:
            stop, error = SniffStop.ERROR, str(exc)
        except ConnectionLost as exc:
            stop, error = SniffStop.ERROR, str(exc)
        finally:
            for sid in socks:
                try:
                    await io.nclose(sid)
                except (EndpointError, ConnectionLost):
                    pass
    finish_ns = time.time_ns()
    if stop == SniffStop.LIMIT_PKTC and cap.pkts:
        finish_ns = max(cap.pkts[-1].rx_ns, start_ns)
    return Sniff(src=plan.src, start_ns=start_ns, finish_ns=finish_ns, limit_pkt_count=plan.limit_pkt_count,
                 limit_time=_dt.timedelta(microseconds=plan.limit_time_ns // 1000), icmp_id=plan.icmp_id,
                 expr=plan.expr, pkts=cap.pkts, stop_reason=stop, userid=plan.userid, error=error,
                 drops=cap.drops, vp=io.endpoint_name or None)


async def _gather(cap: _Capture, stream: NotificationStream, socks: set[int], deadline: float,
                  halt: asyncio.Event | None) -> SniffStop:
    watch = HaltWatch(halt)
    ended: set[int] = set()

    def halted() -> SniffStop:
        # what already arrived was captured before the halt: keep it
        while (n := stream.poll()) is not None:
            if n.kind == "ndata" and n.sock in socks and cap.offer(n):
                return SniffStop.LIMIT_PKTC
        return SniffStop.HALTED

    try:
        while True:
            if watch.halted:
                return halted()
            note = stream.poll()
            if note is None:
                left = deadline - time.monotonic()
                if left <= 0 or ended >= socks:
                    return SniffStop.LIMIT_TIME
                note = await watch.next(stream, left)
                if note is HALTED:
                    return halted()
                if note is None:
                    continue
            if note.kind == "ndata" and note.sock in socks:
                if cap.offer(note):
                    return SniffStop.LIMIT_PKTC
            elif note.kind == "ncapend" and note.sock in socks:
                ended.add(note.sock)
            elif note.kind == "ndrop":
                cap.drops += int(getattr(note, "count", 0) or 0)
    finally:
        watch.close()
