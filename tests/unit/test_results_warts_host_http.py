"""warts host (0x0e) and http (0x0f) records: what we write, Debian scamper
20211212's tools read; what scamper writes for a real lookup, we read."""

from __future__ import annotations

import datetime as dt
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from marionet.results import DnsResult, File, Http, HttpBuf
from marionet.results.dns import DnsMX, DnsQuery, DnsRR, DnsSOA, _rdata_text

SC_WARTSDUMP = shutil.which("sc_wartsdump")
SCAMPER = shutil.which("scamper")
needs_dump = pytest.mark.skipif(SC_WARTSDUMP is None, reason="Debian's scamper tools are not installed")
T0 = 1_700_000_000_123_456_000


def lookup(**kw) -> DnsResult:
    r = DnsResult(dst="192.0.2.53", src="192.0.2.1", qname="example", qtype="MX", start_ns=T0,
                  wait_timeout=dt.timedelta(seconds=2), attempts=3, stop_reason="done", **kw)
    r.queries.append(DnsQuery(id=4659, tx_ns=T0 + 1000))  # timed out
    r.queries.append(DnsQuery(
        id=4660, tx_ns=T0 + 2_000_000_000, rx_ns=T0 + 2_000_544_000, rcode=0, flags=["RD", "AA"],
        an=[DnsRR(name="example", rtype="MX", ttl=60, mx=DnsMX(10, "mail.example")),
            DnsRR(name="example", rtype="A", ttl=61, address="192.0.2.7"),
            DnsRR(name="example", rtype="AAAA", ttl=62, address="2001:db8::7"),
            DnsRR(name="example", rtype="CNAME", ttl=63, target="alias.example"),
            DnsRR(name="example", rtype="TXT", ttl=64, txt=["hello"])],
        ns=[DnsRR(name="example", rtype="NS", ttl=300, target="ns1.example")],
        ar=[DnsRR(name="example", rtype="SOA", ttl=5,
                  soa=DnsSOA("ns1.example", "admin.example", 7, 3600, 600, 86400, 60))]))
    for q in r.queries:
        for rr in (*q.an, *q.ns, *q.ar):
            rr.rdata = _rdata_text(rr)  # as the measurement fills it
    return r


def dump(path: Path) -> str:
    p = subprocess.run([SC_WARTSDUMP, str(path)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_host_record_round_trip(tmp_path):
    r = lookup(rd=False, tcp=True)
    with File(tmp_path / "h.warts", "w") as f:
        f.write(r)
    (back,) = [o for o in File(tmp_path / "h.warts") if isinstance(o, DnsResult)]
    assert (back.dst, back.src, back.qname, back.qtype, back.qclass, back.rd, back.tcp) == \
        (r.dst, r.src, "example", "MX", "IN", False, True)
    assert (back.wait_timeout, back.attempts, back.stop_reason, back.start_ns) == \
        (dt.timedelta(seconds=2), 3, "done", T0)
    q0, q1 = back.queries
    assert (q0.id, q0.tx_ns, q0.rx_ns, q0.rcode) == (4659, T0 + 1000, None, None)
    assert (q1.id, q1.rcode, q1.flags, q1.rx_ns - q1.tx_ns) == (4660, 0, ["RD", "AA"], 544_000)
    kept = [rr for rr in r.queries[1].an if rr.rtype != "TXT"]  # see warts_host: TXT stays JSON-only
    assert back.queries[1].an == kept
    assert back.nss() == r.nss() and back.ars() == r.ars()
    assert back.ans_addrs() == ["192.0.2.7", "2001:db8::7"] and back.ans_mxes() == [DnsMX(10, "mail.example")]


@needs_dump
def test_debian_scamper_reads_our_host_records(tmp_path):
    with File(tmp_path / "h.warts", "w") as f:
        f.write(lookup(rd=False))
        f.write(lookup())
    out = dump(tmp_path / "h.warts")
    assert out.count("host from 192.0.2.1 to 192.0.2.53") == 2
    assert "qname: example, qclass: IN, qtype: MX" in out and "qcount: 2" in out
    assert "wait: 2000ms, retries: 2" in out and "stop: done" in out
    assert "rtt: 0.000544, an: 4, ns: 1, ar: 1" in out  # the TXT answer is left out
    for line in ("an: example 60 IN MX 10 mail.example", "an: example 61 IN A 192.0.2.7",
                 "an: example 62 IN AAAA 2001:db8::7", "an: example 63 IN CNAME alias.example",
                 "ns: example 300 IN NS ns1.example"):
        assert line in out, out
    assert "cycle stop" in out  # every record before it was read


def http_result() -> Http:
    req = b"GET /x?y=1 HTTP/1.1\r\nHost: example\r\nX-A: b\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-MiXeD: CaSe\r\nContent-Length: 5\r\n\r\n"
    return Http(dst="127.0.0.1", url="http://example:8080/x?y=1", start_ns=T0, src="127.0.0.1", sport=40000,
                dport=8080, stop_reason="done", request_headers=[("X-A", "b")], connect_ns=123_000,
                limit_time=dt.timedelta(seconds=7),
                bufs=[HttpBuf("tx", "hdr", T0 + 1000, req), HttpBuf("rx", "hdr", T0 + 2000, resp),
                      HttpBuf("rx", "data", T0 + 3000, b"hello"), HttpBuf("rx", "data", T0 + 4000, b"z" * 70_000)])


def test_http_record_round_trip(tmp_path):
    h = http_result()
    with File(tmp_path / "x.warts", "w") as f:
        f.write(h)
    (back,) = [o for o in File(tmp_path / "x.warts") if isinstance(o, Http)]
    assert back.bufs == h.bufs  # the 70 kB buffer was split on write and joined on read
    assert (back.url, back.dport, back.sport, back.connect_ns, back.limit_time) == \
        (h.url, 8080, 40000, 123_000, dt.timedelta(seconds=7))
    assert (back.status_code, back.response, back.request_headers, back.stop_reason) == \
        (200, b"hello", [("X-A", "b")], "done")
    assert back.response_hdrs == {"content-type": "text/plain", "x-mixed": "CaSe", "content-length": "5"}


@needs_dump
def test_debian_scamper_skips_http_records_and_reads_on(tmp_path):
    """scamper 20211212 predates http records: its reader must step over ours."""
    with File(tmp_path / "x.warts", "w") as f:
        f.write(http_result())
        f.write(lookup())
    out = dump(tmp_path / "x.warts")
    assert "host from 192.0.2.1 to 192.0.2.53" in out and "cycle stop" in out


# -- scamper's own host records, from a real lookup on loopback --------------

class _DnsServer:
    """A tiny authoritative UDP server (dnspython) on one loopback address."""

    def __init__(self, addr: str) -> None:
        import dns.message  # noqa: F401

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import dns.flags
        import dns.message
        import dns.rdatatype
        import dns.rrset

        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            name, rdtype = q.question[0].name, q.question[0].rdtype
            if rdtype == dns.rdatatype.A:
                r.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "192.0.2.7", "192.0.2.8"))
            elif rdtype == dns.rdatatype.MX:
                r.answer.append(dns.rrset.from_text(name, 61, "IN", "MX", "10 mail.example."))
            self.sock.sendto(r.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def dns_server():
    addr = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    try:
        srv = _DnsServer(addr)
    except PermissionError:
        pytest.skip("binding port 53 needs root")
    yield addr
    srv.close()


@pytest.mark.root
@pytest.mark.skipif(SCAMPER is None, reason="Debian's scamper is not installed")
@pytest.mark.parametrize("qtype,want", [("A", ["192.0.2.7", "192.0.2.8"]), ("MX", ["10 mail.example."])])
def test_we_read_scampers_host_records(tmp_path, dns_server, qtype, want):
    out = tmp_path / "sc.warts"
    p = subprocess.run([SCAMPER, "-O", "warts", "-o", str(out), "-c", f"host -s {dns_server} -t {qtype}",
                        "-i", "www.example"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (h,) = [o for o in File(out) if isinstance(o, DnsResult)]
    assert (str(h.dst), h.qname, h.qtype, h.stop_reason, h.rcode) == (dns_server, "www.example", qtype, "done", 0)
    assert sorted(rr.rdata for rr in h.ans()) == want  # a DNS rrset has no order
    assert h.rtt is not None and h.rtt > dt.timedelta(0)
    # and our writer gives scamper's tools the same lookup back
    with File(tmp_path / "ours.warts", "w") as f:
        f.write(h)
    theirs, ours = dump(out), dump(tmp_path / "ours.warts")
    pick = lambda s: [ln for ln in s.splitlines() if ln.lstrip().startswith(("an:", "qname:", "host from"))]  # noqa: E731
    assert pick(ours) == pick(theirs)
