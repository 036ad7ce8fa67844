"""Shared helpers for the benchmarks: statistics, an endpoint in a child
process, packet builders.

Benchmarks print figures; they never assert on targets.  Everything a
benchmark starts it stops (by pid), also when it fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

# ------------------------------------------------------------------ statistics


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``; nan if empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "median": float("nan"), "p99": float("nan"), "min": float("nan"),
                "max": float("nan"), "mean": float("nan")}
    return {"n": len(values), "median": statistics.median(values), "p99": pct(values, 0.99),
            "min": min(values), "max": max(values), "mean": statistics.fmean(values)}


def fmt_us(values_us: Sequence[float], label: str, width: int = 34) -> str:
    s = summary(values_us)
    return (f"{label:<{width}} n={s['n']:<6} median {s['median']:9.1f} µs   p99 {s['p99']:9.1f} µs"
            f"   min {s['min']:8.1f}   max {s['max']:9.1f}")


def verdict(value: float, target: float, less_is_better: bool = True) -> str:
    ok = value <= target if less_is_better else value >= target
    return "meets target" if ok else "MISSES target"


# ------------------------------------------------------------------ processes


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EndpointProc:
    proc: subprocess.Popen
    address: str
    banner: str


@contextlib.contextmanager
def endpoint_process(*, netns: str | None = None, engine: str = "process", insecure: bool = True,
                     state_dir: str | None = None, port: int | None = None,
                     startup_timeout: float = 20.0, extra: Sequence[str] = ()) -> Iterator[EndpointProc]:
    """``marionet endpoint --listen 127.0.0.1:PORT`` as a child (optionally in
    a namespace); yields once it prints its banner, stops it (by pid) after."""
    port = port or (free_port() if netns is None else 17770 + os.getpid() % 1000)
    argv = [sys.executable, "-c", "import sys; from marionet.cli import main; sys.exit(main())",
            "endpoint", "--listen", f"127.0.0.1:{port}",
            "--engine", engine, *extra]
    if insecure:
        argv.append("--insecure")
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    env = dict(os.environ)
    if state_dir is not None:
        env["MARIONET_STATE"] = state_dir
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        banner = _wait_banner(proc, startup_timeout)
        m = re.search(r"listening on ([^ ]+):(\d+)", banner)
        addr = f"127.0.0.1:{m.group(2) if m else port}"
        yield EndpointProc(proc, addr, banner.strip())
    finally:
        stop_process(proc)


def _wait_banner(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    buf = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"endpoint exited ({proc.returncode}): {err.strip()[-2000:]}")
        r, _, _ = select.select([proc.stdout], [], [], 0.1)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            buf += chunk
            if b"\n" in buf:
                return buf.decode(errors="replace")
    raise RuntimeError("endpoint did not start in time")


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM, wait, SIGKILL — this one process, by pid."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass
    for f in (proc.stdout, proc.stderr, proc.stdin):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


# ------------------------------------------------------------------ packets


from marionet.measure.probes import checksum as inet_checksum  # noqa: E402


def icmp_echo(ident: int, seq: int, payload: bytes = b"marionet-bench") -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    c = inet_checksum(hdr + payload)
    return struct.pack("!BBHHH", 8, 0, c, ident & 0xFFFF, seq & 0xFFFF) + payload


def icmp6_echo(ident: int, seq: int, payload: bytes = b"marionet-bench") -> bytes:
    """ICMPv6 echo request; the kernel fills the checksum on raw ICMPv6 sockets."""
    return struct.pack("!BBHHH", 128, 0, 0, ident & 0xFFFF, seq & 0xFFFF) + payload


def ipv4_udp(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64,
             ident: int = 0, tos: int = 0) -> bytes:
    """IPv4 header + UDP (checksum 0 = none, allowed in IPv4) for IP_HDRINCL."""
    ulen = 8 + len(payload)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    total = 20 + ulen
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident & 0xFFFF, 0, ttl, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", inet_checksum(hdr)) + hdr[12:]
    return hdr + udp
