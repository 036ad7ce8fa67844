"""Writer for scamper's binary warts format (ping and trace here; other kinds by ``register``).

Why: warts is what scamper's own tools (``sc_warts2json``, ``sc_wartsdump``,
``sc_analysis_dump``) and many existing pipelines read.  Writing it lets
marionet data flow into them unchanged; ``WartsReader`` reads it back.

The layout mirrors scamper's writer (see ``warts.py`` for the format):
a list record, then for each cycle a cycle-start … cycle-stop bracket, with
ping/trace records that name their list and cycle by the file-local ids
those records were given (both counted from 1; 0 means none).  Optional
fields follow scamper's rules for when each is present, so a record written
here and one written by scamper for the same measurement carry the same
fields.  What our results do not know (a trace's gap limit, loop limit) is
left out rather than invented: scamper's readers take their defaults.
"""

from __future__ import annotations

import datetime as _dt
import struct
from typing import IO, Any, Callable, Iterable

from .common import NS_PER_US, Addr
from .cycle import CycleStart, CycleStop
from .ping import PING_FLAGS, Ping, PingReply
from .trace import IcmpExt, Trace, TraceHop
from .warts import MAGIC, PING_METHODS, PING_STOPS, TRACE_METHODS, TRACE_STOPS

__all__ = ["WartsWriter", "register", "RecordContext"]

_TYPE = {"list": 1, "cycle-start": 2, "cycle-stop": 4, "trace": 6, "ping": 7}
_TRACE_TYPE = {name: num for num, name in TRACE_METHODS.items()}
_TRACE_TYPE.update({"icmp-paris": 4, "icmp": 1})  # our method spellings
_PING_METHOD = {name: i for i, name in enumerate(PING_METHODS)}

_PING_FLAG_PAYLOAD = 0x04
_PING_REPLY_FLAG_REPLY_TTL = 0x01
_PING_REPLY_FLAG_REPLY_IPID = 0x02
_PING_REPLY_FLAG_PROBE_IPID = 0x04
_TRACE_FLAG_ALLATTEMPTS = 0x01
_TRACE_FLAG_ICMPCSUMDP = 0x20
_HOP_FLAG_TS_SOCK_RX = 0x01
_HOP_FLAG_REPLY_TTL = 0x10
_HOP_FLAG_TCP = 0x20
_HOP_FLAG_UDP = 0x40
_TRACE_ATTR_EOF = 0


def _u8(v: int) -> bytes:
    return struct.pack(">B", v & 0xFF)


def _u16(v: int) -> bytes:
    return struct.pack(">H", v & 0xFFFF)


def _u32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def _timeval(ns: int) -> bytes:
    us = ns // NS_PER_US
    return struct.pack(">II", (us // 1_000_000) & 0xFFFFFFFF, us % 1_000_000)


def _rtt(ns: int | None) -> bytes:
    return _u32(max(0, (ns or 0) // NS_PER_US))


def _string(s: str) -> bytes:
    return s.encode("utf-8").replace(b"\0", b"") + b"\0"


def _params(fields: dict[int, bytes]) -> bytes:
    """Flag bytes (7 ids each, high bit = more follow), then the uint16
    parameter length and the parameters in id order; one zero byte when
    there are none."""
    if not fields:
        return b"\0"
    top = max(fields)
    flags = bytearray((top + 6) // 7)
    for ident in fields:
        flags[(ident - 1) // 7] |= 1 << ((ident - 1) % 7)
    for i in range(len(flags) - 1):
        flags[i] |= 0x80
    body = b"".join(fields[i] for i in sorted(fields))
    if len(body) > 0xFFFF:
        raise ValueError(f"warts parameter block of {len(body)} bytes exceeds 65535")
    return bytes(flags) + _u16(len(body)) + body


class _AddrTable:
    """Each address is written in full once per record, then by number."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}

    def ref(self, addr: Addr) -> bytes:
        raw = addr.packed
        i = self.ids.get(raw)
        if i is not None:
            return b"\0" + _u32(i)
        self.ids[raw] = len(self.ids)
        return _u8(len(raw)) + _u8(1 if len(raw) == 4 else 2) + raw


def _seconds(td: _dt.timedelta) -> tuple[int, int]:
    us = td // _dt.timedelta(microseconds=1)
    return us // 1_000_000, us % 1_000_000


def _unspecified(like: Addr) -> Addr:
    return Addr("0.0.0.0" if like.is_ipv4() else "::")


class RecordContext:
    """What a registered record writer may use: the open cycle's list and
    cycle ids (fields 1 and 2 of every scamper result record), and the
    encoding helpers scamper's records share."""

    u8, u16, u32 = staticmethod(_u8), staticmethod(_u16), staticmethod(_u32)
    timeval, rtt, string = staticmethod(_timeval), staticmethod(_rtt), staticmethod(_string)
    params = staticmethod(_params)
    AddrTable = _AddrTable

    def __init__(self, cycle: tuple[int, int] | None) -> None:
        self.cycle = cycle

    def in_cycle(self, fields: dict[int, bytes]) -> None:
        """Set fields 1 (list) and 2 (cycle) when a cycle is open."""
        if self.cycle is not None:
            fields[1], fields[2] = _u32(self.cycle[0]), _u32(self.cycle[1])


#: result class -> (warts record type, body writer); see ``register``.
_REGISTERED: dict[type, tuple[int, Callable[[Any, RecordContext], bytes]]] = {}


def register(cls: type, rtype: int, body: Callable[[Any, RecordContext], bytes]) -> None:
    """Add a record type: ``body(obj, ctx)`` returns the record body for an
    instance of ``cls`` (without the 8-byte header).  Lets each primitive's
    result module own its warts mapping without this module importing it."""
    _REGISTERED[cls] = (rtype, body)


class WartsWriter:
    """Writes result objects to a binary stream as warts records.

    ``write`` takes ``Ping``, ``Trace``, ``CycleStart``, ``CycleStop`` and
    every registered type (``register``: tracelb, tbit, sniff, udpprobe,
    DNS host and HTTP records); anything else raises ``TypeError`` naming
    what it can write (write it as JSON).
    Records between a cycle-start and its cycle-stop carry that cycle.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self._lists: dict[str, int] = {}
        self._cycles: dict[tuple[str, int], int] = {}
        self._cycle: tuple[int, int] | None = None  # (list fid, cycle fid) of the open cycle
        self._next_cycle = 1

    def write(self, obj: Any) -> None:
        writers: dict[type, Callable[[Any], None]] = {
            Ping: self._ping, Trace: self._trace,
            CycleStart: self._cycle_start, CycleStop: self._cycle_stop,
        }
        fn = writers.get(type(obj))
        if fn is not None:
            fn(obj)
            return
        extra = _REGISTERED.get(type(obj))
        if extra is None:
            raise TypeError(f"warts files hold {', '.join(self.kinds())} results and cycle markers, "
                            f"not {type(obj).__name__}; write it to a .json file")
        rtype, body = extra
        data = body(obj, RecordContext(self._cycle))
        self.fh.write(struct.pack(">HHI", MAGIC, rtype, len(data)) + data)

    @staticmethod
    def kinds() -> list[str]:
        """The result kinds this writer can write."""
        return ["ping", "trace"] + sorted({getattr(c, "type_name", c.__name__.lower()) for c in _REGISTERED})

    def write_all(self, objs: Iterable[Any]) -> None:
        for obj in objs:
            self.write(obj)

    def _record(self, name: str, body: bytes) -> None:
        self.fh.write(struct.pack(">HHI", MAGIC, _TYPE[name], len(body)) + body)

    # -- lists and cycles ------------------------------------------------------
    def _list_id(self, name: str) -> int:
        fid = self._lists.get(name)
        if fid is None:
            fid = self._lists[name] = len(self._lists) + 1
            # list id as a human gave it: scamper's default list is id 0
            self._record("list", _u32(fid) + _u32(0) + _string(name) + _params({}))
        return fid

    def _cycle_start(self, c: CycleStart) -> None:
        lfid = self._list_id(c.list_name)
        cfid = self._next_cycle
        self._next_cycle += 1
        self._cycles[(c.list_name, c.cycle_id)] = cfid
        fields = {2: _string(c.hostname)} if c.hostname else {}
        self._record("cycle-start", _u32(cfid) + _u32(lfid) + _u32(c.cycle_id)
                     + _u32(c.start_time) + _params(fields))
        self._cycle = (lfid, cfid)

    def _cycle_stop(self, c: CycleStop) -> None:
        cfid = self._cycles.pop((c.list_name, c.cycle_id), None)
        if cfid is None:
            raise ValueError(f"cycle-stop for list {c.list_name!r} cycle {c.cycle_id} "
                             "without its cycle-start in this file")
        self._record("cycle-stop", _u32(cfid) + _u32(c.stop_time) + b"\0")
        if self._cycle is not None and self._cycle[1] == cfid:
            self._cycle = None

    def _in_cycle(self, fields: dict[int, bytes]) -> None:
        if self._cycle is not None:
            fields[1], fields[2] = _u32(self._cycle[0]), _u32(self._cycle[1])

    # -- ping ----------------------------------------------------------------------
    def _ping(self, p: Ping) -> None:
        table = _AddrTable()
        v4 = p.dst.is_ipv4()
        icmp = p.method.startswith("icmp")
        method = _PING_METHOD.get(p.method)
        if method is None:
            raise ValueError(f"ping method {p.method!r} has no warts number")
        f: dict[int, bytes] = {}
        self._in_cycle(f)
        f[5] = _timeval(p.start_ns)
        f[6] = _u8(PING_STOPS.index(p.stop_reason) if p.stop_reason in PING_STOPS else 0)
        f[7] = _u8(0)
        flags = 0
        data_hex = p.extra.get("payload") or p.extra.get("pattern")
        if data_hex:
            data = bytes.fromhex(str(data_hex))
            f[8], f[9] = _u16(len(data)), data
            if p.extra.get("payload"):
                flags |= _PING_FLAG_PAYLOAD
        f[10] = _u16(p.ping_sent)
        if p.probe_size is not None:
            f[11] = _u16(p.probe_size)
        wait_s, wait_us = _seconds(p.wait_probe)
        f[12] = _u8(wait_s)
        if p.ttl is not None:
            f[13] = _u8(p.ttl)
        f[14] = _u16(len(p.replies))
        f[15] = _u16(p.ping_sent)
        if method:
            f[16] = _u8(method)
        sport = p.icmp_id if icmp else p.sport
        if sport:
            f[17] = _u16(sport)
        if not icmp and p.dport:
            f[18] = _u16(p.dport)
        if p.userid:
            f[19] = _u32(p.userid)
        f[20] = table.ref(p.src if p.src is not None else _unspecified(p.dst))
        f[21] = table.ref(p.dst)
        for name in p.flags:
            if name in PING_FLAGS:
                flags |= 1 << PING_FLAGS.index(name)
        if flags:
            f[22] = _u8(flags)
            if flags > 0xFF:
                f[30] = _u32(flags)
        if p.tos:
            f[23] = _u8(p.tos)
        if p.probe_tsps:
            f[24] = _u8(len(p.probe_tsps)) + b"".join(table.ref(a) for a in p.probe_tsps)
        timeout_s, _ = _seconds(p.wait_timeout)
        if timeout_s != wait_s:
            f[27] = _u8(timeout_s)
        if wait_us:
            f[28] = _u32(wait_us)
        if p.tcp_ack:
            f[29] = _u32(p.tcp_ack)
        if p.tcp_seq:
            f[31] = _u32(p.tcp_seq)
        body = _params(f) + _u16(len(p.replies))
        body += b"".join(self._ping_reply(r, v4, icmp, table) for r in p.replies)
        self._record("ping", body)

    @staticmethod
    def _ping_reply(r: PingReply, v4: bool, icmp_method: bool, table: _AddrTable) -> bytes:
        flags = 0
        if r.reply_ttl is not None:
            flags |= _PING_REPLY_FLAG_REPLY_TTL
        if r.reply_ipid is not None:
            flags |= _PING_REPLY_FLAG_REPLY_IPID
        if r.probe_ipid is not None:
            flags |= _PING_REPLY_FLAG_PROBE_IPID
        proto = _proto_number(r.reply_proto, v4)
        f: dict[int, bytes] = {}
        if flags:
            f[2] = _u8(flags)
        if r.reply_ttl is not None:
            f[3] = _u8(r.reply_ttl)
        f[4] = _u16(r.reply_size or 0)
        if proto in (1, 58):
            f[5] = _u8(r.icmp_type or 0) + _u8(r.icmp_code or 0)
        f[6] = _rtt(r.rtt_ns)
        f[7] = _u16(r.attempt)
        if not v4 or r.reply_ipid is not None:
            f[8] = _u16(r.reply_ipid or 0 if v4 else 0)
        if not v4 or r.probe_ipid is not None:
            f[9] = _u16(r.probe_ipid or 0 if v4 else 0)
        if not icmp_method:
            f[10] = _u8(proto)
        if proto == 6:
            f[11] = _u8(r.tcp_flags or 0)
        f[12] = table.ref(r.src)
        if r.v4rr is not None:
            f[13] = _u8(len(r.v4rr)) + b"".join(table.ref(a) for a in r.v4rr)
        if r.v4ts is not None:
            ips = r.v4ts.ips or ()
            f[14] = (_u8(len(r.v4ts.tss)) + _u8(len(ips)) + b"".join(_u32(t) for t in r.v4ts.tss)
                     + b"".join(table.ref(a) for a in ips))
        if not v4 and r.reply_ipid is not None:
            f[15] = _u32(r.reply_ipid)
        if r.tx_ns:
            f[16] = _timeval(r.tx_ns)
        if r.tsreply is not None:
            f[17] = _u32(r.tsreply.tso) + _u32(r.tsreply.tsr) + _u32(r.tsreply.tst)
        if r.reply_tos:  # scamper omits a zero ToS
            f[19] = _u8(r.reply_tos)
        return _params(f)

    # -- trace ---------------------------------------------------------------------
    def _trace(self, t: Trace) -> None:
        table = _AddrTable()
        ttype = _TRACE_TYPE.get(t.method)
        if ttype is None:
            raise ValueError(f"trace method {t.method!r} has no warts number")
        flags = _TRACE_FLAG_ALLATTEMPTS if (t.all_attempts or t.extra.get("all_attempts")) else 0
        dport = t.dport or 0
        if t.icmp_sum is not None:
            flags |= _TRACE_FLAG_ICMPCSUMDP
            dport = t.icmp_sum
        f: dict[int, bytes] = {}
        self._in_cycle(f)
        f[5] = _timeval(t.start_ns)
        f[6] = _u8(TRACE_STOPS.index(t.stop_reason) if t.stop_reason in TRACE_STOPS else 0)
        f[7] = _u8(t.stop_data)
        f[8] = _u8(flags)
        f[9] = _u8(t.attempts)
        f[10] = _u8(t.hoplimit)
        f[11] = _u8(ttype)
        f[12] = _u16(t.probe_size or 0)
        f[13] = _u16(t.sport or 0)
        f[14] = _u16(dport)
        f[15] = _u8(t.firsthop)
        f[16] = _u8(t.tos)
        f[17] = _u8(_seconds(t.wait_timeout)[0])
        f[18] = _u8(t.loops)
        hop_count = t.hop_count if t.hop_count is not None else \
            max((h.probe_ttl for h in t.hop_records), default=0)
        f[19] = _u16(hop_count)
        f[20] = _u8(t.gaplimit)
        f[23] = _u16(t.probe_count or 0)
        f[24] = _u8(t.wait_probe // _dt.timedelta(milliseconds=10))
        if t.confidence:
            f[25] = _u8(t.confidence)
        f[26] = table.ref(t.src if t.src is not None else _unspecified(t.dst))
        f[27] = table.ref(t.dst)
        if t.userid:
            f[28] = _u32(t.userid)
        body = _params(f) + _u16(len(t.hop_records))
        body += b"".join(self._hop(h, t, table) for h in t.hop_records)
        body += _u16(_TRACE_ATTR_EOF)
        self._record("trace", body)

    @staticmethod
    def _hop(h: TraceHop, t: Trace, table: _AddrTable) -> bytes:
        v4 = h.src.is_ipv4()
        is_icmp = h.icmp_type is not None
        is_tcp = not is_icmp and h.tcp_flags is not None
        flags = _HOP_FLAG_REPLY_TTL if h.reply_ttl is not None else 0
        if h.rx_ts_source == "kernel":
            flags |= _HOP_FLAG_TS_SOCK_RX
        if is_tcp:
            flags |= _HOP_FLAG_TCP
        elif not is_icmp:
            flags |= _HOP_FLAG_UDP
        icmp_q = is_icmp and ((v4 and h.icmp_type in (3, 11)) or (not v4 and h.icmp_type in (1, 2, 3)))
        ptb = is_icmp and ((v4 and h.icmp_type == 3 and h.icmp_code == 4) or (not v4 and h.icmp_type == 2))
        probe_size = h.probe_size if h.probe_size is not None else (t.probe_size or 0)
        f: dict[int, bytes] = {
            2: _u8(h.probe_ttl), 3: _u8(h.reply_ttl or 0), 4: _u8(flags),
            5: _u8(max(1, h.probe_id) - 1), 6: _rtt(h.rtt_ns),
        }
        if is_icmp:
            f[7] = _u8(h.icmp_type or 0) + _u8(h.icmp_code or 0)
        f[8] = _u16(probe_size)
        f[9] = _u16(h.reply_size or 0)
        if h.reply_ipid:
            f[10] = _u16(h.reply_ipid)
        f[11] = _u8(h.reply_tos or 0)
        if ptb:
            f[12] = _u16(h.icmp_nhmtu or 0)
        if icmp_q and h.icmp_q_ipl is not None and h.icmp_q_ipl != probe_size:
            f[13] = _u16(h.icmp_q_ipl)
        if icmp_q and h.icmp_q_ttl is not None and h.icmp_q_ttl != 1:
            f[14] = _u8(h.icmp_q_ttl)
        if is_tcp:
            f[15] = _u8(h.tcp_flags or 0)
        if icmp_q and v4:
            f[16] = _u8(h.icmp_q_tos or 0)
        if h.icmpext:
            f[17] = _icmpext(h.icmpext)
        f[18] = table.ref(h.src)
        if h.tx_ns:
            f[19] = _timeval(h.tx_ns)
        return _params(f)


def _proto_number(proto: str | int, v4: bool) -> int:
    if isinstance(proto, int):
        return proto
    return {"icmp": 1 if v4 else 58, "icmp6": 58, "icmpv6": 58, "tcp": 6, "udp": 17}.get(
        proto.lower(), 1 if v4 else 58)


def _icmpext(exts: list[IcmpExt]) -> bytes:
    """uint16 total, then per object uint16 data length, class, type, data;
    MPLS label stacks are encoded back to their 4-byte entries."""
    out = b""
    for ie in exts:
        if ie.mpls_labels:
            data = b"".join(_u32((m.label << 12) | (m.exp << 9) | (m.s << 8) | m.ttl)
                            for m in ie.mpls_labels)
        else:
            data = bytes(ie.data or b"")
        out += _u16(len(data)) + _u8(ie.cn) + _u8(ie.ct) + data
    return _u16(len(out)) + out
