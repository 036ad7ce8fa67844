"""Controller hardening: backpressure, roles, replacement, set-up deadlines,
and one channel's bad data not costing the VP its link."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import random
import socket
import ssl
import time

import pytest

from marionet.client.controller import connect_controller
from marionet.client.errors import ConnectionLost
from marionet.controller.broker import Controller, ControllerConfig
from marionet.controller.embedded import start_embedded
from marionet.endpoint import dialer
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.guard import pki, tls
from marionet.wire import messages as m
from marionet.wire.codec import FrameDecoder, encode

HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# helpers


class Raw:
    """A hand-driven link: write frames, read messages."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.dec = FrameDecoder()
        self.got: list[m.Message] = []

    @classmethod
    async def connect(cls, port: int, ssl_ctx: ssl.SSLContext | None = None) -> "Raw":
        r, w = await asyncio.open_connection(HOST, port, ssl=ssl_ctx,
                                             server_hostname=HOST if ssl_ctx else None)
        return cls(r, w)

    def send(self, *msgs: m.Message) -> None:
        self.writer.write(b"".join(encode(x) for x in msgs))

    async def next(self, timeout: float = 3.0) -> m.Message | None:
        """The next message; None at EOF."""
        deadline = time.monotonic() + timeout
        while not self.got:
            try:
                data = await asyncio.wait_for(self.reader.read(1 << 20), deadline - time.monotonic())
            except (ConnectionError, ssl.SSLError):
                data = b""
            if not data:
                return None
            self.got.extend(self.dec.feed(data))
        return self.got.pop(0)

    async def until(self, kind: type, timeout: float = 3.0) -> m.Message | None:
        deadline = time.monotonic() + timeout
        while (msg := await self.next(max(0.01, deadline - time.monotonic()))) is not None:
            if isinstance(msg, kind):
                return msg
        return None

    async def register(self, name: str, meta: dict | None = None) -> m.Message | None:
        """Hello + Register; the reply to Register (Ok) or the Bye."""
        self.send(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="endpoint", name=name),
                  m.Register(id=2, name=name, meta=meta or {}))
        while (msg := await self.next()) is not None:
            if isinstance(msg, m.Bye) or (isinstance(msg, m.Ok) and msg.id == 2):
                return msg
        return None

    def close(self) -> None:
        self.writer.transport.abort()


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


async def _until(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


# --------------------------------------------------------------------------
# A. backpressure across the controller


async def test_tcp_download_to_a_slow_client_is_complete_and_bounded():
    """25 MiB through the controller to a client that keeps stalling: every
    byte arrives in order, then peer-closed; the controller's buffer for the
    client stays bounded (the endpoint holds and TCP slows the sender)."""
    size = 25 << 20
    payload = random.Random(7).randbytes(size)
    sent = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        view = memoryview(payload)
        for off in range(0, size, 1 << 16):
            writer.write(view[off:off + (1 << 16)])
            await writer.drain()
            sent = off + (1 << 16)
        writer.close()

    srv = await asyncio.start_server(serve, HOST, 0)
    port = srv.sockets[0].getsockname()[1]
    config = ControllerConfig(client_buffer=512 * 1024, client_hard_limit=16 << 20,
                              keepalive_s=0.2, dead_after_s=2.0)
    emb = await start_embedded([("dl", {})], config=config,
                               endpoint_config=EndpointConfig(buffer_limit=2 << 20, max_frame=1 << 20))
    try:
        c = await connect_controller(emb.client_address, insecure=True)
        # A small kernel buffer (no autotuning to tens of MiB on loopback),
        # so a stalled client is felt at once, as over a real network.
        c.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 128 * 1024)
        s = await c.attach("dl")
        link = next(iter(emb.controller.clients))
        t0 = time.monotonic()
        sock = await s.nopen("tcp", raddr=HOST, rport=port)
        done = asyncio.Event()
        max_buffered = 0
        sent_while_stalled: list[int] = []

        async def slow_reader() -> None:
            """Stop reading for a while, then read in short bursts."""
            nonlocal max_buffered
            tr = c.writer.transport
            tr.pause_reading()
            for _ in range(20):  # 1 s without reading at all
                max_buffered = max(max_buffered, link.transport.get_write_buffer_size())
                await asyncio.sleep(0.05)
            sent_while_stalled.append(sent)
            while not done.is_set():
                tr.resume_reading()
                await asyncio.sleep(0.002)
                tr.pause_reading()
                for _ in range(5):
                    max_buffered = max(max_buffered, link.transport.get_write_buffer_size())
                    await asyncio.sleep(0.01)
            tr.resume_reading()

        stall = asyncio.get_running_loop().create_task(slow_reader())
        got = hashlib.sha256()
        nbytes = 0
        states: list[str] = []
        drops = []
        while "peer-closed" not in states:
            n = await s.next_notification(20)
            assert n is not None, f"stuck after {nbytes} bytes (states {states})"
            if n.kind == "ndata" and n.sock == sock:
                assert "peer-closed" not in states, "data after the connection closed"
                got.update(n.data)
                nbytes += len(n.data)
            elif n.kind == "nstat" and n.sock == sock:
                states.append(n.state)
            elif n.kind == "ndrop":
                drops.append(n)
        took = time.monotonic() - t0
        done.set()
        await stall
        assert nbytes == size
        assert got.digest() == hashlib.sha256(payload).digest()  # every byte, in order
        assert states[-1] == "peer-closed" and not drops
        assert link.flow_pauses > 0 and link.dropped_total == 0
        # While the client read nothing, the sender was held back and the
        # controller buffered a bounded amount, far below the download.
        # While the client read nothing, the sender was held back (what it
        # got out sits in kernel buffers, the endpoint's bounded hold and
        # the controller's), and the controller never neared its hard limit.
        assert sent_while_stalled[0] < size
        assert max_buffered < config.client_hard_limit * 3 // 4
        vps = {v["name"]: v for v in await c.vps()}
        assert vps["dl"]["alive"] and emb.controller.endpoints["dl"].record is not None
        print(f"\n25 MiB via the controller to a stalling client: {nbytes} bytes in {took:.2f} s; "
              f"sent while stalled {sent_while_stalled[0]}; controller buffer max {max_buffered}; "
              f"{link.flow_pauses} pauses")
        await c.close()
    finally:
        await emb.close()
        srv.close()


async def test_udp_flood_to_a_stalled_client_is_held_at_the_endpoint_and_counted():
    """Datagrams for a client that does not read are held (and past its
    buffer dropped and counted) by the endpoint, not piled up in the
    controller; every one is either delivered or in an ndrop."""
    emb = await start_embedded([("flood", {})], config=ControllerConfig(client_buffer=64 * 1024),
                               endpoint_config=EndpointConfig(buffer_limit=256 * 1024))
    try:
        c = await connect_controller(emb.client_address, insecure=True)
        s = await c.attach("flood")
        u = await s.nopen("udp", laddr=HOST)
        port = s.sockets[u].lport
        link = next(iter(emb.controller.clients))
        c.writer.transport.pause_reading()
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 6000
        for i in range(sent):
            tx.sendto(b"p" * 1000, (HOST, port))
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        tx.close()
        await asyncio.sleep(0.3)
        assert link.write_paused and link.transport.get_write_buffer_size() < 2 << 20
        c.writer.transport.resume_reading()
        got = dropped = 0
        while got + dropped < sent:
            n = await s.next_notification(2)
            if n is None:
                break
            if n.kind == "ndata":
                got += 1
            elif n.kind == "ndrop":
                dropped += n.count
        assert dropped > 0 and got + dropped == sent, (got, dropped)
        assert [v["name"] for v in await c.vps()] == ["flood"]
        await c.close()
    finally:
        await emb.close()


async def test_slow_vp_link_pauses_reading_from_its_clients():
    """An endpoint link that backs up stops the controller reading the
    clients that feed it; they resume when it drains."""
    emb = await start_embedded([("a", {})])
    try:
        c = await connect_controller(emb.client_address, insecure=True)
        await c.attach("a")
        ep_link = emb.controller.endpoints["a"]
        client = next(iter(emb.controller.clients))
        assert client.transport.is_reading()
        ep_link.pause_writing()
        assert not client.transport.is_reading()
        ep_link.resume_writing()
        assert client.transport.is_reading()
        ep_link.pause_writing()
        ep_link.transport.close()  # a held client is released when the VP goes
        assert await _until(lambda: client.transport.is_reading())
        await c.close()
    finally:
        await emb.close()


async def test_client_backpressure_is_sent_to_the_endpoint_as_chflow():
    ctl, eport, cport = await _plain_controller()
    try:
        ep = await Raw.connect(eport)
        assert isinstance(await ep.register("r"), m.Ok)
        c = await connect_controller(f"{HOST}:{cport}", insecure=True)
        await c._request(m.Attach(id=99, vp="r"))
        opened = await ep.until(m.ChOpen)
        client = next(iter(ctl.clients))
        client.pause_writing()
        assert await ep.until(m.ChFlow) == m.ChFlow(ch=opened.ch, pause=True)
        client.resume_writing()
        assert await ep.until(m.ChFlow) == m.ChFlow(ch=opened.ch, pause=False)
        ep.send(m.ChFlow(ch=opened.ch, pause=True))  # tolerated from an endpoint
        await asyncio.sleep(0.1)
        assert "r" in ctl.endpoints
        await c.close()
        ep.close()
    finally:
        await ctl.close()


async def _plain_controller(config: ControllerConfig | None = None) -> tuple[Controller, int, int]:
    ctl = Controller(config or ControllerConfig(keepalive_s=0.2, dead_after_s=5.0))
    es = await ctl.serve_endpoints(HOST, 0, None)
    cs = await ctl.serve_clients(HOST, 0, None)
    return ctl, es.sockets[0].getsockname()[1], cs.sockets[0].getsockname()[1]


# --------------------------------------------------------------------------
# B. roles on the controller's TLS ports; D. the controller's own role


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiDir:
    d = pki.PkiDir.init(tmp_path_factory.mktemp("pki"), name="test operator")
    d.issue("ctl", "controller", san_ip=[HOST])
    d.issue("ep1", "endpoint", san_ip=[HOST])
    d.issue("alice", "client")
    d.issue("fakectl", "client", san_ip=[HOST])
    _issue_without_role(d, "norole")
    return d


def _issue_without_role(d: pki.PkiDir, name: str) -> None:
    """A certificate from the operator's CA that carries no marionet role."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_key, ca_cert = d.ca()
    key = ed25519.Ed25519PrivateKey.generate()
    start, end = pki._validity(30, None)
    cert = (pki._builder(pki._name(name), ca_cert.subject, key.public_key(), start, end, ca=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, None))
    pki.save_key(key, d.path / f"{name}.key")
    pki.save_cert(cert, d.path / f"{name}.pem")


def _ctx(d: pki.PkiDir, name: str) -> ssl.SSLContext:
    p = d.paths(name)
    return tls.client_context(ca=p.ca, cert=p.cert, key=p.key)


async def _tls_controller(d: pki.PkiDir) -> tuple[Controller, int, int]:
    ctl = Controller(ControllerConfig(keepalive_s=0.2, dead_after_s=5.0))
    p = d.paths("ctl")
    es = await ctl.serve_endpoints(HOST, 0, tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True))
    cs = await ctl.serve_clients(HOST, 0, tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True))
    return ctl, es.sockets[0].getsockname()[1], cs.sockets[0].getsockname()[1]


async def test_tls_endpoint_port_needs_role_endpoint_and_its_own_name(pkidir):
    ctl, eport, _ = await _tls_controller(pkidir)
    try:
        good = await Raw.connect(eport, _ctx(pkidir, "ep1"))
        assert isinstance(await good.register("ep1"), m.Ok)
        for cert, name, words in (("ep1", "other", ["'ep1'", "'other'"]),
                                  ("alice", "alice", ["for endpoints", "role 'client'", "need 'endpoint'"]),
                                  ("norole", "norole", ["for endpoints", "role None"])):
            r = await Raw.connect(eport, _ctx(pkidir, cert))
            bye = await r.register(name)
            assert isinstance(bye, m.Bye) and bye.code == "denied", (cert, bye)
            assert all(w in bye.reason for w in words), bye.reason
            assert await r.next() is None  # and the link is closed
            r.close()
        assert set(ctl.endpoints) == {"ep1"}
        good.close()
    finally:
        await ctl.close()


async def test_tls_client_port_needs_role_client(pkidir):
    ctl, _, cport = await _tls_controller(pkidir)
    addr = f"{HOST}:{cport}"
    try:
        p = pkidir.paths("alice")
        c = await connect_controller(addr, ca=p.ca, cert=p.cert, key=p.key)
        assert await c.vps() == []
        await c.close()
        for name in ("ep1", "norole"):
            p = pkidir.paths(name)
            with pytest.raises(ConnectionLost) as ei:
                await connect_controller(addr, ca=p.ca, cert=p.cert, key=p.key)
            text = str(ei.value)
            assert "denied" in text and "this port is for clients" in text and "need 'client' or 'operator'" in text
    finally:
        await ctl.close()


async def _fake_controller(d: pki.PkiDir, cert_name: str) -> tuple[asyncio.Server, list[bytes]]:
    """A TLS server from the same CA whose certificate is not a controller's."""
    p = d.paths(cert_name)
    got: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                got.append(data)
        except (ConnectionError, ssl.SSLError):
            pass
        writer.close()

    srv = await asyncio.start_server(handle, HOST, 0, ssl=tls.server_context(
        p.cert, p.key, ca=p.ca, require_client_cert=True))
    return srv, got


async def test_client_refuses_a_server_that_is_not_a_controller(pkidir):
    p = pkidir.paths("alice")
    srv, got = await _fake_controller(pkidir, "ep1")  # an endpoint's certificate
    try:
        with pytest.raises(ConnectionLost) as ei:
            await connect_controller(f"{HOST}:{srv.sockets[0].getsockname()[1]}", ca=p.ca, cert=p.cert, key=p.key)
        assert "is not a marionet controller" in str(ei.value) and "role 'endpoint'" in str(ei.value)
        await asyncio.sleep(0.1)
        assert got == []  # not even a hello
    finally:
        srv.close()
    srv, got = await _fake_controller(pkidir, "fakectl")  # a client's certificate
    try:
        with pytest.raises(ConnectionLost) as ei:
            await connect_controller(f"{HOST}:{srv.sockets[0].getsockname()[1]}", ca=p.ca, cert=p.cert, key=p.key)
        assert "TLS handshake" in str(ei.value) and "certificate" in str(ei.value)
    finally:
        srv.close()


async def test_dialer_checks_the_controller_role(pkidir, caplog):
    p = pkidir.paths("ep1")
    ctx = tls.client_context(ca=p.ca, cert=p.cert, key=p.key)
    ep = Endpoint(EndpointConfig(name="ep1", engine="inline"))
    srv, got = await _fake_controller(pkidir, "ep1")
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="marionet.endpoint")
    task = asyncio.get_running_loop().create_task(
        dialer.dial_forever(ep, f"{HOST}:{srv.sockets[0].getsockname()[1]}", ctx, {}, stop))
    try:
        assert await _until(lambda: "not a marionet controller" in caplog.text, 3), caplog.text
        assert "role 'endpoint'" in caplog.text
        assert got == []  # refused before a hello, so it learns nothing
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        srv.close()
    ctl, eport, _ = await _tls_controller(pkidir)  # the real one is accepted
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(dialer.dial_forever(ep, f"{HOST}:{eport}", ctx, {}, stop))
    try:
        await ctl.wait_for_vps(1, 5)
        assert ctl.registry.vps["ep1"].alive
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await ctl.close()
        await ep.close()


# --------------------------------------------------------------------------
# C. a VP that re-registers


async def test_reregistered_vp_is_not_buried_by_its_old_link():
    ctl, eport, cport = await _plain_controller()
    try:
        c = await connect_controller(f"{HOST}:{cport}", insecure=True)
        events: list[m.VpEvent] = []
        c.on_vp_event = events.append
        old = await Raw.connect(eport)
        assert isinstance(await old.register("dup"), m.Ok)
        attached = await c._request(m.Attach(id=99, vp="dup"))
        chan = asyncio.StreamReader()
        c.channels[attached.ch] = chan
        new = await Raw.connect(eport)
        assert isinstance(await new.register("dup", {"cc": "NZ"}), m.Ok)
        bye = await old.until(m.Bye)
        assert bye.code == "replaced"
        await asyncio.sleep(0.2)
        link = ctl.endpoints["dup"]
        assert not link.closed and link.record is ctl.registry.vps["dup"]
        assert ctl.registry.vps["dup"].alive and ctl.registry.vps["dup"].cc == "NZ"
        assert [e.event for e in events] == ["arrived", "arrived"]
        assert [v["name"] for v in await c.vps()] == ["dup"]
        # the old link's client channel was closed, saying why
        data = await asyncio.wait_for(chan.read(), 2)
        assert b"replaced" in data
        old.close()
        await asyncio.sleep(0.1)
        assert ctl.endpoints["dup"] is link and ctl.registry.vps["dup"].alive
        new.close()  # the current link going is a real "gone"
        assert await _until(lambda: not ctl.registry.vps["dup"].alive, 2)
        assert await _until(lambda: [e.event for e in events] == ["arrived", "arrived", "gone"], 2)
        await c.close()
    finally:
        await ctl.close()


async def test_replaced_endpoint_backs_off_instead_of_flapping(monkeypatch, caplog):
    assert dialer.REPLACED_BACKOFF_S == 30.0
    monkeypatch.setattr(dialer, "REPLACED_BACKOFF_S", 1.5)
    caplog.set_level(logging.WARNING, logger="marionet.endpoint")
    emb = await start_embedded([("twin", {})], config=ControllerConfig(keepalive_s=0.2, dead_after_s=5.0))
    try:
        rec = lambda: emb.controller.registry.vps["twin"]  # noqa: E731
        assert rec().connections == 1
        await emb.add_vp("twin")
        assert await _until(lambda: rec().connections == 2, 3)
        await asyncio.sleep(1.0)
        assert rec().connections == 2 and rec().alive  # the replaced one waits
        assert "another endpoint using the name 'twin'" in caplog.text
        assert await _until(lambda: rec().connections == 3, 3)  # and then tries again
    finally:
        await emb.close()


# --------------------------------------------------------------------------
# D. set-up deadline


async def test_links_that_do_not_set_up_in_time_are_closed():
    assert ControllerConfig().hello_timeout_s == 5.0
    ctl, eport, cport = await _plain_controller(ControllerConfig(hello_timeout_s=1.0))
    try:
        hello = encode(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="endpoint", name="slow"))

        async def closed_with(r: Raw, t0: float) -> tuple[str, float]:
            bye = await r.until(m.Bye, 4)
            assert bye is not None and await r.next() is None
            return bye.reason, time.monotonic() - t0

        t0 = time.monotonic()
        idle = await Raw.connect(cport)
        trickle = await Raw.connect(eport)
        mute = await Raw.connect(eport)
        mute.send(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="endpoint", name="mute"))

        async def drip() -> None:
            for b in hello:
                trickle.writer.write(bytes([b]))
                await asyncio.sleep(0.3)

        dripper = asyncio.get_running_loop().create_task(drip())
        results = await asyncio.gather(closed_with(idle, t0), closed_with(trickle, t0), closed_with(mute, t0))
        dripper.cancel()
        (r1, t1), (r2, t2), (r3, t3) = results
        assert "no hello within 1 s" in r1 and "no hello within 1 s" in r2
        assert "no registration within 1 s" in r3
        assert all(0.9 < t < 2.5 for t in (t1, t2, t3)), (t1, t2, t3)
        assert not ctl.endpoints and not ctl.clients
        # a prompt one stays
        ok = await Raw.connect(eport)
        assert isinstance(await ok.register("prompt"), m.Ok)
        await asyncio.sleep(1.3)
        assert "prompt" in ctl.endpoints
        ok.close()
    finally:
        await ctl.close()


# --------------------------------------------------------------------------
# E. one channel's bad data ends that channel, not the VP link


async def test_bad_data_on_one_channel_ends_only_that_channel():
    emb = await start_embedded([("v", {})], config=ControllerConfig(keepalive_s=0.2, dead_after_s=5.0))
    try:
        ctl = emb.controller
        c = await connect_controller(emb.client_address, insecure=True)
        victim, bystander = await c.attach("v"), await c.attach("v")
        ep_link = ctl.endpoints["v"]
        # garbage inside a channel: the endpoint's session for it fails alone
        c.send(m.ChData(ch=victim._writer.ch, data=b"\x00\x00\x00\x03zzz"))
        with pytest.raises(ConnectionLost) as ei:
            await asyncio.wait_for(victim.info(), 3)
        assert "bad-message" in str(ei.value)
        assert (await bystander.info()).name == "v"
        # a chunk that fits the client's frame limit but not the endpoint's
        # once re-wrapped (the endpoint-side channel id takes more bytes,
        # as it does after a few hundred channels)
        ep_link._ch_ids = itertools.count(300)
        c2 = await connect_controller(emb.client_address, insecure=True)
        big_victim = await c2.attach("v")
        ch = big_victim._writer.ch
        overhead = len(encode(m.ChData(ch=ch, data=b"x" * (1 << 20)))) - (1 << 20) - 4
        c2.send(m.ChData(ch=ch, data=b"x" * (ctl.config.max_frame - overhead)))
        with pytest.raises(ConnectionLost) as ei:
            await asyncio.wait_for(big_victim.info(), 3)
        assert "exceeds" in str(ei.value)
        assert ctl.endpoints["v"] is ep_link and not ep_link.closed
        assert (await bystander.info()).name == "v"
        assert [v["name"] for v in await c2.vps()] == ["v"]  # c2's own link is fine too
        await c.close()
        await c2.close()
    finally:
        await emb.close()


async def test_oversized_chunk_from_an_endpoint_ends_only_that_channel():
    ctl, eport, cport = await _plain_controller()
    try:
        ep = await Raw.connect(eport)
        assert isinstance(await ep.register("r"), m.Ok)
        c = await connect_controller(f"{HOST}:{cport}", insecure=True)
        attached = await c._request(m.Attach(id=99, vp="r"))
        chan = asyncio.StreamReader()
        c.channels[attached.ch] = chan
        opened = await ep.until(m.ChOpen)
        ep.send(m.ChData(ch=opened.ch, data=b"x" * (ctl.config.max_chunk + 1)))
        data = await asyncio.wait_for(chan.read(), 3)
        assert b"chunk" in data and b"x" * 100 not in data
        assert (await ep.until(m.ChClose)).ch == opened.ch
        assert "r" in ctl.endpoints and [v["name"] for v in await c.vps()] == ["r"]
        await c.close()
        ep.close()
    finally:
        await ctl.close()
