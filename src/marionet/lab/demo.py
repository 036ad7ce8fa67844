"""``marionet demo --lab``: the paper's examples across the VPs of a lab.

Why a lab demo besides the embedded one: with local endpoints every VP sees
the same loopback, so a "which VP is closest" table is all ties.  In a lab
each VP sits behind links with configured delays, so the examples give the
answers a researcher expects from the real Internet (and the lab's ground
truth says what they should be).

Runs, in order:

1. build the lab (default: the built-in ``default.toml``) with its own
   controller, and attach a ``marionet.Ctrl`` with the lab's client
   certificate;
2. shortest ping: ping a target from every VP, table of VP, country and
   minimum RTT next to the RTT the lab configured;
3. authoritative-nameserver delay (``do_dns``) and a CDN-catchment style run
   (DNS → HTTPS JSON API → DNS → TCP traceroute: ``do_dns``, ``do_http``,
   ``do_trace``) — only when the endpoint runs those primitives
   (``marionet.measure.registry.PRIMITIVES``); otherwise the demo says
   which primitives are still missing;
4. tear the lab down and report how long up and down took.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from .spec import Spec, load_spec, parse_spec

PING_ATTEMPTS = 3


def _primitives() -> set[str]:
    try:
        from marionet.measure.registry import PRIMITIVES
    except ImportError:
        return set()
    return set(PRIMITIVES)


def _load(spec: Spec | str | Path | None) -> Spec:
    if spec is None:
        from .labcli import default_spec_path
        return load_spec(default_spec_path())
    if isinstance(spec, Spec):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec):
        return load_spec(spec)
    return parse_spec(spec)


def _service(spec: Spec, *kinds: str) -> Any | None:
    for s in spec.services:
        if s.kind in kinds:
            return s
    return None


def _ms(td: Any) -> float | None:
    if td is None:
        return None
    return td.total_seconds() * 1000.0 if hasattr(td, "total_seconds") else float(td)


def _fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} ms"


def _configured_rtt(truth: dict[str, Any], vp: str, dst_addr: str) -> str:
    """2 × the configured one-way delay on the path (the lab's ground truth).

    The truth gives [min, max] over ECMP branches; show a range when they differ.
    """
    for p in truth.get("paths", []):
        d = p.get("one_way_delay_ms")
        if p["src"] == vp and p["dst_addr"] == dst_addr and d:
            lo, hi = 2.0 * float(min(d)), 2.0 * float(max(d))
            return f"{lo:.1f} ms" if hi - lo < 0.05 else f"{lo:.1f}–{hi:.1f} ms"
    return "—"


def run_lab_demo(spec: Spec | str | Path | None = None, *, console: Any = None) -> int:
    """Build a lab, run the paper's examples across its VPs, tear it down; 0 on success."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    con = console or Console()
    if os.geteuid() != 0:
        con.print("[red]marionet demo --lab needs root[/red] (it builds network namespaces); "
                  "try [bold]sudo marionet demo --lab[/bold], or [bold]marionet demo[/bold] for the embedded demo")
        return 2
    from marionet.results import File

    from .core import Lab
    from .system import LabError

    sp = _load(spec)
    if not [n for n in sp.nodes.values() if n.kind == "vp"]:
        con.print(f"[red]spec {sp.name!r} has no VPs[/red]; the demo needs [[vp]] nodes")
        return 2
    lab = Lab(sp, controller="auto")  # the demo attaches with the lab's own client certificate
    t0 = time.monotonic()
    with con.status(f"building lab [bold]{sp.name}[/bold] ({len(sp.nodes)} nodes, {len(sp.links)} links) "
                    "and starting its controller and VPs …"):
        try:
            lab.up()
        except LabError as e:
            con.print(f"[red]lab up failed:[/red] {e}")
            return 1
    t_up = time.monotonic() - t0
    rc = 0
    try:
        for w in lab.warnings:
            con.print(f"[yellow]warning:[/yellow] {w}")
        con.print(f"lab [bold]{lab.lab_id}[/bold] up in [bold]{t_up:.1f} s[/bold]; controller "
                  f"{lab.controller_address()} (mutual TLS, client certificate {lab.client_tls()[0]})")
        outdir = Path(tempfile.mkdtemp(prefix="marionet-lab-demo-"))
        outpath = outdir / "results.jsonl"
        truth = lab.truth()
        with lab.ctrl(outfile=File(outpath, "w")) as ctrl:
            insts = sorted(ctrl.instances(), key=lambda i: i.name)
            vps = Table(title=f"{len(insts)} VPs registered with the lab's controller")
            for col in ("VP", "cc", "ASN", "location", "tags", "address"):
                vps.add_column(col)
            for i in insts:
                loc = i.loc
                vps.add_row(i.name, str(i.cc or ""), str(i.asn4 or ""),
                            f"{loc[0]:.2f}, {loc[1]:.2f}" if loc else "",
                            " ".join(f"{k}={v}" for k, v in sorted(i.tags.items())), str(i.ipv4 or ""))
            con.print(vps)
            rc |= _shortest_ping(con, ctrl, insts, lab, sp, truth, Table)
            rc |= _primitive_examples(con, ctrl, insts, lab, sp, Table, Panel)
        con.print(f"results written to [bold]{outpath}[/bold] (JSON lines, scamper's schema)")
    except Exception as e:  # noqa: BLE001  (the lab must still come down; say what failed)
        con.print(f"[red]demo failed:[/red] {type(e).__name__}: {e}")
        rc = 1
    finally:
        t1 = time.monotonic()
        with con.status("tearing the lab down …"):
            problems = lab.down()
        t_down = time.monotonic() - t1
        for p in problems:
            con.print(f"[yellow]teardown:[/yellow] {p}")
        con.print(f"lab up {t_up:.1f} s, down {t_down:.1f} s")
    return rc


def _shortest_ping(con: Any, ctrl: Any, insts: list[Any], lab: Any, sp: Spec, truth: dict[str, Any],
                   Table: Callable[..., Any]) -> int:
    """The paper's first example: which VP has the shortest ping to a target?"""
    web = _service(sp, "https", "http")
    target_node = web.host if web else next(n for n, node in sp.nodes.items() if node.kind == "host")
    dst = lab.addr(target_node)
    con.rule(f"shortest ping to {target_node} ({dst})")
    for i in insts:
        ctrl.do_ping(dst, inst=i, attempts=PING_ATTEMPTS, wait_probe=0.2)
    got: dict[str, Any] = {}
    errors: list[str] = []
    for o in ctrl.responses(timeout=20, errors="collect"):
        got[o.inst.name] = o
    for e in ctrl.exceptions():
        errors.append(f"{getattr(e.inst, 'name', '?')}: {e}")
    t = Table()
    for col, just in (("VP", "left"), ("cc", "left"), ("min RTT", "right"), ("avg RTT", "right"),
                      ("replies", "right"), ("configured RTT", "right")):
        t.add_column(col, justify=just)
    best = min((o for o in got.values() if o.min_rtt is not None), key=lambda o: o.min_rtt, default=None)
    rows = sorted(insts, key=lambda i: (_ms(got[i.name].min_rtt) if i.name in got and got[i.name].min_rtt
                                        is not None else float("inf")))
    for i in rows:
        o = got.get(i.name)
        mark = " ★" if o is not None and o is best else ""
        t.add_row(f"{i.name}{mark}", str(i.cc or ""), _fmt_ms(_ms(o.min_rtt) if o else None),
                  _fmt_ms(_ms(o.avg_rtt) if o else None),
                  f"{o.nreplies}/{PING_ATTEMPTS}" if o else "—", _configured_rtt(truth, i.name, dst))
    con.print(t)
    for e in errors:
        con.print(f"[red]error[/red] {e}")
    if best is None:
        con.print(f"[red]no replies from {dst}[/red]")
        return 1
    con.print(f"shortest: [bold]{best.inst.name}[/bold] ({best.inst.cc}) {_ms(best.min_rtt):.1f} ms")
    return 0


def _primitive_examples(con: Any, ctrl: Any, insts: list[Any], lab: Any, sp: Spec,
                        Table: Callable[..., Any], Panel: Callable[..., Any]) -> int:
    """Authoritative-nameserver delay and CDN catchment, when the primitives exist."""
    have = _primitives()
    dns_svc = _service(sp, "dns")
    zone = str((dns_svc.options if dns_svc else {}).get("zone", "lab.example")).rstrip(".")
    rc = 0
    need_ns = {"dns"}
    need_cdn = {"dns", "http", "trace"}
    con.rule(f"authoritative-nameserver delay for {zone}")
    if dns_svc is None:
        con.print("[yellow]skipped:[/yellow] the spec has no dns service")
    elif not need_ns <= have:
        con.print(Panel(f"needs the [bold]do_dns[/bold] primitive, which this marionet does not have yet "
                        f"(endpoint primitives: {', '.join(sorted(have)) or 'none'})",
                        title="not available yet", border_style="yellow"))
    else:
        rc |= _run_safely(con, "nameserver delay", lambda: _ns_delay(con, ctrl, insts, lab.addr(dns_svc.host),
                                                                      zone, Table))
    con.rule("CDN catchment (DNS → HTTPS JSON API → DNS → TCP traceroute)")
    missing = sorted(need_cdn - have)
    web = _service(sp, "https")
    if dns_svc is None or web is None:
        con.print("[yellow]skipped:[/yellow] the spec needs a dns and an https service")
    elif missing:
        con.print(Panel(f"needs the {', '.join(f'[bold]do_{p}[/bold]' for p in missing)} "
                        f"primitive{'s' if len(missing) > 1 else ''}, not available yet "
                        f"(endpoint primitives: {', '.join(sorted(have)) or 'none'})",
                        title="not available yet", border_style="yellow"))
    else:
        rc |= _run_safely(con, "CDN catchment", lambda: _catchment(con, ctrl, insts, lab.addr(dns_svc.host),
                                                                   zone, Table, _lab_ca_pem(lab)))
    return rc


def _run_safely(con: Any, what: str, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001  (a primitive's API may still change; keep the demo going)
        con.print(f"[red]{what} failed:[/red] {type(e).__name__}: {e}")
        return 1


def _ns_delay(con: Any, ctrl: Any, insts: list[Any], server: str, zone: str, Table: Callable[..., Any]) -> int:
    """Query the zone's authoritative server from every VP (the paper's second script)."""
    for i in insts:
        ctrl.do_dns(f"www.{zone}", server=server, qtype="A", inst=i)
    t = Table()
    for col in ("VP", "cc", "DNS RTT", "answer"):
        t.add_column(col)
    for o in ctrl.responses(timeout=20, errors="collect"):
        ans = o.ans_addrs() if hasattr(o, "ans_addrs") else []
        t.add_row(o.inst.name, str(o.inst.cc or ""), _fmt_ms(_ms(getattr(o, "rtt", None))),
                  ", ".join(map(str, ans)))
    con.print(t)
    for e in ctrl.exceptions():
        con.print(f"[red]error[/red] {e}")
    return 0


def _lab_ca_pem(lab: Any) -> str | None:
    """The lab web CA's root, which VPs trust for the lab's HTTPS services."""
    from pathlib import Path

    from marionet.lab.hooks import service_dir
    from marionet.lab.labca import LabCA

    try:
        return Path(LabCA.load(service_dir(lab) / "ca").root_path).read_text()
    except (OSError, ValueError):
        return None


def _catchment(con: Any, ctrl: Any, insts: list[Any], server: str, zone: str, Table: Callable[..., Any],
               ca_pem: str | None) -> int:
    """DNS for the API host → HTTPS GET of its JSON → DNS for each server
    name it lists → TCP traceroute to port 443 of the first (the paper's
    fast.com catchment run)."""
    t = Table()
    for col in ("VP", "cc", "API (HTTPS)", "servers", "first server", "TCP trace to :443"):
        t.add_column(col)
    for i in insts:
        api = ctrl.do_dns(f"api.{zone}", server=server, qtype="A", inst=i, sync=True)
        api_addr = next(iter(api.ans_addrs()), None)
        if api_addr is None:
            t.add_row(i.name, str(i.cc or ""), f"no address ({api.rcode_str})", "", "", "")
            continue
        http = ctrl.do_http(str(api_addr), url=f"https://api.{zone}/api/servers", ca=ca_pem,
                            inst=i, sync=True)
        names: list[str] = []
        if http.status_code == 200:
            try:
                names = [str(n) for n in http.json().get("servers", [])]
            except ValueError:
                pass
        status = f"{http.status_code} in {_fmt_ms(_ms(getattr(http, 'hsrtt', None)))}" \
            if http.status_code else f"{http.stop_reason}: {http.error}"
        first = None
        for name in names:
            res = ctrl.do_dns(name, server=server, qtype="A", inst=i, sync=True)
            addr = next(iter(res.ans_addrs()), None)
            if addr is not None:
                first = (name, addr)
                break
        hops = []
        if first is not None:
            tr = ctrl.do_trace(str(first[1]), method="tcp", dport=443, inst=i, sync=True)
            hops = list(tr.hops())
        t.add_row(i.name, str(i.cc or ""), status, ", ".join(names) or "—",
                  f"{first[0]} = {first[1]}" if first else "—",
                  " → ".join(str(h.src) if h is not None else "*" for h in hops) or "—")
    con.print(t)
    return 0


def main() -> int:
    """``python -m marionet.lab.demo [SPEC]``."""
    import sys
    return run_lab_demo(sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":
    raise SystemExit(main())
