"""Hypothesis: the probe parsers never crash on garbage, and builders round-trip."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.measure import probes as P

v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_crashes(data):
    pkt = P.parse_packet(data)
    assert pkt is None or pkt.version in (4, 6)
    for fn in (P.parse_tcp, P.parse_udp, P.parse_icmp, lambda d: P.parse_icmp(d, True)):
        try:
            fn(data)
        except P.PacketError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"\x45", b"\x46", b"\x60"]), st.binary(max_size=120))
def test_ip_like_garbage_never_crashes(first, rest):
    """Garbage that starts like an IP header reaches the deeper code paths."""
    pkt = P.parse_packet(first + rest)
    if pkt is not None:
        assert len(pkt.payload) <= len(rest) + 1


@given(v4, v4, st.sampled_from([1, 6, 17]), st.integers(1, 255), st.integers(0, 255), u16, st.binary(max_size=64),
       u16, u16, u32)
def test_v4_round_trip(src, dst, proto, ttl, tos, ipid, payload, a, b, seq):
    if proto == 1:
        body = P.icmp_echo(a, b, payload)
    elif proto == 6:
        body = P.tcp_segment(src, dst, a, b, seq=seq, payload=payload)
    else:
        body = P.udp_segment(src, dst, a, b, payload)
    pkt = P.parse_ip(P.ipv4_header(src, dst, proto, len(body), ttl=ttl, tos=tos, ipid=ipid) + body)
    assert (pkt.src, pkt.dst, pkt.ttl, pkt.tos, pkt.ipid, pkt.proto, pkt.size) == \
        (src, dst, ttl, tos, ipid, proto, 20 + len(body))
    assert not pkt.truncated
    if proto == 1:
        assert (pkt.icmp.ident, pkt.icmp.seq, pkt.icmp.data) == (a, b, payload)
    elif proto == 6:
        assert (pkt.tcp.sport, pkt.tcp.dport, pkt.tcp.seq, pkt.tcp.payload) == (a, b, seq, payload)
    else:
        assert (pkt.udp.sport, pkt.udp.dport, pkt.udp.payload) == (a, b, payload)


@given(v6, v6, u16, u16, st.binary(max_size=64), st.integers(0, 255), st.integers(0, 0xFFFFF))
def test_v6_round_trip_and_quote(src, dst, a, b, payload, hlim, flow):
    body = P.udp_segment(src, dst, a, b, payload)
    probe = P.ipv6_header(src, dst, P.IPPROTO_UDP, len(body), hlim=hlim, flow=flow) + body
    pkt = P.parse_ip(probe)
    assert (ipaddress.ip_address(pkt.src), pkt.ttl, pkt.flow, pkt.udp.payload) == \
        (ipaddress.ip_address(src), hlim, flow, payload)
    err = P.icmp_message(1, 4, 0, probe, src=dst, dst=src, v6=True)
    outer = P.parse_ip(P.ipv6_header(dst, src, P.IPPROTO_ICMPV6, len(err)) + err)
    assert outer.icmp.quote.udp.sport == a and outer.icmp.quote.udp.payload == payload


@given(st.binary(min_size=1, max_size=100), st.integers(0, 100))
def test_truncated_quotes_parse_or_fail_cleanly(payload, cut):
    probe = P.ipv4_header("10.0.0.1", "10.0.0.2", P.IPPROTO_TCP, 20 + len(payload)) + \
        P.tcp_segment("10.0.0.1", "10.0.0.2", 1, 2, payload=payload)
    err = P.icmp_message(11, 0, 0, probe[:cut])
    pkt = P.parse_packet(P.ipv4_header("10.0.0.3", "10.0.0.1", 1, len(err)) + err)
    assert pkt is not None and pkt.icmp.type == 11
    if cut >= 28:
        assert pkt.icmp.quote.tcp.sport == 1
