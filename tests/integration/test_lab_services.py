"""Lab services, for real: NSD, nginx (HTTP and HTTPS with the lab CA), bulk, udpecho.

A namespace pair we create (prefix ``mnsv<pid>``): A is the client (VP), B
the target host running the services. Clients are real tools (dig, curl,
iperf3) where installed, and sockets created inside A otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from marionet.lab.labca import LabCA, LabCAError
from marionet.lab.services import (
    ServiceConfigError,
    ServiceHandle,
    netns_socket,
    parse_udpecho_reply,
    start_service,
    stop_leftovers,
)

PREFIX = f"mnsv{os.getpid()}"
NS_A, NS_B = f"{PREFIX}a", f"{PREFIX}b"
A4, B4, B4_2 = "10.78.0.1", "10.78.0.2", "10.78.0.3"
A6, B6 = "fd00:78::1", "fd00:78::2"

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _in_a(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", NS_A, *cmd], capture_output=True, text=True, timeout=timeout)


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (apt-get install -y {tool})")


@contextlib.contextmanager
def build_pair() -> Iterator[Path]:
    """Two namespaces joined by a veth, v4 and v6; removed on exit, also on failure."""
    for n in (NS_A, NS_B):
        if os.path.exists(f"/run/netns/{n}"):
            raise RuntimeError(f"namespace {n} already exists; not ours, not touching it")
    made: list[str] = []
    state = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    try:
        for n in (NS_A, NS_B):
            _sh("ip", "netns", "add", n)
            made.append(n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        va, vb = f"{PREFIX}x", f"{PREFIX}y"
        _sh("ip", "link", "add", va, "netns", NS_A, "type", "veth", "peer", "name", vb, "netns", NS_B)
        _sh("ip", "-n", NS_A, "addr", "add", f"{A4}/24", "dev", va)
        _sh("ip", "-n", NS_B, "addr", "add", f"{B4}/24", "dev", vb)
        _sh("ip", "-n", NS_B, "addr", "add", f"{B4_2}/24", "dev", vb)
        _sh("ip", "-n", NS_A, "addr", "add", f"{A6}/64", "dev", va, "nodad")
        _sh("ip", "-n", NS_B, "addr", "add", f"{B6}/64", "dev", vb, "nodad")
        _sh("ip", "-n", NS_A, "link", "set", va, "up")
        _sh("ip", "-n", NS_B, "link", "set", vb, "up")
        yield state
    finally:
        # Services a failing test left behind are ours and recorded here.
        stop_leftovers(state)
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def state() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with build_pair() as s:
        yield s


@contextlib.contextmanager
def service(kind: str, options: dict, state: Path) -> Iterator[ServiceHandle]:
    h = start_service(kind, NS_B, options, state_dir=state)
    try:
        yield h
    finally:
        h.stop()


def _gone(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------ lab CA


def test_labca_create_load_issue(tmp_path: Path) -> None:
    ca = LabCA.load_or_create(tmp_path / "ca")
    again = LabCA.load_or_create(tmp_path / "ca")
    assert again.cert == ca.cert, "a second load must reuse the root clients already trust"
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    cert, key = ca.issue_server_cert(["www.lab.test"], ["192.0.2.1", "2001:db8::1"], tmp_path / "leaf")
    if shutil.which("openssl"):
        r = subprocess.run(["openssl", "verify", "-CAfile", str(ca.root_path), "-purpose", "sslserver", str(cert)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ctx = ssl.create_default_context(cafile=str(ca.root_path))
    ctx.load_verify_locations(cafile=str(ca.root_path))
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv.load_cert_chain(cert, key)  # key and cert belong together
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ca.pem").write_bytes(ca.root_path.read_bytes())
    with pytest.raises(LabCAError, match="only one of"):
        LabCA.load_or_create(tmp_path / "half")
    with pytest.raises(LabCAError, match="addresses"):
        ca.issue_server_cert([], ["not-an-ip"])


# ------------------------------------------------------------- bad options


@needs_root
def test_bad_options_name_the_field(state: Path) -> None:
    with pytest.raises(ServiceConfigError, match=r"^kind:"):
        start_service("ftp", NS_B, {}, state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"^netns:"):
        start_service("dns", f"{PREFIX}none", {"zone": "x."}, state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"^state_dir:"):
        start_service("dns", NS_B, {"zone": "x."})
    with pytest.raises(ServiceConfigError, match=r"^dns\.zone:"):
        start_service("dns", NS_B, {}, state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"dns\.records\[1\]\.value"):
        start_service("dns", NS_B, {"name": "bad1", "zone": "lab.test", "records": [["a", "A", "192.0.2.1"],
                                                                                    ["b", "A", "2001:db8::1"]]},
                      state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"dns\.records\[0\]\.type"):
        start_service("dns", NS_B, {"name": "bad2", "zone": "lab.test", "records": [["a", "SRV", "x"]]},
                      state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"http\.port"):
        start_service("http", NS_B, {"name": "bad3", "port": 70000}, state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"bulk\.impl"):
        start_service("bulk", NS_B, {"name": "bad4", "impl": "netcat"}, state_dir=state)
    with pytest.raises(ServiceConfigError, match=r"https\.api"):
        start_service("https", NS_B, {"name": "bad5", "api": {"/x; evil": 1}}, state_dir=state)
    assert not list(state.glob("*/service.json")), "a rejected config must start nothing"


# ---------------------------------------------------------------------- dns

ZONE = {
    "zone": "lab.test.",
    "records": [
        ["www", "A", B4],
        ["www", "AAAA", B6],
        {"name": "@", "type": "MX", "value": "10 mail"},
        {"name": "mail", "type": "A", "value": B4},
        {"name": "info", "type": "TXT", "value": "marionet lab \"zone\"", "ttl": 60},
        ["cdn", "CNAME", "www"],
        ["sub", "NS", "ns.elsewhere.test."],
    ],
}


def _query(server: str, qname: str, rdtype: str) -> dns.message.Message:
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    with netns_socket(NS_A, fam, socket.SOCK_DGRAM) as s:
        s.setblocking(False)  # dnspython requires it for its timeout
        return dns.query.udp(dns.message.make_query(qname, rdtype), server, timeout=2, sock=s)


@needs_root
def test_dns_authoritative_v4_v6(state: Path) -> None:
    t0 = time.monotonic()
    with service("dns", ZONE, state) as h:
        print(f"\nnsd ready in {1000 * (time.monotonic() - t0):.0f} ms, pid {h.pid}, on {h.addresses}")
        assert B4 in h.addresses and B6 in h.addresses and h.port == 53
        for server in (B4, B6):
            r = _query(server, "www.lab.test", "A")
            assert r.flags & dns.flags.AA and r.answer[0][0].address == B4
        assert _query(B6, "www.lab.test", "AAAA").answer[0][0].address == B6
        mx = _query(B4, "lab.test", "MX").answer[0][0]
        assert mx.preference == 10 and str(mx.exchange) == "mail.lab.test."
        txt = _query(B4, "info.lab.test", "TXT").answer[0]
        assert txt.ttl == 60 and txt[0].strings == (b'marionet lab "zone"',)
        cn = _query(B4, "cdn.lab.test", "A")
        assert any(rr.rdtype == dns.rdatatype.CNAME for rr in cn.answer)
        ns = _query(B4, "lab.test", "NS")
        assert str(ns.answer[0][0].target) == "ns1.lab.test."
        assert {rr[0].address for rr in ns.additional} >= {B4}  # glue from the server's own addresses
        deleg = _query(B4, "x.sub.lab.test", "A")
        assert not deleg.flags & dns.flags.AA and deleg.authority  # a referral
        if shutil.which("dig"):
            out = _in_a("dig", "+short", f"@{B6}", "www.lab.test", "AAAA").stdout.strip()
            assert out == B6
        pid = h.pid
        h.stop()
        h.stop()  # idempotent
        assert _gone(pid)
        assert not (h.directory / "service.json").exists()


# ----------------------------------------------------------------- http(s)


@needs_root
def test_http_static_and_api(state: Path) -> None:
    _need("curl")
    opts = {"name": "web", "files": {"index.html": "hello lab\n", "obj/1k.bin": 1024},
            "servers": ["s1.cdn.lab.test", "s2.cdn.lab.test"], "api": {"/api/health": {"ok": True}}}
    with service("http", opts, state) as h:
        assert _in_a("curl", "-sS", f"http://{B4}/").stdout == "hello lab\n"
        r = _in_a("curl", "-sS", "-i", f"http://[{B6}]/api/servers")
        head, body = r.stdout.split("\n\n", 1)  # text mode turned CRLF into LF
        assert "application/json" in head
        assert json.loads(body)["servers"] == ["s1.cdn.lab.test", "s2.cdn.lab.test"]
        assert json.loads(_in_a("curl", "-sS", f"http://{B4}/api/health").stdout) == {"ok": True}
        size = _in_a("curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", f"http://{B4}/obj/1k.bin").stdout
        assert size == "1024"
        assert _in_a("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{B4}/nope").stdout == "404"
        pid = h.pid
    assert _gone(pid)


@needs_root
def test_https_with_lab_ca(state: Path) -> None:
    _need("curl")
    opts = {"hostnames": ["www.lab.test", "api.lab.test"], "servers": ["a.lab.test"]}
    with service("https", opts, state) as h:
        ca = h.info["ca"]
        assert Path(ca).exists() and h.port == 443
        r = _in_a("curl", "-sS", "--cacert", ca, "--resolve", f"api.lab.test:443:{B6}",
                  "https://api.lab.test/api/servers")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["servers"] == ["a.lab.test"]
        r = _in_a("curl", "-sS", "--cacert", ca, f"https://{B4}/")  # IP SAN
        assert r.returncode == 0, r.stderr
        r = _in_a("curl", "-sS", f"https://{B4}/")  # without the lab root: refused
        assert r.returncode != 0
        # Python's ssl, over a socket made inside the VP namespace.
        ctx = ssl.create_default_context(cafile=ca)
        with netns_socket(NS_A, socket.AF_INET, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect((B4, 443))
            with ctx.wrap_socket(raw, server_hostname="www.lab.test") as tls:
                tls.sendall(b"GET /api/servers HTTP/1.1\r\nHost: www.lab.test\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(4096):
                    data += chunk
        assert data.startswith(b"HTTP/1.1 200") and b"a.lab.test" in data
    # The CA is the lab's: a second HTTPS service reuses it.
    with service("https", {"name": "web2", "port": 8443}, state) as h2:
        assert h2.info["ca"] == ca


# --------------------------------------------------------------------- bulk


@needs_root
def test_bulk_simple_source_and_sink(state: Path) -> None:
    size = 8 << 20
    with service("bulk", {"size": size, "mark": 1 << 20}, state) as h:
        with netns_socket(NS_A, socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect((B6, h.ports["source"]))
            n, t0 = 0, time.monotonic()
            while chunk := s.recv(1 << 18):
                n += len(chunk)
            dt = time.monotonic() - t0
        assert n == size
        print(f"\nbulk source: {size >> 20} MiB in {dt * 1000:.0f} ms = {8 * n / dt / 1e9:.2f} Gbit/s")
        up = 5 << 20
        with netns_socket(NS_A, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect((B4, h.ports["sink"]))
            s.sendall(os.urandom(up))
            s.shutdown(socket.SHUT_WR)
            rec = json.loads(s.makefile().readline())
        assert rec["bytes"] == up and rec["bytes_at_mark"] >= 1 << 20
        assert rec["t_first_ns"] <= rec["t_mark_ns"] <= rec["t_last_ns"]
        thr = 8 * (up - rec["bytes_at_mark"]) / ((rec["t_last_ns"] - rec["t_mark_ns"]) / 1e9)
        print(f"bulk sink (PAM'25 method): {thr / 1e9:.2f} Gbit/s")
        time.sleep(0.2)
        roles = [(t["role"], t["bytes"]) for t in h.transfers()]
        assert ("source", size) in roles and ("sink", up) in roles
        assert len(roles) == 2, "readiness checks must not leave transfers in the log"


@needs_root
def test_bulk_iperf3(state: Path) -> None:
    _need("iperf3")
    with service("bulk", {"name": "iperf", "impl": "iperf3"}, state) as h:
        r = _in_a("iperf3", "-c", B4, "-p", str(h.port), "-t", "1", "-J")
        assert r.returncode == 0, r.stdout[-500:]
        bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
        print(f"\niperf3 through veth: {bps / 1e9:.2f} Gbit/s")
        assert bps > 1e6
        pid = h.pid
    assert _gone(pid)


# ------------------------------------------------------------------ udpecho


@needs_root
def test_udpecho_timestamps_and_source(state: Path) -> None:
    with service("udpecho", {"port": 7}, state) as h:
        for fam, dst in ((socket.AF_INET, B4), (socket.AF_INET, B4_2), (socket.AF_INET6, B6)):
            with netns_socket(NS_A, fam, socket.SOCK_DGRAM) as s:
                s.settimeout(2)
                t_send = time.time_ns()
                s.sendto(b"probe-123", (dst, 7))
                data, peer = s.recvfrom(2048)
                t_recv = time.time_ns()
            payload, rx, tx = parse_udpecho_reply(data)
            assert payload == b"probe-123"
            assert peer[0] == dst, "the reply must come from the probed address"
            assert t_send <= rx <= tx <= t_recv  # one machine, one clock
        print(f"\nudpecho server hold time {(tx - rx) / 1000:.1f} µs, RTT {(t_recv - t_send) / 1000:.1f} µs")


# ------------------------------------------------------------- leftovers


@needs_root
def test_stop_leftovers_after_crash(state: Path) -> None:
    h = start_service("udpecho", NS_B, {"name": "orphan", "port": 9}, state_dir=state)
    pid = h.pid
    rec = json.loads((h.directory / "service.json").read_text())
    assert rec["pid"] == pid and rec["kind"] == "udpecho"
    # The lab process "crashed": only the state dir remains.
    assert pid in stop_leftovers(state)
    h._proc.wait(5)  # type: ignore[union-attr]  # reap (we are its parent in this test)
    assert _gone(pid)
    h.stop()  # still safe
