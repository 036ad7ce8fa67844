"""An embedded controller with local endpoints, all in this process.

With no controller given, ``Ctrl`` and the CLI start one of these so a
script works on a fresh machine: a controller listening on loopback
(plain TCP, loopback only, or a Unix socket) and one or more endpoints
dialing it over loopback, speaking the real protocol.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from marionet.controller.broker import Controller, ControllerConfig
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.endpoint.dialer import dial_forever


@dataclass
class EmbeddedVp:
    name: str
    meta: dict[str, Any]
    endpoint: Endpoint
    task: asyncio.Task
    stop: asyncio.Event


@dataclass
class Embedded:
    controller: Controller
    endpoint_address: str
    client_address: str
    vps: list[EmbeddedVp] = field(default_factory=list)

    async def add_vp(self, name: str, meta: dict[str, Any] | None = None,
                     config: EndpointConfig | None = None) -> EmbeddedVp:
        cfg = config or EndpointConfig()
        cfg.name = name
        ep = Endpoint(cfg)
        await ep.start()
        stop = asyncio.Event()
        meta = dict(meta or {})
        meta.setdefault("addresses", ["127.0.0.1", "::1"])
        task = asyncio.get_running_loop().create_task(
            dial_forever(ep, self.endpoint_address, None, meta, stop))
        vp = EmbeddedVp(name, meta, ep, task, stop)
        self.vps.append(vp)
        return vp

    async def stop_vp(self, vp: EmbeddedVp) -> None:
        vp.stop.set()
        try:
            await asyncio.wait_for(vp.task, 5)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001
            vp.task.cancel()
        await vp.endpoint.close()
        if vp in self.vps:
            self.vps.remove(vp)

    async def close(self) -> None:
        for vp in list(self.vps):
            await self.stop_vp(vp)
        await self.controller.close()


DEFAULT_VPS: list[tuple[str, dict[str, Any]]] = [
    ("local", {"cc": "ZZ", "place": "this machine", "tags": {"kind": "local"}}),
]


async def start_embedded(vps: list[tuple[str, dict[str, Any]]] | None = None, *,
                         config: ControllerConfig | None = None,
                         endpoint_config: EndpointConfig | None = None,
                         wait: float = 10.0) -> Embedded:
    """Start a controller on loopback and the given VPs; wait until all registered."""
    ctl = Controller(config, name="embedded")
    es = await ctl.serve_endpoints("127.0.0.1", 0, None)
    cs = await ctl.serve_clients("127.0.0.1", 0, None)
    emb = Embedded(ctl, f"127.0.0.1:{es.sockets[0].getsockname()[1]}",
                   f"127.0.0.1:{cs.sockets[0].getsockname()[1]}")
    for name, meta in vps if vps is not None else DEFAULT_VPS:
        cfg = None
        if endpoint_config is not None:
            cfg = EndpointConfig(**{**endpoint_config.__dict__})
        await emb.add_vp(name, meta, cfg)
    await ctl.wait_for_vps(len(emb.vps), wait)
    return emb
