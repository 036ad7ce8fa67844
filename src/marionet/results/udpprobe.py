"""UDP probe results (scamper's ``udpprobe``): probes, each with its replies.

Why this shape: scamper's ``do_udpprobe`` sends one payload to a UDP
service ``probe_count`` times (each probe from its own source port) and keeps
*every* datagram that comes back to each probe's socket until the wait ends
— a DNS server answers once, a broken middlebox or an amplifier several
times, and that multiplicity is what such a measurement is about.  So a
``Udpprobe`` holds ``probes``; each ``UdpprobeProbe`` has its kernel transmit
time and its ``replies``; each ``UdpprobeReply`` its kernel receive time, the
datagram and its RTT from that probe's transmit time.

JSON is scamper's ``scamper_udpprobe_json.c`` layout (version "0.1"):
header fields, then ``probes`` with ``tx``, ``sport``, ``replyc`` and
``replies`` of ``rx``, ``rtt`` (as ``{"sec","usec"}``, as scamper writes
it), ``len`` and ``data`` in hex.  Debian's scamper 20211212 predates
udpprobe, so the newer scamper's layout is the reference.  marionet-only data
(exact ns times, timestamp sources, who answered, wait_probe, errors) sits
under ``"marionet"``.  Warts type 0x10 follows scamper's
``scamper_udpprobe_warts.c`` field table (probe 0's replies in the header,
later probes after it).
"""

from __future__ import annotations

import datetime as _dt
import string
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import (Addr, NS_PER_US, StopReason, check_int, ns_to_datetime, ns_to_ms_str, ns_to_timedelta,
                     ns_to_timeval, to_addr)
from .jsonfmt import EXT_KEY, _Fields, exact_ns_of_visible as _exact, register

__all__ = ["Udpprobe", "UdpprobeProbe", "UdpprobeReply", "UdpprobeStop", "UDPPROBE_VERSION",
           "UDPPROBE_STOPS", "hexdump_line"]

UDPPROBE_VERSION = "0.1"


class UdpprobeStop(StopReason):
    """scamper's udpprobe stop reasons (index = warts value)."""
    NONE = "none"
    DONE = "done"
    HALTED = "halted"
    ERROR = "error"


UDPPROBE_STOPS = [UdpprobeStop.NONE, UdpprobeStop.DONE, UdpprobeStop.HALTED, UdpprobeStop.ERROR]
_FLAG_EXITFIRST = 0x01


def _tv_us(ns: int) -> dict[str, int]:
    """A duration as scamper's ``{"sec","usec"}`` (floored to µs)."""
    us = max(0, ns) // NS_PER_US
    return {"sec": us // 1_000_000, "usec": us % 1_000_000}


_PRINTABLE = frozenset(string.printable.encode()) - frozenset(b"\t\n\r\x0b\x0c")


def hexdump_line(data: bytes, limit: int = 32) -> str:
    """``hex  |ascii|`` of the first ``limit`` bytes (dig/hexdump style)."""
    head = data[:limit]
    asc = "".join(chr(b) if b in _PRINTABLE else "." for b in head)
    more = f" …(+{len(data) - limit})" if len(data) > limit else ""
    return f"{head.hex(' ')}  |{asc}|{more}"


@dataclass(slots=True)
class UdpprobeReply:
    """One datagram that came back to a probe's socket."""

    rx_ns: int
    data: bytes
    rtt_ns: int | None = None
    src: Addr | None = None
    sport: int | None = None
    rx_ts_source: str | None = None

    def __post_init__(self) -> None:
        check_int("rx_ns", self.rx_ns)
        check_int("rtt_ns", self.rtt_ns, optional=True)
        self.data = bytes(self.data)
        self.src = to_addr(self.src)

    @property
    def rx(self) -> _dt.datetime:
        return ns_to_datetime(self.rx_ns)

    @property
    def rtt(self) -> _dt.timedelta | None:
        return None if self.rtt_ns is None else ns_to_timedelta(self.rtt_ns)

    @property
    def len(self) -> int:
        return len(self.data)

    @property
    def payload(self) -> bytes:
        return self.data


@dataclass(slots=True)
class UdpprobeProbe:
    """One transmitted copy of the payload and what came back to it."""

    tx_ns: int | None
    sport: int
    replies: list[UdpprobeReply] = field(default_factory=list)
    tx_ts_source: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        check_int("tx_ns", self.tx_ns, optional=True)
        check_int("sport", self.sport, minimum=0)

    @property
    def tx(self) -> _dt.datetime | None:
        return None if self.tx_ns is None else ns_to_datetime(self.tx_ns)

    @property
    def replyc(self) -> int:
        return len(self.replies)

    def __iter__(self) -> Iterator[UdpprobeReply]:
        return iter(self.replies)


@dataclass
class Udpprobe:
    """A UDP request/response measurement (scamper's ``ScamperUdpprobe``)."""

    dst: Addr
    dport: int
    payload: bytes
    src: Addr | None = None
    sport: int = 0
    start_ns: int = 0
    userid: int = 0
    wait_timeout: _dt.timedelta = _dt.timedelta(seconds=2)
    wait_probe: _dt.timedelta = _dt.timedelta(seconds=1)
    exitfirst: bool = False
    probe_count: int = 1
    stop_count: int = 1
    probes: list[UdpprobeProbe] = field(default_factory=list)
    stop_reason: UdpprobeStop | str | None = UdpprobeStop.NONE
    error: str | None = None
    strays: int = 0
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    type_name = "udpprobe"

    def __post_init__(self) -> None:
        self.dst = to_addr(self.dst)  # type: ignore[assignment]
        self.src = to_addr(self.src)
        self.payload = bytes(self.payload)
        self.stop_reason = UdpprobeStop.coerce(self.stop_reason)
        for name in ("dport", "sport", "start_ns", "userid", "probe_count", "stop_count"):
            check_int(name, getattr(self, name), minimum=0)

    # -- scamper's views -----------------------------------------------------
    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def probe_sent(self) -> int:
        return len(self.probes)

    @property
    def len(self) -> int:
        return len(self.payload)

    @property
    def data(self) -> bytes:
        return self.payload

    def probe(self, i: int) -> UdpprobeProbe:
        return self.probes[i]

    def replies(self) -> list[UdpprobeReply]:
        """Every reply, probe by probe, in arrival order."""
        return [r for p in self.probes for r in p.replies]

    @property
    def replyc(self) -> int:
        return sum(p.replyc for p in self.probes)

    def __iter__(self) -> Iterator[UdpprobeReply]:
        return iter(self.replies())

    def is_stop_done(self) -> bool:
        return self.stop_reason == UdpprobeStop.DONE

    # -- output --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return udpprobe_to_json(self)

    def to_text(self) -> str:
        """dig-like text: a header, then one line per reply (from, RTT, size,
        hex/ascii of the datagram), then a summary."""
        who = f"{self.dst}:{self.dport}"
        lines = [f"udpprobe to {who} from {self.src or '?'}, {self.len} byte payload, "
                 f"{self.probe_count} probe(s), wait {self.wait_timeout.total_seconds():g} s"]
        for i, p in enumerate(self.probes):
            if p.error:
                lines.append(f"  probe {i} sport {p.sport}: {p.error}")
            if not p.replies:
                lines.append(f"  probe {i} sport {p.sport}: no reply")
            for r in p.replies:
                rtt = "?" if r.rtt_ns is None else f"{ns_to_ms_str(r.rtt_ns)} ms"
                frm = f"{r.src or self.dst}:{r.sport or self.dport}"
                lines.append(f"  probe {i} reply from {frm} rtt {rtt} {r.len} bytes: {hexdump_line(r.data)}")
        lines.append(f";; {self.probe_sent} sent, {self.replyc} replies, stop {self.stop_reason}"
                     + (f" ({self.error})" if self.error else ""))
        return "\n".join(lines)


# -- JSON ----------------------------------------------------------------------

def _reply_to_json(p: UdpprobeProbe, r: UdpprobeReply) -> dict[str, Any]:
    rtt = r.rtt_ns if r.rtt_ns is not None else (r.rx_ns - p.tx_ns if p.tx_ns is not None else 0)
    d: dict[str, Any] = {"rx": ns_to_timeval(r.rx_ns), "rtt": _tv_us(rtt), "len": r.len}
    if r.data:
        d["data"] = r.data.hex()
    ext: dict[str, Any] = {}
    if r.rx_ns % NS_PER_US:
        ext["rx_ns"] = r.rx_ns
    if r.rtt_ns is not None and r.rtt_ns % NS_PER_US:
        ext["rtt_ns"] = r.rtt_ns
    if r.rx_ts_source is not None:
        ext["rx_ts_source"] = r.rx_ts_source
    if r.src is not None:
        ext["from"] = str(r.src)
    if r.sport is not None:
        ext["sport"] = r.sport
    if ext:
        d[EXT_KEY] = ext
    return d


def _probe_to_json(p: UdpprobeProbe) -> dict[str, Any]:
    d: dict[str, Any] = {"tx": ns_to_timeval(p.tx_ns or 0), "sport": p.sport, "replyc": p.replyc,
                         "replies": [_reply_to_json(p, r) for r in p.replies]}
    ext: dict[str, Any] = {}
    if p.tx_ns is None:
        ext["no_tx"] = True
    elif p.tx_ns % NS_PER_US:
        ext["tx_ns"] = p.tx_ns
    if p.tx_ts_source is not None:
        ext["tx_ts_source"] = p.tx_ts_source
    if p.error is not None:
        ext["error"] = p.error
    if ext:
        d[EXT_KEY] = ext
    return d


_KNOWN = frozenset({"type", "version", "src", "dst", "userid", "start", "sport", "dport", "wait_timeout",
                    "flags", "stop_reason", "data", "len", "probe_count", "probe_sent", "stop_count",
                    "probes", EXT_KEY})


def _td_us(td: _dt.timedelta) -> int:
    return td // _dt.timedelta(microseconds=1)


def udpprobe_to_json(u: Udpprobe) -> dict[str, Any]:
    """A ``Udpprobe`` → scamper's udpprobe JSON object."""
    d: dict[str, Any] = {"type": "udpprobe", "version": UDPPROBE_VERSION}
    if u.src is not None:
        d["src"] = str(u.src)
    d["dst"] = str(u.dst)
    d["userid"] = u.userid
    d["start"] = ns_to_timeval(u.start_ns)
    d["sport"] = u.sport
    d["dport"] = u.dport
    d["wait_timeout"] = _tv_us(_td_us(u.wait_timeout) * NS_PER_US)
    if u.exitfirst:
        d["flags"] = ["exitfirst"]
    d["stop_reason"] = str(u.stop_reason if u.stop_reason is not None else UdpprobeStop.NONE)
    if u.payload:
        d["data"] = u.payload.hex()
    d["len"] = u.len
    d["probe_count"] = u.probe_count
    d["probe_sent"] = u.probe_sent
    d["stop_count"] = u.stop_count
    for k, v in u.extra.items():
        if k not in _KNOWN:
            d[k] = v
    d["probes"] = [_probe_to_json(p) for p in u.probes]
    ext: dict[str, Any] = {"wait_probe_us": _td_us(u.wait_probe)}
    if u.start_ns % NS_PER_US:
        ext["start_ns"] = u.start_ns
    if u.error is not None:
        ext["error"] = u.error
    if u.strays:
        ext["strays"] = u.strays
    if u.vp is not None:
        ext["vp"] = u.vp
    d[EXT_KEY] = ext
    return d


def _tv_dur(f: _Fields, key: str) -> int | None:
    v = f.d.get(key)
    if v is None:
        return None
    tv = _Fields(v, f"{f.what}.{key}")
    sec, usec = tv.int("sec", True), tv.int("usec", True)
    if sec < 0 or not 0 <= usec < 1_000_000:
        raise f.fail(key, f"is not a duration: {v!r}")
    return (sec * 1_000_000 + usec) * NS_PER_US


def _hex(f: _Fields, key: str) -> bytes:
    v = f.str(key)
    if v is None:
        return b""
    try:
        return bytes.fromhex(v)
    except ValueError:
        raise f.fail(key, "is not hex") from None



def _reply_from_json(raw: Any, where: str, tx_ns: int | None) -> UdpprobeReply:
    f = _Fields(raw, where)
    ext = f.ext()
    rx = _exact(ext, "rx_ns", f.timeval("rx", True))
    rtt = _exact(ext, "rtt_ns", _tv_dur(f, "rtt"))
    data = _hex(f, "data")
    src = ext.get("from")
    sport = ext.get("sport")
    return UdpprobeReply(rx_ns=rx, data=data, rtt_ns=rtt, src=src if isinstance(src, str) else None,
                         sport=sport if isinstance(sport, int) and not isinstance(sport, bool) else None,
                         rx_ts_source=ext.get("rx_ts_source") if ext.get("rx_ts_source") in ("kernel", "user")
                         else None)


def _probe_from_json(raw: Any, where: str) -> UdpprobeProbe:
    f = _Fields(raw, where)
    ext = f.ext()
    tx = None if ext.get("no_tx") else _exact(ext, "tx_ns", f.timeval("tx"))
    p = UdpprobeProbe(tx_ns=tx, sport=f.int("sport", default=0),
                      tx_ts_source=ext.get("tx_ts_source") if ext.get("tx_ts_source") in ("kernel", "user")
                      else None, error=ext.get("error") if isinstance(ext.get("error"), str) else None)
    p.replies = [_reply_from_json(r, f"{where}.replies[{i}]", tx) for i, r in enumerate(f.list("replies"))]
    return p


def udpprobe_from_json(d: dict[str, Any]) -> Udpprobe:
    f = _Fields(d, "udpprobe")
    ext = f.ext()
    flags = f.list("flags")
    wt = _tv_dur(f, "wait_timeout")
    wp = ext.get("wait_probe_us")
    u = Udpprobe(
        dst=f.addr("dst", True), dport=f.int("dport", default=0), payload=_hex(f, "data"),
        src=f.addr("src"), sport=f.int("sport", default=0),
        start_ns=_exact(ext, "start_ns", f.timeval("start")) or 0, userid=f.int("userid", default=0),
        wait_timeout=_dt.timedelta(microseconds=(wt if wt is not None else 2 * 10**9) // NS_PER_US),
        wait_probe=_dt.timedelta(microseconds=wp if isinstance(wp, int) and wp >= 0 else 1_000_000),
        exitfirst="exitfirst" in flags, probe_count=f.int("probe_count", default=1),
        stop_count=f.int("stop_count", default=1), stop_reason=f.str("stop_reason") or "none",
        error=ext.get("error") if isinstance(ext.get("error"), str) else None,
        strays=ext.get("strays") if isinstance(ext.get("strays"), int) else 0,
        vp=ext.get("vp") if isinstance(ext.get("vp"), str) else None, extra=f.extra(_KNOWN))
    u.probes = [_probe_from_json(p, f"udpprobe.probes[{i}]") for i, p in enumerate(f.list("probes"))]
    return u


register("udpprobe", Udpprobe, udpprobe_to_json, udpprobe_from_json)


# -- warts (type 0x10) -----------------------------------------------------------

from . import warts as _warts  # noqa: E402 - after the classes the hooks name
from . import warts_writer as _ww  # noqa: E402

UDPPROBE_RTYPE = 0x10


def _addr_static(a: Addr) -> bytes:
    """scamper's "static" address: length, type, bytes — never a table reference."""
    raw = a.packed
    return bytes([len(raw), 1 if len(raw) == 4 else 2]) + raw


def _reply_params(ctx: _ww.RecordContext, r: UdpprobeReply) -> bytes:
    fields: dict[int, bytes] = {}
    if r.rx_ns:
        fields[1] = ctx.timeval(r.rx_ns)
    if r.data:
        fields[2] = ctx.u16(len(r.data))
        fields[3] = r.data[:0xFFFF]
    return ctx.params(fields)


def udpprobe_warts_body(u: Udpprobe, ctx: _ww.RecordContext) -> bytes:
    if u.probe_sent > 255 or any(p.replyc > 255 for p in u.probes):
        raise ValueError("a warts udpprobe record holds at most 255 probes and 255 replies per probe")
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    if u.userid:
        f[3] = ctx.u32(u.userid)
    if u.src is not None:
        f[4] = _addr_static(u.src)
    f[5] = _addr_static(u.dst)
    p0 = u.probes[0] if u.probes else None
    if p0 is not None:
        f[6] = ctx.u16(p0.sport)
    if u.dport:
        f[7] = ctx.u16(u.dport)
    if u.start_ns:
        f[8] = ctx.timeval(u.start_ns)
    wt = _td_us(u.wait_timeout)
    if wt:
        f[9] = ctx.u32(wt)
    if u.exitfirst:
        f[10] = ctx.u8(_FLAG_EXITFIRST)
    stop = UdpprobeStop.coerce(u.stop_reason)
    si = UDPPROBE_STOPS.index(stop) if stop in UDPPROBE_STOPS else 3
    if si:
        f[11] = ctx.u8(si)
    if u.payload:
        f[12] = ctx.u16(len(u.payload))
        f[13] = u.payload
    if p0 is not None and p0.replyc:
        f[14] = ctx.u8(p0.replyc)
    if u.probe_count != 1:
        f[15] = ctx.u8(u.probe_count)
    if u.probe_sent != 1:
        f[16] = ctx.u8(u.probe_sent)
    if u.stop_count:
        f[17] = ctx.u8(u.stop_count)
    if u.sport:
        f[18] = ctx.u16(u.sport)
    wp = _td_us(u.wait_probe)
    if wp:
        f[19] = ctx.u32(wp)
    out = [ctx.params(f)]
    if p0 is not None:
        out += [_reply_params(ctx, r) for r in p0.replies]
    for p in u.probes[1:]:
        pf = {1: ctx.timeval(p.tx_ns or 0), 2: ctx.u16(p.sport)}
        if p.replyc:
            pf[3] = ctx.u8(p.replyc)
        out.append(ctx.params(pf))
    for p in u.probes[1:]:
        out += [_reply_params(ctx, r) for r in p.replies]
    return b"".join(out)


def _read_reply(c: Any, tx_ns: int | None) -> UdpprobeReply:
    v: dict[str, Any] = {}
    _warts.read_params(c, [lambda cur: v.__setitem__("rx", cur.timeval_ns()),
                           lambda cur: v.__setitem__("len", cur.u16()),
                           lambda cur: v.__setitem__("data", cur.take(v.get("len", 0)))])
    rx = v.get("rx", 0)
    return UdpprobeReply(rx_ns=rx, data=v.get("data", b""),
                         rtt_ns=rx - tx_ns if rx and tx_ns is not None else None)


def udpprobe_from_warts(body: bytes, reader: Any) -> Udpprobe:
    c = _warts.Cursor(body)
    table = _warts.AddrTable()  # a static address reads like a table definition
    v: dict[str, Any] = {}

    def put(name: str, fn: Any) -> Any:
        return lambda cur: v.__setitem__(name, fn(cur))

    u8, u16, u32 = (lambda cur: cur.u8()), (lambda cur: cur.u16()), (lambda cur: cur.u32())
    _warts.read_params(c, [
        put("list", u32), put("cycle", u32), put("userid", u32), put("src", table.read), put("dst", table.read),
        put("p0_sport", u16), put("dport", u16), put("start", lambda cur: cur.timeval_ns()),
        put("wait_timeout", u32), put("flags", u8), put("stop", u8), put("len", u16),
        put("data", lambda cur: cur.take(v.get("len", 0))), put("p0_replyc", u8), put("probe_count", u8),
        put("probe_sent", u8), put("stop_count", u8), put("sport", u16), put("wait_probe", u32)])
    if v.get("dst") is None:
        raise ValueError("udpprobe record without a destination address")
    sent = v.get("probe_sent", 1)  # absent: one probe; 0 only when nothing could be sent
    start = v.get("start", 0)
    probes = [UdpprobeProbe(tx_ns=start, sport=v.get("p0_sport", 0))] if sent else []
    if probes:
        probes[0].replies = [_read_reply(c, start) for _ in range(v.get("p0_replyc", 0))]
    counts = []
    for _ in range(max(0, sent - 1)):
        pv: dict[str, Any] = {}
        _warts.read_params(c, [lambda cur: pv.__setitem__("tx", cur.timeval_ns()),
                               lambda cur: pv.__setitem__("sport", cur.u16()),
                               lambda cur: pv.__setitem__("replyc", cur.u8())])
        probes.append(UdpprobeProbe(tx_ns=pv.get("tx"), sport=pv.get("sport", 0)))
        counts.append(pv.get("replyc", 0))
    for p, n in zip(probes[1:], counts):
        p.replies = [_read_reply(c, p.tx_ns) for _ in range(n)]
    stop = v.get("stop", 0)
    return Udpprobe(dst=v["dst"], dport=v.get("dport", 0), payload=v.get("data", b""), src=v.get("src"),
                    sport=v.get("sport", 0), start_ns=start, userid=v.get("userid", 0),
                    wait_timeout=_dt.timedelta(microseconds=v.get("wait_timeout", 0)),
                    wait_probe=_dt.timedelta(microseconds=v.get("wait_probe", 0)),
                    exitfirst=bool(v.get("flags", 0) & _FLAG_EXITFIRST), probe_count=v.get("probe_count") or 1,
                    stop_count=v.get("stop_count", 0), probes=probes,
                    stop_reason=UDPPROBE_STOPS[stop] if stop < len(UDPPROBE_STOPS) else str(stop))


_warts.register(UDPPROBE_RTYPE, udpprobe_from_warts)
_ww.register(Udpprobe, UDPPROBE_RTYPE, udpprobe_warts_body)
