"""``marionet controller``: listeners for endpoints and clients."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from marionet.client.address import is_loopback, parse_hostport
from marionet.controller.broker import Controller, ControllerConfig
from marionet.signals import stop_event

log = logging.getLogger("marionet.controller")


def _ssl(args: Any, which: str):
    from marionet.guard import tls

    if not (args.cert and args.key and args.ca):
        raise ValueError("TLS needs --cert, --key and --ca (see `marionet pki`), or --insecure on loopback")
    return tls.server_context(args.cert, args.key, ca=args.ca, require_client_cert=True)


async def run_controller(args: Any) -> None:
    config = ControllerConfig(keepalive_s=args.keepalive, dead_after_s=args.dead_after,
                              hello_timeout_s=args.hello_timeout)
    ctl = Controller(config, name=args.name)
    trust = None
    if getattr(args, "revocations", None):
        if not args.ca:
            raise ValueError("--revocations needs --ca (the operator CA that signs the list)")
        from marionet.guard.trust import Trust

        trust = Trust.from_files([args.ca], [args.revocations])
        ctl.set_trust(trust)
        trust.start_watching()
        try:
            import signal

            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, trust.reload)
        except (NotImplementedError, RuntimeError):
            pass
    started = []
    for which, addr in (("endpoints", args.endpoints), ("clients", args.clients)):
        if not addr:
            continue
        host, port = parse_hostport(addr)
        if args.insecure:
            if not is_loopback(host):
                raise ValueError("--insecure (plain TCP) is allowed on loopback only")
            ctx = None
        else:
            ctx = _ssl(args, which)
        serve = ctl.serve_endpoints if which == "endpoints" else ctl.serve_clients
        srv = await serve(host, port, ctx)
        bound = srv.sockets[0].getsockname()
        started.append(f"{which} on {bound[0]}:{bound[1]}")
    if args.unix:
        await ctl.serve_unix(args.unix)
        started.append(f"clients on unix:{args.unix}")
    if not started:
        raise ValueError("give --endpoints HOST:PORT and --clients HOST:PORT (and/or --unix PATH)")
    print(f"marionet controller: {', '.join(started)} ({'plain TCP' if args.insecure else 'mutual TLS 1.3'})",
          flush=True)
    stop = stop_event()
    try:
        await stop.wait()
    finally:
        await ctl.close()
        if trust is not None:
            trust.stop()


def add_controller_parser(sub: Any) -> None:
    p = sub.add_parser("controller", help="run a controller that endpoints dial and clients attach to")
    p.add_argument("--endpoints", metavar="HOST:PORT", help="where endpoints dial in")
    p.add_argument("--clients", metavar="HOST:PORT", help="where clients attach (TLS)")
    p.add_argument("--unix", metavar="PATH", help="also accept clients on this Unix socket")
    p.add_argument("--name", default="controller")
    p.add_argument("--cert", help="controller certificate (role controller)")
    p.add_argument("--key", help="controller key")
    p.add_argument("--ca", help="CA that signs endpoint and client certificates")
    p.add_argument("--revocations", metavar="FILE",
                   help="operator-signed revocation list (`marionet pki revoke`); reloaded on change "
                        "and on SIGHUP, revoked peers are disconnected")
    p.add_argument("--insecure", action="store_true", help="plain TCP (loopback only)")
    p.add_argument("--keepalive", type=float, default=1.0, help="seconds between keepalive pings")
    p.add_argument("--dead-after", type=float, default=4.0, help="seconds of silence before a VP is gone")
    p.add_argument("--hello-timeout", type=float, default=5.0,
                   help="seconds a new link has to say hello (and an endpoint to register)")
    p.set_defaults(handler=main_controller)


def main_controller(args: Any) -> int:
    try:
        asyncio.run(run_controller(args))
    except (ValueError, OSError) as exc:
        print(f"marionet controller: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
