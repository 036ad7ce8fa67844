"""``marionet throughput-server``: the MNTPUT1 source/sink that throughput measurements talk to."""

from __future__ import annotations

import argparse

__all__ = ["add_throughput_server_parser"]


def add_throughput_server_parser(sub: argparse._SubParsersAction) -> None:
    from marionet.measure.throughput_proto import DEFAULT_PORT

    p = sub.add_parser("throughput-server",
                       help=f"serve throughput downloads and timestamped uploads (MNTPUT1, port {DEFAULT_PORT})")
    from marionet.measure.throughput_server import add_arguments

    add_arguments(p)
    p.set_defaults(handler=_handler)


def _handler(a: argparse.Namespace) -> int:
    from marionet.measure.throughput_server import run_from_args

    return run_from_args(a)
