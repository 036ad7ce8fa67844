"""Throughput per placement and direction vs iperf3 on a tbf-limited lab link.

Prints (never asserts): per placement (native, endpoint, remote) and
direction, median and p99 Mbit/s over N runs of ``marionet.measure.throughput``
and of ``iperf3 -J`` on the same link in the same run (alternating), and the
ratio of medians. The lab: client — r1 (``--delay`` each way) — target
(``--rate`` tbf), with the "throughput" and iperf3 services on the target.

    sudo python bench/throughput.py [--runs N] [--rate 50mbit] [--delay 10ms] [--size-mib 12] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from _common import summary  # noqa: E402

from marionet.evaluate.iperf import run_iperf3  # noqa: E402
from marionet.lab import Lab  # noqa: E402
from marionet.lab import throughput_path  # noqa: E402
from marionet.measure.throughput import throughput  # noqa: E402
from marionet.measure.throughput_proto import DEFAULT_PORT  # noqa: E402
from tests.integration.labclient import client_endpoint, task_result  # noqa: E402

MiB = 1 << 20


def spec(rate: str, delay: str):
    return throughput_path(rate, delay, name="tputbench")


async def bench(lab, args) -> None:
    target = lab.addr("target", 4)
    params = {"dst": target, "port": DEFAULT_PORT, "size": args.size_mib * MiB, "skip": MiB, "timeout": 120}
    seconds = max(2, round(args.size_mib * 8 / 50))
    async with client_endpoint(lab) as (remote, native):
        runners = {
            "native": lambda d: throughput(native, direction=d, **params),
            "endpoint": lambda d: task_result(remote, "throughput", {**params, "direction": d}, timeout=150),
            "remote": lambda d: throughput(remote, direction=d, **params),
        }
        print(f"throughput, {args.runs} runs, {args.rate} link, {args.delay} each way on the other link, "
              f"{args.size_mib} MiB per transfer (skip 1 MiB); iperf3 -t {seconds} -O 1")
        print(f"{'direction':9s} {'placement':9s} {'n':>3s} {'median':>8s} {'p99':>8s} "
              f"{'iperf3 med':>10s} {'ratio':>7s} {'fails':>5s}")
        for direction in ("download", "upload"):
            ours: dict[str, list[float]] = {k: [] for k in runners}
            fails = {k: 0 for k in runners}
            ip: list[float] = []
            for _ in range(args.runs):
                r = run_iperf3(lab, "client", target, 5201, direction, seconds=seconds, omit=1)
                if r.ok:
                    ip.append(r.mbps)
                for name, run in runners.items():
                    res = await run(direction)
                    if res.mbps is None:
                        fails[name] += 1
                    else:
                        ours[name].append(res.mbps)
            ips = summary(ip)
            for name, vals in ours.items():
                s = summary(vals)
                ratio = s["median"] / ips["median"] if ip else float("nan")
                print(f"{direction:9s} {name:9s} {s['n']:3d} {s['median']:8.2f} {s['p99']:8.2f} "
                      f"{ips['median']:10.2f} {ratio:7.4f} {fails[name]:5d}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rate", default="50mbit")
    ap.add_argument("--delay", default="10ms")
    ap.add_argument("--size-mib", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="3 runs of 8 MiB")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.size_mib = 3, 8
    if shutil.which("iperf3") is None:
        sys.exit("iperf3 is not installed (apt-get install -y iperf3)")
    with Lab(spec(args.rate, args.delay)) as lab:
        asyncio.run(bench(lab, args))


if __name__ == "__main__":
    main()
