"""marionet.measure.ping: parameter checks, the sans-I/O matcher, and real
pings over loopback (native and remote placements; the endpoint placement
is in test_primitives.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import socket

import pytest

from marionet.measure import probes as P
from marionet.measure.ping import PingProbing, ping, plan_ping
from marionet.results import PingStop, from_json, to_json

TARGETS = ["127.0.0.1", "::1"]
METHODS = ["icmp-echo", "udp", "tcp-syn"]
ALL_METHODS = ["icmp-echo", "icmp-time", "udp", "udp-dport", "udp-sport", "tcp-syn", "tcp-syn-sport",
               "tcp-ack", "tcp-ack-sport", "tcp-synack", "tcp-rst"]


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("dst,method,size", [
    ("127.0.0.1", "icmp-echo", 84), ("::1", "icmp-echo", 104),
    ("127.0.0.1", "udp", 40), ("::1", "udp", 60),
    ("127.0.0.1", "tcp-syn", 40), ("::1", "tcp-syn", 60),
])
def test_default_sizes_are_scampers(dst, method, size):
    plan = plan_ping(dst, method=method)
    assert plan.size == size
    assert plan.attempts == 4 and plan.ttl == 64 and plan.wait_probe_ns == 1_000_000_000
    if method != "icmp-echo":
        assert plan.dport == 33435 and 0x8000 <= plan.sport <= 0xFFFF


def test_size_payload_and_times():
    assert plan_ping("127.0.0.1", size=100).payload == bytes(72)
    p = plan_ping("::1", payload="deadbeef", method="udp")
    assert p.payload == bytes.fromhex("deadbeef") and p.size == 52
    assert plan_ping("127.0.0.1", size=32, payload=b"1234").size == 32
    p = plan_ping("127.0.0.1", wait_probe=dt.timedelta(milliseconds=5), wait_timeout=0.25)
    assert (p.wait_probe_ns, p.wait_timeout_ns) == (5_000_000, 250_000_000)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dst="not-an-address"), "not an IPv4 or IPv6 address"),
    (dict(dst="224.0.0.1"), "multicast"),
    (dict(dst="127.0.0.1", method="carrier-pigeon"), "unknown ping method"),
    (dict(dst="::1", method="icmp-time"), "exists only in IPv4"),
    (dict(dst="127.0.0.1", size=27), "too small"),
    (dict(dst="::1", method="tcp-syn", size=59), "too small"),
    (dict(dst="127.0.0.1", size=70000), "within 0 - 65535"),
    (dict(dst="127.0.0.1", size=40, payload=b"x"), "inconsistent"),
    (dict(dst="127.0.0.1", payload=bytes(1001)), "payload limit"),
    (dict(dst="127.0.0.1", payload="abc"), "hex"),
    (dict(dst="127.0.0.1", attempts=0), "attempts"),
    (dict(dst="127.0.0.1", ttl=0), "ttl"),
    (dict(dst="127.0.0.1", tos=256), "tos"),
    (dict(dst="127.0.0.1", wait_probe=0), "wait_probe"),
    (dict(dst="127.0.0.1", wait_timeout="1s"), "wait_timeout"),
    (dict(dst="127.0.0.1", src="::1"), "IPv6 but destination"),
    (dict(dst="127.0.0.1", method="udp", icmp_id=5), "icmp_id is for icmp"),
    (dict(dst="127.0.0.1", sport=5), "sport/dport are for udp and tcp"),
    (dict(dst="127.0.0.1", method="udp", dport=70000), "dport"),
    (dict(dst="127.0.0.1", attempts=True), "attempts must be an integer"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_ping(**kwargs)


async def test_bad_input_sends_nothing():
    """ValueError comes before any socket is opened (no root needed)."""
    from marionet.endpoint.local import native_session

    async with native_session() as s:
        for kw in (dict(dst="nope"), dict(dst="127.0.0.1", size=1), dict(dst="127.0.0.1", method="x")):
            with pytest.raises(ValueError):
                await ping(s, **kw)
        assert s.sockets == {}


# ------------------------------------------------------- sans-I/O matching
def _reply_v4(src: str, dst: str, body: bytes, proto: int, ttl: int = 60) -> P.IPPacket:
    return P.parse_ip(P.ipv4_header(src, dst, proto, len(body), ttl=ttl, ipid=4242) + body)


def test_matcher_icmp_echo_dups_errors_and_strangers():
    plan = plan_ping("192.0.2.9", attempts=3, icmp_id=0x4D4E, icmp_seq=10)
    run = PingProbing(plan, "192.0.2.1", ipid_base=100)
    sent = [run.probe(i, 1_000 * (i + 1)) for i in range(3)]
    for i in range(3):
        run.sent(i, 1_000 * (i + 1) + 5, "kernel")
    echo = P.icmp_message(0, 0, (0x4D4E << 16) | 11, bytes(56))  # reply to attempt 1
    assert run.received(_reply_v4("192.0.2.9", "192.0.2.1", echo, 1), 5_000)
    assert run.received(_reply_v4("192.0.2.9", "192.0.2.1", echo, 1), 6_000)  # duplicate
    other = P.icmp_message(0, 0, (0x1111 << 16) | 10, b"")
    assert not run.received(_reply_v4("192.0.2.9", "192.0.2.1", other, 1), 6_000)
    # time exceeded from a router, quoting probe 2 (matched by IP-ID)
    err = P.icmp_message(11, 0, 0, sent[2][:28])
    assert run.received(_reply_v4("198.51.100.1", "192.0.2.1", err, 1), 7_000)
    res = run.result(start_ns=1_000, stop_reason=PingStop.DONE)
    assert res.ping_sent == 3 and res.nreplies == 1 and res.ndups == 1 and res.nerrs == 1
    r = res.replies[0]
    assert (r.attempt, r.tx_ns, r.rtt_ns, r.probe_ipid, r.reply_ipid, r.reply_ttl) == (1, 2_005, 2_995, 102, 4242, 60)
    assert res.replies[2].icmp_type == 11 and not res.is_from_target(res.replies[2])


def test_matcher_tcp_by_ack_and_udp_v6_by_payload():
    plan = plan_ping("2001:db8::2", method="tcp-syn", attempts=2, sport=40000, dport=80, tcp_seq=2**32 - 1)
    run = PingProbing(plan, "2001:db8::1")
    for i in range(2):
        run.probe(i, i)
        run.sent(i, i, "kernel")
    # RST/ACK to attempt 1: seq wraps (2**32-1 + 1 = 0), ack = 1
    rst = P.tcp_segment("2001:db8::2", "2001:db8::1", 80, 40000, ack=1, flags=P.TCP_RST | P.TCP_ACK)
    pkt = P.parse_ip(P.ipv6_header("2001:db8::2", "2001:db8::1", 6, len(rst)) + rst)
    assert run.received(pkt, 10)
    assert run.got[0].attempt == 1 and pkt.tcp.flags == P.TCP_RST | P.TCP_ACK
    # the kernel's own RST goes the other way (from sport to dport): not ours
    mine = P.tcp_segment("2001:db8::1", "2001:db8::2", 40000, 80, flags=P.TCP_RST)
    assert not run.received(P.parse_ip(P.ipv6_header("2001:db8::1", "2001:db8::2", 6, len(mine)) + mine), 11)

    plan = plan_ping("2001:db8::2", method="udp", attempts=3, sport=40000)
    run = PingProbing(plan, "2001:db8::1")
    probes6 = [run.probe(i, i) for i in range(3)]
    quote = P.ipv6_header("2001:db8::1", "2001:db8::2", 17, len(probes6[2])) + probes6[2]
    err = P.icmp_message(1, 4, 0, quote, src="2001:db8::2", dst="2001:db8::1", v6=True)
    pkt = P.parse_ip(P.ipv6_header("2001:db8::2", "2001:db8::1", 58, len(err)) + err)
    assert run.received(pkt, 10) and run.got[0].attempt == 2 and run.got[0].from_target


def test_matcher_never_crashes_on_random_packets():
    plan = plan_ping("127.0.0.1", method="udp", attempts=2)
    run = PingProbing(plan, "127.0.0.1")
    run.probe(0, 0)
    rnd = random.Random(7)
    for _ in range(2000):
        pkt = P.parse_packet(bytes([0x45]) + rnd.randbytes(rnd.randrange(0, 80)))
        if pkt is not None:
            run.received(pkt, 1)


# ----------------------------------------------------------- real pings
def _check_replies(p, attempts: int, dst: str, method: str) -> None:
    assert p.stop_reason == PingStop.DONE, p.extra
    if method == "tcp-rst":  # a RST draws nothing
        assert p.ping_sent == attempts and p.replies == [] and p.nloss == attempts
        return
    assert p.ping_sent == attempts and p.nreplies == attempts and p.nloss == 0
    for r in p.replies:
        assert str(r.src) == dst and r.rtt_ns > 0 and r.rx_ns > r.tx_ns
        assert r.tx_ts_source == "kernel" and r.rx_ts_source == "kernel"
        assert r.reply_ttl == 64 and r.reply_size > 0
        if dst == "127.0.0.1":
            assert r.probe_ipid is not None and r.reply_ipid is not None
        if method in ("tcp-syn", "tcp-syn-sport"):
            assert r.tcp_flags == P.TCP_RST | P.TCP_ACK
        elif method.startswith("tcp"):
            assert r.tcp_flags == P.TCP_RST
        elif method.startswith("udp"):
            assert r.is_icmp_unreach_port()
        elif method == "icmp-time":
            assert r.is_icmp_tsreply() and r.tsreply is not None
        else:
            assert r.is_icmp_echo_reply()
    assert sorted(r.attempt for r in p.replies) == list(range(attempts))


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", ALL_METHODS)
async def test_native_ping(dst, method):
    from marionet.endpoint.local import native_session

    if method == "icmp-time" and dst == "::1":
        pytest.skip("icmp-time is IPv4 only")
    async with native_session() as s:
        p = await ping(s, dst, method=method, attempts=3, wait_probe=0.02,
                       wait_timeout=0.2 if method == "tcp-rst" else 1.0)
        _check_replies(p, 3, dst, method)
        assert s.sockets == {}  # everything closed
        back = from_json(to_json(p))
        assert [r.rtt_ns for r in back.replies] == [r.rtt_ns for r in p.replies]


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS + ["icmp-time", "udp-sport", "tcp-ack-sport", "tcp-synack"])
async def test_remote_ping(session, dst, method):
    if method == "icmp-time" and dst == "::1":
        pytest.skip("icmp-time is IPv4 only")
    p = await ping(session, dst, method=method, attempts=3, wait_probe=0.02)
    _check_replies(p, 3, dst, method)
    assert p.vp == "test-ep" and session.sockets == {}


@pytest.mark.root
async def test_probe_header_fields_reach_the_wire(session):
    """size and tos go into the probe: an IPv4 echo reply mirrors both."""
    p = await ping(session, "127.0.0.1", attempts=2, wait_probe=0.01, size=200, tos=0x20)
    assert {r.reply_size for r in p.replies} == {200}
    assert {r.reply_tos for r in p.replies} == {0x20}
    p = await ping(session, "::1", attempts=1, size=300, payload=None)
    assert p.replies[0].reply_size == 300


@pytest.mark.root
async def test_stop_count_and_spacing(session):
    p = await ping(session, "127.0.0.1", attempts=10, wait_probe=0.05, stop_count=2)
    assert p.stop_reason == PingStop.DONE and p.nreplies == 2 and p.ping_sent == 2
    p = await ping(session, "::1", attempts=3, wait_probe=0.1)
    tx = sorted(r.tx_ns for r in p.replies)
    gaps = [b - a for a, b in zip(tx, tx[1:])]
    assert all(80_000_000 < g < 120_000_000 for g in gaps), gaps  # scheduled by the endpoint


@pytest.mark.root
async def test_halt_event_gives_partial_result(session):
    halt = asyncio.Event()
    task = asyncio.create_task(ping(session, "127.0.0.1", attempts=50, wait_probe=0.05, halt=halt))
    await asyncio.sleep(0.3)
    halt.set()
    p = await asyncio.wait_for(task, 5)
    assert p.stop_reason == PingStop.HALTED
    assert 2 <= p.ping_sent < 50 and p.nreplies == p.ping_sent
    assert session.sockets == {}


@pytest.mark.root
async def test_cancel_closes_sockets(session):
    task = asyncio.create_task(ping(session, "::1", attempts=50, wait_probe=0.05))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.sockets == {}
    p = await ping(session, "::1", attempts=1)  # the session is still usable
    assert p.nreplies == 1


# ------------------------------------------------- every method, sans-I/O
V4, V4_SRC, V6, V6_SRC = "192.0.2.9", "192.0.2.1", "2001:db8::9", "2001:db8::1"


def _probing(dst: str, method: str, attempts: int = 3, **kw):
    src = V4_SRC if ":" not in dst else V6_SRC
    kw.setdefault("sport", None if method.startswith("icmp") else 40000)
    if method.startswith("tcp"):
        kw.setdefault("tcp_seq", 1000)
        if method in ("tcp-ack", "tcp-ack-sport", "tcp-synack"):
            kw.setdefault("tcp_ack", 5000)
    if method.startswith("icmp"):
        kw.pop("sport")
        kw.setdefault("icmp_id", 0x4D4E)
    run = PingProbing(plan_ping(dst, method=method, attempts=attempts, **kw), src, ipid_base=100)
    probes = [run.probe(i, 1_000 * (i + 1)) for i in range(attempts)]
    for i in range(attempts):
        run.sent(i, 1_000 * (i + 1) + 5, "kernel")
    return run, probes


@pytest.mark.parametrize("method", ALL_METHODS)
def test_probes_per_method_v4(method):
    """Each method's probe: scamper's transport header, with the field that
    identifies the attempt varying (ports for the -sport / -dport methods,
    the echoed TCP number otherwise) and everything else fixed."""
    run, probes = _probing(V4, method)
    pkts = [P.parse_ip(b) for b in probes]
    assert [p.ipid for p in pkts] == [101, 102, 103] and {p.size for p in pkts} == {run.plan.size}
    assert {(p.src, p.dst, p.ttl) for p in pkts} == {(V4_SRC, V4, 64)}
    if method == "icmp-echo":
        assert [(p.icmp.type, p.icmp.ident, p.icmp.seq) for p in pkts] == [(8, 0x4D4E, i) for i in range(3)]
        assert run.plan.size == 84
    elif method == "icmp-time":
        assert [(p.icmp.type, p.icmp.seq) for p in pkts] == [(13, i) for i in range(3)]
        assert run.plan.size == 84  # 20 + 8 + 12 stamps + 44, as scamper
        orig, rcv, xmt = (int.from_bytes(pkts[1].icmp.data[i:i + 4], "big") for i in (0, 4, 8))
        assert (orig, rcv, xmt) == (0, 0, 0)  # scheduled at 2 µs past the epoch's midnight
        assert P.checksum(pkts[0].payload) == 0
    elif method.startswith("udp"):
        ports = [(p.udp.sport, p.udp.dport) for p in pkts]
        want = {"udp": [(40000, 33435)] * 3, "udp-dport": [(40000, 33435 + i) for i in range(3)],
                "udp-sport": [(40000 + i, 33435) for i in range(3)]}[method]
        assert ports == want and run.plan.size == 40
    else:
        segs = [p.tcp for p in pkts]
        flags = {"tcp-syn": P.TCP_SYN, "tcp-syn-sport": P.TCP_SYN, "tcp-ack": P.TCP_ACK,
                 "tcp-ack-sport": P.TCP_ACK, "tcp-synack": P.TCP_SYN | P.TCP_ACK, "tcp-rst": P.TCP_RST}
        assert {s.flags for s in segs} == {flags[method]} and run.plan.size == 40
        sports = [s.sport for s in segs]
        assert sports == ([40000 + i for i in range(3)] if method.endswith("-sport") else [40000] * 3)
        if method in ("tcp-ack", "tcp-ack-sport", "tcp-synack"):
            assert [(s.seq, s.ack) for s in segs] == [(1000, 5000 + i) for i in range(3)]
        else:
            assert [(s.seq, s.ack) for s in segs] == [(1000 + i, 0) for i in range(3)]
        res = run.result(start_ns=0, stop_reason=PingStop.DONE)
        assert res.tcp_seq == 1000 and res.tcp_ack == (5000 if method in ("tcp-ack", "tcp-ack-sport",
                                                                         "tcp-synack") else 0)


def _answer(dst: str, src: str, seg: tuple) -> P.IPPacket:
    """What a Linux target answers to ``probe`` (fields given in ``seg``)."""
    v6 = ":" in dst
    kind, *rest = seg
    if kind == "tcp":
        sport, dport, seq, ack, flags = rest
        body, proto = P.tcp_segment(dst, src, sport, dport, seq=seq, ack=ack, flags=flags), 6
    elif kind == "udp":
        sport, dport = rest
        body, proto = P.udp_segment(dst, src, sport, dport, b"x"), 17
    else:
        typ, code, word, data = rest
        body = P.icmp_message(typ, code, word, data, src=dst, dst=src, v6=v6)
        proto = 58 if v6 else 1
    if v6:
        return P.parse_ip(P.ipv6_header(dst, src, proto, len(body)) + body)
    return P.parse_ip(P.ipv4_header(dst, src, proto, len(body), ipid=7) + body)


def _v6_probe(run, i: int, probe: bytes) -> bytes:
    """IPv6 probe bytes with the header the kernel would add."""
    nxt = {"icmp": 58, "udp": 17, "tcp": 6}[run.plan.kind]
    return P.ipv6_header(run.src, run.plan.dst, nxt, len(probe)) + probe


@pytest.mark.parametrize("dst", [V4, V6])
@pytest.mark.parametrize("method", ALL_METHODS)
def test_direct_replies_match_their_probe(dst, method):
    """The target's own answer is matched to the probe it answers — even
    out of order — by what that answer echoes, and counts as from target."""
    if method == "icmp-time" and dst == V6:
        pytest.skip("icmp-time is IPv4 only")
    run, probes = _probing(dst, method)
    src = run.src
    p = run.plan
    i = 2  # answer the last probe first
    sp, dp = p.ports(i)
    if method == "icmp-echo":
        seg = ("icmp", 129 if dst == V6 else 0, 0, (p.icmp_id << 16) | i, bytes(56))
    elif method == "icmp-time":
        seg = ("icmp", 14, 0, (p.icmp_id << 16) | i, bytes(12))
    elif method.startswith("udp"):
        seg = ("udp", dp, sp)  # a UDP service answering
    elif method in ("tcp-ack", "tcp-ack-sport", "tcp-synack"):
        seg = ("tcp", dp, sp, p.tcp_ack + i, 0, P.TCP_RST)  # RFC 793: seq = SEG.ACK
    elif method == "tcp-rst":
        pytest.skip("a RST draws no answer")
    else:
        seg = ("tcp", dp, sp, 0, p.tcp_seq + i + 1, P.TCP_RST | P.TCP_ACK)
    assert run.received(_answer(dst, src, seg), 9_000)
    # plain udp: nothing in a service's answer names the probe; the
    # earliest unanswered one is taken
    assert run.got[-1].attempt == (0 if method == "udp" else i) and run.got[-1].from_target
    res = run.result(start_ns=0, stop_reason=PingStop.DONE)
    assert res.nreplies == 1 and res.replies[0].is_from_target()
    # from another address, or to other ports, it is not ours
    if method.startswith(("udp", "tcp")):
        other = ("udp", dp + 100, sp) if seg[0] == "udp" else ("tcp", dp + 100, *seg[2:])
        assert not run.received(_answer(dst, src, other), 9_500)


@pytest.mark.parametrize("dst", [V4, V6])
@pytest.mark.parametrize("method", [m for m in ALL_METHODS if m != "icmp-time"])
def test_icmp_errors_match_the_quoted_probe(dst, method):
    """A router's time-exceeded and the target's unreachable quote a probe;
    the quote says which (IPv4: its IP-ID; IPv6: the varying field). Only a
    port unreachable from the target answers a UDP ping."""
    run, probes = _probing(dst, method)
    v6 = dst == V6
    router = "2001:db8:ff::1" if v6 else "198.51.100.1"
    i = 1
    full = _v6_probe(run, i, probes[i]) if v6 else probes[i]
    quote = full if v6 else full[:28]
    err = P.icmp_message(3 if v6 else 11, 0, 0, quote, src=router, dst=run.src, v6=v6)
    pkt = P.parse_ip((P.ipv6_header(router, run.src, 58, len(err)) if v6 else
                      P.ipv4_header(router, run.src, 1, len(err), ipid=9)) + err)
    assert run.received(pkt, 9_000) and run.got[-1].attempt == i and not run.got[-1].from_target
    unreach = P.icmp_message(1 if v6 else 3, 4 if v6 else 3, 0, quote, src=dst, dst=run.src, v6=v6)
    pkt = P.parse_ip((P.ipv6_header(dst, run.src, 58, len(unreach)) if v6 else
                      P.ipv4_header(dst, run.src, 1, len(unreach), ipid=9)) + unreach)
    assert run.received(pkt, 9_100) and run.got[-1].attempt == i
    assert run.got[-1].from_target == method.startswith("udp")
    res = run.result(start_ns=0, stop_reason=PingStop.DONE)
    assert res.nerrs == (1 if method.startswith("udp") else 2)


def test_quotes_of_other_flows_are_not_ours():
    run, probes = _probing(V6, "udp-sport")
    other = PingProbing(plan_ping(V6, method="udp-sport", attempts=3, sport=50000), V6_SRC)
    foreign = other.probe(0, 0)
    q = _v6_probe(other, 0, foreign)
    err = P.icmp_message(1, 4, 0, q, src=V6, dst=V6_SRC, v6=True)
    assert not run.received(P.parse_ip(P.ipv6_header(V6, V6_SRC, 58, len(err)) + err), 5)


def test_port_ranges_reach_the_capture_filters():
    from marionet.endpoint.bpf import compile_filter

    for dst in (V4, V6):
        for method in ALL_METHODS:
            if method == "icmp-time" and dst == V6:
                continue
            run, _ = _probing(dst, method, attempts=5)
            for expr in run.filters().values():
                assert compile_filter(expr)  # libpcap accepts it
            text = " ".join(run.filters().values())
            if method in ("udp-sport", "tcp-syn-sport", "tcp-ack-sport"):
                assert "40000-40004" in text or "<= 40004" in text
            if method == "udp-dport":
                assert "33435-33439" in text or "<= 33439" in text


# --------------------------------------------------------- IP options
def test_record_route_probe_and_reply_parsing():
    run, probes = _probing(V4, "icmp-echo", ip_rr=True)
    pkt = P.parse_ip(probes[0])
    assert len(probes[0]) == run.plan.size == 124  # scamper's 84 + 40
    assert P.parse_rr(pkt.options) == [] and pkt.icmp.type == 8 and P.checksum(probes[0][:60]) == 0
    assert run.plan.flags == ("v4rr",)
    hops = ["10.0.0.1", "10.0.1.1", "10.0.1.2"]
    opt = bytearray(P.ipopt_rr() + b"\0")
    for k, a in enumerate(hops):
        opt[3 + 4 * k:7 + 4 * k] = socket.inet_aton(a)
    opt[2] = 4 + 4 * len(hops)
    echo = P.icmp_message(0, 0, (0x4D4E << 16) | 0, bytes(56))
    reply = P.parse_ip(P.ipv4_header(V4, V4_SRC, 1, len(echo), options=bytes(opt)) + echo)
    assert P.parse_rr(reply.options) == hops
    assert run.received(reply, 9_000)
    r = run.result(start_ns=0, stop_reason=PingStop.DONE).replies[0]
    assert [str(a) for a in r.v4rr] == hops and r.v4ts is None


def test_timestamp_options_and_icmp_error_quotes():
    run, probes = _probing(V4, "udp", ip_ts="tsandaddr")
    assert run.plan.size == 76 and run.plan.flags == ("tsandaddr",)  # scamper's 40 + 36
    # a port unreachable quoting the probe as it reached the target: 2 stamps
    q = bytearray(probes[0])
    q[22] = 5 + 16  # pointer past two (address, stamp) pairs
    q[24:28], q[28:32] = socket.inet_aton("10.0.0.1"), (1234).to_bytes(4, "big")
    q[32:36], q[36:40] = socket.inet_aton(V4), (1240).to_bytes(4, "big")
    q = bytes(q[:56 + 8])  # header with options + 8 bytes
    err = P.icmp_message(3, 3, 0, q)
    pkt = P.parse_ip(P.ipv4_header(V4, V4_SRC, 1, len(err), ipid=3) + err)
    assert run.received(pkt, 9_000)
    r = run.result(start_ns=0, stop_reason=PingStop.DONE).replies[0]
    assert r.is_icmp_unreach_port() and r.is_from_target()
    assert r.v4ts.tss == (1234, 1240) and [str(a) for a in r.v4ts.ips] == ["10.0.0.1", V4]
    run, probes = _probing(V4, "icmp-echo", ip_ts="tsprespec=10.0.0.1,192.0.2.9")
    assert run.plan.size == 84 + 20 and run.plan.flags == () and run.plan.tsps == ("10.0.0.1", V4)
    assert P.parse_ts(P.parse_ip(probes[0]).options) == ([], [])
    run, probes = _probing(V4, "tcp-syn", ip_ts="tsonly")
    assert run.plan.size == 80 and P.parse_ts(P.parse_ip(probes[0]).options) == ([], None)


def test_icmp_time_reply_keeps_its_stamps():
    run, _ = _probing(V4, "icmp-time", attempts=1)
    body = P.icmp_message(14, 0, (0x4D4E << 16) | 0, (7).to_bytes(4, "big") + (8).to_bytes(4, "big")
                          + (9).to_bytes(4, "big"))
    assert run.received(P.parse_ip(P.ipv4_header(V4, V4_SRC, 1, len(body)) + body), 9_000)
    res = run.result(start_ns=0, stop_reason=PingStop.DONE)
    r = res.replies[0]
    assert (r.tsreply.tso, r.tsreply.tsr, r.tsreply.tst) == (7, 8, 9) and res.nreplies == 1
    back = from_json(to_json(res))
    assert back.replies[0].tsreply == r.tsreply


@pytest.mark.parametrize("kwargs,match", [
    (dict(dst="::1", ip_rr=True), "IPv6 has no record-route"),
    (dict(dst="::1", ip_ts="tsonly"), "IPv6 has no"),
    (dict(dst="127.0.0.1", ip_rr=True, ip_ts="tsonly"), "cannot be combined"),
    (dict(dst="127.0.0.1", ip_rr=1), "ip_rr must be True or False"),
    (dict(dst="127.0.0.1", ip_rr=True, recordroute=False), "disagree"),
    (dict(dst="127.0.0.1", ip_ts="tsall"), "is not 'tsonly'"),
    (dict(dst="127.0.0.1", ip_ts=3), "ip_ts must be"),
    (dict(dst="127.0.0.1", ip_ts="tsprespec="), "1 to 4"),
    (dict(dst="127.0.0.1", ip_ts="tsprespec=1.1.1.1,1.1.1.2,1.1.1.3,1.1.1.4,1.1.1.5"), "1 to 4"),
    (dict(dst="127.0.0.1", ip_ts="tsprespec=::1"), "must be IPv4"),
    (dict(dst="127.0.0.1", ip_ts="tsonly=1.1.1.1"), "takes no addresses"),
    (dict(dst="127.0.0.1", method="icmp-time", size=39), "at least 40"),
    (dict(dst="127.0.0.1", method="udp-sport", sport=65535, attempts=2), "sport 65535 is too high"),
    (dict(dst="127.0.0.1", method="udp-dport", dport=65534, attempts=3), "dport 65534 is too high"),
    (dict(dst="127.0.0.1", method="tcp-syn", tcp_ack=5), "tcp_ack is for probes with the ACK flag"),
    (dict(dst="127.0.0.1", method="udp", tcp_seq=5), "tcp_seq/tcp_ack are for tcp"),
    (dict(dst="127.0.0.1", method="tcp-ack", tcp_ack=2**32), "tcp_ack"),
    (dict(dst="127.0.0.1", method="icmp-time", sport=1), "use icmp_id"),
])
def test_bad_option_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_ping(**kwargs)


def test_recordroute_is_ip_rr():
    assert plan_ping("127.0.0.1", recordroute=True).ip_rr
    assert plan_ping("127.0.0.1", recordroute=True, ip_rr=True).size == 124
    assert plan_ping("127.0.0.1", method="udp-sport", attempts=100).sport <= 65535 - 99


def test_options_survive_json_and_warts(tmp_path):
    """RR, tsonly / tsandaddr, prespecified addresses and timestamp replies
    written as scamper writes them (JSON keys "RR", "tsonly", "tsandaddr";
    warts read back by Debian's sc_warts2json to the same JSON)."""
    import json
    import shutil
    import subprocess

    from marionet.results import File, Ping, PingReply, PingTsReply, PingV4TS
    from marionet.results.warts_writer import WartsWriter

    def reply(i: int, **kw) -> PingReply:
        return PingReply(src=V4, attempt=i, tx_ns=1_700_000_000_000_000_000 + i, rtt_ns=50_000,
                         probe_ipid=1, reply_ipid=2, reply_ttl=61, reply_tos=0x20, reply_size=124,
                         icmp_type=0, icmp_code=0, **kw)
    pings = [
        Ping(dst=V4, src=V4_SRC, start_ns=1_700_000_000_000_000_000, ping_sent=1, probe_size=124,
             ttl=64, flags=("v4rr",), replies=[reply(0, v4rr=("10.0.0.1", V4))]),
        Ping(dst=V4, src=V4_SRC, start_ns=1_700_000_000_000_000_000, ping_sent=1, probe_size=124,
             ttl=64, flags=("tsonly",), replies=[reply(0, v4ts=PingV4TS((5, 6)))]),
        Ping(dst=V4, src=V4_SRC, start_ns=1_700_000_000_000_000_000, ping_sent=1, probe_size=104,
             ttl=64, probe_tsps=("10.0.0.1", V4),
             replies=[reply(0, v4ts=PingV4TS((5, 6), ("10.0.0.1", V4)))]),
        Ping(dst=V4, src=V4_SRC, method="icmp-time", start_ns=1_700_000_000_000_000_000, ping_sent=1,
             probe_size=84, ttl=64, replies=[reply(0, tsreply=PingTsReply(1, 2, 3))]),
    ]
    for p in pings:
        assert from_json(to_json(p)) == p
    d = to_json(pings[0])
    assert d["flags"] == ["v4rr"] and d["responses"][0]["RR"] == ["10.0.0.1", V4]
    assert to_json(pings[1])["responses"][0]["tsonly"] == [5, 6]
    assert to_json(pings[2])["responses"][0]["tsandaddr"] == [{"ip": "10.0.0.1", "ts": 5}, {"ip": V4, "ts": 6}]
    assert to_json(pings[2])["probe_tsps"] == ["10.0.0.1", V4]
    out = tmp_path / "o.warts"
    with open(out, "wb") as f:
        w = WartsWriter(f)
        for p in pings:
            w.write(p)
    back = [o for o in File(out) if isinstance(o, Ping)]
    assert [(r.v4rr, r.v4ts, r.tsreply, r.reply_tos) for p in back for r in p.replies] == \
        [(r.v4rr, r.v4ts, r.tsreply, r.reply_tos) for p in pings for r in p.replies]
    assert [p.flags for p in back] == [p.flags for p in pings]
    assert [p.probe_tsps for p in back] == [p.probe_tsps for p in pings]
    if shutil.which("sc_warts2json") is None:
        pytest.skip("sc_warts2json not installed")
    lines = subprocess.run(["sc_warts2json", str(out)], capture_output=True, text=True, timeout=30).stdout
    theirs = [json.loads(x) for x in lines.splitlines() if '"type":"ping"' in x]
    assert len(theirs) == 4
    for t, p in zip(theirs, pings):
        ours = to_json(p)
        for a, b in zip(t["responses"], ours["responses"]):
            for k in ("RR", "tsonly", "tsandaddr", "icmp_type", "reply_ttl", "reply_size"):
                assert a.get(k) == b.get(k), k
        assert t.get("flags") == ours.get("flags") and t.get("probe_tsps") == ours.get("probe_tsps")
