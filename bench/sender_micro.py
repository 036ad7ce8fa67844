"""Microbenchmark of the scheduled sender (prints figures; not pass/fail).

1. Scheduled-send error = kernel TX stamp − requested time, for N UDP sends
   to 127.0.0.1 at 1 ms spacing: once with the parent idle, once with the
   parent's asyncio loop busy (a CPU loop in 5 ms slices that also reads
   results and TX stamps via add_reader, as the daemon will).
2. Immediate-send throughput: sends/s until every kernel TX stamp has been
   read back by the parent.

Usage: python bench/sender_micro.py [--n 1000] [--no-realtime] [--cpu N] [--spin-us 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time

from marionet.endpoint.sender import Sender, SendJob
from marionet.endpoint.timestamps import TxStamp, enable_tx_timestamps, read_errqueue


def _pair() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 23)
    # The error queue holding TX stamps is charged to rcvbuf, which plain
    # SO_RCVBUF caps at net.core.rmem_max (~208 KiB ≈ a few hundred stamps).
    tx.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE (root)
    tx.setblocking(False)
    enable_tx_timestamps(tx)
    return rx, tx


def _drain_rx(rx: socket.socket) -> None:
    try:
        while True:
            rx.recv(2048, socket.MSG_DONTWAIT)
    except BlockingIOError:
        pass


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] / 1000


async def scheduled(sender: Sender, n: int, busy: bool) -> list[int]:
    """Run one scheduled series; returns per-send errors in ns."""
    loop = asyncio.get_running_loop()
    rx, tx = _pair()
    sid = sender.add_socket(tx)
    stamps: dict[int, int] = {}
    results = 0
    done = loop.create_future()

    def on_results() -> None:
        nonlocal results
        results += len(sender.read_results())

    def on_errqueue() -> None:
        for item in read_errqueue(tx):
            if isinstance(item, TxStamp):
                stamps[item.key] = item.time_ns
        _drain_rx(rx)
        if len(stamps) >= n and not done.done():
            done.set_result(None)

    loop.add_reader(sender.fileno(), on_results)
    loop.add_reader(tx.fileno(), on_errqueue)
    t0 = time.time_ns() + 100_000_000
    dst = rx.getsockname()
    jobs = [SendJob(sid, i, b"probe", at=t0 + i * 1_000_000, addr=dst, ts_key=i) for i in range(n)]
    sender.submit(jobs)
    stop_busy = False

    async def burn() -> None:
        while not stop_busy:
            end = time.perf_counter() + 0.005
            x = 0
            while time.perf_counter() < end:
                x += 1
            await asyncio.sleep(0)

    burner = asyncio.create_task(burn()) if busy else None
    try:
        await asyncio.wait_for(done, timeout=n / 1000 + 10)
    finally:
        stop_busy = True
        if burner:
            await burner
        loop.remove_reader(sender.fileno())
        loop.remove_reader(tx.fileno())
        sender.remove_socket(sid)
        tx.close()
        rx.close()
    return [stamps[j.job_id] - j.at for j in jobs if j.job_id in stamps]


def throughput(sender: Sender, n: int, batch: int = 1000, window: int = 5_000) -> tuple[float, int]:
    """Immediate sends; time until all results and TX stamps are back."""
    rx, tx = _pair()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    got = 0
    stamps = 0
    start = time.perf_counter()
    base = 0
    deadline = time.perf_counter() + 60
    # Flow control: keep at most `window` sends without a stamp read back, or
    # the error queue (bounded by the socket's rcvbuf) overflows and drops stamps.
    while (got < n or stamps < n) and time.perf_counter() < deadline:
        if base < n and base - stamps < window:
            sender.submit([SendJob(sid, i, b"probe", addr=dst, ts_key=i) for i in range(base, min(n, base + batch))])
            base = min(n, base + batch)
        got += len(sender.read_results())
        stamps += sum(isinstance(x, TxStamp) for x in read_errqueue(tx))
        _drain_rx(rx)
    elapsed = time.perf_counter() - start
    sender.remove_socket(sid)
    tx.close()
    rx.close()
    return n / elapsed, stamps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--tput-n", type=int, default=200_000)
    ap.add_argument("--no-realtime", action="store_true")
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--spin-us", type=int, default=1000)
    args = ap.parse_args()
    sender = Sender(realtime=not args.no_realtime, cpu=args.cpu, spin_ns=args.spin_us * 1000)
    sender.start()
    try:
        print(f"sender pid {sender.pid}, SCHED_FIFO={sender.realtime}, cpu={args.cpu}, spin={args.spin_us} us")
        for busy in (False, True):
            errs = asyncio.run(scheduled(sender, args.n, busy))
            print(
                f"scheduled {'busy' if busy else 'idle'}: n={len(errs)} "
                f"median={statistics.median(errs) / 1000:.1f} us p99={_pct(errs, 0.99):.1f} us "
                f"max={max(errs) / 1000:.1f} us min={min(errs) / 1000:.1f} us"
            )
        rate, stamps = throughput(sender, args.tput_n)
        print(f"immediate throughput: {rate:,.0f} sends/s ({stamps} TX stamps read back of {args.tput_n})")
    finally:
        sender.stop()


if __name__ == "__main__":
    main()
