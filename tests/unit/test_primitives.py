"""Primitives on the endpoint (Task / Halt / TaskResult) and the congruence
of one ping run in all three placements."""

from __future__ import annotations

import asyncio
import statistics

import pytest

from marionet.client.errors import EndpointError
from marionet.measure import ping
from marionet.results import Ping, PingStop, from_json

TARGETS = ["127.0.0.1", "::1"]
METHODS = ["icmp-echo", "udp", "tcp-syn"]


async def task_result(session, tid: int, timeout: float = 10):
    """The TaskResult for ``tid`` (other notifications are skipped)."""
    async def wait():
        while True:
            n = await session.next_notification(timeout)
            assert n is not None, f"no result for task {tid}"
            if n.kind == "taskres" and n.task == tid:
                return n
    return await asyncio.wait_for(wait(), timeout)


async def run_task(session, params: dict) -> Ping:
    tid = await session.task("ping", params)
    n = await task_result(session, tid)
    assert n.error is None, n.error
    return from_json(n.result)


# ------------------------------------------------------------ requests
async def test_unknown_primitive_and_bad_params_are_refused(session):
    with pytest.raises(EndpointError, match="unknown-primitive.*pong"):
        await session.task("pong", {})
    with pytest.raises(EndpointError, match="bad-params.*unknown ping parameter.*attempt"):
        await session.task("ping", {"dst": "127.0.0.1", "attempt": 3})
    with pytest.raises(EndpointError, match="bad-params.*needs parameter.*dst"):
        await session.task("ping", {})
    with pytest.raises(EndpointError, match="bad-params.*too small"):
        await session.task("ping", {"dst": "::1", "size": 10})
    with pytest.raises(EndpointError, match="bad-params.*halt"):
        await session.task("ping", {"dst": "::1", "halt": True})
    with pytest.raises(EndpointError, match="unknown-task"):
        await session.halt(12345)


@pytest.mark.root
async def test_task_ids_unique_and_results_routed(session):
    tids = [await session.task("ping", {"dst": d, "attempts": 2, "wait_probe": 0.01}) for d in TARGETS]
    assert len(set(tids)) == 2
    got = {}
    while len(got) < 2:
        n = await session.next_notification(10)
        assert n is not None
        if n.kind == "taskres":
            got[n.task] = from_json(n.result)
    assert {str(p.dst) for p in got.values()} == set(TARGETS)
    assert all(p.nreplies == 2 for p in got.values())


@pytest.mark.root
async def test_runtime_failure_is_the_task_error(session):
    """A bind to an address the endpoint does not own fails inside the task."""
    tid = await session.task("ping", {"dst": "::1", "src": "2001:db8::77", "attempts": 1})
    n = await task_result(session, tid)
    assert n.result is None and n.error.startswith("os-error: cannot set up socket")


@pytest.mark.root
async def test_halt_mid_ping_returns_partial_result(session):
    tid = await session.task("ping", {"dst": "127.0.0.1", "attempts": 100, "wait_probe": 0.05})
    await asyncio.sleep(0.35)
    await session.halt(tid)
    n = await task_result(session, tid)
    p = from_json(n.result)
    assert n.error is None and p.stop_reason == PingStop.HALTED
    assert 2 <= p.ping_sent < 100 and p.nreplies == p.ping_sent
    with pytest.raises(EndpointError, match="unknown-task"):  # it is over
        await session.halt(tid)


@pytest.mark.root
async def test_task_limit_per_session(endpoint, session):
    endpoint.primitives.max_tasks = 1
    tid = await session.task("ping", {"dst": "::1", "attempts": 100, "wait_probe": 0.05})
    with pytest.raises(EndpointError, match="limit.*at most 1 task"):
        await session.task("ping", {"dst": "::1"})
    await session.halt(tid)
    await task_result(session, tid)
    tid = await session.task("ping", {"dst": "::1", "attempts": 1})  # room again
    assert (await task_result(session, tid)).error is None


@pytest.mark.root
async def test_session_close_halts_its_tasks(endpoint):
    from marionet import aio

    s = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    await s.task("ping", {"dst": "127.0.0.1", "attempts": 100, "wait_probe": 0.05})
    await asyncio.sleep(0.1)
    (server_side,) = [x for x in endpoint.sessions if x.tasks]
    await s.close()
    for _ in range(100):
        if not server_side.tasks:
            break
        await asyncio.sleep(0.02)
    assert not server_side.tasks


# ---------------------------------------------------- three placements
@pytest.mark.root
@pytest.mark.parametrize("dst", TARGETS)
@pytest.mark.parametrize("method", METHODS)
async def test_three_placements_congruent(session, dst, method):
    """native, endpoint and remote: same replies, kernel-stamped positive RTTs."""
    from marionet.endpoint.local import native_session

    params = {"dst": dst, "method": method, "attempts": 4, "wait_probe": 0.01}
    async with native_session() as ns:
        native = await ping(ns, **params)
    on_endpoint = await run_task(session, params)
    remote = await ping(session, **params)
    shapes = []
    for name, p in (("native", native), ("endpoint", on_endpoint), ("remote", remote)):
        assert p.stop_reason == PingStop.DONE, (name, p.extra)
        assert p.ping_sent == 4 and p.nreplies == 4, name
        for r in p.replies:
            assert r.rtt_ns > 0 and r.tx_ts_source == "kernel" and r.rx_ts_source == "kernel", name
        shapes.append(sorted((r.attempt, str(r.src), r.reply_ttl, r.reply_size, r.icmp_type, r.icmp_code,
                              r.tcp_flags, r.reply_proto) for r in p.replies))
    assert shapes[0] == shapes[1] == shapes[2]


@pytest.mark.root
async def test_placement_rtt_figures(session):
    """Performance note (printed, not asserted): loopback min/median RTT per placement."""
    from marionet.endpoint.local import native_session

    params = {"dst": "127.0.0.1", "attempts": 20, "wait_probe": 0.005}
    async with native_session() as ns:
        native = await ping(ns, **params)
    rows = [("native", native), ("endpoint", await run_task(session, params)),
            ("remote", await ping(session, **params))]
    print()
    for name, p in rows:
        rtts = [r.rtt_ns / 1000 for r in p.replies]
        print(f"  ping 127.0.0.1 {name:8s} n={len(rtts):2d} min={min(rtts):6.1f} us "
              f"median={statistics.median(rtts):6.1f} us")
        assert p.nreplies == 20
