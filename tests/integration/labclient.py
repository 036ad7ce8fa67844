"""A lab's client as tests drive it: an endpoint in the client namespace, a
session to it and a native session there, and one task's result.

Shared by the per-primitive lab tests, which compare the native placement
(the native session) with the endpoint placement (a Task on the endpoint).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

from marionet.results import from_json


@contextlib.asynccontextmanager
async def client_endpoint(lab: Any, name: str = "lab-client") -> AsyncIterator[Any]:
    """(session to an endpoint in the client namespace, native session there)."""
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.endpoint.local import native_session

    from . import pathlab

    with pathlab.inside(lab.netns("client")):
        ep = Endpoint(EndpointConfig(name=name))
        try:
            srv = await ep.serve("127.0.0.1", 0, None)
            s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
            try:
                async with native_session() as ns:
                    yield s, ns
            finally:
                await s.close()
        finally:
            await ep.close()


async def task_result(session: Any, primitive: str, params: dict, timeout: float = 60) -> Any:
    """Run ``primitive`` as a Task on the session's endpoint; its result object."""
    tid = await session.task(primitive, params)

    async def wait() -> Any:
        while True:
            n = await session.next_notification(timeout)
            assert n is not None, f"no result for {primitive} task {tid}"
            if n.kind == "taskres" and n.task == tid:
                return n
    n = await asyncio.wait_for(wait(), timeout)
    assert n.error is None, n.error
    return from_json(n.result)
