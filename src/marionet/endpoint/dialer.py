"""The endpoint's side of a controller link: dial out, register, serve channels.

VPs sit behind NAT, so the endpoint connects to the controller and keeps
reconnecting with capped backoff after any disconnect (a restarted
controller sees its VPs back within a couple of seconds) — except when
the controller says another connection took over its name (``replaced``):
then it waits ``REPLACED_BACKOFF_S``, so two endpoints misconfigured with
one name do not take it from each other many times a second. Each channel
the controller opens is one client's session, served by the same
``Session`` code as a direct connection; only the outlet differs. A
channel is writable while the link is and the controller has not paused
it (``ChFlow``: that client reads slowly), so the session holds its
notifications and stalls its stream sockets instead of flooding the
controller.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import ssl
import time
import tomllib
from pathlib import Path
from typing import Any

from marionet.client.address import parse_hostport
from marionet.endpoint.daemon import ClientConnection, Endpoint, EndpointConfig, local_addresses
from marionet.guard import Principal
from marionet.wire import messages as m
from marionet.wire.codec import CHDATA_OVERHEAD, FrameDecoder, ProtocolError, encode
from marionet.signals import stop_event

log = logging.getLogger("marionet.endpoint")

MAX_BACKOFF_S = 1.0
REPLACED_BACKOFF_S = 30.0
CONTROLLER_SILENT_S = 10.0


class ChannelConnection(ClientConnection):
    """One client session carried on a controller channel."""

    def __init__(self, endpoint: Endpoint, link: "ControllerLink", ch: int, principal: Principal) -> None:
        super().__init__(endpoint)
        self.link = link
        self.ch = ch
        self.principal = principal
        self.peer = f"controller channel {ch}"
        self.flow_paused = False  # the controller asked us to hold (ChFlow)

    def write(self, data: bytes, note: bool = False) -> None:
        if len(data) > self.endpoint.config.max_frame - CHDATA_OVERHEAD:
            # The controller would refuse the frame and drop the whole VP
            # link; lose this session instead (sessions split their output,
            # so this is a bug, not a client's doing).
            log.error("channel %d: refusing a %d-byte chunk", self.ch, len(data))
            self.link.channel_ended(self.ch, f"internal: {len(data)}-byte chunk exceeds the frame limit")
            self._end()
            return
        self.link.send(m.ChData(ch=self.ch, data=data, note=note))

    def writable(self) -> bool:
        return not self.flow_paused and self.link.writable()

    def set_flow(self, pause: bool) -> None:
        self.flow_paused = pause
        if not pause:
            self.wake()

    def wake(self) -> None:
        """Writable again: the same path as a transport's resume_writing
        (pending requests, then held notifications, then stalled streams)."""
        if self.writable():
            self.resume_writing()

    def close_stream(self) -> None:
        self.link.channel_ended(self.ch, "closed")
        self._end()

    def fail(self, code: str, reason: str) -> None:
        log.info("closing channel %d: %s: %s", self.ch, code, reason)
        self.write(encode(m.Bye(code=code, reason=reason[:500])))
        self.link.channel_ended(self.ch, f"{code}: {reason}")
        self._end()


class ControllerLink(asyncio.Protocol):
    """Endpoint side of the connection to the controller."""

    def __init__(self, endpoint: Endpoint, meta: dict[str, Any],
                 require_role: str | None = None) -> None:
        self.endpoint = endpoint
        self.meta = meta
        self.require_role = require_role  # the controller's certificate role, checked over TLS
        self.bye: m.Bye | None = None
        self.decoder = FrameDecoder(endpoint.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.channels: dict[int, ChannelConnection] = {}
        self.registered: asyncio.Future = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future = asyncio.get_running_loop().create_future()
        self._paused = False
        self._ids = itertools.count(1)
        self._hello_id = 0
        self._register_id = 0
        self.last_rx = time.monotonic()
        self._watchdog: asyncio.TimerHandle | None = None

    # -- outlet support
    def send(self, msg: m.Message) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode(msg))

    def writable(self) -> bool:
        return not self._paused and self.transport is not None and not self.transport.is_closing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for conn in list(self.channels.values()):
            conn.wake()

    def channel_ended(self, ch: int, reason: str) -> None:
        if self.channels.pop(ch, None) is not None:
            self.send(m.ChClose(ch=ch, reason=reason))

    # -- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        hw = self.endpoint.config.write_high_water
        self.transport.set_write_buffer_limits(high=hw, low=hw // 4)  # type: ignore[union-attr]
        err = self._check_controller(transport)
        if err:
            log.warning("refusing controller: %s", err)
            self.registered.set_exception(RuntimeError(err))
            self.transport.abort()  # type: ignore[union-attr]
            return
        self._hello_id = next(self._ids)
        self.send(m.Hello(id=self._hello_id, version=m.PROTOCOL_VERSION, role="endpoint",
                          name=self.endpoint.config.name))
        self._arm_watchdog()

    def _check_controller(self, transport: asyncio.BaseTransport) -> str | None:
        """Over TLS, the peer must hold a controller certificate: an
        endpoint (or client) certificate from the same CA must not be able
        to impersonate the controller to us."""
        if self.require_role is None or transport.get_extra_info("ssl_object") is None:
            return None
        from marionet.guard.tls import IdentityError, check_identity

        try:
            check_identity(transport, require_role=self.require_role)
        except IdentityError as exc:
            return f"not a marionet controller: {exc}"
        return None

    def _arm_watchdog(self) -> None:
        self._watchdog = asyncio.get_running_loop().call_later(CONTROLLER_SILENT_S / 2, self._check_alive)

    def _check_alive(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if time.monotonic() - self.last_rx > CONTROLLER_SILENT_S:
            log.warning("controller silent for %.0f s; reconnecting", CONTROLLER_SILENT_S)
            self.transport.abort()
            return
        self._arm_watchdog()

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            log.error("bad data from the controller (%s); reconnecting", exc)
            self.transport.abort()  # type: ignore[union-attr]
            return
        for msg in msgs:
            self._handle(msg)

    def _handle(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChData):
            conn = self.channels.get(msg.ch)
            if conn is not None:
                conn.data_received(msg.data)
        elif isinstance(msg, m.Ping):
            # The controller's clock-offset estimate comes from these: in the VP's (possibly skewed) clock,
            # as every time the endpoint's sessions report (marionet.wire.skew).
            skew_ns = int(getattr(self.endpoint.config, "clock_skew_ns", 0) or 0)
            t = time.time_ns() + skew_ns
            self.send(m.Pong(id=msg.id, t_rx=t, t_tx=time.time_ns() + skew_ns))
        elif isinstance(msg, m.ChOpen):
            p = msg.principal or {}
            # The controller's word: worth what the policy gives anonymous
            # sessions, until the client proves its chain (Auth).
            principal = Principal(name=str(p.get("name") or "?")[:128], role=str(p.get("role") or "client")[:32],
                                  fingerprint=str(p["fingerprint"])[:64] if p.get("fingerprint") else None,
                                  auth="controller")
            conn = ChannelConnection(self.endpoint, self, msg.ch, principal)
            self.channels[msg.ch] = conn
        elif isinstance(msg, m.ChFlow):
            conn = self.channels.get(msg.ch)
            if conn is not None:
                conn.set_flow(msg.pause)
        elif isinstance(msg, m.ChClose):
            conn = self.channels.pop(msg.ch, None)
            if conn is not None:
                conn._end()
        elif isinstance(msg, m.Hello) and msg.id == self._hello_id:
            self._register_id = next(self._ids)
            self.send(m.Register(id=self._register_id, name=self.endpoint.config.name, meta=self.meta))
        elif isinstance(msg, m.Ok) and msg.id == self._register_id:
            if not self.registered.done():
                self.registered.set_result(True)
        elif isinstance(msg, m.Error) and msg.id == self._register_id:
            if not self.registered.done():
                self.registered.set_exception(RuntimeError(f"registration refused: {msg.reason}"))
        elif isinstance(msg, m.Bye):
            self.bye = msg
            if msg.code == "replaced":
                log.warning("controller closed the link: %s: %s — is another endpoint using the name %r? "
                            "retrying in %.0f s", msg.code, msg.reason, self.endpoint.config.name,
                            REPLACED_BACKOFF_S)
            else:
                level = logging.INFO if msg.code == "shutdown" else logging.WARNING
                log.log(level, "controller closed the link: %s: %s", msg.code, msg.reason)
            if not self.registered.done():
                self.registered.set_exception(RuntimeError(f"controller refused: {msg.code}: {msg.reason}"))
        elif isinstance(msg, m.VpEvent):
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in list(self.channels.values()):
            conn._end()
        self.channels.clear()
        if not self.registered.done():
            self.registered.set_exception(ConnectionError(f"connection lost: {exc or 'closed'}"))
        if not self.lost.done():
            self.lost.set_result(exc)


def load_meta(path: str | None, tags: dict[str, str]) -> dict[str, Any]:
    """VP metadata from a TOML or JSON file plus ``--tag`` options."""
    meta: dict[str, Any] = {}
    if path:
        text = Path(path).read_bytes()
        try:
            meta = tomllib.loads(text.decode()) if not path.endswith(".json") else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--meta {path}: {exc}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"--meta {path}: not a table")
    merged_tags = dict(meta.get("tags") or {})
    merged_tags.update(tags)
    meta["tags"] = merged_tags
    meta.setdefault("addresses", local_addresses())
    return meta


async def dial_forever(endpoint: Endpoint, controller: str, ssl_ctx: ssl.SSLContext | None,
                       meta: dict[str, Any], stop: asyncio.Event,
                       server_hostname: str | None = None,
                       require_role: str | None = "controller") -> None:
    """Keep a registered link to the controller until ``stop`` is set.

    Over TLS the controller's certificate must carry ``require_role``
    (None: accept any certificate the context verifies)."""
    host, port = parse_hostport(controller)
    loop = asyncio.get_running_loop()
    backoff = 0.05
    await endpoint.start()
    while not stop.is_set():
        link: ControllerLink | None = None
        try:
            _tr, link = await asyncio.wait_for(loop.create_connection(
                lambda: ControllerLink(endpoint, meta, require_role), host, port, ssl=ssl_ctx,
                server_hostname=(server_hostname or host) if ssl_ctx else None), 10)
            await asyncio.wait_for(link.registered, 10)
            log.info("registered with controller %s as %s", controller, endpoint.config.name)
            backoff = 0.05
            stopper = loop.create_task(stop.wait())
            await asyncio.wait([link.lost, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                link.transport.close()  # type: ignore[union-attr]
                return
        except ssl.SSLError as exc:
            from marionet.guard.tls import explain

            log.warning("controller %s: TLS handshake failed: %s", controller, explain(exc))
        except (OSError, asyncio.TimeoutError, RuntimeError, ConnectionError) as exc:
            log.info("controller %s: %s", controller, exc)
            if link is not None and link.transport is not None:
                link.transport.abort()
        if link is not None and link.bye is not None and link.bye.code == "replaced":
            delay = REPLACED_BACKOFF_S * (0.9 + random.random() / 5)
        else:
            delay = min(backoff, MAX_BACKOFF_S) * (0.5 + random.random() / 2)
            backoff *= 2
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except asyncio.TimeoutError:
            pass


def dialer_ssl(args: Any) -> ssl.SSLContext | None:
    if args.insecure:
        host, _ = parse_hostport(args.controller)
        from marionet.client.address import is_loopback

        if not is_loopback(host):
            raise ValueError("--insecure (plain TCP) is allowed on loopback only")
        return None
    from marionet.guard import tls

    if not (args.cert and args.key and args.ca):
        raise ValueError("dialing a controller over TLS needs --ca, --cert and --key "
                         "(see `marionet pki`), or --insecure on loopback")
    return tls.client_context(ca=args.ca, cert=args.cert, key=args.key)


async def run_dialer(args: Any, config: EndpointConfig, runtime: Any = None) -> None:
    from marionet.endpoint.run import make_endpoint

    meta = load_meta(args.meta, config.tags)
    ctx = dialer_ssl(args)
    endpoint = make_endpoint(config, runtime)
    if runtime is not None:
        runtime.start()
    stop = stop_event()
    from marionet.endpoint.run import guard_note

    print(f"marionet endpoint {config.name!r} dialing controller {args.controller}; {guard_note(runtime)}",
          flush=True)
    try:
        await dial_forever(endpoint, args.controller, ctx, meta, stop)
    finally:
        await endpoint.close()
        if runtime is not None:
            runtime.stop()
