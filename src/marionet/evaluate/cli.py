"""``marionet evaluate``: run a congruence study on a lab and write its report.

    marionet evaluate paper [--runs N] [--vps a,b] [--out DIR] [--size BYTES] [--experiments …]
    marionet evaluate lab SPEC.toml --server NODE [same options]
    marionet evaluate vps (--controller HOST:PORT | --local-vps N) --target ADDR [--url URL …]
                          [--qname NAME[/TYPE] …] [--experiments trace,ping,…] [same options]

``paper`` builds the PAM'25-shaped lab (``paper.toml``: six VPs, RTTs 17 to
170 ms, rates 30 to 240 Mbit/s) and runs traceroute, throughput both ways,
web content and send gap against marionet's three placements and the native
tools; ``lab`` runs the same experiments on any lab spec whose ``--server``
node runs the services they need. ``vps`` runs on VPs you reach through a
controller, where no native tool runs on the VP: it compares the remote
placement with the endpoint placement (the reference), toward ``--target``.
Progress goes to the terminal; the report (Markdown, HTML, ECDF PNGs,
Parquet) to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

EXPERIMENTS = ("trace", "throughput-down", "throughput-up", "web", "sendgap", "ping", "dns")
#: the default study (the paper's experiments); ping and dns on request
DEFAULT_EXPERIMENTS = ("trace", "throughput-down", "throughput-up", "web", "sendgap")

#: runs per VP of the default study and its transfer size: chosen so `marionet evaluate paper` ends
#: in < 15 min on 2 cores (throughput is 2/3 of it; the paper's 100 runs of 25 MiB take hours)
DEFAULT_RUNS = {"trace": 10, "throughput-down": 4, "throughput-up": 4, "web": 3, "sendgap": 2, "ping": 10,
                "dns": 5}
DEFAULT_SIZE = 12 << 20
DEFAULT_SKIP = 1 << 20
#: what runs where no native tool runs on the VP (``marionet evaluate vps``)
VPS_EXPERIMENTS = ("trace", "ping", "dns", "web", "throughput-down", "throughput-up")


def _common_options(q: argparse.ArgumentParser, experiments: tuple[str, ...], default: tuple[str, ...]) -> None:
    q.add_argument("--runs", type=int, help="runs per VP for every experiment (default: per experiment, "
                   + ", ".join(f"{k} {v}" for k, v in DEFAULT_RUNS.items() if k in experiments) + ")")
    q.add_argument("--vps", help="comma-separated VP names (default: every VP)")
    q.add_argument("--experiments", default=",".join(default),
                   help=f"comma-separated, from {', '.join(experiments)} (default: {','.join(default)})")
    q.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"throughput transfer size in bytes "
                   f"(default {DEFAULT_SIZE >> 20} MiB)")
    q.add_argument("--skip", type=int, default=DEFAULT_SKIP, help="bytes received before timing starts (1 MiB)")
    q.add_argument("--iperf3", action="store_true", help="also run iperf3 in the throughput experiments "
                   "(an iperf3 server on the target; adds about a quarter to their time)")
    q.add_argument("--out", default="evaluate-out", help="report directory (created)")


def add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="congruence study: marionet's placements vs native tools, with a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = p.add_subparsers(dest="study", metavar="STUDY")
    q = esub.add_parser("paper", help="the PAM'25-shaped study on a six-VP lab")
    _common_options(q, EXPERIMENTS, DEFAULT_EXPERIMENTS)
    q.set_defaults(handler=_run)
    q = esub.add_parser("lab", help="the same experiments on a lab spec of your own")
    q.add_argument("spec", help="lab spec (TOML)")
    q.add_argument("--server", required=True, help="the node running the services (throughput, bulk, http(s), dns)")
    _common_options(q, EXPERIMENTS, DEFAULT_EXPERIMENTS)
    q.set_defaults(handler=_run)
    q = esub.add_parser("vps", help="remote vs endpoint placement on VPs behind a controller")
    where = q.add_mutually_exclusive_group(required=True)
    where.add_argument("--controller", metavar="HOST:PORT", help="the controller (TLS; --ca/--cert/--key)")
    where.add_argument("--local-vps", type=int, metavar="N", help="an embedded controller with N local VPs")
    q.add_argument("--ca", help="CA of the controller's certificate")
    q.add_argument("--cert", help="client certificate")
    q.add_argument("--key", help="client key")
    q.add_argument("--insecure", action="store_true", help="plain TCP to the controller (loopback only)")
    q.add_argument("--target", required=True, help="address every experiment measures toward")
    q.add_argument("--url", action="append", default=[], help="web page to fetch from --target (repeatable)")
    q.add_argument("--ca-file", help="PEM CA for https --url pages")
    q.add_argument("--qname", action="append", default=[], metavar="NAME[/TYPE]",
                   help="DNS question for --target as server (repeatable; TYPE default A)")
    q.add_argument("--port", type=int, help="throughput server port on --target (default 5301)")
    _common_options(q, VPS_EXPERIMENTS, ("trace", "ping"))
    q.set_defaults(handler=_run_vps)
    p.set_defaults(handler=lambda a: (p.print_help(), 2)[1])


def _names(args: argparse.Namespace, allowed: tuple[str, ...]) -> list[str]:
    names = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise ValueError(f"unknown experiment(s) {', '.join(bad) or '(none)'} (choose from {', '.join(allowed)})")
    if args.runs is not None and args.runs < 1:
        raise ValueError("--runs must be at least 1")
    if not 0 <= args.skip < args.size:
        raise ValueError("--skip must be at least 0 and less than --size")
    return names


def _run(args: argparse.Namespace) -> int:
    from marionet.lab.system import LabError

    try:
        names = _names(args, EXPERIMENTS)
        if args.study == "paper":
            spec_text = resources.files("marionet.evaluate").joinpath("paper.toml").read_text()
            server = "srv"
        else:
            try:
                spec_text = Path(args.spec).read_text()
            except OSError as e:
                raise ValueError(f"cannot read {args.spec}: {e.strerror}") from None
            server = args.server
        runs = {n: args.runs or DEFAULT_RUNS[n] for n in names}
        return asyncio.run(run_study(spec_text, server, names, runs, vps=args.vps, out=Path(args.out),
                                     size=args.size, skip=args.skip, iperf3=args.iperf3))
    except (LabError, ValueError) as e:
        print(f"marionet evaluate: {e}", file=sys.stderr)
        return 1 if isinstance(e, LabError) else 2
    except KeyboardInterrupt:
        print("marionet evaluate: interrupted", file=sys.stderr)
        return 130


def _run_vps(args: argparse.Namespace) -> int:
    from marionet.client.errors import MarionetError

    try:
        names = _names(args, VPS_EXPERIMENTS)
        if "web" in names and not args.url:
            raise ValueError("the web experiment needs --url")
        if "dns" in names and not args.qname:
            raise ValueError("the dns experiment needs --qname")
        if args.local_vps is not None and not 1 <= args.local_vps <= 16:
            raise ValueError("--local-vps must be 1..16")
        runs = {n: args.runs or DEFAULT_RUNS[n] for n in names}
        return asyncio.run(run_vps_study(args, names, runs))
    except ValueError as e:
        print(f"marionet evaluate: {e}", file=sys.stderr)
        return 2
    except (MarionetError, OSError) as e:
        print(f"marionet evaluate: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("marionet evaluate: interrupted", file=sys.stderr)
        return 130


def _progress_printer(console: Any) -> Any:
    """Plain progress lines for a log (no terminal): one per tenth of the
    study and one when an experiment starts, plus failures."""
    t0 = time.monotonic()
    state = {"tenth": -1, "experiment": ""}

    def progress(label: str, done: int, total: int) -> None:
        if done < 0:
            console.print(label, highlight=False)
            return
        experiment = label.split()[0]
        tenth = done * 10 // max(total, 1)
        if experiment != state["experiment"] or tenth != state["tenth"]:
            console.print(f"[{time.monotonic() - t0:6.0f} s] {done}/{total} {label}", highlight=False)
        state.update(tenth=tenth, experiment=experiment)

    return progress


def make_experiments(names: list[str], lab: Any, server: str, size: int, skip: int,
                     iperf3: bool = False) -> list[Any]:
    from marionet.evaluate import experiments as ex

    out: list[Any] = []
    for n in names:
        if n == "trace":
            out.append(ex.TraceExperiment())
        elif n in ("throughput-down", "throughput-up"):
            out.append(ex.ThroughputExperiment("download" if n == "throughput-down" else "upload", size, skip,
                                               iperf3=iperf3))
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
                    out: Path, size: int, skip: int, iperf3: bool = False, console: Any = None) -> int:
    """Build the lab, run the study on it, write the report."""
    from rich.console import Console

    from marionet.evaluate.study import lab_context
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
            exps = make_experiments(names, lab, server, size, skip, iperf3)
            meta = {"lab": spec.name, "vps": ", ".join(chosen)}
            files, n = await _drive(ctx, exps, chosen, runs, out, meta, size, skip, console,
                                    f"marionet congruence study: {spec.name}")
            _append_targets(files)
    console.print(f"report: {files.markdown}  ({n} samples; total {time.monotonic() - t0:.0f} s)")
    console.print(Path(files.markdown).read_text())
    return 0


async def run_vps_study(args: argparse.Namespace, names: list[str], runs: dict[str, int],
                        console: Any = None) -> int:
    """The study on VPs behind a controller: endpoint (reference) vs remote placement."""
    from rich.console import Console

    from marionet.client.actrl import AsyncCtrl
    from marionet.evaluate import experiments as ex
    from marionet.evaluate.experiments import StudyContext
    from marionet.measure.throughput_proto import DEFAULT_PORT

    console = console or Console(stderr=True)
    t0 = time.monotonic()
    want = [v.strip() for v in args.vps.split(",")] if args.vps else None
    if args.controller:
        ctrl = AsyncCtrl(args.controller, cert=args.cert, key=args.key, ca=args.ca, insecure=args.insecure,
                         vps=want, errors="collect")
    else:
        ctrl = AsyncCtrl(None, local_vps=args.local_vps, vps=want, errors="collect")
    await ctrl.start()
    try:
        chosen = [i.name for i in ctrl.instances()]
        if not chosen:
            raise ValueError("no VP attached (check --vps and that the VPs are up)")
        console.print(f"[bold]marionet evaluate[/]: VPs {', '.join(chosen)}; target {args.target}")
        ctx = StudyContext(lab=None, ctrl=ctrl, conn=None, workers={}, server=args.target,
                           server_addr=args.target)
        exps: list[Any] = []
        for n in names:
            if n == "trace":
                exps.append(ex.TraceExperiment())
            elif n == "ping":
                exps.append(ex.PingExperiment())
            elif n == "dns":
                qs = [(q.split("/", 1)[0], (q.split("/", 1)[1] if "/" in q else "A").upper()) for q in args.qname]
                exps.append(ex.DnsExperiment(qs))
            elif n == "web":
                sites = [ex.WebSite(u, urlsplit(u).hostname or args.target, u) for u in args.url]
                exps.append(ex.WebExperiment(sites, args.ca_file))
            else:
                e = ex.ThroughputExperiment("download" if n == "throughput-down" else "upload", args.size, args.skip)
                e.port = args.port or DEFAULT_PORT
                exps.append(e)
        for e in exps:
            e.sources, e.reference = ("endpoint", "remote"), "endpoint"
        meta = {"controller": args.controller or f"embedded, {args.local_vps} local VP(s)",
                "vps": ", ".join(chosen), "target": args.target}
        files, n_samples = await _drive(ctx, exps, chosen, runs, Path(args.out), meta, args.size, args.skip,
                                        console, "marionet congruence study: remote vs endpoint placement")
    finally:
        await ctrl.close(raise_errors=False)
    console.print(f"report: {files.markdown}  ({n_samples} samples; total {time.monotonic() - t0:.0f} s)")
    console.print(Path(files.markdown).read_text())
    return 0


def _append_targets(files: Any) -> None:
    """The paper study's targets (``targets``), after the tables of report.md."""
    import json

    from marionet.evaluate.report import read_samples_parquet
    from marionet.evaluate.targets import check_targets, targets_markdown

    comps = json.loads(Path(files.comparisons).read_text())["comparisons"]
    text = targets_markdown(check_targets(read_samples_parquet(files.parquet), comps))
    md = Path(files.markdown)
    md.write_text(md.read_text().rstrip("\n") + "\n\n" + text)


async def _drive(ctx: Any, exps: list[Any], vps: list[str], runs: dict[str, int], out: Path,
                 meta: dict[str, str], size: int, skip: int, console: Any, title: str) -> tuple[Any, int]:
    """Run the study with progress on ``console``; write the report."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from marionet.evaluate.report import write_report
    from marionet.evaluate.study import Study

    study = Study(ctx, exps, vps, runs, _progress_printer(console))
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
    meta = {**meta, "runs per VP": ", ".join(f"{k} {v}" for k, v in runs.items())}
    if any(e.name.startswith("throughput") for e in exps):
        meta["throughput size"] = f"{size} bytes (first {skip} skipped)"
    meta["study wall time"] = f"{result.wall_s:.0f} s"
    meta["failed runs"] = ", ".join(f"{k} {v}" for k, v in result.failures.items()) or "none"
    files = write_report(out, result.samples, title=title, experiments=result.specs, meta=meta)
    return files, len(result.samples)
