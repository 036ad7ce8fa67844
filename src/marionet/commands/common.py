"""Options every measurement subcommand shares, and choosing VPs.

Why one module: ``marionet ping`` and ``marionet dns`` must select vantage
points, reach a controller and write output the same way, so a researcher
learns the flags once. Bad arguments become a ``CliError`` (exit status 2,
one line, no traceback) before any controller is started.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["CliError", "add_common_args", "parse_tags", "ctrl_kwargs", "select_insts", "PLACEMENTS"]

PLACEMENTS = ("endpoint", "remote", "native")


class CliError(Exception):
    """A one-line error for the user; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def add_common_args(p: argparse.ArgumentParser, *, insecure_alias: bool = True) -> None:
    """VP selection, placement, controller and output options.

    ``insecure_alias``: also accept ``--insecure`` for a plain-TCP
    controller connection (what ``marionet ping`` always took); ``http``
    says no, since there ``--insecure`` is curl's ``-k``.
    """
    sel = p.add_argument_group("vantage points")
    one = sel.add_mutually_exclusive_group()
    one.add_argument("--vp", action="append", metavar="NAME",
                     help="measure from this VP (repeatable; 'all' = every VP)")
    one.add_argument("--all", action="store_true", help="measure from every live VP")
    one.add_argument("--tag", action="append", metavar="KEY=VALUE",
                     help="measure from every VP with these tags (repeatable: all must match)")
    sel.add_argument("--placement", choices=PLACEMENTS,
                     help="where the primitive runs: on the VP's endpoint (default), in this process "
                          "over the VP's packet interface (remote), or in this process without a VP (native)")
    con = p.add_argument_group("controller")
    con.add_argument("--controller", metavar="ADDR",
                     help="HOST:PORT (TLS) or unix:PATH (default: an embedded controller with one local "
                          "endpoint, in this process)")
    con.add_argument("--ca", metavar="FILE", help="CA that signed the controller's certificate")
    con.add_argument("--cert", metavar="FILE", help="client certificate for the controller")
    con.add_argument("--key", metavar="FILE", help="client private key")
    names = ["--controller-insecure"] + (["--insecure"] if insecure_alias else [])
    con.add_argument(*names, dest="controller_insecure", action="store_true",
                     help="plain TCP to the controller (loopback only)")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output", metavar="FILE",
                     help="also write the results to FILE (.json or .warts, compressed by .gz/.bz2/.xz)")
    out.add_argument("--json", action="store_true", help="print scamper JSON lines instead of text")


def parse_tags(values: list[str] | None) -> dict[str, str]:
    """``["k=v", …]`` → ``{k: v}``; a value without "=" is a CliError."""
    tags: dict[str, str] = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise CliError(f"--tag wants KEY=VALUE, got {v!r}")
        tags[k] = val
    return tags


def ctrl_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``Ctrl(...)`` arguments: no VP attached at start (``select_insts``
    attaches the chosen ones), errors raised where they happen."""
    kw: dict[str, Any] = {"vps": [], "errors": "raise"}
    if args.controller:
        kw.update(controller=args.controller, ca=args.ca, cert=args.cert, key=args.key,
                  insecure=args.controller_insecure)
    elif args.ca or args.cert or args.key or args.controller_insecure:
        raise CliError("--ca/--cert/--key/--controller-insecure need --controller")
    return kw


def select_insts(ctrl: Any, args: argparse.Namespace) -> list[Any]:
    """Attach the VPs the options name and return their instances.

    No selection means "the only VP there is": with several, the user must
    choose (measuring from every VP of a shared controller by accident is
    costly), as ``marionet ping`` always did.
    """
    names = [n for n in args.vp or [] if n != "all"]
    tags = parse_tags(args.tag)
    if args.all or "all" in (args.vp or []) or tags:
        infos = ctrl.vps(tags=tags or None)
        names = sorted({*names, *(v.name for v in infos)})
        if not names:
            what = " with tags " + ", ".join(f"{k}={v}" for k, v in tags.items()) if tags else ""
            raise CliError(f"no live VP{what}")
    elif not names:
        infos = ctrl.vps()
        if not infos:
            raise CliError("no VP to measure from (no live VP at the controller)")
        if len(infos) > 1:
            listed = ", ".join(sorted(v.name for v in infos))
            raise CliError(f"the controller has {len(infos)} VPs ({listed}); choose with --vp NAME "
                           "(repeatable), --all or --tag KEY=VALUE")
        names = [infos[0].name]
    try:
        return ctrl.add_vps(names)
    except ExceptionGroup as eg:
        raise CliError("; ".join(str(e) for e in eg.exceptions)) from None
    except Exception as exc:  # noqa: BLE001 - an unknown VP name is the user's mistake: say it, no traceback
        raise CliError(str(exc)) from None
