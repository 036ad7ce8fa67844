"""Loopback ping in the three placements: RTT figures and per-ping overhead.

Prints (never asserts): min / median / p99 RTT of ``ping`` to 127.0.0.1 and
::1 run natively, as an endpoint task, and remotely over a loopback TCP
connection to an in-process endpoint; and the wall time of a one-probe ping
(setup: route lookup, socket opens, captures, clock offset, teardown).

    sudo python bench/ping_placements.py [--attempts N] [--wait-probe S]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import summary  # noqa: E402

from marionet import aio  # noqa: E402
from marionet.endpoint.daemon import Endpoint, EndpointConfig  # noqa: E402
from marionet.endpoint.local import native_session  # noqa: E402
from marionet.measure import ping  # noqa: E402
from marionet.results import from_json  # noqa: E402


async def on_endpoint(session, params):
    tid = await session.task("ping", params)
    while True:
        n = await session.next_notification(30)
        if n is not None and n.kind == "taskres" and n.task == tid:
            if n.error:
                raise RuntimeError(n.error)
            return from_json(n.result)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--attempts", type=int, default=100)
    ap.add_argument("--wait-probe", type=float, default=0.002)
    ap.add_argument("--engine", default="process", choices=["process", "inline"])
    args = ap.parse_args()
    ep = Endpoint(EndpointConfig(name="bench", engine=args.engine))
    srv = await ep.serve("127.0.0.1", 0, None)
    remote = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
    async with native_session(EndpointConfig(name="native", engine=args.engine)) as native:
        runners = {
            "native": lambda p: ping(native, **p),
            "endpoint": lambda p: on_endpoint(remote, p),
            "remote": lambda p: ping(remote, **p),
        }
        print(f"ping, {args.attempts} probes every {args.wait_probe * 1e3:g} ms, engine={args.engine}")
        print(f"{'target':10s} {'method':10s} {'placement':9s} {'n':>4s} {'min us':>8s} {'median':>8s} "
              f"{'p99':>8s} {'1-probe wall ms':>16s}")
        for dst in ("127.0.0.1", "::1"):
            for method in ("icmp-echo", "udp", "tcp-syn"):
                for name, run in runners.items():
                    p = await run({"dst": dst, "method": method, "attempts": args.attempts,
                                   "wait_probe": args.wait_probe})
                    s = summary([r.rtt_ns / 1e3 for r in p.from_target()])
                    walls = []
                    for _ in range(5):
                        t = time.perf_counter()
                        await run({"dst": dst, "method": method, "attempts": 1})
                        walls.append((time.perf_counter() - t) * 1e3)
                    print(f"{dst:10s} {method:10s} {name:9s} {s['n']:4d} {s['min']:8.1f} {s['median']:8.1f} "
                          f"{s['p99']:8.1f} {min(walls):16.2f}")
    await remote.close()
    await ep.close()


if __name__ == "__main__":
    asyncio.run(main())
