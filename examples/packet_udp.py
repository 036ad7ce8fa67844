"""A UDP exchange through an endpoint: the endpoint runs a listener and a sender.

Run an endpoint first:  marionet endpoint --listen 127.0.0.1:7770
then:                   python examples/packet_udp.py [127.0.0.1:7770]
"""

import asyncio
import os
import sys

from marionet import aio


async def main(address: str) -> None:
    s = await aio.connect(address)
    server = await s.nopen("udp", laddr="127.0.0.1")  # bound: receives ndata
    port = s.sockets[server].lport
    client = await s.nopen("udp")  # unconnected: destination per send
    await s.nsend(client, b"hello", dst="127.0.0.1", port=port, tag=1)
    async for n in s.notifications(timeout=2):
        if n.kind == "ndata" and n.sock == server:
            print(f"server got {n.data!r} from {n.peer}:{n.port}; replying")
            await s.nsend(server, n.data.upper(), dst=n.peer, port=n.port)
        elif n.kind == "ndata" and n.sock == client:
            print(f"client got {n.data!r} at {n.time_ns} ({n.ts_source} timestamp)")
            break
        elif n.kind == "ntag":
            print(f"send {n.tag} left at {n.time_ns} ({n.ts_source})")
    # an ICMP error for a send is a notification too (IP_RECVERR)
    await s.nsend(client, b"nobody home", dst="127.0.0.1", port=9)
    n = await s.next_notification(2)
    print(f"{n.kind}: type {n.icmp_type} code {n.icmp_code} from {n.peer}")
    await s.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MARIONET_ENDPOINT", "127.0.0.1:7770")))
