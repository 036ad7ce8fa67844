"""Oracle: Debian's scamper writes JSON (and warts) that our File must read.

Only 127.0.0.1 and ::1 are probed.  Skipped, with the reason, when scamper
is not installed or cannot open its raw sockets (needs root).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from marionet.results import CycleStart, CycleStop, File, Ping, Trace, dumps

SCAMPER = shutil.which("scamper")

pytestmark = pytest.mark.skipif(
    SCAMPER is None,
    reason="scamper not installed (apt-get install -y scamper); "
           "the project's test command installs it")


def run_scamper(tmp_path: Path, command: str, *targets: str, fmt: str = "json") -> Path:
    for t in targets:
        assert t in ("127.0.0.1", "::1"), "oracle tests probe loopback only"
    out = tmp_path / f"out.{fmt}"
    proc = subprocess.run([SCAMPER, "-O", fmt, "-o", str(out), "-c", command, "-i", *targets],
                          capture_output=True, timeout=60)
    if proc.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        msg = proc.stderr.decode(errors="replace").strip()[:200]
        if os.geteuid() != 0:
            pytest.skip(f"scamper could not probe (not root?): {msg}")
        pytest.fail(f"scamper failed ({proc.returncode}): {msg}")
    return out


def check_round_trip(path: Path) -> None:
    """Every scamper line, read and re-written by us, is the same dict."""
    for line in path.read_text().splitlines():
        d = json.loads(line)
        with_ours = json.loads(dumps(_read_line(path, line)))
        if d.get("type") == "trace":
            d["start"].pop("ftime", None)
            with_ours["start"].pop("ftime", None)
        assert with_ours == d


def _read_line(tmp: Path, line: str):
    from marionet.results import loads
    return loads(line)


def test_scamper_ping_json(tmp_path):
    out = run_scamper(tmp_path, "ping -c 3 -i 0.2", "127.0.0.1", "::1")
    objs = list(File(out))
    assert isinstance(objs[0], CycleStart) and isinstance(objs[-1], CycleStop)
    pings = [o for o in objs if isinstance(o, Ping)]
    assert sorted(str(p.dst) for p in pings) == ["127.0.0.1", "::1"]
    for p in pings:
        assert p.method == "icmp-echo" and p.ping_sent == 3
        assert p.nreplies == 3 and p.nloss == 0
        assert p.wait_probe == dt.timedelta(milliseconds=200)
        assert all(r.src == p.dst and r.is_icmp_echo_reply() for r in p.replies)
        assert [r.attempt for r in p.replies] == [0, 1, 2]
        assert dt.timedelta(0) <= p.min_rtt <= p.avg_rtt <= p.max_rtt < dt.timedelta(seconds=1)
        assert abs(p.start - dt.datetime.now(dt.timezone.utc)) < dt.timedelta(minutes=5)
        for r in p.replies:
            assert r.rx - r.tx == r.rtt
    check_round_trip(out)


def test_scamper_udp_ping_json(tmp_path):
    out = run_scamper(tmp_path, "ping -c 2 -i 0.2 -P udp", "127.0.0.1")
    (p,) = list(File(out, filter_types=[Ping]))
    assert p.method == "udp" and p.sport is not None and p.dport is not None
    assert p.nreplies == 2  # ICMP port unreachable from the target counts
    assert all(r.is_icmp_unreach_port() for r in p.replies)
    check_round_trip(out)


def test_scamper_trace_json(tmp_path):
    out = run_scamper(tmp_path, "trace -w 1", "127.0.0.1")
    traces = list(File(out, filter_types=["trace"]))
    assert [str(t.dst) for t in traces] == ["127.0.0.1"]
    for t in traces:
        assert t.method == "udp-paris" and t.is_completed()
        assert t.hop_count == 1 and t.firsthop == 1
        (h,) = list(t.hops())
        assert h.src == t.dst and h.probe_ttl == 1 and h.is_icmp_unreach_port()
        assert t.addrs() == [t.dst]
    check_round_trip(out)


@pytest.mark.parametrize("target", ["127.0.0.1", "::1"])
def test_scamper_icmp_paris_trace_json(tmp_path, target):
    out = run_scamper(tmp_path, "trace -w 1 -P icmp-paris", target)
    (t,) = list(File(out, filter_types=[Trace]))
    assert t.method == "icmp-echo-paris" and t.dst == target
    assert t.wait == dt.timedelta(seconds=1)
    assert t.hop(1).src == target and t.hop(1).is_icmp_echo_reply()
    check_round_trip(out)


def test_compressed_scamper_output_reads(tmp_path):
    import gzip
    out = run_scamper(tmp_path, "ping -c 1", "127.0.0.1")
    gz = tmp_path / "renamed.json"  # gzip content behind a plain suffix
    gz.write_bytes(gzip.compress(out.read_bytes()))
    assert [type(o) for o in File(gz)] == [CycleStart, Ping, CycleStop]
