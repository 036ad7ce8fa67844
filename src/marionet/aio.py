"""marionet's asyncio API.

``connect()`` opens a packet session (PacketLab model) to one endpoint,
directly or — with ``controller=`` and ``vp=`` — through a controller.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from marionet.client.actrl import AsyncCtrl
from marionet.client.address import is_loopback, parse_hostport
from marionet.client.errors import ConnectionLost, EndpointError, MarionetError
from marionet.client.packet import ClockOffset, PacketSession
from marionet.wire.messages import SendItem

__all__ = ["AsyncCtrl", "connect", "PacketSession", "ClockOffset", "SendItem", "EndpointError",
           "ConnectionLost", "MarionetError"]

DEFAULT_PORT = 7770


def _client_ssl(host: str, ca: str | Path | None, cert: str | Path | None,
                key: str | Path | None, pin: str | None) -> ssl.SSLContext:
    from marionet.guard import tls

    if pin is not None:
        return tls.client_context(cert=cert, key=key, pin_sha256=pin)
    if ca is None and is_loopback(host):
        # A standalone endpoint on this machine: trust its self-signed
        # certificate from the shared state directory (pinning by file).
        from marionet.endpoint.daemon import default_state_dir

        local = default_state_dir() / "server.pem"
        if local.exists():
            ca = local
    return tls.client_context(ca=ca, cert=cert, key=key)


async def connect(address: str | None = None, *, insecure: bool = False,
                  ca: str | Path | None = None, cert: str | Path | None = None,
                  key: str | Path | None = None, pin: str | None = None,
                  controller: str | None = None, vp: str | None = None,
                  timeout: float = 10.0) -> PacketSession:
    """Open a packet session.

    ``address`` is the endpoint's ``HOST:PORT``. TLS 1.3 by default: ``ca``
    is the CA (or the endpoint's self-signed certificate, found
    automatically for an endpoint on this machine), ``pin`` a SHA-256
    fingerprint instead; ``cert``/``key`` present a client certificate.
    ``insecure=True`` speaks plain TCP (the endpoint allows that on
    loopback only).
    """
    if controller is not None:
        from marionet.client.via_controller import connect_via_controller

        return await connect_via_controller(controller, vp, ca=ca, cert=cert, key=key,
                                            insecure=insecure, timeout=timeout)
    if address is None:
        raise ValueError("give an endpoint address, or controller= and vp=")
    host, port = parse_hostport(address, DEFAULT_PORT)
    ctx = None if insecure else _client_ssl(host, ca, cert, key, pin)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, limit=1 << 20), timeout)
    except ssl.SSLError as exc:
        from marionet.guard import tls

        raise ConnectionLost(f"TLS handshake with {address} failed: {tls.explain(exc)}") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise ConnectionLost(f"cannot connect to {address}: {exc or 'timeout'}") from None
    if pin is not None:
        from marionet.guard import tls

        try:
            tls.check_identity(writer, pin_sha256=pin)
        except tls.IdentityError as exc:
            writer.close()
            raise ConnectionLost(f"endpoint {address}: {exc}") from None
    session = PacketSession(reader, writer)
    creds = None
    if cert is not None and key is not None:
        from marionet.client.credentials import Credentials

        creds = Credentials.load(cert, key)
    try:
        await session.start(timeout, credentials=creds)
    except BaseException:
        await session.close()
        raise
    return session
