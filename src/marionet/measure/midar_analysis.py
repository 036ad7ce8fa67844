"""MIDAR's analysis, sans-I/O: estimation, the Monotonic Bounds Test,
the sliding-window discovery schedule, and alias sets.

Keys et al., "Internet-Scale IPv4 Alias Resolution with MIDAR" (IEEE/ACM
ToN 2013). Everything here works on :class:`IpidSample` lists whose times
are already in one clock (the controller's, after each VP's offset
correction); ``err_ns`` is that correction's uncertainty and widens each
sample's time bounds. No sockets, no asyncio: the pipeline
(:mod:`marionet.measure.midar`) feeds it, the tests feed it from the
alias-router emulator.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "IpidSample",
    "Estimate",
    "MbtParams",
    "unwrap",
    "byteswap",
    "estimate",
    "estimate_all",
    "best_methods",
    "series_velocity",
    "mbt",
    "window_size",
    "sliding_windows",
    "candidate_pairs",
    "alias_sets_from_pairs",
]

WRAP = 1 << 16
HALF = 1 << 15


@dataclass(frozen=True, slots=True)
class IpidSample:
    """One probe and its reply's IP-ID.

    ``tx_ns``/``rx_ns``: send and receive time in the controller's clock
    (after the VP's offset correction); the router stamped the IP-ID at some
    instant in between. ``rx_ns``/``ipid`` are None when no reply came.
    ``err_ns``: uncertainty of the VP's clock offset, widening both bounds.
    """

    addr: str
    method: str
    vp: str
    tx_ns: int
    rx_ns: int | None
    ipid: int | None
    err_ns: int = 0

    def __post_init__(self) -> None:
        if self.ipid is not None and not 0 <= self.ipid < WRAP:
            raise ValueError(f"IpidSample: ipid {self.ipid!r} is not a 16-bit value")
        if self.rx_ns is not None and self.rx_ns < self.tx_ns:
            raise ValueError(f"IpidSample: rx_ns {self.rx_ns} is before tx_ns {self.tx_ns}")
        if self.err_ns < 0:
            raise ValueError(f"IpidSample: err_ns {self.err_ns} is negative")

    @property
    def answered(self) -> bool:
        return self.rx_ns is not None and self.ipid is not None

    @property
    def lo_ns(self) -> int:
        """Earliest instant the router can have chosen this IP-ID."""
        return self.tx_ns - self.err_ns

    @property
    def hi_ns(self) -> int:
        """Latest instant (the reply's receive time, widened)."""
        assert self.rx_ns is not None
        return self.rx_ns + self.err_ns

    def with_ipid(self, ipid: int) -> "IpidSample":
        return IpidSample(self.addr, self.method, self.vp, self.tx_ns, self.rx_ns, ipid, self.err_ns)


def byteswap(ipid: int) -> int:
    """The 16-bit value with its two bytes exchanged (hosts that write the
    counter in little-endian order)."""
    return ((ipid & 0xFF) << 8) | (ipid >> 8)


def unwrap(ids: Sequence[int]) -> list[int]:
    """Cumulative counter values: each step is taken as the forward
    distance mod 2¹⁶ (a counter sampled faster than it wraps)."""
    out: list[int] = []
    acc = 0
    prev: int | None = None
    for v in ids:
        if not 0 <= v < WRAP:
            raise ValueError(f"unwrap: {v!r} is not a 16-bit value")
        if prev is not None:
            acc += (v - prev) % WRAP
        out.append(acc)
        prev = v
    return out


def _mid(s: IpidSample) -> float:
    assert s.rx_ns is not None
    return (s.tx_ns + s.rx_ns) / 2


def _fit_velocity(samples: Sequence[IpidSample], ids: Sequence[int]) -> tuple[float, float]:
    """Least-squares slope (IDs/s) of the unwrapped series against each
    sample's midpoint time, and the slope's standard error."""
    return _fit_line(samples, unwrap(ids))


def _fit_line(samples: Sequence[IpidSample], u: Sequence[int]) -> tuple[float, float]:
    """Least-squares slope (IDs/s) of cumulative counter values ``u`` against
    each sample's midpoint time, and the slope's standard error."""
    t = [_mid(s) / 1e9 for s in samples]
    n = len(t)
    mt, mu = sum(t) / n, sum(u) / n
    sxx = sum((x - mt) ** 2 for x in t)
    if sxx <= 0:
        return 0.0, math.inf
    slope = sum((x - mt) * (y - mu) for x, y in zip(t, u)) / sxx
    if n <= 2:
        return slope, 0.0
    resid = sum((y - mu - slope * (x - mt)) ** 2 for x, y in zip(t, u))
    return slope, math.sqrt(resid / (n - 2) / sxx)


def _monotonic_steps(samples: Sequence[IpidSample], ids: Sequence[int], max_step: int) -> bool:
    """Every forward step below ``max_step`` (a smaller step than half the
    space: larger ones look like going backwards) and not zero."""
    for a, b in zip(ids, ids[1:]):
        d = (b - a) % WRAP
        if d == 0 or d >= max_step:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Estimate:
    """Estimation-stage verdict for one (address, method) series."""

    addr: str
    method: str
    sent: int
    replies: int
    usable: bool
    reason: str  # "ok" | "few-replies" | "constant" | "non-monotonic" | "fast"
    velocity: float = 0.0  # IDs per second
    velocity_err: float = 0.0
    swapped: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"addr": self.addr, "method": self.method, "sent": self.sent, "replies": self.replies,
                "usable": self.usable, "reason": self.reason, "velocity": round(self.velocity, 3),
                "velocity_err": round(self.velocity_err, 3), "swapped": self.swapped}


def estimate(samples: Sequence[IpidSample], *, min_replies: int = 5, min_reply_fraction: float = 0.5,
             max_step: int = HALF) -> Estimate:
    """MIDAR's estimation test for one address and method.

    Usable when enough probes were answered, the IDs are not constant (zero
    counters), every step is forward by less than half the ID space (random
    IDs fail this almost surely: each step has probability ½), and the
    velocity is low enough that the widest gap between samples cannot hide a
    wrap. Byte-swapped counters: when the swapped series is monotonic too,
    the lower-velocity reading wins (MIDAR's rule), so a little-endian
    counter is read unswapped.
    """
    if not samples:
        raise ValueError("estimate: no samples")
    keys = {(s.addr, s.method) for s in samples}
    if len(keys) != 1:
        raise ValueError(f"estimate: samples of several series {sorted(keys)[:3]}")
    addr, method = next(iter(keys))
    got = sorted((s for s in samples if s.answered), key=lambda s: (s.tx_ns, s.rx_ns))
    sent = len(samples)
    base = dict(addr=addr, method=method, sent=sent, replies=len(got))
    if len(got) < max(min_replies, 2) or len(got) < min_reply_fraction * sent:
        return Estimate(**base, usable=False, reason="few-replies")  # type: ignore[arg-type]
    raw = [s.ipid for s in got]  # type: ignore[misc]
    if len(set(raw)) == 1:
        return Estimate(**base, usable=False, reason="constant")  # type: ignore[arg-type]
    readings = []
    for swapped in (False, True):
        ids = [byteswap(v) for v in raw] if swapped else list(raw)  # type: ignore[arg-type]
        if _monotonic_steps(got, ids, max_step):
            v, err = _fit_velocity(got, ids)
            readings.append((v, err, swapped))
    if not readings:
        return Estimate(**base, usable=False, reason="non-monotonic")  # type: ignore[arg-type]
    # Both byte orders monotonic: the lower velocity wins (MIDAR's rule),
    # unless it fits a line far worse than the other (a fast counter whose
    # swapped bytes happen to step forward: the misreading scatters).
    readings.sort()
    v, err, swapped = readings[0]
    if len(readings) == 2:
        rel = [r[1] / max(r[0], 1e-9) for r in readings]
        if rel[0] > 5 * rel[1] + 1e-3:
            v, err, swapped = readings[1]
    widest = max((b.hi_ns - a.lo_ns for a, b in zip(got, got[1:])), default=0) / 1e9
    if v * widest >= max_step:
        return Estimate(**base, usable=False, reason="fast", velocity=v, velocity_err=err,  # type: ignore[arg-type]
                        swapped=swapped)
    return Estimate(**base, usable=True, reason="ok", velocity=v, velocity_err=err, swapped=swapped)  # type: ignore[arg-type]


def estimate_all(samples: Iterable[IpidSample], **kw: object) -> dict[tuple[str, str], Estimate]:
    """:func:`estimate` for every (address, method) series in ``samples``."""
    series: dict[tuple[str, str], list[IpidSample]] = defaultdict(list)
    for s in samples:
        series[(s.addr, s.method)].append(s)
    return {k: estimate(v, **kw) for k, v in series.items()}  # type: ignore[arg-type]


def best_methods(estimates: Mapping[tuple[str, str], Estimate], methods: Sequence[str]) -> dict[str, Estimate]:
    """One method per address: the first usable one in ``methods`` order
    (the caller's preference); addresses with none are left out."""
    by_addr: dict[str, dict[str, Estimate]] = defaultdict(dict)
    for (addr, method), e in estimates.items():
        by_addr[addr][method] = e
    out = {}
    for addr, ms in by_addr.items():
        for m in methods:
            e = ms.get(m)
            if e is not None and e.usable:
                out[addr] = e
                break
    return out


def series_velocity(samples: Sequence[IpidSample]) -> float:
    """Velocity (IDs/s) of one answered series (0 if too short).

    The samples come from several VPs whose paths differ in delay, so two
    probes sent close together can reach the router in the other order
    than they were sent: ordered by send time, the later-stamped one first,
    the step between them is a small step *back*, which the forward-only
    :func:`unwrap` reads as almost a whole wrap (a velocity of 10⁵ IDs/s
    from one reordered pair, seen live). So the series is taken in order of
    its midpoints (the best guess of when the router stamped each) and
    steps are signed (|step| < 2¹⁵: a series sampled faster than half a
    wrap, which the discovery schedule guarantees for usable addresses).
    """
    got = sorted((s for s in samples if s.answered), key=_mid)
    if len(got) < 2:
        return 0.0
    u = [0]
    for a, b in zip(got, got[1:]):
        u.append(u[-1] + ((b.ipid - a.ipid + HALF) % WRAP) - HALF)  # type: ignore[operator]
    return max(0.0, _fit_line(got, u)[0])


@dataclass(frozen=True, slots=True)
class MbtParams:
    """Tolerances of the Monotonic Bounds Test.

    ``velocity_tolerance``: relative slack on the velocity bound;
    ``slack_ids``: absolute slack in IDs (the replies the router sent to
    our own probes in between are counted by the velocity already).
    """

    velocity_tolerance: float = 0.25
    slack_ids: int = 3


def mbt(series: Sequence[IpidSample], velocity: float, params: MbtParams = MbtParams()) -> bool:
    """The Monotonic Bounds Test on a (merged) series.

    Each answered sample's IP-ID was chosen at an unknown instant inside
    its bounds [lo, hi] = [tx − err, rx + err]. Walking the samples in order
    of their bounds, every consecutive pair (a, b) must be explainable by
    one counter that only moves forward at no more than ``velocity``
    (IDs/s, widened by ``params``): with s the signed step b − a mod 2¹⁶,

    - if a's interval ends before b's begins (a certainly came first):
      1 ≤ s ≤ vmax · (b.hi − a.lo);
    - if the intervals overlap (either order possible):
      −vmax · (a.hi − b.lo) − slack ≤ s ≤ vmax · (b.hi − a.lo), s ≠ 0.

    Two different counters (other routers, per-interface counters, the
    same velocity at another offset) break the bound almost at once; a
    shared counter never does. Fewer than two answered samples: False
    (nothing shows they share a counter).
    """
    if velocity < 0 or not math.isfinite(velocity):
        raise ValueError(f"mbt: velocity {velocity!r} must be a finite number >= 0")
    got = sorted((s for s in series if s.answered), key=lambda s: (s.lo_ns, s.hi_ns))
    if len(got) < 2:
        return False
    vmax = velocity * (1 + params.velocity_tolerance) / 1e9  # IDs per ns
    slack = params.slack_ids
    for a, b in zip(got, got[1:]):
        s = ((b.ipid - a.ipid + HALF) % WRAP) - HALF  # type: ignore[operator]
        if s == 0:
            return False
        upper = vmax * (b.hi_ns - a.lo_ns) + slack
        if a.hi_ns < b.lo_ns:
            if not 1 <= s <= upper:
                return False
        else:
            lower = -vmax * (a.hi_ns - b.lo_ns) - slack
            if not lower <= s <= upper:
                return False
    return True


def _compatible(va: float, ea: float, vb: float, eb: float, tol: float, abs_tol: float) -> bool:
    """Velocity ranges that overlap (each widened by its uncertainty)."""
    slack = tol * max(va, vb) + abs_tol + 2 * (ea + eb)
    return abs(va - vb) <= slack


def window_size(velocities: Sequence[float], *, tolerance: float = 0.25, abs_tolerance: float = 2.0,
                min_size: int = 2, max_size: int = 1000) -> int:
    """Sliding-window width: twice the most addresses whose velocities fall
    inside one uncertainty range, so that windows overlapping by half put
    every velocity-compatible pair in a common window."""
    vs = sorted(velocities)
    most = 1
    j = 0
    for i, v in enumerate(vs):
        j = max(j, i)
        while j + 1 < len(vs) and vs[j + 1] - v <= tolerance * vs[j + 1] + abs_tolerance:
            j += 1
        most = max(most, j - i + 1)
    return max(min_size, min(max_size, 2 * most))


def sliding_windows(addrs_by_velocity: Sequence[str], size: int) -> list[list[str]]:
    """Windows of ``size`` addresses over the velocity-sorted list, each
    starting half a window after the previous (MIDAR's sliding window)."""
    if size < 2:
        raise ValueError(f"sliding_windows: size {size} must be >= 2")
    n = len(addrs_by_velocity)
    if n == 0:
        return []
    if n <= size:
        return [list(addrs_by_velocity)]
    step = size // 2
    out = []
    start = 0
    while True:
        out.append(list(addrs_by_velocity[start : start + size]))
        if start + size >= n:
            return out
        start += step


def candidate_pairs(samples: Iterable[IpidSample], *, params: MbtParams = MbtParams(),
                    abs_velocity_tolerance: float = 2.0,
                    pairs: Iterable[tuple[str, str]] | None = None) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """Pairs of addresses whose merged series pass the MBT.

    First each address's own series must pass the MBT at its own velocity
    (per-destination counters, seen from several VPs, fail here). Then the
    pairs with compatible velocities — all of them, or only ``pairs`` —
    are tested merged, bounded by the higher of the two velocities.
    Returns (passing pairs as sorted tuples, {address: why it was dropped}).
    """
    series: dict[str, list[IpidSample]] = defaultdict(list)
    for s in samples:
        series[s.addr].append(s)
    vel: dict[str, float] = {}
    dropped: dict[str, str] = {}
    for a, ss in series.items():
        v = series_velocity(ss)
        if sum(1 for s in ss if s.answered) < 3:
            dropped[a] = "few-replies"
        elif not mbt(ss, v, params):
            dropped[a] = "self-mbt"
        else:
            vel[a] = v
    if pairs is None:
        order = sorted(vel, key=vel.__getitem__)
        todo = [(order[i], order[j]) for i in range(len(order)) for j in range(i + 1, len(order))
                if _compatible(vel[order[i]], 0, vel[order[j]], 0, params.velocity_tolerance,
                               abs_velocity_tolerance)]
    else:
        todo = [p for p in pairs if p[0] in vel and p[1] in vel]
    out = set()
    for a, b in todo:
        if a == b:
            continue
        if not _compatible(vel[a], 0, vel[b], 0, params.velocity_tolerance, abs_velocity_tolerance):
            continue
        if mbt(series[a] + series[b], max(vel[a], vel[b]), params):
            out.add((a, b) if a < b else (b, a))
    return out, dropped


def alias_sets_from_pairs(confirmed: Iterable[tuple[str, str]]) -> list[set[str]]:
    """Alias sets: connected components of the confirmed pairs, kept only
    where every pair inside was confirmed (MIDAR's corroboration). A
    component with a failed or untested pair is split greedily into cliques
    of confirmed pairs, so one bad pair never merges two routers."""
    conf = {(a, b) if a < b else (b, a) for a, b in confirmed}
    adj: dict[str, set[str]] = defaultdict(set)
    for a, b in conf:
        adj[a].add(b)
        adj[b].add(a)
    seen: set[str] = set()
    out: list[set[str]] = []
    for start in sorted(adj):
        if start in seen:
            continue
        comp = set()
        stack = [start]
        while stack:
            x = stack.pop()
            if x in comp:
                continue
            comp.add(x)
            stack.extend(adj[x] - comp)
        seen |= comp
        if all(b in adj[a] for a in comp for b in comp if a != b):
            out.append(comp)
            continue
        left = sorted(comp, key=lambda x: (-len(adj[x] & comp), x))
        while left:
            clique = {left[0]}
            for x in left[1:]:
                if all(x in adj[y] for y in clique):
                    clique.add(x)
            if len(clique) >= 2:
                out.append(clique)
            left = [x for x in left if x not in clique]
    return sorted(out, key=lambda s: sorted(s))

