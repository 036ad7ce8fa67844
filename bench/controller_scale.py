"""Controller scale: N endpoints attached to one controller, one ping each.

Starts a controller process (plain TCP on loopback), W worker processes
that each host N/W real endpoints (``Endpoint`` objects dialing the
controller over loopback, speaking the real protocol), waits until all
have registered, then issues a one-probe ICMP ping to 127.0.0.1 on every
VP from one client and reports the time from the first ``do_ping`` until
every result is back, plus the controller's resident memory.

    python bench/controller_scale.py --vps 1000
    python bench/controller_scale.py --vps 10000 --workers 4

Reference (issue 3): scamper via sc_remoted mux took 4.47 s for 1,000 VPs
(sc_remoted 72 MB); its one-socket-per-VP mode crashed beyond ~1,024 VPs.
Target: ≤ 2 s and ≤ 200 MB for 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 1 << 20)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------- worker side
async def worker(controller: str, first: int, count: int) -> None:
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.endpoint.dialer import dial_forever

    raise_nofile()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = []
    for i in range(first, first + count):
        ep = Endpoint(EndpointConfig(name=f"vp{i:05d}", engine="inline"))
        meta = {"cc": "ZZ", "addresses": ["127.0.0.1"], "tags": {"bench": "scale"}}
        tasks.append(loop.create_task(dial_forever(ep, controller, None, meta, stop)))
        if i % 100 == 0:
            await asyncio.sleep(0.01)  # spread the connection burst
    await stop.wait()
    await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------- driver side
async def wait_registered(client_addr: str, n: int, timeout: float) -> float:
    from marionet.client.controller import connect_controller

    t0 = time.monotonic()
    conn = await connect_controller(client_addr, insecure=True)
    try:
        while time.monotonic() - t0 < timeout:
            have = len(await conn.vps())
            if have >= n:
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    raise TimeoutError(f"only {have} of {n} VPs registered within {timeout} s")


def run_with_ctrl(client_addr: str, n: int) -> tuple[float, int, int]:
    """One ``Ctrl`` (its asyncio engine, so per-VP requests go out
    concurrently) issues a one-probe ping on every VP."""
    from marionet.aio import AsyncCtrl

    async def go() -> tuple[float, int, int]:
        async with AsyncCtrl(controller=client_addr, insecure=True, errors="collect") as ctrl:
            insts = ctrl.instances()
            assert len(insts) >= n, f"{len(insts)} instances"
            # Each VP probes from its own loopback address, as distinct hosts
            # would: raw sockets bound to it see only their own replies (on
            # one machine, thousands of VPs sharing 127.0.0.1 would each be
            # handed every ICMP packet of all the others).
            t0 = time.perf_counter()
            await asyncio.gather(*[
                ctrl.do_ping("127.0.0.1", attempts=1, wait_timeout=1, inst=inst,
                             src=f"127.{100 + i // 65536}.{(i // 256) % 256}.{i % 256 or 1}")
                for i, inst in enumerate(insts)])
            print(f"  do_ping for {len(insts)} instances returned after {time.perf_counter() - t0:.3f} s")
            ok = err = shown = 0
            async for r in ctrl.responses(timeout=120):
                if r is not None and r.nreplies:
                    ok += 1
                else:
                    err += 1
                    if shown < 3:
                        shown += 1
                        print(f"  no reply: {r.stop_reason} {getattr(r, 'extra', '')}")
            took = time.perf_counter() - t0
            excs = list(ctrl.exceptions())
            for e in excs[:3]:
                print(f"  error: {e}")
            return took, ok, err + len(excs)

    return asyncio.run(go())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vps", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--controller", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        asyncio.run(worker(args.controller, args.first, args.count))
        return 0

    raise_nofile()
    eport, cport = free_port(), free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "marionet.cli", "controller", "--endpoints",
                            f"127.0.0.1:{eport}", "--clients", f"127.0.0.1:{cport}", "--insecure",
                            "--keepalive", "5", "--dead-after", "60"],
                           stdout=subprocess.DEVNULL, preexec_fn=raise_nofile)
    workers: list[subprocess.Popen] = []
    try:
        time.sleep(1.0)
        rss_idle = rss_mb(ctl.pid)
        per = (args.vps + args.workers - 1) // args.workers
        for w in range(args.workers):
            first = w * per
            count = min(per, args.vps - first)
            if count <= 0:
                break
            workers.append(subprocess.Popen(
                [sys.executable, __file__, "--worker", "--controller", f"127.0.0.1:{eport}",
                 "--first", str(first), "--count", str(count)], preexec_fn=raise_nofile))
        reg = asyncio.run(wait_registered(f"127.0.0.1:{cport}", args.vps, 120 + args.vps / 50))
        rss_reg = rss_mb(ctl.pid)
        cpu0 = cpu_s(ctl.pid)
        took, ok, err = run_with_ctrl(f"127.0.0.1:{cport}", args.vps)
        ctl_cpu = cpu_s(ctl.pid) - cpu0
        rss_after = rss_mb(ctl.pid)
        print(f"controller_scale: {args.vps} VPs in {len(workers)} worker processes")
        print(f"  registration of all VPs:            {reg:.2f} s")
        print(f"  first do_ping -> all results back:  {took:.3f} s  (target ≤ 2 s for 1,000; "
              f"scamper/sc_remoted reference 4.47 s → ratio {took / 4.47:.2f})")
        print(f"  results: {ok} with a reply, {err} errors/no reply")
        print(f"  controller CPU during the run: {ctl_cpu:.2f} s (the rest is the simulated endpoints "
              f"and the client sharing {os.cpu_count()} cores)")
        print(f"  controller RSS: idle {rss_idle:.1f} MB, all registered {rss_reg:.1f} MB, "
              f"after run {rss_after:.1f} MB (target ≤ 200 MB; sc_remoted 72 MB)")
    finally:
        for p in workers + [ctl]:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in workers + [ctl]:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
