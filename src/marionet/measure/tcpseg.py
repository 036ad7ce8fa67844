"""TCP segments with options inside IPv4/IPv6 packets: build and parse (sans-I/O).

``probes.tcp_segment`` builds option-less probes (ping, trace); tbit holds a
whole conversation, so it needs what a TCP puts on the wire: MSS, window
scale, SACK-permitted and SACK blocks, timestamps, the ECN bits of both the
IP header (ECT/CE) and the TCP header (ECE/CWR), and the DF bit. Options are
laid out as scamper's ``scamper_tcp4_build`` does (MSS, wscale, SACK-ok,
timestamps, SACK blocks; NOP-padded to 32-bit words), so our SYN looks like
scamper's.

``parse_segment`` never raises: a packet that is not an IPv4 or IPv6 TCP
segment (or is a later fragment) gives ``None``; a malformed option list gives ``bad_options``
(scamper's ``tcp-badopt`` case) rather than an exception.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from marionet.measure import probes as P

__all__ = ["TH_FIN", "TH_SYN", "TH_RST", "TH_PSH", "TH_ACK", "TH_URG", "TH_ECE", "TH_CWR",
           "ECN_NOT_ECT", "ECN_ECT1", "ECN_ECT0", "ECN_CE", "tcp_options", "tcp_segment",
           "ipv4_tcp", "ip_tcp", "icmp_frag_needed", "Segment", "parse_segment", "seq_diff"]

TH_FIN, TH_SYN, TH_RST, TH_PSH, TH_ACK, TH_URG, TH_ECE, TH_CWR = (1 << i for i in range(8))
ECN_NOT_ECT, ECN_ECT1, ECN_ECT0, ECN_CE = 0, 1, 2, 3

_TCP = struct.Struct("!HHIIBBHHH")
_OPT_EOL, _OPT_NOP, _OPT_MSS, _OPT_WSCALE, _OPT_SACKOK, _OPT_SACK, _OPT_TS = 0, 1, 2, 3, 4, 5, 8
MAX_SACK_BLOCKS = 4  # 2 + 8 × 4 = 34 bytes, the most a 40-byte option space holds with NOPs


def seq_diff(a: int, b: int) -> int:
    """``a - b`` in 32-bit sequence space, as a signed offset (RFC 1982 style)."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


def tcp_options(*, mss: int | None = None, wscale: int | None = None, sack_ok: bool = False,
                ts: tuple[int, int] | None = None,
                sack: tuple[tuple[int, int], ...] = ()) -> bytes:
    """The option bytes, NOP-aligned, at most 40 (``ValueError`` beyond)."""
    out = b""
    if mss is not None:
        out += struct.pack("!BBH", _OPT_MSS, 4, mss & 0xFFFF)
    if wscale is not None:
        out += struct.pack("!BBBB", _OPT_NOP, _OPT_WSCALE, 3, wscale & 0xFF)
    if sack_ok:
        out += struct.pack("!BBBB", _OPT_NOP, _OPT_NOP, _OPT_SACKOK, 2)
    if ts is not None:
        out += struct.pack("!BBBBII", _OPT_NOP, _OPT_NOP, _OPT_TS, 10, ts[0] & 0xFFFFFFFF, ts[1] & 0xFFFFFFFF)
    if sack:
        if len(sack) > MAX_SACK_BLOCKS:
            raise ValueError(f"at most {MAX_SACK_BLOCKS} SACK blocks fit, got {len(sack)}")
        out += struct.pack("!BBBB", _OPT_NOP, _OPT_NOP, _OPT_SACK, 2 + 8 * len(sack))
        for left, right in sack:
            out += struct.pack("!II", left & 0xFFFFFFFF, right & 0xFFFFFFFF)
    if len(out) > 40:
        raise ValueError(f"TCP options of {len(out)} bytes exceed the 40-byte option space")
    return out


def tcp_segment(src: str, dst: str, sport: int, dport: int, *, seq: int, ack: int = 0,
                flags: int, window: int = 65535, options: bytes = b"", payload: bytes = b"") -> bytes:
    """A TCP header with ``options`` (already aligned) plus payload, checksummed."""
    if len(options) % 4:
        raise ValueError("TCP options must be a multiple of 4 bytes")
    off = (20 + len(options)) // 4
    seg = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags & 0xFF,
                    window & 0xFFFF, 0, 0) + options + payload
    if ":" in src:
        ph = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + \
            struct.pack("!IxxxB", len(seg), P.IPPROTO_TCP)
    else:
        ph = socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst) + \
            struct.pack("!BBH", 0, P.IPPROTO_TCP, len(seg))
    csum = P.checksum(seg, sum(struct.unpack(f"!{len(ph) // 2}H", ph)))
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def ipv4_tcp(src: str, dst: str, segment: bytes, *, ttl: int = 64, tos: int = 0, ipid: int = 0,
             df: bool = True) -> bytes:
    """``segment`` in an IPv4 header (DF set by default, as scamper's tbit does)."""
    return P.ipv4_header(src, dst, P.IPPROTO_TCP, len(segment), ttl=ttl, tos=tos, ipid=ipid, df=df) + segment


def ip_tcp(src: str, dst: str, segment: bytes, *, ttl: int = 64, tos: int = 0, ipid: int = 0,
           df: bool = True) -> bytes:
    """``segment`` in an IPv4 or IPv6 header (by the address family); for
    IPv6 ``ttl`` is the hop limit and ``tos`` the traffic class."""
    if ":" in src:
        return P.ipv6_header(src, dst, P.IPPROTO_TCP, len(segment), hlim=ttl, tclass=tos) + segment
    return ipv4_tcp(src, dst, segment, ttl=ttl, tos=tos, ipid=ipid, df=df)


def icmp_frag_needed(src: str, dst: str, mtu: int, quote: bytes, *, ipid: int = 0, ttl: int = 64) -> bytes:
    """An IPv4 ICMP "fragmentation needed" (type 3 code 4, RFC 1191) from
    ``src`` to ``dst`` advertising ``mtu`` and quoting ``quote`` (the IP
    header and first 8 bytes of the packet that was too big)."""
    body = P.icmp_message(3, 4, mtu & 0xFFFF, quote)
    return P.ipv4_header(src, dst, P.IPPROTO_ICMP, len(body), ttl=ttl, ipid=ipid) + body


@dataclass(frozen=True, slots=True)
class Segment:
    """A parsed IPv4 TCP segment: what tbit's inference looks at."""

    src: str
    dst: str
    ttl: int
    ecn: int  # the IP header's ECN field (0 not-ECT, 1 ECT(1), 2 ECT(0), 3 CE)
    ipid: int  # IPv4's IP-ID (0 for IPv6)
    df: bool  # IPv4's DF bit (IPv6 packets are never fragmented on the way: True)
    size: int  # IP total length (IPv6: payload length + 40)
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    hlen: int  # TCP header length
    payload: bytes
    datalen: int  # from the IP length: right even if the capture was cut short
    mss: int | None = None
    wscale: int | None = None
    sack_ok: bool = False
    ts: tuple[int, int] | None = None
    sack: tuple[tuple[int, int], ...] = ()
    bad_options: bool = False

    def has(self, flags: int) -> bool:
        return self.flags & flags == flags


def _parse_options(raw: bytes) -> dict:
    """Options as a dict of Segment fields; ``bad_options`` on a bad length."""
    out: dict = {}
    sack: list[tuple[int, int]] = []
    i = 0
    while i < len(raw):
        kind = raw[i]
        if kind == _OPT_EOL:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= len(raw) or raw[i + 1] < 2 or i + raw[i + 1] > len(raw):
            out["bad_options"] = True
            break
        ln = raw[i + 1]
        body = raw[i + 2:i + ln]
        if kind == _OPT_MSS and ln == 4:
            out["mss"] = struct.unpack("!H", body)[0]
        elif kind == _OPT_WSCALE and ln == 3:
            out["wscale"] = body[0]
        elif kind == _OPT_SACKOK and ln == 2:
            out["sack_ok"] = True
        elif kind == _OPT_TS and ln == 10:
            out["ts"] = struct.unpack("!II", body)
        elif kind == _OPT_SACK:
            if (ln - 2) % 8 or ln == 2:
                out["bad_options"] = True
            else:
                sack.extend(struct.unpack_from("!II", body, k) for k in range(0, ln - 2, 8))
        i += ln
    if sack:
        out["sack"] = tuple(sack)
    return out


def _v6_transport(data: bytes) -> tuple[int, int] | None:
    """(upper-layer protocol, its offset) past IPv6 extension headers; None
    for a later fragment."""
    nxt, off = data[6], 40
    for _ in range(8):
        if nxt in (0, 43, 60):
            nxt, off = data[off], off + (data[off + 1] + 1) * 8
        elif nxt == 44:
            if struct.unpack_from("!H", data, off + 2)[0] & 0xFFF8:
                return None
            nxt, off = data[off], off + 8
        else:
            break
    return nxt, off


def parse_segment(data: bytes) -> Segment | None:
    """An IPv4 or IPv6 TCP segment (not a later fragment), or None. Never raises."""
    try:
        if len(data) < 40:
            return None
        if data[0] >> 4 == 6:
            tr = _v6_transport(data)
            if tr is None or tr[0] != P.IPPROTO_TCP:
                return None
            ihl, total = tr[1], 40 + struct.unpack_from("!H", data, 4)[0]
            src = socket.inet_ntop(socket.AF_INET6, data[8:24])
            dst = socket.inet_ntop(socket.AF_INET6, data[24:40])
            ttl, ecn, ipid, df = data[7], (data[1] >> 4) & 3, 0, True
        elif data[0] >> 4 == 4:
            ihl = (data[0] & 0x0F) * 4
            total = struct.unpack_from("!H", data, 2)[0]
            frag = struct.unpack_from("!H", data, 6)[0]
            if data[9] != P.IPPROTO_TCP or ihl < 20 or frag & 0x3FFF:
                return None  # not TCP, or a fragment (offset or MF)
            src = socket.inet_ntop(socket.AF_INET, data[12:16])
            dst = socket.inet_ntop(socket.AF_INET, data[16:20])
            ttl, ecn, ipid, df = data[8], data[1] & 3, struct.unpack_from("!H", data, 4)[0], bool(frag & 0x4000)
        else:
            return None
        if total < ihl + 20:
            return None
        end = min(total, len(data))
        sport, dport, seq, ack, off, flags, window, _c, _u = _TCP.unpack_from(data, ihl)
        hlen = (off >> 4) * 4
        if hlen < 20 or ihl + hlen > end:
            return None
        opts = _parse_options(bytes(data[ihl + 20:ihl + hlen]))
        return Segment(src=src, dst=dst, ttl=ttl, ecn=ecn, ipid=ipid, df=df, size=total, sport=sport,
                       dport=dport, seq=seq, ack=ack, flags=flags, window=window, hlen=hlen,
                       payload=bytes(data[ihl + hlen:end]), datalen=total - ihl - hlen, **opts)
    except (struct.error, IndexError, ValueError, OSError):
        return None
