"""Running the endpoint as a daemon: TLS set-up and the listen loop.

Kept apart from ``daemon`` so the library can embed an ``Endpoint``
without the command line's policy (self-signed certificates, the
plain-TCP-on-loopback-only rule, signal handling).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from marionet.client.address import is_loopback, parse_hostport
from marionet.endpoint.daemon import Endpoint, EndpointConfig, default_state_dir
from marionet.signals import stop_event

log = logging.getLogger("marionet.endpoint")


class ConfigError(Exception):
    """A command-line setting that cannot work; the message says why."""


def server_ssl(host: str, cert: str | None, key: str | None, client_ca: str | None,
               state_dir: Path | None = None) -> tuple[ssl.SSLContext, str]:
    """TLS context for ``--listen``; returns it and a line for the operator."""
    from marionet.guard import pki, tls

    if (cert is None) != (key is None):
        raise ConfigError("give both --cert and --key, or neither")
    if cert is None:
        state = state_dir or default_state_dir()
        hosts = ["localhost"]
        ips = ["127.0.0.1", "::1"]
        if host not in ("0.0.0.0", "::", "localhost") and host not in ips:
            ips.append(host)
        ss = pki.self_signed_server(state, hostnames=hosts, ips=ips)
        cert, key = str(ss.cert_path), str(ss.key_path)
        note = f"self-signed certificate {ss.cert_path} (sha256 {ss.fingerprint})"
    else:
        note = f"certificate {cert}"
    ctx = tls.server_context(cert, key, ca=client_ca, require_client_cert=client_ca is not None)
    return ctx, note


def guard_runtime(policy_path: str | None) -> Any:
    """The guard a ``--policy`` file describes (None: an open endpoint)."""
    if not policy_path:
        return None
    from marionet.guard.setup import load_guard

    return load_guard(policy_path)


def guard_note(runtime: Any) -> str:
    """One phrase for the start-up line: an open guard must be visible."""
    if runtime is None:
        return "guard: OPEN (no --policy: any client may do anything)"
    src = getattr(runtime.policy, "source", None)
    return f"guard: policy {src}" if src else "guard: policy"


def make_endpoint(config: EndpointConfig, runtime: Any) -> Endpoint:
    if runtime is None:
        return Endpoint(config)
    return Endpoint(config, runtime.guard, trust=runtime.trust, audit=runtime.audit)


async def run_listen(listen: str, config: EndpointConfig, *, insecure: bool = False,
                     cert: str | None = None, key: str | None = None,
                     client_ca: str | None = None, ready: asyncio.Event | None = None,
                     runtime: Any = None) -> None:
    host, port = parse_hostport(listen)
    if insecure and not is_loopback(host):
        raise ConfigError("--insecure (plain TCP) is allowed on loopback only; use TLS elsewhere")
    ctx = None
    note = "plain TCP (insecure, loopback only)"
    if not insecure:
        ctx, note = server_ssl(host, cert, key, client_ca)
        if client_ca is None and not is_loopback(host):
            log.warning("listening on %s without client certificates: anyone who can reach it may use it", host)
    endpoint = make_endpoint(config, runtime)
    if runtime is not None:
        runtime.start()
    server = await endpoint.serve(host, port, ctx)
    bound = server.sockets[0].getsockname() if server.sockets else (host, port)
    print(f"marionet endpoint {config.name!r} listening on {bound[0]}:{bound[1]} — {note}; "
          f"send engine: {type(endpoint.engine).__name__}; {guard_note(runtime)}", flush=True)
    stop = stop_event()
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await endpoint.close()
        if runtime is not None:
            runtime.stop()


#: Environment variable: behave as if this endpoint's clock were off by this
#: many ms (a lab's ``[[vp]] clock_skew_ms``; see marionet.wire.skew).
CLOCK_SKEW_ENV = "MARIONET_CLOCK_SKEW_MS"
MAX_CLOCK_SKEW_MS = 3_600_000.0


def clock_skew_from_env(env: "dict[str, str] | None" = None) -> int:
    """The skew (ns) named by ``MARIONET_CLOCK_SKEW_MS``; 0 when unset."""
    raw = (os.environ if env is None else env).get(CLOCK_SKEW_ENV, "").strip()
    if not raw:
        return 0
    try:
        ms = float(raw)
    except ValueError:
        raise ValueError(f"{CLOCK_SKEW_ENV}={raw!r} is not a number of milliseconds") from None
    if not abs(ms) <= MAX_CLOCK_SKEW_MS:
        raise ValueError(f"{CLOCK_SKEW_ENV}={raw!r} is outside ±{MAX_CLOCK_SKEW_MS:.0f} ms")
    return round(ms * 1_000_000)


def main_endpoint(args: object) -> int:
    """Entry for ``marionet endpoint``."""
    a = args  # argparse.Namespace
    tags = {}
    for t in getattr(a, "tag", None) or []:
        k, sep, v = t.partition("=")
        if not sep or not k:
            print(f"marionet endpoint: --tag {t!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        tags[k] = v
    config = EndpointConfig(buffer_limit=a.buffer_limit, engine=a.engine, tags=tags,  # type: ignore[attr-defined]
                            resolv_conf=a.resolv_conf)  # type: ignore[attr-defined]
    if a.name:  # type: ignore[attr-defined]
        config.name = a.name  # type: ignore[attr-defined]
    try:
        config.clock_skew_ns = clock_skew_from_env()
    except ValueError as e:
        print(f"marionet endpoint: {e}", file=sys.stderr)
        return 2
    try:
        runtime = guard_runtime(getattr(a, "policy", None))
        if getattr(a, "explain_policy", False):
            if runtime is None:
                print("no --policy: the guard is open — every client may send anything this host can.")
                return 0
            from marionet.endpoint.daemon import local_addresses
            from marionet.guard.policy import explain_policy

            print(explain_policy(runtime.policy, config.name, config.tags, local_addresses()))
            return 0
        if getattr(a, "controller", None):
            from marionet.endpoint.dialer import run_dialer

            asyncio.run(run_dialer(a, config, runtime))
            return 0
        if not a.listen:  # type: ignore[attr-defined]
            print("marionet endpoint: give --listen HOST:PORT or --controller HOST:PORT", file=sys.stderr)
            return 2
        asyncio.run(run_listen(a.listen, config, insecure=a.insecure, cert=a.cert, key=a.key,  # type: ignore[attr-defined]
                               client_ca=a.client_ca, runtime=runtime))  # type: ignore[attr-defined]
    except (ConfigError, ValueError) as exc:
        print(f"marionet endpoint: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"marionet endpoint: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
