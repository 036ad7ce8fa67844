"""Dealias warts (type 9) against Debian's scamper 20211212 on a lab.

Both directions, on the alias-router emulator (client – r1 – ar):

* scamper runs ``dealias -m ally|mercator|radargun|prefixscan`` with
  ``-O warts``; our reader's object, shown as JSON, must be exactly what
  ``sc_warts2json`` prints for the same file;
* our primitives' results are written with our warts writer and
  ``sc_warts2json`` must print our own JSON for them (every field).

Debian's scamper predates midarest and midardisc (methods 6 and 7): its
reader skips those records, which the last test checks; they are covered by
the round-trip unit tests (tests/unit/test_warts_dealias.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from typing import Any, Iterator

import pytest

from marionet.measure.dealias import ally, mercator, midardisc, midarest, prefixscan, radargun
from marionet.results import Dealias, File

from .dealiaslab import MERC, PI, SH, dealias_lab
from .labclient import client_endpoint

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(shutil.which("scamper") is None or shutil.which("sc_warts2json") is None,
                                 reason="Debian's scamper and sc_warts2json not installed")]



@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with dealias_lab("wartsdealias") as lab:
        yield lab


def _shown(d: Dealias) -> dict[str, Any]:
    """Our JSON for ``d`` without marionet's extension keys (what scamper's JSON has)."""
    js = d.to_json()
    js.pop("marionet", None)
    for p in js["probes"]:
        p.pop("marionet", None)
        for r in p["replies"]:
            r.pop("marionet", None)
    return js


def _warts2json(path: str) -> list[dict[str, Any]]:
    cp = subprocess.run(["sc_warts2json", path], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return [json.loads(line) for line in cp.stdout.splitlines() if '"type":"dealias"' in line.replace(" ", "")]


SCAMPER_CMDS = [
    f"dealias -m ally -p '-P udp -d 33435' -p '-P udp -d 33435' {SH[0]} {SH[1]}",
    f"dealias -m ally -p '-P tcp-ack -d 80' -p '-P tcp-ack -d 80' {SH[0]} {PI[0]}",
    f"dealias -m ally -p '-P icmp-echo' -p '-P icmp-echo' {PI[0]} {PI[1]}",
    f"dealias -m mercator {MERC[1]}",
    f"dealias -m mercator {MERC[3]}",
    f"dealias -m radargun -p '-P icmp-echo' -q 3 -W 10 {SH[0]} {SH[1]} {PI[0]}",
    f"dealias -m prefixscan -p '-P icmp-echo' {SH[0]} {SH[1]}/30",
]


@pytest.mark.parametrize("cmd", SCAMPER_CMDS, ids=[c.split()[2] + str(i) for i, c in enumerate(SCAMPER_CMDS)])
def test_scamper_warts_reads_as_sc_warts2json_shows_it(lab, tmp_path, cmd) -> None:
    out = str(tmp_path / "scamper.warts")
    cp = lab.exec("client", ["scamper", "-n", "127.0.0.1", "-O", "warts", "-o", out, "-I", cmd], timeout=120)
    assert cp.returncode == 0, cp.stderr
    (theirs,) = _warts2json(out)
    with File(out) as f:
        (ours,) = [o for o in f if isinstance(o, Dealias)]
    assert _shown(ours) == theirs
    assert ours.probes and all(p.tx_ns for p in ours.probes)
    from marionet.compat import scamper as sc  # and as scamper's module would show the file

    with sc.ScamperFile(out, filter_types=[sc.ScamperDealias]) as f:
        (obj,) = list(f)
    assert obj.method == theirs["method"] and obj.probe_count == len(theirs["probes"])
    for p, tp in zip(obj.probes(), theirs["probes"]):
        assert p.probedef.id == tp["probedef_id"] and str(p.probedef.dst) == theirs["probedefs"][tp["probedef_id"]]["dst"]
        assert [str(r.src) for r in p.replies()] == [r["src"] for r in tp["replies"]]


async def test_our_warts_reads_in_sc_warts2json_as_our_json(lab, tmp_path) -> None:
    async with client_endpoint(lab) as (_, native):
        results = [
            await ally(native, SH[0], SH[2], method="icmp-echo", wait_probe=0.05, wait_timeout=1),
            await ally(native, SH[0], SH[1], method="udp", wait_probe=0.05, wait_timeout=1),
            await ally(native, SH[0], PI[0], method="tcp-ack", dport=80, wait_probe=0.05, wait_timeout=1),
            await mercator(native, MERC[1], wait_timeout=1),
            await mercator(native, MERC[3], wait_timeout=1),
            await radargun(native, [SH[0], SH[1], PI[0]], rounds=3, wait_probe=0.01, wait_timeout=1),
            await prefixscan(native, SH[0], SH[1], 30, wait_probe=0.02, wait_timeout=1),
        ]
    assert [r.result for r in results[:5]] == ["aliases", "aliases", "not-aliases", "aliases", "aliases"]
    path = str(tmp_path / "ours.warts")
    with File(path, "w") as f:
        for r in results:
            f.write(r)
    theirs = _warts2json(path)
    assert len(theirs) == len(results)
    for r, t in zip(results, theirs):
        assert t == _shown(r), r.method
    with File(path) as f:  # and ours reads it back: the verdicts and what aliases() says
        back = [o for o in f if isinstance(o, Dealias)]
    assert [(b.method, b.result, b.aliases()) for b in back] == [(r.method, r.result, r.aliases()) for r in results]


async def test_midar_methods_round_trip_and_old_scamper_skips_them(lab, tmp_path) -> None:
    async with client_endpoint(lab) as (_, native):
        est = await midarest(native, [SH[0], PI[0]], [{"method": "icmp-echo"}, {"method": "udp"}], rounds=2,
                             wait_probe=0.005, wait_round=0.05, wait_timeout=1)
        off = await native.clock_offset(samples=3)
        disc = await midardisc(native, [{"method": "icmp-echo", "dst": a} for a in SH], [(0, 0, 2), (50_000_000, 0, 2)],
                               startat=time.time_ns() + off.offset_ns + 200_000_000, wait_timeout=1)
    path = str(tmp_path / "midar.warts")
    with File(path, "w") as f:
        f.write(est)
        f.write(disc)
    with File(path) as f:
        back = [o for o in f if isinstance(o, Dealias)]
    assert [_shown(b) for b in back] == [_shown(est), _shown(disc)]
    assert back[1].schedule == disc.schedule and back[1].startat_ns == disc.startat_ns // 1000 * 1000
    assert _warts2json(path) == []  # Debian's 20211212 knows methods 1-5 only
