"""Tabular export (results.frames): rows, columns, dtypes, values, Parquet round trips."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.results import (PING_METHODS, CycleStart, CycleStop, DnsQuery, DnsResult, DnsRR,
                              File, Http, HttpBuf, Ping, PingReply, Trace, UnknownResult,
                              from_json, loads, read_parquet, to_frame, to_parquet)
from marionet.results.dns import DnsMX

T0 = 1_700_000_000_123_456_789

# Lines written by Debian's scamper 20211212.
from .test_results_json import SCAMPER_PING, SCAMPER_TRACE  # noqa: E402


def scamper_ping() -> Ping:
    return loads(SCAMPER_PING)


def lost_ping() -> Ping:
    return Ping(dst="192.0.2.9", start_ns=T0, ping_sent=3, stop_reason="done", vp="vp1")


def mpls_trace() -> Trace:
    """A two-hop trace whose first hop quotes an MPLS label stack."""
    d = json.loads(SCAMPER_TRACE)
    first = dict(d["hops"][0], addr="192.0.2.1", icmp_type=11, icmp_code=0,
                 icmpext=[{"ie_cn": 1, "ie_ct": 1, "ie_dl": 4, "mpls_labels": [
                     {"mpls_ttl": 1, "mpls_s": 1, "mpls_exp": 0, "mpls_label": 24001}]}])
    second = dict(d["hops"][0], probe_ttl=2)
    d.update(hops=[first, second], hop_count=2, probe_count=2)
    return from_json(d)


def dns_answered() -> DnsResult:
    r = DnsResult(dst="192.0.2.53", src="192.0.2.1", qname="example", qtype="A",
                  start_ns=T0, stop_reason="done", vp="vp1")
    r.queries.append(DnsQuery(id=1, tx_ns=T0))  # timed out, retried
    r.queries.append(DnsQuery(
        id=2, tx_ns=T0 + 10**9, rx_ns=T0 + 10**9 + 2_500_000, rcode=0, flags=["RD", "RA"],
        an=[DnsRR(name="example", rtype="A", ttl=60, address="192.0.2.80", rdata="192.0.2.80"),
            DnsRR(name="example", rtype="MX", ttl=30, mx=DnsMX(10, "mail.example"))]))
    return r


def dns_nxdomain() -> DnsResult:
    r = DnsResult(dst="192.0.2.53", qname="nope.example", start_ns=T0, stop_reason="done")
    r.queries.append(DnsQuery(id=3, tx_ns=T0, rx_ns=T0 + 1_000_000, rcode=3))
    return r


def dns_timeout() -> DnsResult:
    return DnsResult(dst="192.0.2.53", qname="slow.example", start_ns=T0, stop_reason="timeout",
                     queries=[DnsQuery(id=4, tx_ns=T0), DnsQuery(id=5, tx_ns=T0 + 5 * 10**9)])


def http_fetch() -> Http:
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    return Http(dst="192.0.2.80", url="http://example/x", start_ns=T0, dport=80,
                stop_reason="done", connect_ns=1_000_000, ttfb_ns=3_000_000, total_ns=3_500_000,
                bufs=[HttpBuf("tx", "hdr", T0 + 1_000_000, b"GET /x HTTP/1.1\r\nHost: example\r\n\r\n"),
                      HttpBuf("rx", "hdr", T0 + 4_000_000, resp),
                      HttpBuf("rx", "data", T0 + 4_500_000, b"hello")])


def round_trip(frame: pd.DataFrame) -> pd.DataFrame:
    buf = io.BytesIO()
    to_parquet(frame, buf)
    buf.seek(0)
    return read_parquet(buf)


# ------------------------------------------------------------------ the import stays lean

def test_import_results_leaves_pandas_out():
    code = ("import sys, marionet.results as r; r.File; f = r.to_frame; "
            "print('pandas' in sys.modules, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_missing_pandas_or_pyarrow_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'marionet\[analysis\]'"):
        to_parquet([scamper_ping()], io.BytesIO())
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'marionet\[analysis\]'"):
        to_frame([scamper_ping()])


# ------------------------------------------------------------------ ping

def test_ping_one_row_per_reply_with_its_values():
    p = scamper_ping()
    df = to_frame([p])
    assert len(df) == 3 and df.attrs == {"kind": "ping", "skipped": {}}
    assert list(df["attempt"]) == [0, 1, 2]
    for row, r in zip(df.itertuples(), p.replies):
        assert row.rtt_ms == r.rtt_ns / 1e6
        assert row.rtt == pd.Timedelta(r.rtt)
        assert row.tx == pd.Timestamp(r.tx) and row.rx == pd.Timestamp(r.rx)
        assert (row.reply_ttl, row.reply_size, row.reply_ipid, row.probe_ipid) == \
            (r.reply_ttl, r.reply_size, r.reply_ipid, r.probe_ipid)
        assert (row.icmp_type, row.icmp_code, row.reply_from) == (0, 0, "127.0.0.1")
    assert df["rtt_ms"].tolist() == [0.258, 0.054, 0.054]
    assert (df["start"] == pd.Timestamp(p.start)).all()
    assert set(df["dst"]) == {"127.0.0.1"} and set(df["method"]) == {"icmp-echo"}
    assert df["from_target"].all() and set(df["probe_ttl"]) == {64} and set(df["probe_size"]) == {84}
    assert df["rtt"].min() == p.min_rtt


def test_ping_dtypes():
    df = to_frame([scamper_ping(), lost_ping()])
    want = {"result_index": "int64", "vp": "string", "src": "string", "dst": "string",
            "start": "datetime64[ns, UTC]", "userid": "int64", "stop_reason": "category",
            "method": "category", "ping_sent": "int64", "probe_ttl": "Int64",
            "attempt": "Int64", "reply_from": "string", "from_target": "boolean",
            "rtt": "timedelta64[ns]", "rtt_ms": "float64", "tx": "datetime64[ns, UTC]",
            "rx": "datetime64[ns, UTC]", "reply_ttl": "Int64", "icmp_type": "Int64"}
    assert {c: str(df[c].dtype) for c in want} == want
    assert isinstance(df["dst"].dtype, pd.StringDtype)
    assert list(df["method"].cat.categories[:len(PING_METHODS)]) == list(PING_METHODS)


def test_unanswered_ping_keeps_a_row_of_missing_reply_values():
    df = to_frame([scamper_ping(), lost_ping()])
    assert len(df) == 4
    lost = df[df["result_index"] == 1]
    assert len(lost) == 1
    row = lost.iloc[0]
    assert row["dst"] == "192.0.2.9" and row["ping_sent"] == 3 and row["vp"] == "vp1"
    assert row["stop_reason"] == "done"
    assert pd.isna(row["rtt"]) and pd.isna(row["rtt_ms"]) and pd.isna(row["tx"])
    assert pd.isna(row["attempt"]) and pd.isna(row["reply_from"]) and pd.isna(row["reply_ttl"])
    # per-ping loss straight from the frame: probes sent minus probes answered
    per = df.groupby("result_index").agg(sent=("ping_sent", "first"), got=("attempt", "nunique"))
    assert (per["sent"] - per["got"]).tolist() == [0, 3]


def test_nanoseconds_survive_where_datetime_views_floor():
    r = PingReply(src="::1", attempt=0, tx_ns=T0, rtt_ns=54_321, icmp_type=129, icmp_code=0)
    df = to_frame(Ping(dst="::1", start_ns=T0, ping_sent=1, replies=[r]))
    assert df["tx"][0].value == T0 and df["rtt"][0].value == 54_321
    assert df["rtt_ms"][0] == 0.054321 and df["from_target"][0]


# ------------------------------------------------------------------ trace, dns, http

def test_trace_one_row_per_hop_and_silent_trace_keeps_one():
    silent = Trace(dst="192.0.2.7", start_ns=T0, stop_reason="gaplimit")
    df = to_frame([mpls_trace(), silent])
    assert len(df) == 3
    hops = df[df["result_index"] == 0]
    assert hops["probe_ttl"].tolist() == [1, 2] and hops["addr"].tolist() == ["192.0.2.1", "127.0.0.1"]
    assert hops["mpls"].tolist() == [True, False]
    assert hops["icmp_type"].tolist() == [11, 3] and hops["icmp_q_ttl"].tolist() == [1, 1]
    assert hops["rtt_ms"].tolist() == [0.166, 0.166]
    assert set(hops["stop_reason"]) == {"completed"} and set(hops["method"]) == {"udp-paris"}
    assert set(hops["sport"]) == {36746} and set(hops["hop_count"]) == {2}
    last = df.iloc[2]
    assert last["stop_reason"] == "gaplimit" and last["dst"] == "192.0.2.7"
    assert pd.isna(last["probe_ttl"]) and pd.isna(last["addr"]) and pd.isna(last["mpls"])
    assert str(df["mpls"].dtype) == "boolean" and str(df["stop_reason"].dtype) == "category"


def test_dns_one_row_per_answer_and_unanswered_lookups_keep_one():
    df = to_frame([dns_answered(), dns_nxdomain(), dns_timeout()])
    assert len(df) == 4 and "dst" not in df.columns
    ans = df[df["result_index"] == 0]
    assert ans["rtype"].tolist() == ["A", "MX"] and ans["ttl"].tolist() == [60, 30]
    assert ans["rdata"].tolist() == ["192.0.2.80", "10 mail.example."]
    assert set(ans["server"]) == {"192.0.2.53"} and set(ans["rcode"]) == {0}
    assert set(ans["rtt_ms"]) == {2.5} and set(ans["queries"]) == {2}
    assert set(ans["flags"]) == {"RD RA"} and set(ans["rcode_name"]) == {"NoError"}
    nx, slow = df.iloc[2], df.iloc[3]
    assert nx["rcode"] == 3 and nx["rcode_name"] == "NXDomain" and pd.isna(nx["rtype"])
    assert slow["stop_reason"] == "timeout" and pd.isna(slow["rcode"]) and pd.isna(slow["rtt"])
    assert str(df["rcode"].dtype) == "Int64" and str(df["rtt"].dtype) == "timedelta64[ns]"


def test_http_one_row_per_fetch():
    df = to_frame([http_fetch()])
    assert len(df) == 1
    row = df.iloc[0]
    assert row["status_code"] == 200 and row["url"] == "http://example/x" and row["complete"]
    assert row["body_size"] == 5 and row["header_size"] == 38 and row["http_version"] == "1.1"
    assert row["ttfb_ms"] == 3.0 and row["total"] == pd.Timedelta(3_500_000, "ns")
    assert pd.isna(row["tls"]) and row["stop_reason"] == "done" and row["method"] == "GET"
    assert str(df["status_code"].dtype) == "Int64"


# ------------------------------------------------------------------ inputs, kinds, skipped

def test_mixed_kinds_need_kind_and_the_rest_is_counted():
    mixed = [CycleStart(start_time=1), scamper_ping(), mpls_trace(), lost_ping(),
             UnknownResult("tracelb", {"type": "tracelb"}), CycleStop(stop_time=2)]
    with pytest.raises(ValueError, match=r"ping \(2\), trace \(1\)"):
        to_frame(mixed)
    df = to_frame(mixed, kind="trace")
    assert len(df) == 2 and df.attrs["kind"] == "trace"
    assert df.attrs["skipped"] == {"cycle-start": 1, "cycle-stop": 1, "ping": 2, "tracelb": 1}
    assert to_frame(mixed, kind="ping").attrs["skipped"]["trace"] == 1


def test_kind_with_nothing_of_it_gives_typed_empty_frame():
    df = to_frame([CycleStart(start_time=1)], kind="dns")
    assert len(df) == 0 and "rdata" in df.columns and str(df["rtt"].dtype) == "timedelta64[ns]"
    assert df.attrs["skipped"] == {"cycle-start": 1}
    bare = to_frame([])
    assert bare.shape == (0, 0) and bare.attrs == {"kind": None, "skipped": {}}
    with pytest.raises(ValueError, match="kind must be one of"):
        to_frame([], kind="pings")


def test_non_results_are_type_errors_naming_the_type():
    with pytest.raises(TypeError, match="dict"):
        to_frame([scamper_ping(), {"type": "ping"}])
    with pytest.raises(TypeError, match="int"):
        to_frame(42)


def test_one_result_is_accepted_even_an_iterable_one():
    df = to_frame(dns_answered())  # DnsResult iterates over its answers
    assert len(df) == 2 and df.attrs["kind"] == "dns"


def test_file_and_paths_as_input(tmp_path):
    path = tmp_path / "results.json.gz"
    with File(path, "w", hostname="h") as f:
        for obj in (scamper_ping(), lost_ping(), dns_answered()):
            f.write(obj)
    for source in (path, str(path)):
        df = to_frame(source, kind="ping")
        assert len(df) == 4
        assert df.attrs["skipped"] == {"cycle-start": 1, "cycle-stop": 1, "dns": 1}
    with File(path) as f:
        assert len(to_frame(f, kind="dns")) == 2


def test_frames_of_different_files_concatenate_as_categoricals():
    both = pd.concat([to_frame([scamper_ping()]), to_frame([lost_ping()])], ignore_index=True)
    assert str(both["method"].dtype) == "category" and str(both["stop_reason"].dtype) == "category"


# ------------------------------------------------------------------ Parquet

FRAMES = {
    "ping": lambda: [scamper_ping(), lost_ping(), CycleStop(stop_time=2)],
    "trace": lambda: [mpls_trace(), Trace(dst="::1", start_ns=T0, stop_reason="weird-new")],
    "dns": lambda: [dns_answered(), dns_nxdomain(), dns_timeout()],
    "http": lambda: [http_fetch()],
}


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_parquet_round_trip_is_exact(tmp_path, kind):
    df = to_frame(FRAMES[kind]())
    path = tmp_path / f"{kind}.parquet"
    to_parquet(FRAMES[kind](), path)
    back = read_parquet(path)
    pd.testing.assert_frame_equal(back, df, check_exact=True)
    assert back.attrs == df.attrs
    assert list(back["stop_reason"].cat.categories) == list(df["stop_reason"].cat.categories)


@pytest.mark.parametrize("kind", sorted(FRAMES))
def test_parquet_round_trip_of_empty_and_filtered_frames(kind):
    empty = to_frame([], kind=kind)
    pd.testing.assert_frame_equal(round_trip(empty), empty, check_exact=True)
    df = to_frame(FRAMES[kind]())
    part = df[df["result_index"] > 0]  # a filtered frame keeps its index
    pd.testing.assert_frame_equal(round_trip(part), part, check_exact=True)


def test_parquet_file_is_compressed_and_readable_by_plain_pandas(tmp_path):
    import pyarrow.parquet as pq
    path = tmp_path / "p.parquet"
    to_parquet([scamper_ping()], path)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    plain = pd.read_parquet(path)
    assert plain["rtt"].tolist() == to_frame([scamper_ping()])["rtt"].tolist()


# ------------------------------------------------------------------ random pings

_addrs = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
_ns = st.integers(0, 2**62)


@st.composite
def pings(draw) -> Ping:
    start = draw(_ns)
    replies = draw(st.lists(st.builds(
        PingReply, src=_addrs, attempt=st.integers(0, 9), tx_ns=_ns,
        rtt_ns=st.integers(0, 10**10), reply_ttl=st.none() | st.integers(0, 255),
        icmp_type=st.none() | st.integers(0, 255), icmp_code=st.none() | st.integers(0, 255),
        reply_proto=st.sampled_from(["icmp", "tcp", "udp"])), max_size=4))
    return Ping(dst=draw(_addrs), start_ns=start, method=draw(st.sampled_from(PING_METHODS)),
                ping_sent=draw(st.integers(0, 10)), ttl=draw(st.none() | st.integers(1, 255)),
                stop_reason=draw(st.sampled_from([None, "done", "halted", "brand-new"])),
                vp=draw(st.none() | st.text(max_size=8)), replies=replies)


@settings(max_examples=60, deadline=None)
@given(st.lists(pings(), max_size=5))
def test_random_pings_export_and_round_trip(ps):
    df = to_frame(ps, kind="ping")
    assert len(df) == sum(max(1, len(p.replies)) for p in ps)
    got = df["rtt"].dropna().map(lambda t: t.value).tolist()
    assert got == [r.rtt_ns for p in ps for r in p.replies]
    pd.testing.assert_frame_equal(round_trip(df), df, check_exact=True)


def test_start_is_utc_aware():
    df = to_frame([scamper_ping()])
    assert df["start"][0].to_pydatetime() == scamper_ping().start
    assert df["start"][0].tzinfo is not None and df["start"][0].utcoffset() == dt.timedelta(0)
