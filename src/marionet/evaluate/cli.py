"""``marionet evaluate``: run a congruence study on a lab and write its report.

    marionet evaluate paper [--runs N] [--vps a,b] [--out DIR] [--size BYTES] [--experiments …]
    marionet evaluate lab SPEC.toml --server NODE [same options]

``paper`` builds the PAM'25-shaped lab (``paper.toml``: six VPs, RTTs 17 to
170 ms, rates 30 to 240 Mbit/s) and runs traceroute, throughput both ways,
web content and send gap; ``lab`` runs the same experiments on any lab spec
whose ``--server`` node runs the services they need. Progress goes to the
terminal; the report (Markdown, HTML, ECDF PNGs, Parquet) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

EXPERIMENTS = ("trace", "throughput-down", "throughput-up", "web", "sendgap", "ping", "dns")
#: the default study (the paper's experiments); ping and dns on request
DEFAULT_EXPERIMENTS = ("trace", "throughput-down", "throughput-up", "web", "sendgap")

#: runs per VP of the default study: chosen so `marionet evaluate paper` ends in < 15 min on 2 cores
DEFAULT_RUNS = {"trace": 20, "throughput-down": 5, "throughput-up": 5, "web": 10, "sendgap": 5, "ping": 10,
                "dns": 10}
DEFAULT_SIZE = 25 << 20


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="congruence study: marionet's placements vs native tools, with a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="study", metavar="STUDY")
    for name, help_ in (("paper", "the PAM'25-shaped study on a six-VP lab"),
                        ("lab", "the same experiments on a lab spec of your own")):
        q = esub.add_parser(name, help=help_)
        if name == "lab":
            q.add_argument("spec", help="lab spec (TOML)")
            q.add_argument("--server", required=True, help="the node running the services (throughput, bulk, https)")
        q.add_argument("--runs", type=int, help="runs per VP for every experiment (default: per experiment, "
                       + ", ".join(f"{k} {v}" for k, v in DEFAULT_RUNS.items()) + ")")
        q.add_argument("--vps", help="comma-separated VP names (default: every VP of the lab)")
        q.add_argument("--experiments", default=",".join(DEFAULT_EXPERIMENTS),
                       help=f"comma-separated, from {', '.join(EXPERIMENTS)} "
                            f"(default: {','.join(DEFAULT_EXPERIMENTS)})")
        q.add_argument("--size", type=int, default=DEFAULT_SIZE, help="throughput transfer size in bytes (25 MiB)")
        q.add_argument("--skip", type=int, default=1 << 20, help="bytes skipped before timing starts (1 MiB)")
        q.add_argument("--out", default="evaluate-out", help="report directory (created)")
        q.set_defaults(handler=_run)
    p.set_defaults(handler=lambda a: (p.print_help(), 2)[1])


def _run(args: argparse.Namespace) -> int:
    from marionet.lab.system import LabError

    names = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = [n for n in names if n not in EXPERIMENTS]
    if bad or not names:
        print(f"marionet evaluate: unknown experiment(s) {', '.join(bad) or '(none)'} "
              f"(choose from {', '.join(EXPERIMENTS)})", file=sys.stderr)
        return 2
    if args.runs is not None and args.runs < 1:
        print("marionet evaluate: --runs must be at least 1", file=sys.stderr)
        return 2
    if args.study == "paper":
        spec_text = resources.files("marionet.evaluate").joinpath("paper.toml").read_text()
        server = "srv"
    else:
        try:
            spec_text = Path(args.spec).read_text()
        except OSError as e:
            print(f"marionet evaluate: cannot read {args.spec}: {e.strerror}", file=sys.stderr)
            return 2
        server = args.server
    runs = {n: args.runs or DEFAULT_RUNS[n] for n in names}
    try:
        return asyncio.run(run_study(spec_text, server, names, runs, vps=args.vps, out=Path(args.out),
                                     size=args.size, skip=args.skip))
    except (LabError, ValueError) as e:
        print(f"marionet evaluate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("marionet evaluate: interrupted", file=sys.stderr)
        return 130


def _progress_printer(console: Any) -> Any:
    """Plain progress lines for a log (no terminal): each experiment's VP as it
    finishes, and failures."""
    t0 = time.monotonic()
    last: dict[str, str] = {}

    def progress(label: str, done: int, total: int) -> None:
        if done < 0:
            console.print(label, highlight=False)
            return
        exp_vp = " ".join(label.split()[:2])
        if last.get("key") not in (None, exp_vp) or done == total:
            finished = last["key"] if done != total else exp_vp
            console.print(f"[{time.monotonic() - t0:6.0f} s] {finished} done ({done}/{total})", highlight=False)
        last["key"] = exp_vp

    return progress


def make_experiments(names: list[str], lab: Any, server: str, size: int, skip: int) -> list[Any]:
    from marionet.evaluate import experiments as ex

    out: list[Any] = []
    for n in names:
        if n == "trace":
            out.append(ex.TraceExperiment())
        elif n == "throughput-down":
            out.append(ex.ThroughputExperiment("download", size, skip))
        elif n == "throughput-up":
            out.append(ex.ThroughputExperiment("upload", size, skip))
        elif n == "web":
            out.append(ex.WebExperiment(*ex.web_sites(lab, server)))
        elif n == "sendgap":
            out.append(ex.SendGapExperiment())
        elif n == "ping":
            out.append(ex.PingExperiment())
        elif n == "dns":
            out.append(ex.DnsExperiment(ex.dns_names(lab, server)))
    return out


async def run_study(spec_text: str, server: str, names: list[str], runs: dict[str, int], *, vps: str | None,
                    out: Path, size: int, skip: int, console: Any = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from marionet.evaluate.report import write_report
    from marionet.evaluate.study import Study, lab_context
    from marionet.lab.core import Lab
    from marionet.lab.spec import parse_spec

    console = console or Console(stderr=True)
    spec = parse_spec(spec_text)
    t0 = time.monotonic()
    console.print(f"[bold]marionet evaluate[/]: building lab {spec.name!r} …")
    with Lab(spec) as lab:
        all_vps = lab.vp_names()
        chosen = [v.strip() for v in vps.split(",")] if vps else all_vps
        unknown = [v for v in chosen if v not in all_vps]
        if unknown:
            raise ValueError(f"unknown VP(s) {', '.join(unknown)} (this lab has {', '.join(all_vps)})")
        lab.wait_vps(timeout=60)
        console.print(f"lab up in {time.monotonic() - t0:.0f} s: VPs {', '.join(chosen)}; server {server} "
                      f"({lab.addr(server)})")
        async with lab_context(lab, chosen, server) as ctx:
            exps = make_experiments(names, lab, server, size, skip)
            study = Study(ctx, exps, chosen, runs, _progress_printer(console))
            if console.is_terminal:
                with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, transient=False) as bar:
                    tid = bar.add_task("starting", total=study.total_steps())

                    def progress(label: str, done: int, total: int) -> None:
                        if done < 0:
                            bar.console.print(f"[yellow]{label}[/]")
                        else:
                            bar.update(tid, description=label[:60].ljust(60), completed=done, total=total)

                    study.progress = progress
                    result = await study.run()
            else:
                result = await study.run()
        meta = {"lab": spec.name, "vps": ", ".join(chosen), "runs per VP": ", ".join(f"{k} {v}" for k, v in runs.items()),
                "throughput size": f"{size} bytes (first {skip} skipped)", "study wall time": f"{result.wall_s:.0f} s",
                "failed runs": ", ".join(f"{k} {v}" for k, v in result.failures.items()) or "none"}
        files = write_report(out, result.samples, title=f"marionet congruence study: {spec.name}",
                             experiments=result.specs, meta=meta)
    console.print(f"report: {files.markdown}  ({len(result.samples)} samples; total {time.monotonic() - t0:.0f} s)")
    console.print(Path(files.markdown).read_text())
    return 0
