"""Endpoint sockets: UDP, raw IPv4/IPv6, TCP connect and TCP listen.

Each class wraps one kernel socket owned by one session. Received data,
transmit timestamps, ICMP errors and TCP state changes become notifications
on that session; sends are queued per socket so they leave in request order
even when scheduled for a later time. Datagram sends are handed to the
endpoint's send engine (a dedicated sender process when available, so
spinning to a deadline never stalls the event loop); TCP sends run on the
event loop because a stream write may block.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marionet.endpoint import bpf, sockopt as so
from marionet.endpoint import timestamps as ts
from marionet.endpoint.addresses import (
    BadRequest,
    check_addr,
    check_port,
    family_const,
    peer_text,
    sockaddr,
)
from marionet.wire import messages as m

if TYPE_CHECKING:
    from marionet.endpoint.session import Session

#: A tagged send whose kernel stamp has not arrived after this long is
#: reported with its user-space send time instead (never silently lost).
STAMP_GRACE_NS = 2_000_000_000
#: Tagged sends due within this when handed to the sender process keep the
#: socket unwatched until they are out (see ``DatagramSocket._go_quiet``).
QUIET_HORIZON_NS = 5_000_000
#: Longest a socket stays unwatched that way.
QUIET_MAX_S = 0.002


@dataclass(slots=True)
class PendingTag:
    tag: int
    nbytes: int
    at: int | None
    user_ns: int


@dataclass(slots=True)
class DatagramJob:
    """One datagram send, ready for the kernel."""

    esock: "DatagramSocket"
    data: bytes
    addr: tuple | None
    at: int | None
    tag: int | None
    key: int
    ttl: int | None
    tos: int | None
    df: bool | None
    later: bool = False  # due beyond QUIET_HORIZON_NS when handed to the engine


RCVBUF_BYTES = 8 * 1024 * 1024
SO_RCVBUFFORCE = 33


def grow_rcvbuf(sock: socket.socket) -> None:
    """TX stamps are charged to the receive buffer: at high send rates the
    default (rmem_max, ~208 KiB) overflows and the kernel drops stamps
    silently. As root, force a larger buffer; otherwise take what we get
    (late stamps are then reported with user-space times, never lost)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        except OSError:
            pass


SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO = struct.Struct("9I")  # SK_MEMINFO_*: ..., [8] = SK_MEMINFO_DROPS


def socket_drops(sock: socket.socket) -> int | None:
    """The kernel's count of packets this socket dropped (receive buffer
    full, or its filter failing to allocate), or None if unavailable."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
    except OSError:
        return None
    if len(raw) < _MEMINFO.size:
        return None
    return _MEMINFO.unpack(raw)[8]


def close_off_loop(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Closing a packet socket takes the kernel 8–15 ms (it waits for an RCU
    grace period); do it on a worker thread so no session stalls."""
    loop.run_in_executor(None, sock.close)


def errno_text(err: int) -> str:
    name = errno_mod.errorcode.get(err, str(err))
    return f"{name}: {os.strerror(err)}"


class EpSocket:
    """Common parts: identity, the owning session, close bookkeeping."""

    kind = "socket"
    # What the guard reads (``marionet.guard.core.SockView``).
    ipproto: int | None = None
    hdrincl = False
    raddr: str | None = None
    rport: int | None = None

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int) -> None:
        self.session = session
        self.sid = sid
        self.sock = sock
        self.family = family
        self.closed = False
        self.loop = session.loop

    # -- helpers ----------------------------------------------------------
    def local(self) -> tuple[str | None, int | None]:
        try:
            return peer_text(self.sock.getsockname())
        except OSError:
            return None, None

    def notify(self, msg: m.Message) -> None:
        if not self.closed:
            self.session.notify(msg)

    def deliver_data(self, data: bytes, peer: str | None, port: int | None,
                     time_ns: int, source: str, ttl: int | None = None, precious: bool = False) -> None:
        """Received data passes the guard, then becomes an ``NData``."""
        if self.session.guard_data(self, data, peer) and not self.closed:
            self.session.notify(m.NData(sock=self.sid, time_ns=time_ns, ts_source=source,  # type: ignore[arg-type]
                                        data=data, peer=peer, port=port, ttl=ttl), precious)

    def enqueue(self, item: m.SendItem) -> None:
        raise BadRequest("not-supported", f"{self.kind} sockets cannot send")

    def capture(self, program: list[tuple[int, int, int, int]], until: int | None) -> None:
        raise BadRequest("not-supported", f"ncap needs a raw socket, not {self.kind}")

    def shutdown(self, at: int | None) -> None:
        raise BadRequest("not-supported", f"shutdown needs a TCP socket, not {self.kind}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (ValueError, OSError):
            pass
        self.sock.close()


# ---------------------------------------------------------------------------
# Datagram sockets (UDP, raw)
# ---------------------------------------------------------------------------


class DatagramSocket(EpSocket):
    """UDP or raw: per-send destination, kernel TX stamps keyed per send."""

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int) -> None:
        super().__init__(session, sid, sock, family)
        self._next_key = 0
        self._tags: dict[int, PendingTag] = {}
        self._queued = 0  # jobs handed to the engine and not yet reported
        self._queued_later = 0  # of those, due beyond QUIET_HORIZON_NS when handed over
        self._quiet = False  # reader off while another process sends on this socket
        self._quiet_timer: asyncio.TimerHandle | None = None
        self._df_state: bool | None = None
        self.sent_packets = 0
        self.sent_bytes = 0
        self._kernel_drops: dict[int, int] = {}  # fd -> sk_drops already reported
        sock.setblocking(False)
        grow_rcvbuf(sock)
        ts.enable_rx_timestamps(sock)
        ts.enable_tx_timestamps_on_request(sock)
        self.loop.add_reader(sock.fileno(), self._on_readable)

    # -- kernel drops --------------------------------------------------------
    def receive_sockets(self) -> list[socket.socket]:
        """Sockets whose receive queue feeds this one's notifications."""
        return [self.sock]

    def check_kernel_drops(self) -> None:
        """Report datagrams the kernel dropped since the last check.

        A flood that outruns us overflows the socket's receive buffer; the
        kernel counts those (sk_drops, via SO_MEMINFO) and we say so in an
        ``NDrop`` of kind "kernel", so nothing is lost without a report."""
        for sock in self.receive_sockets():
            drops = socket_drops(sock)
            if drops is None:
                continue
            seen = self._kernel_drops.get(sock.fileno(), 0)
            if drops > seen:
                self._kernel_drops[sock.fileno()] = drops
                self.session.record_drop("kernel", 0, drops - seen, sock=self.sid)

    # -- sending -------------------------------------------------------------
    def destination(self, item: m.SendItem) -> tuple | None:
        raise NotImplementedError

    def enqueue(self, item: m.SendItem) -> None:
        if self.closed:
            raise BadRequest("closed", f"socket {self.sid} is closed")
        if item.fill:
            raise BadRequest("not-supported", "fill needs a connected TCP socket")
        if len(item.data) > 65535:
            raise BadRequest("too-big", f"{len(item.data)} bytes exceed 65535")
        if item.ttl is not None and not 0 <= item.ttl <= 255:
            raise BadRequest("bad-option", f"ttl {item.ttl} not in 0..255")
        if item.tos is not None and not 0 <= item.tos <= 255:
            raise BadRequest("bad-option", f"tos {item.tos} not in 0..255")
        addr = self.destination(item)
        key = self._next_key
        self._next_key = (key + 1) & 0xFFFFFFFF
        job = DatagramJob(self, item.data, addr, item.at, item.tag, key, item.ttl, item.tos, item.df)
        if item.tag is not None:
            self._tags[key] = PendingTag(item.tag, len(item.data), item.at, 0)
        self._queued += 1
        engine = self.session.endpoint.engine
        if item.at is not None and item.at - time.time_ns() > QUIET_HORIZON_NS:
            self._queued_later += 1
            job.later = True
        elif (item.tag is not None and engine.name == "process" and not self._queued_later
              and not self._quiet):
            self._go_quiet()  # only a tagged send puts a stamp on the socket mid-flight
        engine.submit(job)

    def _go_quiet(self) -> None:
        """Stop watching the socket until the sender has sent what is due now.

        Why: a tagged send's kernel TX stamp is queued on this socket at the
        driver, *before* the packet travels on; if the event loop sleeps in
        epoll on the socket, the kernel wakes it right there (an IPI on
        another CPU), and the loop then reads the socket while the probe is
        still in flight.  Both slow the probe down by microseconds on a VM.
        Everything received meanwhile waits in the socket buffer with its
        kernel stamp and is read when the sender reports the sends done.
        """
        self._quiet = True
        self.loop.remove_reader(self.sock.fileno())
        self._quiet_timer = self.loop.call_later(QUIET_MAX_S, self._end_quiet)

    def _end_quiet(self) -> None:
        """Watch the socket again and read what came meanwhile; also after
        QUIET_MAX_S, so a client that keeps sends flowing cannot starve
        this socket's receiving."""
        if not self._quiet:
            return
        self._quiet = False
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
            self._on_readable()

    def cmsgs(self, job: DatagramJob) -> list[tuple[int, int, bytes]]:
        out = [ts.ts_opt_id_cmsg(job.key), ts.TX_STAMP_REQUEST] if job.tag is not None else []
        if job.ttl is not None:
            if self.family == 6:
                out.append((so.SOL_IPV6, so.IPV6_HOPLIMIT, job.ttl.to_bytes(4, "little", signed=True)))
            else:
                out.append((so.SOL_IP, so.IP_TTL, job.ttl.to_bytes(4, "little", signed=True)))
        if job.tos is not None:
            if self.family == 6:
                out.append((so.SOL_IPV6, so.IPV6_TCLASS, job.tos.to_bytes(4, "little", signed=True)))
            else:
                out.append((so.SOL_IP, so.IP_TOS, job.tos.to_bytes(1, "little")))
        return out

    def apply_df(self, df: bool | None) -> None:
        """DF is a socket option, not a cmsg: switch it only when it changes."""
        if df is None or df == self._df_state:
            return
        if self.family == 4:
            mode = 2 if df else so.IP_PMTUDISC_DONT  # IP_PMTUDISC_DO = 2
            self.sock.setsockopt(so.SOL_IP, so.IP_MTU_DISCOVER, mode)
        else:
            mode = 2 if df else 0
            self.sock.setsockopt(so.SOL_IPV6, 23, mode)  # IPV6_MTU_DISCOVER
        self._df_state = df

    def on_sent(self, job: DatagramJob, nbytes: int, err: int, user_ns: int,
                reason: str | None = None) -> None:
        """The engine's report for one job (err 0 = sent); ``reason`` says
        why a job failed when the errno alone would not (e.g. the sender
        process died and was restarted)."""
        self._queued -= 1
        if job.later:
            self._queued_later -= 1
        if err:
            pending = self._tags.pop(job.key, None)
            if pending is not None:
                text = errno_text(err) if reason is None else f"{errno_text(err)} ({reason})"
                self.notify(m.NTag(sock=self.sid, tag=pending.tag, time_ns=None, ts_source=None,
                                   nbytes=0, error=text, at=job.at))
        else:
            self.sent_packets += 1
            self.sent_bytes += nbytes
            pending = self._tags.get(job.key)
            if pending is not None:
                pending.nbytes = nbytes
                pending.user_ns = user_ns
        if self._quiet and self._queued == self._queued_later:
            self._end_quiet()

    # -- receiving -------------------------------------------------------------
    def _on_readable(self) -> None:
        if self.closed:
            return
        try:
            for item in ts.read_errqueue(self.sock, limit=4096):
                self._on_errqueue(item)
            for _ in range(256):
                got = ts.recv_stamped(self.sock)
                if got is None:
                    break
                self.on_received(got)
        except OSError as exc:
            self.notify(m.NStat(sock=self.sid, time_ns=time.time_ns(), state="error",
                                reason=errno_text(exc.errno or 0)))

    def on_received(self, got: ts.Received) -> None:
        peer, port = peer_text(got.peer)
        self.deliver_data(got.data, peer, port, got.time_ns, got.ts_source, got.ttl)

    def _on_errqueue(self, item: ts.ErrQueueItem) -> None:
        if isinstance(item, ts.TxStamp):
            pending = self._tags.pop(item.key, None)
            if pending is not None:
                self.notify(m.NTag(sock=self.sid, tag=pending.tag, time_ns=item.time_ns,
                                   ts_source="kernel", nbytes=pending.nbytes, at=pending.at))
        elif isinstance(item, ts.IcmpError):
            self.notify(m.NIcmp(sock=self.sid, time_ns=item.time_ns, ts_source=item.ts_source,
                                peer=item.offender, icmp_type=item.icmp_type,
                                icmp_code=item.icmp_code, errno=item.errno,
                                data=item.payload, info=item.info))
        else:  # a local error such as EMSGSIZE
            self.notify(m.NIcmp(sock=self.sid, time_ns=time.time_ns(), ts_source="user",
                                peer=None, icmp_type=-1, icmp_code=-1, errno=item.errno,
                                data=item.payload, info=item.info))

    def close(self) -> None:
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        self._quiet = False
        super().close()

    def sweep_stamps(self, now_ns: int) -> None:
        """Report tagged sends whose kernel stamp never came, with user time."""
        if self._queued or not self._tags:
            return
        for key, pending in list(self._tags.items()):
            if pending.user_ns and now_ns - pending.user_ns > STAMP_GRACE_NS:
                del self._tags[key]
                self.notify(m.NTag(sock=self.sid, tag=pending.tag, time_ns=pending.user_ns,
                                   ts_source="user", nbytes=pending.nbytes, at=pending.at))

    @property
    def busy(self) -> bool:
        return self._queued > 0


class UdpSocket(DatagramSocket):
    kind = "udp"

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int) -> None:
        super().__init__(session, sid, sock, family)
        ts.enable_recverr(sock)
        ts.enable_recv_ttl(sock)
        try:
            self.raddr, self.rport = peer_text(sock.getpeername())
            self.connected = True
        except OSError:
            self.connected = False

    def destination(self, item: m.SendItem) -> tuple | None:
        if item.dst is None and item.port is None and self.connected:
            return None
        if item.dst is None:
            raise BadRequest("bad-address", "UDP sends need dst and port (or a connected socket)")
        dst = check_addr(item.dst, self.family, "dst")
        port = check_port(item.port, "port")
        if port == 0:
            raise BadRequest("bad-port", "cannot send to port 0")
        return sockaddr(dst, port, self.family)


class RawSocket(DatagramSocket):
    """Raw IP. IPv4 ``hdrincl``: the caller writes the IP header. Otherwise
    the kernel writes it, with per-send TTL/hop limit, TOS and DF.

    Receiving is off until ``ncap``: a reject-all filter sits on the socket,
    so nothing queues that nobody asked for.
    """

    kind = "raw"

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int,
                 ipproto: int, hdrincl: bool) -> None:
        bpf.attach(sock, bpf.REJECT_ALL, flush=True)
        super().__init__(session, sid, sock, family)
        self.ipproto = ipproto
        # IPPROTO_RAW (255) on IPv4 implies IP_HDRINCL in the kernel: the
        # caller writes the header whether it asked for hdrincl or not, so
        # the header checks and the TTL/TOS rules must apply to it too.
        self.hdrincl = hdrincl or (family == 4 and ipproto == socket.IPPROTO_RAW)
        self.capsock: socket.socket | None = None
        self.cap_until: asyncio.TimerHandle | None = None
        self.cap_packets = 0

    def destination(self, item: m.SendItem) -> tuple | None:
        if item.dst is None:
            if self.hdrincl and len(item.data) >= 20:
                dst = socket.inet_ntoa(item.data[16:20])
                return (dst, 0)
            raise BadRequest("bad-address", "raw sends need dst")
        return sockaddr(check_addr(item.dst, self.family, "dst"), 0, self.family)

    def cmsgs(self, job: DatagramJob) -> list[tuple[int, int, bytes]]:
        if self.hdrincl:  # the header the caller wrote carries TTL and TOS
            return [ts.ts_opt_id_cmsg(job.key), ts.TX_STAMP_REQUEST] if job.tag is not None else []
        return super().cmsgs(job)

    def enqueue(self, item: m.SendItem) -> None:
        if self.hdrincl and (item.ttl is not None or item.tos is not None or item.df is not None):
            raise BadRequest("bad-option",
                             "ttl/tos/df are set in the IP header the caller writes (hdrincl)")
        if self.hdrincl and len(item.data) < 20:
            raise BadRequest("bad-packet", "hdrincl data must start with a 20-byte IPv4 header")
        super().enqueue(item)

    def receive_sockets(self) -> list[socket.socket]:
        return [self.sock] if self.capsock is None else [self.sock, self.capsock]

    # -- capture ----------------------------------------------------------------
    def capture(self, program: list[tuple[int, int, int, int]], until: int | None) -> None:
        self.stop_capture(notify=False)
        self.cap_packets = 0
        if self.family == 4:
            bpf.attach(self.sock, program, flush=True)
        else:
            # Raw IPv6 sockets never show the IPv6 header to a filter, so
            # tcpdump expressions could not work there: capture full packets
            # on a packet socket instead and report them on this socket id.
            cap = bpf.open_capture_socket(socket.AF_INET6, ifname=self.session.endpoint.device_of(self))
            bpf.attach(cap, program, flush=True)
            cap.setblocking(False)
            self.capsock = cap
            self.loop.add_reader(cap.fileno(), self._on_cap_readable)
        if until is not None:
            delay = (until - time.time_ns()) / 1e9
            self.cap_until = self.loop.call_later(max(0.0, delay), self._capture_ended)

    def _capture_ended(self) -> None:
        self.cap_until = None
        self.stop_capture(notify=True)

    def stop_capture(self, notify: bool) -> None:
        if self.cap_until is not None:
            self.cap_until.cancel()
            self.cap_until = None
        if self.capsock is not None:
            # Drain what already matched before closing the capture socket,
            # and report what its buffer could not hold.
            self._on_cap_readable()
            self.check_kernel_drops()
            self._kernel_drops.pop(self.capsock.fileno(), None)
            try:
                self.loop.remove_reader(self.capsock.fileno())
            except (ValueError, OSError):
                pass
            close_off_loop(self.loop, self.capsock)
            self.capsock = None
        elif self.family == 4 and not self.closed:
            self._on_readable()
            bpf.attach(self.sock, bpf.REJECT_ALL, flush=True)
        if notify:
            self.notify(m.NCapEnd(sock=self.sid, time_ns=time.time_ns(), packets=self.cap_packets))

    def on_received(self, got: ts.Received) -> None:
        self.cap_packets += 1
        data = got.data
        ttl = data[8] if self.family == 4 and len(data) >= 20 else got.ttl
        peer, _ = peer_text(got.peer)
        self.deliver_data(data, peer, None, got.time_ns, got.ts_source, ttl)

    def _on_cap_readable(self) -> None:
        cap = self.capsock
        if cap is None:
            return
        for _ in range(256):
            try:
                got = ts.recv_stamped(cap)
            except OSError:
                break
            if got is None:
                break
            self.cap_packets += 1
            data = got.data
            peer = None
            ttl = None
            if len(data) >= 40 and data[0] >> 4 == 6:
                peer = socket.inet_ntop(socket.AF_INET6, data[8:24])
                ttl = data[7]
            self.deliver_data(data, peer, None, got.time_ns, got.ts_source, ttl)

    def close(self) -> None:
        if self.closed:
            return
        if self.cap_until is not None:
            self.cap_until.cancel()
        if self.capsock is not None:
            try:
                self.loop.remove_reader(self.capsock.fileno())
            except (ValueError, OSError):
                pass
            close_off_loop(self.loop, self.capsock)
            self.capsock = None
        super().close()


# ---------------------------------------------------------------------------
# TCP
# ---------------------------------------------------------------------------

#: Count mode reads this much per receive call (one buffer per socket).
COUNT_READ_BYTES = 256 * 1024
#: Fill writes: a pseudo-random block written in chunks as the socket drains.
FILL_BLOCK_BYTES = 1 << 20
FILL_CHUNK_BYTES = 256 * 1024
#: The first write of a fill is this small, so its TX stamp is the first
#: segment's, not that of a large write's last byte.
FILL_FIRST_BYTES = 1024
_fill_block: bytes | None = None


def fill_block() -> bytes:
    """The pseudo-random bytes a fill cycles through (one per process:
    incompressible, and not worth regenerating per transfer)."""
    global _fill_block
    if _fill_block is None:
        _fill_block = os.urandom(FILL_BLOCK_BYTES)
    return _fill_block


class ByteCounter:
    """Count mode's state: bounded whatever the transfer's size."""

    __slots__ = ("mark", "interval_ns", "max_samples", "head_limit", "nbytes", "first_ns", "last_ns",
                 "mark_bytes", "mark_ns", "head", "samples", "lost", "next_ns", "ts_source", "buf", "ended")

    def __init__(self, mark: int, interval_ns: int, max_samples: int, head: int) -> None:
        self.mark, self.interval_ns, self.max_samples, self.head_limit = mark, interval_ns, max_samples, head
        self.nbytes = self.first_ns = self.last_ns = self.mark_bytes = self.mark_ns = 0
        self.head = bytearray()
        self.samples: list[tuple[int, int]] = []
        self.lost = 0
        self.next_ns = 0
        self.ts_source = "kernel"
        self.buf = bytearray(COUNT_READ_BYTES)
        self.ended = False

    def add(self, n: int, t_ns: int, source: str) -> None:
        if source != "kernel":
            self.ts_source = "user"
        if not self.nbytes:
            self.first_ns = t_ns
        before = self.nbytes
        self.nbytes += n
        self.last_ns = t_ns
        if before < self.mark <= self.nbytes or (self.mark == 0 and before == 0):
            self.mark_bytes, self.mark_ns = self.nbytes, t_ns
        if t_ns >= self.next_ns:
            self.next_ns = t_ns + self.interval_ns
            self._sample(t_ns)

    def _sample(self, t_ns: int) -> None:
        if len(self.samples) < self.max_samples:
            self.samples.append((t_ns, self.nbytes))
        else:
            self.lost += 1

    def summary(self, sid: int, state: str, reason: str | None) -> m.NCountEnd:
        if self.nbytes and (not self.samples or self.samples[-1][1] != self.nbytes):
            self._sample(self.last_ns)  # the last receive is always a sample
        return m.NCountEnd(sock=sid, time_ns=time.time_ns(), state=state, nbytes=self.nbytes,
                           first_ns=self.first_ns, last_ns=self.last_ns, mark_bytes=self.mark_bytes,
                           mark_ns=self.mark_ns, head=bytes(self.head), samples=self.samples,
                           samples_lost=self.lost, ts_source=self.ts_source,  # type: ignore[arg-type]
                           reason=reason)


def recv_count(sock: socket.socket, buf: bytearray) -> tuple[int, int, str] | None:
    """One receive into ``buf``: (bytes, kernel rx ns, ts source), None when
    nothing is queued; (0, …) at the peer's FIN. For TCP the kernel's stamp
    is that of the last segment the read consumed."""
    try:
        n, anc, _flags, _addr = sock.recvmsg_into([buf], 512, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    t = ts._kernel_time(anc)
    if t is None:
        return n, time.time_ns(), "user"
    return n, t, "kernel"


@dataclass(slots=True)
class FillState:
    """A fill in flight: the stream keys of its first and last bytes."""

    nbytes: int
    tag: int | None
    at: int | None
    first_key: int
    last_key: int
    first_ns: int | None = None
    last_ns: int | None = None
    source: str = "kernel"
    written: int = 0
    done_ns: int = 0  # user time the last byte was handed to the kernel (0: still writing)


class TcpSocket(EpSocket):
    """A connected TCP stream: ordered scheduled writes, kernel stamps keyed
    by byte offset, ``NStat`` on every state change."""

    kind = "tcp"

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int) -> None:
        super().__init__(session, sid, sock, family)
        self._queue: deque[tuple[str, Any]] = deque()
        self._pump_task: asyncio.Task | None = None
        self._bytes = 0
        self._tags: dict[int, PendingTag] = {}
        self.peer_closed = False
        self.failed = False
        self.reading = True
        self.counter: ByteCounter | None = None
        self._fills: list[FillState] = []
        # The peer's address, read once now: once both directions are
        # closed getpeername() fails (ENOTCONN), and asking after each recv
        # lost the last data of a peer that closed right after sending.
        try:
            self.peer, self.port = peer_text(sock.getpeername())
        except OSError:
            self.peer, self.port = None, None
        self.raddr, self.rport = self.peer, self.port
        sock.setblocking(False)
        ts.enable_rx_timestamps(sock)
        try:
            ts.enable_tx_timestamps(sock)
            self._stamps = True
        except OSError:
            self._stamps = False
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def state(self, state: str, reason: str | None = None, **kw: Any) -> None:
        self.notify(m.NStat(sock=self.sid, time_ns=time.time_ns(), state=state, reason=reason, **kw))

    def enqueue(self, item: m.SendItem) -> None:
        if self.closed:
            raise BadRequest("closed", f"socket {self.sid} is closed")
        if item.dst is not None or item.port is not None:
            raise BadRequest("bad-address", "a TCP socket is connected: no dst/port per send")
        self._queue.append(("send", item))
        self._kick()

    # -- count mode ------------------------------------------------------------
    def start_count(self, mark: int, interval_ns: int, max_samples: int, head: int) -> None:
        """Count what arrives from now on instead of shipping it (``NCount``)."""
        if self.counter is not None:
            raise BadRequest("bad-state", f"socket {self.sid} is already in count mode")
        self.counter = ByteCounter(mark, interval_ns, max_samples, head)
        if self.peer_closed or self.failed:
            self._end_count("peer-closed" if self.peer_closed else "error", None)
        elif not self.reading:
            self.resume_reading()  # count mode needs no room in the notification buffer

    def _end_count(self, state: str, reason: str | None) -> None:
        c = self.counter
        if c is None or c.ended:
            return
        c.ended = True
        if not self.closed:
            self.session.notify(c.summary(self.sid, state, reason), urgent=True)

    def _read_counting(self, c: ByteCounter) -> None:
        """Count mode's reader (the guard sees no data: none leaves the
        endpoint; the notification buffer is not used either)."""
        for _ in range(64):
            got = recv_count(self.sock, c.buf)
            if got is None:
                return
            n, t, src = got
            if not n:
                self.peer_closed = True
                self._stop_reading()
                self.state("peer-closed")
                self._end_count("peer-closed", None)
                return
            if len(c.head) < c.head_limit:
                c.head += c.buf[:min(n, c.head_limit - len(c.head))]
            c.add(n, t, src)

    # -- fill --------------------------------------------------------------------
    async def _write_fill(self, item: m.SendItem) -> bool:
        """Write ``item.fill`` endpoint-generated bytes; False on failure
        (already reported). The ``NFill`` goes out once the last byte's
        kernel TX stamp is in (or, without one, its hand-off time)."""
        n = item.fill
        start = self._bytes
        first = min(n, FILL_FIRST_BYTES)
        fs = FillState(n, item.tag, item.at, ts.tcp_key_after(start, first), ts.tcp_key_after(start, n))
        self._fills.append(fs)
        block = memoryview(fill_block())
        off = 0
        try:
            while fs.written < n:
                if self.closed:
                    return False
                c = first if fs.written == 0 else min(n - fs.written, FILL_CHUNK_BYTES, len(block) - off)
                await self.loop.sock_sendall(self.sock, block[off:off + c])
                if fs.written == 0 and not self._stamps:
                    fs.first_ns, fs.source = time.time_ns(), "user"
                fs.written += c
                self._bytes += c
                off = (off + c) % len(block)
        except OSError as exc:
            self._fills.remove(fs)
            text = errno_text(exc.errno or 0)
            self._fill_done(fs, error=text)
            self.state("error", text)
            return False
        fs.done_ns = time.time_ns()
        if not self._stamps:
            fs.last_ns = fs.done_ns
            self._fills.remove(fs)
            self._fill_done(fs)
        elif fs.last_ns is not None:
            self._fills.remove(fs)
            self._fill_done(fs)
        elif not self.reading:
            self._poll_stamps()
        return True

    def _poll_stamps(self) -> None:
        """With the reader off (the peer closed: the socket would read as
        ready for ever), look at the error queue on a timer until the fill's
        last stamp is in; ``sweep_stamps`` ends the wait after the grace."""
        if self.closed or not self._fills or self.reading:
            return
        try:
            for item in ts.read_errqueue(self.sock):
                if isinstance(item, ts.TxStamp):
                    self._fill_stamp(item.key, item.time_ns)
        except OSError:
            pass
        if self._fills:
            self.loop.call_later(0.002, self._poll_stamps)

    def _fill_done(self, fs: FillState, error: str | None = None) -> None:
        if self.closed:
            return
        self.session.notify(m.NFill(sock=self.sid, time_ns=time.time_ns(), nbytes=fs.written,
                                    first_ns=fs.first_ns, last_ns=fs.last_ns,
                                    ts_source=None if fs.first_ns is None and fs.last_ns is None
                                    else fs.source,  # type: ignore[arg-type]
                                    tag=fs.tag, at=fs.at, error=error), urgent=True)

    def _fill_stamp(self, key: int, t_ns: int) -> None:
        """A TX stamp covers every byte up to its key (TCP coalesces)."""
        for fs in list(self._fills):
            if fs.first_ns is None and _u32_le(fs.first_key, key):
                fs.first_ns = t_ns
            if fs.written == fs.nbytes and _u32_le(fs.last_key, key):
                fs.last_ns = t_ns
                if fs.done_ns:
                    self._fills.remove(fs)
                    self._fill_done(fs)

    def shutdown(self, at: int | None) -> None:
        self._queue.append(("shutdown", at))
        self._kick()

    def _kick(self) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = self.loop.create_task(self._pump())

    async def _pump(self) -> None:
        while self._queue and not self.closed:
            op, arg = self._queue[0]
            at = arg.at if op == "send" else arg
            if at is not None:
                await wait_until(at)
            self._queue.popleft()
            if op == "shutdown":
                try:
                    self.sock.shutdown(socket.SHUT_WR)
                    self.state("shutdown")
                except OSError as exc:
                    self.state("error", errno_text(exc.errno or 0))
                continue
            item: m.SendItem = arg
            if item.fill:
                if item.data:
                    try:
                        await self.loop.sock_sendall(self.sock, item.data)
                    except OSError as exc:
                        text = errno_text(exc.errno or 0)
                        self._fill_done(FillState(item.fill, item.tag, item.at, 0, 0), error=text)
                        self.state("error", text)
                        continue
                    self._bytes += len(item.data)
                await self._write_fill(item)
                continue
            if not item.data:
                continue
            key = ts.tcp_key_after(self._bytes, len(item.data))
            stamped = item.tag is not None and self._stamps
            if stamped:
                # Registered before the write: the kernel's stamp can reach
                # the error queue (and our reader) before sock_sendall returns.
                self._tags[key] = PendingTag(item.tag, len(item.data), item.at, time.time_ns())
            try:
                await self.loop.sock_sendall(self.sock, item.data)
            except OSError as exc:
                if stamped:
                    self._tags.pop(key, None)
                if item.tag is not None:
                    self.notify(m.NTag(sock=self.sid, tag=item.tag, time_ns=None, ts_source=None,
                                       error=errno_text(exc.errno or 0), at=item.at))
                self.state("error", errno_text(exc.errno or 0))
                continue
            self._bytes += len(item.data)
            if item.tag is not None and not self._stamps:
                self.notify(m.NTag(sock=self.sid, tag=item.tag, time_ns=time.time_ns(),
                                   ts_source="user", nbytes=len(item.data), at=item.at))

    def _on_readable(self) -> None:
        if self.closed:
            return
        try:
            for item in ts.read_errqueue(self.sock):
                if isinstance(item, ts.TxStamp):
                    # A stamp covers every byte up to its key (TCP coalesces).
                    for key in [k for k in self._tags if _u32_le(k, item.key)]:
                        p = self._tags.pop(key)
                        self.notify(m.NTag(sock=self.sid, tag=p.tag, time_ns=item.time_ns,
                                           ts_source="kernel", nbytes=p.nbytes, at=p.at))
                    if self._fills:
                        self._fill_stamp(item.key, item.time_ns)
            if self.counter is not None:
                if self.reading:
                    self._read_counting(self.counter)
                return
            for _ in range(64):
                if not self.session.stream_room():
                    # Backpressure: leave the data in the kernel, whose
                    # window then slows the sender; resumed on release.
                    self._stop_reading()
                    self.session.stream_stalled(self)
                    return
                got = ts.recv_stamped(self.sock)
                if got is None:
                    return
                if not got.data:
                    self.peer_closed = True
                    self._stop_reading()
                    self.state("peer-closed")
                    return
                self.deliver_data(got.data, self.peer, self.port, got.time_ns, got.ts_source, precious=True)
        except OSError as exc:
            self._stop_reading()
            state = "reset" if exc.errno == errno_mod.ECONNRESET else (
                "timeout" if exc.errno == errno_mod.ETIMEDOUT else "error")
            self.state(state, errno_text(exc.errno or 0))
            self.failed = True
            self._end_count(state, errno_text(exc.errno or 0))
            for fs in self._fills:
                self._fill_done(fs, error=errno_text(exc.errno or 0))
            self._fills.clear()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.loop.remove_reader(self.sock.fileno())

    def resume_reading(self) -> None:
        """Room again in the session's buffer: read on (and at once)."""
        if self.closed or self.reading or self.peer_closed or self.failed:
            return
        self.reading = True
        self.loop.add_reader(self.sock.fileno(), self._on_readable)
        self.loop.call_soon(self._on_readable)

    def sweep_stamps(self, now_ns: int) -> None:
        for key, p in list(self._tags.items()):
            if now_ns - p.user_ns > STAMP_GRACE_NS:
                del self._tags[key]
                self.notify(m.NTag(sock=self.sid, tag=p.tag, time_ns=p.user_ns,
                                   ts_source="user", nbytes=p.nbytes, at=p.at))
        for fs in list(self._fills):
            if fs.done_ns and now_ns - fs.done_ns > STAMP_GRACE_NS:
                # the last stamp never came: its hand-off time, said so
                self._fills.remove(fs)
                fs.last_ns, fs.source = fs.done_ns, "user"
                self._fill_done(fs)

    def close(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
        if not self.closed:
            self._end_count("closed", None)
            for fs in self._fills:
                self._fill_done(fs, error="socket closed")
            self._fills.clear()
        super().close()


def _u32_le(a: int, b: int) -> bool:
    """a <= b in 32-bit sequence space."""
    return ((b - a) & 0xFFFFFFFF) < 0x80000000


#: accept() failures that last until descriptors or memory free up.
RESOURCE_ERRNOS = frozenset({errno_mod.EMFILE, errno_mod.ENFILE, errno_mod.ENOBUFS, errno_mod.ENOMEM})
ACCEPT_RETRY_S = 1.0


class TcpListener(EpSocket):
    kind = "tcp-listen"

    def __init__(self, session: "Session", sid: int, sock: socket.socket, family: int) -> None:
        super().__init__(session, sid, sock, family)
        self._retry: asyncio.TimerHandle | None = None
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._on_readable)

    def _resume_accept(self) -> None:
        self._retry = None
        if not self.closed:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        super().close()

    def _on_readable(self) -> None:
        for _ in range(32):
            try:
                conn, peer = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.notify(m.NStat(sock=self.sid, time_ns=time.time_ns(), state="error",
                                    reason=errno_text(exc.errno or 0)))
                if exc.errno in RESOURCE_ERRNOS:
                    # The pending connection stays queued and the socket stays
                    # readable: pause instead of spinning (and notifying) at
                    # full speed until descriptors free up.
                    self.loop.remove_reader(self.sock.fileno())
                    self._retry = self.loop.call_later(ACCEPT_RETRY_S, self._resume_accept)
                return
            addr, port = peer_text(peer)
            try:
                self.session.guard_op("accept", {"sock": self.sid, "peer": addr, "port": port}, self)
                child = self.session.adopt_tcp(conn, self.family)
            except Exception as exc:  # noqa: BLE001 - a refused accept must not kill the listener
                conn.close()
                self.notify(m.NStat(sock=self.sid, time_ns=time.time_ns(), state="refused",
                                    peer=addr, port=port, reason=str(exc)))
                continue
            self.notify(m.NStat(sock=self.sid, time_ns=time.time_ns(), state="accepted",
                                child=child.sid, peer=addr, port=port))


async def wait_until(at_ns: int, spin_ns: int = 1_000_000) -> None:
    """Sleep on the loop until shortly before ``at_ns``, then spin briefly.

    Used for TCP writes only; datagrams use the send engine.
    """
    delay = at_ns - time.time_ns() - spin_ns
    if delay > 0:
        await asyncio.sleep(delay / 1e9)
    while time.time_ns() < at_ns:
        pass


def make_socket(family: int, proto: str, ipproto: int | None) -> socket.socket:
    """Create the kernel socket for an ``NOpen``; clear errors for the rest."""
    af = family_const(family)
    if proto == "udp":
        return socket.socket(af, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    if proto in ("tcp", "tcp-listen"):
        return socket.socket(af, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if proto == "raw":
        if ipproto is None or not 0 <= ipproto <= 255:
            raise BadRequest("bad-option", f"raw sockets need ipproto in 0..255, not {ipproto!r}")
        if ipproto == 0 or ipproto == 255 and family == 6:
            raise BadRequest("bad-option", f"ipproto {ipproto} cannot be used on a raw IPv{family} socket")
        try:
            return socket.socket(af, socket.SOCK_RAW, ipproto)
        except PermissionError:
            raise BadRequest("no-privilege",
                             "raw sockets need CAP_NET_RAW, which this endpoint lacks") from None
    raise BadRequest("bad-proto", f"unknown proto {proto!r} (udp, tcp, tcp-listen, raw)")
