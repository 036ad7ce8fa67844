"""The controller: endpoints dial in, clients attach, channels are routed.

Endpoints sit behind NAT, so they connect to us and register. A client
asks for a channel to a VP; we open a matching channel on that VP's link
and forward ``ChData`` chunks both ways without decoding them — the
endpoint and the client speak the ordinary packet protocol inside. What
the controller owns is everything between: the registry, liveness
(keepalive pings, which also give each VP's clock offset), isolation
(a client sees only its own channels), and bounding what it buffers for a
slow client (notification chunks are dropped and counted; the client is
told with an ``NDrop`` on that channel).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Any

from marionet.controller.registry import MetaError, Registry, VpRecord
from marionet.wire import messages as m
from marionet.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, bye_and_close, encode

log = logging.getLogger("marionet.controller")


@dataclass
class ControllerConfig:
    keepalive_s: float = 1.0
    dead_after_s: float = 4.0
    client_buffer: int = 8 * 1024 * 1024  # past this, notification chunks are dropped
    client_hard_limit: int = 64 * 1024 * 1024  # past this, a client is disconnected
    max_frame: int = DEFAULT_MAX_FRAME
    require_endpoint_role: bool = True
    require_client_role: bool = True


class Link(asyncio.Protocol):
    """Framing, hello and failure handling shared by both link kinds."""

    role_expected = ""

    def __init__(self, ctl: "Controller") -> None:
        self.ctl = ctl
        self.decoder = FrameDecoder(ctl.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.identity: dict[str, Any] = {}
        self.hello_done = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unix"
        self.identity = self._identity(transport)

    def _identity(self, transport: asyncio.BaseTransport) -> dict[str, Any]:
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            from marionet.guard.tls import IdentityError, peer_identity

            try:
                ident = peer_identity(sslobj)
            except IdentityError as exc:
                return {"error": str(exc)}
            return {"name": ident.common_name, "role": ident.role, "fingerprint": ident.fingerprint,
                    "privileges": ident.privileges or {}}
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                pid, uid, gid = struct.unpack("3i", creds)
                return {"name": f"uid:{uid}", "role": None, "local": True}
            except OSError:
                return {"name": "unix", "role": None, "local": True}
        return {"name": self.peer, "role": None, "insecure": True}

    def send(self, msg: m.Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))

    def fail(self, code: str, reason: str) -> None:
        log.info("closing %s link %s: %s: %s", self.role_expected, self.peer, code, reason)
        bye_and_close(self.transport, code, reason)
        self.on_closed()

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
            return
        for msg in msgs:
            if self.closed:
                return
            if not self.hello_done:
                if not isinstance(msg, m.Hello):
                    self.fail("no-hello", "expected hello first")
                    return
                if msg.version != m.PROTOCOL_VERSION:
                    self.fail("version", f"protocol version {msg.version} not supported "
                                         f"(controller speaks {m.PROTOCOL_VERSION})")
                    return
                if msg.role != self.role_expected:
                    self.fail("bad-role", f"this port is for {self.role_expected}s, not {msg.role}")
                    return
                err = self.check_identity()
                if err:
                    self.fail("denied", err)
                    return
                self.hello_done = True
                self.send(m.Hello(id=msg.id, version=m.PROTOCOL_VERSION, role="controller",
                                  name=self.ctl.name))
                continue
            try:
                self.handle(msg)
            except Exception as exc:  # noqa: BLE001 - one link's bug must not hurt others
                log.exception("error handling %s on %s", type(msg).__name__, self.peer)
                self.fail("internal", f"{type(exc).__name__}: {exc}")
                return

    def check_identity(self) -> str | None:
        return None

    def handle(self, msg: m.Message) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_closed()

    def on_closed(self) -> None:
        self.closed = True


class EndpointLink(Link):
    """Controller side of one endpoint's dial-in connection."""

    role_expected = "endpoint"

    def __init__(self, ctl: "Controller") -> None:
        super().__init__(ctl)
        self.name: str | None = None
        self.record: VpRecord | None = None
        self.channels: dict[int, tuple[ClientLink, int]] = {}
        self._ch_ids = itertools.count(1)
        self._ping_ids = itertools.count(1)
        self._pings: dict[int, int] = {}
        self._keepalive: asyncio.TimerHandle | None = None
        self.last_rx = time.monotonic()
        self._best_delay: int | None = None

    def check_identity(self) -> str | None:
        ident = self.identity
        if "error" in ident:
            return ident["error"]
        if self.ctl.config.require_endpoint_role and ident.get("role") not in (None, "endpoint") :
            return f"certificate role {ident.get('role')!r} may not register as an endpoint"
        return None

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)

    def handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            route = self.channels.get(msg.ch)
            if route is not None:
                route[0].deliver(route[1], msg.data, msg.note)
        elif isinstance(msg, m.Pong):
            self._on_pong(msg)
        elif isinstance(msg, m.Register):
            self._register(msg)
        elif isinstance(msg, m.ChClose):
            route = self.channels.pop(msg.ch, None)
            if route is not None:
                route[0].channel_closed(route[1], msg.reason or "closed by the endpoint")
        elif isinstance(msg, m.Ok | m.Error):
            pass
        elif isinstance(msg, m.Bye):
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.fail("unexpected", f"{type(msg).__struct_config__.tag} is not expected from an endpoint")

    def _register(self, msg: m.Register) -> None:
        if self.name is not None:
            self.send(m.Error(id=msg.id, code="bad-message", reason="already registered"))
            return
        name = msg.name
        cert_name = self.identity.get("name")
        if self.identity.get("role") == "endpoint" and cert_name and cert_name != name:
            self.fail("denied", f"certificate is for {cert_name!r}, not {name!r}")
            return
        if not name or len(name) > 253:
            self.fail("bad-message", "VP name must be 1..253 characters")
            return
        try:
            rec = self.ctl.registry.arrive(name, msg.meta)
        except MetaError as exc:
            self.fail("bad-meta", str(exc))
            return
        old = self.ctl.endpoints.get(name)
        if old is not None and old is not self:
            old.fail("replaced", "the VP reconnected")  # newest connection wins
        self.name = name
        self.record = rec
        self.ctl.endpoints[name] = self
        self.send(m.Ok(id=msg.id))
        self._schedule_keepalive(0.0)
        self.ctl.broadcast(m.VpEvent(vp=name, event="arrived", info=rec.to_dict()))
        log.info("VP %s arrived from %s", name, self.peer)

    # -- liveness and clock
    def _schedule_keepalive(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        self._keepalive = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        if self.closed:
            return
        if time.monotonic() - self.last_rx > self.ctl.config.dead_after_s:
            self.fail("gone", f"no traffic for {self.ctl.config.dead_after_s:g} s")
            return
        pid = next(self._ping_ids)
        self._pings[pid] = time.time_ns()
        if len(self._pings) > 64:
            self._pings.pop(next(iter(self._pings)))
        self.send(m.Ping(id=pid))
        self._schedule_keepalive(self.ctl.config.keepalive_s)

    def _on_pong(self, msg: m.Pong) -> None:
        t3 = time.time_ns()
        t0 = self._pings.pop(msg.id, None)
        if t0 is None or self.record is None:
            return
        self.record.last_seen_ns = t3
        delay = (t3 - t0) - (msg.t_tx - msg.t_rx)
        offset = ((msg.t_rx - t0) + (msg.t_tx - t3)) // 2
        # Keep the estimate from the fastest exchange in a recent window.
        if self._best_delay is None or delay <= self._best_delay * 1.5:
            self._best_delay = delay if self._best_delay is None else min(self._best_delay, delay)
            self.record.clock_offset_ns = offset
            self.record.clock_rtt_ns = delay

    # -- channels
    def open_channel(self, client: "ClientLink", client_ch: int) -> int:
        ch = next(self._ch_ids)
        self.channels[ch] = (client, client_ch)
        principal = {k: v for k, v in client.identity.items() if k in ("name", "role", "fingerprint", "privileges")}
        self.send(m.ChOpen(ch=ch, principal=principal))
        return ch

    def forward(self, ch: int, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(m.ChData(ch=ch, data=data)))

    def close_channel(self, ch: int, reason: str) -> None:
        if self.channels.pop(ch, None) is not None:
            self.send(m.ChClose(ch=ch, reason=reason))

    def on_closed(self) -> None:
        if self.closed and self.name is None and not self.channels:
            return
        super().on_closed()
        if self._keepalive is not None:
            self._keepalive.cancel()
        for client, client_ch in list(self.channels.values()):
            client.channel_closed(client_ch, f"VP {self.name} is gone")
        self.channels.clear()
        if self.name is not None and self.ctl.endpoints.get(self.name) is self:
            del self.ctl.endpoints[self.name]
            self.ctl.registry.gone(self.name)
            self.ctl.broadcast(m.VpEvent(vp=self.name, event="gone"))
            log.info("VP %s gone", self.name)
        self.name = None


@dataclass
class _ClientChannel:
    endpoint: EndpointLink
    ep_ch: int
    dropped: int = 0
    dropped_bytes: int = 0


class ClientLink(Link):
    """Controller side of one client's connection."""

    role_expected = "client"

    def __init__(self, ctl: "Controller") -> None:
        super().__init__(ctl)
        self.channels: dict[int, _ClientChannel] = {}
        self._ch_ids = itertools.count(1)
        self._paused = False
        self.dropped_total = 0

    def check_identity(self) -> str | None:
        ident = self.identity
        if "error" in ident:
            return ident["error"]
        if self.ctl.config.require_client_role and ident.get("role") not in (None, "client", "operator"):
            return f"certificate role {ident.get('role')!r} may not attach as a client"
        return None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.ctl.clients.add(self)
        limit = self.ctl.config.client_buffer
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)  # type: ignore[union-attr]

    def handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            chan = self.channels.get(msg.ch)
            if chan is None:
                self.send(m.ChClose(ch=msg.ch, reason="no such channel"))
                return
            chan.endpoint.forward(chan.ep_ch, msg.data)
        elif isinstance(msg, m.Attach):
            link = self.ctl.endpoints.get(msg.vp)
            if link is None or link.record is None:
                self.send(m.Error(id=msg.id, code="unknown-vp", reason=f"no live VP named {msg.vp!r}"))
                return
            ch = next(self._ch_ids)
            ep_ch = link.open_channel(self, ch)
            self.channels[ch] = _ClientChannel(link, ep_ch)
            self.send(m.Attached(id=msg.id, ch=ch, vp=link.record.to_dict()))
        elif isinstance(msg, m.ChClose):
            chan = self.channels.pop(msg.ch, None)
            if chan is not None:
                chan.endpoint.close_channel(chan.ep_ch, msg.reason or "closed by the client")
        elif isinstance(msg, m.VpList):
            vps = [r.to_dict() for r in self.ctl.registry.select(alive_only=msg.alive_only)]
            self.send(m.VpListReply(id=msg.id, vps=vps))
        elif isinstance(msg, m.Ping):
            t = time.time_ns()
            self.send(m.Pong(id=msg.id, t_rx=t, t_tx=time.time_ns()))
        elif isinstance(msg, m.Bye):
            self.transport.close()  # type: ignore[union-attr]
        else:
            self.fail("unexpected", f"{type(msg).__struct_config__.tag} is not a controller request")

    # -- from endpoints
    def deliver(self, ch: int, data: bytes, note: bool) -> None:
        chan = self.channels.get(ch)
        tr = self.transport
        if chan is None or tr is None or tr.is_closing():
            return
        buffered = tr.get_write_buffer_size()
        if note and (self._paused or buffered > self.ctl.config.client_buffer):
            frames, nbytes = count_frames(data)
            chan.dropped += frames
            chan.dropped_bytes += nbytes
            self.dropped_total += frames
            return
        if buffered > self.ctl.config.client_hard_limit:
            self.fail("too-slow", f"client did not read {buffered} buffered bytes")
            return
        self._report_drops(ch, chan)
        tr.write(encode(m.ChData(ch=ch, data=data, note=note)))

    def _report_drops(self, ch: int, chan: _ClientChannel) -> None:
        if chan.dropped and self.transport is not None:
            note = encode(m.NDrop(time_ns=time.time_ns(), count=chan.dropped, nbytes=chan.dropped_bytes,
                                  kinds={"controller": chan.dropped}))
            chan.dropped = chan.dropped_bytes = 0
            self.transport.write(encode(m.ChData(ch=ch, data=note, note=True)))

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for ch, chan in list(self.channels.items()):
            self._report_drops(ch, chan)

    def channel_closed(self, ch: int, reason: str) -> None:
        chan = self.channels.pop(ch, None)
        if chan is not None:
            self._report_drops(ch, chan)
            self.send(m.ChClose(ch=ch, reason=reason))

    def on_closed(self) -> None:
        if self.closed:
            return
        super().on_closed()
        self.ctl.clients.discard(self)
        # A client that leaves takes its sessions with it: the endpoints
        # halt its tasks and close its sockets.
        for chan in self.channels.values():
            chan.endpoint.close_channel(chan.ep_ch, "client disconnected")
        self.channels.clear()


def count_frames(data: bytes) -> tuple[int, int]:
    """Number of frames and bytes in a chunk of whole frames."""
    n = pos = 0
    end = len(data)
    while pos + 4 <= end:
        (length,) = struct.unpack_from(">I", data, pos)
        pos += 4 + length
        n += 1
    return n, len(data)


class Controller:
    """Registry and router; start listeners with ``serve_*``."""

    def __init__(self, config: ControllerConfig | None = None, name: str = "controller") -> None:
        self.config = config or ControllerConfig()
        self.name = name
        self.registry = Registry()
        self.endpoints: dict[str, EndpointLink] = {}
        self.clients: set[ClientLink] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self._vp_waiters: list[asyncio.Future] = []

    async def serve_endpoints(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: EndpointLink(self), host, port, ssl=ssl_ctx,
                                       backlog=4096, ssl_handshake_timeout=10 if ssl_ctx else None)
        self.servers.append(srv)
        return srv

    async def serve_clients(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(lambda: ClientLink(self), host, port, ssl=ssl_ctx,
                                       ssl_handshake_timeout=10 if ssl_ctx else None)
        self.servers.append(srv)
        return srv

    async def serve_unix(self, path: str) -> asyncio.base_events.Server:
        loop = asyncio.get_running_loop()
        if os.path.exists(path):
            os.unlink(path)
        srv = await loop.create_unix_server(lambda: ClientLink(self), path)
        os.chmod(path, 0o660)
        self.servers.append(srv)
        return srv

    def broadcast(self, msg: m.Message) -> None:
        for c in list(self.clients):
            if c.hello_done:
                c.send(msg)
        if isinstance(msg, m.VpEvent) and msg.event == "arrived":
            waiters, self._vp_waiters = self._vp_waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(msg.vp)

    async def wait_for_vps(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.endpoints) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self.endpoints)} of {n} VPs arrived within {timeout:g} s")
            fut = asyncio.get_running_loop().create_future()
            self._vp_waiters.append(fut)
            try:
                await asyncio.wait_for(fut, left)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        for srv in self.servers:
            srv.close()
        for link in list(self.endpoints.values()):
            link.fail("shutdown", "controller shutting down")
        for c in list(self.clients):
            c.fail("shutdown", "controller shutting down")
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
        self.servers.clear()
