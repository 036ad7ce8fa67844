"""In-process packet sessions: the *native* and *endpoint* placements.

A measurement is written once against ``PacketSession``. To run it next to
the sockets — in the researcher's process (native) or inside the endpoint
as a primitive — we connect a session to an ``Endpoint`` through a Unix
socketpair. Every request still goes through the same session code and
guard call site as a remote client's, which is the point: a primitive
cannot do anything a remote session with the same identity could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import AsyncIterator

from marionet.client.packet import PacketSession
from marionet.endpoint.daemon import ClientConnection, Endpoint, EndpointConfig
from marionet.guard import Principal
from marionet.guard.core import SessionGuard


async def local_session(endpoint: Endpoint, principal: Principal | None = None,
                        sguard: SessionGuard | None = None) -> PacketSession:
    """A ``PacketSession`` to ``endpoint`` in this process, as ``principal``;
    ``sguard`` is the guard it runs under (a primitive's: its parent
    session's, so it shares that session's monitors and budgets)."""
    await endpoint.start()
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    conn = ClientConnection(endpoint)
    conn.local = True  # bounded by the task limit, not the per-principal session limit
    if principal is not None:
        conn.principal = principal
    conn.preset_guard = sguard
    await loop.connect_accepted_socket(lambda: conn, sock=a)
    reader, writer = await asyncio.open_connection(sock=b, limit=1 << 20)
    session = PacketSession(reader, writer)
    await session.start()
    return session


@contextlib.asynccontextmanager
async def native_session(config: EndpointConfig | None = None) -> AsyncIterator[PacketSession]:
    """A private in-process endpoint and a session to it (native placement)."""
    endpoint = Endpoint(config or EndpointConfig(name="native"))
    await endpoint.start()
    session = await local_session(endpoint)
    try:
        yield session
    finally:
        await session.close()
        await endpoint.close()
