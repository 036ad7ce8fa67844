"""udpprobe against real UDP services in a lab: client – r1 – r2 – target.

On the target: NSD (DNS), chronyd (NTP, ``-x``: it never steers the
clock) and snmpd (SNMPv2c, community "public", sysDescr set by the lab),
plus a test responder that answers every datagram twice.  Each request is
built by hand (dnspython's wire format for DNS, the 48-byte NTP header,
BER for SNMP) and each answer parsed: the DNS answer names the zone's
address, the NTP reply is mode 4 at the configured stratum with our
transmit time as its origin and a transmit time close to ours, the SNMP
response carries the configured sysDescr.  The native, remote and endpoint
placements must give the same answers, over IPv4 and IPv6.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import dns.message
import dns.rdatatype
import pytest

from marionet.lab import linear_path
from marionet.lab.services import netns_socket
from marionet.lab.spec import Service
from marionet.lab.udpservices import SYS_DESCR, SYS_NAME, ntp_request, parse_ntp, parse_snmp, snmp_get
from marionet.measure.udpprobe import udpprobe
from marionet.results import Udpprobe, UdpprobeStop, from_json

from .labclient import client_endpoint

pytestmark = [pytest.mark.root]

DESCR = "marionet udpprobe lab target, snmpd"
WWW4, WWW6 = "192.0.2.80", "2001:db8::80"
TWICE_PORT = 7007


def _spec() -> Any:
    spec = linear_path(2, name="udplab")
    spec.services += [
        Service(host="target", kind="dns", options={"zone": "udp.example", "records": [
            ["www", "A", WWW4], ["www", "AAAA", WWW6]]}),
        Service(host="target", kind="ntp", options={"stratum": 3}),
        Service(host="target", kind="snmp", options={"sysdescr": DESCR, "sysname": "lab-target"}),
    ]
    return spec


def _twice_server(netns: str, family: int, stop: threading.Event) -> threading.Thread:
    """Answers each datagram with "1:" + it and "2:" + it, from the namespace."""
    s = netns_socket(netns, socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    if family == 6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == 6 else "0.0.0.0", TWICE_PORT))
    s.settimeout(0.2)

    def serve() -> None:
        with s:
            while not stop.is_set():
                try:
                    data, peer = s.recvfrom(4096)
                except (TimeoutError, OSError):
                    continue
                s.sendto(b"1:" + data, peer)
                s.sendto(b"2:" + data, peer)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    return th


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(_spec()) as lab:
        stop = threading.Event()
        threads = [_twice_server(lab.netns("target"), fam, stop) for fam in (4, 6)]
        try:
            yield lab
        finally:
            stop.set()
            for th in threads:
                th.join(2)


async def _task(session: Any, params: dict) -> Udpprobe:
    from tests.unit.test_primitives import task_result

    tid = await session.task("udpprobe", params)
    n = await task_result(session, tid, timeout=20)
    assert n.error is None, n.error
    return from_json(n.result)


async def _three(session: Any, native: Any, params: dict) -> dict[str, Udpprobe]:
    """The same probe in the native, remote and endpoint placements."""
    out = {"native": await udpprobe(native, **params), "remote": await udpprobe(session, **params),
           "endpoint": await _task(session, {**params, "payload": params["payload"].hex()})}
    for where, u in out.items():
        assert isinstance(u, Udpprobe) and u.stop_reason == UdpprobeStop.DONE, (where, u.stop_reason, u.error)
        assert str(u.dst) == params["dst"] and u.dport == params["dport"]
        for p in u.probes:
            assert p.tx_ts_source == "kernel", where
            assert all(r.rx_ts_source == "kernel" and 0 < r.rtt_ns < 10**9 for r in p.replies), where
    return out


def _dns_answer(wire: bytes, qid: int) -> list[str]:
    m = dns.message.from_wire(wire)
    assert m.id == qid and m.rcode() == 0
    return sorted(rd.to_text() for rrset in m.answer for rd in rrset)


@pytest.mark.parametrize("family", [4, 6])
async def test_dns_query_answered(lab, family) -> None:
    dst = lab.addr("target", family)
    q = dns.message.make_query("www.udp.example", dns.rdatatype.AAAA if family == 6 else dns.rdatatype.A)
    q.flags &= ~dns.flags.RD
    async with client_endpoint(lab) as (session, native):
        res = await _three(session, native, {"dst": dst, "dport": 53, "payload": q.to_wire(), "wait_timeout": 1})
    want = [WWW6 if family == 6 else WWW4]
    for where, u in res.items():
        (reply,) = u.replies()
        assert _dns_answer(reply.data, q.id) == want, where
        assert str(u.src) == lab.addr("client", family)


@pytest.mark.parametrize("family", [4, 6])
async def test_ntp_server_answers_mode_4(lab, family) -> None:
    dst = lab.addr("target", family)
    async with client_endpoint(lab) as (session, native):
        for where in ("native", "remote", "endpoint"):
            req = ntp_request()
            params = {"dst": dst, "dport": 123, "payload": req, "wait_timeout": 1}
            if where == "endpoint":
                u = await _task(session, {**params, "payload": req.hex()})
            else:
                u = await udpprobe(native if where == "native" else session, **params)
            (reply,) = u.replies()
            r = parse_ntp(reply.data)
            assert (r.mode, r.version, r.stratum, r.leap) == (4, 4, 3, 0), where
            assert r.origin_raw == req[40:48], where  # our transmit time, echoed
            # the server's clock is this machine's: its stamps bracket our kernel stamps
            assert abs(r.transmit_ns - reply.rx_ns) < 50_000_000, where
            assert r.receive_ns <= r.transmit_ns


@pytest.mark.parametrize("family", [4, 6])
async def test_snmp_get_sysdescr(lab, family) -> None:
    dst = lab.addr("target", family)
    req = snmp_get([SYS_DESCR, SYS_NAME], "public", request_id=4242)
    async with client_endpoint(lab) as (session, native):
        res = await _three(session, native, {"dst": dst, "dport": 161, "payload": req, "wait_timeout": 2})
        wrong = await udpprobe(native, dst, 161, payload=snmp_get([SYS_DESCR], "private"), wait_timeout=1)
    for where, u in res.items():
        (reply,) = u.replies()
        r = parse_snmp(reply.data)
        assert (r.version, r.community, r.pdu_type, r.request_id, r.error_status) == (1, "public", 0xA2, 4242, 0)
        assert r.varbinds == {SYS_DESCR: DESCR.encode(), SYS_NAME: b"lab-target"}, where
    assert wrong.replyc == 0  # a community snmpd does not know gets no answer


@pytest.mark.parametrize("family", [4, 6])
async def test_several_replies_per_probe_in_every_placement(lab, family) -> None:
    dst = lab.addr("target", family)
    async with client_endpoint(lab) as (session, native):
        res = await _three(session, native, {"dst": dst, "dport": TWICE_PORT, "payload": b"ping?",
                                             "attempts": 2, "stop_count": 2, "wait_probe": 0.5,
                                             "wait_timeout": 0.5})
    for where, u in res.items():
        assert u.probe_sent == 2 and len({p.sport for p in u.probes}) == 2, where
        assert [[r.data for r in p.replies] for p in u.probes] == [[b"1:ping?", b"2:ping?"]] * 2, where
        for p in u.probes:
            assert p.replies[0].rx_ns <= p.replies[1].rx_ns


async def test_closed_port_records_the_icmp_error(lab) -> None:
    async with client_endpoint(lab) as (session, native):
        u = await udpprobe(native, lab.addr("target"), 9, payload=b"x", wait_timeout=0.5)
    assert u.replyc == 0 and "ICMP type 3 code 3" in (u.probes[0].error or "")
    assert time.time_ns() > u.start_ns
