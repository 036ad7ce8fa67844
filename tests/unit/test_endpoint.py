"""The endpoint's packet interface over a real loopback connection."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from marionet.client.errors import (
    BadAddressError,
    BadFilterError,
    EndpointError,
    UnknownSocketError,
)
from marionet.wire import messages as m

from tests.packets import icmp_echo, icmp6_echo


async def collect(session, n: int = 100, timeout: float = 2.0, kinds=None, until=None):
    """Notifications until ``n`` matching ones arrived or ``timeout`` passed."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        note = await session.next_notification(left)
        if note is None:
            break
        if kinds is None or note.kind in kinds:
            out.append(note)
            if until is not None and until(note):
                break
    return out


@pytest.fixture
def udp_echo():
    """A UDP echo server on loopback, run from a thread."""
    import threading

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.2)
    stop = threading.Event()

    def run():
        while not stop.is_set():
            try:
                d, a = s.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            s.sendto(d, a)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield s.getsockname()[1]
    stop.set()
    t.join(1)
    s.close()


async def test_info(session):
    info = await session.info()
    assert abs(info.clock_ns - time.time_ns()) < 1_000_000_000
    assert "127.0.0.1" in info.addresses
    assert info.capabilities["kernel_rx_timestamps"]
    assert info.buffer_limit > 0 and info.buffer_used == 0
    assert info.version and info.protocol == m.PROTOCOL_VERSION


async def test_udp_exchange_kernel_stamps(session, udp_echo):
    u = await session.nopen("udp", laddr="127.0.0.1")
    t_before = time.time_ns()
    await session.nsend(u, b"hello", dst="127.0.0.1", port=udp_echo, tag=7)
    notes = await collect(session, 2, kinds={"ntag", "ndata"})
    tag = next(n for n in notes if n.kind == "ntag")
    data = next(n for n in notes if n.kind == "ndata")
    assert tag.tag == 7 and tag.ts_source == "kernel" and tag.nbytes == 5 and tag.error is None
    assert t_before < tag.time_ns < data.time_ns
    assert data.data == b"hello" and data.peer == "127.0.0.1" and data.port == udp_echo
    assert data.ts_source == "kernel"


async def test_udp_icmp_error_names_router(session):
    u = await session.nopen("udp")
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    await session.nsend(u, b"probe", dst="127.0.0.1", port=port)
    notes = await collect(session, 1, kinds={"nicmp"})
    assert notes, "no ICMP error notification"
    n = notes[0]
    assert n.peer == "127.0.0.1" and n.icmp_type == 3 and n.icmp_code == 3
    assert n.data == b"probe" and n.ts_source == "kernel"


async def test_udp_ipv6(session):
    srv = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    srv.bind(("::1", 0))
    u = await session.nopen("udp", family=6)
    await session.nsend(u, b"six", dst="::1", port=srv.getsockname()[1], tag=1)
    notes = await collect(session, 1, kinds={"ntag"})
    assert notes and notes[0].ts_source == "kernel"
    assert srv.recv(100) == b"six"
    srv.close()


async def test_scheduled_send_lands_at_time(session, udp_echo):
    u = await session.nopen("udp")
    at = time.time_ns() + 100_000_000
    await session.nsend(u, b"later", dst="127.0.0.1", port=udp_echo, at=at, tag=1)
    notes = await collect(session, 1, kinds={"ntag"})
    assert notes[0].time_ns >= at
    assert notes[0].at == at
    assert notes[0].time_ns - at < 50_000_000  # generous: a VM can stall


async def test_per_socket_order_kept(session, udp_echo):
    """A later request never overtakes an earlier one on the same socket."""
    u = await session.nopen("udp")
    base = time.time_ns() + 50_000_000
    items = [m.SendItem(sock=u, data=bytes([i]), dst="127.0.0.1", port=udp_echo,
                        at=base - i * 1_000_000, tag=i) for i in range(5)]
    assert await session.nsendv(items) == 5
    notes = await collect(session, 5, kinds={"ntag"})
    assert [n.tag for n in notes] == [0, 1, 2, 3, 4]
    times = [n.time_ns for n in notes]
    assert times == sorted(times)


async def test_suppress_and_resume(session, udp_echo):
    u = await session.nopen("udp")
    await session.suppress()
    for i in range(5):
        await session.nsend(u, b"x%d" % i, dst="127.0.0.1", port=udp_echo, tag=i)
    await asyncio.sleep(0.3)
    assert session.pending_notifications() == 0
    info = await session.info()  # replies still flow while suppressed
    assert info.buffer_used > 0
    await session.resume()
    notes = await collect(session, 10, kinds={"ntag", "ndata"})
    assert len(notes) == 10


async def test_overflow_reports_ndrop():
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig

    ep = Endpoint(EndpointConfig(buffer_limit=2000))
    srv = await ep.serve("127.0.0.1", 0, None)
    s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
    try:
        rx = await s.nopen("udp", laddr="127.0.0.1")
        port = s.sockets[rx].lport
        await s.suppress()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(200):
            tx.sendto(b"y" * 100, ("127.0.0.1", port))
        tx.close()
        await asyncio.sleep(0.3)
        await s.resume()
        notes = await collect(s, 500, timeout=1.0)
        drops = [n for n in notes if n.kind == "ndrop"]
        datas = [n for n in notes if n.kind == "ndata"]
        assert len(drops) == 1
        assert drops[0].count + len(datas) == 200
        assert drops[0].kinds == {"ndata": drops[0].count} and drops[0].nbytes > 0
        # the NDrop comes after what was held before the overflow
        assert notes[-1].kind == "ndrop"
    finally:
        await s.close()
        await ep.close()


async def test_tcp_connect_listen_and_states(session):
    lst = await session.nopen("tcp-listen", laddr="127.0.0.1")
    port = session.sockets[lst].lport
    c = await session.nopen("tcp", raddr="127.0.0.1", rport=port)
    notes = await collect(session, 2, kinds={"nstat"})
    states = {n.state: n for n in notes}
    assert "established" in states and "accepted" in states
    child = states["accepted"].child
    await session.nsend(c, b"ping", tag=1)
    await session.nsend(child, b"pong")
    notes = await collect(session, 3, kinds={"ndata", "ntag"})
    got = {(n.kind, n.sock): n for n in notes}
    assert got[("ndata", child)].data == b"ping"
    assert got[("ndata", c)].data == b"pong"
    assert got[("ntag", c)].ts_source == "kernel"
    await session.nctl("shutdown", sock=c)
    notes = await collect(session, 5, kinds={"nstat"}, until=lambda n: n.state == "peer-closed")
    assert any(n.state == "peer-closed" and n.sock == child for n in notes)


async def test_tcp_connect_refused_is_clear(session):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(EndpointError) as ei:
        await session.nopen("tcp", raddr="127.0.0.1", rport=port)
    assert ei.value.code == "connect-failed" and "ECONNREFUSED" in ei.value.reason


@pytest.mark.root
async def test_raw_icmp_echo_with_capture(session):
    r = await session.nopen("raw", ipproto=socket.IPPROTO_ICMP)
    await session.ncap(r, "icmp[icmptype] = icmp-echoreply and icmp[4:2] = 0x4d4e",
                       until=time.time_ns() + 1_000_000_000)
    await session.nsend(r, icmp_echo(0x4D4E, 1), dst="127.0.0.1", tag=1, ttl=9)
    notes = await collect(session, 3, kinds={"ntag", "ndata", "ncapend"}, timeout=3)
    tag = next(n for n in notes if n.kind == "ntag")
    reply = [n for n in notes if n.kind == "ndata"]
    assert len(reply) == 1, "the filter lets only the matching echo reply through"
    pkt = reply[0].data
    assert pkt[0] >> 4 == 4 and pkt[20] == 0  # full IPv4 header, then an echo reply
    assert reply[0].time_ns > tag.time_ns and reply[0].ts_source == "kernel"
    assert any(n.kind == "ncapend" for n in notes)


@pytest.mark.root
async def test_raw_hdrincl_and_ttl_option(session):
    r = await session.nopen("raw", ipproto=socket.IPPROTO_RAW if False else socket.IPPROTO_ICMP, hdrincl=True)
    await session.ncap(r, "icmp[icmptype] = icmp-echoreply and icmp[4:2] = 0x4d4f")
    payload = icmp_echo(0x4D4F, 2)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1234, 0, 17, 1, 0,
                      socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    await session.nsend(r, hdr + payload, tag=5)
    notes = await collect(session, 2, kinds={"ntag", "ndata"})
    assert {n.kind for n in notes} == {"ntag", "ndata"}
    with pytest.raises(EndpointError) as ei:
        await session.nsend(r, hdr + payload, ttl=3)
    assert ei.value.code == "bad-option"


@pytest.mark.root
async def test_ipproto_raw_is_held_to_the_hdrincl_rules_without_the_flag(session):
    """IPv4 IPPROTO_RAW writes the caller's header in the kernel flag or not,
    so the endpoint checks it as a hdrincl send: the TTL lives in that header."""
    r = await session.nopen("raw", ipproto=socket.IPPROTO_RAW)
    payload = icmp_echo(0x4D50, 1)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0x1235, 0, 64, 1, 0,
                      socket.inet_aton("127.0.0.1"), socket.inet_aton("127.0.0.1"))
    with pytest.raises(EndpointError) as ei:
        await session.nsend(r, hdr + payload, ttl=3)
    assert ei.value.code == "bad-option"
    with pytest.raises(EndpointError) as ei:
        await session.nsend(r, b"\x45\x00", dst="127.0.0.1")
    assert ei.value.code == "bad-packet"
    await session.nsend(r, hdr + payload)  # a whole header: sent, to the header's destination


@pytest.mark.root
async def test_raw_ipv6_icmp_echo_with_capture(session):
    r = await session.nopen("raw", family=6, ipproto=socket.IPPROTO_ICMPV6)
    await session.ncap(r, "icmp6 and ip6[40] = 129", until=time.time_ns() + 1_000_000_000)
    await session.nsend(r, icmp6_echo(0x5151, 1), dst="::1", tag=1, ttl=7)
    notes = await collect(session, 2, kinds={"ntag", "ndata"}, timeout=3)
    datas = [n for n in notes if n.kind == "ndata"]
    assert datas, "no ICMPv6 echo reply captured"
    pkt = datas[0].data
    assert pkt[0] >> 4 == 6 and pkt[40] == 129 and datas[0].peer == "::1"


# --------------------------------------------------------------------- bad input


async def test_unknown_socket_and_closed_socket(session):
    with pytest.raises(UnknownSocketError):
        await session.nsend(999, b"x", dst="127.0.0.1", port=9)
    u = await session.nopen("udp")
    await session.nclose(u)
    with pytest.raises(UnknownSocketError):
        await session.nsend(u, b"x", dst="127.0.0.1", port=9)
    with pytest.raises(UnknownSocketError):
        await session.nclose(u)


@pytest.mark.parametrize("dst,port", [("not-an-ip", 9), ("::1", 9), ("127.0.0.1", 70000),
                                      ("127.0.0.1", -1), ("127.0.0.1", 0), (None, 9)])
async def test_invalid_addresses(session, dst, port):
    u = await session.nopen("udp")
    with pytest.raises(BadAddressError):
        await session.nsend(u, b"x", dst=dst, port=port)


async def test_invalid_open_options(session):
    for kw in [dict(proto="sctp"), dict(proto="udp", family=5), dict(proto="udp", laddr="1.2.3"),
               dict(proto="udp", ttl=300), dict(proto="tcp", raddr="127.0.0.1"),
               dict(proto="udp", hdrincl=True)]:
        proto = kw.pop("proto")
        with pytest.raises(EndpointError):
            await session.nopen(proto, **kw)
    with pytest.raises(TypeError):
        await session.nopen("udp", frobnicate=1)


@pytest.mark.root
async def test_invalid_filters(session):
    r = await session.nopen("raw", ipproto=1)
    with pytest.raises(BadFilterError) as ei:
        await session.ncap(r, "icmp andd")
    assert "syntax" in ei.value.reason
    with pytest.raises(BadFilterError):
        await session.ncap(r, program=[(0x15, 5, 0, 0), (6, 0, 0, 0)])  # jump out of range
    with pytest.raises(BadFilterError):
        await session.ncap(r, program=[])
    u = await session.nopen("udp")
    with pytest.raises(EndpointError):
        await session.ncap(u, "icmp")  # not a raw socket


async def _raw_conn(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return reader, writer


async def _read_bye(reader) -> m.Message | None:
    from marionet.wire import FrameDecoder

    dec = FrameDecoder()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        data = await asyncio.wait_for(reader.read(65536), 3)
        if not data:
            return None
        for msg in dec.feed(data):
            if isinstance(msg, m.Bye):
                return msg
    return None


def _hello() -> bytes:
    from marionet.wire import encode

    return encode(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="client"))


@pytest.mark.parametrize("payload,code", [
    (b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", "malformed"),
    ((1 << 30).to_bytes(4, "big"), "oversized"),
    (b"\x00\x00\x00\x05" + b"\x92\xa3zzz"[:5], "unknown-message"),
])
async def test_bad_frames_end_only_that_connection(endpoint, session, udp_echo, payload, code):
    reader, writer = await _raw_conn(endpoint.test_port)
    writer.write(_hello() + payload)
    bye = await _read_bye(reader)
    assert bye is not None and bye.code == code
    assert await reader.read(100) == b""  # closed
    writer.close()
    # the other client is unaffected, and a new one is served
    u = await session.nopen("udp")
    await session.nsend(u, b"still", dst="127.0.0.1", port=udp_echo, tag=1)
    assert await collect(session, 1, kinds={"ntag"})
    from marionet import aio

    s2 = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    assert (await s2.info()).name == "test-ep"
    await s2.close()


async def test_no_hello_and_wrong_version(endpoint):
    from marionet.wire import encode

    reader, writer = await _raw_conn(endpoint.test_port)
    writer.write(encode(m.Info(id=1)))
    bye = await _read_bye(reader)
    assert bye is not None and bye.code == "no-hello"
    writer.close()
    reader, writer = await _raw_conn(endpoint.test_port)
    writer.write(encode(m.Hello(id=1, version=999, role="client")))
    bye = await _read_bye(reader)
    assert bye is not None and bye.code == "version"
    writer.close()


async def test_unexpected_message_type_gets_error(session):
    fut = session._request(m.Ok(id=session.next_id()))  # a reply sent as a request
    with pytest.raises(EndpointError) as ei:
        await fut
    assert ei.value.code == "unexpected"


async def test_client_vanishing_closes_its_sockets(endpoint, udp_echo):
    from marionet import aio

    s = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    u = await s.nopen("udp")
    base = time.time_ns()
    await s.nsendv([m.SendItem(sock=u, data=b"z", dst="127.0.0.1", port=udp_echo,
                               at=base + i * 1_000_000, tag=i) for i in range(200)])
    (sess,) = list(endpoint.sessions)
    fd_socks = [es.sock for es in sess.sockets.values()]
    s._writer.transport.abort()  # vanish mid-stream
    for _ in range(50):
        if not endpoint.sessions:
            break
        await asyncio.sleep(0.02)
    assert not endpoint.sessions
    assert all(sk.fileno() == -1 for sk in fd_socks)
    await s.close()


async def test_raw_without_privilege_is_clear(tmp_path):
    """An endpoint without CAP_NET_RAW refuses raw sockets with a clear error."""
    import os
    import subprocess
    import sys

    from marionet import aio

    if os.geteuid() != 0:
        pytest.skip("needs root to start an endpoint as another user")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    env = dict(os.environ, MARIONET_STATE=str(tmp_path), HOME=str(tmp_path))
    os.chmod(tmp_path, 0o777)
    proc = subprocess.Popen(
        ["setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
         sys.executable, "-m", "marionet.cli", "endpoint", "--listen", f"127.0.0.1:{port}",
         "--insecure", "--engine", "inline"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        s = None
        for _ in range(100):
            try:
                s = await aio.connect(f"127.0.0.1:{port}", insecure=True, timeout=1)
                break
            except Exception:  # noqa: BLE001
                await asyncio.sleep(0.05)
        assert s is not None, proc.stderr.read1(4000) if proc.poll() is not None else "no endpoint"
        info = await s.info()
        assert info.capabilities["raw"] is False
        with pytest.raises(EndpointError) as ei:
            await s.nopen("raw", ipproto=1)
        assert ei.value.code == "no-privilege"
        u = await s.nopen("udp")  # everything else still works
        assert u > 0
        await s.close()
    finally:
        proc.terminate()
        proc.wait(5)


async def test_clock_offset_on_one_machine(session):
    off = await session.clock_offset(samples=5)
    assert abs(off.offset_ns) < 5_000_000
    assert 0 < off.rtt_ns < 100_000_000


async def test_connected_udp_reveals_source_and_sends_without_dst(session, udp_echo):
    u = await session.nopen("udp", raddr="127.0.0.1", rport=udp_echo)
    assert session.sockets[u].laddr == "127.0.0.1"
    await session.nsend(u, b"conn", tag=1)
    notes = await collect(session, 2, kinds={"ntag", "ndata"})
    assert {n.kind for n in notes} == {"ntag", "ndata"}


@pytest.mark.root
async def test_per_send_ttl_tos_df_reach_the_wire(session):
    """Payload-mode raw IPv4: the endpoint writes TTL, TOS and DF per send.

    On loopback the raw ICMP socket also receives its own echo request, so
    the captured request shows the header the kernel wrote."""
    r = await session.nopen("raw", ipproto=socket.IPPROTO_ICMP, device="lo")
    await session.ncap(r, "icmp[icmptype] = icmp-echo and icmp[4:2] = 0x4d50")
    await session.nsend(r, icmp_echo(0x4D50, 1), dst="127.0.0.1", ttl=33, tos=0x28, df=True)
    await session.nsend(r, icmp_echo(0x4D50, 2), dst="127.0.0.1", ttl=17, tos=0, df=False)
    notes = await collect(session, 2, kinds={"ndata"})
    hdrs = sorted((n.data for n in notes), key=lambda d: d[27])  # by ICMP seq
    assert [(h[8], h[1], bool(h[6] & 0x40)) for h in hdrs] == [(33, 0x28, True), (17, 0, False)]


async def test_insecure_is_loopback_only():
    from marionet.endpoint.daemon import EndpointConfig
    from marionet.endpoint.run import ConfigError, run_listen

    with pytest.raises(ConfigError, match="loopback only"):
        await run_listen("0.0.0.0:7000", EndpointConfig(), insecure=True)


async def test_oversized_task_result_becomes_a_task_error():
    """A result that would not fit a frame must not kill the client's session."""
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig

    ep = Endpoint(EndpointConfig(max_frame=2000))
    srv = await ep.serve("127.0.0.1", 0, None)
    s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
    try:
        (sess,) = list(ep.sessions)
        sess.notify(m.TaskResult(task=7, time_ns=1, result={"blob": "x" * 5000}))
        n = await s.next_notification(2)
        assert n.kind == "taskres" and n.task == 7 and n.result is None
        assert "frame limit" in n.error
        sess.notify(m.NData(sock=1, time_ns=1, ts_source="kernel", data=b"y" * 5000))
        n = await s.next_notification(2)
        assert n.kind == "ndrop" and n.kinds == {"ndata": 1}
        assert (await s.info()).name  # the session is still fine
    finally:
        await s.close()
        await ep.close()


async def test_tcp_nodelay_option(endpoint, session):
    lst = await session.nopen("tcp-listen", laddr="127.0.0.1", nodelay=True)
    port = session.sockets[lst].lport
    c = await session.nopen("tcp", raddr="127.0.0.1", rport=port, nodelay=True)
    plain = await session.nopen("tcp", raddr="127.0.0.1", rport=port)
    (sess,) = list(endpoint.sessions)
    opt = lambda sid: sess.sockets[sid].sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # noqa: E731
    assert opt(c) and not opt(plain)
    with pytest.raises(EndpointError):
        await session.nopen("udp", nodelay=True)


# ---- sockets stay unwatched while the sender process sends (DatagramSocket._go_quiet)


def _esock(endpoint, sid):
    (sess,) = endpoint.sessions
    return sess.sockets[sid]


async def _collect(session, want, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while not want(got) and time.monotonic() < deadline:
        n = await session.next_notification(timeout=max(0.0, deadline - time.monotonic()))
        if n is None:
            break
        got.append(n)
    return got


async def test_quiet_socket_delivers_what_arrived_while_sending(endpoint, session):
    """Tagged sends to the socket's own address: every datagram arrives while
    the sender is still sending (loopback delivers inside sendmsg) and the
    socket is unwatched; all of them are read afterwards, with kernel stamps,
    and every ntag carries its byte count."""
    assert (await session.info()).capabilities["sender_process"]
    u = await session.nopen("udp", laddr="127.0.0.1")
    port = _esock(endpoint, u).sock.getsockname()[1]
    n = 300
    await session.nsendv([m.SendItem(sock=u, data=b"q%05d" % i, dst="127.0.0.1", port=port, tag=i)
                          for i in range(n)])
    got = await _collect(session, lambda g: sum(x.kind in ("ntag", "ndata") for x in g) >= 2 * n)
    tags = {x.tag: x for x in got if x.kind == "ntag"}
    data = [x for x in got if x.kind == "ndata"]
    assert sorted(tags) == list(range(n))
    assert all(t.error is None and t.nbytes == 6 and t.ts_source == "kernel" for t in tags.values())
    assert sorted(d.data for d in data) == [b"q%05d" % i for i in range(n)]
    assert all(d.ts_source == "kernel" for d in data)
    for d in data:
        assert d.time_ns >= tags[int(d.data[1:])].time_ns
    es = _esock(endpoint, u)
    assert not es._quiet and es._queued == 0


async def test_quiet_window_is_bounded_when_sends_do_not_complete(endpoint, session):
    """The sender process stopped mid-way: the socket must not stay unwatched
    (QUIET_MAX_S); data sent to it meanwhile is delivered, and the send goes
    out once the sender runs again."""
    import os
    import signal

    u = await session.nopen("udp", laddr="127.0.0.1")
    es = _esock(endpoint, u)
    port = es.sock.getsockname()[1]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    pid = endpoint.engine.sender.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await session.nsend(u, b"held", dst="127.0.0.1", port=peer.getsockname()[1], tag=7)
        assert es._quiet
        peer.sendto(b"meanwhile", ("127.0.0.1", port))
        got = await _collect(session, lambda g: any(x.kind == "ndata" for x in g), timeout=3.0)
        assert [x.data for x in got if x.kind == "ndata"] == [b"meanwhile"]
        assert not es._quiet
    finally:
        os.kill(pid, signal.SIGCONT)
    got = await _collect(session, lambda g: any(x.kind == "ntag" for x in g))
    (tag,) = [x for x in got if x.kind == "ntag"]
    assert tag.tag == 7 and tag.error is None
    assert peer.recv(100) == b"held"
    peer.close()


async def test_far_scheduled_send_keeps_socket_watched(endpoint, session):
    """A send scheduled seconds ahead must not stop receiving on its socket."""
    u = await session.nopen("udp", laddr="127.0.0.1")
    es = _esock(endpoint, u)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    await session.nsend(u, b"later", dst="127.0.0.1", port=peer.getsockname()[1],
                        at=time.time_ns() + 30 * 10**9, tag=1)
    assert not es._quiet and es._queued_later == 1
    # an immediate send behind the far one waits for it (per-socket order): still watched
    await session.nsend(u, b"now", dst="127.0.0.1", port=peer.getsockname()[1], tag=2)
    assert not es._quiet
    peer.sendto(b"hello", es.sock.getsockname())
    got = await _collect(session, lambda g: any(x.kind == "ndata" for x in g), timeout=3.0)
    assert [x.data for x in got if x.kind == "ndata"] == [b"hello"]
    await session.nclose(u)
    peer.close()


async def test_socket_closed_while_quiet(endpoint, session):
    import os
    import signal

    u = await session.nopen("udp", laddr="127.0.0.1")
    es = _esock(endpoint, u)
    pid = endpoint.engine.sender.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await session.nsend(u, b"x", dst="127.0.0.1", port=9, tag=1)
        assert es._quiet
        await session.nclose(u)
        assert es.closed and not es._quiet and es._quiet_timer is None
    finally:
        os.kill(pid, signal.SIGCONT)
    u2 = await session.nopen("udp", laddr="127.0.0.1")  # the endpoint carries on
    assert u2 != u


async def test_untagged_sends_keep_socket_watched(endpoint, session):
    """No TX stamp is asked for, so nothing lands on the socket mid-flight:
    the socket stays watched (e.g. a UDP echo exchange reads replies at once)."""
    import os
    import signal

    u = await session.nopen("udp", laddr="127.0.0.1")
    es = _esock(endpoint, u)
    pid = endpoint.engine.sender.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await session.nsend(u, b"x", dst="127.0.0.1", port=9)
        assert not es._quiet and es._queued == 1
    finally:
        os.kill(pid, signal.SIGCONT)
