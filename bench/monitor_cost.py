"""Cost of a WebAssembly monitor check from Python (prints figures; not pass/fail).

For allow-all and icmp-budget (the shipped WAT, its budget raised so it
never runs out; every event is a raw ICMP echo send with a 64-byte payload,
so the counter is updated on each): µs per ``check()`` call, and µs per
item for ``check_batch`` of 1, 16 and 256 items, median and p99 over
repeated rounds; then checked sends/s at batch 256 (issue 9 target with one
monitor: ≥ 50,000/s). ``--public`` adds the same figures through
wasmtime's public ``Func.__call__`` path (the fallback when its internals
change).

Usage: python bench/monitor_cost.py [--rounds 2000] [--public]
"""

from __future__ import annotations

import argparse
import statistics
import time

from marionet.guard import monitor as mon
from marionet.guard.events import Event
from marionet.guard.monitor import MonitorModule
from marionet.guard.monitors import path


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def _modules() -> dict[str, MonitorModule]:
    icmp = path("icmp-budget").read_text().replace(
        "(global $budget i32 (i32.const 10))", "(global $budget i32 (i32.const 2000000000))")
    assert "2000000000" in icmp, "icmp-budget.wat changed: update the budget patch"
    return {"allow-all": MonitorModule.from_file(path("allow-all")),
            "icmp-budget": MonitorModule.from_bytes(icmp.encode(), "icmp-budget")}


def _measure(m: MonitorModule, rounds: int) -> list[tuple[str, float, float, float]]:
    ev = Event("nsend", sock=3, proto="raw", ipproto=1, dst="192.0.2.1",
               data=b"\x08\x00" + bytes(62), principal="alice")
    inst = m.instantiate()
    rows = []
    samples = []
    for _ in range(200):
        inst.check(ev)  # warm-up (address cache, branch predictors)
    for _ in range(rounds):
        t = time.perf_counter_ns()
        inst.check(ev)
        samples.append((time.perf_counter_ns() - t) / 1000)
    rows.append(("check()", statistics.median(samples), _pct(samples, 0.99), 1e6 / statistics.median(samples)))
    for n in (1, 16, 256):
        batch = [ev] * n
        per = []
        for _ in range(max(50, rounds // max(1, n // 4))):
            t = time.perf_counter_ns()
            inst.check_batch(batch)
            per.append((time.perf_counter_ns() - t) / 1000 / n)
        med = statistics.median(per)
        rows.append((f"batch {n:>3} (per item)", med, _pct(per, 0.99), 1e6 / med))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--public", action="store_true", help="also measure the public wasmtime call path")
    args = ap.parse_args()
    import wasmtime  # noqa: F401  (version below)
    from importlib.metadata import version
    print(f"wasmtime {version('wasmtime')}, fast path {'on' if mon.FAST_PATH else 'OFF'}")
    paths = [("fast", mon.FAST_PATH)] + ([("public", False)] if args.public else [])
    print(f"{'monitor':<12} {'path':<7} {'what':<22} {'median µs':>10} {'p99 µs':>9} {'items/s':>10}")
    for pname, fast in paths:
        saved = mon.FAST_PATH
        mon.FAST_PATH = fast
        try:
            for name, m in _modules().items():
                for what, med, p99, rate in _measure(m, args.rounds):
                    print(f"{name:<12} {pname:<7} {what:<22} {med:>10.2f} {p99:>9.2f} {rate:>10,.0f}")
        finally:
            mon.FAST_PATH = saved
    print("target (issue 9): >= 50,000 checked sends/s with one monitor, batched")


if __name__ == "__main__":
    main()
