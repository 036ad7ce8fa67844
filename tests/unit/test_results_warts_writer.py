"""warts writer: scamper's own tools read what we write.

Oracles: Debian scamper writes a warts file; we read it, write it again, and
``sc_warts2json`` must say the same of both files.  Our own measurements
(loopback) written as warts must convert, through ``sc_warts2json``, to the
JSON our ``File`` writes for them.  Only 127.0.0.1 and ::1 are probed.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.results import (Addr, CycleStart, CycleStop, File, Ping,
                              PingReply, PingStop, Trace, TraceHop, TraceStop, UnknownResult, dumps)
from marionet.results.trace import IcmpExt, MplsLabel
from marionet.results.warts import WartsReader
from marionet.results.warts_writer import WartsWriter

from .test_results_scamper_oracle import run_scamper

W2J = shutil.which("sc_warts2json")


def scamper_view(path) -> list[dict]:
    """sc_warts2json's reading of a file, without the fields that cannot
    survive warts (ftime is the conversion time)."""
    if W2J is None:
        pytest.fail("sc_warts2json is missing: scripts/setup.sh installs Debian's scamper")
    out = subprocess.run([W2J, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    recs = [json.loads(line) for line in out.stdout.splitlines()]
    for d in recs:
        if d.get("type") == "trace":
            d["start"].pop("ftime", None)
    return recs


def read_back(data: bytes) -> list:
    r = WartsReader(io.BytesIO(data))
    out = []
    while (o := r.read()) is not None:
        out.append(o)
    return out


@pytest.mark.parametrize("command,targets", [
    ("ping -c 3 -i 0.1", ("127.0.0.1", "::1")),
    ("ping -c 2 -i 0.1 -P udp", ("127.0.0.1",)),
    ("ping -c 2 -i 0.1 -P tcp-syn -d 9", ("127.0.0.1",)),
    ("trace -w 1 -P icmp-paris", ("127.0.0.1", "::1")),
    ("trace -w 1", ("127.0.0.1", "::1")),
    ("trace -w 1 -P tcp", ("127.0.0.1",)),
])
def test_rewritten_scamper_file_reads_the_same_in_scamper(tmp_path, command, targets):
    src = run_scamper(tmp_path, command, *targets, fmt="warts")
    objs = list(File(src))
    assert any(isinstance(o, (Ping, Trace)) for o in objs)
    ours = tmp_path / "again.warts"
    with File(ours, "w", cycles=False) as f:
        for o in objs:
            f.write(o)
    assert scamper_view(ours) == scamper_view(src)
    # and our reader sees what it wrote
    assert [dumps(o) for o in File(ours)] == [dumps(o) for o in objs]


async def _measure() -> list:
    from marionet.client.actrl import AsyncCtrl

    out = []
    async with AsyncCtrl() as ctrl:
        out.append(await ctrl.do_ping("127.0.0.1", attempts=3, wait_probe=0.05, sync=True))
        out.append(await ctrl.do_ping("::1", attempts=2, wait_probe=0.05, method="udp", sync=True))
        out.append(await ctrl.do_trace("127.0.0.1", wait_timeout=1, sync=True))
        out.append(await ctrl.do_trace("::1", method="icmp-paris", wait_timeout=1, sync=True))
    return out


def _comparable(d: dict) -> dict:
    """Keys both sides must agree on (warts keeps µs, not our ns extension)."""
    d = {k: v for k, v in d.items() if k not in ("marionet", "version")}
    for r in d.get("responses", []) + d.get("hops", []):
        r.pop("marionet", None)
    for r in d.get("responses", []):
        r.pop("reply_tos", None)  # scamper 20211212's warts ping reply has no TOS field
        r.pop("rx", None)  # warts keeps tx and rtt in µs; scamper derives rx, ±1 µs of ours
    stats = d.get("statistics")
    if stats:  # scamper averages µs-truncated RTTs, we average ns: compared to ±1 µs below
        d["approx"] = {k: stats.pop(k) for k in ("avg", "stddev") if k in stats}
    for h in d.get("hops", []):
        if ":" in h["addr"] and h.get("reply_ipid", 0) == 0:
            h.pop("reply_ipid", None)  # IPv6 has no IP-ID: scamper prints 0, we leave it out
    if d.get("type") == "trace":
        d["start"].pop("ftime", None)
    return d


async def test_our_measurements_convert_like_our_json(tmp_path):
    results = await _measure()
    wpath, gzpath, jpath = tmp_path / "ours.warts", tmp_path / "ours.warts.gz", tmp_path / "ours.json"
    for path in (wpath, gzpath, jpath):
        with File(path, "w", list_name="lab", cycle_id=4, hostname="vp1") as f:
            for r in results:
                f.write(r)
    theirs = scamper_view(wpath)
    ours = [json.loads(line) for line in jpath.read_text().splitlines()]
    assert [d["type"] for d in theirs] == [d["type"] for d in ours]
    assert theirs[0]["list_name"] == "lab" and theirs[0]["id"] == 4 and theirs[0]["hostname"] == "vp1"
    for t, o in zip(theirs, ours):
        if t["type"] in ("cycle-start", "cycle-stop"):
            continue
        t, o = _comparable(t), _comparable(o)
        for key in ("src", "dst", "method", "start", "userid", "ttl", "probe_size", "ping_sent",
                    "responses", "statistics", "hop_count", "attempts", "firsthop", "hops",
                    "stop_reason", "sport", "dport"):
            assert t.get(key) == o.get(key), f"{t['type']} {key}: scamper {t.get(key)!r} ours {o.get(key)!r}"
        ta, oa = t.get("approx", {}), o.get("approx", {})
        assert ta.keys() == oa.keys() and all(abs(ta[k] - oa[k]) <= 0.0011 for k in ta), (ta, oa)
    assert [type(o) for o in File(wpath)] == [CycleStart, Ping, Ping, Trace, Trace, CycleStop]
    assert [dumps(o) for o in File(gzpath) if isinstance(o, (Ping, Trace))] == \
        [dumps(o) for o in File(wpath) if isinstance(o, (Ping, Trace))]


def test_hand_built_trace_round_trips_with_every_optional_field():
    mpls = IcmpExt(cn=1, ct=1, dl=8, mpls_labels=[MplsLabel(label=16001, exp=0, s=0, ttl=1),
                                                  MplsLabel(label=24, exp=5, s=1, ttl=1)])
    other = IcmpExt(cn=2, ct=1, dl=3, data=b"abc")
    hops = [
        TraceHop(src=Addr("192.0.2.1"), probe_ttl=1, probe_id=1, probe_size=44, rtt_ns=1_234_000,
                 tx_ns=1_700_000_000_100_000_000, reply_ttl=255, reply_tos=0xc0, reply_ipid=77,
                 reply_size=56, icmp_type=11, icmp_code=0, icmp_q_ttl=1, icmp_q_ipl=44,
                 icmp_q_tos=0, icmpext=[mpls, other]),
        TraceHop(src=Addr("192.0.2.2"), probe_ttl=2, probe_id=2, probe_size=44, rtt_ns=2_000_000,
                 tx_ns=1_700_000_000_200_000_000, reply_ttl=254, reply_tos=0, reply_ipid=0,
                 reply_size=56, icmp_type=3, icmp_code=4, icmp_q_ttl=0, icmp_q_ipl=40,
                 icmp_q_tos=4, icmp_nhmtu=1400),
        TraceHop(src=Addr("192.0.2.9"), probe_ttl=3, probe_id=1, probe_size=44, rtt_ns=3_000_000,
                 tx_ns=1_700_000_000_300_000_000, reply_ttl=60, reply_tos=0, reply_ipid=5,
                 reply_size=40, tcp_flags=0x14),
    ]
    t = Trace(dst=Addr("192.0.2.9"), src=Addr("192.0.2.100"), method="tcp",
              start_ns=1_700_000_000_000_000_000, sport=40000, dport=80,
              stop_reason=TraceStop.COMPLETED, stop_data=0, hop_count=3, attempts=2, hoplimit=30,
              firsthop=1, wait_timeout=dt.timedelta(seconds=2), wait_probe=dt.timedelta(milliseconds=50),
              tos=8, probe_size=44, probe_count=3, userid=99, hop_records=hops)
    buf = io.BytesIO()
    WartsWriter(buf).write(t)
    (back,) = read_back(buf.getvalue())
    assert dumps(back) == dumps(t)


def test_ping_without_source_uses_the_unspecified_address():
    p = Ping(dst=Addr("::1"), start_ns=1_700_000_000_000_000_000, ping_sent=1,
             stop_reason=PingStop.ERROR)
    buf = io.BytesIO()
    WartsWriter(buf).write(p)
    (back,) = read_back(buf.getvalue())
    assert back.src == "::" and back.stop_reason == PingStop.ERROR and back.replies == []


def test_what_warts_cannot_hold_is_a_clear_error(tmp_path):
    w = WartsWriter(io.BytesIO())
    with pytest.raises(TypeError, match="UnknownResult.*json"):
        w.write(UnknownResult(type="sting", data={}))
    with pytest.raises(ValueError, match="without its cycle-start"):
        w.write(CycleStop(stop_time=1, list_name="x", cycle_id=9))
    with pytest.raises(ValueError, match="no warts number"):
        w.write(Ping(dst=Addr("127.0.0.1"), start_ns=0, method="bogus"))
    (tmp_path / "a.warts").write_bytes(b"")
    with pytest.raises(ValueError, match="appending to a warts file"):
        File(tmp_path / "a.warts", "a")


_addr4 = st.integers(1, 2**32 - 2).map(lambda i: Addr(i))


@settings(max_examples=150, deadline=None)
@given(dst=_addr4, src=_addr4, sent=st.integers(0, 50), ttl=st.integers(1, 255),
       start_us=st.integers(0, 2**32 - 1).map(lambda s: s * 1_000_000),
       replies=st.lists(st.tuples(_addr4, st.integers(0, 10_000_000), st.integers(0, 255),
                                  st.integers(0, 0xFFFF), st.integers(1, 50)), max_size=6))
def test_random_pings_round_trip(dst, src, sent, ttl, start_us, replies):
    p = Ping(dst=dst, src=src, start_ns=start_us * 1000, ping_sent=sent, ttl=ttl, probe_size=84,
             stop_reason=PingStop.DONE,
             replies=[PingReply(src=a, attempt=k, rtt_ns=rtt_us * 1000, reply_ttl=rttl, reply_ipid=ipid,
                                probe_ipid=ipid, reply_size=84, icmp_type=0, icmp_code=0,
                                tx_ns=start_us * 1000 + k)
                      for a, rtt_us, rttl, ipid, k in replies])
    buf = io.BytesIO()
    WartsWriter(buf).write(p)
    (back,) = read_back(buf.getvalue())
    assert back.dst == dst and back.src == src and back.ping_sent == sent and back.ttl == ttl
    assert [(r.src, r.rtt_ns, r.reply_ttl, r.reply_ipid, r.attempt) for r in back.replies] == \
        [(a, rtt_us * 1000, rttl, ipid, k) for a, rtt_us, rttl, ipid, k in replies]
