"""marionet.compat.scamper's dealias classes: scamper's names over marionet's
Dealias, ScamperFile reading/writing them, and ScamperCtrl's do_ally …
do_midardisc taking scamper-typed arguments and handing back ScamperDealias."""

from __future__ import annotations

import datetime as dt

import pytest

from marionet.compat import scamper as sc
from marionet.results import Dealias, DealiasProbe, DealiasProbedef, DealiasReply

T0 = 1_700_000_000_000_000_000

#: what scripts use (scamper's module and its C getters' names)
MEMBERS = {
    "ScamperDealias": ("inst", "list", "cycle", "method", "result", "userid", "start", "startat", "attempts",
                       "rounds", "fudge", "wait_probe", "wait_round", "wait_timeout", "probedef_count", "probedef",
                       "probedefs", "probe_count", "probe", "probes", "aliases", "has_aliases", "is_ally",
                       "is_mercator", "is_radargun", "is_prefixscan", "is_bump", "is_midarest", "is_midardisc",
                       "is_result_aliases", "is_result_not_aliases", "is_result_none", "is_result_halted",
                       "to_json"),
    "ScamperDealiasProbe": ("probedef", "seq", "tx", "ipid", "reply_count", "reply", "replies"),
    "ScamperDealiasReply": ("src", "rx", "ipid", "ttl", "size", "proto", "icmp_type", "icmp_code", "icmp_q_ttl",
                            "tcp_flags", "is_from_target", "is_tcp", "is_icmp", "is_icmp_echo_reply",
                            "is_icmp_ttl_exp", "is_icmp_unreach", "is_icmp_unreach_port"),
    "ScamperDealiasProbedef": ("id", "method", "dst", "src", "ttl", "size", "sport", "dport", "icmp_id",
                               "icmp_sum", "is_icmp", "is_udp", "is_tcp"),
}


def _mercator() -> Dealias:
    pd = DealiasProbedef(id=0, method="udp", dst="192.0.2.22", src="192.0.2.99", sport=40000, dport=33435)
    p = DealiasProbe(probedef=0, dst="192.0.2.22", seq=0, tx_ns=T0, ipid=7)
    p.replies.append(DealiasReply(src="192.0.2.21", rx_ns=T0 + 300_000, ipid=55, ttl=64, proto=1, icmp_type=3,
                                  icmp_code=3, icmp_q_ttl=1))
    return Dealias(method="mercator", start_ns=T0, probedefs=[pd], probes=[p], result="aliases", attempts=3,
                   wait_timeout_ns=5 * 10**9)


def test_every_member_is_there_and_typed() -> None:
    d = sc.ScamperDealias(_mercator())
    objs = {"ScamperDealias": d, "ScamperDealiasProbe": d.probe(0), "ScamperDealiasReply": d.probe(0).reply(0),
            "ScamperDealiasProbedef": d.probedef(0)}
    for cls, names in MEMBERS.items():
        assert isinstance(objs[cls], getattr(sc, cls))
        for name in names:
            if name in ("list", "cycle"):
                with pytest.raises(NotImplementedError, match=name):
                    getattr(objs[cls], name)
            else:
                assert hasattr(objs[cls], name), (cls, name)


def test_scamper_views_of_a_result() -> None:
    d = sc.ScamperDealias(_mercator())
    assert d.is_mercator() and not d.is_ally() and d.is_result_aliases() and d.has_aliases()
    assert d.aliases() == [(sc.ScamperAddr("192.0.2.22"), sc.ScamperAddr("192.0.2.21"))]
    assert d.start == dt.datetime.fromtimestamp(T0 / 1e9, dt.timezone.utc)
    assert d.wait_timeout == dt.timedelta(seconds=5)
    (probe,) = list(d.probes())
    assert probe.probedef is d.probedef(0) and probe.probedef.dst == sc.ScamperAddr("192.0.2.22")
    assert probe.probedef.is_udp() and (probe.probedef.sport, probe.probedef.dport) == (40000, 33435)
    (reply,) = list(probe.replies())
    assert not reply.is_from_target() and reply.is_icmp_unreach_port() and not reply.is_icmp_echo_reply()
    assert reply.rx - probe.tx == dt.timedelta(microseconds=300)
    assert isinstance(reply.src, sc.ScamperAddr) and reply.ipid == 55
    assert d.probe(1) is None and probe.reply(1) is None and d.probedef(3) is None
    assert d.vp is None and d.dealias.probes[0].ipid == 7  # marionet's fields stay reachable
    assert d.to_json()["method"] == "mercator"
    with pytest.raises(TypeError, match="wraps a marionet Dealias"):
        sc.ScamperDealias({"method": "ally"})


def test_probedef_and_round_constructors_check_their_arguments() -> None:
    pd = sc.ScamperDealiasProbedef("icmp-echo", ttl=255)
    assert pd.to_params() == {"method": "icmp-echo", "ttl": 255}
    assert sc.ScamperDealiasProbedef("tcp-ack", dst="10.0.0.1", dport=80).to_params() == \
        {"method": "tcp-ack", "dst": "10.0.0.1", "dport": 80}
    with pytest.raises(ValueError, match="probedef method"):
        sc.ScamperDealiasProbedef("tcp-fin")
    with pytest.raises(ValueError, match="ttl"):
        sc.ScamperDealiasProbedef("udp", ttl=-1)
    with pytest.raises(ValueError):
        sc.ScamperDealiasProbedef("udp", dst="not-an-address")
    r = sc.ScamperDealiasMidardiscRound(0.25, 0, 3)
    assert r.to_params() == (250_000_000, 0, 3) and r.start == dt.timedelta(milliseconds=250)
    with pytest.raises(ValueError, match="begin <= end"):
        sc.ScamperDealiasMidardiscRound(0, 3, 1)
    with pytest.raises(ValueError, match="startat"):
        sc._dealias_params({"startat": dt.datetime(2026, 1, 1)})  # naive: which clock?


@pytest.mark.parametrize("suffix", ["warts", "json", "warts.gz"])
def test_scamper_file_reads_and_writes_dealias(tmp_path, suffix) -> None:
    path = str(tmp_path / f"d.{suffix}")
    d = sc.ScamperDealias(_mercator())
    with sc.ScamperFile(path, "w") as f:
        f.write(d)
        f.write(_mercator())  # marionet's own class too
    with sc.ScamperFile(path, filter_types=[sc.ScamperDealias]) as f:
        got = list(f)
    assert got == [d, d] and all(isinstance(o, sc.ScamperDealias) for o in got)


def test_ctrl_dealias_primitives_take_scamper_arguments_and_return_scamper_dealias() -> None:
    with sc.ScamperCtrl(local_vps=1) as ctrl:
        inst = ctrl.instances()[0]
        d = ctrl.do_radargun([sc.ScamperAddr("127.0.0.1"), "127.0.0.2"], rounds=3, inst=inst, sync=True,
                             wait_probe=dt.timedelta(milliseconds=10), wait_timeout=dt.timedelta(seconds=1),
                             probedefs=[sc.ScamperDealiasProbedef("icmp-echo", ttl=64)])
        assert isinstance(d, sc.ScamperDealias) and d.is_radargun() and d.probe_count == 6
        assert [str(p.probedef.dst) for p in d.probes()] == ["127.0.0.1", "127.0.0.2"] * 3
        assert all(p.probedef.ttl == 64 and p.reply(0) is not None and p.reply(0).is_from_target()
                   for p in d.probes())
        ctrl.do_ally("127.0.0.1", "127.0.0.2", inst=inst, wait_timeout=1, wait_probe=dt.timedelta(milliseconds=20))
        at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(milliseconds=300)
        ctrl.do_midardisc([sc.ScamperDealiasProbedef("icmp-echo", dst="127.0.0.1"),
                           sc.ScamperDealiasProbedef("udp", dst="127.0.0.2")],
                          [sc.ScamperDealiasMidardiscRound(0, 0, 1), sc.ScamperDealiasMidardiscRound(0.05, 0, 1)],
                          startat=at, inst=inst, wait_timeout=1)
        got = {r.method: r for r in ctrl.responses(timeout=30)}
    assert set(got) == {"ally", "midardisc"}
    assert all(isinstance(r, sc.ScamperDealias) and r.inst.name == inst.name for r in got.values())
    md = got["midardisc"]
    assert md.probe_count == 4 and [p.probedef.method for p in md.probes()] == ["icmp-echo", "udp"] * 2
    assert [(r.start, r.begin, r.end) for r in md.schedule] == [(dt.timedelta(0), 0, 1),
                                                                 (dt.timedelta(milliseconds=50), 0, 1)]
    assert abs(md.startat - at) < dt.timedelta(milliseconds=1)
    assert got["ally"].result in ("aliases", "not-aliases")
