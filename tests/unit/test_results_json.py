"""scamper JSON mapping: exact text, marionet extension, round trips, garbage."""

import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.results import (CycleStart, CycleStop, FormatError, IcmpExt,
                              MplsLabel, Ping, PingReply, Trace, TraceHop,
                              UnknownResult, dumps, from_json, loads, to_json)

T0 = 1_700_000_000_000_000_000

# A line written by Debian's scamper 20211212 (`scamper -O json -c "ping -c 3"`).
SCAMPER_PING = (
    '{"type":"ping", "version":"0.4", "method":"icmp-echo", "src":"127.0.0.1", '
    '"dst":"127.0.0.1", "start":{"sec":1795346032,"usec":958387}, "ping_sent":3, '
    '"probe_size":84, "userid":0, "ttl":64, "wait":1, "timeout":1, "responses":['
    '{"from":"127.0.0.1", "seq":0, "reply_size":84, "reply_ttl":64, "reply_proto":"icmp", '
    '"tx":{"sec":1795346032, "usec":958533}, "rx":{"sec":1795346032, "usec":958791}, '
    '"rtt":0.258, "probe_ipid":35090, "reply_ipid":37636, "icmp_type":0, "icmp_code":0},'
    '{"from":"127.0.0.1", "seq":1, "reply_size":84, "reply_ttl":64, "reply_proto":"icmp", '
    '"tx":{"sec":1795346033, "usec":959086}, "rx":{"sec":1795346033, "usec":959140}, '
    '"rtt":0.054, "probe_ipid":41930, "reply_ipid":37840, "icmp_type":0, "icmp_code":0},'
    '{"from":"127.0.0.1", "seq":2, "reply_size":84, "reply_ttl":64, "reply_proto":"icmp", '
    '"tx":{"sec":1795346034, "usec":959300}, "rx":{"sec":1795346034, "usec":959354}, '
    '"rtt":0.054, "probe_ipid":18336, "reply_ipid":37964, "icmp_type":0, "icmp_code":0}],'
    '"statistics":{"replies":3, "loss":0, "min":0.054, "max":0.258, "avg":0.122, "stddev":0.096}}')

SCAMPER_TRACE = (
    '{"type":"trace","version":"0.1", "userid":0, "method":"udp-paris", "src":"127.0.0.1", '
    '"dst":"127.0.0.1", "sport":36746, "dport":33435, "stop_reason":"COMPLETED", '
    '"stop_data":0, "start":{"sec":1795346036, "usec":12850, "ftime":"2026-11-22 11:13:56"}, '
    '"hop_count":1, "attempts":2, "hoplimit":0, "firsthop":1, "wait":5, "wait_probe":0, '
    '"tos":0, "probe_size":44, "probe_count":1, "hops":[{"addr":"127.0.0.1", "probe_ttl":1, '
    '"probe_id":1, "probe_size":44, "tx":{"sec":1795346036, "usec":13167}, "rtt":0.166, '
    '"reply_ttl":64, "reply_tos":192, "reply_ipid":38178, "reply_size":72, "icmp_type":3, '
    '"icmp_code":3, "icmp_q_ttl":1, "icmp_q_ipl":44, "icmp_q_tos":0}]}')


def test_scamper_ping_line_reads_with_right_values():
    p = loads(SCAMPER_PING)
    assert isinstance(p, Ping)
    assert p.dst == "127.0.0.1" and p.method == "icmp-echo" and p.ping_sent == 3
    assert p.start == dt.datetime.fromtimestamp(1795346032, dt.timezone.utc).replace(microsecond=958387)
    assert [r.rtt for r in p.replies] == [dt.timedelta(microseconds=u) for u in (258, 54, 54)]
    assert p.replies[0].rx_ns - p.replies[0].tx_ns == 258_000
    assert p.replies[1].reply_ipid == 37840 and p.replies[2].attempt == 2
    assert (p.nreplies, p.nloss, p.ndups, p.nerrs) == (3, 0, 0, 0)
    assert p.min_rtt == dt.timedelta(microseconds=54)
    assert p.avg_rtt == dt.timedelta(microseconds=122)
    assert p.stddev_rtt == dt.timedelta(microseconds=96)


@pytest.mark.parametrize("line", [SCAMPER_PING, SCAMPER_TRACE])
def test_scamper_lines_rewrite_to_the_same_dict(line):
    """Reading a scamper line and writing it back gives scamper's own dict,
    statistics included (the statistics are recomputed, not copied)."""
    d = json.loads(line)
    d2 = json.loads(dumps(loads(line)))
    if d["type"] == "trace":
        d["start"].pop("ftime"), d2["start"].pop("ftime")  # localtime vs UTC
    assert d == d2


def test_scamper_trace_line_reads():
    t = loads(SCAMPER_TRACE)
    assert isinstance(t, Trace)
    assert (t.sport, t.dport, t.hop_count, t.attempts) == (36746, 33435, 1, 2)
    assert str(t.stop_reason) == "completed"
    (h,) = list(t.hops())
    assert h.src == "127.0.0.1" and h.rtt == dt.timedelta(microseconds=166)
    assert h.icmp_q_ipl == 44 and h.reply_tos == 192 and h.is_icmp_unreach_port()


def test_rtt_text_has_three_decimals():
    r = PingReply(src="127.0.0.1", attempt=0, tx_ns=T0, rtt_ns=50_000,
                  icmp_type=0, icmp_code=0)
    line = dumps(Ping(dst="127.0.0.1", start_ns=T0, ping_sent=1, replies=[r]))
    assert '"rtt":0.050' in line and '"min":0.050' in line


def test_marionet_fields_live_under_one_key_and_survive():
    r = PingReply(src="127.0.0.1", attempt=0, tx_ns=T0 + 123, rx_ns=T0 + 258_456,
                  tx_ts_source="kernel", rx_ts_source="kernel", icmp_type=0, icmp_code=0)
    p = Ping(dst="127.0.0.1", start_ns=T0 + 7, ping_sent=1, replies=[r], vp="lab-1",
             stop_reason="done", icmp_id=4242)
    d = to_json(p)
    assert d["marionet"] == {"start_ns": T0 + 7, "vp": "lab-1",
                             "stop_reason": "done", "icmp_id": 4242}
    assert d["responses"][0]["marionet"] == {
        "tx_ns": T0 + 123, "rx_ns": T0 + 258_456, "rtt_ns": 258_333,
        "tx_ts_source": "kernel", "rx_ts_source": "kernel"}
    # what a scamper consumer sees: µs-floored values
    assert d["responses"][0]["tx"] == {"sec": 1_700_000_000, "usec": 0}
    assert d["responses"][0]["rtt"] == 0.258
    back = loads(dumps(p))
    assert back == p
    # without the extension, the µs view is what we get
    stripped = json.loads(dumps(p))
    stripped.pop("marionet")
    stripped["responses"][0].pop("marionet")
    q = from_json(stripped)
    assert q.replies[0].rtt_ns == 258_000 and q.start_ns == T0 and q.vp is None


def test_inconsistent_extension_is_ignored():
    d = json.loads(SCAMPER_PING)
    d["responses"][0]["marionet"] = {"rtt_ns": 999_999_999}
    assert from_json(d).replies[0].rtt_ns == 258_000


def test_unknown_keys_are_kept_and_written_back():
    d = json.loads(SCAMPER_PING)
    d["flags"] = ["payload"]
    d["responses"][0]["icmp_id"] = 77
    p = from_json(d)
    assert p.extra == {"flags": ["payload"]}
    assert p.icmp_id == 77
    d2 = json.loads(dumps(p))
    assert d2["flags"] == ["payload"] and d2["responses"][0]["icmp_id"] == 77


def test_unknown_type_is_unknown_result():
    o = loads('{"type":"owamp","version":"0.1","dst":"127.0.0.1"}')
    assert isinstance(o, UnknownResult) and o.type == "owamp"
    assert o.data["dst"] == "127.0.0.1"
    assert json.loads(dumps(o)) == o.data


def test_cycles():
    c = loads('{"type":"cycle-start", "list_name":"default", "id":0, "hostname":"vm", "start_time":1795346032}')
    assert c == CycleStart(start_time=1795346032, hostname="vm")
    assert c.start.year == 2026
    s = loads('{"type":"cycle-stop", "list_name":"x", "id":3, "hostname":"vm", "stop_time":5}')
    assert s == CycleStop(stop_time=5, list_name="x", cycle_id=3, hostname="vm")
    assert loads(dumps(s)) == s


def test_trace_nhmtu_typo_and_mpls():
    d = json.loads(SCAMPER_TRACE)
    d["hops"][0]["icmp_nhmtu:"] = 1400
    d["hops"][0]["icmpext"] = [{"ie_cn": 1, "ie_ct": 1, "ie_dl": 4, "mpls_labels": [
        {"mpls_ttl": 1, "mpls_s": 1, "mpls_exp": 0, "mpls_label": 24001}]}]
    h = from_json(d).hop(1)
    assert h.icmp_nhmtu == 1400
    assert h.mpls_labels == [MplsLabel(label=24001, exp=0, s=1, ttl=1)]


GARBAGE = [
    "", "not json", "[1,2]", "42", '"str"', "{}", '{"type":5}',
    '{"type":"ping"}',
    '{"type":"ping","dst":"127.0.0.1"}',
    '{"type":"ping","dst":"nowhere","start":{"sec":1,"usec":0}}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":"1","usec":0}}',
    '{"type":"ping","dst":"127.0.0.1","start":[1,2]}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"responses":5}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"responses":[{"from":"127.0.0.1"}]}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"responses":[{"from":"127.0.0.1","rtt":"x"}]}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"responses":[{"from":"127.0.0.1","rtt":NaN}]}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"responses":[{"from":"127.0.0.1","rtt":1,"seq":-1}]}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"ping_sent":true}',
    '{"type":"ping","dst":"127.0.0.1","start":{"sec":1,"usec":0},"wait":1.5}',
    '{"type":"trace","dst":"127.0.0.1","start":{"sec":1,"usec":0},"hops":[{"addr":"127.0.0.1"}]}',
    '{"type":"trace","dst":"127.0.0.1","start":{"sec":1,"usec":0},"firsthop":0}',
    '{"type":"trace","dst":"127.0.0.1","start":{"sec":1,"usec":0},"hops":[{"addr":"127.0.0.1","probe_ttl":1,"rtt":1,"icmpext":[{"ie_cn":1}]}]}',
    '{"type":"cycle-start"}',
    "[" * 100000,
]


@pytest.mark.parametrize("line", GARBAGE)
def test_garbage_gives_format_error(line):
    with pytest.raises(FormatError):
        loads(line)


# Found by the atheris fuzzer (tests/fuzz): lines that crashed the reader or
# read into objects that could not be written back.
_FUZZ_PING = (
    '{"type":"ping", "version":"0.4", "method":"udp", "src":"2001:db8::1", "dst":"2001:db8::9", '
    '"start":{"sec":1700000000, "usec":0}, "ping_sent":1, "userid":0, "wait":1, "timeout":1, '
    '"sport":40000, "dport":33434, "responses":[{"from":"2001:db8::9", "seq":0, "reply_size":48, '
    '"reply_ttl":60, "reply_proto":"icmp", "tx":{"sec":1700000000, "usec":0}, '
    '"rx":{"sec":1700000000, "usec":1000}, "rtt":1.000, "icmp_type":1, "icmp_code":4}]}')
FUZZ_FOUND = {
    # an unknown key holding a number beyond a float: read as inf, dumps refused it
    "overflowing float kept in extra": _FUZZ_PING.replace('"dport":33434', '"dporT":3e3434'),
    "NaN kept in extra": _FUZZ_PING.replace('"dport":33434', '"x":NaN'),
    "Infinity in an unknown record": '{"type":"owamp","x":-Infinity}',
    # timedelta(microseconds=…) overflowed: OverflowError instead of FormatError
    "wait beyond a timedelta": _FUZZ_PING.replace('"wait":1', '"wait":118446744073709551616'),
    "timeout_us beyond a timedelta": _FUZZ_PING.replace('"timeout":1', '"timeout_us":10' + "0" * 22),
    "trace wait_probe_us beyond a timedelta":
        '{"type":"trace","dst":"127.0.0.1","start":{"sec":1,"usec":0},'
        '"marionet":{"wait_probe_us":10000000000000000000000}}',
    "host wait beyond a timedelta":
        '{"type":"host","dst":"192.0.2.53","start":{"sec":1,"usec":0},"wait":10000000000000000000}',
    # round(rtt * 1000) of a finite but huge float: OverflowError
    "rtt whose microseconds overflow a float": _FUZZ_PING.replace('"rtt":1.000', '"rtt":1e306'),
    # a start in the year 39 million read fine, then to_json could not format it
    "trace start beyond the year 9999":
        '{"type":"trace", "version":"1.1", "userid":99, "method":"t.0.2.1", "dst":"192.0.2.53", '
        '"userid":0, "start":{"sec":1700000000, "usec":1234567777777777777777}, '
        '"flags":["norecurse"], "wsthop":1, "wait":2, "wait_probet":3, "hops":[{"addr":"192.0.2.1", '
        '"probe_ttl":3, "p_ieodrb":1, "probe_size":44, "tx":{"sec":170000, "usec":300000}, '
        '"rtt":3.000, "re":5, "rAplyze":40, "tcp_flags":20}]}',
    # rx = tx + rtt, written back as "rx", fell in a year the reader refuses
    "reply rtt putting rx beyond the year 9999":
        _FUZZ_PING.replace('"rx":{"sec":1700000000, "usec":1000}, "rtt":1.000',
                           '"bx":{"sec":1700000000, "usec":1000}, "rtt":66666666666666666661.000'),
    # a negative rcode was kept, written as "-58", and that text did not read back
    "host rcode below 0":
        '{"type":"host","dst":"192.0.2.53","start":{"sec":1,"usec":0},"queries":[{"rcode":-58}]}',
    "host rcode beyond 12 bits":
        '{"type":"host","dst":"192.0.2.53","start":{"sec":1,"usec":0},"queries":[{"rcode":"4096"}]}',
    "reply tx before the year 1": _FUZZ_PING.replace('"tx":{"sec":1700000000',
                                                      '"tx":{"sec":-99999999999999'),
}


@pytest.mark.parametrize("line", FUZZ_FOUND.values(), ids=FUZZ_FOUND.keys())
def test_fuzz_found_lines_give_format_error(line):
    with pytest.raises(FormatError):
        loads(line)


def test_rcodes_that_read_write_back():
    for rcode, text in ((0, "NoError"), (16, "BADVERS"), (12, "12"), (4095, "4095")):
        r = loads('{"type":"host","dst":"192.0.2.53","start":{"sec":1,"usec":0},'
                  f'"queries":[{{"rx":{{"sec":2,"usec":0}},"rcode":{rcode}}}]}}')
        assert r.queries[0].rcode == rcode
        assert json.loads(dumps(r))["queries"][0]["rcode"] == text
        assert loads(dumps(r)).queries[0].rcode == rcode


def test_times_at_the_ends_of_datetime_still_read_and_write():
    for sec, usec in ((-62135596800, 0), (253402300799, 999999)):
        p = loads(_FUZZ_PING.replace('"sec":1700000000, "usec":0}, "ping_sent"',
                                     f'"sec":{sec}, "usec":{usec}}}, "ping_sent"'))
        assert p.start.year in (1, 9999)
        assert dumps(loads(dumps(p))) == dumps(p)


@given(st.text(max_size=200))
def test_random_text_never_crashes(text):
    try:
        loads(text)
    except FormatError:
        pass


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
    max_leaves=8)


@given(st.dictionaries(st.sampled_from(
    ["type", "dst", "src", "start", "responses", "hops", "ping_sent", "method",
     "rtt", "from", "seq", "wait", "marionet", "probe_ttl", "hop_count"]),
    json_values, max_size=8),
    st.sampled_from(["ping", "trace", "cycle-start", "cycle-stop", "other"]))
def test_random_records_never_crash(d, kind):
    d["type"] = kind
    try:
        from_json(d)
    except FormatError:
        pass


# -- property tests: objects → JSON → objects -------------------------------

u8 = st.integers(0, 255)
u16 = st.integers(0, 65535)
ns = st.integers(0, 2**62)
addrs = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str))
sources = st.sampled_from([None, "kernel", "user"])
durations = st.integers(0, 10**7).map(lambda us: dt.timedelta(microseconds=us))
extras = st.dictionaries(st.sampled_from(["flags", "zz_future", "payload"]),
                         json_values, max_size=2)


@st.composite
def replies(draw):
    tx = draw(st.one_of(st.none(), ns))
    rtt = draw(st.integers(-10**6, 10**10))
    return PingReply(
        src=draw(addrs), attempt=draw(u16), tx_ns=tx,
        rx_ns=None if tx is None else draw(st.one_of(st.none(), ns)),
        rtt_ns=rtt, probe_ipid=draw(st.one_of(st.none(), u16)),
        reply_ipid=draw(st.one_of(st.none(), u16)),
        reply_ttl=draw(st.one_of(st.none(), u8)),
        reply_tos=draw(st.one_of(st.none(), u8)),
        reply_size=draw(st.one_of(st.none(), u16)),
        reply_proto=draw(st.sampled_from(["icmp", "tcp", "udp", 132])),
        icmp_type=draw(st.one_of(st.none(), u8)),
        icmp_code=draw(st.one_of(st.none(), u8)),
        tcp_flags=draw(st.one_of(st.none(), u8)),
        tx_ts_source=draw(sources), rx_ts_source=draw(sources),
        ifname=draw(st.one_of(st.none(), st.text(max_size=6))),
        extra=draw(extras))


@st.composite
def pings(draw):
    return Ping(
        dst=draw(addrs), src=draw(st.one_of(st.none(), addrs)), start_ns=draw(ns),
        method=draw(st.sampled_from(["icmp-echo", "udp", "tcp-syn", "icmp-time"])),
        ping_sent=draw(u16), probe_size=draw(st.one_of(st.none(), u16)),
        ttl=draw(st.one_of(st.none(), u8)), tos=draw(st.one_of(st.none(), u8)),
        wait_probe=draw(durations), wait_timeout=draw(durations),
        sport=draw(st.one_of(st.none(), u16)), dport=draw(st.one_of(st.none(), u16)),
        icmp_id=draw(st.one_of(st.none(), u16)),
        tcp_seq=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        tcp_ack=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        userid=draw(st.integers(0, 2**32 - 1)),
        stop_reason=draw(st.sampled_from([None, "done", "halted", "error", "none"])),
        replies=draw(st.lists(replies(), max_size=4)),
        vp=draw(st.one_of(st.none(), st.text(max_size=10))),
        extra=draw(extras))


@st.composite
def hops(draw):
    tx = draw(st.one_of(st.none(), ns))
    icmpext = draw(st.lists(st.builds(
        IcmpExt, cn=u8, ct=u8, dl=u16,
        mpls_labels=st.lists(st.builds(MplsLabel, label=st.integers(0, 2**20 - 1),
                                       exp=st.integers(0, 7), s=st.integers(0, 1),
                                       ttl=u8), max_size=2)), max_size=2))
    icmpext = [ie if ie.is_mpls() else IcmpExt(cn=ie.cn, ct=ie.ct, dl=ie.dl)
               for ie in icmpext]
    opt = lambda s: draw(st.one_of(st.none(), s))  # noqa: E731
    return TraceHop(
        src=draw(addrs), probe_ttl=draw(u8), probe_id=draw(u8),
        probe_size=opt(u16), tx_ns=tx,
        rx_ns=None if tx is None else opt(ns),
        rtt_ns=draw(st.integers(0, 10**10)), name=opt(st.text(max_size=10)),
        reply_ttl=opt(u8), reply_tos=opt(u8), reply_ipid=opt(u16),
        reply_size=opt(u16), icmp_type=opt(u8), icmp_code=opt(u8),
        icmp_q_ttl=opt(u8), icmp_q_ipl=opt(u16), icmp_q_tos=opt(u8),
        icmp_nhmtu=opt(u16), tcp_flags=opt(u8), icmpext=icmpext,
        tx_ts_source=draw(sources), rx_ts_source=draw(sources),
        extra=draw(extras))


@st.composite
def traces(draw):
    recs = draw(st.lists(hops(), max_size=5))
    return Trace(
        dst=draw(addrs), src=draw(st.one_of(st.none(), addrs)), start_ns=draw(ns),
        method=draw(st.sampled_from(["udp-paris", "icmp-echo-paris", "tcp"])),
        sport=draw(st.one_of(st.none(), u16)), dport=draw(st.one_of(st.none(), u16)),
        icmp_sum=draw(st.one_of(st.none(), u16)),
        stop_reason=draw(st.sampled_from(["completed", "gaplimit", "halted", "none"])),
        stop_data=draw(u8), hop_count=draw(st.one_of(st.none(), u8)),
        attempts=draw(u8), hoplimit=draw(u8), firsthop=draw(st.integers(1, 255)),
        wait_timeout=draw(durations), wait_probe=draw(durations), tos=draw(u8),
        probe_size=draw(st.one_of(st.none(), u16)), userid=draw(u16),
        hop_records=recs, vp=draw(st.one_of(st.none(), st.text(max_size=10))),
        extra=draw(extras))


@settings(max_examples=200)
@given(pings())
def test_ping_round_trip(p):
    assert loads(dumps(p)) == p


@settings(max_examples=200)
@given(traces())
def test_trace_round_trip(t):
    assert loads(dumps(t)) == t


@given(pings())
def test_scamper_view_is_floored_microseconds(p):
    d = json.loads(dumps(p))
    d.pop("marionet", None)
    for r in d["responses"]:
        r.pop("marionet", None)
    q = from_json(d)
    assert q.start_ns == p.start_ns // 1000 * 1000
    for a, b in zip(p.replies, q.replies):
        assert b.rtt_ns == a.rtt_ns // 1000 * 1000
        if a.tx_ns is not None:
            assert b.tx_ns == a.tx_ns // 1000 * 1000
