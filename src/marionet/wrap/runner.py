"""Run one program wrapped: namespace up, relays on, program, everything down.

``wrap_program(session, options)`` is the whole life cycle for a packet
session that is already open (to a VP through a controller, to an endpoint,
or an in-process one). It returns the program's exit status (128 + N when a
signal N ended it, as a shell reports). SIGINT, SIGTERM and SIGHUP are
passed on to the program; the namespace and its files are removed on every
way out (normal exit, exception, cancellation, those signals).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from typing import Any

from . import packets as pk
from .netns import RESOLVER_ALIAS4, WrapNamespace
from .options import WrapOptions, hosts_text, resolv_conf_text
from .report import WrapReport
from .tcprelay import relay_connection
from .udprelay import TunRelay

__all__ = ["wrap_program", "resolver_mapper"]

log = logging.getLogger("marionet.wrap")

#: After the program exits, how long its connections' closes may take to reach the servers.
CLOSE_GRACE_S = 2.0
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def resolver_mapper(resolvers: list[str]) -> Any:
    """``map_dst(family, addr, port)``: the resolver alias → the VP's first
    resolver (None if it has none); anything else unchanged."""
    resolver = resolvers[0] if resolvers else None

    def map_dst(family: int, addr: str, port: int) -> tuple[int, str, int] | None:
        if pk.same_address(addr, RESOLVER_ALIAS4):
            if resolver is None:
                return None
            return (6 if ":" in resolver else 4), resolver, port
        return family, addr, port
    return map_dst


async def wrap_program(session: Any, options: WrapOptions, *, report: WrapReport | None = None) -> int:
    """Run ``options.argv`` with its traffic carried by ``session``'s endpoint."""
    loop = asyncio.get_running_loop()
    info = await session.info()
    report = report or WrapReport(list(options.argv), vp=session.endpoint_name or info.name, timing=options.timing)
    if options.timing == "vp":
        report.clock_offset_ns = (await session.clock_offset(4)).offset_ns
    map_dst = resolver_mapper(list(info.resolvers))
    ns = WrapNamespace()
    tasks: set[asyncio.Task] = set()
    proc: asyncio.subprocess.Process | None = None
    tun: TunRelay | None = None
    me = asyncio.current_task()
    installed: list[int] = []
    stopped_by: list[int] = []  # a signal that came before the program ran
    create: asyncio.Future | None = None

    def on_signal(sig: int) -> None:
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        elif me is not None and not stopped_by:
            stopped_by.append(sig)
            me.cancel()

    for sig in _FORWARDED:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass

    async def accept(listener: Any) -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            t = loop.create_task(relay_connection(session, conn, report, map_dst, options.connect_timeout))
            tasks.add(t)
            t.add_done_callback(tasks.discard)

    try:
        create = loop.run_in_executor(None, functools.partial(
            ns.create, hosts=hosts_text(options.resolve), resolv_conf=resolv_conf_text(RESOLVER_ALIAS4)))
        await asyncio.shield(create)
        assert ns.tun_fd is not None
        tun = TunRelay(session, ns.tun_fd, report, map_dst)
        tun.start()
        acceptors = [loop.create_task(accept(s)) for s in ns.listeners.values()]
        try:
            proc = await asyncio.create_subprocess_exec(*ns.program_argv(list(options.argv)))
        except OSError as exc:
            raise RuntimeError(f"cannot start {options.argv[0]}: {exc}") from None
        rc = await proc.wait()
        status = 128 - rc if rc < 0 else rc
        report.exit_status = status
        for a in acceptors:
            a.cancel()
        if tasks:  # the program's sockets closed with it: let the relays carry the closes over
            await asyncio.wait(set(tasks), timeout=CLOSE_GRACE_S)
        return status
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        report.exit_status = 128 + stopped_by[0]
        return 128 + stopped_by[0]
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if create is not None and not create.done():
            # stopped while the namespace was being built: let that finish, then remove it all
            with contextlib.suppress(BaseException):
                await create
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for t in list(tasks):
            t.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        if tun is not None:
            with contextlib.suppress(Exception):
                await tun.close()
        ns.remove()
        for rec in report.tcp + report.udp:
            if rec.outcome == "open":
                rec.outcome = "closed"
        if options.report is not None:
            report.write(options.report)
