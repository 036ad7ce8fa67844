"""Warts record type 8 (tracelb) for ``Tracelb``: written as scamper writes it.

Layout (scamper's tracelb warts writer): the record's parameters, then every
node (its flags, link count, quoted TTL, address), then every link in node
order (from/to as indices into the node list, its hop count), each link
followed by its probe sets, each set by its probes (tx, flow id, TTL,
attempt, reply count) and each probe by its replies (rx, IP-ID, TTL, flags,
ICMP type/code or TCP flags, quoted TTL/TOS, source address).  One address
table per record, as scamper's.  ``sc_warts2json`` reads what this writes.

``tracelb_from_warts`` reads the same layout back (ours or scamper's own
files) into a ``Tracelb``; a body that is short, references a node or
address it never defined, or names an unknown method is a bad record
(``Truncated``/``ValueError``, which the reader turns into ``FormatError``).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from . import warts as _warts
from .tracelb import Tracelb, TracelbLink, TracelbNode, TracelbProbe, TracelbProbeset, TracelbReply
from .warts_writer import RecordContext, register

__all__ = ["WARTS_TRACELB", "TRACELB_TYPES", "tracelb_from_warts"]

WARTS_TRACELB = 8
#: scamper's SCAMPER_TRACELB_TYPE_* numbers.
TRACELB_TYPES = {"udp-dport": 1, "icmp-echo": 2, "udp-sport": 3, "tcp-sport": 4, "tcp-ack-sport": 5}
_NODE_FLAG_QTTL = 0x01
_REPLY_FLAG_REPLY_TTL = 0x01
_REPLY_FLAG_TCP = 0x02


def _reply(r: TracelbReply, ctx: RecordContext, table: Any) -> bytes:
    tcp = r.tcp_flags is not None
    flags = (_REPLY_FLAG_REPLY_TTL if r.reply_ttl is not None else 0) | (_REPLY_FLAG_TCP if tcp else 0)
    f: dict[int, bytes] = {1: ctx.timeval(r.rx_ns), 2: ctx.u16(r.reply_ipid or 0), 4: ctx.u8(flags)}
    if r.reply_ttl is not None:
        f[3] = ctx.u8(r.reply_ttl)
    if tcp:
        f[6] = ctx.u8(r.tcp_flags or 0)
    else:
        f[5] = ctx.u8(r.icmp_type or 0) + ctx.u8(r.icmp_code or 0)
        f[8] = ctx.u8(r.icmp_q_ttl or 0)
        f[9] = ctx.u8(r.icmp_q_tos or 0)
    f[11] = table.ref(r.src)
    return ctx.params(f)


def tracelb_body(t: Tracelb, ctx: RecordContext) -> bytes:
    """The body of a type-8 record for ``t``."""
    if t.method not in TRACELB_TYPES:
        raise ValueError(f"tracelb method {t.method!r} has no warts type")
    if t.src is None:
        raise ValueError("a warts tracelb record needs the source address")
    nodes: list[TracelbNode] = list(t.nodes())
    if any(n.addr is None for n in nodes):
        raise ValueError("warts tracelb nodes need an address (scamper's reader refuses '*' nodes)")
    index = {id(n): i for i, n in enumerate(nodes)}
    table = ctx.AddrTable()
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    wp_cs = t.wait_probe.total_seconds() * 100
    f.update({5: ctx.timeval(t.start_ns), 6: ctx.u16(t.sport or 0), 7: ctx.u16(t.dport or 0),
              8: ctx.u16(t.probe_size), 9: ctx.u8(TRACELB_TYPES[t.method]), 10: ctx.u8(t.firsthop),
              11: ctx.u8(min(255, int(t.wait_timeout.total_seconds()))), 12: ctx.u8(min(255, int(wp_cs))),
              13: ctx.u8(t.attempts), 14: ctx.u8(t.confidence), 15: ctx.u8(t.tos), 16: ctx.u16(len(nodes)),
              17: ctx.u16(t.linkc), 18: ctx.u32(t.probec), 19: ctx.u32(t.probec_max), 20: ctx.u8(t.gaplimit),
              21: table.ref(t.src), 22: table.ref(t.dst)})
    if t.userid:
        f[23] = ctx.u32(t.userid)
    out = [ctx.params(f)]
    for n in nodes:
        nf: dict[int, bytes] = {2: ctx.u8(_NODE_FLAG_QTTL if n.q_ttl is not None else 0), 3: ctx.u16(n.linkc)}
        if n.q_ttl is not None:
            nf[4] = ctx.u8(n.q_ttl)
        nf[5] = table.ref(n.addr)
        out.append(ctx.params(nf))
    for n in nodes:
        for ln in n.links:
            lf: dict[int, bytes] = {1: ctx.u16(index[id(ln.near)])}
            if ln.far is not None:
                if id(ln.far) not in index:
                    raise ValueError(f"link {ln!r} leads to a node not in the result")
                lf[2] = ctx.u16(index[id(ln.far)])
            lf[3] = ctx.u8(ln.length)
            out.append(ctx.params(lf))
            for ps in ln.probesets:
                out.append(ctx.params({1: ctx.u16(ps.probec)}))
                for p in ps.probes:
                    out.append(ctx.params({1: ctx.timeval(p.tx_ns), 2: ctx.u16(p.flowid), 3: ctx.u8(p.ttl),
                                           4: ctx.u8(p.attempt), 5: ctx.u16(p.replyc)}))
                    out.extend(_reply(r, ctx, table) for r in p.replies)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

_METHOD_BY_TYPE = {v: k for k, v in TRACELB_TYPES.items()}


def _read(c: Any, spec: list[Any]) -> dict[int, Any]:
    """Read one flags + params block; ``spec[i]`` reads field id i+1."""
    v: dict[int, Any] = {}

    def put(i: int, fn: Any) -> Any:
        return lambda cur: v.__setitem__(i, fn(cur))
    _warts.read_params(c, [put(i + 1, fn) if fn is not None else None for i, fn in enumerate(spec)])
    return v


def _skip_icmpext(c: Any) -> None:
    c.take(c.u16())  # RFC 4884 objects: scamper's tracelb JSON does not show them


def _reply_read(c: Any, table: Any) -> TracelbReply:
    C = _warts.Cursor
    v = _read(c, [C.timeval_ns, C.u16, C.u8, C.u8, lambda cur: (cur.u8(), cur.u8()), C.u8, _skip_icmpext,
                  C.u8, C.u8, None, table.read])
    src = v.get(11)
    if src is None:
        raise ValueError("tracelb reply without a source address")
    flags = v.get(4, 0)
    tcp = bool(flags & _REPLY_FLAG_TCP)
    tc = v.get(5, (0, 0))
    return TracelbReply(src=src, rx_ns=v.get(1, 0), reply_ttl=v.get(3) if flags & _REPLY_FLAG_REPLY_TTL else None,
                        reply_ipid=v.get(2) if src.version == 4 else None,
                        icmp_type=None if tcp else tc[0], icmp_code=None if tcp else tc[1],
                        icmp_q_ttl=None if tcp else v.get(8, 0), icmp_q_tos=None if tcp else v.get(9, 0),
                        tcp_flags=v.get(6, 0) if tcp else None)


def tracelb_from_warts(body: bytes, _reader: Any = None) -> Tracelb:
    """A type-8 record body (``WartsReader`` calls this) as a ``Tracelb``."""
    C = _warts.Cursor
    c = C(body)
    table = _warts.AddrTable()
    v = _read(c, [C.u32, C.u32, None, None, C.timeval_ns, C.u16, C.u16, C.u16, C.u8, C.u8, C.u8, C.u8, C.u8,
                  C.u8, C.u8, C.u16, C.u16, C.u32, C.u32, C.u8, table.read, table.read, C.u32])
    if v.get(21) is None or v.get(22) is None:
        raise ValueError("tracelb record without source and destination addresses")
    method = _METHOD_BY_TYPE.get(v.get(9, 1))
    if method is None:
        raise ValueError(f"unknown tracelb method type {v.get(9)}")
    udp_tcp = method != "icmp-echo"
    t = Tracelb(dst=v[22], src=v[21], start_ns=v.get(5, 0), method=method,
                sport=v.get(6, 0) if udp_tcp else None, dport=v.get(7, 0) if udp_tcp else None,
                probe_size=v.get(8, 0), firsthop=v.get(10, 1), attempts=v.get(13, 2),
                confidence=v.get(14, 95), tos=v.get(15, 0), gaplimit=v.get(20, 3),
                wait_timeout=_dt.timedelta(seconds=v.get(11, 5)),
                wait_probe=_dt.timedelta(milliseconds=10 * v.get(12, 25)),
                probec=v.get(18, 0), probec_max=v.get(19, 3000), userid=v.get(23, 0))
    nodes: list[TracelbNode] = []
    linkc: list[int] = []
    for _ in range(v.get(16, 0)):
        nv = _read(c, [None, C.u8, C.u16, C.u8, table.read])
        nodes.append(TracelbNode(addr=nv.get(5), q_ttl=nv.get(4) if nv.get(2, 0) & _NODE_FLAG_QTTL else None))
        linkc.append(nv.get(3, 0))
    for _ in range(v.get(17, 0)):
        lv = _read(c, [C.u16, C.u16, C.u8])
        near, far = lv.get(1, 0), lv.get(2)
        if near >= len(nodes) or (far is not None and far >= len(nodes)):
            raise ValueError(f"tracelb link {near} -> {far} names a node past the {len(nodes)} listed")
        if not lv.get(3):
            raise ValueError(f"tracelb link {near} -> {far} spans no hop")
        sets = []
        for _ in range(lv[3]):
            pc = _read(c, [C.u16]).get(1, 0)
            ps = TracelbProbeset()
            for _ in range(pc):
                pv = _read(c, [C.timeval_ns, C.u16, C.u8, C.u8, C.u16])
                pr = TracelbProbe(tx_ns=pv.get(1, 0), flowid=pv.get(2, 0), ttl=pv.get(3, 0), attempt=pv.get(4, 0))
                pr.replies = [_reply_read(c, table) for _ in range(pv.get(5, 0))]
                ps.probes.append(pr)
            sets.append(ps)
        n = nodes[near]
        n.links.append(TracelbLink(near=n, far=nodes[far] if far is not None else None, probesets=sets))
    for i, n in enumerate(nodes):
        if n.addr is None:
            raise ValueError("tracelb node without an address")
        if len(n.links) != linkc[i]:  # links are listed node by node, linkc of each
            raise ValueError(f"tracelb node {i} says {linkc[i]} links, the record has {len(n.links)}")
    t.node_list = nodes
    return t


register(Tracelb, WARTS_TRACELB, tracelb_body)
_warts.register(WARTS_TRACELB, tracelb_from_warts)
