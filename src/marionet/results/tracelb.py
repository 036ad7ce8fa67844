"""MDA multipath traceroute results: ``Tracelb``, its nodes, links and probes.

Shaped like scamper's ``ScamperTracelb``: a graph of ``TracelbNode`` (one
per responding address), each with ``links`` to the next node; a link holds
one ``TracelbProbeset`` per TTL it spans (more than one when hops in
between stayed silent), and each probe set the probes (TTL, flow id,
attempt) whose replies revealed the far node.

Why the JSON mapping is scamper's own and not a plain dump: scamper-era
analysis code reads these records.  scamper folds diamonds it explores as a
whole ("clumps") into one link whose middle probe sets hold several
addresses; ``TracelbLink.probesets`` keeps that as read, and
``Tracelb.flow_links()`` expands any result, ours or scamper's, into the
(near, far) address pairs that some flow showed adjacent.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import Addr, StopReason, ns_to_datetime, ns_to_ms_str, ns_to_timeval, to_addr
from .errors import FormatError
from .jsonfmt import EXT_KEY, RawNumber, _Fields, _put_extra, register

__all__ = ["Tracelb", "TracelbNode", "TracelbLink", "TracelbProbeset", "TracelbProbe", "TracelbReply",
           "TracelbStop", "TRACELB_METHODS", "TRACELB_VERSION"]

TRACELB_VERSION = "0.1"
#: scamper's tracelb method names (what its JSON "method" holds).
TRACELB_METHODS = ("udp-dport", "icmp-echo", "udp-sport", "tcp-sport", "tcp-ack-sport")


class TracelbStop(StopReason):
    """Why an MDA run ended (scamper records no reason in its JSON; ours is
    kept under the ``"marionet"`` key)."""
    NONE = "none"
    COMPLETED = "completed"  # every node's next hops ruled out at the confidence asked
    PROBEC_MAX = "probec_max"  # the probe budget ran out first
    HALTED = "halted"
    ERROR = "error"


@dataclass(slots=True, kw_only=True)
class TracelbReply:
    """One reply to a probe (scamper's ``ScamperTracelbReply``)."""
    src: Addr
    rx_ns: int
    reply_ttl: int | None = None
    reply_ipid: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_q_tos: int | None = None
    icmp_q_ttl: int | None = None
    tcp_flags: int | None = None

    @property
    def rx(self) -> _dt.datetime:
        return ns_to_datetime(self.rx_ns)

    @property
    def ttl(self) -> int | None:
        return self.reply_ttl

    @property
    def ipid(self) -> int | None:
        return self.reply_ipid

    def is_tcp(self) -> bool:
        return self.tcp_flags is not None


@dataclass(slots=True, kw_only=True)
class TracelbProbe:
    """One probe: sent at ``tx_ns`` with TTL ``ttl`` on flow ``flowid``
    (the varied header field: UDP dport or sport, ICMP checksum, TCP sport)."""
    tx_ns: int
    ttl: int
    flowid: int
    attempt: int = 0  # 0-based, as scamper's JSON
    replies: list[TracelbReply] = field(default_factory=list)

    @property
    def tx(self) -> _dt.datetime:
        return ns_to_datetime(self.tx_ns)

    @property
    def replyc(self) -> int:
        return len(self.replies)

    def reply(self, i: int) -> TracelbReply:
        return self.replies[i]


@dataclass(slots=True)
class TracelbProbeset:
    """The probes sent at one TTL of a link."""
    probes: list[TracelbProbe] = field(default_factory=list)

    @property
    def probec(self) -> int:
        return len(self.probes)

    def probe(self, i: int) -> TracelbProbe:
        return self.probes[i]

    def addrs(self) -> list[Addr]:
        """Distinct reply sources, in order of first reply."""
        out: list[Addr] = []
        for p in self.probes:
            for r in p.replies:
                if r.src not in out:
                    out.append(r.src)
        return out


@dataclass(slots=True, eq=False)
class TracelbNode:
    """A responding address; ``links`` lead to the nodes one (or more) TTL on."""
    addr: Addr | None
    q_ttl: int | None = None
    links: list["TracelbLink"] = field(default_factory=list)

    @property
    def src(self) -> Addr | None:
        return self.addr

    @property
    def icmp_q_ttl(self) -> int | None:
        return self.q_ttl

    @property
    def linkc(self) -> int:
        return len(self.links)

    def link(self, i: int) -> "TracelbLink":
        return self.links[i]

    def __repr__(self) -> str:
        return f"TracelbNode({str(self.addr) if self.addr else '*'}, linkc={len(self.links)})"


@dataclass(slots=True, eq=False)
class TracelbLink:
    """From ``near`` to ``far`` (None: the path went silent), one probe set per TTL."""
    near: TracelbNode
    far: TracelbNode | None
    probesets: list[TracelbProbeset] = field(default_factory=list)

    @property
    def length(self) -> int:
        return len(self.probesets)

    hopc = length

    def probeset(self, i: int) -> TracelbProbeset:
        return self.probesets[i]

    def pair(self) -> tuple[str, str | None]:
        return (str(self.near.addr), str(self.far.addr) if self.far is not None and self.far.addr else None)

    def __repr__(self) -> str:
        n, f = self.pair()
        return f"TracelbLink({n} -> {f or '*'}, length={self.length})"


@dataclass(kw_only=True, eq=False)
class Tracelb:
    """An MDA run toward ``dst`` (scamper's ``ScamperTracelb``)."""
    dst: Addr
    src: Addr | None = None
    start_ns: int = 0
    method: str = "udp-dport"
    sport: int | None = None
    dport: int | None = None
    probe_size: int = 0
    firsthop: int = 1
    attempts: int = 2
    confidence: int = 95
    tos: int = 0
    gaplimit: int = 3
    wait_timeout: _dt.timedelta = _dt.timedelta(seconds=5)
    wait_probe: _dt.timedelta = _dt.timedelta(milliseconds=250)
    probec: int = 0
    probec_max: int = 3000
    userid: int = 0
    node_list: list[TracelbNode] = field(default_factory=list)
    stop_reason: TracelbStop | str | None = None
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dst = to_addr(self.dst)  # type: ignore[assignment]
        self.src = to_addr(self.src)
        self.stop_reason = TracelbStop.coerce(self.stop_reason)

    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def nodec(self) -> int:
        return len(self.node_list)

    def nodes(self) -> Iterator[TracelbNode]:
        return iter(self.node_list)

    def node(self, i: int) -> TracelbNode:
        return self.node_list[i]

    def links(self) -> Iterator[TracelbLink]:
        for n in self.node_list:
            yield from n.links

    @property
    def linkc(self) -> int:
        return sum(len(n.links) for n in self.node_list)

    def link(self, i: int) -> TracelbLink:
        return list(self.links())[i]

    def is_completed(self) -> bool:
        return self.stop_reason == TracelbStop.COMPLETED

    def flow_links(self) -> set[tuple[str, str]]:
        """(near, far) address pairs seen adjacent: every link whose ends are
        both known, with scamper's clumped links (several addresses per
        middle probe set) expanded: near to every address of the first set,
        addresses of consecutive sets joined where one flow id answered from
        both, and every address of the last set to far."""
        out: set[tuple[str, str]] = set()
        for ln in self.links():
            if ln.near.addr is None:
                continue
            mids = ln.probesets[:-1] if ln.far is not None else ln.probesets
            if not any(ps.addrs() for ps in mids):
                if ln.far is not None and ln.far.addr is not None and len(ln.probesets) == 1:
                    out.add((str(ln.near.addr), str(ln.far.addr)))
                continue
            prev: set[str] = {str(ln.near.addr)}
            prev_by_flow: dict[int, str] | None = None
            for ps in mids:
                here = {str(a) for a in ps.addrs()}
                by_flow = {p.flowid: str(p.replies[0].src) for p in ps.probes if p.replies}
                if prev_by_flow is None:
                    out.update((a, b) for a in prev for b in here)
                else:
                    out.update((prev_by_flow[f], b) for f, b in by_flow.items() if f in prev_by_flow)
                prev, prev_by_flow = here, by_flow
            if ln.far is not None and ln.far.addr is not None:
                out.update((a, str(ln.far.addr)) for a in prev)
        return out

    def to_text(self) -> str:
        """Like ``sc_warts2text``: a header, then one line per link
        ("near -> far", silent hops as ``*``)."""
        head = (f"tracelb from {self.src or '*'} to {self.dst}, {self.nodec} nodes, {self.linkc} links, "
                f"{self.probec} probes, {self.confidence}%")
        lines = [head]
        for ln in self.links():
            near, far = ln.pair()
            mids = ln.probesets[:-1] if ln.far is not None else ln.probesets
            parts = [near]
            for ps in mids:
                a = [str(x) for x in ps.addrs()]
                parts.append("*" if not a else a[0] if len(a) == 1 else f"({', '.join(a)})")
            if ln.far is not None:
                parts.append(far or "*")
            lines.append(" -> ".join(parts))
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# scamper JSON
# ---------------------------------------------------------------------------

_KEYS = frozenset({"type", "version", "userid", "method", "src", "dst", "sport", "dport", "start",
                   "probe_size", "firsthop", "attempts", "confidence", "tos", "gaplimit", "wait_timeout",
                   "wait_probe", "probec", "probec_max", "nodec", "linkc", "nodes", EXT_KEY})
_UDP_TCP = ("udp-dport", "udp-sport", "tcp-sport", "tcp-ack-sport")


def _reply_json(probe: TracelbProbe, r: TracelbReply) -> dict[str, Any]:
    d: dict[str, Any] = {"rx": ns_to_timeval(r.rx_ns), "ttl": r.reply_ttl or 0,
                         "rtt": RawNumber(ns_to_ms_str((r.rx_ns // 1000 - probe.tx_ns // 1000) * 1000))}
    if r.src.version == 4:
        d["ipid"] = r.reply_ipid or 0
    if r.tcp_flags is not None:
        d["tcp_flags"] = r.tcp_flags
    else:
        d.update(icmp_type=r.icmp_type or 0, icmp_code=r.icmp_code or 0, icmp_q_tos=r.icmp_q_tos or 0)
        v4 = r.src.version == 4
        if r.icmp_type in ((3, 11) if v4 else (1, 3)):
            d["icmp_q_ttl"] = r.icmp_q_ttl or 0
    return d


def _probe_json(p: TracelbProbe, addr: Addr | None) -> dict[str, Any]:
    rs = [r for r in p.replies if addr is not None and r.src == addr]
    d: dict[str, Any] = {"tx": ns_to_timeval(p.tx_ns), "replyc": len(rs), "ttl": p.ttl,
                         "attempt": p.attempt, "flowid": p.flowid}
    if rs:
        d["replies"] = [_reply_json(p, r) for r in rs]
    return d


def _set_json(ps: TracelbProbeset) -> list[dict[str, Any]]:
    """A middle probe set: one entry per address in address order (as
    sc_warts2json lists them), then "*" if some probe got nothing."""
    out: list[dict[str, Any]] = []
    for a in sorted(ps.addrs()):
        out.append({"addr": str(a), "probes": [_probe_json(p, a) for p in ps.probes
                                                if any(r.src == a for r in p.replies)]})
    if any(not p.replies for p in ps.probes) or not out:
        out.append({"addr": "*"})
    return out


def _node_json(n: TracelbNode) -> dict[str, Any]:
    d: dict[str, Any] = {"addr": str(n.addr) if n.addr is not None else "*"}
    if n.q_ttl is not None:
        d["q_ttl"] = n.q_ttl
    d["linkc"] = len(n.links)
    if len(n.links) > 1:
        group = []
        for ln in n.links:
            far = ln.far.addr if ln.far is not None else None
            group.append({"addr": str(far) if far is not None else "*",
                          "probes": [_probe_json(p, far) for p in ln.probesets[0].probes]})
        d["links"] = [group]
    else:
        ln = n.links[0]
        hops: list[Any] = [_set_json(ps) for ps in ln.probesets[:-1]]
        if ln.far is not None:
            far = ln.far.addr
            hops.append([{"addr": str(far) if far is not None else "*",
                          "probes": [_probe_json(p, far) for p in ln.probesets[-1].probes]}])
        else:
            hops.append(_set_json(ln.probesets[-1]))
        d["links"] = hops
    return d


def tracelb_to_json(t: Tracelb) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "tracelb", "version": TRACELB_VERSION, "userid": t.userid,
                         "method": t.method}
    if t.src is not None:
        d["src"] = str(t.src)
    d["dst"] = str(t.dst)
    if t.method in _UDP_TCP:
        d["sport"], d["dport"] = t.sport or 0, t.dport or 0
    tv = ns_to_timeval(t.start_ns)
    d["start"] = {**tv, "ftime": t.start.astimezone().strftime("%Y-%m-%d %H:%M:%S")}
    d.update(probe_size=t.probe_size, firsthop=t.firsthop, attempts=t.attempts, confidence=t.confidence,
             tos=t.tos, gaplimit=t.gaplimit, wait_timeout=int(t.wait_timeout.total_seconds()),
             wait_probe=int(round(t.wait_probe.total_seconds() * 1000)) // 10 * 10,
             probec=t.probec, probec_max=t.probec_max, nodec=t.nodec, linkc=t.linkc)
    nodes = [_node_json(n) for n in t.node_list if n.links]
    if nodes:
        d["nodes"] = nodes
    _put_extra(d, t.extra, _KEYS)
    ext: dict[str, Any] = {}
    if t.stop_reason is not None:
        ext["stop_reason"] = str(t.stop_reason)
    if t.vp is not None:
        ext["vp"] = t.vp
    ext["wait_timeout_us"] = t.wait_timeout // _dt.timedelta(microseconds=1)
    ext["wait_probe_us"] = t.wait_probe // _dt.timedelta(microseconds=1)
    d[EXT_KEY] = ext
    return d


def _reply_read(raw: Any, addr: Addr, tx_ns: int, where: str) -> TracelbReply:
    f = _Fields(raw, where)
    rx = f.timeval("rx")
    if rx is None:
        ms = f.ms("rtt", True)
        rx = tx_ns + (ms or 0)
    return TracelbReply(src=addr, rx_ns=rx, reply_ttl=f.int("ttl"), reply_ipid=f.int("ipid"),
                        icmp_type=f.int("icmp_type"), icmp_code=f.int("icmp_code"),
                        icmp_q_tos=f.int("icmp_q_tos"), icmp_q_ttl=f.int("icmp_q_ttl"),
                        tcp_flags=f.int("tcp_flags"))


def _probes_read(raw: Any, where: str) -> tuple[Addr | None, list[TracelbProbe]]:
    f = _Fields(raw, where)
    a = f.str("addr", True)
    if a == "*":
        return None, []
    addr = f.addr("addr", True)
    out = []
    for i, pr in enumerate(f.list("probes")):
        pf = _Fields(pr, f"{where}.probes[{i}]")
        tx = pf.timeval("tx", True)
        p = TracelbProbe(tx_ns=tx, ttl=pf.int("ttl", True), flowid=pf.int("flowid", True),  # type: ignore[arg-type]
                         attempt=pf.int("attempt", default=0))
        p.replies = [_reply_read(r, addr, tx, f"{where}.probes[{i}].replies[{j}]")  # type: ignore[arg-type]
                     for j, r in enumerate(pf.list("replies"))]
        out.append(p)
    return addr, out


def _merge(sets: list[tuple[Addr | None, list[TracelbProbe]]]) -> TracelbProbeset:
    """One probe set from its per-address groups (a probe answered from two
    addresses appears in both groups: keep it once with both replies)."""
    ps = TracelbProbeset()
    seen: dict[tuple[int, int, int, int], TracelbProbe] = {}
    for _, probes in sets:
        for p in probes:
            key = (p.tx_ns, p.ttl, p.flowid, p.attempt)
            if key in seen:
                seen[key].replies.extend(p.replies)
            else:
                seen[key] = p
                ps.probes.append(p)
    return ps


def tracelb_from_json(d: dict[str, Any]) -> Tracelb:
    f = _Fields(d, "tracelb")
    ext = f.ext()
    wt_us = ext.get("wait_timeout_us")
    wp_us = ext.get("wait_probe_us")
    t = Tracelb(dst=f.addr("dst", True), src=f.addr("src"), start_ns=f.timeval("start") or 0,  # type: ignore[arg-type]
                method=f.str("method") or "udp-dport", sport=f.int("sport"), dport=f.int("dport"),
                probe_size=f.int("probe_size", default=0), firsthop=f.int("firsthop", default=1),
                attempts=f.int("attempts", default=2), confidence=f.int("confidence", default=95),
                tos=f.int("tos", default=0), gaplimit=f.int("gaplimit", default=3),
                wait_timeout=_dt.timedelta(microseconds=wt_us) if isinstance(wt_us, int)
                else _dt.timedelta(seconds=f.int("wait_timeout", default=5)),
                wait_probe=_dt.timedelta(microseconds=wp_us) if isinstance(wp_us, int)
                else _dt.timedelta(milliseconds=f.int("wait_probe", default=250)),
                probec=f.int("probec", default=0), probec_max=f.int("probec_max", default=3000),
                userid=f.int("userid", default=0), stop_reason=ext.get("stop_reason"),
                vp=ext.get("vp") if isinstance(ext.get("vp"), str) else None,
                extra=f.extra(_KEYS))
    by_addr: dict[str, TracelbNode] = {}

    def node(a: Addr | None) -> TracelbNode | None:
        if a is None:
            return None
        n = by_addr.get(str(a))
        if n is None:
            n = by_addr[str(a)] = TracelbNode(addr=a)
        return n

    listed: list[TracelbNode] = []
    for i, raw in enumerate(f.list("nodes")):
        nf = _Fields(raw, f"tracelb.nodes[{i}]")
        a = nf.str("addr", True)
        n = node(None if a == "*" else nf.addr("addr", True))
        if n is None:
            n = TracelbNode(addr=None)
        n.q_ttl = nf.int("q_ttl")
        listed.append(n)
        hops = nf.list("links")
        linkc = nf.int("linkc", default=len(hops))
        where = f"tracelb.nodes[{i}].links"
        if linkc > 1:
            if len(hops) != 1 or not isinstance(hops[0], list):
                raise FormatError(f"{where}: a node with {linkc} links needs one list of link ends")
            for j, end in enumerate(hops[0]):
                far, probes = _probes_read(end, f"{where}[0][{j}]")
                n.links.append(TracelbLink(near=n, far=node(far), probesets=[TracelbProbeset(probes)]))
        elif hops:
            sets = []
            for j, h in enumerate(hops):
                if not isinstance(h, list):
                    raise FormatError(f"{where}[{j}]: expected a list of addresses")
                sets.append([_probes_read(e, f"{where}[{j}][{k}]") for k, e in enumerate(h)])
            last = sets[-1]
            far = last[0][0] if len(last) == 1 else None
            n.links.append(TracelbLink(near=n, far=node(far), probesets=[_merge(s) for s in sets]))
    listed_ids = {id(n) for n in listed}
    t.node_list = listed + [n for n in by_addr.values() if id(n) not in listed_ids]
    return t


register("tracelb", Tracelb, tracelb_to_json, tracelb_from_json)
from . import warts_tracelb as _warts_tracelb  # noqa: E402,F401  (registers warts type 8)
