"""``parse_iperf3_json`` on real iperf3 -J output captured on loopback, and on its error outputs."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time

import pytest

from marionet.evaluate.iperf import iperf3_command, parse_iperf3_json

needs_iperf3 = pytest.mark.skipif(shutil.which("iperf3") is None, reason="iperf3 not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def iperf3_server():
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 not installed")
    port = _free_port()
    p = subprocess.Popen(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.2)            # iperf3 -s handles the probe connection as a (failed) test first
        yield port
    finally:
        p.terminate()
        p.wait(5)


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    for _ in range(3):             # the server serves one test at a time; "busy" is retried
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if "busy" not in cp.stdout:
            return cp
        time.sleep(0.5)
    return cp


@needs_iperf3
@pytest.mark.parametrize("direction", ["download", "upload"])
def test_real_output_bytes_mode(iperf3_server, direction):
    size = 50 << 20
    cp = _run(iperf3_command("127.0.0.1", iperf3_server, direction, bytes=size))
    assert cp.returncode == 0, cp.stdout[-500:]
    res = parse_iperf3_json(cp.stdout)
    assert res.ok and res.error is None
    assert res.direction == direction
    assert res.bytes_sent >= size
    # iperf3 ends an upload when the client has written -n bytes: the receiver may have counted fewer.
    assert 0 < res.bytes_received <= res.bytes_sent
    assert res.mbps > 10 and res.sender_mbps > 10
    assert res.seconds > 0
    assert res.mbps == pytest.approx(8 * res.bytes_received / res.seconds / 1e6, rel=1e-3)
    assert res.intervals and sum(i.bytes for i in res.intervals) >= min(size, res.bytes_received)
    ends = [i.end for i in res.intervals]
    assert ends == sorted(ends)
    d = res.to_dict()
    assert d["mbps"] == res.mbps and len(d["intervals"]) == len(res.intervals)


@needs_iperf3
def test_real_output_seconds_with_omit(iperf3_server):
    cp = _run(iperf3_command("127.0.0.1", iperf3_server, "download", seconds=1, omit=1, interval=0.25))
    res = parse_iperf3_json(cp.stdout)
    assert res.ok, res.error
    assert any(i.omitted for i in res.intervals) and any(not i.omitted for i in res.intervals)
    assert 0.8 < res.seconds < 1.3                    # the omitted second is not in the end figures
    # -i 0.25 took effect (iperf3's default is 1 s). Single intervals are timer-driven and stretch on a loaded
    # machine, and iperf3 3.12 emits a few-µs interval where omitting ends, so the median is what is checked.
    durations = sorted(i.end - i.start for i in res.intervals)
    assert all(d >= 0 for d in durations) and len(durations) >= 4
    assert 0.15 < durations[len(durations) // 2] < 0.35


@needs_iperf3
def test_real_error_output_connection_refused():
    port = _free_port()
    cp = subprocess.run(iperf3_command("127.0.0.1", port, "upload", bytes=1000), capture_output=True, text=True,
                        timeout=30)
    res = parse_iperf3_json(cp.stdout)           # iperf3 3.12 -J exits 0 here: the "error" key tells
    assert not res.ok and res.mbps is None
    assert res.error.startswith("iperf3: ") and "connect" in res.error


@needs_iperf3
def test_truncated_real_output(iperf3_server):
    cp = _run(iperf3_command("127.0.0.1", iperf3_server, "upload", bytes=1 << 20))
    text = cp.stdout
    assert parse_iperf3_json(text).ok
    cut = parse_iperf3_json(text[: len(text) // 2])
    assert not cut.ok and "not complete JSON" in cut.error and "truncated" in cut.error


@pytest.mark.parametrize("text, why", [
    ("", "printed nothing"),
    ("   \n", "printed nothing"),
    ("[1, 2]", "not an object"),
    ('{"start": {}, "intervals": [], "end": {}}', "no end.sum_received"),
    ('{"end": {"sum_received": {"bits_per_second": "fast"}}}', "unexpected shape"),
    ('{"intervals": [{"sum": {"start": 0}}]}', "unexpected shape"),
    ('{"start": {}, "end": {}, "error": "the server is busy running a test. try again later"}',
     "iperf3: the server is busy"),
])
def test_error_outputs(text, why):
    res = parse_iperf3_json(text)
    assert not res.ok and why in res.error


def test_error_key_wins_over_partial_figures():
    doc = ('{"start": {"test_start": {"reverse": 1}}, "intervals": [], "end": {"sum_received": '
           '{"bits_per_second": 1e6, "bytes": 10, "seconds": 1}}, "error": "control socket has closed unexpectedly"}')
    res = parse_iperf3_json(doc)
    assert res.error == "iperf3: control socket has closed unexpectedly" and res.mbps == 1.0
    assert res.direction == "download"


def test_command_shapes_and_errors():
    assert iperf3_command("10.0.0.1", 5201, "download", bytes=1000) == [
        "iperf3", "-c", "10.0.0.1", "-p", "5201", "-J", "-n", "1000", "--connect-timeout", "5000", "-R"]
    cmd = iperf3_command("fd00::1", 5999, "upload", seconds=2.5, omit=1, interval=0.5, connect_timeout_ms=None)
    assert cmd == ["iperf3", "-c", "fd00::1", "-p", "5999", "-J", "-t", "2.5", "-O", "1", "-i", "0.5"]
    for kw, why in [({"bytes": 10, "seconds": 1}, "exactly one"), ({}, "exactly one"),
                    ({"bytes": 0}, "bytes must"), ({"bytes": 10, "omit": 1}, "omit"),
                    ({"seconds": 2, "omit": 0.5}, "whole number"),
                    ({"seconds": -1}, "seconds must"), ({"seconds": 1, "interval": 0.01}, "interval")]:
        with pytest.raises(ValueError, match=why):
            iperf3_command("10.0.0.1", 5201, "download", **kw)
    with pytest.raises(ValueError, match="direction"):
        iperf3_command("10.0.0.1", 5201, "sideways", bytes=1)
    with pytest.raises(ValueError, match="port"):
        iperf3_command("10.0.0.1", 0, "upload", bytes=1)


def test_omit_switch_puts_intervals_on_one_timeline():
    # The shape iperf3 3.12 printed in CI: the clock restarts where omitting ends, and the interval at the switch
    # starts on the old clock and ends on the new one.
    def iv(start, end, omitted):
        return {"sum": {"start": start, "end": end, "bytes": 1000, "bits_per_second": 8e6, "omitted": omitted}}
    doc = {"start": {"test_start": {"reverse": 1, "omit": 1}},
           "intervals": [iv(0, 0.5, True), iv(0.5, 1.0, True), iv(1.0, 0.25, False), iv(0.25, 0.5, False),
                         iv(0.5, 1.0, False)],
           "end": {"sum_received": {"bits_per_second": 8e6, "bytes": 3000, "seconds": 1.0},
                   "sum_sent": {"bits_per_second": 8e6, "bytes": 3000}}}
    res = parse_iperf3_json(json.dumps(doc))
    assert [(i.start, i.end) for i in res.intervals] == [(0, 0.5), (0.5, 1.0), (1.25, 1.25), (1.25, 1.5), (1.5, 2.0)]
    assert all(i.end >= i.start for i in res.intervals)
