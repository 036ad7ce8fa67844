"""The scheduled sender: a dedicated process that puts packets on the wire on time.

Why a process: landing a send within microseconds of its requested time means
sleeping until shortly before it and then spinning on the clock.  A spinning
*thread* holds the GIL and starves the endpoint's asyncio loop; asyncio's own
timers land ~0.7 ms late.  So the daemon hands its sockets to a child process
(file descriptors over an AF_UNIX channel with SCM_RIGHTS) and sends it jobs
in batches; the child keeps

* one FIFO per socket — sends on a socket go out in submission order; a
  later job never overtakes an earlier one on the same socket (PacketLab's
  head-of-line semantics), and
* a heap of the FIFO heads by due time, across sockets,

sleeps until ``spin_ns`` before the earliest due time, spins on
``time.time_ns()`` (CLOCK_REALTIME, the clock kernel timestamps use) and calls
``sendmsg`` with the job's ancillary data (TTL/TOS or hop limit/traffic class
per send, and the ``SCM_TS_OPT_ID`` timestamp key).  Jobs whose ``at`` is
None or already past go out immediately, in order.

A train (timed sends closer together than the spin window) goes out of a
hot loop whose per-send work is the spin and one ``sendmsg``: each job's
arguments (buffers, cmsgs, address) are built when it arrives, and the
results are shipped and the channel read only in a gap of ≥ 300 µs before
the next send (bounded: the channel at least every 20 ms, results at most
16k or 20 ms old where a gap covers their encoding) — the native sender's
rule for its error queue.  Measured: a syscall here costs ≈2 µs, and the
old loop made two per send (a poll and a results write), so trains below
≈10 µs spacing fell behind the native sender.

The child is shared by every session, so no single job may end it: it
sleeps in chunks of at most ``_MAX_WAIT_MS`` (a far-future ``at`` just
waits), and a job that raises comes back as a failed result (EINVAL).
The parent (:class:`marionet.endpoint.procengine.ProcessEngine`) still
restarts it if it dies of anything else.

Results go back in batches: per job the byte count and a user-space time
taken just before ``sendmsg`` (a fallback only), or the errno.  The *kernel*
TX timestamps are not read here: the parent reads them from each socket's
error queue (:func:`marionet.endpoint.timestamps.read_errqueue`), because it
also reads ICMP errors there and a queue must have exactly one reader.  Give
each job a ``ts_key`` (UDP, raw v4/v6, AF_PACKET; kernel >= 6.13) so the
parent can match stamps to jobs.

TCP sockets do NOT go through the sender: stream sends are flow-controlled
and partial, which the daemon handles with asyncio (:meth:`Sender.add_socket`
refuses them).

A pending asynchronous socket error (an ICMP error for an *earlier* packet,
with IP_RECVERR) makes the kernel fail the next ``sendmsg`` once without
sending; both engines step over those errnos
(:func:`sendmsg_past_stale_errors`) so one probe's error does not
cost the next probe.  The child exits when the parent dies
(PR_SET_PDEATHSIG, bound to the thread that called :meth:`Sender.start` —
call it from the main thread) or when the channel reaches EOF.

Usage from asyncio::

    sender = Sender(); sender.start()
    sid = sender.add_socket(udp_sock)
    loop.add_reader(sender.fileno(), lambda: handle(sender.read_results()))
    sender.submit([SendJob(sock_id=sid, job_id=1, data=b"x",
                           addr=("127.0.0.1", 33434), at=t_ns, ttl=3, ts_key=1)])
"""

from __future__ import annotations

import ctypes
import errno
import gc
import heapq
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable, Optional, Union

import msgspec

from marionet.endpoint import sockopt as so

Addr = tuple[Union[str, int], ...]

_I32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_MAX_MSG = 160 * 1024  # stay below the SEQPACKET send buffer per message
_CHAN_BUF = 4 * 1024 * 1024
_RECV_BUF = 512 * 1024  # > any single channel message (jobs ≤ _MAX_MSG + one payload)
_DEFAULT_SPIN_NS = 1_000_000
_EAGAIN_WAIT_S = 0.1
#: Longest single poll in the child: poll() takes an int of ms, and a job
#: due in weeks must not overflow it; waking once a second costs nothing.
_MAX_WAIT_MS = 1000
#: Latest ``at`` accepted (ns since the epoch, ~year 2116): far enough for
#: any schedule, small enough for every clock arithmetic on it.
MAX_AT_NS = 2**62
#: Consecutive loop iterations that raised before the child gives up and
#: exits (so that the parent starts a fresh one instead of a spinning one).
_MAX_LOOP_ERRORS = 10


class SendJob(msgspec.Struct, array_like=True, frozen=True):
    """One packet to send.

    ``at``: requested send time, ns since the epoch on CLOCK_REALTIME; None or
    past = now.  ``addr``: destination for unconnected sockets (as for
    ``sendto``; None for connected ones).  ``ttl``/``tos``: per-send IPv4 TTL
    and TOS, or IPv6 hop limit and traffic class (not with IP_HDRINCL or
    AF_PACKET, where the caller writes the header).  ``ts_key``: u32 key of
    this send's kernel TX timestamp (``SCM_TS_OPT_ID``).
    """

    sock_id: int
    job_id: int
    data: bytes
    at: Optional[int] = None
    addr: Optional[Addr] = None
    ttl: Optional[int] = None
    tos: Optional[int] = None
    ts_key: Optional[int] = None
    df: Optional[bool] = None  # IPv4/IPv6 don't-fragment for this send (a socket option, set just before)


class SendResult(msgspec.Struct, array_like=True, frozen=True):
    """Outcome of one job: ``errno`` 0 and ``nbytes`` sent, or the errno.

    ``user_time_ns`` is CLOCK_REALTIME read just before ``sendmsg`` (the
    fallback when no kernel stamp arrives), 0 if the job never reached it.
    """

    sock_id: int
    job_id: int
    nbytes: int
    errno: int
    user_time_ns: int

    @property
    def ok(self) -> bool:
        return self.errno == 0


class _Add(msgspec.Struct, tag="a", array_like=True):
    sock_id: int


class _Remove(msgspec.Struct, tag="r", array_like=True):
    sock_id: int


class _Jobs(msgspec.Struct, tag="j", array_like=True):
    jobs: list[SendJob]


class _Stop(msgspec.Struct, tag="s", array_like=True):
    pass


class _Ready(msgspec.Struct, tag="R", array_like=True):
    pid: int
    realtime: bool


class _Results(msgspec.Struct, tag="S", array_like=True):
    results: list[SendResult]


_ToChild = Union[_Add, _Remove, _Jobs, _Stop]
_ToParent = Union[_Ready, _Results]


class SenderError(RuntimeError):
    """The sender process is not running or the channel to it failed."""


# --------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------


class Sender:
    """Parent-side handle of the sender process; all methods are non-async.

    ``realtime``: run the child SCHED_FIFO (needs root; falls back silently
    and says so in :attr:`realtime`).  ``cpu``: pin the child to a CPU.
    ``spin_ns``: how long before a due time the child stops sleeping and
    spins.  ``io_timeout``: bound on a blocked write to the child.
    """

    def __init__(
        self,
        *,
        realtime: bool = True,
        cpu: int | None = None,
        spin_ns: int = _DEFAULT_SPIN_NS,
        io_timeout: float = 5.0,
    ) -> None:
        if spin_ns < 0 or spin_ns > 50_000_000:
            raise ValueError("spin_ns must be within 0..50 ms")
        self._want_realtime = realtime
        self._cpu = cpu
        self._spin_ns = spin_ns
        self._io_timeout = io_timeout
        self._chan: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._next_id = 1
        self._socks: dict[int, int] = {}  # sock_id -> family
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(_ToParent)
        self.realtime = False
        self.pid: int | None = None
        #: The child's exit status once :meth:`stop` reaped it (-N: signal N).
        self.returncode: int | None = None
        self._rbuf = bytearray(_RECV_BUF)
        self._rview = memoryview(self._rbuf)

    # -- lifecycle --

    def start(self, wait: bool = True) -> None:
        """Spawn the child; with ``wait``, block (≤ io_timeout) until it is ready.

        Without ``wait``, sockets and jobs may be sent at once (they wait in
        the channel until the child reads it), :meth:`read_results` takes the
        greeting, and a child that fails to start shows up there as
        SenderError.  Why: a supervisor restarting the child should not
        stall its event loop for the interpreter's start-up (~0.2 s).
        """
        if self._proc is not None:
            raise SenderError("sender already started")
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (parent, child):
            _grow_buffers(s)
        argv = [
            sys.executable, "-m", "marionet.endpoint.sender", "--child",
            str(child.fileno()), str(os.getpid()), str(int(self._want_realtime)),
            "-1" if self._cpu is None else str(self._cpu), str(self._spin_ns),
            str(threading.get_native_id()),  # the loop thread: stay off its CPU when spinning
        ]
        try:
            self._proc = subprocess.Popen(argv, pass_fds=(child.fileno(),), close_fds=True)
        finally:
            child.close()
        parent.setblocking(False)
        self._chan = parent
        self.pid = self._proc.pid
        if not wait:
            return
        try:
            if not select.select([parent], [], [], self._io_timeout)[0]:
                raise TimeoutError("no greeting within io_timeout")
            msg = self._dec.decode(parent.recv(_MAX_MSG))
        except (OSError, msgspec.DecodeError) as exc:
            self.stop()
            raise SenderError(f"sender process did not start: {exc}") from None
        if not isinstance(msg, _Ready):
            self.stop()
            raise SenderError("sender process sent an unexpected greeting")
        self.pid, self.realtime = msg.pid, msg.realtime

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the child to exit, wait, and kill it (by pid) if it does not."""
        chan, proc = self._chan, self._proc
        self._chan = self._proc = None
        if chan is not None:
            try:
                chan.send(self._enc.encode(_Stop()), socket.MSG_DONTWAIT)
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.returncode = proc.returncode
        if chan is not None:
            chan.close()

    def __enter__(self) -> "Sender":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def fileno(self) -> int:
        """The result channel, for ``loop.add_reader``."""
        return self._require().fileno()

    # -- sockets --

    def add_socket(self, sock: socket.socket) -> int:
        """Share ``sock`` with the sender; returns its sender-side id.

        The child holds a duplicate descriptor of the same open socket (same
        O_NONBLOCK flag, same error queue), so the parent keeps reading from
        it.  TCP sockets are refused: the daemon sends on them with asyncio.
        """
        chan = self._require()
        if not isinstance(sock, socket.socket):
            raise TypeError("add_socket needs a socket.socket")
        if sock.type == socket.SOCK_STREAM:
            raise ValueError("TCP sockets do not go through the sender; send with asyncio")
        if sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET):
            raise ValueError(f"unsupported socket family {sock.family!r}")
        sid = self._next_id
        self._next_id += 1
        msg = self._enc.encode(_Add(sid))
        self._send_ctl(lambda: socket.send_fds(chan, [msg], [sock.fileno()]))
        self._socks[sid] = sock.family
        return sid

    def remove_socket(self, sock_id: int) -> None:
        """Forget a socket; its queued jobs come back with errno ECANCELED."""
        if self._socks.pop(sock_id, None) is None:
            raise KeyError(f"unknown sender socket id {sock_id}")
        chan = self._require()
        msg = self._enc.encode(_Remove(sock_id))
        self._send_ctl(lambda: chan.send(msg))

    # -- jobs and results --

    def submit(self, jobs: list[SendJob]) -> None:
        """Queue jobs (validated here, so bad input raises in the caller).

        Blocks only if the child's channel buffer is full (≤ io_timeout).
        """
        chan = self._require()
        for job in jobs:
            self._validate(job)
        chunk: list[SendJob] = []
        size = 0
        for job in jobs:
            cost = len(job.data) + 64
            if chunk and size + cost > _MAX_MSG:
                self._send_jobs(chan, chunk)
                chunk, size = [], 0
            chunk.append(job)
            size += cost
        if chunk:
            self._send_jobs(chan, chunk)

    def validate(self, job: SendJob) -> None:
        """Raise ValueError/TypeError/KeyError if :meth:`submit` would refuse ``job``.

        Lets a caller that batches jobs turn one bad job into one failure
        before the batch is built, instead of failing the whole batch.
        """
        self._validate(job)

    def read_results(self, limit: int = 1024) -> list[SendResult]:
        """Drain available result batches without blocking."""
        chan = self._require()
        out: list[SendResult] = []
        for _ in range(limit):
            try:
                n = chan.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if out:
                    break  # hand these over; the error repeats on the next call
                raise SenderError(f"sender channel failed: {exc}") from None
            if not n:
                if out:
                    break  # EOF repeats on the next call
                raise SenderError("sender process exited")
            msg = self._dec.decode(self._rview[:n])
            if isinstance(msg, _Results):
                out.extend(msg.results)
            elif isinstance(msg, _Ready):  # after start(wait=False)
                self.pid, self.realtime = msg.pid, msg.realtime
        return out

    # -- helpers --

    def _require(self) -> socket.socket:
        if self._chan is None:
            raise SenderError("sender not started")
        return self._chan

    def _send_ctl(self, fn: Callable[[], object]) -> None:
        """Send one channel message; wait (bounded) while the child's buffer is full."""
        deadline = time.monotonic() + self._io_timeout
        while True:
            try:
                fn()
                return
            except (BlockingIOError, InterruptedError):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SenderError("sender process is not reading its channel") from None
                select.select([], [self._require()], [], left)
            except OSError as exc:
                raise SenderError(f"sender channel failed: {exc}") from None

    def _send_jobs(self, chan: socket.socket, jobs: list[SendJob]) -> None:
        data = self._enc.encode(_Jobs(jobs))
        self._send_ctl(lambda: chan.send(data))

    def _validate(self, job: SendJob) -> None:
        if not isinstance(job, SendJob):
            raise TypeError(f"expected SendJob, got {type(job).__name__}")
        family = self._socks.get(job.sock_id)
        if family is None:
            raise KeyError(f"job {job.job_id}: unknown sender socket id {job.sock_id}")
        if not isinstance(job.data, (bytes, bytearray)) or len(job.data) > 65535:
            raise ValueError(f"job {job.job_id}: data must be bytes of at most 65535")
        if job.at is not None and (not isinstance(job.at, int) or not 0 <= job.at <= MAX_AT_NS):
            raise ValueError(f"job {job.job_id}: at must be ns since the epoch, "
                             f"within 0..2**62 (got {job.at!r})")
        for name in ("ttl", "tos"):
            v = getattr(job, name)
            if v is not None:
                if family == socket.AF_PACKET:
                    raise ValueError(f"job {job.job_id}: {name} not settable on AF_PACKET")
                if not isinstance(v, int) or not 0 <= v <= 255:
                    raise ValueError(f"job {job.job_id}: {name} must be 0..255")
        if job.ts_key is not None and (not isinstance(job.ts_key, int) or not 0 <= job.ts_key <= 0xFFFFFFFF):
            raise ValueError(f"job {job.job_id}: ts_key must be a u32")
        if job.addr is not None and not isinstance(job.addr, tuple):
            raise ValueError(f"job {job.job_id}: addr must be a tuple like ('127.0.0.1', 53)")


def _grow_buffers(s: socket.socket) -> None:
    """Bigger channel buffers: batches of jobs and results are large."""
    for opt, force in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # *BUFFORCE
        try:
            s.setsockopt(socket.SOL_SOCKET, force, _CHAN_BUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, opt, _CHAN_BUF)


# --------------------------------------------------------------------------
# child side
# --------------------------------------------------------------------------


#: A job as the child keeps it: what ``sendmsg`` needs, built when the job
#: arrives so that the send in a train is a single call:
#: (due, job_id, buffers, cmsgs, addr, df).  buffers None: the job could not
#: be prepared and fails (EINVAL) when its turn comes, in FIFO order.
_Prepared = tuple
#: A result as the child keeps and ships it: SendResult's wire shape
#: (sock_id, job_id, nbytes, errno, user_time_ns), without building one.
_Result = tuple

#: In a train (timed sends back to back within the spin window) the child
#: ships results and reads its channel in a gap of at least this before
#: the next send, as the native sender reads its error queue only then:
#: each is a syscall (≈2 µs on this VM, a result batch's encoding more)
#: that would otherwise sit between two sends.
_HOT_NS = 300_000
#: Within a long train without such gaps: the channel is read every
#: _CHANNEL_EVERY_NS where the next send is at least _SPARE_NS away, and
#: after _CHANNEL_MAX_NS even without (so a train holds up no other
#: socket's jobs, and no stop, for long)...
_CHANNEL_EVERY_NS = 1_000_000
_CHANNEL_MAX_NS = 20_000_000
_SPARE_NS = 20_000
#: ...results older than _RESULTS_AGE_NS are shipped where the gap covers
#: the encoding (≈ _FLUSH_BASE_NS + _FLUSH_PER_RESULT_NS each), and at
#: _RESULTS_CAP waiting results regardless, so memory stays bounded...
_RESULTS_AGE_NS = 20_000_000
_FLUSH_BASE_NS = 20_000
_FLUSH_PER_RESULT_NS = 60
_RESULTS_CAP = 16_384
#: ...and those conditions are looked at every _LOOK_NS of a burst.
_LOOK_NS = 50_000
#: Results per channel message (well below _MAX_MSG).
_RESULTS_PER_MSG = 2048


class _Sock:
    __slots__ = ("sock", "family", "fifo", "df")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.family = sock.family
        self.fifo: deque[_Prepared] = deque()
        self.df: Optional[bool] = None


def _apply_df(entry: _Sock, df: Optional[bool]) -> None:
    """DF is per socket in Linux: switch it right before the send that asks,
    so queued sends keep the setting they asked for."""
    if df is None or df == entry.df or entry.family == socket.AF_PACKET:
        return
    if entry.family == socket.AF_INET6:
        entry.sock.setsockopt(so.SOL_IPV6, 23, 2 if df else 0)  # IPV6_MTU_DISCOVER: DO / DONT
    else:
        entry.sock.setsockopt(so.SOL_IP, so.IP_MTU_DISCOVER, 2 if df else so.IP_PMTUDISC_DONT)
    entry.df = df


def _prepare(family: int, job: SendJob) -> _Prepared:
    """The job as the send loop wants it; a job whose parts cannot be built
    (a TTL past the parent's check, an odd address) fails alone, later."""
    due = job.at or 0
    try:
        cmsgs = _cmsgs(family, job) if (job.ttl is not None or job.tos is not None
                                        or job.ts_key is not None) else []
        addr = tuple(job.addr) if job.addr is not None else None
    except Exception:  # noqa: BLE001 - a job that raises fails alone
        _log_exc(f"job {job.job_id}")
        return (due, job.job_id, None, None, None, None)
    return (due, job.job_id, (job.data,), cmsgs, addr, job.df)


class _Child:
    """The sender process's loop (see the module docstring)."""

    def __init__(self, chan: socket.socket, spin_ns: int, realtime: bool = False,
                 parent_tid: int | None = None) -> None:
        self.realtime = realtime
        self.boosted = False
        self.parent_tid = parent_tid  # None: pinned by the caller, or unknown
        self.cpus = os.sched_getaffinity(0)
        self.chan = chan
        self.spin_ns = spin_ns
        self.socks: dict[int, _Sock] = {}
        self.heap: list[tuple[int, int, int]] = []  # (due, seq, sock_id)
        self.seq = 0
        self.results: list[_Result] = []
        #: what shipping results in a train really costs here (ns per result, a decaying maximum of
        #: measured flushes): the fixed guess alone let a 200-result flush overrun an 80 µs gap
        self.flush_ns_per_result = _FLUSH_PER_RESULT_NS
        self.outbox: deque[bytes] = deque()
        self.stopping = False
        self.enc = msgspec.msgpack.Encoder()
        self.dec = msgspec.msgpack.Decoder(_ToChild)
        self.poller = select.poll()
        self.poll_mask = 0
        self._set_poll(select.POLLIN)

    def _set_poll(self, mask: int) -> None:
        if mask != self.poll_mask:
            self.poller.register(self.chan.fileno(), mask)
            self.poll_mask = mask

    # -- channel --

    def read_channel(self, timeout_ns: int | None, max_msgs: int = 64) -> None:
        """Wait up to ``timeout_ns`` (capped at ``_MAX_WAIT_MS``; None =
        until a message) for the channel, then handle messages.

        A wait under 1 ms is a plain sleep (to the ns, timer slack is 1 ns)
        followed by a look at the channel: poll() counts whole ms, and
        rounding up would wake the child after the spin should have begun.
        Whole ms are rounded down; the next step sleeps the rest."""
        want = select.POLLIN | (select.POLLOUT if self.outbox else 0)
        self._set_poll(want)
        if timeout_ns is None:
            timeout_ms: int | None = None
        elif timeout_ns >= 1_000_000:
            timeout_ms = min(timeout_ns // 1_000_000, _MAX_WAIT_MS)
        else:
            if timeout_ns > 0:
                time.sleep(timeout_ns / 1e9)
            timeout_ms = 0
        events = self.poller.poll(timeout_ms)
        if not events:
            return
        if self.outbox:
            self.write_outbox()
        for _ in range(max_msgs):
            try:
                raw, fds = _recv_with_fds(self.chan)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stopping = True
                return
            if not raw:
                self.stopping = True  # parent closed the channel
                for fd in fds:
                    os.close(fd)
                return
            try:
                self.handle(raw, fds)
            except Exception:  # noqa: BLE001 - one bad message must not end the child
                _log_exc("channel message")

    def handle(self, raw: bytes, fds: list[int]) -> None:
        try:
            msg = self.dec.decode(raw)
        except msgspec.DecodeError:
            for fd in fds:
                os.close(fd)
            return
        if isinstance(msg, _Jobs):
            for fd in fds:
                os.close(fd)
            self.enqueue(msg.jobs)
        elif isinstance(msg, _Add):
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                return
            old = self.socks.pop(msg.sock_id, None)
            if old is not None:
                old.sock.close()
            self.socks[msg.sock_id] = _Sock(socket.socket(fileno=fds[0]))
        elif isinstance(msg, _Remove):
            entry = self.socks.pop(msg.sock_id, None)
            if entry is not None:
                for job in entry.fifo:
                    self.results.append((msg.sock_id, job[1], 0, errno.ECANCELED, 0))
                entry.sock.close()
        elif isinstance(msg, _Stop):
            self.stopping = True

    def enqueue(self, jobs: list[SendJob]) -> None:
        for job in jobs:
            entry = self.socks.get(job.sock_id)
            if entry is None:
                self.results.append((job.sock_id, job.job_id, 0, errno.EBADF, 0))
                continue
            if job.at is not None and not (isinstance(job.at, int) and 0 <= job.at <= MAX_AT_NS):
                # the parent validates; this keeps a bad key out of the heap
                self.results.append((job.sock_id, job.job_id, 0, errno.EINVAL, 0))
                continue
            prepared = _prepare(entry.family, job)
            if not entry.fifo:
                self._push(prepared[0], job.sock_id)
            entry.fifo.append(prepared)

    def _push(self, due: int, sock_id: int) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, sock_id))

    def flush_results(self) -> None:
        results = self.results
        if results:
            enc, outbox = self.enc, self.outbox
            for i in range(0, len(results), _RESULTS_PER_MSG):
                # the wire shape of _Results(list[SendResult]), from plain tuples
                outbox.append(enc.encode(("S", results[i : i + _RESULTS_PER_MSG])))
            results.clear()  # in place: the send loops hold this list
        self.write_outbox()

    def write_outbox(self) -> None:
        while self.outbox:
            try:
                self.chan.send(self.outbox[0], socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return  # parent is slow; keep results and retry later
            except OSError:
                self.stopping = True
                return
            self.outbox.popleft()

    # -- sending --

    def send_due(self, budget: int = 64) -> None:
        """Immediate (and overdue) jobs, up to ``budget``, in due order."""
        now = time.time_ns()
        heap = self.heap
        while budget and heap and heap[0][0] <= now:
            budget -= 1
            _due, _seq, sid = heapq.heappop(heap)
            entry = self.socks.get(sid)
            if entry is None or not entry.fifo:
                continue
            self.results.append(_send_prepared(entry, sid, entry.fifo.popleft()))
            if entry.fifo:
                self._push(entry.fifo[0][0], sid)
            now = time.time_ns()

    def send_timed(self) -> None:
        """Send the jobs due within the spin window, each at its time.

        The hot path of a train: spin to the due time, one ``sendmsg`` with
        arguments built at arrival, the result kept as a tuple, and the
        next job of the same socket straight after (no heap work) while it
        is the earliest.  Shipping results and reading the channel wait for
        a gap (see ``_HOT_NS`` and the limits after it); returns to
        :meth:`step` once the next job is further away than the spin window.
        """
        if not gc.isenabled():
            self._send_timed()
            return
        gc.disable()  # results pile up as tuples: a collection would land mid-train
        try:
            self._send_timed()
        finally:
            gc.enable()

    def _send_timed(self) -> None:
        heap, socks, results = self.heap, self.socks, self.results
        time_ns, heappop = time.time_ns, heapq.heappop
        spin_ns = self.spin_ns
        hot_ns = min(_HOT_NS, spin_ns)  # a longer gap leaves the burst (and maybe sleeps)
        last_read = time_ns()
        oldest = last_read  # of the results waiting (when there are any)
        tidy = True  # nothing sent since the last gap's housekeeping
        look = 0  # next time a burst stops to look at the limits
        while heap and not self.stopping:
            due, _seq, sid = heap[0]
            now = time_ns()
            slack = due - now
            if slack > spin_ns:
                return
            if now >= look:
                if not tidy and slack > hot_ns:  # a gap: ship results, read the channel
                    self.flush_results()
                    self.read_channel(0)
                    last_read, tidy = time_ns(), True
                    continue  # a message may have brought an earlier job
                if results and (len(results) >= _RESULTS_CAP or (
                        now - oldest > _RESULTS_AGE_NS
                        and slack > 2 * (_FLUSH_BASE_NS + self.flush_ns_per_result * len(results)))):
                    n = len(results)
                    self.flush_results()
                    cost = (time_ns() - now - _FLUSH_BASE_NS) // n
                    self.flush_ns_per_result = max(cost, _FLUSH_PER_RESULT_NS,
                                                   self.flush_ns_per_result * 15 // 16)
                    continue
                since = now - last_read
                if since > _CHANNEL_EVERY_NS and (slack > _SPARE_NS or since > _CHANNEL_MAX_NS):
                    self.read_channel(0)
                    last_read = time_ns()
                    continue
                look = now + _LOOK_NS
            heappop(heap)
            entry = socks.get(sid)
            if entry is None or not entry.fifo:
                continue
            if not results:
                oldest = now
            fifo, sock = entry.fifo, entry.sock
            others = heap[0][0] if heap else MAX_AT_NS + 1  # the other sockets' next due
            tidy = False
            while True:  # this socket's jobs while each is the earliest and near
                job = fifo.popleft()
                due = job[0]
                while (t := time_ns()) < due:
                    pass
                df = job[5]
                if df is None or df == entry.df:
                    try:
                        if job[4] is None:
                            n = sock.sendmsg(job[2], job[3])
                        else:
                            n = sock.sendmsg(job[2], job[3], 0, job[4])
                        results.append((sid, job[1], n, 0, t))
                    except Exception:  # noqa: BLE001 - the careful path decides
                        results.append(_send_prepared(entry, sid, job))
                else:
                    results.append(_send_prepared(entry, sid, job))
                if not fifo:
                    break
                due = fifo[0][0]
                if due >= others or due - t > hot_ns or t >= look:
                    if due - t > hot_ns:
                        look = 0  # a gap: housekeeping first
                    self.seq += 1
                    heapq.heappush(heap, (due, self.seq, sid))
                    break

    def boost(self, on: bool) -> None:
        """SCHED_FIFO only while a *timed* send is pending.

        Measured: FIFO keeps the wake-up and spin on time while the parent is
        busy (p99 11 µs vs 64 µs), but a FIFO child pumping immediate sends
        ping-pongs with the parent and throughput fell from ~167k/s to ~7k/s.
        """
        if on == self.boosted or not self.realtime:
            return
        try:
            if on:
                self._avoid_parent_cpu()
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            else:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
                if self.parent_tid is not None:
                    os.sched_setaffinity(0, self.cpus)
            self.boosted = on
        except OSError:
            self.realtime = False

    def _avoid_parent_cpu(self) -> None:
        """Leave the CPU the parent's event loop runs on before spinning there.

        Measured: the parent's write wakes us on its own CPU; a SCHED_FIFO
        spin there starves the loop (the other CPU sits idle until the load
        balancer moves it), so an ``nsend`` due 2 ms ahead waited 2.2 ms for
        its reply.  With two or more CPUs we step aside instead.
        """
        if self.parent_tid is None or len(self.cpus) < 2:
            return
        cpu = _thread_cpu(os.getppid(), self.parent_tid)
        if cpu is not None and cpu in self.cpus:
            os.sched_setaffinity(0, self.cpus - {cpu})

    def run(self) -> None:
        """Loop until told to stop; per-job errors are handled below this, so
        an iteration that still raises is logged and retried, and only a run
        of ``_MAX_LOOP_ERRORS`` of them ends the child (the parent restarts it)."""
        errors = 0
        while not self.stopping:
            try:
                self.step()
                errors = 0
            except Exception:  # noqa: BLE001
                errors += 1
                _log_exc("sender loop")
                if errors >= _MAX_LOOP_ERRORS:
                    raise
        self.flush_results()

    def step(self) -> None:
        """One iteration: send what is due, or wait (bounded) for it or the channel."""
        heap = self.heap
        if not heap:
            if self.results or self.outbox:
                self.flush_results()
            self.boost(False)
            self.read_channel(None if not self.outbox else 50_000_000)
            return
        due = heap[0][0]
        if due == 0:  # immediate sends: no FIFO (see boost), results in batches
            self.boost(False)
            self.send_due()
            if len(self.results) >= 512:
                self.flush_results()
            self.read_channel(0)
            return
        wait = due - time.time_ns() - self.spin_ns
        if wait > 0:
            if self.results or self.outbox:
                self.flush_results()
            self.boost(True)
            self.read_channel(wait)  # a job due in weeks just waits, in bounded chunks
            return
        self.boost(True)
        self.send_timed()


def _log_exc(what: str) -> None:
    """The child's stderr is the endpoint's: say what failed, and go on."""
    import traceback

    print(f"marionet sender: {what} failed:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)


_FDS_ANC = socket.CMSG_SPACE(4 * 4)


def _recv_with_fds(chan: socket.socket) -> tuple[bytes, list[int]]:
    """Non-blocking recvmsg keeping SCM_RIGHTS fds (3.11's recv_fds ignores flags)."""
    raw, anc, _flags, _addr = chan.recvmsg(_RECV_BUF, _FDS_ANC, socket.MSG_DONTWAIT)
    fds: list[int] = []
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(struct.unpack(f"={usable // 4}i", data[:usable]))
    return raw, fds


def _cmsgs(family: int, job: SendJob) -> list[tuple[int, int, bytes]]:
    out = []
    if job.ttl is not None:
        if family == socket.AF_INET6:
            out.append((so.SOL_IPV6, so.IPV6_HOPLIMIT, _I32.pack(job.ttl)))
        else:
            out.append((so.SOL_IP, so.IP_TTL, _I32.pack(job.ttl)))
    if job.tos is not None:
        if family == socket.AF_INET6:
            out.append((so.SOL_IPV6, so.IPV6_TCLASS, _I32.pack(job.tos)))
        else:
            out.append((so.SOL_IP, so.IP_TOS, _I32.pack(job.tos)))
    if job.ts_key is not None:
        # A key means "stamp this send": the socket stamps only on request.
        out.append((so.SOL_SOCKET, so.SCM_TS_OPT_ID, _U32.pack(job.ts_key)))
        out.append((so.SOL_SOCKET, so.SO_TIMESTAMPING, _U32.pack(so.SOF_TIMESTAMPING_TX_SOFTWARE)))
    return out


def _send_prepared(entry: _Sock, sid: int, job: _Prepared) -> _Result:
    """The careful send: DF switch, stale-error retries, bounded EAGAIN
    waits, and any exception turned into this job's failure."""
    try:
        return _send_one(entry, sid, job)
    except Exception:  # noqa: BLE001 - a job that raises fails alone
        _log_exc(f"job {job[1]}")
        return (sid, job[1], 0, errno.EINVAL, 0)


def _send_one(entry: _Sock, sid: int, job: _Prepared) -> _Result:
    """sendmsg with retries for stale async errors and bounded EAGAIN waits."""
    _due, jid, bufs, cmsgs, addr, df = job
    if bufs is None:
        return (sid, jid, 0, errno.EINVAL, 0)  # could not be prepared
    sock = entry.sock
    if df is not None:
        try:
            _apply_df(entry, df)
        except OSError as exc:
            return (sid, jid, 0, exc.errno or errno.EINVAL, time.time_ns())
    deadline = 0.0
    t = 0
    while True:
        t = time.time_ns()
        try:
            n = sendmsg_past_stale_errors(sock, bufs[0], cmsgs, addr)
            return (sid, jid, n, 0, t)
        except (BlockingIOError, InterruptedError) as exc:
            err = exc.errno or errno.EAGAIN
            if err == errno.EINTR:
                continue
            now = time.monotonic()
            if not deadline:
                deadline = now + _EAGAIN_WAIT_S
            if now >= deadline:
                return (sid, jid, 0, err, t)
            select.select([], [sock], [], deadline - now)
        except OSError as exc:
            return (sid, jid, 0, exc.errno or errno.EIO, t)
        except (TypeError, ValueError, OverflowError):
            return (sid, jid, 0, errno.EINVAL, t)


#: How often one send steps over a stale error before reporting it.
STALE_ERROR_RETRIES = 8


def sendmsg_past_stale_errors(sock: socket.socket, data: bytes, cmsgs: list, addr: Optional[Addr]) -> int:
    """``sendmsg`` that steps over an error an *earlier* probe's ICMP left behind.

    Why: with IP_RECVERR an ICMP error (time exceeded, port unreachable)
    also sets the socket's pending error, and the next ``sendmsg`` fails
    with it, transmitting nothing.  On a veth path a TTL-limited probe's
    answer is back before ``sendmsg`` returns, so a burst of probes would
    lose every second one.  The error's details are in the error queue
    anyway; retrying sends the packet.  A persistent error (no route) is
    raised after ``STALE_ERROR_RETRIES`` attempts.
    """
    for attempt in range(STALE_ERROR_RETRIES + 1):
        try:
            if addr is None:
                return sock.sendmsg((data,), cmsgs)
            return sock.sendmsg((data,), cmsgs, 0, addr)
        except BlockingIOError:
            raise
        except OSError as exc:
            if exc.errno not in so.ASYNC_SOCK_ERRNOS or attempt == STALE_ERROR_RETRIES:
                raise
    raise AssertionError("unreachable")


def _thread_cpu(pid: int, tid: int) -> int | None:
    """The CPU a thread last ran on (field 39 of /proc/PID/task/TID/stat)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[36])
    except (OSError, ValueError, IndexError):
        return None


def _child_setup(parent_pid: int, realtime: bool, cpu: int) -> bool:
    """Die with the parent, ignore Ctrl-C, tighten timers; maybe SCHED_FIFO."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK: 1 ns, precise sleeps
    except OSError:
        pass
    if os.getppid() != parent_pid:
        os._exit(0)  # parent died before PDEATHSIG was armed
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    if realtime:  # probe the privilege once; _Child.boost switches later
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            return True
        except (OSError, AttributeError):
            return False
    return False


def _child_main(argv: list[str]) -> None:
    fd, parent_pid, realtime, cpu, spin_ns, parent_tid = (int(a) for a in argv)
    rt = _child_setup(parent_pid, bool(realtime), cpu)
    chan = socket.socket(fileno=fd)
    chan.setblocking(False)
    child = _Child(chan, spin_ns, rt, parent_tid=None if cpu >= 0 else parent_tid)
    chan.send(child.enc.encode(_Ready(os.getpid(), rt)))
    try:
        child.run()
    finally:
        for entry in child.socks.values():
            entry.sock.close()
        chan.close()


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        _child_main(sys.argv[2:])
    else:
        sys.exit("marionet.endpoint.sender is started by Sender.start(), not by hand")
