"""Each measurement subcommand against the tool it imitates, on the same lab
path (needs root)::

    client ── r1 ── r2 ── r3 ── target (NSD for lab.example, nginx)

The CLI runs inside the client's namespace (``ip netns exec client python
-m marionet …``) with its embedded default — an in-process controller and
a local endpoint — so the probes start where the classic tool's do, and
both outputs are compared: ping vs iputils ``ping`` (replies, addresses,
statistics line, exit status), trace vs Butskoy ``traceroute`` (hop
addresses), dns vs ``dig`` (header flags, status, answer section), http
vs ``curl -i`` (status line, header names, body).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any, Iterator

import pytest

from marionet.lab import parse_spec
from marionet.lab.pytest_plugin import make_lab
from marionet.results import Ping, Trace, loads

pytestmark = pytest.mark.root

SPEC = """
[lab]
name = "clilab"
controller = false

[[host]]
name = "client"

[[router]]
name = "r1"

[[router]]
name = "r2"

[[router]]
name = "r3"

[[host]]
name = "target"

[[link]]
a = "client"
b = "r1"

[[link]]
a = "r1"
b = "r2"

[[link]]
a = "r2"
b = "r3"

[[link]]
a = "r3"
b = "target"

[[service]]
host = "target"
kind = "dns"
options = { zone = "lab.example", ns = ["ns1"], records = [
  ["ns1", "A", "192.0.2.53"], ["www", "A", "192.0.2.80"], ["www", "AAAA", "2001:db8::80"],
  ["@", "MX", "10 mail"], ["mail", "A", "192.0.2.25"], ["@", "TXT", "marionet lab"],
] }

[[service]]
host = "target"
kind = "http"
options = { files = { "index.html" = "hello from the lab\\n", "data.txt" = "one\\ntwo\\n" } }
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(parse_spec(SPEC)) as lab:
        yield lab


def in_client(lab: Any, argv: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", lab.netns("client"), *argv], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, COLUMNS="200"))


def marionet(lab: Any, *args: str) -> subprocess.CompletedProcess:
    return in_client(lab, [sys.executable, "-m", "marionet", *args])


# ------------------------------------------------------------------- ping
def _reply_lines(text: str) -> list[tuple[str, str, str, str]]:
    """(bytes, address, icmp_seq, ttl) of each "64 bytes from A: icmp_seq=N ttl=T time=X ms" line."""
    return re.findall(r"^(\d+) bytes from (\S+?): icmp_seq=(\d+) ttl=(\d+) time=[\d.]+ ms$", text, re.M)


def _stats_line(text: str) -> str:
    line = next(ln for ln in text.splitlines() if "packets transmitted" in ln)
    return line.split(", time")[0]  # iputils adds the elapsed time; marionet does not


@pytest.mark.parametrize("family", [4, 6])
def test_ping_equals_iputils_ping(lab: Any, family: int) -> None:
    dst = lab.addr("target", family)
    ours = marionet(lab, "ping", dst, "-c", "3", "-i", "0.2")
    theirs = in_client(lab, ["ping", "-n", "-c", "3", "-i", "0.2", dst])
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stdout)
    mine, ref = _reply_lines(ours.stdout), _reply_lines(theirs.stdout)
    assert len(mine) == len(ref) == 3, (ours.stdout, theirs.stdout)
    assert mine == ref  # same size, responder, sequence numbers 1..3 and reply TTL
    assert {(a, t) for _, a, _, t in mine} == {(dst, "61")}  # 64 - 3 routers
    assert _stats_line(ours.stdout) == _stats_line(theirs.stdout) == \
        "3 packets transmitted, 3 received, 0% packet loss"
    head = ours.stdout.splitlines()[0]
    assert head.startswith(f"PING {dst} ({dst})" if family == 4 else f"PING {dst}({dst})")
    assert theirs.stdout.splitlines()[0].split(" ")[2].rstrip(":") in head  # iputils' "56(84)" / "56"


def test_ping_without_replies_exits_1_like_iputils(lab: Any) -> None:
    """An unassigned address on the target's subnet: r3's neighbour lookup
    fails, so neither tool hears an echo reply; both exit 1."""
    silent = re.sub(r"\.\d+$", ".200", lab.addr("target", 4))
    ours = marionet(lab, "ping", silent, "-c", "2", "-i", "0.2", "-W", "4")
    theirs = in_client(lab, ["ping", "-n", "-c", "2", "-i", "0.2", "-W", "4", silent])
    assert ours.returncode == theirs.returncode == 1, (ours.stdout, ours.stderr, theirs.stdout)
    assert _stats_line(ours.stdout).startswith("2 packets transmitted, 0 received")
    assert _stats_line(theirs.stdout).startswith("2 packets transmitted, 0 received")


def test_ping_ttl_exceeded_lines_equal_iputils(lab: Any) -> None:
    """TTL 2 dies at r2: both tools print the same "From A icmp_seq=1 Time
    to live exceeded" line and statistics, and exit 1 (no echo reply)."""
    dst = lab.addr("target", 4)
    ours = marionet(lab, "ping", dst, "-c", "1", "-t", "2")
    theirs = in_client(lab, ["ping", "-n", "-c", "1", "-t", "2", dst])
    assert ours.returncode == theirs.returncode == 1
    from_lines = [ln for ln in ours.stdout.splitlines() if ln.startswith("From ")]
    assert from_lines == [ln for ln in theirs.stdout.splitlines() if ln.startswith("From ")]
    assert len(from_lines) == 1 and "Time to live exceeded" in from_lines[0]
    assert _stats_line(ours.stdout) == _stats_line(theirs.stdout) == \
        "1 packets transmitted, 0 received, +1 errors, 100% packet loss"


# ------------------------------------------------------------------ trace
def _hops(text: str) -> list[tuple[int, str]]:
    """(TTL, first address) of each hop line of traceroute -n output."""
    out = []
    for ln in text.splitlines()[1:]:
        m = re.match(r"^\s*(\d+)\s+(\S+)", ln)
        if m:
            out.append((int(m.group(1)), m.group(2)))
    return out


@pytest.mark.parametrize("family", [4, 6])
def test_trace_equals_traceroute(lab: Any, family: int) -> None:
    dst = lab.addr("target", family)
    ours = marionet(lab, "trace", dst, "-w", "2")
    theirs = in_client(lab, ["traceroute", "-n", f"-{family}", "-q", "1", "-w", "2", dst])
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    assert _hops(ours.stdout) == _hops(theirs.stdout), (ours.stdout, theirs.stdout)
    assert len(_hops(ours.stdout)) == 4 and _hops(ours.stdout)[-1] == (4, dst)
    assert ours.stdout.splitlines()[0].startswith(f"traceroute to {dst} ({dst})")


def test_trace_several_targets_as_json_lines(lab: Any, tmp_path: Any) -> None:
    out = tmp_path / "t.warts.gz"
    dsts = [lab.addr("target", 4), lab.addr("target", 6)]
    r = marionet(lab, "trace", *dsts, "--json", "-o", str(out))
    assert r.returncode == 0, r.stderr
    traces = [loads(ln) for ln in r.stdout.splitlines()]
    assert all(isinstance(t, Trace) for t in traces) and sorted(str(t.dst) for t in traces) == sorted(dsts)
    assert all(str(t.hop(t.hop_count).src) == str(t.dst) for t in traces)
    assert r.stderr == ""  # no progress bar: stderr is not a terminal
    from marionet import File

    with File(out) as f:
        assert sorted(str(t.dst) for t in f if isinstance(t, Trace)) == sorted(dsts)


# -------------------------------------------------------------------- dns
def _section(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    try:
        i = lines.index(f";; {name} SECTION:")
    except ValueError:
        return []
    out = []
    for ln in lines[i + 1:]:
        if not ln.strip():
            break
        out.append(" ".join(ln.split()))
    return out


def _header(text: str) -> tuple[str, str]:
    status = re.search(r"status: (\w+)", text).group(1)  # type: ignore[union-attr]
    flags = re.search(r";; flags: ([a-z ]+);", text).group(1)  # type: ignore[union-attr]
    return status, flags


@pytest.mark.parametrize("qname,qtype", [("www.lab.example", "A"), ("www.lab.example", "AAAA"),
                                         ("lab.example", "MX"), ("lab.example", "TXT"),
                                         ("lab.example", "NS"), ("nope.lab.example", "A")])
def test_dns_equals_dig(lab: Any, qname: str, qtype: str) -> None:
    server = lab.addr("target", 4)
    ours = marionet(lab, "dns", qname, "--server", server, "-t", qtype)
    theirs = in_client(lab, ["dig", f"@{server}", qname, qtype, "+nocookie", "+noedns"])
    assert ours.returncode == theirs.returncode == 0, (ours.stdout, ours.stderr, theirs.stdout)
    assert _header(ours.stdout) == _header(theirs.stdout)
    assert "MSG SIZE  rcvd: " in ours.stdout and \
        re.findall(r"MSG SIZE  rcvd: \d+", ours.stdout) == re.findall(r"MSG SIZE  rcvd: \d+", theirs.stdout)
    for section in ("QUESTION", "ANSWER", "AUTHORITY", "ADDITIONAL"):
        assert _section(ours.stdout, section) == _section(theirs.stdout, section), section
    if qname.startswith("nope"):
        assert _header(ours.stdout)[0] == "NXDOMAIN"
    else:
        assert _section(ours.stdout, "ANSWER"), ours.stdout
    assert f";; SERVER: {server}#53({server}) (UDP)" in ours.stdout


def test_dns_over_tcp_and_ipv6(lab: Any) -> None:
    server = lab.addr("target", 6)
    ours = marionet(lab, "dns", "www.lab.example", "--server", server, "--tcp")
    theirs = in_client(lab, ["dig", f"@{server}", "www.lab.example", "A", "+tcp", "+noedns"])
    assert ours.returncode == 0 and _section(ours.stdout, "ANSWER") == _section(theirs.stdout, "ANSWER")
    assert [ln.split()[-1] for ln in _section(ours.stdout, "ANSWER")] == ["192.0.2.80"]
    assert f"({server}) (TCP)" in ours.stdout


# ------------------------------------------------------------------- http
def _curl_parts(text: str) -> tuple[str, list[str], str]:
    head, _, body = text.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    return lines[0], sorted(ln.split(":", 1)[0].lower() for ln in lines[1:]), body


@pytest.mark.parametrize("path,family", [("/", 4), ("/data.txt", 4), ("/data.txt", 6), ("/missing", 4)])
def test_http_equals_curl_i(lab: Any, path: str, family: int) -> None:
    addr = lab.addr("target", family)
    host = addr if family == 4 else f"[{addr}]"
    url = f"http://{host}{path}"
    ours = marionet(lab, "http", url)
    theirs = in_client(lab, ["curl", "-si", url])
    assert ours.returncode == theirs.returncode == 0, (ours.stderr, theirs.stderr)
    mine, ref = _curl_parts(ours.stdout), _curl_parts(theirs.stdout)
    assert mine[0] == ref[0]  # status line, e.g. "HTTP/1.1 200 OK"
    assert mine[2].rstrip("\n") == ref[2].rstrip("\n")  # body
    assert mine[1] == ref[1]  # the same header fields (values such as Date differ)
    if path == "/data.txt":
        assert mine[2] == ref[2] == "one\ntwo\n"


def test_http_connection_refused_exits_nonzero_like_curl(lab: Any) -> None:
    url = f"http://{lab.addr('target', 4)}:81/"
    ours = marionet(lab, "http", url, "--limit-time", "5")
    theirs = in_client(lab, ["curl", "-si", "--max-time", "5", url])
    assert ours.returncode == 1 and theirs.returncode != 0
    assert ours.stdout.startswith("curl: (") and url in ours.stdout


@pytest.mark.parametrize("command,args", [("ping", ["-c", "2", "-i", "0.1"]), ("trace", [])])
def test_every_placement_sees_the_same_path(lab: Any, command: str, args: list[str]) -> None:
    """endpoint (the VP runs it), remote (this process over the VP's packet
    interface) and native (this process, no VP): same source, same replies."""
    dst = lab.addr("target", 4)
    got = {}
    for placement in ("endpoint", "remote", "native"):
        r = marionet(lab, command, dst, *args, "--json", "--placement", placement)
        assert r.returncode == 0, r.stderr
        res = loads(r.stdout)
        if command == "ping":
            assert isinstance(res, Ping)
            got[placement] = (str(res.src), res.nreplies, {(str(x.src), x.reply_ttl) for x in res.replies})
        else:
            assert isinstance(res, Trace)
            got[placement] = (str(res.src), [str(h.src) if h else None for h in res.hops()])
    assert got["endpoint"] == got["remote"] == got["native"], got
    if command == "ping":
        assert got["native"] == (lab.addr("client", 4), 2, {(dst, 61)})
    else:
        assert len(got["native"][1]) == 4 and got["native"][1][-1] == dst


# ------------------------------------- primitives from the other branches
def _registered(name: str) -> bool:
    from marionet.measure.registry import PRIMITIVES

    return name in PRIMITIVES


def _has_ip_options() -> bool:
    from marionet.measure.ping import plan_ping
    import inspect

    return "ip_rr" in inspect.signature(plan_ping).parameters


@pytest.mark.skipif(not _has_ip_options(), reason="ping's ip_rr/ip_ts arrive with the ping options work")
def test_ping_record_route_equals_iputils(lab: Any) -> None:
    """-R on the lab path: both tools list the routers' addresses in the
    RR block and say "(same route)" for the second reply. (iputils' kernel
    records the client's own address when it sends; marionet builds its
    own header, so the client appears where the reply comes back in.)"""
    dst = lab.addr("target", 4)
    ours = marionet(lab, "ping", dst, "-c", "2", "-i", "0.2", "-R", "--placement", "native")
    theirs = in_client(lab, ["ping", "-n", "-c", "2", "-i", "0.2", "-R", dst])
    assert ours.returncode == theirs.returncode == 0, ours.stderr

    def rr(text: str) -> set[str]:
        lines = text.splitlines()
        i = next(k for k, ln in enumerate(lines) if ln.startswith("RR: "))
        out = set()
        for ln in lines[i:]:
            if not ln.strip():
                break
            out.add(ln.split("\t")[-1])
        return out

    assert rr(ours.stdout) == rr(theirs.stdout) and {dst, lab.addr("client", 4)} <= rr(ours.stdout)
    assert ours.stdout.count("(same route)") == theirs.stdout.count("(same route)") == 1


@pytest.mark.skipif(not _registered("tracelb"), reason="tracelb arrives with its own branch")
def test_tracelb_links_follow_the_trace(lab: Any) -> None:
    """One path, no balancer: the MDA's links are the trace's consecutive hops."""
    dst = lab.addr("target", 4)
    lb = marionet(lab, "tracelb", dst)
    tr = marionet(lab, "trace", dst)
    assert lb.returncode == tr.returncode == 0, lb.stderr
    hops = [a for _, a in _hops(tr.stdout)]
    links = [tuple(ln.split(" -> ")) for ln in lb.stdout.splitlines() if " -> " in ln]
    assert links == list(zip(hops, hops[1:]))
    assert lb.stdout.startswith(f"tracelb from {lab.addr('client', 4)} to {dst}")


@pytest.mark.skipif(not _registered("udpprobe"), reason="udpprobe arrives with its own branch")
def test_udpprobe_asks_the_lab_dns_server(lab: Any) -> None:
    dst = lab.addr("target", 4)
    query = "abcd01000001000000000000036c6162076578616d706c650000010001"  # lab.example A, id 0xabcd
    r = marionet(lab, "udpprobe", dst, "53", "--payload", query)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"reply from {dst}:53" in r.stdout and "ab cd 85 00" in r.stdout  # our id, QR|AA|RD
    closed = marionet(lab, "udpprobe", dst, "54", "--payload", query)
    assert closed.returncode == 1 and "no reply" in closed.stdout  # request/response: silence is failure


@pytest.mark.skipif(not _registered("sniff"), reason="sniff arrives with its own branch")
def test_sniff_sees_what_ping_sends(lab: Any) -> None:
    """sniff for the client's ICMP while iputils ping runs: the echo
    replies it captures are the ones ping counted."""
    import time

    client, dst = lab.addr("client", 4), lab.addr("target", 4)
    p = subprocess.Popen(["ip", "netns", "exec", lab.netns("client"), sys.executable, "-m", "marionet", "sniff",
                          "--src", client, "--filter", "icmp", "--count", "3", "--time", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0)  # the embedded controller and the capture start
        ping = in_client(lab, ["ping", "-n", "-c", "3", "-i", "0.3", dst])
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert ping.returncode == 0 and p.returncode == 0, err
    replies = [ln for ln in out.splitlines() if f"IP {dst} > {client}: ICMP echo reply" in ln]
    assert len(replies) == 3, out


@pytest.mark.skipif(not _registered("tbit"), reason="tbit arrives with its own branch")
def test_tbit_against_linux_tcp(lab: Any) -> None:
    """ECN and SACK against the lab's nginx with the client's RSTs dropped
    for the test's port (as tbit needs): the server's results, exit 0;
    without the rule the handshake is reset: tcp-rst, the test did not run, exit 1."""
    dst = lab.addr("target", 4)
    for sport in (40001, 40002):
        rule = ["iptables", "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "--sport", str(sport),
                "-j", "DROP"]
        assert in_client(lab, rule).returncode == 0
    ecn = marionet(lab, "tbit", dst, "-t", "ecn", "-u", f"http://{dst}/", "--sport", "40001")
    sack = marionet(lab, "tbit", dst, "-t", "sack-rcvr", "-u", f"http://{dst}/", "--sport", "40002")
    assert ecn.returncode == sack.returncode == 0, (ecn.stdout, sack.stdout)
    assert ecn.stdout.startswith(f"tbit ecn from {lab.addr('client', 4)}:40001 to {dst}:80")
    assert ": ecn-success," in ecn.stdout.splitlines()[0]
    assert ": sack-rcvr-success," in sack.stdout.splitlines()[0]
    reset = marionet(lab, "tbit", dst, "-t", "ecn", "--sport", "40003")
    assert reset.returncode == 1 and ": tcp-rst," in reset.stdout.splitlines()[0]
