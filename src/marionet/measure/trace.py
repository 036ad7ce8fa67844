"""Traceroute, written once over the packet interface, run in every placement.

``trace(io, dst, …)`` takes any ``PacketSession`` (native, endpoint or
remote placement) and returns a ``marionet.results.Trace`` with scamper's
``do_trace`` parameters, fields and stop reasons.

It is built exactly like ``ping`` (read that module's docstring first):

* **Validation first** (``plan_trace``): every bad parameter raises
  ``ValueError`` before a socket is opened.
* **The endpoint stamps both ends.** Each probe is queued with ``at=`` a
  little ahead and tagged, so its transmit time is the kernel's (``ntag``);
  replies come from ``ncap`` on raw sockets bound to the source address,
  stamped by the kernel on receipt.  RTTs therefore do not depend on the
  placement's control-path latency.
* **Sans-I/O core** (``TraceProbing``): probe bytes, reply matching, the
  hop-by-hop state machine and the stop reasons know nothing of sockets;
  ``trace`` is the thin driver that feeds it notifications and timeouts.

By default probing is sequential, one probe in flight (scamper's default):
send the probe for (TTL, attempt), wait up to ``wait_timeout`` from its
kernel transmit time, then decide.  With ``squeries`` = n, the next n TTLs
may each have a probe out at once (as Butskoy's traceroute sends its
probes); decisions (stop reasons, gap and loop limits) are still taken TTL
by TTL in order, and replies from probes past the TTL where the trace
stopped are left out of the result (counted in ``extra``).

How probes are told apart (what a router's ICMP error quotes):

* IPv4: we write the IP header (``hdrincl``), so every probe has its own
  IP-ID, and every ICMP error quotes it.  That is the primary key.
* IPv6 has no IP-ID, but routers quote much more of the probe, so the
  transport header identifies it: the UDP checksum (udp-paris), the
  destination port (classic udp), the ICMP sequence number (icmp methods)
  or the TCP sequence number (tcp).  The same keys back up IPv4 matching.

Paris traceroute keeps the fields per-flow load balancers hash constant:
udp-paris keeps both ports and varies the UDP checksum (set through the
first two payload bytes); icmp-paris keeps the ICMP checksum constant
(``icmp_sum``) while the sequence number varies, again by adjusting the
first two payload bytes.  Classic udp increments the destination port per
probe; classic icmp lets the checksum vary.  tcp sends SYNs to ``dport``
from a constant ``sport``; a SYN-ACK or RST from the destination completes
the trace (with no listener the destination answers RST).  tcp-ack (scamper's
other TCP method) sends ACKs on the same constant flow: firewalls that drop
unsolicited SYNs often pass them, and the destination answers any stray ACK
with a bare RST whose sequence number is the probe's ACK number.

``confidence`` (scamper's ``-c``) replaces ``attempts`` with scamper's
per-hop probe budget; see ``plan_trace``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P
from marionet.measure.params import boolean as _bool
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import method as check_method
from marionet.measure.params import payload as check_payload
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import target as check_target
from marionet.measure.rawio import (HALTED, HaltWatch, ProbeSockets, queue_lead_ns, route_source,
                                    with_probe_sockets)
from marionet.results import IcmpExt, MplsLabel, Trace, TraceHop, TraceStop

__all__ = ["trace", "plan_trace", "TracePlan", "TraceProbing", "SUPPORTED_METHODS",
           "icmp_extensions", "paris_word"]

SUPPORTED_METHODS = ("udp-paris", "icmp-paris", "udp", "icmp", "tcp", "tcp-ack")
#: scamper's own spellings (what its JSON writes) map onto ours.
_ALIASES = {"icmp-echo-paris": "icmp-paris", "icmp-echo": "icmp"}
_NOT_YET: tuple[str, ...] = ()
#: the method name a scamper JSON reader expects.
_SCAMPER_NAME = {"udp-paris": "udp-paris", "icmp-paris": "icmp-echo-paris", "udp": "udp",
                 "icmp": "icmp-echo", "tcp": "tcp", "tcp-ack": "tcp-ack"}
_TRANSPORT_HDR = {"udp-paris": 8, "udp": 8, "icmp-paris": 8, "icmp": 8, "tcp": 20, "tcp-ack": 20}
_TCP_METHODS = ("tcp", "tcp-ack")
#: scamper's table (scamper_trace_do.c, k()): probes to send at one hop to rule
#: out, at 95% / 99% confidence, a load balancer with n next hops when n - 1
#: interfaces have been seen; index n from 2 to 25.
_CONFIDENCE_K = ((0, 0), (0, 0), (6, 8), (11, 15), (16, 21), (21, 28), (27, 36), (33, 43), (38, 51),
                 (44, 58), (51, 66), (57, 74), (63, 82), (70, 90), (76, 98), (83, 106), (90, 115),
                 (96, 123), (103, 132), (110, 140), (117, 149), (124, 157), (131, 166), (138, 175),
                 (145, 183), (152, 192))
_CONFIDENCE_MAX_N = 25
_DEFAULT_SIZE = {4: 44, 6: 60}  # scamper's probe size for udp and icmp traces (tcp: headers only)
_MAX_TTL = 255
_TX_GRACE_NS = 10_000_000_000  # how long past its wait a probe's transmit stamp is awaited
_NS = 1_000_000_000


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TracePlan:
    """Validated traceroute parameters, with scamper's defaults filled in."""

    dst: str
    family: int
    method: str
    attempts: int
    all_attempts: bool
    firsthop: int
    hoplimit: int  # 0 = scamper's "no limit" (255)
    gaplimit: int
    loops: int
    wait_timeout_ns: int
    wait_probe_ns: int
    sport: int
    dport: int
    icmp_id: int
    icmp_sum: int
    tos: int
    size: int
    payload: bytes
    payload_given: bool
    src: str | None
    userid: int
    squeries: int = 1  # consecutive TTLs that may have a probe out at once
    confidence: int = 0  # 0, 95 or 99 (scamper trace -c)

    @property
    def max_ttl(self) -> int:
        return self.hoplimit or _MAX_TTL

    @property
    def proto(self) -> int:
        if self.method in ("udp", "udp-paris"):
            return P.IPPROTO_UDP
        if self.method in _TCP_METHODS:
            return P.IPPROTO_TCP
        return P.IPPROTO_ICMPV6 if self.family == 6 else P.IPPROTO_ICMP

    @property
    def is_icmp(self) -> bool:
        return self.method in ("icmp", "icmp-paris")

    def probes_due(self, n: int) -> int:
        """With ``confidence``, how many probes a hop gets once ``n - 1``
        distinct interfaces answered there (n ≥ 2); 0 past scamper's table."""
        if n > _CONFIDENCE_MAX_N:
            return 0
        return _CONFIDENCE_K[n][0 if self.confidence == 95 else 1]

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this trace, as an endpoint task, could run longer
        than ``max_s`` by its parameters alone: toward a silent network it stops
        after ``gaplimit`` silent hops, each probed ``attempts`` times
        (``squeries`` hops at once). How long answering routers take is the
        network's doing, not the caller's; the endpoint's run-time cap bounds
        that part."""
        hops = min(self.max_ttl - self.firsthop + 1, self.gaplimit)
        rounds = -(-hops // self.squeries)
        per = (self.wait_timeout_ns + self.wait_probe_ns) / _NS
        par = f" / squeries {self.squeries}" if self.squeries > 1 else ""
        tries = self.probes_due(2) if self.confidence else self.attempts
        what = f"confidence {self.confidence}: {tries} probes" if self.confidence else f"attempts {tries}"
        task_duration("trace", rounds * tries * per,
                      f"{hops} silent hops (gaplimit {self.gaplimit}){par} × {what} × "
                      f"(wait_timeout + wait_probe) {per:g} s", max_s)


def plan_trace(dst: Any, *, method: str = "udp-paris", attempts: int = 2, all_attempts: bool = False,
               firsthop: int = 1, hoplimit: int = 0, gaplimit: int = 5, loops: int = 1,
               wait_timeout: Any = 5.0, wait_probe: Any = 0.0, sport: int | None = None,
               dport: int | None = None, icmp_id: int | None = None, icmp_sum: int | None = None,
               size: int | None = None, payload: bytes | str | None = None, src: Any = None,
               tos: int = 0, userid: int = 0, squeries: int = 1, confidence: int = 0,
               rng: random.Random | None = None) -> TracePlan:
    """Check every parameter (``ValueError`` with the reason) and fill defaults.

    ``hoplimit`` 0 means scamper's default: probe up to TTL 255, relying on
    ``gaplimit`` (consecutive silent hops) to stop.  ``loops`` 0 never stops
    on a loop.  ``squeries``: how many consecutive TTLs may have a probe out
    at once (scamper's option; 1 = one probe in flight, as scamper does by
    default; Butskoy's traceroute uses 16).  ``size`` is the whole IP packet (default 44 for IPv4, 60 for
    IPv6, as scamper; tcp probes are headers only).  With a paris method the
    first two payload bytes are ours (they set the checksum), so a given
    payload needs at least two bytes.

    ``confidence`` (scamper's ``trace -c 95|99``; 0 = off) probes every hop
    until, at that confidence level, no further interface would answer
    there: a hop gets 6 (95) or 8 (99) probes while one interface answers,
    and more as more distinct interfaces do (scamper's table: 11/15 probes
    once two answered, 16/21 for three … up to 25), then the trace moves
    on; a silent hop gets 6 or 8 probes before it counts as a gap.  As in
    scamper, ``attempts`` is then not consulted, every reply at the hop is
    recorded and checked for a stop reason (the destination, too, gets its
    6 or 8 probes), and ``all_attempts`` cannot be combined with it; scamper
    ignores it with ``squeries`` > 1, so that combination is refused here.
    """
    rng = rng or random.SystemRandom()
    method = check_method("trace", method, SUPPORTED_METHODS, _NOT_YET, _ALIASES)
    d, family, s = check_target(dst, src)
    attempts = _int("attempts", attempts, 1, 20)  # type: ignore[assignment]
    all_attempts = _bool("all_attempts", all_attempts)
    firsthop = _int("firsthop", firsthop, 1, 255)  # type: ignore[assignment]
    hoplimit = _int("hoplimit", hoplimit, 0, 255)  # type: ignore[assignment]
    if hoplimit and hoplimit < firsthop:
        raise ValueError(f"hoplimit {hoplimit} is below firsthop {firsthop}")
    gaplimit = _int("gaplimit", gaplimit, 1, 255)  # type: ignore[assignment]
    loops = _int("loops", loops, 0, 255)  # type: ignore[assignment]
    wt = _seconds("wait_timeout", wait_timeout, 0.001, 60)
    wp = _seconds("wait_probe", wait_probe, 0, 20)
    tos = _int("tos", tos, 0, 255)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    squeries = _int("squeries", squeries, 1, 255)  # type: ignore[assignment]
    confidence = _int("confidence", confidence, 0, 99)  # type: ignore[assignment]
    if confidence not in (0, 95, 99):
        raise ValueError(f"confidence {confidence} is not one of 0 (off), 95 or 99")
    if confidence and all_attempts:
        raise ValueError("confidence and all_attempts exclude each other (scamper refuses trace -c with -Q)")
    if confidence and squeries > 1:
        raise ValueError(f"confidence works one TTL at a time; it cannot be used with squeries {squeries}")
    hdr = (20 if family == 4 else 40) + _TRANSPORT_HDR[method]
    paris = method in ("udp-paris", "icmp-paris")
    payload = check_payload(payload)
    if payload is not None:
        if paris and len(payload) < 2:
            raise ValueError(f"{method} needs a payload of at least 2 bytes (they set the checksum)")
    if size is not None:
        size = _int("size", size, 0, 65535)
        if size < hdr + (2 if paris else 0):  # type: ignore[operator]
            raise ValueError(f"size {size} is too small: an IPv{family} {method} probe needs at least "
                             f"{hdr + (2 if paris else 0)} bytes")
        if payload is not None and size != hdr + len(payload):
            raise ValueError(f"size {size} is inconsistent with a {len(payload)}-byte payload "
                             f"(headers {hdr} + payload = {hdr + len(payload)})")
    payload_given = payload is not None
    if payload is None:
        if size is not None:
            n = size - hdr
        else:
            n = 0 if method in _TCP_METHODS else _DEFAULT_SIZE[family] - hdr
        payload = bytes(n)
    size = hdr + len(payload)
    if size > 65535:
        raise ValueError(f"probe size {size} is too large (at most 65535)")
    if method in ("icmp", "icmp-paris"):
        if sport is not None or dport is not None:
            raise ValueError(f"sport/dport are for udp and tcp methods; use icmp_id for {method}")
        icmp_id = _int("icmp_id", icmp_id, 0, 65535, optional=True)
        if icmp_id is None:
            icmp_id = rng.randrange(1, 0x10000)
        sp, dp = 0, 0
    else:
        if icmp_id is not None:
            raise ValueError(f"icmp_id is for icmp methods, not {method}")
        sp = _int("sport", sport, 1, 65535, optional=True)
        dp = _int("dport", dport, 1, 65535, optional=True)
        if sp is None:
            sp = rng.randrange(0x8000, 0x10000)
        if dp is None:
            dp = 80 if method in _TCP_METHODS else 33435
        icmp_id = 0
    if method == "icmp-paris":
        isum = _int("icmp_sum", icmp_sum, 1, 0xFFFE, optional=True)
        if isum is None:
            isum = rng.randrange(1, 0xFFFF)
    else:
        if icmp_sum is not None:
            raise ValueError(f"icmp_sum is for icmp-paris, not {method}")
        isum = 0
    return TracePlan(dst=d, family=family, method=method, attempts=attempts, all_attempts=all_attempts,
                     firsthop=firsthop, hoplimit=hoplimit, gaplimit=gaplimit, loops=loops,
                     wait_timeout_ns=wt, wait_probe_ns=wp, sport=sp, dport=dp,  # type: ignore[arg-type]
                     icmp_id=icmp_id, icmp_sum=isum, tos=tos, size=size, payload=payload,  # type: ignore[arg-type]
                     payload_given=payload_given, src=s, userid=userid,
                     squeries=squeries, confidence=confidence)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Checksum steering and ICMP extensions
# ---------------------------------------------------------------------------


def _fold(x: int) -> int:
    while x >> 16:
        x = (x & 0xFFFF) + (x >> 16)
    return x


def paris_word(csum_with_zero_word: int, target: int) -> int:
    """The 16-bit word that, written where a zero word was, turns a packet
    whose checksum is ``csum_with_zero_word`` into one with checksum
    ``target`` (1..0xFFFE).

    Why this works: the checksum is the complement of the one's-complement
    sum S, so S ≡ ~c0 and we need S + w ≡ ~target (mod 0xFFFF), i.e.
    w ≡ ~target + c0.
    """
    return _fold((~target & 0xFFFF) + csum_with_zero_word)


def icmp_extensions(icmp: bytes, v6: bool) -> list[IcmpExt]:
    """RFC 4884 extension objects of an ICMP error (``icmp``: the whole ICMP
    message), with RFC 4950 MPLS label stacks decoded.

    Why the fallback: many routers predate RFC 4884 and append the extension
    structure after a 128-byte quote without setting the length field
    (RFC 4884 section 5 asks receivers to accept that, as scamper does).
    """
    if len(icmp) < 8:
        return []
    typ = icmp[0]
    if v6:
        if typ not in (1, 3):
            return []
        qlen = icmp[4] * 8
    else:
        if typ not in (3, 11, 12):
            return []
        qlen = icmp[5] * 4
    if qlen:
        off = 8 + qlen
    elif len(icmp) >= 8 + 128 + 4 and icmp[8 + 128] >> 4 == 2:
        off = 8 + 128
    else:
        return []
    if off + 4 > len(icmp) or icmp[off] >> 4 != 2:
        return []
    out: list[IcmpExt] = []
    off += 4
    while off + 4 <= len(icmp):
        olen, cn, ct = struct.unpack_from("!HBB", icmp, off)
        if olen < 4 or off + olen > len(icmp):
            break
        body = bytes(icmp[off + 4:off + olen])
        ext = IcmpExt(cn=cn, ct=ct, dl=len(body))
        if cn == 1 and ct == 1:
            for i in range(0, len(body) - 3, 4):
                (e,) = struct.unpack_from("!I", body, i)
                ext.mpls_labels.append(MplsLabel(label=e >> 12, exp=(e >> 9) & 7, s=(e >> 8) & 1, ttl=e & 0xFF))
        else:
            ext.data = body
        out.append(ext)
        off += olen
    return out


# ---------------------------------------------------------------------------
# Sans-I/O core
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Probe:
    pid: int
    ttl: int
    attempt: int  # 1-based, as scamper's probe_id
    ipid: int | None
    key: int  # transport field naming the probe (see module docstring)
    at_ns: int
    tx_ns: int | None = None
    tx_source: str | None = None
    error: str | None = None
    answered: bool = False


@dataclass(slots=True)
class _TtlState:
    """Probing at one TTL: attempts sent, the probe out, replies so far."""
    attempts: int = 0
    inflight: int | None = None
    replies: list["_Got"] = field(default_factory=list)
    ifaces: set[str] = field(default_factory=set)  # distinct responders (confidence)
    n: int = 2  # index into the confidence table: interfaces seen + 1, at least 2


@dataclass(slots=True)
class _Got:
    pid: int
    pkt: P.IPPacket
    rx_ns: int
    rx_source: str | None
    kind: str  # "ttl" (time exceeded), "done" (from the destination), "unreach", "icmp"


class TraceProbing:
    """Probe bytes, reply matching and the hop-by-hop state machine; no I/O.

    The driver loop: while not ``done``, if ``wants_probe()`` take
    ``probe(at_ns)`` (bytes, TTL) and send it; report its transmit stamp with
    ``sent``; feed captured packets to ``received``; when the in-flight
    probe's wait (``deadline_ns``) has passed with no reply, call
    ``expired``.  ``result()`` builds the ``Trace``.  Times are ns on the
    endpoint's clock.
    """

    def __init__(self, plan: TracePlan, src: str, *, ipid_base: int | None = None,
                 seq_base: int | None = None) -> None:
        self.plan = plan
        self.src = src
        r = random.SystemRandom()
        self._ipid_base = ipid_base if ipid_base is not None else r.randrange(1, 0x10000)
        self._seq_base = seq_base if seq_base is not None else r.randrange(0, 2**32)
        self.probes: list[_Probe] = []
        self.got: list[_Got] = []
        self._by_ipid: dict[int, int] = {}
        self._by_key: dict[int, int] = {}
        self.ttl = plan.firsthop  # the lowest TTL not yet decided on
        self._ttls: dict[int, _TtlState] = {}
        self._gap = 0
        self._loopc = 0
        self._te_addrs: dict[str, int] = {}  # time-exceeded source -> first TTL
        self.done = False
        self.stop_reason = TraceStop.NONE
        self.stop_data = 0
        self.dups = 0

    # -- capture filters ------------------------------------------------------
    def filters(self) -> dict[str, str]:
        """tcpdump expressions per capture role: "probe" (the socket the probes
        leave from) and, for IPv4 udp/tcp, "icmp" (a raw ICMP socket)."""
        p = self.plan
        proto = p.proto
        if p.family == 4:
            qdst = int(ipaddress.IPv4Address(p.dst))
            err = ("icmp and (icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12)"
                   f" and icmp[8] = 0x45 and icmp[17] = {proto} and icmp[24:4] = {qdst}")
            if p.is_icmp:
                return {"probe": f"({err} and icmp[28] = 8 and icmp[32:2] = {p.icmp_id}) or "
                                 f"(icmp and src host {p.dst} and icmp[0] = 0 and icmp[4:2] = {p.icmp_id})"}
            tp = "udp" if proto == P.IPPROTO_UDP else "tcp"
            direct = f"{tp} and src host {p.dst} and dst port {p.sport}"
            if tp == "tcp":
                direct += f" and src port {p.dport}"
            return {"probe": direct, "icmp": f"{err} and icmp[28:2] = {p.sport}"}
        err6 = f"ip6 and ip6[6] = 58 and ip6[40] >= 1 and ip6[40] <= 4 and ip6[54] = {proto}"
        if p.is_icmp:
            return {"probe": f"({err6} and ip6[88] = 128 and ip6[92:2] = {p.icmp_id}) or "
                             f"(ip6 and ip6[6] = 58 and ip6 src {p.dst} and ip6[40] = 129 "
                             f"and ip6[44:2] = {p.icmp_id})"}
        direct = f"ip6 and ip6[6] = {proto} and ip6 src {p.dst} and ip6[42:2] = {p.sport}"
        if proto == P.IPPROTO_TCP:
            direct += f" and ip6[40:2] = {p.dport}"
        return {"probe": f"({err6} and ip6[88:2] = {p.sport}) or ({direct})"}

    # -- probes ---------------------------------------------------------------
    @property
    def inflight(self) -> int | None:
        """The probe out at the lowest TTL (the only one when squeries is 1)."""
        pids = self.inflight_pids()
        return pids[0] if pids else None

    def inflight_pids(self) -> list[int]:
        """Probes sent and waiting for a reply or their timeout, lowest TTL first."""
        return [st.inflight for _, st in sorted(self._ttls.items()) if st.inflight is not None]

    def _more(self, st: _TtlState) -> bool:
        """Another attempt is due at this TTL (once the one out is resolved)."""
        if self.plan.confidence:
            return st.attempts < self.plan.probes_due(st.n)
        return st.attempts < self.plan.attempts and (self.plan.all_attempts or not st.replies)

    def _next_ttl(self) -> int | None:
        """The lowest TTL in the window that can take a probe now."""
        if self.done:
            return None
        last = min(self.ttl + self.plan.squeries - 1, self.plan.max_ttl)
        for t in range(self.ttl, last + 1):
            st = self._ttls.get(t)
            if st is None or (st.inflight is None and self._more(st)):
                return t
        return None

    def wants_probe(self) -> bool:
        return self._next_ttl() is not None

    def _key(self, pid: int) -> int:
        """The per-probe transport value (see the module docstring)."""
        m = self.plan.method
        if m == "udp-paris":
            return pid % 0xFFFE + 1  # the UDP checksum; never 0 or 0xFFFF
        if m == "udp":
            return (self.plan.dport + pid) & 0xFFFF
        if m in _TCP_METHODS:
            return (self._seq_base + pid) % 2**32
        return pid & 0xFFFF  # icmp sequence number

    def _transport(self, pid: int) -> bytes:
        p = self.plan
        v6 = p.family == 6
        key = self._key(pid)
        if p.method == "udp-paris":
            pl = b"\0\0" + p.payload[2:]
            c0 = struct.unpack_from("!H", P.udp_segment(self.src, p.dst, p.sport, p.dport, pl), 6)[0]
            pl = struct.pack("!H", paris_word(c0, key)) + pl[2:]
            seg = P.udp_segment(self.src, p.dst, p.sport, p.dport, pl)
            assert struct.unpack_from("!H", seg, 6)[0] == key
            return seg
        if p.method == "udp":
            return P.udp_segment(self.src, p.dst, p.sport, key, p.payload)
        if p.method == "tcp":
            return P.tcp_segment(self.src, p.dst, p.sport, p.dport, seq=key, flags=P.TCP_SYN, payload=p.payload)
        if p.method == "tcp-ack":
            # The destination's RST carries our ACK number as its sequence
            # number (RFC 9293 3.10.7.1), so the key in both fields names it.
            return P.tcp_segment(self.src, p.dst, p.sport, p.dport, seq=key, ack=key, flags=P.TCP_ACK,
                                 payload=p.payload)
        if p.method == "icmp-paris":
            pl = b"\0\0" + p.payload[2:]
            c0 = struct.unpack_from("!H", P.icmp_echo(p.icmp_id, key, pl, src=self.src, dst=p.dst, v6=v6), 2)[0]
            pl = struct.pack("!H", paris_word(c0, p.icmp_sum)) + pl[2:]
            msg = P.icmp_echo(p.icmp_id, key, pl, src=self.src, dst=p.dst, v6=v6)
            assert struct.unpack_from("!H", msg, 2)[0] == p.icmp_sum
            return msg
        return P.icmp_echo(p.icmp_id, key, p.payload, src=self.src, dst=p.dst, v6=v6)

    def probe(self, at_ns: int) -> tuple[int, int, bytes]:
        """(pid, ttl, bytes) of the next probe, recorded as scheduled at
        ``at_ns``; IPv4 bytes include our IP header (TTL inside), IPv6 bytes
        are the transport only (the driver sets the hop limit per send)."""
        ttl = self._next_ttl()
        if ttl is None:
            raise RuntimeError("no probe is due (the window is full or the trace is done)")
        st = self._ttls.setdefault(ttl, _TtlState())
        p = self.plan
        pid = len(self.probes)
        body = self._transport(pid)
        ipid = None
        if p.family == 4:
            ipid = (self._ipid_base + pid) % 0xFFFF + 1  # never 0: the kernel would replace it
            self._by_ipid[ipid] = pid
            body = P.ipv4_header(self.src, p.dst, p.proto, len(body), ttl=ttl, tos=p.tos, ipid=ipid) + body
        key = self._key(pid)
        self._by_key[key] = pid
        st.attempts += 1
        st.inflight = pid
        self.probes.append(_Probe(pid, ttl, st.attempts, ipid, key, at_ns))
        return pid, ttl, body

    def sent(self, pid: int, tx_ns: int | None, ts_source: str | None, error: str | None = None) -> None:
        pr = self.probes[pid]
        pr.tx_ns, pr.tx_source, pr.error = tx_ns, ts_source, error
        if error is not None:
            self._stop(TraceStop.ERROR)

    def deadline_ns(self, pid: int) -> int:
        """When probe ``pid``'s wait ends: ``wait_timeout`` after its kernel
        transmit time (the scheduled time until the stamp is in)."""
        pr = self.probes[pid]
        return (pr.tx_ns if pr.tx_ns is not None else pr.at_ns) + self.plan.wait_timeout_ns

    # -- replies --------------------------------------------------------------
    def _match(self, pkt: P.IPPacket) -> tuple[int | None, str]:
        p = self.plan
        v6 = p.family == 6
        icmp = pkt.icmp
        # Answers from the destination itself.
        if p.is_icmp:
            if (icmp is not None and icmp.type == (129 if v6 else 0) and icmp.ident == p.icmp_id
                    and pkt.src == p.dst):
                return self._by_key.get(icmp.seq), "done"  # type: ignore[arg-type]
        elif pkt.src == p.dst and (pkt.udp if p.proto == P.IPPROTO_UDP else pkt.tcp) is not None:
            seg = pkt.udp if p.proto == P.IPPROTO_UDP else pkt.tcp
            if seg.dport == p.sport:  # type: ignore[union-attr]
                if isinstance(seg, P.Tcp):
                    if seg.sport != p.dport:
                        return None, ""
                    if seg.flags & P.TCP_ACK:
                        return self._by_key.get((seg.ack - 1) % 2**32), "done"
                    if p.method == "tcp-ack":  # a bare RST: its seq is our ack
                        pid = self._by_key.get(seg.seq)
                        return (pid if pid is not None else self.inflight), "done"
                return self.inflight, "done"
        # An ICMP error quoting one of our probes.
        if icmp is None or icmp.quote is None:
            return None, ""
        q = icmp.quote
        if q.dst != p.dst or q.proto != p.proto:
            return None, ""
        pid: int | None = None
        if not v6 and q.ipid in self._by_ipid:
            pid = self._by_ipid[q.ipid]  # type: ignore[index]
        tp = q.transport
        if p.is_icmp:
            if not isinstance(tp, P.Icmp) or tp.ident != p.icmp_id:
                return None, ""
            pid = pid if pid is not None else self._by_key.get(tp.seq)  # type: ignore[arg-type]
        elif isinstance(tp, P.Udp):
            if tp.sport != p.sport:
                return None, ""
            if pid is None:
                pid = self._by_key.get(tp.checksum if p.method == "udp-paris" else tp.dport)
        elif isinstance(tp, P.Tcp):
            if tp.sport != p.sport or tp.dport != p.dport:
                return None, ""
            pid = pid if pid is not None else self._by_key.get(tp.seq)
        elif pid is None:
            return None, ""
        typ, code = icmp.type, icmp.code
        if typ == (3 if v6 else 11):
            kind = "ttl"
        elif typ == (1 if v6 else 3):
            port = code == (4 if v6 else 3)
            mine = pkt.src == p.dst and not p.is_icmp and p.method not in _TCP_METHODS
            kind = "done" if port and mine else "unreach"
        else:
            kind = "icmp"
        return pid, kind

    def received(self, pkt: P.IPPacket, rx_ns: int, ts_source: str | None = "kernel") -> bool:
        """Record a captured packet; True if it answered one of our probes
        (within its wait, when its transmit stamp is known)."""
        pid, kind = self._match(pkt)
        if pid is None or not 0 <= pid < len(self.probes):
            return False
        pr = self.probes[pid]
        if pr.error is not None:
            return False
        if pr.tx_ns is not None and rx_ns > pr.tx_ns + self.plan.wait_timeout_ns:
            return False  # late: not a reply, as in scamper
        if pr.answered:
            self.dups += 1
            return True
        pr.answered = True
        g = _Got(pid, pkt, rx_ns, ts_source, kind)
        self.got.append(g)
        st = self._ttls.get(pr.ttl)
        if st is not None and pr.ttl >= self.ttl and not self.done:
            st.replies.append(g)
            if pkt.src not in st.ifaces:
                st.ifaces.add(pkt.src)
                if len(st.ifaces) > 1:
                    st.n += 1
            if st.inflight == pid:
                st.inflight = None
            self._advance()
        return True

    def expired(self, pid: int) -> None:
        """The wait for probe ``pid`` ended without a reply."""
        st = self._ttls.get(self.probes[pid].ttl)
        if st is not None and st.inflight == pid and not self.done:
            st.inflight = None
            self._advance()

    def missing_tx(self) -> list[int]:
        """Probes whose transmit stamp (or send error) has not arrived yet:
        answered ones need it for their RTT; with squeries > 1, probes still
        queued when the trace stopped are counted only once really sent."""
        return [pr.pid for pr in self.probes if pr.tx_ns is None and pr.error is None]

    def halt(self) -> None:
        self._stop(TraceStop.HALTED)

    def unsend_after(self, t_ns: int) -> None:
        """Probes scheduled after ``t_ns`` that never reported a send (a halt
        closed their socket first) do not count as sent."""
        for pr in self.probes:
            if pr.tx_ns is None and pr.error is None and pr.at_ns > t_ns:
                pr.error = "not sent (halted)"

    # -- the state machine ----------------------------------------------------
    def _stop(self, reason: TraceStop, data: int = 0) -> None:
        if not self.done:
            self.done, self.stop_reason, self.stop_data = True, reason, data
            for st in self._ttls.values():
                st.inflight = None

    def _advance(self) -> None:
        """Decide on TTLs in order, from the lowest, while their probing is over
        (with squeries > 1 a higher TTL may finish first: it waits its turn)."""
        while not self.done:
            st = self._ttls.get(self.ttl)
            if st is None or st.inflight is not None or self._more(st):
                return
            self._hop_done(st.replies)

    def _hop_done(self, hop: list[_Got]) -> None:
        """Decide after a TTL's probes: stop (with scamper's reason) or move on."""
        p = self.plan
        if any(g.kind == "done" for g in hop):
            return self._stop(TraceStop.COMPLETED)
        for g in hop:
            if g.kind == "unreach":
                return self._stop(TraceStop.UNREACH, g.pkt.icmp.code)  # type: ignore[union-attr]
        for g in hop:
            if g.kind == "icmp":
                return self._stop(TraceStop.ICMP, g.pkt.icmp.type)  # type: ignore[union-attr]
        if hop:
            self._gap = 0
            for g in hop:
                first = self._te_addrs.setdefault(g.pkt.src, self.ttl)
                # The same address one TTL later is not a loop: a router that
                # forwards TTL-0 packets, or a rate-limited pair, shows that way.
                if first < self.ttl - 1:
                    self._loopc += 1
                    if p.loops and self._loopc >= p.loops:
                        return self._stop(TraceStop.LOOP)
                    break
        else:
            self._gap += 1
            if self._gap >= p.gaplimit:
                return self._stop(TraceStop.GAPLIMIT)
        if self.ttl >= p.max_ttl:
            return self._stop(TraceStop.HOPLIMIT)
        self.ttl += 1

    # -- result ---------------------------------------------------------------
    def _hop_record(self, g: _Got) -> TraceHop | None:
        pr = self.probes[g.pid]
        tx = pr.tx_ns if pr.tx_ns is not None else pr.at_ns
        if g.rx_ns > tx + self.plan.wait_timeout_ns:
            return None
        src = pr.tx_source if pr.tx_ns is not None else "user"
        pkt = g.pkt
        icmp, tcp = pkt.icmp, pkt.tcp
        q = icmp.quote if icmp is not None else None
        hop = TraceHop(
            src=pkt.src, probe_ttl=pr.ttl, probe_id=pr.attempt, probe_size=self.plan.size,
            tx_ns=tx, rx_ns=g.rx_ns, reply_ttl=pkt.ttl, reply_tos=pkt.tos,
            reply_ipid=pkt.ipid if pkt.version == 4 else None, reply_size=pkt.size,
            icmp_type=icmp.type if icmp is not None else None,
            icmp_code=icmp.code if icmp is not None else None,
            icmp_q_ttl=q.ttl if q is not None else None,
            icmp_q_ipl=q.size if q is not None else None,
            icmp_q_tos=q.tos if q is not None else None,
            tcp_flags=tcp.flags if tcp is not None else None,
            tx_ts_source=src if src in ("kernel", "user") else None,
            rx_ts_source=g.rx_source if g.rx_source in ("kernel", "user") else None)
        if icmp is not None:
            v6 = pkt.version == 6
            raw = pkt.payload
            if len(raw) >= 8 and ((v6 and icmp.type == 2) or (not v6 and icmp.type == 3 and icmp.code == 4)):
                hop.icmp_nhmtu = struct.unpack_from("!I" if v6 else "!H", raw, 4 if v6 else 6)[0]
            hop.icmpext = icmp_extensions(raw, v6)
        return hop

    def result(self, *, start_ns: int, vp: str | None = None, extra: dict[str, Any] | None = None) -> Trace:
        p = self.plan
        sent = [pr for pr in self.probes if pr.error is None]
        hops = [h for h in (self._hop_record(g) for g in self.got if self.probes[g.pid].error is None) if h]
        extra = dict(extra or {})
        if self.stop_reason not in (TraceStop.HALTED, TraceStop.ERROR, TraceStop.NONE):
            # With squeries > 1, probes past the deciding TTL were already out;
            # the path ends where the trace stopped, as in sequential probing.
            past = [h for h in hops if h.probe_ttl > self.ttl]
            if past:
                extra["replies_past_stop"] = len(past)
                hops = [h for h in hops if h.probe_ttl <= self.ttl]
            hop_count = min(max((pr.ttl for pr in sent), default=0), self.ttl)
        else:
            hop_count = max((pr.ttl for pr in sent), default=0)
        hops.sort(key=lambda h: (h.probe_ttl, h.probe_id))
        if self.dups:
            extra["dups"] = self.dups
        if p.squeries > 1:
            extra["squeries"] = p.squeries
        udp_tcp = not p.is_icmp
        return Trace(
            dst=p.dst, src=self.src, start_ns=start_ns, method=_SCAMPER_NAME[p.method],
            sport=p.sport if udp_tcp else None, dport=p.dport if udp_tcp else None,
            icmp_sum=p.icmp_sum if p.method == "icmp-paris" else None,
            stop_reason=self.stop_reason, stop_data=self.stop_data,
            hop_count=hop_count, attempts=p.attempts, hoplimit=p.hoplimit,
            firsthop=p.firsthop, wait_timeout=_dt.timedelta(microseconds=p.wait_timeout_ns // 1000),
            wait_probe=_dt.timedelta(microseconds=p.wait_probe_ns // 1000), tos=p.tos,
            probe_size=p.size, probe_count=len(sent), userid=p.userid, hop_records=hops,
            confidence=p.confidence, gaplimit=p.gaplimit, loops=p.loops, all_attempts=p.all_attempts,
            vp=vp or None, extra=extra)


# ---------------------------------------------------------------------------
# The I/O driver
# ---------------------------------------------------------------------------


def _now() -> int:
    return time.time_ns()


async def trace(io: PacketSession, dst: Any, *, method: str = "udp-paris", attempts: int = 2,
                all_attempts: bool = False, firsthop: int = 1, hoplimit: int = 0, gaplimit: int = 5,
                loops: int = 1, wait_timeout: Any = 5.0, wait_probe: Any = 0.0, sport: int | None = None,
                dport: int | None = None, icmp_id: int | None = None, icmp_sum: int | None = None,
                size: int | None = None, payload: bytes | str | None = None, src: Any = None, tos: int = 0,
                userid: int = 0, squeries: int = 1, confidence: int = 0,
                halt: asyncio.Event | None = None) -> Trace:
    """Traceroute toward ``dst`` from the endpoint behind ``io``; returns a ``Trace``.

    Parameters are scamper's ``do_trace`` (times as float seconds or
    ``timedelta``); see ``plan_trace``.  ``halt``: set it to stop early and
    get the partial result with stop reason ``halted`` (cancelling the
    coroutine instead raises ``CancelledError`` after closing the sockets).
    """
    plan = plan_trace(dst, method=method, attempts=attempts, all_attempts=all_attempts, firsthop=firsthop,
                      hoplimit=hoplimit, gaplimit=gaplimit, loops=loops, wait_timeout=wait_timeout,
                      wait_probe=wait_probe, sport=sport, dport=dport, icmp_id=icmp_id, icmp_sum=icmp_sum,
                      size=size, payload=payload, src=src, tos=tos, userid=userid, squeries=squeries,
                      confidence=confidence)
    source = plan.src or await route_source(io, plan.family, plan.dst, plan.dport or 33435)
    run = TraceProbing(plan, source)
    return await with_probe_sockets(io, lambda socks, stream: _drive(io, plan, run, socks, halt, stream),
                                    family=plan.family, proto=plan.proto, src=run.src, filters=run.filters(),
                                    tos=plan.tos)


async def _drive(io: PacketSession, plan: TracePlan, run: TraceProbing, socks: ProbeSockets,
                 halt: asyncio.Event | None, stream: Any) -> Trace:
    off = await io.clock_offset(samples=3)
    offset, ctl_rtt = off.offset_ns, off.rtt_ns
    lead = queue_lead_ns(ctl_rtt)  # the endpoint's scheduler sets send times
    start = _now() + offset + lead
    tags: dict[int, int] = {}  # tag -> pid
    tag_base = random.SystemRandom().randrange(1, 2**31)
    extra: dict[str, Any] = {}
    last_at: int | None = None
    watch = HaltWatch(halt)
    barriers: set[int] = set()  # probes whose deadline barrier has been run

    def handle(note: Any) -> None:
        kind = note.kind
        if kind == "ndata" and note.sock in socks.capture:
            pkt = P.parse_packet(note.data)
            if pkt is not None:
                # run.received refuses a reply later than its probe's wait
                run.received(pkt, note.time_ns, note.ts_source)
        elif kind == "ntag" and note.sock == socks.send and note.tag in tags:
            pid = tags[note.tag]
            if note.error:
                extra["error"] = f"probe {pid} (ttl {run.probes[pid].ttl}): {note.error}"
                run.sent(pid, None, None, error=note.error)
            else:
                run.sent(pid, note.time_ns, note.ts_source)
        elif kind == "ndrop":
            extra["ndrop"] = extra.get("ndrop", 0) + note.count

    async def send_probe(at: int) -> None:
        nonlocal last_at
        pid, ttl, data = run.probe(at)
        tag = tag_base + pid
        tags[tag] = pid
        last_at = at
        try:
            if plan.family == 4:
                await io.nsend(socks.send, data, dst=plan.dst, at=at, tag=tag)
            else:
                await io.nsend(socks.send, data, dst=plan.dst, at=at, tag=tag, ttl=ttl)
        except EndpointError as exc:
            extra["error"] = f"probe {pid} (ttl {ttl}): {exc}"
            run.sent(pid, None, None, error=str(exc))

    async def expire_due(local: int) -> int | None:
        """Give up on probes whose wait is over; the next deadline (local
        clock) otherwise, None when nothing is out."""
        nearest = None
        for pid in run.inflight_pids():
            pr = run.probes[pid]
            end = run.deadline_ns(pid) - offset
            if pr.tx_ns is None and local < end + _TX_GRACE_NS:
                # The wait runs from the kernel's transmit time: hold on
                # until the stamp of a probe the endpoint sent late arrives.
                end = max(end, local + 20_000_000)
            if local < end:
                nearest = end if nearest is None else min(nearest, end)
                continue
            # Replies the kernel received in time may still be on their way
            # (a loaded client or endpoint): one control round trip lets the
            # endpoint flush them, then take what is queued and give up.
            if pid not in barriers:
                barriers.add(pid)
                await io.ping()
            while (note := stream.poll()) is not None:
                handle(note)
            run.expired(pid)
            return local  # the state moved on: look again at once
        return nearest

    try:
        while not run.done:
            if halt is not None and halt.is_set():
                run.halt()
                run.unsend_after(_now() + offset)
                break
            local = _now()
            wake: int | None = None
            if run.wants_probe():
                at = max(local + offset + lead, start)
                if last_at is not None:
                    at = max(at, last_at + plan.wait_probe_ns)
                if at - lead <= local + offset:
                    await send_probe(at)
                    continue
                wake = at - lead - offset
            deadline = await expire_due(local)
            if deadline == local:
                continue
            if deadline is not None:
                wake = deadline if wake is None else min(wake, deadline)
            if wake is None:  # nothing to send and nothing out: cannot happen while not done
                raise AssertionError("trace stalled with no probe out")
            note = stream.poll()
            if note is None:
                note = await watch.next(stream, max(0.0, (wake - local) / _NS))
                if note is None or note is HALTED:
                    continue
            handle(note)
        # Every probe's kernel transmit stamp (answered ones need it for the RTT).
        until = _now() + _TX_GRACE_NS
        while run.missing_tx() and _now() < until:
            note = stream.poll() or await stream.next(max(0.0, (until - _now()) / _NS))
            if note is None:
                break
            handle(note)
    except ConnectionLost as exc:
        extra["error"] = str(exc)
        run._stop(TraceStop.ERROR)
    finally:
        watch.close()
    return run.result(start_ns=start, vp=io.endpoint_name, extra=extra)
