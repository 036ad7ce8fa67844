"""``marionet demo``, ``marionet ping`` and the Ctrl examples, run as a user would."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from marionet import File
from marionet.client.loop_thread import LoopThread
from marionet.controller.embedded import start_embedded
from marionet.results import Ping, loads

ROOT = Path(__file__).resolve().parents[2]


def marionet(*args: str, cwd: Path | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marionet.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=dict(os.environ, COLUMNS="120"))


@pytest.fixture(scope="module")
def controller():
    lt = LoopThread()
    emb = lt.run(start_embedded([("vp-a", {"cc": "NZ", "tags": {"site": "akl"}}),
                                       ("vp-b", {"cc": "US", "tags": {"site": "sea"}})]))
    yield emb.client_address
    lt.run(emb.close())
    lt.stop()


def test_demo(tmp_path):
    out = tmp_path / "demo.json"
    r = marionet("demo", "--vps", "3", "-o", str(out), "-c", "2")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "shortest ping" in r.stdout and "nz-akl" in r.stdout and "de-fra" in r.stdout
    assert str(out) in r.stdout.replace("\n", "")
    for target in ("127.0.0.1", "::1", "127.0.0.2", "127.1.2.3"):
        assert re.search(rf"{re.escape(target)} .*(nz-akl|us-sea|de-fra) \d+\.\d+ ms", r.stdout), r.stdout
    with File(out) as f:
        pings = [o for o in f if isinstance(o, Ping)]
    assert len(pings) == 12 and {p.vp for p in pings} == {"nz-akl", "us-sea", "de-fra"}


def test_demo_default_output_path():
    r = marionet("demo", "--vps", "2", "-c", "1", "--target", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    m = re.search(r"written to\s+(\S+results\.json)", r.stdout.replace("\n", " "))
    assert m and Path(m.group(1)).exists()


def test_ping_embedded():
    r = marionet("ping", "127.0.0.1", "-c", "3", "-i", "0.1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "PING 127.0.0.1 (127.0.0.1) from 127.0.0.1 vp local: 56(84) bytes of data."
    assert all(re.fullmatch(r"64 bytes from 127\.0\.0\.1: icmp_seq=\d ttl=64 time=\d+\.\d{3} ms", ln)
               for ln in lines[1:4]), lines
    assert lines[4:7] == ["", "--- 127.0.0.1 ping statistics ---",
                          "3 packets transmitted, 3 received, 0% packet loss"]
    assert re.fullmatch(r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", lines[7])


def test_ping_methods_and_errors():
    r = marionet("ping", "::1", "-c", "2", "-i", "0.1", "-P", "udp")
    assert r.returncode == 0 and r.stdout.startswith("PING ::1(::1) from ::1 vp local: "), r.stderr
    assert ", method udp" in r.stdout.splitlines()[0]
    r = marionet("ping", "127.0.0.1", "-P", "bogus")
    assert r.returncode == 2 and "unknown ping method 'bogus'" in r.stderr


def test_ping_through_controller(controller, tmp_path):
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure")
    assert r.returncode == 2 and "choose with --vp" in r.stderr
    out = tmp_path / "p.json"
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure", "--vp", "vp-b",
                 "-o", str(out))
    assert r.returncode == 0 and " vp vp-b:" in r.stdout and "vp-a" not in r.stdout, r.stderr
    assert [p.vp for p in File(out) if isinstance(p, Ping)] == ["vp-b"]
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure", "--vp", "all")
    assert r.returncode == 0 and r.stdout.count("ping statistics") == 2
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure", "--all", "--json")
    assert r.returncode == 0 and sorted(loads(ln).vp for ln in r.stdout.splitlines()) == ["vp-a", "vp-b"]
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure", "--tag", "cc=US")
    assert r.returncode == 2 and "no live VP with tags cc=US" in r.stderr  # cc is metadata, not a tag
    r = marionet("ping", "127.0.0.1", "-c", "1", "--controller", controller, "--insecure", "--tag", "site=sea")
    assert r.returncode == 0 and r.stdout.count("ping statistics") == 1 and " vp vp-b:" in r.stdout, r.stderr


def test_http_from_every_vp_names_each_block(controller, tmp_path):
    """curl -i has no header of its own: with several VPs each block starts
    with a curl -v style "* vp NAME: URL" line."""
    import http.server
    import threading

    (tmp_path / "f.txt").write_text("from the web\n")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}/f.txt"
        r = marionet("http", url, "--controller", controller, "--controller-insecure", "--all")
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr
    blocks = r.stdout.split("\n\n* vp ")
    assert len(blocks) == 2 and r.stdout.startswith("* vp ")
    assert sorted(b.removeprefix("* vp ").split(":")[0] for b in blocks) == ["vp-a", "vp-b"]
    assert all(f": {url}\nHTTP/1.0 200 OK\n" in b and b.rstrip().endswith("from the web") for b in blocks)


@pytest.mark.parametrize("script,args,pattern", [
    ("shortest_ping.py", ["::1"], r"local[123] \d+\.\d{3} ms\n"),
    ("async_ping.py", [], r"(\s+local[12]\s+(127\.0\.0\.1|::1) 2/2 min \d+\.\d{3} ms\n){4}"),
])
def test_examples(tmp_path, script, args, pattern):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(pattern, r.stdout), r.stdout


def test_examples_through_a_controller(controller, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "shortest_ping.py"), "127.0.0.1", controller],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and re.fullmatch(r"vp-[ab] \d+\.\d{3} ms\n", r.stdout), r.stderr
