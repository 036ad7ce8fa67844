"""``marionet wrap``: run an unmodified program with its traffic carried by a VP.

::

    marionet wrap --controller HOST:PORT --vp NAME [--ca F --cert F --key F] \\
                  [--resolve HOST:PORT:ADDR …] [--timing vp] [--report FILE] -- PROGRAM ARGS…
    marionet wrap --endpoint HOST:PORT [--insecure | --pin SHA256 | --ca F] … -- PROGRAM ARGS…
    marionet wrap -- PROGRAM ARGS…        # an in-process endpoint: traffic leaves from this machine

Exit status: the program's (128 + N if signal N ended it); 2 for a usage
error, 125 when the wrap itself could not run (no root, no endpoint, the
namespace could not be built). Needs root (it makes a network namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator

__all__ = ["add_wrap_parser", "run_wrap", "WRAP_FAILED"]

WRAP_FAILED = 125


def add_wrap_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "wrap", help="run a program with all its network traffic carried by a VP's endpoint",
        description="Run PROGRAM in a network namespace of its own whose only way out is this process: "
                    "its TCP connections, UDP datagrams and ICMP echo are made by the VP's endpoint "
                    "(through the packet interface and the operator's guard); other protocols are refused. "
                    "Works for static and Go binaries alike. Needs root.")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--vp", metavar="NAME", help="the VP to measure from (with --controller)")
    sel.add_argument("--endpoint", metavar="ADDR", help="HOST:PORT of an endpoint to use directly")
    p.add_argument("--controller", metavar="ADDR", help="HOST:PORT (TLS) or unix:PATH of the controller")
    p.add_argument("--ca", metavar="FILE", help="CA of the controller's or endpoint's certificate")
    p.add_argument("--cert", metavar="FILE", help="client certificate")
    p.add_argument("--key", metavar="FILE", help="client private key")
    p.add_argument("--pin", metavar="SHA256", help="the endpoint's certificate fingerprint (with --endpoint)")
    p.add_argument("--insecure", action="store_true", help="plain TCP to the controller/endpoint (loopback only)")
    p.add_argument("--resolve", action="append", default=[], metavar="HOST:PORT:ADDR",
                   help="the program resolves HOST to ADDR (a hosts file: every port; repeatable)")
    p.add_argument("--timing", choices=("none", "vp"), default="none",
                   help="vp: record the endpoint's kernel timestamps of each connection in the report")
    p.add_argument("--report", metavar="FILE", help="write the connection report (JSON) here")
    p.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long the endpoint may take to connect before the program sees a reset")
    p.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM ARGS",
                   help="the program and its arguments")
    p.set_defaults(handler=run_wrap)


def _options(args: argparse.Namespace) -> Any:
    from marionet.wrap.options import WrapOptions

    argv = list(args.program)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if args.vp and not args.controller:
        raise ValueError("--vp NAME needs --controller ADDR")
    if args.controller and not args.vp:
        raise ValueError("--controller needs --vp NAME (the VP whose endpoint carries the traffic)")
    if args.pin and not args.endpoint:
        raise ValueError("--pin is for --endpoint")
    if args.timing == "vp" and not args.report:
        raise ValueError("--timing vp needs --report FILE (the stamps are written there)")
    return WrapOptions(argv=argv, resolve=list(args.resolve), timing=args.timing,
                       report=Path(args.report) if args.report else None,
                       connect_timeout=args.connect_timeout)


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace) -> AsyncIterator[Any]:
    from marionet import aio

    if args.controller:
        s = await aio.connect(controller=args.controller, vp=args.vp, ca=args.ca, cert=args.cert,
                              key=args.key, insecure=args.insecure)
    elif args.endpoint:
        s = await aio.connect(args.endpoint, insecure=args.insecure, ca=args.ca, cert=args.cert,
                              key=args.key, pin=args.pin)
    else:
        from marionet.endpoint.local import native_session

        async with native_session() as s:
            yield s
        return
    try:
        yield s
    finally:
        await s.close()


def run_wrap(args: argparse.Namespace) -> int:
    try:
        options = _options(args)
    except ValueError as exc:
        print(f"marionet wrap: {exc}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("marionet wrap: needs root (it makes a network namespace for the program)", file=sys.stderr)
        return WRAP_FAILED
    from marionet.client.errors import MarionetError
    from marionet.wrap.netns import NamespaceError
    from marionet.wrap.runner import wrap_program

    async def main() -> int:
        async with _session(args) as s:
            return await wrap_program(s, options)

    try:
        return asyncio.run(main())
    except (MarionetError, NamespaceError, RuntimeError, OSError) as exc:
        print(f"marionet wrap: {exc}", file=sys.stderr)
        return WRAP_FAILED
    except KeyboardInterrupt:
        return 130
