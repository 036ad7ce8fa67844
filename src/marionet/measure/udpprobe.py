"""UDP request/response (scamper's ``do_udpprobe``), once over the packet interface.

``udpprobe(io, dst, dport, payload=…)`` sends ``payload`` to a UDP service
(DNS, NTP, SNMP, a game server …) from the endpoint behind ``io`` and
returns a ``marionet.results.Udpprobe`` holding every datagram that came
back to each probe.

Why it is shaped this way:

* **scamper's semantics.** ``attempts`` probes (scamper's ``-c
  probe-count``), ``wait_probe`` apart, each from its *own* connected socket
  (so its source port tells its replies apart, and the kernel hands it only
  datagrams from ``dst``:``dport``). Sending stops once ``stop_count``
  probes have drawn a reply; then replies are collected until
  ``wait_timeout`` after the last probe, because a service may answer more
  than once (amplifiers, broken middleboxes, anycast) and that is data.
  ``exitfirst`` ends at the first reply, as scamper's ``-O exitfirst``.
* **Kernel stamps at both ends.** Each probe is a tagged ``nsend``; its
  ``ntag`` is the kernel transmit time, each reply's ``ndata`` the kernel
  receive time, so an RTT never includes a remote placement's control path.
* **Validation first** (``plan_udpprobe``): every parameter is checked
  before a socket opens, in the API and on the endpoint alike.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import random
import time
from dataclasses import dataclass, field
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import NotificationStream, PacketSession
from marionet.measure.params import NS, MAX_TASK_S, boolean, integer, seconds, target, task_duration
from marionet.measure.params import payload as _payload
from marionet.measure.rawio import HALTED, HaltWatch
from marionet.results.udpprobe import Udpprobe, UdpprobeProbe, UdpprobeReply, UdpprobeStop

__all__ = ["udpprobe", "plan_udpprobe", "UdpprobePlan", "UdpprobeRun"]

#: scamper's bounds: probe-count and stop-count 1..20, waits 0.5..5 s.
MAX_ATTEMPTS = 20
_WAIT_LO, _WAIT_HI = 0.5, 5.0
_TX_GRACE_S = 1.0  # how long after the last wait a missing transmit stamp is awaited


@dataclass(frozen=True)
class UdpprobePlan:
    """Validated ``do_udpprobe`` parameters, defaults filled in."""

    dst: str
    family: int
    dport: int
    payload: bytes
    attempts: int
    stop_count: int
    wait_timeout_ns: int
    wait_probe_ns: int
    src: str | None
    sport: int | None
    exitfirst: bool
    userid: int

    def worst_s(self) -> float:
        return ((self.attempts - 1) * self.wait_probe_ns + self.wait_timeout_ns) / NS + _TX_GRACE_S

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if, as an endpoint task, this could run longer than ``max_s``."""
        task_duration("udpprobe", self.worst_s(),
                      f"(attempts {self.attempts} - 1) × wait_probe {self.wait_probe_ns / NS:g} s "
                      f"+ wait_timeout {self.wait_timeout_ns / NS:g} s", max_s)


def plan_udpprobe(dst: Any, dport: Any, *, payload: Any = None, attempts: Any = 1, stop_count: Any = None,
                  wait_timeout: Any = 2.0, wait_probe: Any = 1.0, src: Any = None, sport: Any = None,
                  exitfirst: Any = False, userid: Any = 0) -> UdpprobePlan:
    """Check every parameter (``ValueError`` naming it) and fill defaults.

    ``payload``: bytes or a hex string, 1..1000 bytes (required, as in
    scamper). ``attempts``: probes to send, 1..20. ``stop_count``: stop
    sending once this many probes were answered (default 1, at most
    ``attempts``). ``wait_timeout``/``wait_probe``: seconds or timedelta,
    0.5..5 s. ``sport`` fixes the source port, so only with one attempt
    (each probe needs its own port for its replies to be its own).
    """
    d, family, s = target(dst, src)
    data = _payload(payload)
    if not data:
        raise ValueError("payload is required: bytes or a hex string of 1 - 1000 bytes "
                         "(the request the UDP service answers)")
    n = integer("attempts", attempts, 1, MAX_ATTEMPTS)
    assert n is not None
    sc = integer("stop_count", 1 if stop_count is None else stop_count, 1, MAX_ATTEMPTS)
    assert sc is not None
    if sc > n:
        raise ValueError(f"stop_count {sc} cannot be larger than attempts {n}")
    sp = integer("sport", sport, 1, 65535, optional=True)
    if sp is not None and n > 1:
        raise ValueError(f"sport fixes one source port, but attempts {n} needs one port per probe "
                         "(give sport only with attempts=1)")
    return UdpprobePlan(
        dst=d, family=family, dport=integer("dport", dport, 1, 65535),  # type: ignore[arg-type]
        payload=data, attempts=n, stop_count=sc,
        wait_timeout_ns=seconds("wait_timeout", wait_timeout, _WAIT_LO, _WAIT_HI),
        wait_probe_ns=seconds("wait_probe", wait_probe, _WAIT_LO, _WAIT_HI),
        src=s, sport=sp, exitfirst=boolean("exitfirst", exitfirst),
        userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


@dataclass
class UdpprobeRun:
    """Sans-I/O state: probes sent, tags outstanding, replies recorded."""

    plan: UdpprobePlan
    probes: list[UdpprobeProbe] = field(default_factory=list)
    socks: dict[int, UdpprobeProbe] = field(default_factory=dict)
    tags: dict[int, UdpprobeProbe] = field(default_factory=dict)
    strays: int = 0

    def sent(self, sock: int, tag: int, sport: int) -> UdpprobeProbe:
        p = UdpprobeProbe(tx_ns=None, sport=sport)
        self.probes.append(p)
        self.socks[sock] = p
        self.tags[tag] = p
        return p

    def on_ntag(self, tag: int, time_ns: int | None, ts_source: str | None, error: str | None) -> None:
        p = self.tags.pop(tag, None)
        if p is None:
            return
        if error:
            p.error = f"send failed: {error}"
            return
        p.tx_ns = time_ns
        p.tx_ts_source = ts_source if ts_source in ("kernel", "user") else None
        for r in p.replies:  # the stamp may arrive after a fast reply
            if r.rtt_ns is None and p.tx_ns is not None:
                r.rtt_ns = r.rx_ns - p.tx_ns

    def on_data(self, sock: int, data: bytes, rx_ns: int, ts_source: str | None, peer: Any, port: Any) -> bool:
        """Record a datagram on a probe's socket; False if not one of ours."""
        p = self.socks.get(sock)
        if p is None:
            self.strays += 1
            return False
        p.replies.append(UdpprobeReply(rx_ns=rx_ns, data=data,
                                       rtt_ns=None if p.tx_ns is None else rx_ns - p.tx_ns,
                                       src=peer, sport=port if isinstance(port, int) else None,
                                       rx_ts_source=ts_source if ts_source in ("kernel", "user") else None))
        return True

    def answered(self) -> int:
        return sum(1 for p in self.probes if p.replies)

    def result(self, *, src: str | None, sport: int, stop: UdpprobeStop, error: str | None,
               vp: str | None, start_local: int) -> Udpprobe:
        pl = self.plan
        first_tx = next((p.tx_ns for p in self.probes if p.tx_ns is not None), None)
        return Udpprobe(dst=pl.dst, dport=pl.dport, payload=pl.payload, src=src, sport=sport,
                        start_ns=first_tx if first_tx is not None else start_local, userid=pl.userid,
                        wait_timeout=_dt.timedelta(microseconds=pl.wait_timeout_ns // 1000),
                        wait_probe=_dt.timedelta(microseconds=pl.wait_probe_ns // 1000),
                        exitfirst=pl.exitfirst, probe_count=pl.attempts, stop_count=pl.stop_count,
                        probes=list(self.probes), stop_reason=stop, error=error, strays=self.strays,
                        vp=vp or None)


async def _next(stream: NotificationStream, deadline: float, watch: HaltWatch) -> Any:
    """The next notification before ``deadline`` (monotonic), None on timeout, ``HALTED``."""
    if watch.halted:
        return HALTED
    note = stream.poll()
    if note is not None:
        return note
    return await watch.next(stream, max(0.0, deadline - time.monotonic()))


async def udpprobe(io: PacketSession, dst: Any, dport: Any, *, payload: Any = None, attempts: Any = 1,
                   stop_count: Any = None, wait_timeout: Any = 2.0, wait_probe: Any = 1.0, src: Any = None,
                   sport: Any = None, exitfirst: Any = False, userid: Any = 0,
                   halt: asyncio.Event | None = None) -> Udpprobe:
    """Send ``payload`` to ``dst``:``dport`` and collect what comes back.

    Parameters are scamper's ``do_udpprobe`` (see ``plan_udpprobe``). The
    stop reason is ``done`` (the waits ended, answered or not), ``error``
    (a send failed, or the session was lost: see ``error``) or ``halted``.
    """
    plan = plan_udpprobe(dst, dport, payload=payload, attempts=attempts, stop_count=stop_count,
                         wait_timeout=wait_timeout, wait_probe=wait_probe, src=src, sport=sport,
                         exitfirst=exitfirst, userid=userid)
    run = UdpprobeRun(plan)
    start_local = time.time_ns()
    opened: list[int] = []
    watch = HaltWatch(halt)
    stop, error, laddr, first_sport = UdpprobeStop.DONE, None, plan.src, 0
    tag = random.SystemRandom().randrange(1, 2**31)
    with io.stream() as stream:
        try:
            for i in range(plan.attempts):
                opts: dict[str, Any] = {"raddr": plan.dst, "rport": plan.dport}
                if plan.src is not None:
                    opts["laddr"] = plan.src
                if plan.sport is not None:
                    opts["lport"] = plan.sport
                sid = await io.nopen("udp", family=plan.family, stream=stream, **opts)
                opened.append(sid)
                info = io.sockets[sid]
                laddr = laddr or info.laddr
                tag += 1
                run.sent(sid, tag, info.lport or 0)
                if i == 0:
                    first_sport = info.lport or 0
                try:
                    await io.nsend(sid, plan.payload, tag=tag)
                except EndpointError as exc:
                    run.probes[-1].error = f"send failed: {exc}"
                    stop, error = UdpprobeStop.ERROR, f"send failed: {exc}"
                    break
                last = i == plan.attempts - 1
                deadline = time.monotonic() + (plan.wait_timeout_ns if last else plan.wait_probe_ns) / NS
                outcome = await _collect(run, stream, deadline, watch, plan.exitfirst)
                if outcome is not None:
                    stop = outcome
                    break
                if not last and run.answered() >= plan.stop_count:
                    # enough probes answered: no more probes, but late and
                    # repeated replies still count until wait_timeout
                    deadline += (plan.wait_timeout_ns - plan.wait_probe_ns) / NS
                    outcome = await _collect(run, stream, deadline, watch, plan.exitfirst)
                    if outcome is not None:
                        stop = outcome
                    break
            if stop != UdpprobeStop.HALTED:
                await _await_stamps(run, stream, watch)
        except ConnectionLost as exc:
            stop, error = UdpprobeStop.ERROR, str(exc)
        finally:
            watch.close()
            for sid in opened:
                try:
                    await io.nclose(sid)
                except (EndpointError, ConnectionLost):
                    pass
    if plan.attempts > 1:
        first_sport = 0  # scamper: per-probe ports only
    return run.result(src=laddr, sport=plan.sport or first_sport, stop=stop, error=error,
                      vp=io.endpoint_name, start_local=start_local)


async def _collect(run: UdpprobeRun, stream: NotificationStream, deadline: float, watch: HaltWatch,
                   exitfirst: bool) -> UdpprobeStop | None:
    """Record notifications until ``deadline``; a stop reason if the run must end now."""
    while True:
        note = await _next(stream, deadline, watch)
        if note is None:
            return None
        if note is HALTED:
            return UdpprobeStop.HALTED
        _apply(run, note)
        if exitfirst and run.answered():
            return UdpprobeStop.DONE


def _apply(run: UdpprobeRun, note: Any) -> None:
    kind = note.kind
    if kind == "ntag":
        run.on_ntag(note.tag, note.time_ns, note.ts_source, note.error)
    elif kind == "ndata":
        run.on_data(note.sock, note.data, note.time_ns, note.ts_source, note.peer, note.port)
    elif kind == "nicmp":
        p = run.socks.get(note.sock)
        if p is not None and p.error is None:
            p.error = f"ICMP type {note.icmp_type} code {note.icmp_code} from {note.peer}"


async def _await_stamps(run: UdpprobeRun, stream: NotificationStream, watch: HaltWatch) -> None:
    """Transmit stamps still outstanding (an ntag can trail the reply)."""
    deadline = time.monotonic() + _TX_GRACE_S
    while run.tags:
        note = await _next(stream, deadline, watch)
        if note is None or note is HALTED:
            return
        _apply(run, note)

