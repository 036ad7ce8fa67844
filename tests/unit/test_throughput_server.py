"""The MNTPUT1 throughput server against the native client and raw sockets, on loopback."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from marionet.evaluate.native_throughput import run
from marionet.measure.throughput_proto import MAX_LINE, parse_report
from marionet.measure.throughput_server import ThreadedServer, parse_listen, payload_chunks

MiB = 1 << 20


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def server():
    records: list[dict] = []
    with ThreadedServer("127.0.0.1", 0, header_timeout=1.0, idle_timeout=5.0, close_wait=0.5,
                        on_transfer=records.append) as srv:
        srv.records = records
        yield srv


def _exchange(addr, data: bytes, *, shut: bool = True, timeout: float = 5.0) -> bytes:
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        if shut:
            s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def _check_figures(r: dict, size: int, skip: int) -> None:
    assert r["error"] is None, r["error"]
    assert r["bytes"] == size
    assert skip <= r["b"] <= size
    assert r["t1_ns"] > r["t0_ns"] > 0
    assert r["bps"] == pytest.approx(8 * (size - r["b"]) / ((r["t1_ns"] - r["t0_ns"]) / 1e9))
    assert r["bps"] > 1e6                      # loopback: far more than a Mbit/s
    assert r["ts_source"] == "kernel"
    samples = r["samples"]
    assert samples and samples[-1] == [r["t1_ns"], size]
    times = [t for t, _ in samples]
    counts = [n for _, n in samples]
    assert times == sorted(times) and len(set(times)) == len(times)
    assert counts == sorted(counts) and counts[-1] == size
    assert all(b - a >= 10_000_000 for a, b in zip(times[:-2], times[1:-1]))   # ≤ one per 10 ms, last excepted


@pytest.mark.parametrize("direction", ["download", "upload"])
def test_native_client_both_directions(server, direction):
    size, skip = 40 * MiB, 2 * MiB
    r = run(*server.address, direction, size, skip, timeout=30)
    _check_figures(r, size, skip)
    assert r["direction"] == direction
    time.sleep(0.1)
    rec = server.records[-1]
    assert rec["direction"] == direction and rec["ok"] and rec["bytes"] == size


def test_skip_zero_and_tiny_transfer(server):
    for direction in ("download", "upload"):
        r = run(*server.address, direction, 1, 0, timeout=10)
        assert "no interval" in r["error"] and r["bps"] is None     # one receive: nothing to time
        assert r["bytes"] == 1 and r["b"] == 1
    r = run(*server.address, "upload", 3 * MiB, 0, timeout=10)
    _check_figures(r, 3 * MiB, 0)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_both_directions():
    with ThreadedServer(["127.0.0.1", "::1"], 0) as srv:
        ports = {p for _, p in srv.addresses}
        assert len(ports) == 1 and {h for h, _ in srv.addresses} == {"127.0.0.1", "::1"}
        for direction in ("download", "upload"):
            _check_figures(run("::1", srv.address[1], direction, 8 * MiB, MiB), 8 * MiB, MiB)


@pytest.mark.parametrize("line, why", [
    (b"hello world\n", "expected 'MNTPUT1"),
    (b"MNTPUT1 download 0 0\n", "size must be"),
    (b"MNTPUT1 upload 100 100\n", "skip must be"),
    (b"MNTPUT1 upload 100 200\n", "skip must be"),
    (b"MNTPUT1 sideways 100 0\n", "direction must be"),
    (b"MNTPUT1 download 99999999999999 0\n", "size must be"),
    (b"MNTPUT1 download ten 0\n", "integers"),
    (b"\xff\xfe garbage \x00\n", "not ASCII"),
    (b"A" * (MAX_LINE + 50), "longer than"),
    (b"MNTPUT1 download 10", "closed before a complete request"),
])
def test_bad_requests_get_err(server, line, why):
    reply = _exchange(server.address, line)
    assert reply.startswith(b"ERR ") and reply.endswith(b"\n"), reply
    assert why in reply.decode()
    assert len(reply) < 300


def test_slow_header_times_out(server):
    t = time.monotonic()
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(b"MNTPUT1 down")
        reply = s.recv(1000)
    assert reply.startswith(b"ERR") and b"within 1 s" in reply
    assert time.monotonic() - t < 4


def test_short_upload_answers_not_ok(server):
    reply = _exchange(server.address, b"MNTPUT1 upload 1000000 1000\n" + b"x" * 5000)
    rep = parse_report(reply.rstrip(b"\n"))
    assert not rep.ok and rep.bytes == 5000
    assert "short upload" in (rep.error or "") and "5000 of 1000000" in rep.error
    assert rep.b == 5000 and rep.t0_ns > 0          # skip was reached before the end


def test_upload_longer_than_size_is_an_error(server):
    reply = _exchange(server.address, b"MNTPUT1 upload 1000 10\n" + b"x" * 1500)
    rep = parse_report(reply.rstrip(b"\n"))
    assert not rep.ok and "more than size" in (rep.error or "")


def test_request_and_payload_in_one_segment(server):
    """An eager client sends the line and its upload together; every byte counts,
    and the bytes that arrived before accept() still carry kernel stamps."""
    reply = _exchange(server.address, b"MNTPUT1 upload 2000 0\n" + b"y" * 2000)
    rep = parse_report(reply.rstrip(b"\n"))
    assert rep.ok and rep.bytes == 2000 and rep.samples[-1][1] == 2000
    assert rep.ts_source == "kernel" and rep.t0_ns > 0


def test_download_is_exact_and_incompressible(server):
    data = _exchange(server.address, b"MNTPUT1 download 3000000 0\n", shut=False)
    assert len(data) == 3_000_000
    import zlib
    assert len(zlib.compress(data, 6)) > 0.99 * len(data)
    # No two 64 KiB blocks at the same 256 KiB stride repeat.
    blocks = {data[i:i + 65536] for i in range(0, len(data) - 65536, 256 << 10)}
    assert len(blocks) == len(range(0, len(data) - 65536, 256 << 10))
    assert sum(len(c) for c in payload_chunks(3_000_000)) == 3_000_000


def _abort(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))   # close with RST
    s.close()


def test_client_vanishing_mid_transfer(server):
    s = socket.create_connection(server.address)
    s.sendall(b"MNTPUT1 download 1000000000 0\n")
    s.recv(100000)
    _abort(s)
    s = socket.create_connection(server.address)
    s.sendall(b"MNTPUT1 upload 1000000000 0\n" + b"z" * 300000)
    _abort(s)
    s = socket.create_connection(server.address)
    s.sendall(b"MNTPUT1 up")
    _abort(s)
    deadline = time.monotonic() + 5
    while len(server.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(server.records) == 3
    assert all(not r["ok"] and r["error"] for r in server.records)
    assert server.server.active == 0
    _check_figures(run(*server.address, "download", 4 * MiB, MiB), 4 * MiB, MiB)


def test_idle_upload_is_dropped():
    with ThreadedServer("127.0.0.1", 0, idle_timeout=0.5) as srv:
        with socket.create_connection(srv.address, timeout=5) as s:
            s.sendall(b"MNTPUT1 upload 100000 0\n" + b"q" * 100)
            reply = s.recv(65536)
        rep = parse_report(reply.rstrip(b"\n"))
        assert not rep.ok and "idle" in rep.error and rep.bytes == 100


def test_max_clients_busy():
    with ThreadedServer("127.0.0.1", 0, max_clients=1, header_timeout=3) as srv:
        with socket.create_connection(srv.address) as hog:
            time.sleep(0.1)
            r = run(*srv.address, "download", MiB, 0, timeout=5)
            assert r["error"] is not None and "busy" in r["error"] and r["bps"] is None
            r = run(*srv.address, "upload", MiB, 0, timeout=5)
            assert r["error"] is not None and "busy" in r["error"]
            hog.sendall(b"MNTPUT1 download 10 0\n")
            assert len(hog.recv(100)) == 10
        time.sleep(0.2)
        _check_figures(run(*srv.address, "download", 2 * MiB, MiB, timeout=5), 2 * MiB, MiB)


def test_many_concurrent_transfers(server):
    def one(i: int) -> dict:
        return run(*server.address, "download" if i % 2 else "upload", 4 * MiB, MiB, timeout=30)

    with ThreadPoolExecutor(16) as ex:
        results = list(ex.map(one, range(16)))
    for r in results:
        _check_figures(r, 4 * MiB, MiB)


def test_native_client_errors():
    with pytest.raises(ValueError, match="skip"):
        run("127.0.0.1", 1, "download", 10, 10)
    with pytest.raises(ValueError, match="direction"):
        run("127.0.0.1", 1, "both", 10, 1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                  # bound, not listening: refused
        r = run("127.0.0.1", port, "download", 10, 1, timeout=2)
    assert r["error"].startswith("connection:") and r["bps"] is None


def test_native_client_sees_short_download():
    """A fake server that sends less than asked and closes."""
    lsock = socket.create_server(("127.0.0.1", 0))

    def fake() -> None:
        c, _ = lsock.accept()
        c.recv(200)
        c.sendall(b"\x01" * 1234)
        c.close()

    t = threading.Thread(target=fake)
    t.start()
    r = run("127.0.0.1", lsock.getsockname()[1], "download", 10000, 10, timeout=5)
    t.join()
    lsock.close()
    assert "short download" in r["error"] and r["bytes"] == 1234


def test_parse_listen():
    assert parse_listen("127.0.0.1:5301") == ("127.0.0.1", 5301)
    assert parse_listen("[::1]:80") == ("::1", 80)
    assert parse_listen("5301") == ("", 5301)
    assert parse_listen(":5301") == ("", 5301)
    for bad in ("::1:80", "host:", "h:99999", "[::1]80"):
        with pytest.raises(ValueError, match="listen address"):
            parse_listen(bad)


def test_cli_runs_and_logs(tmp_path):
    import os
    import subprocess
    import sys

    ready, log = tmp_path / "ready", tmp_path / "t.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-m", "marionet", "throughput-server", "--listen", "127.0.0.1:0",
                          "--ready-file", str(ready), "--transfers", str(log)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 10
        while not (ready.exists() and ready.read_text().strip()) and time.monotonic() < deadline:
            assert p.poll() is None, p.stdout.read()
            time.sleep(0.05)
        host, port = parse_listen(ready.read_text().split()[0])
        _check_figures(run(host, port, "upload", 2 * MiB, MiB), 2 * MiB, MiB)
        _exchange((host, port), b"nonsense\n")
        time.sleep(0.2)
    finally:
        p.terminate()
        out, _ = p.communicate(10)
    assert p.returncode == 0
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["ok"] for r in recs] == [True, False]
    assert sum("transfer peer=" in line for line in out.splitlines()) == 2


def test_cli_rejects_bad_listen():
    import subprocess
    import sys
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cp = subprocess.run([sys.executable, "-m", "marionet", "throughput-server", "--listen", "nowhere"],
                        capture_output=True, text=True, env=env, timeout=20)
    assert cp.returncode == 2 and "listen address" in cp.stderr
