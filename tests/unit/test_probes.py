"""Probe builders and parsers: byte-exact headers, checksums that verify,
quotes that parse when truncated, and a kernel that accepts our packets."""

from __future__ import annotations

import socket
import struct

import pytest

from marionet.measure import probes as P


def _verifies(seg: bytes, src: str, dst: str, proto: int) -> bool:
    """A pseudo-header checksum over a segment including its checksum is 0."""
    return P.checksum(seg, P._pseudo_sum(src, dst, proto, len(seg))) == 0


def test_checksum_known_value():
    # RFC 1071's example words
    assert P.checksum(bytes.fromhex("0001f203f4f5f6f7")) == (~0xDDF2) & 0xFFFF
    assert P.checksum(b"") == 0xFFFF
    assert P.checksum(b"\x01") == (~0x0100) & 0xFFFF  # odd length pads with zero


def test_ipv4_header_fields_and_checksum():
    h = P.ipv4_header("192.0.2.1", "198.51.100.7", P.IPPROTO_UDP, 12, ttl=9, tos=0x20, ipid=0x1234, df=True)
    assert len(h) == 20 and P.checksum(h) == 0
    pkt = P.parse_ip(h + bytes(12))
    assert (pkt.version, pkt.src, pkt.dst, pkt.ttl, pkt.tos, pkt.ipid, pkt.size, pkt.proto) == \
        (4, "192.0.2.1", "198.51.100.7", 9, 0x20, 0x1234, 32, P.IPPROTO_UDP)
    assert struct.unpack_from("!H", h, 6)[0] == 0x4000
    with pytest.raises(P.PacketError):
        P.ipv4_header(None, "192.0.2.1", 1, 65516)


def test_icmp_echo_v4_and_v6_checksums():
    e = P.icmp_echo(0xBEEF, 7, b"abc")
    assert P.checksum(e) == 0
    icmp = P.parse_icmp(e)
    assert (icmp.type, icmp.ident, icmp.seq, icmp.data) == (8, 0xBEEF, 7, b"abc")
    e6 = P.icmp_echo(1, 2, b"xy", src="2001:db8::1", dst="2001:db8::2", v6=True)
    assert _verifies(e6, "2001:db8::1", "2001:db8::2", P.IPPROTO_ICMPV6)
    assert P.icmp_echo(1, 2, b"xy", v6=True)[2:4] == b"\0\0"  # left for the kernel


def test_udp_and_tcp_checksums_v4_v6():
    for src, dst in (("10.0.0.1", "10.0.0.2"), ("2001:db8::1", "2001:db8::2")):
        u = P.udp_segment(src, dst, 40000, 33435, b"hello")
        assert _verifies(u, src, dst, P.IPPROTO_UDP)
        assert P.parse_udp(u) == P.Udp(40000, 33435, 13, struct.unpack_from("!H", u, 6)[0], b"hello")
        t = P.tcp_segment(src, dst, 40000, 80, seq=0xFFFFFFFF, ack=5, flags=P.TCP_SYN | P.TCP_ACK)
        assert _verifies(t, src, dst, P.IPPROTO_TCP)
        tcp = P.parse_tcp(t)
        assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.window) == \
            (40000, 80, 0xFFFFFFFF, 5, P.TCP_SYN | P.TCP_ACK, 65535)
    with pytest.raises(P.PacketError):
        P.udp_segment("10.0.0.1", "::1", 1, 2)


def test_parse_icmp_error_with_truncated_quote_v4():
    probe = P.ipv4_header("10.0.0.1", "10.0.0.2", P.IPPROTO_UDP, 20, ipid=77) + \
        P.udp_segment("10.0.0.1", "10.0.0.2", 40000, 33435, bytes(12))
    quote = probe[:28]  # RFC 792: header + 8 bytes
    err = P.icmp_message(3, 3, 0, quote)
    pkt = P.parse_ip(P.ipv4_header("10.0.0.2", "10.0.0.1", P.IPPROTO_ICMP, len(err), ttl=60) + err)
    assert pkt.icmp.type == 3 and pkt.icmp.code == 3
    q = pkt.icmp.quote
    assert q.truncated and q.ipid == 77 and q.dst == "10.0.0.2"
    assert (q.udp.sport, q.udp.dport) == (40000, 33435)


def test_parse_icmp6_error_quote_and_extension_headers():
    src, dst = "2001:db8::1", "2001:db8::2"
    seg = P.tcp_segment(src, dst, 50000, 443, seq=99)
    probe = P.ipv6_header(src, dst, P.IPPROTO_TCP, len(seg)) + seg
    err = P.icmp_message(1, 4, 0, probe, src=dst, dst=src, v6=True)
    pkt = P.parse_ip(P.ipv6_header(dst, src, P.IPPROTO_ICMPV6, len(err), hlim=61) + err)
    assert (pkt.ttl, pkt.icmp.type, pkt.icmp.code) == (61, 1, 4)
    assert pkt.icmp.quote.tcp.seq == 99 and pkt.icmp.quote.tcp.sport == 50000
    # a hop-by-hop header (8 bytes, PadN) before ICMPv6
    echo = P.icmp_echo(5, 6, b"z", src=src, dst=dst, v6=True)
    hbh = bytes([P.IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0])
    pkt = P.parse_ip(P.ipv6_header(src, dst, 0, len(hbh) + len(echo)) + hbh + echo)
    assert pkt.proto == P.IPPROTO_ICMPV6 and pkt.icmp.ident == 5 and pkt.size == 40 + 8 + len(echo)


def test_parse_rejects_garbage_cleanly():
    for bad in (b"", b"\x45", b"\x00" * 40, b"\x4f" + bytes(19), b"\x60" + bytes(10)):
        assert P.parse_packet(bad) is None
        with pytest.raises(P.PacketError):
            P.parse_ip(bad)
    # total length below the header length
    h = bytearray(P.ipv4_header("10.0.0.1", "10.0.0.2", 1, 0))
    h[2:4] = b"\x00\x05"
    assert P.parse_packet(bytes(h)) is None
    # a top-level packet with a short transport header is malformed
    assert P.parse_packet(P.ipv4_header("10.0.0.1", "10.0.0.2", P.IPPROTO_TCP, 4) + bytes(4)) is None


def test_non_first_fragment_has_no_transport():
    h = bytearray(P.ipv4_header("10.0.0.1", "10.0.0.2", P.IPPROTO_UDP, 8))
    h[6:8] = b"\x00\x10"
    pkt = P.parse_ip(bytes(h) + bytes(8))
    assert pkt.transport is None


@pytest.mark.root
def test_kernel_accepts_our_udp_checksum_v6():
    """A UDP datagram with our checksum, sent on a raw IPv6 socket, reaches a
    bound UDP socket (the kernel drops bad checksums silently)."""
    rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    rx.bind(("::1", 0))
    rx.settimeout(2)
    port = rx.getsockname()[1]
    tx = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_UDP)
    try:
        tx.sendto(P.udp_segment("::1", "::1", 40001, port, b"checksum-ok"), ("::1", 0))
        assert rx.recvfrom(100)[0] == b"checksum-ok"
    finally:
        rx.close()
        tx.close()
