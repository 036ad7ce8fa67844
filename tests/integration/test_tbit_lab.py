"""tbit against Linux TCP in the lab: results flip with the server's sysctls.

    client ─5ms─ r1 ── target (nginx, plain http, a 100 kB file)

The endpoint runs inside the client namespace (native: an in-process
endpoint called directly; endpoint placement: the same endpoint runs the
``tbit`` task). The ground truth is the target's own configuration, set in
its namespace: ``net.ipv4.tcp_ecn`` 0 → ``ecn-incapable``, 1 or 2 →
``ecn-success``; ``net.ipv4.tcp_sack`` 0 → ``sack-incapable``, 1 →
``sack-rcvr-success``; the route's ``initcwnd`` is the ICW the ``icw`` test
must infer. tbit needs the client's own RSTs dropped for its source ports
(see marionet.measure.tbit), so the client namespace gets scamper users'
iptables rule for ports 40000-40999; a test outside that range checks that
the missing rule is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import shutil
import subprocess
from typing import Any, Iterator

import pytest

from marionet.lab import parse_spec
from marionet.lab.pytest_plugin import make_lab
from marionet.measure.tbit import tbit
from marionet.measure import tcpseg as T
from marionet.results import Tbit, TbitResult, dumps, loads
from marionet.results.warts_writer import WartsWriter

from .labclient import client_endpoint, task_result

pytestmark = pytest.mark.root

SPEC = """
[lab]
name = "tbit"
controller = false

[[host]]
name = "client"

[[router]]
name = "r1"

[[host]]
name = "target"

[[link]]
a = "client"
b = "r1"
delay = "5ms"

[[link]]
a = "r1"
b = "target"

[[service]]
host = "target"
kind = "http"
options = { hostnames = ["www.lab.example"], files = { "big.bin" = 100000, "index.html" = "<p>tbit lab</p>" } }
"""
PORTS = itertools.count(40001)  # inside the client's RST-dropping rule
RULE = "iptables -A OUTPUT -p tcp --tcp-flags RST RST --sport 40000:40999 -j DROP"
RULE6 = "ip6" + RULE[2:]  # ip6tables


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(parse_spec(SPEC)) as lab:
        lab.exec("client", RULE, check=True)
        lab.exec("client", RULE6, check=True)
        yield lab


def sysctl(lab: Any, name: str, value: int) -> None:
    lab.exec("target", ["sysctl", "-qw", f"{name}={value}"], check=True)


async def task_tbit(session: Any, params: dict) -> Tbit:
    return await task_result(session, "tbit", params, 60)


def run_native(lab: Any, family: int = 4, **kw: Any) -> Tbit:
    async def go() -> Tbit:
        async with client_endpoint(lab) as (_s, native):
            return await tbit(native, lab.addr("target", family), sport=next(PORTS), max_time=30, **kw)
    return asyncio.run(go())


def flags_of(t: Tbit, direction: str) -> list[int]:
    return [p.tcp()[3] for p in t.pkts if p.dir == direction]


def check_record(t: Tbit) -> None:
    """Every packet kernel-stamped; the record survives our JSON, and written
    as warts, Debian scamper's ``sc_warts2json`` says what our JSON says."""
    assert t.pkts and all(p.ts_source == "kernel" for p in t.pkts), [(p.dir, p.ts_source) for p in t.pkts]
    back = loads(dumps(t))
    assert back == t
    if shutil.which("sc_warts2json"):
        buf = io.BytesIO()
        WartsWriter(buf).write(t)
        cp = subprocess.run(["sc_warts2json"], input=buf.getvalue(), capture_output=True, timeout=30)
        assert cp.returncode == 0, cp.stderr
        ours = json.loads(dumps(t))
        del ours["marionet"]
        assert json.loads(cp.stdout.decode().splitlines()[0]) == ours


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("ecn, expect", [(0, TbitResult.ECN_INCAPABLE), (1, TbitResult.ECN_SUCCESS),
                                         (2, TbitResult.ECN_SUCCESS)])
def test_ecn_follows_the_servers_tcp_ecn(lab: Any, ecn: int, expect: TbitResult, family: int) -> None:
    sysctl(lab, "net.ipv4.tcp_ecn", ecn)  # Linux's one switch for both families
    t = run_native(lab, family, method="ecn")
    assert t.result == expect, t.to_text()
    check_record(t)
    syn, synack = t.pkts[0], next(p for p in t.pkts if p.dir == "rx")
    assert syn.tcp()[3] & (T.TH_ECE | T.TH_CWR) == T.TH_ECE | T.TH_CWR
    assert bool(synack.tcp()[3] & T.TH_ECE) == (ecn != 0)
    data_tx = [p for p in t.pkts if p.dir == "tx" and p.tcp_datalen]
    assert data_tx and (T.parse_segment(data_tx[0].data).ecn == T.ECN_CE) == (ecn != 0)  # request marked CE
    if ecn:
        assert any(f & T.TH_ECE for f in flags_of(t, "rx")[1:])  # the echo
    assert t.server_mss == (1460 if family == 4 else 1440) and t.result_str == expect.text
    assert t.dst.version == family


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("sack, expect", [(1, TbitResult.SACK_RCVR_SUCCESS), (0, TbitResult.SACK_INCAPABLE)])
def test_sack_follows_the_servers_tcp_sack(lab: Any, sack: int, expect: TbitResult, family: int) -> None:
    sysctl(lab, "net.ipv4.tcp_sack", sack)
    try:
        t = run_native(lab, family, method="sack-rcvr")
    finally:
        sysctl(lab, "net.ipv4.tcp_sack", 1)
    assert t.result == expect, t.to_text()
    check_record(t)
    from marionet.results.tbit import _pkts_json
    blocks = [o["blocks"] for p in _pkts_json(t) if p["dir"] == "rx"
              for o in p.get("tcp_options", []) if o["kind"] == "sack"]
    if sack:
        # each duplicate ACK names the latest one-byte segment first
        firsts = [b[0] for b in blocks]
        assert firsts == [{"left": 3 + 2 * i, "right": 4 + 2 * i} for i in range(6)], firsts
    else:
        assert blocks == []


@pytest.mark.parametrize("family", [4, 6])
def test_null_completes_an_http_get(lab: Any, family: int) -> None:
    t = run_native(lab, family, method="null")
    assert t.result == TbitResult.NULL_SUCCESS, t.to_text()
    check_record(t)
    body = b"".join(T.parse_segment(p.data).payload for p in t.pkts if p.dir == "rx")
    assert body.startswith(b"HTTP/1.1 200") and body.endswith(b"<p>tbit lab</p>"), body[:40]
    assert any(f & T.TH_FIN for f in flags_of(t, "rx")) and any(f & T.TH_FIN for f in flags_of(t, "tx"))


def _target_route(lab: Any) -> str:
    """The target's route toward the client, as ``ip route`` prints it."""
    import ipaddress

    client = ipaddress.ip_address(lab.addr("client"))
    best = None
    for line in lab.exec("target", ["ip", "-4", "route", "show"], check=True).stdout.splitlines():
        dst = line.split()[0]
        net = ipaddress.ip_network("0.0.0.0/0" if dst == "default" else dst, strict=False)
        if client in net and (best is None or net.prefixlen > best[0].prefixlen):
            best = (net, line.split(" initcwnd")[0].strip())
    assert best is not None, "the target has no route to the client"
    return best[1]


@pytest.mark.parametrize("initcwnd", [None, 4])
def test_icw_is_the_servers_initial_window(lab: Any, initcwnd: int | None) -> None:
    route = _target_route(lab)
    if initcwnd is not None:
        lab.exec("target", f"ip -4 route change {route} initcwnd {initcwnd}", check=True)
    try:
        t = run_native(lab, method="icw", url="http://www.lab.example/big.bin")
    finally:
        if initcwnd is not None:
            lab.exec("target", f"ip -4 route change {route}", check=True)
    assert t.result == TbitResult.ICW_SUCCESS, t.to_text()
    check_record(t)
    assert t.icw_segments == (initcwnd or 10), (t.icw_bytes, t.server_mss)  # Linux's default is 10
    assert loads(dumps(t)).icw_bytes == t.icw_bytes and dumps(t).count('"icw_bytes":') == 1


def test_native_and_endpoint_placements_agree(lab: Any) -> None:
    sysctl(lab, "net.ipv4.tcp_ecn", 2)

    async def go() -> list[tuple[Tbit, Tbit]]:
        out = []
        async with client_endpoint(lab) as (session, native):
            for method, url in (("ecn", None), ("sack-rcvr", None), ("null", None),
                                ("icw", "http://www.lab.example/big.bin")):
                params = {"dst": lab.addr("target"), "method": method, "max_time": 30}
                if url:
                    params["url"] = url
                a = await tbit(native, sport=next(PORTS), **params)
                b = await task_tbit(session, {**params, "sport": next(PORTS)})
                out.append((a, b))
        return out

    for a, b in asyncio.run(go()):
        assert a.result == b.result and a.result in (TbitResult.ECN_SUCCESS, TbitResult.SACK_RCVR_SUCCESS,
                                                     TbitResult.NULL_SUCCESS, TbitResult.ICW_SUCCESS), \
            (a.to_text(), b.to_text())
        assert (a.server_mss, a.icw_bytes, a.client_mss) == (b.server_mss, b.icw_bytes, b.client_mss)
        assert b.vp == "lab-client" and str(b.src) == lab.addr("client")
        # the same conversation: the same flags on the same relative sequence numbers
        from marionet.results.tbit import _pkts_json

        def shape(t: Tbit) -> list[tuple]:
            return [(p["dir"], tuple(p["tcp_flags"]), p["tcp_seq"], p["tcp_datalen"])
                    for p in _pkts_json(t) if p["dir"] == "tx"]
        if a.type != "icw":  # how many ACKs icw sends depends on how the flight arrived
            assert shape(a) == shape(b)


def test_missing_rst_rule_is_reported(lab: Any) -> None:
    """Port 41000 is outside the rule: the client kernel resets the SYN-ACK."""
    async def go() -> Tbit:
        async with client_endpoint(lab) as (_s, native):
            return await tbit(native, lab.addr("target"), method="null", sport=41000, max_time=20)
    t = asyncio.run(go())
    assert t.result == TbitResult.TCP_RST, t.to_text()
    assert t.error and "iptables" in t.error and "--sport 41000" in t.error


def test_closed_port_is_noconn_rst(lab: Any) -> None:
    async def go() -> Tbit:
        async with client_endpoint(lab) as (_s, native):
            return await tbit(native, lab.addr("target"), method="ecn", dport=81, sport=next(PORTS),
                              max_time=20)
    t = asyncio.run(go())
    assert t.result == TbitResult.TCP_NOCONN_RST and t.result_str == "tcp-noconn-rst", t.to_text()
    assert [p.dir for p in t.pkts] == ["tx", "rx"]


@pytest.mark.parametrize("locked, expect", [(False, TbitResult.PMTUD_SUCCESS), (True, TbitResult.PMTUD_NODF)])
def test_pmtud_follows_the_servers_route(lab: Any, locked: bool, expect: TbitResult) -> None:
    """Our "fragmentation needed" (MTU 1280) answers the server's first full
    segment: a server doing PMTUD resends it smaller; with the route's MTU
    locked (``mtu lock 1500``) it sends without DF, so there is nothing to
    answer."""
    route = _target_route(lab)
    if locked:
        lab.exec("target", f"ip -4 route change {route} mtu lock 1500", check=True)
    try:
        t = run_native(lab, method="pmtud", mtu=1280, url="http://www.lab.example/big.bin", wait_idle=2)
    finally:
        if locked:
            lab.exec("target", f"ip -4 route change {route}", check=True)
        lab.exec("target", "ip route flush cache", check=True)  # forget the learnt PMTU
    assert t.result == expect, t.to_text()
    check_record(t)
    rx = [T.parse_segment(p.data) for p in t.pkts if p.dir == "rx"]
    ptbs = [p for p in t.pkts if p.dir == "tx" and p.data[9] == 1]
    if expect == TbitResult.PMTUD_SUCCESS:
        assert len(ptbs) == 1
        big = next(i for i, s in enumerate(rx) if s.size > 1280)
        assert rx[big].df and any(s.size <= 1280 and s.datalen for s in rx[big + 1:])  # it shrank
        assert t.mtu == 1280 and '"mtu":1280' in dumps(t)
    else:
        assert ptbs == [] and all(not s.df for s in rx if s.datalen)


VP_SPEC = """
[lab]
name = "tbitvp"
controller = "auto"

[[vp]]
name = "vp-nz"

[[host]]
name = "target"

[[link]]
a = "vp-nz"
b = "target"
delay = "3ms"

[[service]]
host = "target"
kind = "http"
options = { hostnames = ["www.lab.example"], files = { "index.html" = "<p>tbit lab</p>", "big.bin" = 100000 } }
"""


def test_do_tbit_from_a_vp_and_remote_placement() -> None:
    """``Ctrl.do_tbit`` runs the task on a lab VP through the controller; the
    same test run remotely (conversation here, packets via the VP) agrees."""
    with make_lab(parse_spec(VP_SPEC)) as vlab:
        vlab.exec("vp-nz", RULE, check=True)
        dst = vlab.addr("target")
        with vlab.ctrl() as ctrl:
            (inst,) = [i for i in ctrl.instances() if i.name == "vp-nz"]
            t = ctrl.do_tbit(dst, method="ecn", sport=next(PORTS), max_time=20, inst=inst, sync=True)
        assert isinstance(t, Tbit) and t.vp == "vp-nz" and t.result == TbitResult.ECN_SUCCESS, t.to_text()
        assert str(t.src) == vlab.addr("vp-nz") and all(p.ts_source == "kernel" for p in t.pkts)

        async def remote() -> list[Tbit]:
            conn = await vlab.aconnect()
            try:
                s = await conn.attach("vp-nz")
                try:
                    return [await tbit(s, dst, method=m, sport=next(PORTS), max_time=20, url=url)
                            for m, url in (("ecn", None), ("sack-rcvr", None), ("null", None),
                                           ("icw", "http://www.lab.example/big.bin"))]
                finally:
                    await s.close()
            finally:
                await conn.close()
        results = asyncio.run(remote())
        assert [x.result for x in results] == [TbitResult.ECN_SUCCESS, TbitResult.SACK_RCVR_SUCCESS,
                                               TbitResult.NULL_SUCCESS, TbitResult.ICW_SUCCESS], \
            [x.to_text() for x in results]
        assert results[3].icw_segments == 10
        r = results[0]
        assert r.vp == "vp-nz" and all(p.ts_source == "kernel" for x in results for p in x.pkts)
        # kernel stamps on the VP: the SYN/SYN-ACK round trip is the path's 6 ms, not the control path's
        synack_rtt = [p.time_ns for p in r.pkts[:2]]
        assert 5.5e6 <= synack_rtt[1] - synack_rtt[0] < 30e6, synack_rtt


@contextlib.contextmanager
def port_hold(lab: Any, port: int) -> Iterator[None]:
    """A listening socket on the client's ``port`` whose socket filter drops
    every segment: the kernel finds it for the SYN-ACK and discards the
    segment before TCP would answer it, so no RST — and, unlike a firewall
    rule, our own blinded RSTs still leave (see docs/decisions.md)."""
    import ctypes
    import socket
    import struct as st

    from . import pathlab

    with pathlab.inside(lab.netns("client")):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((lab.addr("client"), port))
        s.listen(1)
        insn = ctypes.create_string_buffer(st.pack("HBBI", 0x06, 0, 0, 0), 8)  # BPF "ret #0"
        s.setsockopt(socket.SOL_SOCKET, 26, st.pack("HP", 1, ctypes.addressof(insn)))  # SO_ATTACH_FILTER
        yield
    finally:
        s.close()


HOLD_PORTS = itertools.count(42001)  # outside the RST rule: a plain rule would drop our blinded RSTs


@pytest.mark.parametrize("method, off, expect", [
    ("blind-rst", 10, TbitResult.BLIND_CHALLENGE),  # RFC 5961: an in-window guess gets a challenge ACK
    # the exact sequence number resets the connection: scamper says blind-accepted, or tcp-rst when
    # the server's reply to a later segment of ours was what showed it (its response came in two)
    ("blind-rst", 0, (TbitResult.BLIND_ACCEPTED, TbitResult.TCP_RST)),
    ("blind-syn", 10, TbitResult.BLIND_CHALLENGE),
])
def test_blind_rst_and_syn(lab: Any, method: str, off: int, expect: Any) -> None:
    port = next(HOLD_PORTS)

    async def go() -> Tbit:
        async with client_endpoint(lab) as (_s, native):
            return await tbit(native, lab.addr("target"), method=method, sport=port, blind_off=off,
                              wait_idle=2, max_time=30)
    with port_hold(lab, port):
        t = asyncio.run(go())
    assert t.result in (expect if isinstance(expect, tuple) else (expect,)), t.to_text()
    check_record(t)
    blinded = [p for p in t.pkts[1:] if p.dir == "tx" and p.tcp()[3] & (T.TH_RST | T.TH_SYN)]
    assert blinded and T.parse_segment(blinded[0].data).seq == (t.client_isn + 1 + 167 + off) & 0xFFFFFFFF
    assert json.loads(dumps(t))["blind_off"] == off


def test_a_rst_rule_that_drops_our_own_rsts_is_reported(lab: Any) -> None:
    t = run_native(lab, method="blind-rst", wait_idle=2)
    assert t.result == TbitResult.ERROR and "spare" in (t.error or ""), t.to_text()


@pytest.mark.parametrize("off, expect", [(-70000, TbitResult.BLIND_CHALLENGE), (0, TbitResult.BLIND_ACCEPTED)])
def test_blind_data(lab: Any, off: int, expect: TbitResult) -> None:
    """The request's last third with an acknowledgement number 70000 too old
    is dropped with a challenge ACK (RFC 5961 §5); with the right one it is
    held until the hole before it is filled, then acknowledged with it."""
    t = run_native(lab, method="blind-data", blind_off=off, blind_retx=1, wait_idle=2)
    assert t.result == expect, t.to_text()
    check_record(t)
    data = [T.parse_segment(p.data) for p in t.pkts if p.dir == "tx" and p.tcp_datalen]
    third = 167 // 3
    assert [d.datalen for d in data[:3]] == [third, 167 - 2 * third, third]  # first, blinded last, second
    assert (data[1].ack - data[0].ack) & 0xFFFFFFFF == off & 0xFFFFFFFF


@pytest.mark.parametrize("off, expect", [(-70000, TbitResult.BLIND_CHALLENGE), (0, TbitResult.BLIND_ACCEPTED)])
def test_blind_fin(lab: Any, off: int, expect: TbitResult) -> None:
    """A FIN past a hole, with an acknowledgement number 70000 too old, is
    dropped with a challenge ACK; with the right one it is held, and
    acknowledged with the request once the hole is filled."""
    t = run_native(lab, method="blind-fin", blind_off=off, blind_retx=1, wait_idle=2)
    assert t.result == expect, t.to_text()
    check_record(t)
    fins = [T.parse_segment(p.data) for p in t.pkts if p.dir == "tx" and p.tcp()[3] & T.TH_FIN]
    assert fins and fins[0].seq == (t.client_isn + 1 + 167) & 0xFFFFFFFF and fins[0].datalen == 0
