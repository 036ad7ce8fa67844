"""warts reader: scamper oracle (sc_warts2json) and malformed input."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.results import (CycleStart, CycleStop, File, FormatError,
                              MplsLabel, Ping, Trace, UnknownResult, dumps)
from marionet.results.warts import WartsReader

from .test_results_scamper_oracle import run_scamper

W2J = shutil.which("sc_warts2json")


def rec(rtype: int, body: bytes) -> bytes:
    return struct.pack(">HHI", 0x1205, rtype, len(body)) + body


LIST = rec(1, struct.pack(">II", 1, 0) + b"default\0" + b"\x00")
CYCLE = rec(2, struct.pack(">IIII", 1, 1, 3, 1_700_000_000) + b"\x02" +
            struct.pack(">H", 3) + b"vm\0")
STOP = rec(4, struct.pack(">II", 1, 1_700_000_009) + b"\x00")


def ping_body(extra_reply: bytes = b"") -> bytes:
    # flags: id5 start, id15 ping_sent, id20 src, id21 dst
    params = (struct.pack(">II", 1_700_000_000, 5) + struct.pack(">H", 1)
              + b"\x04\x01\x7f\x00\x00\x01" + b"\x00" + struct.pack(">I", 0))
    flags = bytes([0x80 | 0x10, 0x80, 0x80 | 0x01 | 0x20 | 0x40, 0x00])
    # reply: id5 icmp tc, id6 rtt, id12 addr(ref 0), id16 tx
    rparams = (b"\x00\x00" + struct.pack(">I", 250) + b"\x00" + struct.pack(">I", 0)
               + struct.pack(">II", 1_700_000_000, 10))
    rflags = bytes([0x80 | 0x10 | 0x20, 0x80 | 0x10, 0x02])
    reply = rflags + struct.pack(">H", len(rparams)) + rparams
    return flags + struct.pack(">H", len(params)) + params + struct.pack(">H", 1) + reply + extra_reply


def read_all(data: bytes) -> list:
    r = WartsReader(io.BytesIO(data), path="mem.warts")
    out = []
    while (o := r.read()) is not None:
        out.append(o)
    return out


def test_handmade_file():
    objs = read_all(LIST + CYCLE + rec(7, ping_body()) + rec(0x0c, b"sting?") + STOP)
    c, p, u, s = objs
    assert c == CycleStart(start_time=1_700_000_000, list_name="default", cycle_id=3, hostname="vm")
    assert isinstance(p, Ping) and p.dst == "127.0.0.1" and p.src == "127.0.0.1"
    assert p.ping_sent == 1 and p.nreplies == 1
    (r,) = p.replies
    assert r.rtt_ns == 250_000 and r.tx_ns == 1_700_000_000_000_010_000
    assert r.is_icmp_echo_reply()
    assert u == UnknownResult(type="sting", raw=b"sting?")
    assert s == CycleStop(stop_time=1_700_000_009, list_name="default", cycle_id=3, hostname="vm")


def test_file_detects_warts_by_content_and_gzip(tmp_path):
    p = tmp_path / "data.bin"
    p.write_bytes(gzip.compress(LIST + CYCLE + rec(7, ping_body()) + STOP))
    with File(p) as f:
        assert f.kind == "warts" and f.compression == "gzip"
        assert [type(o) for o in f] == [CycleStart, Ping, CycleStop]
    assert [type(o) for o in File(p, filter_types=[Ping])] == [Ping]


@pytest.mark.parametrize("data,match", [
    (b"\x12\x05\x00", "truncated record header"),
    (b"\xde\xad" + b"\x00" * 6, "bad magic"),
    (struct.pack(">HHI", 0x1205, 7, 10) + b"abc", "truncated record"),
    (struct.pack(">HHI", 0x1205, 7, 2**31), "implausible"),
    (rec(7, b""), "bad ping"),
    (rec(7, b"\x10\x00\x08abc"), "bad ping"),  # params longer than record
    (rec(7, ping_body()[:-3]), "bad ping"),
    (rec(6, b"\x00\x00\x00"), "bad trace"),  # no destination
    (rec(1, b"\x00\x00\x00\x01\x00\x00\x00\x00noterm"), "bad list"),
    # address reference before definition
    (rec(7, bytes([0x80, 0x80, 0x40]) + struct.pack(">H", 5) + b"\x00\x00\x00\x00\x07"), "bad ping"),
])
def test_malformed(data, match):
    with pytest.raises(FormatError, match=match) as ei:
        read_all(data)
    assert ei.value.offset == 0 and "mem.warts" in str(ei.value)


@settings(max_examples=300)
@given(st.sampled_from([1, 2, 3, 4, 6, 7]), st.binary(max_size=120))
def test_random_bodies_never_crash(rtype, body):
    try:
        read_all(LIST + CYCLE + rec(rtype, body))
    except FormatError:
        pass


@given(st.binary(max_size=40), st.integers(0, 200))
def test_mutated_ping_never_crashes(noise, pos):
    body = bytearray(ping_body())
    body[pos % len(body):pos % len(body) + len(noise)] = noise
    try:
        read_all(rec(7, bytes(body)))
    except FormatError:
        pass


def test_mpls_icmpext_decoding():
    from marionet.results.warts import _Cursor, _icmpext
    word = (24001 << 12) | (5 << 9) | (1 << 8) | 254
    obj = struct.pack(">HBB", 4, 1, 1) + struct.pack(">I", word)
    other = struct.pack(">HBB", 2, 2, 1) + b"\xab\xcd"
    buf = struct.pack(">H", len(obj) + len(other)) + obj + other
    c = _Cursor(buf)
    (mpls, raw) = _icmpext(c)
    assert mpls.mpls_labels == [MplsLabel(label=24001, exp=5, s=1, ttl=254)]
    assert raw.data == b"\xab\xcd" and c.off == len(buf)


# -- oracle -------------------------------------------------------------------

def scamper_json(path) -> list[dict]:
    if W2J is None:
        pytest.skip("sc_warts2json not installed (comes with Debian's scamper)")
    out = subprocess.run([W2J, str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def ours_as_scamper_json(path) -> list[dict]:
    res = []
    for o in File(path):
        d = json.loads(dumps(o))
        d.pop("marionet", None)
        for r in d.get("responses", []) + d.get("hops", []):
            r.pop("marionet", None)
        if d["type"] == "trace":
            d["start"].pop("ftime")
        res.append(d)
    return res


@pytest.mark.parametrize("command,targets", [
    ("ping -c 2 -i 0.2", ("127.0.0.1", "::1")),
    ("ping -c 2 -i 0.2 -P udp", ("127.0.0.1",)),
    ("trace -w 1 -P icmp-paris", ("127.0.0.1", "::1")),
    ("trace -w 1", ("127.0.0.1",)),
])
def test_warts_matches_sc_warts2json(tmp_path, command, targets):
    """Our warts reader, written back as JSON, equals scamper's own
    warts→JSON conversion record for record."""
    if shutil.which("scamper") is None:
        pytest.skip("scamper not installed (apt-get install -y scamper)")
    path = run_scamper(tmp_path, command, *targets, fmt="warts")
    theirs = scamper_json(path)
    for d in theirs:
        if d["type"] == "trace":
            d["start"].pop("ftime")
    assert ours_as_scamper_json(path) == theirs
    objs = list(File(path))
    assert any(isinstance(o, (Ping, Trace)) for o in objs)
