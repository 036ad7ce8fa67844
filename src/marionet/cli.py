"""The ``marionet`` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def _add_endpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("endpoint", help="run a vantage-point endpoint")
    p.add_argument("--listen", metavar="HOST:PORT", help="accept clients directly on this address")
    p.add_argument("--controller", metavar="HOST:PORT", help="dial out to this controller")
    p.add_argument("--name", help="this VP's name (default: the host name)")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE", help="a tag for the VP registry (repeatable)")
    p.add_argument("--meta", metavar="FILE", help="TOML/JSON with VP metadata (cc, asn4, loc, …)")
    p.add_argument("--insecure", action="store_true", help="plain TCP instead of TLS (loopback only)")
    p.add_argument("--cert", help="TLS certificate (default: self-signed, kept in the state directory)")
    p.add_argument("--key", help="TLS private key")
    p.add_argument("--ca", help="CA that signed the controller's certificate (with --controller)")
    p.add_argument("--client-ca", help="require client certificates signed by this CA (with --listen)")
    p.add_argument("--buffer-limit", type=int, default=16 * 1024 * 1024, metavar="BYTES",
                   help="notification buffer per session (default 16 MiB)")
    p.add_argument("--resolv-conf", default="/etc/resolv.conf", metavar="FILE",
                   help="where info() and dns() without a server find this host's resolvers")
    p.add_argument("--engine", choices=("process", "inline"), default="process",
                   help="send engine: a dedicated sender process (default) or the event loop")
    p.add_argument("--policy", metavar="FILE",
                   help="operator policy (TOML): trusted CAs, revocations, limits, monitors, audit; "
                        "without it the endpoint is open (anything goes: for loopback development)")
    p.add_argument("--explain-policy", action="store_true",
                   help="print what the policy lets each kind of client send from this VP, and exit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="marionet", description="distributed active Internet measurement")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_endpoint(sub)
    from marionet.guard.pkicli import add_pki_parser

    add_pki_parser(sub)
    try:
        from marionet.lab.labcli import add_lab_parser

        add_lab_parser(sub)
    except ImportError:
        pass
    for extra in _EXTRA_PARSERS:
        extra(sub)
    return parser


def _controller_parser(sub: argparse._SubParsersAction) -> None:
    from marionet.controller.run import add_controller_parser

    add_controller_parser(sub)


# Each adds one subcommand and sets ``handler`` (a function of args -> int).
_EXTRA_PARSERS: list = [_controller_parser]
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.commands.throughput_server", fromlist=["x"]).add_throughput_server_parser(sub))
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.demo", fromlist=["add_demo_parser"]).add_demo_parser(sub))
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.commands", fromlist=["add_measure_parsers"])
                      .add_measure_parsers(sub))
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.evaluate.cli", fromlist=["add_evaluate_parser"])
                      .add_evaluate_parser(sub))
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.commands.midar", fromlist=["add_midar_parser"])
                      .add_midar_parser(sub))
_EXTRA_PARSERS.append(lambda sub: __import__("marionet.commands.wrap", fromlist=["add_wrap_parser"]).add_wrap_parser(sub))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "endpoint":
        from marionet.endpoint.run import main_endpoint

        return main_endpoint(args)
    if args.command == "pki":
        from marionet.guard.pkicli import run_pki

        return run_pki(args)
    if args.command == "lab":
        from marionet.lab.labcli import run_lab

        return run_lab(args)
    handler = getattr(args, "handler", None)
    if handler is not None:
        return int(handler(args) or 0)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
