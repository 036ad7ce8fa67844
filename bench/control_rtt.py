"""Control round trip: ``nsend`` request → ``Ok`` reply over loopback.

Each sample is one ``await session.nsend(...)`` (an untagged 16-byte UDP
send to a local sink), measured with ``perf_counter_ns`` around the await;
requests go one at a time, so the figure is request encode → endpoint
decode, guard, enqueue to the send engine, reply → client decode. ``ping``
(no socket work) is measured the same way for reference, and so is a timed,
tagged ``nsend`` due 2 ms ahead (how ping and trace queue probes): the
sender process then spins at SCHED_FIFO, and must not do so on the CPU of
the endpoint's loop (it once stalled this reply until the send, 2.2 ms).

Placements measured in one run:
  * separate process, plain TCP (``marionet endpoint --listen … --insecure``)
  * separate process, TLS 1.3 (self-signed certificate in a temp dir)
  * in-process (same event loop as the client), TLS 1.3 and plain TCP

Target: median ≤ 200 µs.  Prints figures, never fails on them.

Usage: python bench/control_rtt.py [--n 5000] [--engine process|inline]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import endpoint_process, fmt_us, summary, verdict  # noqa: E402

from marionet import aio  # noqa: E402

TARGET_US = 200.0


async def measure(session: aio.PacketSession, sink_port: int, n: int, warmup: int = 200
                  ) -> tuple[list[float], list[float], list[float]]:
    u = await session.nopen("udp", laddr="127.0.0.1")
    pc = time.perf_counter_ns
    for _ in range(warmup):
        await session.nsend(u, b"control-rtt-0123", dst="127.0.0.1", port=sink_port)
    nsend_us: list[float] = []
    for _ in range(n):
        t0 = pc()
        await session.nsend(u, b"control-rtt-0123", dst="127.0.0.1", port=sink_port)
        nsend_us.append((pc() - t0) / 1000)
    ping_us: list[float] = []
    for _ in range(n // 2):
        t0 = pc()
        await session.ping()
        ping_us.append((pc() - t0) / 1000)
    timed_us: list[float] = []
    for i in range(max(50, n // 20)):
        at = time.time_ns() + 2_000_000
        t0 = pc()
        await session.nsend(u, b"control-rtt-0123", dst="127.0.0.1", port=sink_port, at=at, tag=i)
        timed_us.append((pc() - t0) / 1000)
        await asyncio.sleep(0.003)  # past the send: each request meets an idle sender
    await session.nclose(u)
    return nsend_us, ping_us, timed_us


def report(label: str, nsend_us: list[float], ping_us: list[float], timed_us: list[float]) -> float:
    print(fmt_us(nsend_us, f"{label}: nsend→ok"))
    print(fmt_us(ping_us, f"{label}: ping→pong"))
    print(fmt_us(timed_us, f"{label}: nsend(at=+2 ms)→ok"))
    return summary(nsend_us)["median"]


async def run(args: argparse.Namespace) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    # Never read: once its buffer is full the kernel drops silently, and no
    # process wakes up for the datagrams (the client must not pay for them).
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink_port = sink.getsockname()[1]
    results: dict[str, float] = {}
    print(f"control round trip, {args.n} sequential requests per placement, engine={args.engine}")
    try:
        # -- separate process, plain TCP and TLS
        with tempfile.TemporaryDirectory(prefix="mnbench-") as state:
            # The certificate is made here and passed with --cert/--key: the
            # CLI's own self-signed path (run.server_ssl) is broken, see README.
            from marionet.guard import pki, tls

            ss = pki.self_signed_server(state)
            cert, key = str(ss.cert_path), str(ss.key_path)
            for tls_on in (False, True):
                label = f"process {'TLS ' if tls_on else 'TCP '}"
                extra = ("--cert", cert, "--key", key) if tls_on else ()
                with endpoint_process(engine=args.engine, insecure=not tls_on, state_dir=state,
                                      extra=extra) as ep:
                    s = await aio.connect(ep.address, insecure=not tls_on,
                                          ca=os.path.join(state, "server.pem") if tls_on else None)
                    try:
                        results[label] = report(label, *await measure(s, sink_port, args.n))
                    finally:
                        await s.close()
            # -- in-process, TLS and plain
            from marionet.endpoint.daemon import Endpoint, EndpointConfig
            for tls_on in (True, False):
                label = f"in-proc {'TLS' if tls_on else 'TCP'}"
                ep = Endpoint(EndpointConfig(engine=args.engine))
                ctx = tls.server_context(cert, key) if tls_on else None
                srv = await ep.serve("127.0.0.1", 0, ctx)
                port = srv.sockets[0].getsockname()[1]
                try:
                    s = await aio.connect(f"127.0.0.1:{port}", insecure=not tls_on,
                                          ca=os.path.join(state, "server.pem") if tls_on else None)
                    try:
                        results[label] = report(label, *await measure(s, sink_port, args.n))
                    finally:
                        await s.close()
                finally:
                    await ep.close()
    finally:
        sink.close()
    print()
    for label, med in results.items():
        print(f"{label:<14} nsend median {med:7.1f} µs  (target ≤ {TARGET_US:.0f} µs: {verdict(med, TARGET_US)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--engine", choices=("process", "inline"), default="process")
    args = ap.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
