"""Real loopback tests for kernel RX/TX timestamps and the error queue."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from marionet.endpoint import sockopt as so
from marionet.endpoint.timestamps import (
    IcmpError,
    TxStamp,
    enable_recv_ttl,
    enable_recverr,
    enable_rx_timestamps,
    enable_tx_timestamps,
    read_errqueue,
    recv_stamped,
    supports_ts_opt_id,
    tcp_key_after,
    ts_opt_id_cmsg,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root (CAP_NET_RAW)")


def _wait(fn, timeout=2.0):
    """Poll a non-blocking reader until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.002)
    return fn()


def _closed_port(family: int, host: str) -> int:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _icmp_echo(ident: int = 0x4D4E, seq: int = 1, payload: bytes = b"marionet") -> bytes:
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + payload
    padded = hdr + b"\0" * (len(hdr) % 2)
    c = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    c = (c >> 16) + (c & 0xFFFF)
    c += c >> 16
    return hdr[:2] + struct.pack("!H", ~c & 0xFFFF) + hdr[4:]


@pytest.fixture
def udp_pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    yield tx, rx
    tx.close()
    rx.close()


def test_udp_tx_stamp_between_user_times(udp_pair):
    tx, rx = udp_pair
    enable_tx_timestamps(tx)
    before = time.time_ns()
    tx.sendto(b"hello", rx.getsockname())
    after = time.time_ns()
    items = _wait(lambda: read_errqueue(tx))
    stamps = [i for i in items if isinstance(i, TxStamp)]
    assert len(stamps) == 1
    assert stamps[0].key == 0
    assert before <= stamps[0].time_ns <= after


def test_udp_opt_id_counter_and_cmsg_key(udp_pair):
    tx, rx = udp_pair
    enable_tx_timestamps(tx)
    dst = rx.getsockname()
    tx.sendto(b"a", dst)
    if supports_ts_opt_id():
        tx.sendmsg([b"b"], [ts_opt_id_cmsg(777)], 0, dst)
    tx.sendto(b"c", dst)
    items = []
    deadline = time.monotonic() + 2
    want = 3 if supports_ts_opt_id() else 2
    while len(items) < want and time.monotonic() < deadline:
        items += read_errqueue(tx)
    keys = [i.key for i in items if isinstance(i, TxStamp)]
    # The explicit key does not advance the counter.
    assert keys == ([0, 777, 1] if supports_ts_opt_id() else [0, 1])


def test_ts_opt_id_supported_on_this_kernel():
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (6, 13):
        pytest.skip("SCM_TS_OPT_ID needs kernel >= 6.13")
    assert supports_ts_opt_id()


def test_ts_opt_id_cmsg_rejects_bad_key():
    with pytest.raises(ValueError):
        ts_opt_id_cmsg(-1)
    with pytest.raises(ValueError):
        ts_opt_id_cmsg(1 << 32)


def test_udp_rx_kernel_stamp_and_ttl(udp_pair):
    tx, rx = udp_pair
    enable_rx_timestamps(rx)
    enable_recv_ttl(rx)
    assert recv_stamped(rx) is None  # non-blocking, empty
    before = time.time_ns()
    tx.sendto(b"ping", rx.getsockname())
    got = _wait(lambda: recv_stamped(rx))
    assert got is not None
    assert got.data == b"ping"
    assert got.ts_source == "kernel"
    assert before <= got.time_ns <= time.time_ns()
    assert got.peer == ("127.0.0.1", tx.getsockname()[1])
    assert got.ttl == 64


def test_rx_user_fallback_without_timestamping(udp_pair):
    tx, rx = udp_pair
    tx.sendto(b"x", rx.getsockname())
    got = _wait(lambda: recv_stamped(rx))
    assert got is not None and got.ts_source == "user"


@pytest.mark.parametrize(
    "family,host,origin,icmp_type,icmp_code",
    [
        (socket.AF_INET, "127.0.0.1", so.SO_EE_ORIGIN_ICMP, 3, 3),
        (socket.AF_INET6, "::1", so.SO_EE_ORIGIN_ICMP6, 1, 4),
    ],
)
def test_udp_port_unreachable_icmp_error(family, host, origin, icmp_type, icmp_code):
    port = _closed_port(family, host)
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        enable_recverr(s)
        enable_rx_timestamps(s)
        enable_tx_timestamps(s)
        before = time.time_ns()
        s.sendto(b"probe-payload", (host, port))
        items = []
        deadline = time.monotonic() + 2
        while not any(isinstance(i, IcmpError) for i in items) and time.monotonic() < deadline:
            items += read_errqueue(s)
        errs = [i for i in items if isinstance(i, IcmpError)]
        assert len(errs) == 1
        e = errs[0]
        assert e.origin == origin
        assert (e.icmp_type, e.icmp_code) == (icmp_type, icmp_code)
        assert e.errno == 111  # ECONNREFUSED
        assert e.offender == host
        assert e.payload == b"probe-payload"
        assert e.dest[1] == port
        assert e.ts_source == "kernel" and before <= e.time_ns <= time.time_ns()
        # The pending socket error was consumed with the queue: sends work.
        s.sendto(b"again", (host, port))
    finally:
        s.close()


def test_pending_async_error_does_not_break_recv():
    port = _closed_port(socket.AF_INET, "127.0.0.1")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        enable_recverr(s)
        s.sendto(b"x", ("127.0.0.1", port))
        time.sleep(0.05)
        assert recv_stamped(s) is None  # pending ECONNREFUSED swallowed
        assert any(isinstance(i, IcmpError) for i in read_errqueue(s))
    finally:
        s.close()


def test_tcp_keys_are_byte_offsets():
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    c = socket.socket()
    with pytest.raises(OSError):
        enable_tx_timestamps(c)  # kernel refuses OPT_ID before connect
    c.connect(lst.getsockname())
    a, _ = lst.accept()
    try:
        enable_tx_timestamps(c)
        c.send(b"hello")
        c.send(b"world!")
        items = []
        deadline = time.monotonic() + 2
        while len(items) < 2 and time.monotonic() < deadline:
            items += [i for i in read_errqueue(c) if isinstance(i, TxStamp)]
        assert [i.key for i in items] == [tcp_key_after(0, 5), tcp_key_after(5, 6)] == [4, 10]
        with pytest.raises(OSError):
            c.sendmsg([b"x"], [ts_opt_id_cmsg(5)])
    finally:
        for s in (a, c, lst):
            s.close()


@needs_root
@pytest.mark.parametrize("hdrincl", [False, True])
def test_raw_ipv4_tx_stamp_with_key(hdrincl):
    if hdrincl:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        enable_tx_timestamps(s)
        pkt = _icmp_echo()
        if hdrincl:
            lo = socket.inet_aton("127.0.0.1")
            pkt = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(pkt), 0, 0, 64, 1, 0, lo, lo) + pkt
        before = time.time_ns()
        s.sendmsg([pkt], [ts_opt_id_cmsg(42)], 0, ("127.0.0.1", 0))
        after = time.time_ns()
        stamps = [i for i in _wait(lambda: read_errqueue(s)) if isinstance(i, TxStamp)]
        assert [st.key for st in stamps] == [42]
        assert before <= stamps[0].time_ns <= after
    finally:
        s.close()


@needs_root
def test_raw_ipv6_tx_stamp_with_key():
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        enable_tx_timestamps(s)
        s.sendmsg([struct.pack("!BBHHH", 128, 0, 0, 1, 1)], [ts_opt_id_cmsg(9)], 0, ("::1", 0))
        stamps = [i for i in _wait(lambda: read_errqueue(s)) if isinstance(i, TxStamp)]
        assert [st.key for st in stamps] == [9]
    finally:
        s.close()


@needs_root
def test_raw_ipv4_rx_stamp_of_echo_reply():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        enable_rx_timestamps(s)
        s.sendto(_icmp_echo(ident=0x7777), ("127.0.0.1", 0))
        seen = []
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not any(r.data[20] == 0 for r in seen):
            r = recv_stamped(s)
            if r:
                seen.append(r)
        replies = [r for r in seen if r.data[20] == 0]
        assert replies and replies[0].ts_source == "kernel"
    finally:
        s.close()
