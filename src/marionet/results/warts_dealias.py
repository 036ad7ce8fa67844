"""Warts record type 9 (dealias) for ``Dealias``: written and read as scamper does.

Layout (scamper's dealias warts code, the same from 2016 to 2024 for the
methods both know): the record's parameters (list, cycle, start, method,
result, probe count, userid), then the method's parameters and its
probedefs, then every probe (probedef id, tx, reply count, IP-ID, seq), each
followed by its replies (rx, IP-ID, TTL, ICMP type/code and quoted TTL or
protocol and TCP flags, source, IPv6 32-bit ID, size).  One address table
per record.  Numbers: methods mercator 1 … midardisc 7, probedef methods
icmp-echo 1 … tcp-syn-sport 6, results none 0 … ipid-echo 4 (the order of
``DEALIAS_METHODS``/``PROBE_METHODS``/``RESULTS``).

What warts cannot carry, and so is lost on a round trip: times below the
microsecond; ally/mercator/prefixscan/radargun waits below the millisecond
(wait_probe, wait_round) or second (wait_timeout) — midarest and midardisc
keep µs; midardisc's wait_probe; radargun's fudge (its ``alias_sets`` are
recomputed from the probes with fudge 0 on reading); the VP name, errors,
``tx_ts_source`` and ``extra`` (prefixscan's ``extra["prefix"]`` is rebuilt
from ``b``).  An IPv4 reply with no IP-ID reads back as IP-ID 0 (scamper
writes none for 0); a probe never sent (no tx) reads back without one.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from . import warts as _warts
from .common import NS_PER_US, Addr
from .dealias import (DEALIAS_METHODS, PROBE_METHODS, RESULTS, Dealias, DealiasProbe, DealiasProbedef,
                      DealiasReply, radargun_sets)
from .warts_writer import RecordContext, register

__all__ = ["WARTS_DEALIAS", "dealias_body", "dealias_from_warts"]

WARTS_DEALIAS = 9
_METHOD_NUM = {m: i + 1 for i, m in enumerate(DEALIAS_METHODS)}
_PD_METHOD_NUM = {m: i + 1 for i, m in enumerate(PROBE_METHODS)}
_RESULT_NUM = {r: i for i, r in enumerate(RESULTS)}
_REPLY_FLAG_IPID32 = 0x01
_TCP_ACK, _TCP_SYN = 0x10, 0x02
_US = NS_PER_US
_MS = 1_000_000
_S = 1_000_000_000


def _addr(a: str | None, like: str | None = None) -> Addr:
    if a is None:  # scamper's readers need both addresses: the unspecified one stands for "unknown"
        return Addr("::" if like is not None and ":" in like else "0.0.0.0")
    return Addr(a)


def _u8c(v: int) -> int:
    return max(0, min(0xFF, v))


def _u16c(v: int) -> int:
    return max(0, min(0xFFFF, v))


def _rtt(ns: int) -> bytes:
    return RecordContext.u32(min(0xFFFFFFFF, max(0, ns // _US)))


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

def _probedef(pd: DealiasProbedef, ctx: RecordContext, table: Any) -> bytes:
    if pd.method not in _PD_METHOD_NUM:
        raise ValueError(f"dealias probedef method {pd.method!r} has no warts number")
    if pd.dst is None:
        raise ValueError(f"dealias probedef {pd.id} has no destination (warts needs one)")
    icmp = pd.method == "icmp-echo"
    tcp = pd.method.startswith("tcp")
    f: dict[int, bytes] = {}
    if pd.id:
        f[3] = ctx.u32(pd.id)
    f[4] = ctx.u8(_PD_METHOD_NUM[pd.method])
    f[5] = ctx.u8(pd.ttl)
    if not icmp:
        f[7] = ctx.u16(pd.sport or 0) + ctx.u16(pd.dport or 0)
    if tcp:
        f[8] = ctx.u8(_TCP_SYN if pd.method == "tcp-syn-sport" else _TCP_ACK)
    if icmp:
        f[9] = ctx.u16(pd.icmp_id or 0)
    f[10] = table.ref(_addr(pd.dst))
    f[11] = table.ref(_addr(pd.src, pd.dst))
    if pd.size:
        f[12] = ctx.u16(pd.size)
    if icmp and pd.icmp_sum:
        f[14] = ctx.u16(pd.icmp_sum)
    return ctx.params(f)


def _method_params(x: Dealias, ctx: RecordContext, table: Any) -> bytes:
    m, n = x.method, len(x.probedefs)
    f: dict[int, bytes] = {}
    flags = x.extra.get("flags") if isinstance(x.extra.get("flags"), int) else 0
    if m in ("ally", "mercator", "bump") and n != (1 if m == "mercator" else 2):
        raise ValueError(f"a warts {m} record has {1 if m == 'mercator' else 2} probedef(s), this result has {n}")
    if m == "mercator":
        f.update({1: ctx.u8(_u8c(x.attempts)), 2: ctx.u8(_u8c(x.wait_timeout_ns // _S))})
    elif m == "ally":
        f.update({1: ctx.u16(_u16c(x.wait_probe_ns // _MS)), 2: ctx.u8(_u8c(x.wait_timeout_ns // _S)),
                  3: ctx.u8(_u8c(x.attempts))})
        if x.fudge:
            f[4] = ctx.u16(x.fudge)
        if flags:
            f[5] = ctx.u8(flags)
    elif m == "radargun":
        f.update({1: ctx.u32(n), 2: ctx.u16(_u16c(x.attempts)), 3: ctx.u16(_u16c(x.wait_probe_ns // _MS)),
                  4: ctx.u32(x.wait_round_ns // _MS), 5: ctx.u8(_u8c(x.wait_timeout_ns // _S))})
        if flags:
            f[6] = ctx.u8(flags)
    elif m == "prefixscan":
        if not x.prefix or not x.prefix[0] or not x.prefix[1]:
            raise ValueError("a warts prefixscan record needs prefix (a, b/len, ab)")
        a, b, ab = x.prefix
        baddr, _, blen = b.partition("/")
        f[1] = table.ref(Addr(a))
        f[2] = table.ref(Addr(baddr))
        if ab:
            f[3] = table.ref(Addr(ab.split("/")[0]))
        f.update({5: ctx.u8(int(blen) if blen else 32), 6: ctx.u8(_u8c(x.attempts)), 7: ctx.u16(x.fudge),
                  8: ctx.u16(_u16c(x.wait_probe_ns // _MS)), 9: ctx.u8(_u8c(x.wait_timeout_ns // _S))})
        if n:
            f[10] = ctx.u16(n)
        if flags:
            f[11] = ctx.u8(flags)
        if x.replyc != 5:
            f[12] = ctx.u8(x.replyc)
    elif m == "bump":
        f.update({1: ctx.u16(_u16c(x.wait_probe_ns // _MS)), 2: ctx.u16(int(x.extra.get("bump_limit", 0))),
                  3: ctx.u8(_u8c(x.attempts))})
    elif m == "midarest":
        f.update({1: ctx.u16(n), 2: ctx.u8(_u8c(x.attempts)), 3: _rtt(x.wait_probe_ns), 4: _rtt(x.wait_round_ns),
                  5: _rtt(x.wait_timeout_ns)})
    elif m == "midardisc":
        f.update({1: ctx.u32(n), 2: _rtt(x.wait_timeout_ns)})
        if x.schedule:
            f[3] = ctx.u32(len(x.schedule)) + b"".join(
                ctx.timeval(off) + ctx.u32(begin) + ctx.u32(end) for off, begin, end in x.schedule)
        if x.startat_ns is not None:
            f[4] = ctx.timeval(x.startat_ns)
    return ctx.params(f) + b"".join(_probedef(pd, ctx, table) for pd in x.probedefs)


def _reply(r: DealiasReply, ctx: RecordContext, table: Any) -> bytes:
    src = Addr(r.src)
    v4 = src.is_ipv4()
    icmp = r.proto in (1, 58)
    f: dict[int, bytes] = {2: ctx.timeval(r.rx_ns)}
    if v4 and r.ipid:
        f[3] = ctx.u16(r.ipid)
    f[4] = ctx.u8(r.ttl)
    if icmp:
        f[5] = ctx.u8(r.icmp_type or 0) + ctx.u8(r.icmp_code or 0)
        if r.icmp_q_ttl is not None:
            f[6] = ctx.u8(r.icmp_q_ttl)
    else:
        f[8] = ctx.u8(r.proto)
    if r.proto == 6:
        f[9] = ctx.u8(r.tcp_flags or 0)
    f[10] = table.ref(src)
    if not v4 and r.ipid is not None:
        if r.ipid:
            f[11] = ctx.u32(r.ipid)
        f[12] = ctx.u8(_REPLY_FLAG_IPID32)
    if r.size:
        f[13] = ctx.u16(r.size)
    return ctx.params(f)


def _probe(p: DealiasProbe, x: Dealias, ctx: RecordContext, table: Any) -> bytes:
    if not 0 <= p.probedef < len(x.probedefs):
        raise ValueError(f"dealias probe names probedef {p.probedef}; the result has {len(x.probedefs)}")
    if len(p.replies) > 0xFFFF:
        raise ValueError(f"a dealias probe has {len(p.replies)} replies; warts holds at most 65535")
    pd = x.probedefs[p.probedef]
    f: dict[int, bytes] = {}
    if p.probedef:
        f[1] = ctx.u32(p.probedef)
    f[2] = ctx.timeval(p.tx_ns or 0)
    if p.replies:
        f[3] = ctx.u16(len(p.replies))
    if ":" not in str(pd.dst):
        f[4] = ctx.u16(p.ipid or 0)
    if p.seq:
        f[5] = ctx.u32(p.seq)
    return ctx.params(f) + b"".join(_reply(r, ctx, table) for r in p.replies)


def dealias_body(x: Dealias, ctx: RecordContext) -> bytes:
    """The body of a type-9 record for ``x`` (``ValueError`` for what warts cannot hold)."""
    for i, pd in enumerate(x.probedefs):
        if pd.id != i:  # warts probes name their probedef by position
            raise ValueError(f"dealias probedef {i} has id {pd.id}; warts needs ids equal to positions")
    table = ctx.AddrTable()
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    f[3] = ctx.timeval(x.start_ns)
    f[4] = ctx.u8(_METHOD_NUM[x.method])
    if _RESULT_NUM[x.result]:
        f[5] = ctx.u8(_RESULT_NUM[x.result])
    if x.probes:
        f[6] = ctx.u32(len(x.probes))
    if x.userid:
        f[7] = ctx.u32(x.userid)
    out = [ctx.params(f), _method_params(x, ctx, table)]
    out.extend(_probe(p, x, ctx, table) for p in x.probes)
    return b"".join(out)


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def _read(c: Any, spec: list[Any]) -> dict[int, Any]:
    """One flags + params block; ``spec[i]`` reads field id i+1 (None: cannot)."""
    v: dict[int, Any] = {}

    def put(i: int, fn: Callable[[Any], Any]) -> Callable[[Any], None]:
        return lambda cur: v.__setitem__(i, fn(cur))
    _warts.read_params(c, [put(i + 1, fn) if fn is not None else None for i, fn in enumerate(spec)])
    return v


def _s(a: Any) -> str | None:
    return None if a is None else str(a)


def _probedef_read(c: Any, table: Any, i: int) -> DealiasProbedef:
    C = _warts.Cursor
    v = _read(c, [None, None, C.u32, C.u8, C.u8, C.u8, lambda cur: (cur.u16(), cur.u16()), C.u8, C.u16,
                  table.read, table.read, C.u16, C.u16, C.u16])
    num = v.get(4, 0)
    if not 1 <= num <= len(PROBE_METHODS):
        raise ValueError(f"dealias probedef {i}: unknown probe method {num}")
    method = PROBE_METHODS[num - 1]
    if v.get(10) is None or v.get(11) is None:
        raise ValueError(f"dealias probedef {i} without source and destination addresses")
    dst, src = str(v[10]), str(v[11])
    if ipaddress.ip_address(src).is_unspecified:
        src = None  # type: ignore[assignment]
    icmp = method == "icmp-echo"
    four = v.get(7)
    csum = v.get(14, four[1] if icmp and four else 0)  # old writers kept the ICMP checksum in the 4 bytes
    return DealiasProbedef(id=v.get(3, 0), method=method, dst=dst, src=src, ttl=v.get(5, 0), size=v.get(12, 0),
                           sport=None if icmp else (four or (0, 0))[0], dport=None if icmp else (four or (0, 0))[1],
                           icmp_id=v.get(9, 0) if icmp else None, icmp_sum=csum if icmp else None)


def _icmpext_skip(c: Any) -> None:
    c.take(c.u16())  # RFC 4884 objects: the Dealias model has no place for them


def _reply_read(c: Any, table: Any) -> DealiasReply:
    C = _warts.Cursor
    v = _read(c, [None, C.timeval_ns, C.u16, C.u8, lambda cur: (cur.u8(), cur.u8()), C.u8, _icmpext_skip, C.u8,
                  C.u8, table.read, C.u32, C.u8, C.u16])
    src = v.get(10)
    if src is None:
        raise ValueError("dealias reply without a source address")
    v4 = src.is_ipv4()
    proto = v.get(8, 1 if v4 else 58)
    icmp = proto in (1, 58)
    tc = v.get(5, (0, 0))
    ipid = v.get(3, 0) if v4 else (v.get(11, 0) if v.get(12, 0) & _REPLY_FLAG_IPID32 else None)
    return DealiasReply(src=str(src), rx_ns=v.get(2, 0), ipid=ipid, ttl=v.get(4, 0), proto=proto,
                        icmp_type=tc[0] if icmp else None, icmp_code=tc[1] if icmp else None,
                        icmp_q_ttl=v.get(6) if icmp and tc[0] not in (0, 129) else None,  # echo replies quote nothing
                        tcp_flags=v.get(9, 0) if proto == 6 else None,
                        size=v.get(13, 0))


def _method_read(method: str, c: Any, table: Any, x: Dealias) -> None:
    C = _warts.Cursor
    if method == "mercator":
        v = _read(c, [C.u8, C.u8])
        x.attempts, x.wait_timeout_ns, n = v.get(1, 0), v.get(2, 0) * _S, 1
    elif method == "ally":
        v = _read(c, [C.u16, C.u8, C.u8, C.u16, C.u8])
        x.wait_probe_ns, x.wait_timeout_ns = v.get(1, 0) * _MS, v.get(2, 0) * _S
        x.attempts, x.fudge, n = v.get(3, 0), v.get(4, 0), 2
        if v.get(5):
            x.extra["flags"] = v[5]
    elif method == "radargun":
        v = _read(c, [C.u32, C.u16, C.u16, C.u32, C.u8, C.u8])
        n, x.attempts = v.get(1, 0), v.get(2, 0)
        x.wait_probe_ns, x.wait_round_ns, x.wait_timeout_ns = v.get(3, 0) * _MS, v.get(4, 0) * _MS, v.get(5, 0) * _S
        if v.get(6):
            x.extra["flags"] = v[6]
    elif method == "prefixscan":
        def xs(cur: Any) -> list[Any]:
            return [table.read(cur) for _ in range(cur.u16())]
        v = _read(c, [table.read, table.read, table.read, xs, C.u8, C.u8, C.u16, C.u16, C.u8, C.u16, C.u8, C.u8])
        if v.get(1) is None or v.get(2) is None:
            raise ValueError("dealias prefixscan without its a and b addresses")
        a, b, plen = str(v[1]), str(v[2]), v.get(5, 0)
        ab = None
        if v.get(3) is not None:
            ix, iy = int(ipaddress.ip_address(b)), int(ipaddress.ip_address(str(v[3])))
            bits = 32 if v[2].is_ipv4() else 128
            ab = f"{v[3]}/{bits - (ix ^ iy).bit_length()}"
        x.prefix = (a, f"{b}/{plen}", ab)
        x.attempts, x.fudge = v.get(6, 0), v.get(7, 0)
        x.wait_probe_ns, x.wait_timeout_ns = v.get(8, 0) * _MS, v.get(9, 0) * _S
        n, x.replyc = v.get(10, 0), v.get(12, 5)
        if v.get(11):
            x.extra["flags"] = v[11]
        if v.get(4):
            x.extra["xs"] = [str(a) for a in v[4]]
        x.extra["prefix"] = str(ipaddress.ip_network(f"{b}/{plen}", strict=False))
    elif method == "bump":
        v = _read(c, [C.u16, C.u16, C.u8])
        x.wait_probe_ns, x.attempts, n = v.get(1, 0) * _MS, v.get(3, 0), 2
        x.extra["bump_limit"] = v.get(2, 0)
    elif method == "midarest":
        v = _read(c, [C.u16, C.u8, C.u32, C.u32, C.u32])
        n, x.attempts = v.get(1, 0), v.get(2, 0)
        x.wait_probe_ns, x.wait_round_ns, x.wait_timeout_ns = (v.get(k, 0) * _US for k in (3, 4, 5))
    else:  # midardisc
        def sched(cur: Any) -> list[tuple[int, int, int]]:
            return [(cur.timeval_ns(), cur.u32(), cur.u32()) for _ in range(cur.u32())]
        v = _read(c, [C.u32, C.u32, sched, C.timeval_ns])
        n, x.wait_timeout_ns = v.get(1, 0), v.get(2, 0) * _US
        x.schedule = v.get(3) or []
        x.attempts = len(x.schedule)
        x.startat_ns = v.get(4)
    x.probedefs = [_probedef_read(c, table, i) for i in range(n)]


def dealias_from_warts(body: bytes, _reader: Any = None) -> Dealias:
    """A type-9 record body (``WartsReader`` calls this) as a ``Dealias``."""
    C = _warts.Cursor
    c = C(body)
    table = _warts.AddrTable()
    v = _read(c, [C.u32, C.u32, C.timeval_ns, C.u8, C.u8, C.u32, C.u32])
    num, res = v.get(4, 0), v.get(5, 0)
    if not 1 <= num <= len(DEALIAS_METHODS):
        raise ValueError(f"unknown dealias method {num}")
    if res >= len(RESULTS):
        raise ValueError(f"unknown dealias result {res}")
    x = Dealias(method=DEALIAS_METHODS[num - 1], start_ns=v.get(3, 0), result=RESULTS[res], userid=v.get(7, 0))
    _method_read(x.method, c, table, x)
    for _ in range(v.get(6, 0)):
        pv = _read(c, [C.u32, C.timeval_ns, C.u16, C.u16, C.u32])
        pid = pv.get(1, 0)
        if pid >= len(x.probedefs):
            raise ValueError(f"dealias probe names probedef {pid}; the record has {len(x.probedefs)}")
        pd = x.probedefs[pid]
        v4 = ":" not in str(pd.dst)
        p = DealiasProbe(probedef=pid, dst=str(pd.dst), seq=pv.get(5, 0), tx_ns=pv.get(2) or None,
                         ipid=pv.get(4, 0) if v4 else None)
        p.replies = [_reply_read(c, table) for _ in range(pv.get(3, 0))]
        x.probes.append(p)
    if x.method == "radargun":
        x.alias_sets = radargun_sets(x.probes, 0)
    return x


register(Dealias, WARTS_DEALIAS, dealias_body)
_warts.register(WARTS_DEALIAS, dealias_from_warts)
