"""MDA multipath traceroute (scamper's ``tracelb``) over the packet interface.

``tracelb(io, dst, …)`` takes any ``PacketSession`` (native, endpoint or
remote placement) and returns a ``marionet.results.Tracelb``: the graph of
routers and links between them that per-flow load balancers spread a
destination's flows over, found with the Multipath Detection Algorithm
(Augustin, Friedman and Teixeira, "Measuring load-balanced paths in the
Internet", IMC 2007).

How flows are told apart (``method``, scamper's names): every probe of one
flow keeps the header fields a per-flow balancer hashes constant, Paris
style, and flows differ in one field, the *flow id*:

* ``udp-dport`` (scamper's default): the UDP destination port;
* ``udp-sport``: the UDP source port;
* ``icmp-echo``: the ICMP checksum (kept constant per flow by adjusting
  two payload bytes while the sequence number names the probe), so a
  balancer that hashes the first transport word sees one flow;
* ``tcp-sport``: the TCP source port of a SYN.

Probes are matched to replies by their IPv4 IP-ID (we write the header),
or on IPv6 by a per-probe key the quote carries: the UDP checksum (steered
through the first two payload bytes), the ICMP sequence number or the TCP
sequence number.

The MDA (``TracelbProbing``, sans-I/O) works node by node, hop by hop:

* Node control: the next hops of a node ``v`` at TTL ``t`` are probed at
  ``t + 1`` only with flows known to reach ``v`` (a flow's reply at ``t``
  came from ``v``).  After ``k`` distinct next hops were seen, ``n_k``
  answered flows must have been probed before concluding that ``v`` has no
  ``(k+1)``-th.  ``n_k`` is scamper's table (the exact inclusion–exclusion
  values, 95%: 6, 11, 16, 21, 27, 33, 38, 44 …; 99%: 8, 15, 21, 28, 36 …),
  not the union bound ``ceil(ln(ε/(k+1)) / ln(k/(k+1)))``, which asks for
  one probe more at k = 7, 8, 13, 16.
* When ``v`` has too few known flows, new flow ids are probed at ``t``
  itself until enough of them land on ``v`` ("bringing flows forward"; each
  lands on some node at ``t`` and helps that node too); after ``n_K``
  misses in a row (``K`` the nodes known at ``t``) ``v`` gives up.
* Except on an unmeshed hop (scamper's "clump", MDA-Lite's hop-level
  rule): when every node at ``t`` has used all its known flows and each
  shows exactly one next hop, the hop's flows together — ``n_K`` for the
  ``K`` next hops the hop shows — rule out another, without bringing flows
  forward (which costs about ``K`` probes per flow on a ``K``-wide hop).
  A node with two or more next hops always gets its own ``n_k``.
* Hops are explored in TTL order (all nodes at ``t`` before any at
  ``t + 1``), so every flow found at ``t`` is there to be reused at ``t + 1``.
* As scamper does, the first hop is probed with one flow (it is assumed not
  to be balanced); a reply from the destination ends a node's exploration
  (paths converge there); an ICMP unreachable ends that branch.
* Paths converge at the destination across a hop, too (scamper's clump
  does this): once one node's flow met the destination one TTL on, the
  other nodes at that TTL whose replies came back over as many hops (in a
  diamond: the exit router's other interfaces) get the link to it without
  a probe of their own; the link's probe set is that one probe.  This is
  an assumption, scamper's: a sibling whose branch is one router longer
  would be drawn straight to the destination and that router missed.
* A probe unanswered after ``attempts`` tries loses its flow for that hop;
  when a node's first probed flow is lost and no flow answered, the hop is
  silent and the same flows probe one TTL further, up to ``gaplimit``
  silent hops (the link then spans several TTLs).
* At most ``probec_max`` probes; running out stops the run with reason
  ``probec_max``.

One probe is in flight at a time, ``wait_probe`` apart (scamper's default
pacing), each waited for up to ``wait_timeout`` from its kernel transmit
time.
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
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import method as check_method
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import target as check_target
from marionet.measure.rawio import (HALTED, HaltWatch, ProbeSockets, queue_lead_ns, route_source,
                                    with_probe_sockets)
from marionet.measure.trace import paris_word
from marionet.results.common import Addr
from marionet.results.tracelb import (Tracelb, TracelbLink, TracelbNode, TracelbProbe, TracelbProbeset,
                                      TracelbReply, TracelbStop)

__all__ = ["tracelb", "plan_tracelb", "TracelbPlan", "TracelbProbing", "SUPPORTED_METHODS", "n_k",
           "CONFIDENCE_TABLE"]

SUPPORTED_METHODS = ("udp-dport", "udp-sport", "icmp-echo", "tcp-sport")
_NOT_YET = ("tcp-ack-sport",)
_TRANSPORT_HDR = {"udp-dport": 8, "udp-sport": 8, "icmp-echo": 8, "tcp-sport": 20}
_DEFAULT_SIZE = {4: 44, 6: 60}
_NS = 1_000_000_000
_TX_GRACE_NS = 10_000_000_000

#: scamper's stopping table: CONFIDENCE_TABLE[c][k] is the number of answered
#: flows needed, after k next hops were seen, to rule out a (k+1)-th.
CONFIDENCE_TABLE: dict[int, tuple[int, ...]] = {
    95: (1, 6, 11, 16, 21, 27, 33, 38, 44, 51, 57, 63, 70, 76, 83, 90, 96, 103, 110, 117, 124, 131, 138, 145,
         152, 159, 167, 174, 181, 189, 196, 203, 211, 218, 226, 233, 241, 248, 256, 264, 271, 279, 287, 294,
         302, 310, 318, 326, 333, 341, 349, 357, 365, 373, 381, 389, 397, 405, 413, 421, 429, 437, 445, 453,
         462, 470, 478, 486, 494, 502, 511, 519, 527, 535, 544, 552, 560, 569, 577, 585, 594, 602, 610, 619,
         627, 635, 644, 652, 661, 669, 678, 686, 695, 703, 712, 720, 729, 737, 746),
    99: (1, 8, 15, 21, 28, 36, 43, 51, 58, 66, 74, 82, 90, 98, 106, 115, 123, 132, 140, 149, 157, 166, 175, 183,
         192, 201, 210, 219, 228, 237, 246, 255, 264, 273, 282, 291, 300, 309, 319, 328, 337, 347, 356, 365,
         375, 384, 393, 403, 412, 422, 431, 441, 450, 460, 470, 479, 489, 499, 508, 518, 528, 537, 547, 557,
         566, 576, 586, 596, 606, 616, 625, 635, 645, 655, 665, 675, 685, 695, 705, 715, 725, 735, 745, 755,
         765, 775, 785, 795, 805, 815, 825, 835, 845, 855, 866, 876, 886, 896, 906),
}


def n_k(confidence: int, k: int) -> int:
    """Answered flows needed after ``k`` next hops were seen (k = 0: one)."""
    t = CONFIDENCE_TABLE[confidence]
    return t[min(k, len(t) - 1)]


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TracelbPlan:
    """Validated tracelb parameters, with scamper's defaults filled in."""

    dst: str
    family: int
    method: str
    confidence: int
    attempts: int
    gaplimit: int
    firsthop: int
    wait_timeout_ns: int
    wait_probe_ns: int
    sport: int
    dport: int
    icmp_id: int
    tos: int
    size: int
    probec_max: int
    src: str | None
    userid: int

    @property
    def proto(self) -> int:
        if self.method.startswith("udp"):
            return P.IPPROTO_UDP
        if self.method.startswith("tcp"):
            return P.IPPROTO_TCP
        return P.IPPROTO_ICMPV6 if self.family == 6 else P.IPPROTO_ICMP

    @property
    def is_icmp(self) -> bool:
        return self.method == "icmp-echo"

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this run, as an endpoint task, could run longer
        than ``max_s`` by its parameters alone: toward a silent network it
        stops after ``gaplimit`` silent hops of ``attempts`` probes each.
        How many routers answer, and so how many probes the MDA sends (at
        most ``probec_max``), is the network's doing; the endpoint's run-time
        cap bounds that part."""
        per = (self.wait_timeout_ns + self.wait_probe_ns) / _NS
        task_duration("tracelb", self.gaplimit * self.attempts * per,
                      f"{self.gaplimit} silent hops (gaplimit) × attempts {self.attempts} × "
                      f"(wait_timeout + wait_probe) {per:g} s", max_s)


def plan_tracelb(dst: Any, *, confidence: int = 95, method: str = "udp-dport", attempts: int = 2,
                 gaplimit: int = 3, wait_probe: Any = 0.25, wait_timeout: Any = 5.0, firsthop: int = 1,
                 sport: int | None = None, dport: int | None = None, tos: int = 0, probec_max: int = 3000,
                 size: int | None = None, src: Any = None, userid: int = 0,
                 rng: random.Random | None = None) -> TracelbPlan:
    """Check every parameter (``ValueError`` naming it) and fill defaults.

    Ranges follow scamper's ``tracelb``: ``confidence`` 95 or 99,
    ``attempts`` 1..5, ``gaplimit`` 1..255, ``firsthop`` 1..254,
    ``probec_max`` 50..65535, ``wait_timeout`` up to 60 s and ``wait_probe``
    up to 20 s (0 allowed: back-to-back probes, for labs).  ``sport`` is the
    constant source port (udp-dport) or the first flow's (udp-sport,
    tcp-sport); ``dport`` the first flow's destination port (udp-dport,
    default 33435) or the constant one (default 33435 for udp-sport, 80 for
    tcp-sport).  ``size``: whole IP packet, default 44 (IPv4) / 60 (IPv6)
    for udp and icmp, headers only for tcp.
    """
    rng = rng or random.SystemRandom()
    method = check_method("tracelb", method, SUPPORTED_METHODS, _NOT_YET, {})
    d, family, s = check_target(dst, src)
    if isinstance(confidence, bool) or confidence not in (95, 99):
        raise ValueError(f"confidence must be 95 or 99, got {confidence!r}")
    attempts = _int("attempts", attempts, 1, 5)  # type: ignore[assignment]
    gaplimit = _int("gaplimit", gaplimit, 1, 255)  # type: ignore[assignment]
    firsthop = _int("firsthop", firsthop, 1, 254)  # type: ignore[assignment]
    wt = _seconds("wait_timeout", wait_timeout, 0.001, 60)
    wp = _seconds("wait_probe", wait_probe, 0, 20)
    tos = _int("tos", tos, 0, 255)  # type: ignore[assignment]
    probec_max = _int("probec_max", probec_max, 50, 65535)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    hdr = (20 if family == 4 else 40) + _TRANSPORT_HDR[method]
    tcp = method.startswith("tcp")
    if size is None:
        size = hdr if tcp else _DEFAULT_SIZE[family]
    else:
        size = _int("size", size, 0, 1500)  # type: ignore[assignment]
        if size < hdr + (0 if tcp else 2):  # type: ignore[operator]
            raise ValueError(f"size {size} is too small: an IPv{family} {method} probe needs at least "
                             f"{hdr + (0 if tcp else 2)} bytes")
    icmp_id = 0
    if method == "icmp-echo":
        if sport is not None or dport is not None:
            raise ValueError("sport/dport are for udp and tcp methods, not icmp-echo")
        icmp_id = rng.randrange(1, 0x10000)
        sp, dp = 0, 0
    else:
        sp = _int("sport", sport, 1, 65535, optional=True)  # type: ignore[assignment]
        dp = _int("dport", dport, 1, 65535, optional=True)  # type: ignore[assignment]
        if sp is None:
            sp = rng.randrange(0x8000, 0xF000)
        if dp is None:
            dp = 80 if tcp else 33435
    return TracelbPlan(dst=d, family=family, method=method, confidence=confidence, attempts=attempts,
                       gaplimit=gaplimit, firsthop=firsthop, wait_timeout_ns=wt, wait_probe_ns=wp,
                       sport=sp, dport=dp, icmp_id=icmp_id, tos=tos, size=size,  # type: ignore[arg-type]
                       probec_max=probec_max, src=s, userid=userid)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Sans-I/O core
# ---------------------------------------------------------------------------

ROOT = ""  # the vantage point: every flow passes it


@dataclass(slots=True)
class _Probe:
    pid: int
    ttl: int
    flow: int  # flow index (0, 1, …); the flow id on the wire is plan-dependent
    attempt: int  # 0-based
    ipid: int | None
    key: int
    at_ns: int
    owner: "_Explore | None"  # the exploration that sent it
    bringfwd: bool = False
    tx_ns: int | None = None
    tx_source: str | None = None
    error: str | None = None
    replies: list[tuple[P.IPPacket, int, str]] = field(default_factory=list)  # (packet, rx_ns, kind)
    resolved: bool = False


@dataclass(slots=True)
class _Node:
    addr: str
    ttl: int
    q_ttl: int | None = None
    terminal: bool = False  # the destination, or an unreachable: nothing to explore past it
    reply_ttl: int | None = None  # the IP TTL its first reply arrived with (its distance back)


@dataclass(slots=True, eq=False)
class _Explore:
    """Finding the next hops of one node (or of the vantage point, ROOT)."""
    node: str
    ttl: int  # the node's TTL
    probe_ttl: int  # where its next hops are being looked for
    succ: dict[str, list[int]] = field(default_factory=dict)  # next hop -> pids answered from it
    answered: set[int] = field(default_factory=set)  # flows answered at probe_ttl
    lost: set[int] = field(default_factory=set)  # flows lost at probe_ttl
    silent: list[list[int]] = field(default_factory=list)  # pids per silent TTL passed over
    tried_pids: list[int] = field(default_factory=list)  # pids at the current probe_ttl
    bringfwd: int = 0  # flows brought forward in a row that landed elsewhere
    done: bool = False
    why: str = ""


class TracelbProbing:
    """The MDA's state machine, probe bytes and reply matching; no I/O.

    Driver loop: while not ``done``: if ``inflight`` is None, take
    ``probe(at_ns)`` (pid, ttl, bytes) and send it, report its transmit
    stamp with ``sent``; feed captured packets to ``received``; when the
    probe's wait (``deadline_ns``) passed without a reply call ``expired``.
    ``result()`` builds the ``Tracelb``.  Times are ns on the endpoint clock.
    """

    def __init__(self, plan: TracelbPlan, src: str, *, ipid_base: int | None = None,
                 seq_base: int | None = None) -> None:
        self.plan = plan
        self.src = src
        r = random.SystemRandom()
        self._ipid_base = ipid_base if ipid_base is not None else r.randrange(1, 0x10000)
        self._seq_base = seq_base if seq_base is not None else r.randrange(0, 2**32)
        self.probes: list[_Probe] = []
        self._by_ipid: dict[int, int] = {}
        self._by_key: dict[int, int] = {}
        self.nodes: dict[str, _Node] = {}
        self.flow_at: dict[tuple[int, int], str] = {}  # (flow, ttl) -> responding address
        self._flows_at_ttl: dict[int, dict[int, str]] = {}  # ttl -> flow -> address
        self.explores: list[_Explore] = [_Explore(ROOT, plan.firsthop - 1, plan.firsthop)]
        self._explored: set[str] = {ROOT}
        self.next_flow = 0
        self.inflight: int | None = None
        self.done = False
        self.stop_reason = TracelbStop.NONE
        self.dups = 0
        self._pending: tuple[int, int, int, _Explore, bool] | None = None  # (flow, ttl, attempt, owner, bf)
        self._decide()

    # -- capture filters ------------------------------------------------------
    def filters(self) -> dict[str, str]:
        """tcpdump expressions per capture role ("probe"; IPv4 udp/tcp also "icmp")."""
        p = self.plan
        proto = p.proto
        m = p.method
        if p.family == 4:
            qdst = int(ipaddress.IPv4Address(p.dst))
            err = ("icmp and (icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12)"
                   f" and icmp[8] = 0x45 and icmp[17] = {proto} and icmp[24:4] = {qdst}")
            if p.is_icmp:
                return {"probe": f"({err} and icmp[28] = 8 and icmp[32:2] = {p.icmp_id}) or "
                                 f"(icmp and src host {p.dst} and icmp[0] = 0 and icmp[4:2] = {p.icmp_id})"}
            tp = "udp" if proto == P.IPPROTO_UDP else "tcp"
            if m == "udp-dport":
                return {"probe": f"{tp} and src host {p.dst} and dst port {p.sport}",
                        "icmp": f"{err} and icmp[28:2] = {p.sport}"}
            return {"probe": f"{tp} and src host {p.dst} and src port {p.dport}",
                    "icmp": f"{err} and icmp[30:2] = {p.dport}"}
        err6 = f"ip6 and ip6[6] = 58 and ip6[40] >= 1 and ip6[40] <= 4 and ip6[54] = {proto}"
        if p.is_icmp:
            return {"probe": f"({err6} and ip6[88] = 128 and ip6[92:2] = {p.icmp_id}) or "
                             f"(ip6 and ip6[6] = 58 and ip6 src {p.dst} and ip6[40] = 129 "
                             f"and ip6[44:2] = {p.icmp_id})"}
        if m == "udp-dport":
            return {"probe": f"({err6} and ip6[88:2] = {p.sport}) or "
                             f"(ip6 and ip6[6] = {proto} and ip6 src {p.dst} and ip6[42:2] = {p.sport})"}
        return {"probe": f"({err6} and ip6[90:2] = {p.dport}) or "
                         f"(ip6 and ip6[6] = {proto} and ip6 src {p.dst} and ip6[40:2] = {p.dport})"}

    # -- flow ids and probe bytes ---------------------------------------------
    def flowid(self, flow: int) -> int:
        """The header value that makes flow index ``flow`` a flow of its own."""
        p = self.plan
        if p.method == "udp-dport":
            return (p.dport + flow - 1) % 0xFFFF + 1
        if p.method in ("udp-sport", "tcp-sport"):
            return (p.sport + flow - 1) % 0xFFFF + 1
        return flow % 0xFFFE + 1  # icmp-echo: the ICMP checksum (never 0 or 0xFFFF)

    def _key(self, pid: int) -> int:
        if self.plan.method.startswith("tcp"):
            return (self._seq_base + pid) % 2**32
        if self.plan.is_icmp:
            return pid & 0xFFFF
        return pid % 0xFFFE + 1  # the UDP checksum

    def _transport(self, pid: int, flow: int) -> bytes:
        p = self.plan
        v6 = p.family == 6
        key = self._key(pid)
        fid = self.flowid(flow)
        hdr = (20 if p.family == 4 else 40) + _TRANSPORT_HDR[p.method]
        pl = bytes(p.size - hdr)
        if p.method.startswith("udp"):
            sport, dport = (p.sport, fid) if p.method == "udp-dport" else (fid, p.dport)
            c0 = struct.unpack_from("!H", P.udp_segment(self.src, p.dst, sport, dport, pl), 6)[0]
            pl = struct.pack("!H", paris_word(c0, key)) + pl[2:]
            return P.udp_segment(self.src, p.dst, sport, dport, pl)
        if p.method.startswith("tcp"):
            return P.tcp_segment(self.src, p.dst, fid, p.dport, seq=key, flags=P.TCP_SYN, payload=pl)
        c0 = struct.unpack_from("!H", P.icmp_echo(p.icmp_id, key, pl, src=self.src, dst=p.dst, v6=v6), 2)[0]
        pl = struct.pack("!H", paris_word(c0, fid)) + pl[2:]
        return P.icmp_echo(p.icmp_id, key, pl, src=self.src, dst=p.dst, v6=v6)

    def wants_probe(self) -> bool:
        return not self.done and self.inflight is None and self._pending is not None

    def probe(self, at_ns: int) -> tuple[int, int, bytes]:
        """(pid, ttl, bytes) of the next probe, recorded as scheduled at ``at_ns``."""
        if not self.wants_probe():
            raise RuntimeError("no probe is due (one is out, or the run is done)")
        flow, ttl, attempt, owner, bf = self._pending  # type: ignore[misc]
        self._pending = None
        p = self.plan
        pid = len(self.probes)
        body = self._transport(pid, flow)
        ipid = None
        if p.family == 4:
            ipid = (self._ipid_base + pid) % 0xFFFF + 1
            self._by_ipid[ipid] = pid
            body = P.ipv4_header(self.src, p.dst, p.proto, len(body), ttl=ttl, tos=p.tos, ipid=ipid) + body
        self._by_key[self._key(pid)] = pid
        self.probes.append(_Probe(pid, ttl, flow, attempt, ipid, self._key(pid), at_ns, owner, bf))
        if not bf:
            owner.tried_pids.append(pid)
        self.inflight = pid
        return pid, ttl, body

    def sent(self, pid: int, tx_ns: int | None, ts_source: str | None, error: str | None = None) -> None:
        pr = self.probes[pid]
        pr.tx_ns, pr.tx_source, pr.error = tx_ns, ts_source, error
        if error is not None:
            self._stop(TracelbStop.ERROR)

    def deadline_ns(self, pid: int) -> int:
        pr = self.probes[pid]
        return (pr.tx_ns if pr.tx_ns is not None else pr.at_ns) + self.plan.wait_timeout_ns

    # -- replies --------------------------------------------------------------
    def _match(self, pkt: P.IPPacket) -> tuple[int | None, str]:
        p = self.plan
        v6 = p.family == 6
        icmp = pkt.icmp
        if p.is_icmp:
            if (icmp is not None and icmp.type == (129 if v6 else 0) and icmp.ident == p.icmp_id
                    and pkt.src == p.dst):
                return self._by_key.get(icmp.seq), "done"  # type: ignore[arg-type]
        elif pkt.src == p.dst and pkt.tcp is not None and p.proto == P.IPPROTO_TCP:
            seg = pkt.tcp
            if seg.sport != p.dport:
                return None, ""
            return self._by_key.get((seg.ack - 1) % 2**32), "done"
        if icmp is None or icmp.quote is None:
            return None, ""
        q = icmp.quote
        if q.dst != p.dst or q.proto != p.proto:
            return None, ""
        pid: int | None = None
        if not v6 and q.ipid in self._by_ipid:
            pid = self._by_ipid[q.ipid]  # type: ignore[index]
        tp = q.transport
        if pid is None:
            if isinstance(tp, P.Icmp) and p.is_icmp and tp.ident == p.icmp_id:
                pid = self._by_key.get(tp.seq)  # type: ignore[arg-type]
            elif isinstance(tp, P.Udp) and not p.is_icmp:
                pid = self._by_key.get(tp.checksum)
            elif isinstance(tp, P.Tcp):
                pid = self._by_key.get(tp.seq)
        if pid is None:
            return None, ""
        typ, code = icmp.type, icmp.code
        if typ == (3 if v6 else 11):
            return pid, "ttl"
        if typ == (1 if v6 else 3):
            port = code == (4 if v6 else 3)
            return pid, "done" if port and pkt.src == p.dst else "unreach"
        return pid, "icmp"

    def received(self, pkt: P.IPPacket, rx_ns: int, ts_source: str | None = "kernel") -> bool:
        """Record a captured packet; True if it answered one of our probes."""
        pid, kind = self._match(pkt)
        if pid is None or not 0 <= pid < len(self.probes):
            return False
        pr = self.probes[pid]
        if pr.error is not None:
            return False
        if pr.tx_ns is not None and rx_ns > pr.tx_ns + self.plan.wait_timeout_ns:
            return False  # late: not a reply, as in scamper
        if pr.replies:
            self.dups += 1
            return True
        pr.replies.append((pkt, rx_ns, ts_source or ""))
        if not pr.resolved and not self.done:
            self._answered(pr, pkt, kind)
        return True

    def expired(self, pid: int) -> None:
        """The wait for probe ``pid`` ended without a reply."""
        pr = self.probes[pid]
        if pr.resolved or self.done:
            return
        pr.resolved = True
        if self.inflight == pid:
            self.inflight = None
        if pr.owner is not None and not pr.bringfwd:
            ex = pr.owner
            if pr.attempt + 1 < self.plan.attempts:
                self._pending = (pr.flow, pr.ttl, pr.attempt + 1, ex, False)
                return
            ex.lost.add(pr.flow)
        self._decide()

    def halt(self) -> None:
        self._stop(TracelbStop.HALTED)

    # -- the MDA --------------------------------------------------------------
    def _stop(self, reason: TracelbStop) -> None:
        if not self.done:
            self.done, self.stop_reason, self.inflight, self._pending = True, reason, None, None

    def _answered(self, pr: _Probe, pkt: P.IPPacket, kind: str) -> None:
        pr.resolved = True
        if self.inflight == pr.pid:
            self.inflight = None
        addr = pkt.src
        node = self.nodes.get(addr)
        if node is None:
            q = pkt.icmp.quote if pkt.icmp is not None else None
            node = self.nodes[addr] = _Node(addr, pr.ttl, q.ttl if q is not None else None, reply_ttl=pkt.ttl)
        if kind != "ttl":
            node.terminal = True
        self.flow_at[(pr.flow, pr.ttl)] = addr
        self._flows_at_ttl.setdefault(pr.ttl, {})[pr.flow] = addr
        ex = pr.owner
        if pr.bringfwd:
            if ex is not None and addr == ex.node:
                ex.bringfwd = 0  # landed: the miss count starts again for the next flow
            # A flow brought forward landed on ``addr``; if every flow passed one
            # node just before, that is a link from it (maybe one its MDA missed).
            prev = self._sole(pr.ttl - 1) if pr.ttl > self.plan.firsthop else None
            pex = next((e for e in self.explores if e.node == prev and e.probe_ttl == pr.ttl), None)
            if pex is not None:
                pex.succ.setdefault(addr, []).append(pr.pid)
        elif ex is not None and pr.ttl == ex.probe_ttl:
            if addr not in ex.succ and ex.done and ex.why in ("confident", "hop"):
                ex.done, ex.why = False, ""  # a spare flow found another next hop: explore on
            ex.succ.setdefault(addr, []).append(pr.pid)
            ex.answered.add(pr.flow)
            if kind == "done":
                ex.done, ex.why = True, "destination"  # paths converge at the destination
        self._decide()

    def _flows_through(self, ex: _Explore) -> list[int]:
        if ex.node == ROOT:
            return []
        return [f for f, a in sorted(self._flows_at_ttl.get(ex.ttl, {}).items()) if a == ex.node]

    def _sole(self, ttl: int) -> str | None:
        """The node every flow reaches at ``ttl``: the one next hop that all
        finished explorations looking at ``ttl`` agree on (the first hop is
        assumed unbalanced, as scamper does)."""
        exs = [e for e in self.explores if e.probe_ttl == ttl]
        if not exs or any(not e.done for e in exs):
            return None
        succ = {a for e in exs for a in e.succ}
        return succ.pop() if len(succ) == 1 else None

    def _active(self) -> list[_Explore]:
        """Explorations of the lowest TTL not finished (hops go in TTL order);
        nodes found so far at that TTL get theirs on the way."""
        while True:
            open_ = [e for e in self.explores if not e.done]
            low = min((e.ttl for e in open_), default=None)
            fresh = [n for n in self.nodes.values() if not n.terminal and n.addr not in self._explored
                     and (low is None or n.ttl <= low) and n.ttl < 255]
            if not fresh:
                return [e for e in open_ if e.ttl == low]
            for n in sorted(fresh, key=lambda n: (n.ttl, Addr(n.addr))):
                self._explored.add(n.addr)
                self.explores.append(_Explore(n.addr, n.ttl, n.ttl + 1))

    def _decide(self) -> None:
        """Choose the next probe, or finish.  First every active node uses
        the flows known to reach it; only then, for nodes still short of
        flows, the hop-level rule may conclude or flows are brought forward."""
        if self.done or self.inflight is not None or self._pending is not None:
            return
        while True:
            active = self._active()
            if not active:
                return self._stop(TracelbStop.COMPLETED)
            short: list[_Explore] = []
            nxt = None
            for ex in active:
                r = self._own(ex)
                if r == "short":
                    short.append(ex)
                elif r is not None:
                    nxt = r
                    break
            if nxt is None and short:
                if self._hop_covered(short[0].ttl):
                    for ex in short:
                        ex.done, ex.why = True, "hop"
                    continue
                nxt = self._spare(short[0].ttl)
                for ex in short if nxt is None else ():
                    nxt = self._bring_forward(ex)
                    if nxt is not None:
                        break
            if nxt is not None:
                if len(self.probes) >= self.plan.probec_max:
                    return self._stop(TracelbStop.PROBEC_MAX)
                self._pending = nxt  # type: ignore[assignment]
                return
            # every active exploration just finished: look again

    def _own(self, ex: _Explore) -> tuple[int, int, int, _Explore, bool] | str | None:
        """The next probe for ``ex`` on a flow known to reach its node;
        None when it is done, "short" when it needs more flows."""
        p = self.plan
        if ex.done:
            return None
        k = len(ex.succ)
        need = 1 if ex.node == ROOT else n_k(p.confidence, k)
        if len(ex.answered) >= need:
            ex.done, ex.why = True, "confident"
            return None
        if self._converges(ex):
            return None
        if not ex.answered and ex.lost:  # a silent hop: look one further with the same flows
            if len(ex.silent) + 1 >= p.gaplimit or ex.probe_ttl >= 255:
                ex.done, ex.why = True, "gaplimit"
                return None
            ex.silent.append(ex.tried_pids)
            ex.tried_pids, ex.lost = [], set()
            ex.probe_ttl += 1
        used = ex.answered | ex.lost
        if ex.node == ROOT:
            flow = next((f for f in range(self.next_flow) if f not in used), None)
            if flow is None:
                flow = self.next_flow
                self.next_flow += 1
            return (flow, ex.probe_ttl, 0, ex, False)
        for f in self._flows_through(ex):
            if f not in used:
                return (f, ex.probe_ttl, 0, ex, False)
        if ex.ttl == self.plan.firsthop and self._sole(ex.ttl) == ex.node:
            # The first hop is assumed unbalanced (as scamper does): any new
            # flow passes it.  Deeper, "sole" rests on an MDA conclusion that
            # may be the rare miss, so new flows are checked at the node's TTL.
            flow = self.next_flow
            self.next_flow += 1
            return (flow, ex.probe_ttl, 0, ex, False)
        return "short"

    def _converges(self, ex: _Explore) -> bool:
        """scamper's destination rule, across a hop: once a flow from a node
        at ``ex.ttl`` reached the destination one TTL on, the other nodes at
        that TTL are taken to reach it too (paths converge at the
        destination; in a diamond they are the interfaces of its exit
        router), with no probe of their own — scamper's clump does the same.
        Only for a node not yet probed past and whose replies came back over
        as many hops as that sibling's (the same distance from us).  The
        link's probe set is the sibling's probe that met the destination."""
        if ex.node == ROOT or ex.answered or ex.lost or ex.silent or ex.probe_ttl != ex.ttl + 1:
            return False
        me = self.nodes.get(ex.node)
        dst = self.plan.dst
        for e in self.explores:
            if (e is not ex and e.ttl == ex.ttl and e.why == "destination" and set(e.succ) == {dst}
                    and e.probe_ttl == ex.probe_ttl and e.node in self.nodes and me is not None
                    and me.reply_ttl is not None and self.nodes[e.node].reply_ttl == me.reply_ttl):
                ex.succ[dst] = list(e.succ[dst])
                ex.done, ex.why = True, "converged"
                return True
        return False

    def _hop_covered(self, ttl: int) -> bool:
        """The hop-level rule (scamper's clumps, MDA-Lite's unmeshed hops):
        when every node at ``ttl`` has used all its flows and shows exactly
        one next hop, the hop's flows together (n_K for the K next hops the
        hop shows) rule out another next hop; bringing flows forward to give
        each node n_1 of its own would cost ~K probes per flow."""
        exs = [e for e in self.explores if e.ttl == ttl and e.node != ROOT]
        if not exs or any(len(e.succ) != 1 or e.silent for e in exs):
            return False
        succ = {a for e in exs for a in e.succ}
        return sum(len(e.answered) for e in exs) >= n_k(self.plan.confidence, len(succ))

    def _spare(self, ttl: int) -> tuple[int, int, int, _Explore, bool] | None:
        """A flow not yet used by a node at ``ttl`` that already met its own
        n_k with one next hop: probing it (one probe) adds to the hop's flows
        for the hop-level rule, far cheaper than bringing a flow forward."""
        for e in self.explores:
            if e.ttl == ttl and e.node != ROOT and e.why == "confident" and len(e.succ) == 1:
                used = e.answered | e.lost
                for f in self._flows_through(e):
                    if f not in used:
                        return (f, e.probe_ttl, 0, e, False)
        return None

    def _bring_forward(self, ex: _Explore) -> tuple[int, int, int, _Explore, bool] | None:
        """A new flow probed at the node's own TTL, hoping it lands there;
        after n_K misses in a row (K the nodes known at that TTL) the node
        gives up, as scamper does."""
        cap = n_k(self.plan.confidence, max(1, sum(1 for n in self.nodes.values() if n.ttl == ex.ttl)))
        if ex.bringfwd >= cap:
            ex.done, ex.why = True, "bringfwd"
            return None
        ex.bringfwd += 1
        flow = self.next_flow
        self.next_flow += 1
        return (flow, ex.ttl, 0, ex, True)

    # -- result ---------------------------------------------------------------
    def _probe_record(self, pr: _Probe) -> TracelbProbe:
        tx = pr.tx_ns if pr.tx_ns is not None else pr.at_ns
        out = TracelbProbe(tx_ns=tx, ttl=pr.ttl, flowid=self.flowid(pr.flow), attempt=pr.attempt)
        for pkt, rx, _src in pr.replies:
            icmp, tcp = pkt.icmp, pkt.tcp
            q = icmp.quote if icmp is not None else None
            out.replies.append(TracelbReply(
                src=Addr(pkt.src), rx_ns=rx, reply_ttl=pkt.ttl,
                reply_ipid=pkt.ipid if pkt.version == 4 else None,
                icmp_type=icmp.type if icmp is not None else None,
                icmp_code=icmp.code if icmp is not None else None,
                icmp_q_tos=q.tos if q is not None else None, icmp_q_ttl=q.ttl if q is not None else None,
                tcp_flags=tcp.flags if tcp is not None else None))
        return out

    def result(self, *, start_ns: int, vp: str | None = None, extra: dict[str, Any] | None = None) -> Tracelb:
        p = self.plan
        sent = [pr for pr in self.probes if pr.error is None]
        order = sorted(self.nodes.values(), key=lambda n: (n.ttl, Addr(n.addr)))
        objs = {n.addr: TracelbNode(addr=Addr(n.addr), q_ttl=n.q_ttl) for n in order}
        for ex in self.explores:
            if ex.node == ROOT:
                continue
            near = objs[ex.node]
            silent = [TracelbProbeset([self._probe_record(self.probes[i]) for i in pids]) for pids in ex.silent]
            for addr, pids in sorted(ex.succ.items(), key=lambda kv: Addr(kv[0])):
                last = TracelbProbeset([self._probe_record(self.probes[i]) for i in pids])
                near.links.append(TracelbLink(near=near, far=objs[addr], probesets=silent + [last]))
            if not ex.succ and ex.silent and ex.why == "gaplimit":
                near.links.append(TracelbLink(near=near, far=None, probesets=silent))
        extra = dict(extra or {})
        bf = sum(1 for pr in sent if pr.bringfwd)
        if bf:
            extra["bringfwd_probes"] = bf
        if self.dups:
            extra["dups"] = self.dups
        udp_tcp = not p.is_icmp
        return Tracelb(dst=Addr(p.dst), src=Addr(self.src), start_ns=start_ns, method=p.method,
                       sport=p.sport if udp_tcp else None, dport=p.dport if udp_tcp else None,
                       probe_size=p.size, firsthop=p.firsthop, attempts=p.attempts, confidence=p.confidence,
                       tos=p.tos, gaplimit=p.gaplimit,
                       wait_timeout=_dt.timedelta(microseconds=p.wait_timeout_ns // 1000),
                       wait_probe=_dt.timedelta(microseconds=p.wait_probe_ns // 1000),
                       probec=len(sent), probec_max=p.probec_max, userid=p.userid,
                       node_list=list(objs.values()), stop_reason=self.stop_reason, vp=vp or None,
                       extra=extra)


# ---------------------------------------------------------------------------
# The I/O driver
# ---------------------------------------------------------------------------


def _now() -> int:
    return time.time_ns()


async def tracelb(io: PacketSession, dst: Any, *, confidence: int = 95, method: str = "udp-dport",
                  attempts: int = 2, gaplimit: int = 3, wait_probe: Any = 0.25, wait_timeout: Any = 5.0,
                  firsthop: int = 1, sport: int | None = None, dport: int | None = None, tos: int = 0,
                  probec_max: int = 3000, size: int | None = None, src: Any = None, userid: int = 0,
                  halt: asyncio.Event | None = None) -> Tracelb:
    """MDA multipath traceroute toward ``dst`` from the endpoint behind ``io``.

    Parameters are scamper's ``do_tracelb`` (times as float seconds or
    ``timedelta``); see ``plan_tracelb`` and the module docstring.
    ``halt``: set it to stop early with the partial graph (reason ``halted``).
    """
    plan = plan_tracelb(dst, confidence=confidence, method=method, attempts=attempts, gaplimit=gaplimit,
                        wait_probe=wait_probe, wait_timeout=wait_timeout, firsthop=firsthop, sport=sport,
                        dport=dport, tos=tos, probec_max=probec_max, size=size, src=src, userid=userid)
    source = plan.src or await route_source(io, plan.family, plan.dst, plan.dport or 33435)
    run = TracelbProbing(plan, source)
    return await with_probe_sockets(io, lambda socks, stream: _drive(io, plan, run, socks, halt, stream),
                                    family=plan.family, proto=plan.proto, src=run.src, filters=run.filters(),
                                    tos=plan.tos)


async def _drive(io: PacketSession, plan: TracelbPlan, run: TracelbProbing, socks: ProbeSockets,
                 halt: asyncio.Event | None, stream: Any) -> Tracelb:
    off = await io.clock_offset(samples=3)
    offset = off.offset_ns
    lead = queue_lead_ns(off.rtt_ns)
    start = _now() + offset + lead
    tags: dict[int, int] = {}
    tag_base = random.SystemRandom().randrange(1, 2**31)
    extra: dict[str, Any] = {}
    last_at: int | None = None
    watch = HaltWatch(halt)
    barrier: set[int] = set()

    def handle(note: Any) -> None:
        kind = note.kind
        if kind == "ndata" and note.sock in socks.capture:
            pkt = P.parse_packet(note.data)
            if pkt is not None:
                run.received(pkt, note.time_ns, note.ts_source)
        elif kind == "ntag" and note.sock == socks.send and note.tag in tags:
            pid = tags[note.tag]
            if note.error:
                extra["error"] = f"probe {pid}: {note.error}"
                run.sent(pid, None, None, error=note.error)
            else:
                run.sent(pid, note.time_ns, note.ts_source)
        elif kind == "ndrop":
            extra["ndrop"] = extra.get("ndrop", 0) + note.count

    try:
        while not run.done:
            if halt is not None and halt.is_set():
                run.halt()
                break
            local = _now()
            if run.wants_probe():
                at = max(local + offset + lead, start)
                if last_at is not None:
                    at = max(at, last_at + plan.wait_probe_ns)
                if at - lead <= local + offset:
                    pid, ttl, data = run.probe(at)
                    tags[tag_base + pid] = pid
                    last_at = at
                    try:
                        if plan.family == 4:
                            await io.nsend(socks.send, data, dst=plan.dst, at=at, tag=tag_base + pid)
                        else:
                            await io.nsend(socks.send, data, dst=plan.dst, at=at, tag=tag_base + pid, ttl=ttl)
                    except EndpointError as exc:
                        extra["error"] = f"probe {pid}: {exc}"
                        run.sent(pid, None, None, error=str(exc))
                    continue
                wake = at - lead - offset
            else:
                pid = run.inflight
                if pid is None:
                    raise AssertionError("tracelb stalled with no probe out")
                pr = run.probes[pid]
                end = run.deadline_ns(pid) - offset
                if pr.tx_ns is None and local < end + _TX_GRACE_NS:
                    end = max(end, local + 20_000_000)
                if local >= end:
                    if pid not in barrier:  # let replies the kernel already has reach us
                        barrier.add(pid)
                        await io.ping()
                    while (note := stream.poll()) is not None:
                        handle(note)
                    if run.inflight == pid:
                        run.expired(pid)
                    continue
                wake = end
            note = stream.poll()
            if note is None:
                note = await watch.next(stream, max(0.0, (wake - local) / _NS))
                if note is None or note is HALTED:
                    continue
            handle(note)
        until = _now() + _TX_GRACE_NS
        while any(pr.tx_ns is None and pr.error is None for pr in run.probes) and _now() < until:
            note = stream.poll() or await stream.next(max(0.0, (until - _now()) / _NS))
            if note is None:
                break
            handle(note)
    except ConnectionLost as exc:
        extra["error"] = str(exc)
        run._stop(TracelbStop.ERROR)
    finally:
        watch.close()
    return run.result(start_ns=start, vp=io.endpoint_name, extra=extra)
