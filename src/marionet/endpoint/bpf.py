"""Classic BPF capture filters: compile, validate, attach; capture sockets.

Why: ``ncap`` takes a tcpdump-style expression (PacketLab took opaque
bytecode).  libpcap (via cypcap) compiles it; the kernel runs it on the
socket so unwanted packets never reach Python.  Programs from the wire are
untrusted: :func:`validate_program` checks structure first (so errors say
*what* is wrong), then asks the kernel itself by attaching to a throw-away
AF_UNIX socketpair (the kernel verifier is the authority).

Offsets: filters are compiled for DLT_RAW ("raw"), i.e. the buffer starts at
the IP header.  That is what a raw IPv4 socket and an ``AF_PACKET,
SOCK_DGRAM`` socket hand the filter.  A raw IPv6 socket hands the filter the
payload only (no IPv6 header), so DLT_RAW offsets are wrong there: for IPv6
capture use :func:`open_capture_socket` (AF_PACKET, ETH_P_IPV6).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
from typing import Iterable, Sequence

import cypcap

from marionet.endpoint import sockopt as so
from marionet.endpoint.timestamps import enable_rx_timestamps

Instr = tuple[int, int, int, int]

BPF_MAXINSNS = 4096
BPF_MEMWORDS = 16

#: Drop every packet (RET #0).  Attach first to open a socket without a race.
REJECT_ALL: list[Instr] = [(0x06, 0, 0, 0)]
#: Accept every packet whole.
ACCEPT_ALL: list[Instr] = [(0x06, 0, 0, 0xFFFFFFFF)]

_LINKTYPES = {
    "raw": cypcap.DatalinkType.RAW,
    "ethernet": cypcap.DatalinkType.EN10MB,
    "en10mb": cypcap.DatalinkType.EN10MB,
}

_INSN = struct.Struct("=HBBI")

# Opcodes the kernel's classic-BPF checker allows (net/core/filter.c).
_LD = {0x00, 0x20, 0x28, 0x30, 0x40, 0x48, 0x50, 0x60, 0x80}
_LDX = {0x01, 0x61, 0x81, 0xB1}
_ST = {0x02, 0x03}
_ALU_OPS = (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0)
_ALU = {0x04 | op | src for op in _ALU_OPS for src in (0x00, 0x08)} | {0x84}
_JMP_COND = {0x05 | op | src for op in (0x10, 0x20, 0x30, 0x40) for src in (0x00, 0x08)}
_JA = 0x05
_RET = {0x06, 0x16}
_MISC = {0x07, 0x87}
_VALID = _LD | _LDX | _ST | _ALU | _JMP_COND | {_JA} | _RET | _MISC
_MEM_OPS = {0x60, 0x61, 0x02, 0x03}  # LD/LDX MEM, ST, STX: k indexes M[]
_DIV_MOD_K = {0x34, 0x94}


class FilterError(ValueError):
    """A filter expression or program was rejected; the message says why."""


def compile_filter(expr: str, linktype: str = "raw", snaplen: int = 65535) -> list[Instr]:
    """Compile a tcpdump expression to classic BPF ``(code, jt, jf, k)`` tuples.

    ``linktype`` is "raw" (buffer starts at the IP header: raw IPv4 and
    AF_PACKET/SOCK_DGRAM sockets) or "ethernet".
    """
    if not isinstance(expr, str):
        raise FilterError(f"filter expression must be a string, got {type(expr).__name__}")
    try:
        dlt = _LINKTYPES[linktype.lower()]
    except (KeyError, AttributeError):
        raise FilterError(f"unknown linktype {linktype!r}; use one of {sorted(_LINKTYPES)}") from None
    try:
        prog = cypcap.compile(dlt, snaplen, expr, True, cypcap.NETMASK_UNKNOWN)
    except cypcap.Error as exc:
        msg = exc.args[1] if len(exc.args) > 1 else str(exc)
        raise FilterError(f"bad filter expression {expr!r}: {msg}") from None
    return [tuple(int(x) for x in ins) for ins in prog]  # type: ignore[misc]


def _check_structure(instrs: Sequence[Instr]) -> list[Instr]:
    """Structural checks with precise messages; returns normalised tuples."""
    if isinstance(instrs, (str, bytes)) or not isinstance(instrs, Sequence):
        raise FilterError("a filter program is a list of (code, jt, jf, k) tuples")
    n = len(instrs)
    if not 1 <= n <= BPF_MAXINSNS:
        raise FilterError(f"program length {n} outside 1..{BPF_MAXINSNS}")
    out: list[Instr] = []
    for pc, ins in enumerate(instrs):
        try:
            code, jt, jf, k = ins
        except (TypeError, ValueError):
            raise FilterError(f"instruction {pc}: not a (code, jt, jf, k) tuple") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (code, jt, jf, k)):
            raise FilterError(f"instruction {pc}: fields must be integers")
        if not 0 <= code <= 0xFFFF:
            raise FilterError(f"instruction {pc}: code {code} outside u16")
        if not (0 <= jt <= 0xFF and 0 <= jf <= 0xFF):
            raise FilterError(f"instruction {pc}: jt/jf outside u8")
        if not 0 <= k <= 0xFFFFFFFF:
            raise FilterError(f"instruction {pc}: k {k} outside u32")
        if code not in _VALID:
            raise FilterError(f"instruction {pc}: unknown opcode {code:#x}")
        if code in _MEM_OPS and k >= BPF_MEMWORDS:
            raise FilterError(f"instruction {pc}: scratch memory index {k} >= {BPF_MEMWORDS}")
        if code in _DIV_MOD_K and k == 0:
            raise FilterError(f"instruction {pc}: division by constant zero")
        if code == _JA and pc + 1 + k >= n:
            raise FilterError(f"instruction {pc}: jump out of range")
        if code in _JMP_COND and (pc + 1 + jt >= n or pc + 1 + jf >= n):
            raise FilterError(f"instruction {pc}: jump out of range")
        out.append((code, jt, jf, k))
    if out[-1][0] not in _RET:
        raise FilterError("program must end with a RET instruction")
    return out


class _Fprog:
    """A ``struct sock_fprog`` kept alive while the kernel copies it."""

    def __init__(self, instrs: Sequence[Instr]) -> None:
        raw = b"".join(_INSN.pack(*ins) for ins in instrs)
        self._buf = ctypes.create_string_buffer(raw, len(raw))
        self.packed = struct.pack("HP", len(instrs), ctypes.addressof(self._buf))


def _setsockopt_filter(sock: socket.socket, instrs: Sequence[Instr]) -> None:
    prog = _Fprog(instrs)
    try:
        sock.setsockopt(so.SOL_SOCKET, so.SO_ATTACH_FILTER, prog.packed)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise FilterError("kernel rejected the program (EINVAL)") from None
        raise FilterError(f"kernel rejected the program: {exc.strerror}") from None


def validate_program(instrs: Iterable[Instr]) -> list[Instr]:
    """Check a program structurally and with the kernel verifier; return it normalised.

    Raises FilterError naming the problem.  Never attaches to a real socket.
    """
    if isinstance(instrs, (str, bytes, bytearray)):
        raise FilterError("a filter program is a list of (code, jt, jf, k) tuples, not a string")
    try:
        seq = list(instrs)  # type: ignore[arg-type]
    except TypeError:
        raise FilterError("a filter program is a list of (code, jt, jf, k) tuples") from None
    prog = _check_structure(seq)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        _setsockopt_filter(a, prog)
    finally:
        a.close()
        b.close()
    return prog


def attach(sock: socket.socket, instrs: Iterable[Instr], flush: bool = False) -> None:
    """Attach a validated program to ``sock``.

    Packets queued before the filter existed would otherwise leak through;
    with ``flush=True`` the socket first gets REJECT_ALL, its receive queue is
    drained (non-blocking), then the real program goes on.
    """
    prog = validate_program(instrs)
    if flush:
        _setsockopt_filter(sock, REJECT_ALL)
        _drain(sock)
    _setsockopt_filter(sock, prog)


def detach(sock: socket.socket) -> None:
    """Remove the socket's filter (no error if none was attached)."""
    try:
        sock.setsockopt(so.SOL_SOCKET, so.SO_DETACH_FILTER, 0)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _drain(sock: socket.socket, limit: int = 1 << 16) -> int:
    n = 0
    for _ in range(limit):
        try:
            sock.recv(65535, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            continue  # pending async error consumed; keep draining
        n += 1
    return n


def open_capture_socket(
    family: int, ifname: str | None = None, instrs: Iterable[Instr] | None = None
) -> socket.socket:
    """An ``AF_PACKET, SOCK_DGRAM`` capture socket for IPv4 or IPv6, filter first.

    Why AF_PACKET: raw IPv6 sockets strip the IPv6 header before the filter
    runs, so DLT_RAW programs cannot match addresses there; a SOCK_DGRAM
    packet socket hands the filter the packet from its IP header on, for both
    families.  The socket is created bound to no protocol (receives nothing),
    gets its filter (``instrs``, default REJECT_ALL so the caller can attach
    later), RX timestamps and ``PACKET_IGNORE_OUTGOING`` (our own sends are not
    captured; on loopback each packet is then seen once), and only then is
    bound to the protocol and interface (all interfaces when ``ifname`` is None).
    Received ``peer`` is ``(ifname, proto, pkttype, hatype, addr)``.
    """
    if family == socket.AF_INET:
        proto = so.ETH_P_IP
    elif family == socket.AF_INET6:
        proto = so.ETH_P_IPV6
    else:
        raise ValueError(f"family must be AF_INET or AF_INET6, got {family!r}")
    prog = validate_program(REJECT_ALL if instrs is None else instrs)
    # With an interface we can stay deaf until bind(); for "all interfaces"
    # Python cannot bind to ifindex 0, so the socket listens from creation:
    # REJECT_ALL goes on at once and whatever slipped in is drained.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0 if ifname else socket.htons(proto))
    try:
        _setsockopt_filter(sock, REJECT_ALL)
        sock.setsockopt(so.SOL_PACKET, so.PACKET_IGNORE_OUTGOING, 1)
        enable_rx_timestamps(sock)
        sock.setblocking(False)
        if ifname:
            sock.bind((ifname, proto))  # CPython applies htons itself
        _drain(sock)
        _setsockopt_filter(sock, prog)
    except BaseException:
        sock.close()
        raise
    return sock
