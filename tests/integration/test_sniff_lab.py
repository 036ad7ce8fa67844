"""sniff on a namespace path client – r1 – r2 – target, against the truth,
Debian's scamper and tcpdump.

* By ICMP id: pings with two ids (and TTL-1 pings whose time-exceeded
  quotes the id) leave the client; sniff sees exactly the echo replies and
  errors for its id, each kernel-stamped — in the native and the endpoint
  placement at once, and the same packets (bytes) as Debian scamper's
  ``sniff -S SRC icmp[icmpid] == ID`` on the same traffic.
* By tcpdump expression: UDP and TCP sent from the target to the client;
  sniff's packets equal what ``tcpdump -Q in`` captured with the same
  expression on the client's interface (count and bytes).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from marionet.lab import linear_path
from marionet.lab.services import netns_socket
from marionet.measure.sniff import sniff
from marionet.results import File, Sniff, SniffStop, from_json

from .labclient import client_endpoint

pytestmark = [pytest.mark.root]

ID, OTHER = 4321, 999


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(linear_path(2, name="snifflab")) as lab:
        yield lab


async def _task(session: Any, params: dict) -> Sniff:
    from tests.unit.test_primitives import task_result

    tid = await session.task("sniff", params)
    n = await task_result(session, tid, timeout=30)
    assert n.error is None, n.error
    return from_json(n.result)


def _icmp_of(pkt: bytes, family: int) -> tuple[int, int, int]:
    """(ICMP type, id, seq): an echo's own, or for an error its type and the quoted echo's id and seq."""
    if family == 4:
        l4 = pkt[(pkt[0] & 0xF) * 4:]
        typ, echo = l4[0], l4
        if typ != 0:
            q = l4[8:]
            echo = q[(q[0] & 0xF) * 4:]
    else:
        l4 = pkt[40:]
        typ, echo = l4[0], l4 if l4[0] == 129 else l4[8 + 40:]
    return typ, *struct.unpack("!HH", echo[4:8])


def _pings(lab: Any, family: int) -> None:
    dst = lab.addr("target", family)
    for argv in (["-e", str(OTHER), "-c", "3"], ["-e", str(ID), "-c", "3"], ["-e", str(ID), "-c", "2", "-t", "1"]):
        lab.exec("client", ["ping", f"-{family}", "-q", "-n", "-i", "0.2", "-W", "1", *argv, dst])


@pytest.mark.parametrize("family", [4, 6])
async def test_sniff_by_icmp_id_sees_exactly_its_pings(lab, family) -> None:
    src = lab.addr("client", family)
    async with client_endpoint(lab) as (session, native):
        mine = asyncio.ensure_future(sniff(native, src, icmp_id=ID, limit_time=4))
        task = asyncio.ensure_future(_task(session, {"src": src, "icmp_id": ID, "limit_time": 4}))
        await asyncio.sleep(0.5)
        before = time.time_ns()
        await asyncio.to_thread(_pings, lab, family)
        results = {"native": await mine, "endpoint": await task}
    reply, err = (0, 11) if family == 4 else (129, 3)
    want = [(reply, ID, 1), (reply, ID, 2), (reply, ID, 3), (err, ID, 1), (err, ID, 2)]
    for where, s in results.items():
        assert s.stop_reason == SniffStop.LIMIT_TIME and s.icmp_id == ID, where
        assert [_icmp_of(p.data, family) for p in s] == want, where
        assert all(p.rx_ts_source == "kernel" and before < p.rx_ns < s.finish_ns for p in s), where
        assert [p.rx_ns for p in s] == sorted(p.rx_ns for p in s)
    assert [p.data for p in results["native"]] == [p.data for p in results["endpoint"]]


async def test_sniff_by_icmp_id_equals_scamper(lab) -> None:
    src = lab.addr("client")
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "sniff.warts"
        # -n: the lab's resolv.conf names no server, and scamper 20211212 exits (255) without one
        sc = lab.popen("client", ["scamper", "-n", "127.0.0.1", "-O", "warts", "-o", str(out), "-I",
                                  f"sniff -S {src} -G 5 -c 5 icmp[icmpid] == {ID}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            async with client_endpoint(lab) as (_session, native):
                mine = asyncio.ensure_future(sniff(native, src, icmp_id=ID, limit_pkt_count=5, limit_time=5))
                await asyncio.sleep(1.0)  # scamper opens its datalink socket
                await asyncio.to_thread(_pings, lab, 4)
                s = await mine
            sc.wait(15)
        finally:
            if sc.poll() is None:
                sc.kill()
                sc.wait()
        err = sc.stderr.read().decode(errors="replace") if sc.stderr else ""
        with File(str(out)) as f:
            got = [o for o in f if isinstance(o, Sniff)]
        assert len(got) == 1, f"scamper (exit {sc.returncode}) wrote {out.stat().st_size if out.exists() else 'no'} bytes: {err[-500:]}"
        theirs = got[0]
    assert theirs.stop_reason == SniffStop.LIMIT_PKTC and s.stop_reason == SniffStop.LIMIT_PKTC
    assert [p.data for p in s] == [p.data for p in theirs]
    # both stamps are the kernel's receive time, at µs in scamper's file
    assert all(abs(a.rx_ns - b.rx_ns) < 2_000_000 for a, b in zip(s, theirs))


def _read_pcap(path: Path) -> list[bytes]:
    """IP packets of a pcap file (Ethernet or Linux cooked v1 link types)."""
    raw = path.read_bytes()
    magic, _vmaj, _vmin, _tz, _sig, _snap, link = struct.unpack("<IHHiIII", raw[:24])
    assert magic == 0xA1B2C3D4, hex(magic)
    strip = {1: 14, 113: 16, 101: 0}[link]
    out, off = [], 24
    while off < len(raw):
        _s, _u, incl, _orig = struct.unpack("<IIII", raw[off:off + 16])
        out.append(raw[off + 16 + strip: off + 16 + incl])
        off += 16 + incl
    return out


def _traffic(lab: Any, family: int, dst: str) -> None:
    """From the target: UDP of several sizes to two ports, TCP SYNs to a closed port."""
    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    with netns_socket(lab.netns("target"), fam, socket.SOCK_DGRAM) as u:
        for i in range(6):
            u.sendto(bytes(10 + 50 * i), (dst, 5000 + i % 2))
            time.sleep(0.02)
    for _ in range(2):
        with netns_socket(lab.netns("target"), fam, socket.SOCK_STREAM) as t:
            t.settimeout(1)
            try:
                t.connect((dst, 6000))
            except OSError:
                pass  # refused: the SYN is what is captured


@pytest.mark.parametrize("family", [4, 6])
async def test_sniff_by_expression_equals_tcpdump(lab, family) -> None:
    src = lab.addr("client", family)
    iface = lab.plan.ifaces["client"][0].name
    expr = "udp port 5000 or tcp dst port 6000"
    with tempfile.TemporaryDirectory() as d:
        pcap = Path(d) / "cap.pcap"
        td = lab.popen("client", ["tcpdump", "-i", iface, "-Q", "in", "-U", "-n", "-w", str(pcap),
                                  f"dst host {src} and ({expr})"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            async with client_endpoint(lab) as (session, native):
                mine = asyncio.ensure_future(sniff(native, src, expr=expr, limit_time=3))
                task = asyncio.ensure_future(_task(session, {"src": src, "expr": expr, "limit_time": 3}))
                await asyncio.sleep(1.0)  # tcpdump is listening by now
                await asyncio.to_thread(_traffic, lab, family, src)
                results = {"native": await mine, "endpoint": await task}
        finally:
            td.terminate()
            td.wait(10)
        theirs = _read_pcap(pcap)
    protos = [b[9] if family == 4 else b[6] for b in theirs]
    assert sorted(protos) == [6, 6, 17, 17, 17]  # 3 UDP to port 5000 (not 5001), 2 refused SYNs to 6000
    for where, s in results.items():
        assert s.stop_reason == SniffStop.LIMIT_TIME, (where, s.error)
        assert [p.data for p in s] == theirs, where
        assert sum(p.len for p in s) == sum(len(b) for b in theirs)
