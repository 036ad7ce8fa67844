"""The asyncio API: ping a few loopback targets from every VP and print
results as they arrive.

Usage: python async_ping.py [CONTROLLER]   (default: embedded, two local VPs)
"""
import asyncio
import sys

from marionet.aio import AsyncCtrl


async def main() -> None:
    where = {"controller": sys.argv[1], "insecure": True} if len(sys.argv) > 1 else {"local_vps": 2}
    async with AsyncCtrl(**where) as ctrl:
        for dst in ("127.0.0.1", "::1"):
            await ctrl.do_ping(dst, inst=ctrl.instances(), attempts=2, wait_probe=0.1)
        async for ping in ctrl.responses(timeout=10):
            print(f"{ping.vp:>8} {str(ping.dst):>10} {ping.nreplies}/{ping.ping_sent} "
                  f"min {ping.min_rtt.total_seconds() * 1000:.3f} ms")


asyncio.run(main())
