"""Precise probes for checking the lab itself: ICMP echo RTTs and UDP one-way delays.

Tests and ``bench/lab_accuracy.py`` use these to hold the lab to the truth
it claims, so they must not share the imprecision they look for: iputils
``ping`` prints 0.1 ms above 10 ms and starts its clock in user space, so
the echo probe here takes the kernel's send stamp (``SO_TIMESTAMPING``, the
driver hand-off) and receive stamp (``SO_TIMESTAMPNS``),
and the one-way probe stamps each datagram with ``CLOCK_REALTIME`` (every
namespace shares the host clock).  With ``--tap IFACE`` the sender also
records when each datagram left through ``IFACE`` from an ``AF_PACKET``
socket — the same point the forwarder measures a delay from — so a test
can tell "the lab delivered before its configured delay" from "the
sender's own stack was slow".

Run inside a namespace as ``python -m marionet.lab.probe ping|udp-recv|udp-send …``;
each prints JSON on its last stdout line.  :func:`precise_rtts` and
:func:`one_way` drive them on a :class:`~marionet.lab.core.Lab`.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import struct
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import Lab

__all__ = ["precise_rtts", "one_way", "main", "PORT"]

SO_TIMESTAMPNS = 35            # Python lacks it (reference/linux.md)
SOL_PACKET = 263
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
PORT = 9999
_IDENT = 0x4D4E                 # ICMP echo identifier ("MN")
_END = b"END"
_HDR = struct.Struct("!QQ")     # seq, user-space send time (ns)


def _stamp(anc: list[tuple[int, int, bytes]]) -> int | None:
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return None


def _csum(b: bytes) -> int:
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    t += t >> 16
    return ~t & 0xFFFF


def ping(dst: str, count: int, interval: float, stamp: str = "kernel") -> list[float]:
    """ICMP echo RTTs (ms) to an IPv4 ``dst``, in send order of the replies that came back.

    ``stamp="kernel"`` starts each RTT at the kernel's TX stamp (driver
    hand-off); a probe whose stamp never came is left out rather than mixed
    with user stamps.  ``"user"`` starts it at ``time_ns()`` before
    ``sendto``, as iputils ``ping`` does, which adds the sender's own syscall
    path (tens of µs on an idle VM) to every RTT.
    """
    from marionet.endpoint import timestamps as ts

    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setblocking(False)            # select also wakes for the error queue (TX stamps)
    if stamp == "kernel":
        ts.enable_tx_timestamps(s)  # OPT_ID: keys count sends from 0, i.e. the seq here
    user: dict[int, int] = {}
    kernel: dict[int, int] = {}
    rtts: dict[int, float] = {}

    def tx_stamps() -> None:
        for item in ts.read_errqueue(s):
            if isinstance(item, ts.TxStamp) and item.kind == ts.so.SCM_TSTAMP_SND:
                kernel[item.key & 0xFFFF] = item.time_ns

    def take(until: float) -> None:
        """Handle replies and TX stamps until ``until`` (monotonic); the stamp of each send wakes select
        at once, so this must not return at the first quiet moment (that would send in bursts)."""
        while select.select([s], [], [], max(0.0, until - time.monotonic()))[0] or time.monotonic() < until:
            tx_stamps()
            try:
                data, anc, _, _ = s.recvmsg(2048, 64)
            except BlockingIOError:
                continue
            ihl = (data[0] & 15) * 4
            typ, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            rx = _stamp(anc)
            sent = (kernel if stamp == "kernel" else user).get(seq)
            if typ == 0 and ident == _IDENT and sent is not None and rx is not None:
                rtts[seq] = (rx - sent) / 1e6

    start = time.monotonic()
    for seq in range(count):
        take(start + seq * interval)
        hdr = struct.pack("!BBHHH", 8, 0, 0, _IDENT, seq & 0xFFFF) + b"\0" * 48
        user[seq & 0xFFFF] = time.time_ns()
        s.sendto(hdr[:2] + struct.pack("!H", _csum(hdr)) + hdr[4:], (dst, 0))
    end = time.monotonic() + 2
    while len(rtts) < count and time.monotonic() < end:
        take(time.monotonic() + 0.05)
    return [rtts[k] for k in sorted(rtts)]


def udp_recv(timeout: float, port: int = PORT, discard: bool = False) -> list[list[int]] | int:
    """``[seq, tx_user_ns, rx_kernel_ns]`` per datagram until END or ``timeout`` s of silence
    (``discard``: only how many arrived, for a background load that runs for minutes)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    s.bind(("0.0.0.0", port))
    s.settimeout(timeout)
    print("ready", flush=True)
    got: list[list[int]] = []
    count = 0
    try:
        while True:
            data, anc, _, _ = s.recvmsg(64, 64)
            if data == _END:
                break
            count += 1
            if not discard and len(data) >= _HDR.size:
                seq, tx = _HDR.unpack_from(data)
                got.append([seq, tx, _stamp(anc) or time.time_ns()])
    except TimeoutError:
        pass
    return count if discard else got


def _tap(iface: str) -> socket.socket:
    """Outgoing packets on ``iface``, kernel-stamped as they reach the device (where the forwarder's tap is)."""
    t = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    t.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    t.bind((iface, 0))
    t.setblocking(False)
    return t


def _tap_seqs(t: socket.socket, port: int, out: dict[int, int]) -> None:
    while True:
        try:
            data, anc, _, addr = t.recvmsg(128, 64)
        except BlockingIOError:
            return
        if addr[2] != PACKET_OUTGOING or len(data) < 20 or data[0] >> 4 != 4 or data[9] != socket.IPPROTO_UDP:
            continue
        ihl = (data[0] & 15) * 4
        if len(data) < ihl + 8 + _HDR.size or struct.unpack_from("!H", data, ihl + 2)[0] != port:
            continue
        seq, _ = _HDR.unpack_from(data, ihl + 8)
        st = _stamp(anc)
        if st is not None:
            out[seq] = st


def udp_send(dst: str, rate: float, n: int, payload: int = 32, port: int = PORT,
             tap: str | None = None) -> dict[str, int]:
    """``n`` datagrams at ``rate``/s (busy-wait paced); with ``tap``, each one's device stamp by seq."""
    pad = b"\0" * max(0, payload - _HDR.size)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    t = _tap(tap) if tap else None
    taps: dict[int, int] = {}
    start = time.perf_counter()
    for i in range(n):
        due = start + i / rate
        while time.perf_counter() < due:
            pass
        s.sendto(_HDR.pack(i, time.time_ns()) + pad, (dst, port))
        if t is not None:
            _tap_seqs(t, port, taps)
    time.sleep(0.5)
    if t is not None:
        _tap_seqs(t, port, taps)
    for _ in range(3):
        s.sendto(_END, (dst, port))
        time.sleep(0.05)
    return {str(k): v for k, v in taps.items()}


def _argv(*args: object) -> list[str]:
    return [sys.executable, "-m", "marionet.lab.probe", *map(str, args)]


def precise_rtts(lab: "Lab", count: int, interval: float = 0.01, src: str = "client", dst: str = "target",
                 stamp: str = "kernel") -> list[float]:
    """ICMP echo RTTs (ms) ``src`` → ``dst`` (IPv4), µs-precise; ``stamp`` as in :func:`ping`."""
    cp = lab.exec(src, _argv("ping", lab.addr(dst), count, interval, "--stamp", stamp),
                  timeout=count * interval + 30)
    if cp.returncode != 0:
        raise RuntimeError(f"probe ping failed: {cp.stderr.strip()[-500:]}")
    return json.loads(cp.stdout.strip().splitlines()[-1])


def one_way(lab: "Lab", rate: float, n: int, *, timeout: float = 5.0, payload: int = 32,
            tap: str | None = None, src: str = "client", dst: str = "target") -> list[dict[str, Any]]:
    """``n`` UDP datagrams ``src`` → ``dst`` at ``rate``/s; per datagram received ``{seq, user_ns,
    rx_ns, tap_ns}`` (``tap_ns`` None unless ``tap`` names ``src``'s outgoing interface)."""
    rx = lab.popen(dst, _argv("udp-recv", timeout), stdout=subprocess.PIPE, text=True)
    try:
        assert rx.stdout is not None
        if rx.stdout.readline().strip() != "ready":
            raise RuntimeError("probe receiver did not start")
        extra = ("--tap", tap) if tap else ()
        cp = lab.exec(src, _argv("udp-send", lab.addr(dst), rate, n, "--payload", payload, *extra),
                      timeout=n / rate + 30)
        if cp.returncode != 0:
            raise RuntimeError(f"probe sender failed: {cp.stderr.strip()[-500:]}")
        out, _ = rx.communicate(timeout=n / rate + timeout + 30)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    taps = json.loads(cp.stdout.strip().splitlines()[-1]) if tap else {}
    return [{"seq": seq, "user_ns": tx, "rx_ns": st, "tap_ns": taps.get(str(seq))}
            for seq, tx, st in json.loads(out.strip().splitlines()[-1])]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marionet.lab.probe", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ping")
    p.add_argument("dst")
    p.add_argument("count", type=int)
    p.add_argument("interval", type=float)
    p.add_argument("--stamp", choices=("kernel", "user"), default="kernel",
                   help="where an RTT starts: the kernel's TX stamp (default) or user space before sendto")
    r = sub.add_parser("udp-recv")
    r.add_argument("timeout", type=float)
    r.add_argument("--port", type=int, default=PORT)
    r.add_argument("--discard", action="store_true", help="print only the count")
    s = sub.add_parser("udp-send")
    s.add_argument("dst")
    s.add_argument("rate", type=float)
    s.add_argument("n", type=int)
    s.add_argument("--payload", type=int, default=32)
    s.add_argument("--port", type=int, default=PORT)
    s.add_argument("--tap", help="outgoing interface to stamp the datagrams on")
    a = ap.parse_args(argv)
    if a.cmd == "ping":
        out: Any = ping(a.dst, a.count, a.interval, a.stamp)
    elif a.cmd == "udp-recv":
        out = udp_recv(a.timeout, a.port, a.discard)
    else:
        if a.rate <= 0 or a.n < 0:
            ap.error("rate must be > 0 and n ≥ 0")
        out = udp_send(a.dst, a.rate, a.n, a.payload, a.port, a.tap)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
