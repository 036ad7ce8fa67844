"""``marionet wrap`` on a lab: unmodified programs measure through a VP (issue 13).

The PAM'25 pktwrap experiments, with real programs and real servers::

    vp-a ─3ms─ r1 ─┬─ srv    (nginx: https + http; stable and per-request pages, a JSON API)
                   ├─ other  (nginx: https; not on the guard's list)
                   └─ ns     (NSD: wrap.example; the lab's resolver runs for it)

Each wrapped program runs on this machine in a namespace of its own whose
only way out is the wrap's relay to vp-a's endpoint (through the lab's
controller); the same program run inside vp-a's namespace is the native
baseline. Names resolve through the VP's resolver (the wrap's resolver
alias) unless ``--resolve`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from marionet.lab import parse_spec
from marionet.lab.pytest_plugin import make_lab

pytestmark = [pytest.mark.root]

ZONE = "wrap.example"
STABLE = {"index.html": "<h1>wrap lab</h1>\n<p>stable page</p>\n",
          "about.html": "<p>about: " + "static text " * 200 + "</p>\n"}
DYNAMIC = {"live.html": '<p>request <!--# echo var="request_id" --> at <!--# echo var="msec" --></p>\n',
           "clock.html": '<p>rendered <!--# echo var="date_gmt" --></p>\n'}
BIG = 3_000_000


def _files() -> str:
    items = [f'"{k}" = {json.dumps(v)}' for k, v in {**STABLE, **DYNAMIC}.items()] + [f'"big.bin" = {BIG}']
    return "{ " + ", ".join(items) + " }"


#: fixed addresses on r1's links, so the DNS zone can name them
SRV4, SRV6 = "10.97.1.2", "fd00:97:1::2"
OTHER4, OTHER6 = "10.97.2.2", "fd00:97:2::2"
NS4, NS6 = "10.97.3.2", "fd00:97:3::2"

SPEC = f"""
[lab]
name = "wrapl"
controller = "auto"

[[vp]]
name = "vp-a"

[[router]]
name = "r1"

[[host]]
name = "srv"

[[host]]
name = "other"

[[host]]
name = "ns"

[[link]]
a = "vp-a"
b = "r1"
delay = "3ms"

[[link]]
a = "r1"
b = "srv"
ipv4 = ["10.97.1.1/24", "{SRV4}/24"]
ipv6 = ["fd00:97:1::1/64", "{SRV6}/64"]

[[link]]
a = "r1"
b = "other"
ipv4 = ["10.97.2.1/24", "{OTHER4}/24"]
ipv6 = ["fd00:97:2::1/64", "{OTHER6}/64"]

[[link]]
a = "r1"
b = "ns"
ipv4 = ["10.97.3.1/24", "{NS4}/24"]
ipv6 = ["fd00:97:3::1/64", "{NS6}/64"]

[[service]]
host = "srv"
kind = "https"
options = {{ hostnames = ["www.{ZONE}", "static.{ZONE}"], dynamic = {json.dumps(list(DYNAMIC))}, files = {_files()}, api = {{ "/api/info" = {{ site = "srv", values = [1, 2, 3], nested = {{ ok = true }} }} }} }}

[[service]]
host = "srv"
kind = "http"
options = {{ hostnames = ["www.{ZONE}"], files = {_files()} }}

[[service]]
host = "other"
kind = "https"
options = {{ hostnames = ["other.{ZONE}"], files = {{ "index.html" = "<p>other server</p>\\n" }} }}

[[service]]
host = "ns"
kind = "dns"
options = {{ zone = "{ZONE}", records = [["www", "A", "{SRV4}"], ["www", "AAAA", "{SRV6}"], ["static", "A", "{SRV4}"], ["other", "A", "{OTHER4}"], ["txt", "TXT", "hello from the lab"]] }}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(parse_spec(SPEC)) as lab:
        lab.wait_vps()
        yield lab


@pytest.fixture(scope="module")
def ca_root(lab: Any) -> str:
    from marionet.lab.hooks import service_dir
    from marionet.lab.labca import LabCA

    return str(LabCA.load(service_dir(lab) / "ca").root_path)


def wrap_cmd(lab: Any, *opts: str) -> list[str]:
    cert, key, ca = lab.client_tls()
    return [sys.executable, "-m", "marionet", "wrap", "--controller", lab.controller_address(),
            "--cert", cert, "--key", key, "--ca", ca, "--vp", "vp-a", *opts, "--"]


def run_wrapped(lab: Any, argv: list[str], *opts: str, timeout: float = 90,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    e = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"), **(env or {})}
    return subprocess.run(wrap_cmd(lab, *opts) + argv, capture_output=True, timeout=timeout, env=e)


def run_native(lab: Any, argv: list[str], timeout: float = 60,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    pre = ["env", *[f"{k}={v}" for k, v in (env or {}).items()]] if env else []
    return subprocess.run(["ip", "netns", "exec", lab.netns("vp-a"), *pre, *argv], capture_output=True,
                          timeout=timeout)


def own_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(f"mnw{os.getpid()}-")]


# ------------------------------------------------------------------ web content

SITES = [f"https://www.{ZONE}/", f"https://www.{ZONE}/about.html", f"https://static.{ZONE}/",
         f"https://www.{ZONE}/live.html", f"https://www.{ZONE}/clock.html", f"https://www.{ZONE}/api/info"]


def _fetch_all_script(outdir: str, ca: str) -> list[str]:
    lines = [f'curl -sS --cacert {ca} -o {outdir}/{i} -w "%{{http_code}}\\n" {url} >> {outdir}/codes'
             for i, url in enumerate(SITES)]
    return ["sh", "-c", " && ".join(lines)]


def test_web_content_wrapped_curl_matches_curl_on_the_vp(lab: Any, ca_root: str, tmp_path: Path) -> None:
    """The paper's web-content experiment: bodies byte-identical where the site is
    stable, different where it varies per request — Jaccard 1.0 after cleaning."""
    from marionet.evaluate.criteria import jaccard
    from marionet.evaluate.web import clean_body, web_item

    wdir, ndir = tmp_path / "wrapped", tmp_path / "native"
    wdir.mkdir()
    ndir.mkdir()
    report = tmp_path / "report.json"
    w = run_wrapped(lab, _fetch_all_script(str(wdir), ca_root), "--report", str(report))
    assert w.returncode == 0, w.stderr.decode()[-2000:]
    n = run_native(lab, _fetch_all_script(str(ndir), ca_root))
    assert n.returncode == 0, n.stderr.decode()[-2000:]
    assert (wdir / "codes").read_text().split() == ["200"] * len(SITES)
    assert (ndir / "codes").read_text().split() == ["200"] * len(SITES)
    items_w, items_n = set(), set()
    for i, url in enumerate(SITES):
        bw, bn = (wdir / str(i)).read_bytes(), (ndir / str(i)).read_bytes()
        assert bw, url
        if url.endswith(tuple(DYNAMIC)):
            if url.endswith("live.html"):  # a 32-hex request id: never the same twice
                assert bw != bn, f"{url}: a per-request page came back identical"
            assert clean_body(bw) == clean_body(bn), url
        else:
            assert bw == bn, url
        items_w.add(web_item(url, 200, bw, None))
        items_n.add(web_item(url, 200, bn, None))
    assert jaccard(items_w, items_n) == 1.0
    # every connection went through the VP: to srv's address, names resolved by the VP's resolver
    rep = json.loads(report.read_text())
    tcp = [c for c in rep["connections"] if c["kind"] == "tcp"]
    assert len(tcp) == len(SITES) and {(c["dst"], c["port"]) for c in tcp} <= {(SRV4, 443), (SRV6, 443)}
    assert all(c["outcome"] == "closed" and c["rx_bytes"] > 0 for c in tcp), tcp
    udp = [c for c in rep["connections"] if c["kind"] == "udp"]
    assert udp and all(c["port"] == 53 and c["dst"] in lab.resolver() for c in udp), udp
    assert rep["exit_status"] == 0 and rep["vp"] == "vp-a"
    assert own_namespaces() == []


@pytest.mark.parametrize("family", [4, 6])
def test_resolve_option_and_ipv6(lab: Any, ca_root: str, family: int) -> None:
    """``--resolve`` (curl's syntax) names the address; IPv6 connections are carried too."""
    addr = SRV4 if family == 4 else SRV6
    url = f"https://www.{ZONE}/about.html"
    w = run_wrapped(lab, ["curl", "-sS", "--cacert", ca_root, url],
                    "--resolve", f"www.{ZONE}:443:{addr if family == 4 else '[' + addr + ']'}")
    assert w.returncode == 0, w.stderr.decode()[-2000:]
    n = run_native(lab, ["curl", "-sS", "--cacert", ca_root, "--resolve", f"www.{ZONE}:443:{addr}", url])
    assert w.stdout == n.stdout and w.stdout.startswith(b"<p>about:")


def test_timing_vp_reports_the_endpoint_stamps(lab: Any, ca_root: str, tmp_path: Path) -> None:
    """``--timing vp``: kernel stamps at the VP; the request-to-first-byte time is at
    least the path's round trip (2 x 3 ms) and far below what the program saw."""
    report = tmp_path / "t.json"
    w = run_wrapped(lab, ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_starttransfer} %{time_pretransfer}",
                          "--cacert", ca_root, f"https://www.{ZONE}/big.bin"],
                    "--timing", "vp", "--report", str(report))
    assert w.returncode == 0, w.stderr.decode()[-2000:]
    rep = json.loads(report.read_text())
    assert rep["timing"] == "vp" and isinstance(rep["clock_offset_ns"], int)
    (c,) = [c for c in rep["connections"] if c["kind"] == "tcp"]
    assert c["rx_bytes"] > BIG and c["first_tx_source"] == "kernel" and c["rx_source"] == "kernel"
    assert c["established_ns"] <= c["first_tx_ns"] < c["first_rx_ns"] <= c["last_rx_ns"]
    assert c["ttfb_ns"] >= 6e6 * 0.95, c  # one round trip at the VP: the TLS handshake's first reply
    assert c["transfer_ns"] > 0
    (dns,) = [u for u in rep["connections"] if u["kind"] == "udp"][:1]
    assert dns["rtt_ns"] >= 6e6 * 0.95 and dns["rx_datagrams"] >= 1


# ------------------------------------------------------------------------- DNS

def _answer(out: bytes) -> list[str]:
    return sorted(" ".join(ln.split()) for ln in out.decode().splitlines() if ln and not ln.startswith(";"))


@pytest.mark.parametrize("qtype,name,server", [("A", f"www.{ZONE}", NS4), ("AAAA", f"www.{ZONE}", NS6),
                                               ("TXT", f"txt.{ZONE}", NS4), ("A", f"www.{ZONE}", None)])
def test_dig_answer_section_matches_dig_on_the_vp(lab: Any, qtype: str, name: str, server: str | None) -> None:
    """``dig @SERVER NAME`` wrapped: the same answer section as dig on the VP (UDP
    through the VP's sockets, IPv6 servers too; without @SERVER, the VP's resolver)."""
    args = ["dig", "+time=3", "+tries=2", "+noall", "+answer", *(["+nottlid"] if server is None else []),
            *([f"@{server}"] if server else []), name, qtype]
    w = run_wrapped(lab, args)
    n = run_native(lab, args)
    assert w.returncode == 0 and n.returncode == 0, (w.stderr, n.stderr)
    assert _answer(w.stdout) == _answer(n.stdout) != [], (w.stdout, n.stdout)


def test_dig_over_tcp(lab: Any) -> None:
    args = ["dig", "+tcp", "+time=3", "+tries=1", "+noall", "+answer", f"@{NS4}", f"www.{ZONE}", "A"]
    w, n = run_wrapped(lab, args), run_native(lab, args)
    assert w.returncode == 0 and _answer(w.stdout) == _answer(n.stdout) != []


# -------------------------------------------------------- static and Go binaries

def test_static_busybox_wget(lab: Any) -> None:
    """A statically linked program (Debian busybox-static): no LD_PRELOAD could reach it."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox-static is not installed (scripts/setup.sh installs it)")
    out = subprocess.run(["file", "-L", busybox], capture_output=True, text=True).stdout
    assert "statically linked" in out, out
    argv = [busybox, "wget", "-q", "-O", "-", f"http://www.{ZONE}/about.html"]
    w, n = run_wrapped(lab, argv), run_native(lab, argv)
    assert w.returncode == 0, w.stderr.decode()[-2000:]
    assert w.stdout == n.stdout and w.stdout.startswith(b"<p>about:")


def test_go_binary_gron(lab: Any, ca_root: str) -> None:
    """A Go program (Debian gron: Go's own net/http and TLS, no libc sockets)."""
    gron = shutil.which("gron")
    if gron is None:
        pytest.skip("gron is not installed (scripts/setup.sh installs it)")
    env = {"SSL_CERT_FILE": ca_root}
    argv = [gron, "-m", f"https://www.{ZONE}/api/info"]
    w, n = run_wrapped(lab, argv, env=env), run_native(lab, argv, env=env)
    assert w.returncode == 0, w.stderr.decode()[-2000:]
    assert w.stdout == n.stdout and b"json.nested.ok = true;" in w.stdout


# ------------------------------------------------------ TCP: half-close and resets

TCP_SERVER = r"""
import socket, struct, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], 7000)); srv.listen(8)
log = open(sys.argv[2], "a", buffering=1)
while True:
    c, _ = srv.accept()
    mode = c.recv(16).split(b"\n")[0]
    if mode == b"halfclose":          # read to the client's FIN, then answer and close
        n = 0
        while (d := c.recv(65536)):
            n += len(d)
        c.sendall(b"got %d\n" % n); c.close()
    elif mode == b"serverfin":        # FIN first; the client may still send
        c.sendall(b"hello\n"); c.shutdown(socket.SHUT_WR)
        rest = b""
        while (d := c.recv(65536)):
            rest += d
        log.write("after-fin %r\n" % rest); c.close()
    elif mode == b"reset":            # an abortive close: RST
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); c.close()
"""

TCP_CLIENT = r"""
import socket, sys, time
mode, host = sys.argv[1], sys.argv[2]
c = socket.create_connection((host, 7000), timeout=10)
if mode == "halfclose":
    c.sendall(b"halfclose\n"); time.sleep(0.2); c.sendall(b"x" * 300000); c.shutdown(socket.SHUT_WR)
    print(c.makefile("rb").read().decode().strip())
elif mode == "serverfin":
    c.sendall(b"serverfin\n"); f = c.makefile("rb")
    print(f.read().decode().strip())  # to the server's FIN
    c.sendall(b"still-open"); c.close(); print("sent")
elif mode == "reset":
    c.sendall(b"reset\n")
    try:
        while c.recv(100):
            pass
        print("eof")
    except ConnectionResetError:
        print("reset")
"""


@pytest.fixture(scope="module")
def tcp_server(lab: Any, tmp_path_factory: Any) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("tcpsrv")
    (d / "server.py").write_text(TCP_SERVER)
    log = d / "server.log"
    log.write_text("")
    p = lab.popen("srv", ["python3", str(d / "server.py"), SRV4, str(log)])
    import time

    time.sleep(0.5)
    try:
        yield log
    finally:
        p.terminate()
        p.wait(5)


@pytest.mark.parametrize("mode,expect", [("halfclose", "got 300000"), ("serverfin", "hello\nsent"),
                                         ("reset", "reset")])
def test_tcp_half_close_and_reset_are_carried(lab: Any, tcp_server: Path, tmp_path: Path, mode: str,
                                              expect: str) -> None:
    """The program's FIN reaches the server while data still flows back; the
    server's FIN reaches the program while it may still send; a server's RST is
    the program's ECONNRESET. Natively and wrapped alike."""
    client = tmp_path / "client.py"
    client.write_text(TCP_CLIENT)
    argv = ["python3", str(client), mode, SRV4]
    w, n = run_wrapped(lab, argv), run_native(lab, argv)
    assert n.returncode == 0 and n.stdout.decode().strip() == expect, n.stderr
    assert w.returncode == 0 and w.stdout.decode().strip() == expect, w.stderr.decode()[-1500:]
    if mode == "serverfin":
        import time

        time.sleep(0.3)
        assert tcp_server.read_text().count("after-fin b'still-open'") == 2


# --------------------------------------------------------- refusals, no leaks

@pytest.mark.parametrize("family", [4, 6])
def test_ping_and_traceroute_through_the_vp(lab: Any, tmp_path: Path, family: int) -> None:
    """ICMP echo is carried where the VP grants raw ICMP: ping gets every reply, the
    report has the VP-side RTTs (kernel stamps), ``traceroute -I`` finds the native hops."""
    dst = SRV4 if family == 4 else SRV6
    report = tmp_path / "ping.json"
    w = run_wrapped(lab, ["ping", f"-{family}", "-n", "-c", "3", "-i", "0.2", "-W", "3", dst],
                    "--timing", "vp", "--report", str(report), timeout=60)
    assert w.returncode == 0 and b"3 received" in w.stdout, w.stdout + w.stderr
    echoes = [c for c in json.loads(report.read_text())["connections"] if c["kind"] == "icmp"]
    assert len(echoes) == 3 and all(e["outcome"] == "echo-reply" and e["from"] == dst for e in echoes), echoes
    assert all(e["tx_source"] == "kernel" and e["rx_source"] == "kernel" for e in echoes)
    assert all(6e6 * 0.95 <= e["rtt_ns"] < 6e6 + 20e6 for e in echoes), [e["rtt_ns"] for e in echoes]
    trace = ["traceroute", f"-{family}", "-I", "-n", "-q", "1", "-w", "3", dst]
    tw, tn = run_wrapped(lab, trace, timeout=90), run_native(lab, trace)
    hops = lambda out: [ln.split()[1] for ln in out.decode().splitlines()[1:] if ln.strip()]  # noqa: E731
    assert tw.returncode == 0 and hops(tw.stdout) == hops(tn.stdout) and hops(tn.stdout)[-1] == dst, \
        (tw.stdout, tn.stdout)


def test_unreachable_destination_is_a_connection_failure(lab: Any) -> None:
    """Nothing listens on srv:81: the program sees the connection fail, not hang."""
    w = run_wrapped(lab, ["curl", "-sS", "-m", "20", f"http://{SRV4}:81/"], timeout=40)
    assert w.returncode in (7, 35, 52, 56), (w.returncode, w.stderr)


def test_a_program_that_flushes_the_redirect_still_cannot_leave(lab: Any, tmp_path: Path) -> None:
    """Root inside the namespace can delete the REDIRECT rule; then its TCP reaches
    the TUN, which refuses it (ICMP prohibited): a failure, and no way out."""
    report = tmp_path / "r.json"
    w = run_wrapped(lab, ["sh", "-c", f"iptables -t nat -F && curl -sS -m 5 http://{SRV4}/"], "--report", str(report))
    assert w.returncode == 7, (w.returncode, w.stderr)  # curl: couldn't connect (no route to host)
    rep = json.loads(report.read_text())
    assert rep["refused"].get("tcp-unredirected", 0) >= 1 and not rep["connections"], rep


def test_bad_usage_is_a_clear_error(lab: Any) -> None:
    w = subprocess.run(wrap_cmd(lab, "--resolve", "nonsense") + ["true"], capture_output=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    assert w.returncode == 2 and b"HOST:PORT:ADDR" in w.stderr


@pytest.mark.parametrize("when", ["building", "running"])
def test_sigterm_removes_the_namespace(lab: Any, when: str) -> None:
    """SIGTERM while the namespace is being built, or while the program runs: exit
    status 128 + 15 and nothing of the namespace left behind."""
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    p = subprocess.Popen(wrap_cmd(lab) + ["sleep", "30"], env=env, stderr=subprocess.PIPE)
    name = f"mnw{p.pid}-"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = [n for n in _netns_list() if n.startswith(name)]
            if mine and (when == "building" or _netns_pids(mine[0])):
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"the wrap's namespace never got to {when!r}")
        p.terminate()
        rc = p.wait(20)
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 128 + 15, (rc, p.stderr.read() if p.stderr else b"")
    assert not any(n.startswith(name) for n in _netns_list())
    assert not [e for e in os.listdir("/etc/netns") if e.startswith(name)] if os.path.isdir("/etc/netns") else True


def test_after_sigkill_the_next_run_removes_the_leftovers(lab: Any) -> None:
    """SIGKILL leaves the namespace (no handler runs); the program there has no way
    out any more (the TUN and the listeners died with the wrap), and the next wrap
    run removes the namespace of the dead run."""
    import signal
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    p = subprocess.Popen(wrap_cmd(lab) + ["sleep", "30"], env=env, stderr=subprocess.DEVNULL)
    name, orphans = f"mnw{p.pid}-", []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = [n for n in _netns_list() if n.startswith(name)]
            if mine and _netns_pids(mine[0]):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the wrapped program never ran")
        orphans = [int(x) for x in _netns_pids(mine[0])]
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        assert mine[0] in _netns_list()
        links = subprocess.run(["ip", "-n", mine[0], "-o", "link"], capture_output=True, text=True).stdout
        assert "mnw0" not in links  # the TUN went with its descriptor: only lo is left
        r = run_wrapped(lab, ["true"])
        assert r.returncode == 0, r.stderr
        assert mine[0] not in _netns_list() and not (Path("/etc/netns") / mine[0]).exists()
    finally:
        if p.poll() is None:
            p.kill()
        for pid in orphans:  # the orphaned sleep we started
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _netns_pids(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


class Capture:
    """Every IP packet arriving at r1 (the VP's outside link), from a thread."""

    def __init__(self, netns: str) -> None:
        from . import pathlab

        with pathlab.inside(netns):
            # cooked mode: the network-layer packet, whatever the link (veth or the forwarder's TUN)
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0003))
        self.sock.settimeout(0.2)
        self.dsts: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                pkt, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            if addr[2] == socket.PACKET_OUTGOING or not pkt:
                continue
            if pkt[0] >> 4 == 4 and len(pkt) >= 20:
                self.dsts.append(socket.inet_ntop(socket.AF_INET, pkt[16:20]))
            elif pkt[0] >> 4 == 6 and len(pkt) >= 40:
                self.dsts.append(socket.inet_ntop(socket.AF_INET6, pkt[24:40]))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


async def test_guard_tcp_only_to_listed_servers(lab: Any, ca_root: str, tmp_path: Path) -> None:
    """PAM'25 Appendix B: a policy allowing TCP only to listed servers. Wrapped curl
    reaches the listed site, fails cleanly for the other, and nothing is sent to it."""
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.guard.setup import load_guard
    from marionet.wrap import WrapOptions, wrap_program

    from . import pathlab

    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[anonymous]
protocols = ["tcp", "udp"]
dst = ["{SRV4}/32", "{SRV6}/128", "{NS4}/32"]
""")
    rt = load_guard(policy)
    cap = Capture(lab.netns("r1"))
    results: dict[str, tuple[int, dict]] = {}
    try:
        with pathlab.inside(lab.netns("vp-a")):
            ep = Endpoint(EndpointConfig(name="vp-a-guarded"), rt.guard, trust=rt.trust, audit=rt.audit)
            srv = await ep.serve("127.0.0.1", 0, None)
            try:
                s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
                try:
                    ping = await wrap_program(s, WrapOptions(argv=["ping", "-n", "-c", "1", "-W", "2", SRV4],
                                                             report=tmp_path / "ping.json"))
                    results["ping"] = (ping, json.loads((tmp_path / "ping.json").read_text()))
                    for name, addr in (("listed", SRV4), ("other", OTHER4)):
                        rep = tmp_path / f"{name}.json"
                        host = "www" if name == "listed" else "other"
                        opts = WrapOptions(argv=["curl", "-sS", "-m", "15", "--cacert", ca_root,
                                                 "-o", str(tmp_path / f"{name}.body"), f"https://{host}.{ZONE}/"],
                                           resolve=[f"{host}.{ZONE}:443:{addr}"], report=rep)
                        rc = await wrap_program(s, opts)
                        results[name] = (rc, json.loads(rep.read_text()))
                finally:
                    await s.close()
            finally:
                await ep.close()
                rt.stop()
        await asyncio.sleep(0.3)
    finally:
        cap.close()
    rc, rep = results["ping"]  # no raw ICMP in this policy: refused at once, "Packet filtered"
    assert rc != 0 and rep["refused"] == {"icmp-echo": 1} and "privileges" in rep["refused_reason"], rep
    rc, rep = results["listed"]
    assert rc == 0 and (tmp_path / "listed.body").read_bytes() == STABLE["index.html"].encode()
    rc, rep = results["other"]
    assert rc in (7, 35, 56), rc  # curl: connect / TLS handshake / receive failed: a reset connection
    (c,) = rep["connections"]
    assert c["outcome"] == "denied" and c["dst"] == OTHER4 and "privileges.dst" in (c["reason"] or ""), c
    assert OTHER4 not in cap.dsts, "a packet to the unlisted server left the VP"
    assert SRV4 in cap.dsts
    assert own_namespaces() == []


async def test_endpoint_lost_mid_run_is_a_connection_failure(lab: Any, ca_root: str, tmp_path: Path) -> None:
    """The session to the endpoint ends while the program runs: its next connection
    fails at once (a reset), its next DNS query gets an ICMP error; the wrap ends
    normally with the program's status, and the namespace is gone."""
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.wrap import WrapOptions, wrap_program

    from . import pathlab

    f1, f2, out = tmp_path / "first-done", tmp_path / "session-closed", tmp_path / "out"
    url = f"https://www.{ZONE}/"
    script = (f"curl -sS -o /dev/null --cacert {ca_root} {url} && touch {f1}; "
              f"while [ ! -e {f2} ]; do sleep 0.05; done; "
              f"curl -sS -m 10 -o /dev/null --cacert {ca_root} {url}; echo curl=$? > {out}; "
              f"dig +time=2 +tries=1 @{NS4} www.{ZONE} >/dev/null; echo dig=$? >> {out}")
    with pathlab.inside(lab.netns("vp-a")):
        ep = Endpoint(EndpointConfig(name="vp-a-lost"))
        srv = await ep.serve("127.0.0.1", 0, None)
        try:
            s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
            run = asyncio.ensure_future(wrap_program(s, WrapOptions(argv=["sh", "-c", script],
                                                                    resolve=[f"www.{ZONE}:443:{SRV4}"])))
            for _ in range(400):
                if f1.exists() or run.done():
                    break
                await asyncio.sleep(0.05)
            assert f1.exists(), "the first fetch did not succeed"
            await s.close()
            f2.touch()
            rc = await asyncio.wait_for(run, 60)
        finally:
            await ep.close()
    assert rc == 0
    lines = dict(ln.split("=") for ln in out.read_text().split())
    assert lines["curl"] in ("7", "35", "56"), lines
    assert lines["dig"] != "0", lines
    assert own_namespaces() == []
