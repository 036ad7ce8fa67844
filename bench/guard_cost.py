"""Cost of one guard check of an ``nsend`` (prints figures; not pass/fail).

Drives ``marionet.guard.enforce`` directly, no endpoint and no network: the
cost the guard adds to each send on the endpoint's hot path. Per
configuration — the open guard (the baseline: a method call), policy only,
policy + 1 and + 3 WebAssembly monitors (the shipped allow-all, real
``MonitorModule`` instances) — and per send kind (connected-style UDP with
a destination, raw IPv4 with a caller-written header), it times

* single: ``check("nsend", item, sock)`` one send at a time, and
* batched: ``check_batch`` of 256 sends (one monitor call per batch),

as µs per checked send over ``--runs`` runs of ``--n`` sends each, and
prints the median and p99 of the per-run figures and the implied checks/s.
The policy has destination prefixes, a port list and a rate limit high
enough never to refuse (so the token buckets are charged on every send).

Usage: python bench/guard_cost.py [--n 5000] [--runs 40] [--batch 256]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import summary  # noqa: E402

from marionet.guard import privileges as P  # noqa: E402
from marionet.guard.core import Principal, SessionGuard  # noqa: E402
from marionet.guard.enforce import PolicyGuard  # noqa: E402
from marionet.wire import messages as m  # noqa: E402

OWN = "192.0.2.10"
PRINCIPAL = Principal(name="bench", fingerprint="be" * 16, anchor="ca" * 16, auth="chain")
GRANTS = P.parse({
    "protocols": ["udp", "raw:17", "raw:1"],
    "dst": ["198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"],
    "ports": ["53", "123", "33434-33534"],
    "rate": {"pps": 1e9, "bps": 1e12, "excess": "deny"},
    "total": {"packets": 10**15, "bytes": 10**18},
})


@dataclass
class Sock:
    sid: int = 1
    kind: str = "udp"
    family: int = 4
    ipproto: int | None = None
    hdrincl: bool = False
    raddr: str | None = None
    rport: int | None = None


@dataclass
class Vp:
    name: str = "bench"
    tags: dict[str, str] = field(default_factory=dict)

    def local_addresses(self) -> list[str]:
        return [OWN, "127.0.0.1"]


def _ipv4_udp(dst_last: int) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 1, 0, 64, 17, 0, socket.inet_aton(OWN),
                      bytes((198, 51, 100, dst_last)))
    return hdr + struct.pack("!HHHH", 33434, 33435, 16, 0) + b"\0" * 8


def workloads() -> dict[str, tuple[list[m.SendItem], Sock]]:
    """256 distinct sends per kind (a few destinations, as a probe run has)."""
    udp = [m.SendItem(sock=1, data=b"\0" * 16, dst=f"198.51.100.{1 + i % 64}", port=53) for i in range(256)]
    raw = [m.SendItem(sock=2, data=_ipv4_udp(1 + i % 64)) for i in range(256)]
    return {"udp": (udp, Sock()), "raw-hdrincl": (raw, Sock(sid=2, kind="raw", ipproto=17, hdrincl=True))}


def load_monitor() -> Any | None:
    try:
        from marionet.guard.monitor import MonitorModule
    except ImportError as exc:
        print(f"monitors unavailable: marionet.guard.monitor does not import ({exc})")
        return None
    path = Path(__file__).resolve().parents[1] / "src/marionet/guard/monitors/allow-all.wat"
    try:
        return MonitorModule.from_bytes(path.read_bytes(), "allow-all")
    except Exception as exc:  # noqa: BLE001 - report and go on with policy only
        print(f"monitors unavailable: cannot load {path.name}: {type(exc).__name__}: {exc}")
        return None


def guards(monitor: Any | None) -> dict[str, Callable[[], SessionGuard]]:
    out: dict[str, Callable[[], SessionGuard]] = {
        "open guard (baseline)": lambda: SessionGuard(PRINCIPAL),
        "policy only": lambda: PolicyGuard(lambda p: GRANTS).open(PRINCIPAL, Vp()),
    }
    if monitor is not None:
        out["policy + 1 wasm monitor"] = lambda: PolicyGuard(
            lambda p: GRANTS, local_monitors=[monitor]).open(PRINCIPAL, Vp())
        out["policy + 3 wasm monitors"] = lambda: PolicyGuard(
            lambda p: GRANTS, local_monitors=[monitor] * 3).open(PRINCIPAL, Vp())
    return out


def time_single(sg: SessionGuard, items: list[m.SendItem], sock: Sock, n: int) -> float:
    """µs per check over n single checks."""
    check = sg.check
    k = len(items)
    t0 = time.perf_counter_ns()
    for i in range(n):
        check("nsend", items[i % k], sock)
    return (time.perf_counter_ns() - t0) / n / 1000


def time_batch(sg: SessionGuard, items: list[m.SendItem], sock: Sock, n: int, batch: int) -> float:
    """µs per checked send over ceil(n / batch) batches."""
    socks = [sock] * batch
    chunk = (items * (batch // len(items) + 1))[:batch]
    rounds = max(1, n // batch)
    t0 = time.perf_counter_ns()
    for _ in range(rounds):
        sg.check_batch(chunk, socks)
    return (time.perf_counter_ns() - t0) / (rounds * batch) / 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5000, help="checks per run")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    monitor = load_monitor()
    work = workloads()
    print(f"µs per checked nsend; {args.runs} runs of {args.n} checks, median and p99 of the per-run figure; "
          f"batched = check_batch of {args.batch}\n")
    print(f"{'guard':<26} {'send kind':<12} {'mode':<8} {'median µs':>10} {'p99 µs':>9} {'checks/s':>12}")
    for gname, make in guards(monitor).items():
        for kind, (items, sock) in work.items():
            for mode in ("single", "batched"):
                sg = make()
                figures = []
                # warm-up run: caches, wasm instance, bytecode specialisation
                (time_single if mode == "single" else time_batch)(sg, items, sock, min(args.n, 1024),
                                                                  *(() if mode == "single" else (args.batch,)))
                for _ in range(args.runs):
                    if mode == "single":
                        figures.append(time_single(sg, items, sock, args.n))
                    else:
                        figures.append(time_batch(sg, items, sock, args.n, args.batch))
                s = summary(figures)
                print(f"{gname:<26} {kind:<12} {mode:<8} {s['median']:10.2f} {s['p99']:9.2f} "
                      f"{1e6 / s['median']:12,.0f}")
                sg.close()
    if monitor is None:
        print("\n(1 and 3 monitor figures not measured: monitors unavailable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
