"""Throughput and the endpoint support it rests on (count mode, fill), on
loopback through a real endpoint and the real throughput server."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading

import pytest

from marionet.client.errors import EndpointError, GuardDeniedError
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.endpoint.local import local_session, native_session
from marionet.guard import privileges as P
from marionet.guard.enforce import PolicyGuard
from marionet.measure.registry import check_params
from marionet.measure.throughput import plan_throughput, throughput
from marionet.measure.throughput_server import ThreadedServer
from marionet.results import Throughput, ThroughputStop, from_json, to_json
from marionet.wire import messages as m

MiB = 1 << 20


@pytest.fixture(scope="module")
def server():
    with ThreadedServer("127.0.0.1", 0) as srv:
        yield srv.address


# ----------------------------------------------------------------- parameters
@pytest.mark.parametrize("kw, name", [
    ({"dst": "nowhere"}, "dst"), ({"dst": "224.0.0.1"}, "multicast"), ({"port": 0}, "port"),
    ({"port": 70000}, "port"), ({"direction": "sideways"}, "direction"), ({"size": 0}, "size"),
    ({"size": 5 << 30}, "size"), ({"size": 1.5}, "size"), ({"skip": -1}, "skip"),
    ({"size": 100, "skip": 100}, "skip"), ({"interval": 0}, "interval"), ({"interval": float("nan")}, "interval"),
    ({"timeout": 0}, "timeout"), ({"timeout": float("inf")}, "timeout"), ({"start_delay": -1}, "start_delay"),
    ({"connect_timeout": 0}, "connect_timeout"), ({"userid": -1}, "userid"),
])
def test_bad_parameters_raise_naming_them(kw, name):
    args = {"dst": "127.0.0.1", **kw}
    with pytest.raises(ValueError, match=name):
        plan_throughput(**args)
    with pytest.raises(ValueError, match=name):
        check_params("throughput", args)


def test_task_bound_and_samples_bound():
    with pytest.raises(ValueError, match="at most 600 s"):
        check_params("throughput", {"dst": "127.0.0.1", "timeout": 700})
    check_params("throughput", {"dst": "127.0.0.1", "timeout": 700}, max_s=None)  # native/remote: no bound
    p = plan_throughput("127.0.0.1", timeout=590, interval=0.001)
    assert p.max_samples == 100_000  # a task's result stays well inside one frame


# ------------------------------------------------------------ the measurement
async def test_download_and_upload_on_loopback(server):
    host, port = server
    async with native_session() as io:
        for direction in ("download", "upload"):
            r = await throughput(io, host, port, direction=direction, size=8 * MiB, skip=MiB)
            assert r.stop_reason == ThroughputStop.DONE, r.error
            assert r.bytes == 8 * MiB and r.bps and r.bps > 1e6
            assert r.b >= MiB and r.t1_ns > r.t0_ns and r.ts_source == "kernel"
            assert r.measured_by == ("vp" if direction == "download" else "server")
            assert r.samples[-1][1] == 8 * MiB
            assert all(b[0] >= a[0] and b[1] >= a[1] for a, b in zip(r.samples, r.samples[1:]))
            back = from_json(to_json(r))
            assert isinstance(back, Throughput) and back.bps == r.bps and back.samples == r.samples
            assert "Mbits/sec" in r.to_text()
        # the session is clean afterwards: not suppressed, nothing left open
        assert (await io.info()).status is not None and io.sockets == {}


async def test_refused_port_is_a_result():
    async with native_session() as io:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        r = await throughput(io, "127.0.0.1", port)
        assert r.stop_reason == ThroughputStop.REFUSED and "ECONNREFUSED" in r.error and r.bps is None


def _one_shot(behaviour):
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()

    def run():
        conn, _ = ls.accept()
        try:
            behaviour(conn)
        finally:
            conn.close()
            ls.close()

    threading.Thread(target=run, daemon=True).start()
    return ls.getsockname()[1]


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_server_err_is_a_result():
    def err(conn):
        conn.recv(200)
        conn.sendall(b"ERR too big for me\n")

    async with native_session() as io:
        for direction in ("download", "upload"):
            r = await throughput(io, "127.0.0.1", _one_shot(err), direction=direction, size=4 * MiB, timeout=10)
            assert r.stop_reason == ThroughputStop.SERVER, (r.stop_reason, r.error)
            assert "too big for me" in r.error


async def test_peer_vanishing_mid_transfer_is_a_result_without_hanging():
    def download_then_reset(conn):
        conn.recv(200)
        conn.sendall(bytes(MiB))
        _reset(conn)

    def upload_then_reset(conn):
        got = 0
        while got < MiB:
            got += len(conn.recv(65536))
        _reset(conn)

    async with native_session() as io:
        r = await asyncio.wait_for(throughput(io, "127.0.0.1", _one_shot(download_then_reset), size=8 * MiB,
                                              timeout=10), 20)
        assert r.stop_reason in (ThroughputStop.RESET, ThroughputStop.SHORT) and r.bps is None
        assert "of 8388608 bytes" in r.error and r.bytes < 8 * MiB  # a reset discards what was unread
        r = await asyncio.wait_for(throughput(io, "127.0.0.1", _one_shot(upload_then_reset), direction="upload",
                                              size=64 * MiB, timeout=10), 20)
        assert r.stop_reason in (ThroughputStop.RESET, ThroughputStop.SERVER) and r.bps is None and r.error


async def test_silent_server_times_out_and_halt_stops():
    def silent(conn):
        conn.recv(200)
        threading.Event().wait(5)

    async with native_session() as io:
        r = await throughput(io, "127.0.0.1", _one_shot(silent), size=MiB, skip=0, timeout=0.5)
        assert r.stop_reason == ThroughputStop.TIMEOUT and "within 0.5 s" in r.error
        halt = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, halt.set)
        r = await throughput(io, "127.0.0.1", _one_shot(silent), size=MiB, skip=0, timeout=30, halt=halt)
        assert r.stop_reason == ThroughputStop.HALTED


# ------------------------------------------------ count mode, fill, suppression
async def test_count_end_and_fill_end_arrive_while_suppressed():
    def serve(conn):
        conn.recv(10)
        conn.sendall(b"ERR-ish head" + bytes(3 * MiB))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass

    async with native_session() as io:
        st = io.stream()
        sid = await io.nopen("tcp", raddr="127.0.0.1", rport=_one_shot(serve), stream=st)
        await io.ncount(sid, mark=MiB, interval=0.001, head=8)
        await io.suppress()
        await io.nsend(sid, b"go")
        seen = []
        while not isinstance(n := await st.next(10), m.NCountEnd):
            assert n is not None, "no count summary while suppressed"
            seen.append(n.kind)
        assert "ndata" not in seen and "nstat" not in seen[1:]  # only the summary got through
        total = 12 + 3 * MiB
        assert n.state == "peer-closed" and n.nbytes == total and n.head == b"ERR-ish "
        assert n.mark_bytes >= MiB and n.first_ns <= n.mark_ns <= n.last_ns and n.samples[-1] == (n.last_ns, total)
        await io.nsend(sid, b"", fill=2 * MiB + 7, tag=9)
        await io.nctl("shutdown", sid)
        f = await st.next(10)
        assert isinstance(f, m.NFill) and f.error is None and f.nbytes == 2 * MiB + 7 and f.tag == 9
        assert f.ts_source == "kernel" and f.first_ns <= f.last_ns
        assert await st.next(0.2) is None  # everything else is held
        await io.resume()
        kinds = [x.kind for x in [await st.next(2) for _ in range(2)]]
        assert kinds == ["nstat", "nstat"]  # peer-closed, shutdown, held in order until resumed
        await io.nclose(sid)


async def test_fill_and_count_are_checked_at_the_api_and_on_the_wire():
    async with native_session() as io:
        udp = await io.nopen("udp")
        for bad in (-1, (4 << 30) + 1, 1.5, True):
            with pytest.raises(ValueError, match="fill"):
                await io.nsend(udp, b"", fill=bad)
        with pytest.raises(ValueError, match="interval"):
            await io.ncount(udp, interval=0)
        with pytest.raises(ValueError, match="max_samples"):
            await io.ncount(udp, max_samples=10**6)
        # a client bypassing the library: the endpoint says the same
        for req, code, text in ((m.NSend(id=io.next_id(), sock=udp, data=b"", fill=-5), "bad-option", "fill"),
                                (m.NSend(id=io.next_id(), sock=udp, data=b"", fill=10), "not-supported", "TCP"),
                                (m.NCount(id=io.next_id(), sock=udp), "not-supported", "TCP"),
                                (m.NCount(id=io.next_id(), sock=udp, interval_ns=0), "not-supported", "TCP")):
            with pytest.raises(EndpointError) as ei:
                await io._request(req)
            assert ei.value.code == code and text in ei.value.reason
        with ThreadedServer("127.0.0.1", 0) as srv:
            tcp = await io.nopen("tcp", raddr=srv.address[0], rport=srv.address[1])
            with pytest.raises(EndpointError, match="interval_ns"):
                await io._request(m.NCount(id=io.next_id(), sock=tcp, interval_ns=5))
            with pytest.raises(EndpointError, match="head"):
                await io._request(m.NCount(id=io.next_id(), sock=tcp, head=10**6))
            await io.ncount(tcp)
            with pytest.raises(EndpointError, match="already in count mode"):
                await io.ncount(tcp)
        assert (await io.info()).name == "native"  # the session goes on


async def test_guard_counts_fill_bytes_and_refuses_an_over_budget_fill():
    grants = P.parse({"protocols": ["tcp"], "dst": ["127.0.0.0/8"], "total": {"bytes": 4 * MiB, "period_s": 3600}})
    ep = Endpoint(EndpointConfig(name="g"), guard=PolicyGuard(lambda p: grants))
    await ep.start()
    io = await local_session(ep)
    try:
        with ThreadedServer("127.0.0.1", 0) as srv:
            host, port = srv.address
            r = await throughput(io, host, port, direction="upload", size=8 * MiB)
            assert r.stop_reason == ThroughputStop.ERROR and r.bps is None
            assert r.error.startswith("denied: a fill of 8388608 bytes") and "4194304 bytes per" in r.error
            r = await throughput(io, host, port, direction="upload", size=3 * MiB, skip=0)
            assert r.stop_reason == ThroughputStop.DONE, r.error
            # 3 MiB (+ the request lines) are spent: 2 MiB more is over the budget
            st = io.stream()
            sid = await io.nopen("tcp", raddr=host, rport=port, stream=st)
            with pytest.raises(GuardDeniedError, match="fill of 2097152 bytes") as ei:
                await io.nsend(sid, b"", fill=2 * MiB)
            assert ei.value.rule == "privileges.total"
            await io.nsend(sid, b"", fill=MiB // 2)  # what is left may still go
            await io.nclose(sid)
    finally:
        await io.close()
        await ep.close()


def test_do_throughput_in_endpoint_and_remote_placement(server):
    from marionet import Ctrl

    host, port = server
    with Ctrl(local_vps=1) as c:
        for placement in ("endpoint", "remote"):
            for direction in ("download", "upload"):
                r = c.do_throughput(host, port, direction=direction, size=4 * MiB, sync=True, placement=placement)
                assert isinstance(r, Throughput) and r.stop_reason == ThroughputStop.DONE, (placement, r.error)
                assert r.bytes == 4 * MiB and r.vp == "local"
        with pytest.raises(ValueError, match="direction"):
            c.do_throughput(host, port, direction="sideways", sync=True)
