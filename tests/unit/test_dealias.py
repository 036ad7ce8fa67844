"""The dealias sans-I/O core: verdicts, grouping, schedules, probe matching, plans, JSON."""

from __future__ import annotations

import json

import pytest

from marionet.lab.aliasrouter import AliasEmulator, load_config
from marionet.measure import probes as P
from marionet.measure.dealias import (plan_ally, plan_mercator, plan_midardisc, plan_midarest, plan_prefixscan,
                                      plan_radargun)
from marionet.measure.dealias_core import (Probing, Slot, alternating_slots, ally_verdict, check_probedefs,
                                           covering_prefix, disc_slots, mercator_verdict, prefix_candidates,
                                           result_of, round_slots)
from marionet.measure.registry import check_params
from marionet.results import Dealias, from_json
from marionet.results.dealias import DealiasProbe, DealiasReply, ipid_inseq, radargun_sets

SRC = "10.1.0.1"


def _probes(seq: list[tuple[int, int | None]], dsts=("10.0.0.1", "10.0.0.2")) -> list[DealiasProbe]:
    out = []
    for i, (pd, ipid) in enumerate(seq):
        p = DealiasProbe(probedef=pd, dst=dsts[pd], seq=i // 2, tx_ns=1000 + i, ipid=60000 + i)
        if ipid is not None:
            p.replies.append(DealiasReply(src=dsts[pd], rx_ns=2000 + i, ipid=ipid))
        out.append(p)
    return out


def test_ally_verdict_fudge_and_wrap() -> None:
    assert ally_verdict(_probes([(0, 10), (1, 20), (0, 30), (1, 40), (0, 50)]), 200) == "aliases"
    # wrapping at 65536 is still in sequence
    assert ally_verdict(_probes([(0, 65500), (1, 65530), (0, 20), (1, 60), (0, 100)]), 200) == "aliases"
    # a step bigger than fudge, a step backwards, a repeated ID: not one counter
    assert ally_verdict(_probes([(0, 10), (1, 300), (0, 320)]), 200) == "not-aliases"
    assert ally_verdict(_probes([(0, 10), (1, 5), (0, 30)]), 200) == "not-aliases"
    assert ally_verdict(_probes([(0, 10), (1, 10)]), 200) == "not-aliases"
    # one side silent, or zero IDs: no verdict
    assert ally_verdict(_probes([(0, 10), (1, None), (0, 30)]), 200) == "none"
    assert ally_verdict(_probes([(0, 0), (1, 0)]), 200) == "none"
    assert ipid_inseq([1, 2, 3], 0) and not ipid_inseq([1, 40000], 0)


def test_radargun_groups_by_counter() -> None:
    shared = [100, 110, 120, 130, 140, 150]
    probes = []
    t = 0
    for r in range(3):
        for dst, ipid in (("a", shared[2 * r]), ("b", shared[2 * r + 1]), ("c", 30000 + r),
                          ("d", [5, 60000, 7][r]), ("e", 30001 + 20000 * 0 + r * 0 + 1000 + r)):
            t += 1
            probes.append(DealiasProbe(probedef=0, dst=dst, seq=r, tx_ns=t,
                                       replies=[DealiasReply(src=dst, rx_ns=t + 1, ipid=ipid)]))
    sets = radargun_sets(probes)
    assert ["a", "b"] in sets and ["d"] in sets  # d: not a counter
    assert not any("a" in s and "c" in s for s in sets)  # 30000 apart: no


def test_mercator_verdict() -> None:
    p = DealiasProbe(probedef=0, dst="10.0.0.2", seq=0, tx_ns=1)
    assert mercator_verdict([p]) == "none"
    p.replies.append(DealiasReply(src="10.0.0.1", rx_ns=2))
    assert mercator_verdict([p]) == "aliases"
    p.replies[0].src = "10.0.0.2"
    assert mercator_verdict([p]) == "not-aliases"


def test_prefixscan_order_like_scamper() -> None:
    # scamper tried .13 .14 .15 .8 .9 .10 .11 for b = .12/29 (a elsewhere)
    assert prefix_candidates("10.200.0.21", "10.200.0.12", 29) == [f"10.200.0.{i}" for i in (13, 14, 15, 8, 9, 10, 11)]
    assert prefix_candidates("10.0.0.1", "10.0.0.2", 30) == ["10.0.0.3", "10.0.0.0"]
    assert covering_prefix("10.200.0.2", "10.200.0.3") == "10.200.0.3/31"


def test_schedules() -> None:
    assert [(s.pd, s.at_ns) for s in alternating_slots(5, 10)] == [(0, 0), (1, 10), (0, 20), (1, 30), (0, 40)]
    assert [(s.pd, s.at_ns) for s in round_slots(2, 2, 10, 100)] == [(0, 0), (1, 10), (0, 100), (1, 110)]
    assert [(s.pd, s.at_ns) for s in round_slots(3, 2, 10, 0)] == [(0, 0), (1, 10), (2, 20), (0, 30), (1, 40), (2, 50)]
    assert [(s.pd, s.at_ns) for s in disc_slots([(0, 0, 1), (500, 2, 2)], 5)] == [(0, 0), (1, 5), (2, 500)]


@pytest.mark.parametrize("bad, msg", [
    (dict(schedule=[(0, 0, 5)]), "end"), (dict(schedule=[(10, 0, 0), (5, 0, 0)]), "before"),
    (dict(schedule=[(0, 1, 0)]), "after end"), (dict(schedule=[]), "non-empty"),
    (dict(schedule=[(0, 0)]), "start_ns_offset"),
])
def test_midardisc_schedule_errors(bad, msg) -> None:
    with pytest.raises(ValueError, match=msg):
        plan_midardisc([{"dst": "10.0.0.1"}, {"dst": "10.0.0.2"}], **bad)


def test_plan_errors() -> None:
    with pytest.raises(ValueError, match="IPv4"):
        plan_ally("2001:db8::1", "2001:db8::2")
    with pytest.raises(ValueError, match="different"):
        plan_ally("10.0.0.1", "10.0.0.1")
    with pytest.raises(ValueError, match="method"):
        plan_ally("10.0.0.1", "10.0.0.2", method="icmp-time")
    with pytest.raises(ValueError, match="unknown key"):
        plan_radargun(["10.0.0.1", "10.0.0.2"], probedefs=[{"methd": "udp"}])
    with pytest.raises(ValueError, match="at least 2"):
        plan_radargun(["10.0.0.1"])
    with pytest.raises(ValueError, match="IPv4"):
        plan_midarest(["2001:db8::1"])
    with pytest.raises(ValueError, match="prefixlen"):
        plan_prefixscan("10.0.0.1", "10.0.0.2", 8)
    with pytest.raises(ValueError, match="mix"):
        check_probedefs([{"dst": "10.0.0.1"}, {"dst": "2001:db8::1"}], what="x", v6_ok=True)
    assert plan_mercator("2001:db8::1").probedefs[0].family == 6  # mercator is defined on IPv6
    with pytest.raises(ValueError, match="at most 600 s"):
        check_params("radargun", {"addrs": ["10.0.0.1", "10.0.0.2"], "rounds": 1000, "wait_probe": 5})
    with pytest.raises(ValueError, match="unknown"):
        check_params("ally", {"dst1": "10.0.0.1", "dst2": "10.0.0.2", "atempts": 3})


def _emulate(run: Probing, emu: AliasEmulator, t0: int) -> None:
    """Send each probe of ``run`` through the emulator (sans-I/O), feed the replies back."""
    for k in range(len(run.slots)):
        _, data, _ = run.probe(k)
        now = t0 + run.slots[k].at_ns
        run.sent(k, now, "kernel")
        reply = emu.handle(data, now)
        if reply is not None:
            pkt = P.parse_packet(reply)
            assert pkt is not None and run.received(pkt, now + 1000)


EMU = {"seed": 1, "router": [
    {"name": "sh", "ipid": "shared", "addresses": ["192.0.2.1", "192.0.2.2"], "velocity": 10.0, "offset": 1000},
    {"name": "pi", "ipid": "per-interface", "addresses": ["192.0.2.11", "192.0.2.12"]},
    {"name": "m", "addresses": ["192.0.2.21", "192.0.2.22"], "udp_reply_source": ["192.0.2.21"]}]}


@pytest.mark.parametrize("method", ["icmp-echo", "udp", "tcp-ack", "tcp-ack-sport", "udp-dport"])
def test_probes_matched_and_ally_against_the_emulator(method) -> None:
    t0 = 1_700_000_000 * 10**9
    emu = AliasEmulator(load_config(EMU), now_ns=t0)
    for pair, want in ((("192.0.2.1", "192.0.2.2"), "aliases"), (("192.0.2.11", "192.0.2.12"), "not-aliases")):
        plan = plan_ally(*pair, method=method)
        run = Probing(list(plan.probedefs), list(plan.slots), SRC)
        _emulate(run, emu, t0)
        assert all(len(p.replies) == 1 for p in run.probes), method
        assert ally_verdict(run.probes, 200) == want, (method, pair)
        assert run.strays == 0


def test_icmp_sum_is_kept_constant() -> None:
    plan = plan_ally("192.0.2.1", "192.0.2.2", probedefs=[{"method": "icmp-echo", "icmp_sum": 0x1234}] * 2)
    run = Probing(list(plan.probedefs), list(plan.slots), SRC)
    for k in range(5):
        _, data, _ = run.probe(k)
        icmp = data[20:]
        assert icmp[2:4] == b"\x12\x34" and P.checksum(icmp) == 0


def test_mercator_against_the_emulator_and_json_round_trip() -> None:
    t0 = 1_700_000_000 * 10**9
    emu = AliasEmulator(load_config(EMU), now_ns=t0)
    plan = plan_mercator("192.0.2.22")
    run = Probing(list(plan.probedefs), [Slot(0, 0)], SRC)
    _emulate(run, emu, t0)
    d = result_of("mercator", run, start_ns=t0 + 123, result=mercator_verdict(run.probes), attempts=3,
                  wait_timeout_ns=5 * 10**9)
    assert d.aliases() == [("192.0.2.22", "192.0.2.21")]
    js = d.to_json()
    # scamper 20211212's keys, as sc_warts2json / scamper -O json print them
    assert list(js)[:8] == ["type", "version", "method", "userid", "result", "start", "attempts", "wait_timeout"]
    assert set(js["probedefs"][0]) == {"id", "src", "dst", "ttl", "size", "method", "udp_sport", "udp_dport"}
    assert set(js["probes"][0]) == {"probedef_id", "seq", "tx", "ipid", "replies", "marionet"}
    assert {"src", "rx", "ttl", "ipid", "proto", "icmp_type", "icmp_code", "icmp_q_ttl"} <= set(js["probes"][0]["replies"][0])
    back = from_json(json.loads(json.dumps(js)))
    assert isinstance(back, Dealias) and back.to_json() == js and back.start_ns == t0 + 123


def test_from_json_reads_scamper_output() -> None:
    line = ('{"type":"dealias","version":"0.2","method":"ally", "userid":0, "result":"aliases", '
            '"start":{"sec":1796664493, "usec":940265}, "wait_probe":150, "wait_timeout":5, "attempts":5, '
            '"fudge":200, "probedefs":[{"id":0, "src":"10.1.0.1", "dst":"10.200.0.1", "ttl":255, "size":0, '
            '"method":"udp", "udp_sport":39581, "udp_dport":33435}, {"id":1, "src":"10.1.0.1", '
            '"dst":"10.200.0.2", "ttl":255, "size":0, "method":"tcp-ack", "tcp_sport":39596, "tcp_dport":80, '
            '"tcp_flags":16}], "probes":[{"probedef_id":1, "seq":0, "tx":{"sec":1796664506, "usec":291913}, '
            '"ipid":65278, "replies":[{"src":"10.200.0.2", "rx":{"sec":1796664506, "usec":299641}, "ttl":62, '
            '"ipid": 684, "proto":6, "tcp_flags":4}]}]}')
    d = from_json(json.loads(line))
    assert d.aliases() == [("10.200.0.1", "10.200.0.2")] and d.wait_probe_ns == 150_000_000
    assert d.probes[0].dst == "10.200.0.2" and d.probes[0].replies[0].tcp_flags == 4
    assert d.probedefs[1].dport == 80
    with pytest.raises(ValueError):
        from_json({**json.loads(line), "method": "nope"})


def test_probedef_json_tcp_flags_follow_the_method() -> None:
    """scamper's tcp-syn-sport probes (read from its warts) are SYNs; ours are ACKs."""
    from marionet.results.dealias import DealiasProbedef, _probedef_json

    assert _probedef_json(DealiasProbedef(0, "tcp-syn-sport", "10.0.0.1", sport=1, dport=80))["tcp_flags"] == 2
    assert _probedef_json(DealiasProbedef(0, "tcp-ack-sport", "10.0.0.1", sport=1, dport=80))["tcp_flags"] == 16
