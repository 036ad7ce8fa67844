"""The sender process with real loopback sockets."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time

import pytest

from marionet.endpoint.sender import Sender, SenderError, SendJob, SendResult
from marionet.endpoint.timestamps import (
    IcmpError,
    TxStamp,
    enable_recv_ttl,
    enable_recverr,
    enable_tx_timestamps,
    read_errqueue,
    recv_stamped,
)


@pytest.fixture
def sender():
    s = Sender()
    s.start()
    yield s
    s.stop()


def _udp(family=socket.AF_INET, host="127.0.0.1"):
    rx = socket.socket(family, socket.SOCK_DGRAM)
    rx.bind((host, 0))
    tx = socket.socket(family, socket.SOCK_DGRAM)
    tx.setblocking(False)
    return rx, tx


def _results(sender: Sender, n: int, timeout: float = 5.0) -> list[SendResult]:
    out: list[SendResult] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += sender.read_results()
        time.sleep(0.001)
    return out


def _recv_all(sock: socket.socket, n: int, timeout: float = 5.0) -> list:
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        r = recv_stamped(sock)
        if r is None:
            time.sleep(0.001)
        else:
            out.append(r)
    return out


def test_start_stop(sender):
    assert sender.running and sender.pid
    pid = sender.pid
    sender.stop()
    assert not sender.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(SenderError):
        sender.submit([])


def test_immediate_sends_in_order(sender):
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    dst = rx.getsockname()
    sender.submit([SendJob(sid, i, f"m{i}".encode(), addr=dst) for i in range(200)])
    res = _results(sender, 200)
    assert [r.job_id for r in res] == list(range(200))
    assert all(r.ok and r.nbytes == len(f"m{r.job_id}") for r in res)
    assert [r.data for r in _recv_all(rx, 200)] == [f"m{i}".encode() for i in range(200)]


def test_scheduled_send_lands_on_time_with_kernel_stamp(sender):
    rx, tx = _udp()
    enable_tx_timestamps(tx)
    sid = sender.add_socket(tx)
    base = time.time_ns() + 50_000_000
    jobs = [SendJob(sid, i, b"t", at=base + i * 2_000_000, addr=rx.getsockname(), ts_key=100 + i) for i in range(20)]
    sender.submit(jobs)
    assert all(r.ok for r in _results(sender, 20))
    stamps = {}
    deadline = time.monotonic() + 3
    while len(stamps) < 20 and time.monotonic() < deadline:
        stamps.update({i.key: i.time_ns for i in read_errqueue(tx) if isinstance(i, TxStamp)})
    errs = sorted(stamps[100 + j.job_id] - j.at for j in jobs)
    assert len(errs) == 20
    assert errs[0] >= 0  # never early
    assert errs[10] < 2_000_000  # median well under 2 ms even on a noisy VM


def test_per_socket_fifo_and_cross_socket_heap(sender):
    rx, tx_a = _udp()
    _, tx_b = _udp()
    a = sender.add_socket(tx_a)
    b = sender.add_socket(tx_b)
    dst = rx.getsockname()
    later = time.time_ns() + 100_000_000
    sender.submit(
        [
            SendJob(a, 1, b"a-timed", at=later, addr=dst),
            SendJob(a, 2, b"a-now", addr=dst),  # must wait behind job 1 (same socket)
            SendJob(b, 3, b"b-now", addr=dst),  # other socket: not held up
        ]
    )
    assert [r.data for r in _recv_all(rx, 3)] == [b"b-now", b"a-timed", b"a-now"]


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_per_send_ttl_and_hoplimit(sender, family, host):
    rx, tx = _udp(family, host)
    enable_recv_ttl(rx)
    sid = sender.add_socket(tx)
    dst = rx.getsockname()[:2]
    sender.submit([SendJob(sid, 1, b"x", addr=dst, ttl=7, tos=0x20), SendJob(sid, 2, b"y", addr=dst)])
    got = _recv_all(rx, 2)
    assert [g.ttl for g in got] == [7, 64]


def test_errno_reported(sender):
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    sender.submit([SendJob(sid, 1, b"x" * 65535, addr=rx.getsockname())])
    (r,) = _results(sender, 1)
    assert not r.ok and r.errno == errno.EMSGSIZE


def test_stale_icmp_error_does_not_fail_next_send(sender):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()
    probe.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.setblocking(False)
    enable_recverr(tx)
    sid = sender.add_socket(tx)
    sender.submit([SendJob(sid, 1, b"a", addr=closed)])
    time.sleep(0.05)
    sender.submit([SendJob(sid, 2, b"b", addr=closed)])
    res = _results(sender, 2)
    assert [r.errno for r in res] == [0, 0]
    time.sleep(0.05)
    assert any(isinstance(i, IcmpError) for i in read_errqueue(tx))


def test_sendmsg_past_stale_errors_back_to_back():
    """Each send to a closed port leaves a pending error that plain sendmsg
    would return on the next call; the helper sends every packet."""
    from marionet.endpoint.sender import sendmsg_past_stale_errors

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed = probe.getsockname()
    probe.close()
    plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    enable_recverr(plain)
    plain.sendto(b"a", closed)
    with pytest.raises(ConnectionRefusedError):  # the stale error, what the helper steps over
        plain.sendto(b"b", closed)
    plain.close()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    enable_recverr(tx)
    assert [sendmsg_past_stale_errors(tx, b"x%d" % i, [], closed) for i in range(10)] == [2] * 10
    icmp = [i for i in read_errqueue(tx) if isinstance(i, IcmpError)]
    assert len(icmp) == 10
    tx.close()


def test_sendmsg_past_stale_errors_gives_up_on_a_persistent_error():
    from marionet.endpoint.sender import STALE_ERROR_RETRIES, sendmsg_past_stale_errors

    calls = []

    class Unreachable:
        def sendmsg(self, *args):
            calls.append(args)
            raise OSError(errno.EHOSTUNREACH, "No route to host")

    with pytest.raises(OSError) as exc:
        sendmsg_past_stale_errors(Unreachable(), b"x", [], ("192.0.2.1", 9))  # type: ignore[arg-type]
    assert exc.value.errno == errno.EHOSTUNREACH
    assert len(calls) == STALE_ERROR_RETRIES + 1


def test_remove_socket_cancels_queued_jobs(sender):
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    sender.submit([SendJob(sid, 9, b"x", at=time.time_ns() + 10_000_000_000, addr=rx.getsockname())])
    sender.remove_socket(sid)
    (r,) = _results(sender, 1)
    assert r.errno == errno.ECANCELED
    with pytest.raises(KeyError):
        sender.remove_socket(sid)


def test_bad_input_raises(sender):
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    tcp = socket.socket()
    with pytest.raises(ValueError, match="TCP"):
        sender.add_socket(tcp)
    tcp.close()
    with pytest.raises(KeyError):
        sender.submit([SendJob(999, 1, b"x")])
    with pytest.raises(ValueError):
        sender.submit([SendJob(sid, 1, b"x", ttl=300)])
    with pytest.raises(ValueError):
        sender.submit([SendJob(sid, 1, b"x", ts_key=-1)])
    with pytest.raises(TypeError):
        sender.submit([("not", "a", "job")])  # type: ignore[list-item]
    # The sender still works afterwards.
    sender.submit([SendJob(sid, 2, b"ok", addr=rx.getsockname())])
    assert _results(sender, 1)[0].ok


def test_child_exits_when_parent_dies():
    code = (
        "import os,sys\n"
        "from marionet.endpoint.sender import Sender\n"
        "s=Sender(); s.start(); print(s.pid, flush=True); os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    pid = int(out.stdout.strip())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("sender child outlived its parent")


def test_thread_cpu_reads_proc():
    import threading

    from marionet.endpoint.sender import _thread_cpu

    cpu = _thread_cpu(os.getpid(), threading.get_native_id())
    assert cpu is not None and 0 <= cpu < os.cpu_count()
    assert _thread_cpu(os.getpid(), 2**22 + 12345) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: SCHED_FIFO for the sender process")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_boosted_sender_steps_off_the_parent_cpu(sender):
    """While a timed send waits, the SCHED_FIFO sender keeps off one CPU (the
    one the parent's loop thread was on), so its spin cannot starve the
    loop; afterwards it may run anywhere again."""
    assert sender.realtime
    allowed = os.sched_getaffinity(0)
    rx, tx = _udp()
    sid = sender.add_socket(tx)
    sender.submit([SendJob(sid, 1, b"x", at=time.time_ns() + 400_000_000, addr=rx.getsockname())])
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and os.sched_getaffinity(sender.pid) == allowed:
        time.sleep(0.005)
    during = os.sched_getaffinity(sender.pid)
    assert len(during) == len(allowed) - 1 and during < allowed
    assert os.sched_getscheduler(sender.pid) == os.SCHED_FIFO
    (r,) = _results(sender, 1)
    assert r.ok
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and os.sched_getaffinity(sender.pid) != allowed:
        time.sleep(0.005)
    assert os.sched_getaffinity(sender.pid) == allowed
    assert os.sched_getscheduler(sender.pid) == os.SCHED_OTHER
