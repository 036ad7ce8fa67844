"""Send engines: who calls ``sendmsg`` for datagram sockets, and when.

``InlineEngine`` sends on the event loop: immediate sends go out at once;
scheduled ones sleep on the loop until shortly before their time and then
spin. It is simple and always available, but the spin holds the loop and
the loop's own wake-up jitter shows up in send times. ``ProcessEngine``
hands jobs to a dedicated sender process (``marionet.endpoint.sender``),
which owns the timing and leaves the loop free to stream notifications.
Both keep sends on one socket in request order and report every job back
through ``DatagramSocket.on_sent``.
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from marionet.endpoint.sender import sendmsg_past_stale_errors

if TYPE_CHECKING:
    from marionet.endpoint.sockets import DatagramJob, DatagramSocket

SPIN_NS = 1_000_000


def send_job_now(job: "DatagramJob") -> tuple[int, int, int]:
    """One ``sendmsg`` for a job; returns (bytes, errno, user-space time)."""
    esock = job.esock
    try:
        esock.apply_df(job.df)
        cmsgs = esock.cmsgs(job)
        now = time.time_ns()
        n = sendmsg_past_stale_errors(esock.sock, job.data, cmsgs, job.addr or None)
        return n, 0, now
    except BlockingIOError:
        return 0, errno.EAGAIN, time.time_ns()
    except OSError as exc:
        return 0, exc.errno or errno.EIO, time.time_ns()
    except (TypeError, ValueError, OverflowError):  # a bad job fails alone, as in the sender
        return 0, errno.EINVAL, time.time_ns()


class InlineEngine:
    """Sends from the event loop (fallback when no sender process runs)."""

    name = "inline"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._queues: dict[int, deque[DatagramJob]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def submit(self, job: "DatagramJob") -> None:
        key = id(job.esock)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append(job)
        if len(q) == 1:
            self._pump(key)

    def _pump(self, key: int) -> None:
        self._timers.pop(key, None)
        q = self._queues.get(key)
        while q:
            job = q[0]
            if job.esock.closed:
                q.clear()
                break
            if job.at is not None:
                wait = job.at - time.time_ns()
                if wait > SPIN_NS:
                    self._timers[key] = self.loop.call_later((wait - SPIN_NS) / 1e9, self._pump, key)
                    return
                while time.time_ns() < job.at:
                    pass
            q.popleft()
            n, err, user_ns = send_job_now(job)
            job.esock.on_sent(job, n, err, user_ns)
        if q is not None and not q:
            del self._queues[key]

    def pending(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def status(self) -> dict[str, Any]:
        """Same keys as ``ProcessEngine.status``; nothing here can die."""
        return {"engine": self.name, "restarts": 0, "last_failure": None,
                "last_failure_time_ns": None, "pending": self.pending(), "fallback": False}

    def forget(self, esock: "DatagramSocket") -> None:
        key = id(esock)
        self._queues.pop(key, None)
        t = self._timers.pop(key, None)
        if t is not None:
            t.cancel()

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()
        self._queues.clear()

