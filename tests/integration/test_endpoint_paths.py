"""TTL-limited probes through the packet interface on a namespace path.

Path: client – r1 – r2 – r3 – target (Linux routers in namespaces; see
``pathlab``).  An in-process endpoint runs inside the client namespace (the
test thread enters it with setns while the endpoint and session exist), and
the probes go through the wire protocol like any remote client's:

* raw ICMP (IPv4) with per-send TTL, ``ncap`` on time-exceeded/echo-reply
* raw ``hdrincl`` IPv4 UDP (TTL in the header we write), capture on a raw
  ICMP socket for time-exceeded/port-unreachable
* raw ICMPv6 with per-send hop limit, ``ncap`` (an AF_PACKET capture
  underneath) on time-exceeded/echo-reply
* a UDP socket (IPv4 and IPv6) with per-send TTL: ICMP errors come back as
  ``nicmp`` notifications (IP_RECVERR) naming each router

Each hop must answer from the right address (router k's client-facing
interface; the target at hop 4), with kernel timestamps on both sides and
RTT = receive time − ntag time > 0.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

import pytest

from tests.packets import checksum

pytestmark = [pytest.mark.root, pytest.mark.slow]

N_ROUTERS = 3
HOPS = N_ROUTERS + 1
IDENT = 0x6D74


# ------------------------------------------------------------------ packets


def icmp_echo(seq: int, payload: bytes = b"marionet-path") -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, IDENT, seq)
    return struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), IDENT, seq) + payload


def icmp6_echo(seq: int, payload: bytes = b"marionet-path") -> bytes:
    return struct.pack("!BBHHH", 128, 0, 0, IDENT, seq) + payload  # kernel fills the checksum


def ipv4_udp(src: str, dst: str, sport: int, dport: int, ttl: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, ttl, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + udp


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def path():
    from . import pathlab

    with pathlab.linear(N_ROUTERS) as p:
        yield p


@pytest.fixture
async def sess(path):
    """A session to an in-process endpoint living in the client namespace."""
    async with _session(path, "process") as s:
        yield s


@contextlib.asynccontextmanager
async def _session(path, engine: str):
    from . import pathlab

    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig

    with pathlab.inside(path.netns("client")):
        ep = Endpoint(EndpointConfig(name="path-test", engine=engine))
        try:
            srv = await ep.serve("127.0.0.1", 0, None)
            s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
            try:
                yield s
            finally:
                await s.close()
        finally:
            await ep.close()


async def probe(s, send, match, tries: int = 3, timeout: float = 2.5):
    """Send (tagged) and wait for its ntag and the answer ``match`` accepts.

    Retries: the first packets on a fresh path wait for ARP/ND.
    Returns (ntag, answer).
    """
    for attempt in range(tries):
        tag = await send(attempt)
        tx = rx = None
        deadline = time.monotonic() + timeout
        while (tx is None or rx is None) and time.monotonic() < deadline:
            n = await s.next_notification(timeout=max(0.0, deadline - time.monotonic()))
            if n is None:
                break
            if n.kind == "ntag" and n.tag == tag:
                tx = n
            elif rx is None and match(n, attempt):
                rx = n
        if tx is not None and rx is not None:
            return tx, rx
    raise AssertionError(f"no answer after {tries} tries (ntag {tx!r}, answer {rx!r})")


def check_times(tx, rx) -> int:
    assert tx.error is None, tx.error
    assert tx.ts_source == "kernel", f"ntag stamp from {tx.ts_source}"
    assert rx.ts_source == "kernel", f"answer stamp from {rx.ts_source}"
    rtt = rx.time_ns - tx.time_ns
    assert 0 < rtt < 1_000_000_000, f"RTT {rtt} ns"
    return rtt


def _v4_icmp(data: bytes) -> tuple[int, int, bytes]:
    """(type, code, ICMP body after the 8-byte header) of an IPv4 packet."""
    ihl = (data[0] & 0x0F) * 4
    assert data[9] == 1
    return data[ihl], data[ihl + 1], data[ihl:]


# ------------------------------------------------------------------ tests


async def test_raw_icmp_v4_ttl_limited(sess, path):
    s = sess
    r = await s.nopen("raw", ipproto=socket.IPPROTO_ICMP)
    await s.ncap(r, "icmp[icmptype] = icmp-timxceed or icmp[icmptype] = icmp-echoreply",
                 until=time.time_ns() + 60 * 10**9)
    target = path.target(4)
    rtts = []
    for k in range(1, HOPS + 1):
        async def send(attempt, k=k):
            tag = 100 * k + attempt
            await s.nsend(r, icmp_echo(tag), dst=target, ttl=k, tag=tag)
            return tag

        def match(n, attempt, k=k):
            if n.kind != "ndata" or n.sock != r:
                return False
            typ, _code, icmp = _v4_icmp(n.data)
            if typ == 11:  # quoted: IP header, then our echo's first 8 bytes
                inner = icmp[8:]
                iihl = (inner[0] & 0x0F) * 4
                ident, seq = struct.unpack("!HH", inner[iihl + 4:iihl + 8])
            elif typ == 0:
                ident, seq = struct.unpack("!HH", icmp[4:8])
            else:
                return False
            return ident == IDENT and seq == 100 * k + attempt

        tx, rx = await probe(s, send, match)
        typ = _v4_icmp(rx.data)[0]
        if k <= N_ROUTERS:
            assert typ == 11, f"hop {k}: ICMP type {typ}, expected time exceeded"
        else:
            assert typ == 0, f"hop {k}: ICMP type {typ}, expected echo reply"
        assert rx.peer == path.hop_addr(k, 4), f"hop {k}: answer from {rx.peer}, expected {path.hop_addr(k, 4)}"
        rtts.append(check_times(tx, rx))
    assert len(rtts) == HOPS


async def test_raw_hdrincl_udp_v4_ttl_limited(sess, path):
    s = sess
    h = await s.nopen("raw", ipproto=255, hdrincl=True)
    cap = await s.nopen("raw", ipproto=socket.IPPROTO_ICMP)
    await s.ncap(cap, "icmp[icmptype] = icmp-timxceed or icmp[icmptype] = icmp-unreach",
                 until=time.time_ns() + 60 * 10**9)
    src, target = path.client_addr(4), path.target(4)
    for k in range(1, HOPS + 1):
        async def send(attempt, k=k):
            tag = 100 * k + attempt
            await s.nsend(h, ipv4_udp(src, target, 45000, 33434 + tag, k, b"hdrincl-probe"), tag=tag)
            return tag

        def match(n, attempt, k=k):
            if n.kind != "ndata" or n.sock != cap:
                return False
            typ, _code, icmp = _v4_icmp(n.data)
            if typ not in (3, 11):
                return False
            inner = icmp[8:]
            iihl = (inner[0] & 0x0F) * 4
            if inner[9] != 17 or len(inner) < iihl + 4:
                return False
            sport, dport = struct.unpack("!HH", inner[iihl:iihl + 4])
            return sport == 45000 and dport == 33434 + 100 * k + attempt

        tx, rx = await probe(s, send, match)
        typ, code, _ = _v4_icmp(rx.data)
        if k <= N_ROUTERS:
            assert (typ, code) == (11, 0), f"hop {k}: ICMP {typ}/{code}, expected time exceeded"
        else:
            assert (typ, code) == (3, 3), f"hop {k}: ICMP {typ}/{code}, expected port unreachable"
        assert rx.peer == path.hop_addr(k, 4), f"hop {k}: answer from {rx.peer}"
        check_times(tx, rx)


async def test_raw_icmp6_hop_limited(sess, path):
    s = sess
    r = await s.nopen("raw", family=6, ipproto=socket.IPPROTO_ICMPV6)
    await s.ncap(r, "icmp6 and (ip6[40] == 3 or ip6[40] == 129)", until=time.time_ns() + 60 * 10**9)
    target = path.target(6)
    for k in range(1, HOPS + 1):
        async def send(attempt, k=k):
            tag = 100 * k + attempt
            await s.nsend(r, icmp6_echo(tag), dst=target, ttl=k, tag=tag)
            return tag

        def match(n, attempt, k=k):
            d = n.data or b""
            if n.kind != "ndata" or n.sock != r or len(d) < 48 or d[6] != 58:
                return False
            if d[40] == 3:  # time exceeded: 8-byte header, then our packet (IPv6 header first)
                q = d[48:]
                if len(q) < 48 or q[6] != 58:
                    return False
                ident, seq = struct.unpack("!HH", q[44:48])
            elif d[40] == 129:
                ident, seq = struct.unpack("!HH", d[44:48])
            else:
                return False
            return ident == IDENT and seq == 100 * k + attempt

        tx, rx = await probe(s, send, match)
        typ = rx.data[40]
        assert typ == (3 if k <= N_ROUTERS else 129), f"hop {k}: ICMPv6 type {typ}"
        src = socket.inet_ntop(socket.AF_INET6, rx.data[8:24])
        assert src == path.hop_addr(k, 6), f"hop {k}: answer from {src}"
        assert rx.peer == src
        check_times(tx, rx)


@pytest.mark.parametrize("family", [4, 6])
async def test_udp_recverr_names_each_router(sess, path, family):
    s = sess
    u = await s.nopen("udp", family=family)
    target = path.target(family)
    for k in range(1, HOPS + 1):
        async def send(attempt, k=k):
            tag = 100 * k + attempt
            await s.nsend(u, b"mnpath%06d" % tag, dst=target, port=33434 + tag, ttl=k, tag=tag)
            return tag

        def match(n, attempt, k=k):
            return (n.kind == "nicmp" and n.sock == u
                    and (n.data or b"").startswith(b"mnpath%06d" % (100 * k + attempt)))

        tx, rx = await probe(s, send, match)
        if family == 4:
            want = (11, 0) if k <= N_ROUTERS else (3, 3)
        else:
            want = (3, 0) if k <= N_ROUTERS else (1, 4)
        assert (rx.icmp_type, rx.icmp_code) == want, f"hop {k}: ICMP {rx.icmp_type}/{rx.icmp_code}"
        assert rx.peer == path.hop_addr(k, family), f"hop {k}: offender {rx.peer}"
        check_times(tx, rx)


@pytest.mark.parametrize("engine", ["inline", "process"])
@pytest.mark.parametrize("family", [4, 6])
async def test_udp_burst_every_hop_answers(path, engine, family):
    """TTL 1..HOPS as one nsendv, the way traceroute sends: every probe leaves
    and every hop answers.  On veth the hop-1 answer is back (and has set the
    socket's pending error) before the hop-2 sendmsg; an engine that does not
    step over that stale error loses every second probe."""
    from marionet.wire.messages import SendItem

    async with _session(path, engine) as s:
        caps = (await s.info()).capabilities
        assert caps["sender_process"] is (engine == "process")
        u = await s.nopen("udp", family=family)
        target = path.target(family)
        for attempt in range(3):  # the first burst on a fresh path may wait for ARP/ND
            base = 1000 * (attempt + 1)
            tags = {base + k: k for k in range(1, HOPS + 1)}
            await s.nsendv([SendItem(sock=u, data=b"mnburst%06d" % t, dst=target, port=33434 + t % 1000,
                                     ttl=k, tag=t) for t, k in tags.items()])
            sent: dict[int, object] = {}
            answers: dict[int, object] = {}
            deadline = time.monotonic() + 2.5
            while (len(sent) < HOPS or len(answers) < HOPS) and time.monotonic() < deadline:
                n = await s.next_notification(timeout=max(0.0, deadline - time.monotonic()))
                if n is None:
                    break
                if n.kind == "ntag" and n.tag in tags:
                    sent[n.tag] = n
                elif n.kind == "nicmp" and n.sock == u and (n.data or b"").startswith(b"mnburst"):
                    t = int(n.data[7:13])
                    if t in tags:
                        answers[t] = n
            assert len(sent) == HOPS, f"ntags for {sorted(sent)} only"
            failed = {tags[t]: n.error for t, n in sent.items() if n.error is not None}
            assert not failed, f"probes not sent (hop: error): {failed}"
            if len(answers) == HOPS:
                break
        assert sorted(tags[t] for t in answers) == list(range(1, HOPS + 1))
        for t, rx in answers.items():
            assert rx.peer == path.hop_addr(tags[t], family)
            check_times(sent[t], rx)
