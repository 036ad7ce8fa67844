"""Userspace link emulator: TUN pairs, one heap of due times, delay/jitter/loss.

This kernel has no netem, so a link with delay, jitter or loss is two TUN
devices (one in each node's namespace) joined by this process.  How the
delay is kept accurate (see docs/decisions.md, "Lab delay accuracy"):

* **one process for all delayed links of a lab** (one epoll, one heap, one
  timer).  N processes spinning at SCHED_FIFO on 2 vCPUs starved each other
  (p99 +12 ms on a 5-link path); one process also re-reads a packet that
  crosses several delayed links the moment it wrote it to the previous one;
* **arrival stamps from the kernel**: each TUN is read through an AF_PACKET
  tap (``SO_TIMESTAMPNS``, stamped when the node's stack hands the packet to
  the TUN), and the TUN's own queue gets 1-byte stubs (an eBPF ``TUNSETFILTEREBPF`` filter) that
  are read and dropped — not a dropping filter, which would also take the senders' TX stamps away.
  So a late wake-up no longer shifts the due time; only the send side can be
  late, and that is what ``stats`` measures;
* the wait is a ``timerfd`` (CLOCK_REALTIME, the clock of kernel stamps,
  nanosecond resolution) in the same epoll set as the inputs; it fires
  ``SPIN_NS`` early and the last stretch is a spin that keeps taking packets;
* SCHED_FIFO and a 1 ns timer slack when allowed (root).

Jitter: a gaussian per packet and direction, truncated at 0; packets leave in
due order, so jitter reorders (as netem does); zero jitter never reorders.

Run as ``python -m marionet.lab.forwarder '<json config>'`` with
``{"links": [{"id", "a": [netns, tun], "b": [netns, tun], "delay_ms",
"jitter_ms", "loss", "seed"}], "realtime", "stamp": "kernel"|"read",
"stats_path"}``; prints one JSON line ``{"ready": true, "calibration": …}``
once every TUN is open.  SIGUSR1 (and an idle moment every second) writes the
live ``stats`` to ``stats_path``.
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
import socket
import struct
import sys
import time
from typing import Any

from .system import setns

TUNSETIFF = 0x400454CA
TUNSETFILTEREBPF = 0x800454E1
SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SOCKET_FILTER = 1
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLOCK_REALTIME = 0
TFD_NONBLOCK = 0o4000
TFD_TIMER_ABSTIME = 1
PR_SET_TIMERSLACK = 29
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SKF_AD_PKTTYPE = 0xFFFFF000 + 4
SPIN_NS = 150_000
# How early to send, to cover the forwarder's own path (heap pop, clock read, TUN write into the
# next node).  0: that path costs 7.5-12 us a traversal at 100 packets/s but next to nothing at
# 2,000/s, so any fixed credit delivers early when packets come often (seen: minimum RTTs 10 us under
# the configured 20 ms, with kernel TX stamps).  A delay emulator must not beat its configured delay;
# what it adds is reported in truth (``added_us``).  Override with MARIONET_FORWARDER_OFFSET_US.
OFFSET_US = 0.0
# The forwarder measures a delay from its tap (the packet reaching the device); the driver's
# software TX stamp comes after that, tens of µs after under load.  An RTT from kernel TX stamps may
# read this much under the configured delay per delayed traversal (docs/decisions.md).
TX_STAMP_SLACK_MS = 0.05
BATCH = 64
RESERVOIR = 4096

_libc = ctypes.CDLL(None, use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _fprog(insns: list[tuple[int, int, int, int]]) -> tuple[bytes, Any]:
    """A classic BPF program as ``struct sock_fprog`` bytes (the array is returned to keep it alive)."""
    arr = (_SockFilter * len(insns))(*[_SockFilter(*i) for i in insns])
    prog = _SockFprog(len(insns), ctypes.cast(arr, ctypes.POINTER(_SockFilter)))
    return bytes(prog), arr


ONLY_OUTGOING = [(0x20, 0, 0, SKF_AD_PKTTYPE),    # ld pkttype
                 (0x15, 0, 1, PACKET_OUTGOING),   # jeq #OUTGOING
                 (0x06, 0, 0, 0x40000),           # ret whole packet
                 (0x06, 0, 0, 0)]                 # ret #0


class Timer:
    """A timerfd armed at absolute CLOCK_REALTIME nanoseconds."""

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(CLOCK_REALTIME, TFD_NONBLOCK)
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


def open_tap(name: str) -> socket.socket:
    """An AF_PACKET socket that sees what the current namespace sends into TUN ``name``, kernel-stamped."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    prog, keep = _fprog(ONLY_OUTGOING)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_ATTACH_FILTER if hasattr(socket, "SO_ATTACH_FILTER") else 26, prog)
    del keep
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind((name, ETH_P_ALL))
    s.setblocking(False)
    return s


_trim_prog_fd: int | None = None


def _trim_prog() -> int:
    """An eBPF socket filter that keeps 1 byte of each packet, loaded once: ``r0 = 1; exit``."""
    global _trim_prog_fd
    if _trim_prog_fd is None:
        insns = struct.pack("<BBhi", 0xB7, 0, 0, 1) + struct.pack("<BBhi", 0x95, 0, 0, 0)
        ibuf = ctypes.create_string_buffer(insns, len(insns))
        lic = ctypes.create_string_buffer(b"GPL")
        attr = ctypes.create_string_buffer(128)
        struct.pack_into("<IIQQ", attr, 0, BPF_PROG_TYPE_SOCKET_FILTER, 2,
                         ctypes.addressof(ibuf), ctypes.addressof(lic))
        fd = _libc.syscall(SYS_BPF, BPF_PROG_LOAD, attr, 128)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"bpf(BPF_PROG_LOAD): {os.strerror(err)}")
        _trim_prog_fd = fd
    return _trim_prog_fd


def mute_tun(fd: int) -> bool:
    """Shrink what this TUN queues for its reader to 1 byte per packet (its
    packets are read whole, kernel-stamped, through the tap).

    Why trim and not drop: the TUN driver stamps a packet for its sender's
    ``SO_TIMESTAMPING`` (``skb_tx_timestamp``) only *after* the filter, so a
    dropping filter would take every software TX stamp away from the VPs'
    sockets behind a delayed link. A trimmed copy still has to be read and
    thrown away (the caller drains the fd), but costs no copy of the data.
    TUNATTACHFILTER is TAP-only; TUNSETFILTEREBPF works on TUN. False when
    not possible: then the drained copies are whole.
    """
    try:
        fcntl.ioctl(fd, TUNSETFILTEREBPF, struct.pack("i", _trim_prog()))
        return True
    except OSError:
        return False


def make_realtime() -> bool:
    """SCHED_FIFO and minimal timer slack; fine to fail (then timing is just worse)."""
    _libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))
        return True
    except (PermissionError, OSError, AttributeError):
        return False


class Link:
    """One delayed link's parameters and counters."""

    def __init__(self, lid: int, delay_ms: float, jitter_ms: float, loss: float, seed: int | None,
                 offset_ns: int = 0):
        if delay_ms < 0 or jitter_ms < 0 or not 0 <= loss <= 1:
            raise ValueError(f"link {lid}: delay/jitter must be ≥ 0 and loss in [0, 1]")
        self.id = lid
        self.delay_ns = int(delay_ms * 1e6)
        self.offset_ns = offset_ns if self.delay_ns > offset_ns else 0
        self.jitter_ns = jitter_ms * 1e6
        self.loss = loss
        self.rng = random.Random(seed)
        self.n_in = self.n_out = self.n_lost = 0
        self.late: list[int] = []  # send time − due time (ns), a reservoir
        self.late_seen = 0
        self.wait: list[int] = []  # read time − kernel stamp (ns): how long packets sat before we took them
        self.write: list[int] = []  # duration of the TUN write (ns): the peer node's stack runs inside it
        self.write_seen = 0

    def due(self, stamp: int) -> int:
        d = self.delay_ns
        if self.jitter_ns:
            d = max(0, int(self.rng.gauss(d, self.jitter_ns)))
        return stamp + d - self.offset_ns

    def record_late(self, ns: int) -> None:
        self.late_seen += 1
        self._keep(self.late, self.late_seen, ns)

    def record_write(self, ns: int) -> None:
        self.write_seen += 1
        self._keep(self.write, self.write_seen, ns)

    def _keep(self, reservoir: list[int], seen: int, ns: int) -> None:
        if len(reservoir) < RESERVOIR:
            reservoir.append(ns)
        else:
            j = self.rng.randrange(seen)
            if j < RESERVOIR:
                reservoir[j] = ns


def quantiles_us(xs: list[int]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    q = sorted(xs)
    pick = lambda p: q[min(len(q) - 1, int(len(q) * p))] / 1e3  # noqa: E731
    return {"n": len(q), "mean": round(sum(q) / len(q) / 1e3, 2), "median": round(pick(0.5), 2),
            "p99": round(pick(0.99), 2), "max": round(q[-1] / 1e3, 2)}


class Forwarder:
    """Moves packets between TUN pairs with per-link, per-direction delay distributions.

    ``inputs`` maps a readable fd to (reader, out_fd, link).  A reader is a tap
    socket (kernel stamp) or the TUN fd itself (stamped when read).
    """

    def __init__(self, spin_ns: int = SPIN_NS):
        self.spin_ns = spin_ns
        self.heap: list[tuple[int, int, int, bytes, Link | None]] = []
        self.t_start = 1 << 62  # packets stamped before run() are forwarded but not counted
        self.seq = 0
        self.timer = Timer()
        self.ep = select.epoll()
        self.ep.register(self.timer.fd, select.EPOLLIN)
        self.inputs: dict[int, tuple[socket.socket | None, int, Link]] = {}
        self.links: list[Link] = []
        self.taps: list[socket.socket] = []
        self.drains: set[int] = set()
        self.running = True
        self.dirty = False

    def add_drain(self, fd: int) -> None:
        """A TUN whose queue we must empty ourselves (its packets come through its tap)."""
        self.drains.add(fd)
        self.ep.register(fd, select.EPOLLIN)

    def add_direction(self, src_fd: int, tap: socket.socket | None, out_fd: int, link: Link) -> None:
        fd = tap.fileno() if tap is not None else src_fd
        self.inputs[fd] = (tap, out_fd, link)
        if tap is not None:
            self.taps.append(tap)
        self.ep.register(fd, select.EPOLLIN)
        if link not in self.links:
            self.links.append(link)

    def _push(self, stamp: int, now: int, data: bytes, out: int, link: Link) -> None:
        link.n_in += 1
        if link.loss and link.rng.random() < link.loss:
            link.n_lost += 1
            return
        if len(link.wait) < RESERVOIR and stamp >= self.t_start:
            link.wait.append(now - stamp)
        self.seq += 1
        heapq.heappush(self.heap, (link.due(stamp), self.seq, out, data, link if stamp >= self.t_start else None))

    def take(self, fd: int) -> None:
        if fd in self.drains:
            for _ in range(BATCH):
                try:
                    os.read(fd, 65536)
                except OSError:
                    return
            return
        tap, out, link = self.inputs[fd]
        if tap is None:
            for _ in range(BATCH):
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return
                except OSError as e:
                    if e.errno in (errno.EAGAIN, errno.EBADFD, errno.EIO):
                        return
                    raise
                now = time.time_ns()
                self._push(now, now, data, out, link)
            return
        for _ in range(BATCH):
            try:
                data, anc, _, _ = tap.recvmsg(65536, 64)
            except BlockingIOError:
                return
            now = time.time_ns()
            stamp = now
            for _lvl, typ, d in anc:
                if typ == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", d[:16])
                    stamp = sec * 1_000_000_000 + nsec
            self._push(stamp, now, data, out, link)

    def flush(self) -> None:
        heap = self.heap
        while heap and heap[0][0] <= time.time_ns():
            t, _, out, data, link = heapq.heappop(heap)
            sent = time.time_ns()
            try:
                os.write(out, data)
                if link is not None:  # None: queued before the loop ran (start-up ND/MLD), not counted
                    link.n_out += 1
                    link.record_late(sent - t)
                    link.record_write(time.time_ns() - sent)
            except OSError:
                pass  # peer TUN down or full: the packet is lost, as on a wire
            self.dirty = True

    def poll_inputs(self, timeout: float) -> None:
        for fd, _ in self.ep.poll(timeout, 16):
            if fd == self.timer.fd:
                self.timer.drain()
            else:
                self.take(fd)

    def run(self, on_idle: Any = None) -> None:
        self.t_start = time.time_ns()
        while self.running:
            self.flush()
            if not self.heap:
                self.timer.disarm()
                self.poll_inputs(1.0 if on_idle else -1)
                if on_idle and not self.heap:
                    on_idle()
                continue
            wait = self.heap[0][0] - time.time_ns()
            if wait > self.spin_ns:
                self.timer.arm(self.heap[0][0] - self.spin_ns)
                self.poll_inputs(-1)
            else:
                self.poll_inputs(0)  # spin the last stretch, still taking packets in

    def calibrate(self, n: int = 60) -> dict[str, Any]:
        """How late this process sends at a due time it chose (timer + spin, no packets): the send-side error."""
        rng = random.Random(1)
        late = []
        for _ in range(n):
            due = time.time_ns() + rng.randrange(300_000, 1_500_000)
            self.timer.arm(due - self.spin_ns)
            while time.time_ns() < due - self.spin_ns:
                self.ep.poll(-1, 16)  # called before any input is registered: only the timer wakes us
                self.timer.drain()
            while time.time_ns() < due:
                self.ep.poll(0, 16)
            late.append(time.time_ns() - due)
        self.timer.disarm()
        return {"send_late_us": quantiles_us(late)}

    def stats(self) -> dict[str, Any]:
        drops = 0
        for tap in self.taps:
            try:
                _, dropped = struct.unpack("II", tap.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
                drops += dropped
            except OSError:
                pass
        self._tap_drops = getattr(self, "_tap_drops", 0) + drops  # PACKET_STATISTICS resets on read
        return {"links": {str(ln.id): {"in": ln.n_in, "out": ln.n_out, "lost": ln.n_lost,
                                       "send_late_us": quantiles_us(ln.late),
                                       "read_wait_us": quantiles_us(ln.wait),
                                       "write_us": quantiles_us(ln.write)} for ln in self.links},
                "tap_drops": self._tap_drops, "pending": len(self.heap)}


def _links_from(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    if "links" in cfg:
        return list(cfg["links"])
    return [{"id": cfg.get("id", 0), **{k: cfg[k] for k in ("a", "b") if k in cfg},
             **{k: cfg.get(k, 0.0) for k in ("delay_ms", "jitter_ms", "loss")}, "seed": cfg.get("seed")}]


def main(argv: list[str]) -> int:
    cfg: dict[str, Any] = json.loads(argv[0])
    stamp_mode = cfg.get("stamp", "kernel")
    if stamp_mode not in ("kernel", "read"):
        raise ValueError(f"stamp must be 'kernel' or 'read', not {stamp_mode!r}")
    fw = Forwarder(int(cfg.get("spin_us", SPIN_NS / 1000) * 1000))
    # real-time first, then calibrate while no TUN is registered (start-up ND/MLD would wake the poll)
    realtime = make_realtime() if cfg.get("realtime", True) else False
    calibration = {"realtime": realtime, "stamp": stamp_mode, "spin_us": fw.spin_ns / 1000,
                   **fw.calibrate(int(cfg.get("calibrate", 60)))}
    offset_ns = int(float(os.environ.get("MARIONET_FORWARDER_OFFSET_US", cfg.get("offset_us", OFFSET_US))) * 1000)
    calibration["offset_us"] = offset_ns / 1000
    calibration_notes: list[str] = []
    for lc in _links_from(cfg):
        link = Link(int(lc["id"]), float(lc.get("delay_ms", 0.0)), float(lc.get("jitter_ms", 0.0)),
                    float(lc.get("loss", 0.0)), lc.get("seed"), offset_ns)
        ends = []
        for ns, name in (lc["a"], lc["b"]):
            setns(ns)
            fd = open_tun(name)
            tap = None
            if stamp_mode == "kernel":
                tap = open_tap(name)
                fw.add_drain(fd)   # the TUN's own copy of each packet (1 byte when muted): thrown away
                if not mute_tun(fd):
                    calibration_notes.append(f"{name}: TUN filter refused, draining whole packets")
            ends.append((fd, tap))
        (fa, ta), (fb, tb) = ends
        fw.add_direction(fa, ta, fb, link)
        fw.add_direction(fb, tb, fa, link)
    if calibration_notes:
        calibration["notes"] = calibration_notes
    stats_path = cfg.get("stats_path")
    last_write = [0.0]

    def write_stats(*_: Any) -> None:
        if not stats_path:
            return
        tmp = f"{stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"calibration": calibration, **fw.stats(), "time": time.time()}, f)
        os.replace(tmp, stats_path)
        fw.dirty = False
        last_write[0] = time.monotonic()

    def on_idle() -> None:
        if fw.dirty and time.monotonic() - last_write[0] > 1.0:
            write_stats()

    def stop(*_: Any) -> None:
        fw.running = False
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, write_stats)
    write_stats()
    sys.stdout.write(json.dumps({"ready": True, "calibration": calibration}) + "\n")
    sys.stdout.flush()
    # the lab closes our stdout pipe later; don't die of SIGPIPE/EPIPE on it
    try:
        fw.run(on_idle if stats_path else None)
    except SystemExit:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
