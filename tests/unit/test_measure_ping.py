"""marionet.measure.ping: parameter checks, the sans-I/O matcher, and real
pings over loopback (native and remote placements; the endpoint placement
is in test_primitives.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random

import pytest

from marionet.measure import probes as P
from marionet.measure.ping import PingProbing, ping, plan_ping
from marionet.results import PingStop, from_json, to_json

TARGETS = ["127.0.0.1", "::1"]
METHODS = ["icmp-echo", "udp", "tcp-syn"]


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
    assert p.ping_sent == attempts and p.nreplies == attempts and p.nloss == 0
    for r in p.replies:
        assert str(r.src) == dst and r.rtt_ns > 0 and r.rx_ns > r.tx_ns
        assert r.tx_ts_source == "kernel" and r.rx_ts_source == "kernel"
        assert r.reply_ttl == 64 and r.reply_size > 0
        if dst == "127.0.0.1":
            assert r.probe_ipid is not None and r.reply_ipid is not None
        if method == "tcp-syn":
            assert r.tcp_flags & (P.TCP_RST | P.TCP_ACK) == P.TCP_RST | P.TCP_ACK
        elif method == "udp":
            assert r.is_icmp_unreach_port()
        else:
            assert r.is_icmp_echo_reply()
    assert sorted(r.attempt for r in p.replies) == list(range(attempts))


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS)
async def test_native_ping(dst, method):
    from marionet.endpoint.local import native_session

    async with native_session() as s:
        p = await ping(s, dst, method=method, attempts=3, wait_probe=0.02)
        _check_replies(p, 3, dst, method)
        assert s.sockets == {}  # everything closed
        back = from_json(to_json(p))
        assert [r.rtt_ns for r in back.replies] == [r.rtt_ns for r in p.replies]


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS)
async def test_remote_ping(session, dst, method):
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
