"""IP packets on the wrap's TUN device: parse what the program sends, build replies.

Sans-I/O on purpose: the UDP relay reads whole IPv4/IPv6 packets from the
TUN and writes whole packets back, and every byte of that can be checked
in unit tests without a namespace. Only what the relay needs is here:
UDP datagrams (both ways) and ICMP errors (the refusal the program sees for
what the wrap does not carry). Checksums are computed, never left zero:
the program's kernel verifies them.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = ["Packet", "parse_packet", "build_udp", "build_icmp_error", "checksum",
           "PROTO_ICMP", "PROTO_TCP", "PROTO_UDP", "PROTO_ICMPV6"]

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
#: IPv6 extension headers the parser walks over (hop-by-hop, routing, destination options).
_V6_EXT = (0, 43, 60)
_V6_FRAGMENT = 44


@dataclass(frozen=True)
class Packet:
    """One IP packet from the program: addresses, transport and its payload.

    ``sport``/``dport`` are set for UDP and TCP; ``icmp_type``/``icmp_code``
    for ICMP(v6); ``fragment`` is True for any fragment (not relayed).
    """

    family: int
    src: str
    dst: str
    proto: int
    ttl: int
    payload: bytes  # the transport payload (UDP data; the ICMP message body after type/code/csum)
    raw: bytes  # the whole packet, for quoting in ICMP errors
    sport: int | None = None
    dport: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    fragment: bool = False


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _addr_bytes(family: int, addr: str) -> bytes:
    return socket.inet_pton(socket.AF_INET if family == 4 else socket.AF_INET6, addr)


def _pseudo(family: int, src: str, dst: str, proto: int, length: int) -> bytes:
    s, d = _addr_bytes(family, src), _addr_bytes(family, dst)
    if family == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def parse_packet(data: bytes) -> Packet:
    """Parse one IPv4 or IPv6 packet; ValueError if it is not one."""
    if not data:
        raise ValueError("empty packet")
    version = data[0] >> 4
    if version == 4:
        if len(data) < 20:
            raise ValueError(f"IPv4 packet of {len(data)} bytes is shorter than its header")
        ihl = (data[0] & 0xF) * 4
        total = struct.unpack("!H", data[2:4])[0]
        if ihl < 20 or total < ihl or len(data) < total:
            raise ValueError(f"IPv4 header length {ihl} / total length {total} do not fit {len(data)} bytes")
        frag = struct.unpack("!H", data[6:8])[0]
        fragment = bool(frag & 0x2000) or (frag & 0x1FFF) != 0
        proto, ttl = data[9], data[8]
        src, dst = socket.inet_ntop(socket.AF_INET, data[12:16]), socket.inet_ntop(socket.AF_INET, data[16:20])
        body = data[ihl:total]
        return _transport(4, src, dst, proto, ttl, body, data[:total], fragment)
    if version == 6:
        if len(data) < 40:
            raise ValueError(f"IPv6 packet of {len(data)} bytes is shorter than its header")
        plen = struct.unpack("!H", data[4:6])[0]
        if len(data) < 40 + plen:
            raise ValueError(f"IPv6 payload length {plen} exceeds the {len(data) - 40} bytes there")
        nxt, hlim = data[6], data[7]
        src, dst = socket.inet_ntop(socket.AF_INET6, data[8:24]), socket.inet_ntop(socket.AF_INET6, data[24:40])
        body = data[40:40 + plen]
        fragment = False
        while nxt in _V6_EXT or nxt == _V6_FRAGMENT:
            if len(body) < 8:
                raise ValueError("truncated IPv6 extension header")
            if nxt == _V6_FRAGMENT:
                fragment, hlen = True, 8
            else:
                hlen = (body[1] + 1) * 8
            nxt, body = body[0], body[hlen:]
        return _transport(6, src, dst, nxt, hlim, body, data[:40 + plen], fragment)
    raise ValueError(f"not an IP packet (version {version})")


def _transport(family: int, src: str, dst: str, proto: int, ttl: int, body: bytes, raw: bytes,
               fragment: bool) -> Packet:
    if fragment:
        return Packet(family, src, dst, proto, ttl, b"", raw, fragment=True)
    if proto in (PROTO_UDP, PROTO_TCP):
        if len(body) < (8 if proto == PROTO_UDP else 20):
            raise ValueError(f"truncated {'UDP' if proto == PROTO_UDP else 'TCP'} header")
        sport, dport = struct.unpack("!HH", body[:4])
        if proto == PROTO_UDP:
            ulen = struct.unpack("!H", body[4:6])[0]
            if ulen < 8 or ulen > len(body):
                raise ValueError(f"UDP length {ulen} does not fit {len(body)} bytes")
            return Packet(family, src, dst, proto, ttl, body[8:ulen], raw, sport, dport)
        return Packet(family, src, dst, proto, ttl, body[(body[12] >> 4) * 4:], raw, sport, dport)
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if len(body) < 4:
            raise ValueError("truncated ICMP header")
        return Packet(family, src, dst, proto, ttl, body[4:], raw, icmp_type=body[0], icmp_code=body[1])
    return Packet(family, src, dst, proto, ttl, body, raw)


def _ip_header(family: int, src: str, dst: str, proto: int, payload_len: int, ttl: int = 64) -> bytes:
    if family == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, ttl, proto, 0,
                          _addr_bytes(4, src), _addr_bytes(4, dst))
        return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len, proto, ttl, _addr_bytes(6, src), _addr_bytes(6, dst))


def build_udp(family: int, src: str, sport: int, dst: str, dport: int, data: bytes, ttl: int = 64) -> bytes:
    """A whole IPv4/IPv6 UDP packet carrying ``data``, checksums filled in."""
    for name, port in (("sport", sport), ("dport", dport)):
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"{name} {port} is not a port number")
    length = 8 + len(data)
    if length > 0xFFFF:
        raise ValueError(f"a UDP datagram of {len(data)} bytes does not fit in 65,535")
    if family not in (4, 6):
        raise ValueError(f"family must be 4 or 6, not {family!r}")
    head = struct.pack("!HHHH", sport, dport, length, 0)
    csum = checksum(_pseudo(family, src, dst, PROTO_UDP, length) + head + data) or 0xFFFF
    udp = head[:6] + struct.pack("!H", csum) + data
    return _ip_header(family, src, dst, PROTO_UDP, len(udp), ttl) + udp


def build_icmp_error(original: Packet, src: str, kind: str) -> bytes:
    """An ICMP(v6) error from ``src`` about ``original``, as a router would send.

    ``kind``: "prohibited" (administratively prohibited: what the wrap and
    the guard refuse) or "port" (port unreachable: nobody answers there).
    """
    family = original.family
    if family == 4:
        icmp_type, code = 3, {"prohibited": 13, "port": 3}[kind]
        quote = original.raw[:576 - 20 - 8]
        proto = PROTO_ICMP
    else:
        icmp_type, code = 1, {"prohibited": 1, "port": 4}[kind]
        quote = original.raw[:1280 - 40 - 8]
        proto = PROTO_ICMPV6
    msg = struct.pack("!BBHI", icmp_type, code, 0, 0) + quote
    pseudo = _pseudo(6, src, original.src, PROTO_ICMPV6, len(msg)) if family == 6 else b""
    csum = checksum(pseudo + msg)
    msg = msg[:2] + struct.pack("!H", csum) + msg[4:]
    return _ip_header(family, src, original.src, proto, len(msg)) + msg


def same_address(a: str, b: str) -> bool:
    """``a`` and ``b`` name the same IP address (textual forms differ for IPv6)."""
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


# ------------------------------------------------------------------- ICMP echo

#: ICMP types: echo request / reply, and the errors that quote a probe (unreachable, time exceeded).
ECHO_REQUEST = {4: 8, 6: 128}
ECHO_REPLY = {4: 0, 6: 129}
ICMP_ERRORS = {4: (3, 11, 12), 6: (1, 3, 4)}


def icmp_message(pkt: Packet) -> bytes:
    """The ICMP(v6) message of ``pkt`` (header and body), as a raw socket sends it:
    IPv4's checksum filled in (it covers the message only; the kernel leaves it
    to us), IPv6's zero (the kernel computes it with the VP's address)."""
    if pkt.proto not in (PROTO_ICMP, PROTO_ICMPV6) or pkt.icmp_type is None:
        raise ValueError("not an ICMP packet")
    msg = bytes([pkt.icmp_type, pkt.icmp_code or 0]) + b"\0\0" + pkt.payload
    if pkt.family == 4:
        msg = msg[:2] + struct.pack("!H", checksum(msg)) + msg[4:]
    return msg


def echo_key(message: bytes) -> tuple[int, int]:
    """(identifier, sequence) of an echo request/reply message."""
    if len(message) < 8:
        raise ValueError("an echo message has at least 8 bytes")
    return struct.unpack("!HH", message[4:8])  # type: ignore[return-value]


def strip_ip(data: bytes, family: int) -> tuple[bytes, int | None, str | None]:
    """What a raw ICMP socket delivers, without its IP header (IPv4 raw sockets
    include it, IPv6 ones do not): (ICMP message, TTL or None, source or None).

    An ICMP message's first byte is its type (0, 3, 11, 129, 1, 3 …), never a
    byte whose high nibble is the IP version, so the two cannot be confused.
    """
    if data and data[0] >> 4 == 4 and family == 4 and len(data) >= 20:
        ihl = (data[0] & 0xF) * 4
        return data[ihl:], data[8], socket.inet_ntop(socket.AF_INET, data[12:16])
    if data and data[0] >> 4 == 6 and family == 6 and len(data) >= 40:
        return data[40:], data[7], socket.inet_ntop(socket.AF_INET6, data[8:24])
    return data, None, None


def quoted_echo(message: bytes, family: int) -> tuple[str, int, int, int] | None:
    """For an ICMP error quoting one of our echo requests: (quoted destination,
    id, seq, bytes of the quote); None when it quotes something else."""
    inner = message[8:]
    if family == 4:
        if len(inner) < 28 or inner[0] >> 4 != 4 or inner[9] != PROTO_ICMP:
            return None
        ihl = (inner[0] & 0xF) * 4
        if len(inner) < ihl + 8 or inner[ihl] != ECHO_REQUEST[4]:
            return None
        ident, seq = struct.unpack("!HH", inner[ihl + 4:ihl + 8])
        return socket.inet_ntop(socket.AF_INET, inner[16:20]), ident, seq, len(inner)
    if len(inner) < 48 or inner[0] >> 4 != 6 or inner[6] != PROTO_ICMPV6 or inner[40] != ECHO_REQUEST[6]:
        return None
    ident, seq = struct.unpack("!HH", inner[44:48])
    return socket.inet_ntop(socket.AF_INET6, inner[24:40]), ident, seq, len(inner)


def build_icmp(family: int, src: str, dst: str, message: bytes, ttl: int = 64) -> bytes:
    """A whole IP packet carrying ICMP(v6) ``message``, its checksum recomputed
    (ICMPv6's covers the addresses, which differ between the VP and the program)."""
    if len(message) < 4:
        raise ValueError("an ICMP message has at least 4 bytes")
    proto = PROTO_ICMP if family == 4 else PROTO_ICMPV6
    body = message[:2] + b"\0\0" + message[4:]
    pseudo = _pseudo(6, src, dst, PROTO_ICMPV6, len(body)) if family == 6 else b""
    body = body[:2] + struct.pack("!H", checksum(pseudo + body)) + body[4:]
    return _ip_header(family, src, dst, proto, len(body), ttl) + body
