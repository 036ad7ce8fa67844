"""The measurement subcommands (marionet.commands): options → do_* parameters,
one-line errors and exit statuses, --json / -o, and the classic-tool text
formatters (results.text) on hand-made results."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from marionet import File
from marionet.cli import build_parser, main
from marionet.commands.subcommands import COMMANDS
from marionet.results import (DnsQuery, DnsResult, DnsRR, Http, HttpBuf, Ping, PingReply, Trace, TraceHop,
                              loads)
from marionet.results.dns import DnsMX

MS = 1_000_000
T0 = 1_796_000_000 * 1_000_000_000


def jobs(*argv: str) -> list[tuple[str, dict]]:
    args = build_parser().parse_args(list(argv))
    _, _, build, _ = COMMANDS[args.command]
    return [(j.primitive, j.params) for j in build(args)]


def run(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marionet", *argv], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, COLUMNS="120"))


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("argv,expected", [
    (["ping", "127.0.0.1"], [("ping", {"dst": "127.0.0.1"})]),
    (["ping", "127.0.0.1", "::1", "-c", "3", "-i", "0.5", "-W", "2", "-P", "udp", "-s", "100", "-t", "9",
      "--tos", "4", "-R", "-T", "tsonly", "--sport", "1000", "--dport", "2000"],
     [("ping", {"dst": d, "attempts": 3, "wait_probe": 0.5, "wait_timeout": 2.0, "method": "udp", "size": 100,
                "ttl": 9, "tos": 4, "ip_rr": True, "ip_ts": "tsonly", "sport": 1000, "dport": 2000})
      for d in ("127.0.0.1", "::1")]),
    (["trace", "10.0.0.1", "-P", "icmp-paris", "-q", "3", "-m", "20", "-f", "2", "-g", "4", "-l", "0",
      "-w", "1.5", "-N", "16", "--sport", "5", "--dport", "6"],
     [("trace", {"dst": "10.0.0.1", "method": "icmp-paris", "attempts": 3, "hoplimit": 20, "firsthop": 2,
                 "gaplimit": 4, "loops": 0, "wait_timeout": 1.5, "squeries": 16, "sport": 5, "dport": 6})]),
    (["tracelb", "10.0.0.1", "-P", "icmp-echo", "-c", "99", "-q", "1", "-g", "2"],
     [("tracelb", {"dst": "10.0.0.1", "method": "icmp-echo", "confidence": 99, "attempts": 1, "gaplimit": 2})]),
    (["dns", "a.example", "b.example", "--server", "10.0.0.53", "-t", "MX", "--class", "CH", "--tcp",
      "--no-rd", "--nsid"],
     [("dns", {"qname": q, "server": "10.0.0.53", "qtype": "MX", "qclass": "CH", "tcp": True, "rd": False,
               "nsid": True}) for q in ("a.example", "b.example")]),
    (["dns", "a.example"], [("dns", {"qname": "a.example"})]),
    (["http", "https://www.example/x", "--dst", "10.0.0.80", "-H", "X-A: 1", "-H", "Accept:  */*", "-k",
      "--limit-time", "5"],
     [("http", {"dst": "10.0.0.80", "url": "https://www.example/x", "headers": [("X-A", "1"), ("Accept", "*/*")],
                "insecure": True, "limit_time": 5.0})]),
    (["udpprobe", "10.0.0.123", "123", "--payload", "e3000000", "-q", "2", "--stop-count", "1"],
     [("udpprobe", {"dst": "10.0.0.123", "dport": 123, "payload": "e3000000", "attempts": 2, "stop_count": 1})]),
    (["sniff", "--src", "10.0.0.1", "--icmp-id", "77", "--count", "5", "--time", "3"],
     [("sniff", {"src": "10.0.0.1", "icmp_id": 77, "limit_pkt_count": 5, "limit_time": 3.0})]),
    (["sniff", "--src", "10.0.0.1", "--filter", "icmp", "--time", "1"],
     [("sniff", {"src": "10.0.0.1", "expr": "icmp", "limit_time": 1.0})]),
    (["tbit", "10.0.0.80", "-t", "sack-rcvr", "-u", "http://www.example/", "--sport", "40001", "--dport", "8080"],
     [("tbit", {"dst": "10.0.0.80", "method": "sack-rcvr", "url": "http://www.example/", "sport": 40001,
                "dport": 8080})]),
])
def test_options_map_onto_do_parameters(argv, expected):
    assert jobs(*argv) == expected


def test_every_primitive_has_a_subcommand_with_the_common_options():
    parser = build_parser()
    for name in ("ping", "trace", "tracelb", "dns", "http", "udpprobe", "sniff", "tbit"):
        extra = {"udpprobe": ["53"], "sniff": [], "http": []}.get(name, [])
        target = [] if name == "sniff" else ["http://127.0.0.1/"] if name == "http" else ["127.0.0.1"]
        own = ["--icmp-id", "1", "--src", "127.0.0.1"] if name == "sniff" else []
        a = parser.parse_args([name, *target, *extra, *own, "--tag", "k=v", "--placement", "remote",
                               "--controller", "h:1", "--ca", "c", "--cert", "e", "--key", "k",
                               "--controller-insecure", "-o", "f.json", "--json"])
        assert (a.tag, a.placement, a.controller, a.controller_insecure, a.output, a.json) == \
            (["k=v"], "remote", "h:1", True, "f.json", True)


def test_http_insecure_is_curls_k_and_elsewhere_the_controllers():
    parser = build_parser()
    a = parser.parse_args(["http", "http://127.0.0.1/", "--insecure"])
    assert a.insecure is True and a.controller_insecure is False
    a = parser.parse_args(["ping", "127.0.0.1", "--insecure"])
    assert a.controller_insecure is True


# ------------------------------------------------------ errors, exit codes
@pytest.mark.parametrize("argv,message", [
    (["ping", "127.0.0.1", "-c", "0"], "marionet ping: error: attempts must be within 1 - 65535, got 0"),
    (["ping", "127.0.0.1", "-P", "bogus"], "marionet ping: error: unknown ping method 'bogus'"),
    (["ping", "no-such-address"], "marionet ping: error: "),
    (["trace", "127.0.0.1", "-q", "99"], "marionet trace: error: attempts must be within 1 - 20, got 99"),
    (["dns", "example.com", "-t", "NOPE"], "marionet dns: error: "),
    (["http", "ftp://127.0.0.1/"], "marionet http: error: url scheme must be http or https, got 'ftp'"),
    (["http", "http://127.0.0.1/", "-H", "nocolon"], "marionet http: error: -H wants 'NAME: VALUE', got 'nocolon'"),
    (["ping", "127.0.0.1", "--tag", "novalue"], "marionet ping: error: --tag wants KEY=VALUE, got 'novalue'"),
    (["ping", "127.0.0.1", "--ca", "x.pem"], "marionet ping: error: --ca/--cert/--key/--controller-insecure "
                                              "need --controller"),
    (["ping", "127.0.0.1", "--placement", "native", "--vp", "x"],
     "marionet ping: error: --placement native runs in this process, without a VP"),
    (["ping", "127.0.0.1", "--vp", "nobody"], "marionet ping: error: "),
    (["ping", "127.0.0.1", "-o", "/nonexistent-dir/x.json"], "marionet ping: error: cannot write "),
])
def test_bad_arguments_are_one_line_errors_with_status_2(capsys, argv, message):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(message) and err.count("\n") == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["tracelb", "127.0.0.1", "-c", "90"], "invalid choice: 90"),
    (["tbit", "127.0.0.1", "-t", "bogus"], "invalid choice: 'bogus'"),
    (["sniff", "--src", "127.0.0.1", "--time", "1"], "one of the arguments --icmp-id --filter is required"),
    (["sniff", "--icmp-id", "1"], "the following arguments are required: --src"),
    (["ping", "127.0.0.1", "--vp", "a", "--all"], "not allowed with argument"),
    (["ping", "127.0.0.1", "-c", "x"], "invalid int value: 'x'"),
])
def test_argparse_errors_are_status_2(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"marionet {argv[0]}: error: " in err and message in err


def test_ping_embedded_text_status_0():
    r = run("ping", "127.0.0.1", "-c", "2", "-i", "0.1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "PING 127.0.0.1 (127.0.0.1) from 127.0.0.1 vp local: 56(84) bytes of data."
    assert all(re.fullmatch(r"64 bytes from 127\.0\.0\.1: icmp_seq=[12] ttl=64 time=\d+\.\d{3} ms", ln)
               for ln in lines[1:3]), lines
    assert lines[3:6] == ["", "--- 127.0.0.1 ping statistics ---",
                          "2 packets transmitted, 2 received, 0% packet loss"]
    assert re.fullmatch(r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", lines[6])
    assert r.stderr == ""  # no progress bar when stderr is not a terminal


def test_json_lines_and_output_files(tmp_path):
    gz, warts = tmp_path / "p.json.gz", tmp_path / "t.warts"
    r = run("ping", "127.0.0.1", "::1", "-c", "1", "--json", "-o", str(gz))
    assert r.returncode == 0, r.stderr
    got = [loads(line) for line in r.stdout.splitlines()]
    assert sorted(str(p.dst) for p in got) == ["127.0.0.1", "::1"] and all(isinstance(p, Ping) for p in got)
    assert gz.read_bytes()[:2] == b"\x1f\x8b"
    with File(gz) as f:
        assert sorted(str(p.dst) for p in f if isinstance(p, Ping)) == ["127.0.0.1", "::1"]
    r = run("trace", "127.0.0.1", "-o", str(warts))
    assert r.returncode == 0 and r.stdout.startswith("traceroute to 127.0.0.1 (127.0.0.1)"), r.stderr
    with File(warts) as f:
        traces = [t for t in f if isinstance(t, Trace)]
    assert [str(t.hop(1).src) for t in traces] == ["127.0.0.1"]


def test_many_targets_are_fed_within_the_endpoints_task_limit():
    """More targets than an endpoint runs at once in a session (64): the
    CLI keeps a window per VP, so every one is measured."""
    targets = [f"127.0.{i // 250}.{i % 250 + 1}" for i in range(100)]
    r = run("ping", *targets, "-c", "2", "-i", "0.5", "-W", "0.2", "--json")  # each task lasts 0.5 s
    assert r.returncode == 0, r.stderr
    assert sorted(str(loads(ln).dst) for ln in r.stdout.splitlines()) == sorted(targets)


@pytest.mark.parametrize("placement,vp", [("native", "native"), ("remote", "local"), ("endpoint", "local")])
def test_placements(placement, vp):
    r = run("ping", "127.0.0.1", "-c", "1", "--placement", placement)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"PING 127.0.0.1 (127.0.0.1) from 127.0.0.1 vp {vp}:")


def test_bad_params_under_remote_placement_are_argument_errors(capsys):
    assert main(["dns", "x.example", "--placement", "remote", "-t", "A", "--class", "XX"]) == 2
    assert capsys.readouterr().err.startswith("marionet dns: error: ")


def test_failed_measurement_status_1():
    # nothing listens on 127.0.0.1:53 (TCP): refused, dig's "communications error"
    r = run("dns", "example.com", "--server", "127.0.0.1", "--tcp")
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines()[1].startswith(";; communications error to 127.0.0.1#53: ")


def test_exit_status_predicates_follow_the_classic_tools():
    _, _, _, ping_ok = COMMANDS["ping"]
    _, _, _, dns_ok = COMMANDS["dns"]
    _, _, _, http_ok = COMMANDS["http"]
    _, _, _, trace_ok = COMMANDS["trace"]
    assert not ping_ok(Ping(dst="192.0.2.1", start_ns=T0, ping_sent=3))
    assert ping_ok(_ping())
    assert not dns_ok(DnsResult(dst="192.0.2.53", qname="x", start_ns=T0, stop_reason="timeout"))
    assert dns_ok(_dns())
    assert not http_ok(Http(dst="192.0.2.80", url="http://x/", start_ns=T0, stop_reason="error"))
    assert http_ok(_http())
    assert trace_ok(_trace())  # traceroute exits 0 whatever the path did
    assert not trace_ok(Trace(dst="192.0.2.1", start_ns=T0, stop_reason="error"))


# --------------------------------------------------------- text formats
def _ping() -> Ping:
    rep = [PingReply(src="192.0.2.1", attempt=0, tx_ns=T0, rtt_ns=int(1.5 * MS), reply_size=84, reply_ttl=60,
                     icmp_type=0, icmp_code=0),
           PingReply(src="192.0.2.1", attempt=0, tx_ns=T0, rtt_ns=int(2.5 * MS), reply_size=84, reply_ttl=60,
                     icmp_type=0, icmp_code=0),
           PingReply(src="198.51.100.1", attempt=1, tx_ns=T0 + 1000 * MS, rtt_ns=MS, reply_size=56,
                     reply_ttl=250, icmp_type=11, icmp_code=0)]
    return Ping(dst="192.0.2.1", src="10.0.0.1", start_ns=T0, ping_sent=3, probe_size=84, replies=rep, vp="vp-a")


def test_ping_text_is_iputils():
    assert _ping().to_text().splitlines() == [
        "PING 192.0.2.1 (192.0.2.1) from 10.0.0.1 vp vp-a: 56(84) bytes of data.",
        "64 bytes from 192.0.2.1: icmp_seq=1 ttl=60 time=1.500 ms",
        "64 bytes from 192.0.2.1: icmp_seq=1 ttl=60 time=2.500 ms (DUP!)",
        "From 198.51.100.1 icmp_seq=2 Time to live exceeded",
        "",
        "--- 192.0.2.1 ping statistics ---",
        "3 packets transmitted, 1 received, +1 duplicates, +1 errors, 66.6667% packet loss",
        "rtt min/avg/max/mdev = 1.500/2.000/2.500/0.500 ms",
    ]
    six = Ping(dst="2001:db8::1", start_ns=T0, ping_sent=1, probe_size=104, method="udp", vp="v",
               replies=[PingReply(src="2001:db8::1", attempt=0, tx_ns=T0, rtt_ns=MS, reply_size=76,
                                  reply_proto="icmp", icmp_type=1, icmp_code=4, reply_ttl=64)])
    assert six.to_text().splitlines()[:2] == [
        "PING 2001:db8::1(2001:db8::1) from vp v: 56 data bytes, method udp",
        "36 bytes from 2001:db8::1: seq=1 ttl=64 time=1.000 ms"]
    silent = Ping(dst="192.0.2.9", start_ns=T0, ping_sent=2, probe_size=84).to_text().splitlines()
    assert silent[0] == "PING 192.0.2.9 (192.0.2.9) 56(84) bytes of data."  # no source known: as iputils
    assert silent[-1] == "2 packets transmitted, 0 received, 100% packet loss"


_HAS_IP_OPTIONS = "v4rr" in getattr(PingReply, "__dataclass_fields__", {})


@pytest.mark.skipif(not _HAS_IP_OPTIONS, reason="PingReply.v4rr/v4ts arrive with the ping options work")
def test_ping_text_record_route_and_timestamps_are_iputils():
    from marionet.results.ping import PingV4TS

    def reply(attempt, reply_size=124, **kw):
        return PingReply(src="192.0.2.1", attempt=attempt, tx_ns=T0, rtt_ns=MS, reply_size=reply_size,
                         reply_ttl=61, icmp_type=0, icmp_code=0, **kw)
    rr = ("10.0.0.1", "10.0.1.1", "192.0.2.1")
    p = Ping(dst="192.0.2.1", start_ns=T0, ping_sent=2, probe_size=124, flags=("v4rr",),
             replies=[reply(0, v4rr=rr), reply(1, v4rr=rr)])
    assert p.to_text().splitlines()[:8] == [
        "PING 192.0.2.1 (192.0.2.1) 56(124) bytes of data.",
        "64 bytes from 192.0.2.1: icmp_seq=1 ttl=61 time=1.000 ms",
        "RR: \t10.0.0.1", "\t10.0.1.1", "\t192.0.2.1", "",
        "64 bytes from 192.0.2.1: icmp_seq=2 ttl=61 time=1.000 ms\t(same route)", ""]
    ts = Ping(dst="192.0.2.1", start_ns=T0, ping_sent=1, probe_size=120, flags=("tsandaddr",),
              replies=[reply(0, v4ts=PingV4TS(tss=(1000, 1002, 1002), ips=rr), reply_size=120)])
    assert ts.to_text().splitlines()[:6] == [
        "PING 192.0.2.1 (192.0.2.1) 56(120) bytes of data.",
        "64 bytes from 192.0.2.1: icmp_seq=1 ttl=61 time=1.000 ms",
        "TS: \t10.0.0.1\t1000 absolute", "\t10.0.1.1\t2", "\t192.0.2.1\t0", ""]


def _trace() -> Trace:
    def hop(src, ttl, pid, ms, **kw):
        return TraceHop(src=src, probe_ttl=ttl, probe_id=pid, tx_ns=T0, rtt_ns=int(ms * MS), icmp_type=11, **kw)
    return Trace(dst="192.0.2.9", src="10.0.0.1", start_ns=T0, attempts=3, probe_size=44, vp="vp-a",
                 stop_reason="completed", hop_records=[
                     hop("10.0.1.1", 1, 1, 0.1),
                     hop("10.0.2.1", 3, 2, 0.3), hop("10.0.2.2", 3, 3, 0.35),
                     TraceHop(src="192.0.2.9", probe_ttl=4, probe_id=1, tx_ns=T0, rtt_ns=MS, icmp_type=3,
                              icmp_code=3),
                     hop("10.0.9.9", 5, 1, 2.0, icmp_code=0)])


def test_trace_text_is_butskoy_traceroute():
    t = _trace()
    t.hop_records[-1].icmp_type = 3  # a host unreachable from a router at TTL 5: "!H"
    t.hop_records[-1].icmp_code = 1
    assert t.to_text().splitlines() == [
        "traceroute to 192.0.2.9 (192.0.2.9) from 10.0.0.1 vp vp-a, 255 hops max, 44 byte packets, "
        "method udp-paris",
        " 1  10.0.1.1  0.100 ms",
        " 2  * * *",
        " 3  * 10.0.2.1  0.300 ms 10.0.2.2  0.350 ms",
        " 4  192.0.2.9  1.000 ms",
        " 5  10.0.9.9  2.000 ms !H",
    ]


def _dns() -> DnsResult:
    q = DnsQuery(id=4242, tx_ns=T0, rx_ns=T0 + 12 * MS, rcode=0, flags=["RD", "AA"], wire=bytes(80),
                 an=[DnsRR(name="lab.example", rtype="MX", ttl=300, mx=DnsMX(10, "mail.lab.example")),
                     DnsRR(name="lab.example", rtype="TXT", ttl=300, txt=['say "hi"'])],
                 ns=[DnsRR(name="lab.example", rtype="NS", ttl=3600, target="ns1.lab.example")],
                 ar=[DnsRR(name="ns1.lab.example", rtype="A", ttl=3600, address="192.0.2.53")])
    return DnsResult(dst="192.0.2.53", qname="lab.example", qtype="MX", start_ns=T0, queries=[q],
                     stop_reason="done", vp="vp-a")


def test_dns_text_is_dig():
    lines = _dns().to_text().splitlines()
    assert lines[:14] == [
        "; <<>> marionet dns from vp vp-a <<>> @192.0.2.53 lab.example IN MX",
        ";; Got answer:",
        ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 4242",
        ";; flags: qr aa rd; QUERY: 1, ANSWER: 2, AUTHORITY: 1, ADDITIONAL: 1",
        "", ";; QUESTION SECTION:", ";lab.example.\t\tIN\tMX",
        "", ";; ANSWER SECTION:",
        "lab.example.\t300\tIN\tMX\t10 mail.lab.example.",
        'lab.example.\t300\tIN\tTXT\t"say \\"hi\\""',
        "", ";; AUTHORITY SECTION:", "lab.example.\t3600\tIN\tNS\tns1.lab.example.",
    ]
    assert lines[15:17] == [";; ADDITIONAL SECTION:", "ns1.lab.example.\t3600\tIN\tA\t192.0.2.53"]
    assert ";; Query time: 12 msec" in lines and ";; SERVER: 192.0.2.53#53(192.0.2.53) (UDP)" in lines
    assert lines[-1] == ";; MSG SIZE  rcvd: 80"
    gone = DnsResult(dst="192.0.2.53", qname="x.example", start_ns=T0, stop_reason="timeout")
    assert gone.to_text().splitlines()[1] == ";; connection timed out; no servers could be reached"


def _http() -> Http:
    head = b"HTTP/1.1 404 Not Found\r\nServer: lab\r\nX-MiXeD: Yes\r\nContent-Length: 5\r\n\r\n"
    return Http(dst="192.0.2.80", url="http://www.example/none", start_ns=T0, stop_reason="done", vp="v",
                bufs=[HttpBuf("rx", "hdr", T0, head), HttpBuf("rx", "data", T0 + MS, b"gone\n")])


def test_http_text_is_curl_i():
    assert _http().to_text() == "HTTP/1.1 404 Not Found\nServer: lab\nX-MiXeD: Yes\nContent-Length: 5\n\ngone"
    failed = Http(dst="192.0.2.80", url="http://www.example/", start_ns=T0, stop_reason="error",
                  error="connection refused")
    assert failed.to_text() == "curl: (error) http://www.example/: connection refused"


def test_progress_bar_only_on_a_terminal_stderr():
    """Several targets with stderr on a pty: the bar is drawn there, while
    stdout (a pipe) carries exactly the results."""
    import pty

    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([sys.executable, "-m", "marionet", "ping", "127.0.0.1", "::1", "127.0.0.2",
                              "-c", "2", "-i", "0.2", "--json"], stdout=subprocess.PIPE, stderr=slave,
                             env=dict(os.environ, COLUMNS="100", TERM="xterm"))
        os.close(slave)
        slave = -1
        out, _ = p.communicate(timeout=90)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert p.returncode == 0
    assert sorted(str(loads(ln).dst) for ln in out.decode().splitlines()) == ["127.0.0.1", "127.0.0.2", "::1"]
    assert b"marionet ping" in err and b"/3" in err, err  # "n/3" runs done


@pytest.fixture(scope="module")
def web():
    """A loopback HTTP server (the standard library's) with one file."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            body = b"hello\nloopback\n" if self.path == "/hello" else b"no\n"
            self.send_response(200 if self.path == "/hello" else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("X-Case", "KeptAsIs")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.mark.parametrize("path", ["/hello", "/nothing"])
def test_http_equals_curl_i_on_loopback(web, path):
    ours = run("http", web + path)
    theirs = subprocess.run(["curl", "-si", web + path], capture_output=True, text=True, timeout=30)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    head, _, body = ours.stdout.partition("\n\n")
    ref_head, _, ref_body = theirs.stdout.replace("\r\n", "\n").partition("\n\n")
    strip_date = lambda h: [ln for ln in h.splitlines() if not ln.startswith("Date:")]  # noqa: E731
    assert strip_date(head) == strip_date(ref_head)  # status line and every header, case kept
    assert body == ref_body
