"""scamper's alias-resolution primitives (``dealias``), once over the packet interface.

``ally``, ``mercator``, ``radargun``, ``prefixscan``, ``midarest`` and
``midardisc`` take any ``PacketSession`` (native, endpoint or remote
placement) and return a ``marionet.results.Dealias``.

Why it is shaped this way:

* **One engine, six schedules.** Every method is a list of (probedef, send
  time) slots: ally alternates two probedefs ``wait_probe`` apart, radargun
  and midarest go round every probedef ``rounds`` times, midardisc follows a
  given schedule from ``startat`` in the *endpoint's* clock (so probes from
  several VPs interleave as planned). Probes are queued with ``at=`` ahead of
  their slot and tagged, so the endpoint's scheduler sets the send time and
  the kernel stamps it (``ntag``); replies are kernel-stamped captures. The
  sans-I/O part (building, matching, verdicts) is ``dealias_core``.
  Mercator and prefixscan are adaptive: a run per attempt / per candidate.
* **Our own IP-IDs.** IPv4 probes carry our header, so each probe's IP-ID is
  known (recorded) and ICMP errors are matched by the quoted IP-ID.
* **IPv6** only where the method defines it: mercator (the source of a port
  unreachable needs no IP-ID). Ally, radargun, prefixscan and MIDAR compare
  IP-IDs, which IPv6 packets do not carry: refused with a ``ValueError``.
* **Validation first** (``plan_*``): every parameter is checked before a
  socket opens, in the API and on the endpoint alike; a task's worst-case
  duration is bounded (``check_task``). Probes go through ``nsend``, so the
  guard charges each one like any other probe.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from dataclasses import dataclass, field
from typing import Any

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P
from marionet.measure.dealias_core import (Probedef, Probing, Slot, ally_verdict, alternating_slots,
                                           check_probedefs, check_schedule, covering_prefix, disc_slots,
                                           mercator_verdict, prefix_candidates, radargun_sets, result_of,
                                           round_slots)
from marionet.measure.params import NS, MAX_TASK_S, integer, seconds, shown, task_duration
from marionet.measure.rawio import HALTED, HaltWatch, queue_lead_ns, route_source
from marionet.results.dealias import Dealias, DealiasProbe

__all__ = ["ally", "mercator", "radargun", "prefixscan", "midarest", "midardisc",
           "plan_ally", "plan_mercator", "plan_radargun", "plan_prefixscan", "plan_midarest",
           "plan_midardisc", "DealiasPlan"]

_TX_GRACE_NS = 1_000_000_000
_QUEUE_WINDOW_NS = 20_000_000  # probes queued this far beyond the lead, in one go
MAX_PROBES = 200_000


@dataclass(frozen=True)
class DealiasPlan:
    """Validated parameters of one dealias primitive, defaults filled in."""

    method: str
    probedefs: tuple[Probedef, ...]
    slots: tuple[Slot, ...]
    wait_timeout_ns: int
    wait_probe_ns: int = 0
    wait_round_ns: int = 0
    attempts: int = 0
    fudge: int = 0
    userid: int = 0
    runs: int = 1  #: mercator attempts / prefixscan candidates × attempts: runs at worst
    startat_ns: int | None = None
    schedule: tuple[tuple[int, int, int], ...] | None = None
    near: str | None = None
    far: str | None = None
    prefixlen: int = 0
    candidates: tuple[str, ...] = ()
    replyc: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def worst_s(self) -> float:
        last = self.slots[-1].at_ns if self.slots else 0
        return self.runs * (last + self.wait_timeout_ns + _TX_GRACE_NS) / NS

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        task_duration(self.method, self.worst_s(),
                      f"{self.runs} run(s) × (last probe at {self.slots[-1].at_ns / NS:g} s "
                      f"+ wait_timeout {self.wait_timeout_ns / NS:g} s)", max_s)


def _wait(name: str, v: Any, lo: float, hi: float) -> int:
    return seconds(name, v, lo, hi)


def _two(dst1: Any, dst2: Any) -> tuple[str, str]:
    out = []
    for name, v in (("dst1", dst1), ("dst2", dst2)):
        try:
            out.append(str(ipaddress.ip_address(v)))
        except (ValueError, TypeError):
            raise ValueError(f"{name} must be an IP address, got {shown(v)}") from None
    if out[0] == out[1]:
        raise ValueError(f"ally needs two different addresses, got {out[0]} twice")
    return out[0], out[1]


def _addrs(what: str, addrs: Any, *, minimum: int = 1) -> list[str]:
    if addrs is None:
        return []
    if isinstance(addrs, str) or not isinstance(addrs, (list, tuple)):
        raise ValueError(f"{what}: addrs must be a list of IP addresses, got {shown(addrs)}")
    out = []
    for i, a in enumerate(addrs):
        try:
            out.append(str(ipaddress.ip_address(a)))
        except (ValueError, TypeError):
            raise ValueError(f"{what}: addrs[{i}] is not an IP address: {shown(a)}") from None
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: addrs lists an address twice")
    if len(out) < minimum:
        raise ValueError(f"{what} needs at least {minimum} address(es), got {len(out)}")
    return out


def _probe_count(what: str, n: int) -> None:
    if n > MAX_PROBES:
        raise ValueError(f"{what} would send {n} probes; at most {MAX_PROBES} per measurement")


def _pd_opts(method: Any, **kw: Any) -> dict[str, Any]:
    d = {"method": method}
    d.update({k: v for k, v in kw.items() if v is not None})
    return d


# ------------------------------------------------------------------- plans

def plan_ally(dst1: Any, dst2: Any, *, fudge: Any = 200, method: Any = "icmp-echo", attempts: Any = 5,
              wait_probe: Any = 0.15, wait_timeout: Any = 5.0, probedefs: Any = None, src: Any = None,
              ttl: Any = None, size: Any = None, sport: Any = None, dport: Any = None, icmp_id: Any = None,
              userid: Any = 0) -> DealiasPlan:
    """Ally: ``attempts`` probes alternating dst1, dst2. ``probedefs``: two
    dicts (one per address; their dst is set) instead of ``method`` & co."""
    a, b = _two(dst1, dst2)
    if probedefs is None:
        one = _pd_opts(method, src=src, ttl=ttl, size=size, sport=sport, dport=dport, icmp_id=icmp_id)
        if "sport" not in one and not str(method).startswith("icmp"):
            one["sport"] = random.SystemRandom().randrange(20000, 60000)
        if "icmp_id" not in one:
            one["icmp_id"] = random.SystemRandom().randrange(1, 0x10000)
        probedefs = [one, one]
    if not isinstance(probedefs, (list, tuple)) or len(probedefs) != 2:
        raise ValueError("ally: probedefs must be two dicts, one per address")
    raw = [dict(p, dst=d) if isinstance(p, dict) else p for p, d in zip(probedefs, (a, b))]
    pds = check_probedefs(raw, what="ally")
    n = integer("attempts", attempts, 2, 30)
    wp = _wait("wait_probe", wait_probe, 0.001, 10.0)
    return DealiasPlan("ally", tuple(pds), tuple(alternating_slots(n, wp)),  # type: ignore[arg-type]
                       _wait("wait_timeout", wait_timeout, 0.1, 60.0), wait_probe_ns=wp, attempts=n,  # type: ignore[arg-type]
                       fudge=integer("fudge", fudge, 0, 0x7FFF), userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


def plan_mercator(dst: Any, *, attempts: Any = 3, wait_timeout: Any = 5.0, src: Any = None, ttl: Any = None,
                  sport: Any = None, dport: Any = 33435, size: Any = None, userid: Any = 0) -> DealiasPlan:
    """Mercator: a UDP probe to an unused port; up to ``attempts`` tries
    until one draws a reply."""
    pds = check_probedefs([_pd_opts("udp", dst=dst, src=src, ttl=ttl, sport=sport, dport=dport, size=size)],
                          what="mercator", v6_ok=True)
    n = integer("attempts", attempts, 1, 10)
    return DealiasPlan("mercator", tuple(pds), (Slot(0, 0),), _wait("wait_timeout", wait_timeout, 0.1, 60.0),
                       attempts=n, runs=n, userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


def _rounds_plan(method: str, addrs: Any, probedefs: Any, rounds: Any, wait_probe: Any, wait_round: Any,
                 wait_timeout: Any, fudge: Any, userid: Any, minimum: int) -> DealiasPlan:
    dsts = _addrs(method, addrs)
    pds = check_probedefs(probedefs, what=method, dsts=dsts or None, default="icmp-echo")
    if len({pd.dst for pd in pds}) < minimum:
        raise ValueError(f"{method} needs at least {minimum} addresses")
    n = integer("rounds", rounds, 1, 1000)
    wp = _wait("wait_probe", wait_probe, 0.0, 10.0)
    wr = _wait("wait_round", wait_round, 0.0, 600.0)
    _probe_count(method, n * len(pds))  # type: ignore[operator]
    return DealiasPlan(method, tuple(pds), tuple(round_slots(len(pds), n, wp, wr)),  # type: ignore[arg-type]
                       _wait("wait_timeout", wait_timeout, 0.1, 60.0), wait_probe_ns=wp, wait_round_ns=wr,
                       attempts=n, fudge=integer("fudge", fudge, 0, 0x7FFF),  # type: ignore[arg-type]
                       userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


def plan_radargun(addrs: Any = None, *, rounds: Any = 30, probedefs: Any = None, wait_probe: Any = 0.15,
                  wait_round: Any = 0.0, wait_timeout: Any = 5.0, fudge: Any = 0, userid: Any = 0) -> DealiasPlan:
    """RadarGun: every (address, probedef) once per round, ``rounds`` rounds."""
    return _rounds_plan("radargun", addrs, probedefs, rounds, wait_probe, wait_round, wait_timeout, fudge,
                        userid, 2)


def plan_midarest(addrs: Any = None, probedefs: Any = None, *, rounds: Any = 30, wait_probe: Any = 0.01,
                  wait_round: Any = 1.0, wait_timeout: Any = 1.0, userid: Any = 0) -> DealiasPlan:
    """MIDAR estimation: each (address, probedef) sampled once per round."""
    return _rounds_plan("midarest", addrs, probedefs, rounds, wait_probe, wait_round, wait_timeout, 0, userid, 1)


def plan_midardisc(probedefs: Any, schedule: Any, *, startat: Any = None, wait_probe: Any = 0.0,
                   wait_timeout: Any = 1.0, userid: Any = 0) -> DealiasPlan:
    """MIDAR discovery: probedefs (each with its dst) sent on ``schedule``
    (rounds of (start_ns_offset, begin, end)) from ``startat`` (endpoint
    clock, ns since the epoch; None: as soon as the probes can be queued)."""
    pds = check_probedefs(probedefs, what="midardisc", default="icmp-echo")
    rounds = check_schedule(schedule, len(pds))
    wp = _wait("wait_probe", wait_probe, 0.0, 10.0)
    slots = disc_slots(rounds, wp)
    _probe_count("midardisc", len(slots))
    at = integer("startat", startat, 0, 2**63 - 1, optional=True)
    return DealiasPlan("midardisc", tuple(pds), tuple(slots), _wait("wait_timeout", wait_timeout, 0.1, 60.0),
                       wait_probe_ns=wp, attempts=len(rounds), startat_ns=at, schedule=tuple(rounds),
                       userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


def plan_prefixscan(near: Any, far: Any, prefixlen: Any, *, method: Any = "icmp-echo", probedefs: Any = None,
                    attempts: Any = 2, replyc: Any = 5, fudge: Any = 200, wait_probe: Any = 1.0,
                    wait_timeout: Any = 5.0, userid: Any = 0) -> DealiasPlan:
    """Prefixscan: ally tests of ``near`` against each address of the
    /``prefixlen`` around ``far`` (``prefix_candidates`` order) until one is
    an alias; a candidate that does not answer is tried ``attempts`` times."""
    a, b = _two(near, far)
    fam = ipaddress.ip_address(a).version
    if fam == 6 or ipaddress.ip_address(b).version == 6:
        raise ValueError("prefixscan needs IPv4: it compares IP-IDs, and IPv6 packets carry none")
    plen = integer("prefixlen", prefixlen, 24, 31)
    one = probedefs[0] if isinstance(probedefs, (list, tuple)) and probedefs else probedefs
    raw = dict(one) if isinstance(one, dict) else _pd_opts(method)
    raw.setdefault("icmp_id", random.SystemRandom().randrange(1, 0x10000))
    raw.setdefault("sport", random.SystemRandom().randrange(20000, 60000))
    cands = prefix_candidates(a, b, plen)  # type: ignore[arg-type]
    pds = check_probedefs([dict(raw, dst=d) for d in [a, *cands]], what="prefixscan")
    n = integer("replyc", replyc, 3, 30)
    k = integer("attempts", attempts, 1, 5)
    wp = _wait("wait_probe", wait_probe, 0.001, 10.0)
    return DealiasPlan("prefixscan", tuple(pds), tuple(alternating_slots(n, wp)),  # type: ignore[arg-type]
                       _wait("wait_timeout", wait_timeout, 0.1, 60.0), wait_probe_ns=wp, attempts=k,  # type: ignore[arg-type]
                       fudge=integer("fudge", fudge, 0, 0x7FFF), runs=len(cands) * k, near=a, far=b,  # type: ignore[arg-type]
                       prefixlen=plen, candidates=tuple(cands), replyc=n,  # type: ignore[arg-type]
                       userid=integer("userid", userid, 0, 2**32 - 1))  # type: ignore[arg-type]


# ------------------------------------------------------------------ engine

def _now() -> int:
    return time.time_ns()


#: How late a given ``startat`` may be before midardisc refuses to run the schedule (ns): a few ms
#: of scheduling slack, not a schedule that has already begun.
PAST_STARTAT_NS = 20_000_000


async def _source(io: PacketSession, pds: list[Probedef] | tuple[Probedef, ...]) -> str:
    given = next((pd.src for pd in pds if pd.src), None)
    if given:
        return given
    first = pds[0]
    assert first.dst is not None
    return await route_source(io, first.family or 4, first.dst, 33435)


@dataclass
class _Sockets:
    send: dict[int, int] = field(default_factory=dict)  # IP protocol -> socket
    capture: set[int] = field(default_factory=set)
    opened: list[int] = field(default_factory=list)


async def _open(io: PacketSession, run: Probing, stream: Any, socks: _Sockets, ttl: int) -> None:
    filters = run.filters()
    if run.family == 4:
        for proto in sorted(run.protos() | {P.IPPROTO_ICMP}):
            sid = await io.nopen("raw", family=4, ipproto=proto, hdrincl=True, laddr=run.src, stream=stream)
            socks.opened.append(sid)
            socks.send[proto] = sid
            if proto in filters:
                await io.ncap(sid, filters[proto])
                socks.capture.add(sid)
    else:
        sid = await io.nopen("raw", family=6, ipproto=P.IPPROTO_UDP, laddr=run.src, stream=stream, ttl=ttl)
        socks.opened.append(sid)
        socks.send[P.IPPROTO_UDP] = sid
        await io.ncap(sid, filters[P.IPPROTO_UDP])
        socks.capture.add(sid)


async def _close(io: PacketSession, socks: _Sockets) -> None:
    for sid in socks.opened:
        try:
            await io.nclose(sid)
        except (EndpointError, ConnectionLost):
            pass


async def _engine(io: PacketSession, run: Probing, wait_timeout_ns: int, *, startat_ns: int | None = None,
                  halt: asyncio.Event | None = None) -> tuple[int, str | None]:
    """Send ``run``'s slots on time and collect replies until ``wait_timeout``
    after the last probe's transmit (or everything answered). Returns
    (start in the endpoint clock, error or None; "halted" when halted)."""
    socks = _Sockets()
    watch = HaltWatch(halt)
    error: str | None = None
    ttl = run.probedefs[0].ttl
    with io.stream() as stream:
        try:
            await _open(io, run, stream, socks, ttl)
            off = await io.clock_offset(samples=3)
            offset, lead = off.offset_ns, queue_lead_ns(off.rtt_ns)
            start = startat_ns if startat_ns is not None else _now() + offset + lead
            if startat_ns is not None and run.slots:
                late = _now() + offset - (start + run.slots[0].at_ns)
                if late > PAST_STARTAT_NS:
                    # Sent now, the schedule would collapse into a burst and break the interleaving
                    # across VPs it exists for: nothing is sent, and the result says why.
                    return start, (f"startat is {late / 1e6:.1f} ms in the past in this VP's clock "
                                   f"(first slot due then); nothing sent — schedule it ahead")
            tag_base = random.SystemRandom().randrange(1, 2**30)
            pending: list[tuple[int, asyncio.Future]] = []
            nxt = 0
            deadline_ep: int | None = None
            while True:
                if watch.halted:
                    error = "halted"
                    break
                local = _now()
                # queue every slot due within the lead (+ a window, to batch)
                while nxt < len(run.slots) and local + offset >= start + run.slots[nxt].at_ns - lead - _QUEUE_WINDOW_NS:
                    proto, data, dst = run.probe(nxt)
                    at = start + run.slots[nxt].at_ns
                    pending.append((nxt, io.nsend_nowait(socks.send[proto], data, dst=dst, at=at,
                                                         tag=tag_base + nxt)))
                    nxt += 1
                if pending and (len(pending) > 64 or nxt >= len(run.slots)):
                    for n, fut in pending:
                        try:
                            await fut
                        except EndpointError as exc:
                            run.sent(n, None, None, error=f"send failed: {exc}")
                            error = error or f"probe {n}: {exc}"
                    pending.clear()
                if nxt >= len(run.slots):
                    if run.all_done():
                        break
                    last = max((p.tx_ns or (start + run.slots[i].at_ns)) for i, p in enumerate(run.probes))
                    end_ep = last + wait_timeout_ns
                    if any(p.tx_ns is None and p.error is None for p in run.probes):
                        end_ep = max(end_ep, min(local + offset + 20_000_000,
                                                 start + run.slots[-1].at_ns + wait_timeout_ns + _TX_GRACE_NS))
                    if local + offset >= end_ep:
                        if deadline_ep is None:
                            deadline_ep = end_ep
                            try:
                                await io.ping()  # flush what the endpoint already has
                            except ConnectionLost:
                                pass
                        note = stream.poll()
                        if note is None:
                            break
                        _apply(run, note, socks, tag_base, deadline_ep)
                        continue
                    wake = end_ep - offset
                else:
                    wake = start + run.slots[nxt].at_ns - lead - _QUEUE_WINDOW_NS - offset
                note = stream.poll()
                if note is None:
                    note = await watch.next(stream, max(0.0, (wake - _now()) / NS))
                    if note is None or note is HALTED:
                        continue
                _apply(run, note, socks, tag_base, deadline_ep)
        except ConnectionLost as exc:
            error = str(exc)
            start = locals().get("start", _now())
        finally:
            watch.close()
            await _close(io, socks)
    return start, error


def _apply(run: Probing, note: Any, socks: _Sockets, tag_base: int, deadline_ep: int | None) -> None:
    kind = note.kind
    if kind == "ndata" and note.sock in socks.capture:
        if deadline_ep is not None and note.time_ns > deadline_ep:
            return
        pkt = P.parse_packet(note.data)
        if pkt is not None:
            run.received(pkt, note.time_ns)
    elif kind == "ntag":
        n = note.tag - tag_base
        if 0 <= n < len(run.probes):
            if note.error:
                run.sent(n, None, None, error=f"send failed: {note.error}")
            else:
                run.sent(n, note.time_ns, note.ts_source if note.ts_source in ("kernel", "user") else None)


def _common(plan: DealiasPlan, run: Probing, error: str | None, vp: str | None) -> dict[str, Any]:
    return dict(userid=plan.userid, attempts=plan.attempts, fudge=plan.fudge, wait_probe_ns=plan.wait_probe_ns,
                wait_round_ns=plan.wait_round_ns, wait_timeout_ns=plan.wait_timeout_ns,
                error=None if error == "halted" else error, vp=vp or None)


def _result_code(verdict: str, error: str | None) -> str:
    return "halted" if error == "halted" else verdict


# --------------------------------------------------------------- primitives

async def ally(io: PacketSession, dst1: Any, dst2: Any, *, fudge: Any = 200, method: Any = "icmp-echo",
               attempts: Any = 5, wait_probe: Any = 0.15, wait_timeout: Any = 5.0, probedefs: Any = None,
               src: Any = None, ttl: Any = None, size: Any = None, sport: Any = None, dport: Any = None,
               icmp_id: Any = None, userid: Any = 0, halt: asyncio.Event | None = None) -> Dealias:
    """scamper's Ally: are ``dst1`` and ``dst2`` one router (one IP-ID counter)?"""
    plan = plan_ally(dst1, dst2, fudge=fudge, method=method, attempts=attempts, wait_probe=wait_probe,
                     wait_timeout=wait_timeout, probedefs=probedefs, src=src, ttl=ttl, size=size,
                     sport=sport, dport=dport, icmp_id=icmp_id, userid=userid)
    run = Probing(list(plan.probedefs), list(plan.slots), await _source(io, plan.probedefs))
    start, error = await _engine(io, run, plan.wait_timeout_ns, halt=halt)
    verdict = ally_verdict(run.probes, plan.fudge)
    return result_of("ally", run, start_ns=start, result=_result_code(verdict, error),
                     **_common(plan, run, error, io.endpoint_name))


async def mercator(io: PacketSession, dst: Any, *, attempts: Any = 3, wait_timeout: Any = 5.0, src: Any = None,
                   ttl: Any = None, sport: Any = None, dport: Any = 33435, size: Any = None, userid: Any = 0,
                   halt: asyncio.Event | None = None) -> Dealias:
    """Mercator: a UDP probe to an unused port of ``dst``; a port unreachable
    from another address names an alias. IPv4 and IPv6."""
    plan = plan_mercator(dst, attempts=attempts, wait_timeout=wait_timeout, src=src, ttl=ttl, sport=sport,
                         dport=dport, size=size, userid=userid)
    source = await _source(io, plan.probedefs)
    probes: list[DealiasProbe] = []
    start, error, run = 0, None, None
    for attempt in range(plan.attempts):
        run = Probing(list(plan.probedefs), list(plan.slots), source)
        s, error = await _engine(io, run, plan.wait_timeout_ns, halt=halt)
        start = start or s
        for p in run.probes:
            p.seq = attempt
        probes += run.probes
        if error or any(p.replies for p in run.probes):
            break
    assert run is not None
    run.probes = probes
    return result_of("mercator", run, start_ns=start, result=_result_code(mercator_verdict(probes), error),
                     **_common(plan, run, error, io.endpoint_name))


async def _rounds(method: str, io: PacketSession, plan: DealiasPlan, halt: asyncio.Event | None,
                  startat_ns: int | None = None) -> tuple[Probing, int, str | None]:
    run = Probing(list(plan.probedefs), list(plan.slots), await _source(io, plan.probedefs))
    start, error = await _engine(io, run, plan.wait_timeout_ns, startat_ns=startat_ns, halt=halt)
    return run, start, error


async def radargun(io: PacketSession, addrs: Any = None, *, rounds: Any = 30, probedefs: Any = None,
                   wait_probe: Any = 0.15, wait_round: Any = 0.0, wait_timeout: Any = 5.0, fudge: Any = 0,
                   userid: Any = 0, halt: asyncio.Event | None = None) -> Dealias:
    """RadarGun: sample every address's IP-ID ``rounds`` times; addresses whose
    merged samples are one counter form an alias set (``aliases()``)."""
    plan = plan_radargun(addrs, rounds=rounds, probedefs=probedefs, wait_probe=wait_probe, wait_round=wait_round,
                         wait_timeout=wait_timeout, fudge=fudge, userid=userid)
    run, start, error = await _rounds("radargun", io, plan, halt)
    sets = radargun_sets(run.probes, plan.fudge)
    return result_of("radargun", run, start_ns=start, result=_result_code("none", error), alias_sets=sets,
                     **_common(plan, run, error, io.endpoint_name))


async def midarest(io: PacketSession, addrs: Any = None, probedefs: Any = None, *, rounds: Any = 30,
                   wait_probe: Any = 0.01, wait_round: Any = 1.0, wait_timeout: Any = 1.0, userid: Any = 0,
                   halt: asyncio.Event | None = None) -> Dealias:
    """MIDAR estimation: IP-ID samples of each (address, probedef) over
    ``rounds`` rounds; the analysis is marionet.measure.midar's."""
    plan = plan_midarest(addrs, probedefs, rounds=rounds, wait_probe=wait_probe, wait_round=wait_round,
                         wait_timeout=wait_timeout, userid=userid)
    run, start, error = await _rounds("midarest", io, plan, halt)
    return result_of("midarest", run, start_ns=start, result=_result_code("none", error),
                     **_common(plan, run, error, io.endpoint_name))


async def midardisc(io: PacketSession, probedefs: Any, schedule: Any, *, startat: Any = None,
                    wait_probe: Any = 0.0, wait_timeout: Any = 1.0, userid: Any = 0,
                    halt: asyncio.Event | None = None) -> Dealias:
    """MIDAR discovery: probedefs sent exactly on ``schedule`` from
    ``startat`` (endpoint clock, ns), each queued with ``at=``."""
    plan = plan_midardisc(probedefs, schedule, startat=startat, wait_probe=wait_probe, wait_timeout=wait_timeout,
                          userid=userid)
    run, start, error = await _rounds("midardisc", io, plan, halt, startat_ns=plan.startat_ns)
    return result_of("midardisc", run, start_ns=start, result=_result_code("none", error), startat_ns=start,
                     schedule=[tuple(r) for r in plan.schedule or ()],
                     **_common(plan, run, error, io.endpoint_name))


async def prefixscan(io: PacketSession, near: Any, far: Any, prefixlen: Any, *, method: Any = "icmp-echo",
                     probedefs: Any = None, attempts: Any = 2, replyc: Any = 5, fudge: Any = 200,
                     wait_probe: Any = 1.0, wait_timeout: Any = 5.0, userid: Any = 0,
                     halt: asyncio.Event | None = None) -> Dealias:
    """Prefixscan: find an alias of ``near`` in the /``prefixlen`` around
    ``far`` by ally tests (scamper's semantics; ``ab`` is the alias found,
    with the smallest prefix holding it and ``far``)."""
    plan = plan_prefixscan(near, far, prefixlen, method=method, probedefs=probedefs, attempts=attempts,
                           replyc=replyc, fudge=fudge, wait_probe=wait_probe, wait_timeout=wait_timeout,
                           userid=userid)
    pds = list(plan.probedefs)
    source = await _source(io, plan.probedefs)
    probes: list[DealiasProbe] = []
    start, error, found = 0, None, None
    seqs: dict[int, int] = {}
    for ci in range(1, len(pds)):
        for _ in range(plan.attempts):
            run = Probing([pds[0], pds[ci]], list(plan.slots), source)
            s, error = await _engine(io, run, plan.wait_timeout_ns, halt=halt)
            start = start or s
            for p in run.probes:
                p.probedef = 0 if p.probedef == 0 else ci
                p.seq = seqs.get(p.probedef, 0)
                seqs[p.probedef] = p.seq + 1
            probes += run.probes
            verdict = _verdict2(run.probes, ci, plan.fudge)
            if error or verdict != "none":
                break
        if error:
            break
        if verdict == "aliases":
            found = pds[ci].dst
            break
    full = Probing(pds, [], source)
    full.probes = probes
    ab = covering_prefix(plan.far, found) if found else None  # type: ignore[arg-type]
    net = ipaddress.ip_network(f"{plan.far}/{plan.prefixlen}", strict=False)
    return result_of("prefixscan", full, start_ns=start, result=_result_code("aliases" if found else "none", error),
                     prefix=(plan.near, f"{plan.far}/{plan.prefixlen}", ab), replyc=plan.replyc,
                     extra={"prefix": str(net)}, **_common(plan, full, error, io.endpoint_name))


def _verdict2(probes: list[DealiasProbe], ci: int, fudge: int) -> str:
    """Ally's verdict for one (near, candidate) run; probedef indexes are
    already renumbered (0: near, ``ci``: the candidate)."""
    view = [DealiasProbe(probedef=0 if p.probedef == 0 else 1, dst=p.dst, seq=p.seq, tx_ns=p.tx_ns, ipid=p.ipid,
                         replies=p.replies) for p in probes]
    return ally_verdict(view, fudge)
