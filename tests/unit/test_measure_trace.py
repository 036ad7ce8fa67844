"""marionet.measure.trace: parameter checks, the sans-I/O core (probe bytes,
matching synthetic replies, stop reasons) and real traces over loopback in
the native, remote and endpoint placements.  Lab paths are in
tests/integration/test_trace_lab.py."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import struct

import pytest

from marionet.measure import probes as P
from marionet.measure.trace import (TraceProbing, icmp_extensions, paris_word, plan_trace,
                                    trace)
from marionet.results import Trace, TraceStop, from_json, to_json

TARGETS = ["127.0.0.1", "::1"]
METHODS = ["udp-paris", "icmp-paris", "udp", "icmp", "tcp", "tcp-ack"]

SRC4, DST4 = "192.0.2.1", "198.51.100.9"
SRC6, DST6 = "2001:db8::1", "2001:db8:ff::9"
R = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
R6 = ["2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"]


# ---------------------------------------------------------------- parameters
@pytest.mark.parametrize("dst,method,size", [
    ("127.0.0.1", "udp-paris", 44), ("::1", "udp-paris", 60),
    ("127.0.0.1", "icmp-paris", 44), ("::1", "icmp", 60),
    ("127.0.0.1", "tcp", 40), ("::1", "tcp", 60),
])
def test_default_sizes_are_scampers(dst, method, size):
    p = plan_trace(dst, method=method)
    assert p.size == size
    assert (p.attempts, p.gaplimit, p.hoplimit, p.firsthop, p.wait_timeout_ns) == (2, 5, 0, 1, 5 * 10**9)
    assert p.max_ttl == 255
    if method.startswith("udp"):
        assert p.dport == 33435 and 0x8000 <= p.sport <= 0xFFFF
    elif method == "tcp":
        assert p.dport == 80
    else:
        assert p.sport == 0 and 1 <= p.icmp_id <= 0xFFFF


def test_scamper_method_names_accepted_and_written():
    assert plan_trace("::1", method="icmp-echo-paris").method == "icmp-paris"
    assert plan_trace("::1", method="ICMP-echo").method == "icmp"
    run = TraceProbing(plan_trace(DST4, method="icmp-paris", icmp_sum=77), SRC4)
    t = run.result(start_ns=1)
    assert t.method == "icmp-echo-paris" and t.icmp_sum == 77 and t.sport is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(dst="nope"), "not an IPv4 or IPv6 address"),
    (dict(dst="ff02::1"), "multicast"),
    (dict(dst="127.0.0.1", method="smoke-signal"), "unknown trace method"),
    (dict(dst="127.0.0.1", method="tcp-syn"), "method"),
    (dict(dst="127.0.0.1", confidence=90), "confidence 90"),
    (dict(dst="127.0.0.1", confidence=100), "confidence"),
    (dict(dst="127.0.0.1", confidence=95, all_attempts=True), "exclude"),
    (dict(dst="127.0.0.1", confidence=99, squeries=4), "squeries 4"),
    (dict(dst="127.0.0.1", attempts=0), "attempts"),
    (dict(dst="127.0.0.1", attempts=21), "attempts"),
    (dict(dst="127.0.0.1", firsthop=0), "firsthop"),
    (dict(dst="127.0.0.1", firsthop=5, hoplimit=4), "below firsthop"),
    (dict(dst="127.0.0.1", hoplimit=256), "hoplimit"),
    (dict(dst="127.0.0.1", gaplimit=0), "gaplimit"),
    (dict(dst="127.0.0.1", wait_timeout=0), "wait_timeout"),
    (dict(dst="127.0.0.1", wait_probe=-1), "wait_probe"),
    (dict(dst="127.0.0.1", all_attempts=1), "all_attempts"),
    (dict(dst="127.0.0.1", method="icmp", sport=5), "sport/dport"),
    (dict(dst="127.0.0.1", icmp_id=5), "icmp_id is for icmp"),
    (dict(dst="127.0.0.1", icmp_sum=5), "icmp_sum is for icmp-paris"),
    (dict(dst="127.0.0.1", method="icmp-paris", icmp_sum=0xFFFF), "icmp_sum"),
    (dict(dst="127.0.0.1", payload=b"x"), "at least 2 bytes"),
    (dict(dst="127.0.0.1", size=29), "too small"),
    (dict(dst="127.0.0.1", size=40, payload=b"xyz"), "inconsistent"),
    (dict(dst="127.0.0.1", payload="zz"), "hex"),
    (dict(dst="127.0.0.1", src="::1"), "IPv6 but destination"),
    (dict(dst="127.0.0.1", tos=300), "tos"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_trace(**kwargs)


async def test_bad_input_sends_nothing():
    """ValueError comes before any socket is opened (no root needed)."""
    from marionet.endpoint.local import native_session

    async with native_session() as s:
        for kw in (dict(dst="nope"), dict(dst="127.0.0.1", method="x"), dict(dst="::1", gaplimit=-1)):
            with pytest.raises(ValueError):
                await trace(s, **kw)
        assert s.sockets == {}


# ------------------------------------------------------------- probe bytes
def test_paris_word_steers_any_checksum():
    rnd = random.Random(3)
    for _ in range(3000):
        body = bytearray(rnd.randbytes(2 * rnd.randrange(2, 20)))
        body[4:6] = b"\0\0"
        target = rnd.randrange(1, 0xFFFF)
        body[4:6] = struct.pack("!H", paris_word(P.checksum(bytes(body)), target))
        assert P.checksum(bytes(body)) == target


@pytest.mark.parametrize("v6", [False, True])
def test_udp_paris_constant_ports_varying_checksum(v6):
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    run = TraceProbing(plan_trace(dst, sport=40000, attempts=1), src, ipid_base=10)
    seen = []
    for _ in range(5):
        pid, ttl, data = run.probe(0)
        seg = data if v6 else data[20:]
        if not v6:
            ip = P.parse_ip(data)
            assert ip.ttl == ttl == pid + 1 and ip.ipid == 11 + pid and ip.size == 44
        sport, dport, _len, csum = struct.unpack_from("!HHHH", seg)
        assert (sport, dport) == (40000, 33435)
        # the checksum is valid (recompute over the pseudo-header)
        again = P.udp_segment(src, dst, sport, dport, seg[8:])
        assert again == seg
        seen.append(csum)
        run.expired(pid)
    assert seen == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("v6", [False, True])
def test_icmp_paris_constant_checksum_varying_seq(v6):
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    run = TraceProbing(plan_trace(dst, method="icmp-paris", icmp_id=0x1234, icmp_sum=0xBEEF), src)
    seqs = []
    for _ in range(6):
        pid, _ttl, data = run.probe(0)
        msg = data if v6 else data[20:]
        typ, _code, csum, ident, seq = struct.unpack_from("!BBHHH", msg)
        assert (typ, csum, ident) == (128 if v6 else 8, 0xBEEF, 0x1234)
        again = P.icmp_echo(ident, seq, msg[8:], src=src, dst=dst, v6=v6)
        assert again == msg  # a correct checksum
        seqs.append(seq)
        run.expired(pid)
    assert len(set(seqs)) == 6


def test_classic_udp_increments_dport_and_tcp_is_a_syn():
    run = TraceProbing(plan_trace(DST4, method="udp", dport=33434, attempts=1), SRC4)
    dports = []
    for _ in range(3):
        pid, _ttl, data = run.probe(0)
        dports.append(P.parse_ip(data).udp.dport)
        run.expired(pid)
    assert dports == [33434, 33435, 33436]
    run = TraceProbing(plan_trace(DST6, method="tcp", sport=40000, dport=443), SRC6, seq_base=100)
    _pid, _ttl, seg = run.probe(0)
    t = P.parse_tcp(seg)
    assert (t.sport, t.dport, t.flags, t.seq) == (40000, 443, P.TCP_SYN, 100)


# ------------------------------------------------------- synthetic replies
def _v4(src: str, dst: str, body: bytes, proto: int = 1, ttl: int = 250, ipid: int = 4242) -> P.IPPacket:
    return P.parse_ip(P.ipv4_header(src, dst, proto, len(body), ttl=ttl, ipid=ipid) + body)


def _v6(src: str, dst: str, body: bytes, nxt: int = 58, hlim: int = 250) -> P.IPPacket:
    return P.parse_ip(P.ipv6_header(src, dst, nxt, len(body), hlim=hlim) + body)


def _te4(router: str, probe: bytes, ttl_left: int = 1, typ: int = 11, code: int = 0, extra: bytes = b"") -> P.IPPacket:
    """A router's ICMP error quoting the probe's IP header + 8 bytes (RFC 792),
    with the quoted TTL the router saw."""
    quote = bytearray(probe[:28])
    quote[8] = ttl_left
    quote[10:12] = b"\0\0"
    quote[10:12] = struct.pack("!H", P.checksum(bytes(quote[:20])))
    return _v4(router, SRC4, P.icmp_message(typ, code, 0, bytes(quote) + extra))


def _quote6(nxt: int, transport: bytes, hlim: int = 1) -> bytes:
    return P.ipv6_header(SRC6, DST6, nxt, len(transport), hlim=hlim) + transport


def _err6(router: str, nxt: int, transport: bytes, typ: int = 3, code: int = 0) -> P.IPPacket:
    msg = P.icmp_message(typ, code, 0, _quote6(nxt, transport), src=router, dst=SRC6, v6=True)
    return _v6(router, SRC6, msg)


def _run(dst: str = DST4, src: str = SRC4, **kw) -> TraceProbing:
    kw.setdefault("attempts", 2)
    if kw.get("method", "udp-paris") not in ("icmp", "icmp-paris"):
        kw.setdefault("sport", 40000)
    return TraceProbing(plan_trace(dst, **kw), src, ipid_base=1000)


def _send(run: TraceProbing, t: int) -> tuple[int, int, bytes]:
    pid, ttl, data = run.probe(t)
    run.sent(pid, t + 10, "kernel")
    return pid, ttl, data


def test_udp_paris_v4_path_completes_with_hop_fields():
    run = _run()
    t = 1_000_000
    for k in range(3):
        pid, ttl, data = _send(run, t)
        assert ttl == k + 1
        assert run.received(_te4(R[k], data), t + 500 + k)
        t += 1_000_000
    pid, ttl, data = _send(run, t)
    unreach = _v4(DST4, SRC4, P.icmp_message(3, 3, 0, data[:28]), ttl=61, ipid=77)
    assert run.received(unreach, t + 900)
    assert run.done and run.stop_reason == TraceStop.COMPLETED
    res = run.result(start_ns=1)
    assert res.hop_count == 4 and res.probe_count == 4 and res.is_completed()
    assert [str(h.src) for h in res.hops()] == R[:3] + [DST4]
    h = res.hop(1)
    assert (h.probe_ttl, h.probe_id, h.probe_size, h.tx_ns, h.rtt_ns) == (1, 1, 44, 1_000_010, 490)
    assert (h.icmp_type, h.icmp_code, h.icmp_q_ttl, h.icmp_q_ipl, h.icmp_q_tos) == (11, 0, 1, 44, 0)
    assert (h.reply_ttl, h.reply_ipid, h.tx_ts_source) == (250, 4242, "kernel")
    last = res.hop(4)
    assert last.is_icmp_unreach_port() and last.reply_ttl == 61 and last.reply_ipid == 77
    back = from_json(to_json(res))
    assert [str(h.src) for h in back.hops()] == [str(h.src) for h in res.hops()]


def test_second_attempt_answers_and_late_replies_are_dropped():
    run = _run(attempts=3, wait_timeout=1.0)
    pid0, _, d0 = _send(run, 0)
    run.expired(pid0)
    pid1, ttl, d1 = _send(run, 2 * 10**9)
    assert ttl == 1 and run.probes[pid1].attempt == 2
    # a reply to attempt 1 after its wait: not a reply
    assert not run.received(_te4(R[0], d0), 1_500_000_000)
    assert run.received(_te4(R[0], d1), 2_000_100_000)
    assert run.ttl == 2 and run.inflight is None
    res = run.result(start_ns=0)
    assert [(h.probe_ttl, h.probe_id) for h in res.hop_records] == [(1, 2)]


def test_all_attempts_sends_every_attempt():
    run = _run(attempts=3, all_attempts=True)
    for i in range(3):
        pid, ttl, data = _send(run, i)
        assert ttl == 1
        assert run.received(_te4(R[0], data), i + 100)
    assert run.ttl == 2
    assert [h.probe_id for h in run.result(start_ns=0).hop_records] == [1, 2, 3]


def test_gaplimit_and_hoplimit():
    run = _run(gaplimit=3, attempts=2)
    while not run.done:
        pid, _, _ = _send(run, 0)
        run.expired(pid)
    assert run.stop_reason == TraceStop.GAPLIMIT and run.ttl == 3 and len(run.probes) == 6
    res = run.result(start_ns=0)
    assert res.hop_count == 3 and list(res.hops()) == [None, None, None]

    run = _run(hoplimit=2, firsthop=1, attempts=1)
    for k in range(2):
        pid, _, data = _send(run, 0)
        run.received(_te4(R[k], data), 5)
    assert run.stop_reason == TraceStop.HOPLIMIT and run.result(start_ns=0).hop_count == 2


def test_silent_hop_then_answers_resets_the_gap():
    run = _run(gaplimit=2, attempts=1)
    pid, _, d = _send(run, 0)
    run.received(_te4(R[0], d), 5)
    pid, _, _ = _send(run, 0)
    run.expired(pid)  # hop 2 silent
    pid, _, d = _send(run, 0)
    run.received(_te4(R[2], d), 5)
    pid, _, _ = _send(run, 0)
    run.expired(pid)
    assert not run.done  # gap back to 1 after hop 3 answered
    res = run.result(start_ns=0)
    assert [None if h is None else str(h.src) for h in res.hops()] == [R[0], None, R[2], None]


def test_unreach_icmp_and_loop_stop_reasons():
    run = _run()
    pid, _, d = _send(run, 0)
    run.received(_te4(R[0], d, typ=3, code=1), 5)  # host unreachable from a router
    assert run.stop_reason == TraceStop.UNREACH and run.stop_data == 1

    run = _run()
    pid, _, d = _send(run, 0)
    run.received(_te4(R[0], d, typ=12, code=0), 5)  # parameter problem
    assert run.stop_reason == TraceStop.ICMP and run.stop_data == 12

    run = _run(attempts=1)
    for router in (R[0], R[1], R[1], R[2], R[1]):  # R1 twice in a row is not a loop; later it is
        pid, _, d = _send(run, 0)
        run.received(_te4(router, d), 5)
    assert run.stop_reason == TraceStop.LOOP and run.ttl == 5

    run = _run(attempts=1, loops=0, hoplimit=6)
    for router in (R[0], R[1], R[0], R[1], R[0], R[1]):
        pid, _, d = _send(run, 0)
        run.received(_te4(router, d), 5)
    assert run.stop_reason == TraceStop.HOPLIMIT


def test_port_unreachable_from_a_router_is_unreach_not_completed():
    run = _run()
    _pid, _, d = _send(run, 0)
    run.received(_te4(R[0], d, typ=3, code=3), 5)
    assert run.stop_reason == TraceStop.UNREACH and run.stop_data == 3


def test_strangers_are_not_matched():
    run = _run()
    _pid, _, d = _send(run, 0)
    other = bytearray(d)
    other[20:22] = struct.pack("!H", 40001)  # another sport
    other[4:6] = b"\0\0"  # another IP-ID
    assert not run.received(_te4(R[0], bytes(other)), 5)
    wrong_dst = bytearray(d)
    wrong_dst[16:20] = socket.inet_aton("198.51.100.10")
    assert not run.received(_te4(R[0], bytes(wrong_dst)), 5)
    echo = _v4(DST4, SRC4, P.icmp_echo(1, 0, b""))
    assert not run.received(echo, 5)
    assert run.inflight == 0 and not run.got


def test_v6_udp_paris_matched_by_checksum_without_ipid():
    run = _run(DST6, SRC6, attempts=1)
    for k in range(2):
        _pid, _ttl, seg = _send(run, 0)
        assert run.received(_err6(R6[k], 17, seg), 7)
    _pid, _ttl, seg = _send(run, 0)
    assert run.received(_err6(DST6, 17, seg, typ=1, code=4), 9)
    assert run.stop_reason == TraceStop.COMPLETED
    res = run.result(start_ns=0)
    assert [str(h.src) for h in res.hops()] == R6[:2] + [DST6]
    assert res.hop(1).reply_ipid is None and res.hop(1).icmp_q_ttl == 1 and res.hop(1).icmp_q_ipl == 60
    # a quote of a probe we never sent (checksum unknown) does not match
    seg = P.udp_segment(SRC6, DST6, 40000, 33435, b"\1\2" + bytes(10))
    assert not run.received(_err6(R6[0], 17, seg), 9)


def test_v6_icmp_by_seq_and_echo_reply_completes():
    run = _run(DST6, SRC6, method="icmp-paris", icmp_id=77, attempts=1)
    _pid, _, msg = _send(run, 0)
    assert run.received(_err6(R6[0], 58, msg), 5)
    _pid, _, msg = _send(run, 0)
    seq = struct.unpack_from("!H", msg, 6)[0]
    reply = P.icmp_message(129, 0, (77 << 16) | seq, msg[8:], src=DST6, dst=SRC6, v6=True)
    assert run.received(_v6(DST6, SRC6, reply), 6)
    assert run.stop_reason == TraceStop.COMPLETED
    assert run.result(start_ns=0).hop(2).is_icmp_echo_reply()


@pytest.mark.parametrize("flags", [P.TCP_RST | P.TCP_ACK, P.TCP_SYN | P.TCP_ACK])
def test_tcp_reply_from_destination_completes(flags):
    run = TraceProbing(plan_trace(DST4, method="tcp", sport=40000, dport=80, attempts=1), SRC4,
                       seq_base=2**32 - 1)
    _pid, _, d = _send(run, 0)
    assert run.received(_te4(R[0], d), 5)  # matched by IP-ID; quoted seq is ours too
    _pid, _, d = _send(run, 0)
    seg = P.tcp_segment(DST4, SRC4, 80, 40000, ack=1, flags=flags)  # seq base + 1 wraps: ack = 0 + 1
    assert run.received(_v4(DST4, SRC4, seg, proto=6), 9)
    assert run.stop_reason == TraceStop.COMPLETED
    h = run.result(start_ns=0).hop(2)
    assert h.tcp_flags == flags and h.is_tcp() and h.probe_size == 40
    # our own kernel's RST goes the other way: not ours
    mine = P.tcp_segment(SRC4, DST4, 40000, 80, flags=P.TCP_RST)
    assert not run.received(_v4(SRC4, DST4, mine, proto=6), 9)


@pytest.mark.parametrize("dst,src", [(DST4, SRC4), (DST6, SRC6)])
def test_tcp_ack_constant_ports_and_the_rst_names_its_probe(dst, src):
    run = TraceProbing(plan_trace(dst, method="tcp-ack", sport=40000, attempts=2), src, seq_base=500)
    assert run.plan.dport == 80 and run.plan.size == (40 if dst == DST4 else 60)
    segs = []
    for _ in range(2):
        pid, _ttl, data = run.probe(0)
        run.sent(pid, 10, "kernel")
        seg = P.parse_tcp(data[20:] if dst == DST4 else data)
        segs.append(seg)
        run.expired(pid)
    assert [(t.sport, t.dport, t.flags) for t in segs] == [(40000, 80, P.TCP_ACK)] * 2
    assert [(t.seq, t.ack) for t in segs] == [(500, 500), (501, 501)]
    pid, ttl, _ = run.probe(0)
    run.sent(pid, 20, "kernel")
    # RST for the attempt-1 probe at TTL 2 (seq 502 = its ack); from the destination
    rst = P.tcp_segment(dst, src, 80, 40000, seq=502, flags=P.TCP_RST)
    pkt = _v4(dst, src, rst, proto=6) if dst == DST4 else _v6(dst, src, rst, nxt=6)
    assert run.received(pkt, 30)
    assert run.stop_reason == TraceStop.COMPLETED
    res = run.result(start_ns=0)
    assert res.method == "tcp-ack" and [str(h.src) if h else None for h in res.hops()] == [None, dst]
    h = res.hop(2)
    assert h.tcp_flags == P.TCP_RST and h.is_tcp() and h.probe_id == 1 and h.rtt_ns == 10
    assert from_json(to_json(res)).method == "tcp-ack"


def _confidence_hop(run: TraceProbing, answer) -> list[int]:
    """Probe the current TTL until the trace moves on; ``answer(i, data)`` gives
    the reply to the i-th probe (or None: it times out).  TTLs probed, in order."""
    ttl0, ttls, i = run.ttl, [], 0
    while not run.done and run.ttl == ttl0:
        pid, ttl, data = _send(run, i)
        ttls.append(ttl)
        pkt = answer(i, data)
        if pkt is None:
            run.expired(pid)
        else:
            assert run.received(pkt, i + 50)
        i += 1
    return ttls


@pytest.mark.parametrize("confidence,k1,k2", [(95, 6, 11), (99, 8, 15)])
def test_confidence_probes_per_hop_as_scampers_table(confidence, k1, k2):
    """One interface: k(2) probes; a second one appears: k(3); a silent hop gets
    k(2) probes too (attempts is not consulted); the destination as well."""
    run = _run(confidence=confidence, attempts=1)
    assert len(_confidence_hop(run, lambda i, d: _te4(R[0], d))) == k1
    # a load balancer: the second interface answers from the 2nd probe on
    assert len(_confidence_hop(run, lambda i, d: _te4(R[1 + (i % 2)], d))) == k2
    assert len(_confidence_hop(run, lambda i, d: None)) == k1
    port = _confidence_hop(run, lambda i, d: _v4(DST4, SRC4, P.icmp_message(3, 3, 0, d[:28])))
    assert len(port) == k1 and run.stop_reason == TraceStop.COMPLETED
    res = run.result(start_ns=0)
    assert res.confidence == confidence and res.probe_count == 3 * k1 + k2
    assert {str(h.src) for h in res.hop_records if h.probe_ttl == 2} == {R[1], R[2]}
    assert [h.probe_id for h in res.hop_records if h.probe_ttl == 1] == list(range(1, k1 + 1))
    assert res.hop(3) is None and len([h for h in res.hop_records if h.probe_ttl == 4]) == k1


def test_confidence_stops_probing_a_hop_past_the_table():
    """Past 25 interfaces scamper's table ends: the hop is done at once."""
    run = _run(confidence=95)
    routers = [f"203.0.113.{k}" for k in range(1, 40)]
    sent = _confidence_hop(run, lambda i, d: _te4(routers[i], d))
    # n reaches 26 after the 25th new interface: no more probes
    assert len(sent) == 25 and run.ttl == 2


def test_confidence_gaplimit_counts_silent_hops_after_their_probes():
    run = _run(confidence=95, gaplimit=2)
    while not run.done:
        pid, _, _ = _send(run, 0)
        run.expired(pid)
    assert run.stop_reason == TraceStop.GAPLIMIT and len(run.probes) == 12
    plan = plan_trace(DST4, confidence=99, gaplimit=3, wait_timeout=5)
    with pytest.raises(ValueError, match="confidence 99: 8 probes"):
        plan.check_task(60)
    plan.check_task(3 * 8 * 5)


def test_mpls_extension_parsed():
    """RFC 4884/4950: a 128-byte padded quote, length field set, MPLS stack."""
    run = _run(attempts=1)
    _pid, _, d = _send(run, 0)
    quote = bytearray(d[:28])
    quote[8] = 1
    quote += bytes(128 - len(quote))
    labels = struct.pack("!II", (16005 << 12) | (0 << 9) | (0 << 8) | 1, (24001 << 12) | (5 << 9) | (1 << 8) | 254)
    obj = struct.pack("!HBB", 4 + len(labels), 1, 1) + labels
    exthdr = struct.pack("!BBH", 0x20, 0, 0)
    ext = exthdr[:2] + struct.pack("!H", P.checksum(exthdr + obj)) + obj
    msg = P.icmp_message(11, 0, (128 // 4) << 16, bytes(quote) + ext)  # length in byte 5
    assert run.received(_v4(R[0], SRC4, msg), 5)
    h = run.result(start_ns=0).hop(1)
    assert [(m.label, m.exp, m.s, m.ttl) for m in h.mpls_labels] == [(16005, 0, 0, 1), (24001, 5, 1, 254)]
    # the same without the length field (pre-RFC 4884 routers): still found
    msg0 = P.icmp_message(11, 0, 0, bytes(quote) + ext)
    assert [e.cn for e in icmp_extensions(msg0, False)] == [1]
    assert icmp_extensions(P.icmp_message(11, 0, 0, bytes(quote)), False) == []


def test_matcher_never_crashes_on_random_packets():
    for dst, src in ((DST4, SRC4), (DST6, SRC6)):
        for method in METHODS:
            run = TraceProbing(plan_trace(dst, method=method), src)
            run.probe(0)
            rnd = random.Random(11)
            first = 0x45 if dst == DST4 else 0x60
            for _ in range(1500):
                pkt = P.parse_packet(bytes([first]) + rnd.randbytes(rnd.randrange(0, 120)))
                if pkt is not None:
                    run.received(pkt, 1)
                    icmp_extensions(pkt.payload, dst == DST6)


# ----------------------------------------------------------- real traces
def _check_loopback(t: Trace, dst: str, method: str) -> None:
    assert t.stop_reason == TraceStop.COMPLETED, t.extra
    assert t.hop_count == 1 and t.probe_count == 1
    (h,) = list(t.hops())
    assert str(h.src) == dst and h.probe_ttl == 1 and h.probe_id == 1
    assert h.rtt_ns > 0 and h.tx_ts_source == "kernel" and h.rx_ts_source == "kernel"
    if method == "tcp":
        assert h.tcp_flags & (P.TCP_RST | P.TCP_ACK) == P.TCP_RST | P.TCP_ACK
    elif method == "tcp-ack":
        assert h.tcp_flags == P.TCP_RST  # a bare RST answers a stray ACK
    elif method.startswith("udp"):
        assert h.is_icmp_unreach_port() and h.icmp_q_ttl == 1 and h.icmp_q_ipl == t.probe_size
    else:
        assert h.is_icmp_echo_reply()


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS)
async def test_native_trace(dst, method):
    from marionet.endpoint.local import native_session

    async with native_session() as s:
        t = await trace(s, dst, method=method)
        _check_loopback(t, dst, method)
        assert s.sockets == {}
        back = from_json(to_json(t))
        assert [h.rtt_ns // 1000 for h in back.hop_records] == [h.rtt_ns // 1000 for h in t.hop_records]


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS)
async def test_remote_trace(session, dst, method):
    t = await trace(session, dst, method=method)
    _check_loopback(t, dst, method)
    assert t.vp == "test-ep" and session.sockets == {}


async def _task_trace(session, params: dict) -> Trace:
    tid = await session.task("trace", params)

    async def wait():
        while True:
            n = await session.next_notification(20)
            assert n is not None, f"no result for task {tid}"
            if n.kind == "taskres" and n.task == tid:
                return n
    n = await asyncio.wait_for(wait(), 20)
    assert n.error is None, n.error
    return from_json(n.result)


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", ["udp-paris", "icmp-paris", "tcp"])
async def test_endpoint_trace_congruent_with_native_and_remote(session, dst, method):
    from marionet.endpoint.local import native_session

    params = {"dst": dst, "method": method}
    async with native_session() as ns:
        native = await trace(ns, **params)
    shapes = []
    for t in (native, await _task_trace(session, params), await trace(session, **params)):
        _check_loopback(t, dst, method)
        shapes.append([(str(h.src), h.probe_ttl, h.icmp_type, h.icmp_code, h.tcp_flags, h.reply_size)
                       for h in t.hop_records])
    assert shapes[0] == shapes[1] == shapes[2]


async def test_endpoint_refuses_bad_trace_params(session):
    from marionet.client.errors import EndpointError

    with pytest.raises(EndpointError, match="bad-params.*unknown trace method"):
        await session.task("trace", {"dst": "::1", "method": "nope"})
    with pytest.raises(EndpointError, match="bad-params.*unknown trace parameter.*atempts"):
        await session.task("trace", {"dst": "::1", "atempts": 1})


@pytest.fixture
def silent_udp_port():
    """A bound UDP port on loopback that never answers: no port unreachable,
    so every probe to it goes unanswered (real gaps without leaving the host)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)]
    socks[0].bind(("127.0.0.1", 0))
    port = socks[0].getsockname()[1]
    socks[1].bind(("::1", port))
    yield port
    for s in socks:
        s.close()


@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
async def test_real_gaplimit(session, silent_udp_port, dst):
    t = await trace(session, dst, method="udp-paris", dport=silent_udp_port, gaplimit=3, attempts=2,
                    wait_timeout=0.1)
    assert t.stop_reason == TraceStop.GAPLIMIT and t.hop_count == 3 and t.probe_count == 6
    assert list(t.hops()) == [None, None, None] and session.sockets == {}


@pytest.mark.root
async def test_halt_gives_partial_result(session, silent_udp_port):
    halt = asyncio.Event()
    task = asyncio.create_task(trace(session, "127.0.0.1", method="udp-paris", dport=silent_udp_port, attempts=1,
                                     gaplimit=100, wait_timeout=0.05, halt=halt))
    await asyncio.sleep(0.4)
    halt.set()
    t = await asyncio.wait_for(task, 5)
    assert t.stop_reason == TraceStop.HALTED and 2 <= t.hop_count < 100
    assert session.sockets == {}


@pytest.mark.root
async def test_cancel_closes_sockets(session, silent_udp_port):
    task = asyncio.create_task(trace(session, "::1", dport=silent_udp_port, wait_timeout=0.05, gaplimit=100))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert session.sockets == {}
    t = await trace(session, "::1")  # the session is still usable
    assert t.is_completed()


# ---------------------------------------------------------------- squeries
def _unreach_port(data: bytes) -> P.IPPacket:
    return _v4(DST4, SRC4, P.icmp_message(3, 3, 0, data[:28]), ttl=61, ipid=77)


def test_squeries_bounds_checked():
    assert plan_trace(DST4).squeries == 1
    assert plan_trace(DST4, squeries=16).squeries == 16
    for bad in (0, 256, "4", 2.5):
        with pytest.raises(ValueError, match="squeries"):
            plan_trace(DST4, squeries=bad)


def test_squeries_keeps_a_window_of_ttls_in_flight():
    run = _run(squeries=3, attempts=1)
    sent = [_send(run, 0) for _ in range(3)]
    assert [ttl for _, ttl, _ in sent] == [1, 2, 3]
    assert not run.wants_probe()  # the window is full
    assert run.inflight_pids() == [0, 1, 2] and run.inflight == 0
    # TTL 2 answers first: nothing is decided until TTL 1 is
    assert run.received(_te4(R[1], sent[1][2]), 100)
    assert run.ttl == 1 and not run.wants_probe()
    assert run.received(_te4(R[0], sent[0][2]), 200)
    assert run.ttl == 3 and run.inflight_pids() == [2]  # 1 and 2 decided, in order
    assert [ttl for _, ttl, _ in (_send(run, 0), _send(run, 0))] == [4, 5]
    assert not run.wants_probe()


def test_squeries_stops_at_the_destination_and_drops_replies_past_it():
    run = _run(squeries=4, attempts=1)
    sent = [_send(run, 0) for _ in range(4)]
    # the destination is 3 hops away: TTL 3 and TTL 4 both reach it
    assert run.received(_unreach_port(sent[3][2]), 100)
    assert run.received(_unreach_port(sent[2][2]), 110)
    assert not run.done  # TTLs 1 and 2 still out
    run.received(_te4(R[0], sent[0][2]), 120)
    run.expired(sent[1][0])  # hop 2 silent
    assert run.done and run.stop_reason == TraceStop.COMPLETED and run.ttl == 3
    res = run.result(start_ns=0)
    assert [None if h is None else str(h.src) for h in res.hops()] == [R[0], None, DST4]
    assert res.hop_count == 3 and res.probe_count == 4
    assert res.extra["replies_past_stop"] == 1 and res.extra["squeries"] == 4


def test_squeries_retries_a_silent_ttl_while_later_ones_are_out():
    run = _run(squeries=2, attempts=2, gaplimit=5)
    p1, t1, d1 = _send(run, 0)
    p2, t2, d2 = _send(run, 0)
    assert (t1, t2) == (1, 2)
    run.expired(p1)  # TTL 1's first attempt times out: its second goes out next
    p3, t3, d3 = _send(run, 0)
    assert t3 == 1 and run.probes[p3].attempt == 2
    run.received(_te4(R[1], d2), 50)
    run.received(_te4(R[0], d3), 60)
    assert run.ttl == 3 and not run.done
    res = run.result(start_ns=0)
    assert [(h.probe_ttl, h.probe_id, str(h.src)) for h in res.hop_records] == [(1, 2, R[0]), (2, 1, R[1])]


def test_squeries_gaplimit_counts_silent_ttls_in_order():
    run = _run(squeries=5, attempts=1, gaplimit=3)
    sent = [_send(run, 0) for _ in range(5)]
    for pid, _, _ in reversed(sent):  # expiries arrive highest TTL first
        run.expired(pid)
    assert run.done and run.stop_reason == TraceStop.GAPLIMIT and run.ttl == 3
    res = run.result(start_ns=0)
    assert res.hop_count == 3 and list(res.hops()) == [None, None, None] and res.probe_count == 5


@pytest.mark.parametrize("squeries", [1, 4])
async def test_loopback_trace_with_squeries(squeries):
    from marionet.endpoint.local import native_session

    async with native_session() as s:
        res = await trace(s, "127.0.0.1", squeries=squeries, wait_timeout=1)
    assert res.is_completed() and [str(h.src) for h in res.hops()] == ["127.0.0.1"]
    assert res.hop_count == 1 and res.probe_count == squeries
    # the probes queued past TTL 1 were sent; how many answers came back before
    # the sockets closed depends on timing, and those are left out
    assert 0 <= res.extra.get("replies_past_stop", 0) <= squeries - 1
    assert res.extra.get("squeries", 1) == squeries


# ------------------------------------------- the lab's emulated MPLS routers
def test_emulated_lsr_sends_rfc4950_label_stacks_that_we_parse():
    """The alias-router emulator's ``mpls_hops`` (the lab's MPLS ground truth):
    RFC 4884 length field, 128-byte quote with TTL 1, version-2 extension with
    a valid checksum, one MPLS object; IPv4 and IPv6; a label-less hop sends a
    classic time exceeded, a hop without an address of the family is silent."""
    from marionet.lab.aliasrouter import AliasConfigError, AliasEmulator, config_to_dict, load_config

    cfg = load_config({"router": [{"name": "a", "addresses": ["10.200.0.1", "fd00:c8::1"], "mpls_hops": [
        {"addresses": ["10.200.0.201", "fd00:c8::201"], "labels": [{"label": 16001, "exp": 3}, {"label": 7}]},
        {"addresses": ["10.200.0.202"]}]}]})
    assert load_config(config_to_dict(cfg)) == cfg
    labels = cfg.routers[0].mpls_hops[0].labels
    assert [(e.label, e.exp, e.s, e.ttl) for e in labels] == [(16001, 3, 0, 1), (7, 0, 1, 1)]  # s=1 at the bottom
    emu = AliasEmulator(cfg)
    for dst, src in (("10.200.0.1", SRC4), ("fd00:c8::1", SRC6)):
        v6 = ":" in dst
        run = TraceProbing(plan_trace(dst, attempts=1, sport=40000), src)
        for ttl in (1, 2, 3):
            pid, t, data = run.probe(0)
            run.sent(pid, 1, "kernel")
            if v6:
                data = P.ipv6_header(src, dst, 17, len(data), hlim=t) + data
            reply = emu.handle(data)
            if reply is None:
                assert v6 and ttl == 2
                run.expired(pid)
                continue
            pkt = P.parse_ip(reply)
            assert run.received(pkt, 5)
            if ttl == 1:
                msg = pkt.payload
                assert msg[4 if v6 else 5] == (16 if v6 else 32)  # 128 bytes, in 8- / 4-byte words
                quote, ext = msg[8:136], msg[136:]
                assert quote[7 if v6 else 8] == 1 and ext[0] == 0x20 and P.checksum(ext) == 0
        res = run.result(start_ns=0)
        assert res.is_completed()
        h1 = res.hop(1)
        assert str(h1.src) == ("fd00:c8::201" if v6 else "10.200.0.201") and h1.is_icmp_ttl_exp()
        assert [(m.label, m.exp, m.s, m.ttl) for m in h1.mpls_labels] == [(16001, 3, 0, 1), (7, 0, 1, 1)]
        assert h1.icmpext[0].dl == 8 and h1.icmp_q_ttl == 1 and h1.icmp_q_ipl == res.probe_size
        if v6:
            assert res.hop(2) is None  # that hop has no IPv6 address: silent
        else:
            assert res.hop(2).icmpext == [] and str(res.hop(2).src) == "10.200.0.202"
    for bad, match in (({"label": 2**20}, "label"), ({"label": 1, "exp": 8}, "exp"), ({"label": 1, "s": 2}, "s"),
                       ({"label": 1, "ttl": 256}, "ttl"), ({"exp": 1}, "label"), ({"label": 1, "x": 1}, "unknown")):
        with pytest.raises(AliasConfigError, match=match):
            load_config({"router": [{"addresses": ["10.200.0.1"],
                                     "mpls_hops": [{"addresses": ["10.200.0.9"], "labels": [bad]}]}]})
    with pytest.raises(AliasConfigError, match="already an address"):
        load_config({"router": [{"addresses": ["10.200.0.1"], "mpls_hops": [{"addresses": ["10.200.0.1"]}]}]})
    with pytest.raises(AliasConfigError, match="one address per family"):
        load_config({"router": [{"addresses": ["10.200.0.1"],
                                 "mpls_hops": [{"addresses": ["10.0.0.1", "10.0.0.2"]}]}]})


@pytest.mark.skipif(shutil.which("sc_wartsdump") is None, reason="needs Debian's scamper tools")
@pytest.mark.parametrize("kw,want", [
    (dict(confidence=99, gaplimit=7, loops=2), ["confidence: 99%", "gaplimit: 7", "loops: 2"]),
    (dict(all_attempts=True, attempts=3, gaplimit=3, loops=0), ["attempts: 3", "gaplimit: 3", "loops: 0",
                                                                 "flags: 0x01"]),
])
def test_trace_parameters_in_warts_as_scamper_writes_them(tmp_path, kw, want):
    """Our warts carries confidence, gaplimit, loops and all-attempts where
    scamper's does (sc_wartsdump prints them), and reads them back."""
    import io
    import subprocess

    from marionet.results.warts import WartsReader
    from marionet.results.warts_writer import WartsWriter

    run = _run(**kw)
    while not run.done:
        pid, _, data = _send(run, 0)
        if run.probes[pid].ttl == 1:
            assert run.received(_te4(R[0], data), 50)
        else:
            run.expired(pid)
    res = run.result(start_ns=10**18)
    buf = io.BytesIO()
    WartsWriter(buf).write(res)
    f = tmp_path / "t.warts"
    f.write_bytes(buf.getvalue())
    dump = subprocess.run(["sc_wartsdump", str(f)], capture_output=True, text=True, check=True).stdout
    for w in want:
        assert w in dump, (w, dump)
    back = WartsReader(io.BytesIO(buf.getvalue())).read()
    assert (back.confidence, back.gaplimit, back.loops, back.all_attempts) == \
        (res.confidence, res.gaplimit, res.loops, res.all_attempts)
    assert back.stop_reason == TraceStop.GAPLIMIT and back.probe_count == res.probe_count
