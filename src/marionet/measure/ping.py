"""Ping, written once over the packet interface, run in every placement.

``ping(io, dst, …)`` takes any ``PacketSession`` — to an in-process
endpoint (native), a session the endpoint opened for itself (endpoint
placement, a primitive), or a remote endpoint over the wire (remote) — and
returns a ``marionet.results.Ping`` with scamper's fields and semantics.

Why it is shaped this way:

* **Validation first** (``plan_ping``): every bad parameter raises
  ``ValueError`` before a socket is opened, so a mistake never puts a packet
  on the network.
* **The endpoint stamps both ends.** Probes are queued with ``at=`` (endpoint
  clock) a little ahead of their slot and tagged, so the transmit time is the
  kernel's (``ntag``); replies come from ``ncap`` on raw sockets, stamped by
  the kernel on receipt (``ndata``). The RTT is therefore independent of the
  placement's control-path latency — which is what makes placements
  comparable.
* **Sans-I/O core** (``PingProbing``): building probes, matching replies and
  assembling the result know nothing of sockets, so they are unit-testable
  and the same for every placement; ``ping`` is the thin I/O driver.
* **Raw sockets for every method.** IPv4 probes carry our own header
  (``hdrincl``), so the probe's IP-ID is known and quoted headers can be
  matched by it. IPv6 probes go through a raw socket of the probe's protocol
  (the endpoint captures IPv6 on a packet socket, so one capture sees ICMPv6,
  UDP and TCP replies). For tcp-syn the endpoint's own kernel answers a
  SYN-ACK with a RST, because no socket owns the port: harmless, and the
  capture filter only admits packets *from* the target's port, so that RST is
  never mistaken for a reply.
* **Every scamper method that needs no datalink**: icmp-echo, icmp-time
  (IPv4 only: ICMPv6 has no timestamp message), udp, udp-dport, udp-sport,
  tcp-syn, tcp-syn-sport, tcp-ack, tcp-ack-sport, tcp-synack, tcp-rst, with
  scamper's idea of a reply (echo / timestamp reply; any TCP answer; a UDP
  answer or a port unreachable from the target). Each TCP probe carries its
  own number in the field the target echoes (SYN: seq + attempt, answered
  as ack − 1; ACK / SYN-ACK: ack + attempt, answered as the RST's seq), so a
  reply names its probe without scamper's guess by IP-ID.
* **IPv4 options** (``ip_rr``, ``ip_ts``) go into our own header; as in
  scamper, a reply's RR / timestamps are read from an echo or timestamp
  reply's header, or from the probe quoted in an ICMP error (the forward
  path), and not from TCP or UDP answers.

A ``PacketSession`` has one notification stream: a running ping consumes it
and ignores notifications for sockets it does not own. Run concurrent
measurements on separate sessions (the endpoint placement gives each task
its own in-process session).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import random
import struct
import time
from dataclasses import dataclass
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P
from marionet.measure.params import NS as _NS
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import address as _address
from marionet.measure.params import boolean as _bool
from marionet.measure.params import integer as _int
from marionet.measure.params import method as check_method
from marionet.measure.params import payload as check_payload
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import shown
from marionet.measure.params import target as check_target
from marionet.measure.rawio import (HALTED, HaltWatch, ProbeSockets, queue_lead_ns, route_source,
                                    with_probe_sockets)
from marionet.results import Ping, PingReply, PingStop, PingTsReply, PingV4TS

__all__ = ["ping", "plan_ping", "PingPlan", "PingProbing", "SUPPORTED_METHODS"]

SUPPORTED_METHODS = ("icmp-echo", "icmp-time", "udp", "udp-dport", "udp-sport", "tcp-syn",
                     "tcp-syn-sport", "tcp-ack", "tcp-ack-sport", "tcp-synack", "tcp-rst")
_KNOWN_METHODS = SUPPORTED_METHODS
_ICMP_METHODS = ("icmp-echo", "icmp-time")
_VARY_SPORT = ("udp-sport", "tcp-syn-sport", "tcp-ack-sport")
#: TCP probes whose RST answer echoes our ACK number as its sequence number
#: (RFC 793: a RST to a segment with ACK set takes seq = SEG.ACK).
_TCP_ACKING = ("tcp-ack", "tcp-ack-sport", "tcp-synack")
_TCP_FLAGS = {"tcp-syn": P.TCP_SYN, "tcp-syn-sport": P.TCP_SYN, "tcp-ack": P.TCP_ACK,
              "tcp-ack-sport": P.TCP_ACK, "tcp-synack": P.TCP_SYN | P.TCP_ACK, "tcp-rst": P.TCP_RST}


def _kind(method: str) -> str:
    """"icmp", "udp" or "tcp": the probe's transport."""
    return "icmp" if method in _ICMP_METHODS else method.split("-")[0]


# scamper's defaults: a 84-byte IPv4 icmp-echo / icmp-time, 40-byte udp / tcp
_DEFAULT_PAYLOAD = {"icmp": 56, "udp": 12, "tcp": 0}
_TRANSPORT_HDR = {"icmp": 8, "udp": 8, "tcp": 20}
_ICMP_TIME_STAMPS = 12  # originate, receive, transmit
_PROBE_IPPROTO = {  # family -> transport -> IP protocol of the probe socket
    4: {"icmp": P.IPPROTO_ICMP, "udp": P.IPPROTO_UDP, "tcp": P.IPPROTO_TCP},
    6: {"icmp": P.IPPROTO_ICMPV6, "udp": P.IPPROTO_UDP, "tcp": P.IPPROTO_TCP},
}
_TX_GRACE_NS = 10_000_000_000  # how long past its wait a probe's transmit stamp is awaited
_IP_TS = ("tsonly", "tsandaddr", "tsprespec")


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PingPlan:
    """Validated ping parameters, with scamper's defaults filled in."""

    dst: str
    family: int
    method: str
    attempts: int
    wait_probe_ns: int
    wait_timeout_ns: int
    stop_count: int
    ttl: int
    tos: int
    size: int
    payload: bytes
    payload_given: bool
    src: str | None
    sport: int
    dport: int
    icmp_id: int
    icmp_seq: int
    tcp_seq: int
    userid: int
    tcp_ack: int = 0
    ip_rr: bool = False
    ip_ts: str | None = None  # "tsonly", "tsandaddr" or "tsprespec"
    tsps: tuple[str, ...] = ()  # the prespecified addresses of "tsprespec"

    @property
    def kind(self) -> str:
        return _kind(self.method)

    @property
    def options(self) -> bytes:
        """The IPv4 options every probe carries."""
        return _options(self.ip_rr, self.ip_ts, self.tsps)

    @property
    def header_len(self) -> int:
        return _header_len(self.family, self.method, len(self.options))

    @property
    def flags(self) -> tuple[str, ...]:
        """scamper's ping flags for these options."""
        if self.ip_rr:
            return ("v4rr",)
        return (self.ip_ts,) if self.ip_ts in ("tsonly", "tsandaddr") else ()

    def ports(self, attempt: int) -> tuple[int, int]:
        """(sport, dport) of probe ``attempt``: udp-sport / tcp-*-sport add
        the attempt to the source port, udp-dport to the destination port."""
        if self.method in _VARY_SPORT:
            return self.sport + attempt, self.dport
        if self.method == "udp-dport":
            return self.sport, self.dport + attempt
        return self.sport, self.dport

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this ping, as an endpoint task, could run longer
        than ``max_s``: the last probe leaves ``(attempts - 1) × wait_probe``
        after the first and is waited for ``wait_timeout``."""
        wp, wt = self.wait_probe_ns / _NS, self.wait_timeout_ns / _NS
        task_duration("ping", (self.attempts - 1) * wp + wt,
                      f"(attempts {self.attempts} - 1) × wait_probe {wp:g} s + wait_timeout {wt:g} s", max_s)


def _options(ip_rr: bool, ip_ts: str | None, tsps: tuple[str, ...]) -> bytes:
    """IPv4 options as scamper sends them (RR 40 bytes, tsonly 40,
    tsandaddr 36, prespecified 4 + 8 per address)."""
    if ip_rr:
        return P.ipopt_rr() + b"\0"
    if ip_ts == "tsonly":
        return P.ipopt_ts(P.IPOPT_TS_TSONLY)
    if ip_ts == "tsandaddr":
        return P.ipopt_ts(P.IPOPT_TS_TSANDADDR)
    if ip_ts == "tsprespec":
        return P.ipopt_ts(P.IPOPT_TS_PRESPEC, tsps)
    return b""


def _header_len(family: int, method: str, optlen: int) -> int:
    hdr = (20 + optlen if family == 4 else 40) + _TRANSPORT_HDR[_kind(method)]
    return hdr + (_ICMP_TIME_STAMPS if method == "icmp-time" else 0)


def _ip_options(family: int, method: str, ip_rr: Any, recordroute: Any,
                ip_ts: Any) -> tuple[bool, str | None, tuple[str, ...]]:
    """(record route?, timestamp kind, prespecified addresses), checked."""
    rr = _bool("ip_rr", ip_rr) if ip_rr is not None else None
    alias = _bool("recordroute", recordroute) if recordroute is not None else None
    if rr is not None and alias is not None and rr != alias:
        raise ValueError(f"ip_rr {rr} and recordroute {alias} disagree (recordroute is ip_rr's old name)")
    rr = bool(rr if rr is not None else alias)
    ts: str | None = None
    tsps: tuple[str, ...] = ()
    if ip_ts is not None:
        if not isinstance(ip_ts, str):
            raise ValueError(f"ip_ts must be 'tsonly', 'tsandaddr' or 'tsprespec=ADDR[,ADDR...]', got {shown(ip_ts)}")
        kind, _, addrs = ip_ts.strip().lower().partition("=")
        if kind not in _IP_TS:
            raise ValueError(f"ip_ts {shown(ip_ts)} is not 'tsonly', 'tsandaddr' or 'tsprespec=ADDR[,ADDR...]'")
        if kind == "tsprespec":
            parts = [a.strip() for a in addrs.split(",") if a.strip()]
            if not 1 <= len(parts) <= 4:
                raise ValueError(f"ip_ts tsprespec takes 1 to 4 IPv4 addresses (tsprespec=A,B,C,D), got {len(parts)}")
            ips = [_address("ip_ts tsprespec address", a) for a in parts]
            if any(a.version != 4 for a in ips):
                raise ValueError(f"ip_ts tsprespec addresses must be IPv4, got {shown(addrs)}")
            tsps = tuple(str(a) for a in ips)
        elif addrs:
            raise ValueError(f"ip_ts {kind} takes no addresses, got {shown(ip_ts)}")
        ts = kind
    if (rr or ts) and family != 4:
        raise ValueError("ip_rr and ip_ts are IPv4 header options; IPv6 has no record-route or "
                         "timestamp option (scamper refuses them too)")
    if rr and ts:
        raise ValueError("ip_rr and ip_ts cannot be combined: each fills the 40 bytes of IPv4 options")
    return rr, ts, tsps


def plan_ping(dst: Any, *, method: str = "icmp-echo", attempts: int = 4, wait_probe: Any = 1.0,
              wait_timeout: Any = 1.0, stop_count: int | None = None, ttl: int = 64, tos: int = 0,
              size: int | None = None, payload: bytes | str | None = None, src: Any = None,
              sport: int | None = None, dport: int | None = None, icmp_id: int | None = None,
              icmp_seq: int = 0, tcp_seq: int | None = None, tcp_ack: int | None = None,
              ip_rr: bool | None = None, ip_ts: str | None = None, recordroute: bool | None = None,
              userid: int = 0, rng: random.Random | None = None) -> PingPlan:
    """Check every parameter (``ValueError`` with the reason) and fill defaults.

    ``size`` is scamper's: the whole IP packet (default 84 for an IPv4
    icmp-echo: 20 + 8 + 56; IP options add to it). ``payload`` is bytes or
    a hex string; with both, ``size`` must equal headers + payload.
    ``ip_rr`` (alias ``recordroute``) adds a record-route option, ``ip_ts``
    an IP timestamp option: ``"tsonly"``, ``"tsandaddr"`` or
    ``"tsprespec=A[,B,C,D]"`` (scamper's ``-R`` / ``-T``; IPv4 only).
    """
    rng = rng or random.SystemRandom()
    method = check_method("ping", method, SUPPORTED_METHODS, _KNOWN_METHODS)
    d, family, s = check_target(dst, src)
    if method == "icmp-time" and family == 6:
        raise ValueError("icmp-time is the ICMP timestamp request, which exists only in IPv4: "
                         "ICMPv6 has no timestamp message (use icmp-echo for IPv6)")
    kind = _kind(method)
    attempts = _int("attempts", attempts, 1, 65535)  # type: ignore[assignment]
    wp = _seconds("wait_probe", wait_probe, 0.001, 20)
    wt = _seconds("wait_timeout", wait_timeout, 0.001, 255)
    sc = _int("stop_count", stop_count, 0, 65535, optional=True) or 0
    ttl = _int("ttl", ttl, 1, 255)  # type: ignore[assignment]
    tos = _int("tos", tos, 0, 255)  # type: ignore[assignment]
    icmp_seq = _int("icmp_seq", icmp_seq, 0, 65535)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    rr, ts, tsps = _ip_options(family, method, ip_rr, recordroute, ip_ts)
    hdr = _header_len(family, method, len(_options(rr, ts, tsps)))
    payload = check_payload(payload)
    if size is not None:
        size = _int("size", size, 0, 65535)
        if size < hdr:  # type: ignore[operator]
            raise ValueError(f"size {size} is too small: an IPv{family} {method} probe needs at least {hdr} bytes")
        if payload is not None and size != hdr + len(payload):
            raise ValueError(f"size {size} is inconsistent with a {len(payload)}-byte payload "
                             f"(headers {hdr} + payload = {hdr + len(payload)})")
    payload_given = payload is not None
    if payload is None:
        n = size - hdr if size is not None else _DEFAULT_PAYLOAD[kind] - (
            _ICMP_TIME_STAMPS if method == "icmp-time" else 0)
        payload = bytes(n)
    size = hdr + len(payload)
    if size > 65535:
        raise ValueError(f"probe size {size} is too large (at most 65535)")
    if kind == "icmp":
        if sport is not None or dport is not None:
            raise ValueError(f"sport/dport are for udp and tcp methods; use icmp_id for {method}")
        icmp_id = _int("icmp_id", icmp_id, 0, 65535, optional=True)
        if icmp_id is None:
            icmp_id = rng.randrange(1, 0x10000)
        sp, dp = 0, 0
    else:
        if icmp_id is not None:
            raise ValueError(f"icmp_id is for icmp methods, not {method}")
        span = attempts - 1  # type: ignore[operator]
        sp_hi = 65535 - span if method in _VARY_SPORT else 65535
        dp_hi = 65535 - span if method == "udp-dport" else 65535
        sp = _int("sport", sport, 1, 65535, optional=True)
        dp = _int("dport", dport, 1, 65535, optional=True)
        if sp is None:
            lo = min(0x8000, max(1, sp_hi))
            sp = rng.randrange(lo, max(lo, sp_hi) + 1)  # scamper's range for a chosen sport
        if dp is None:
            dp = 33435
        if sp > sp_hi:
            raise ValueError(f"sport {sp} is too high for {attempts} {method} probes: the last would use "
                             f"source port {sp + span} (at most 65535)")
        if dp > dp_hi:
            raise ValueError(f"dport {dp} is too high for {attempts} udp-dport probes: the last would use "
                             f"destination port {dp + span} (at most 65535)")
        icmp_id = 0
    if kind == "tcp":
        tseq = _int("tcp_seq", tcp_seq, 0, 2**32 - 1, optional=True)
        if tseq is None:
            tseq = rng.randrange(0, 2**32)
        if tcp_ack is not None and method not in _TCP_ACKING:
            raise ValueError(f"tcp_ack is for probes with the ACK flag ({', '.join(_TCP_ACKING)}), not {method}")
        tack = _int("tcp_ack", tcp_ack, 0, 2**32 - 1, optional=True)
        if tack is None:
            tack = rng.randrange(1, 2**32) if method in _TCP_ACKING else 0
    else:
        if tcp_seq is not None or tcp_ack is not None:
            raise ValueError(f"tcp_seq/tcp_ack are for tcp methods, not {method}")
        tseq, tack = 0, 0
    return PingPlan(dst=d, family=family, method=method, attempts=attempts, wait_probe_ns=wp,
                    wait_timeout_ns=wt, stop_count=sc, ttl=ttl, tos=tos, size=size, payload=payload,
                    payload_given=payload_given, src=s, sport=sp, dport=dp,  # type: ignore[arg-type]
                    icmp_id=icmp_id, icmp_seq=icmp_seq, tcp_seq=tseq, userid=userid,
                    tcp_ack=tack, ip_rr=rr, ip_ts=ts, tsps=tsps)


# ---------------------------------------------------------------------------
# Sans-I/O core: probes, matching, result
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Probe:
    attempt: int
    ipid: int | None
    at_ns: int
    tx_ns: int | None = None
    tx_source: str | None = None
    error: str | None = None


@dataclass(slots=True)
class _Got:
    attempt: int
    pkt: P.IPPacket
    rx_ns: int
    rx_source: str | None
    from_target: bool


def _range(field: str, lo: int, hi: int) -> str:
    """A BPF test that ``field`` (a tcpdump load) is within lo..hi."""
    return f"{field} = {lo}" if lo == hi else f"({field} >= {lo} and {field} <= {hi})"


def _ms_of_day(t_ns: int) -> int:
    """RFC 792 timestamp: ms since midnight UTC."""
    return (t_ns // 1_000_000) % 86_400_000


class PingProbing:
    """Probe bytes and reply matching for one ping; no I/O.

    The driver calls ``probe(i)`` to get attempt ``i``'s packet (IPv4: with
    our IP header), ``sent(i, …)`` with the kernel's transmit stamp, and
    ``received(pkt, …)`` with each captured packet; ``result()`` builds the
    ``Ping``. Times are ns on the endpoint's clock.

    Which probe a reply answers (scamper counts a reply once per probe):
    ICMP echo / timestamp replies by their sequence number; ICMP errors by
    the quoted IP-ID (IPv4) or the quoted header's varying field; TCP
    replies by what the target echoes — a SYN's sequence number comes back
    + 1 as the ACK number, an ACK's acknowledgement number comes back as
    the RST's sequence number (so each probe carries its own: base +
    attempt) — or by the varied port; UDP replies by the varied port.
    """

    def __init__(self, plan: PingPlan, src: str, *, ipid_base: int | None = None) -> None:
        self.plan = plan
        self.src = src
        self.probes: list[_Probe] = []
        self.got: list[_Got] = []
        self.answered: set[int] = set()
        self._by_ipid: dict[int, int] = {}
        base = ipid_base if ipid_base is not None else random.SystemRandom().randrange(1, 0x10000)
        self._ipid_base = base
        self._options = plan.options
        n = plan.attempts - 1
        self._sports = (plan.sport, plan.sport + n if plan.method in _VARY_SPORT else plan.sport)
        self._dports = (plan.dport, plan.dport + n if plan.method == "udp-dport" else plan.dport)

    # -- capture filters ------------------------------------------------------
    def filters(self) -> dict[str, str]:
        """tcpdump expressions per capture socket: "probe" (the socket the
        probes leave from) and, for IPv4 udp/tcp, "icmp" (ICMP errors).
        IPv4 quotes are located by their own header length, since probes
        with IP options quote a longer header."""
        p = self.plan
        (s_lo, s_hi), (d_lo, d_hi) = self._sports, self._dports
        if p.family == 4:
            q = "(8 + ((icmp[8] & 0x0f) << 2))"  # offset of the quoted transport header
            err = ("(icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12)"
                   " and (icmp[8] & 0xf0) = 0x40")
            if p.kind == "icmp":
                rep, req = (0, 8) if p.method == "icmp-echo" else (14, 13)
                return {"probe": f"icmp and ((icmp[0] = {rep} and icmp[4:2] = {p.icmp_id} and src host {p.dst}) or "
                                 f"({err} and icmp[17] = 1 and icmp[{q}] = {req} "
                                 f"and icmp[{q} + 4:2] = {p.icmp_id}))"}
            pnum = P.IPPROTO_UDP if p.kind == "udp" else P.IPPROTO_TCP
            sport = f"port {s_lo}" if s_lo == s_hi else f"portrange {s_lo}-{s_hi}"
            dport = f"port {d_lo}" if d_lo == d_hi else f"portrange {d_lo}-{d_hi}"
            return {"probe": f"{p.kind} and src host {p.dst} and src {dport} and dst {sport}",
                    "icmp": f"icmp and {err} and icmp[17] = {pnum} and {_range(f'icmp[{q}:2]', s_lo, s_hi)} "
                            f"and {_range(f'icmp[{q} + 2:2]', d_lo, d_hi)}"}
        err6 = "ip6[40] >= 1 and ip6[40] <= 4"
        if p.kind == "icmp":
            return {"probe": f"ip6 and ip6[6] = 58 and ((ip6[40] = 129 and ip6[44:2] = {p.icmp_id} "
                             f"and ip6 src {p.dst}) or "
                             f"({err6} and ip6[54] = 58 and ip6[88] = 128 and ip6[92:2] = {p.icmp_id}))"}
        pnum = P.IPPROTO_UDP if p.kind == "udp" else P.IPPROTO_TCP
        return {"probe": f"(ip6 and ip6[6] = {pnum} and ip6 src {p.dst} and {_range('ip6[40:2]', d_lo, d_hi)} "
                         f"and {_range('ip6[42:2]', s_lo, s_hi)}) or (ip6 and ip6[6] = 58 and {err6} "
                         f"and ip6[54] = {pnum} and {_range('ip6[88:2]', s_lo, s_hi)} "
                         f"and {_range('ip6[90:2]', d_lo, d_hi)})"}

    # -- probes ---------------------------------------------------------------
    def _payload(self, attempt: int) -> bytes:
        p = self.plan
        if p.method == "udp" and not p.payload_given and len(p.payload) >= 2:
            # Make each UDP probe distinct, so an IPv6 quote (no IP-ID) says which it was.
            return attempt.to_bytes(2, "big") + p.payload[2:]
        return p.payload

    def _tcp_numbers(self, attempt: int) -> tuple[int, int]:
        """(seq, ack) of TCP probe ``attempt``: the number the target echoes
        carries the attempt."""
        p = self.plan
        if p.method in _TCP_ACKING:
            return p.tcp_seq, (p.tcp_ack + attempt) % 2**32
        return (p.tcp_seq + attempt) % 2**32, 0

    def probe(self, attempt: int, at_ns: int) -> bytes:
        """The bytes to send for ``attempt``, recorded as scheduled at ``at_ns``."""
        p = self.plan
        v6 = p.family == 6
        payload = self._payload(attempt)
        sport, dport = p.ports(attempt)
        if p.method == "icmp-echo":
            body = P.icmp_echo(p.icmp_id, p.icmp_seq + attempt, payload, src=self.src, dst=p.dst, v6=v6)
            proto = P.IPPROTO_ICMPV6 if v6 else P.IPPROTO_ICMP
        elif p.method == "icmp-time":
            body = P.icmp_timestamp(p.icmp_id, p.icmp_seq + attempt, _ms_of_day(at_ns), payload)
            proto = P.IPPROTO_ICMP
        elif p.kind == "udp":
            body = P.udp_segment(self.src, p.dst, sport, dport, payload)
            proto = P.IPPROTO_UDP
        else:
            seq, ack = self._tcp_numbers(attempt)
            body = P.tcp_segment(self.src, p.dst, sport, dport, seq=seq, ack=ack,
                                 flags=_TCP_FLAGS[p.method], payload=payload)
            proto = P.IPPROTO_TCP
        ipid = None
        if not v6:
            ipid = (self._ipid_base + attempt) % 0xFFFF + 1  # never 0: the kernel would replace it
            self._by_ipid[ipid] = attempt
            body = P.ipv4_header(self.src, p.dst, proto, len(body), ttl=p.ttl, tos=p.tos, ipid=ipid,
                                 options=self._options) + body
        self.probes.append(_Probe(attempt, ipid, at_ns))
        return body

    def sent(self, attempt: int, tx_ns: int | None, ts_source: str | None, error: str | None = None) -> None:
        pr = self.probes[attempt]
        pr.tx_ns, pr.tx_source, pr.error = tx_ns, ts_source, error

    # -- replies --------------------------------------------------------------
    def _earliest_unanswered(self, rx_ns: int) -> int | None:
        for pr in self.probes:
            if pr.attempt not in self.answered and (pr.tx_ns or pr.at_ns) <= rx_ns:
                return pr.attempt
        return None

    def _valid(self, attempt: int | None) -> int | None:
        return attempt if attempt is not None and 0 <= attempt < len(self.probes) else None

    def _ours(self, sport: int, dport: int) -> bool:
        """Do (sport, dport) of a probe-direction header fall in our ranges?"""
        (s_lo, s_hi), (d_lo, d_hi) = self._sports, self._dports
        return s_lo <= sport <= s_hi and d_lo <= dport <= d_hi

    def _by_ports(self, sport: int, dport: int) -> int | None:
        """The attempt a varied port names (None for fixed-port methods)."""
        p = self.plan
        if p.method in _VARY_SPORT:
            return sport - p.sport
        if p.method == "udp-dport":
            return dport - p.dport
        return None

    def _direct(self, seg: P.Tcp | P.Udp, rx_ns: int) -> tuple[bool, int | None]:
        """(ours, attempt) for a TCP/UDP packet from the target."""
        p = self.plan
        if not self._ours(seg.dport, seg.sport):  # a reply swaps the ports
            return False, None
        attempt = self._by_ports(seg.dport, seg.sport)
        if attempt is None and isinstance(seg, P.Tcp):
            if p.method in _TCP_ACKING and seg.flags & P.TCP_RST and not seg.flags & P.TCP_ACK:
                attempt = (seg.seq - p.tcp_ack) % 2**32
            elif p.method not in _TCP_ACKING and seg.flags & P.TCP_ACK:
                attempt = (seg.ack - 1 - p.tcp_seq) % 2**32
        attempt = self._valid(attempt)
        return True, attempt if attempt is not None else self._earliest_unanswered(rx_ns)

    def _quoted(self, q: P.IPPacket, rx_ns: int) -> int | None:
        """The attempt an ICMP error's quoted probe was, or None if not ours."""
        p = self.plan
        if p.family == 4 and q.ipid in self._by_ipid:
            return self._by_ipid[q.ipid]  # type: ignore[index]
        if p.kind == "icmp":
            qi = q.icmp
            if qi is not None and qi.ident == p.icmp_id and qi.seq is not None:
                return self._valid((qi.seq - p.icmp_seq) % 0x10000)
            return None
        seg = q.tcp if p.kind == "tcp" else q.udp
        if seg is None or not self._ours(seg.sport, seg.dport):
            return None
        attempt = self._by_ports(seg.sport, seg.dport)
        if attempt is not None:
            return self._valid(attempt)
        if isinstance(seg, P.Tcp):
            if p.method in _TCP_ACKING:
                return self._valid((seg.ack - p.tcp_ack) % 2**32) if seg.ack else self._earliest_unanswered(rx_ns)
            return self._valid((seg.seq - p.tcp_seq) % 2**32)
        if not p.payload_given and len(seg.payload) >= 2:
            return self._valid(int.from_bytes(seg.payload[:2], "big"))
        return self._earliest_unanswered(rx_ns)

    def _match(self, pkt: P.IPPacket, rx_ns: int) -> tuple[int | None, bool]:
        """(attempt, from_target) for a captured packet, attempt None if not ours."""
        p = self.plan
        v6 = p.family == 6
        icmp = pkt.icmp
        if p.kind == "icmp":
            rep = (129 if v6 else 0) if p.method == "icmp-echo" else 14
            # From dst only: concurrent pings may share an ICMP id (scamper
            # too tells its pings apart by destination).
            if icmp is not None and icmp.type == rep and icmp.ident == p.icmp_id and pkt.src == p.dst:
                return self._valid((icmp.seq - p.icmp_seq) % 0x10000), True  # type: ignore[operator]
        elif pkt.src == p.dst:
            seg = pkt.udp if p.kind == "udp" else pkt.tcp
            if seg is not None:
                ours, attempt = self._direct(seg, rx_ns)
                if ours:
                    return attempt, True
        # An ICMP error quoting one of our probes.
        if icmp is None or icmp.quote is None or icmp.quote.dst != p.dst:
            return None, False
        if icmp.type not in (P.ICMP6_ERRORS if v6 else P.ICMP4_ERRORS):
            return None, False
        attempt = self._quoted(icmp.quote, rx_ns)
        from_target = (p.kind == "udp" and pkt.src == p.dst and
                       icmp.type == (1 if v6 else 3) and icmp.code == (4 if v6 else 3))
        return attempt, from_target

    def received(self, pkt: P.IPPacket, rx_ns: int, ts_source: str | None = "kernel") -> bool:
        """Record a captured packet; True if it was a reply to one of our probes."""
        attempt, from_target = self._match(pkt, rx_ns)
        if attempt is None:
            return False
        self.got.append(_Got(attempt, pkt, rx_ns, ts_source, from_target))
        if from_target:
            self.answered.add(attempt)
        return True

    @property
    def nanswered(self) -> int:
        return len(self.answered)

    def all_answered(self) -> bool:
        """Every probe queued so far (or ``stop_count`` of them) answered, and
        every answered probe's transmit stamp in."""
        enough = bool(self.plan.stop_count) and len(self.answered) >= self.plan.stop_count
        if not enough and len(self.answered) < self.plan.attempts:
            return False
        return all(self.probes[a].tx_ns is not None for a in self.answered)

    def unsend_after(self, t_ns: int) -> None:
        """Probes scheduled after ``t_ns`` that never reported a send (a halt
        closed their socket first) do not count as sent."""
        for pr in self.probes:
            if pr.tx_ns is None and pr.error is None and pr.at_ns > t_ns:
                pr.error = "not sent (halted)"

    # -- result ---------------------------------------------------------------
    def _ip_options(self, pkt: P.IPPacket) -> tuple[tuple[str, ...] | None, PingV4TS | None]:
        """(RR, TS) of a reply as scamper takes them: from an echo or
        timestamp reply's own header, from the quoted probe of an ICMP
        error (the forward path up to the router that answered); TCP and
        UDP replies carry none."""
        p = self.plan
        icmp = pkt.icmp
        if pkt.version != 4 or icmp is None or not (p.ip_rr or p.ip_ts):
            return None, None
        if icmp.type in (0, 14):
            opts = pkt.options
        elif icmp.quote is not None:
            opts = icmp.quote.options
        else:
            return None, None
        rr = P.parse_rr(opts) if p.ip_rr else None
        ts = P.parse_ts(opts) if p.ip_ts else None
        return (tuple(rr) if rr else None,
                PingV4TS(tuple(ts[0]), None if ts[1] is None else tuple(ts[1])) if ts is not None else None)

    def _reply(self, g: _Got) -> PingReply | None:
        pr = self.probes[g.attempt]
        tx = pr.tx_ns if pr.tx_ns is not None else pr.at_ns
        src = pr.tx_source if pr.tx_ns is not None else "user"
        pkt = g.pkt
        icmp, tcp = pkt.icmp, pkt.tcp
        proto = "icmp" if icmp is not None else ("tcp" if tcp is not None else "udp")
        rr, ts = self._ip_options(pkt)
        tsreply = None
        if icmp is not None and pkt.version == 4 and icmp.type == 14 and len(icmp.data) >= 12:
            tsreply = PingTsReply(*struct.unpack_from("!III", icmp.data))
        return PingReply(
            src=pkt.src, attempt=g.attempt, tx_ns=tx, rx_ns=g.rx_ns, probe_ipid=pr.ipid,
            reply_ipid=pkt.ipid if pkt.version == 4 else None, reply_ttl=pkt.ttl, reply_tos=pkt.tos,
            reply_size=pkt.size, reply_proto=proto,
            icmp_type=icmp.type if icmp is not None else None,
            icmp_code=icmp.code if icmp is not None else None,
            tcp_flags=tcp.flags if tcp is not None else None,
            v4rr=rr, v4ts=ts, tsreply=tsreply,
            tx_ts_source=src if src in ("kernel", "user") else None,
            rx_ts_source=g.rx_source if g.rx_source in ("kernel", "user") else None)

    def result(self, *, start_ns: int, stop_reason: PingStop, vp: str | None = None,
               extra: dict[str, Any] | None = None) -> Ping:
        p = self.plan
        sent = [pr for pr in self.probes if pr.error is None]
        replies = [r for r in (self._reply(g) for g in self.got if self.probes[g.attempt].error is None) if r]
        icmp, tcp = p.kind == "icmp", p.kind == "tcp"
        return Ping(
            dst=p.dst, src=self.src, start_ns=start_ns, method=p.method, ping_sent=len(sent),
            probe_size=p.size, ttl=p.ttl, tos=p.tos,
            wait_probe=_dt.timedelta(microseconds=p.wait_probe_ns // 1000),
            wait_timeout=_dt.timedelta(microseconds=p.wait_timeout_ns // 1000),
            sport=None if icmp else p.sport, dport=None if icmp else p.dport,
            icmp_id=p.icmp_id if icmp else None,
            tcp_seq=p.tcp_seq if tcp else None, tcp_ack=p.tcp_ack if tcp else None,
            userid=p.userid, stop_reason=stop_reason, replies=replies, flags=p.flags,
            probe_tsps=p.tsps, vp=vp or None, extra=dict(extra or {}))


# ---------------------------------------------------------------------------
# The I/O driver
# ---------------------------------------------------------------------------


def _now() -> int:
    return time.time_ns()


async def ping(io: PacketSession, dst: Any, *, method: str = "icmp-echo", attempts: int = 4,
               wait_probe: Any = 1.0, wait_timeout: Any = 1.0, stop_count: int | None = None,
               ttl: int = 64, tos: int = 0, size: int | None = None, payload: bytes | str | None = None,
               src: Any = None, sport: int | None = None, dport: int | None = None,
               icmp_id: int | None = None, icmp_seq: int = 0, tcp_seq: int | None = None,
               tcp_ack: int | None = None, ip_rr: bool | None = None, ip_ts: str | None = None,
               recordroute: bool | None = None, userid: int = 0,
               halt: asyncio.Event | None = None) -> Ping:
    """Ping ``dst`` from the endpoint behind ``io``; returns a ``Ping``.

    Parameters are scamper's ``do_ping`` (times as float seconds or
    ``timedelta``). ``halt``: set it to stop early and get the partial result
    with stop reason ``halted`` (cancelling the coroutine instead raises
    ``CancelledError`` as usual, after closing the sockets).
    """
    plan = plan_ping(dst, method=method, attempts=attempts, wait_probe=wait_probe,
                     wait_timeout=wait_timeout, stop_count=stop_count, ttl=ttl, tos=tos, size=size,
                     payload=payload, src=src, sport=sport, dport=dport, icmp_id=icmp_id,
                     icmp_seq=icmp_seq, tcp_seq=tcp_seq, tcp_ack=tcp_ack, ip_rr=ip_rr, ip_ts=ip_ts,
                     recordroute=recordroute, userid=userid)
    source = plan.src or await route_source(io, plan.family, plan.dst, plan.dport or 33435)
    run = PingProbing(plan, source)
    return await with_probe_sockets(io, lambda socks, stream: _drive(io, plan, run, socks, halt, stream),
                                    family=plan.family, proto=_PROBE_IPPROTO[plan.family][plan.kind],
                                    src=run.src, filters=run.filters(), ttl=plan.ttl, tos=plan.tos)


async def _drive(io: PacketSession, plan: PingPlan, run: PingProbing, socks: ProbeSockets,
                 halt: asyncio.Event | None, stream: Any) -> Ping:
    off = await io.clock_offset(samples=3)
    offset, ctl_rtt = off.offset_ns, off.rtt_ns
    lead = queue_lead_ns(ctl_rtt)  # the endpoint's scheduler sets send times
    start = _now() + offset + lead
    tags: dict[int, int] = {}  # tag -> attempt
    tag_base = random.SystemRandom().randrange(1, 2**31)
    stop = PingStop.DONE
    extra: dict[str, Any] = {}
    nxt = 0  # next attempt to queue
    watch = HaltWatch(halt)
    deadline_ep: int | None = None  # endpoint-clock end of the wait, once reached
    try:
        while True:
            if halt is not None and halt.is_set():
                stop = PingStop.HALTED
                run.unsend_after(_now() + offset)
                break
            local = _now()
            note = None
            # Queue every probe whose slot is within ``lead``.
            if nxt < plan.attempts and (not plan.stop_count or run.nanswered < plan.stop_count):
                at = start + nxt * plan.wait_probe_ns
                if local + offset >= at - lead:
                    data = run.probe(nxt, at)
                    tag = tag_base + nxt
                    tags[tag] = nxt
                    try:
                        await io.nsend(socks.send, data, dst=plan.dst, at=at, tag=tag)
                    except EndpointError as exc:
                        run.sent(nxt, None, None, error=str(exc))
                        extra["error"] = f"probe {nxt}: {exc}"
                        stop = PingStop.ERROR
                        break
                    nxt += 1
                    continue
            # Done? (every answered probe also needs its kernel transmit stamp)
            stopped = bool(plan.stop_count) and run.nanswered >= plan.stop_count
            if (stopped or nxt >= plan.attempts) and run.all_answered():
                break
            if nxt >= plan.attempts or stopped:
                last = run.probes[-1]
                end = (last.tx_ns or last.at_ns) + plan.wait_timeout_ns - offset
                if last.tx_ns is None and last.error is None and local < end + _TX_GRACE_NS:
                    # The wait runs from the kernel's transmit time: a probe
                    # the endpoint sent late (it was busy) still gets its
                    # full wait, so hold on until its stamp arrives.
                    end = max(end, local + 20_000_000)  # re-check at least every 20 ms
                if local >= end:
                    # Our loop may have run late (a loaded client or endpoint):
                    # replies the kernel received in time may still be on
                    # their way to us. One control round trip lets the
                    # endpoint flush them; then take what is queued and stop.
                    if deadline_ep is None:
                        deadline_ep = end + offset
                        try:
                            await io.ping()
                        except ConnectionLost:
                            pass
                    note = stream.poll()
                    if note is None:
                        break
                wake = end
            else:
                wake = start + nxt * plan.wait_probe_ns - lead - offset
            if note is None:
                note = stream.poll()
            if note is None:
                note = await watch.next(stream, max(0.0, (wake - local) / _NS))
                if note is None or note is HALTED:
                    continue
            kind = note.kind
            if kind == "ndata" and note.sock in socks.capture:
                if deadline_ep is not None and note.time_ns > deadline_ep:
                    continue  # arrived after the wait: not a reply, as in scamper
                pkt = P.parse_packet(note.data)
                if pkt is not None:
                    run.received(pkt, note.time_ns, note.ts_source)
            elif kind == "ntag" and note.sock == socks.send and note.tag in tags:
                attempt = tags[note.tag]
                if note.error:
                    run.sent(attempt, None, None, error=note.error)
                    extra["error"] = f"probe {attempt}: {note.error}"
                    stop = PingStop.ERROR
                    break
                run.sent(attempt, note.time_ns, note.ts_source)
            elif kind == "ndrop":
                extra["ndrop"] = extra.get("ndrop", 0) + note.count
    except ConnectionLost as exc:
        extra["error"] = str(exc)
        stop = PingStop.ERROR
    finally:
        watch.close()
    return run.result(start_ns=start, stop_reason=stop, vp=io.endpoint_name, extra=extra)
