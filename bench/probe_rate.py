"""Sustained tagged raw sends per second, each with its kernel TX timestamp.

The client keeps the endpoint fed with pipelined ``nsendv`` batches of
tagged raw sends to 127.0.0.1 and counts the ``ntag`` notifications that
come back, by timestamp source.  The rate is the number of kernel-stamped
``ntag``s per second over the steady part of the run (after a warm-up),
i.e. sends that went out *and* whose TX stamp reached the client.

Modes (``--mode``):
  * ``icmp``: raw IPv4 socket, ipproto 1, ICMP echo requests (the kernel
    answers them on loopback; the raw socket's reject-all filter keeps the
    replies out of the endpoint)
  * ``udp``: raw IPv4 ``hdrincl`` socket, full IPv4+UDP packets to a local
    port nobody reads

Flow control: at most ``--window`` sends in flight (sent but not yet
stamped), so the figure is a sustained rate, not a buffer filling up.

Also prints a native baseline: one Python process, raw socket, ``sendmsg``
with a per-send SCM_TS_OPT_ID key and reading the TX stamps back from the
error queue — the same work the endpoint's sender and loop do, minus the
wire protocol.

Target ≥ 50,000 sends/s.  Prints figures, never fails on them.
``--profile`` runs py-spy on the endpoint (and its sender) during the run
and prints the top functions.

Usage: python bench/probe_rate.py [--mode icmp|udp] [--seconds 8] [--batch 250]
                                  [--window 2000] [--engine process|inline] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import endpoint_process, icmp_echo, ipv4_udp, stop_process, verdict  # noqa: E402

from marionet import aio  # noqa: E402
from marionet.wire import messages as m  # noqa: E402

TARGET = 50_000


def packets(mode: str, sink_port: int, count: int = 1024) -> list[bytes]:
    if mode == "icmp":
        return [icmp_echo(0x6d62, i) for i in range(count)]
    return [ipv4_udp("127.0.0.1", "127.0.0.1", 40000 + (i % 1000), sink_port, b"probe-rate-%04d" % i,
                     ident=i) for i in range(count)]


async def run_endpoint(args: argparse.Namespace) -> dict:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pkts = packets(args.mode, sink.getsockname()[1])
    extra = ["--policy", args.policy_file] if getattr(args, "policy_file", None) else []
    try:
        with endpoint_process(engine=args.engine, extra=extra) as ep:
            prof = None
            s = await aio.connect(ep.address, insecure=True)
            try:
                if args.mode == "icmp":
                    sock = await s.nopen("raw", ipproto=1)
                    dst = "127.0.0.1"
                else:
                    sock = await s.nopen("raw", ipproto=255, hdrincl=True)
                    dst = None
                if args.profile:
                    prof = start_profile(ep.proc.pid, args)
                pids = {"endpoint loop": ep.proc.pid, "client": os.getpid()}
                kids = _children(ep.proc.pid)
                if kids:
                    pids["sender"] = kids[0]
                res = await _drive(s, sock, dst, pkts, args, pids)
            finally:
                await s.close()
                if prof is not None:
                    res["profile"] = finish_profile(*prof)
    finally:
        sink.close()
    return res


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _cpu_s(pid: int) -> float:
    """user+system CPU seconds of a process (from /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


async def _drive(s: aio.PacketSession, sock: int, dst: str | None, pkts: list[bytes],
                 args: argparse.Namespace, pids: dict[str, int]) -> dict:
    np = len(pkts)
    sent = 0
    stamped = {"kernel": 0, "user": 0, "error": 0}
    drops = 0
    inflight: set[asyncio.Future] = set()
    errors: list[str] = []
    t_start = time.monotonic()
    t_warm = t_start + args.warmup
    t_end = t_warm + args.seconds
    k_at_warm = None
    t_at_warm = None
    wakeup = asyncio.Event()

    def done_cb(f: asyncio.Future) -> None:
        inflight.discard(f)
        if not f.cancelled() and f.exception() is not None and len(errors) < 5:
            errors.append(repr(f.exception()))
        wakeup.set()

    def count(n) -> None:
        nonlocal drops
        if n.kind == "ntag":
            if n.error:
                stamped["error"] += 1
            else:
                stamped[n.ts_source or "user"] += 1
        elif n.kind == "ndrop":
            drops += n.count

    def drain() -> None:
        while True:
            n = s.poll_notification()
            if n is None:
                return
            count(n)

    last_tick = time.monotonic()
    while True:
        now = time.monotonic()
        if now >= t_end:
            break
        if k_at_warm is None and now >= t_warm:
            k_at_warm, t_at_warm = stamped["kernel"], now
            cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        drain()
        done = stamped["kernel"] + stamped["user"] + stamped["error"]
        if sent - done + args.batch <= args.window and len(inflight) < 64:
            items = [m.SendItem(sock=sock, data=pkts[(sent + i) % np], dst=dst, tag=sent + i)
                     for i in range(args.batch)]
            f = s._request(m.NSendV(id=s.next_id(), sends=items))  # pipelined: do not await
            inflight.add(f)
            f.add_done_callback(done_cb)
            sent += args.batch
            if time.monotonic() - last_tick > 0.005:
                await asyncio.sleep(0)  # let the reader run
                last_tick = time.monotonic()
            continue
        wakeup.clear()
        n = await s.next_notification(0.01)
        if n is not None:
            count(n)
    k_end, t_stop = stamped["kernel"], time.monotonic()
    cpu1 = {name: _cpu_s(pid) for name, pid in pids.items()}
    # let the tail arrive (not counted in the rate)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        drain()
        if stamped["kernel"] + stamped["user"] + stamped["error"] >= sent and not inflight:
            break
        await asyncio.sleep(0.02)
    drain()
    rate = (k_end - (k_at_warm or 0)) / (t_stop - (t_at_warm or t_start))
    nmeas = max(1, k_end - (k_at_warm or 0))
    wall = t_stop - (t_at_warm or t_start)
    cpu = {name: ((cpu1[name] - cpu0[name]) / wall, (cpu1[name] - cpu0[name]) / nmeas * 1e6)
           for name in pids}
    return {"rate": rate, "cpu": cpu, "sent": sent, "stamped": dict(stamped), "drops": drops, "errors": errors,
            "missing": sent - sum(stamped.values())}


def run_native(mode: str, seconds: float) -> tuple[float, int, int]:
    """One Python process doing the same sendmsg + TX-stamp read-back."""
    from marionet.endpoint import bpf
    from marionet.endpoint.timestamps import TxStamp, enable_tx_timestamps, read_errqueue, ts_opt_id_cmsg

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    pkts = packets(mode, sink.getsockname()[1])
    if mode == "icmp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 1)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 255)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    bpf.attach(s, bpf.REJECT_ALL, flush=True)
    s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    enable_tx_timestamps(s)
    addr = ("127.0.0.1", 0)
    np = len(pkts)
    sent = got = 0
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            for _ in range(256):
                try:
                    s.sendmsg([pkts[sent % np]], [ts_opt_id_cmsg(sent & 0xFFFFFFFF)], 0, addr)
                    sent += 1
                except BlockingIOError:
                    break
            got += sum(1 for it in read_errqueue(s, limit=4096) if isinstance(it, TxStamp))
        dt = time.monotonic() - t0
        for _ in range(100):
            items = read_errqueue(s, limit=4096)
            got += sum(1 for it in items if isinstance(it, TxStamp))
            if not items:
                break
    finally:
        s.close()
        sink.close()
    return got / dt, sent, got


# ------------------------------------------------------------------ profiling


def start_profile(ep_pid: int, args: argparse.Namespace):
    if shutil.which("py-spy") is None:
        print("(py-spy not installed: pip install py-spy)")
        return None
    # the endpoint runs under `python -c …`; its sender is a child python process
    pids = {"endpoint": ep_pid}
    try:
        kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(ep_pid)], capture_output=True,
                              text=True).stdout.split()
        if kids:
            pids["sender"] = int(kids[0])
    except Exception:  # noqa: BLE001
        pass
    tmp = tempfile.mkdtemp(prefix="mnbench-prof-")
    procs = []
    for name, pid in pids.items():
        out = os.path.join(tmp, f"{name}.txt")
        p = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", "500",
                              "--duration", str(int(args.warmup + args.seconds)), "--nonblocking",
                              "-o", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((name, p, out))
    return tmp, procs


def finish_profile(tmp: str, procs) -> str:
    lines = []
    for name, p, out in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            stop_process(p)
        lines.append(f"--- {name}: top functions by self time, and by inclusive time")
        lines.extend(_summarise_raw(out))
    shutil.rmtree(tmp, ignore_errors=True)
    return "\n".join(lines)


def _summarise_raw(path: str, top: int = 14) -> list[str]:
    """py-spy raw (collapsed stacks) → self and inclusive sample shares."""
    selfc: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    try:
        with open(path) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                n = int(count)
                total += n
                frames = [fr.split(" (")[0] + " (" + fr.split(" (")[-1].split("/")[-1] if " (" in fr else fr
                          for fr in stack.split(";")]
                selfc[frames[-1]] = selfc.get(frames[-1], 0) + n
                for fr in set(frames):
                    incl[fr] = incl.get(fr, 0) + n
    except OSError as exc:
        return [f"  (no profile: {exc})"]
    if not total:
        return ["  (no samples)"]
    out = [f"  {total} samples"]
    out.append("  self:")
    for fr, n in sorted(selfc.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"    {100 * n / total:5.1f}%  {fr}")
    out.append("  inclusive:")
    for fr, n in sorted(incl.items(), key=lambda kv: -kv[1])[:top + 6]:
        out.append(f"    {100 * n / total:5.1f}%  {fr}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=("icmp", "udp"), default="icmp")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--window", type=int, default=2000)
    ap.add_argument("--engine", choices=("process", "inline"), default="process")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--guard", choices=("none", "policy", "monitor"), default="none",
                    help="also run through a guard in the same run and print guarded/unguarded: "
                         "'policy' (declarative policy only) or 'monitor' (policy + the allow-all wasm monitor)")
    args = ap.parse_args()
    print(f"probe rate: mode={args.mode} engine={args.engine} batch={args.batch} window={args.window} "
          f"({args.warmup:g} s warm-up + {args.seconds:g} s measured)")
    r = asyncio.run(run_endpoint(args))
    total = max(1, r["sent"])
    kern = r["stamped"]["kernel"]
    print(f"endpoint: {r['rate']:10.0f} kernel-stamped sends/s   sent {r['sent']}, stamps {r['stamped']}, "
          f"kernel fraction {kern / total:.4f}, missing {r['missing']}, ndrop {r['drops']}")
    for name, (share, per) in r["cpu"].items():
        print(f"  {name:<14} CPU {100 * share:5.1f}% of one core, {per:5.1f} µs CPU per send")
    if r["errors"]:
        print(f"  request errors: {r['errors']}")
    nrate, nsent, ngot = run_native(args.mode, min(args.seconds, 4.0))
    print(f"native:   {nrate:10.0f} kernel-stamped sends/s   (one Python process, sendmsg + errqueue; "
          f"sent {nsent}, stamps {ngot})")
    print()
    print(f"endpoint/native {r['rate'] / nrate:.2f};  target ≥ {TARGET}/s: {verdict(r['rate'], TARGET, False)}")
    if args.guard != "none":
        with tempfile.TemporaryDirectory() as tmp:
            args.policy_file = write_policy(tmp, args.guard == "monitor")
            args.profile = False
            g = asyncio.run(run_endpoint(args))
        print(f"guarded ({args.guard}): {g['rate']:10.0f} kernel-stamped sends/s   sent {g['sent']}, "
              f"errors {g['errors'][:3]}")
        target = 0.9 if args.guard == "policy" else None
        line = f"guarded/unguarded {g['rate'] / max(1.0, r['rate']):.2f}"
        if target is not None:
            line += f";  target ≥ {target:.0%} of unguarded: {verdict(g['rate'] / max(1.0, r['rate']), target, False)}"
        else:
            line += f";  target ≥ 50,000 checked sends/s with one monitor: {verdict(g['rate'], 50_000, False)}"
        print(line)
    if r.get("profile"):
        print()
        print(r["profile"])
    return 0


def write_policy(tmp: str, monitor: bool) -> str:
    """An anonymous grant that allows exactly what the benchmark sends, so
    every send pays the full check (prefix, protocol, source, rate)."""
    from marionet.guard.monitors import HERE

    path = os.path.join(tmp, "policy.toml")
    body = ('[anonymous]\nprotocols = ["raw:1", "raw:17", "raw:255"]\ndst = ["127.0.0.0/8"]\n'
            'rate = { pps = 10000000 }\n')
    if monitor:
        body += f'[monitors]\nrun = ["{os.path.join(str(HERE), "allow-all.wat")}"]\n'
    with open(path, "w") as f:
        f.write(body)
    return path


if __name__ == "__main__":
    sys.exit(main())
