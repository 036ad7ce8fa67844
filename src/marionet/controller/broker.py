"""The controller: endpoints dial in, clients attach, channels are routed.

Endpoints sit behind NAT, so they connect to us and register. A client
asks for a channel to a VP; we open a matching channel on that VP's link
and forward ``ChData`` chunks both ways without decoding them — the
endpoint and the client speak the ordinary packet protocol inside. What
the controller owns is everything between: the registry, liveness
(keepalive pings, which also give each VP's clock offset), isolation
(a client sees only its own channels), and bounding what it buffers for a
slow reader without losing what must not be lost:

- a client whose connection backs up gets ``ChFlow(pause=True)`` sent to
  the endpoint for each of its channels, so the endpoint holds its
  notifications and stops reading stream sockets (TCP flow control then
  slows the far sender); ``ChFlow(pause=False)`` once it drains. Chunks
  already in flight that hold only droppable notifications (``note``)
  are dropped and counted (an ``NDrop`` on that channel); the others are
  always forwarded.
- an endpoint link that backs up pauses reading from the clients feeding
  it, so their requests wait in their own socket buffers.
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
from marionet.wire.codec import (CHDATA_OVERHEAD, DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError,
                                 bye_and_close, encode)

log = logging.getLogger("marionet.controller")


@dataclass
class ControllerConfig:
    keepalive_s: float = 1.0
    dead_after_s: float = 4.0
    client_buffer: int = 8 * 1024 * 1024  # past this, its channels are paused (ChFlow)
    client_hard_limit: int = 64 * 1024 * 1024  # past this, a client is disconnected
    max_frame: int = DEFAULT_MAX_FRAME
    #: Over TLS: endpoints need role "endpoint" and CN = their VP name,
    #: clients role "client" or "operator".
    require_endpoint_role: bool = True
    require_client_role: bool = True
    #: A link that has not said hello (and, for an endpoint, registered)
    #: within this many seconds is closed: idle or trickling connections
    #: must not hold controller resources.
    hello_timeout_s: float = 5.0

    @property
    def max_chunk(self) -> int:
        """Largest ``ChData`` payload that still fits a frame after re-wrapping."""
        return self.max_frame - CHDATA_OVERHEAD


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
        self._set_up_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "unix"
        self.identity = self._identity(transport)
        revoked = self.ctl.revoked_reason(self.identity)
        if revoked is not None:
            self.fail("revoked", revoked)
            return
        self._set_up_timer = asyncio.get_running_loop().call_later(
            self.ctl.config.hello_timeout_s, self._set_up_expired)

    # -- set-up deadline
    def set_up(self) -> bool:
        """Has the peer done what it must before it may stay connected?"""
        return self.hello_done

    def _set_up_done(self) -> None:
        if self._set_up_timer is not None:
            self._set_up_timer.cancel()
            self._set_up_timer = None

    def _set_up_expired(self) -> None:
        self._set_up_timer = None
        if not self.closed and not self.set_up():
            what = "hello" if not self.hello_done else "registration"
            self.fail("timeout", f"no {what} within {self.ctl.config.hello_timeout_s:g} s")

    def _identity(self, transport: asyncio.BaseTransport) -> dict[str, Any]:
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            from marionet.guard.tls import IdentityError, peer_identity

            try:
                ident = peer_identity(sslobj)
            except IdentityError as exc:
                return {"error": str(exc)}
            from cryptography import x509

            serial = x509.load_der_x509_certificate(sslobj.getpeercert(binary_form=True)).serial_number
            return {"name": ident.common_name, "role": ident.role, "fingerprint": ident.fingerprint,
                    "privileges": ident.privileges or {}, "tls": True, "serial": serial}
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
                if self.set_up():
                    self._set_up_done()
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
        self._set_up_done()

    def role_error(self, allowed: tuple[str, ...], enforce: bool) -> str | None:
        """Why this link's certificate may not use this port, if it may not.

        Only TLS peers carry a role; plain TCP (loopback only) and Unix
        socket peers are trusted by where they connect from."""
        ident = self.identity
        if "error" in ident:
            return ident["error"]
        if enforce and ident.get("tls") and ident.get("role") not in allowed:
            return (f"this port is for {self.role_expected}s: certificate {ident.get('name')!r} has role "
                    f"{ident.get('role')!r}, need {' or '.join(repr(a) for a in allowed)}")
        return None


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
        self.write_paused = False
        self._held_clients: set[ClientLink] = set()  # whose reading we paused
        self._gone_reason = "is gone"

    def set_up(self) -> bool:
        return self.name is not None

    def check_identity(self) -> str | None:
        return self.role_error(("endpoint",), self.ctl.config.require_endpoint_role)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        super().data_received(data)

    def handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            route = self.channels.get(msg.ch)
            if route is None:
                return
            if len(msg.data) > self.ctl.config.max_chunk:
                # Re-wrapped for the client it would not fit a frame: end
                # this channel, not the client's link or this VP's.
                reason = f"the endpoint sent a {len(msg.data)}-byte chunk (limit {self.ctl.config.max_chunk})"
                self.close_channel(msg.ch, reason)
                route[0].channel_closed(route[1], reason)
                return
            route[0].deliver(route[1], msg.data, msg.note)
        elif isinstance(msg, m.Pong):
            self._on_pong(msg)
        elif isinstance(msg, m.Register):
            self._register(msg)
        elif isinstance(msg, m.ChClose):
            route = self.channels.pop(msg.ch, None)
            if route is not None:
                route[0].channel_closed(route[1], msg.reason or "closed by the endpoint")
                self._unhold_if_idle(route[0])
        elif isinstance(msg, m.Ok | m.Error | m.ChFlow):
            pass  # nothing to pause on our side: clients' reads are paused via the transport
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
        if self.ctl.config.require_endpoint_role and self.identity.get("tls") and cert_name != name:
            self.fail("denied", f"certificate is for {cert_name!r}, not VP {name!r}: an endpoint "
                                "registers under its certificate's common name")
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
        # Newest connection wins; the maps point at us *before* the old
        # link closes, so its closing does not take our record with it.
        self.name = name
        self.record = rec
        self.ctl.endpoints[name] = self
        self._set_up_done()
        if old is not None and old is not self:
            old._gone_reason = "reconnected (this session's link was replaced)"
            old.fail("replaced", f"another connection registered as VP {name!r}")
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
        if client.write_paused:
            self.flow(ch, True)
        if self.write_paused:
            self._hold(client)
        return ch

    def forward(self, ch: int, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(m.ChData(ch=ch, data=data)))

    def flow(self, ch: int, pause: bool) -> None:
        """Ask the endpoint to stop (or resume) producing on channel ``ch``."""
        if ch in self.channels:
            self.send(m.ChFlow(ch=ch, pause=pause))

    def close_channel(self, ch: int, reason: str) -> None:
        route = self.channels.pop(ch, None)
        if route is not None:
            self.send(m.ChClose(ch=ch, reason=reason))
            self._unhold_if_idle(route[0])

    # -- backpressure from the endpoint: stop reading the clients feeding it
    def pause_writing(self) -> None:
        self.write_paused = True
        for client, _ in list(self.channels.values()):
            self._hold(client)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._unhold_all()

    def _hold(self, client: "ClientLink") -> None:
        if client not in self._held_clients:
            self._held_clients.add(client)
            client.hold_reading(self)

    def _unhold_if_idle(self, client: "ClientLink") -> None:
        if client in self._held_clients and not any(c is client for c, _ in self.channels.values()):
            self._held_clients.discard(client)
            client.release_reading(self)

    def _unhold_all(self) -> None:
        held, self._held_clients = self._held_clients, set()
        for client in held:
            client.release_reading(self)

    def on_closed(self) -> None:
        if self.closed and self.name is None and not self.channels:
            return
        super().on_closed()
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._unhold_all()
        for client, client_ch in list(self.channels.values()):
            client.channel_closed(client_ch, f"VP {self.name} {self._gone_reason}")
        self.channels.clear()
        if self.name is not None and self.ctl.endpoints.get(self.name) is self:
            del self.ctl.endpoints[self.name]
            self.ctl.registry.gone(self.name, self.record)
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
        self.write_paused = False
        self.dropped_total = 0
        self.flow_pauses = 0  # times we asked endpoints to hold this client's channels
        self._read_holds: set[EndpointLink] = set()  # slow endpoints this client feeds

    def check_identity(self) -> str | None:
        return self.role_error(("client", "operator"), self.ctl.config.require_client_role)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.closed:
            return
        self.ctl.clients.add(self)
        limit = self.ctl.config.client_buffer
        self.transport.set_write_buffer_limits(high=limit, low=limit // 4)  # type: ignore[union-attr]

    def handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            chan = self.channels.get(msg.ch)
            if chan is None:
                self.send(m.ChClose(ch=msg.ch, reason="no such channel"))
                return
            if len(msg.data) > self.ctl.config.max_chunk:
                # Re-wrapped for the endpoint it could exceed the frame
                # limit and cost every session on the VP its link.
                reason = f"chunk of {len(msg.data)} bytes exceeds {self.ctl.config.max_chunk}"
                self._drop_channel(msg.ch, reason)
                self.send(m.ChClose(ch=msg.ch, reason=reason))
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
            self._drop_channel(msg.ch, msg.reason or "closed by the client")
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

    def _drop_channel(self, ch: int, reason: str) -> None:
        chan = self.channels.pop(ch, None)
        if chan is not None:
            chan.endpoint.close_channel(chan.ep_ch, reason)

    # -- from endpoints
    def deliver(self, ch: int, data: bytes, note: bool) -> None:
        """Forward a chunk; only notification chunks may be dropped (and counted)."""
        chan = self.channels.get(ch)
        tr = self.transport
        if chan is None or tr is None or tr.is_closing():
            return
        buffered = tr.get_write_buffer_size()
        if note and (self.write_paused or buffered > self.ctl.config.client_buffer):
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
            self.transport.write(encode(m.ChData(ch=ch, data=note, note=False)))

    def pause_writing(self) -> None:
        """The client reads slowly: ask its endpoints to hold its channels."""
        self.write_paused = True
        self.flow_pauses += 1
        for chan in list(self.channels.values()):
            chan.endpoint.flow(chan.ep_ch, True)

    def resume_writing(self) -> None:
        self.write_paused = False
        for ch, chan in list(self.channels.items()):
            self._report_drops(ch, chan)
            chan.endpoint.flow(chan.ep_ch, False)

    # -- backpressure from endpoints: while one is slow, do not read our requests
    def hold_reading(self, endpoint: EndpointLink) -> None:
        if not self._read_holds and self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._read_holds.add(endpoint)

    def release_reading(self, endpoint: EndpointLink) -> None:
        if endpoint not in self._read_holds:
            return
        self._read_holds.discard(endpoint)
        if not self._read_holds and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

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
        for chan in list(self.channels.values()):
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
        self.trust: Any = None  # marionet.guard.trust.Trust: revocations of TLS peers

    def set_trust(self, trust: Any) -> None:
        """Refuse revoked certificates, and end links whose certificate a
        reloaded revocation list names."""
        self.trust = trust
        trust.on_revoked(lambda _revset: self._revocations_changed())

    def revoked_reason(self, identity: dict[str, Any]) -> str | None:
        serial = identity.get("serial")
        if self.trust is None or serial is None:
            return None
        return self.trust.revoked_reason(str(identity.get("name")), [serial])

    def _revocations_changed(self) -> None:
        links: list[Link] = [*self.endpoints.values(), *self.clients]
        for link in links:
            reason = self.revoked_reason(link.identity)
            if reason is not None and not link.closed:
                log.warning("ending link %s: %s", link.peer, reason)
                link.fail("revoked", reason)

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
