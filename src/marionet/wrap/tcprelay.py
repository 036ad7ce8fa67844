"""One redirected TCP connection ⇄ one endpoint TCP socket.

The program's connect was answered by the relay's listener in its
namespace (the kernel completes that handshake before we know anything);
the relay then asks the endpoint to connect to the original destination.
If that fails — refused, unreachable, timed out, denied by the guard, or
the endpoint is gone — the program's connection is reset (``SO_LINGER``
0): the program sees "connection reset by peer" on its first read or
write, never data from anywhere else.

Carried over: data both ways (the program's writes pipelined as ``nsend``
with a bounded window), half-close both ways (the program's EOF becomes
``nctl shutdown``; the server's FIN, ``nstat peer-closed``, becomes
``shutdown(SHUT_WR)`` towards the program), and resets from the server's
side (``nstat reset``/``error``/``timeout``/``nblock``/``ndrop`` reset the
program's connection — a gap in the stream must not pass silently). A
reset by the program closes the endpoint socket (the server sees a FIN:
the packet interface has no abortive close).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from typing import Any, Callable

from marionet.client.errors import ConnectionLost, EndpointError, GuardDeniedError
from marionet.wire import messages as m

from .origdst import original_dst
from .report import TcpRecord, WrapReport

__all__ = ["relay_connection", "reset_socket"]

log = logging.getLogger("marionet.wrap")

#: nsend requests in flight per connection before the relay waits for replies.
SEND_WINDOW = 32
READ_CHUNK = 1 << 16
FIRST_TX_TAG = 1


def reset_socket(sock: Any) -> None:
    """Close ``sock`` with a RST (linger 0), whatever state it is in."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _outcome_of(exc: EndpointError) -> str:
    if isinstance(exc, GuardDeniedError) or exc.code == "denied":
        return "denied"
    if exc.code == "timeout":
        return "timeout"
    if exc.code == "connect-failed":
        return "refused"
    return "error"


async def relay_connection(session: Any, conn: socket.socket, report: WrapReport,
                           map_dst: Callable[[int, str, int], tuple[int, str, int] | None],
                           connect_timeout: float) -> None:
    """Relay the accepted program connection ``conn`` until both sides are done."""
    loop = asyncio.get_running_loop()
    try:
        family, dst, port = original_dst(conn)
    except (OSError, ValueError):
        # not a redirected connection (someone dialled the relay's port itself)
        reset_socket(conn)
        conn.close()
        report.refuse("tcp-direct-to-relay")
        return
    mapped = map_dst(family, dst, port)
    if mapped is None:  # the resolver alias, but the VP has no resolver
        reset_socket(conn)
        conn.close()
        report.refuse("tcp-no-resolver")
        return
    family, dst, port = mapped
    rec = TcpRecord(dst=dst, port=port, family=family, open_ns=time.time_ns())
    report.tcp.append(rec)
    st = session.stream()
    try:
        # TCP_NODELAY both ways: the relay forwards each write of the program as it comes, so the
        # segments are the program's; Nagle on top would hold a TLS Finished or a request behind
        # an unacknowledged segment (a delayed ACK: up to 40 ms per round trip)
        sid = await session.nopen("tcp", family, raddr=dst, rport=port, stream=st, timeout=connect_timeout,
                                  nodelay=True)
    except EndpointError as exc:
        rec.outcome, rec.reason = _outcome_of(exc), str(exc)
        st.close()
        reset_socket(conn)
        conn.close()
        log.info("tcp %s port %s: %s", dst, port, exc)
        return
    except (ConnectionLost, OSError) as exc:
        rec.outcome, rec.reason = "error", str(exc)
        st.close()
        reset_socket(conn)
        conn.close()
        return
    conn.setblocking(False)
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    reader, writer = await asyncio.open_connection(sock=conn, limit=READ_CHUNK * 4)
    up = loop.create_task(_program_to_endpoint(session, sid, reader, rec))
    try:
        await _endpoint_to_program(st, writer, up, rec)
    except ConnectionLost as exc:
        if rec.outcome == "open":
            rec.outcome, rec.reason = "error", str(exc)
        reset_socket(writer.get_extra_info("socket"))
    except asyncio.CancelledError:
        if rec.outcome == "open":
            rec.outcome = "open-at-exit"  # the program ended (or the wrap stopped) with it open
        reset_socket(writer.get_extra_info("socket"))
        raise
    finally:
        if not up.done():
            up.cancel()
        with contextlib.suppress(BaseException):
            await up
        st.close()
        with contextlib.suppress(Exception):
            await session.nclose(sid)
        writer.transport.abort() if rec.outcome not in ("open", "closed") else writer.close()


async def _program_to_endpoint(session: Any, sid: int, reader: asyncio.StreamReader, rec: TcpRecord) -> str:
    """Copy the program's bytes to the endpoint; "eof" or "reset" or "failed"."""
    window: deque[asyncio.Future] = deque()
    first = True
    try:
        while True:
            try:
                data = await reader.read(READ_CHUNK)
            except (ConnectionResetError, BrokenPipeError):
                rec.outcome = "program-reset"
                return "reset"
            if not data:
                break
            window.append(session.nsend_nowait(sid, data, tag=FIRST_TX_TAG if first else None))
            first = False
            rec.tx_bytes += len(data)
            while len(window) >= SEND_WINDOW:
                await window.popleft()
        while window:
            await window.popleft()
        await session.nctl("shutdown", sid)
        return "eof"
    except EndpointError as exc:
        if rec.outcome == "open":
            rec.outcome, rec.reason = "error", str(exc)
        return "failed"
    finally:
        for f in window:
            f.cancel() if not f.done() else f.exception()


async def _endpoint_to_program(st: Any, writer: asyncio.StreamWriter, up: asyncio.Task, rec: TcpRecord) -> None:
    """Deliver the endpoint's notifications for this socket to the program."""
    peer_closed = False
    while True:
        n = st.poll()
        if n is None:
            if up.done():
                how = up.result() if not up.cancelled() else "failed"
                if how in ("reset", "failed") or peer_closed:
                    if rec.outcome == "open":
                        rec.outcome = "closed"
                    return
            waiter = asyncio.ensure_future(st.next())
            wait_for = {waiter} if up.done() else {waiter, up}
            await asyncio.wait(wait_for, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                waiter.cancel()
                continue
            n = waiter.result()
            if n is None:
                continue
        if isinstance(n, m.NData):
            if rec.first_rx_ns is None:
                rec.first_rx_ns, rec.rx_source = n.time_ns, n.ts_source
            rec.last_rx_ns = n.time_ns
            rec.rx_bytes += len(n.data)
            writer.write(n.data)
            try:
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                rec.outcome = "program-reset"
                return
        elif isinstance(n, m.NTag):
            if n.tag == FIRST_TX_TAG and n.time_ns is not None:
                rec.first_tx_ns, rec.first_tx_source = n.time_ns, n.ts_source
        elif isinstance(n, m.NStat):
            if n.state == "established":
                rec.established_ns, rec.established_source = n.time_ns, "user"
            elif n.state == "peer-closed":
                peer_closed = True
                with contextlib.suppress(OSError, RuntimeError):
                    if writer.can_write_eof():
                        writer.write_eof()
            elif n.state in ("reset", "error", "timeout"):
                rec.outcome, rec.reason = n.state if n.state != "error" else "error", n.reason
                reset_socket(writer.get_extra_info("socket"))
                return
        elif isinstance(n, m.NBlock):
            rec.outcome, rec.reason = "denied", f"{n.rule}: {n.reason}"
            reset_socket(writer.get_extra_info("socket"))
            return
        elif isinstance(n, m.NDrop):
            rec.outcome, rec.reason = "error", f"the endpoint dropped {n.count} notifications"
            reset_socket(writer.get_extra_info("socket"))
            return
