"""The throughput server: source for downloads, timestamping sink for uploads.

Why our own server (see ``throughput_proto``): for an upload the receiver is
the server, and the PAM'25 method needs the receiver's kernel receive times
at ``skip`` bytes and at ``size`` bytes. So the sink reads with ``recvmsg``
and ``SO_TIMESTAMPNS`` (the kernel stamp of the last segment each receive
copied) and answers a :class:`~marionet.measure.throughput_proto.Report`.

Everything a client controls is bounded: the request line (``MAX_LINE``),
the transfer size (``MAX_SIZE``), the time to send the request
(``header_timeout``), the time without progress (``idle_timeout``), the
number of concurrent clients (``max_clients``; one more gets ``ERR busy``)
and the report's sample count.

Public: :class:`ThroughputServer` (``await start()``, ``address``,
``await close()``), :func:`serve` (run until cancelled), and
:class:`ThreadedServer` (the same in a background thread, for blocking
callers and tests). ``python -m marionet.measure.throughput_server`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .throughput_proto import DEFAULT_PORT, MAX_LINE, MAX_REPORT, ProtocolError, Report, Request, parse_request

__all__ = ["ThroughputServer", "ThreadedServer", "serve", "parse_listen", "DEFAULT_MAX_CLIENTS",
           "SAMPLE_INTERVAL_NS", "SO_TIMESTAMPNS", "kernel_stamp"]

log = logging.getLogger("marionet.throughput_server")

SO_TIMESTAMPNS = 35                     # Python lacks it (reference/linux.md)
_STAMP_CMSG = socket.CMSG_SPACE(16)
DEFAULT_MAX_CLIENTS = 64
SAMPLE_INTERVAL_NS = 10_000_000         # at most one sample every 10 ms (+ first and last)
MAX_SAMPLES = 50_000                    # then thinned, so a report stays far below MAX_REPORT
_CHUNK = 256 << 10                      # bytes per send / receive
_BLOCK = os.urandom(_CHUNK + 65536)     # the download payload source, made once
_RECV_BUF = 1 << 20


def kernel_stamp(ancdata: Sequence[tuple[int, int, bytes]]) -> int | None:
    """The SO_TIMESTAMPNS receive time (ns, CLOCK_REALTIME) in ``recvmsg`` ancillary data."""
    for level, typ, data in ancdata:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return None


def payload_chunks(size: int, chunk: int = _CHUNK):
    """``size`` incompressible bytes as memoryviews of one random block.

    Each chunk starts at a different offset of the block (a stride coprime
    with the offset range), so the stream does not repeat with a short period
    and no compressor on the path finds it easy; nothing is generated per byte.
    """
    mv = memoryview(_BLOCK)
    span = len(_BLOCK) - chunk
    sent = i = 0
    while sent < size:
        n = min(chunk, size - sent)
        off = (i * 40_503) % span
        yield mv[off:off + n]
        sent += n
        i += 1


class _Samples:
    """(kernel rx ns, cumulative bytes), at most one per interval, first and last kept."""

    def __init__(self) -> None:
        self.points: list[tuple[int, int]] = []
        self.interval = SAMPLE_INTERVAL_NS

    def add(self, t_ns: int, total: int) -> None:
        pts = self.points
        if pts and t_ns - pts[-1][0] < self.interval:
            return
        pts.append((t_ns, total))
        if len(pts) > MAX_SAMPLES:
            # Keep the first, every other one, and the newest; sample half as often from now on.
            self.points = pts[:1] + pts[2:-1:2] + pts[-1:]
            self.interval *= 2

    def finish(self, t_ns: int, total: int) -> list[tuple[int, int]]:
        """The samples with the last receive as the final point."""
        pts = self.points
        while len(pts) > 1 and pts[-1][0] >= t_ns:
            pts.pop()
        if pts and pts[-1][0] >= t_ns:
            pts[-1] = (t_ns, total)
        elif not pts or pts[-1] != (t_ns, total):
            pts.append((t_ns, total))
        return pts


class _Busy(Exception):
    pass


class ThroughputServer:
    """An asyncio throughput server on one or more listening addresses.

    ``hosts``: addresses to listen on (``None``: ``0.0.0.0`` and ``::``);
    ``port`` 0 picks a free port (the same one for every address). Use
    ``await start()`` then ``address``/``addresses``; ``await close()`` ends
    the listeners and every transfer.
    """

    def __init__(self, hosts: str | Sequence[str] | None = None, port: int = DEFAULT_PORT, *,
                 max_clients: int = DEFAULT_MAX_CLIENTS, header_timeout: float = 10.0,
                 idle_timeout: float = 30.0, close_wait: float = 2.0,
                 on_transfer: Callable[[dict[str, Any]], None] | None = None) -> None:
        if isinstance(hosts, str):
            hosts = [hosts]
        self.hosts = list(hosts) if hosts else ["0.0.0.0", "::"]
        if not 0 <= port < 65536:
            raise ValueError(f"port must be 0..65535, got {port}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be >= 1, got {max_clients}")
        if header_timeout <= 0 or idle_timeout <= 0 or close_wait < 0:
            raise ValueError("timeouts must be positive")
        self.port = port
        self.max_clients = max_clients
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.close_wait = close_wait
        self.on_transfer = on_transfer
        self.transfers = 0                   # transfers finished (any outcome)
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self._listeners]

    @property
    def address(self) -> tuple[str, int]:
        """The first listening (host, port)."""
        if not self._listeners:
            raise RuntimeError("server not started")
        return self.addresses[0]

    @property
    def active(self) -> int:
        """Clients connected right now."""
        return self._active

    async def start(self) -> "ThroughputServer":
        self._loop = asyncio.get_running_loop()
        port = self.port
        try:
            for host in self.hosts:
                try:
                    s = _listener(host, port)
                except OSError as e:
                    # A namespace without IPv6 still serves IPv4 on the default wildcards.
                    if host == "::" and self._listeners and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                        continue
                    raise
                self._listeners.append(s)
                port = s.getsockname()[1]
        except BaseException:
            self._close_listeners()
            raise
        for s in self._listeners:
            self._loop.add_reader(s.fileno(), self._accept, s)
        log.info("throughput server listening on %s", ", ".join(_fmt(a) for a in self.addresses))
        return self

    async def close(self) -> None:
        self._close_listeners()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> "ThroughputServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _close_listeners(self) -> None:
        for s in self._listeners:
            if self._loop is not None and s.fileno() >= 0:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(s.fileno())
            s.close()
        self._listeners = []

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                conn, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:             # EMFILE and the like: keep serving the others
                log.warning("accept failed: %s", e)
                return
            conn.setblocking(False)
            busy = self._active >= self.max_clients
            self._active += 1
            assert self._loop is not None
            t = self._loop.create_task(self._client(conn, peer, busy))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ per client

    async def _client(self, conn: socket.socket, peer: Any, busy: bool) -> None:
        rec: dict[str, Any] = {"peer": _fmt(peer), "direction": None, "size": None, "bytes": 0, "ok": False}
        start = time.monotonic()
        try:
            conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if busy:
                raise _Busy()
            req, rest, stamp = await self._read_request(conn)
            rec.update(direction=req.direction, size=req.size, skip=req.skip)
            if req.direction == "download":
                await self._download(conn, req, rec)
            else:
                await self._upload(conn, req, rest, stamp, rec)
        except _Busy:
            rec["error"] = f"busy ({self.max_clients} clients)"
            await self._send_err(conn, "busy: too many clients, try later")
        except ProtocolError as e:
            rec["error"] = str(e)
            await self._send_err(conn, str(e))
        except TimeoutError as e:
            rec["error"] = str(e) or "timeout"
            if rec["direction"] is None:
                await self._send_err(conn, rec["error"])
        except (ConnectionError, OSError) as e:
            rec["error"] = f"connection: {e.strerror or e}"
        except asyncio.CancelledError:
            rec["error"] = "server closing"
            raise
        finally:
            self._active -= 1
            conn.close()
            rec["seconds"] = round(time.monotonic() - start, 6)
            self.transfers += 1
            self._log(rec)

    async def _read_request(self, conn: socket.socket) -> tuple[Request, bytes, int | None]:
        """The request, payload bytes that came with it (an eager upload), and their stamp."""
        buf = bytearray(MAX_LINE + _CHUNK)
        have = 0
        stamp = None
        try:
            async with asyncio.timeout(self.header_timeout):
                while True:
                    n, st = await self._recv(conn, memoryview(buf)[have:])
                    if n == 0:
                        raise ProtocolError("connection closed before a complete request line")
                    have += n
                    stamp = st
                    nl = buf.find(b"\n", 0, min(have, MAX_LINE))
                    if nl >= 0:
                        return parse_request(bytes(buf[:nl + 1])), bytes(buf[nl + 1:have]), stamp
                    if have >= MAX_LINE:
                        raise ProtocolError(f"request line longer than {MAX_LINE} bytes")
        except TimeoutError:
            raise TimeoutError(f"no complete request line within {self.header_timeout:g} s") from None

    async def _download(self, conn: socket.socket, req: Request, rec: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        sent = 0
        try:
            async with asyncio.timeout(self.idle_timeout) as tmo:
                for chunk in payload_chunks(req.size):
                    while chunk:
                        n = await self._send(conn, chunk)
                        chunk = chunk[n:]
                        sent += n
                        tmo.reschedule(loop.time() + self.idle_timeout)   # progress, however slow the link
                    rec["bytes"] = sent
        except TimeoutError:
            raise TimeoutError(f"idle: client read nothing for {self.idle_timeout:g} s "
                               f"after {sent} of {req.size} bytes") from None
        conn.shutdown(socket.SHUT_WR)
        rec["ok"] = True
        # Give the client time to read the tail and close first, so our close
        # does not reset a connection whose last bytes it has not read yet.
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self.close_wait):
                scratch = memoryview(bytearray(4096))
                while (await self._recv(conn, scratch))[0]:
                    pass

    async def _upload(self, conn: socket.socket, req: Request, rest: bytes, stamp: int | None,
                      rec: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        size, skip = req.size, req.skip
        total = b = t0 = t1 = 0
        seen_skip = False
        samples = _Samples()
        user_t0 = user_t1 = False        # whether the figures' ends are user-space stamps
        error: str | None = None

        def account(n: int, st: int | None) -> None:
            nonlocal total, b, t0, t1, seen_skip, user_t0, user_t1
            user_t1 = st is None
            if st is None:
                st = time.time_ns()
            total += n
            if not seen_skip and total >= skip:
                seen_skip, b, t0, user_t0 = True, total, st, user_t1
            samples.add(st, total)
            t1 = st

        if rest:
            account(len(rest), stamp)
        buf = memoryview(bytearray(_RECV_BUF))
        try:
            async with asyncio.timeout(self.idle_timeout) as tmo:
                while total < size:
                    n, st = await self._recv(conn, buf)
                    if n == 0:
                        error = f"short upload: connection closed after {total} of {size} bytes"
                        break
                    account(n, st)
                    tmo.reschedule(loop.time() + self.idle_timeout)
        except TimeoutError:
            error = f"idle: no data for {self.idle_timeout:g} s after {total} of {size} bytes"
        if error is None and total > size:
            error = f"client sent {total - size} bytes more than size {size}"
        rec["bytes"] = total
        report = Report(ok=error is None, bytes=total, b=b if seen_skip else 0, t0_ns=t0 if seen_skip else 0,
                        t1_ns=t1, samples=samples.finish(t1, total) if total else [],
                        ts_source="user" if user_t0 or user_t1 else "kernel", error=error)
        line = report.to_line()
        if len(line) > MAX_REPORT:           # cannot happen with MAX_SAMPLES; never send what a client must refuse
            report.samples = report.samples[:1] + report.samples[-1:]
            line = report.to_line()
        if report.ok and report.t1_ns > report.t0_ns:
            rec["mbps"] = round(8 * (size - report.b) / (report.t1_ns - report.t0_ns) * 1e3, 3)
        rec["ok"] = report.ok
        if error:
            rec["error"] = error
        async with asyncio.timeout(self.idle_timeout):
            await loop.sock_sendall(conn, line)
        conn.shutdown(socket.SHUT_WR)
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(self.close_wait):
                while (await self._recv(conn, buf))[0]:
                    pass

    async def _send_err(self, conn: socket.socket, reason: str) -> None:
        reason = " ".join(reason.split())[:200]
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.get_running_loop().sock_sendall(conn, f"ERR {reason}\n".encode())
                conn.shutdown(socket.SHUT_WR)

    async def _send(self, conn: socket.socket, data: memoryview) -> int:
        """One ``send`` once the socket is writable: bytes taken by the kernel."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                return conn.send(data)
            except (BlockingIOError, InterruptedError):
                pass
            fut = loop.create_future()
            fd = conn.fileno()
            loop.add_writer(fd, _set_done, fut)
            try:
                await fut
            finally:
                loop.remove_writer(fd)

    async def _recv(self, conn: socket.socket, buf: memoryview) -> tuple[int, int | None]:
        """One ``recvmsg_into``: (bytes, kernel receive stamp or None)."""
        while True:
            try:
                n, anc, _flags, _addr = conn.recvmsg_into([buf], _STAMP_CMSG)
                return n, kernel_stamp(anc)
            except (BlockingIOError, InterruptedError):
                pass
            fut = asyncio.get_running_loop().create_future()
            fd = conn.fileno()
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, _set_done, fut)
            try:
                await fut
            finally:
                loop.remove_reader(fd)

    def _log(self, rec: dict[str, Any]) -> None:
        if self.on_transfer is not None:
            with contextlib.suppress(Exception):
                self.on_transfer(dict(rec))
        extra = f" {rec['mbps']} Mbit/s" if "mbps" in rec else ""
        err = f" error={rec['error']!r}" if rec.get("error") else ""
        log.info("transfer peer=%s dir=%s size=%s bytes=%s ok=%s seconds=%s%s%s", rec["peer"], rec["direction"],
                 rec["size"], rec["bytes"], rec["ok"], rec["seconds"], extra, err)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fmt(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listener(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # On the listener, not only the accepted socket: a client's request
        # and first upload bytes can arrive before accept() returns, and
        # segments queued before the option was set carry no stamp.
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(256)
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


async def serve(host: str | Sequence[str] | None = None, port: int = DEFAULT_PORT, *,
                ready: Callable[[ThroughputServer], Any] | None = None, **kw: Any) -> None:
    """Run a :class:`ThroughputServer` until cancelled; ``ready(server)`` once it listens."""
    srv = ThroughputServer(host, port, **kw)
    await srv.start()
    try:
        if ready is not None:
            ready(srv)
        await asyncio.Event().wait()
    finally:
        await srv.close()


class ThreadedServer:
    """A :class:`ThroughputServer` on its own event loop in a daemon thread.

    For blocking callers (the native client's tests, benchmarks)::

        with ThreadedServer("127.0.0.1", 0) as srv:
            host, port = srv.address
    """

    def __init__(self, host: str | Sequence[str] | None = "127.0.0.1", port: int = 0, **kw: Any) -> None:
        self._kw = kw
        self._host, self._port = host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="throughput-server", daemon=True)
        self.server: ThroughputServer | None = None

    def start(self) -> "ThreadedServer":
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(ThroughputServer(self._host, self._port, **self._kw).start(),
                                               self._loop)
        try:
            self.server = fut.result(10)
        except BaseException:
            self._stop_loop()
            raise
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None, "not started"
        return self.server.address

    @property
    def addresses(self) -> list[tuple[str, int]]:
        assert self.server is not None, "not started"
        return self.server.addresses

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)
            self.server = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> "ThreadedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- CLI


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` (host ``""``: every address)."""
    t = text.strip()
    if t.isdigit():
        host, port_s = "", t
    elif t.startswith("["):
        host, sep, port_s = t[1:].partition("]:")
        if not sep:
            raise ValueError(f"listen address {text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_s = t.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"listen address {text!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"listen address {text!r}: port {port_s!r} is not a number") from None
    if not 0 <= port < 65536:
        raise ValueError(f"listen address {text!r}: port {port} is outside 0..65535")
    return host, port


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help=f"address to listen on (repeatable; default 0.0.0.0 and [::] port {DEFAULT_PORT}; "
                        "PORT alone: both wildcards)")
    p.add_argument("--max-clients", type=int, default=DEFAULT_MAX_CLIENTS, metavar="N",
                   help=f"concurrent clients; more get 'ERR busy' (default {DEFAULT_MAX_CLIENTS})")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a client has to send its request line (default 10)")
    p.add_argument("--idle-timeout", type=float, default=30.0, metavar="S",
                   help="seconds without progress before a transfer is dropped (default 30)")
    p.add_argument("--ready-file", metavar="FILE", help="write the listening addresses to FILE once listening")
    p.add_argument("--transfers", metavar="FILE", help="append one JSON line per transfer to FILE")


def run_from_args(a: argparse.Namespace) -> int:
    """Run the server as the CLI asked, until SIGTERM/SIGINT."""
    hosts: list[str] = []
    port = DEFAULT_PORT
    try:
        for item in a.listen or []:
            h, port = parse_listen(item)
            hosts += [h] if h else ["0.0.0.0", "::"]
        if len({parse_listen(x)[1] for x in a.listen or []}) > 1:
            raise ValueError("--listen: every address must use the same port")
        kw: dict[str, Any] = dict(max_clients=a.max_clients, header_timeout=a.header_timeout,
                                  idle_timeout=a.idle_timeout)
        ThroughputServer(hosts or None, port, **kw)       # validate before binding anything
    except ValueError as e:
        print(f"marionet throughput-server: {e}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)

    if getattr(a, "transfers", None):
        path = a.transfers

        def record(rec: dict[str, Any]) -> None:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")

        kw["on_transfer"] = record

    def ready(srv: ThroughputServer) -> None:
        print("listening on " + " ".join(_fmt(x) for x in srv.addresses), flush=True)
        if a.ready_file:
            with open(a.ready_file, "w") as f:
                f.write(" ".join(_fmt(x) for x in srv.addresses) + "\n")

    async def main() -> None:
        import signal
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        await serve(hosts or None, port, ready=ready, **kw)

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    except OSError as e:
        print(f"marionet throughput-server: cannot listen: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m marionet.measure.throughput_server",
                                description="the marionet throughput server (MNTPUT1)")
    add_arguments(p)
    return run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
