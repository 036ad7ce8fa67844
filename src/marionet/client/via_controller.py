"""``marionet.aio.connect(controller=…, vp=…)``: one packet session through a controller."""

from __future__ import annotations

from typing import Any

from marionet.client.controller import connect_controller
from marionet.client.packet import PacketSession


async def connect_via_controller(controller: str, vp: str | None, *, ca: Any = None, cert: Any = None,
                                 key: Any = None, insecure: bool = False,
                                 timeout: float = 10.0) -> PacketSession:
    if not vp:
        raise ValueError("connect(controller=…) needs vp=NAME")
    conn = await connect_controller(controller, ca=ca, cert=cert, key=key, insecure=insecure,
                                    timeout=timeout)
    try:
        session = await conn.attach(vp, timeout)
    except BaseException:
        await conn.close()
        raise
    # The session owns its controller connection: closing one closes both.
    inner_close = session.close

    async def close() -> None:
        await inner_close()
        await conn.close()

    session.close = close  # type: ignore[method-assign]
    session.controller = conn  # type: ignore[attr-defined]
    return session
