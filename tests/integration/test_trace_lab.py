"""do_trace on a namespace path: client – r1 – r2 – r3 – target.

The endpoint runs inside the client namespace (the test thread enters it
while the endpoint and its sessions exist, as in test_endpoint_paths.py).
Every trace must name the routers exactly as ``lab.truth()`` says — IPv4
and IPv6, udp-paris, icmp-paris and tcp (no listener on the target: its RST
completes the trace) — in the native, remote and endpoint placements; a
router that drops TTL-expired silently shows as ``None``; and the path
agrees with Debian's ``traceroute -n -q 1`` run in the same namespace
(C3: Jaccard index of the (hop, address) sets = 1.0).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from marionet.lab import linear_path
from marionet.measure.trace import trace
from marionet.results import Trace, TraceStop

from .labclient import client_endpoint, task_result

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAMILIES = [4, 6]
METHODS = ["udp-paris", "icmp-paris", "tcp"]


def truth_path(lab: Any, family: int) -> list[str | None]:
    """Per TTL, the address that should answer (None: silent), ending at the target."""
    dst = lab.addr("target", family)
    (p,) = [p for p in lab.truth()["paths"] if p["src"] == "client" and p["dst"] == "target"
            and p["family"] == family and p["dst_addr"] == dst]
    assert p["deterministic"]
    return p["paths"][0]


def path_of(t: Trace) -> list[str | None]:
    return [None if h is None else str(h.src) for h in t.hops()]


async def task_trace(session: Any, params: dict) -> Trace:
    return await task_result(session, "trace", params, 30)


def native_traceroute(lab: Any, family: int, method: str) -> list[str | None]:
    """Butskoy traceroute's path (one probe per hop) from the client namespace."""
    dst = lab.addr("target", family)
    flags = {"udp-paris": [], "icmp-paris": ["-I"], "tcp": ["-T", "-p", "80"]}[method]
    cp = lab.exec("client", ["traceroute", f"-{family}", "-n", "-q", "1", "-w", "1", "-m", "8", *flags, dst],
                  check=True)
    hops: dict[int, str | None] = {}
    for line in cp.stdout.splitlines()[1:]:
        m = re.match(r"\s*(\d+)\s+(\S+)", line)
        if m:
            hops[int(m.group(1))] = None if m.group(2) == "*" else m.group(2)
    return [hops[k] for k in sorted(hops)]


def jaccard(a: list[str | None], b: list[str | None]) -> float:
    sa = {(i, x) for i, x in enumerate(a, 1) if x is not None}
    sb = {(i, x) for i, x in enumerate(b, 1) if x is not None}
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


@pytest.fixture(scope="module")
def lab() -> Any:
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(linear_path(3, name="trlin")) as lab:
        yield lab


async def test_paths_match_truth_in_every_placement(lab):
    async with client_endpoint(lab) as (session, native):
        for family in FAMILIES:
            want = truth_path(lab, family)
            assert len(want) == 4 and None not in want
            for method in METHODS:
                params = {"dst": lab.addr("target", family), "method": method, "wait_timeout": 1.0}
                for name, t in (("native", await trace(native, **params)),
                                ("remote", await trace(session, **params)),
                                ("endpoint", await task_trace(session, params))):
                    where = (family, method, name)
                    assert t.stop_reason == TraceStop.COMPLETED, (where, t.stop_reason, t.extra)
                    assert path_of(t) == want, where
                    assert str(t.src) == lab.addr("client", family), where
                    for ttl, h in enumerate(t.hops(), start=1):
                        assert h.probe_ttl == ttl and h.rtt_ns > 0, where
                        assert h.tx_ts_source == "kernel" and h.rx_ts_source == "kernel", where
                        if ttl < 4:
                            assert h.is_icmp_ttl_exp() and h.icmp_q_ttl == 1, where
                            assert h.icmp_q_ipl == t.probe_size, where
                    last = t.hop(4)
                    if method == "tcp":
                        assert last.is_tcp() and last.tcp_flags & 0x04, where  # RST: no listener
                    elif method == "udp-paris":
                        assert last.is_icmp_unreach_port(), where
                    else:
                        assert last.is_icmp_echo_reply(), where
                assert session.sockets == {} and native.sockets == {}


async def test_classic_udp_and_icmp(lab):
    async with client_endpoint(lab) as (session, _native):
        for family in FAMILIES:
            for method in ("udp", "icmp"):
                t = await trace(session, lab.addr("target", family), method=method, wait_timeout=1.0)
                assert t.is_completed() and path_of(t) == truth_path(lab, family), (family, method)


async def test_firsthop_and_hoplimit(lab):
    async with client_endpoint(lab) as (session, _native):
        want = truth_path(lab, 4)
        t = await trace(session, lab.addr("target", 4), firsthop=2, hoplimit=3, wait_timeout=1.0)
        assert t.stop_reason == TraceStop.HOPLIMIT and path_of(t) == want[1:3]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", METHODS)
async def test_agrees_with_debian_traceroute(lab, family, method):
    async with client_endpoint(lab) as (session, _native):
        ours = path_of(await trace(session, lab.addr("target", family), method=method, wait_timeout=1.0))
    theirs = await asyncio.to_thread(native_traceroute, lab, family, method)
    assert jaccard(ours, theirs) == 1.0, (ours, theirs)


async def test_unresponsive_router_is_a_gap(lab_factory):
    lab = lab_factory(linear_path(3, unresponsive=(2,), name="trgap"))
    async with client_endpoint(lab) as (session, _native):
        for family in FAMILIES:
            want = truth_path(lab, family)
            assert want[1] is None and want[0] is not None
            for method in ("udp-paris", "icmp-paris"):
                t = await trace(session, lab.addr("target", family), method=method, attempts=2,
                                wait_timeout=0.3)
                assert t.is_completed(), (family, method, t.extra)
                assert path_of(t) == want, (family, method)
                assert t.probe_count == 5  # the silent hop got both attempts
            theirs = await asyncio.to_thread(native_traceroute, lab, family, "udp-paris")
            assert theirs == want and jaccard(path_of(t), theirs) == 1.0


async def test_gaplimit_past_the_target_network(lab_factory):
    """Every router silent and nothing at the end: stop after gaplimit hops."""
    lab = lab_factory(linear_path(2, unresponsive=(1, 2), name="trdark"))
    async with client_endpoint(lab) as (session, _native):
        t = await trace(session, lab.addr("target", 4), firsthop=1, hoplimit=2, gaplimit=2, attempts=1,
                        wait_timeout=0.2)
        assert t.stop_reason == TraceStop.GAPLIMIT and path_of(t) == [None, None]


async def test_squeries_finds_the_same_path_with_probes_overlapping(lab_factory):
    """16 TTLs may be out at once (Butskoy's default): on a path with 10 ms
    per link the path is the truth, the TTL 2..4 probes left before the TTL 1
    answer came back, and probes sent past the target are not in the result."""
    lab = lab_factory(linear_path(3, delay="10ms", name="trsqd"))
    async with client_endpoint(lab) as (session, native):
        for family, io in ((4, session), (6, session), (4, native)):
            want = truth_path(lab, family)
            t = await trace(io, lab.addr("target", family), squeries=16, wait_timeout=1.0)
            assert t.is_completed() and path_of(t) == want, t.extra
            assert t.hop_count == 4 and t.extra["squeries"] == 16
            assert t.probe_count >= 4 and all(h.probe_ttl <= 4 for h in t.hop_records)
            h1 = t.hop(1)
            rx1 = h1.tx_ns + h1.rtt_ns
            assert all(t.hop(k).tx_ns < rx1 for k in (2, 3, 4)), "probes went out one at a time"
            for h in t.hops():
                assert h.tx_ts_source == "kernel" and h.rx_ts_source == "kernel"
        task = await task_trace(session, {"dst": lab.addr("target", 6), "squeries": 4,
                                          "wait_timeout": 1.0})
        assert task.is_completed() and path_of(task) == truth_path(lab, 6)


async def test_squeries_with_a_silent_router(lab_factory):
    lab = lab_factory(linear_path(3, unresponsive=(2,), name="trsq"))
    async with client_endpoint(lab) as (session, _native):
        want = truth_path(lab, 4)
        t = await trace(session, lab.addr("target", 4), squeries=8, attempts=2, wait_timeout=0.3)
        assert t.is_completed() and path_of(t) == want
        assert [h.probe_ttl for h in t.hop_records].count(2) == 0
        assert sum(1 for pr in t.hop_records if pr.probe_ttl == 4) >= 1
