"""Trains through the sender process: tight schedules keep every guarantee.

The child sends a train in a hot loop that ships results and reads its
channel only in gaps (see ``_HOT_NS`` in marionet.endpoint.sender); these
tests pin down what that loop must still do, with real loopback sockets.
"""

from __future__ import annotations

import errno
import socket
import time

import pytest

from marionet.endpoint.sender import Sender, SendJob, SendResult
from marionet.endpoint.timestamps import TxStamp, enable_tx_timestamps, read_errqueue
from tests.unit.test_sender import _results, _udp


@pytest.fixture
def sender():
    s = Sender()
    s.start()
    yield s
    s.stop()


def _stamped_pair() -> tuple[socket.socket, socket.socket]:
    rx, tx = _udp()
    for s in (rx, tx):  # a train's stamps and datagrams must all fit (root forces it)
        try:
            s.setsockopt(socket.SOL_SOCKET, 33, 1 << 24)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
    enable_tx_timestamps(tx)
    return rx, tx


def _stamps(tx: socket.socket, n: int, timeout: float = 5.0) -> dict[int, int]:
    got: dict[int, int] = {}
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got.update({i.key: i.time_ns for i in read_errqueue(tx, limit=4096) if isinstance(i, TxStamp)})
        time.sleep(0.002)
    return got


def _received(rx: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    rx.settimeout(timeout)
    out = []
    try:
        while len(out) < n:
            out.append(rx.recv(2048))
    except TimeoutError:
        pass
    return out


def test_tight_train_every_send_reported_and_stamped_in_order(sender):
    """2,000 sends 5 µs apart (faster than Python can send): every job comes
    back ok, every send has its kernel stamp under its own key, stamps and
    arrivals follow the submission order, and nothing leaves early."""
    rx, tx = _stamped_pair()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    n = 2000
    first = time.time_ns() + 100_000_000
    jobs = [SendJob(sid, i, i.to_bytes(4, "big"), at=first + i * 5_000, addr=dst, ts_key=10_000 + i)
            for i in range(n)]
    sender.submit(jobs)
    res = _results(sender, n)
    assert sorted(r.job_id for r in res) == list(range(n))
    assert all(r.ok and r.nbytes == 4 for r in res)
    stamps = _stamps(tx, n)
    assert sorted(stamps) == [10_000 + i for i in range(n)]
    ordered = [stamps[10_000 + i] for i in range(n)]
    assert ordered == sorted(ordered)
    assert all(t >= j.at for t, j in zip(ordered, jobs))  # never before its time
    assert [int.from_bytes(d, "big") for d in _received(rx, n)] == list(range(n))


def test_results_of_a_burst_come_back_before_the_next_burst(sender):
    """Results wait only while sends are close together: a burst's results
    are shipped in the gap after it, not when the whole schedule is done."""
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    first = time.time_ns() + 100_000_000
    second = first + 600_000_000
    sender.submit([SendJob(sid, i, b"a", at=first + i * 10_000, addr=dst) for i in range(100)]
                  + [SendJob(sid, 100 + i, b"b", at=second + i * 10_000, addr=dst) for i in range(100)])
    early = _results(sender, 100, timeout=2.0)
    seen_at = time.time_ns()
    assert sorted(r.job_id for r in early) == list(range(100))
    assert seen_at < second
    assert sorted(r.job_id for r in _results(sender, 100)) == list(range(100, 200))


def test_results_flow_back_while_a_train_runs(sender):
    """A 0.5 s train at 500 µs spacing (inside the spin window, so the child
    never sleeps): its results come back while it runs, in its gaps, not
    all at its end."""
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    n = 1000
    first = time.time_ns() + 100_000_000
    sender.submit([SendJob(sid, i, b"x", at=first + i * 500_000, addr=dst) for i in range(n)])
    got: list[SendResult] = []
    halfway = first + n * 500_000 // 2
    while time.time_ns() < halfway:
        got += sender.read_results()
        time.sleep(0.002)
    assert len(got) >= 100  # ~500 were due by now
    got += _results(sender, n - len(got))
    assert sorted(r.job_id for r in got) == list(range(n)) and all(r.ok for r in got)


def test_a_long_train_does_not_hold_up_other_sockets(sender):
    """While a 400 ms train runs on one socket, an immediate job submitted
    for another socket goes out long before the train ends: the hot loop
    still reads its channel."""
    rx, tx_a = _stamped_pair()
    _, tx_b = _stamped_pair()
    a = sender.add_socket(tx_a)
    b = sender.add_socket(tx_b)
    dst = rx.getsockname()
    n = 20_000
    first = time.time_ns() + 100_000_000
    sender.submit([SendJob(a, i, b"a", at=first + i * 20_000, addr=dst, ts_key=i) for i in range(n)])
    while time.time_ns() < first + 50_000_000:  # the train is running
        time.sleep(0.005)
    sender.submit([SendJob(b, n, b"b", addr=dst, ts_key=0)])
    res = _results(sender, n + 1, timeout=10)
    assert len(res) == n + 1 and all(r.ok for r in res)
    (b_stamp,) = _stamps(tx_b, 1).values()
    a_stamps = _stamps(tx_a, n)
    assert len(a_stamps) == n
    assert b_stamp < max(a_stamps.values()) - 100_000_000


def test_socket_removed_mid_train_cancels_the_rest(sender):
    """Removing a socket while its train runs: what was sent is reported
    sent, the rest ECANCELED, each job exactly once."""
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    n = 10_000
    first = time.time_ns() + 50_000_000
    sender.submit([SendJob(sid, i, b"x", at=first + i * 100_000, addr=dst) for i in range(n)])   # a 1 s train
    # Remove once the train has visibly started (a datagram arrived), not at a wall-clock guess: on a loaded
    # machine (CI) the sender thread can start late, and then nothing had been sent yet.
    rx.settimeout(5)
    rx.recv(16)
    sender.remove_socket(sid)
    res: list[SendResult] = _results(sender, n, timeout=10)
    assert sorted(r.job_id for r in res) == list(range(n))
    sent = [r for r in res if r.ok]
    cancelled = [r for r in res if r.errno == errno.ECANCELED]
    assert len(sent) + len(cancelled) == n
    assert sent and cancelled
    assert max(r.job_id for r in sent) < min(r.job_id for r in cancelled)
