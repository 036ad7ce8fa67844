"""Classic BPF compile/validate/attach against the real kernel."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.endpoint.bpf import (
    ACCEPT_ALL,
    REJECT_ALL,
    FilterError,
    attach,
    compile_filter,
    detach,
    open_capture_socket,
    validate_program,
)
from marionet.endpoint.timestamps import enable_rx_timestamps, recv_stamped

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="raw/packet sockets need root (CAP_NET_RAW)")


def _icmp(typ: int, ident: int, seq: int = 1, payload: bytes = b"marionet-bpf") -> bytes:
    hdr = struct.pack("!BBHHH", typ, 0, 0, ident, seq) + payload
    padded = hdr + b"\0" * (len(hdr) % 2)
    c = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    c = (c >> 16) + (c & 0xFFFF)
    c += c >> 16
    return hdr[:2] + struct.pack("!H", ~c & 0xFFFF) + hdr[4:]


def _collect(sock: socket.socket, seconds: float) -> list:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r = recv_stamped(sock)
        if r is None:
            time.sleep(0.002)
        else:
            out.append(r)
    return out


def test_compile_simple_expression():
    prog = compile_filter("icmp and src host 127.0.0.1")
    assert prog[-1][0] == 0x06 and all(len(i) == 4 for i in prog)
    assert validate_program(prog) == prog


def test_compile_ipv6_and_ethernet():
    assert compile_filter("icmp6 and dst host ::1")
    assert compile_filter("udp port 53", linktype="ethernet")


@pytest.mark.parametrize("expr", ["icmp and and", "host 999.1.1.1", "frobnicate"])
def test_bad_expression_raises_with_libpcap_text(expr):
    with pytest.raises(FilterError, match="bad filter expression"):
        compile_filter(expr)


def test_bad_linktype():
    with pytest.raises(FilterError, match="unknown linktype"):
        compile_filter("icmp", linktype="token-ring")


@pytest.mark.parametrize(
    "prog,reason",
    [
        ([], "length"),
        ([(0x06, 0, 0, 0)] * 4097, "length"),
        ([(0x15, 5, 0, 1), (0x06, 0, 0, 0)], "jump out of range"),
        ([(0x05, 0, 0, 9), (0x06, 0, 0, 0)], "jump out of range"),
        ([(0x28, 0, 0, 0)], "end with a RET"),
        ([(0xFF, 0, 0, 0), (0x06, 0, 0, 0)], "unknown opcode"),
        ([(0x60, 0, 0, 16), (0x06, 0, 0, 0)], "scratch memory"),
        ([(0x34, 0, 0, 0), (0x06, 0, 0, 0)], "division by constant zero"),
        ([(0x06, 0, 0, -1)], "outside u32"),
        ([(0x06, 256, 0, 0)], "outside u8"),
        ([(0x06, 0, 0)], "tuple"),
        ("RET", "list"),
        ([(0x06, 0, 0, 1.5)], "integers"),
    ],
)
def test_invalid_program_raises(prog, reason):
    with pytest.raises(FilterError, match=reason):
        validate_program(prog)


def test_kernel_oracle_rejects_uninitialised_scratch_read():
    # Structurally fine, but reads M[0] before any store: the kernel says no.
    with pytest.raises(FilterError, match="kernel"):
        validate_program([(0x60, 0, 0, 0), (0x16, 0, 0, 0)])


def test_attach_detach_on_udp():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        attach(rx, REJECT_ALL)
        tx.sendto(b"dropped", rx.getsockname())
        assert _collect(rx, 0.05) == []
        detach(rx)
        detach(rx)  # idempotent
        tx.sendto(b"kept", rx.getsockname())
        assert [r.data for r in _collect(rx, 0.05)] == [b"kept"]
    finally:
        rx.close()
        tx.close()


ops = st.tuples(
    st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0xFF), st.integers(0, 0xFFFFFFFF)
)
plausible = st.tuples(
    st.sampled_from([0x00, 0x20, 0x28, 0x30, 0x60, 0x80, 0x01, 0x61, 0xB1, 0x02, 0x03, 0x04, 0x0C,
                     0x34, 0x84, 0x94, 0x05, 0x15, 0x1D, 0x25, 0x45, 0x06, 0x16, 0x07, 0x87]),
    st.integers(0, 4), st.integers(0, 4), st.integers(0, 20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ops, plausible), min_size=0, max_size=12))
def test_random_programs_never_crash(prog):
    try:
        out = validate_program(prog)
    except FilterError:
        return
    assert out[-1][0] in (0x06, 0x16)


@needs_root
def test_raw_socket_filter_captures_only_matching_echo_reply():
    ident = os.getpid() & 0xFFFF
    expr = f"icmp[icmptype] == icmp-echoreply and icmp[4:2] == {ident} and src host 127.0.0.1"
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        enable_rx_timestamps(s)
        attach(s, compile_filter(expr), flush=True)
        s.sendto(_icmp(8, ident ^ 0x5A5A), ("127.0.0.1", 0))  # other ident: not captured
        s.sendto(_icmp(8, ident), ("127.0.0.1", 0))
        got = _collect(s, 0.2)
        assert len(got) == 1
        pkt = got[0].data
        assert pkt[20] == 0 and struct.unpack("!H", pkt[24:26])[0] == ident
        assert got[0].ts_source == "kernel"
    finally:
        s.close()


@needs_root
@pytest.mark.parametrize("family,dst", [(socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")])
def test_packet_capture_socket_with_ip_header(family, dst):
    ident = (os.getpid() + 7) & 0xFFFF
    cap = open_capture_socket(family, "lo")
    rx = socket.socket(family, socket.SOCK_DGRAM)
    tx = socket.socket(family, socket.SOCK_DGRAM)
    try:
        rx.bind((dst, 0))
        port = rx.getsockname()[1]
        tx.sendto(b"before-filter", (dst, port))
        assert _collect(cap, 0.05) == []  # REJECT_ALL until attached
        attach(cap, compile_filter(f"udp and dst port {port} and dst host {dst}"))
        tx.sendto(b"match", (dst, port))
        tx.sendto(b"other", (dst, port ^ 1 if port ^ 1 else 1))
        got = _collect(cap, 0.2)
        assert len(got) == 1
        assert got[0].data.endswith(b"match")
        assert got[0].data[0] >> 4 == (6 if family == socket.AF_INET6 else 4)  # IP header present
        assert got[0].ts_source == "kernel"
    finally:
        for s in (cap, rx, tx):
            s.close()


@needs_root
def test_capture_socket_all_interfaces():
    cap = open_capture_socket(socket.AF_INET, None, ACCEPT_ALL)
    cap.close()


def test_capture_socket_bad_family():
    with pytest.raises(ValueError):
        open_capture_socket(socket.AF_UNIX)
