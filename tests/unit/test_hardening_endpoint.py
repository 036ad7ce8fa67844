"""Regression tests for faults found by adversarial testing of the endpoint.

Each test reproduces one way a client (careless or hostile) broke a VP for
others or lost data silently, and checks the rule that now holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from marionet import aio
from marionet.client.errors import EndpointError, PeerProtocolError, ConnectionLost
from marionet.endpoint.daemon import INBOX_MAX, Endpoint, EndpointConfig
from marionet.wire import encode
from marionet.wire import messages as m

from tests.unit.test_endpoint import collect

DAY_NS = 24 * 3600 * 1_000_000_000


def udp_receiver() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(2.0)
    return s


@contextlib.asynccontextmanager
async def own_endpoint(config: EndpointConfig, ssl_ctx=None):
    """An endpoint with its own settings, and its ``HOST:PORT``."""
    ep = Endpoint(config)
    srv = await ep.serve("127.0.0.1", 0, ssl_ctx)
    try:
        yield ep, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        await ep.close()


async def recv_in_thread(s: socket.socket) -> bytes:
    return await asyncio.to_thread(lambda: s.recv(65535))


# --------------------------------------------------------------------------
# Item 1: a far-future send must not kill sending on the VP.


@pytest.mark.parametrize("at", [lambda: time.time_ns() + 26 * DAY_NS, lambda: 2**63 - 1, lambda: -1])
async def test_far_future_or_negative_send_is_refused_and_sending_goes_on(endpoint, session, at):
    rx = udp_receiver()
    port = rx.getsockname()[1]
    try:
        u = await session.nopen("udp")
        with pytest.raises(EndpointError) as ei:
            await session.nsend(u, b"never", dst="127.0.0.1", port=port, at=at(), tag=1)
        assert ei.value.code == "bad-time"
        assert "ahead" in ei.value.reason or "negative" in ei.value.reason
        # the same session and another one still send
        await session.nsend(u, b"same", dst="127.0.0.1", port=port, tag=2)
        assert await recv_in_thread(rx) == b"same"
        other = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
        try:
            u2 = await other.nopen("udp")
            await other.nsend(u2, b"other", dst="127.0.0.1", port=port, at=time.time_ns() + 10_000_000)
            assert await recv_in_thread(rx) == b"other"
        finally:
            await other.close()
    finally:
        rx.close()


async def test_far_future_capture_end_and_shutdown_are_refused(session):
    t = await session.nopen("tcp-listen", laddr="127.0.0.1")
    with pytest.raises(EndpointError) as ei:
        await session.nctl("shutdown", sock=t, at=time.time_ns() + 30 * DAY_NS)
    assert ei.value.code == "bad-time"


async def test_connect_timeout_range(session):
    with pytest.raises(EndpointError) as ei:
        await session._request(m.NOpen(id=session.next_id(), proto="tcp", raddr="127.0.0.1",
                                       rport=9, timeout_ns=10**18))
    assert ei.value.code == "bad-option" and "timeout_ns" in ei.value.reason


async def test_info_reports_engine_status_and_limits(session):
    info = await session.info()
    assert info.status["engine"]["engine"] in ("process", "inline")
    assert info.status["principal"]["sessions"] >= 1
    assert info.limits["max_schedule_ahead_s"] == 24 * 3600
    assert info.limits["max_sockets_per_principal"] > 0


# --------------------------------------------------------------------------
# Items 2 and 4: a suppressed backlog through the controller is split into
# frames the controller accepts; TCP data and the close are never dropped.


class BulkServer:
    """Loopback TCP server: sends ``size`` bytes of a counting pattern, closes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.lst = socket.socket()
        self.lst.bind(("127.0.0.1", 0))
        self.lst.listen(4)
        self.port = self.lst.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @staticmethod
    def pattern(size: int) -> bytes:
        block = bytes(range(256)) * 4096  # 1 MiB
        return (block * (size // len(block) + 1))[:size]

    def _run(self) -> None:
        try:
            conn, _ = self.lst.accept()
        except OSError:
            return
        with conn:
            conn.sendall(self.pattern(self.size))
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(5)
            try:
                conn.recv(1)
            except OSError:
                pass

    def close(self) -> None:
        self.lst.close()
        self.thread.join(5)


async def read_stream_until_closed(s, sock: int, timeout: float) -> tuple[bytes, list[m.Message]]:
    chunks: list[bytes] = []
    others: list[m.Message] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no close after {sum(map(len, chunks))} bytes; others: {others[-5:]}"
        note = await s.next_notification(left)
        assert note is not None, f"notifications stopped after {sum(map(len, chunks))} bytes"
        if note.kind == "ndata" and note.sock == sock:
            chunks.append(note.data)
        elif note.kind == "nstat" and note.sock == sock and note.state in ("peer-closed", "reset", "error"):
            others.append(note)
            return b"".join(chunks), others
        else:
            others.append(note)


async def test_suppressed_tcp_backlog_through_controller_keeps_the_vp():
    from marionet.client.controller import connect_controller
    from marionet.controller.embedded import start_embedded

    size = 25 * 1024 * 1024
    emb = await start_embedded([("vp1", {})])
    srv = BulkServer(size)
    c = await connect_controller(emb.client_address, insecure=True)
    try:
        s = await c.attach("vp1")
        await s.suppress()
        sock = await s.nopen("tcp", raddr="127.0.0.1", rport=srv.port)
        await asyncio.sleep(1.5)  # the backlog builds up to the buffer limit, then TCP stalls
        info = await s.info()
        assert info.buffer_used > 4 * 1024 * 1024  # more than one frame's worth held
        await s.resume()
        data, others = await read_stream_until_closed(s, sock, timeout=60)
        assert len(data) == size and data == BulkServer.pattern(size)
        assert others[-1].state == "peer-closed"
        assert not [n for n in others if n.kind == "ndrop"]
        vps = {v["name"]: v for v in await c.vps()}
        assert vps["vp1"]["alive"]
        assert (await s.info()).name == "vp1"
    finally:
        await c.close()
        srv.close()
        await emb.close()


async def test_tcp_backpressure_instead_of_drops(endpoint, session):
    """A client that suppresses delivery during a download gets every byte:
    the endpoint stops reading the socket instead of dropping data."""
    size = 40 * 1024 * 1024  # more than the 16 MiB buffer
    srv = BulkServer(size)
    try:
        await session.suppress()
        sock = await session.nopen("tcp", raddr="127.0.0.1", rport=srv.port)
        await asyncio.sleep(1.0)
        info = await session.info()
        assert info.buffer_used <= info.buffer_limit + 1024 * 1024
        await session.resume()
        data, others = await read_stream_until_closed(session, sock, timeout=60)
        assert len(data) == size and data == BulkServer.pattern(size)
        assert not [n for n in others if n.kind == "ndrop"]
    finally:
        srv.close()


# --------------------------------------------------------------------------
# Item 3: the last data of a peer that closes right after sending.


async def test_tcp_data_before_close_is_delivered(session):
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(32)
    port = lst.getsockname()[1]
    rounds = 20

    def serve() -> None:
        for i in range(rounds):
            conn, _ = lst.accept()
            with conn:
                conn.recv(100)
                conn.sendall(b"reply %d\n" % i)
            # closed at once: both directions shut while the reply is in flight

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        for i in range(rounds):
            sock = await session.nopen("tcp", raddr="127.0.0.1", rport=port)
            await session.nsend(sock, b"hello\n")
            data, others = await read_stream_until_closed(session, sock, timeout=5)
            assert data == b"reply %d\n" % i, (i, others)
            assert others[-1].state == "peer-closed", others
            await session.nclose(sock)
    finally:
        lst.close()
        t.join(5)


# --------------------------------------------------------------------------
# Item 5: a client that never reads its replies.


async def raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="client")))
    return reader, writer


async def test_reply_flood_is_bounded_and_others_are_served(endpoint):
    reader, writer = await raw_client(endpoint.test_port)
    other = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    try:
        batch = b"".join(encode(m.Info(id=i)) if i % 2 else encode(m.Ping(id=i)) for i in range(2, 20002))
        worst = 0.0
        buffered = 0
        for _ in range(15):  # 300,000 requests, never a reply read
            writer.write(batch)
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await other.info()
            worst = max(worst, time.monotonic() - t0)
            flooders = [s for s in endpoint.sessions if s.outlet is not None
                        and getattr(s.outlet, "transport", None) is not None
                        and s.outlet.transport.get_write_buffer_size() > 0]
            for s in flooders:
                buffered = max(buffered, s.outlet.transport.get_write_buffer_size())
                # at most INBOX_MAX plus what one read (256 KiB) decodes to
                assert len(s.outlet._inbox) <= INBOX_MAX + 256 * 1024 // len(encode(m.Info(id=2)))
        assert worst < 1.0, f"another client's request took {worst:.2f} s"
        cap = endpoint.config.write_high_water + 2 * endpoint.config.max_frame
        assert 0 < buffered <= cap, buffered
    finally:
        writer.close()
        await other.close()


# --------------------------------------------------------------------------
# Item 6: limits per principal, and room left for others.


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory):
    from marionet.guard import pki

    d = pki.PkiDir.init(tmp_path_factory.mktemp("pki"), name="hardening operator")
    d.issue("ep1", "endpoint", san_ip=["127.0.0.1"])
    d.issue("alice", "client")
    d.issue("bob", "client")
    return d


async def test_sessions_and_sockets_are_limited_per_principal(pkidir):
    from marionet.guard import tls

    p = pkidir.paths("ep1")
    ctx = tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True)
    ep = Endpoint(EndpointConfig(name="lim", max_sessions_per_principal=4, max_sockets_per_principal=30))
    srv = await ep.serve("127.0.0.1", 0, ctx)
    addr = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"

    async def connect(who: str):
        q = pkidir.paths(who)
        return await aio.connect(addr, ca=q.ca, cert=q.cert, key=q.key)

    alice = [await connect("alice") for _ in range(4)]
    try:
        with pytest.raises((PeerProtocolError, ConnectionLost)) as ei:
            await connect("alice")
        assert "limit" in str(ei.value)
        opened = 0
        with pytest.raises(EndpointError) as ei2:
            for s in alice:
                for _ in range(10):
                    await s.nopen("udp")
                    opened += 1
        assert ei2.value.code == "limit" and opened == 30
        bob = await connect("bob")
        u = await bob.nopen("udp")
        st = (await bob.info()).status["principal"]
        assert u and (st["name"], st["sessions"], st["sockets"]) == ("bob", 1, 1)
        await bob.close()
        # closing frees the principal's room
        await alice[0].close()
        alice[0] = await connect("alice")
        await alice[0].nopen("udp")
    finally:
        for s in alice:
            await s.close()
        await ep.close()
    assert ep.open_sockets == 0 and not ep.usage


# --------------------------------------------------------------------------
# Item 9: the kernel's receive-buffer drops are reported.


async def test_kernel_receive_buffer_drops_are_reported():
    async with own_endpoint(EndpointConfig(name="flood", buffer_limit=256 * 1024)) as (ep, addr):
        s = await aio.connect(addr, insecure=True)
        try:
            await _kernel_drops(ep, s)
        finally:
            await s.close()


async def _kernel_drops(ep: Endpoint, s) -> None:
    rx = await s.nopen("udp", laddr="127.0.0.1")
    port = s.sockets[rx].lport
    await s.suppress()
    # shrink the receive buffer so the flood overflows it for sure
    es = next(iter(ep.sessions)).sockets[rx]
    es.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent = 100_000

    def flood() -> None:
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(sent):
            tx.sendto(b"z" * 64, ("127.0.0.1", port))
        tx.close()

    await asyncio.to_thread(flood)
    await asyncio.sleep(1.5)  # the sweep reads the kernel's counter
    await s.resume()
    notes = await collect(s, sent + 10, timeout=3.0)
    delivered = sum(1 for n in notes if n.kind == "ndata")
    drops = [n for n in notes if n.kind == "ndrop"]
    kernel = sum(n.kinds.get("kernel", 0) for n in drops)
    ours = sum(n.count for n in drops) - kernel
    assert kernel > 0 and ours > 0
    assert all(n.socks.get(rx, 0) == n.kinds.get("kernel", 0) for n in drops)
    assert delivered + ours + kernel == sent, (delivered, ours, kernel)
    assert (await s.info()).status["session"]["kernel_drops"] == kernel


# --------------------------------------------------------------------------
# Item 10: connections that never complete the hello.


async def test_idle_and_trickling_connections_are_closed():
    ep = Endpoint(EndpointConfig(name="hello", hello_timeout_s=0.5))
    srv = await ep.serve("127.0.0.1", 0, None)
    port = srv.sockets[0].getsockname()[1]
    try:
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        trickle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        hello = encode(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="client"))
        t0 = time.monotonic()
        for i in range(len(hello) - 1):  # everything but the last byte, slowly
            for _, w in trickle:
                if not w.is_closing():
                    w.write(hello[i:i + 1])
            await asyncio.sleep(0.05)
            if time.monotonic() - t0 > 1.0:
                break
        for r, _ in idle + trickle:
            try:
                rest = await asyncio.wait_for(r.read(), 2.0)  # EOF: the endpoint closed it
            except ConnectionError:
                continue  # reset: closed while we were still writing
            assert b"timeout" in rest or rest == b""
        assert ep.connections == 0
        # a prompt client is unaffected
        s = await aio.connect(f"127.0.0.1:{port}", insecure=True)
        await asyncio.sleep(0.8)
        assert (await s.info()).name == "hello"
        await s.close()
        for _, w in idle + trickle:
            w.close()
    finally:
        await ep.close()


# --------------------------------------------------------------------------
# Item 6 (cont.): a listener out of descriptors pauses instead of spinning.


async def test_listener_out_of_descriptors_pauses_then_accepts(session):
    import os
    import resource

    lst = await session.nopen("tcp-listen", laddr="127.0.0.1")
    port = session.sockets[lst].lport
    clients = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        clients.append(c)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = os.dup(0)
    os.close(probe)
    resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))  # no new descriptor can be made
    try:
        notes = await collect(session, 1000, timeout=0.5, kinds={"nstat"})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    errors = [n for n in notes if n.state == "error"]
    assert 1 <= len(errors) <= 2 and "EMFILE" in errors[0].reason, notes[:3]
    notes = await collect(session, 3, timeout=3.0, kinds={"nstat"}, until=None)
    assert [n.state for n in notes] == ["accepted"] * 3
    for c in clients:
        c.close()
