"""The dealias primitives against the alias-router emulator's ground truth.

Lab: client – r1 – ar, where ``ar`` runs the emulator with routers of known
IP-ID behaviour in 10.200.0.0/24 (the first alias router's stub prefix).
Each primitive runs in the native, remote and endpoint placements and must
give the emulator's truth; ally, mercator, radargun and prefixscan are also
run with Debian's scamper inside the client namespace, and the verdicts
must agree.
"""

from __future__ import annotations

import json
import shutil
import time
from typing import Any, Iterator

import pytest

from marionet.measure.dealias import ally, mercator, midardisc, midarest, prefixscan, radargun
from marionet.results import Dealias, from_json

from .dealiaslab import MERC, PI, RND, SH, dealias_lab
from .labclient import client_endpoint, task_result

pytestmark = [pytest.mark.root]

SCAMPER = shutil.which("scamper")
needs_scamper = pytest.mark.skipif(SCAMPER is None, reason="Debian's scamper not installed")
PLACEMENTS = ("native", "remote", "endpoint")


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with dealias_lab("dealias") as lab:
        yield lab


async def _three(lab: Any, name: str, fn: Any, *args: Any, **params: Any) -> dict[str, Dealias]:
    """The same primitive natively, remotely and as an endpoint task."""
    out: dict[str, Dealias] = {}
    async with client_endpoint(lab) as (session, native):
        out["native"] = await fn(native, *args, **params)
        out["remote"] = await fn(session, *args, **params)
        names = {"ally": ("dst1", "dst2"), "mercator": ("dst",), "radargun": ("addrs",),
                 "prefixscan": ("near", "far", "prefixlen"), "midarest": ("addrs", "probedefs"),
                 "midardisc": ("probedefs", "schedule")}[name]
        out["endpoint"] = await task_result(session, name, {**dict(zip(names, args)), **params})
    for where, d in out.items():
        assert isinstance(d, Dealias) and d.method == name, where
        assert d.error is None, (where, d.error)
        assert from_json(json.loads(json.dumps(d.to_json()))).to_json() == d.to_json(), where
        for p in d.probes:
            assert p.tx_ns is not None and p.tx_ts_source == "kernel", (where, p)
    return out


def _scamper(lab: Any, cmd: str) -> dict[str, Any]:
    cp = lab.exec("client", ["scamper", "-n", "127.0.0.1", "-O", "json", "-I", cmd], timeout=120)
    assert cp.returncode == 0, cp.stderr
    (d,) = [json.loads(line) for line in cp.stdout.splitlines() if '"dealias"' in line]
    return d


@pytest.mark.parametrize("method", ["icmp-echo", "udp", "tcp-ack"])
async def test_ally_verdicts_match_truth(lab, method) -> None:
    for pair, want in (((SH[0], SH[1]), "aliases"), ((PI[0], PI[1]), "not-aliases"),
                       ((SH[0], PI[0]), "not-aliases")):
        res = await _three(lab, "ally", ally, *pair, method=method, wait_probe=0.05, wait_timeout=1)
        for where, d in res.items():
            assert d.result == want, (method, pair, where, [(p.dst, [r.ipid for r in p.replies]) for p in d.probes])
            assert d.has_aliases() == (want == "aliases")
            assert len(d.probes) == 5 and [p.probedef for p in d.probes] == [0, 1, 0, 1, 0]
            assert all(p.replies and p.replies[0].src == p.dst for p in d.probes), where


@needs_scamper
async def test_ally_same_verdicts_as_scamper(lab) -> None:
    async with client_endpoint(lab) as (_, native):
        for pair in ((SH[0], SH[2]), (PI[0], PI[1])):
            ours = await ally(native, *pair, method="udp", wait_timeout=1)
            theirs = _scamper(lab, f"dealias -m ally -p '-P udp -d 33435' -p '-P udp -d 33435' {pair[0]} {pair[1]}")
            assert ours.result == theirs["result"], (pair, ours.result, theirs["result"])
            js = ours.to_json()
            assert set(theirs) - {"probes"} <= set(js), set(theirs) - set(js)
            assert set(theirs["probedefs"][0]) == set(js["probedefs"][0])
            assert set(theirs["probes"][0]["replies"][0]) == set(js["probes"][0]["replies"][0]) - {"marionet"}


def test_ally_refuses_ipv6() -> None:
    from marionet.measure.dealias import plan_ally
    with pytest.raises(ValueError, match="IPv4"):
        plan_ally(MERC[2], MERC[3])


@pytest.mark.parametrize("family", [4, 6])
async def test_mercator_names_the_replying_interface(lab, family) -> None:
    probed, replier = (MERC[1], MERC[0]) if family == 4 else (MERC[3], MERC[2])
    res = await _three(lab, "mercator", mercator, probed, wait_timeout=1)
    for where, d in res.items():
        assert d.result == "aliases" and d.aliases() == [(probed, replier)], where
    same = await _three(lab, "mercator", mercator, replier, wait_timeout=1)
    assert all(d.result == "not-aliases" and not d.has_aliases() for d in same.values())
    if SCAMPER:
        theirs = _scamper(lab, f"dealias -m mercator {probed}")
        assert theirs["result"] == "aliases" and theirs["probes"][0]["replies"][0]["src"] == replier


async def test_radargun_groups_shared_counters(lab) -> None:
    addrs = [SH[0], SH[1], SH[2], PI[0], PI[1], RND[0]]
    res = await _three(lab, "radargun", radargun, addrs, rounds=4, wait_probe=0.01, wait_timeout=1)
    for where, d in res.items():
        assert d.aliases() == [tuple(SH)], (where, d.alias_sets)
        assert len(d.probes) == 4 * len(addrs)
    if SCAMPER:
        theirs = _scamper(lab, f"dealias -m radargun -p '-P icmp-echo' -q 4 -W 10 {' '.join(addrs)}")
        assert theirs["result"] == "none" and len(theirs["probes"]) == 4 * len(addrs)


async def test_prefixscan_finds_the_alias_in_the_prefix(lab) -> None:
    res = await _three(lab, "prefixscan", prefixscan, SH[0], SH[1], 30, wait_probe=0.02, wait_timeout=1)
    for where, d in res.items():
        assert d.result == "aliases" and d.aliases() == [(SH[0], SH[2])], (where, d.prefix)
        assert d.prefix == (SH[0], f"{SH[1]}/30", f"{SH[2]}/31")
    if SCAMPER:
        theirs = _scamper(lab, f"dealias -m prefixscan -p '-P icmp-echo' {SH[0]} {SH[1]}/30")
        assert (theirs["result"], theirs.get("ab")) == ("aliases", f"{SH[2]}/31")


async def test_midarest_samples_every_target_each_round(lab) -> None:
    pds = [{"method": "icmp-echo"}, {"method": "tcp-ack", "dport": 80}]
    res = await _three(lab, "midarest", midarest, [SH[0], PI[0]], pds, rounds=3, wait_probe=0.005,
                       wait_round=0.05, wait_timeout=1)
    for where, d in res.items():
        assert len(d.probedefs) == 4 and len(d.probes) == 12, where
        assert {(d.probedefs[p.probedef].method, p.dst) for p in d.probes} == \
            {(m, a) for m in ("icmp-echo", "tcp-ack") for a in (SH[0], PI[0])}
        assert all(p.replies and p.replies[0].ipid is not None and p.replies[0].rx_ns > p.tx_ns for p in d.probes)


async def test_midardisc_sends_on_the_schedule(lab) -> None:
    pds = [{"method": "icmp-echo", "dst": a} for a in (SH[0], SH[1], PI[0])]
    sched = [(0, 0, 1), (50_000_000, 2, 2), (100_000_000, 0, 2)]
    async with client_endpoint(lab) as (session, native):
        for io in (native, session):
            off = await io.clock_offset(samples=3)
            startat = time.time_ns() + off.offset_ns + 300_000_000
            d = await midardisc(io, pds, sched, startat=startat, wait_timeout=1)
            assert [p.dst for p in d.probes] == [SH[0], SH[1], PI[0], SH[0], SH[1], PI[0]]
            assert d.startat_ns == startat
            for p, (off_ns, pd) in zip(d.probes, [(0, 0), (0, 1), (50, 2), (100, 0), (100, 1), (100, 2)]):
                assert p.probedef == pd
                assert 0 <= p.tx_ns - (startat + off_ns * 1_000_000) < 5_000_000, (p.tx_ns - startat)
            assert all(p.replies for p in d.probes)
