"""Packet capture results (scamper's ``sniff``): the packets, kernel-stamped.

Why this shape: scamper's ``sniff`` records, for one source address, the
packets that matched (ICMP echo replies with an ICMP id, or ICMP errors
quoting such an echo) until a packet count or a time limit, each with its
receive time and its bytes from the IP header on.  marionet adds capture by
any tcpdump expression (``expr``), so ``icmp_id`` is None for those.

Files: warts type 0x0d exactly as scamper writes it (``sc_wartsdump`` of
Debian's scamper 20211212 reads ours); a filter expression, which scamper's
record has no field for, goes in field 12 — scamper's readers skip fields
they do not know.  JSON: scamper 20211212 writes no JSON for sniff records
(and newer releases add none), so the JSON object uses the warts record's
field names (``"type": "sniff"``, version "0.1"); marionet-only data (exact ns
times, timestamp sources, kernel drops) sits under ``"marionet"``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import Addr, NS_PER_US, StopReason, check_int, ns_to_datetime, ns_to_timeval, to_addr
from .jsonfmt import EXT_KEY, _Fields, exact_ns_of_visible as _exact, register
from . import warts as _warts
from . import warts_writer as _ww

__all__ = ["Sniff", "SniffPkt", "SniffStop", "SNIFF_VERSION", "SNIFF_STOPS", "packet_summary"]

SNIFF_VERSION = "0.1"


class SniffStop(StopReason):
    """scamper's sniff stop reasons (index = warts value)."""
    NONE = "none"
    ERROR = "error"
    LIMIT_TIME = "limit-time"
    LIMIT_PKTC = "limit-pktc"
    HALTED = "halted"


SNIFF_STOPS = [SniffStop.NONE, SniffStop.ERROR, SniffStop.LIMIT_TIME, SniffStop.LIMIT_PKTC, SniffStop.HALTED]

_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMP6"}


def packet_summary(data: bytes) -> str:
    """``SRC > DST: PROTO …`` for an IP packet, tcpdump-like (never raises)."""
    try:
        ver = data[0] >> 4
        if ver == 4:
            ihl = (data[0] & 0x0F) * 4
            src, dst = ipaddress.ip_address(data[12:16]), ipaddress.ip_address(data[16:20])
            proto, l4 = data[9], data[ihl:]
        elif ver == 6:
            src, dst = ipaddress.ip_address(data[8:24]), ipaddress.ip_address(data[24:40])
            proto, l4 = data[6], data[40:]
        else:
            return f"non-IP packet, length {len(data)}"
        name = _PROTO.get(proto, f"proto {proto}")
        if proto in (6, 17) and len(l4) >= 4:
            sp, dp = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
            head = f"IP{'6' if ver == 6 else ''} {src}.{sp} > {dst}.{dp}: {name}"
        else:
            head = f"IP{'6' if ver == 6 else ''} {src} > {dst}: {name}"
        if proto in (1, 58) and len(l4) >= 8:
            typ, code = l4[0], l4[1]
            ident, seq = int.from_bytes(l4[4:6], "big"), int.from_bytes(l4[6:8], "big")
            echo = (0, 8) if proto == 1 else (128, 129)
            if typ in echo:
                kind = "echo request" if typ in (8, 128) else "echo reply"
                head += f" {kind}, id {ident}, seq {seq}"
            else:
                head += f" type {typ} code {code}"
        return f"{head}, length {len(data)}"
    except (IndexError, ValueError):
        return f"truncated packet, length {len(data)}"


@dataclass(slots=True)
class SniffPkt:
    """One captured packet: kernel receive time and its bytes from the IP header."""

    rx_ns: int
    data: bytes
    rx_ts_source: str | None = None

    def __post_init__(self) -> None:
        check_int("rx_ns", self.rx_ns)
        self.data = bytes(self.data)

    @property
    def rx(self) -> _dt.datetime:
        return ns_to_datetime(self.rx_ns)

    tv = rx

    @property
    def len(self) -> int:
        return len(self.data)


@dataclass
class Sniff:
    """A capture (scamper's ``ScamperSniff``)."""

    src: Addr
    start_ns: int
    finish_ns: int
    limit_pkt_count: int = 100
    limit_time: _dt.timedelta = _dt.timedelta(seconds=60)
    icmp_id: int | None = None
    expr: str | None = None
    pkts: list[SniffPkt] = field(default_factory=list)
    stop_reason: SniffStop | str | None = SniffStop.NONE
    userid: int = 0
    error: str | None = None
    drops: int = 0
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    type_name = "sniff"

    def __post_init__(self) -> None:
        self.src = to_addr(self.src)  # type: ignore[assignment]
        self.stop_reason = SniffStop.coerce(self.stop_reason)
        for name in ("start_ns", "finish_ns", "limit_pkt_count", "userid"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("icmp_id", self.icmp_id, optional=True, minimum=0)

    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def finish(self) -> _dt.datetime:
        return ns_to_datetime(self.finish_ns)

    @property
    def pkt_count(self) -> int:
        return len(self.pkts)

    pktc = pkt_count

    def pkt(self, i: int) -> SniffPkt:
        return self.pkts[i]

    def __iter__(self) -> Iterator[SniffPkt]:
        return iter(self.pkts)

    def __len__(self) -> int:
        return len(self.pkts)

    def to_json(self) -> dict[str, Any]:
        return sniff_to_json(self)

    def to_text(self) -> str:
        """tcpdump-like: one line per packet (time, summary), then a total."""
        what = f"icmp[icmpid] == {self.icmp_id}" if self.icmp_id is not None else (self.expr or "")
        lines = [f"sniff on {self.src}: {what}"]
        for p in self.pkts:
            t = p.rx
            lines.append(f"{t:%H:%M:%S}.{t.microsecond:06d} {packet_summary(p.data)}")
        lines.append(f"{self.pkt_count} packets captured, stop {self.stop_reason}"
                     + (f", {self.drops} dropped by the kernel" if self.drops else "")
                     + (f" ({self.error})" if self.error else ""))
        return "\n".join(lines)


# -- JSON ----------------------------------------------------------------------

_KNOWN = frozenset({"type", "version", "src", "userid", "start", "finish", "stop_reason", "limit_pktc",
                    "limit_time", "icmp_id", "expr", "pktc", "pkts", EXT_KEY})


def _limit_s(s: Sniff) -> int:
    return s.limit_time // _dt.timedelta(seconds=1)


def sniff_to_json(s: Sniff) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "sniff", "version": SNIFF_VERSION, "src": str(s.src), "userid": s.userid,
                         "start": ns_to_timeval(s.start_ns), "finish": ns_to_timeval(s.finish_ns),
                         "stop_reason": str(s.stop_reason if s.stop_reason is not None else SniffStop.NONE),
                         "limit_pktc": s.limit_pkt_count, "limit_time": _limit_s(s)}
    if s.icmp_id is not None:
        d["icmp_id"] = s.icmp_id
    if s.expr is not None:
        d["expr"] = s.expr
    d["pktc"] = s.pkt_count
    for k, v in s.extra.items():
        if k not in _KNOWN:
            d[k] = v
    pkts = []
    for p in s.pkts:
        pd: dict[str, Any] = {"tv": ns_to_timeval(p.rx_ns), "len": p.len, "data": p.data.hex()}
        pext: dict[str, Any] = {}
        if p.rx_ns % NS_PER_US:
            pext["rx_ns"] = p.rx_ns
        if p.rx_ts_source is not None:
            pext["rx_ts_source"] = p.rx_ts_source
        if pext:
            pd[EXT_KEY] = pext
        pkts.append(pd)
    d["pkts"] = pkts
    ext: dict[str, Any] = {}
    for key, ns in (("start_ns", s.start_ns), ("finish_ns", s.finish_ns)):
        if ns % NS_PER_US:
            ext[key] = ns
    us = s.limit_time // _dt.timedelta(microseconds=1)
    if us % 1_000_000:
        ext["limit_time_us"] = us
    if s.error is not None:
        ext["error"] = s.error
    if s.drops:
        ext["drops"] = s.drops
    if s.vp is not None:
        ext["vp"] = s.vp
    if ext:
        d[EXT_KEY] = ext
    return d



def sniff_from_json(d: dict[str, Any]) -> Sniff:
    f = _Fields(d, "sniff")
    ext = f.ext()
    pkts = []
    for i, raw in enumerate(f.list("pkts")):
        pf = _Fields(raw, f"sniff.pkts[{i}]")
        pext = pf.ext()
        try:
            data = bytes.fromhex(pf.str("data") or "")
        except ValueError:
            raise pf.fail("data", "is not hex") from None
        src = pext.get("rx_ts_source")
        pkts.append(SniffPkt(rx_ns=_exact(pext, "rx_ns", pf.timeval("tv", True)), data=data,
                             rx_ts_source=src if src in ("kernel", "user") else None))
    lt_us = ext.get("limit_time_us")
    if not isinstance(lt_us, int) or isinstance(lt_us, bool) or lt_us < 0:
        lt_us = f.int("limit_time", default=60) * 1_000_000
    return Sniff(src=f.addr("src", True), start_ns=_exact(ext, "start_ns", f.timeval("start")) or 0,
                 finish_ns=_exact(ext, "finish_ns", f.timeval("finish")) or 0,
                 limit_pkt_count=f.int("limit_pktc", default=100),
                 limit_time=_dt.timedelta(microseconds=lt_us), icmp_id=f.int("icmp_id"), expr=f.str("expr"),
                 pkts=pkts, stop_reason=f.str("stop_reason") or "none", userid=f.int("userid", default=0),
                 error=ext.get("error") if isinstance(ext.get("error"), str) else None,
                 drops=ext.get("drops") if isinstance(ext.get("drops"), int) else 0,
                 vp=ext.get("vp") if isinstance(ext.get("vp"), str) else None, extra=f.extra(_KNOWN))


register("sniff", Sniff, sniff_to_json, sniff_from_json)


# -- warts (type 0x0d) -----------------------------------------------------------

SNIFF_RTYPE = 0x0d


def _stop_index(s: Sniff) -> int:
    try:
        return SNIFF_STOPS.index(SniffStop.coerce(s.stop_reason))  # type: ignore[arg-type]
    except ValueError:
        return 1  # a reason scamper has no number for: "error" is the honest one


def sniff_warts_body(s: Sniff, ctx: _ww.RecordContext) -> bytes:
    table = ctx.AddrTable()
    fields: dict[int, bytes] = {}
    ctx.in_cycle(fields)
    if s.userid:
        fields[3] = ctx.u32(s.userid)
    fields[4] = table.ref(s.src)
    fields[5] = ctx.timeval(s.start_ns)
    fields[6] = ctx.timeval(s.finish_ns)
    fields[7] = ctx.u8(_stop_index(s))
    fields[8] = ctx.u32(s.limit_pkt_count)
    fields[9] = ctx.u16(min(_limit_s(s), 0xFFFF))
    fields[10] = ctx.u32(s.pkt_count)
    fields[11] = ctx.u16(s.icmp_id or 0)
    if s.expr is not None:
        fields[12] = ctx.string(s.expr)
    out = [ctx.params(fields)]
    for p in s.pkts:
        if not p.data:
            continue  # scamper cannot read a packet without bytes
        out.append(ctx.params({1: ctx.timeval(p.rx_ns), 2: ctx.u16(len(p.data)), 3: p.data[:0xFFFF]}))
    return b"".join(out)


def sniff_from_warts(body: bytes, reader: Any) -> Sniff:
    c = _warts.Cursor(body)
    table = _warts.AddrTable()
    v: dict[str, Any] = {}

    def put(name: str, fn: Any) -> Any:
        return lambda cur: v.__setitem__(name, fn(cur))

    _warts.read_params(c, [
        put("list", lambda cur: cur.u32()), put("cycle", lambda cur: cur.u32()),
        put("userid", lambda cur: cur.u32()), put("src", table.read),
        put("start", lambda cur: cur.timeval_ns()), put("finish", lambda cur: cur.timeval_ns()),
        put("stop", lambda cur: cur.u8()), put("limit_pktc", lambda cur: cur.u32()),
        put("limit_time", lambda cur: cur.u16()), put("pktc", lambda cur: cur.u32()),
        put("icmpid", lambda cur: cur.u16()), put("expr", lambda cur: cur.string())])
    if v.get("src") is None:
        raise ValueError("sniff record without a source address")
    pkts = []
    for _ in range(v.get("pktc", 0)):
        p: dict[str, Any] = {}
        _warts.read_params(c, [lambda cur: p.__setitem__("tv", cur.timeval_ns()),
                               lambda cur: p.__setitem__("len", cur.u16()),
                               lambda cur: p.__setitem__("data", cur.take(p.get("len", 0)))])
        if "tv" not in p or not p.get("data"):
            raise ValueError("sniff packet without a time or bytes")
        pkts.append(SniffPkt(rx_ns=p["tv"], data=p["data"]))
    stop = v.get("stop", 0)
    expr = v.get("expr")
    return Sniff(src=v["src"], start_ns=v.get("start", 0), finish_ns=v.get("finish", 0),
                 limit_pkt_count=v.get("limit_pktc", 100),
                 limit_time=_dt.timedelta(seconds=v.get("limit_time", 60)),
                 icmp_id=None if expr is not None else v.get("icmpid", 0), expr=expr, pkts=pkts,
                 stop_reason=SNIFF_STOPS[stop] if stop < len(SNIFF_STOPS) else str(stop),
                 userid=v.get("userid", 0))


_warts.register(SNIFF_RTYPE, sniff_from_warts)
_ww.register(Sniff, SNIFF_RTYPE, sniff_warts_body)
