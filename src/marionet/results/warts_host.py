"""warts "host" records (type 0x0e): ``DnsResult`` to and from scamper's binary format.

Why: scamper writes its DNS lookups as host records, so a script that sends
DNS results to a ``.warts`` output file (as scamper scripts do) must get
one, readable by scamper's own tools (``sc_wartsdump``, ``sc_warts2json``).

Layout (scamper_host_warts.c): the host's parameter block — list, cycle,
userid, src, dst, start, flags (0x01 no recursion, 0x02 TCP), wait (ms),
stop (none/done/timeout/halted/error), retries, qtype, qclass, qname,
qcount — then per query a parameter block (tx, rx, id, an/ns/ar counts,
and since 2023 rcode and the header flags byte) followed by its records,
each a parameter block (class, type, name, ttl, data).  Record data is a
``uint16`` kind then the value: 1 address, 2 name (NS/CNAME/PTR), 3 SOA and
4 MX (parameter blocks), 5 TXT (newer scamper only).

What we write is what scamper 20211212 (Debian's, our oracle) reads: its
reader fails a whole host record on a resource record of any type it has no
data kind for (TXT, SRV, …, with or without data), so warts keeps the IN
records of types A, AAAA, NS, CNAME, PTR, SOA and MX and leaves the others
out (section counts follow); JSON output keeps every record.  The reader
also takes newer scamper's TXT records (kind 5).  scamper 20211212 writes a query's send
time in its receive-time slot as well; a query whose rx equals its tx is
read as "no receive time".
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable

from .common import Addr
from .dns import (DnsMX, DnsQuery, DnsResult, DnsRR, DnsSOA, DnsStop, _rdata_text, header_flag_names,
                  rrtype_value)
from .warts import AddrTable, Cursor, Truncated, read_params
from .warts import register as register_reader
from .warts_writer import RecordContext
from .warts_writer import register as register_writer

__all__ = ["HOST_RTYPE", "host_body", "host_decode"]

HOST_RTYPE = 0x0E

_FLAG_NORECURSE = 0x0001
_FLAG_TCP = 0x0002
_STOPS = (DnsStop.NONE, DnsStop.DONE, DnsStop.TIMEOUT, DnsStop.HALTED, DnsStop.ERROR)
_CLASSES = {"IN": 1, "CH": 3, "HS": 4}
_CLASS_NAMES = {v: k for k, v in _CLASSES.items()}
_DATA_ADDR, _DATA_STR, _DATA_SOA, _DATA_MX, _DATA_TXT = 1, 2, 3, 4, 5
_STR_TYPES = ("NS", "CNAME", "PTR")
#: record types with a data kind in every scamper version (TXT, kind 5, is 2023's)
_WARTS_RR_TYPES = frozenset({"A", "AAAA", "NS", "CNAME", "PTR", "SOA", "MX"})
# header flags word bits (dns.py's names) <-> scamper's query flags byte
_FLAG_WORD_SHIFT = 4


def _class_num(name: str) -> int:
    up = name.upper()
    if up in _CLASSES:
        return _CLASSES[up]
    if up.startswith("CLASS") and up[5:].isdigit():
        return int(up[5:])
    raise ValueError(f"DNS class {name!r} has no number")


def _class_name(num: int) -> str:
    return _CLASS_NAMES.get(num, f"CLASS{num}")


def _type_name(num: int) -> str:
    import dns.rdatatype

    return dns.rdatatype.to_text(num)  # type: ignore[arg-type]


def _flags_byte(names: list[str]) -> int:
    from .dns import _FLAG_BITS

    bits = dict(_FLAG_BITS)
    word = 0
    for n in names:
        word |= bits.get(n, 0)
    return (word >> _FLAG_WORD_SHIFT) & 0xFF


# -- writing -------------------------------------------------------------------

def _rr_data(rr: DnsRR, ctx: RecordContext, table: Any) -> bytes | None:
    if rr.address is not None:
        return ctx.u16(_DATA_ADDR) + table.ref(rr.address)
    if rr.target is not None and rr.rtype in _STR_TYPES:
        return ctx.u16(_DATA_STR) + ctx.string(rr.target)
    if rr.soa is not None:
        s = rr.soa
        f = {1: ctx.string(s.mname), 2: ctx.string(s.rname)}
        for i, v in ((3, s.serial), (4, s.refresh), (5, s.retry), (6, s.expire), (7, s.minimum)):
            if v:
                f[i] = ctx.u32(v)
        return ctx.u16(_DATA_SOA) + ctx.params(f)
    if rr.mx is not None:
        f = {2: ctx.string(rr.mx.exchange)}
        if rr.mx.preference:
            f[1] = ctx.u16(rr.mx.preference)
        return ctx.u16(_DATA_MX) + ctx.params(f)
    return None


def _rr_block(rr: DnsRR, ctx: RecordContext, table: Any) -> bytes:
    f: dict[int, bytes] = {}
    cls, typ = _class_num(rr.rclass), rrtype_value(rr.rtype)
    if cls:
        f[1] = ctx.u16(cls)
    if typ:
        f[2] = ctx.u16(typ)
    f[3] = ctx.string(rr.name)
    if rr.ttl:
        f[4] = ctx.u32(rr.ttl)
    data = _rr_data(rr, ctx, table)
    if data is not None:
        f[5] = data
    return ctx.params(f)


def _kept(rrs: list[DnsRR]) -> list[DnsRR]:
    """The records scamper 20211212 can read back (see the module docstring)."""
    return [rr for rr in rrs if rr.rclass == "IN" and rr.rtype in _WARTS_RR_TYPES]


def _query_block(q: DnsQuery, ctx: RecordContext) -> bytes:
    f: dict[int, bytes] = {}
    if q.tx_ns is not None:
        f[1] = ctx.timeval(q.tx_ns)
    if q.rx_ns is not None and q.answered:
        f[2] = ctx.timeval(q.rx_ns)
    if q.id:
        f[3] = ctx.u16(q.id)
    for i, rrs in ((4, _kept(q.an)), (5, _kept(q.ns)), (6, _kept(q.ar))):
        if rrs:
            if len(rrs) > 0xFFFF:
                raise ValueError(f"DNS query {q.id}: {len(rrs)} records do not fit a warts count")
            f[i] = ctx.u16(len(rrs))
    if q.rcode:
        f[7] = ctx.u8(q.rcode & 0xFF)
    flags = _flags_byte(q.flags)
    if flags:
        f[8] = ctx.u8(flags)
    return ctx.params(f)


def host_body(h: DnsResult, ctx: RecordContext) -> bytes:
    """The warts host record body for ``h`` (without the record header)."""
    if len(h.queries) > 255:
        raise ValueError(f"DNS result with {len(h.queries)} queries does not fit a warts host record")
    table = ctx.AddrTable()
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    if h.userid:
        f[3] = ctx.u32(h.userid)
    if h.src is not None:
        f[4] = table.ref(h.src)
    f[5] = table.ref(h.dst)
    f[6] = ctx.timeval(h.start_ns)
    flags = (0 if h.rd else _FLAG_NORECURSE) | (_FLAG_TCP if h.tcp else 0)
    if flags:
        f[7] = ctx.u16(flags)
    wait_ms = min(h.wait_timeout // _dt.timedelta(milliseconds=1), 0xFFFF)
    if wait_ms:
        f[8] = ctx.u16(wait_ms)
    stop = _STOPS.index(h.stop_reason) if h.stop_reason in _STOPS else 0
    if stop:
        f[9] = ctx.u8(stop)
    if h.retries:
        f[10] = ctx.u8(min(h.retries, 255))
    f[11] = ctx.u16(rrtype_value(h.qtype))
    f[12] = ctx.u16(_class_num(h.qclass))
    f[13] = ctx.string(h.qname)
    if h.queries:
        f[14] = ctx.u8(len(h.queries))
    parts = [ctx.params(f)]
    for q in h.queries:
        parts.append(_query_block(q, ctx))
        parts.extend(_rr_block(rr, ctx, table) for rr in (*_kept(q.an), *_kept(q.ns), *_kept(q.ar)))
    return b"".join(parts)


# -- reading -------------------------------------------------------------------

def _setter(store: dict[str, Any], name: str, fn: Callable[[Cursor], Any]) -> Callable[[Cursor], None]:
    def reader(c: Cursor) -> None:
        store[name] = fn(c)
    return reader


def _read_soa(c: Cursor) -> DnsSOA:
    v: dict[str, Any] = {}
    read_params(c, [_setter(v, "mname", Cursor.string), _setter(v, "rname", Cursor.string)]
                + [_setter(v, k, Cursor.u32) for k in ("serial", "refresh", "retry", "expire", "minimum")])
    return DnsSOA(v.get("mname", ""), v.get("rname", ""), v.get("serial", 0), v.get("refresh", 0),
                  v.get("retry", 0), v.get("expire", 0), v.get("minimum", 0))


def _read_mx(c: Cursor) -> DnsMX:
    v: dict[str, Any] = {}
    read_params(c, [_setter(v, "pref", Cursor.u16), _setter(v, "exch", Cursor.string)])
    return DnsMX(v.get("pref", 0), v.get("exch", ""))


def _read_txt(c: Cursor) -> list[str]:
    v: dict[str, Any] = {"strc": 0}

    def strs(c: Cursor) -> None:
        out = []
        for _ in range(v["strc"]):
            n = c.u8()
            out.append(c.take(n).decode("utf-8", errors="replace"))
        v["strs"] = out
    read_params(c, [_setter(v, "strc", Cursor.u16), strs])
    return v.get("strs", [])


def _read_rr(c: Cursor, table: AddrTable) -> DnsRR:
    v: dict[str, Any] = {}

    def data(c: Cursor) -> None:
        kind = c.u16()
        if kind == _DATA_ADDR:
            v["address"] = table.read(c)
        elif kind == _DATA_STR:
            v["target"] = c.string()
        elif kind == _DATA_SOA:
            v["soa"] = _read_soa(c)
        elif kind == _DATA_MX:
            v["mx"] = _read_mx(c)
        elif kind == _DATA_TXT:
            v["txt"] = _read_txt(c)
        else:
            raise Truncated(f"unknown DNS record data kind {kind}")
    read_params(c, [_setter(v, "class", Cursor.u16), _setter(v, "type", Cursor.u16),
                    _setter(v, "name", Cursor.string), _setter(v, "ttl", Cursor.u32), data])
    rr = DnsRR(name=v.get("name", ""), rclass=_class_name(v.get("class", 1)),
               rtype=_type_name(v.get("type", 1)), ttl=v.get("ttl", 0),
               address=v.get("address"), target=v.get("target"), mx=v.get("mx"),
               soa=v.get("soa"), txt=v.get("txt"))
    rr.rdata = _rdata_text(rr)
    return rr


def host_decode(body: bytes, reader: Any) -> DnsResult:
    """A warts host record body → ``DnsResult``."""
    c = Cursor(body)
    table = AddrTable()
    h: dict[str, Any] = {}
    read_params(c, [_setter(h, "list", Cursor.u32), _setter(h, "cycle", Cursor.u32),
                    _setter(h, "userid", Cursor.u32), _setter(h, "src", table.read),
                    _setter(h, "dst", table.read), _setter(h, "start", Cursor.timeval_ns),
                    _setter(h, "flags", Cursor.u16), _setter(h, "wait", Cursor.u16),
                    _setter(h, "stop", Cursor.u8), _setter(h, "retries", Cursor.u8),
                    _setter(h, "qtype", Cursor.u16), _setter(h, "qclass", Cursor.u16),
                    _setter(h, "qname", Cursor.string), _setter(h, "qcount", Cursor.u8)])
    if not isinstance(h.get("dst"), Addr):
        raise Truncated("host record without a server address")
    stop_i = h.get("stop", 0)
    stop = _STOPS[stop_i] if stop_i < len(_STOPS) else DnsStop.NONE
    queries = []
    qcount = h.get("qcount", 0)
    for i in range(qcount):
        q: dict[str, Any] = {}
        present = read_params(c, [_setter(q, "tx", Cursor.timeval_ns), _setter(q, "rx", Cursor.timeval_ns),
                                  _setter(q, "id", Cursor.u16), _setter(q, "an", Cursor.u16),
                                  _setter(q, "ns", Cursor.u16), _setter(q, "ar", Cursor.u16),
                                  _setter(q, "rcode", Cursor.u8), _setter(q, "flags", Cursor.u8)])
        sections = {k: [_read_rr(c, table) for _ in range(q.get(k, 0))] for k in ("an", "ns", "ar")}
        rx = q.get("rx")
        if rx is not None and rx == q.get("tx"):
            rx = None  # scamper 20211212 writes the send time in the rx slot
        # scamper 20211212 records no rcode: a query answered if it has a
        # receive time, records, or is the last one of a lookup that is done
        answered = (7 in present or rx is not None or any(sections.values())
                    or (stop == DnsStop.DONE and i == qcount - 1))
        queries.append(DnsQuery(
            id=q.get("id", 0), tx_ns=q.get("tx"), rx_ns=rx,
            rcode=q.get("rcode", 0) if answered else None,
            flags=header_flag_names(q.get("flags", 0) << _FLAG_WORD_SHIFT),
            an=sections["an"], ns=sections["ns"], ar=sections["ar"]))
    flags = h.get("flags", 0)
    return DnsResult(dst=h["dst"], src=h.get("src"), qname=h.get("qname", ""), start_ns=h.get("start", 0),
                     qtype=_type_name(h.get("qtype", 1)), qclass=_class_name(h.get("qclass", 1)),
                     userid=h.get("userid", 0), rd=not flags & _FLAG_NORECURSE, tcp=bool(flags & _FLAG_TCP),
                     wait_timeout=_dt.timedelta(milliseconds=h.get("wait", 0)),
                     attempts=h.get("retries", 0) + 1, queries=queries, stop_reason=stop)


register_writer(DnsResult, HOST_RTYPE, host_body)
register_reader(HOST_RTYPE, host_decode)
