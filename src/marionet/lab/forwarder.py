"""Userspace link emulator: two TUN devices, a heap of due times, delay/jitter/loss.

This kernel has no netem, so a link with delay, jitter or loss is two TUN
devices (one in each node's namespace) joined by this process.  Why the
timing is good enough (RTT sd well under 0.3 ms):

* a dedicated process per link (no GIL sharing with the lab or the tests);
* the wait is a ``timerfd`` armed on CLOCK_MONOTONIC with nanosecond
  resolution in the same epoll set as the TUNs, so a sleeping forwarder still
  takes packets in the moment they arrive (epoll's own timeout is 1 ms coarse);
* the timer fires ``SPIN_NS`` early and the last stretch is a short spin on the
  clock that keeps polling the TUNs;
* SCHED_FIFO and a 1 ns timer slack when allowed (root), which removes most
  wake-up latency.

Run as ``python -m marionet.lab.forwarder '<json config>'``; prints ``ready``
once both TUNs are open.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import sys
import time
from typing import Any

from .system import setns

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29
SPIN_NS = 150_000
BATCH = 64

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class Timer:
    """A timerfd armed at absolute CLOCK_MONOTONIC nanoseconds."""

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create")
        self._spec = _Itimerspec()
        self.armed_for = 0

    def arm(self, t_ns: int) -> None:
        if t_ns == self.armed_for:
            return
        self.armed_for = t_ns
        self._spec.it_value.tv_sec = t_ns // 1_000_000_000
        self._spec.it_value.tv_nsec = t_ns % 1_000_000_000
        _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None)

    def disarm(self) -> None:
        if self.armed_for:
            self.armed_for = 0
            self._spec.it_value.tv_sec = 0
            self._spec.it_value.tv_nsec = 0
            _libc.timerfd_settime(self.fd, 0, ctypes.byref(self._spec), None)

    def drain(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass


def open_tun(name: str) -> int:
    """Attach to the persistent TUN ``name`` in the current namespace."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def make_realtime() -> bool:
    """SCHED_FIFO and minimal timer slack; fine to fail (then timing is just worse)."""
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        return True
    except (PermissionError, OSError, AttributeError):
        return False


class Forwarder:
    """Moves packets between two fds with a per-direction delay distribution."""

    def __init__(self, fda: int, fdb: int, delay_ms: float, jitter_ms: float, loss: float,
                 seed: int | None = None, spin_ns: int = SPIN_NS):
        self.fds = (fda, fdb)
        self.delay_ns = int(delay_ms * 1e6)
        self.jitter_ns = jitter_ms * 1e6
        self.loss = loss
        self.rng = random.Random(seed)
        self.spin_ns = spin_ns
        self.heap: list[tuple[int, int, int, bytes]] = []
        self.seq = 0
        self.timer = Timer()
        self.ep = select.epoll()
        for fd in (fda, fdb, self.timer.fd):
            self.ep.register(fd, select.EPOLLIN)
        self.stats = {"in": 0, "out": 0, "lost": 0, "late_ns_max": 0}
        self.running = True

    def due(self, now: int) -> int:
        d = self.delay_ns
        if self.jitter_ns:
            d = max(0, int(self.rng.gauss(d, self.jitter_ns)))
        return now + d

    def take(self, fd: int) -> None:
        out = self.fds[1] if fd == self.fds[0] else self.fds[0]
        for _ in range(BATCH):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EAGAIN, errno.EBADFD, errno.EIO):
                    return
                raise
            now = time.monotonic_ns()
            self.stats["in"] += 1
            if self.loss and self.rng.random() < self.loss:
                self.stats["lost"] += 1
                continue
            self.seq += 1
            heapq.heappush(self.heap, (self.due(now), self.seq, out, data))

    def flush(self, now: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now:
            t, _, out, data = heapq.heappop(heap)
            try:
                os.write(out, data)
                self.stats["out"] += 1
            except OSError:
                pass  # peer TUN down or full: the packet is lost, as on a wire

    def poll_inputs(self, timeout: float) -> None:
        for fd, _ in self.ep.poll(timeout, 8):
            if fd == self.timer.fd:
                self.timer.drain()
            else:
                self.take(fd)

    def run(self) -> None:
        while self.running:
            now = time.monotonic_ns()
            self.flush(now)
            if not self.heap:
                self.timer.disarm()
                self.poll_inputs(-1)
                continue
            wait = self.heap[0][0] - now
            if wait > self.spin_ns:
                self.timer.arm(self.heap[0][0] - self.spin_ns)
                self.poll_inputs(-1)
            else:
                self.poll_inputs(0)  # spin the last stretch, still taking packets in


def main(argv: list[str]) -> int:
    cfg: dict[str, Any] = json.loads(argv[0])
    ns_a, name_a = cfg["a"]
    ns_b, name_b = cfg["b"]
    setns(ns_a)
    fda = open_tun(name_a)
    setns(ns_b)
    fdb = open_tun(name_b)
    if cfg.get("realtime", True):
        make_realtime()
    fw = Forwarder(fda, fdb, cfg.get("delay_ms", 0.0), cfg.get("jitter_ms", 0.0), cfg.get("loss", 0.0),
                   cfg.get("seed"), int(cfg.get("spin_us", SPIN_NS / 1000) * 1000))

    def stop(*_: Any) -> None:
        fw.running = False
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # the lab closes our stdout pipe later; don't die of SIGPIPE/EPIPE on it
    try:
        fw.run()
    except SystemExit:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
