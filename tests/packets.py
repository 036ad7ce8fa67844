"""Tiny packet builders for tests (hand-written struct, no scapy)."""

from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def icmp_echo(ident: int, seq: int, payload: bytes = b"marionet") -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, seq) + payload


def icmp6_echo(ident: int, seq: int, payload: bytes = b"marionet") -> bytes:
    """ICMPv6 echo request; the kernel fills the checksum on raw ICMPv6 sockets."""
    return struct.pack("!BBHHH", 128, 0, 0, ident, seq) + payload


def drain_echo_replies(sock) -> list[tuple[str, int, int, int]]:  # noqa: ANN001 - a raw ICMP socket
    """Every ICMP echo reply queued on a non-blocking raw IPv4 ICMP socket,
    as (peer, ident, seq, IP-ID); other ICMP messages are skipped."""
    out = []
    while True:
        try:
            pkt, (peer, _) = sock.recvfrom(2048)
        except BlockingIOError:
            return out
        ihl = (pkt[0] & 0x0F) * 4
        if len(pkt) >= ihl + 8 and pkt[ihl] == 0:
            ident, seq = struct.unpack_from("!HH", pkt, ihl + 4)
            out.append((peer, ident, seq, struct.unpack_from("!H", pkt, 4)[0]))
