"""marionet wrap's parseable parts: options, --resolve, SO_ORIGINAL_DST, TUN packets, the report."""

from __future__ import annotations

import argparse
import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.wrap import packets as pk
from marionet.wrap.options import WrapOptions, hosts_text, parse_resolve, resolv_conf_text
from marionet.wrap.origdst import parse_sockaddr
from marionet.wrap.report import TcpRecord, UdpRecord, WrapReport
from marionet.wrap.runner import resolver_mapper


# ------------------------------------------------------------------- --resolve

def test_parse_resolve_forms() -> None:
    r = parse_resolve("www.example.org:443:192.0.2.7")
    assert (r.host, r.port, r.addrs) == ("www.example.org", 443, ("192.0.2.7",))
    r = parse_resolve("WWW.Example.org.:80:[2001:db8::1],192.0.2.8")
    assert (r.host, r.addrs) == ("www.example.org", ("2001:db8::1", "192.0.2.8"))
    assert parse_resolve("+lazy.example:8443:2001:db8::2").addrs == ("2001:db8::2",)  # unbracketed v6


@pytest.mark.parametrize("bad,words", [
    ("nonsense", "HOST:PORT:ADDR"), ("host:443", "HOST:PORT:ADDR"), (":443:192.0.2.1", "HOST:PORT:ADDR"),
    ("host:0:192.0.2.1", "port"), ("host:70000:192.0.2.1", "port"), ("host:http:192.0.2.1", "port"),
    ("host:443:999.1.1.1", "not an IP address"), ("host:443:192.0.2.1,", "not an IP address"),
    ("bad host:443:192.0.2.1", "not a host name"), ("1.2.3.4:443:192.0.2.1", "not a host name"),
])
def test_parse_resolve_rejects_clearly(bad: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_resolve(bad)


def test_hosts_and_resolv_conf_text() -> None:
    text = hosts_text([parse_resolve("a.example:443:192.0.2.1,2001:db8::5")])
    lines = text.splitlines()
    assert lines[0].startswith("127.0.0.1") and "192.0.2.1\ta.example" in lines and "2001:db8::5\ta.example" in lines
    assert "nameserver 198.18.0.53" in resolv_conf_text("198.18.0.53").splitlines()


def test_wrap_options_validation(tmp_path) -> None:
    o = WrapOptions(argv=["curl", "-s"], resolve=["a.example:80:192.0.2.1"], timing="vp",
                    report=tmp_path / "r.json")
    assert o.resolve[0].host == "a.example"
    for kw, words in (({"argv": []}, "PROGRAM"), ({"argv": [""]}, "empty"),
                      ({"argv": ["x"], "timing": "fast"}, "--timing"),
                      ({"argv": ["x"], "connect_timeout": 0}, "timeout"),
                      ({"argv": ["x"], "report": tmp_path / "nodir" / "r.json"}, "does not exist"),
                      ({"argv": ["x"], "resolve": ["oops"]}, "HOST:PORT:ADDR")):
        with pytest.raises(ValueError, match=words):
            WrapOptions(**kw)


def test_cli_options() -> None:
    from marionet.cli import build_parser
    from marionet.commands.wrap import _options

    p = build_parser()
    a = p.parse_args(["wrap", "--controller", "127.0.0.1:1", "--vp", "v", "--resolve", "h.example:1:192.0.2.1",
                      "--timing", "vp", "--report", "r.json", "--", "curl", "-s", "--resolve", "x"])
    o = _options(a)
    assert o.argv == ["curl", "-s", "--resolve", "x"] and o.timing == "vp" and o.resolve[0].port == 1
    for argv, words in ((["wrap", "--vp", "v", "--", "true"], "needs --controller"),
                        (["wrap", "--controller", "c:1", "--", "true"], "needs --vp"),
                        (["wrap", "--pin", "ab", "--", "true"], "--pin is for --endpoint"),
                        (["wrap", "--timing", "vp", "--", "true"], "needs --report"),
                        (["wrap", "--"], "PROGRAM")):
        with pytest.raises(ValueError, match=words):
            _options(p.parse_args(argv))
    with pytest.raises(SystemExit):
        p.parse_args(["wrap", "--vp", "a", "--endpoint", "b:1", "--", "true"])  # one of the two
    assert p.parse_args(["wrap", "--", "true"]).handler.__name__ == "run_wrap"
    assert isinstance(a, argparse.Namespace)


# ------------------------------------------------------------ SO_ORIGINAL_DST

def test_parse_sockaddr_v4_v6() -> None:
    raw4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 443) + socket.inet_aton("192.0.2.9") + b"\0" * 8
    assert parse_sockaddr(raw4) == (4, "192.0.2.9", 443)
    raw6 = (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", 53, 0)
            + socket.inet_pton(socket.AF_INET6, "2001:db8::53") + b"\0" * 4)
    assert parse_sockaddr(raw6) == (6, "2001:db8::53", 53)
    for bad, words in ((b"", "at least"), (raw4[:6], "truncated"), (raw6[:20], "truncated"),
                       (struct.pack("=H", 99) + b"\0" * 14, "unknown address family")):
        with pytest.raises(ValueError, match=words):
            parse_sockaddr(bad)


def test_original_dst_of_a_plain_connection_is_an_oserror() -> None:
    from marionet.wrap.origdst import original_dst

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    try:
        with pytest.raises(OSError):  # not NATed: the relay resets such a connection
            original_dst(a)
    finally:
        for s in (a, c, srv):
            s.close()


# -------------------------------------------------------------------- packets

def _verify_ip_and_udp(packet: bytes, family: int) -> None:
    if family == 4:
        assert pk.checksum(packet[:20]) == 0
        pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(packet) - 20)
        assert pk.checksum(pseudo + packet[20:]) == 0
    else:
        pseudo = packet[8:40] + struct.pack("!IxxxB", len(packet) - 40, 17)
        assert pk.checksum(pseudo + packet[40:]) == 0


@pytest.mark.parametrize("family,src,dst", [(4, "192.0.2.1", "198.18.0.1"), (6, "2001:db8::1", "fd6d:6e77::1")])
def test_udp_round_trip(family: int, src: str, dst: str) -> None:
    data = b"\x12\x34 a dns answer"
    packet = pk.build_udp(family, src, 53, dst, 40000, data)
    _verify_ip_and_udp(packet, family)
    p = pk.parse_packet(packet)
    assert (p.family, p.src, p.dst, p.proto, p.sport, p.dport, p.payload) == (family, src, dst, 17, 53, 40000, data)
    assert not p.fragment and p.raw == packet


def test_udp_build_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="port"):
        pk.build_udp(4, "192.0.2.1", 70000, "192.0.2.2", 1, b"")
    with pytest.raises(ValueError, match="65,535"):
        pk.build_udp(4, "192.0.2.1", 1, "192.0.2.2", 1, b"x" * 70000)
    with pytest.raises(ValueError, match="family"):
        pk.build_udp(5, "192.0.2.1", 1, "192.0.2.2", 1, b"")


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_error_quotes_the_original(family: int) -> None:
    src, dst = ("198.18.0.1", "192.0.2.5") if family == 4 else ("fd6d:6e77::1", "2001:db8::5")
    orig = pk.parse_packet(pk.build_udp(family, src, 5000, dst, 53, b"query"))
    err = pk.build_icmp_error(orig, "198.18.0.254" if family == 4 else "fd6d:6e77::fe", "prohibited")
    e = pk.parse_packet(err)
    assert e.dst == src and e.proto == (1 if family == 4 else 58)
    assert (e.icmp_type, e.icmp_code) == ((3, 13) if family == 4 else (1, 1))
    assert e.payload[4:] == orig.raw  # after the unused word: the whole original datagram
    body = err[20:] if family == 4 else err[40:]
    pseudo = b"" if family == 4 else err[8:40] + struct.pack("!IxxxB", len(body), 58)
    assert pk.checksum(pseudo + body) == 0
    port = pk.parse_packet(pk.build_icmp_error(orig, dst, "port"))
    assert (port.icmp_type, port.icmp_code) == ((3, 3) if family == 4 else (1, 4))


def test_fragments_and_tcp_are_recognised() -> None:
    p = bytearray(pk.build_udp(4, "192.0.2.1", 1, "192.0.2.2", 2, b"abc"))
    p[6] |= 0x20  # more fragments
    assert pk.parse_packet(bytes(p)).fragment
    tcp = bytearray(pk.build_udp(4, "192.0.2.1", 1, "192.0.2.2", 2, b"x" * 20))
    tcp[9] = 6
    t = pk.parse_packet(bytes(tcp))
    assert t.proto == 6 and t.sport == 1 and t.dport == 2
    v6frag = pk.build_udp(6, "2001:db8::1", 1, "2001:db8::2", 2, b"")
    frag = v6frag[:6] + bytes([44]) + v6frag[7:40] + bytes([17, 0, 0, 1, 0, 0, 0, 1]) + v6frag[40:]
    frag = frag[:4] + struct.pack("!H", len(frag) - 40) + frag[6:]
    assert pk.parse_packet(frag).fragment


@pytest.mark.parametrize("bad,words", [(b"", "empty"), (b"\x45" + b"\0" * 10, "shorter"),
                                       (b"\x60" + b"\0" * 20, "shorter"), (b"\x10" * 40, "version"),
                                       (b"\x45\0\0\x50" + b"\0" * 16, "do not fit")])
def test_malformed_packets_are_value_errors(bad: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        pk.parse_packet(bad)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120))
def test_parse_packet_never_crashes(data: bytes) -> None:
    try:
        pk.parse_packet(data)
    except ValueError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=1500), st.sampled_from([4, 6]))
def test_udp_round_trip_any(sport: int, dport: int, data: bytes, family: int) -> None:
    src, dst = ("10.0.0.1", "10.0.0.2") if family == 4 else ("fd00::1", "fd00::2")
    packet = pk.build_udp(family, src, sport, dst, dport, data)
    _verify_ip_and_udp(packet, family)
    p = pk.parse_packet(packet)
    assert (p.sport, p.dport, p.payload) == (sport, dport, data)


# --------------------------------------------------------------------- report

def test_report_strips_stamps_without_timing(tmp_path) -> None:
    r = WrapReport(["curl"], vp="vp-a", timing="none")
    r.tcp.append(TcpRecord("192.0.2.1", 443, 4, open_ns=1, first_tx_ns=10, first_rx_ns=30, last_rx_ns=50,
                           rx_source="kernel", outcome="closed"))
    r.udp.append(UdpRecord("192.0.2.53", 53, 4, 4000, open_ns=2, first_tx_ns=5, first_rx_ns=9))
    r.refuse("icmp-echo")
    r.refuse("icmp-echo")
    plain = r.to_dict()
    assert plain["refused"] == {"icmp-echo": 2}
    assert all(not k.endswith("_ns") or k == "open_ns" for c in plain["connections"] for k in c)
    r.timing = "vp"
    timed = r.to_dict()
    tcp, udp = timed["connections"]
    assert tcp["ttfb_ns"] == 20 and tcp["transfer_ns"] == 20 and udp["rtt_ns"] == 4 and udp["kind"] == "udp"
    r.write(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["connections"][0]["dst"] == "192.0.2.1"


def test_resolver_mapper() -> None:
    m = resolver_mapper(["2001:db8::53", "192.0.2.53"])
    assert m(4, "198.18.0.53", 53) == (6, "2001:db8::53", 53)
    assert m(4, "192.0.2.1", 443) == (4, "192.0.2.1", 443)
    assert resolver_mapper([])(4, "198.18.0.53", 53) is None


# ------------------------------------------------------------------- ICMP echo

def _echo_packet(family: int, src: str, dst: str, ident: int, seq: int, ttl: int = 64) -> bytes:
    msg = bytes([pk.ECHO_REQUEST[family], 0, 0, 0]) + struct.pack("!HH", ident, seq) + b"payload!"
    return pk.build_icmp(family, src, dst, msg, ttl)


@pytest.mark.parametrize("family,src,dst", [(4, "198.18.0.1", "192.0.2.9"), (6, "fd6d:6e77::1", "2001:db8::9")])
def test_echo_message_and_requote(family: int, src: str, dst: str) -> None:
    raw = _echo_packet(family, src, dst, 4321, 7, ttl=3)
    p = pk.parse_packet(raw)
    assert p.ttl == 3 and p.icmp_type == pk.ECHO_REQUEST[family]
    msg = pk.icmp_message(p)
    assert pk.echo_key(msg) == (4321, 7)
    if family == 4:
        assert pk.checksum(msg) == 0  # IPv4: a raw socket sends our checksum as it is
    else:
        pseudo = raw[8:40] + struct.pack("!IxxxB", len(raw) - 40, 58)
        assert pk.checksum(pseudo + raw[40:]) == 0
    # a router's time exceeded quoting the VP's copy of the request (another source address)
    vp = "10.1.0.1" if family == 4 else "fd00:1::1"
    at_vp = _echo_packet(family, vp, dst, 4321, 7, ttl=1)
    err = bytes([11 if family == 4 else 3, 0, 0, 0, 0, 0, 0, 0]) + at_vp
    q = pk.quoted_echo(err, family)
    assert q is not None and q[:3] == (dst, 4321, 7) and q[3] == len(at_vp)
    requoted = pk.parse_packet(pk.build_icmp(family, "10.1.0.2" if family == 4 else "fd00:1::2", src,
                                             err[:8] + p.raw[:q[3]]))
    assert requoted.dst == src and requoted.payload[4:] == raw  # the program's own request, as it sent it
    assert pk.quoted_echo(err[:20], family) is None


def test_strip_ip() -> None:
    raw = _echo_packet(4, "192.0.2.1", "192.0.2.2", 1, 1, ttl=9)
    assert pk.strip_ip(raw, 4) == (raw[20:], 9, "192.0.2.1")
    assert pk.strip_ip(raw[20:], 4) == (raw[20:], None, None)
    raw6 = _echo_packet(6, "2001:db8::1", "2001:db8::2", 1, 1, ttl=5)
    assert pk.strip_ip(raw6, 6) == (raw6[40:], 5, "2001:db8::1")
    with pytest.raises(ValueError):
        pk.build_icmp(4, "192.0.2.1", "192.0.2.2", b"\x00")
    with pytest.raises(ValueError):
        pk.echo_key(b"\x08\x00\x00\x00")
