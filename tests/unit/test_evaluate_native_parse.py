"""Parsers of marionet.evaluate.native on real outputs, and web.clean_body.

Each tool runs on loopback in the test itself (through ``LocalHost``, the
runners' stand-in for a lab that runs tools in this namespace): Butskoy
traceroute and scamper to 127.0.0.1 / ::1, iputils and scamper ping, dig
against a small dnspython server on 127.0.0.1, curl against http.server.
The captured text is then fed to the pure parsers, and hand-made variants of
it (lost probes, several addresses at one TTL, duplicates, garbage) check
the cases loopback cannot produce.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from marionet.evaluate import native as nt
from marionet.evaluate.web import body_digest, clean_body, web_item

HOST = nt.LocalHost()


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def captured(argv: list[str]) -> str:
    cp = HOST.exec("local", argv, timeout=60)
    assert cp.returncode == 0, (argv, cp.returncode, cp.stderr)
    return cp.stdout


# ---------------------------------------------------------------- traceroute


@pytest.mark.parametrize("dst,method", [("127.0.0.1", "udp"), ("127.0.0.1", "icmp"), ("::1", "udp-paris"),
                                        ("127.0.0.1", "udp-paris")])
def test_traceroute_loopback(dst: str, method: str) -> None:
    need("traceroute")
    if method == "icmp" and os.geteuid() != 0:
        pytest.skip("traceroute -I needs root")
    text = captured(nt.traceroute_argv(dst, method=method, queries=3, max_ttl=4, wait=1))
    run = nt.parse_traceroute(text)
    assert run.dst == dst and run.reached and run.error is None
    assert [(h.ttl, h.addr, len(h.rtts_ms)) for h in run.hops] == [(1, dst, 3)]
    assert all(0 <= r < 50 for r in run.dest_rtts()) and len(run.dest_rtts()) == 3
    assert run.path_items() == {f"1|{dst}"}
    assert nt.run_traceroute(HOST, "local", dst, method=method, queries=3, max_ttl=4, wait=1).path_items() == {
        f"1|{dst}"}


TR_LAB = """traceroute to 10.0.0.9 (10.0.0.9), 30 hops max, 60 byte packets
 1  10.0.0.1  1.104 ms  1.020 ms  0.998 ms
 2  * * *
 3  10.0.1.1  3.201 ms 10.0.2.1  3.400 ms *
 4  10.0.0.9  4.101 ms !H  4.300 ms  4.012 ms
"""


def test_traceroute_lost_probes_several_addresses_and_annotations() -> None:
    run = nt.parse_traceroute(TR_LAB)
    assert [(h.ttl, h.addr, h.rtts_ms) for h in run.hops] == [
        (1, "10.0.0.1", [1.104, 1.020, 0.998]), (2, None, []),
        (3, "10.0.1.1", [3.201]), (3, "10.0.2.1", [3.400]), (4, "10.0.0.9", [4.101, 4.300, 4.012])]
    assert run.reached and run.dest_rtts() == [4.101, 4.300, 4.012]
    assert run.path_items() == {"1|10.0.0.1", "2|*", "3|10.0.1.1", "3|10.0.2.1", "4|10.0.0.9"}


def test_traceroute_not_reached_and_names_with_addresses() -> None:
    run = nt.parse_traceroute("traceroute to x.example (2001:db8::9), 3 hops max, 80 byte packets\n"
                              " 1  r1.example (2001:db8:0:0::1)  0.5 ms  0.6 ms\n 2  *\n 3  *\n")
    assert not run.reached and run.dest_rtts() == []
    assert run.path_items() == {"1|2001:db8::1", "2|*", "3|*"}


@pytest.mark.parametrize("text", [
    "", "hello\n", "PING 127.0.0.1 (127.0.0.1) 56(84) bytes of data.\n",
    "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\n 1  banana  1.0 ms\n",
    "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\n 1  1.0 ms\n",
    "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\n 2  *\n 1  *\n",
    "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\nno hop here\n",
    "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\n 1  1.2.3.4  x.y ms\n",
])
def test_traceroute_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        nt.parse_traceroute(text)


def test_traceroute_bad_arguments() -> None:
    for kw in ({"method": "paris"}, {"queries": 0}, {"max_ttl": True}, {"first_ttl": 9, "max_ttl": 3}):
        with pytest.raises(ValueError):
            nt.traceroute_argv("127.0.0.1", **kw)
    with pytest.raises(ValueError):
        nt.traceroute_argv("localhost")


# ------------------------------------------------------------------- scamper


# IPv6 udp-paris gets no answer on loopback: its checksum offload leaves the
# probe's checksum unfinished, by which scamper names the probe (the lab
# turns offload off on its veths, see test_trace_methods_lab.py).
@pytest.mark.parametrize("dst,method", [("127.0.0.1", "udp-paris"), ("::1", "icmp-paris")])
def test_scamper_trace_loopback(dst: str, method: str) -> None:
    need("scamper")
    text = captured(nt.scamper_trace_argv(dst, method=method, queries=3, max_ttl=4, wait=1))
    run = nt.parse_scamper_trace(text)
    assert run.reached and run.error is None and run.dst == dst
    assert run.path_items() == {f"1|{dst}"} and len(run.dest_rtts()) == 3  # -Q: every attempt
    assert len(nt.parse_scamper_trace(captured(nt.scamper_trace_argv(dst, method=method, queries=3,
                                                                         all_attempts=False)))
               .dest_rtts()) == 1


def test_scamper_trace_silent_ttls_come_from_hop_count() -> None:
    text = ('{"type":"cycle-start"}\n{"type":"trace","dst":"10.0.0.9","firsthop":1,"hop_count":3,'
            '"stop_reason":"GAPLIMIT","hops":[{"addr":"10.0.0.1","probe_ttl":1,"rtt":1.5},'
            '{"addr":"10.0.0.1","probe_ttl":1,"rtt":1.25}]}\n{"type":"cycle-stop"}\n')
    run = nt.parse_scamper_trace(text)
    assert not run.reached and run.path_items() == {"1|10.0.0.1", "2|*", "3|*"}
    assert run.hops[0].rtts_ms == [1.5, 1.25]


@pytest.mark.parametrize("text", [
    "", "not json\n", '{"type":"cycle-start"}\n', '[1,2]\n',
    '{"type":"trace","hops":[]}\n',  # no dst
    '{"type":"trace","dst":"10.0.0.9","hops":[{"addr":"x","probe_ttl":1,"rtt":1}]}\n',
    '{"type":"trace","dst":"10.0.0.9"}\n{"type":"trace","dst":"10.0.0.9"}\n',
])
def test_scamper_trace_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        nt.parse_scamper_trace(text)


# ---------------------------------------------------------------------- ping


@pytest.mark.parametrize("dst", ["127.0.0.1", "::1"])
def test_ping_loopback(dst: str) -> None:
    need("ping")
    run = nt.parse_ping(captured(nt.ping_argv(dst, count=3, interval=0.2)))
    assert (run.sent, run.received, len(run.rtts_ms), run.error) == (3, 3, 3, None)
    assert all(0 <= r < 50 for r in run.rtts_ms)


def test_scamper_ping_loopback() -> None:
    need("scamper")
    run = nt.parse_scamper_ping(captured(nt.scamper_ping_argv("127.0.0.1", count=3, interval=0.2)))
    assert (run.sent, run.received, len(run.rtts_ms)) == (3, 3, 3)
    run = nt.run_scamper_ping(HOST, "local", "::1", count=2, interval=0.2)
    assert (run.sent, run.received, run.error) == (2, 2, None)


PING_LOSSY = """PING 10.0.0.9 (10.0.0.9) 56(84) bytes of data.
64 bytes from 10.0.0.9: icmp_seq=1 ttl=61 time=20.1 ms
64 bytes from 10.0.0.9: icmp_seq=1 ttl=61 time=20.4 ms (DUP!)
64 bytes from 10.0.0.9: icmp_seq=3 ttl=61 time=19.9 ms

--- 10.0.0.9 ping statistics ---
3 packets transmitted, 2 received, +1 duplicates, 33.3333% packet loss, time 2003ms
rtt min/avg/max/mdev = 19.9/20.1/20.4/0.2 ms
"""


def test_ping_loss_and_duplicates() -> None:
    run = nt.parse_ping(PING_LOSSY)
    assert (run.rtts_ms, run.sent, run.received) == ([20.1, 19.9], 3, 2)
    none = nt.parse_ping("PING 10.0.0.9 (10.0.0.9) 56(84) bytes of data.\n\n--- 10.0.0.9 ping statistics ---\n"
                         "2 packets transmitted, 0 received, 100% packet loss, time 1001ms\n")
    assert (none.rtts_ms, none.sent, none.received) == ([], 2, 0)


@pytest.mark.parametrize("text", [
    "", "traceroute to 1.2.3.4 (1.2.3.4), 30 hops max, 60 byte packets\n",
    "PING 10.0.0.9 (10.0.0.9) 56(84) bytes of data.\n64 bytes from 10.0.0.9: icmp_seq=1 ttl=61 time=1 ms\n",
    PING_LOSSY.replace("2 received", "3 received"),
])
def test_ping_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        nt.parse_ping(text)


def test_scamper_ping_rejects_other_text() -> None:
    for text in ("", '{"type":"trace","dst":"1.2.3.4"}\n', '{"type":"ping","responses":[]}\n',
                 '{"type":"ping","ping_sent":2,"responses":[{"seq":0}]}\n'):
        with pytest.raises(ValueError):
            nt.parse_scamper_ping(text)


def test_runner_failures_are_records() -> None:
    need("ping")
    slow = nt.run_ping(HOST, "local", "127.0.0.1", count=50, interval=0.2, timeout=0.5)
    assert nt.error_kind(slow.error) == "timeout" and slow.rtts_ms == []
    saved = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        gone = nt.run_traceroute(HOST, "local", "127.0.0.1")
    finally:
        os.environ["PATH"] = saved
    assert nt.error_kind(gone.error) == "missing" and gone.hops == []
    need("scamper")
    bad = nt.run_scamper_trace(HOST, "local", "127.0.0.1", method="no-such-method")
    assert nt.error_kind(bad.error) == "exit"


# ----------------------------------------------------------------------- dig

ZONE = {
    ("www.t.example.", "A"): ["www.t.example. 300 IN A 10.1.2.3", "www.t.example. 300 IN A 10.1.2.4"],
    ("t.example.", "MX"): ["t.example. 300 IN MX 10 Mail.T.Example."],
    ("t.example.", "NS"): ["t.example. 300 IN NS ns1.t.example."],
    ("txt.t.example.", "TXT"): ['txt.t.example. 60 IN TXT "hello   world" "two"'],
    ("alias.t.example.", "CNAME"): ["alias.t.example. 300 IN CNAME www.t.example."],
}


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[str, int]]:
    """A tiny authoritative server (dnspython) on 127.0.0.1: the records above, NXDOMAIN elsewhere."""
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            qn, qt = q.question[0].name.to_text().lower(), dns.rdatatype.to_text(q.question[0].rdtype)
            lines = ZONE.get((qn, qt))
            if lines is None and not any(n == qn for n, _ in ZONE):
                r.set_rcode(dns.rcode.NXDOMAIN)
            for ln in lines or []:
                r.answer.append(dns.rrset.from_text(*ln.split(None, 4)[:4], ln.split(None, 4)[4]))
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()
    stop.set()
    t.join(2)
    sock.close()


def test_dig_answers_normalised(dns_server: tuple[str, int]) -> None:
    need("dig")
    addr, port = dns_server
    run = nt.parse_dig(captured(nt.dig_argv(addr, "www.t.example", "A", port=port)))
    assert run.rcode == "NOERROR" and run.error is None
    assert sorted(run.answer) == ["www.t.example 300 IN A 10.1.2.3", "www.t.example 300 IN A 10.1.2.4"]
    assert nt.run_dig(HOST, "local", addr, "t.example", "MX", port=port).answer == [
        "t.example 300 IN MX 10 mail.t.example"]
    assert nt.run_dig(HOST, "local", addr, "T.Example.", "ns", port=port).answer == ["t.example 300 IN NS ns1.t.example"]
    assert nt.run_dig(HOST, "local", addr, "txt.t.example", "TXT", port=port).answer == [
        'txt.t.example 60 IN TXT "hello   world" "two"']
    assert nt.run_dig(HOST, "local", addr, "alias.t.example", "CNAME", port=port).answer == [
        "alias.t.example 300 IN CNAME www.t.example"]
    nx = nt.run_dig(HOST, "local", addr, "nope.t.example", "A", port=port)
    assert (nx.rcode, nx.answer, nx.error) == ("NXDOMAIN", [], None)
    empty = nt.run_dig(HOST, "local", addr, "www.t.example", "AAAA", port=port)
    assert (empty.rcode, empty.answer, empty.error) == ("NOERROR", [], None)


def test_dig_no_server_is_a_timeout() -> None:
    need("dig")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))  # bound, never answers
    try:
        run = nt.run_dig(HOST, "local", "127.0.0.1", "www.t.example", port=s.getsockname()[1], wait=1)
    finally:
        s.close()
    assert nt.error_kind(run.error) == "timeout" and run.answer == []


@pytest.mark.parametrize("text", [
    "", "www.t.example. 300 IN A 10.1.2.3\n",  # no header: +comments missing
    ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\nwww 300\n",
    ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ANSWER SECTION:\nwww x IN A 1.2.3.4\n",
    ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n;; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 2\n",
])
def test_dig_rejects_other_text(text: str) -> None:
    with pytest.raises(ValueError):
        nt.parse_dig(text)


# ---------------------------------------------------------------------- curl

BODY = b"<!doctype html><p>stable body \xe2\x9c\x93</p>\n"


@pytest.fixture(scope="module")
def web_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/":
                self.send_response(200)
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                self.wfile.write(BODY)
            else:
                self.send_error(404)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_curl_body_status_and_resolve(web_server: int) -> None:
    need("curl")
    port = web_server
    run = nt.run_curl(HOST, "local", f"http://site.test:{port}/", resolve={f"site.test:{port}": "127.0.0.1"})
    assert (run.status, run.body, run.error) == (200, BODY, None)
    missing = nt.run_curl(HOST, "local", f"http://127.0.0.1:{port}/nope")
    assert missing.status == 404 and missing.error is None
    assert web_item("s", missing.status, missing.body, missing.error) == "s|ERROR:http-404"
    assert web_item("s", run.status, run.body, run.error) == "s|" + hashlib.sha256(BODY).hexdigest()


def test_curl_failures() -> None:
    need("curl")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    refused = nt.run_curl(HOST, "local", f"http://127.0.0.1:{port}/")
    assert refused.status is None and nt.error_kind(refused.error) == "connect"
    assert web_item("s", refused.status, refused.body, refused.error) == "s|ERROR:connect"
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(1)  # accepts, never answers
    try:
        slow = nt.run_curl(HOST, "local", f"http://127.0.0.1:{hang.getsockname()[1]}/", max_time=0.5)
    finally:
        hang.close()
    assert nt.error_kind(slow.error) == "timeout"
    assert nt.parse_curl_status("000") is None and nt.parse_curl_status("301") == 301
    for text in ("", "OK", "2000", "20"):
        with pytest.raises(ValueError):
            nt.parse_curl_status(text)
    for bad in ({"url": "ftp://x/"}, {"url": "http://x/", "resolve": "x"}, {"url": "http://x/", "resolve": {"x:80": "y"}}):
        with pytest.raises(ValueError):
            nt.curl_argv(out_file="/dev/null", **bad)


# ---------------------------------------------------------------- clean_body

NGINX_SSI = (b'<p>request 5f1c0e2a9b7d4c3e8f6a1b2c3d4e5f60 at 1796646223.204'
             b' (Monday, 07-Dec-2026 12:23:43 GMT)</p>\n')


def test_clean_body_removes_per_request_tokens() -> None:
    other = (b'<p>request a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5 at 1796646299.917'
             b' (Monday, 07-Dec-2026 12:24:59 GMT)</p>\n')
    assert NGINX_SSI != other and clean_body(NGINX_SSI) == clean_body(other)
    assert clean_body(NGINX_SSI) == b"<p>request <hex> at <epoch> (<time>)</p>\n"
    cases = {
        b'<script nonce="q1w2+e3/r4=">': b'<script nonce="<nonce>">',
        b"id=3f2b1c4d-1234-4abc-8def-0123456789ab;": b"id=<uuid>;",
        b"at 2026-12-07T12:23:43.123Z.": b"at <time>.",
        b"at 2026-12-07 12:23:43+01:00": b"at <time>",
        b"Date: Mon, 07 Dec 2026 12:23:43 GMT": b"Date: <time>",
        b"Mon Dec  7 12:23:43 2026": b"<time>",
        b"ts=1796646223204&x": b"ts=<epoch>&x",
    }
    for raw, want in cases.items():
        assert clean_body(raw) == want, raw


def test_clean_body_keeps_content() -> None:
    for keep in (b"version 1.2.3, 12345 items, since 2026-12-07", b"id deadbeef", b"phone 12345678901234",
                 b"\x00\x01binary\xff", b"", b"price 1796.50", b"sha1-ish abc123"):
        assert clean_body(keep) == keep, keep
    assert clean_body(b"<p>news A</p> 1796646223") != clean_body(b"<p>news B</p> 1796646223")
    assert body_digest(b"x 1796646223") == body_digest(b"x 1796646300")
    with pytest.raises(ValueError):
        clean_body("text")  # type: ignore[arg-type]


def test_web_item_failures_match_only_failures() -> None:
    assert web_item("a", None, b"", "timeout: curl exited 28: …") == "a|ERROR:timeout"
    assert web_item("a", None, b"", None) == "a|ERROR:no-status"
    assert web_item("a", 200, NGINX_SSI, None) == web_item("a", 200, NGINX_SSI.replace(b"12:23:43", b"01:02:03"), None)
    assert web_item("a", 200, b"", None) != web_item("a", None, b"", "http: x")
    for bad in ("", "a|b", None):
        with pytest.raises(ValueError):
            web_item(bad, 200, b"", None)  # type: ignore[arg-type]
