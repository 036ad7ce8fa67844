"""Probe packets: build and parse IPv4/IPv6, ICMP/ICMPv6, UDP and TCP.

Why hand-written ``struct`` and not scapy: a measurement builds and parses
every probe and reply in the researcher's process (remote placement) or
on the endpoint (endpoint placement); both must be cheap, and the endpoint
must stay lean.  Pre-compiled ``struct.Struct`` objects keep a parse to a
few microseconds.

Two rules the parsers keep, because they read bytes from the network:

* ``parse_packet`` never raises: garbage gives ``None``.  The lower-level
  ``parse_*`` functions raise ``PacketError`` (a ``ValueError``) only.
* Quoted packets inside ICMP errors are truncated by design (RFC 792 quotes
  the IP header plus 8 bytes; RFC 4443 as much as fits in 1280).  The quote
  parser accepts truncation and fills only what is present.

Builders take addresses as text, and compute every checksum themselves —
including the pseudo-header checksums of UDP, TCP and ICMPv6 — so a probe
is byte-exact before it leaves, whatever socket type sends it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

__all__ = [
    "PacketError", "IPPROTO_ICMP", "IPPROTO_TCP", "IPPROTO_UDP", "IPPROTO_ICMPV6",
    "TCP_FIN", "TCP_SYN", "TCP_RST", "TCP_PSH", "TCP_ACK", "TCP_URG",
    "checksum", "ipv4_header", "ipv6_header", "icmp_echo", "icmp_message", "udp_segment", "tcp_segment",
    "icmp_timestamp", "ipopt_rr", "ipopt_ts", "IPOPT_TS_TSONLY", "IPOPT_TS_TSANDADDR", "IPOPT_TS_PRESPEC",
    "IPPacket", "Icmp", "Tcp", "Udp",
    "parse_packet", "parse_ip", "parse_icmp", "parse_tcp", "parse_udp", "parse_rr", "parse_ts",
]

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

#: ICMP types that quote the offending packet (IPv4: unreach, source quench,
#: redirect, time exceeded, parameter problem; IPv6: 1..4).
ICMP4_ERRORS = frozenset({3, 4, 5, 11, 12})
ICMP6_ERRORS = frozenset({1, 2, 3, 4})

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_ICMP = struct.Struct("!BBHHH")
_UDP = struct.Struct("!HHHH")
_TCP = struct.Struct("!HHIIBBHHH")
_V6_EXT_HEADERS = frozenset({0, 43, 60})  # hop-by-hop, routing, destination options
_V6_FRAGMENT = 44


class PacketError(ValueError):
    """Bytes that are not the packet the parser was asked to read."""


# ---------------------------------------------------------------------------
# Checksums and builders
# ---------------------------------------------------------------------------


def checksum(data: bytes, initial: int = 0) -> int:
    """The Internet checksum (RFC 1071) of ``data``, optionally continuing
    from a partial sum (used for pseudo-headers)."""
    if len(data) % 2:
        data += b"\0"
    s = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _addr_bytes(addr: str) -> tuple[int, bytes]:
    try:
        return 4, socket.inet_pton(socket.AF_INET, addr)
    except OSError:
        pass
    try:
        return 6, socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        raise PacketError(f"not an IP address: {addr!r}") from None


def _pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    """Partial sum of the IPv4 or IPv6 pseudo-header (not complemented)."""
    fs, s = _addr_bytes(src)
    fd, d = _addr_bytes(dst)
    if fs != fd:
        raise PacketError(f"source {src} and destination {dst} are different families")
    if fs == 4:
        ph = s + d + struct.pack("!BBH", 0, proto, length)
    else:
        ph = s + d + struct.pack("!IxxxB", length, proto)
    return sum(struct.unpack(f"!{len(ph) // 2}H", ph))


def ipv4_header(src: str | None, dst: str, proto: int, payload_len: int, *, ttl: int = 64,
                tos: int = 0, ipid: int = 0, df: bool = False, options: bytes = b"") -> bytes:
    """An IPv4 header (20 bytes plus ``options``) with a correct checksum.

    ``src=None`` writes 0.0.0.0, which a Linux ``IP_HDRINCL`` socket replaces
    with the route's source address (and then fixes the checksum).
    ``options`` (e.g. ``ipopt_rr()``) is padded with end-of-options to a
    multiple of 4 bytes; at most 40.
    """
    if len(options) % 4:
        options += bytes(4 - len(options) % 4)
    if len(options) > 40:
        raise PacketError(f"IPv4 options of {len(options)} bytes exceed 40")
    hlen = 20 + len(options)
    total = hlen + payload_len
    if total > 0xFFFF:
        raise PacketError(f"IPv4 packet of {total} bytes exceeds 65535")
    s = socket.inet_pton(socket.AF_INET, src) if src else b"\0\0\0\0"
    d = socket.inet_pton(socket.AF_INET, dst)
    frag = 0x4000 if df else 0
    hdr = _IPV4.pack(0x40 | (hlen // 4), tos & 0xFF, total, ipid & 0xFFFF, frag, ttl & 0xFF, proto, 0,
                     s, d) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


IPOPT_RR = 7
IPOPT_TS = 68
IPOPT_TS_TSONLY, IPOPT_TS_TSANDADDR, IPOPT_TS_PRESPEC = 0, 1, 3


def ipopt_rr(slots: int = 9) -> bytes:
    """An empty record-route option with room for ``slots`` addresses (9,
    the most that fits in 40 bytes, as scamper sends it): 39 bytes, padded
    to 40 by ``ipv4_header``."""
    if not 1 <= slots <= 9:
        raise PacketError(f"record route holds 1 to 9 addresses, not {slots}")
    return struct.pack("!BBB", IPOPT_RR, 3 + 4 * slots, 4) + bytes(4 * slots)


def ipopt_ts(flag: int, prespec: list[str] | tuple[str, ...] = ()) -> bytes:
    """An IP timestamp option (RFC 791) as scamper sends it: ``tsonly``
    (flag 0, 9 timestamps: 40 bytes), ``tsandaddr`` (flag 1, 4 pairs: 36
    bytes) or prespecified (flag 3, one pair per address in ``prespec``,
    1 to 4 of them: routers stamp only when their address is next)."""
    if flag == IPOPT_TS_TSONLY:
        body = bytes(36)
    elif flag == IPOPT_TS_TSANDADDR:
        body = bytes(32)
    elif flag == IPOPT_TS_PRESPEC:
        if not 1 <= len(prespec) <= 4:
            raise PacketError(f"prespecified timestamps take 1 to 4 addresses, not {len(prespec)}")
        body = b"".join(socket.inet_pton(socket.AF_INET, a) + bytes(4) for a in prespec)
    else:
        raise PacketError(f"IP timestamp flag {flag} is not 0, 1 or 3")
    return struct.pack("!BBBB", IPOPT_TS, 4 + len(body), 5, flag) + body


def _ipv4_options(options: bytes) -> dict[int, bytes]:
    """type -> whole option (type, length, data) of a header's options."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(options):
        t = options[i]
        if t == 0:  # end of options
            break
        if t == 1:  # no-op
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        n = options[i + 1]
        out.setdefault(t, bytes(options[i:i + n]))
        i += n
    return out


def parse_rr(options: bytes) -> list[str] | None:
    """The addresses recorded in a record-route option, None if there is none."""
    opt = _ipv4_options(options).get(IPOPT_RR)
    if opt is None or len(opt) < 3:
        return None
    n = max(0, min(opt[2] - 4, len(opt) - 3)) // 4
    return [socket.inet_ntop(socket.AF_INET, opt[3 + 4 * k:7 + 4 * k]) for k in range(n)]


def parse_ts(options: bytes) -> tuple[list[int], list[str] | None] | None:
    """(timestamps, addresses or None for tsonly) filled in an IP timestamp
    option, None if the header has none."""
    opt = _ipv4_options(options).get(IPOPT_TS)
    if opt is None or len(opt) < 4:
        return None
    ptr, flag = opt[2], opt[3] & 0x0F
    used = max(0, min(ptr - 5, len(opt) - 4))
    if flag == IPOPT_TS_TSONLY:
        return [struct.unpack_from("!I", opt, 4 + 4 * k)[0] for k in range(used // 4)], None
    pairs = used // 8
    return ([struct.unpack_from("!I", opt, 8 + 8 * k)[0] for k in range(pairs)],
            [socket.inet_ntop(socket.AF_INET, opt[4 + 8 * k:8 + 8 * k]) for k in range(pairs)])


def ipv6_header(src: str, dst: str, nxt: int, payload_len: int, *, hlim: int = 64,
                tclass: int = 0, flow: int = 0) -> bytes:
    """A 40-byte IPv6 header (the kernel writes it for raw IPv6 sockets;
    this is for quotes, tests and packet sockets)."""
    vtf = (6 << 28) | ((tclass & 0xFF) << 20) | (flow & 0xFFFFF)
    return _IPV6.pack(vtf, payload_len & 0xFFFF, nxt & 0xFF, hlim & 0xFF,
                      socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))


def icmp_echo(ident: int, seq: int, payload: bytes = b"", *, src: str | None = None,
              dst: str | None = None, v6: bool = False) -> bytes:
    """An ICMP (or ICMPv6, ``v6=True``) echo request.

    ICMPv6's checksum covers a pseudo-header, so it needs ``src`` and
    ``dst``; without them it is left 0 (a raw ICMPv6 socket fills it in).
    """
    return icmp_message(128 if v6 else 8, 0, ((ident & 0xFFFF) << 16) | (seq & 0xFFFF), payload,
                        src=src, dst=dst, v6=v6)


def icmp_message(typ: int, code: int, word: int = 0, body: bytes = b"", *, src: str | None = None,
                 dst: str | None = None, v6: bool = False) -> bytes:
    """Any ICMP/ICMPv6 message: type, code, the 32-bit rest-of-header word
    (id/seq for echo, unused or MTU for errors) and the body (for an error,
    the quoted packet). Checksum as in ``icmp_echo``."""
    body = struct.pack("!BBHI", typ & 0xFF, code & 0xFF, 0, word & 0xFFFFFFFF) + body
    if v6:
        if src is None or dst is None:
            return body
        csum = checksum(body, _pseudo_sum(src, dst, IPPROTO_ICMPV6, len(body)))
    else:
        csum = checksum(body)
    return body[:2] + struct.pack("!H", csum) + body[4:]


def icmp_timestamp(ident: int, seq: int, originate: int, payload: bytes = b"") -> bytes:
    """An ICMP timestamp request (type 13): originate (ms since midnight
    UTC), receive and transmit (0), then ``payload``."""
    return icmp_message(13, 0, ((ident & 0xFFFF) << 16) | (seq & 0xFFFF),
                        struct.pack("!III", originate & 0xFFFFFFFF, 0, 0) + payload)


def udp_segment(src: str, dst: str, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header plus payload, checksummed over the pseudo-header."""
    length = 8 + len(payload)
    seg = _UDP.pack(sport, dport, length, 0) + payload
    csum = checksum(seg, _pseudo_sum(src, dst, IPPROTO_UDP, length))
    if csum == 0:
        csum = 0xFFFF  # 0 means "no checksum" in UDP
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def tcp_segment(src: str, dst: str, sport: int, dport: int, *, seq: int = 0, ack: int = 0,
                flags: int = TCP_SYN, window: int = 65535, payload: bytes = b"") -> bytes:
    """A 20-byte TCP header (no options) plus payload, checksummed."""
    seg = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags & 0xFF,
                    window & 0xFFFF, 0, 0) + payload
    csum = checksum(seg, _pseudo_sum(src, dst, IPPROTO_TCP, len(seg)))
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


# ---------------------------------------------------------------------------
# Parsed forms
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Icmp:
    """An ICMP/ICMPv6 message. ``ident``/``seq`` for echo messages; ``quote``
    is the offending packet of an error message, parsed leniently."""

    type: int
    code: int
    checksum: int
    ident: int | None = None
    seq: int | None = None
    quote: "IPPacket | None" = None
    data: bytes = b""


@dataclass(slots=True)
class Tcp:
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""


@dataclass(slots=True)
class Udp:
    sport: int
    dport: int
    length: int
    checksum: int
    payload: bytes = b""


@dataclass(slots=True)
class IPPacket:
    """An IPv4 or IPv6 packet; ``size`` is the length the header claims
    (total length, or payload length + 40), ``truncated`` says whether the
    bytes held less than that (normal for quotes)."""

    version: int
    src: str
    dst: str
    ttl: int
    tos: int
    proto: int
    size: int
    ipid: int | None = None
    flow: int | None = None
    payload: bytes = b""
    truncated: bool = False
    transport: Icmp | Tcp | Udp | None = field(default=None)
    options: bytes = b""  #: IPv4 header options (bytes 20..IHL), as received

    @property
    def icmp(self) -> Icmp | None:
        return self.transport if isinstance(self.transport, Icmp) else None

    @property
    def tcp(self) -> Tcp | None:
        return self.transport if isinstance(self.transport, Tcp) else None

    @property
    def udp(self) -> Udp | None:
        return self.transport if isinstance(self.transport, Udp) else None


# ---------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------


def parse_icmp(data: bytes, v6: bool = False, *, quote_ok: bool = True) -> Icmp:
    """An ICMP message; errors get their quoted packet parsed (once — a
    quote inside a quote is not followed)."""
    if len(data) < 8:
        raise PacketError(f"ICMP message of {len(data)} bytes is shorter than 8")
    typ, code, csum, a, b = _ICMP.unpack_from(data)
    msg = Icmp(typ, code, csum, data=bytes(data[8:]))
    echo = (128, 129) if v6 else (0, 8, 13, 14)
    errors = ICMP6_ERRORS if v6 else ICMP4_ERRORS
    if typ in echo:
        msg.ident, msg.seq = a, b
    elif typ in errors and quote_ok and len(data) > 8:
        try:
            msg.quote = parse_ip(data[8:], truncated_ok=True, quoted=True)
        except PacketError:
            pass  # an unreadable quote leaves a readable error message
    return msg


def parse_tcp(data: bytes) -> Tcp:
    """A TCP header; the payload is whatever follows the data offset."""
    if len(data) < 8:
        raise PacketError(f"TCP segment of {len(data)} bytes is shorter than 8")
    if len(data) < 20:
        # Quotes in ICMPv4 errors may hold only the first 8 bytes.
        sport, dport, seq = struct.unpack_from("!HHI", data)
        return Tcp(sport, dport, seq, 0, 0, 0)
    sport, dport, seq, ack, off, flags, window, _csum, _urg = _TCP.unpack_from(data)
    hlen = (off >> 4) * 4
    return Tcp(sport, dport, seq, ack, flags, window, bytes(data[hlen:]) if hlen >= 20 else b"")


def parse_udp(data: bytes) -> Udp:
    if len(data) < 8:
        raise PacketError(f"UDP datagram of {len(data)} bytes is shorter than 8")
    sport, dport, length, csum = _UDP.unpack_from(data)
    return Udp(sport, dport, length, csum, bytes(data[8:]))


def _transport(proto: int, payload: bytes, v6: bool, quoted: bool) -> Icmp | Tcp | Udp | None:
    try:
        if proto == (IPPROTO_ICMPV6 if v6 else IPPROTO_ICMP):
            return parse_icmp(payload, v6, quote_ok=not quoted)
        if proto == IPPROTO_TCP:
            return parse_tcp(payload)
        if proto == IPPROTO_UDP:
            return parse_udp(payload)
    except PacketError:
        if not quoted:
            raise
    return None


def _parse_v4(data: bytes, truncated_ok: bool, quoted: bool) -> IPPacket:
    if len(data) < 20:
        raise PacketError(f"IPv4 packet of {len(data)} bytes is shorter than 20")
    vhl, tos, total, ipid, _frag, ttl, proto, _csum, s, d = _IPV4.unpack_from(data)
    ihl = (vhl & 0x0F) * 4
    if ihl < 20:
        raise PacketError(f"IPv4 header length {ihl} is below 20")
    if len(data) < ihl:
        raise PacketError(f"IPv4 header of {ihl} bytes but only {len(data)} present")
    if total < ihl:
        raise PacketError(f"IPv4 total length {total} is below the header length {ihl}")
    truncated = len(data) < total
    if truncated and not truncated_ok:
        raise PacketError(f"IPv4 packet claims {total} bytes but only {len(data)} present")
    payload = bytes(data[ihl:min(total, len(data))])
    pkt = IPPacket(4, socket.inet_ntop(socket.AF_INET, s), socket.inet_ntop(socket.AF_INET, d),
                   ttl, tos, proto, total, ipid=ipid, payload=payload, truncated=truncated,
                   options=bytes(data[20:ihl]))
    if _frag & 0x1FFF == 0:  # only a first fragment carries the transport header
        pkt.transport = _transport(proto, payload, False, quoted)
    return pkt


def _parse_v6(data: bytes, truncated_ok: bool, quoted: bool) -> IPPacket:
    if len(data) < 40:
        raise PacketError(f"IPv6 packet of {len(data)} bytes is shorter than 40")
    vtf, plen, nxt, hlim, s, d = _IPV6.unpack_from(data)
    total = 40 + plen
    truncated = len(data) < total
    if truncated and not truncated_ok:
        raise PacketError(f"IPv6 packet claims {total} bytes but only {len(data)} present")
    end = min(total, len(data))
    off = 40
    first_fragment = True
    # Walk extension headers to the upper-layer protocol.
    for _ in range(8):
        if nxt in _V6_EXT_HEADERS:
            if off + 2 > end:
                break
            nxt, hlen = data[off], (data[off + 1] + 1) * 8
            off += hlen
        elif nxt == _V6_FRAGMENT:
            if off + 8 > end:
                break
            first_fragment = struct.unpack_from("!H", data, off + 2)[0] & 0xFFF8 == 0
            nxt = data[off]
            off += 8
        else:
            break
    payload = bytes(data[off:end]) if off <= end else b""
    pkt = IPPacket(6, socket.inet_ntop(socket.AF_INET6, s), socket.inet_ntop(socket.AF_INET6, d),
                   hlim, (vtf >> 20) & 0xFF, nxt, total, flow=vtf & 0xFFFFF, payload=payload,
                   truncated=truncated)
    if first_fragment:
        pkt.transport = _transport(nxt, payload, True, quoted)
    return pkt


def parse_ip(data: bytes, *, truncated_ok: bool = False, quoted: bool = False) -> IPPacket:
    """An IPv4 or IPv6 packet (by its version nibble), transport parsed.

    Raises ``PacketError`` for anything malformed; a quoted packet
    (``quoted=True``) tolerates a transport header it cannot read.
    """
    if not data:
        raise PacketError("empty packet")
    version = data[0] >> 4
    if version == 4:
        return _parse_v4(data, truncated_ok, quoted)
    if version == 6:
        return _parse_v6(data, truncated_ok, quoted)
    raise PacketError(f"IP version {version} is neither 4 nor 6")


def parse_packet(data: bytes) -> IPPacket | None:
    """A captured packet, or ``None`` if it is malformed. Never raises."""
    try:
        return parse_ip(data, truncated_ok=True)
    except (PacketError, struct.error, IndexError, ValueError):
        return None
