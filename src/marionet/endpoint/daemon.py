"""The endpoint daemon: shared state, and serving connections.

``Endpoint`` holds what all sessions share — configuration, the guard, the
send engine, capabilities. ``ClientConnection`` turns one byte stream into
a ``Session``: it checks the hello, decodes frames (a protocol error ends
only this connection, after a ``Bye`` that says why) and applies
backpressure from the transport to the session's notification buffer.
The same connection class serves clients connecting directly (``--listen``)
and, later, a controller the endpoint dials out to.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marionet import __version__
from marionet.endpoint.engine import InlineEngine
from marionet.endpoint.resolvconf import read_resolvers
from marionet.endpoint.session import Session
from marionet.guard import Guard, GuardDenied, Principal
from marionet.wire import messages as m
from marionet.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, bye_and_close, encode

log = logging.getLogger("marionet.endpoint")


def default_state_dir() -> Path:
    """Where a standalone endpoint keeps its self-signed certificate."""
    base = os.environ.get("MARIONET_STATE")
    if base:
        return Path(base)
    if os.geteuid() == 0:
        return Path("/var/lib/marionet")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "marionet"


@dataclass
class EndpointConfig:
    name: str = field(default_factory=socket.gethostname)
    buffer_limit: int = 16 * 1024 * 1024
    max_frame: int = DEFAULT_MAX_FRAME
    max_sockets: int = 256
    connect_timeout_ns: int = 10_000_000_000
    engine: str = "process"  # "process" (dedicated sender) or "inline"
    resolv_conf: str = "/etc/resolv.conf"  # where info() finds the host's DNS resolvers
    write_high_water: int = 1024 * 1024
    tags: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Endpoint:
    """State shared by every session on this vantage point."""

    def __init__(self, config: EndpointConfig | None = None, guard: Guard | None = None) -> None:
        self.config = config or EndpointConfig()
        self.guard = guard or Guard()
        self.version = __version__
        self.sessions: set[Session] = set()
        self.primitives: Any = __import__("marionet.endpoint.primitives", fromlist=["PrimitiveRunner"]).PrimitiveRunner(self)
        self.engine: Any = None
        self._stamp_anchor: socket.socket | None = None
        self._caps: dict[str, bool] | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self.audit_log: list[str] = []

    async def start(self) -> None:
        """Start the send engine (call inside the running loop)."""
        loop = asyncio.get_running_loop()
        if self.engine is not None:
            return
        # The kernel turns receive timestamping on lazily (a static key
        # flipped from a workqueue) when the first socket asks, so packets
        # in the first moments after that are not stamped. One socket that
        # asks for stamps for the endpoint's whole life keeps it on, so the
        # first measurement on a fresh endpoint gets kernel times too.
        from marionet.endpoint.timestamps import enable_rx_timestamps, recv_stamped

        anchor = self._stamp_anchor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enable_rx_timestamps(anchor)
        anchor.bind(("127.0.0.1", 0))
        anchor.setblocking(False)
        for _ in range(100):  # until a packet to ourselves comes back kernel-stamped
            anchor.sendto(b"t", anchor.getsockname())
            await asyncio.sleep(0.002)
            got = recv_stamped(anchor)
            if got is not None and got.ts_source == "kernel":
                break
        if self.config.engine == "process":
            try:
                from marionet.endpoint.procengine import ProcessEngine

                self.engine = ProcessEngine(loop)
                await self.engine.start()
            except Exception as exc:  # noqa: BLE001 - fall back and say so
                log.warning("sender process unavailable (%s); sending from the event loop", exc)
                self.engine = InlineEngine(loop)
        else:
            self.engine = InlineEngine(loop)

    async def close(self) -> None:
        for srv in self.servers:
            srv.close()
        for s in list(self.sessions):
            s.close()
        if self.engine is not None:
            self.engine.close()
        if self._stamp_anchor is not None:
            self._stamp_anchor.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass

    # ------------------------------------------------------------ facts
    def capabilities(self) -> dict[str, bool]:
        if self._caps is None:
            caps = {"kernel_rx_timestamps": True, "kernel_tx_timestamps": True}
            try:
                socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
                caps["raw"] = True
            except PermissionError:
                caps["raw"] = False
            try:
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.bind(("::1", 0))
                s.close()
                caps["ipv6"] = True
            except OSError:
                caps["ipv6"] = False
            caps["capture"] = caps["raw"]
            from marionet.endpoint import timestamps

            caps["tx_key_per_send"] = timestamps.supports_ts_opt_id()
            caps["sender_process"] = type(self.engine).__name__ == "ProcessEngine"
            self._caps = caps
        return dict(self._caps)

    def addresses(self) -> list[str]:
        return local_addresses()

    def resolvers(self) -> list[str]:
        return read_resolvers(self.config.resolv_conf)

    def device_of(self, _esock: Any) -> str | None:
        return None

    def audit(self, principal: Principal, op: str, exc: GuardDenied) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} deny {principal.name} {op} rule={exc.rule}: {exc.reason}"
        self.audit_log.append(line)
        log.warning("%s", line)

    # ------------------------------------------------------------ serving
    async def serve(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> asyncio.base_events.Server:
        await self.start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self), host, port, ssl=ssl_ctx,
            ssl_handshake_timeout=10 if ssl_ctx else None,
        )
        self.servers.append(server)
        return server


class ClientConnection(asyncio.Protocol):
    """One byte stream from a client to this endpoint."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.decoder = FrameDecoder(endpoint.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._paused = False
        self.peer = "?"
        self.principal = Principal()

    # -- outlet interface for the session
    def write(self, data: bytes, note: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writable(self) -> bool:
        return not self._paused and self.transport is not None and not self.transport.is_closing()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        hw = self.endpoint.config.write_high_water
        self.transport.set_write_buffer_limits(high=hw, low=hw // 4)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.getpeercert(binary_form=True):
            try:
                from marionet.guard.tls import peer_identity

                ident = peer_identity(sslobj)
                self.principal = Principal(name=ident.common_name or "?", role=ident.role or "client",
                                           fingerprint=ident.fingerprint,
                                           privileges=ident.privileges or {})
            except Exception as exc:  # noqa: BLE001
                self.fail("bad-identity", str(exc))

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
            return
        for msg in msgs:
            if self.session is None:
                self._hello(msg)
                if self.session is None:
                    return
                continue
            if isinstance(msg, m.Hello):
                self.fail("bad-message", "hello sent twice")
                return
            if isinstance(msg, m.Bye):
                self.close_stream()
                return
            self.session.handle(msg)

    def _hello(self, msg: m.Message) -> None:
        if not isinstance(msg, m.Hello):
            self.fail("no-hello", f"expected hello first, got {type(msg).__struct_config__.tag}")
            return
        if msg.version != m.PROTOCOL_VERSION:
            self.fail("version", f"protocol version {msg.version} not supported (this endpoint speaks {m.PROTOCOL_VERSION})")
            return
        self.session = Session(self.endpoint, self, self.principal)
        self.endpoint.sessions.add(self.session)
        self.write(encode(m.Hello(id=msg.id, version=m.PROTOCOL_VERSION, role="endpoint",
                                  name=self.endpoint.config.name,
                                  features=["nsendv", "ncap-filter", "ncap-program", "tasks"])))

    def close_stream(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._end()

    def fail(self, code: str, reason: str) -> None:
        """End this connection with a ``Bye`` naming the problem."""
        log.info("closing connection from %s: %s: %s", self.peer, code, reason)
        bye_and_close(self.transport, code, reason)
        self._end()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.session is not None:
            self.session.on_writable()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if self.session is not None:
            self.session.close()
            self.endpoint.sessions.discard(self.session)
            self.session = None


# ---------------------------------------------------------------------------
# Local addresses (no external dependency)
# ---------------------------------------------------------------------------

SIOCGIFADDR = 0x8915


def local_addresses() -> list[str]:
    """IPv4 and IPv6 addresses of this host's interfaces."""
    out: list[str] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _idx, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
                out.append(socket.inet_ntoa(res[20:24]))
            except OSError:
                continue
    finally:
        s.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except OSError:
        pass
    return out
