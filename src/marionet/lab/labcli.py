"""``marionet lab …``: up, status, exec, truth, down.

``lab up`` leaves the lab running (forwarders and services are their own
processes) and records it in /run/marionet-lab/<id>.json; the other
subcommands find it there, so they work from any shell.  ``--foreground``
keeps ``up`` in the terminal and tears down on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

from . import system
from .spec import SpecError
from .state import State, all_states, teardown


def default_spec_path() -> Path:
    return Path(str(resources.files("marionet.lab") / "default.toml"))


def add_lab_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab`` with its subcommands to a ``marionet`` subparsers object."""
    p = subparsers.add_parser("lab", help="emulated Internet in network namespaces (needs root)",
                              description="Build, inspect and remove marionet labs (network namespaces).")
    sub = p.add_subparsers(dest="lab_cmd", metavar="{up,status,exec,truth,down}")
    sub.required = True
    up = sub.add_parser("up", help="build a lab from SPEC (default: the built-in spec)")
    up.add_argument("spec", nargs="?", help="TOML spec file (default: built-in default.toml)")
    up.add_argument("--controller", help="HOST:PORT of an existing controller for the VPs "
                    "(default: from the spec; \"auto\" starts one for the lab)")
    up.add_argument("--pki", help="PKI directory whose CA an external --controller trusts (VP certificates are issued from it)")
    up.add_argument("--no-vps", action="store_true", help="do not start endpoints on VPs")
    up.add_argument("--foreground", action="store_true", help="stay running; Ctrl-C tears the lab down")
    up.add_argument("--check", action="store_true",
                    help="only validate the spec and check that the programs it needs are installed")
    st = sub.add_parser("status", help="list running labs")
    st.add_argument("--id", help="lab id (default: all)")
    st.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command inside a node: lab exec NODE -- CMD …")
    ex.add_argument("--id", help="lab id (needed when several labs run)")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    tr = sub.add_parser("truth", help="print the lab's ground truth (JSON)")
    tr.add_argument("--id")
    dn = sub.add_parser("down", help="tear a lab down")
    dn.add_argument("--id", help="lab id (default: the only running lab)")
    dn.add_argument("--all-mine", action="store_true",
                    help="remove every lab recorded in /run/marionet-lab (also leftovers of crashed runs)")
    p.set_defaults(func=run_lab)
    return p


def _pick(lab_id: str | None) -> State:
    states = all_states()
    if lab_id:
        for s in states:
            if s.lab_id == lab_id:
                return s
        raise system.LabError(f"no lab {lab_id!r} (running: {', '.join(s.lab_id for s in states) or 'none'})")
    if not states:
        raise system.LabError("no lab is running (start one with `marionet lab up`)")
    if len(states) > 1:
        raise system.LabError(f"several labs run ({', '.join(s.lab_id for s in states)}): pass --id")
    return states[0]


def _status(s: State) -> dict[str, Any]:
    return {
        "lab_id": s.lab_id, "name": s.name, "state_file": str(s.path),
        "owner_alive": s.owner_alive(),
        "nodes": {n: {**v, "present": system.netns_exists(v["netns"])} for n, v in s.info.get("nodes", {}).items()},
        "processes": [{**p, "alive": system.alive(p["pid"], p.get("start"))} for p in s.procs],
        "controller": s.info.get("controller"),
    }


def _print_status(d: dict[str, Any]) -> None:
    procs = d["processes"]
    print(f"lab {d['lab_id']} ({d['name']}): {len(d['nodes'])} nodes, "
          f"{sum(p['alive'] for p in procs)}/{len(procs)} processes alive, state {d['state_file']}")
    for n, v in d["nodes"].items():
        mark = "" if v["present"] else "  [namespace missing]"
        extra = f"  mgmt {v['mgmt']}" if v.get("mgmt") else ""
        print(f"  {n:<12} {v['kind']:<11} {v['netns']:<22} {', '.join(v['ipv4'])}{extra}{mark}")
    dead = [p for p in procs if not p["alive"]]
    for p in dead:
        print(f"  process {p['pid']} ({p['role']} {p.get('node') or ''}) is not running")
    for line in _controller_lines(d.get("controller")):
        print(line)


def _controller_lines(ctl: Any) -> list[str]:
    """How to attach to the lab's controller (what `lab up` and `lab status` print)."""
    from .controller import ControllerInfo

    info = ControllerInfo.from_dict(ctl) if isinstance(ctl, dict) else None
    if info is not None:
        return info.attach_lines()
    if isinstance(ctl, str):
        return [f"controller (external): VPs dial {ctl}"]
    return []


def run_lab(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except system.NeedsRoot as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SpecError as e:
        print(f"error: invalid spec: {e}", file=sys.stderr)
        return 2
    except system.LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    cmd = args.lab_cmd
    if cmd == "up":
        from .spec import load_spec
        path = Path(args.spec) if args.spec else default_spec_path()
        spec = load_spec(path)  # validate before anything else, root or not
        if args.check:
            from .tools import check_tools
            check_tools(spec)  # the programs it will run, too: no root needed to know
            print(f"{path}: ok ({len(spec.nodes)} nodes, {len(spec.links)} links)")
            return 0
        system.require_root()
        from .core import Lab
        lab = Lab(spec, controller=args.controller, start_vps=not args.no_vps, pki=args.pki)
        lab.up()
        for w in lab.warnings:
            print(f"warning: {w}", file=sys.stderr)
        assert lab.state
        _print_status(_status(State.load(lab.state.path)))
        print(f"truth: {lab.state.truth_path}")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in lab.timings.items())
        print(f"up in {lab.timings.get('up', 0):.1f} s ({timing})")
        if not args.foreground:
            print(f"remove with: marionet lab down --id {lab.lab_id}")
            lab._procs.clear()  # they keep running; the state file knows them
            return 0
        stop = False

        def on_sig(*_: Any) -> None:
            nonlocal stop
            stop = True
        signal.signal(signal.SIGINT, on_sig)
        signal.signal(signal.SIGTERM, on_sig)
        try:
            while not stop:
                time.sleep(0.5)
        finally:
            problems = lab.down()
            for p in problems:
                print(f"warning: {p}", file=sys.stderr)
        return 0
    if cmd == "status":
        states = [_pick(args.id)] if args.id else all_states()
        data = [_status(s) for s in states]
        if args.json:
            print(json.dumps(data, indent=1))
        elif not data:
            print("no lab is running")
        for d in data if not args.json else []:
            _print_status(d)
        return 0
    if cmd == "exec":
        system.require_root()
        s = _pick(args.id)
        argv = list(args.cmd)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if not argv:
            raise system.LabError("nothing to run: lab exec NODE -- CMD …")
        nodes = s.info.get("nodes", {})
        if args.node not in nodes:
            raise system.LabError(f"unknown node {args.node!r} (nodes: {', '.join(nodes)})")
        return subprocess.call(["ip", "netns", "exec", nodes[args.node]["netns"], *argv])
    if cmd == "truth":
        s = _pick(args.id)
        print(s.truth_path.read_text())
        return 0
    if cmd == "down":
        system.require_root()
        states = all_states() if args.all_mine else [_pick(args.id)]
        rc = 0
        for s in states:
            problems = teardown(s)
            if problems:
                rc = 1
                print(f"lab {s.lab_id}: " + "; ".join(problems), file=sys.stderr)
            else:
                print(f"lab {s.lab_id} removed")
        if not states:
            print("no lab to remove")
        return rc
    raise system.LabError(f"unknown lab command {cmd!r}")


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m marionet.lab.labcli``) until cli.py wires it in."""
    ap = argparse.ArgumentParser(prog="marionet")
    sub = ap.add_subparsers(dest="cmd")
    add_lab_parser(sub)
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
