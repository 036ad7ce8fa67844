"""``marionet evaluate vps``: remote vs endpoint placement on VPs behind a
controller (here the embedded one with two local VPs), toward a target on
this machine that serves HTTP and the throughput protocol."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import pytest

from marionet.measure.throughput_server import ThreadedServer

pytestmark = pytest.mark.root


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"<p>the same for everyone</p>\n" if self.path == "/stable" else b"<p>other</p>\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    t = threading.Thread(target=web.serve_forever, daemon=True)
    t.start()
    with ThreadedServer("127.0.0.1", 0) as tput:
        yield web.server_address[1], tput.address[1]
    web.shutdown()
    web.server_close()


def _evaluate(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marionet", "evaluate", "vps", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_remote_against_endpoint_on_local_vps(servers: tuple[int, int], tmp_path: Path) -> None:
    web_port, tput_port = servers
    out = tmp_path / "report"
    cp = _evaluate("--local-vps", "2", "--target", "127.0.0.1", "--runs", "2",
                   "--experiments", "trace,ping,web,throughput-down,throughput-up",
                   "--url", f"http://127.0.0.1:{web_port}/stable", "--url", f"http://127.0.0.1:{web_port}/other",
                   "--port", str(tput_port), "--size", str(4 << 20), "--skip", str(1 << 20), "--out", str(out))
    assert cp.returncode == 0, cp.stderr[-3000:]
    comps = json.loads((out / "comparisons.json").read_text())["comparisons"]
    got = {(c["experiment"], c["vp"], c["reference"], c["source"]) for c in comps}
    for exp in ("trace-rtt", "trace-path", "ping-rtt", "web", "throughput-down", "throughput-up"):
        for vp in ("local1", "local2"):
            assert (exp, vp, "endpoint", "remote") in got, (exp, vp)
    for c in comps:
        if c["experiment"] in ("trace-path", "web"):
            assert c["c3"]["index"] == 1.0, c
        if c["experiment"].startswith("throughput"):
            assert c["reference_stats"]["n"] == 2 and c["source_stats"]["n"] == 2   # every transfer measured
    assert (out / "samples.parquet").stat().st_size > 0 and (out / "ecdf-ping-rtt.png").exists()
    assert "remote vs endpoint" in (out / "report.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--experiments", "web"], "needs --url"),
    (["--experiments", "dns"], "needs --qname"),
    (["--experiments", "sendgap"], "unknown experiment"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--size", "10", "--skip", "10"], "--skip must be"),
])
def test_bad_studies_are_refused_with_a_reason(args: list[str], message: str) -> None:
    cp = _evaluate("--local-vps", "1", "--target", "127.0.0.1", *args, timeout=60)
    assert cp.returncode == 2
    assert message in cp.stderr and "Traceback" not in cp.stderr
