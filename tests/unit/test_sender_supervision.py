"""The shared sender process survives bad jobs, and the engine survives its death.

Real processes and real loopback sockets throughout: a test passes only if
packets arrive where they should.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import time

import pytest

from marionet import aio
from marionet.endpoint.procengine import ProcessEngine
from marionet.endpoint.sender import MAX_AT_NS, Sender, SendJob, SendResult
from marionet.wire import messages as m

from tests.unit.test_sender import _results, _udp as udp_pair

DAY_NS = 86400 * 1_000_000_000


def _udp() -> tuple[socket.socket, socket.socket]:
    rx, tx = udp_pair()
    rx.settimeout(3.0)
    return rx, tx


@pytest.fixture
def sender():
    s = Sender(realtime=False)
    s.start()
    yield s
    s.stop()


# -- the child ---------------------------------------------------------------


def test_far_future_jobs_wait_instead_of_killing_the_child(sender):
    """26 days ahead overflowed poll()'s int timeout and ended the child."""
    rx_far, tx_far = _udp()
    rx_max, tx_max = _udp()
    rx_now, tx_now = _udp()
    far, top, now = (sender.add_socket(t) for t in (tx_far, tx_max, tx_now))
    sender.submit([SendJob(far, 1, b"far", addr=rx_far.getsockname(), at=time.time_ns() + 30 * DAY_NS)])
    sender.submit([SendJob(top, 2, b"top", addr=rx_max.getsockname(), at=MAX_AT_NS)])
    time.sleep(1.3)  # past one capped poll: the child woke up and went back to waiting
    assert sender.running
    sender.submit([SendJob(now, 3, b"now", addr=rx_now.getsockname())])
    assert rx_now.recv(100) == b"now"
    res = _results(sender, 1)
    assert [(r.job_id, r.errno) for r in res] == [(3, 0)]
    # The far jobs are still held, not dropped: removing their sockets cancels them.
    sender.remove_socket(far)
    sender.remove_socket(top)
    res = _results(sender, 2)
    assert sorted((r.job_id, r.errno) for r in res) == [(1, errno.ECANCELED), (2, errno.ECANCELED)]
    rx_far.settimeout(0)
    with pytest.raises(BlockingIOError):
        rx_far.recv(100)
    for s in (rx_far, tx_far, rx_max, tx_max, rx_now, tx_now):
        s.close()


def test_a_job_that_raises_in_the_child_fails_alone(sender):
    """A TTL the child cannot pack (past the parent's check) is EINVAL, not a crash."""
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    # _send_jobs skips the parent's validation, as a bug in it would.
    sender._send_jobs(sender._chan, [SendJob(sid, 1, b"bad", addr=dst, ttl=2**40),
                                     SendJob(sid, 2, b"bad", addr=dst, at=-5),
                                     SendJob(sid, 3, b"good", addr=dst)])
    assert rx.recv(100) == b"good"
    res = _results(sender, 3)
    assert [(r.job_id, r.errno) for r in res] == [(2, errno.EINVAL), (1, errno.EINVAL), (3, 0)]
    assert sender.running
    rx.close()
    tx.close()


@pytest.mark.parametrize("at", [-1, MAX_AT_NS + 1, 2**63 - 1])
def test_validate_refuses_times_out_of_range(sender, at):
    _rx, tx = _udp()
    sid = sender.add_socket(tx)
    with pytest.raises(ValueError, match=r"at must be ns since the epoch, within 0\.\.2\*\*62"):
        sender._validate(SendJob(sid, 1, b"x", addr=("127.0.0.1", 9), at=at))
    with pytest.raises(ValueError):
        sender.submit([SendJob(sid, 1, b"x", addr=("127.0.0.1", 9), at=at)])
    sender.validate(SendJob(sid, 1, b"x", addr=("127.0.0.1", 9), at=MAX_AT_NS))
    assert sender.running
    _rx.close()
    tx.close()


# -- the engine supervising it -----------------------------------------------


async def _ntag(session, tag: int, timeout: float = 3.0):
    """The NTag for ``tag`` (skipping other notifications), or None."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        note = await session.next_notification(left)
        if note is None:
            return None
        if note.kind == "ntag" and note.tag == tag:
            return note
    return None


async def _until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def _kill_sender(engine) -> int:
    """SIGKILL the engine's sender child; return once the engine replaced it."""
    pid = engine.sender.pid
    os.kill(pid, signal.SIGKILL)
    await _until(lambda: engine.sender.pid != pid or engine.status()["fallback"])
    return pid


def _wait_zombie(pid: int) -> None:
    """Block (without the loop) until ``pid`` has exited: its channel end is closed."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.001)
    raise AssertionError(f"{pid} did not exit")


def _receiver() -> socket.socket:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    return rx


async def _recv(rx: socket.socket, timeout: float = 3.0) -> bytes:
    return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(rx, 100), timeout)


async def test_killed_sender_fails_what_it_held_and_is_restarted(endpoint, session):
    engine = endpoint.engine
    assert engine.name == "process"
    rx = _receiver()
    port = rx.getsockname()[1]
    u = await session.nopen("udp", laddr="127.0.0.1")
    at = time.time_ns() + 500_000_000
    await session.nsend(u, b"doomed", dst="127.0.0.1", port=port, at=at, tag=1)
    assert engine.status()["pending"] == 1
    await asyncio.sleep(0.05)  # the batch is in the child now
    old = await _kill_sender(engine)

    note = await _ntag(session, 1)
    assert note is not None and note.error is not None
    assert "ECANCELED" in note.error and "sender process died" in note.error
    assert "SIGKILL" in note.error and "restarted" in note.error
    with pytest.raises(ProcessLookupError):
        os.kill(old, 0)  # reaped, not left a zombie

    # The same socket (re-registered with the new child) and another session.
    await session.nsend(u, b"again", dst="127.0.0.1", port=port, tag=2)
    assert await _recv(rx) == b"again"
    note = await _ntag(session, 2)
    assert note is not None and note.error is None and note.ts_source == "kernel"
    other = await aio.connect(f"127.0.0.1:{endpoint.test_port}", insecure=True)
    try:
        u2 = await other.nopen("udp")
        await other.nsend(u2, b"other", dst="127.0.0.1", port=port, tag=3)
        assert await _recv(rx) == b"other"
        note = await _ntag(other, 3)
        assert note is not None and note.error is None
    finally:
        await other.close()

    await asyncio.sleep(max(0, at - time.time_ns()) / 1e9 + 0.2)
    with pytest.raises(BlockingIOError):
        rx.recv(100)  # the doomed send was never sent by the new child

    st = engine.status()
    assert st["engine"] == "process" and st["fallback"] is False
    assert st["restarts"] == 1 and st["pending"] == 0
    assert "SIGKILL" in st["last_failure"]
    assert abs(st["last_failure_time_ns"] - time.time_ns()) < 10 * 1_000_000_000
    rx.close()


async def test_death_noticed_by_a_submit_restarts_too(endpoint, session):
    """The child is dead but the loop has not read the EOF yet: the submit
    (adding a new socket) finds out, restarts, and its packet still goes."""
    engine = endpoint.engine
    rx = _receiver()
    u = await session.nopen("udp")
    pid = engine.sender.pid
    os.kill(pid, signal.SIGKILL)
    _wait_zombie(pid)  # not awaiting: the loop must not see the EOF first
    (es,) = [s.sockets[u] for s in endpoint.sessions if u in s.sockets]
    es.enqueue(m.SendItem(sock=u, data=b"noticed", dst="127.0.0.1", port=rx.getsockname()[1]))
    assert engine.status()["restarts"] == 1 and engine.sender.pid != pid
    assert await _recv(rx) == b"noticed"
    assert "adding a socket failed" in engine.status()["last_failure"]
    rx.close()


async def test_sender_that_keeps_dying_falls_back_to_inline(endpoint, session):
    engine = endpoint.engine
    rx = _receiver()
    port = rx.getsockname()[1]
    u = await session.nopen("udp", laddr="127.0.0.1")
    await session.nsend(u, b"warm", dst="127.0.0.1", port=port)
    assert await _recv(rx) == b"warm"
    killed = [await _kill_sender(engine) for _ in range(ProcessEngine.MAX_RESTARTS)]
    assert engine.status()["restarts"] == 5 and not engine.status()["fallback"]
    await session.nsend(u, b"held", dst="127.0.0.1", port=port, at=time.time_ns() + 500_000_000, tag=1)
    await asyncio.sleep(0.05)
    killed.append(await _kill_sender(engine))  # the sixth death within 60 s

    note = await _ntag(session, 1)
    assert note is not None and "sender process died" in note.error
    assert "from the endpoint process" in note.error
    st = engine.status()
    assert st["fallback"] is True and st["engine"] == "inline" and engine.name == "inline"
    assert st["restarts"] == 5 and "gave up" in st["last_failure"]
    for pid in killed:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    # Sends now go out from the endpoint process: immediate, scheduled, tagged.
    await session.nsend(u, b"inline", dst="127.0.0.1", port=port, tag=2)
    assert await _recv(rx) == b"inline"
    note = await _ntag(session, 2)
    assert note is not None and note.error is None and note.ts_source == "kernel"
    at = time.time_ns() + 100_000_000
    await session.nsend(u, b"timed", dst="127.0.0.1", port=port, at=at, tag=3)
    assert await _recv(rx) == b"timed"
    note = await _ntag(session, 3)
    assert note is not None and note.error is None and note.time_ns >= at
    assert engine.status()["pending"] == 0
    rx.close()


async def test_death_noticed_by_a_batch_write_restarts_too(endpoint, session):
    """As above, on a socket the child already had: the queued job fails
    with the reason, the next send goes out through the new child."""
    engine = endpoint.engine
    rx = _receiver()
    port = rx.getsockname()[1]
    u = await session.nopen("udp")
    await session.nsend(u, b"first", dst="127.0.0.1", port=port)
    assert await _recv(rx) == b"first"
    pid = engine.sender.pid
    os.kill(pid, signal.SIGKILL)
    _wait_zombie(pid)
    (es,) = [s.sockets[u] for s in endpoint.sessions if u in s.sockets]
    es.enqueue(m.SendItem(sock=u, data=b"lost", dst="127.0.0.1", port=port, tag=1))
    note = await _ntag(session, 1)
    assert note is not None and "sender process died" in note.error
    assert engine.status()["restarts"] == 1
    await session.nsend(u, b"next", dst="127.0.0.1", port=port)
    assert await _recv(rx) == b"next"
    rx.close()


async def test_socket_closed_with_a_send_still_batched_costs_only_its_own(endpoint, session):
    """Closing a socket whose send is still in this iteration's batch used to
    make the sender refuse the whole batch (KeyError), losing every socket's
    sends in it."""
    rx = _receiver()
    port = rx.getsockname()[1]
    a = await session.nopen("udp")
    b = await session.nopen("udp")
    for sock in (a, b):  # both known to the child
        await session.nsend(sock, b"hi", dst="127.0.0.1", port=port)
        assert await _recv(rx) == b"hi"
    (srv,) = [s for s in endpoint.sessions if a in s.sockets]
    srv.sockets[a].enqueue(m.SendItem(sock=a, data=b"closing", dst="127.0.0.1", port=port))
    srv.sockets[b].enqueue(m.SendItem(sock=b, data=b"kept", dst="127.0.0.1", port=port))
    srv._close_socket(srv.sockets[a])  # same iteration: the batch is not written yet
    assert await _recv(rx) == b"kept"
    assert endpoint.engine.status()["pending"] == 0
    assert endpoint.engine.status()["restarts"] == 0
    rx.close()
