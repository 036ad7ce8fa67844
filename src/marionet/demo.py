"""``marionet demo``: the measurement API from the shell, on this machine.

``demo`` is the README's first command, so it must work on a fresh
machine with nothing else running: an embedded controller and several
local endpoints (distinct names and countries, all on this machine) ping
targets on this machine, shortest-ping style, and print a table and the
file the results went to. (``marionet ping`` and the other measurement
subcommands live in ``marionet.commands``.)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
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
