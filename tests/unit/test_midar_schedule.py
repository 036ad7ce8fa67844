"""MIDAR's probing schedule: per-address spacing, the closely spaced re-estimation, and which
window a sample belongs to."""

from __future__ import annotations

from collections import defaultdict

import pytest

from marionet.measure.midar import MidarParams, PlannedProbe, _split_by_plan, plan_fast, plan_rounds
from marionet.measure.midar_analysis import IpidSample

S = 1_000_000_000


def _gaps_per_address(plan: list[PlannedProbe]) -> dict[str, list[int]]:
    at: dict[str, list[int]] = defaultdict(list)
    for p in plan:
        at[p.addr].append(p.at_ns)
    return {a: [b - c for c, b in zip(ts, ts[1:])] for a, ts in at.items()}


def test_small_groups_are_stretched_to_the_per_address_rate() -> None:
    g = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    m = {a: "udp" for a in g}
    tight = plan_rounds([g], m, ["a", "b"], 4, 100, 0)
    assert max(max(v) for v in _gaps_per_address(tight).values()) < 0.05 * S   # 3 probes at 200/s
    slow = plan_rounds([g], m, ["a", "b"], 4, 100, 0, target_rate_pps=2.0)
    assert min(min(v) for v in _gaps_per_address(slow).values()) >= 0.5 * S - 2
    ts = [p.at_ns for p in slow]                      # spread evenly: no burst to one router's interfaces
    assert max(b - a for a, b in zip(ts, ts[1:])) - min(b - a for a, b in zip(ts, ts[1:])) <= 2
    assert [p.vp for p in slow] == [p.vp for p in tight] and len(slow) == len(tight)


def test_a_fast_counter_caps_the_stretch() -> None:
    """30,000 IDs/s: a quarter of the ID space passes in 0.55 s, so rounds of a group holding it stay
    shorter than that even when the per-address rate asks for 1 s."""
    g = ["10.0.0.1", "10.0.0.2"]
    plan = plan_rounds([g], {a: "udp" for a in g}, ["a"], 4, 100, 0, target_rate_pps=1.0,
                       velocity_of={"10.0.0.1": 30_000.0, "10.0.0.2": 29_000.0})
    gaps = [x for v in _gaps_per_address(plan).values() for x in v]
    assert max(gaps) <= (65536 / 4) / 30_000 * S + 1 and min(gaps) > 0.5 * S


def test_big_groups_keep_the_vp_rate() -> None:
    g = [f"10.0.{i // 250}.{i % 250}" for i in range(600)]
    plan = plan_rounds([g], {a: "udp" for a in g}, ["a", "b", "c"], 2, 100, 0, target_rate_pps=2.0)
    ts = [p.at_ns for p in plan]
    assert ts == sorted(ts) and (ts[-1] - ts[0]) == pytest.approx((len(plan) - 1) * S / 300, rel=1e-3)


def test_plan_fast_probes_each_address_back_to_back() -> None:
    plan = plan_fast({"a": ["10.0.0.1", "10.0.0.2"], "b": ["10.0.0.3"]}, ["udp", "icmp-echo"], 5, 100, 7)
    mine = [p for p in plan if p.addr == "10.0.0.1"]
    assert len(mine) == 10 and {p.vp for p in mine} == {"a"}
    assert mine[-1].at_ns - mine[0].at_ns == 9 * S // 100          # consecutive slots of VP a
    assert [p.addr for p in plan if p.vp == "a"] == ["10.0.0.1"] * 10 + ["10.0.0.2"] * 10
    assert plan[0].at_ns == 7


def test_a_late_sample_stays_in_its_own_window() -> None:
    """A window's last probe leaving after the next window's first planned time still counts for the
    window it was planned in."""
    plan = [PlannedProbe("a", "x", "udp", 0), PlannedProbe("a", "y", "udp", 10),
            PlannedProbe("a", "x", "udp", 20), PlannedProbe("a", "z", "udp", 21)]
    late = IpidSample("x", "udp", "a", 25, 30, 1)         # planned at 20 (window 1), sent at 25
    early = IpidSample("y", "udp", "a", 9, 12, 2)
    first = IpidSample("x", "udp", "a", 1, 3, 0)
    groups = _split_by_plan(plan, [2, 2], [late, early, first])
    assert groups == [[early, first], [late]]
    with pytest.raises(ValueError, match="no such probe"):
        _split_by_plan(plan, [2, 2], [IpidSample("q", "udp", "a", 1, 2, 3)])


def test_params_check_the_new_knobs() -> None:
    with pytest.raises(ValueError, match="fast_rounds"):
        MidarParams(fast_rounds=3)
    with pytest.raises(ValueError, match="target_rate_pps"):
        MidarParams(target_rate_pps=0)
    assert MidarParams(fast_rounds=0).fast_rounds == 0
