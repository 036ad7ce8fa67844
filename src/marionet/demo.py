"""``marionet demo`` and ``marionet ping``: the measurement API from the shell.

``demo`` is the README's first command, so it must work on a fresh
machine with nothing else running: an embedded controller and several
local endpoints (distinct names and countries, all on this machine) ping
targets on this machine, shortest-ping style, and print a table and the
file the results went to. ``ping`` prints scamper-like text for one
target from one or more VPs, through a controller or the embedded one.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import tempfile
import time
from typing import Any

DEMO_VPS: list[tuple[str, dict[str, Any]]] = [
    ("nz-akl", {"cc": "NZ", "place": "Auckland (simulated, this machine)", "loc": [-36.85, 174.76],
                "asn4": 64501, "iata": "AKL", "tags": {"kind": "demo"}}),
    ("us-sea", {"cc": "US", "st": "WA", "place": "Seattle (simulated, this machine)", "loc": [47.61, -122.33],
                "asn4": 64502, "iata": "SEA", "tags": {"kind": "demo"}}),
    ("de-fra", {"cc": "DE", "place": "Frankfurt (simulated, this machine)", "loc": [50.11, 8.68],
                "asn4": 64503, "iata": "FRA", "tags": {"kind": "demo"}}),
    ("jp-tyo", {"cc": "JP", "place": "Tokyo (simulated, this machine)", "loc": [35.68, 139.69],
                "asn4": 64504, "iata": "NRT", "tags": {"kind": "demo"}}),
]
DEMO_TARGETS = ["127.0.0.1", "::1", "127.0.0.2", "127.1.2.3"]


def _ms(td: _dt.timedelta | None) -> str:
    return "—" if td is None else f"{td.total_seconds() * 1000:.3f}"


def run_demo(vps: int = 4, targets: list[str] | None = None, out: str | None = None,
             attempts: int = 3, wait_probe: float = 0.2) -> int:
    """Run the demo; returns an exit status."""
    from rich.console import Console
    from rich.table import Table

    from marionet import Ctrl, File

    console = Console()
    targets = targets or DEMO_TARGETS
    specs = DEMO_VPS[:vps] if vps <= len(DEMO_VPS) else \
        DEMO_VPS + [(f"local{i}", {"cc": "ZZ", "place": "this machine"}) for i in range(len(DEMO_VPS) + 1, vps + 1)]
    if out is None:
        out = os.path.join(tempfile.mkdtemp(prefix="marionet-demo-"), "results.json")
    t0 = time.monotonic()
    with console.status("starting an embedded controller and local endpoints…"):
        outfile = File(out, "w")
        ctrl = Ctrl(local_vps=specs, outfile=outfile, errors="collect")
    try:
        insts = ctrl.instances()
        vt = Table(title=f"{len(insts)} vantage points (endpoints dialed into an embedded controller "
                         f"at {ctrl.controller} in {time.monotonic() - t0:.1f} s)")
        for col in ("VP", "cc", "ASN", "place", "clock offset"):
            vt.add_column(col)
        for i in insts:
            off = i.clock_offset
            vt.add_row(i.name, i.cc or "", str(i.asn4 or ""), i.place or "",
                       "—" if off is None else f"{off.total_seconds() * 1e6:+.0f} µs")
        console.print(vt)
        t1 = time.monotonic()
        with console.status(f"pinging {len(targets)} targets from {len(insts)} VPs "
                            f"({attempts} probes each)…"):
            for dst in targets:
                ctrl.do_ping(dst, inst=insts, attempts=attempts, wait_probe=wait_probe, wait_timeout=1)
            results = list(ctrl.responses(timeout=60))
        took = time.monotonic() - t1
        errors = list(ctrl.exceptions())
        by = {(str(r.dst), r.vp): r for r in results}
        table = Table(title=f"shortest ping: min RTT in ms ({len(results)} pings in {took:.1f} s, "
                            "kernel timestamps)")
        table.add_column("target")
        for i in insts:
            table.add_column(i.name, justify="right")
        table.add_column("shortest", style="bold green")
        for dst in targets:
            row = [dst]
            best = None
            for i in insts:
                r = by.get((dst, i.name))
                row.append(_ms(r.min_rtt) if r else "[red]error[/red]")
                if r is not None and r.min_rtt is not None and (best is None or r.min_rtt < best.min_rtt):
                    best = r
            row.append(f"{best.vp} {_ms(best.min_rtt)} ms" if best else "no reply")
            table.add_row(*row)
        console.print(table)
        for e in errors:
            console.print(f"[red]error[/red] {e}")
    finally:
        ctrl.close(raise_errors=False)
        outfile.close()
    console.print(f"results: {len(results)} ping records written to [bold]{out}[/bold] "
                  "(scamper JSON lines; read them with marionet.File)")
    return 0 if results and not errors else 1


# --------------------------------------------------------------------- ping
def format_ping(p: Any) -> str:
    """scamper-like text for one ping result."""
    size = p.probe_size or 0
    lines = [f"ping {p.src or '?'} to {p.dst}: {size} byte packets ({p.method}, from VP {p.vp})"]
    for r in p.replies:
        what = ""
        if not p.is_from_target(r):
            what = f" icmp type={r.icmp_type} code={r.icmp_code}"
        elif r.is_tcp():
            what = f" tcp flags=0x{(r.tcp_flags or 0):02x}"
        lines.append(f"{r.reply_size or 0} bytes from {r.src}, seq={r.attempt} ttl={r.reply_ttl} "
                     f"time={r.rtt.total_seconds() * 1000:.3f} ms{what}")
    lines.append(f"--- {p.dst} ping statistics ---")
    loss = 100.0 * (p.loss_rate or 0.0)
    dup = f", +{p.ndups} duplicates" if p.ndups else ""
    lines.append(f"{p.ping_sent} packets transmitted, {p.nreplies} packets received{dup}, "
                 f"{loss:.0f}% packet loss")
    if p.min_rtt is not None:
        lines.append("round-trip min/avg/max/stddev = " + "/".join(
            f"{t.total_seconds() * 1000:.3f}" for t in (p.min_rtt, p.avg_rtt, p.max_rtt, p.stddev_rtt)) + " ms")
    return "\n".join(lines)


def run_ping(args: argparse.Namespace) -> int:
    from marionet import Ctrl, File, InstError

    kw: dict[str, Any] = {}
    if args.controller:
        kw.update(controller=args.controller, ca=args.ca, cert=args.cert, key=args.key, insecure=args.insecure,
                  vps=[] if args.vp and "all" not in args.vp else None)
    params = dict(method=args.method, attempts=args.count, wait_probe=args.wait, wait_timeout=args.timeout,
                  ttl=args.ttl, tos=args.tos, size=args.size, dport=args.dport, sport=args.sport, src=args.src)
    outfile = File(args.output, "w") if args.output else None
    try:
        with Ctrl(outfile=outfile, errors="collect", **kw) as ctrl:
            if args.vp and "all" not in args.vp:
                insts = ctrl.add_vps(args.vp)
            else:
                insts = ctrl.instances()
                if len(insts) > 1 and not args.vp:
                    names = ", ".join(i.name for i in insts)
                    print(f"marionet ping: the controller has {len(insts)} VPs ({names}); "
                          "choose with --vp NAME (repeatable) or --vp all", file=sys.stderr)
                    return 2
            if not insts:
                print("marionet ping: no VP to ping from", file=sys.stderr)
                return 2
            ctrl.do_ping(args.dst, inst=insts, **params)
            got = sorted(ctrl.responses(), key=lambda r: r.vp)
            for i, p in enumerate(got):
                if i:
                    print()
                print(format_ping(p))
            errors = list(ctrl.exceptions())
            for e in errors:
                print(f"marionet ping: {e}", file=sys.stderr)
    except (InstError, ExceptionGroup, OSError, ValueError) as exc:
        print(f"marionet ping: {exc}", file=sys.stderr)
        return 2
    finally:
        if outfile is not None:
            outfile.close()
    if errors:
        return 2
    return 0 if any(p.nreplies for p in got) else 1


# ---------------------------------------------------------------- parsers
def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="embedded controller + local endpoints: a shortest-ping run on this machine")
    p.add_argument("--vps", type=int, default=4, help="how many local endpoints (default 4)")
    p.add_argument("--target", action="append", metavar="ADDR",
                   help=f"a loopback target (repeatable; default {' '.join(DEMO_TARGETS)})")
    p.add_argument("-o", "--output", metavar="FILE", help="results file (default: a new temporary directory)")
    p.add_argument("-c", "--count", type=int, default=3, help="probes per ping (default 3)")
    p.add_argument("--lab", nargs="?", const="", metavar="SPEC",
                   help="run the paper's examples across the VPs of an emulated lab "
                        "(built-in default spec, or SPEC); needs root")
    p.set_defaults(handler=_demo_handler)


def _demo_handler(a: argparse.Namespace) -> int:
    if a.lab is not None:
        from marionet.lab.demo import run_lab_demo

        return run_lab_demo(a.lab or None)
    return run_demo(a.vps, a.target, a.output, a.count)


def add_ping_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ping", help="ping a destination from VPs (scamper-like output)")
    p.add_argument("dst")
    p.add_argument("-c", "--count", type=int, default=4, help="probes (scamper: attempts; default 4)")
    p.add_argument("-i", "--wait", type=float, default=None, help="seconds between probes (default 1)")
    p.add_argument("-W", "--timeout", type=float, default=None, help="seconds to wait after the last probe")
    p.add_argument("-P", "--method", default=None,
                   help="icmp-echo (default), udp, tcp-syn, … (scamper's ping methods)")
    p.add_argument("-m", "--ttl", type=int)
    p.add_argument("-z", "--tos", type=int)
    p.add_argument("-s", "--size", type=int, help="whole IP packet size (scamper's -s)")
    p.add_argument("-d", "--dport", type=int)
    p.add_argument("-F", "--sport", type=int)
    p.add_argument("-S", "--src")
    p.add_argument("--vp", action="append", metavar="NAME", help="VP to ping from (repeatable; 'all' for every VP)")
    p.add_argument("--controller", metavar="ADDR",
                   help="HOST:PORT or unix:PATH (default: an embedded controller with one local endpoint)")
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--insecure", action="store_true", help="plain TCP to the controller (loopback only)")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the results (scamper JSON)")
    p.set_defaults(handler=run_ping)
