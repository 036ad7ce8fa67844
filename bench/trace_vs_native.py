"""do_trace per-hop RTTs vs Butskoy traceroute on a 3-router namespace path.

Path: client – r1 – r2 – r3 – target (``marionet.lab`` linear_path(3)).  An
in-process endpoint lives in the client namespace (this thread enters it
with setns, as tests/integration/test_endpoint_paths.py does).  Each round,
interleaved so both see the same conditions:

  * ``trace()`` through a session to that endpoint (remote placement over
    loopback TCP) and through a native session, method udp-paris, one
    probe in flight (``--squeries N``: N TTLs at once, 16 as Butskoy): RTT
    = kernel RX stamp − kernel TX stamp (``ntag``)
  * Debian's Butskoy ``traceroute -n -q 1 TARGET`` (UDP, user-space send
    time, kernel receive time; it sends all hops at once, -N 16)

Prints the per-hop medians and the ratio of medians ours/Butskoy, the median
time one whole trace takes (Butskoy's includes starting the process), plus the
paths (they must agree: C3 Jaccard of (hop, address) pairs).  Figures only;
never fails on them.  Needs root and ``apt-get install traceroute``.

Usage: python bench/trace_vs_native.py [--rounds 50] [--method udp-paris] [--family 4] [--squeries 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

_HOP = re.compile(r"^\s*(\d+)\s+(\S+)\s+([\d.]+) ms", re.M)


def butskoy(netns: str, dst: str, family: int) -> dict[int, tuple[str, float]]:
    cp = subprocess.run(["ip", "netns", "exec", netns, "traceroute", f"-{family}", "-n", "-q", "1",
                         "-w", "1", "-m", "8", dst], capture_output=True, text=True, timeout=60)
    return {int(m.group(1)): (m.group(2), float(m.group(3)) * 1000) for m in _HOP.finditer(cp.stdout)}


async def run(args: argparse.Namespace) -> None:
    import pathlab

    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.endpoint.local import native_session
    from marionet.lab import linear_path
    from marionet.lab.pytest_plugin import make_lab
    from marionet.measure.trace import trace

    with make_lab(linear_path(3, name="trbench")) as lab:
        dst = lab.addr("target", args.family)
        netns = lab.netns("client")
        ours: dict[str, dict[int, list[float]]] = {"remote": {}, "native": {}}
        theirs: dict[int, list[float]] = {}
        took: dict[str, list[float]] = {"remote": [], "native": [], "butskoy": []}
        paths: dict[str, set[tuple[int, str]]] = {"remote": set(), "native": set(), "butskoy": set()}
        with pathlab.inside(netns):
            ep = Endpoint(EndpointConfig(name="trace-bench"))
            srv = await ep.serve("127.0.0.1", 0, None)
            s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
            try:
                async with native_session() as ns:
                    t0 = time.monotonic()
                    for _ in range(args.rounds):
                        for name, sess in (("remote", s), ("native", ns)):
                            t1 = time.monotonic()
                            t = await trace(sess, dst, method=args.method, wait_timeout=1.0,
                                            squeries=args.squeries)
                            took[name].append((time.monotonic() - t1) * 1000)
                            for h in t.hop_records:
                                ours[name].setdefault(h.probe_ttl, []).append(h.rtt_ns / 1000)
                                paths[name].add((h.probe_ttl, str(h.src)))
                        t1 = time.monotonic()
                        hops = await asyncio.to_thread(butskoy, netns, dst, args.family)
                        took["butskoy"].append((time.monotonic() - t1) * 1000)
                        for ttl, (addr, rtt) in hops.items():
                            theirs.setdefault(ttl, []).append(rtt)
                            paths["butskoy"].add((ttl, addr))
                    elapsed = time.monotonic() - t0
            finally:
                await s.close()
                await ep.close()
    print(f"trace_vs_native: {args.rounds} rounds, IPv{args.family} {args.method}, squeries={args.squeries}, "
          f"3-router lab path, {elapsed:.1f} s")
    print(f"{'hop':>3}  {'remote median':>14}  {'native median':>14}  {'Butskoy median':>15}  "
          f"{'remote/Butskoy':>15}  {'native/Butskoy':>15}")
    for ttl in sorted(set(theirs) | set(ours["remote"])):
        r = statistics.median(ours["remote"].get(ttl, [float("nan")]))
        n = statistics.median(ours["native"].get(ttl, [float("nan")]))
        b = statistics.median(theirs.get(ttl, [float("nan")]))
        print(f"{ttl:>3}  {r:11.1f} µs  {n:11.1f} µs  {b:12.1f} µs  {r / b:15.2f}  {n / b:15.2f}")
    print("one whole trace, median: " + ", ".join(
        f"{name} {statistics.median(v):.1f} ms" for name, v in took.items()))
    for name in ("remote", "native"):
        a, b2 = paths[name], paths["butskoy"]
        j = len(a & b2) / len(a | b2) if a | b2 else 1.0
        print(f"C3 Jaccard {name} vs Butskoy (hop, address) over all rounds: {j:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--method", default="udp-paris")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--squeries", type=int, default=1)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, raw sockets)")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
