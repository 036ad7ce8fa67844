"""tbit results: one ``Tbit`` per TCP behaviour inference test.

Why the packets are the record: scamper's tbit keeps every segment it sent
and received (``pkts``: direction, time, the raw IP packet) and its JSON
derives per-packet fields (flags, options, relative sequence numbers) from
those bytes, as ``icw_bytes`` is derived from them. We keep the bytes too,
with the kernel's transmit/receive stamps in ns, so a record read back from
a file re-derives exactly what the live test reported.

Field names and codes are scamper's (``scamper_tbit.h``): ``type`` is the
test ("ecn", "sack-rcvr", …), ``result`` the numeric code and
``result_str`` its name ("ecn-success", …). The JSON writer follows
``scamper_tbit_json.c`` (20211212) field for field — including its quirk of
writing ``frag_df`` from the wrong bit, so it is always 0 — and adds a
``"marionet"`` object with the raw packets and exact times, so nothing is
lost on the way through a file. A scamper-written record (no raw packets)
is read by rebuilding each packet from its JSON fields.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field
from typing import Any

from .common import Addr, ns_to_timeval, timeval_to_ns, to_addr
from .errors import FormatError
from .jsonfmt import EXT_KEY, register

__all__ = ["Tbit", "TbitPkt", "TbitResult", "TBIT_TYPES", "TBIT_RESULTS", "TBIT_OPTIONS",
           "NULL_OPTIONS", "NULL_RESULTS"]

#: scamper's test type numbers (SCAMPER_TBIT_TYPE_*)
TBIT_TYPES = {"pmtud": 1, "ecn": 2, "null": 3, "sack-rcvr": 4, "icw": 5, "abc": 6,
              "blind-data": 7, "blind-rst": 8, "blind-syn": 9, "blind-fin": 10}
#: scamper's option bits (SCAMPER_TBIT_OPTION_*), in bit order
TBIT_OPTIONS = ("tcpts", "sack")
NULL_OPTIONS = ("tcpts", "ipts-syn", "iprr-syn", "ipqs-syn", "sack", "fo", "fo-exp")
NULL_RESULTS = ("tcpts-ok", "sack-ok", "fo-ok")
_PMTUD_OPTIONS = ("blackhole",)
_TCP_FLAGS = ("fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr")


class TbitResult(enum.IntEnum):
    """scamper's result codes (SCAMPER_TBIT_RESULT_*)."""

    NONE = 0
    TCP_NOCONN = 1
    TCP_RST = 2
    TCP_ERROR = 3
    ERROR = 4
    ABORTED = 5
    TCP_NOCONN_RST = 6
    HALTED = 7
    TCP_BADOPT = 8
    TCP_FIN = 9
    TCP_ZEROWIN = 10
    PMTUD_NOACK = 20
    PMTUD_NODATA = 21
    PMTUD_TOOSMALL = 22
    PMTUD_NODF = 23
    PMTUD_FAIL = 24
    PMTUD_SUCCESS = 25
    PMTUD_CLEARDF = 26
    ECN_SUCCESS = 30
    ECN_INCAPABLE = 31
    ECN_BADSYNACK = 32
    ECN_NOECE = 33
    ECN_NOACK = 34
    ECN_NODATA = 35
    NULL_SUCCESS = 40
    NULL_NODATA = 41
    SACK_INCAPABLE = 50
    SACK_RCVR_SUCCESS = 51
    SACK_RCVR_SHIFTED = 52
    SACK_RCVR_TIMEOUT = 53
    SACK_RCVR_NOSACK = 54
    ICW_SUCCESS = 60
    ICW_TOOSHORT = 61
    ABC_SUCCESS = 70
    ABC_TOOSHORT = 71
    ABC_BADICW = 72
    BLIND_ACCEPTED = 80
    BLIND_CHALLENGE = 81
    BLIND_IGNORED = 82
    BLIND_RST = 83
    BLIND_SYNNEW = 84

    @property
    def text(self) -> str:
        """scamper's name for the code (``scamper_tbit_res2str``)."""
        n = self.name.lower().replace("_", "-")
        return "sys-error" if n == "error" else n


TBIT_RESULTS = {r.value: r.text for r in TbitResult}
_RESULT_BY_TEXT = {v: k for k, v in TBIT_RESULTS.items()}


def _bits(flags: int, names: tuple[str, ...], nbits: int) -> list[Any]:
    """scamper's ``tbit_bits_encode``: names for known bits, the bit's value otherwise."""
    return [names[i] if i < len(names) else (1 << i) for i in range(nbits) if flags & (1 << i)]


def _unbits(values: Any, names: tuple[str, ...], what: str) -> int:
    out = 0
    for v in values or []:
        if isinstance(v, str) and v in names:
            out |= 1 << names.index(v)
        elif isinstance(v, int) and not isinstance(v, bool) and v > 0 and v & (v - 1) == 0:
            out |= v
        else:
            raise FormatError(f"tbit: unknown {what} {v!r}")
    return out


@dataclass(frozen=True)
class _Ip:
    """What scamper's JSON reads from one recorded packet's headers."""

    v: int
    hlen: int
    length: int
    proto: int
    ecn: int
    ttl: int
    frag: bool
    frag_id: int
    frag_off: int
    frag_mf: int


def _ip(data: bytes) -> _Ip | None:
    if not data:
        return None
    v = data[0] >> 4
    try:
        if v == 4:
            off = struct.unpack_from("!H", data, 6)[0]
            mf, foff = int(bool(off & 0x2000)), (off & 0x1FFF) * 8
            return _Ip(4, (data[0] & 0xF) * 4, struct.unpack_from("!H", data, 2)[0], data[9], data[1] & 3,
                       data[8], bool(mf or foff), struct.unpack_from("!H", data, 4)[0], foff, mf)
        if v == 6:
            hlen, proto = 40, data[6]
            frag, fid, foff, mf = False, 0, 0, 0
            while proto in (0, 43, 60, 44):
                if proto == 44:
                    mf, foff = data[hlen + 3] & 1, struct.unpack_from("!H", data, hlen + 2)[0] & 0xFFF8
                    fid, frag = struct.unpack_from("!I", data, hlen + 4)[0], True
                    proto, hlen = data[hlen], hlen + 8
                else:
                    proto, hlen = data[hlen], hlen + data[hlen + 1] * 8 + 8
            return _Ip(6, hlen, struct.unpack_from("!H", data, 4)[0] + 40, proto, (data[1] & 0x30) >> 4,
                       data[7], frag, fid, foff, mf)
    except (IndexError, struct.error):
        return None
    return None


@dataclass
class TbitPkt:
    """One recorded packet: ``dir`` "tx" or "rx", the kernel's time (ns since
    the epoch; ``ts_source`` "kernel" or "user"), the raw IP packet."""

    dir: str
    time_ns: int
    data: bytes
    ts_source: str | None = None

    @property
    def len(self) -> int:
        return len(self.data)

    def tcp(self) -> tuple[_Ip, int, int, int, int, int, bytes] | None:
        """(ip, seq, ack, flags, window, tcp header length, option bytes), or None."""
        ip = _ip(self.data)
        if ip is None or ip.proto != 6 or ip.frag_off:
            return None
        h = self.data[ip.hlen:]
        if len(h) < 20:
            return None
        seq, ack = struct.unpack_from("!II", h, 4)
        thl = (h[12] >> 4) * 4
        return ip, seq, ack, h[13], struct.unpack_from("!H", h, 14)[0], thl, bytes(h[20:thl])

    @property
    def tcp_datalen(self) -> int | None:
        t = self.tcp()
        return None if t is None else t[0].length - t[0].hlen - t[5]


def _in_range(nxt: int, seq: int, ln: int) -> bool:
    """``scamper_tbit_data_inrange``: the segment starts or ends within 64 KiB past ``nxt``."""
    return ((seq - nxt) & 0xFFFFFFFF) < 65535 or ((seq + ln - 1 - nxt) & 0xFFFFFFFF) < 65535


@dataclass
class Tbit:
    """A tbit test from a vantage point to ``dst``; see the module docstring."""

    type: str
    dst: Addr
    start_ns: int
    src: Addr | None = None
    sport: int = 0
    dport: int = 80
    userid: int = 0
    client_mss: int = 0
    server_mss: int = 0
    ttl: int = 64
    result: int = TbitResult.NONE
    options: int = 0  # TBIT_OPTIONS bits
    wscale: int = 0
    url: str | None = None
    pkts: list[TbitPkt] = field(default_factory=list)
    mtu: int | None = None  # pmtud: the MTU advertised in our PTBs
    ptb_retx: int | None = None
    ptbsrc: Addr | None = None
    pmtud_options: int = 0
    null_options: int = 0
    null_results: int = 0
    icw_start_seq: int = 1  # icw: offset of the response's first byte from the SYN-ACK's seq
    syn_retx: int = 3  # SYNs, and request transmissions, tried before giving up
    dat_retx: int = 3
    blind_off: int | None = None  # blind-*: the blinded segments' sequence offset
    blind_retx: int | None = None  # blind-*: how many were sent at most
    error: str | None = None
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inst: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.dst = to_addr(self.dst)  # type: ignore[assignment]
        self.src = to_addr(self.src)
        self.ptbsrc = to_addr(self.ptbsrc)
        if self.type not in TBIT_TYPES:
            raise ValueError(f"unknown tbit type {self.type!r} (scamper's: {', '.join(TBIT_TYPES)})")

    # -- derived --------------------------------------------------------------
    @property
    def result_str(self) -> str:
        return TBIT_RESULTS.get(int(self.result), str(int(self.result)))

    @property
    def tbit_type(self) -> str:
        return self.type

    def _isns(self) -> tuple[int | None, int | None]:
        """(client ISN, server ISN): the first SYN and the first SYN-ACK seen."""
        cisn = sisn = None
        for p in self.pkts:
            t = p.tcp()
            if t is None:
                continue
            if t[3] & 0x12 == 0x02 and cisn is None:
                cisn = t[1]
            elif t[3] & 0x12 == 0x12 and sisn is None:
                sisn = t[1]
        return cisn, sisn

    @property
    def client_isn(self) -> int | None:
        return self._isns()[0]

    @property
    def server_isn(self) -> int | None:
        return self._isns()[1]

    @property
    def icw_bytes(self) -> int | None:
        """The server's initial window in bytes (``scamper_tbit_icw_size``):
        the data it sent before retransmitting its first segment."""
        if self.type != "icw" or self.result != TbitResult.ICW_SUCCESS or not self.pkts:
            return None
        it = iter(self.pkts[1:])
        for p in it:
            if p.dir == "rx":
                break
        else:
            return None
        t = p.tcp()
        if t is None or t[3] & 0x12 != 0x12:
            return None
        start = (t[1] + self.icw_start_seq) & 0xFFFFFFFF
        tail = 0
        seen_start = 0
        for p in it:
            if p.dir != "rx":
                continue
            t = p.tcp()
            if t is None:
                return None
            ip, seq, _ack, flags, _w, thl, _o = t
            dlen = ip.length - ip.hlen - thl
            if dlen == 0 and not flags & 0x01:
                continue
            if not _in_range(start, seq, dlen):
                continue
            if seq == start:
                seen_start += 1
                if seen_start == 2:
                    return tail
            tail = max(tail, (seq + dlen - start) & 0xFFFFFFFF)
        return None

    @property
    def icw_segments(self) -> int | None:
        """``icw_bytes`` in segments of the server's MSS (rounded up)."""
        b = self.icw_bytes
        if b is None or not self.server_mss:
            return None
        return -(-b // self.server_mss)

    # -- text -----------------------------------------------------------------
    def to_text(self) -> str:
        """One summary line, then one line per packet (relative times,
        relative sequence numbers as scamper's JSON has them)."""
        head = (f"tbit {self.type} from {self.src}:{self.sport} to {self.dst}:{self.dport}"
                f"{' (' + self.url + ')' if self.url else ''}: {self.result_str}"
                f", client mss {self.client_mss}, server mss {self.server_mss}")
        if self.icw_bytes is not None:
            head += f", icw {self.icw_bytes} bytes"
        if self.vp:
            head += f" [vp {self.vp}]"
        if self.error:
            head += f" ({self.error})"
        lines = [head]
        for p in _pkts_json(self):
            flags = ",".join(f.upper() for f in p.get("tcp_flags", []) if isinstance(f, str))
            t = f"{p['tv_sec']}.{p['tv_usec']:06d}"
            s = f"  {t:>12} {p['dir']:2} {p['len']:5}"
            if "tcp_seq" in p:
                s += f" {flags:<16} seq {p['tcp_seq']}"
                if "tcp_ack" in p:
                    s += f" ack {p['tcp_ack']}"
                s += f" len {p['tcp_datalen']} win {p['tcp_win']}"
                opts = [o["kind"] for o in p["tcp_options"] if o["kind"] != "nop"]
                for o in p["tcp_options"]:
                    if o["kind"] == "sack":
                        opts[opts.index("sack")] = "sack " + " ".join(f"{b['left']}-{b['right']}"
                                                                     for b in o["blocks"])
                if opts:
                    s += " <" + ", ".join(opts) + ">"
            if p.get("ip_ecn"):
                s += f" ecn {('', 'ect1', 'ect0', 'ce')[p['ip_ecn']]}"
            lines.append(s)
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def _opts_json(raw: bytes, direction: str, cisn: int, sisn: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(raw):
        k = raw[i]
        if k == 0:
            out.append({"kind": "eol"})
            break
        if k == 1:
            out.append({"kind": "nop"})
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] == 0 or i + raw[i + 1] > len(raw):
            break
        ln = raw[i + 1]
        b = raw[i:i + ln]
        if k == 3 and ln == 3:
            out.append({"kind": "wscale", "shift": b[2]})
        elif k == 4 and ln == 2:
            out.append({"kind": "sack-ok"})
        elif k == 5 and ln in (10, 18, 26, 34):
            base = sisn if direction == "tx" else cisn
            blocks = []
            for j in range((ln - 2) // 8):
                left, right = struct.unpack_from("!II", b, 2 + 8 * j)
                blocks.append({"left": (left - base) & 0xFFFFFFFF, "right": (right - base) & 0xFFFFFFFF})
            out.append({"kind": "sack", "blocks": blocks})
        elif k == 8 and ln == 10:
            val, ecr = struct.unpack_from("!II", b, 2)
            out.append({"kind": "ts", "val": val, "ecr": ecr})
        elif k == 34 and ln >= 2:
            o: dict[str, Any] = {"kind": "fo"}
            if ln > 2:
                o["cookie"] = b[2:].hex()
            out.append(o)
        i += ln
    return out


def _pkts_json(t: Tbit) -> list[dict[str, Any]]:
    """Each packet as scamper's ``tbit_pkt_tostr`` writes it."""
    cisn = sisn = 0
    have_c = have_s = False
    start_us = t.start_ns // 1000
    out = []
    for p in t.pkts:
        rel = p.time_ns // 1000 - start_us
        sec, usec = divmod(rel, 1_000_000) if rel >= 0 else (0, 0)
        d: dict[str, Any] = {"dir": p.dir, "tv_sec": sec, "tv_usec": usec, "len": len(p.data)}
        ip = _ip(p.data)
        if ip is not None:
            d.update(ip_hlen=ip.hlen, ip_ecn=ip.ecn, ip_ttl=ip.ttl)
            if ip.v == 4 or ip.frag:
                d.update(frag_id=ip.frag_id, frag_off=ip.frag_off, frag_mf=ip.frag_mf)
            if ip.v == 4:
                d["frag_df"] = (p.data[6] & 0x40) >> 7  # scamper's expression: always 0
            tcp = p.tcp() if ip.proto == 6 and not ip.frag_off else None
            if tcp is not None:
                _ip_, seq, ack, flags, win, thl, opts = tcp
                if flags & 0x12 == 0x02 and not have_c:
                    cisn, have_c = seq, True
                elif flags & 0x12 == 0x12 and not have_s:
                    sisn, have_s = seq, True
                d["tcp_hlen"] = thl
                d["tcp_flags"] = _bits(flags, _TCP_FLAGS, 8)
                d["tcp_options"] = _opts_json(opts, p.dir, cisn, sisn)
                if p.dir == "tx":
                    rseq, rack = (seq - cisn) & 0xFFFFFFFF, (ack - sisn) & 0xFFFFFFFF
                else:
                    rseq = seq if (seq == 0 and flags & 0x04) else (seq - sisn) & 0xFFFFFFFF
                    rack = (ack - cisn) & 0xFFFFFFFF
                d["tcp_seq"] = rseq
                if flags & 0x10:
                    d["tcp_ack"] = rack
                d["tcp_datalen"] = (ip.length - ip.hlen - thl) & 0xFFFF
                d["tcp_win"] = win
        out.append(d)
    return out


def tbit_to_json(t: Tbit) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "tbit", "tbit_type": t.type, "userid": t.userid,
                         "src": str(t.src) if t.src is not None else "", "dst": str(t.dst),
                         "sport": t.sport, "dport": t.dport, "start": ns_to_timeval(t.start_ns),
                         "client_mss": t.client_mss, "server_mss": t.server_mss, "ttl": t.ttl,
                         "result": t.result_str}
    if t.options:
        d["options"] = _bits(t.options, TBIT_OPTIONS, 16)
    if t.wscale > 0:
        d["wscale"] = t.wscale
    cisn, sisn = t._isns()
    if cisn is not None:
        d["client_isn"] = cisn
    if sisn is not None:
        d["server_isn"] = sisn
    if t.type == "pmtud":
        d["mtu"] = t.mtu or 0
        d["ptb_retx"] = t.ptb_retx or 0
        if t.ptbsrc is not None:
            d["ptbsrc"] = str(t.ptbsrc)
        d["pmtud_options"] = _bits(t.pmtud_options, _PMTUD_OPTIONS, 8)
    elif t.type == "null":
        d["null_options"] = _bits(t.null_options, NULL_OPTIONS, 16)
        d["null_results"] = _bits(t.null_results, NULL_RESULTS, 16)
    elif t.type == "icw" and t.icw_bytes is not None:
        d["icw_bytes"] = t.icw_bytes
    elif t.type.startswith("blind-"):
        d["blind_off"] = t.blind_off or 0
        d["blind_retx"] = t.blind_retx or 0
    if t.url:
        d["app"] = "http"
        d["http_url"] = t.url
    d["pkts"] = _pkts_json(t)
    ext: dict[str, Any] = {"result_code": int(t.result), "icw_start_seq": t.icw_start_seq,
                           "syn_retx": t.syn_retx, "dat_retx": t.dat_retx,
                           "pkts": [{"data": p.data.hex(), "time_ns": p.time_ns,
                                     **({"ts_source": p.ts_source} if p.ts_source else {})}
                                    for p in t.pkts]}
    if t.start_ns % 1000:
        ext["start_ns"] = t.start_ns
    if t.error is not None:
        ext["error"] = t.error
    if t.vp:
        ext["vp"] = t.vp
    if t.extra:
        ext["extra"] = dict(t.extra)
    d[EXT_KEY] = ext
    return d


def _rebuild_pkt(p: dict[str, Any], t: Tbit, cisn: int, sisn: int, i: int) -> bytes:
    """An IPv4 packet with the header fields scamper's JSON kept (payload
    zeros): enough for every derived field to come out as written."""
    from marionet.measure import tcpseg

    try:
        flags = _unbits(p.get("tcp_flags"), _TCP_FLAGS, "tcp flag")
        tx = p.get("dir") == "tx"
        seq = (int(p.get("tcp_seq", 0)) + (cisn if tx else sisn)) & 0xFFFFFFFF
        ack = (int(p.get("tcp_ack", 0)) + (sisn if tx else cisn)) & 0xFFFFFFFF
        sack_base = sisn if tx else cisn
        kw: dict[str, Any] = {}
        for o in p.get("tcp_options") or []:
            kind = o.get("kind")
            if kind == "wscale":
                kw["wscale"] = int(o["shift"])
            elif kind == "sack-ok":
                kw["sack_ok"] = True
            elif kind == "ts":
                kw["ts"] = (int(o["val"]), int(o["ecr"]))
            elif kind == "sack":
                kw["sack"] = tuple(((b["left"] + sack_base) & 0xFFFFFFFF, (b["right"] + sack_base) & 0xFFFFFFFF)
                                   for b in o["blocks"])
        opts = tcpseg.tcp_options(**kw)
        want = int(p.get("tcp_hlen", 20 + len(opts))) - 20
        if want >= len(opts) + 4 and flags & 0x02:
            opts = tcpseg.tcp_options(mss=t.client_mss if tx else t.server_mss, **kw)
        opts += b"\x01" * max(0, want - len(opts))
        src, dst = (t.src, t.dst) if tx else (t.dst, t.src)
        sport, dport = (t.sport, t.dport) if tx else (t.dport, t.sport)
        seg = tcpseg.tcp_segment(str(src), str(dst), sport, dport, seq=seq, ack=ack, flags=flags,
                                 window=int(p.get("tcp_win", 0)), options=opts,
                                 payload=bytes(int(p.get("tcp_datalen", 0))))
        return tcpseg.ipv4_tcp(str(src), str(dst), seg, ttl=int(p.get("ip_ttl", 64)),
                               tos=int(p.get("ip_ecn", 0)), ipid=int(p.get("frag_id", 0)), df=False)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"tbit: pkts[{i}] cannot be read: {exc}") from None


def tbit_from_json(d: dict[str, Any]) -> Tbit:
    ext = d.get(EXT_KEY) or {}
    if not isinstance(ext, dict):
        raise FormatError("tbit: \"marionet\" must be an object")
    if not isinstance(d.get("dst"), str) or d.get("tbit_type") not in TBIT_TYPES:
        raise FormatError("tbit: record needs a \"dst\" string and a known \"tbit_type\"")
    st = d.get("start")
    if not isinstance(st, dict) or not isinstance(st.get("sec"), int) or not isinstance(st.get("usec"), int):
        raise FormatError("tbit: start must be {\"sec\",\"usec\"}")
    start = timeval_to_ns(st["sec"], st["usec"])
    if isinstance(ext.get("start_ns"), int) and ext["start_ns"] // 1000 == start // 1000:
        start = ext["start_ns"]
    code = ext.get("result_code")
    if not isinstance(code, int):
        r = d.get("result", "none")
        code = _RESULT_BY_TEXT.get(r) if isinstance(r, str) else None
        if code is None:
            try:
                code = int(r)
            except (TypeError, ValueError):
                raise FormatError(f"tbit: unknown result {r!r}") from None
    t = Tbit(type=d["tbit_type"], dst=d["dst"], start_ns=start, src=d.get("src") or None,
             sport=int(d.get("sport", 0)), dport=int(d.get("dport", 0)), userid=int(d.get("userid", 0)),
             client_mss=int(d.get("client_mss", 0)), server_mss=int(d.get("server_mss", 0)),
             ttl=int(d.get("ttl", 0)), result=code,
             options=_unbits(d.get("options"), TBIT_OPTIONS, "option"), wscale=int(d.get("wscale", 0)),
             url=d.get("http_url"), mtu=d.get("mtu"), ptb_retx=d.get("ptb_retx"), ptbsrc=d.get("ptbsrc"),
             blind_off=d.get("blind_off"), blind_retx=d.get("blind_retx"),
             pmtud_options=_unbits(d.get("pmtud_options"), _PMTUD_OPTIONS, "pmtud option"),
             null_options=_unbits(d.get("null_options"), NULL_OPTIONS, "null option"),
             null_results=_unbits(d.get("null_results"), NULL_RESULTS, "null result"),
             icw_start_seq=int(ext.get("icw_start_seq", 1)), syn_retx=int(ext.get("syn_retx", 3)),
             dat_retx=int(ext.get("dat_retx", 3)), error=ext.get("error"), vp=ext.get("vp"),
             extra=dict(ext.get("extra") or {}))
    raw = ext.get("pkts")
    pkts = d.get("pkts") or []
    if isinstance(raw, list) and len(raw) == len(pkts):
        for i, e in enumerate(raw):
            try:
                t.pkts.append(TbitPkt(dir=pkts[i]["dir"], time_ns=int(e["time_ns"]),
                                      data=bytes.fromhex(e["data"]), ts_source=e.get("ts_source")))
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"tbit: marionet.pkts[{i}] must have hex \"data\" and \"time_ns\"") from None
    else:
        cisn, sisn = int(d.get("client_isn", 0)), int(d.get("server_isn", 0))
        for i, p in enumerate(pkts):
            if not isinstance(p, dict) or p.get("dir") not in ("tx", "rx"):
                raise FormatError(f"tbit: pkts[{i}] must be an object with dir \"tx\" or \"rx\"")
            when = start + (int(p.get("tv_sec", 0)) * 1_000_000 + int(p.get("tv_usec", 0))) * 1000
            t.pkts.append(TbitPkt(dir=p["dir"], time_ns=when, data=_rebuild_pkt(p, t, cisn, sisn, i)))
    return t


register("tbit", Tbit, tbit_to_json, tbit_from_json)


# ---------------------------------------------------------------------------
# warts (record type 0x0b), as scamper_tbit_warts.c
# ---------------------------------------------------------------------------

WARTS_TBIT = 0x0B
_STRUCT_EOF, _STRUCT_TYPE, _STRUCT_APP = 0, 1, 2
_TYPE_BY_NUM = {v: k for k, v in TBIT_TYPES.items()}


def _warts_body(t: Tbit, ctx: Any) -> bytes:
    """The record body: parameters, packets, the type's and the app's structs."""
    table = ctx.AddrTable()
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    if t.userid:
        f[3] = ctx.u32(t.userid)
    if t.src is not None:
        f[4] = table.ref(t.src)
    f[5] = table.ref(t.dst)
    f.update({6: ctx.u16(t.sport), 7: ctx.u16(t.dport), 8: ctx.timeval(t.start_ns), 9: ctx.u16(int(t.result)),
              10: ctx.u8(TBIT_TYPES[t.type]), 11: ctx.u8(1 if t.url else 0), 12: ctx.u16(t.client_mss),
              13: ctx.u16(t.server_mss), 14: ctx.u8(t.syn_retx), 15: ctx.u8(t.dat_retx),
              17: ctx.u32(len(t.pkts))})
    if t.wscale:
        f[19] = ctx.u8(t.wscale)
    if t.options:
        f[20] = ctx.u32(t.options)
    if t.ttl != 255:
        f[21] = ctx.u8(t.ttl)
    out = [ctx.params(f)]
    for p in t.pkts:
        pf = {1: ctx.u8(1 if p.dir == "tx" else 2), 2: ctx.timeval(p.time_ns), 3: ctx.u16(len(p.data))}
        if p.data:
            pf[4] = bytes(p.data)
        out.append(ctx.params(pf))
    sub: dict[int, bytes] | None = None
    if t.type == "pmtud":
        sub = {}
        if t.mtu:
            sub[1] = ctx.u16(t.mtu)
        if t.ptb_retx:
            sub[2] = ctx.u8(t.ptb_retx)
        if t.pmtud_options:
            sub[3] = ctx.u8(t.pmtud_options)
        if t.ptbsrc is not None:
            sub[4] = table.ref(t.ptbsrc)
    elif t.type == "null":
        sub = {k: ctx.u16(v) for k, v in ((1, t.null_options), (2, t.null_results)) if v}
    elif t.type == "icw":
        sub = {1: ctx.u32(t.icw_start_seq)} if t.icw_start_seq else {}
    elif t.type.startswith("blind-"):
        sub = {}
        if t.blind_off:
            sub[1] = struct.pack(">i", t.blind_off)
        if t.blind_retx:
            sub[2] = ctx.u8(t.blind_retx)
    if sub is not None:
        block = ctx.params(sub)
        out.append(ctx.u16(_STRUCT_TYPE) + ctx.u32(len(block)) + block)
    if t.url:
        parts = t.url.split("://", 1)[-1]
        host, _, path = parts.partition("/")
        block = ctx.params({1: ctx.string(host), 2: ctx.string("/" + path)})
        out.append(ctx.u16(_STRUCT_APP) + ctx.u32(len(block)) + block)
    out.append(ctx.u16(_STRUCT_EOF))
    return b"".join(out)


def _warts_decode(body: bytes, _reader: Any) -> Tbit:
    from .warts import AddrTable, Cursor, Truncated, read_params

    c = Cursor(body)
    table = AddrTable()
    v: dict[str, Any] = {}

    def put(name: str, fn: Any) -> Any:
        return lambda cur: v.__setitem__(name, fn(cur))

    def cookie(cur: Any) -> None:
        cur.take(cur.u8())

    u8, u16, u32 = Cursor.u8, Cursor.u16, Cursor.u32
    read_params(c, [put("list", u32), put("cycle", u32), put("userid", u32), put("src", table.read),
                    put("dst", table.read), put("sport", u16), put("dport", u16), put("start", Cursor.timeval_ns),
                    put("result", u16), put("type", u8), put("app", u8), put("cmss", u16), put("smss", u16),
                    put("synretx", u8), put("datretx", u8), put("pktc16", u16), put("pktc", u32), cookie,
                    put("wscale", u8), put("options", u32), put("ttl", u8)])
    if v.get("dst") is None or v.get("type") not in _TYPE_BY_NUM:
        raise Truncated("tbit record without a destination or with an unknown test type")
    pkts = []
    for _ in range(v.get("pktc") or v.get("pktc16") or 0):
        pv: dict[str, Any] = {}
        read_params(c, [lambda cur: pv.__setitem__("dir", cur.u8()),
                        lambda cur: pv.__setitem__("time", cur.timeval_ns()),
                        lambda cur: pv.__setitem__("len", cur.u16()),
                        lambda cur: pv.__setitem__("data", cur.take(pv.get("len", 0)))])
        pkts.append(TbitPkt("tx" if pv.get("dir") == 1 else "rx", pv.get("time", 0), bytes(pv.get("data", b""))))
    t = Tbit(type=_TYPE_BY_NUM[v["type"]], dst=v["dst"], start_ns=v.get("start", 0), src=v.get("src"),
             sport=v.get("sport", 0), dport=v.get("dport", 0), userid=v.get("userid", 0),
             client_mss=v.get("cmss", 0), server_mss=v.get("smss", 0), ttl=v.get("ttl", 255),
             result=v.get("result", 0), options=v.get("options", 0), wscale=v.get("wscale", 0), pkts=pkts,
             syn_retx=v.get("synretx", 0), dat_retx=v.get("datretx", 0),
             icw_start_seq=0 if v["type"] == TBIT_TYPES["icw"] else 1)
    while True:
        kind = c.u16()
        if kind == _STRUCT_EOF:
            break
        n = c.u32()
        inner = Cursor(body, c.off, c.off + n)
        c.take(n)
        sv: dict[str, Any] = {}
        if kind == _STRUCT_TYPE and t.type == "pmtud":
            read_params(inner, [put("mtu", u16), put("ptb_retx", u8), put("pmtud_options", u8),
                                put("ptbsrc", table.read)])
            t.mtu, t.ptb_retx = v.get("mtu", 0), v.get("ptb_retx", 0)
            t.pmtud_options, t.ptbsrc = v.get("pmtud_options", 0), to_addr(v.get("ptbsrc"))
        elif kind == _STRUCT_TYPE and t.type == "null":
            read_params(inner, [put("nopt", u16), put("nres", u16)])
            t.null_options, t.null_results = v.get("nopt", 0), v.get("nres", 0)
        elif kind == _STRUCT_TYPE and t.type == "icw":
            read_params(inner, [put("icw", u32)])
            t.icw_start_seq = v.get("icw", 0)
        elif kind == _STRUCT_TYPE and t.type.startswith("blind-"):
            read_params(inner, [put("boff", lambda cur: struct.unpack(">i", cur.take(4))[0]),
                                put("bretx", u8)])
            t.blind_off, t.blind_retx = v.get("boff", 0), v.get("bretx", 0)
        elif kind == _STRUCT_APP and v.get("app") == 1:
            read_params(inner, [lambda cur: sv.__setitem__("host", cur.string()),
                                lambda cur: sv.__setitem__("file", cur.string()), Cursor.u8])
            if "host" in sv:
                t.url = f"http://{sv['host']}{sv.get('file', '')}"
    return t


def _register_warts() -> None:
    from . import warts, warts_writer

    warts.register(WARTS_TBIT, _warts_decode)
    warts_writer.register(Tbit, WARTS_TBIT, _warts_body)


_register_warts()
