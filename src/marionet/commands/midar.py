"""``marionet midar``: MIDAR alias resolution across VPs.

``--targets FILE`` (one IPv4 address a line, '#' comments) probed from
``--vps a,b,c`` through a controller (the endpoints' dealias primitives),
or on a lab it builds and removes again (``--lab SPEC.toml``, or
``--lab alias:N`` for N emulated routers of mixed behaviour behind four
VPs; ``--skew VP=MS`` skews a VP's clock), probing from the lab's VPs and
scoring against the lab's alias truth; or with ``--simulate N`` over N
emulated routers in virtual time (the alias-router emulator's packet logic,
no packets on the wire). Writes ``DIR/midar.sets`` (one alias set per line)
and ``DIR/midar.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import sys
from pathlib import Path
from typing import Any

from .common import CliError

__all__ = ["add_midar_parser", "read_targets"]


def read_targets(path: str) -> list[str]:
    """IPv4 addresses of a targets file; a bad line is a CliError naming it."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CliError(f"--targets: cannot read {path}: {e}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            a = ipaddress.ip_address(line)
        except ValueError:
            raise CliError(f"--targets: {path}:{n}: {line!r} is not an IP address") from None
        if a.version != 4:
            raise CliError(f"--targets: {path}:{n}: {line} is IPv6 (MIDAR needs IPv4 IP-IDs)")
        out.append(str(a))
    if not out:
        raise CliError(f"--targets: {path} holds no address")
    return out


def add_midar_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("midar", help="MIDAR alias resolution across coordinated VPs",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--targets", metavar="FILE", help="IPv4 addresses, one a line")
    p.add_argument("--vps", metavar="A,B,…", help="VPs to probe from (comma-separated)")
    p.add_argument("--controller", metavar="ADDR", help="HOST:PORT (TLS) or unix:PATH")
    p.add_argument("--ca"), p.add_argument("--cert"), p.add_argument("--key")
    p.add_argument("--controller-insecure", action="store_true", help="plain TCP to the controller (loopback)")
    p.add_argument("--simulate", type=int, metavar="N", help="N emulated routers in virtual time instead")
    p.add_argument("--lab", metavar="SPEC", help="build this lab (TOML file, or alias:N) and probe from its VPs "
                   "(needs root)")
    p.add_argument("--skew", action="append", default=[], metavar="VP=MS",
                   help="with --lab alias:N: skew a VP's clock by MS milliseconds (repeatable)")
    p.add_argument("--rate", type=float, default=100.0, help="probes per second per VP (default 100)")
    p.add_argument("--methods", default="tcp-ack,udp,icmp-echo", help="probe methods, preferred first")
    p.add_argument("--out", metavar="DIR", required=True, help="directory for midar.sets and midar.json")
    p.set_defaults(handler=_handle, prog=p.prog)


def _handle(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_main(args))
    except CliError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return exc.status
    except ValueError as exc:
        print(f"{args.prog}: error: {exc}", file=sys.stderr)
        return 2


async def _main(args: argparse.Namespace) -> int:
    from marionet.measure.midar import run_midar

    if args.rate <= 0:
        raise CliError(f"--rate {args.rate} must be > 0")
    methods = [m for m in args.methods.split(",") if m]
    out = Path(args.out)
    truth: Any = None
    if args.simulate is not None:
        from marionet.measure.midar_sim import SimProber, SimVP, mixed_routers

        cfg = mixed_routers(args.simulate)
        names = (args.vps or "vp0,vp1,vp2,vp3").split(",")
        vps = [SimVP(n, f"192.0.2.{i + 1}", delay_ns=(3 + 4 * i) * 1_000_000) for i, n in enumerate(names)]
        addrs = read_targets(args.targets) if args.targets else [a for r in cfg["router"] for a in r["addresses"]]
        res = await run_midar(None, addrs, vps=names, rate_pps=args.rate, methods=methods,
                              prober=SimProber(cfg, vps))
        truth = cfg
    elif args.lab:
        res, truth = await _on_lab(args, methods)
    else:
        if not args.targets or not args.vps:
            raise CliError("--targets and --vps are needed (or --lab SPEC, or --simulate N)")
        addrs = read_targets(args.targets)
        from marionet.client.actrl import AsyncCtrl

        kw: dict[str, Any] = {"vps": [], "errors": "raise"}
        if args.controller:
            kw.update(controller=args.controller, ca=args.ca, cert=args.cert, key=args.key,
                      insecure=args.controller_insecure)
        async with AsyncCtrl(**kw) as ctrl:
            if not hasattr(ctrl, "do_midardisc") or not hasattr(ctrl, "do_midarest"):
                raise CliError("this build has no dealias primitives (do_midarest/do_midardisc)")
            insts = await ctrl.add_vps(args.vps.split(","))
            res = await run_midar(ctrl, addrs, vps=insts, rate_pps=args.rate, methods=methods)
    out.mkdir(parents=True, exist_ok=True)
    (out / "midar.sets").write_text(res.to_text())
    (out / "midar.json").write_text(res.to_json())
    print(f"{len(res.alias_sets)} alias sets, {len(res.pairs)} pairs; "
          f"probes {sum(st['probes_total'] for st in res.phases.values())}; wrote {out}/midar.sets, midar.json")
    unsent = sum(st.get("not_sent", 0) for st in res.phases.values())
    if unsent:
        first = next((e for st in res.phases.values() for e in st.get("errors", [])), "")
        print(f"warning: {unsent} planned probes were not sent ({first})", file=sys.stderr)
    if truth is not None and "expected_pairs" in truth:
        _print_lab_score(res, truth)
    elif truth is not None:
        router_of = {a: r["name"] for r in truth["router"] for a in r["addresses"]}
        want = {tuple(sorted(p)) for r in truth["router"] if r["ipid"] in ("shared", "byteswapped")
                and r["velocity"] < 40000 for p in itertools.combinations(r["addresses"], 2)}
        ok = {p for p in res.pairs if router_of.get(p[0]) == router_of.get(p[1])}
        print(f"precision {len(ok) / max(1, len(res.pairs)):.4f} recall {len(want & res.pairs) / max(1, len(want)):.4f}")
    return 0


def _skews(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items:
        vp, sep, ms = it.partition("=")
        try:
            if not sep or not vp:
                raise ValueError
            out[vp] = float(ms)
        except ValueError:
            raise CliError(f"--skew {it!r}: expected VP=MS, e.g. vp2=50") from None
    return out


def lab_spec(arg: str, skews: list[str]) -> Any:
    """The Spec ``--lab`` names: ``alias:N`` (alias_lab with N routers) or a TOML spec file."""
    from marionet.lab.spec import SpecError, load_spec

    if arg.startswith("alias:"):
        from marionet.lab.aliaslab import alias_lab

        try:
            n = int(arg.split(":", 1)[1])
        except ValueError:
            raise CliError(f"--lab {arg!r}: expected alias:N with N a number of routers") from None
        try:
            return alias_lab(n, skew_ms=_skews(skews))
        except ValueError as e:
            raise CliError(f"--lab {arg}: {e}") from None
    if skews:
        raise CliError("--skew applies to --lab alias:N (set clock_skew_ms in a spec file's [[vp]] instead)")
    try:
        return load_spec(arg)
    except (OSError, SpecError) as e:
        raise CliError(f"--lab {arg}: {e}") from None


async def _on_lab(args: argparse.Namespace, methods: list[str]) -> tuple[Any, Any]:
    from marionet.lab.aliaslab import alias_targets
    from marionet.lab.core import Lab
    from marionet.lab.system import LabError

    spec = lab_spec(args.lab, args.skew)
    addrs = read_targets(args.targets) if args.targets else alias_targets(spec)
    if not addrs:
        raise CliError(f"--lab {args.lab}: the lab has no emulated alias routers; give --targets")
    names = [n for n, node in spec.nodes.items() if node.kind == "vp"]
    if args.vps:
        want = args.vps.split(",")
        unknown = [v for v in want if v not in names]
        if unknown:
            raise CliError(f"--vps: no VP {', '.join(unknown)} in the lab (VPs: {', '.join(names)})")
        names = want
    if not names:
        raise CliError(f"--lab {args.lab}: the lab has no VPs")
    print(f"building lab {spec.name}: {len(names)} VPs, {len(addrs)} targets …", file=sys.stderr)
    try:
        return await _run_on_lab(Lab(spec), spec, names, addrs, args, methods)
    except LabError as e:
        raise CliError(f"--lab {args.lab}: {e}") from None


async def _run_on_lab(lab: Any, spec: Any, names: list[str], addrs: list[str], args: argparse.Namespace,
                      methods: list[str]) -> tuple[Any, Any]:
    from marionet.client.actrl import AsyncCtrl
    from marionet.lab.aliaslab import alias_truth
    from marionet.measure.midar import run_midar

    with lab:
        if lab.controller_address() is None:
            raise CliError(f"--lab {args.lab}: the lab has no controller ([lab] controller = \"auto\")")
        lab.wait_vps(30, names=names)
        cert, key, ca = lab.client_tls()
        async with AsyncCtrl(lab.controller_address(), cert=cert, key=key, ca=ca, vps=[]) as ctrl:
            insts = await ctrl.add_vps(names)
            res = await run_midar(ctrl, addrs, vps=insts, rate_pps=args.rate, methods=methods)
    truth = alias_truth(spec)
    return res, (truth if truth["routers"] else None)


def _print_lab_score(res: Any, truth: dict[str, Any]) -> None:
    owner = truth["owner"]
    found = {tuple(sorted(p)) for p in res.pairs}
    known = {p for p in found if p[0] in owner and p[1] in owner}
    ok = {p for p in known if owner[p[0]] == owner[p[1]]}
    never = set(truth["never_pairs_of"])
    bad = sum(1 for p in known if owner[p[0]] in never or owner[p[1]] in never)
    want, want_all = truth["expected_answering_pairs"], truth["expected_pairs"]
    print(f"precision {len(ok) / max(1, len(known)):.4f} recall {len(want & found) / max(1, len(want)):.4f} "
          f"(with silent routers {len(want_all & found) / max(1, len(want_all)):.4f}); "
          f"pairs on routers that share no counter: {bad}")
