"""TCP throughput (PAM'25 §5.2 pipe saturation), written once over the packet
interface and run in every placement.

``throughput(io, dst, port, direction=…)`` connects a TCP socket *on the
endpoint* to a ``marionet throughput-server`` (protocol in
``throughput_proto``), moves ``size`` bytes and computes
``8 × (size − b) / (t1 − t0)`` from the *receiver's* kernel receive times:

* **download** — the endpoint counts what arrives (``ncount``: count mode,
  nothing shipped, so a 25 MiB transfer needs neither a 25 MiB notification
  buffer nor a control channel as fast as the link) and its one summary
  gives b, t0 (the receive that first reached ``skip``), t1 and samples;
* **upload** — the endpoint writes the payload itself (``nsend(fill=)``, the
  guard counting every byte), starting at a scheduled time, then FIN; the
  server's report gives b, t0, t1 and samples.

Why it is shaped this way: the paper's remote placement suppresses
notifications during the transfer so the control channel cannot perturb
it, and computes from endpoint kernel stamps so the controller's distance
does not enter the figure. Both summaries (``ncountend``, ``nfill``) are
delivered through suppression, so the measurement learns that the
transfer ended without polling. The same code runs natively (an in-process
endpoint), as an endpoint task and remotely. Failures (refused, reset,
timeout, short transfer, server ERR) are results with a stop reason and an
error text; only bad parameters raise.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure.params import MAX_TASK_S, NS, shown, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import seconds as _seconds
from marionet.measure.throughput_proto import (DEFAULT_PORT, DIRECTIONS, MAX_REPORT, MAX_SIZE, ProtocolError,
                                               Request, format_request, parse_report, throughput_bps)
from marionet.results.throughput import Throughput, ThroughputStop
from marionet.wire import messages as m

__all__ = ["throughput", "plan_throughput", "ThroughputPlan", "DEFAULT_SIZE", "DEFAULT_SKIP"]

DEFAULT_SIZE = 25 << 20
DEFAULT_SKIP = 1 << 20
MAX_TIMEOUT_S = 86400.0
MAX_SAMPLES = 100_000          # the endpoint's count-mode bound; ~20 bytes each in a task's result
_POLL_S = 0.05                 # how often a wait looks at ``halt``


@dataclass(frozen=True)
class ThroughputPlan:
    """Validated throughput parameters (times in ns)."""

    dst: str
    family: int
    port: int
    direction: str
    size: int
    skip: int
    interval_ns: int
    timeout_ns: int
    connect_timeout_ns: int
    start_delay_ns: int
    userid: int

    @property
    def max_samples(self) -> int:
        """Samples the transfer can produce (one per interval over the timeout,
        plus first, mark and last), bounded so a task's result fits a frame."""
        return min(MAX_SAMPLES, self.timeout_ns // self.interval_ns + 4)

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        worst = (self.connect_timeout_ns + self.start_delay_ns + self.timeout_ns) / NS
        task_duration("throughput", worst, "connect_timeout + start_delay + timeout", max_s)


def plan_throughput(dst: Any, port: Any = DEFAULT_PORT, *, direction: Any = "download", size: Any = DEFAULT_SIZE,
                    skip: Any = DEFAULT_SKIP, interval: Any = 0.01, timeout: Any = 60.0,
                    connect_timeout: Any = 10.0, start_delay: Any = 0.05, userid: Any = 0) -> ThroughputPlan:
    """Check every parameter (``ValueError`` naming it) before any I/O.

    ``size`` bytes move in ``direction``; the figure leaves out the first
    ``skip`` (slow start). ``interval``: spacing of progress samples.
    ``timeout``: the transfer's limit after connecting; ``start_delay``: how
    far ahead an upload's start is scheduled on the endpoint's clock."""
    try:
        d = ipaddress.ip_address(str(dst) if dst is not None else "")
    except ValueError:
        raise ValueError(f"dst {shown(dst)} is not an IPv4 or IPv6 address") from None
    if d.is_multicast or d.is_unspecified:
        raise ValueError(f"dst {d} is a multicast or unspecified address")
    port = _int("port", port, 1, 65535)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be download or upload, got {shown(direction)}")
    size = _int("size", size, 1, MAX_SIZE)
    skip = _int("skip", skip, 0, MAX_SIZE)
    if skip >= size:  # type: ignore[operator]
        raise ValueError(f"skip must be below size ({size} bytes), got {skip}")
    interval_ns = _seconds("interval", interval, 0.001, 60.0)
    timeout_ns = _seconds("timeout", timeout, 0, MAX_TIMEOUT_S, lo_open=True)
    connect_ns = _seconds("connect_timeout", connect_timeout, 0, 600.0, lo_open=True)
    delay_ns = _seconds("start_delay", start_delay, 0, 60.0)
    userid = _int("userid", userid, 0, 2**32 - 1)
    return ThroughputPlan(str(d), d.version, port, direction, size, skip, interval_ns,  # type: ignore[arg-type]
                          timeout_ns, connect_ns, delay_ns, userid)  # type: ignore[arg-type]


class _Halted(Exception):
    pass


class _TimedOut(Exception):
    pass


async def _wait_for(st: Any, kinds: tuple[type, ...], sid: int, deadline: float,
                    halt: asyncio.Event | None, seen: list[m.Notification] | None = None) -> m.Notification:
    """The next notification of ``kinds`` for ``sid``; others are kept in
    ``seen``. Raises _TimedOut / _Halted."""
    while True:
        if halt is not None and halt.is_set():
            raise _Halted()
        left = deadline - time.monotonic()
        if left <= 0:
            raise _TimedOut()
        n = await st.next(min(left, _POLL_S) if halt is not None else left)
        if n is None:
            continue
        if isinstance(n, kinds) and getattr(n, "sock", None) == sid:
            return n
        if seen is not None:
            seen.append(n)


async def throughput(io: PacketSession, dst: Any, port: Any = DEFAULT_PORT, *, direction: Any = "download",
                     size: Any = DEFAULT_SIZE, skip: Any = DEFAULT_SKIP, interval: Any = 0.01,
                     timeout: Any = 60.0, connect_timeout: Any = 10.0, start_delay: Any = 0.05,
                     userid: Any = 0, halt: asyncio.Event | None = None) -> Throughput:
    """Measure TCP throughput to a throughput server (see the module text)."""
    plan = plan_throughput(dst, port, direction=direction, size=size, skip=skip, interval=interval,
                           timeout=timeout, connect_timeout=connect_timeout, start_delay=start_delay,
                           userid=userid)
    res = Throughput(dst=plan.dst, port=plan.port, direction=plan.direction, size=plan.size, skip=plan.skip,
                     measured_by="vp" if plan.direction == "download" else "server", start_ns=time.time_ns(),
                     userid=plan.userid)
    st = io.stream()
    sid: int | None = None
    suppressed = False
    try:
        try:
            sid = await io.nopen("tcp", plan.family, raddr=plan.dst, rport=plan.port,
                                 timeout=plan.connect_timeout_ns / NS, stream=st)
        except EndpointError as exc:
            res.stop_reason = ThroughputStop.TIMEOUT if exc.code == "timeout" else ThroughputStop.REFUSED
            res.error = f"{exc.code}: {exc.reason}"
            return res
        deadline = time.monotonic() + plan.timeout_ns / NS
        if plan.direction == "download":
            await io.ncount(sid, mark=plan.skip, interval=plan.interval_ns / NS, max_samples=plan.max_samples)
            await io.suppress()
            suppressed = True
            await io.nsend(sid, format_request(Request("download", plan.size, plan.skip)))
            early: list[m.Notification] = []
            try:
                end = await _wait_for(st, (m.NCountEnd,), sid, deadline, halt, early)
            except (_TimedOut, _Halted) as exc:
                await _stop_early(io, st, sid, res, exc, plan)
                sid = None
                return res
            for n in early:  # the endpoint's clock when the connection was up
                if isinstance(n, m.NStat) and n.state == "established":
                    res.start_ns = n.time_ns
            _download_result(res, end, plan)  # type: ignore[arg-type]
        else:
            info = await io.info()
            at = info.clock_ns + plan.start_delay_ns
            res.start_ns = at
            await io.suppress()
            suppressed = True
            await io.nsend(sid, format_request(Request("upload", plan.size, plan.skip)))
            await io.nsend(sid, b"", fill=plan.size, at=at, tag=1)
            await io.nctl("shutdown", sid)
            seen: list[m.Notification] = []
            try:
                fill = await _wait_for(st, (m.NFill,), sid, deadline, halt, seen)
            except (_TimedOut, _Halted) as exc:
                await _stop_early(io, st, sid, res, exc, plan)
                sid = None
                return res
            await io.resume()
            suppressed = False
            res.tx_first_ns, res.tx_last_ns = fill.first_ns, fill.last_ns  # type: ignore[attr-defined]
            try:
                report, how = await _read_report(st, sid, deadline, halt, seen)
            except _Halted:
                res.stop_reason, res.error = ThroughputStop.HALTED, "halted while waiting for the server's report"
                return res
            _upload_result(res, fill, report, how)  # type: ignore[arg-type]
        return res
    except ConnectionLost as exc:
        res.stop_reason, res.error = ThroughputStop.ERROR, f"session lost: {exc}"
        sid = None
        return res
    except EndpointError as exc:  # e.g. the guard refused the fill: a result that says why
        res.stop_reason, res.error = ThroughputStop.ERROR, f"{exc.code}: {exc.reason}"
        return res
    finally:
        await _cleanup(io, st, sid, suppressed)


async def _cleanup(io: PacketSession, st: Any, sid: int | None, suppressed: bool) -> None:
    try:
        if suppressed and not io.closed:
            await io.resume()
        if sid is not None and not io.closed:
            await io.nclose(sid)
    except (EndpointError, ConnectionLost):
        pass
    finally:
        st.close()


async def _stop_early(io: PacketSession, st: Any, sid: int, res: Throughput, why: Exception,
                      plan: ThroughputPlan) -> None:
    """Timeout or halt: close the socket and say how far the transfer got
    (closing a counting socket sends its summary)."""
    res.stop_reason = ThroughputStop.HALTED if isinstance(why, _Halted) else ThroughputStop.TIMEOUT
    try:
        await io.nclose(sid)
    except EndpointError:
        pass
    got = 0
    while (n := st.poll()) is not None:
        if isinstance(n, m.NCountEnd) and n.sock == sid:
            got = n.nbytes
            res.samples = [tuple(s) for s in n.samples]  # type: ignore[misc]
        elif isinstance(n, m.NFill) and n.sock == sid:
            got = n.nbytes
    res.bytes = got
    what = "halted" if isinstance(why, _Halted) else f"no end of transfer within {plan.timeout_ns / NS:g} s"
    res.error = f"{what} ({got} of {plan.size} bytes moved)"


def _download_result(res: Throughput, end: m.NCountEnd, plan: ThroughputPlan) -> None:
    res.bytes = end.nbytes
    res.samples = [tuple(s) for s in end.samples]  # type: ignore[misc]
    res.ts_source = end.ts_source
    res.b, res.t0_ns, res.t1_ns = end.mark_bytes, end.mark_ns, end.last_ns
    if end.nbytes != plan.size and end.head.startswith(b"ERR"):
        line = end.head.split(b"\n", 1)[0][3:].decode("utf-8", "replace").strip()
        res.stop_reason, res.error = ThroughputStop.SERVER, f"server: {line or 'ERR'}"
        return
    if end.nbytes < plan.size:
        res.stop_reason = ThroughputStop.SHORT if end.state in ("peer-closed", "closed") else (
            ThroughputStop.RESET if end.state == "reset" else ThroughputStop.ERROR)
        res.error = (f"{end.state}{': ' + end.reason if end.reason else ''} after {end.nbytes} "
                     f"of {plan.size} bytes")
        return
    if end.nbytes > plan.size:
        res.stop_reason, res.error = ThroughputStop.SERVER, f"server sent {end.nbytes} bytes, {plan.size} asked"
        return
    _figure(res)


def _figure(res: Throughput) -> None:
    try:
        res.bps = throughput_bps(res.size, res.b, res.t0_ns, res.t1_ns)
        res.stop_reason = ThroughputStop.DONE
    except ValueError as exc:
        res.stop_reason, res.error = ThroughputStop.ERROR, str(exc)


async def _read_report(st: Any, sid: int, deadline: float, halt: asyncio.Event | None,
                       seen: list[m.Notification]) -> tuple[bytes, str]:
    """The server's answer line (as far as it came) and how the connection ended."""
    buf = bytearray()
    pending = list(seen)
    while True:
        while pending:
            n = pending.pop(0)
            if getattr(n, "sock", None) != sid:
                continue
            if isinstance(n, m.NData):
                buf += n.data
                if b"\n" in buf or len(buf) > MAX_REPORT:
                    return bytes(buf), "line"
            elif isinstance(n, m.NStat) and n.state in ("peer-closed", "reset", "timeout", "error"):
                return bytes(buf), n.state + (f": {n.reason}" if n.reason else "")
        try:
            pending.append(await _wait_for(st, (m.NData, m.NStat), sid, deadline, halt))
        except _TimedOut:
            return bytes(buf), "timeout"


def _upload_result(res: Throughput, fill: m.NFill, report: bytes, how: str) -> None:
    if not report:
        res.bytes = fill.nbytes
        if fill.error:
            res.stop_reason = ThroughputStop.RESET
            res.error = f"upload failed after {fill.nbytes} of {res.size} bytes: {fill.error}"
        else:
            res.stop_reason = ThroughputStop.TIMEOUT if how == "timeout" else ThroughputStop.SERVER
            res.error = f"no report from the server ({how})"
        return
    try:
        rep = parse_report(report.split(b"\n", 1)[0])
    except ProtocolError as exc:
        res.bytes = fill.nbytes
        res.stop_reason, res.error = ThroughputStop.SERVER, str(exc)
        return
    res.bytes = rep.bytes
    res.samples = list(rep.samples)
    res.ts_source = rep.ts_source
    res.b, res.t0_ns, res.t1_ns = rep.b, rep.t0_ns, rep.t1_ns
    if not rep.ok:
        res.stop_reason = ThroughputStop.SHORT if rep.bytes < res.size else ThroughputStop.SERVER
        res.error = f"server: {rep.error or 'transfer not ok'}"
        return
    if fill.error:
        res.stop_reason, res.error = ThroughputStop.RESET, f"upload: {fill.error}"
        return
    _figure(res)
