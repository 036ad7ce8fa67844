"""Send engine backed by the dedicated sender process.

Jobs submitted during one event-loop iteration go to the sender in one
batch (a request carrying a thousand sends costs one channel write), and
the sender's results come back in batches through ``loop.add_reader``.

The sender is shared by every session, so the engine supervises it: when
the child dies (channel EOF, or a write to it fails) every job it held
fails with ECANCELED and a reason saying so, a fresh child is started
without blocking the loop, and sockets are handed to it again on their
next send.  A child that keeps dying (more than ``MAX_RESTARTS`` within
``RESTART_WINDOW_S``) is given up on: the engine then sends from the event
loop like :class:`~marionet.endpoint.engine.InlineEngine`, slower to land
on time but never accepting a send that it then loses.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import signal
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from marionet.endpoint.engine import InlineEngine
from marionet.endpoint.sender import Sender, SenderError, SendJob

if TYPE_CHECKING:
    from marionet.endpoint.sockets import DatagramJob, DatagramSocket

log = logging.getLogger("marionet.endpoint")


class ProcessEngine:
    name = "process"
    #: More restarts than this within RESTART_WINDOW_S: fall back to inline.
    MAX_RESTARTS = 5
    RESTART_WINDOW_S = 60.0

    def __init__(self, loop: asyncio.AbstractEventLoop, *, realtime: bool = True,
                 cpu: int | None = None) -> None:
        self.loop = loop
        self._realtime, self._cpu = realtime, cpu
        self.sender = Sender(realtime=realtime, cpu=cpu)
        self._reader_fd: int | None = None
        self._sids: dict[int, int] = {}  # id(esock) -> sender socket id
        self._jobs: dict[int, "DatagramJob"] = {}
        self._ids = itertools.count(1)
        self._batch: list[SendJob] = []
        self._flush: asyncio.Handle | None = None
        self._inline: InlineEngine | None = None  # set once we gave up on the child
        self._closed = False
        self.restarts = 0
        self._restart_times: deque[float] = deque()
        self.last_failure: str | None = None
        self.last_failure_time_ns: int | None = None

    async def start(self) -> None:
        self.sender.start()
        self._watch()

    @property
    def realtime(self) -> bool:
        return self._inline is None and self.sender.realtime

    def status(self) -> dict[str, Any]:
        """Health for the endpoint's info(): did the sender die, why, when."""
        pending = len(self._jobs) + (self._inline.pending() if self._inline is not None else 0)
        return {"engine": self.name, "restarts": self.restarts, "last_failure": self.last_failure,
                "last_failure_time_ns": self.last_failure_time_ns, "pending": pending,
                "fallback": self._inline is not None,
                "pid": None if self._inline is not None else self.sender.pid}

    # -- jobs ------------------------------------------------------------

    def submit(self, job: "DatagramJob") -> None:
        if self._inline is not None:
            self._inline.submit(job)
            return
        esock = job.esock
        sid = self._sids.get(id(esock))
        if sid is None:
            if self._closed or esock.sock.fileno() < 0:
                job.esock.on_sent(job, 0, errno.EBADF, 0)
                return
            try:
                sid = self.sender.add_socket(esock.sock)
            except (SenderError, OSError) as exc:
                self._sender_died(f"adding a socket failed: {exc}")
                self.submit(job)  # to the new child, or inline; bounded by the restart limit
                return
            self._sids[id(esock)] = sid
        jid = next(self._ids)
        hdrincl = getattr(esock, "hdrincl", False)
        sjob = SendJob(
            sock_id=sid, job_id=jid, data=job.data, at=job.at, addr=job.addr,
            ttl=None if hdrincl else job.ttl, tos=None if hdrincl else job.tos,
            ts_key=job.key if job.tag is not None else None, df=job.df)
        try:
            self.sender.validate(sjob)
        except (ValueError, TypeError, KeyError) as exc:  # this job only, not its batch
            job.esock.on_sent(job, 0, errno.EINVAL, 0, reason=str(exc))
            return
        self._jobs[jid] = job
        self._batch.append(sjob)
        if self._flush is None:
            self._flush = self.loop.call_soon(self._send_batch)

    def _send_batch(self) -> None:
        self._flush = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self.sender.submit(batch)
        except (SenderError, OSError) as exc:
            self._sender_died(f"writing to it failed: {exc}")
        except (ValueError, TypeError, KeyError) as exc:  # validated in submit(): a bug
            log.error("sender refused a batch: %s", exc)
            self._fail_jobs([j.job_id for j in batch], errno.EINVAL, str(exc))

    def _fail_jobs(self, job_ids: list[int], err: int, reason: str) -> None:
        for jid in job_ids:
            job = self._jobs.pop(jid, None)
            if job is not None:
                job.esock.on_sent(job, 0, err, 0, reason=reason)

    def _on_results(self) -> None:
        try:
            results = self.sender.read_results()
        except SenderError as exc:
            self._sender_died(str(exc))
            return
        for r in results:
            job = self._jobs.pop(r.job_id, None)
            if job is not None:
                job.esock.on_sent(job, r.nbytes, r.errno, r.user_time_ns)

    # -- supervision -------------------------------------------------------

    def _watch(self) -> None:
        self._reader_fd = self.sender.fileno()
        self.loop.add_reader(self._reader_fd, self._on_results)

    def _unwatch(self) -> None:
        if self._reader_fd is not None:
            try:
                self.loop.remove_reader(self._reader_fd)
            except Exception:  # noqa: BLE001 - loop closing
                pass
            self._reader_fd = None

    def _sender_died(self, why: str) -> None:
        """Reap the child, start another (or fall back), fail what it held.

        The jobs it held may or may not have been sent; they are reported
        failed so that no client waits for a result that will never come.
        """
        if self._closed or self._inline is not None:
            return
        self._unwatch()
        old = self.sender
        old.stop(timeout=0.5)  # reaps it; kills it (by pid) if it hangs instead
        if old.returncode is not None:  # say how it ended, not just that it did
            exit_text = _exit_text(old.returncode)
            why = exit_text if why == "sender process exited" else f"{why}; {exit_text}"
        self.last_failure, self.last_failure_time_ns = why, time.time_ns()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._batch = []
        self._sids.clear()  # sockets are added to the new child on their next send
        jobs = list(self._jobs)

        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.RESTART_WINDOW_S:
            self._restart_times.popleft()
        outcome = "restarted"
        if len(self._restart_times) >= self.MAX_RESTARTS:
            outcome = self._fall_back(f"it died {len(self._restart_times) + 1} times "
                                      f"within {self.RESTART_WINDOW_S:.0f} s")
        else:
            self.sender = Sender(realtime=self._realtime, cpu=self._cpu)
            try:
                self.sender.start(wait=False)
                self._watch()
            except (SenderError, OSError) as exc:
                self.sender.stop(timeout=0.5)
                outcome = self._fall_back(f"restarting it failed: {exc}")
            else:
                self.restarts += 1
                self._restart_times.append(now)
                log.error("sender process died (%s); restarted it (pid %s), %d job(s) failed",
                          why, self.sender.pid, len(jobs))
        self._fail_jobs(jobs, errno.ECANCELED, f"sender process died ({why}); {outcome}")

    def _fall_back(self, why: str) -> str:
        self._inline = InlineEngine(self.loop)
        self.name = "inline"
        self.last_failure = f"{self.last_failure}; gave up: {why}"
        log.error("sender process given up (%s): sending from the event loop from now on", why)
        return "sending from the endpoint process from now on"

    # -- sockets, shutdown -----------------------------------------------------

    def forget(self, esock: "DatagramSocket") -> None:
        if self._inline is not None:
            self._inline.forget(esock)
        sid = self._sids.pop(id(esock), None)
        if sid is not None:
            if any(j.sock_id == sid for j in self._batch):
                # not written yet: the sender would refuse the whole batch for them
                gone = [j.job_id for j in self._batch if j.sock_id == sid]
                self._batch = [j for j in self._batch if j.sock_id != sid]
                self._fail_jobs(gone, errno.ECANCELED, "socket closed")
            try:
                self.sender.remove_socket(sid)
            except (SenderError, KeyError, OSError):
                pass  # a dead child is noticed by the reader

    def close(self) -> None:
        self._closed = True
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._unwatch()
        if self._inline is not None:
            self._inline.close()
        self.sender.stop()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
