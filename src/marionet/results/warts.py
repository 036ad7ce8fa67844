"""Reader for scamper's binary warts format.

Warts is for interchange with existing scamper data sets (``warts_writer``
writes it).  Ping and trace are decoded here; other result modules register
their record types (``register``: tracelb, tbit, sniff, udpprobe, host,
http, dealias).  Records nobody decodes (sting, neighbourdisc, ...) come back as
``UnknownResult`` with their raw body, so mixed files still read.

Format, as scamper writes it: each record is ``uint16 magic 0x1205,
uint16 type, uint32 length`` and a body.  A body's optional fields are
announced by flag bytes (low 7 bits = fields id 7k+1..7k+7 present, high
bit = another flag byte follows), then a ``uint16`` parameter length (absent
when no flag is set), then the fields in id order; fields with ids we do not
know are skipped using the parameter length.  Integers are big-endian,
strings NUL-terminated, times two ``uint32`` (sec, usec), RTTs ``uint32`` µs.
Addresses inside a record are written once (``uint8 len, uint8 type,
bytes``) and later referenced by number (``uint8 0, uint32 id``).
"""

from __future__ import annotations

import datetime as _dt
import struct
from typing import IO, Any, Callable

from .common import Addr, NS_PER_US, timeval_to_ns
from .cycle import CycleStart, CycleStop, UnknownResult
from .errors import FormatError
from .ping import PING_FLAGS, Ping, PingReply, PingStop, PingTsReply, PingV4TS
from .trace import IcmpExt, MplsLabel, Trace, TraceHop, TraceStop

__all__ = ["WartsReader", "WARTS_TYPES", "register", "Cursor", "AddrTable", "read_params", "Truncated"]

MAGIC = 0x1205
MAX_RECORD = 64 * 1024 * 1024  # refuse absurd lengths instead of allocating

WARTS_TYPES = {1: "list", 2: "cycle-start", 3: "cycle-def", 4: "cycle-stop",
               5: "addr", 6: "trace", 7: "ping", 8: "tracelb", 9: "dealias",
               0x0a: "neighbourdisc", 0x0b: "tbit", 0x0c: "sting",
               0x0d: "sniff", 0x0e: "host", 0x0f: "http", 0x10: "udpprobe"}

PING_METHODS = ["icmp-echo", "tcp-ack", "tcp-ack-sport", "udp", "udp-dport",
                "icmp-time", "tcp-syn", "tcp-synack", "tcp-rst",
                "tcp-syn-sport", "udp-sport"]
PING_STOPS = [PingStop.NONE, PingStop.DONE, PingStop.ERROR, PingStop.HALTED]
TRACE_METHODS = {1: "icmp-echo", 2: "udp", 3: "tcp", 4: "icmp-echo-paris",
                 5: "udp-paris", 6: "tcp-ack"}
TRACE_STOPS = [TraceStop.NONE, TraceStop.COMPLETED, TraceStop.UNREACH,
               TraceStop.ICMP, TraceStop.LOOP, TraceStop.GAPLIMIT,
               TraceStop.ERROR, TraceStop.HOPLIMIT, TraceStop.GSS,
               TraceStop.HALTED]

_OPT_FLAGS = ("v4rr", "tsonly", "tsandaddr")  # as Ping.flags models them (see jsonfmt)
_PING_REPLY_FLAG_REPLY_TTL = 0x01
_PING_REPLY_FLAG_REPLY_IPID = 0x02
_HOP_FLAG_TCP = 0x20
_HOP_FLAG_UDP = 0x40
_TRACE_FLAG_ALLATTEMPTS = 0x01
_TRACE_FLAG_ICMPCSUMDP = 0x20
_TRACE_FLAG_RXERR = 0x80  # replies read from the error queue: no IP header


class _Truncated(Exception):
    pass


class _Cursor:
    """Bounds-checked big-endian reads over one record body."""

    __slots__ = ("buf", "off", "end")

    def __init__(self, buf: bytes, off: int = 0, end: int | None = None) -> None:
        self.buf = buf
        self.off = off
        self.end = len(buf) if end is None else end

    def take(self, n: int) -> bytes:
        if n < 0 or self.off + n > self.end:
            raise _Truncated(f"need {n} bytes at offset {self.off}, record ends at {self.end}")
        b = self.buf[self.off:self.off + n]
        self.off += n
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def timeval_ns(self) -> int:
        sec, usec = struct.unpack(">II", self.take(8))
        return timeval_to_ns(sec, usec)

    def string(self) -> str:
        end = self.buf.find(b"\0", self.off, self.end)
        if end < 0:
            raise _Truncated("unterminated string")
        s = self.buf[self.off:end].decode("utf-8", errors="replace")
        self.off = end + 1
        return s


class _AddrTable:
    """Per-record address table: addresses are defined once, then referenced."""

    def __init__(self) -> None:
        self.addrs: list[Addr | None] = []

    def read(self, c: _Cursor) -> Addr | None:
        n = c.u8()
        if n == 0:
            i = c.u32()
            if i >= len(self.addrs):
                raise _Truncated(f"address reference {i} before its definition")
            return self.addrs[i]
        kind = c.u8()
        raw = c.take(n)
        addr: Addr | None
        if kind in (1, 2) and len(raw) in (4, 16):
            addr = Addr(raw)
        else:
            addr = None  # ethernet/firewire addresses: not IP, not modelled
        self.addrs.append(addr)
        return addr


def _params(c: _Cursor, readers: list[Callable[[_Cursor], None] | None]) -> set[int]:
    """Read a flags + params block; call readers[id-1] for each present id.

    Returns the set of ids present.  Unknown ids end reading; the cursor is
    then moved to the end of the parameter block, as scamper does."""
    flags: list[int] = []
    while True:
        b = c.u8()
        flags.append(b)
        if not b & 0x80:
            break
    present: set[int] = set()
    if flags[0] == 0:
        return present
    plen = c.u16()
    final = c.off + plen
    if final > c.end:
        raise _Truncated("parameter block longer than the record")
    inner = _Cursor(c.buf, c.off, final)
    for i, b in enumerate(flags):
        for j in range(7):
            if b & (1 << j):
                present.add(i * 7 + j + 1)
    for ident in sorted(present):
        if ident > len(readers):
            break
        reader = readers[ident - 1]
        if reader is None:
            raise _Truncated(f"field {ident} is not supported by this reader "
                             "(deprecated global address ids, or a static router address)")
        reader(inner)
    c.off = final
    return present


#: warts record type -> body decoder; see ``register``.
_REGISTERED: dict[int, Callable[[bytes, "WartsReader"], Any]] = {}


def register(rtype: int, decode: Callable[[bytes, "WartsReader"], Any]) -> None:
    """Add a record type: ``decode(body, reader)`` returns the result object
    (``reader.lists``/``reader.cycles`` name the record's list and cycle).
    Raise ``Truncated`` or ``ValueError`` for a bad body: the reader turns
    either into a ``FormatError`` naming the file offset.  Use ``Cursor``,
    ``AddrTable`` and ``read_params`` to read scamper's field encoding."""
    _REGISTERED[rtype] = decode


class WartsReader:
    """Reads records from a (decompressed) binary stream, one at a time."""

    def __init__(self, fh: IO[bytes], path: str | None = None) -> None:
        self.fh = fh
        self.path = path
        self.offset = 0
        self.lists: dict[int, tuple[int, str]] = {}      # file id -> (list id, name)
        self.cycles: dict[int, dict[str, Any]] = {}      # file id -> cycle info

    def _err(self, msg: str, at: int) -> FormatError:
        return FormatError(msg, path=self.path, offset=at)

    def read(self) -> Any:
        """The next object (Ping, Trace, CycleStart, CycleStop,
        UnknownResult), or None at the end.  List and cycle-definition
        records are absorbed: they only name things other records use."""
        while True:
            at = self.offset
            hdr = self.fh.read(8)
            if not hdr:
                return None
            if len(hdr) < 8:
                raise self._err("truncated record header", at)
            magic, rtype, length = struct.unpack(">HHI", hdr)
            if magic != MAGIC:
                raise self._err(f"bad magic 0x{magic:04x} (not a warts record)", at)
            if length > MAX_RECORD:
                raise self._err(f"record length {length} is implausible", at)
            body = self.fh.read(length)
            if len(body) < length:
                raise self._err(f"truncated record: {len(body)} of {length} bytes", at)
            self.offset += 8 + length
            try:
                obj = self._decode(rtype, body)
            except _Truncated as e:
                name = WARTS_TYPES.get(rtype, str(rtype))
                raise self._err(f"bad {name} record: {e}", at) from None
            except (ValueError, TypeError) as e:
                name = WARTS_TYPES.get(rtype, str(rtype))
                raise self._err(f"bad {name} record: {e}", at) from None
            if obj is not None:
                return obj

    # -- records ----------------------------------------------------------------
    def _decode(self, rtype: int, body: bytes) -> Any:
        c = _Cursor(body)
        if rtype == 1:
            fid, list_id = c.u32(), c.u32()
            name = c.string()
            _params(c, [lambda c: (c.string(), None)[1], lambda c: (c.string(), None)[1]])
            self.lists[fid] = (list_id, name)
            return None
        if rtype in (2, 3):
            fid, list_fid, cycle_id, start = c.u32(), c.u32(), c.u32(), c.u32()
            info: dict[str, Any] = {"hostname": None, "stop": None}

            def host(c: _Cursor) -> None:
                info["hostname"] = c.string()

            def stop(c: _Cursor) -> None:
                info["stop"] = c.u32()
            _params(c, [stop, host])
            lst = self.lists.get(list_fid, (0, "default"))
            info.update(list_name=lst[1], cycle_id=cycle_id, start=start)
            self.cycles[fid] = info
            if rtype == 3:
                return None
            return CycleStart(start_time=start, list_name=lst[1], cycle_id=cycle_id,
                              hostname=info["hostname"])
        if rtype == 4:
            fid, stop_time = c.u32(), c.u32()
            info = self.cycles.get(fid, {"list_name": "default", "cycle_id": 0,
                                         "hostname": None})
            return CycleStop(stop_time=stop_time, list_name=info["list_name"],
                             cycle_id=info["cycle_id"], hostname=info["hostname"])
        if rtype == 5:
            return None  # deprecated global address record
        if rtype == 7:
            return self._ping(c)
        if rtype == 6:
            return self._trace(c)
        decode = _REGISTERED.get(rtype)
        if decode is not None:
            return decode(body, self)
        return UnknownResult(type=WARTS_TYPES.get(rtype, f"warts-{rtype}"), raw=body)

    def _ping(self, c: _Cursor) -> Ping:
        table = _AddrTable()
        v: dict[str, Any] = {}

        def put(name: str, fn: Callable[[_Cursor], Any]) -> Callable[[_Cursor], None]:
            def reader(c: _Cursor) -> None:
                v[name] = fn(c)
            return reader
        u8, u16, u32 = _Cursor.u8, _Cursor.u16, _Cursor.u32
        readers: list[Callable[[_Cursor], None] | None] = [
            put("list", u32), put("cycle", u32), None, None,
            put("start", _Cursor.timeval_ns), put("stop_r", u8), put("stop_d", u8),
            put("datalen", u16), lambda c: v.__setitem__("data", c.take(v.get("datalen", 0))),
            put("probe_count", u16), put("probe_size", u16), put("wait", u8),
            put("ttl", u8), put("reply_count", u16), put("ping_sent", u16),
            put("method", u8), put("sport", u16), put("dport", u16),
            put("userid", u32), put("src", table.read), put("dst", table.read),
            put("flags8", u8), put("tos", u8),
            put("tsps", lambda c: [table.read(c) for _ in range(c.u8())]),
            put("icmpsum", u16), put("pmtu", u16), put("timeout", u8),
            put("wait_us", u32), put("tcp_ack", u32), put("flags", u32),
            put("tcp_seq", u32), None,  # rtr: static address, not supported
        ]
        _params(c, readers)
        if v.get("dst") is None:
            raise _Truncated("ping without a destination")
        method_i = v.get("method", 0)
        method = PING_METHODS[method_i] if method_i < len(PING_METHODS) else str(method_i)
        nreplies = c.u16()
        replies = [self._ping_reply(c, table, v["dst"]) for _ in range(nreplies)]
        icmp = method.startswith("icmp")
        tcp = method.startswith("tcp")
        stop_i = v.get("stop_r", 0)
        wait_s = v.get("wait", 1)
        extra: dict[str, Any] = {}
        if "data" in v:
            extra["pattern" if not v.get("flags", v.get("flags8", 0)) & 0x04 else "payload"] = \
                v["data"].hex()
        bits = v.get("flags", v.get("flags8", 0))
        return Ping(
            dst=v["dst"], src=v.get("src"), method=method,
            flags=tuple(n for i, n in enumerate(PING_FLAGS) if bits & (1 << i) and n in _OPT_FLAGS),
            probe_tsps=tuple(v.get("tsps", ())),
            start_ns=v.get("start", 0), ping_sent=v.get("ping_sent", 0),
            probe_size=v.get("probe_size"), ttl=v.get("ttl"), tos=v.get("tos"),
            wait_probe=_seconds(wait_s, v.get("wait_us", 0)),
            wait_timeout=_seconds(v.get("timeout", wait_s), 0),
            sport=None if icmp else v.get("sport", 0),
            dport=None if icmp else v.get("dport", 0),
            icmp_id=v.get("sport") if icmp else None,
            tcp_seq=v.get("tcp_seq", 0) if tcp else None,
            tcp_ack=v.get("tcp_ack", 0) if tcp else None,
            userid=v.get("userid", 0),
            stop_reason=PING_STOPS[stop_i] if stop_i < len(PING_STOPS) else str(stop_i),
            replies=replies, extra=extra)

    def _ping_reply(self, c: _Cursor, table: _AddrTable, dst: Addr) -> PingReply:
        v: dict[str, Any] = {}

        def put(name: str, fn: Callable[[_Cursor], Any]) -> Callable[[_Cursor], None]:
            def reader(c: _Cursor) -> None:
                v[name] = fn(c)
            return reader
        u8, u16, u32 = _Cursor.u8, _Cursor.u16, _Cursor.u32
        readers: list[Callable[[_Cursor], None] | None] = [
            None, put("flags", u8), put("reply_ttl", u8), put("reply_size", u16),
            put("icmp", lambda c: (c.u8(), c.u8())), put("rtt", u32),
            put("probe_id", u16), put("reply_ipid", u16), put("probe_ipid", u16),
            put("proto", u8), put("tcp_flags", u8), put("addr", table.read),
            put("v4rr", lambda c: [table.read(c) for _ in range(c.u8())]),
            put("v4ts", _read_v4ts(table)), put("ipid32", u32), put("tx", _Cursor.timeval_ns),
            put("tsreply", lambda c: PingTsReply(c.u32(), c.u32(), c.u32())),
            put("probe_sport", u16), put("reply_tos", u8),
        ]
        present = _params(c, readers)
        src = v.get("addr")
        if src is None:
            raise _Truncated("ping reply without an address")
        flags = v.get("flags", 0)
        proto = v.get("proto", 1 if dst.is_ipv4() else 58)
        is_icmp = proto in (1, 58)
        rtt_ns = v.get("rtt", 0) * NS_PER_US
        if src.is_ipv4():
            probe_ipid, reply_ipid = v.get("probe_ipid", 0), v.get("reply_ipid", 0)
        else:
            probe_ipid = None
            reply_ipid = v.get("ipid32") if flags & _PING_REPLY_FLAG_REPLY_IPID else None
        icmp_t, icmp_c = v.get("icmp", (None, None)) if is_icmp else (None, None)
        return PingReply(
            src=src, attempt=v.get("probe_id", 0), tx_ns=v.get("tx"), rtt_ns=rtt_ns,
            probe_ipid=probe_ipid, reply_ipid=reply_ipid,
            reply_ttl=v.get("reply_ttl") if (flags & _PING_REPLY_FLAG_REPLY_TTL
                                              or 3 in present) else None,
            reply_size=v.get("reply_size"), reply_proto=proto,
            icmp_type=icmp_t, icmp_code=icmp_c,
            tcp_flags=v.get("tcp_flags", 0) if proto == 6 else None,
            reply_tos=v.get("reply_tos"),
            v4rr=tuple(v["v4rr"]) if v.get("v4rr") else None, v4ts=v.get("v4ts"),
            tsreply=v.get("tsreply"))

    def _trace(self, c: _Cursor) -> Trace:
        table = _AddrTable()
        v: dict[str, Any] = {}

        def put(name: str, fn: Callable[[_Cursor], Any]) -> Callable[[_Cursor], None]:
            def reader(c: _Cursor) -> None:
                v[name] = fn(c)
            return reader
        u8, u16, u32 = _Cursor.u8, _Cursor.u16, _Cursor.u32
        readers: list[Callable[[_Cursor], None] | None] = [
            put("list", u32), put("cycle", u32), None, None,
            put("start", _Cursor.timeval_ns), put("stop_r", u8), put("stop_d", u8),
            put("flags8", u8), put("attempts", u8), put("hoplimit", u8),
            put("type", u8), put("probe_size", u16), put("sport", u16),
            put("dport", u16), put("firsthop", u8), put("tos", u8), put("wait", u8),
            put("loops", u8), put("hop_count", u16), put("gaplimit", u8),
            put("gapaction", u8), put("loopaction", u8), put("probec", u16),
            put("wait_probe", u8), put("confidence", u8), put("src", table.read),
            put("dst", table.read), put("userid", u32), put("offset", u16),
            None, put("squeries", u8), put("flags", u32),
        ]
        _params(c, readers)
        if v.get("dst") is None:
            raise _Truncated("trace without a destination")
        probe_size = v.get("probe_size", 0)
        flags = v.get("flags", v.get("flags8", 0))
        rxerr = bool(flags & _TRACE_FLAG_RXERR)
        hops = [self._hop(c, table, rxerr) for _ in range(c.u16())]
        # trailing attributes (pmtud, last-ditch, doubletree) are not modelled
        max_ttl = max((h.probe_ttl for h in hops), default=0)
        hop_count = v.get("hop_count") or max_ttl
        type_i = v.get("type", 0)
        method = TRACE_METHODS.get(type_i, str(type_i))
        stop_i = v.get("stop_r", 0)
        icmp_csum = bool(flags & _TRACE_FLAG_ICMPCSUMDP) and not method.startswith(("udp", "tcp"))
        udp_tcp = method.startswith(("udp", "tcp"))
        return Trace(
            dst=v["dst"], src=v.get("src"), method=method,
            start_ns=v.get("start", 0),
            sport=v.get("sport", 0) if udp_tcp else None,
            dport=v.get("dport", 0) if udp_tcp else None,
            icmp_sum=v.get("dport", 0) if icmp_csum else None,
            stop_reason=TRACE_STOPS[stop_i] if stop_i < len(TRACE_STOPS) else str(stop_i),
            stop_data=v.get("stop_d", 0), hop_count=hop_count,
            attempts=v.get("attempts", 0), hoplimit=v.get("hoplimit", 0),
            firsthop=v.get("firsthop") or 1,
            wait_timeout=_seconds(v.get("wait", 0), 0),
            wait_probe=_seconds(0, v.get("wait_probe", 0) * 10_000),
            tos=v.get("tos", 0), probe_size=probe_size,
            probe_count=v.get("probec", 0), userid=v.get("userid", 0),
            confidence=v.get("confidence", 0), gaplimit=v.get("gaplimit", 5), loops=v.get("loops", 1),
            all_attempts=bool(flags & _TRACE_FLAG_ALLATTEMPTS), hop_records=hops)

    def _hop(self, c: _Cursor, table: _AddrTable, rxerr: bool) -> TraceHop:
        v: dict[str, Any] = {}

        def put(name: str, fn: Callable[[_Cursor], Any]) -> Callable[[_Cursor], None]:
            def reader(c: _Cursor) -> None:
                v[name] = fn(c)
            return reader
        u8, u16, u32 = _Cursor.u8, _Cursor.u16, _Cursor.u32
        readers: list[Callable[[_Cursor], None] | None] = [
            None, put("probe_ttl", u8), put("reply_ttl", u8), put("flags", u8),
            put("probe_id", lambda c: c.u8() + 1), put("rtt", u32),
            put("icmp", lambda c: (c.u8(), c.u8())), put("probe_size", u16),
            put("reply_size", u16), put("reply_ipid", u16), put("reply_tos", u8),
            put("nhmtu", u16), put("q_ipl", u16), put("q_ttl", u8),
            put("tcp_flags", u8), put("q_tos", u8), put("icmpext", _icmpext),
            put("addr", table.read), put("tx", _Cursor.timeval_ns),
            put("name", _Cursor.string),
        ]
        _params(c, readers)
        src = v.get("addr")
        if src is None or not v.get("probe_ttl"):
            raise _Truncated("hop without an address or probe TTL")
        flags = v.get("flags", 0)
        is_icmp = not flags & (_HOP_FLAG_TCP | _HOP_FLAG_UDP)
        icmp_t, icmp_c = v.get("icmp", (0, 0)) if is_icmp else (None, None)
        v4 = src.is_ipv4()
        icmp_q = is_icmp and not rxerr and (
            (v4 and icmp_t in (3, 11)) or (not v4 and icmp_t in (1, 2, 3)))
        ptb = is_icmp and ((v4 and icmp_t == 3 and icmp_c == 4) or (not v4 and icmp_t == 2))
        probe_size = v.get("probe_size", 0)
        return TraceHop(
            src=src, name=v.get("name"), probe_ttl=v["probe_ttl"],
            probe_id=v.get("probe_id", 1), probe_size=probe_size,
            tx_ns=v.get("tx"), rtt_ns=v.get("rtt", 0) * NS_PER_US,
            reply_ttl=v.get("reply_ttl", 0), reply_tos=v.get("reply_tos", 0),
            reply_ipid=None if rxerr else v.get("reply_ipid", 0),
            reply_size=None if rxerr else v.get("reply_size", 0),
            icmp_type=icmp_t, icmp_code=icmp_c,
            icmp_q_ttl=v.get("q_ttl", 1) if icmp_q else None,
            icmp_q_ipl=v.get("q_ipl", probe_size) if icmp_q else None,
            icmp_q_tos=v.get("q_tos", 0) if icmp_q and v4 else None,
            icmp_nhmtu=v.get("nhmtu", 0) if ptb else None,
            tcp_flags=v.get("tcp_flags", 0) if flags & _HOP_FLAG_TCP else None,
            icmpext=v.get("icmpext", []))


def _seconds(sec: int, usec: int) -> _dt.timedelta:
    return _dt.timedelta(seconds=sec, microseconds=usec)


def _read_v4ts(table: _AddrTable) -> Callable[[_Cursor], PingV4TS]:
    """scamper's v4ts: u8 timestamp count, u8 address count (0 or the
    same), the timestamps, then the addresses."""
    def reader(c: _Cursor) -> PingV4TS:
        tsc, ipc = c.u8(), c.u8()
        if ipc not in (0, tsc):
            raise _Truncated(f"ping reply v4ts with {tsc} timestamps but {ipc} addresses")
        tss = tuple(c.u32() for _ in range(tsc))
        ips = tuple(table.read(c) for _ in range(ipc))
        return PingV4TS(tss, ips if ipc else None)
    return reader


def _icmpext(c: _Cursor) -> list[IcmpExt]:
    """RFC 4884 extension objects: uint16 total, then (uint16 dl, uint8 cn,
    uint8 ct, dl bytes) each; MPLS label stacks decoded."""
    total = c.u16()
    inner = _Cursor(c.buf, c.off, c.off + total)
    if inner.end > c.end:
        raise _Truncated("icmp extension longer than its field")
    out: list[IcmpExt] = []
    while inner.off < inner.end:
        dl, cn, ct = inner.u16(), inner.u8(), inner.u8()
        data = inner.take(dl)
        ie = IcmpExt(cn=cn, ct=ct, dl=dl)
        if ie.is_mpls():
            for k in range(0, dl - dl % 4, 4):
                word = int.from_bytes(data[k:k + 4], "big")
                ie.mpls_labels.append(MplsLabel(label=word >> 12, exp=(word >> 9) & 7,
                                                s=(word >> 8) & 1, ttl=word & 0xFF))
        else:
            ie.data = data
        out.append(ie)
    c.off = inner.end
    return out


# Public names for registered decoders (see ``register``).
Cursor = _Cursor
AddrTable = _AddrTable
read_params = _params
Truncated = _Truncated
