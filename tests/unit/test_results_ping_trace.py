"""Ping and Trace objects: construction, validation, statistics, hop views."""

import datetime as dt

import pytest

from marionet.results import (Addr, IcmpExt, MplsLabel, Ping, PingReply,
                              PingStop, Trace, TraceHop, TraceStop)

T0 = 1_700_000_000_000_000_000
US = 1_000
MS = 1_000_000


def echo(attempt, rtt_ns, src="127.0.0.1", **kw):
    tx = T0 + attempt * 1_000 * MS
    return PingReply(src=src, attempt=attempt, tx_ns=tx, rx_ns=tx + rtt_ns,
                     icmp_type=0 if ":" not in src else 129, icmp_code=0, **kw)


def test_reply_defaults_rtt_from_tx_rx_and_rx_from_rtt():
    r = PingReply(src="127.0.0.1", attempt=0, tx_ns=T0, rx_ns=T0 + 1234567)
    assert r.rtt_ns == 1234567 and r.rtt == dt.timedelta(microseconds=1234)
    r2 = PingReply(src="127.0.0.1", attempt=0, tx_ns=T0, rtt_ns=5 * MS)
    assert r2.rx_ns == T0 + 5 * MS
    assert r2.tx.tzinfo is dt.timezone.utc
    assert isinstance(r2.src, Addr)


def test_reply_validation():
    with pytest.raises(ValueError, match="rtt_ns"):
        PingReply(src="127.0.0.1", attempt=0, tx_ns=T0)
    with pytest.raises(TypeError, match="tx_ns"):
        PingReply(src="127.0.0.1", attempt=0, tx_ns=1.5, rtt_ns=1)
    with pytest.raises(ValueError, match="attempt"):
        PingReply(src="127.0.0.1", attempt=-1, rtt_ns=1)
    with pytest.raises(ValueError, match="tx_ts_source"):
        PingReply(src="127.0.0.1", attempt=0, rtt_ns=1, tx_ts_source="nic")
    with pytest.raises(ValueError, match="not an IP"):
        PingReply(src="nowhere", attempt=0, rtt_ns=1)


def test_ping_statistics_like_scamper():
    replies = [echo(0, 100 * US), echo(1, 300 * US), echo(1, 500 * US),  # dup
               PingReply(src="127.0.0.2", attempt=2, rtt_ns=1 * MS,
                         icmp_type=3, icmp_code=1)]  # error, not from target
    p = Ping(dst="127.0.0.1", start_ns=T0, ping_sent=4, replies=replies)
    assert p.nreplies == 2 and p.ndups == 1 and p.nerrs == 1 and p.nloss == 2
    assert p.min_rtt == dt.timedelta(microseconds=100)
    assert p.max_rtt == dt.timedelta(microseconds=500)
    assert p.avg_rtt == dt.timedelta(microseconds=300)
    assert p.stddev_rtt == dt.timedelta(microseconds=163)  # sqrt(80000/3)=163.3
    assert p.loss_rate == 0.5
    assert [r.attempt for r in p.replies_to(1)] == [1, 1]
    assert replies[0].is_from_target() and not replies[3].is_from_target()


def test_ping_no_replies():
    p = Ping(dst="::1", start_ns=T0, ping_sent=3)
    assert p.nreplies == 0 and p.nloss == 3
    assert p.min_rtt is None and p.avg_rtt is None and p.stddev_rtt is None


def test_udp_ping_port_unreachable_from_target_counts():
    r = PingReply(src="127.0.0.1", attempt=0, rtt_ns=MS, icmp_type=3, icmp_code=3)
    p = Ping(dst="127.0.0.1", start_ns=T0, method="udp", ping_sent=1, replies=[r])
    assert p.nreplies == 1
    other = Ping(dst="127.0.0.9", start_ns=T0, method="udp", ping_sent=1,
                 replies=[PingReply(src="127.0.0.1", attempt=0, rtt_ns=MS,
                                    icmp_type=3, icmp_code=3)])
    assert other.nreplies == 0 and other.nerrs == 1


def test_tcp_ping_and_predicates():
    r = PingReply(src="::1", attempt=0, rtt_ns=MS, reply_proto=6, tcp_flags=0x14)
    p = Ping(dst="::1", start_ns=T0, method="tcp-syn", ping_sent=1, replies=[r])
    assert r.reply_proto == "tcp" and r.is_tcp() and p.nreplies == 1
    v6 = PingReply(src="::1", attempt=0, rtt_ns=MS, icmp_type=1, icmp_code=4)
    assert v6.is_icmp_unreach() and v6.is_icmp_unreach_port() and not v6.is_icmp_echo_reply()
    with pytest.raises(ValueError, match="needs the Ping"):
        PingReply(src="::1", attempt=0, rtt_ns=1).is_from_target()


def test_ping_fields_and_coercion():
    p = Ping(dst="127.0.0.1", src="127.0.0.1", start_ns=T0, wait_probe=0.5,
             wait_timeout=2, stop_reason="DONE", vp="vp1", inst=object())
    assert p.wait_probe == dt.timedelta(milliseconds=500)
    assert p.wait_timeout == dt.timedelta(seconds=2)
    assert p.stop_reason is PingStop.DONE
    assert p.start == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
    q = Ping(dst="127.0.0.1", src="127.0.0.1", start_ns=T0, wait_probe=0.5,
             wait_timeout=2, stop_reason="done", vp="vp1", inst=None)
    assert p == q  # inst is not compared
    assert Ping(dst="127.0.0.1", start_ns=T0, stop_reason="weird").stop_reason == "weird"
    with pytest.raises(TypeError, match="PingReply"):
        Ping(dst="127.0.0.1", start_ns=T0, replies=[{"from": "x"}])
    with pytest.raises(TypeError, match="start_ns"):
        Ping(dst="127.0.0.1", start_ns="now")


def hop(ttl, src, probe_id=1, **kw):
    return TraceHop(src=src, probe_ttl=ttl, probe_id=probe_id,
                    tx_ns=T0 + ttl * MS, rtt_ns=ttl * MS, **kw)


def test_trace_hops_with_silent_hops_and_first_reply_per_ttl():
    recs = [hop(1, "127.0.0.2", icmp_type=11, icmp_code=0),
            hop(1, "127.0.0.9", probe_id=2, icmp_type=11, icmp_code=0),
            hop(3, "127.0.0.1", icmp_type=3, icmp_code=3)]
    t = Trace(dst="127.0.0.1", start_ns=T0, hop_records=recs,
              stop_reason="COMPLETED", hop_count=4)
    assert [None if h is None else str(h.src) for h in t.hops()] == \
        ["127.0.0.2", None, "127.0.0.1", None]
    assert t.hop(1).src == "127.0.0.2" and t.hop(2) is None
    assert t.addrs() == ["127.0.0.2", "127.0.0.9", "127.0.0.1"]
    assert t.stop_reason is TraceStop.COMPLETED and t.is_completed()
    assert recs[0].is_icmp_ttl_exp() and recs[2].is_icmp_unreach_port()
    assert recs[0].rx_ns == recs[0].tx_ns + recs[0].rtt_ns
    assert t.probe_count == 3 and t.wait == dt.timedelta(seconds=5)


def test_trace_defaults_hop_count_and_firsthop():
    t = Trace(dst="::1", start_ns=T0, firsthop=2, hop_records=[hop(3, "::1")])
    assert t.hop_count == 3
    assert [h is None for h in t.hops()] == [True, False]


def test_trace_mpls():
    ie = IcmpExt(cn=1, ct=1, dl=8, mpls_labels=[MplsLabel(16, 0, 1, 1)])
    other = IcmpExt(cn=2, ct=1, dl=4)
    h = hop(1, "127.0.0.2", icmpext=[ie, other])
    assert h.mpls_labels == [MplsLabel(label=16, exp=0, s=1, ttl=1)]


def test_trace_validation():
    with pytest.raises(ValueError, match="firsthop"):
        Trace(dst="::1", start_ns=T0, firsthop=0)
    with pytest.raises(ValueError, match="rtt_ns"):
        TraceHop(src="::1", probe_ttl=1)
