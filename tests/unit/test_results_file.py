"""File: suffixes, compression by magic, cycles, filtering, bad lines."""

import bz2
import gzip
import json
import lzma

import pytest

from marionet.results import (CycleStart, CycleStop, File, FormatError, Ping,
                              PingReply, Trace, TraceHop, UnknownResult)

T0 = 1_700_000_000_123_456_789


def sample_ping(i=0):
    r = PingReply(src="127.0.0.1", attempt=0, tx_ns=T0 + i, rx_ns=T0 + i + 54_321,
                  icmp_type=0, icmp_code=0, tx_ts_source="kernel", rx_ts_source="kernel")
    return Ping(dst="127.0.0.1", start_ns=T0, ping_sent=1, replies=[r], vp="local")


def sample_trace():
    return Trace(dst="::1", start_ns=T0, stop_reason="completed",
                 hop_records=[TraceHop(src="::1", probe_ttl=1, tx_ns=T0, rtt_ns=12_345,
                                       icmp_type=129, icmp_code=0)])


@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.json.gz",
                                  "out.json.bz2", "out.jsonl.xz"])
def test_write_read_round_trip(tmp_path, name):
    path = tmp_path / name
    objs = [sample_ping(1), sample_trace(), sample_ping(2)]
    with File(path, "w", hostname="h") as f:
        for o in objs:
            f.write(o)
    got = list(File(path))
    assert isinstance(got[0], CycleStart) and got[0].hostname == "h"
    assert isinstance(got[-1], CycleStop)
    assert got[1:-1] == objs
    raw = path.read_bytes()
    if name.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
    elif name.endswith(".bz2"):
        assert raw[:3] == b"BZh"
    elif name.endswith(".xz"):
        assert raw[:6] == b"\xfd7zXZ\x00"
    else:
        assert raw.startswith(b'{"type":"cycle-start"')


def test_compression_detected_by_magic_not_suffix(tmp_path):
    line = json.dumps({"type": "cycle-start", "list_name": "default", "id": 0,
                       "start_time": 1}) + "\n"
    for comp, opener in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress)):
        p = tmp_path / f"misnamed-{comp}.json"
        p.write_bytes(opener(line.encode()))
        with File(p) as f:
            assert f.compression is not None
            assert f.read() == CycleStart(start_time=1)
            assert f.read() is None


def test_kind_from_content_when_suffix_says_nothing(tmp_path):
    p = tmp_path / "results.dat"
    p.write_text('{"type":"cycle-stop","stop_time":2}\n')
    with File(p) as f:
        assert f.kind == "json" and f.read() == CycleStop(stop_time=2)


def test_cycles_optional_and_append(tmp_path):
    p = tmp_path / "a.json"
    with File(p, "w", cycles=False) as f:
        f.write(sample_ping())
    with File(p, "a", cycles=False) as f:
        f.write(sample_trace())
    assert [type(o) for o in File(p)] == [Ping, Trace]
    with File(p, "a", cycle_id=7) as f:
        f.write(sample_ping())
    got = list(File(p))
    assert [type(o) for o in got] == [Ping, Trace, CycleStart, Ping, CycleStop]
    assert got[2].cycle_id == 7


def test_explicit_cycle_stop_not_doubled(tmp_path):
    p = tmp_path / "c.json"
    with File(p, "w") as f:
        f.write(CycleStop(stop_time=3))
    assert [type(o) for o in File(p)] == [CycleStart, CycleStop]


def test_filter_types(tmp_path):
    p = tmp_path / "f.json"
    with File(p, "w") as f:
        f.write(sample_ping())
        f.write(sample_trace())
        f.write(UnknownResult("owamp", {"type": "owamp", "x": 1}))
    assert [type(o) for o in File(p, filter_types=[Ping])] == [Ping]
    assert [type(o) for o in File(p, filter_types=["trace", "cycle-stop"])] == [Trace, CycleStop]
    (u,) = list(File(p, filter_types=["owamp"]))
    assert u.type == "owamp" and u.data["x"] == 1
    with File(p, filter_types=Trace) as f:
        assert isinstance(f.read(), Trace) and f.read() is None and f.read() is None


def test_bad_line_reports_line_number(tmp_path):
    p = tmp_path / "bad.json"
    good = json.dumps({"type": "cycle-stop", "stop_time": 1})
    p.write_text(good + "\n\n" + good + "\n{oops\n")
    with File(p) as f:
        assert f.read() and f.read()
        with pytest.raises(FormatError) as ei:
            f.read()
    assert ei.value.line == 4 and "bad.json" in str(ei.value) and "line 4" in str(ei.value)


def test_binary_garbage_is_format_error(tmp_path):
    p = tmp_path / "junk.json"
    p.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(FormatError):
        list(File(p))
    q = tmp_path / "trunc.json.gz"
    q.write_bytes(gzip.compress(b'{"type":"cycle-stop","stop_time":1}\n' * 50)[:-20])
    with pytest.raises(FormatError, match="decompress"):
        list(File(q))


def test_mode_and_kind_errors(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        File(tmp_path / "x.json", "rw")
    with pytest.raises(ValueError, match="kind"):
        File(tmp_path / "x.json", "w", kind="txt")
    with pytest.raises(ValueError, match="appending to a warts file"):
        File(tmp_path / "x.warts", "a")
    with pytest.raises(FileNotFoundError):
        File(tmp_path / "missing.json")
    f = File(tmp_path / "x.json", "w")
    with pytest.raises(OSError):
        f.read()
    f.close()
    f.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        f.write(sample_ping())
    with File(tmp_path / "y.json", "w") as g, pytest.raises(TypeError, match="not a result"):
        g.write({"type": "ping"})
