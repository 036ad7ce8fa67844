"""marionet.measure.dns: parameter checks, the reply parser (with a fuzz),
and real lookups against a small authoritative server on loopback — UDP and
TCP, IPv4 and IPv6 — in all three placements.

The server is a dnspython responder in the test's event loop (no root
needed: the primitive uses plain UDP/TCP sockets).  It answers from a tiny
zone, says NXDOMAIN for other names, truncates UDP answers for
``big.example`` (so the client must retry over TCP), and can be told to send
garbage before its real reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marionet.endpoint.local import native_session
from marionet.measure.dns import DnsExchange, dns as dns_lookup, parse_reply, plan_dns
from marionet.results import DnsResult, DnsStop, File, from_json, to_json
from marionet.results.jsonfmt import dumps

ZONE = "example"
RECORDS = [
    ("example.", "NS", "ns1.example."), ("example.", "NS", "ns2.example."),
    ("example.", "MX", "10 mail.example."), ("example.", "MX", "20 mx2.example."),
    ("example.", "TXT", '"v=spf1 -all" "second string"'),
    ("example.", "SOA", "ns1.example. hostmaster.example. 7 3600 600 86400 60"),
    ("www.example.", "A", "192.0.2.10"), ("www.example.", "A", "192.0.2.11"),
    ("www.example.", "AAAA", "2001:db8::10"),
    ("ns1.example.", "A", "192.0.2.53"), ("ns2.example.", "AAAA", "2001:db8::53"),
    ("alias.example.", "CNAME", "www.example."),
    ("10.2.0.192.in-addr.arpa.", "PTR", "www.example."),
    ("big.example.", "TXT", " ".join(f'"{"x" * 200}{i}"' for i in range(12))),
    ("cafe.example.", "HINFO", '"PDP-11" "UNIX"'),
]


# ------------------------------------------------------------------ server
@dataclass
class Responder:
    """An authoritative server for ZONE on one loopback address."""

    host: str
    port: int = 0
    garbage: list[bytes] = field(default_factory=list)  # sent before each UDP reply
    silent: bool = False                                # never answer (timeouts)
    delay_first: float = 0.0                            # hold the first UDP reply this long
    queries: list[tuple[str, dns.message.Message]] = field(default_factory=list)

    def answer(self, wire: bytes, tcp: bool) -> bytes | None:
        try:
            q = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001
            return None
        self.queries.append(("tcp" if tcp else "udp", q))
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        question = q.question[0]
        name = question.name.to_text().lower()
        owners = {o for o, _, _ in RECORDS}
        if name not in owners:
            r.set_rcode(dns.rcode.NXDOMAIN)
        else:
            for owner, rtype, rdata in RECORDS:
                if owner == name and (dns.rdatatype.from_text(rtype) == question.rdtype
                                      or rtype == "CNAME"):
                    rrs = r.find_rrset(r.answer, question.name, dns.rdataclass.IN,
                                       dns.rdatatype.from_text(rtype), create=True)
                    rrs.update_ttl(300)
                    rrs.add(dns.rdata.from_text("IN", rtype, rdata))
            if question.rdtype == dns.rdatatype.NS:  # glue
                for owner, rtype, rdata in RECORDS:
                    if owner in ("ns1.example.", "ns2.example."):
                        r.additional.append(dns.rrset.from_text(owner, 300, "IN", rtype, rdata))
        if not tcp and name == "big.example.":
            r.answer = []
            r.additional = []
            r.flags |= dns.flags.TC
        return r.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, srv: Responder) -> None:
        self.srv = srv

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.srv.silent:
            return
        for g in self.srv.garbage:
            self.transport.sendto(g, addr)
        out = self.srv.answer(data, tcp=False)
        if out is None:
            return
        if self.srv.delay_first and len(self.srv.queries) == 1:
            asyncio.get_running_loop().call_later(self.srv.delay_first, self.transport.sendto, out, addr)
        else:
            self.transport.sendto(out, addr)


async def _tcp_client(srv: Responder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
            wire = await reader.readexactly(n)
            out = srv.answer(wire, tcp=True)
            if out is None:
                break
            # split the reply in two writes: the client must reassemble
            framed = struct.pack("!H", len(out)) + out
            writer.write(framed[:5])
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(framed[5:])
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def serve(host: str, **kw) -> AsyncIterator[Responder]:
    """UDP and TCP on the same free port of ``host``."""
    loop = asyncio.get_running_loop()
    srv = Responder(host, **kw)
    for _ in range(20):
        transport, _p = await loop.create_datagram_endpoint(lambda: _Udp(srv), local_addr=(host, 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            tcp = await asyncio.start_server(lambda r, w: _tcp_client(srv, r, w), host, port)
        except OSError:
            transport.close()
            continue
        break
    else:
        raise RuntimeError("no free port for UDP and TCP")
    srv.port = port
    try:
        yield srv
    finally:
        transport.close()
        tcp.close()
        await tcp.wait_closed()


SERVERS = ["127.0.0.1", "::1"]


def names(rrs) -> set[str]:
    return {str(x) for x in rrs}


# ----------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs,match", [
    (dict(qname="www.example", server="dns.example"), "not an IPv4 or IPv6"),
    (dict(qname="www.example", server="224.0.0.251"), "multicast"),
    (dict(qname="", server="::1"), "non-empty"),
    (dict(qname=5, server="::1"), "non-empty string"),
    (dict(qname="a" * 64 + ".example", server="::1"), "not a valid DNS name"),
    (dict(qname="a..example", server="::1"), "not a valid DNS name"),
    (dict(qname="www.example", server="::1", qtype="BOGUS"), "not a DNS record type"),
    (dict(qname="www.example", server="::1", qtype="AXFR"), "not a lookup"),
    (dict(qname="www.example", server="::1", qclass="XX"), "not a DNS class"),
    (dict(qname="www.example", server="::1", attempts=0), "attempts"),
    (dict(qname="www.example", server="::1", attempts=True), "attempts must be an integer"),
    (dict(qname="www.example", server="::1", wait_timeout=0), "wait_timeout"),
    (dict(qname="www.example", server="::1", wait_timeout="5s"), "wait_timeout"),
    (dict(qname="www.example", server="::1", rd=1), "rd must be True or False"),
    (dict(qname="www.example", server="::1", tcp="yes"), "tcp must be"),
    (dict(qname="www.example", server="::1", ecs="not-a-prefix"), "ecs"),
    (dict(qname="www.example", server="::1", port=0), "port"),
    (dict(qname="www.example", server="::1", userid=-1), "userid"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_dns(**kwargs)


def test_plan_defaults_and_names():
    p = plan_dns("WWW.Example.", server="::1")
    assert (p.qtype_text, p.qclass_text, p.attempts, p.rd, p.tcp) == ("A", "IN", 2, True, False)
    assert p.wait_timeout_ns == 5_000_000_000 and p.port == 53 and p.family == 6
    assert p.qname_text == "WWW.Example"
    assert plan_dns("192.0.2.10", server="127.0.0.1", qtype="ptr").qname_text == "10.2.0.192.in-addr.arpa"
    assert plan_dns("x.example", server="127.0.0.1", qtype=28, qclass=1).qtype_text == "AAAA"
    assert plan_dns("x", server="::1", wait_timeout=dt.timedelta(milliseconds=250)).wait_timeout_ns == 250_000_000
    assert plan_dns("x", server="::1", ecs="192.0.2.77/24").ecs == "192.0.2.0/24"


def _resolv_conf(tmp_path, text: str) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    return str(path)


async def test_bad_input_sends_nothing(tmp_path):
    from marionet.endpoint.daemon import EndpointConfig

    # no server, and the endpoint's resolv.conf names none usable
    config = EndpointConfig(name="t", resolv_conf=_resolv_conf(tmp_path, "nameserver bogus\nsearch x\n"))
    async with native_session(config) as s:
        with pytest.raises(ValueError, match="endpoint reports no resolvers"):
            await dns_lookup(s, "www.example")
        for kw in (dict(qname="x", server="::1", qtype="nope"), dict(qname="x", server="::1", attempts=99)):
            with pytest.raises(ValueError):
                await dns_lookup(s, **kw)
        assert s.sockets == {}


def test_plan_without_server_leaves_it_to_the_endpoint():
    p = plan_dns("www.example")
    assert p.server is None and p.family == 0


@pytest.mark.parametrize("host", SERVERS)
async def test_no_server_asks_the_endpoints_resolver(tmp_path, host):
    """scamper's do_dns without a server asks the VP's resolver: the first
    one in the *endpoint's* resolv.conf, which info() reports."""
    from marionet.endpoint.daemon import EndpointConfig

    conf = _resolv_conf(tmp_path, f"# test\nsearch example\nnameserver {host}\nnameserver 192.0.2.99\n")
    async with serve(host) as srv, native_session(EndpointConfig(name="t", resolv_conf=conf)) as s:
        assert (await s.info()).resolvers == [host, "192.0.2.99"]
        r = await dns_lookup(s, "www.example", port=srv.port, wait_timeout=2)
        assert r.stop_reason == DnsStop.DONE and r.dst == host
        assert sorted(map(str, r.ans_addrs())) == ["192.0.2.10", "192.0.2.11"]
        assert len(srv.queries) == 1


async def test_no_server_through_a_task(tmp_path):
    """The endpoint placement: the task runs at the endpoint and finds its resolver there."""
    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig

    ep = Endpoint(EndpointConfig(name="t", resolv_conf=_resolv_conf(tmp_path, "nameserver 127.0.0.1\n")))
    try:
        srv_ep = await ep.serve("127.0.0.1", 0, None)
        async with serve("127.0.0.1") as srv:
            s = await aio.connect(f"127.0.0.1:{srv_ep.sockets[0].getsockname()[1]}", insecure=True)
            try:
                tid = await s.task("dns", {"qname": "www.example", "port": srv.port, "wait_timeout": 2})
                note = None
                while note is None or note.kind != "taskres":
                    note = await s.next_notification(timeout=10)
                    assert note is not None, "no task result"
            finally:
                await s.close()
        assert note.task == tid and note.error is None, note.error
        r = from_json(note.result)
        assert r.stop_reason == DnsStop.DONE and r.dst == "127.0.0.1" and len(r.ans_addrs()) == 2
    finally:
        await ep.close()


async def test_task_refuses_bad_params_before_running(session):
    from marionet.client.errors import EndpointError

    with pytest.raises(EndpointError, match="bad-params.*server"):
        await session.task("dns", {"qname": "www.example", "server": "not-an-address"})
    with pytest.raises(EndpointError, match="bad-params.*unknown dns parameter.*qtyp"):
        await session.task("dns", {"qname": "www.example", "server": "::1", "qtyp": "A"})


# ------------------------------------------------------------ lookups
@pytest.mark.parametrize("host", SERVERS)
async def test_record_types_parse(host):
    async with serve(host) as srv, native_session() as s:
        look = lambda q, t: dns_lookup(s, q, server=host, port=srv.port, qtype=t, wait_timeout=2)  # noqa: E731
        a = await look("www.example", "A")
        assert a.stop_reason == DnsStop.DONE and a.rcode == 0 and a.rcode_str == "NoError"
        assert sorted(map(str, a.ans_addrs())) == ["192.0.2.10", "192.0.2.11"]
        assert "AA" in a.flags and "RD" in a.flags and a.qcount == 1 and a.attempts_used == 1
        assert a.dst == host and a.server == host and a.src == host
        assert a.ans()[0].rtype == "A" and a.ans()[0].name == "www.example" and a.ans()[0].ttl == 300

        aaaa = await look("www.example", "AAAA")
        assert list(map(str, aaaa.ans_addrs())) == ["2001:db8::10"]

        ns = await look("example", "NS")
        assert sorted(ns.ans_nses()) == ["ns1.example", "ns2.example"]
        assert {str(r.addr) for r in ns.ars()} == {"192.0.2.53", "2001:db8::53"}

        mx = await look("example", "MX")
        assert sorted((m.preference, m.exchange) for m in mx.ans_mxes()) == [(10, "mail.example"), (20, "mx2.example")]

        txt = await look("example", "TXT")
        assert txt.ans_txts() == [["v=spf1 -all", "second string"]]

        ptr = await look("192.0.2.10", "PTR")
        assert ptr.qname == "10.2.0.192.in-addr.arpa" and ptr.ans_ptrs() == ["www.example"]

        soa = await look("example", "SOA")
        assert soa.ans_soas()[0].serial == 7 and soa.ans_soas()[0].mname == "ns1.example"

        cname = await look("alias.example", "A")
        assert cname.ans_cnames() == ["www.example"]

        other = await look("cafe.example", "HINFO")
        assert other.ans()[0].rdata == '"PDP-11" "UNIX"'
        assert s.sockets == {}


@pytest.mark.parametrize("host", SERVERS)
async def test_kernel_stamps_give_the_rtt(host):
    async with serve(host) as srv, native_session() as s:
        r = await dns_lookup(s, "www.example", server=host, port=srv.port)
        q = r.reply
        assert q is not None and q.tx_ts_source == "kernel" and q.rx_ts_source == "kernel"
        assert 0 < r.rtt_ns < 1_000_000_000 and r.rtt == q.rtt and isinstance(r.rtt, dt.timedelta)
        assert r.rx > r.tx and r.start_ns == q.tx_ns
        assert dns.message.from_wire(r.wire).id == q.id


async def test_nxdomain_is_an_answer():
    async with serve("127.0.0.1") as srv, native_session() as s:
        r = await dns_lookup(s, "nope.example", server="127.0.0.1", port=srv.port)
        assert r.stop_reason == DnsStop.DONE and r.rcode == 3 and r.rcode_str == "NXDomain"
        assert r.ans() == [] and r.ans_addrs() == [] and r.rtt is not None


@pytest.mark.parametrize("host", SERVERS)
async def test_truncation_falls_back_to_tcp(host):
    async with serve(host) as srv, native_session() as s:
        r = await dns_lookup(s, "big.example", server=host, port=srv.port, qtype="TXT", attempts=1)
        assert r.stop_reason == DnsStop.DONE and r.qcount == 2
        udp, tcp = r.queries
        assert not udp.tcp and "TC" in udp.flags and udp.an == []
        assert tcp.tcp and "TC" not in tcp.flags and r.reply is tcp
        assert len(r.ans_txts()[0]) == 12 and r.ans_txts()[0][0].endswith("x0")
        assert tcp.rtt_ns is not None and tcp.rtt_ns > 0 and tcp.tx_ts_source is not None
        assert [t for t, _ in srv.queries] == ["udp", "tcp"]
        assert s.sockets == {}


@pytest.mark.parametrize("host", SERVERS)
async def test_tcp_only(host):
    async with serve(host) as srv, native_session() as s:
        r = await dns_lookup(s, "www.example", server=host, port=srv.port, tcp=True)
        assert r.tcp and r.queries[0].tcp and len(r.ans_addrs()) == 2
        assert [t for t, _ in srv.queries] == ["tcp"]
        assert to_json(r)["flags"] == ["tcp"]


async def test_rd_nsid_and_ecs_reach_the_wire():
    async with serve("::1") as srv, native_session() as s:
        await dns_lookup(s, "www.example", server="::1", port=srv.port, rd=False, nsid=True,
                         ecs="192.0.2.0/24")
        q = srv.queries[-1][1]
        assert not q.flags & dns.flags.RD and q.edns == 0
        kinds = {o.otype for o in q.options}
        assert kinds == {dns.edns.NSID, dns.edns.ECS}
        await dns_lookup(s, "www.example", server="::1", port=srv.port)
        assert srv.queries[-1][1].edns == -1  # a plain query by default, like scamper's


async def test_timeout_gives_no_answer_and_a_stop_reason():
    async with serve("127.0.0.1", silent=True) as srv, native_session() as s:
        t0 = time.monotonic()
        r = await dns_lookup(s, "www.example", server="127.0.0.1", port=srv.port, attempts=3,
                             wait_timeout=0.15)
        took = time.monotonic() - t0
        assert r.stop_reason == DnsStop.TIMEOUT and r.qcount == 3
        assert r.rcode is None and r.rtt is None and r.ans() == [] and r.ans_addrs() == [] and r.wire is None
        assert len({q.id for q in r.queries}) == 3  # each retry is a new query
        assert all(q.tx_ns is not None and q.rx_ns is None for q in r.queries)
        assert 0.4 < took < 2.0, took
        assert s.sockets == {}
        back = from_json(to_json(r))
        assert back.stop_reason == DnsStop.TIMEOUT and back.qcount == 3 and back.rcode is None


async def test_late_reply_answers_the_query_it_belongs_to():
    """The first reply arrives after its wait, during the retry's: it still
    answers the first query (matched by id), as in scamper."""
    async with serve("127.0.0.1", delay_first=0.3) as srv, native_session() as s:
        r = await dns_lookup(s, "www.example", server="127.0.0.1", port=srv.port, attempts=2,
                             wait_timeout=0.2)
        assert r.stop_reason == DnsStop.DONE and r.qcount == 2
        first = r.queries[0]
        assert r.reply is not None and len(r.ans_addrs()) == 2
        if first.answered:  # the late one won the race (usual): RTT spans the wait
            assert first.rtt_ns >= 300_000_000


async def test_closed_port_is_an_error_not_a_hang():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tmp:
        tmp.bind(("127.0.0.1", 0))
        port = tmp.getsockname()[1]
    async with native_session() as s:
        r = await dns_lookup(s, "www.example", server="127.0.0.1", port=port, wait_timeout=3)
        assert r.stop_reason == DnsStop.ERROR and "ICMP" in r.error and r.qcount == 2
        r = await dns_lookup(s, "www.example", server="127.0.0.1", port=port, tcp=True, attempts=1)
        assert r.stop_reason == DnsStop.ERROR and "TCP connect failed" in r.error


async def test_garbage_before_the_reply_is_counted_as_malformed():
    junk = [b"", b"\x00", b"hello world, not dns", bytes(12), b"\xff" * 40]
    async with serve("127.0.0.1", garbage=junk) as srv, native_session() as s:
        r = await dns_lookup(s, "www.example", server="127.0.0.1", port=srv.port)
        assert r.stop_reason == DnsStop.DONE and len(r.ans_addrs()) == 2
        assert r.malformed >= len(junk) - 1  # an empty datagram may not be delivered
        assert from_json(to_json(r)).malformed == r.malformed


async def test_halt_returns_a_partial_result():
    async with serve("127.0.0.1", silent=True) as srv, native_session() as s:
        halt = asyncio.Event()
        task = asyncio.create_task(dns_lookup(s, "www.example", server="127.0.0.1", port=srv.port,
                                              wait_timeout=10, halt=halt))
        await asyncio.sleep(0.2)
        halt.set()
        r = await asyncio.wait_for(task, 3)
        assert r.stop_reason == DnsStop.HALTED and r.qcount == 1 and s.sockets == {}


# --------------------------------------------------------- placements
async def _endpoint_placement(session, params: dict) -> DnsResult:
    tid = await session.task("dns", params)
    while True:
        n = await session.next_notification(10)
        assert n is not None, "no task result"
        if n.kind == "taskres" and n.task == tid:
            assert n.error is None, n.error
            return from_json(n.result)


def _answers(r: DnsResult) -> tuple:
    return (r.rcode, sorted(str(x) for x in r.ans()), sorted(str(x) for x in r.nss()),
            sorted(str(x) for x in r.ars()), r.stop_reason, r.qcount)


@pytest.mark.parametrize("host", SERVERS)
async def test_three_placements_agree(session, host):
    async with serve(host) as srv:
        for qname, qtype in (("www.example", "A"), ("example", "NS"), ("example", "MX"),
                             ("big.example", "TXT"), ("nope.example", "AAAA")):
            params = dict(qname=qname, server=host, port=srv.port, qtype=qtype, wait_timeout=2.0)
            async with native_session() as s:
                native = await dns_lookup(s, **params)
            remote = await dns_lookup(session, **params)
            endpoint = await _endpoint_placement(session, params)
            assert _answers(native) == _answers(remote) == _answers(endpoint), (qname, qtype)
            assert remote.vp == endpoint.vp == "test-ep"
            for r in (native, remote, endpoint):
                assert r.rtt_ns is not None and r.reply.tx_ts_source == "kernel"
        assert session.sockets == {}


# ---------------------------------------------------------------- files
async def test_json_round_trip_through_file(tmp_path):
    async with serve("::1") as srv, native_session() as s:
        got = [await dns_lookup(s, q, server="::1", port=srv.port, qtype=t, userid=7)
               for q, t in (("www.example", "A"), ("example", "NS"), ("example", "MX"),
                            ("example", "TXT"), ("example", "SOA"), ("big.example", "TXT"),
                            ("cafe.example", "HINFO"), ("nope.example", "A"))]
    for suffix in (".json", ".json.gz"):
        path = tmp_path / f"dns{suffix}"
        with File(str(path), "w") as f:
            for r in got:
                f.write(r)
        with File(str(path)) as f:
            back = [x for x in f if isinstance(x, DnsResult)]
        assert len(back) == len(got)
        for a, b in zip(got, back):
            assert to_json(a) == to_json(b)
            assert _answers(a) == _answers(b) and a.rtt_ns == b.rtt_ns and a.wire == b.wire
            assert a.ans_addrs() == b.ans_addrs() and a.ans_mxes() == b.ans_mxes()
            assert a.ans_txts() == b.ans_txts() and a.ans_nses() == b.ans_nses()
            assert b.userid == 7 and b.port == srv.port


def test_json_layout_is_scampers():
    """Field names and order of scamper's scamper_host_json.c (version 0.1)."""
    r = DnsResult(dst="192.0.2.53", src="192.0.2.1", qname="example", qtype="MX", start_ns=1_700_000_000_123_456_000,
                  rd=False, wait_timeout=dt.timedelta(seconds=2), attempts=3, stop_reason="done")
    from marionet.results.dns import DnsMX, DnsQuery, DnsRR
    r.queries.append(DnsQuery(id=4660, tx_ns=1_700_000_000_123_456_000, rx_ns=1_700_000_000_124_000_000,
                              rcode=0, flags=["RD", "AA"],
                              an=[DnsRR(name="example", rtype="MX", ttl=60, mx=DnsMX(10, "mail.example"))]))
    d = to_json(r)
    assert list(d)[:14] == ["type", "version", "src", "dst", "userid", "start", "flags", "wait",
                            "retries", "stop", "qname", "qclass", "qtype", "qcount"]
    assert (d["type"], d["version"], d["flags"], d["wait"], d["retries"], d["stop"]) == \
        ("host", "0.1", ["norecurse"], 2000, 2, "done")
    q = d["queries"][0]
    assert list(q) == ["id", "ancount", "nscount", "arcount", "tx", "rx", "rcode", "flags", "an"]
    assert q["rcode"] == "NoError" and q["tx"] == {"sec": 1_700_000_000, "usec": 123456}
    assert q["an"] == [{"class": "IN", "type": "MX", "ttl": 60, "name": "example",
                        "preference": 10, "exchange": "mail.example"}]
    assert from_json(d).ans_mxes()[0].exch == "mail.example"
    assert '"rcode":"NoError"' in dumps(d)


# ----------------------------------------------------------------- fuzz
_PLAN = plan_dns("www.example", server="127.0.0.1", qtype="A")


def _valid_reply(qid: int) -> bytes:
    q = dns.message.make_query("www.example", "A", id=qid)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"))
    r.additional.append(dns.rrset.from_text("www.example.", 60, "IN", "TXT", '"a"'))
    return r.to_wire()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_never_crashes_the_parser(data):
    run = DnsExchange(_PLAN)
    q, _ = run.new_query(tcp=False)
    got = run.received(data, 1, "kernel", tcp=False)
    assert got is None or got is q
    assert run.malformed == (0 if got is not None else 1)
    parse_reply(data, _PLAN)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_replies_never_crash_the_parser(data):
    """Flip, cut and splice bytes of a valid reply: reaches the deep paths."""
    run = DnsExchange(_PLAN)
    q, _ = run.new_query(tcp=False)
    wire = bytearray(_valid_reply(q.id))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if op == "flip" and wire:
            wire[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del wire[i:i + data.draw(st.integers(1, 8))]
        else:
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    got = run.received(bytes(wire), 1, "kernel", tcp=False)
    assert (got is None) == (run.malformed == 1)
    if got is not None:
        r = run.result(start_ns=1, stop=DnsStop.DONE, src=None, error=None, vp=None)
        assert from_json(to_json(r)).rcode == r.rcode  # whatever parsed also serialises


def test_valid_reply_parses_and_wrong_id_or_question_does_not():
    run = DnsExchange(_PLAN)
    q, _ = run.new_query(tcp=False)
    assert run.received(_valid_reply((q.id + 1) % 65536), 5, "kernel", tcp=False) is None
    other = dns.message.make_response(dns.message.make_query("evil.example", "A", id=q.id)).to_wire()
    assert run.received(other, 5, "kernel", tcp=False) is None
    assert run.received(_valid_reply(q.id), 5, "kernel", tcp=False) is q
    assert run.received(_valid_reply(q.id), 6, "kernel", tcp=False) is None  # a duplicate
    assert run.malformed == 3 and q.rx_ns == 5 and [str(a) for a in run.result(
        start_ns=1, stop=DnsStop.DONE, src=None, error=None, vp=None).ans_addrs()] == ["192.0.2.1"]


# Found by the atheris fuzzer (tests/fuzz): an A record outside class IN has
# no address in dnspython (generic data, or a CH A's domain and number); the
# parser read ``.address`` anyway and the whole reply was counted malformed.
_FUZZ_CLASS17_A = bytes.fromhex(
    "12348100000100060002000203777777076578616d706c650000010001c00c3d0500010000003c0008"
    "05616c696173c010c00c000100110000003c0004c0000201c003797700010000003c001020010db800"
    "0080000000000002000001c00c07f100010000003c0009000a04003c000c0500000000000000070000"
    "0000000000000378616d00000603707472c010c010000b00010000003c0006036e7332c010c0104006"
    "00010000003c001ec0a8056e6964c06d61100000000100001c2000000e10001275000000012cc00801"
    "a801000000003c0004c00002350028000000000000000007000300036e7331")


def test_fuzz_found_reply_with_a_class17_a_record_is_not_malformed():
    run = DnsExchange(_PLAN)
    q, _ = run.new_query(tcp=False)
    wire = struct.pack("!H", q.id) + _FUZZ_CLASS17_A[2:]
    assert run.received(wire, 5, "kernel", tcp=False) is q
    a17 = [rr for rr in q.an if rr.rclass == "CLASS17"]
    assert [(rr.rtype, rr.address, rr.rdata) for rr in a17] == [("A", None, r"\# 4 c0000201")]
    r = run.result(start_ns=1, stop=DnsStop.DONE, src=None, error=None, vp=None)
    assert to_json(from_json(to_json(r))) == to_json(r)


@pytest.mark.parametrize("rdclass, rdtype, text", [
    ("CH", "A", "chaos. 1234"),  # a domain and an octal number, not an address
    ("CLASS17", "A", r"\# 4 c0000201"),
    ("HS", "AAAA", r"\# 16 20010db8000000000000000000000001"),
])
def test_address_records_outside_class_in_keep_their_text(rdclass, rdtype, text):
    q = dns.message.make_query("www.example", "A", id=9)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "A", "192.0.2.1"))
    r.answer.append(dns.rrset.from_text("www.example.", 60, rdclass, rdtype, text))
    got = parse_reply(r.to_wire(), _PLAN)
    assert got is not None
    (inside, outside) = got.an
    assert str(inside.address) == "192.0.2.1"
    assert outside.rclass == rdclass and outside.address is None and outside.rdata
