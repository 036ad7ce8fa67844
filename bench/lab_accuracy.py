"""How faithfully the lab emulates delay, jitter, loss and rate (needs root).

    python bench/lab_accuracy.py [--quick] [--json OUT]

Prints median/p99/mean/sd of ping RTTs through a link with 20 ms one-way
delay (no jitter, then 2 ms jitter), loss through a 10 % link (UDP one-way
over 2,000 packets, and ping round trips), iperf3 goodput through tbf 50
Mbit/s, and the forwarder's capacity at 1500-byte packets: the packet rate up
to which the one-way delay error stays small.  First (``path``) the issue's
figures: mean/median/p99/sd of RTTs on a 4-router path (5 links of 2 ms) and
on a single 10 ms link, both configured for 20 ms RTT, against the configured
RTT, against the RTT truth claims (configured + the forwarder's measured
added delay, up to its delivery cost: ``marionet.lab.rtt_bounds_ms``), and
against the same path on plain veths (the namespaces' own cost).  Path RTTs
come from the lab's echo probe with kernel send and receive stamps (and once
more from a user-space send stamp, as iputils ping starts its clock); the
other sections' RTTs from iputils ping; one-way delays from SO_TIMESTAMPNS on
the receiver against CLOCK_REALTIME stamps in the payload (same host clock).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from marionet.lab import linear_path, probe, rtt_bounds_ms
from marionet.lab.core import Lab

GOODPUT_RATIO = 1448 / 1514


def summary(xs: list[float]) -> dict[str, float]:
    q = sorted(xs)
    return {
        "n": len(q), "median": statistics.median(q), "p99": q[min(len(q) - 1, int(len(q) * 0.99))],
        "mean": statistics.fmean(q), "sd": statistics.stdev(q) if len(q) > 1 else 0.0,
        "min": q[0], "max": q[-1],
    }


def fmt(s: dict[str, float], unit: str = "ms") -> str:
    return (f"n={s['n']} median={s['median']:.3f} p99={s['p99']:.3f} mean={s['mean']:.3f} "
            f"sd={s['sd']:.3f} {unit}")


def ping_rtts(lab: Lab, count: int, interval: float, family: int = 4) -> tuple[list[float], int]:
    cp = lab.exec("client", ["ping", f"-{family}", "-n", "-c", str(count), "-i", str(interval), "-W", "2",
                             lab.addr("target", family)], timeout=count * interval + 60)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", cp.stdout)]
    return rtts, count


def binom_ci(p: float, n: int) -> tuple[float, float]:
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    return p - half, p + half


def one_way(lab: Lab, rate: float, n: int, timeout: float = 5.0, payload: int = 32) -> tuple[list[float], int]:
    """Send n UDP packets (``payload`` bytes) at ``rate``/s client→target; return one-way delays (ms), count received."""
    rows = probe.one_way(lab, rate, n, timeout=timeout, payload=payload)
    return [(r["rx_ns"] - r["user_ns"]) / 1e6 for r in rows], len(rows)


def bench_delay(res: dict[str, Any], count: int) -> None:
    with Lab(linear_path(1, delay="20ms", impair_link=0)) as lab:
        rtts, _ = ping_rtts(lab, count, 0.01)
        s = summary(rtts)
        ok = abs(s["mean"] - 40) <= 0.5 and s["sd"] <= 0.3
        print(f"delay 20 ms/dir, no jitter, ping RTT: {fmt(s)}  target mean 40±0.5, sd≤0.3 -> "
              f"{'PASS' if ok else 'FAIL'}")
        res["delay"] = {**s, "pass": ok}
        rtts6, _ = ping_rtts(lab, count // 2, 0.01, family=6)
        s6 = summary(rtts6)
        print(f"  same over IPv6: {fmt(s6)}")
        res["delay_v6"] = s6


def accuracy_line(label: str, s: dict[str, float], want: float) -> dict[str, Any]:
    """The issue's figures: mean/median/p99/sd of RTTs against the configured RTT."""
    err = {"mean_err": s["mean"] - want, "median_err": s["median"] - want, "p99_err": s["p99"] - want}
    ok = abs(err["mean_err"]) <= 0.1 and err["p99_err"] <= 0.5
    print(f"{label}: configured {want:.1f} ms; mean {s['mean']:.3f} ({err['mean_err']:+.3f}) median "
          f"{s['median']:.3f} ({err['median_err']:+.3f}) p99 {s['p99']:.3f} ({err['p99_err']:+.3f}) "
          f"sd {s['sd']:.3f} n={s['n']}  target |mean err|<=0.1, p99 err<=0.5 -> {'PASS' if ok else 'FAIL'}")
    return {**s, **err, "configured_ms": want, "pass": ok}


def precise_rtts(lab: Lab, count: int, interval: float, stamp: str = "kernel") -> list[float]:
    """ICMP echo RTTs (ms) from kernel send and receive stamps (``stamp="user"``: user-space send stamp,
    as iputils ping; iputils also prints only 0.1 ms above 10 ms)."""
    return probe.precise_rtts(lab, count, interval, stamp=stamp)


def truth_line(lab: Lab, s: dict[str, float], want: float) -> dict[str, Any]:
    """The mean against what truth claims: configured + the forwarder's added delay (+ up to its delivery)."""
    lo, hi = rtt_bounds_ms(lab.truth())
    off = 0.0 if lo <= s["mean"] <= hi else min(abs(s["mean"] - lo), abs(s["mean"] - hi))
    ok = off <= 0.1
    print(f"  truth RTT {lo:.3f}..{hi:.3f} ms (configured {want:.1f} + forwarder added {lo - want:+.3f}, "
          f"delivery up to {hi - lo:+.3f}); mean {s['mean']:.3f} is {off:.3f} ms outside it  "
          f"target <=0.1 -> {'PASS' if ok else 'FAIL'}")
    return {"truth_lo_ms": lo, "truth_hi_ms": hi, "outside_truth_ms": off, "pass_truth": ok}


def bench_path(res: dict[str, Any], count: int, busy: bool = False) -> None:
    """4 routers (5 delayed links of 2 ms) and 1 link of 10 ms, both 20 ms RTT, zero jitter; the same
    paths on plain veths give the namespaces' own cost.  ``busy``: another lab forwards 10k pkt/s meanwhile."""
    cases = (("veth5", linear_path(4), None, "4-router path on veths (no delay)"),
             ("path5", linear_path(4, delay="2ms"), 20.0, "4-router path, 5 links x 2 ms"),
             ("veth1", linear_path(1), None, "1-router path on veths (no delay)"),
             ("link1", linear_path(1, delay="10ms", impair_link=0), 20.0, "single link 10 ms"))
    other = None
    if busy:
        other = Lab(linear_path(1, delay="5ms", impair_link=0, name="busy"))
        other.up()
        rx = other.popen("target", [sys.executable, "-m", "marionet.lab.probe", "udp-recv", "600", "--discard"],
                         stdout=subprocess.DEVNULL)
        tx = other.popen("client", [sys.executable, "-m", "marionet.lab.probe", "udp-send", other.addr("target"),
                                    "10000", "100000000", "--payload", "1472"], stdout=subprocess.DEVNULL)
    try:
        for key, spec, want, label in cases:
            with Lab(spec) as lab:
                precise_rtts(lab, 20, 0.01)  # warm up
                s = summary(precise_rtts(lab, count, 0.01))
                if want is None:
                    print(f"{label}: {fmt(s)}")
                    res[key] = s
                    continue
                row = accuracy_line(label + (", other lab busy" if busy else ""), s, want)
                row.update(truth_line(lab, s, want))
                u = summary(precise_rtts(lab, count, 0.01, stamp="user"))
                row["user_stamp"] = u
                print(f"  same path, RTT from a user-space send stamp (as iputils ping): mean {u['mean']:.3f} "
                      f"({u['mean'] - want:+.3f}) p99 {u['p99']:.3f}")
                base = res.get("veth5" if key == "path5" else "veth1")
                if base:
                    row["forwarder_only_mean_err"] = s["mean"] - want - base["mean"]
                    print(f"  minus the veth path's own {base['mean']:.3f} ms: forwarder mean error "
                          f"{row['forwarder_only_mean_err']:+.3f} ms")
                t = lab.truth()
                row["truth_added_us"] = [ln.get("added_us") for ln in t["links"] if ln.get("forwarder")]
                w = [t["forwarder"]["links"].get(str(ln["index"]), {}).get("write_us", {}) for ln in t["links"]
                     if ln.get("forwarder")]
                print(f"  TUN write duration per link (mean us): {[x.get('mean') for x in w]}")
                print(f"  truth: per-link added_us medians {[a and a.get('median') for a in row['truth_added_us']]}"
                      f", calibration {t['forwarder']['calibration'].get('send_late_us')}")
                res[key + ("_busy" if busy else "")] = row
    finally:
        if other is not None:
            for p in (tx, rx):
                p.kill()
                p.wait()
            other.down()


def bench_jitter(res: dict[str, Any], count: int) -> None:
    jit = 2.0
    with Lab(linear_path(1, delay="20ms", jitter=f"{jit}ms", impair_link=0)) as lab:
        rtts, _ = ping_rtts(lab, count, 0.01)
        s = summary(rtts)
        want = jit * math.sqrt(2)  # independent jitter in both directions
        ok = abs(s["sd"] - want) <= 0.2 * want
        print(f"delay 20 ms ± {jit} ms/dir, ping RTT: {fmt(s)}  expected sd {want:.3f} (±20%) -> "
              f"{'PASS' if ok else 'FAIL'}")
        res["jitter"] = {**s, "expected_sd": want, "pass": ok}


def bench_loss(res: dict[str, Any], n: int) -> None:
    p = 0.10
    with Lab(linear_path(1, loss=p, impair_link=0)) as lab:
        _, got = one_way(lab, 1000, n)
        measured = 1 - got / n
        lo, hi = binom_ci(p, n)
        ok = lo <= measured <= hi
        print(f"loss 10% one-way (UDP, {n} packets): measured {measured:.4f}, 95% binomial interval "
              f"[{lo:.4f}, {hi:.4f}] -> {'PASS' if ok else 'FAIL'}")
        rtts, count = ping_rtts(lab, n, 0.002)
        rt = 1 - len(rtts) / count
        prt = 1 - (1 - p) ** 2
        lo2, hi2 = binom_ci(prt, count)
        ok2 = lo2 <= rt <= hi2
        print(f"  ping round trip ({count} probes, loss both ways): {rt:.4f}, expected {prt:.4f} "
              f"[{lo2:.4f}, {hi2:.4f}] -> {'PASS' if ok2 else 'FAIL'}")
        res["loss"] = {"one_way": measured, "ci": [lo, hi], "pass": ok, "round_trip": rt,
                       "round_trip_expected": prt, "round_trip_pass": ok2}


def bench_rate(res: dict[str, Any], seconds: int) -> None:
    with Lab(linear_path(1, rate="50mbit", impair_link=1)) as lab:
        srv = lab.popen("target", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        cp = lab.exec("client", ["iperf3", "-c", lab.addr("target"), "-t", str(seconds), "-J"],
                      timeout=seconds + 30)
        srv.wait(timeout=10)
        try:
            j = json.loads(cp.stdout)
            bps = j["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            print(f"rate: iperf3 failed: {cp.stdout[-300:]} {cp.stderr[-300:]}")
            return
        want = 50e6 * GOODPUT_RATIO
        ok = abs(bps - want) <= 0.05 * want
        print(f"rate tbf 50 Mbit/s, iperf3 TCP goodput: {bps / 1e6:.2f} Mbit/s, expected "
              f"{want / 1e6:.2f} (±5%) -> {'PASS' if ok else 'FAIL'}")
        res["rate"] = {"goodput_bps": bps, "expected_bps": want, "pass": ok}


def bench_capacity(res: dict[str, Any], quick: bool) -> None:
    """1500-byte IP packets (1472 B UDP payload) through one 5 ms link at rising rates.

    Capacity: the highest rate whose one-way delay error stays small (median ≤ 0.1 ms, p99 ≤ 1 ms)
    with loss < 0.1 %.  The error includes the two namespaces' stack cost (~20 us) and the Python
    sender/receiver sharing the 2 vCPUs with the forwarder: a lower bound on the forwarder alone.
    """
    delay = 5.0
    rates = [1000, 5000, 10000, 20000, 40000] if quick else [1000, 5000, 10000, 20000, 30000, 40000, 60000]
    rows = []
    with Lab(linear_path(1, delay=f"{delay}ms", impair_link=0)) as lab:
        for r in rates:
            n = int(min(r * 2, 100000))
            ds, got = one_way(lab, r, n, payload=1472)
            if not ds:
                break
            s = summary([d - delay for d in ds])
            row = {"rate": r, "mbit_s": r * 1500 * 8 / 1e6, "loss": 1 - got / n, **s}
            rows.append(row)
            print(f"  forwarder {r:>6} pkt/s ({row['mbit_s']:6.0f} Mbit/s at 1500 B): delay error "
                  f"median={s['median']:.3f} p99={s['p99']:.3f} mean={s['mean']:.3f} sd={s['sd']:.3f} ms, "
                  f"loss {row['loss']:.4f}")
        fw = lab.forwarder_stats() or {}
        res["capacity_forwarder_stats"] = fw
        print(f"  forwarder's own figures: {json.dumps(fw.get('links', {}))[:400]} tap_drops={fw.get('tap_drops')}")
    ok_rates = [x["rate"] for x in rows if x["median"] <= 0.1 and x["p99"] <= 1.0 and x["loss"] < 0.001]
    cap = max(ok_rates) if ok_rates else 0
    print(f"forwarder capacity at 1500 B (median delay error ≤ 0.1 ms, p99 ≤ 1 ms, loss < 0.1%): ≥ {cap} "
          f"packets/s = {cap * 1500 * 8 / 1e6:.0f} Mbit/s (highest rate tried {rates[-1]})")
    res["capacity"] = {"rows": rows, "packets_per_s": cap, "mbit_s": cap * 1500 * 8 / 1e6}


def bench_rate_delay(res: dict[str, Any], seconds: int) -> None:
    """A link with both delay and rate: tbf sits on the TUNs, before the forwarder's tap (rate, then delay)."""
    rate = 100e6
    with Lab(linear_path(1, delay="10ms", rate="100mbit", impair_link=0)) as lab:
        srv = lab.popen("target", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        cp = lab.exec("client", ["iperf3", "-c", lab.addr("target"), "-t", str(seconds), "-J"],
                      timeout=seconds + 30)
        srv.wait(timeout=10)
        try:
            bps = json.loads(cp.stdout)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            print(f"rate+delay: iperf3 failed: {cp.stdout[-300:]} {cp.stderr[-300:]}")
            return
        want = rate * GOODPUT_RATIO
        ok = bps >= 0.9 * want
        print(f"rate 100 Mbit/s + delay 10 ms (one link), iperf3 goodput {bps / 1e6:.2f} Mbit/s, expected "
              f"{want / 1e6:.2f} (≥90%) -> {'PASS' if ok else 'FAIL'}")
        res["rate_delay"] = {"goodput_bps": bps, "expected_bps": want, "pass": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer probes")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--busy", action="store_true", help="also measure the paths while another lab forwards 10k pkt/s")
    ap.add_argument("--only", nargs="*", choices=["path", "delay", "jitter", "loss", "rate", "rate_delay", "capacity"])
    a = ap.parse_args()
    count = 500 if a.quick else 2000
    res: dict[str, Any] = {}
    todo = a.only or ["path", "delay", "jitter", "loss", "rate", "rate_delay", "capacity"]
    if "path" in todo:
        bench_path(res, count)
        if a.busy:
            bench_path(res, count, busy=True)
    if "delay" in todo:
        bench_delay(res, count)
    if "jitter" in todo:
        bench_jitter(res, count)
    if "loss" in todo:
        bench_loss(res, 2000)
    if "rate" in todo:
        bench_rate(res, 5 if a.quick else 10)
    if "rate_delay" in todo:
        bench_rate_delay(res, 5 if a.quick else 10)
    if "capacity" in todo:
        bench_capacity(res, a.quick)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
