"""Pings per second one endpoint sustains to 1,000 targets, every probe and
every reply kernel-stamped; and scamper's ping at the same offered rate.

Setup: two namespaces made for the run (``mnpr<pid>c``, ``mnpr<pid>t``,
names checked free first, deleted after, also on failure) joined by a veth;
the target namespace holds ``--targets`` addresses (default 1,000) on
its loopback interface and answers ICMP echo with its kernel (ICMP rate limits
off). This process then enters the client namespace, starts an endpoint
there as a child process (``marionet endpoint``) and drives it:

* ``--mode batch`` (default): one session, one raw hdrincl ICMP socket with
  one capture filter; ICMP echo requests round-robin over the targets,
  queued in ``nsendv`` batches with ``at=`` send times ``1/pps`` apart, each
  tagged, so the endpoint's scheduler paces them and the kernel stamps
  the transmit (``ntag``) and the reply (``ndata``);
* ``--mode tasks``: the ping primitive as researchers call it —
  ``--targets`` concurrent ``marionet.measure.ping`` coroutines, 200 to a
  session (a session holds at most 256 sockets; each ping its own
  notification stream), ``wait_probe = targets / pps``.

A ping counts when its probe has a kernel TX stamp and its echo reply a
kernel RX stamp. The rate of a run is those pings divided by the span of
their kernel TX stamps — what the endpoint actually sustained, not what
was offered. scamper runs ``scamper -p PPS -c "ping -c A -i W" -f LIST``
in the same namespace (its rate: replies over the span of its TX times).

Prints, per side, the median and p99 of the per-run rates (``--runs``),
the answered fraction, how late the endpoint sent (kernel TX − scheduled),
and the marionet/scamper ratio. Target ≥ 10,000 pings/s. Prints figures,
never fails on them.

Usage: python bench/ping_rate.py [--pps 10000] [--seconds 4] [--runs 3]
                                 [--targets 1000] [--mode batch|tasks]
                                 [--batch 200] [--no-scamper]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import endpoint_process, pct, summary, verdict  # noqa: E402

from marionet import aio  # noqa: E402
from marionet.measure import probes as P  # noqa: E402
from marionet.wire import messages as m  # noqa: E402

TARGET = 10_000
SCAMPER_MAX_PPS = 10_000  # scamper 20211212: "-p … (1 <= pps <= 10000)"
CLIENT, GATEWAY = "10.201.0.1", "10.201.0.2"
TARGET_NET = ipaddress.ip_network("10.202.0.0/16")
LEAD_NS = 60_000_000  # sends are queued this far ahead of their time


# ------------------------------------------------------------------ namespaces


def _run(argv: list[str], input: str | None = None) -> None:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=60, input=input)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed: {cp.stderr.strip()[:300]}")


@contextlib.contextmanager
def namespaces(ntargets: int) -> Iterator[tuple[str, str, list[str]]]:
    """(client netns, target netns, target addresses); removed afterwards."""
    pre = f"mnpr{os.getpid()}"
    cns, tns = f"{pre}c", f"{pre}t"
    have = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    if cns in have or tns in have:
        raise RuntimeError(f"namespace {cns} or {tns} exists already; not touching it")
    made: list[str] = []
    targets = [str(TARGET_NET.network_address + 256 + i) for i in range(ntargets)]
    try:
        for ns in (cns, tns):
            _run(["ip", "netns", "add", ns])
            made.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", f"{pre}a", "netns", cns, "type", "veth", "peer", "name", f"{pre}b",
              "netns", tns])
        _run(["ip", "-n", cns, "addr", "add", f"{CLIENT}/24", "dev", f"{pre}a"])
        _run(["ip", "-n", tns, "addr", "add", f"{GATEWAY}/24", "dev", f"{pre}b"])
        for ns, dev in ((cns, f"{pre}a"), (tns, f"{pre}b")):
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        _run(["ip", "-n", cns, "route", "add", str(TARGET_NET), "via", GATEWAY])
        # /32s on lo (this kernel has no dummy driver): each one a local address
        _run(["ip", "-n", tns, "-batch", "-"], input="".join(f"addr add {a}/32 dev lo\n" for a in targets))
        _run(["ip", "netns", "exec", tns, "sh", "-c",
              "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit; "
              "echo 10000000 > /proc/sys/net/ipv4/icmp_msgs_per_sec; "
              "echo 10000000 > /proc/sys/net/ipv4/icmp_msgs_burst"])
        yield cns, tns, targets
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def enter(netns: str) -> None:
    """Move this (single-threaded) process into ``netns``: sockets it opens
    and children it starts live there from now on."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), f"setns({netns})")
    finally:
        os.close(fd)


# ------------------------------------------------------------------ marionet: batch


async def run_batch(address: str, targets: list[str], pps: int, seconds: float, batch: int) -> dict:
    """One run: ``pps × seconds`` echo requests round-robin over ``targets``."""
    s = await aio.connect(address, insecure=True)
    try:
        off = (await s.clock_offset(samples=5)).offset_ns
        ident = random.randrange(1, 0x10000)
        sock = await s.nopen("raw", family=4, ipproto=1, hdrincl=True, laddr=CLIENT)
        await s.ncap(sock, f"icmp and icmp[0] = 0 and icmp[4:2] = {ident}")
        n = int(pps * seconds)
        gap = 1_000_000_000 // pps
        payload = bytes(56)
        key: dict[tuple[str, int], int] = {}
        at = [0] * n
        tx: dict[int, tuple[int, str | None]] = {}
        rx: dict[int, tuple[int, str | None]] = {}
        drops = 0

        def handle(note: m.Notification) -> None:
            nonlocal drops
            if note.kind == "ntag" and not note.error:
                tx[note.tag] = (note.time_ns, note.ts_source)
            elif note.kind == "ndata" and note.sock == sock:
                pkt = P.parse_packet(note.data)
                if pkt is not None and pkt.icmp is not None:
                    i = key.get((pkt.src, pkt.icmp.seq))
                    if i is not None and i not in rx:
                        rx[i] = (note.time_ns, note.ts_source)
            elif note.kind == "ndrop":
                drops += note.count

        start = time.time_ns() + off + 200_000_000
        nxt = 0
        pending: set[asyncio.Future] = set()
        while nxt < n:
            now_ep = time.time_ns() + off
            # queue every probe due within the lead, a batch per request
            while nxt < n and start + nxt * gap <= now_ep + LEAD_NS:
                items = []
                for i in range(nxt, min(n, nxt + batch)):
                    dst = targets[i % len(targets)]
                    seq = i & 0xFFFF
                    key[(dst, seq)] = i
                    at[i] = start + i * gap
                    body = P.icmp_echo(ident, seq, payload)
                    data = P.ipv4_header(CLIENT, dst, 1, len(body), ipid=(i % 0xFFFF) + 1) + body
                    items.append(m.SendItem(sock=sock, data=data, dst=dst, at=at[i], tag=i))
                f = s._request(m.NSendV(id=s.next_id(), sends=items))  # pipelined
                pending.add(f)
                f.add_done_callback(pending.discard)
                nxt += len(items)
            while (note := s.poll_notification()) is not None:
                handle(note)
            note = await s.next_notification(0.002)
            if note is not None:
                handle(note)
        deadline = time.monotonic() + 2.0  # the tail: last sends, their replies
        while time.monotonic() < deadline and (len(tx) < n or len(rx) < len(tx)):
            note = await s.next_notification(0.05)
            if note is not None:
                handle(note)
        while (note := s.poll_notification()) is not None:
            handle(note)
        errs = [f.exception() for f in pending if f.done() and f.exception() is not None]
        await s.nclose(sock)
    finally:
        await s.close()
    return _figures(n, at, tx, rx, drops, errs)


def _figures(n: int, at: list[int], tx: dict, rx: dict, drops: int, errs: list) -> dict:
    good = [i for i in rx if tx.get(i, (0, None))[1] == "kernel" and rx[i][1] == "kernel"]
    txs = [tx[i][0] for i in good]
    span = (max(txs) - min(txs)) / 1e9 if len(txs) > 1 else float("nan")
    late = [(tx[i][0] - at[i]) / 1e3 for i in tx if at[i]]
    rtt = [(rx[i][0] - tx[i][0]) / 1e3 for i in good]
    return {"rate": len(good) / span if span == span and span > 0 else 0.0, "sent": n, "stamped": len(tx),
            "kernel_tx": sum(1 for v in tx.values() if v[1] == "kernel"), "replies": len(rx),
            "good": len(good), "late_us": late, "rtt_us": rtt, "drops": drops, "errors": errs[:3]}


# ------------------------------------------------------------------ marionet: tasks


async def run_tasks(address: str, targets: list[str], pps: int, seconds: float) -> dict:
    """One run: a ping primitive per target, all at once."""
    from marionet.measure.ping import ping

    per = 200  # pings per session: a session may hold at most 256 sockets
    sessions = [await aio.connect(address, insecure=True) for _ in range(0, len(targets), per)]
    wait = len(targets) / pps
    attempts = max(1, round(seconds / wait))
    try:
        res = await asyncio.gather(*(ping(sessions[k // per], t, attempts=attempts, wait_probe=wait,
                                          wait_timeout=1.0) for k, t in enumerate(targets)),
                                   return_exceptions=True)
    finally:
        for s in sessions:
            await s.close()
    errs = [r for r in res if isinstance(r, BaseException)]
    pings = [r for r in res if not isinstance(r, BaseException)]
    good = [r for p in pings for r in p.replies if r.tx_ts_source == "kernel" and r.rx_ts_source == "kernel"]
    txs = [r.tx_ns for r in good]
    span = (max(txs) - min(txs)) / 1e9 if len(txs) > 1 else float("nan")
    sent = sum(p.ping_sent for p in pings)
    return {"rate": len(good) / span if span == span and span > 0 else 0.0, "sent": sent,
            "stamped": sent, "kernel_tx": len(good), "replies": sum(len(p.replies) for p in pings),
            "good": len(good), "late_us": [], "rtt_us": [r.rtt_ns / 1e3 for r in good],
            "drops": sum(p.extra.get("ndrop", 0) for p in pings), "errors": [repr(e) for e in errs[:3]]}


# ------------------------------------------------------------------ scamper


def run_scamper(targets: list[str], pps: int, seconds: float) -> dict:
    """scamper pinging every target at the same offered rate."""
    wait = len(targets) / pps
    attempts = max(1, round(seconds / wait))
    with tempfile.TemporaryDirectory(prefix="mnpr-") as tmp:
        lst, out = os.path.join(tmp, "targets"), os.path.join(tmp, "out.json")
        with open(lst, "w") as f:
            f.write("".join(t + "\n" for t in targets))
        t0 = time.monotonic()
        cp = subprocess.run(["scamper", "-p", str(pps), "-w", "0", "-O", "json", "-o", out,
                             "-c", f"ping -c {attempts} -i {wait:g}", "-f", lst],
                            capture_output=True, text=True, timeout=seconds * 10 + 120)
        wall = time.monotonic() - t0
        pings = []
        if os.path.exists(out):
            with open(out) as f:
                pings = [json.loads(x) for x in f if '"type":"ping"' in x]
    txs = [r["tx"]["sec"] * 1_000_000 + r["tx"]["usec"] for p in pings for r in p["responses"] if "tx" in r]
    sent = sum(p["ping_sent"] for p in pings)
    span = (max(txs) - min(txs)) / 1e6 if len(txs) > 1 else float("nan")
    return {"rate": len(txs) / span if span == span and span > 0 else 0.0, "sent": sent, "replies": len(txs),
            "wall": wall, "rtt_us": [r["rtt"] * 1e3 for p in pings for r in p["responses"]],
            "error": cp.stderr.strip()[-200:] if cp.returncode else ""}


# ------------------------------------------------------------------ main


def _show(name: str, runs: list[dict]) -> dict:
    rates = [r["rate"] for r in runs]
    s = summary(rates)
    print(f"{name:<9} pings/s per run: {', '.join(f'{x:,.0f}' for x in rates)}")
    print(f"{'':<9} median {s['median']:10,.0f}   p99 {s['p99']:10,.0f}")
    sent, rep = sum(r["sent"] for r in runs), sum(r["replies"] for r in runs)
    line = f"{'':<9} sent {sent}, replies {rep} ({rep / max(1, sent):.4f})"
    if "good" in runs[0]:
        good = sum(r["good"] for r in runs)
        ktx = sum(r["kernel_tx"] for r in runs)
        line += f", kernel-stamped both ends {good} ({good / max(1, sent):.4f}), kernel TX {ktx}"
        late = [x for r in runs for x in r["late_us"]]
        if late:
            line += f"\n{'':<9} sent late by (kernel TX − scheduled): median {pct(late, .5):.0f} µs, " \
                    f"p99 {pct(late, .99):.0f} µs"
        drops = sum(r["drops"] for r in runs)
        if drops:
            line += f", ndrop {drops}"
        errs = [e for r in runs for e in r["errors"]]
        if errs:
            line += f"\n{'':<9} errors: {errs[:3]}"
    rtt = [x for r in runs for x in r["rtt_us"]]
    if rtt:
        line += f"\n{'':<9} RTT median {pct(rtt, .5):.0f} µs, p99 {pct(rtt, .99):.0f} µs"
    for r in runs:
        if r.get("error"):
            line += f"\n{'':<9} scamper: {r['error']}"
    print(line)
    return s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pps", type=int, default=10_000, help="offered rate (pings per second)")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of one run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--mode", choices=("batch", "tasks"), default="batch")
    ap.add_argument("--batch", type=int, default=200, help="sends per nsendv request (batch mode)")
    ap.add_argument("--engine", choices=("process", "inline"), default="process")
    ap.add_argument("--no-scamper", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, raw sockets)")
        return 1
    if not 1 <= args.targets <= 60_000 or args.pps < 1:
        print("--targets must be 1..60000 and --pps positive")
        return 1
    print(f"ping rate: {args.targets} targets in a namespace, offered {args.pps:,} pings/s, "
          f"{args.runs} runs × {args.seconds:g} s, mode={args.mode} engine={args.engine}")
    with namespaces(args.targets) as (cns, _tns, targets):
        enter(cns)
        ours: list[dict] = []
        with endpoint_process(engine=args.engine) as ep:
            for _ in range(args.runs):
                if args.mode == "batch":
                    ours.append(asyncio.run(run_batch(ep.address, targets, args.pps, args.seconds, args.batch)))
                else:
                    ours.append(asyncio.run(run_tasks(ep.address, targets, args.pps, args.seconds)))
        theirs: list[dict] = []
        note = ""
        if args.no_scamper or not shutil.which("scamper"):
            note = "scamper: not run"
        elif args.pps > SCAMPER_MAX_PPS:
            note = f"scamper: not run (its -p takes at most {SCAMPER_MAX_PPS:,} pps)"
        else:
            theirs = [run_scamper(targets, args.pps, args.seconds) for _ in range(args.runs)]
    print()
    mine = _show("marionet", ours)
    if theirs:
        sc = _show("scamper", theirs)
        print(f"\nmarionet/scamper (median rates) {mine['median'] / max(1.0, sc['median']):.2f}")
    else:
        print(note)
    print(f"target ≥ {TARGET:,} kernel-stamped pings/s: {verdict(mine['median'], TARGET, False)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
