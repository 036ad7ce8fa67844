"""The shared sender process survives bad jobs, and the engine survives its death.

Real processes and real loopback sockets throughout: a test passes only if
packets arrive where they should.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from marionet.endpoint.sender import MAX_AT_NS, Sender, SendJob, SendResult

DAY_NS = 86400 * 1_000_000_000


def _udp() -> tuple[socket.socket, socket.socket]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(3.0)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    return rx, tx


def _results(sender: Sender, n: int, timeout: float = 5.0) -> list[SendResult]:
    out: list[SendResult] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += sender.read_results()
        time.sleep(0.002)
    return out


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
