"""MIDAR analysis: unwrapping, estimation verdicts, the MBT, windows, alias sets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.measure.midar_analysis import (
    IpidSample,
    alias_sets_from_pairs,
    series_velocity,
    byteswap,
    candidate_pairs,
    estimate,
    mbt,
    sliding_windows,
    unwrap,
    window_size,
)

S = 1_000_000_000


def counter_series(addr: str, v: float, start: int, times_s: list[float], *, rtt_ms: float = 10,
                   swap: bool = False, vp: str = "vp0", method: str = "icmp-echo") -> list[IpidSample]:
    """A shared-counter series: IP-ID chosen at mid-RTT, v IDs/s plus one per reply."""
    out = []
    for n, t in enumerate(times_s):
        tx = int(t * S)
        rx = tx + int(rtt_ms * 1e6)
        ipid = (start + int(v * (tx + rx) / 2 / S) + n) & 0xFFFF
        out.append(IpidSample(addr, method, vp, tx, rx, byteswap(ipid) if swap else ipid))
    return out


@given(st.integers(0, 65535), st.lists(st.integers(0, 32767), min_size=1, max_size=50))
def test_unwrap_recovers_a_counter_that_never_steps_half_the_space(start: int, steps: list[int]) -> None:
    true = [start]
    for d in steps:
        true.append(true[-1] + d)
    u = unwrap([x & 0xFFFF for x in true])
    assert u == [x - start for x in true]


def test_unwrap_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match="16-bit"):
        unwrap([1, 70000])


def test_estimate_shared_counter_velocity() -> None:
    ss = counter_series("a", 250.0, 65000, [i * 0.5 for i in range(10)])  # wraps once
    e = estimate(ss)
    assert e.usable and e.reason == "ok" and not e.swapped
    assert abs(e.velocity - 252) < 5  # 250 background + ~2 replies/s


def test_estimate_reads_a_byteswapped_counter_unswapped() -> None:
    ss = counter_series("a", 40.0, 1000, [i * 0.5 for i in range(12)], swap=True)
    e = estimate(ss)
    assert e.usable and e.swapped and abs(e.velocity - 42) < 3


def test_estimate_rejects_zero_random_few_and_fast() -> None:
    t = [i * 0.5 for i in range(10)]
    zero = [IpidSample("z", "udp", "v", int(x * S), int(x * S) + 10**7, 0) for x in t]
    assert estimate(zero).reason == "constant"
    rng = random.Random(3)
    rand = [IpidSample("r", "udp", "v", int(x * S), int(x * S) + 10**7, rng.getrandbits(16)) for x in t * 3]
    rand = [IpidSample("r", "udp", "v", i * S // 2, i * S // 2 + 10**7, s.ipid) for i, s in enumerate(rand)]
    assert estimate(rand).reason == "non-monotonic"
    few = [IpidSample("f", "udp", "v", int(x * S), None, None) for x in t]
    assert estimate(few).reason == "few-replies"
    rng2 = random.Random(5)
    jittered = [sum(rng2.uniform(0.4, 0.6) for _ in range(i)) for i in range(10)]
    fast = counter_series("x", 100_000.0, 0, jittered)  # ~50 000 ± 10 000 IDs between samples
    assert not estimate(fast).usable


def test_estimate_bad_input() -> None:
    with pytest.raises(ValueError, match="no samples"):
        estimate([])
    with pytest.raises(ValueError, match="several series"):
        estimate(counter_series("a", 1, 0, [0, 1]) + counter_series("b", 1, 0, [2, 3]))
    with pytest.raises(ValueError, match="16-bit"):
        IpidSample("a", "m", "v", 0, 1, 65536)
    with pytest.raises(ValueError, match="before"):
        IpidSample("a", "m", "v", 5, 1, 3)


@settings(max_examples=200, deadline=None)
@given(v=st.floats(1, 3000), start=st.integers(0, 65535), n=st.integers(4, 30), seed=st.integers(0, 2**31),
       rtt=st.floats(0.5, 40))
def test_mbt_passes_every_interleaving_of_one_shared_counter(v: float, start: int, n: int, seed: int,
                                                              rtt: float) -> None:
    """Two addresses of one counter, probed from VPs with different RTTs at
    random times: the merged series always passes."""
    rng = random.Random(seed)
    # Our own probes step the counter too, and the bound given is their mean rate: so they come about
    # evenly (jittered) — uniform random times let a burst of them outrun any mean-rate bound (found
    # by hypothesis: v=1, n=30), which is not what a planned MIDAR schedule does.
    gap = 2.0 / (2 * n)
    times = sorted((i + rng.uniform(0, 0.5)) * gap for i in range(2 * n))
    events = []
    for i, t in enumerate(times):
        r = rtt * (1 + (i % 3))  # three VPs, different delays
        tx = int(t * S)
        at = tx + int(rng.uniform(0.1, 0.9) * r * 1e6)  # the router picks the ID somewhere in flight
        events.append((at, tx, tx + int(r * 1e6), "ab"[i % 2]))
    out = []
    for k, (at, tx, rx, who) in enumerate(sorted(events)):
        out.append(IpidSample(who, "m", "v", tx, rx, (start + int(v * at / S) + k) & 0xFFFF))
    assert mbt(out, v + len(out) / 2.0)


@settings(max_examples=200, deadline=None)
@given(v=st.floats(1, 3000), start=st.integers(0, 65535), delta=st.integers(500, 65036), n=st.integers(3, 20))
def test_mbt_rejects_same_velocity_other_offset(v: float, start: int, delta: int, n: int) -> None:
    """The false-positive trap: two counters at one velocity, offsets apart."""
    t = [i * 0.2 for i in range(2 * n)]
    a = counter_series("a", v, start, t[0::2])
    b = counter_series("b", v, start + delta, t[1::2])
    assert not mbt(a + b, v)


def test_mbt_time_bounds_widened_by_offset_uncertainty() -> None:
    """b was sent 20 ms after a but its VP's clock correction is 30 ms off:
    stamped before a with a higher ID, it looks like the counter went
    backwards; with the offset's uncertainty widening the bounds it passes."""
    v = 1000.0
    ms = 10**6
    a = IpidSample("a", "m", "v0", 1_000 * ms, 1_010 * ms, 1005)
    b = IpidSample("b", "m", "v1", 990 * ms, 1_000 * ms, 1021)
    assert not mbt([a, b], v)
    wide = IpidSample("b", "m", "v1", b.tx_ns, b.rx_ns, 1021, err_ns=35 * ms)
    assert mbt([a, wide], v)
    assert not mbt([a, IpidSample("b", "m", "v1", b.tx_ns, b.rx_ns, 1021, err_ns=5 * ms)], v)
    with pytest.raises(ValueError):
        mbt([a, b], float("nan"))


def test_window_and_sliding() -> None:
    vs = [1, 1.1, 1.2, 50, 51, 52, 53, 1000]
    w = window_size(vs, tolerance=0.1, abs_tolerance=0.5)
    assert w == 8  # four velocities within one range
    assert sliding_windows(list("abcdefghij"), 4) == [list("abcd"), list("cdef"), list("efgh"), list("ghij")]
    assert sliding_windows(list("abc"), 4) == [list("abc")]
    with pytest.raises(ValueError):
        sliding_windows(["a"], 1)


def test_candidate_pairs_and_alias_sets() -> None:
    t = [i * 0.1 for i in range(24)]
    # Three addresses answering from one counter, in turn.
    one = counter_series("a", 100, 7, t)
    r1 = [IpidSample("abc"[k % 3], s.method, s.vp, s.tx_ns, s.rx_ns, s.ipid) for k, s in enumerate(one)]
    other = counter_series("d", 100, 30000, t[0::2])
    pairs, dropped = candidate_pairs(r1 + other)
    assert pairs == {("a", "b"), ("a", "c"), ("b", "c")}
    assert not dropped
    assert alias_sets_from_pairs(pairs) == [{"a", "b", "c"}]
    # A chain a-b, b-c without a-c is not one set.
    assert alias_sets_from_pairs({("a", "b"), ("b", "c")}) in ([{"a", "b"}], [{"b", "c"}])


def test_series_velocity_survives_probes_that_reach_the_router_out_of_send_order() -> None:
    """Seen live: two VPs, one far (20 ms one way) and one near (1 ms); the near VP's probe, sent 5 ms
    after the far one's, is stamped first. In send order the step is 2 IDs *back*; read as a forward
    wrap it made a 10⁵ IDs/s velocity and the pair failed the velocity check."""
    v = 100.0
    out = []
    for k in range(6):
        t_far, t_near = k * 0.1, k * 0.1 + 0.005
        stamp_far, stamp_near = t_far + 0.020, t_near + 0.001
        for vp, tx, at, rtt in (("far", t_far, stamp_far, 0.040), ("near", t_near, stamp_near, 0.002)):
            out.append(IpidSample("a", "icmp-echo", vp, int(tx * S), int((tx + rtt) * S), int(1000 + v * at) & 0xFFFF))
    assert series_velocity(out) == pytest.approx(v, rel=0.2)
    assert mbt(out, series_velocity(out))
