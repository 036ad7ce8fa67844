"""Client side of the packet model: a session with one endpoint.

``PacketSession`` speaks the wire protocol over any byte stream (a direct
TLS connection, a channel through the controller). Requests are matched
to replies by id, so many can be in flight; notifications go to a bounded
queue read with ``notifications()``. If that queue overflows the client
counts what it dropped and yields an ``NDrop`` (with ``kinds={"client":
…}``) — nothing is lost silently on this side either.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from marionet.client.errors import (REFUSAL_CODES, ConnectionLost, EndpointError, PeerProtocolError,
                                    SessionRefused, error_from_reply)
from marionet.wire import messages as m
from marionet.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, encode

if TYPE_CHECKING:
    from marionet.client.credentials import Credentials

Notification = m.Notification

#: Bounds of ``nsend(fill=)`` and ``ncount`` (the endpoint checks the same).
MAX_FILL = 4 << 30
MAX_COUNT_SAMPLES = 100_000
MAX_COUNT_HEAD = 1024


def _bounded(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer within {lo} - {hi}, got {value!r}")
    return value


@dataclass(frozen=True)
class ClockOffset:
    """Endpoint clock minus local clock, NTP-style, from the best sample.

    ``offset_ns`` is uncertain by about ±``rtt_ns``/2.
    """

    offset_ns: int
    rtt_ns: int
    samples: int


@dataclass(frozen=True)
class SocketInfo:
    sock: int
    proto: str
    family: int
    laddr: str | None
    lport: int | None
    raddr: str | None = None
    rport: int | None = None


class NotificationStream:
    """The notifications of some sockets and tasks, apart from the rest.

    A session has one notification stream by default; a measurement that
    shares its session with others (remote placement, several at once)
    opens its own with ``session.stream()`` so it neither eats nor is fed
    other measurements' notifications. Sockets opened with
    ``nopen(..., stream=s)`` are claimed before the reply is even seen, so
    nothing for them can slip into the default queue. ``ndrop`` goes to
    every stream: each must know that something may be missing.
    """

    def __init__(self, session: "PacketSession", max_queued: int) -> None:
        self.session = session
        self.socks: set[int] = set()
        self.tasks: set[int] = set()
        self._queue: deque[m.Message] = deque()
        self._ready = asyncio.Event()
        self._max = max_queued
        self._drops = 0

    def _put(self, msg: m.Message) -> None:
        if len(self._queue) >= self._max:
            self._drops += 1
        else:
            self._queue.append(msg)
        self._ready.set()

    def add_sock(self, sock: int) -> None:
        self.socks.add(sock)
        self.session._by_sock[sock] = self

    def add_task(self, task: int) -> None:
        self.tasks.add(task)
        self.session._by_task[task] = self

    def poll(self) -> m.Notification | None:
        if self._queue:
            return self._queue.popleft()  # type: ignore[return-value]
        if self._drops:
            n, self._drops = self._drops, 0
            return m.NDrop(time_ns=time.time_ns(), count=n, nbytes=0, kinds={"client": n})
        return None

    async def next(self, timeout: float | None = None) -> m.Notification | None:
        """The next notification, None on timeout; ``ConnectionLost`` at the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            n = self.poll()
            if n is not None:
                return n
            self.session._raise_if_closed()
            self._ready.clear()
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            try:
                await asyncio.wait_for(self._ready.wait(), wait)
            except asyncio.TimeoutError:
                return None

    def close(self) -> None:
        """Stop routing to this stream; later notifications go to the default queue."""
        for sock in self.socks:
            if self.session._by_sock.get(sock) is self:
                del self.session._by_sock[sock]
        for task in self.tasks:
            if self.session._by_task.get(task) is self:
                del self.session._by_task[task]
        self.session._streams.discard(self)

    def __enter__(self) -> "NotificationStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PacketSession:
    """A packet-interface session (PacketLab model) with one endpoint."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 max_frame: int = DEFAULT_MAX_FRAME, max_queued: int = 1_000_000) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = FrameDecoder(max_frame)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._max_queued = max_queued
        # Notifications no other stream claimed.
        self._default = NotificationStream(self, max_queued)
        self._closed_exc: BaseException | None = None
        self._reader_task: asyncio.Task | None = None
        self.endpoint_name: str = ""
        self.endpoint_features: list[str] = []
        #: what the endpoint verified of us (name, role, auth, grants), after Auth
        self.identity: dict[str, Any] = {}
        self.sockets: dict[int, SocketInfo] = {}
        self._streams: set[NotificationStream] = set()
        self._by_sock: dict[int, NotificationStream] = {}
        self._by_task: dict[int, NotificationStream] = {}
        self._claim: dict[int, NotificationStream] = {}  # request id -> stream claiming its socket

    # ------------------------------------------------------------- life cycle
    async def start(self, timeout: float = 10.0, *, credentials: "Credentials | None" = None,
                    vp: str | None = None) -> "PacketSession":
        """Say hello; with ``credentials``, prove them to the endpoint.

        ``vp`` is the VP this session was meant for: the proof is bound to
        it, and an endpoint answering under another name is refused."""
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop())
        hello = await asyncio.wait_for(
            self._request(m.Hello(id=next(self._ids), version=m.PROTOCOL_VERSION, role="client")),
            timeout)
        assert isinstance(hello, m.Hello)
        self.endpoint_name = hello.name
        self.endpoint_features = list(hello.features)
        if vp is not None and hello.name != vp:
            raise PeerProtocolError(f"asked for VP {vp!r} but the endpoint is {hello.name!r}")
        if credentials is not None and hello.nonce and "auth" in hello.features:
            try:
                reply = await asyncio.wait_for(
                    self._request(credentials.auth(next(self._ids), hello.nonce, vp or hello.name)), timeout)
            except EndpointError as exc:
                if exc.code != "not-supported":  # an open endpoint checks no certificates
                    raise
            else:
                self.identity = dict(reply.value or {})
        return self

    async def close(self) -> None:
        """Close the session; the endpoint closes every socket it holds."""
        if self._closed_exc is None:
            self._fail(ConnectionLost("session closed"))
        try:
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)
        except (Exception, asyncio.CancelledError):  # noqa: BLE001
            pass
        if self._reader_task is not None:
            self._reader_task.cancel()

    async def __aenter__(self) -> "PacketSession":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed_exc is not None

    def _fail(self, exc: BaseException) -> None:
        if self._closed_exc is None:
            self._closed_exc = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self._pending.clear()
        self._default._ready.set()
        for st in list(self._streams):
            st._ready.set()

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(1 << 18)
                if not data:
                    self._fail(ConnectionLost("the endpoint closed the connection"))
                    return
                for msg in self._decoder.feed(data):
                    self._dispatch(msg)
        except ProtocolError as exc:
            self._fail(PeerProtocolError(exc.code, f"bad data from the endpoint: {exc.reason}"))
            self._writer.close()
        except (ConnectionError, OSError) as exc:
            self._fail(ConnectionLost(f"connection lost: {exc}"))
        except asyncio.CancelledError:
            self._fail(ConnectionLost("session closed"))
            raise

    def _dispatch(self, msg: m.Message) -> None:
        rid = getattr(msg, "id", None)
        if isinstance(msg, m.Notification):
            if self._streams:
                if isinstance(msg, m.NDrop):
                    for st in self._streams:
                        st._put(msg)
                else:
                    task = getattr(msg, "task", None)
                    st = self._by_task.get(task) if task is not None else self._by_sock.get(msg.sock)  # type: ignore[attr-defined]
                    if st is not None:
                        st._put(msg)
                        return
            self._default._put(msg)
        elif isinstance(msg, m.Bye):
            cls = SessionRefused if msg.code in REFUSAL_CODES else PeerProtocolError
            self._fail(cls(msg.code, msg.reason))
        elif rid is not None:
            fut = self._pending.pop(rid, None)
            claim = self._claim.pop(rid, None)
            if claim is not None:
                if isinstance(msg, m.Opened):
                    claim.add_sock(msg.sock)
                elif isinstance(msg, m.Ok) and isinstance(msg.value, int):
                    claim.add_task(msg.value)  # a task id
            if fut is not None and not fut.done():
                if isinstance(msg, m.Error):
                    fut.set_exception(error_from_reply(msg.code, msg.reason, msg.rule))
                else:
                    fut.set_result(msg)

    # --------------------------------------------------------------- requests
    def _request(self, msg: m.Message) -> asyncio.Future:
        self._raise_if_closed()
        fut = asyncio.get_running_loop().create_future()
        self._pending[msg.id] = fut  # type: ignore[attr-defined]
        self._writer.write(encode(msg))
        return fut

    def next_id(self) -> int:
        return next(self._ids)

    async def info(self) -> m.InfoReply:
        """Endpoint clock, addresses, capabilities, buffer limit and use, version."""
        return await self._request(m.Info(id=next(self._ids)))

    def stream(self) -> NotificationStream:
        """A separate notification stream (see ``NotificationStream``)."""
        st = NotificationStream(self, self._max_queued)
        self._streams.add(st)
        return st

    def _raise_if_closed(self) -> None:
        if self._closed_exc is not None:
            raise self._closed_exc if isinstance(self._closed_exc, ConnectionLost) else \
                ConnectionLost(str(self._closed_exc))

    async def nopen(self, proto: str, family: int = 4, *, stream: NotificationStream | None = None,
                    **options: Any) -> int:
        """Open a socket; returns its id. ``options``: ipproto, hdrincl,
        laddr, lport, raddr, rport (tcp), ttl, tos, device, backlog,
        timeout (seconds, tcp connect). ``stream``: deliver this socket's
        notifications there."""
        timeout = options.pop("timeout", None)
        if timeout is not None:
            options["timeout_ns"] = int(timeout * 1e9)
        unknown = set(options) - set(m.NOpen.__struct_fields__)
        if unknown:
            raise TypeError(f"unknown nopen options: {', '.join(sorted(unknown))}")
        req = m.NOpen(id=next(self._ids), proto=proto, family=family, **options)
        if stream is not None:
            self._claim[req.id] = stream
        try:
            reply = await self._request(req)
        finally:
            self._claim.pop(req.id, None)
        self.sockets[reply.sock] = SocketInfo(reply.sock, proto, family, reply.laddr, reply.lport,
                                              reply.raddr, reply.rport)
        return reply.sock

    async def nsend(self, sock: int, data: bytes, *, dst: str | None = None, port: int | None = None,
                    at: int | None = None, tag: int | None = None, ttl: int | None = None,
                    tos: int | None = None, df: bool | None = None, fill: int = 0) -> None:
        """Queue a send at endpoint time ``at`` (ns since the epoch; None = now).

        Returns once the endpoint accepted it; with a ``tag`` the outcome
        (kernel send time or error) arrives as an ``ntag`` notification.

        ``fill`` (TCP): after ``data`` the endpoint writes ``fill``
        pseudo-random bytes of its own as the socket drains — an upload
        without pushing its data through this session — and reports them in
        one ``nfill`` notification (kernel TX times of the first and last
        byte, or the error), delivered even while suppressed. The guard
        counts these bytes like any other; a fill beyond the caller's budget
        is refused ("denied").
        """
        fill = _bounded("fill", fill, 0, MAX_FILL)
        await self._request(m.NSend(id=next(self._ids), sock=sock, data=bytes(data), dst=dst, port=port,
                                    at=at, tag=tag, ttl=ttl, tos=tos, df=df, fill=fill))

    async def ncount(self, sock: int, *, mark: int = 0, interval: float = 0.01,
                     max_samples: int = 10_000, head: int = 64) -> None:
        """Count mode for TCP socket ``sock``: from now on the endpoint counts
        received bytes with their kernel receive times instead of shipping
        them as ``ndata`` (a transfer larger than the notification buffer,
        at full speed). When the peer closes, the connection fails or the
        socket is closed, one ``ncountend`` notification carries the
        summary — delivered even while suppressed: total bytes, first and
        last kernel rx ns, the receive that first reached ``mark`` bytes,
        progress samples (kernel rx ns, cumulative bytes) at most every
        ``interval`` seconds (at most ``max_samples``), and the first
        ``head`` bytes (e.g. an error line from the server)."""
        mark = _bounded("mark", mark, 0, MAX_FILL)
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 1e-4 <= interval <= 60:
            raise ValueError(f"interval must be 0.0001 - 60 s, got {interval!r}")
        max_samples = _bounded("max_samples", max_samples, 0, MAX_COUNT_SAMPLES)
        head = _bounded("head", head, 0, MAX_COUNT_HEAD)
        await self._request(m.NCount(id=next(self._ids), sock=sock, mark=mark, interval_ns=int(interval * 1e9),
                                     max_samples=max_samples, head=head))

    async def nsendv(self, sends: Iterable[m.SendItem]) -> int:
        """Queue many sends in one request (in order); returns how many."""
        reply = await self._request(m.NSendV(id=next(self._ids), sends=list(sends)))
        return int(reply.value)

    def nsend_nowait(self, sock: int, data: bytes, **kw: Any) -> asyncio.Future:
        """Like ``nsend`` but returns the reply future without awaiting it,
        so a caller can pipeline sends and check them later."""
        return self._request(m.NSend(id=next(self._ids), sock=sock, data=bytes(data), **kw))

    async def ncap(self, sock: int, filter: str | None = None, until: int | None = None, *,
                   program: list[tuple[int, int, int, int]] | None = None) -> int:
        """Capture on raw socket ``sock`` until endpoint time ``until``.

        ``filter`` is a tcpdump expression (compiled on the endpoint with
        libpcap); ``program`` a classic BPF program. Returns its length.
        """
        reply = await self._request(m.NCap(id=next(self._ids), sock=sock, filter=filter,
                                           program=[tuple(i) for i in program] if program is not None else None,
                                           until=until))
        return int(reply.value)

    async def nctl(self, op: str, sock: int | None = None, at: int | None = None) -> None:
        """"suppress" / "resume" notifications, or "shutdown" a TCP socket's
        write side (at ``at``)."""
        await self._request(m.NCtl(id=next(self._ids), op=op, sock=sock, at=at))

    async def suppress(self) -> None:
        await self.nctl("suppress")

    async def resume(self) -> None:
        await self.nctl("resume")

    async def nclose(self, sock: int) -> None:
        await self._request(m.NClose(id=next(self._ids), sock=sock))
        self.sockets.pop(sock, None)
        st = self._by_sock.pop(sock, None)
        if st is not None:
            st.socks.discard(sock)

    async def ping(self) -> tuple[int, int, int, int]:
        """One control ping: (t0 local send, t1 endpoint rx, t2 endpoint tx, t3 local rx)."""
        t0 = time.time_ns()
        pong = await self._request(m.Ping(id=next(self._ids)))
        t3 = time.time_ns()
        return t0, pong.t_rx, pong.t_tx, t3

    async def clock_offset(self, samples: int = 8) -> ClockOffset:
        """Estimate endpoint clock − local clock over the control channel."""
        best: tuple[int, int] | None = None
        for _ in range(max(1, samples)):
            t0, t1, t2, t3 = await self.ping()
            delay = (t3 - t0) - (t2 - t1)
            offset = ((t1 - t0) + (t2 - t3)) // 2
            if best is None or delay < best[1]:
                best = (offset, delay)
        assert best is not None
        return ClockOffset(offset_ns=best[0], rtt_ns=best[1], samples=samples)

    async def task(self, primitive: str, params: dict[str, Any], *,
                   stream: NotificationStream | None = None) -> int:
        """Start a primitive on the endpoint; its result arrives as a
        ``taskres`` notification (on ``stream`` if given)."""
        req = m.Task(id=next(self._ids), primitive=primitive, params=params)
        if stream is not None:
            self._claim[req.id] = stream
        try:
            reply = await self._request(req)
        finally:
            self._claim.pop(req.id, None)
        return int(reply.value)

    async def halt(self, task: int) -> None:
        await self._request(m.Halt(id=next(self._ids), task=task))

    # ---------------------------------------------------------- notifications
    def poll_notification(self) -> m.Notification | None:
        """The next queued notification, or None (no waiting)."""
        return self._default.poll()

    async def next_notification(self, timeout: float | None = None) -> m.Notification | None:
        """Wait for the next notification; None on timeout.

        Raises ``ConnectionLost`` once the session is over and the queue is empty.
        """
        return await self._default.next(timeout)

    async def notifications(self, timeout: float | None = None) -> AsyncIterator[m.Notification]:
        """Iterate notifications as they arrive; ends when the session ends
        (or after ``timeout`` seconds without one)."""
        while True:
            try:
                n = await self.next_notification(timeout)
            except ConnectionLost:
                return
            if n is None:
                return
            yield n

    def pending_notifications(self) -> int:
        return len(self._default._queue)
