"""Scheduled-send accuracy while the endpoint streams notifications.

1,000 tagged UDP sends to 127.0.0.1 at 1 ms spacing, each with ``at`` set
≥ 50 ms ahead (submitted in ``nsendv`` batches while earlier ones are going
out).  Meanwhile a local generator process floods a second endpoint UDP
socket (default 10,000 datagrams/s), so the endpoint's event loop is busy
reading data and writing ``ndata`` notifications to the client the whole
time.  Error = kernel TX timestamp (``ntag.time_ns``, ts_source "kernel")
− requested time (``ntag.at``).

Runs, in one invocation:
  * endpoint process, ``--engine process`` (dedicated sender process)
  * endpoint process, ``--engine inline`` (sends from the event loop)
Batches go out --ahead-ms (150) before their first send, so a client loop
that lags behind its own timer (it is busy reading the flood's notifications)
still delivers them early; "late batches" counts those that arrived less
than --lead-ms ahead.

  * native baseline: plain Python in one process, sleep to T−1 ms then spin
    on ``time.time_ns()``, ``sendto`` with SO_TIMESTAMPING, same error
    definition (generator still flooding a socket of this process's
    neighbour, i.e. the same machine load, but no event loop to serve)

Targets: median ≤ 20 µs, p99 ≤ 300 µs.  Prints figures, never fails on them.

Usage: python bench/sched_send.py [--n 1000] [--spacing-us 1000] [--flood-pps 10000]
                                  [--batch 50] [--lead-ms 50] [--ahead-ms 150]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import endpoint_process, fmt_us, stop_process, summary, verdict  # noqa: E402

from marionet import aio  # noqa: E402
from marionet.wire.messages import SendItem  # noqa: E402

TARGET_MEDIAN_US = 20.0
TARGET_P99_US = 300.0

_GENERATOR = r"""
import socket, sys, time
port, pps = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload = b"f" * 64
per_ms = max(1, pps // 1000)
nxt = time.monotonic()
while True:
    for _ in range(per_ms):
        try:
            s.sendto(payload, ("127.0.0.1", port))
        except OSError:
            pass
    nxt += 0.001
    d = nxt - time.monotonic()
    if d > 0:
        time.sleep(d)
    elif d < -0.05:
        nxt = time.monotonic()
"""


@contextlib.contextmanager
def flood(port: int, pps: int):
    """A generator process sending ``pps`` 64-byte datagrams/s to ``port``."""
    if pps <= 0:
        yield None
        return
    p = subprocess.Popen([sys.executable, "-c", _GENERATOR, str(port), str(pps)])
    try:
        yield p
    finally:
        stop_process(p)


async def run_endpoint(engine: str, args: argparse.Namespace) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # never read
    sink_port = sink.getsockname()[1]
    out: dict = {"engine": engine}
    try:
        with endpoint_process(engine=engine) as ep:
            s = await aio.connect(ep.address, insecure=True)
            try:
                out.update(await _measure(s, sink_port, args))
            finally:
                await s.close()
    finally:
        sink.close()
    return out


async def _measure(s: aio.PacketSession, sink_port: int, args: argparse.Namespace) -> dict:
    rx = await s.nopen("udp", laddr="127.0.0.1")
    rx_port = s.sockets[rx].lport
    tx = await s.nopen("udp", laddr="127.0.0.1")
    off = (await s.clock_offset(16)).offset_ns
    stamps: dict[int, tuple[int, int | None, str | None, str | None]] = {}
    counts = {"ndata": 0, "ndrop": 0, "other": 0}
    done = asyncio.Event()

    async def reader() -> None:
        while True:
            n = await s.next_notification(timeout=None)
            if n is None:
                continue
            k = n.kind
            if k == "ntag" and n.sock == tx:
                stamps[n.tag] = (n.at, n.time_ns, n.ts_source, n.error)
                if len(stamps) >= args.n:
                    done.set()
            elif k == "ndata":
                counts["ndata"] += 1
            elif k == "ndrop":
                counts["ndrop"] += n.count
            else:
                counts["other"] += 1

    rtask = asyncio.create_task(reader())
    with flood(rx_port, args.flood_pps):
        await asyncio.sleep(0.5)  # let the flood reach a steady state
        c0 = counts["ndata"]
        t_flood0 = time.monotonic()
        spacing = args.spacing_us * 1000
        lead = args.lead_ms * 1_000_000
        first_local = time.time_ns() + lead
        ats = [first_local + off + i * spacing for i in range(args.n)]
        # Each batch goes out ``ahead`` (≥ lead) before its first send.
        ahead = max(lead, args.ahead_ms * 1_000_000)
        submit_late = 0
        for b in range(0, args.n, args.batch):
            first = ats[b] - off
            wait = (first - ahead - time.time_ns()) / 1e9
            if wait > 0:
                await asyncio.sleep(wait)
            if ats[b] - off - time.time_ns() < lead:
                submit_late += 1
            await s.nsendv([SendItem(sock=tx, data=b"sched-%06d" % i, dst="127.0.0.1", port=sink_port,
                                     at=ats[i], tag=i) for i in range(b, min(args.n, b + args.batch))])
        try:
            await asyncio.wait_for(done.wait(), timeout=args.n * spacing / 1e9 + 10)
        except asyncio.TimeoutError:
            pass
        ndata_rate = (counts["ndata"] - c0) / (time.monotonic() - t_flood0)
    rtask.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await rtask
    errs, sources, errors = [], {}, 0
    for tag, (at, t, src, err) in sorted(stamps.items()):
        if err or t is None:
            errors += 1
            continue
        sources[src] = sources.get(src, 0) + 1
        if src == "kernel":
            errs.append((t - at) / 1000)
    return {"errs": errs, "sources": sources, "errors": errors, "missing": args.n - len(stamps),
            "ndata_rate": ndata_rate, "ndrop": counts["ndrop"], "submit_late": submit_late}


def run_native(args: argparse.Namespace, spin_ns: int = 1_000_000) -> list[float]:
    """One plain Python process: sleep to T−spin, spin, sendto; kernel TX stamp − T.

    The send-gap experiment's native sender (``marionet.evaluate.sendgap``),
    without SCHED_FIFO, to a sink nobody reads."""
    from marionet.evaluate.sendgap import native_train, schedule_errors

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        train = native_train("127.0.0.1", sink.getsockname()[1], count=args.n, spacing_ns=args.spacing_us * 1000,
                             start_delay_ns=args.lead_ms * 1_000_000, size=13, spin_ns=spin_ns, realtime=False)
    finally:
        sink.close()
    return [e / 1000 for e in schedule_errors(train)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--spacing-us", type=int, default=1000)
    ap.add_argument("--flood-pps", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--lead-ms", type=int, default=50, help="first send this far ahead")
    ap.add_argument("--ahead-ms", type=int, default=150,
                    help="submit each batch this long before its first send (≥ lead)")
    ap.add_argument("--engines", default="process,inline")
    args = ap.parse_args()
    print(f"scheduled sends: n={args.n} spacing={args.spacing_us} µs lead≥{args.lead_ms} ms "
          f"batch={args.batch}; background flood {args.flood_pps} datagrams/s → ndata")
    rows = []
    for engine in args.engines.split(","):
        r = asyncio.run(run_endpoint(engine, args))
        rows.append((f"endpoint engine={engine}", r["errs"]))
        print(fmt_us(r["errs"], f"endpoint engine={engine}"))
        print(f"{'':34} >300 µs: {sum(e > 300 for e in r['errs'])}, >1 ms: {sum(e > 1000 for e in r['errs'])}; stamps {r['sources']}, errors {r['errors']}, missing {r['missing']}, "
              f"ndata during run {r['ndata_rate']:.0f}/s, ndrop {r['ndrop']}, late batches {r['submit_late']}")
    with flood(_busy_port(), args.flood_pps):
        native = run_native(args)
    rows.append(("native sleep+spin", native))
    print(fmt_us(native, "native sleep+spin (1 process)"))
    print(f"{'':34} >300 µs: {sum(e > 300 for e in native)}, >1 ms: {sum(e > 1000 for e in native)}")
    print()
    nat_med = summary(native)["median"]
    for label, errs in rows:
        s = summary(errs)
        ratio = s["median"] / nat_med if nat_med else float("nan")
        print(f"{label:<26} median {s['median']:7.1f} µs ({verdict(s['median'], TARGET_MEDIAN_US)} ≤{TARGET_MEDIAN_US:.0f}), "
              f"p99 {s['p99']:7.1f} µs ({verdict(s['p99'], TARGET_P99_US)} ≤{TARGET_P99_US:.0f}), "
              f"median/native {ratio:.2f}")
    return 0


def _busy_port() -> int:
    """A port whose datagrams nobody reads (the flood still loads the machine)."""
    global _busy_sock
    _busy_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _busy_sock.bind(("127.0.0.1", 0))
    _busy_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return _busy_sock.getsockname()[1]


_busy_sock: socket.socket | None = None

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
