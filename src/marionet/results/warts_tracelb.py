"""Warts record type 8 (tracelb) for ``Tracelb``: written as scamper writes it.

Layout (scamper's tracelb warts writer): the record's parameters, then every
node (its flags, link count, quoted TTL, address), then every link in node
order (from/to as indices into the node list, its hop count), each link
followed by its probe sets, each set by its probes (tx, flow id, TTL,
attempt, reply count) and each probe by its replies (rx, IP-ID, TTL, flags,
ICMP type/code or TCP flags, quoted TTL/TOS, source address).  One address
table per record, as scamper's.  ``sc_warts2json`` reads what this writes.

Reading type 8 back is left to ``UnknownResult`` for now (the JSON form
round-trips).
"""

from __future__ import annotations

from typing import Any

from .tracelb import Tracelb, TracelbNode, TracelbReply
from .warts_writer import RecordContext, register

__all__ = ["WARTS_TRACELB", "TRACELB_TYPES"]

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


register(Tracelb, WARTS_TRACELB, tracelb_body)
