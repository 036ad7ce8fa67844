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

A ``PacketSession`` has one notification stream: a running ping consumes it
and ignores notifications for sockets it does not own. Run concurrent
measurements on separate sessions (the endpoint placement gives each task
its own in-process session).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import random
import time
from dataclasses import dataclass
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P
from marionet.measure.params import NS as _NS
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import method as check_method
from marionet.measure.params import payload as check_payload
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import target as check_target
from marionet.measure.rawio import (ProbeSockets, close_sockets, open_probe_sockets, queue_lead_ns,
                                    route_source)
from marionet.results import Ping, PingReply, PingStop

__all__ = ["ping", "plan_ping", "PingPlan", "PingProbing", "SUPPORTED_METHODS"]

SUPPORTED_METHODS = ("icmp-echo", "udp", "tcp-syn")
_KNOWN_METHODS = ("icmp-echo", "icmp-time", "udp", "udp-dport", "udp-sport", "tcp-syn",
                  "tcp-syn-sport", "tcp-synack", "tcp-ack", "tcp-ack-sport", "tcp-rst")
_DEFAULT_PAYLOAD = {"icmp-echo": 56, "udp": 12, "tcp-syn": 0}  # scamper's defaults
_TRANSPORT_HDR = {"icmp-echo": 8, "udp": 8, "tcp-syn": 20}
_PROBE_IPPROTO = {  # family -> method -> IP protocol of the probe socket
    4: {"icmp-echo": P.IPPROTO_ICMP, "udp": P.IPPROTO_UDP, "tcp-syn": P.IPPROTO_TCP},
    6: {"icmp-echo": P.IPPROTO_ICMPV6, "udp": P.IPPROTO_UDP, "tcp-syn": P.IPPROTO_TCP},
}
_TX_GRACE_NS = 10_000_000_000  # how long past its wait a probe's transmit stamp is awaited


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

    @property
    def header_len(self) -> int:
        return (20 if self.family == 4 else 40) + _TRANSPORT_HDR[self.method]

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this ping, as an endpoint task, could run longer
        than ``max_s``: the last probe leaves ``(attempts - 1) × wait_probe``
        after the first and is waited for ``wait_timeout``."""
        wp, wt = self.wait_probe_ns / _NS, self.wait_timeout_ns / _NS
        task_duration("ping", (self.attempts - 1) * wp + wt,
                      f"(attempts {self.attempts} - 1) × wait_probe {wp:g} s + wait_timeout {wt:g} s", max_s)


def plan_ping(dst: Any, *, method: str = "icmp-echo", attempts: int = 4, wait_probe: Any = 1.0,
              wait_timeout: Any = 1.0, stop_count: int | None = None, ttl: int = 64, tos: int = 0,
              size: int | None = None, payload: bytes | str | None = None, src: Any = None,
              sport: int | None = None, dport: int | None = None, icmp_id: int | None = None,
              icmp_seq: int = 0, tcp_seq: int | None = None, userid: int = 0,
              rng: random.Random | None = None) -> PingPlan:
    """Check every parameter (``ValueError`` with the reason) and fill defaults.

    ``size`` is scamper's: the whole IP packet (default 84 for an IPv4
    icmp-echo: 20 + 8 + 56). ``payload`` is bytes or a hex string; with both,
    ``size`` must equal headers + payload.
    """
    rng = rng or random.SystemRandom()
    method = check_method("ping", method, SUPPORTED_METHODS, _KNOWN_METHODS)
    d, family, s = check_target(dst, src)
    attempts = _int("attempts", attempts, 1, 65535)  # type: ignore[assignment]
    wp = _seconds("wait_probe", wait_probe, 0.001, 20)
    wt = _seconds("wait_timeout", wait_timeout, 0.001, 255)
    sc = _int("stop_count", stop_count, 0, 65535, optional=True) or 0
    ttl = _int("ttl", ttl, 1, 255)  # type: ignore[assignment]
    tos = _int("tos", tos, 0, 255)  # type: ignore[assignment]
    icmp_seq = _int("icmp_seq", icmp_seq, 0, 65535)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    hdr = (20 if family == 4 else 40) + _TRANSPORT_HDR[method]
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
        n = size - hdr if size is not None else _DEFAULT_PAYLOAD[method]
        payload = bytes(n)
    size = hdr + len(payload)
    if size > 65535:
        raise ValueError(f"probe size {size} is too large (at most 65535)")
    if method == "icmp-echo":
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
            sp = rng.randrange(0x8000, 0x10000)  # scamper's range for a chosen sport
        if dp is None:
            dp = 33435
        icmp_id = 0
    if method == "icmp-echo" and (sport is not None or dport is not None):
        raise ValueError("sport/dport are for udp and tcp methods; use icmp_id for icmp-echo")
    if method == "tcp-syn":
        tseq = _int("tcp_seq", tcp_seq, 0, 2**32 - 1, optional=True)
        if tseq is None:
            tseq = rng.randrange(0, 2**32)
    else:
        if tcp_seq is not None:
            raise ValueError(f"tcp_seq is for tcp methods, not {method}")
        tseq = 0
    return PingPlan(dst=d, family=family, method=method, attempts=attempts, wait_probe_ns=wp,
                    wait_timeout_ns=wt, stop_count=sc, ttl=ttl, tos=tos, size=size, payload=payload,
                    payload_given=payload_given, src=s, sport=sp, dport=dp,  # type: ignore[arg-type]
                    icmp_id=icmp_id, icmp_seq=icmp_seq, tcp_seq=tseq, userid=userid)


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


class PingProbing:
    """Probe bytes and reply matching for one ping; no I/O.

    The driver calls ``probe(i)`` to get attempt ``i``'s packet (IPv4: with
    our IP header), ``sent(i, …)`` with the kernel's transmit stamp, and
    ``received(pkt, …)`` with each captured packet; ``result()`` builds the
    ``Ping``. Times are ns on the endpoint's clock.
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

    # -- capture filters ------------------------------------------------------
    def filters(self) -> dict[str, str]:
        """tcpdump expressions per capture socket: "probe" (the socket the
        probes leave from) and, for IPv4 udp/tcp, "icmp" (ICMP errors)."""
        p = self.plan
        if p.family == 4:
            icmp_err = ("icmp and (icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12)"
                        " and icmp[8] = 0x45")
            if p.method == "icmp-echo":
                return {"probe": f"icmp and ((icmp[0] = 0 and icmp[4:2] = {p.icmp_id}) or "
                                 f"((icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12)"
                                 f" and icmp[8] = 0x45 and icmp[17] = 1 and icmp[28] = 8 and icmp[32:2] = {p.icmp_id}))"}
            proto = "udp" if p.method == "udp" else "tcp"
            pnum = P.IPPROTO_UDP if proto == "udp" else P.IPPROTO_TCP
            return {"probe": f"{proto} and src host {p.dst} and src port {p.dport} and dst port {p.sport}",
                    "icmp": f"{icmp_err} and icmp[17] = {pnum} and icmp[28:2] = {p.sport} and icmp[30:2] = {p.dport}"}
        err6 = "ip6[40] >= 1 and ip6[40] <= 4"
        if p.method == "icmp-echo":
            return {"probe": f"ip6 and ip6[6] = 58 and ((ip6[40] = 129 and ip6[44:2] = {p.icmp_id}) or "
                             f"({err6} and ip6[54] = 58 and ip6[88] = 128 and ip6[92:2] = {p.icmp_id}))"}
        pnum = P.IPPROTO_UDP if p.method == "udp" else P.IPPROTO_TCP
        return {"probe": f"(ip6 and ip6[6] = {pnum} and ip6 src {p.dst} and ip6[40:2] = {p.dport} "
                         f"and ip6[42:2] = {p.sport}) or (ip6 and ip6[6] = 58 and {err6} and ip6[54] = {pnum} "
                         f"and ip6[88:2] = {p.sport} and ip6[90:2] = {p.dport})"}

    # -- probes ---------------------------------------------------------------
    def _payload(self, attempt: int) -> bytes:
        p = self.plan
        if p.method == "udp" and not p.payload_given and len(p.payload) >= 2:
            # Make each UDP probe distinct, so an IPv6 quote (no IP-ID) says which it was.
            return attempt.to_bytes(2, "big") + p.payload[2:]
        return p.payload

    def probe(self, attempt: int, at_ns: int) -> bytes:
        """The bytes to send for ``attempt``, recorded as scheduled at ``at_ns``."""
        p = self.plan
        v6 = p.family == 6
        payload = self._payload(attempt)
        if p.method == "icmp-echo":
            body = P.icmp_echo(p.icmp_id, p.icmp_seq + attempt, payload, src=self.src, dst=p.dst, v6=v6)
            proto = P.IPPROTO_ICMPV6 if v6 else P.IPPROTO_ICMP
        elif p.method == "udp":
            body = P.udp_segment(self.src, p.dst, p.sport, p.dport, payload)
            proto = P.IPPROTO_UDP
        else:
            body = P.tcp_segment(self.src, p.dst, p.sport, p.dport, seq=p.tcp_seq + attempt,
                                 flags=P.TCP_SYN, payload=payload)
            proto = P.IPPROTO_TCP
        ipid = None
        if not v6:
            ipid = (self._ipid_base + attempt) % 0xFFFF + 1  # never 0: the kernel would replace it
            self._by_ipid[ipid] = attempt
            body = P.ipv4_header(self.src, p.dst, proto, len(body), ttl=p.ttl, tos=p.tos, ipid=ipid) + body
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

    def _valid(self, attempt: int) -> int | None:
        return attempt if 0 <= attempt < len(self.probes) else None

    def _match(self, pkt: P.IPPacket, rx_ns: int) -> tuple[int | None, bool]:
        """(attempt, from_target) for a captured packet, attempt None if not ours."""
        p = self.plan
        v6 = p.family == 6
        icmp = pkt.icmp
        if p.method == "icmp-echo":
            if icmp is not None and icmp.type == (129 if v6 else 0) and icmp.ident == p.icmp_id:
                return self._valid((icmp.seq - p.icmp_seq) % 0x10000), True  # type: ignore[operator]
        else:
            want = pkt.udp if p.method == "udp" else pkt.tcp
            if want is not None and pkt.src == p.dst and want.sport == p.dport and want.dport == p.sport:
                if isinstance(want, P.Tcp) and want.flags & P.TCP_ACK:
                    return self._valid((want.ack - 1 - p.tcp_seq) % 2**32), True
                return self._earliest_unanswered(rx_ns), True
        # An ICMP error quoting one of our probes.
        if icmp is None or icmp.quote is None:
            return None, False
        q = icmp.quote
        if q.dst != p.dst:
            return None, False
        if not v6 and q.ipid in self._by_ipid:
            attempt = self._by_ipid[q.ipid]  # type: ignore[index]
        elif p.method == "icmp-echo" and q.icmp is not None and q.icmp.ident == p.icmp_id:
            attempt = (q.icmp.seq - p.icmp_seq) % 0x10000  # type: ignore[operator]
        elif p.method == "tcp-syn" and q.tcp is not None and q.tcp.sport == p.sport:
            attempt = (q.tcp.seq - p.tcp_seq) % 2**32
        elif p.method == "udp" and q.udp is not None and q.udp.sport == p.sport:
            if not p.payload_given and len(q.udp.payload) >= 2:
                attempt = int.from_bytes(q.udp.payload[:2], "big")
            else:
                got = self._earliest_unanswered(rx_ns)
                if got is None:
                    return None, False
                attempt = got
        else:
            return None, False
        attempt_ok = self._valid(attempt)
        from_target = (p.method == "udp" and pkt.src == p.dst and
                       icmp.type == (1 if v6 else 3) and icmp.code == (4 if v6 else 3))
        return attempt_ok, from_target

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
    def _reply(self, g: _Got) -> PingReply | None:
        pr = self.probes[g.attempt]
        tx = pr.tx_ns if pr.tx_ns is not None else pr.at_ns
        src = pr.tx_source if pr.tx_ns is not None else "user"
        pkt = g.pkt
        icmp, tcp = pkt.icmp, pkt.tcp
        proto = "icmp" if icmp is not None else ("tcp" if tcp is not None else "udp")
        return PingReply(
            src=pkt.src, attempt=g.attempt, tx_ns=tx, rx_ns=g.rx_ns, probe_ipid=pr.ipid,
            reply_ipid=pkt.ipid if pkt.version == 4 else None, reply_ttl=pkt.ttl, reply_tos=pkt.tos,
            reply_size=pkt.size, reply_proto=proto,
            icmp_type=icmp.type if icmp is not None else None,
            icmp_code=icmp.code if icmp is not None else None,
            tcp_flags=tcp.flags if tcp is not None else None,
            tx_ts_source=src if src in ("kernel", "user") else None,
            rx_ts_source=g.rx_source if g.rx_source in ("kernel", "user") else None)

    def result(self, *, start_ns: int, stop_reason: PingStop, vp: str | None = None,
               extra: dict[str, Any] | None = None) -> Ping:
        p = self.plan
        sent = [pr for pr in self.probes if pr.error is None]
        replies = [r for r in (self._reply(g) for g in self.got if self.probes[g.attempt].error is None) if r]
        return Ping(
            dst=p.dst, src=self.src, start_ns=start_ns, method=p.method, ping_sent=len(sent),
            probe_size=p.size, ttl=p.ttl, tos=p.tos,
            wait_probe=_dt.timedelta(microseconds=p.wait_probe_ns // 1000),
            wait_timeout=_dt.timedelta(microseconds=p.wait_timeout_ns // 1000),
            sport=p.sport if p.method != "icmp-echo" else None,
            dport=p.dport if p.method != "icmp-echo" else None,
            icmp_id=p.icmp_id if p.method == "icmp-echo" else None,
            tcp_seq=p.tcp_seq if p.method == "tcp-syn" else None,
            userid=p.userid, stop_reason=stop_reason, replies=replies, vp=vp or None,
            extra=dict(extra or {}))


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
               userid: int = 0, halt: asyncio.Event | None = None) -> Ping:
    """Ping ``dst`` from the endpoint behind ``io``; returns a ``Ping``.

    Parameters are scamper's ``do_ping`` (times as float seconds or
    ``timedelta``). ``halt``: set it to stop early and get the partial result
    with stop reason ``halted`` (cancelling the coroutine instead raises
    ``CancelledError`` as usual, after closing the sockets).
    """
    plan = plan_ping(dst, method=method, attempts=attempts, wait_probe=wait_probe,
                     wait_timeout=wait_timeout, stop_count=stop_count, ttl=ttl, tos=tos, size=size,
                     payload=payload, src=src, sport=sport, dport=dport, icmp_id=icmp_id,
                     icmp_seq=icmp_seq, tcp_seq=tcp_seq, userid=userid)
    source = plan.src or await route_source(io, plan.family, plan.dst, plan.dport or 33435)
    run = PingProbing(plan, source)
    socks = ProbeSockets()
    proto = _PROBE_IPPROTO[plan.family][plan.method]
    # Our own notification stream: other measurements on this session
    # neither see our packets nor lose theirs to us.
    with io.stream() as stream:
        try:
            await open_probe_sockets(io, socks, family=plan.family, proto=proto, src=run.src,
                                     filters=run.filters(), stream=stream, ttl=plan.ttl, tos=plan.tos)
            return await _drive(io, plan, run, socks, halt, stream)
        finally:
            await close_sockets(io, socks)


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
    halt_wait: asyncio.Task | None = None
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
                timeout = max(0.0, (wake - local) / _NS)
                if halt is None:
                    note = await stream.next(timeout)
                else:
                    if halt_wait is None:
                        halt_wait = asyncio.ensure_future(halt.wait())
                    nt = asyncio.ensure_future(stream.next(timeout))
                    await asyncio.wait({nt, halt_wait}, return_when=asyncio.FIRST_COMPLETED)
                    if not nt.done():
                        nt.cancel()
                        try:
                            await nt
                        except (asyncio.CancelledError, ConnectionLost):
                            pass
                        continue
                    note = nt.result()
                if note is None:
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
        if halt_wait is not None:
            halt_wait.cancel()
    return run.result(start_ns=start, stop_reason=stop, vp=io.endpoint_name, extra=extra)
