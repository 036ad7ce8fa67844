"""ICMP echo to 127.0.0.1 through an endpoint's raw socket, reply captured with ncap.

Run an endpoint first:  marionet endpoint --listen 127.0.0.1:7770
then:                   python examples/packet_icmp_echo.py [127.0.0.1:7770]
"""

import asyncio
import os
import struct
import sys
import time

from marionet import aio


def icmp_echo(ident: int, seq: int, payload: bytes = b"marionet") -> bytes:
    def csum(b: bytes) -> int:
        b += b"\0" * (len(b) % 2)
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        s = (s >> 16) + (s & 0xFFFF)
        return ~(s + (s >> 16)) & 0xFFFF

    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload


async def main(address: str) -> None:
    s = await aio.connect(address)  # TLS 1.3; a local endpoint's certificate is found automatically
    raw = await s.nopen("raw", family=4, ipproto=1)  # raw ICMP
    ident = os.getpid() & 0xFFFF
    now = (await s.info()).clock_ns  # endpoint clock
    await s.ncap(raw, f"icmp[icmptype] = icmp-echoreply and icmp[4:2] = {ident}",
                 until=now + 2_000_000_000)
    await s.nsend(raw, icmp_echo(ident, 1), dst="127.0.0.1", ttl=64, tag=1,
                  at=now + 50_000_000)  # scheduled 50 ms ahead on the endpoint clock
    sent = None
    async for n in s.notifications(timeout=3):
        if n.kind == "ntag":
            sent = n.time_ns  # kernel transmit time
            print(f"sent at {n.time_ns} ({n.ts_source}), {n.time_ns - n.at} ns after the requested time")
        elif n.kind == "ndata" and sent is not None:
            print(f"echo reply from {n.peer}, ttl {n.data[8]}: rtt {(n.time_ns - sent) / 1000:.1f} µs ({n.ts_source})")
            break
    await s.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("MARIONET_ENDPOINT", "127.0.0.1:7770")))
