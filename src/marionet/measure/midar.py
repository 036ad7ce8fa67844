"""MIDAR across coordinated VPs: estimation → discovery → elimination →
corroboration (Keys et al., IEEE/ACM ToN 2013).

The analysis is sans-I/O (:mod:`marionet.measure.midar_analysis`); this
module plans each phase's probes (who sends what, when, in the
controller's clock), hands the plan to a :class:`Prober`, and analyses what
comes back. :class:`CtrlProber` runs a plan through the endpoints' dealias
primitives (``do_midarest`` for estimation, ``do_midardisc`` for the
scheduled phases), converting each send time into the VP's own clock with
the controller's estimate of that VP's offset, so probes from different
VPs reach a target in the planned order; replies come back converted to the
controller's clock with the offset's uncertainty (RTT/2 of the exchange it
came from) widening the bounds the MBT uses. :mod:`marionet.measure.midar_sim`
is a second Prober, driving the alias-router emulator's packet logic in
virtual time, for tests and benches.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as _dt
import json
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .midar_analysis import (
    WRAP,
    Estimate,
    IpidSample,
    MbtParams,
    alias_sets_from_pairs,
    best_methods,
    candidate_pairs,
    estimate_all,
    sliding_windows,
    window_size,
)

__all__ = [
    "DEFAULT_METHODS",
    "PlannedProbe",
    "Prober",
    "CtrlProber",
    "MidarParams",
    "MidarResult",
    "samples_from_dealias",
    "plan_estimation",
    "plan_fast",
    "plan_rounds",
    "components",
    "run_midar",
    "run_midar_with",
]

DEFAULT_METHODS = ("tcp-ack", "udp", "icmp-echo")


@dataclass(frozen=True, slots=True)
class PlannedProbe:
    """One probe of a plan: ``vp`` sends ``method`` to ``addr`` at ``at_ns``
    (controller clock, absolute ns since the epoch)."""

    vp: str
    addr: str
    method: str
    at_ns: int


class Prober(Protocol):
    """Sends a plan's probes and returns one sample per probe (unanswered
    ones with ``rx_ns=None``), in any order, times in the controller's
    clock; ``now_ns`` is the controller clock the plan is written in."""

    def now_ns(self) -> int: ...

    async def run(self, plan: Sequence[PlannedProbe], phase: str) -> list[IpidSample]: ...


# --------------------------------------------------------------- adapter


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def samples_from_dealias(result: Any, vp: str, *, offset_ns: int = 0, err_ns: int = 0) -> list[IpidSample]:
    """IpidSamples from a ``marionet.results.dealias.Dealias`` (midarest or
    midardisc): one per probe, its first reply carrying an IP-ID, times
    shifted from the VP's clock to the controller's (``offset_ns`` = VP
    clock − controller clock). A probe that was never sent gives no sample."""
    probedefs = list(_get(result, "probedefs", None) or [])
    out = []
    for p in _get(result, "probes", None) or []:
        pd = _get(p, "probedef")
        if isinstance(pd, int):
            if not 0 <= pd < len(probedefs):
                raise ValueError(f"samples_from_dealias: probedef index {pd} outside {len(probedefs)} probedefs")
            pd = probedefs[pd]
        method = _get(pd, "method")
        if method is None:
            raise ValueError(f"samples_from_dealias: probe to {_get(p, 'dst')} has no probedef method")
        tx = _get(p, "tx_ns")
        if tx is None:          # never sent (the guard denied it, the send failed): no sample; the phase's
            continue            # statistics count it as planned but not sent
        rx = ipid = None
        for r in _get(p, "replies", None) or []:
            if _get(r, "ipid") is not None and _get(r, "rx_ns") is not None:
                rx, ipid = int(_get(r, "rx_ns")) - offset_ns, int(_get(r, "ipid"))
                break
        out.append(IpidSample(str(_get(p, "dst")), str(method), vp, int(tx) - offset_ns, rx, ipid, err_ns))
    return out


# -------------------------------------------------------------- planning


def plan_estimation(split: Mapping[str, Sequence[str]], methods: Sequence[str], rounds: int, rate_pps: float,
                    start_ns: int) -> list[PlannedProbe]:
    """Each VP probes its own share of targets with every method, round
    after round, at ``rate_pps``."""
    return _paced(split, rate_pps, start_ns,
                  lambda addrs: ((a, m) for _ in range(rounds) for a in addrs for m in methods))


def plan_fast(split: Mapping[str, Sequence[str]], methods: Sequence[str], rounds: int, rate_pps: float,
              start_ns: int) -> list[PlannedProbe]:
    """Estimation again for addresses whose counter looked non-monotonic or
    too fast at the estimation's spacing (a counter at 30,000 IDs/s wraps
    every 2 s, and one estimation round over a VP's share takes longer):
    each address's ``rounds`` × methods probes back to back at ``rate_pps``,
    so consecutive samples are milliseconds apart. Random-ID routers stay
    non-monotonic at any spacing."""
    return _paced(split, rate_pps, start_ns,
                  lambda addrs: ((a, m) for a in addrs for _ in range(rounds) for m in methods))


def _paced(split: Mapping[str, Sequence[str]], rate_pps: float, start_ns: int,
           order: Any) -> list[PlannedProbe]:
    """Each VP's (address, method) sequence ``order(its share)`` at ``rate_pps``."""
    if rate_pps <= 0:
        raise ValueError(f"rate_pps {rate_pps!r} must be > 0")
    gap = 1e9 / rate_pps
    return [PlannedProbe(vp, a, m, start_ns + int(k * gap))
            for vp, addrs in split.items() for k, (a, m) in enumerate(order(addrs))]


def plan_rounds(groups: Sequence[Sequence[str]], method_of: Mapping[str, str], vps: Sequence[str], rounds: int,
                rate_pps: float, start_ns: int, *, target_rate_pps: float | None = None,
                velocity_of: Mapping[str, float] | None = None) -> list[PlannedProbe]:
    """Groups (windows or candidate sets) one after another; inside a group,
    ``rounds`` round-robin passes over its addresses, consecutive probes
    sent by consecutive VPs, at ``rate_pps`` per VP (so the aggregate is
    len(vps) × rate_pps): every address is sampled from every VP, close in
    time to the others of its group.

    ``target_rate_pps``: at most this many probes a second to one address —
    a small group's rounds are stretched (idle time) so that a router with
    several interfaces in the group is not probed faster than routers
    rate-limit their replies; but never so far that the group's fastest
    counter (``velocity_of``) could move a quarter of the ID space between
    two samples of one address."""
    if not vps:
        raise ValueError("plan_rounds: no VPs")
    if rate_pps <= 0:
        raise ValueError(f"rate_pps {rate_pps!r} must be > 0")
    if target_rate_pps is not None and target_rate_pps <= 0:
        raise ValueError(f"target_rate_pps {target_rate_pps!r} must be > 0")
    gap = 1e9 / (rate_pps * len(vps))
    out = []
    k = 0
    t = 0.0
    for g in groups:
        stride = _spread_stride(len(g))
        round_ns = len(g) * gap
        if target_rate_pps is not None:
            want = 1e9 / target_rate_pps
            vmax = max((velocity_of or {}).get(a, 0.0) for a in g) if velocity_of else 0.0
            if vmax > 0:
                want = min(want, (WRAP / 4) / vmax * 1e9)
            round_ns = max(round_ns, want)
        # Stretched rounds spread their probes evenly, not in a burst and then idle: our own probes
        # step a router's counter too, and a burst of them to one router's interfaces outruns the
        # velocity bound (its mean rate) the MBT checks steps against (seen live).
        step = round_ns / len(g)
        for r in range(rounds):
            for j in range(len(g)):
                a = g[(j * stride) % len(g)]
                out.append(PlannedProbe(vps[(k + r) % len(vps)], a, method_of[a], start_ns + int(t)))
                k += 1
                t += step
    return out


def _spread_stride(n: int) -> int:
    """A stride coprime with n near n/φ²: walking a velocity-sorted group
    with it puts neighbours (likely aliases) far apart in time, so a slow
    router is not hit by a burst of our own probes that its velocity
    bound cannot explain."""
    if n <= 2:
        return 1
    s = max(1, round(n * 0.381966))
    while math.gcd(s, n) != 1:
        s += 1
    return s


def components(pairs: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Connected components (sorted) of a pair graph: the candidate sets."""
    adj: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        adj[a].add(b)
        adj[b].add(a)
    seen: set[str] = set()
    out = []
    for s in sorted(adj):
        if s in seen:
            continue
        comp, stack = set(), [s]
        while stack:
            x = stack.pop()
            if x not in comp:
                comp.add(x)
                stack.extend(adj[x] - comp)
        seen |= comp
        out.append(sorted(comp))
    return out


def _batches(sets: Sequence[Sequence[str]], limit: int) -> list[list[str]]:
    """Candidate sets packed into probing groups of at most ``limit``
    addresses (a set larger than the limit is its own group)."""
    out: list[list[str]] = []
    cur: list[str] = []
    for s in sets:
        if cur and len(cur) + len(s) > limit:
            out.append(cur)
            cur = []
        cur.extend(s)
    if cur:
        out.append(cur)
    return out


def _split_by_plan(plan: Sequence[PlannedProbe], sizes: Sequence[int],
                   samples: Iterable[IpidSample]) -> list[list[IpidSample]]:
    """Samples into the groups of a plan made of consecutive runs of
    ``sizes`` probes, each by the planned probe of its VP and address
    nearest its send time."""
    times: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    k = 0
    for g, n in enumerate(sizes):
        for pp in plan[k:k + n]:
            times[(pp.vp, pp.addr)].append((pp.at_ns, g))
        k += n
    for v in times.values():
        v.sort()
    out: list[list[IpidSample]] = [[] for _ in sizes]
    for smp in samples:
        cand = times.get((smp.vp, smp.addr))
        if not cand:  # a Prober answering for a probe it was not given
            raise ValueError(f"sample for {smp.addr} from {smp.vp}: no such probe in the plan")
        i = bisect.bisect_left(cand, (smp.tx_ns, -1))
        near = min(cand[max(0, i - 1):i + 1], key=lambda c: abs(c[0] - smp.tx_ns))
        out[near[1]].append(smp)
    return out


def _all_pairs(sets: Iterable[Sequence[str]]) -> set[tuple[str, str]]:
    return {(a, b) for s in sets for i, a in enumerate(s) for b in s[i + 1:]}


# ---------------------------------------------------------------- result


@dataclass(frozen=True)
class MidarParams:
    """Knobs of a run (MIDAR's defaults scaled to a lab)."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    rate_pps: float = 100.0  # per VP
    estimation_rounds: int = 10
    discovery_rounds: int = 6
    elimination_rounds: int = 6
    corroboration_rounds: int = 6
    max_window: int = 400
    lead_s: float = 0.5  # how far ahead of now each phase is scheduled, plus:
    lead_per_probe_s: float = 0.0004  # per probe of the largest VP share (a task's set-up grows with it)
    fast_rounds: int = 10  # estimation again, closely spaced, for non-monotonic/fast addresses (0: off)
    target_rate_pps: float = 2.0  # at most this many probes/s to one address in the scheduled phases
    mbt: MbtParams = MbtParams()

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: at least one probe method")
        if self.rate_pps <= 0:
            raise ValueError(f"rate_pps {self.rate_pps!r} must be > 0")
        for n in ("estimation_rounds", "discovery_rounds", "elimination_rounds", "corroboration_rounds"):
            if getattr(self, n) < 2:
                raise ValueError(f"{n} {getattr(self, n)!r} must be >= 2")
        if self.max_window < 2:
            raise ValueError(f"max_window {self.max_window!r} must be >= 2")
        if self.fast_rounds and self.fast_rounds < 5:
            raise ValueError(f"fast_rounds {self.fast_rounds!r} must be 0 (off) or >= 5")
        if not (self.lead_s >= 0 and self.lead_per_probe_s >= 0):
            raise ValueError(f"lead_s {self.lead_s!r} and lead_per_probe_s {self.lead_per_probe_s!r} must be >= 0")
        if not self.target_rate_pps > 0:
            raise ValueError(f"target_rate_pps {self.target_rate_pps!r} must be > 0")


@dataclass
class MidarResult:
    """Alias sets, confirmed pairs, per-phase statistics and who probed what."""

    alias_sets: list[set[str]]
    pairs: set[tuple[str, str]]
    estimates: dict[str, Estimate]  # chosen method per usable address
    unusable: dict[str, str]  # address -> why (best reason over methods)
    phases: dict[str, dict[str, Any]]
    vp_targets: dict[str, list[str]]  # estimation split
    params: MidarParams = field(default_factory=MidarParams)

    def to_text(self) -> str:
        """One alias set per line (addresses space-separated), '#' comments."""
        lines = [f"# MIDAR alias sets: {len(self.alias_sets)} sets, {len(self.pairs)} confirmed pairs",
                 f"# usable addresses: {len(self.estimates)}, unusable: {len(self.unusable)}"]
        for ph, st in self.phases.items():
            lines.append(f"# {ph}: probes {st.get('probes_total', 0)} "
                         + " ".join(f"{k}={v}" for k, v in st.items() if k not in ("probes", "probes_total")))
        for s in self.alias_sets:
            lines.append(" ".join(sorted(s)))
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "midar",
            "alias_sets": [sorted(s) for s in self.alias_sets],
            "pairs": sorted(list(p) for p in self.pairs),
            "estimates": {a: e.to_dict() for a, e in sorted(self.estimates.items())},
            "unusable": dict(sorted(self.unusable.items())),
            "phases": self.phases,
            "vp_targets": self.vp_targets,
            "params": {"methods": list(self.params.methods), "rate_pps": self.params.rate_pps,
                       "estimation_rounds": self.params.estimation_rounds,
                       "discovery_rounds": self.params.discovery_rounds,
                       "elimination_rounds": self.params.elimination_rounds,
                       "corroboration_rounds": self.params.corroboration_rounds,
                       "fast_rounds": self.params.fast_rounds, "target_rate_pps": self.params.target_rate_pps},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)


def _phase_stats(plan: Sequence[PlannedProbe], samples: Sequence[IpidSample], t0: float) -> dict[str, Any]:
    probes: dict[str, int] = defaultdict(int)
    for p in plan:
        probes[p.vp] += 1
    return {"probes": dict(sorted(probes.items())), "probes_total": len(plan),
            "not_sent": max(0, len(plan) - len(samples)),   # denied by a VP's guard, or the send failed
            "replies": sum(1 for s in samples if s.answered), "wall_s": round(time.monotonic() - t0, 3)}


_REASON_RANK = {"ok": 0, "fast": 1, "non-monotonic": 2, "constant": 3, "few-replies": 4}


# ---------------------------------------------------------------- driver


async def run_midar_with(prober: Prober, addrs: Sequence[str], vps: Sequence[str],
                         params: MidarParams = MidarParams()) -> MidarResult:
    """The four phases over ``prober`` (see the module docstring)."""
    addrs = list(dict.fromkeys(str(a) for a in addrs))
    if not addrs:
        raise ValueError("run_midar: no target addresses")
    if ":" in "".join(addrs):
        raise ValueError("run_midar: MIDAR resolves IPv4 addresses only (IPv6 has no IP-ID)")
    vps = list(vps)
    if not vps:
        raise ValueError("run_midar: no VPs")
    if len(set(vps)) != len(vps):
        raise ValueError(f"run_midar: duplicate VP in {vps}")
    p = params
    phases: dict[str, dict[str, Any]] = {}

    def lead(probes_total: int) -> int:
        """How far ahead a phase starts: measured live, an endpoint takes ~0.25 s plus ~0.2 ms per
        scheduled probe to check and plan a midardisc task before its first send, and a schedule
        whose start has passed is refused (not collapsed into a burst)."""
        return int((p.lead_s + p.lead_per_probe_s * math.ceil(probes_total / len(vps))) * 1e9)

    # Estimation: targets split between VPs.
    split = {vp: addrs[i :: len(vps)] for i, vp in enumerate(vps)}
    t0 = time.monotonic()
    plan = plan_estimation(split, p.methods, p.estimation_rounds, p.rate_pps,
                           prober.now_ns() + lead(len(addrs) * len(p.methods) * p.estimation_rounds))
    samples = await prober.run(plan, "estimation")
    ests = estimate_all(samples)
    chosen = best_methods(ests, p.methods)
    fast_stats: dict[str, Any] = {}
    if p.fast_rounds:
        again = {a for (a, _m), e in ests.items() if a not in chosen and e.reason in ("non-monotonic", "fast")}
        if again:
            t1 = time.monotonic()
            fsplit = {vp: [a for a in share if a in again] for vp, share in split.items()}
            fplan = plan_fast({vp: aa for vp, aa in fsplit.items() if aa}, p.methods, p.fast_rounds, p.rate_pps,
                              prober.now_ns() + lead(len(again) * len(p.methods) * p.fast_rounds))
            fsamples = await prober.run(fplan, "estimation-fast")
            fests = estimate_all(fsamples)
            fchosen = best_methods(fests, p.methods)
            for (a, m), e in fests.items():
                if a in fchosen or (a, m) not in ests or e.reason in ("ok", "fast"):
                    ests[(a, m)] = e
            chosen.update(fchosen)
            fast_stats = {**_phase_stats(fplan, fsamples, t1), "retried": len(again), "usable": len(fchosen)}
    unusable: dict[str, str] = {}
    for (a, _m), e in ests.items():
        if a not in chosen:
            prev = unusable.get(a)
            if prev is None or _REASON_RANK[e.reason] < _REASON_RANK[prev]:
                unusable[a] = e.reason
    for a in addrs:
        if a not in chosen and a not in unusable:
            unusable[a] = "few-replies"
    phases["estimation"] = {**_phase_stats(plan, samples, t0), "usable": len(chosen),
                            "unusable": len(unusable),
                            "swapped": sum(1 for e in chosen.values() if e.swapped)}
    if fast_stats:
        phases["estimation-fast"] = fast_stats
    swapped = {a for a, e in chosen.items() if e.swapped}
    method_of = {a: e.method for a, e in chosen.items()}

    def unswap(ss: list[IpidSample]) -> list[IpidSample]:
        from .midar_analysis import byteswap

        return [s.with_ipid(byteswap(s.ipid)) if s.addr in swapped and s.ipid is not None else s for s in ss]

    # Discovery: sliding windows over the velocity-sorted usable addresses.
    t0 = time.monotonic()
    order = sorted(chosen, key=lambda a: (chosen[a].velocity, a))
    size = window_size([chosen[a].velocity for a in order], tolerance=p.mbt.velocity_tolerance,
                       max_size=p.max_window)
    windows = sliding_windows(order, size)
    velocity_of = {a: e.velocity for a, e in chosen.items()}
    plan = plan_rounds(windows, method_of, vps, p.discovery_rounds, p.rate_pps,
                       prober.now_ns() + lead(sum(map(len, windows)) * p.discovery_rounds),
                       target_rate_pps=p.target_rate_pps, velocity_of=velocity_of)
    samples = unswap(await prober.run(plan, "discovery"))
    # Each window was probed in its own stretch of time: analyse each
    # window's samples apart. A sample belongs to the window of the planned
    # probe (same VP and address) nearest its send time — not to whatever
    # window's stretch its send time fell in: the last probes of a window
    # can leave after the next one's first planned time.
    by_window = _split_by_plan(plan, [len(w) * p.discovery_rounds for w in windows], samples)
    candidates: set[tuple[str, str]] = set()
    dropped: dict[str, str] = {}
    for ws in by_window:
        c, d = candidate_pairs(ws, params=p.mbt)
        candidates |= c
        dropped.update(d)
    phases["discovery"] = {**_phase_stats(plan, samples, t0), "window": size, "windows": len(windows),
                           "candidates": len(candidates), "dropped_addresses": len(dropped)}

    # Elimination and corroboration: candidate sets re-probed close together.
    pairs = candidates
    for phase, rounds in (("elimination", p.elimination_rounds), ("corroboration", p.corroboration_rounds)):
        t0 = time.monotonic()
        sets = components(pairs)
        tested = _all_pairs(sets)
        batches = _batches(sets, p.max_window)
        plan = plan_rounds(batches, method_of, vps, rounds, p.rate_pps,
                           prober.now_ns() + lead(sum(map(len, batches)) * rounds),
                           target_rate_pps=p.target_rate_pps, velocity_of=velocity_of)
        samples = unswap(await prober.run(plan, phase)) if plan else []
        passed, _ = candidate_pairs(samples, params=p.mbt, pairs=tested)
        st = {**_phase_stats(plan, samples, t0), "sets": len(sets), "tested": len(tested),
              "passed": len(passed), "eliminated": len(pairs - passed)}
        phases[phase] = st
        pairs = passed
    sets_out = alias_sets_from_pairs(pairs)
    for ph, errs in (getattr(prober, "errors", None) or {}).items():   # why probes went unsent, per phase
        if ph in phases and errs:
            phases[ph]["errors"] = list(errs)
    phases["corroboration"]["confirmed"] = len(pairs)
    phases["corroboration"]["alias_sets"] = len(sets_out)
    return MidarResult(sets_out, pairs, chosen, unusable, phases, split, p)


# ------------------------------------------------------- endpoints (Ctrl)


class CtrlProber:
    """A Prober over a controller's endpoints (the dealias primitives).

    ``vps``: Inst objects (their ``name`` is the VP name in the plan). Each
    VP's plan is sent as one task: estimation as ``do_midarest`` (the
    primitive paces its own rounds; its probes' tx_ns say when they went),
    the scheduled phases as ``do_midardisc`` with one schedule entry per
    probe, ``startat`` and every offset in the VP's clock (controller time +
    the VP's measured offset).
    """

    def __init__(self, ctrl: Any, vps: Sequence[Any], *, wait_timeout: float = 1.0,
                 offset_timeout: float = 10.0) -> None:
        self.ctrl = ctrl
        self.insts = {str(v.name): v for v in vps}
        self.wait_timeout = wait_timeout
        self.offset_timeout = offset_timeout
        self.errors: dict[str, list[str]] = defaultdict(list)   # phase -> "VP: error" of tasks that sent part

    def now_ns(self) -> int:
        return time.time_ns()

    async def _offset(self, vp: str) -> tuple[int, int]:
        """The controller's estimate of the VP's clock offset and its uncertainty (RTT/2); a VP that
        just attached may have none yet (the first keepalive exchange), so wait a little for it."""
        inst = self.insts[vp]
        deadline = time.monotonic() + self.offset_timeout
        while (off := inst.clock_offset) is None:
            if time.monotonic() >= deadline:
                raise ValueError(f"VP {vp}: no clock offset estimate after {self.offset_timeout:g} s "
                                 f"(the controller has not exchanged a keepalive with it)")
            await asyncio.sleep(0.1)
        off_ns = int(off / _dt.timedelta(microseconds=1)) * 1000
        rtt = getattr(inst, "clock_rtt_ns", None) or 0
        return off_ns, int(rtt) // 2

    async def run(self, plan: Sequence[PlannedProbe], phase: str) -> list[IpidSample]:
        by_vp: dict[str, list[PlannedProbe]] = defaultdict(list)
        for pp in plan:
            by_vp[pp.vp].append(pp)
        results = await asyncio.gather(*(self._run_vp(vp, pps, phase) for vp, pps in by_vp.items()))
        return [s for r in results for s in r]

    async def _run_vp(self, vp: str, pps: list[PlannedProbe], phase: str) -> list[IpidSample]:
        off, err = await self._offset(vp)
        inst = self.insts[vp]
        pps = sorted(pps, key=lambda pp: pp.at_ns)              # a schedule runs forward in time
        if phase == "estimation":
            addrs = list(dict.fromkeys(pp.addr for pp in pps))
            methods = list(dict.fromkeys(pp.method for pp in pps))
            rounds = max(1, len(pps) // max(1, len(addrs) * len(methods)))
            gap = (pps[1].at_ns - pps[0].at_ns) / 1e9 if len(pps) > 1 else 0.01
            res = await self.ctrl.do_midarest(addrs, [{"method": m} for m in methods], rounds=rounds,
                                              wait_probe=gap, wait_round=gap * len(addrs) * len(methods),
                                              wait_timeout=self.wait_timeout, inst=inst, sync=True)
            if getattr(res, "error", None):
                self.errors[phase].append(f"{vp}: {res.error}")
            return samples_from_dealias(res, vp, offset_ns=off, err_ns=err)
        defs = [{"method": pp.method, "dst": pp.addr} for pp in pps]
        start = pps[0].at_ns
        schedule = [(pp.at_ns - start, i, i) for i, pp in enumerate(pps)]
        res = await self.ctrl.do_midardisc(defs, schedule=schedule, startat=start + off,   # endpoint-clock ns
                                           wait_timeout=self.wait_timeout, inst=inst, sync=True)
        if getattr(res, "error", None) and not any(_get(pr, "tx_ns") for pr in _get(res, "probes", None) or []):
            raise RuntimeError(f"MIDAR {phase} on VP {vp}: {res.error}")
        if getattr(res, "error", None):
            self.errors[phase].append(f"{vp}: {res.error}")
        return samples_from_dealias(res, vp, offset_ns=off, err_ns=err)


async def run_midar(ctrl: Any, addrs: Sequence[str], *, vps: Sequence[Any], rate_pps: float = 100.0,
                    methods: Sequence[str] = DEFAULT_METHODS, prober: Prober | None = None,
                    **params: Any) -> MidarResult:
    """MIDAR over ``vps`` (Inst objects, or names with ``prober`` given).

    ``rate_pps``: probes per second per VP; other :class:`MidarParams`
    fields by keyword. Without ``prober``, the endpoints' dealias
    primitives send the probes (:class:`CtrlProber`).
    """
    p = MidarParams(methods=tuple(methods), rate_pps=rate_pps, **params)
    if prober is None:
        prober = CtrlProber(ctrl, vps)
    names = [str(getattr(v, "name", v)) for v in vps]
    return await run_midar_with(prober, addrs, names, p)
