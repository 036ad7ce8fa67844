"""MIDAR live: the whole pipeline through real endpoints on an alias lab (issue 12's acceptance).

Four VPs (the lab's own endpoints, dialling its controller) resolve the
interfaces of 200 emulated routers with a seeded mix of IP-ID behaviour;
vp2's clock runs 50 ms ahead (``clock_skew_ms``), so probes are scheduled in
each VP's own clock from the controller's estimate of its offset. The score
is against the emulator's ground truth.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Iterator

import pytest

from marionet.lab.aliaslab import alias_lab, alias_targets, alias_truth
from marionet.lab.pytest_plugin import make_lab

pytestmark = [pytest.mark.root, pytest.mark.slow]

SKEW = {"vp2": 50.0}
RATE = 250.0  # probes/s per VP


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(alias_lab(200, vps=4, skew_ms=SKEW, seed=3)) as lab:
        lab.wait_vps(30)
        yield lab


async def _with_ctrl(lab: Any, fn: Any) -> Any:
    from marionet.client.actrl import AsyncCtrl

    cert, key, ca = lab.client_tls()
    async with AsyncCtrl(lab.controller_address(), cert=cert, key=key, ca=ca) as ctrl:
        insts = {i.name: i for i in ctrl.instances()}
        deadline = time.monotonic() + 10           # the controller's first keepalive exchange
        while any(i.clock_offset is None for i in insts.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return await fn(ctrl, insts)


def _offset_ns(inst: Any) -> int:
    return int(inst.clock_offset.total_seconds() * 1e9)


def test_midar_across_four_vps_with_one_skewed(lab: Any) -> None:
    from marionet.measure.midar import run_midar

    spec = lab.spec
    truth, targets = alias_truth(spec), alias_targets(spec)
    t0 = time.monotonic()

    async def go(ctrl: Any, insts: dict[str, Any]) -> Any:
        assert abs(_offset_ns(insts["vp2"]) / 1e6 - SKEW["vp2"]) < 3, insts["vp2"].clock_offset
        return await run_midar(ctrl, targets, vps=list(insts.values()), rate_pps=RATE)

    res = asyncio.run(_with_ctrl(lab, go))
    wall = time.monotonic() - t0
    found = {tuple(sorted(p)) for p in res.pairs}
    owner = truth["owner"]
    correct = {p for p in found if owner[p[0]] == owner[p[1]]}
    want = truth["expected_answering_pairs"]
    precision = len(correct) / len(found)
    recall = len(found & want) / len(want)
    recall_all = len(found & truth["expected_pairs"]) / len(truth["expected_pairs"])
    probes = sum(st["probes_total"] for st in res.phases.values())
    print(f"\nMIDAR live: {len(targets)} addresses of 200 routers, 4 VPs (vp2 +50 ms), {RATE:g} probes/s/VP: "
          f"precision {precision:.4f}, recall {recall:.4f} ({recall_all:.4f} counting silent routers), "
          f"{len(found)} pairs, {len(res.alias_sets)} sets, {probes} probes, {wall:.0f} s")
    missed = Counter(owner[a].rsplit("-", 1)[0] for a, _ in want - found)
    print(f"  missed pairs by class: {dict(missed)}; phases: "
          + "; ".join(f"{ph} {st['probes_total']} probes {st['wall_s']:.0f} s" for ph, st in res.phases.items()))
    assert precision >= 0.99, sorted(found - correct)[:5]
    assert recall >= 0.95, (recall, dict(missed))
    never = set(truth["never_pairs_of"])
    assert not [p for p in found if owner[p[0]] in never or owner[p[1]] in never]
    # Every VP took part in every phase, and the skewed one's samples did not break true pairs of
    # routers it probed: each alias set spans addresses the four VPs estimated.
    for ph in ("estimation", "discovery", "elimination", "corroboration"):
        assert set(res.phases[ph]["probes"]) == {"vp1", "vp2", "vp3", "vp4"}, ph
    assert {a for v in res.vp_targets.values() for a in v} == set(targets)
    assert all(res.unusable.get(a) == "constant" for r in truth["routers"] if r["class"] == "zero"
               for a in r["addresses"])
    d = res.to_dict()
    assert d["type"] == "midar" and len(d["alias_sets"]) == len(res.alias_sets)


def test_midardisc_keeps_the_schedule_in_a_skewed_vp_clock(lab: Any) -> None:
    """The endpoint-placement primitive on vp2 (+50 ms): a schedule given in vp2's clock is sent at
    the intended real time, and its stamps come back in vp2's clock."""
    addrs = alias_targets(lab.spec)[:3]
    defs = [{"method": "icmp-echo", "dst": a} for a in addrs]
    sched = [(0, 0, 2), (40_000_000, 0, 2)]

    async def go(ctrl: Any, insts: dict[str, Any]) -> Any:
        inst = insts["vp2"]
        off = _offset_ns(inst)
        start_ctl = time.time_ns() + 400_000_000
        res = await ctrl.do_midardisc(defs, schedule=sched, startat=start_ctl + off, wait_timeout=1,
                                      inst=inst, sync=True)
        return res, off, start_ctl

    res, off, start_ctl = asyncio.run(_with_ctrl(lab, go))
    assert res.error is None and len(res.probes) == 6
    for p, due_ms in zip(res.probes, (0, 0, 0, 40, 40, 40)):
        late = p.tx_ns - off - (start_ctl + due_ms * 1_000_000)
        assert -3_000_000 < late < 10_000_000, (p.dst, late)  # not 50 ms off either way
        assert p.replies and p.replies[0].rx_ns > p.tx_ns


def test_midardisc_refuses_a_startat_in_the_past(lab: Any) -> None:
    addrs = alias_targets(lab.spec)[:2]
    defs = [{"method": "icmp-echo", "dst": a} for a in addrs]

    async def go(ctrl: Any, insts: dict[str, Any]) -> Any:
        inst = insts["vp1"]
        return await ctrl.do_midardisc(defs, schedule=[(0, 0, 1)], startat=time.time_ns() + _offset_ns(inst)
                                       - 2_000_000_000, wait_timeout=1, inst=inst, sync=True)

    res = asyncio.run(_with_ctrl(lab, go))
    assert res.error and "in the past" in res.error
    assert not any(p.tx_ns for p in res.probes)


def test_midar_cli_on_a_lab_it_builds(tmp_path: Any) -> None:
    """``marionet midar --lab alias:N --skew VP=MS``: builds the lab, probes from its VPs, scores
    against its truth, writes the sets and JSON, and removes the lab."""
    import json
    import subprocess
    import sys

    from marionet.lab.system import list_netns

    before = set(list_netns())
    cp = subprocess.run([sys.executable, "-m", "marionet", "midar", "--lab", "alias:30", "--skew", "vp3=-40",
                         "--rate", "250", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, cp.stderr[-2000:]
    print(cp.stdout)
    score = [ln for ln in cp.stdout.splitlines() if ln.startswith("precision")]
    assert score and "pairs on routers that share no counter: 0" in score[0]
    precision = float(score[0].split()[1])
    assert precision >= 0.99
    d = json.loads((tmp_path / "midar.json").read_text())
    sets = [ln for ln in (tmp_path / "midar.sets").read_text().splitlines() if not ln.startswith("#")]
    assert d["alias_sets"] and len(sets) == len(d["alias_sets"])
    assert set(d["vp_targets"]) == {"vp1", "vp2", "vp3", "vp4"}
    # the lab is gone again (other labs may come and go meanwhile: only this one's alias router counts)
    assert not [ns for ns in set(list_netns()) - before if ns.endswith("-ar")]
