"""One client's session on an endpoint: its sockets, notifications, tasks.

The session consumes decoded requests and emits encoded frames to an
*outlet* (a direct connection, a channel through the controller, or an
in-process link for primitives running on the endpoint). It knows nothing
about transports, so every path into the endpoint shares this code — and
its guard call sites.

Notifications are buffered up to a byte limit while the outlet is slow or
the client has suppressed them; past the limit new ones are dropped and
counted, and an ``NDrop`` reports the loss before delivery resumes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Protocol

from marionet.endpoint import bpf
from marionet.endpoint.addresses import BadRequest, check_addr, check_port, sockaddr
from marionet.endpoint.sockets import (
    DatagramSocket,
    EpSocket,
    RawSocket,
    TcpListener,
    TcpSocket,
    UdpSocket,
    errno_text,
    make_socket,
)
from marionet.guard import GuardDenied, Principal
from marionet.guard.core import SessionGuard
from marionet.wire import messages as m
from marionet.wire import skew
from marionet.wire.codec import CHDATA_OVERHEAD, encode

if TYPE_CHECKING:
    from marionet.endpoint.daemon import Endpoint

log = logging.getLogger("marionet.endpoint")

#: Longest TCP connect timeout a client may ask for.
MAX_CONNECT_TIMEOUT_NS = 600 * 1_000_000_000
#: Largest endpoint-generated fill in one send (``NSend.fill``): the
#: throughput protocol's largest transfer.
MAX_FILL = 4 << 30
#: Count mode (``NCount``) bounds: the sample spacing, the number of samples
#: kept (each ~20 bytes on the wire: the summary must fit one frame) and the
#: head of the stream the summary carries.
MIN_COUNT_INTERVAL_NS = 100_000
MAX_COUNT_INTERVAL_NS = 60 * 1_000_000_000
MAX_COUNT_SAMPLES = 100_000
MAX_COUNT_HEAD = 1024


#: Notifications never dropped: how a connection, capture or task ended,
#: and what was lost. (TCP stream data is precious too; its sockets pass
#: ``precious=True``.)
PRECIOUS: frozenset[type] = frozenset({m.NStat, m.NCapEnd, m.TaskResult, m.NDrop})


class DropMarker:
    """Notifications dropped at one place in the held stream."""

    __slots__ = ("count", "nbytes", "kinds", "socks")

    def __init__(self) -> None:
        self.count = 0
        self.nbytes = 0
        self.kinds: dict[str, int] = {}
        self.socks: dict[int, int] = {}

    def add(self, kind: str, nbytes: int, count: int = 1, sock: int | None = None) -> None:
        self.count += count
        self.nbytes += nbytes
        self.kinds[kind] = self.kinds.get(kind, 0) + count
        if sock is not None:
            self.socks[sock] = self.socks.get(sock, 0) + count

    def ndrop(self) -> m.NDrop:
        return m.NDrop(time_ns=time.time_ns(), count=self.count, nbytes=self.nbytes,
                       kinds=dict(self.kinds), socks=dict(self.socks))


class Outlet(Protocol):
    """Where a session's frames go."""

    def write(self, data: bytes, note: bool = False) -> None: ...

    def writable(self) -> bool: ...


class Session:
    """Server-side state of one client."""

    def __init__(self, endpoint: "Endpoint", outlet: Outlet, principal: Principal,
                 sguard: SessionGuard | None = None, peer: str = "?") -> None:
        """``sguard``: the guard of this session; by default the endpoint's
        guard opens one for ``principal`` (GuardDenied if it may not use
        this VP at all). A primitive's session passes its parent's."""
        self.endpoint = endpoint
        self.outlet = outlet
        self.principal = principal
        self.peer = peer
        self.sguard = sguard if sguard is not None else endpoint.guard.open(principal, endpoint)
        self.loop = asyncio.get_running_loop()
        self.started_ns = time.time_ns()
        #: the configured clock skew, applied where messages cross (``reply``,
        #: ``notify``, ``handle``); 0 skips it entirely
        self.skew_ns = int(getattr(endpoint.config, "clock_skew_ns", 0) or 0)
        self.nonce = b""  # the challenge an Auth must sign (set by the connection)
        self.tls_fingerprint: str | None = None
        self.local = False
        #: for the audit line: what this session did and what was refused
        self.counts = {"requests": 0, "sends": 0, "bytes_sent": 0, "sockets": 0, "tasks": 0,
                       "denied": 0, "blocked": 0}
        self.sockets: dict[int, EpSocket] = {}
        self.tasks: dict[int, asyncio.Task] = {}
        self._next_sid = 1
        self.closed = False
        # outgoing frames, in order, coalesced into few writes per loop iteration
        self._out: list[tuple[bytes, bool]] = []  # (frame, droppable)
        self._out_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self.chunk_limit = endpoint.config.max_frame - CHDATA_OVERHEAD
        # notification buffer: frames held while the outlet is slow or
        # delivery is suppressed, and markers where some were dropped
        self.buffer_limit = endpoint.config.buffer_limit
        self._held: deque[tuple[bytes, bool] | DropMarker] = deque()
        self._held_bytes = 0
        self._stalled: set[EpSocket] = set()  # stream sockets waiting for room
        self.suppressed = False
        self.dropped_total = 0
        self.kernel_drops = 0
        self._release_handle: asyncio.Handle | None = None
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    # ------------------------------------------------------------------ output
    def _queue_frame(self, frame: bytes, droppable: bool = False) -> None:
        self._out.append((frame, droppable))
        self._out_bytes += len(frame)
        if self._out_bytes >= self.chunk_limit:
            self._flush()  # write through: the outlet's backpressure must see it
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write what is queued, in order, as chunks of whole frames.

        A chunk is at most ``chunk_limit`` bytes, so a channel through a
        controller never carries a frame the controller must refuse (which
        would cost every session on the VP its link). Consecutive droppable
        notifications form chunks of their own (``note=True``): a controller
        may drop those for a slow client and count them, never the others.
        """
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self.closed or not self._out:
            return
        out, self._out = self._out, []
        self._out_bytes = 0
        limit = self.chunk_limit
        parts: list[bytes] = []
        size = 0
        kind = out[0][1]
        for frame, droppable in out:
            if parts and (droppable != kind or size + len(frame) > limit):
                self.outlet.write(b"".join(parts), kind)
                parts, size = [], 0
            kind = droppable
            parts.append(frame)
            size += len(frame)
        if parts:
            self.outlet.write(b"".join(parts), kind)

    def reply(self, msg: m.Message) -> None:
        """Replies bypass suppression (control must work during a transfer)
        and are never dropped; a client that does not read them is not
        read from either (see ``ClientConnection``)."""
        if not self.closed:
            if self.skew_ns:
                msg = skew.shift(msg, self.skew_ns)
            self._queue_frame(encode(msg))

    def error(self, rid: int, code: str, reason: str, rule: str | None = None) -> None:
        self.reply(m.Error(id=rid, code=code, reason=reason, rule=rule))

    def notify(self, msg: m.Message, precious: bool | None = None, urgent: bool = False) -> None:
        """Queue a notification, or hold it while the outlet is slow or the
        client suppressed delivery.

        ``precious`` notifications (state changes, task results, capture
        ends, drop reports, TCP stream data) are never dropped: a client
        must always learn how a connection or task ended, and stream data is
        slowed by backpressure instead (``stream_room``). Others (datagrams,
        stamps, ICMP errors) are dropped past the buffer limit and counted.

        ``urgent`` ones (the one summary ending a count or a fill) go out
        like replies, past suppression and held notifications: a client
        that suppressed delivery during a transfer must still learn that it
        ended. They are few and small (one per count or fill).
        """
        if self.closed:
            return
        if precious is None:
            precious = type(msg) in PRECIOUS
        if self.skew_ns:
            msg = skew.shift(msg, self.skew_ns)
        frame = encode(msg)
        if len(frame) > self.chunk_limit:
            frame = self._too_big(msg, len(frame) - 4)
            precious = True
        if urgent:
            self._queue_frame(frame)
        elif self._held or self.suppressed or not self.outlet.writable():
            self._hold(msg, frame, precious)
        else:
            self._queue_frame(frame, not precious)

    def _too_big(self, msg: m.Message, size: int) -> bytes:
        """A frame the client would refuse (and drop the session for) is
        never sent: a task's oversized result becomes a task error, and any
        other oversized notification an ``NDrop`` saying what was lost."""
        limit = self.chunk_limit - 4
        log.warning("%s of %d bytes exceeds the %d-byte frame limit", type(msg).__name__, size, limit)
        if isinstance(msg, m.TaskResult):
            return encode(m.TaskResult(task=msg.task, time_ns=msg.time_ns,
                                       error=f"result of {size} bytes exceeds the {limit}-byte frame limit "
                                             "(reduce the primitive's limits, e.g. limit_size)"))
        kind = type(msg).__struct_config__.tag
        return encode(m.NDrop(time_ns=time.time_ns() + self.skew_ns, count=1, nbytes=size, kinds={str(kind): 1}))

    def _hold(self, msg: m.Message, frame: bytes, precious: bool) -> None:
        if not precious and self._held_bytes + len(frame) > self.buffer_limit:
            self.record_drop(type(msg).__struct_config__.tag, len(frame))  # type: ignore[arg-type]
            return
        self._held.append((frame, not precious))
        self._held_bytes += len(frame)

    def record_drop(self, kind: str, nbytes: int, count: int = 1, sock: int | None = None) -> None:
        """Count a loss where it happened in the stream: consecutive losses
        share one marker, which becomes one ``NDrop`` at that place."""
        if self.closed:
            return
        last = self._held[-1] if self._held else None
        if not isinstance(last, DropMarker):
            last = DropMarker()
            self._held.append(last)
        last.add(kind, nbytes, count, sock)
        self.dropped_total += count
        if kind == "kernel":
            self.kernel_drops += count
        if self._release_handle is None and not self.suppressed:
            # A marker alone in the queue would otherwise wait for the next
            # notification or writable event to be delivered.
            self._release_handle = self.loop.call_soon(self.release)

    def release(self) -> None:
        """Deliver held notifications while the outlet takes them.

        ``_queue_frame`` writes through every ``chunk_limit`` bytes, so the
        outlet's own backpressure (``writable``) stops the release as soon
        as it fills, instead of one huge write of the whole backlog.
        """
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
        if self.suppressed or self.closed:
            return
        while self._held and self.outlet.writable():
            item = self._held.popleft()
            if isinstance(item, DropMarker):
                self._queue_frame(encode(skew.shift(item.ndrop(), self.skew_ns)))
            else:
                frame, droppable = item
                self._held_bytes -= len(frame)
                self._queue_frame(frame, droppable)
        if self._stalled and self.stream_room(resume=True):
            stalled, self._stalled = self._stalled, set()
            for es in stalled:
                es.resume_reading()

    def on_writable(self) -> None:
        """The outlet drained below its low-water mark."""
        self.release()

    @property
    def buffer_used(self) -> int:
        return self._held_bytes

    # ------------------------------------------------------- stream backpressure
    def stream_room(self, resume: bool = False) -> bool:
        """May a stream socket read more? Past the buffer limit it stops
        reading, so TCP flow control slows the sender instead of the data
        being dropped; it resumes once the buffer is half empty."""
        limit = self.buffer_limit // 2 if resume else self.buffer_limit
        return not self.closed and self._held_bytes < limit

    def stream_stalled(self, es: EpSocket) -> None:
        """``es`` stopped reading for want of room; resume it on release."""
        self._stalled.add(es)

    # ------------------------------------------------------------------- guard
    def guard_op(self, op: str, request: Any, sock: EpSocket | None = None) -> int | None:
        """The single call site for operations (raises GuardDenied).

        ``request`` is the request itself (a wire struct, or a dict for
        events such as an accepted connection): no per-call copying on the
        send path. For a send the guard may return the earliest time it
        may leave (a rate limit that delays)."""
        return self.sguard.check(op, request, sock)

    def guard_data(self, es: EpSocket, data: bytes, peer: str | None) -> bool:
        """Received data passes the guard; blocked data becomes an ``NBlock``
        (counted, never silent)."""
        try:
            self.sguard.check_data(es, data, peer)
            return True
        except GuardDenied as exc:
            self.counts["blocked"] += 1
            self.notify(m.NBlock(time_ns=time.time_ns(), sock=es.sid, what="ndata",
                                 rule=exc.rule, reason=exc.reason))
            self.endpoint.audit_denial(self, "ndata", exc)
            return False

    def denied(self, op: str, exc: GuardDenied) -> None:
        self.counts["denied"] += 1
        self.endpoint.audit_denial(self, op, exc)

    def reauthenticate(self, principal: Principal, sguard: SessionGuard) -> None:
        """Take the identity an ``Auth`` proved: only before anything is open,
        so every socket and task of a session ran under one identity."""
        if self.sockets or self.tasks:
            raise BadRequest("bad-state", "authenticate before opening sockets or starting tasks")
        old = self.sguard
        self.principal = principal
        self.sguard = sguard
        old.close()

    # ---------------------------------------------------------------- requests
    def handle(self, msg: m.Message) -> None:
        """Dispatch one request; every failure becomes an ``Error`` reply."""
        handler = self._handlers.get(type(msg))
        rid = getattr(msg, "id", 0)
        if handler is None:
            self.error(rid, "unexpected", f"{type(msg).__struct_config__.tag!r} is not a request")
            return
        self.counts["requests"] += 1
        if self.skew_ns:
            msg = skew.shift(msg, -self.skew_ns)  # its times are in the skewed clock
        try:
            handler(self, msg)
        except BadRequest as exc:
            self.error(rid, exc.code, exc.reason)
        except GuardDenied as exc:
            self.denied(type(msg).__struct_config__.tag, exc)
            self.error(rid, "denied", exc.reason, rule=exc.rule)
        except bpf.FilterError as exc:
            self.error(rid, "bad-filter", str(exc))
        except OSError as exc:
            self.error(rid, "os-error", errno_text(exc.errno or 0) if exc.errno else str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug must not end the session
            log.exception("internal error handling %s", type(msg).__name__)
            self.error(rid, "internal", f"internal error: {type(exc).__name__}: {exc}")

    def _sock(self, sid: int) -> EpSocket:
        s = self.sockets.get(sid)
        if s is None:
            raise BadRequest("unknown-socket", f"no socket {sid} in this session")
        return s

    def _h_info(self, msg: m.Info) -> None:
        ep = self.endpoint
        self.reply(m.InfoReply(
            id=msg.id, clock_ns=time.time_ns(), name=ep.config.name, version=ep.version,
            protocol=m.PROTOCOL_VERSION, addresses=ep.addresses(), capabilities=ep.capabilities(),
            buffer_limit=self.buffer_limit, buffer_used=self._held_bytes,
            limits=ep.limits(),
            resolvers=ep.resolvers(),
            status=ep.status(self),
        ))

    def _h_ping(self, msg: m.Ping) -> None:
        t_rx = time.time_ns()
        self.reply(m.Pong(id=msg.id, t_rx=t_rx, t_tx=time.time_ns()))

    def _new_sid(self) -> int:
        sid = self._next_sid
        self._next_sid += 1
        return sid

    def _admit_socket(self) -> None:
        if len(self.sockets) >= self.endpoint.config.max_sockets:
            raise BadRequest("limit", f"at most {self.endpoint.config.max_sockets} sockets per session")
        self.endpoint.admit_socket(self.principal)
        cap = getattr(getattr(self.sguard, "grants", None), "max_sockets", None)
        if cap is not None:
            held = self.endpoint.sockets_of(self.principal)
            if held >= cap:
                raise GuardDenied("privileges.max_sockets",
                                  f"{self.principal.name!r} holds {held} sockets on this VP (granted at most {cap})")

    def _add_socket(self, es: EpSocket) -> None:
        self.sockets[es.sid] = es
        self.counts["sockets"] += 1
        self.endpoint.socket_opened(self.principal)

    def check_time(self, name: str, at: int | None) -> None:
        """A time on the endpoint's clock must be one it can keep: not
        negative, not beyond the scheduling horizon (a far-future send
        would hold a queue slot, and once crashed the sender)."""
        if at is None:
            return
        if at < 0:
            raise BadRequest("bad-time", f"{name} {at} is negative; times are ns since the epoch")
        horizon = self.endpoint.config.max_schedule_ahead_ns
        ahead = at - time.time_ns()
        if ahead > horizon:
            raise BadRequest("bad-time", f"{name} is {ahead / 1e9:.0f} s ahead; this endpoint schedules "
                                         f"at most {horizon / 1e9:.0f} s ahead")

    def _h_nopen(self, msg: m.NOpen) -> None:
        self._admit_socket()
        if msg.timeout_ns is not None and not 0 < msg.timeout_ns <= MAX_CONNECT_TIMEOUT_NS:
            raise BadRequest("bad-option", f"timeout_ns {msg.timeout_ns} not in 1..{MAX_CONNECT_TIMEOUT_NS} "
                                           f"({MAX_CONNECT_TIMEOUT_NS // 1_000_000_000} s)")
        self.guard_op("nopen", msg)
        if msg.proto not in ("udp", "tcp", "tcp-listen", "raw"):
            raise BadRequest("bad-option", f"unknown proto {msg.proto!r} (udp, tcp, tcp-listen, raw)")
        if msg.proto == "raw" and not self.endpoint.capabilities().get("raw"):
            raise BadRequest("no-privilege", "raw sockets need CAP_NET_RAW, which this endpoint lacks")
        if msg.hdrincl and (msg.proto != "raw" or msg.family != 4):
            raise BadRequest("bad-option", "hdrincl is for raw IPv4 sockets only")
        laddr = check_addr(msg.laddr, msg.family, "laddr") if msg.laddr else None
        lport = check_port(msg.lport, "lport", required=False)
        if msg.proto == "tcp":
            if msg.raddr is None:
                raise BadRequest("bad-address", "tcp needs raddr and rport")
            raddr = check_addr(msg.raddr, msg.family, "raddr")
            rport = check_port(msg.rport, "rport")
            if rport == 0:
                raise BadRequest("bad-port", "cannot connect to port 0")
        sock = make_socket(msg.family, msg.proto, msg.ipproto)
        try:
            self._apply_options(sock, msg)
            if msg.proto == "raw" and msg.hdrincl:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
            if laddr is not None or lport or msg.proto == "udp":
                if msg.proto != "raw":
                    sock.bind(sockaddr(laddr or ("::" if msg.family == 6 else "0.0.0.0"), lport, msg.family))
                elif laddr is not None:
                    sock.bind(sockaddr(laddr, 0, msg.family))
        except OSError as exc:
            sock.close()
            raise BadRequest("os-error", f"cannot set up socket: {errno_text(exc.errno or 0)}") from None
        except BaseException:
            sock.close()
            raise
        if msg.proto == "tcp":
            self.loop.create_task(self._connect(msg, sock, raddr, rport))
            return
        if msg.proto == "udp" and msg.raddr is not None:
            # A connected UDP socket: sends need no dst, and the reply's
            # laddr tells a remote measurement which source address the
            # endpoint's routing picks for that destination.
            raddr = check_addr(msg.raddr, msg.family, "raddr")
            rport = check_port(msg.rport, "rport")
            try:
                sock.connect(sockaddr(raddr, rport, msg.family))
            except OSError as exc:
                sock.close()
                raise BadRequest("connect-failed", f"no route to {raddr}: {errno_text(exc.errno or 0)}") from None
        elif msg.raddr is not None and msg.proto != "tcp":
            sock.close()
            raise BadRequest("bad-option", f"raddr is for tcp and udp sockets, not {msg.proto}")
        sid = self._new_sid()
        try:
            if msg.proto == "udp":
                es: EpSocket = UdpSocket(self, sid, sock, msg.family)
            elif msg.proto == "raw":
                es = RawSocket(self, sid, sock, msg.family, msg.ipproto or 0, msg.hdrincl)
            else:
                sock.listen(max(1, min(msg.backlog, 1024)))
                es = TcpListener(self, sid, sock, msg.family)
        except OSError as exc:
            sock.close()
            raise BadRequest("os-error", f"cannot set up socket: {errno_text(exc.errno or 0)}") from None
        self._add_socket(es)
        la, lp = es.local()
        self.reply(m.Opened(id=msg.id, sock=sid, laddr=la, lport=lp, raddr=msg.raddr, rport=msg.rport))

    def _apply_options(self, sock: socket.socket, msg: m.NOpen) -> None:
        if msg.device:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, msg.device.encode())
        if msg.ttl is not None:
            if not 0 <= msg.ttl <= 255:
                raise BadRequest("bad-option", f"ttl {msg.ttl} not in 0..255")
            if msg.family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, msg.ttl)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, msg.ttl)
        if msg.tos is not None:
            if not 0 <= msg.tos <= 255:
                raise BadRequest("bad-option", f"tos {msg.tos} not in 0..255")
            if msg.family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, msg.tos)
            else:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, msg.tos)
        if msg.proto in ("tcp-listen",):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if msg.nodelay:
            if msg.proto not in ("tcp", "tcp-listen"):
                raise BadRequest("bad-option", "nodelay is a TCP option")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _connect(self, msg: m.NOpen, sock: socket.socket, raddr: str, rport: int) -> None:
        sock.setblocking(False)
        timeout = (msg.timeout_ns or self.endpoint.config.connect_timeout_ns) / 1e9
        try:
            await asyncio.wait_for(self.loop.sock_connect(sock, sockaddr(raddr, rport, msg.family)), timeout)
        except asyncio.TimeoutError:
            sock.close()
            self.error(msg.id, "timeout", f"connect to {raddr} port {rport} timed out after {timeout:g} s")
            return
        except OSError as exc:
            sock.close()
            self.error(msg.id, "connect-failed", f"connect to {raddr} port {rport}: {errno_text(exc.errno or 0)}")
            return
        if self.closed:
            sock.close()
            return
        try:
            es = self.adopt_tcp(sock, msg.family)
        except BadRequest as exc:
            sock.close()
            self.error(msg.id, exc.code, exc.reason)
            return
        except GuardDenied as exc:
            sock.close()
            self.denied("nopen", exc)
            self.error(msg.id, "denied", exc.reason, rule=exc.rule)
            return
        la, lp = es.local()
        self.reply(m.Opened(id=msg.id, sock=es.sid, laddr=la, lport=lp, raddr=raddr, rport=rport))
        es.state("established", peer=raddr, port=rport)

    def adopt_tcp(self, conn: socket.socket, family: int) -> TcpSocket:
        self._admit_socket()
        sid = self._new_sid()
        es = TcpSocket(self, sid, conn, family)
        self._add_socket(es)
        return es

    def _h_nclose(self, msg: m.NClose) -> None:
        es = self._sock(msg.sock)
        self.guard_op("nclose", msg, es)
        self._close_socket(es)
        self.reply(m.Ok(id=msg.id))

    def _close_socket(self, es: EpSocket) -> None:
        if self.sockets.pop(es.sid, None) is not None:
            self.endpoint.socket_closed(self.principal)
        if isinstance(es, DatagramSocket):
            es.check_kernel_drops()
            self.endpoint.engine.forget(es)
        es.close()

    def _send_item(self, item: m.SendItem) -> None:
        es = self._sock(item.sock)
        self.check_time("at", item.at)
        self.check_fill(item, es)
        try:
            earliest = self.guard_op("nsend", item, es)
        except GuardDenied as exc:
            if item.fill:
                raise GuardDenied(exc.rule, f"a fill of {item.fill} bytes (plus {len(item.data)} of data) "
                                            f"is refused: {exc.reason}") from None
            raise
        self._enqueue(es, item, earliest)

    @staticmethod
    def check_fill(item: m.SendItem, es: EpSocket) -> None:
        """A fill is endpoint-generated TCP payload of bounded size."""
        fill = item.fill
        if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= MAX_FILL:
            raise BadRequest("bad-option", f"fill must be 0 - {MAX_FILL} bytes, got {fill!r}")
        if fill and not isinstance(es, TcpSocket):
            raise BadRequest("not-supported", f"fill needs a connected TCP socket, socket {es.sid} is {es.kind}")

    def _enqueue(self, es: EpSocket, item: m.SendItem, earliest: int | None) -> None:
        if earliest is not None and (item.at is None or item.at < earliest):
            item.at = earliest  # the rate limit delays this send
        es.enqueue(item)
        self.counts["sends"] += 1
        self.counts["bytes_sent"] += len(item.data) + item.fill

    def _h_nsend(self, msg: m.NSend) -> None:
        self._send_item(m.SendItem(sock=msg.sock, data=msg.data, dst=msg.dst, port=msg.port,
                                   at=msg.at, tag=msg.tag, ttl=msg.ttl, tos=msg.tos, df=msg.df,
                                   fill=msg.fill))
        self.reply(m.Ok(id=msg.id))

    def _h_nsendv(self, msg: m.NSendV) -> None:
        """Queue sends in order; stop at the first refusal and say which.

        The guard sees the batch in one call (a monitor is entered once per
        batch, not once per send); the sends before a refused one leave."""
        items = msg.sends
        socks: list[EpSocket] = []
        bad: BadRequest | None = None
        for item in items:
            try:
                es = self._sock(item.sock)
                self.check_time("at", item.at)
                self.check_fill(item, es)
                socks.append(es)
            except BadRequest as exc:
                bad = exc
                break
        checked = items[:len(socks)]
        denied: GuardDenied | None = None
        try:
            times = self.sguard.check_batch(checked, socks)
        except GuardDenied as exc:
            denied = exc
            n = exc.index if exc.index is not None else 0
            times = list(getattr(exc, "times", None) or [None] * n)
            checked, socks = checked[:n], socks[:n]
        for i, (item, es) in enumerate(zip(checked, socks)):
            try:
                self._enqueue(es, item, times[i])
            except BadRequest as exc:
                self.error(msg.id, exc.code, f"send {i} of {len(items)}: {exc.reason}")
                return
        if denied is not None:
            self.denied("nsendv", denied)
            self.error(msg.id, "denied", f"send {len(checked)} of {len(items)}: {denied.reason}", rule=denied.rule)
            return
        if bad is not None:
            self.error(msg.id, bad.code, f"send {len(checked)} of {len(items)}: {bad.reason}")
            return
        self.reply(m.Ok(id=msg.id, value=len(items)))

    def _h_ncap(self, msg: m.NCap) -> None:
        es = self._sock(msg.sock)
        if not isinstance(es, RawSocket):
            raise BadRequest("not-supported", f"ncap needs a raw socket, socket {msg.sock} is {es.kind}")
        if msg.filter is not None and msg.program is not None:
            raise BadRequest("bad-filter", "give filter or program, not both")
        self.check_time("until", msg.until)
        self.guard_op("ncap", msg, es)
        if msg.program is not None:
            program = bpf.validate_program(msg.program)
        else:
            program = bpf.compile_filter(msg.filter or "", linktype="raw")
        es.capture(program, msg.until)
        self.reply(m.Ok(id=msg.id, value=len(program)))

    def _h_nctl(self, msg: m.NCtl) -> None:
        self.guard_op("nctl", msg, self.sockets.get(msg.sock) if msg.sock is not None else None)
        if msg.op == "suppress":
            self.suppressed = True
        elif msg.op == "resume":
            self.suppressed = False
            self.release()
        elif msg.op == "shutdown":
            if msg.sock is None:
                raise BadRequest("bad-option", "shutdown needs sock")
            self.check_time("at", msg.at)
            self._sock(msg.sock).shutdown(msg.at)
        else:
            raise BadRequest("bad-option", f"unknown nctl op {msg.op!r} (suppress, resume, shutdown)")
        self.reply(m.Ok(id=msg.id))

    def _h_ncount(self, msg: m.NCount) -> None:
        """Count mode on a TCP socket (see ``NCount``); the guard sees it as
        the control operation "count" on that socket."""
        es = self._sock(msg.sock)
        self.guard_op("nctl", m.NCtl(id=msg.id, op="count", sock=msg.sock), es)
        if not isinstance(es, TcpSocket):
            raise BadRequest("not-supported", f"count mode needs a connected TCP socket, socket {msg.sock} "
                                              f"is {es.kind}")
        for name, value, lo, hi in (("mark", msg.mark, 0, MAX_FILL),
                                    ("interval_ns", msg.interval_ns, MIN_COUNT_INTERVAL_NS, MAX_COUNT_INTERVAL_NS),
                                    ("max_samples", msg.max_samples, 0, MAX_COUNT_SAMPLES),
                                    ("head", msg.head, 0, MAX_COUNT_HEAD)):
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise BadRequest("bad-option", f"ncount {name} must be {lo} - {hi}, got {value!r}")
        es.start_count(msg.mark, msg.interval_ns, msg.max_samples, msg.head)
        self.reply(m.Ok(id=msg.id))

    def _h_task(self, msg: m.Task) -> None:
        self.guard_op("task", msg)
        runner = self.endpoint.primitives
        if runner is None:
            raise BadRequest("not-supported", "this endpoint runs no primitives")
        runner.start(self, msg)
        self.counts["tasks"] += 1

    def _h_halt(self, msg: m.Halt) -> None:
        task = self.tasks.get(msg.task)
        if task is None:
            raise BadRequest("unknown-task", f"no task {msg.task} in this session")
        task.cancel()
        self.reply(m.Ok(id=msg.id))

    def _h_auth(self, msg: m.Auth) -> None:
        """The client proves its certificate chain: the endpoint verifies it
        up to an operator CA it trusts, checks the signature over this
        session's nonce and VP name, and from then on the session holds the
        chain's privileges (never a controller's word for them)."""
        from marionet.guard.chain import ChainError, verify_auth

        ep = self.endpoint
        if self.sockets or self.tasks:
            raise BadRequest("bad-state", "authenticate before opening sockets or starting tasks")
        if ep.trust is None:
            raise BadRequest("not-supported", "this endpoint trusts no operator CA, so it cannot check certificates")
        if not self.nonce:
            raise BadRequest("bad-state", "one Auth per session (the nonce is spent)")
        if not msg.chain or len(msg.chain) > 8 or sum(len(c) for c in msg.chain) > 64 * 1024:
            raise BadRequest("auth", "the chain must hold 1-8 certificates, 64 KiB in all")
        if len(msg.monitors) > 8 or sum(len(w) for w in msg.monitors) > 8 << 20:
            raise BadRequest("auth", "at most 8 monitors, 8 MiB in all")
        nonce, self.nonce = self.nonce, b""
        try:
            vc = ep.trust.verify(msg.chain, roles=("client",))
            verify_auth(vc, msg.signature, nonce, ep.config.name)
        except ChainError as exc:
            ep.auditor.write({"event": "auth-refused", **ep._who(self.principal), "from": self.peer,
                              "vp": ep.config.name, "code": exc.code, "reason": str(exc)})
            raise BadRequest("auth", f"{exc.code}: {exc}") from None
        if self.tls_fingerprint is not None and vc.fingerprint != self.tls_fingerprint:
            raise BadRequest("auth", "the chain's leaf is not the certificate this connection's TLS presented")
        supplied = {}
        if msg.monitors:
            from marionet.guard.monitor import MonitorError, MonitorModule

            for i, wasm in enumerate(msg.monitors):
                try:
                    mod = MonitorModule.from_bytes(bytes(wasm), name=f"supplied-{i}")
                except MonitorError as exc:
                    raise BadRequest("bad-monitor", f"supplied monitor {i}: {exc}") from None
                supplied[mod.digest] = mod
        principal = ep.trust.principal(vc)
        if principal.primitive is None and self.principal.primitive:
            principal = principal.for_primitive(self.principal.primitive)
        sguard = ep.guard.open(principal, ep, supplied_monitors=supplied)  # GuardDenied: reply "denied"
        try:
            ep.move_session(self.principal, principal, self.local)
        except BadRequest:
            sguard.close()
            raise
        self.reauthenticate(principal, sguard)
        if hasattr(self.outlet, "principal"):
            self.outlet.principal = principal  # type: ignore[attr-defined]
        ep.audit_session(self, "auth")
        from marionet.guard.privileges import explain

        self.reply(m.Ok(id=msg.id, value={"name": principal.name, "role": principal.role, "auth": principal.auth,
                                          "grants": explain(vc.grants)}))

    _handlers: dict[type, Callable[["Session", Any], None]] = {
        m.Info: _h_info,
        m.Auth: _h_auth,
        m.Ping: _h_ping,
        m.NOpen: _h_nopen,
        m.NClose: _h_nclose,
        m.NSend: _h_nsend,
        m.NSendV: _h_nsendv,
        m.NCap: _h_ncap,
        m.NCtl: _h_nctl,
        m.NCount: _h_ncount,
        m.Task: _h_task,
        m.Halt: _h_halt,
    }

    # ------------------------------------------------------------- lifecycle
    def _sweep(self) -> None:
        if self.closed:
            return
        now = time.time_ns()
        for es in list(self.sockets.values()):
            sweep = getattr(es, "sweep_stamps", None)
            if sweep is not None:
                sweep(now)
            if isinstance(es, DatagramSocket):
                es.check_kernel_drops()
        self._sweeper = self.loop.call_later(1.0, self._sweep)

    def close(self) -> None:
        """Close every socket and halt every task of this session."""
        if self.closed:
            return
        self.closed = True
        self._sweeper.cancel()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        for task in list(self.tasks.values()):
            task.cancel()
        for es in list(self.sockets.values()):
            self._close_socket(es)
        self.sguard.close()
        self._held.clear()
        self._stalled.clear()
        if self._release_handle is not None:
            self._release_handle.cancel()
            self._release_handle = None
