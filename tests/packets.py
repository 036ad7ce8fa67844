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
