"""udpprobe and sniff: parameter checks, the sans-I/O parts, result files,
and runs on loopback (udpprobe against a real UDP server; sniff as root).

Lab runs against real services (DNS, NTP, SNMP) and the comparisons with
tcpdump and scamper are in tests/integration/test_udpprobe_lab.py and
test_sniff_lab.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import ipaddress
import math
import socket
import struct
import subprocess
import threading
from typing import Any, Iterator

import pytest

from marionet.client.errors import EndpointError
from marionet.endpoint.local import native_session
from marionet.measure import plan_sniff, plan_udpprobe, sniff, udpprobe
from marionet.measure.registry import check_params
from marionet.measure.sniff import icmp_id_filter, matches_icmp_id
from marionet.results import (Sniff, SniffPkt, SniffStop, Udpprobe, UdpprobeProbe, UdpprobeReply, UdpprobeStop,
                              dumps, from_json, loads, to_json)
from marionet.results.warts import WartsReader
from marionet.results.warts_writer import WartsWriter

from tests.unit.test_primitives import task_result

BASE = {"udpprobe": {"dst": "127.0.0.1", "dport": 53, "payload": "00"},
        "sniff": {"src": "127.0.0.1", "icmp_id": 1}}

BAD: list[tuple[str, dict[str, Any], str, str | None]] = [
    ("udpprobe", {"payload": None}, "payload", "required"),
    ("udpprobe", {"payload": b""}, "payload", "required"),
    ("udpprobe", {"payload": bytes(1001)}, "payload", "1000 bytes"),
    ("udpprobe", {"payload": "abc"}, "payload", "hex"),
    ("udpprobe", {"payload": 7}, "payload", "bytes"),
    ("udpprobe", {"dport": 0}, "dport", "1 - 65535"),
    ("udpprobe", {"dport": 65536}, "dport", "1 - 65535"),
    ("udpprobe", {"dport": "53"}, "dport", "integer"),
    ("udpprobe", {"dst": "www.example"}, "dst", "IPv4 or IPv6"),
    ("udpprobe", {"dst": "224.0.0.1"}, "dst", "multicast"),
    ("udpprobe", {"src": "::1"}, "src", "IPv6"),
    ("udpprobe", {"attempts": 0}, "attempts", "1 - 20"),
    ("udpprobe", {"attempts": 21}, "attempts", "1 - 20"),
    ("udpprobe", {"attempts": True}, "attempts", "integer"),
    ("udpprobe", {"stop_count": 0}, "stop_count", "1 - 20"),
    ("udpprobe", {"attempts": 2, "stop_count": 3}, "stop_count", "attempts 2"),
    ("udpprobe", {"wait_timeout": 0.4}, "wait_timeout", "0.5 s - 5 s"),
    ("udpprobe", {"wait_timeout": 5.1}, "wait_timeout", "0.5 s - 5 s"),
    ("udpprobe", {"wait_timeout": math.nan}, "wait_timeout", "finite"),
    ("udpprobe", {"wait_probe": dt.timedelta(seconds=6)}, "wait_probe", "0.5 s - 5 s"),
    ("udpprobe", {"sport": 0}, "sport", "1 - 65535"),
    ("udpprobe", {"sport": 5000, "attempts": 2}, "sport", "attempts=1"),
    ("udpprobe", {"exitfirst": 1}, "exitfirst", "True or False"),
    ("udpprobe", {"userid": -1}, "userid", "0 - 4294967295"),
    ("udpprobe", {"attempt": 2}, "attempt", "unknown"),
    ("sniff", {"icmp_id": None}, "icmp_id", "exactly one"),
    ("sniff", {"expr": "icmp"}, "icmp_id", "exactly one"),
    ("sniff", {"icmp_id": 65536}, "icmp_id", "0 - 65535"),
    ("sniff", {"icmp_id": -1}, "icmp_id", "0 - 65535"),
    ("sniff", {"icmp_id": None, "expr": "  "}, "expr", "non-empty"),
    ("sniff", {"icmp_id": None, "expr": 5}, "expr", "tcpdump"),
    ("sniff", {"icmp_id": None, "expr": "x" * 1001}, "expr", "1000 characters"),
    ("sniff", {"src": "0.0.0.0"}, "src", "unspecified"),
    ("sniff", {"src": "ff02::1"}, "src", "multicast"),
    ("sniff", {"src": "host.example"}, "src", "IPv4 or IPv6"),
    ("sniff", {"limit_pkt_count": 0}, "limit_pkt_count", "1 - 5000"),
    ("sniff", {"limit_pkt_count": 5001}, "limit_pkt_count", "1 - 5000"),
    ("sniff", {"limit_time": 0}, "limit_time", "positive"),
    ("sniff", {"limit_time": 1201}, "limit_time", "1200 s"),
    ("sniff", {"limit_time": math.inf}, "limit_time", "finite"),
    # the per-task bound: a 20-minute capture is one scamper may run, not one endpoint task
    ("sniff", {"limit_time": 1200}, "sniff", "at most 600 s"),
]

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("udpprobe", {"payload": bytes(1000), "attempts": 20, "stop_count": 20, "wait_timeout": 5, "wait_probe": 5}),
    ("udpprobe", {"payload": "ABcd", "wait_timeout": dt.timedelta(milliseconds=500), "sport": 65535}),
    ("udpprobe", {"dst": "::1", "src": "::1", "exitfirst": True, "userid": 2**32 - 1}),
    ("sniff", {"icmp_id": 0, "limit_pkt_count": 5000, "limit_time": 600}),
    ("sniff", {"icmp_id": None, "expr": "udp port 53", "limit_time": dt.timedelta(milliseconds=1)}),
    ("sniff", {"src": "::1", "icmp_id": 65535}),
]


def _id(row: tuple) -> str:
    return f"{row[0]}-" + ",".join(f"{k}={str(v)[:12]}" for k, v in row[1].items())


@pytest.mark.parametrize("name,extra,param,fragment", BAD, ids=[_id(r) for r in BAD])
def test_bad_parameters_are_refused_by_name(name: str, extra: dict, param: str, fragment: str | None) -> None:
    with pytest.raises(ValueError) as ei:
        check_params(name, {**BASE[name], **extra})
    msg = str(ei.value)
    assert param in msg and (fragment is None or fragment in msg), msg
    assert len(msg) < 400


@pytest.mark.parametrize("name,extra", GOOD, ids=[_id(r) for r in GOOD])
def test_edges_are_accepted(name: str, extra: dict) -> None:
    check_params(name, {**BASE[name], **extra})


def test_plans_fill_scamper_defaults() -> None:
    p = plan_udpprobe("127.0.0.1", 161, payload="3000")
    assert (p.attempts, p.stop_count, p.wait_timeout_ns, p.wait_probe_ns, p.exitfirst) == (1, 1, 2 * 10**9, 10**9,
                                                                                           False)
    assert p.payload == b"\x30\x00"
    s = plan_sniff("127.0.0.1", icmp_id=7)
    assert (s.limit_pkt_count, s.limit_time_ns) == (100, 60 * 10**9)
    # a native placement is not held to the per-task bound
    assert plan_sniff("127.0.0.1", icmp_id=7, limit_time=1200).limit_time_ns == 1200 * 10**9


def test_kernel_filters_compile() -> None:
    from marionet.endpoint.bpf import compile_filter

    for src, fam in (("192.0.2.1", 4), ("2001:db8::1", 6)):
        assert len(compile_filter(icmp_id_filter(src, fam, 4321))) > 5
        assert len(compile_filter(plan_sniff(src, expr="udp port 53").kernel_filter())) > 5


# -------------------------------------------------------------- matching
def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0,
                       ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed) + payload


def _icmp(typ: int, ident: int, seq: int, rest: bytes = b"abcd") -> bytes:
    return struct.pack("!BBHHH", typ, 0, 0, ident, seq) + rest


def _ip6(src: str, dst: str, nh: int, payload: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, len(payload), nh, 64, ipaddress.ip_address(src).packed,
                       ipaddress.ip_address(dst).packed) + payload


ME4, THEM4, ME6, THEM6 = "192.0.2.1", "198.51.100.7", "2001:db8::1", "2001:db8:9::7"


def test_icmp_id_signature_v4() -> None:
    echo_out = _ip4(ME4, THEM4, 1, _icmp(8, 77, 1))
    assert matches_icmp_id(_ip4(THEM4, ME4, 1, _icmp(0, 77, 1)), ME4, 77)
    assert not matches_icmp_id(_ip4(THEM4, ME4, 1, _icmp(0, 78, 1)), ME4, 77)
    assert not matches_icmp_id(_ip4(THEM4, THEM4, 1, _icmp(0, 77, 1)), ME4, 77)   # not for us
    assert not matches_icmp_id(_ip4(THEM4, ME4, 1, _icmp(8, 77, 1)), ME4, 77)     # a request, not a reply
    ttl_exceeded = struct.pack("!BBHI", 11, 0, 0, 0) + echo_out[:28]
    assert matches_icmp_id(_ip4("10.0.0.1", ME4, 1, ttl_exceeded), ME4, 77)
    assert not matches_icmp_id(_ip4("10.0.0.1", ME4, 1, ttl_exceeded), ME4, 78)
    other = struct.pack("!BBHI", 3, 3, 0, 0) + _ip4(THEM4, THEM4, 1, _icmp(8, 77, 1))[:28]
    assert not matches_icmp_id(_ip4("10.0.0.1", ME4, 1, other), ME4, 77)           # quotes someone else's echo
    for junk in (b"", b"\x45", echo_out[:22], bytes(60), b"\x60" + bytes(10)):
        assert not matches_icmp_id(junk, ME4, 77)


def test_icmp_id_signature_v6() -> None:
    assert matches_icmp_id(_ip6(THEM6, ME6, 58, _icmp(129, 5, 1)), ME6, 5)
    assert not matches_icmp_id(_ip6(THEM6, ME6, 58, _icmp(129, 6, 1)), ME6, 5)
    assert not matches_icmp_id(_ip6(THEM6, ME6, 17, _icmp(129, 5, 1)), ME6, 5)
    quoted = _ip6(ME6, THEM6, 58, _icmp(128, 5, 1))
    assert matches_icmp_id(_ip6("2001:db8::ff", ME6, 58, struct.pack("!BBHI", 3, 0, 0, 0) + quoted), ME6, 5)
    assert not matches_icmp_id(_ip6("2001:db8::ff", ME6, 58, struct.pack("!BBHI", 3, 0, 0, 0) + quoted[:44]), ME6, 5)


# ---------------------------------------------------------------- results
def _udpprobe() -> Udpprobe:
    t0 = 1_796_634_998_354_147_123
    return Udpprobe(dst="192.0.2.9", dport=123, payload=b"\x23" + bytes(47), src="192.0.2.1", sport=0,
                    start_ns=t0, userid=9, probe_count=3, stop_count=2, exitfirst=True, vp="vp1",
                    wait_probe=dt.timedelta(milliseconds=700), stop_reason=UdpprobeStop.DONE,
                    probes=[UdpprobeProbe(tx_ns=t0, sport=40001, tx_ts_source="kernel", replies=[
                        UdpprobeReply(rx_ns=t0 + 1_234_567, data=b"\x24" + bytes(47), rtt_ns=1_234_567,
                                      rx_ts_source="kernel")]),
                            UdpprobeProbe(tx_ns=t0 + 10**9, sport=40002),
                            UdpprobeProbe(tx_ns=t0 + 2 * 10**9, sport=40003, replies=[
                                UdpprobeReply(rx_ns=t0 + 2 * 10**9 + 5000, data=b"a", rtt_ns=5000),
                                UdpprobeReply(rx_ns=t0 + 2 * 10**9 + 9000, data=b"bb", rtt_ns=9000)])])


def _sniff() -> Sniff:
    pkt = _ip4(THEM4, ME4, 1, _icmp(0, 77, 1))
    return Sniff(src=ME4, start_ns=1_796_634_996_903_166_001, finish_ns=1_796_634_998_554_925_000,
                 limit_pkt_count=2, limit_time=dt.timedelta(seconds=3), icmp_id=77,
                 pkts=[SniffPkt(rx_ns=1_796_634_997_000_000_123, data=pkt, rx_ts_source="kernel"),
                       SniffPkt(rx_ns=1_796_634_997_100_000_000, data=pkt[:30])],
                 stop_reason=SniffStop.LIMIT_PKTC, userid=3, vp="vp1")


def test_udpprobe_json_is_scamper_shaped_and_round_trips() -> None:
    u = _udpprobe()
    d = to_json(u)
    assert list(d)[:8] == ["type", "version", "src", "dst", "userid", "start", "sport", "dport"]
    assert d["type"] == "udpprobe" and d["version"] == "0.1" and d["flags"] == ["exitfirst"]
    assert d["wait_timeout"] == {"sec": 2, "usec": 0} and d["stop_reason"] == "done"
    assert d["data"] == "23" + "00" * 47 and d["len"] == 48
    assert (d["probe_count"], d["probe_sent"], d["stop_count"]) == (3, 3, 2)
    r0 = d["probes"][0]["replies"][0]
    assert r0["rtt"] == {"sec": 0, "usec": 1234} and r0["len"] == 48
    assert d["probes"][1] == {"tx": {"sec": 1796634999, "usec": 354147}, "sport": 40002, "replyc": 0,
                              "replies": [], "marionet": {"tx_ns": 1796634999354147123}}
    back = loads(dumps(d))
    assert to_json(back) == d
    assert back.replyc == 3 and [r.rtt_ns for r in back] == [1_234_567, 5000, 9000]
    assert back.probes[0].replies[0].rx_ts_source == "kernel" and back.vp == "vp1"


def test_udpprobe_warts_round_trip() -> None:
    u = _udpprobe()
    buf = io.BytesIO()
    WartsWriter(buf).write(u)
    got = WartsReader(io.BytesIO(buf.getvalue())).read()
    assert isinstance(got, Udpprobe)
    assert (str(got.dst), str(got.src), got.dport, got.payload, got.userid) == ("192.0.2.9", "192.0.2.1", 123,
                                                                                 u.payload, 9)
    assert (got.probe_count, got.probe_sent, got.stop_count, got.exitfirst) == (3, 3, 2, True)
    assert got.wait_probe == dt.timedelta(milliseconds=700) and got.stop_reason == UdpprobeStop.DONE
    assert [p.sport for p in got.probes] == [40001, 40002, 40003]
    assert [[r.data for r in p.replies] for p in got.probes] == [[b"\x24" + bytes(47)], [], [b"a", b"bb"]]
    # warts keeps µs: RTTs are recomputed from the stored times
    assert [r.rtt_ns // 1000 for r in got] == [1234, 5, 9]


def test_sniff_json_and_warts_round_trip() -> None:
    s = _sniff()
    d = to_json(s)
    assert d["type"] == "sniff" and d["icmp_id"] == 77 and d["pktc"] == 2 and d["stop_reason"] == "limit-pktc"
    assert d["pkts"][1] == {"tv": {"sec": 1796634997, "usec": 100000}, "len": 30, "data": s.pkts[1].data.hex()}
    back = loads(dumps(d))
    assert to_json(back) == d and back.pkts[0].rx_ns == s.pkts[0].rx_ns
    buf = io.BytesIO()
    WartsWriter(buf).write(s)
    got = WartsReader(io.BytesIO(buf.getvalue())).read()
    assert isinstance(got, Sniff) and got.icmp_id == 77 and got.expr is None and got.userid == 3
    assert [p.data for p in got] == [p.data for p in s] and got.stop_reason == SniffStop.LIMIT_PKTC
    assert [p.rx_ns // 1000 for p in got] == [p.rx_ns // 1000 for p in s]
    e = Sniff(src=ME6, start_ns=1, finish_ns=2, expr="udp port 53", stop_reason="limit-time")
    buf = io.BytesIO()
    WartsWriter(buf).write(e)
    got = WartsReader(io.BytesIO(buf.getvalue())).read()
    assert got.expr == "udp port 53" and got.icmp_id is None and str(got.src) == ME6


def test_to_text() -> None:
    t = _udpprobe().to_text().splitlines()
    assert t[0].startswith("udpprobe to 192.0.2.9:123 from 192.0.2.1, 48 byte payload, 3 probe(s)")
    assert "probe 0 reply from 192.0.2.9:123 rtt 1.234 ms 48 bytes: 24 00" in t[1]
    assert "probe 1 sport 40002: no reply" in t[2]
    assert t[3].endswith("1 bytes: 61  |a|") and t[-1] == ";; 3 sent, 3 replies, stop done"
    s = _sniff().to_text().splitlines()
    assert s[0] == "sniff on 192.0.2.1: icmp[icmpid] == 77"
    assert s[1].endswith(f"IP {THEM4} > {ME4}: ICMP echo reply, id 77, seq 1, length 32")
    assert s[2].endswith("truncated packet, length 30") or "length 30" in s[2]
    assert s[-1] == "2 packets captured, stop limit-pktc"


# ---------------------------------------------------- udpprobe on loopback
@pytest.fixture
def twice_server() -> Iterator[tuple[str, int]]:
    """A UDP server that answers every datagram twice ("1:" and "2:" + it)."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            srv.sendto(b"1:" + data, peer)
            srv.sendto(b"2:" + data, peer)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield srv.getsockname()
    stop.set()
    th.join(2)
    srv.close()


async def test_udpprobe_keeps_every_reply(twice_server) -> None:
    host, port = twice_server
    async with native_session() as s:
        u = await udpprobe(s, host, port, payload=b"hi", wait_timeout=0.5)
    assert u.stop_reason == UdpprobeStop.DONE and u.probe_sent == 1
    (p,) = u.probes
    assert [r.data for r in p.replies] == [b"1:hi", b"2:hi"]
    assert p.tx_ts_source == "kernel" and all(r.rx_ts_source == "kernel" for r in p.replies)
    assert all(r.rtt_ns == r.rx_ns - p.tx_ns and r.rtt_ns > 0 for r in p.replies)
    assert str(u.src) == "127.0.0.1" and u.sport == p.sport > 0 and all(r.sport == port for r in p.replies)


async def test_udpprobe_stop_count_and_exitfirst(twice_server) -> None:
    host, port = twice_server
    async with native_session() as s:
        u = await udpprobe(s, host, port, payload=b"x", attempts=3, stop_count=1, wait_probe=0.5, wait_timeout=0.5)
        assert u.probe_sent == 1 and u.replyc == 2 and u.sport == 0  # answered: no more probes
        u = await udpprobe(s, host, port, payload=b"x", attempts=2, stop_count=2, wait_probe=0.5, wait_timeout=0.5)
        assert u.probe_sent == 2 and len({p.sport for p in u.probes}) == 2
        assert [len(p.replies) for p in u.probes] == [2, 2]
        u = await udpprobe(s, host, port, payload=b"x", exitfirst=True, wait_timeout=5)
        assert u.replyc == 1 and u.stop_reason == UdpprobeStop.DONE
        assert u.probes[0].replies[0].rtt_ns < 10**9  # ended at the reply, not after the wait


async def test_udpprobe_silent_service_uses_every_attempt() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet:  # bound, never answers
        quiet.bind(("127.0.0.1", 0))
        async with native_session() as s:
            u = await udpprobe(s, "127.0.0.1", quiet.getsockname()[1], payload=b"x", attempts=2,
                               wait_probe=0.5, wait_timeout=0.5)
    assert u.probe_sent == 2 and u.replyc == 0 and u.stop_reason == UdpprobeStop.DONE
    assert all(p.tx_ns is not None and p.error is None for p in u.probes)


async def test_udpprobe_endpoint_task_and_halt(session, twice_server) -> None:
    host, port = twice_server
    tid = await session.task("udpprobe", {"dst": host, "dport": port, "payload": "6869", "wait_timeout": 0.5})
    n = await task_result(session, tid)
    assert n.error is None, n.error
    u = from_json(n.result)
    assert isinstance(u, Udpprobe) and [r.data for r in u] == [b"1:hi", b"2:hi"]
    with pytest.raises(EndpointError, match="bad-params.*stop_count"):
        await session.task("udpprobe", {"dst": host, "dport": port, "payload": "00", "stop_count": 2})
    halt = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, halt.set)
    u = await udpprobe(session, host, port, payload=b"x", attempts=5, stop_count=5, wait_probe=2, halt=halt)
    assert u.stop_reason == UdpprobeStop.HALTED and u.probe_sent == 1


# ------------------------------------------------------- sniff on loopback
@pytest.mark.root
async def test_sniff_by_icmp_id_on_loopback(session) -> None:
    """Pings with two ids; sniff sees exactly the replies with its id, up to the count."""
    task = asyncio.ensure_future(sniff(session, "127.0.0.1", icmp_id=4321, limit_pkt_count=3, limit_time=10))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(subprocess.run, "ping -q -c 3 -i 0.2 -e 999 127.0.0.1; "
                            "ping -q -c 5 -i 0.2 -e 4321 127.0.0.1", shell=True, capture_output=True)
    s = await task
    assert s.stop_reason == SniffStop.LIMIT_PKTC and s.pkt_count == 3
    assert [struct.unpack("!BBHHH", p.data[20:28])[3:] for p in s] == [(4321, 1), (4321, 2), (4321, 3)]
    assert all(p.rx_ts_source == "kernel" and s.start_ns < p.rx_ns <= s.finish_ns for p in s)


@pytest.mark.root
async def test_sniff_time_limit_and_bad_filter(session) -> None:
    s = await sniff(session, "127.0.0.1", expr="udp port 9", limit_time=0.5)
    assert s.stop_reason == SniffStop.LIMIT_TIME and s.pkt_count == 0
    assert 0.45e9 < s.finish_ns - s.start_ns < 5e9
    s = await sniff(session, "127.0.0.1", expr="udp port nonsense", limit_time=0.5)
    assert s.stop_reason == SniffStop.ERROR and "filter" in (s.error or "")


def test_ctrl_do_udpprobe(twice_server) -> None:
    from marionet import Ctrl

    host, port = twice_server
    with Ctrl() as c:
        u = c.do_udpprobe(host, port, payload=b"q", wait_timeout=dt.timedelta(milliseconds=500), sync=True)
        assert isinstance(u, Udpprobe) and [r.data for r in u] == [b"1:q", b"2:q"]
        with pytest.raises(ValueError, match="payload is required"):
            c.do_udpprobe(host, port, sync=True)


@pytest.mark.root
async def test_sniff_halt_returns_what_was_captured(session) -> None:
    halt = asyncio.Event()
    task = asyncio.ensure_future(sniff(session, "127.0.0.1", icmp_id=4322, limit_time=20, halt=halt))
    await asyncio.sleep(0.3)
    await asyncio.to_thread(subprocess.run, "ping -q -c 2 -i 0.2 -e 4322 127.0.0.1", shell=True,
                            capture_output=True)
    await asyncio.sleep(0.3)  # the last reply's notification is on its way from the endpoint
    halt.set()
    s = await asyncio.wait_for(task, 5)
    assert s.stop_reason == SniffStop.HALTED and s.pkt_count == 2


def test_udpprobe_without_probes_survives_warts() -> None:
    u = Udpprobe(dst="::1", dport=53, payload=b"x", start_ns=10**18, stop_reason="error", error="send failed")
    buf = io.BytesIO()
    WartsWriter(buf).write(u)
    got = WartsReader(io.BytesIO(buf.getvalue())).read()
    assert got.probes == [] and got.stop_reason == UdpprobeStop.ERROR and str(got.dst) == "::1"
