"""Send engine backed by the dedicated sender process.

Jobs submitted during one event-loop iteration go to the sender in one
batch (a request carrying a thousand sends costs one channel write), and
the sender's results come back in batches through ``loop.add_reader``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import TYPE_CHECKING

from marionet.endpoint.sender import Sender, SenderError, SendJob

if TYPE_CHECKING:
    from marionet.endpoint.sockets import DatagramJob, DatagramSocket

log = logging.getLogger("marionet.endpoint")


class ProcessEngine:
    name = "process"

    def __init__(self, loop: asyncio.AbstractEventLoop, *, realtime: bool = True,
                 cpu: int | None = None) -> None:
        self.loop = loop
        self.sender = Sender(realtime=realtime, cpu=cpu)
        self._sids: dict[int, int] = {}  # id(esock) -> sender socket id
        self._jobs: dict[int, "DatagramJob"] = {}
        self._ids = itertools.count(1)
        self._batch: list[SendJob] = []
        self._flush: asyncio.Handle | None = None
        self.failed: str | None = None

    async def start(self) -> None:
        self.sender.start()
        self.loop.add_reader(self.sender.fileno(), self._on_results)

    @property
    def realtime(self) -> bool:
        return self.sender.realtime

    def submit(self, job: "DatagramJob") -> None:
        if self.failed is not None:
            import errno

            job.esock.on_sent(job, 0, errno.EPIPE, 0)
            return
        esock = job.esock
        sid = self._sids.get(id(esock))
        if sid is None:
            sid = self.sender.add_socket(esock.sock)
            self._sids[id(esock)] = sid
        jid = next(self._ids)
        self._jobs[jid] = job
        hdrincl = getattr(esock, "hdrincl", False)
        self._batch.append(SendJob(
            sock_id=sid, job_id=jid, data=job.data, at=job.at, addr=job.addr,
            ttl=None if hdrincl else job.ttl, tos=None if hdrincl else job.tos,
            ts_key=job.key if job.tag is not None else None, df=job.df))
        if self._flush is None:
            self._flush = self.loop.call_soon(self._send_batch)

    def _send_batch(self) -> None:
        self._flush = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            self.sender.submit(batch)
        except (SenderError, OSError, ValueError) as exc:
            self._fail_jobs([j.job_id for j in batch], f"sender: {exc}")

    def _fail_jobs(self, job_ids: list[int], why: str) -> None:
        import errno

        log.error("send jobs failed: %s", why)
        for jid in job_ids:
            job = self._jobs.pop(jid, None)
            if job is not None:
                job.esock.on_sent(job, 0, errno.EIO, 0)

    def _on_results(self) -> None:
        try:
            results = self.sender.read_results()
        except SenderError as exc:
            self.failed = str(exc)
            try:
                self.loop.remove_reader(self.sender.fileno())
            except Exception:  # noqa: BLE001
                pass
            if self._jobs:
                self._fail_jobs(list(self._jobs), str(exc))
            else:
                log.info("sender process ended: %s", exc)
            return
        for r in results:
            job = self._jobs.pop(r.job_id, None)
            if job is not None:
                job.esock.on_sent(job, r.nbytes, r.errno, r.user_time_ns)

    def forget(self, esock: "DatagramSocket") -> None:
        sid = self._sids.pop(id(esock), None)
        if sid is not None:
            try:
                self.sender.remove_socket(sid)
            except (SenderError, KeyError, OSError):
                pass

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        try:
            self.loop.remove_reader(self.sender.fileno())
        except Exception:  # noqa: BLE001
            pass
        self.sender.stop()
