"""The MIDAR pipeline over the alias-router emulator's packet logic, from
four simulated VPs (one with its clock 50 ms off), and the dealias adapter."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field

import pytest

from marionet.measure.midar import (
    MidarParams,
    plan_rounds,
    run_midar,
    samples_from_dealias,
)
from marionet.measure.midar_sim import SimProber, SimVP, mixed_routers

MS = 1_000_000
FAST = 40_000  # mixed_routers' too-fast counters start here


def four_vps(skew_believed_ns: int = 50_300_000) -> list[SimVP]:
    vps = [SimVP(f"vp{i}", f"192.0.2.{i + 1}", delay_ns=(3 + 4 * i) * MS) for i in range(3)]
    vps.append(SimVP("vp3", "192.0.2.9", true_offset_ns=50 * MS, believed_offset_ns=skew_believed_ns,
                     offset_err_ns=1 * MS, delay_ns=8 * MS))
    return vps


def run(cfg: dict, vps: list[SimVP], **kw):  # type: ignore[no-untyped-def]
    prober = SimProber(cfg, vps)
    addrs = [a for r in cfg["router"] for a in r["addresses"]]
    res = asyncio.run(run_midar(None, addrs, vps=[v.name for v in vps], rate_pps=100, prober=prober, **kw))
    return res, prober


def truth(cfg: dict) -> tuple[set[tuple[str, str]], dict[str, str], dict[str, str]]:
    router_of, kind = {}, {}
    pairs = set()
    for r in cfg["router"]:
        k = r["ipid"] if r["velocity"] < FAST else "fast"
        for a in r["addresses"]:
            router_of[a], kind[a] = r["name"], k
        if k in ("shared", "byteswapped"):
            pairs |= {tuple(sorted(p)) for p in itertools.combinations(r["addresses"], 2)}
    return pairs, router_of, kind


@pytest.fixture(scope="module")
def mixed() -> dict:
    return mixed_routers(240, seed=7)


def test_midar_four_vps_one_skewed_precision_recall(mixed: dict) -> None:
    res, prober = run(mixed, four_vps())
    want, router_of, kind = truth(mixed)
    found = res.pairs
    correct = {p for p in found if router_of[p[0]] == router_of[p[1]]}
    precision = len(correct) / len(found)
    recall = len(want & found) / len(want)
    assert precision >= 0.99, (precision, sorted(found - correct)[:5])
    assert recall >= 0.95, recall
    for a, b in found:
        assert kind[a] not in ("random", "zero", "per-interface", "per-destination"), (a, b, kind[a])
        assert kind[b] not in ("random", "zero", "per-interface", "per-destination"), (a, b, kind[b])
    # Every set is one router's, and sets are cliques of confirmed pairs.
    for s in res.alias_sets:
        assert len({router_of[a] for a in s}) == 1
        assert all(tuple(sorted(p)) in found for p in itertools.combinations(s, 2))
    # Byte-swapped routers were read unswapped and found.
    swapped = [r for r in mixed["router"] if r["ipid"] == "byteswapped"]
    assert swapped and all(res.estimates[a].swapped for r in swapped for a in r["addresses"])
    # Statistics: every VP probed in every phase, counts agree with the prober.
    for ph in ("estimation", "discovery", "elimination", "corroboration"):
        assert set(res.phases[ph]["probes"]) == {"vp0", "vp1", "vp2", "vp3"}
    assert sum(st["probes_total"] for st in res.phases.values()) == sum(prober.sent.values())
    assert res.phases["discovery"]["candidates"] >= len(found)
    assert res.phases["corroboration"]["confirmed"] == len(found)
    assert {a for v in res.vp_targets.values() for a in v} == set(router_of)
    # Unusable addresses: zero and random ones with their reasons.
    for a, why in res.unusable.items():
        if kind[a] == "zero":
            assert why == "constant"
    assert all(a in res.unusable for a in router_of if kind[a] in ("zero", "random"))


def test_midar_uncorrected_skew_loses_aliases(mixed: dict) -> None:
    """The same run with the controller ignoring the 50 ms skew (believed
    offset 0, no uncertainty): the skewed VP's samples sit 50 ms off and
    break true aliases' merged series — what the offset correction is for."""
    vps = four_vps()
    vps[3] = SimVP("vp3", "192.0.2.9", true_offset_ns=50 * MS, believed_offset_ns=0, delay_ns=8 * MS)
    res, _ = run(mixed, vps)
    want, _, _ = truth(mixed)
    assert len(want & res.pairs) / len(want) < 0.9


def test_midar_result_text_and_json(mixed: dict) -> None:
    small = {"seed": 1, "router": mixed["router"][:30]}
    res, _ = run(small, four_vps())
    text = res.to_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert sorted(lines) == sorted(" ".join(sorted(s)) for s in res.alias_sets)
    d = json.loads(res.to_json())
    assert d["type"] == "midar" and len(d["alias_sets"]) == len(res.alias_sets)
    assert d["phases"]["corroboration"]["confirmed"] == len(res.pairs)


def test_run_midar_bad_input(mixed: dict) -> None:
    prober = SimProber(mixed, four_vps())
    with pytest.raises(ValueError, match="no target"):
        asyncio.run(run_midar(None, [], vps=["vp0"], prober=prober))
    with pytest.raises(ValueError, match="IPv4"):
        asyncio.run(run_midar(None, ["2001:db8::1"], vps=["vp0"], prober=prober))
    with pytest.raises(ValueError, match="duplicate VP"):
        asyncio.run(run_midar(None, ["10.0.0.1"], vps=["vp0", "vp0"], prober=prober))
    with pytest.raises(ValueError, match="rate_pps"):
        MidarParams(rate_pps=0)
    with pytest.raises(ValueError, match="rounds"):
        MidarParams(discovery_rounds=1)


def test_plan_rounds_samples_every_address_from_every_vp() -> None:
    addrs = [f"10.0.0.{i}" for i in range(10)]
    plan = plan_rounds([addrs], {a: "udp" for a in addrs}, ["a", "b", "c", "d"], 8, 100, 0)
    assert len(plan) == 80
    assert all({p.vp for p in plan if p.addr == a} == {"a", "b", "c", "d"} for a in addrs)
    assert [p.at_ns for p in plan] == sorted(p.at_ns for p in plan)
    assert plan[1].at_ns - plan[0].at_ns == 2_500_000  # 4 VPs × 100 pps
    # Velocity neighbours are not probed back to back.
    first = [p.addr for p in plan[:10]]
    assert all(abs(addrs.index(x) - addrs.index(y)) > 1 for x, y in zip(first, first[1:]))


# --- the dealias adapter, against objects of the Dealias result's shape


@dataclass
class Reply:
    rx_ns: int
    ipid: int | None


@dataclass
class Probe:
    dst: str
    probedef: int
    tx_ns: int
    replies: list[Reply] = field(default_factory=list)


@dataclass
class Dealias:
    probedefs: list[dict]
    probes: list[Probe]


def test_samples_from_dealias_shifts_to_controller_clock() -> None:
    res = Dealias([{"method": "udp"}, {"method": "tcp-ack"}],
                  [Probe("10.0.0.1", 0, 1_000, [Reply(1_500, 77)]), Probe("10.0.0.2", 1, 2_000, []),
                   Probe("10.0.0.3", 1, 3_000, [Reply(3_100, None), Reply(3_200, 9)])])
    ss = samples_from_dealias(res, "vp1", offset_ns=400, err_ns=30)
    assert [(s.addr, s.method, s.vp, s.tx_ns, s.rx_ns, s.ipid, s.err_ns) for s in ss] == [
        ("10.0.0.1", "udp", "vp1", 600, 1_100, 77, 30),
        ("10.0.0.2", "tcp-ack", "vp1", 1_600, None, None, 30),
        ("10.0.0.3", "tcp-ack", "vp1", 2_600, 2_800, 9, 30),
    ]
    with pytest.raises(ValueError, match="probedef index"):
        samples_from_dealias(Dealias([], [Probe("10.0.0.1", 3, 1)]), "v")
    # a probe the guard denied was never sent: no sample for it
    assert samples_from_dealias(Dealias([{"method": "udp"}], [Probe("10.0.0.4", 0, None, [])]), "v") == []


class DenyingProber(SimProber):
    """A SimProber whose VPs' guards refuse every 10th probe of each phase, as a rate grant below the asked
    rate would: those probes give no sample, and the prober says why."""

    def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*a, **kw)
        self.errors: dict[str, list[str]] = {}

    async def run(self, plan, phase):  # type: ignore[no-untyped-def]
        keep = [pp for i, pp in enumerate(plan) if i % 10]
        if len(keep) < len(plan):
            self.errors.setdefault(phase, []).append("vp0: probe 0: guard: rate")
        return await super().run(keep, phase)


def test_probes_a_guard_denies_are_counted_per_phase(mixed: dict) -> None:
    vps = four_vps()
    prober = DenyingProber(mixed, vps)
    addrs = [a for r in mixed["router"] for a in r["addresses"]]
    res = asyncio.run(run_midar(None, addrs, vps=[v.name for v in vps], rate_pps=100, prober=prober))
    for ph, st in res.phases.items():
        if st["probes_total"]:
            assert st["not_sent"] == len(range(0, st["probes_total"], 10)), (ph, st)
            assert st["errors"] == ["vp0: probe 0: guard: rate"]
    assert "not_sent=" in res.to_text()

