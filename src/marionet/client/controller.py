"""Client side of a controller connection: registry queries and channels.

A channel to a VP behaves like a direct connection to that VP's endpoint:
we hand ``PacketSession`` a stream reader fed from ``ChData`` and a writer
that wraps what it writes in ``ChData``. When the controller closes a
channel (VP gone, controller shutting down) the session sees a ``Bye``
carrying the controller's reason, so errors say what happened. A
controller that ends the whole connection with a ``Bye`` (a refused
certificate role, a set-up timeout) fails pending requests with its reason.
Over TLS with a CA, the server must hold a certificate with role
"controller": another certificate from the same CA (an endpoint's) must
not pass for one.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from typing import Any, Callable

from marionet.client.address import parse_hostport
from marionet.client.errors import ConnectionLost, EndpointError, PeerProtocolError
from marionet.client.credentials import Credentials
from marionet.client.packet import PacketSession
from marionet.wire import messages as m
from marionet.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, encode

DEFAULT_CONTROLLER_PORT = 7771


class ChannelWriter:
    """The writer half of a channel, shaped like ``asyncio.StreamWriter``."""

    def __init__(self, conn: "ControllerConnection", ch: int) -> None:
        self.conn = conn
        self.ch = ch
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.conn.send(m.ChData(ch=self.ch, data=data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.conn.close_channel(self.ch)

    async def wait_closed(self) -> None:
        return None

    async def drain(self) -> None:
        await self.conn.drain()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class ControllerConnection:
    """One connection to a controller, shared by every channel on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self.channels: dict[int, asyncio.StreamReader] = {}
        self._task: asyncio.Task | None = None
        self.closed_reason: str | None = None
        self.name = ""
        self.on_vp_event: Callable[[m.VpEvent], None] | None = None
        self.bye: m.Bye | None = None  # the controller's reason, if it gave one
        #: proven to each endpoint we attach to (the controller's word is not enough)
        self.credentials: Credentials | None = None

    async def start(self, timeout: float = 10.0) -> "ControllerConnection":
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        hello = await asyncio.wait_for(self._request(
            m.Hello(id=next(self._ids), version=m.PROTOCOL_VERSION, role="client")), timeout)
        self.name = hello.name
        return self

    def send(self, msg: m.Message) -> None:
        if self.closed_reason is not None:
            raise ConnectionLost(f"controller connection closed: {self.closed_reason}")
        self.writer.write(encode(msg))

    async def drain(self) -> None:
        await self.writer.drain()

    def _request(self, msg: m.Message) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg.id] = fut  # type: ignore[attr-defined]
        self.send(msg)
        return fut

    async def _read_loop(self) -> None:
        reason = "the controller closed the connection"
        try:
            while True:
                data = await self.reader.read(1 << 18)
                if not data:
                    break
                for msg in self.decoder.feed(data):
                    self._dispatch(msg)
        except ProtocolError as exc:
            reason = f"bad data from the controller: {exc}"
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
        except asyncio.CancelledError:
            reason = "closed"
        finally:
            self._end(reason)

    def _end(self, reason: str) -> None:
        if self.closed_reason is None:
            self.closed_reason = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))
        self._pending.clear()
        for ch in list(self.channels):
            self._channel_closed(ch, reason, "controller-lost")

    def _dispatch(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            r = self.channels.get(msg.ch)
            if r is not None:
                r.feed_data(msg.data)
        elif isinstance(msg, m.ChClose):
            self._channel_closed(msg.ch, msg.reason, "channel-closed")
        elif isinstance(msg, m.VpEvent):
            if self.on_vp_event is not None:
                self.on_vp_event(msg)
        elif isinstance(msg, m.Bye):
            self.bye = msg
            self.closed_reason = f"{msg.code}: {msg.reason}"
            self._end(f"controller ended the connection: {self.closed_reason}")
        else:
            rid = getattr(msg, "id", None)
            fut = self._pending.pop(rid, None) if rid is not None else None
            if fut is not None and not fut.done():
                if isinstance(msg, m.Error):
                    fut.set_exception(EndpointError(msg.code, msg.reason, msg.rule))
                else:
                    fut.set_result(msg)

    def _channel_closed(self, ch: int, reason: str, code: str) -> None:
        r = self.channels.pop(ch, None)
        if r is not None:
            r.feed_data(encode(m.Bye(code=code, reason=reason or "channel closed")))
            r.feed_eof()

    def close_channel(self, ch: int) -> None:
        if self.channels.pop(ch, None) is not None and self.closed_reason is None:
            try:
                self.send(m.ChClose(ch=ch, reason="closed by the client"))
            except ConnectionLost:
                pass

    # ------------------------------------------------------------------ API
    async def vps(self, alive_only: bool = True) -> list[dict[str, Any]]:
        reply = await self._request(m.VpList(id=next(self._ids), alive_only=alive_only))
        return list(reply.vps)

    async def attach(self, vp: str, timeout: float = 10.0) -> PacketSession:
        """A packet session to VP ``vp`` through this controller."""
        reply = await asyncio.wait_for(self._request(m.Attach(id=next(self._ids), vp=vp)), timeout)
        reader = asyncio.StreamReader(limit=1 << 20)
        self.channels[reply.ch] = reader
        session = PacketSession(reader, ChannelWriter(self, reply.ch))  # type: ignore[arg-type]
        session.vp_info = reply.vp  # type: ignore[attr-defined]
        try:
            await session.start(timeout, credentials=self.credentials, vp=vp)
        except PeerProtocolError:
            raise
        return session

    async def ping(self) -> tuple[int, int, int, int]:
        import time

        t0 = time.time_ns()
        pong = await self._request(m.Ping(id=next(self._ids)))
        return t0, pong.t_rx, pong.t_tx, time.time_ns()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001
            pass
        self._end("closed")


async def connect_controller(address: str, *, ca: Any = None, cert: Any = None, key: Any = None,
                             insecure: bool = False, timeout: float = 10.0) -> ControllerConnection:
    """Connect to a controller at ``HOST:PORT`` (TLS) or ``unix:PATH``."""
    try:
        if address.startswith("unix:") or address.startswith("/"):
            path = address[5:] if address.startswith("unix:") else address
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=1 << 20), timeout)
        else:
            host, port = parse_hostport(address, DEFAULT_CONTROLLER_PORT)
            if insecure:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, limit=1 << 20), timeout)
            else:
                reader, writer = await _open_tls(address, host, port, ca, cert, key, timeout)
    except ssl.SSLError as exc:
        from marionet.guard import tls

        raise ConnectionLost(f"TLS handshake with controller {address} failed: {tls.explain(exc)}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionLost(f"cannot connect to controller {address}: {exc or 'timeout'}") from None
    conn = ControllerConnection(reader, writer)
    if cert is not None and key is not None:
        from marionet.client.credentials import Credentials

        conn.credentials = Credentials.load(cert, key)
    over_tls = writer.get_extra_info("ssl_object") is not None
    try:
        await conn.start(timeout)
    except ConnectionLost as exc:
        await conn.close()
        if over_tls and conn.bye is None and "closed the connection" in str(exc):
            # TLS 1.3: the server checks our certificate after our side of the
            # handshake is done, so a refusal shows up as the first read failing.
            raise ConnectionLost(
                f"controller {address} closed the connection during set-up: it probably refused "
                "our client certificate (give cert= and key= issued by its CA, role client)") from None
        raise
    except BaseException:
        await conn.close()
        raise
    return conn


async def _open_tls(address: str, host: str, port: int, ca: Any, cert: Any, key: Any,
                    timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TLS to a controller; with a CA its certificate must have role "controller"."""
    from marionet.guard import tls

    ctx = tls.client_context(ca=ca, cert=cert, key=key)
    try:
        reader, writer, _ident = await tls.open_connection(
            host, port, ctx, server_hostname=host, require_role="controller" if ca is not None else None,
            timeout=timeout, limit=1 << 20)
    except tls.TLSHandshakeError as exc:
        raise ConnectionLost(f"TLS handshake with controller {address} failed: {exc}") from None
    except tls.IdentityError as exc:
        raise ConnectionLost(f"{address} is not a marionet controller: {exc}") from None
    return reader, writer
