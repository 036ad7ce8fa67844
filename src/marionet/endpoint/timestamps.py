"""Kernel receive/transmit timestamps and the socket error queue.

Why: marionet reports *kernel* times (better than PacketLab's and scamper's
user-space clocks).  Receive times come from ``SO_TIMESTAMPNS``; send times
from ``SO_TIMESTAMPING`` software TX stamps, which the kernel queues on the
socket's error queue together with ICMP errors (``IP_RECVERR`` /
``IPV6_RECVERR``).  Everything here is synchronous and non-blocking, so the
asyncio daemon can call it from a ``loop.add_reader`` callback (epoll reports
error-queue readiness as readable).

Correlating TX stamps with sends (verified on kernel 6.18):

* UDP, raw IPv4 (with or without ``IP_HDRINCL``), raw IPv6, AF_PACKET:
  pass :func:`ts_opt_id_cmsg` (``SCM_TS_OPT_ID``) with each ``sendmsg``;
  the stamp then carries exactly that key and the socket's counter is not
  advanced.  Without the cmsg the key is the OPT_ID counter: 0 for the first
  send after :func:`enable_tx_timestamps`, +1 per *successful* send.
* TCP: ``SCM_TS_OPT_ID`` is rejected (EINVAL), and OPT_ID can only be enabled
  on a *connected* socket (EINVAL in CLOSE/LISTEN).  With
  ``SOF_TIMESTAMPING_OPT_ID_TCP`` the key is the byte offset, counted from the
  moment timestamping was enabled, of the **last byte** of the send: after
  enabling, a caller that has written ``n`` bytes so far and then sends ``m``
  bytes gets key ``n + m - 1`` (mod 2**32).  A partial write stamps
  ``n + written - 1``.  TCP may coalesce: a stamp covers all bytes up to its
  key.  Use :func:`tcp_key_after`.

Which ``SO_TIMESTAMPING`` flags 6.18 accepts: every combination of
TX_SOFTWARE, SOFTWARE, RX_SOFTWARE, OPT_ID, OPT_TSONLY, TX_SCHED, TX_ACK,
OPT_CMSG, OPT_ID_TCP is accepted on UDP v4/v6, raw v4 (incl. HDRINCL), raw v6
and AF_PACKET; on TCP any flag set including OPT_ID fails with EINVAL until
the socket is connected, then all are accepted.  AF_PACKET stamps arrive as
a ``(SOL_PACKET, PACKET_TX_TIMESTAMP)`` cmsg instead of IP_RECVERR.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass
from typing import Literal, Union

from marionet.endpoint import sockopt as so

TsSource = Literal["kernel", "user"]

_TIMESPEC = struct.Struct("=qq")
_TIMESPEC3 = struct.Struct("=qqqqqq")
_U32 = struct.Struct("=I")
_INT = struct.Struct("=i")
_ANC_BUFSIZE = 512
# Plain ints: combining socket.MsgFlag members goes through enum code on
# every call, which shows up in profiles of the receive path.
_DONTWAIT = int(socket.MSG_DONTWAIT)
_ERRQUEUE_DONTWAIT = int(socket.MSG_ERRQUEUE) | int(socket.MSG_DONTWAIT)
_EE_SIZE = so.SOCK_EXTENDED_ERR.size

#: Default TX flags: software stamp at the driver hand-off (SND), keyed,
#: without looping the packet back (TSONLY keeps the error queue small).
TX_FLAGS = (
    so.SOF_TIMESTAMPING_TX_SOFTWARE
    | so.SOF_TIMESTAMPING_SOFTWARE
    | so.SOF_TIMESTAMPING_OPT_ID
    | so.SOF_TIMESTAMPING_OPT_TSONLY
)


@dataclass(frozen=True, slots=True)
class Received:
    """One received datagram/packet with its receive time.

    ``ts_source`` is "kernel" when the time came from a timestamp cmsg and
    "user" when the kernel gave none (then ``time_ns`` is read right after
    ``recvmsg``).  ``ttl`` is the IPv4 TTL or IPv6 hop limit when the socket
    asked for it (``IP_RECVTTL`` / ``IPV6_RECVHOPLIMIT``); raw IPv4 and
    AF_PACKET callers read it from the header instead.
    """

    data: bytes
    peer: object
    time_ns: int
    ts_source: TsSource
    ttl: int | None = None
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class TxStamp:
    """A kernel transmit timestamp; ``key`` identifies the send (see module doc).

    ``kind`` is SCM_TSTAMP_SND (0), SCHED (1) or ACK (2).
    """

    key: int
    time_ns: int
    kind: int = so.SCM_TSTAMP_SND


@dataclass(frozen=True, slots=True)
class IcmpError:
    """An ICMP/ICMPv6 error the kernel matched to this socket.

    ``offender`` is the address of the router/host that sent the ICMP error;
    ``dest`` is the destination of the original packet (recvmsg's address);
    ``payload`` is what the kernel quotes back: for UDP the original UDP
    payload; for a raw IPv4 socket the original packet from the transport
    header on (no IP header; verified on 6.18).
    ``info`` carries e.g. the MTU for "fragmentation needed".
    """

    errno: int
    origin: int
    icmp_type: int
    icmp_code: int
    info: int
    offender: str | None
    dest: object
    time_ns: int | None
    ts_source: TsSource | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class LocalError:
    """A locally generated error-queue entry (e.g. EMSGSIZE with the path MTU in ``info``)."""

    errno: int
    origin: int
    info: int
    dest: object
    payload: bytes


ErrQueueItem = Union[TxStamp, IcmpError, LocalError]


# --- enabling ---------------------------------------------------------------


def enable_rx_timestamps(sock: socket.socket) -> None:
    """Ask for a kernel receive time (``SCM_TIMESTAMPNS``) on every packet.

    Also makes ICMP errors read from the error queue carry their kernel
    receive time.
    """
    sock.setsockopt(so.SOL_SOCKET, so.SO_TIMESTAMPNS, 1)


def enable_tx_timestamps(sock: socket.socket, extra_flags: int = 0) -> int:
    """Enable keyed software TX timestamps; returns the flags set.

    TCP sockets must be connected first (the kernel refuses OPT_ID before);
    for them ``OPT_ID_TCP`` is added so keys are byte offsets of the stream.
    Raises OSError from the kernel otherwise.
    """
    flags = TX_FLAGS | extra_flags
    if sock.type == socket.SOCK_STREAM:
        flags |= so.SOF_TIMESTAMPING_OPT_ID_TCP
    sock.setsockopt(so.SOL_SOCKET, so.SO_TIMESTAMPING, flags)
    return flags


#: Socket-level flags for datagram sockets that stamp only on request: the
#: reporting flags are on, but the *generation* flag (TX_SOFTWARE) travels
#: per send in :data:`TX_STAMP_REQUEST`, so untagged sends cost no stamp
#: (no error-queue entry, no wake-up of the reader).
TX_FLAGS_ON_REQUEST = TX_FLAGS & ~so.SOF_TIMESTAMPING_TX_SOFTWARE

#: The per-send cmsg asking for a software TX stamp on this one sendmsg.
TX_STAMP_REQUEST = (so.SOL_SOCKET, so.SO_TIMESTAMPING, struct.pack("=I", so.SOF_TIMESTAMPING_TX_SOFTWARE))


def enable_tx_timestamps_on_request(sock: socket.socket) -> None:
    """Datagram sockets: stamp only sends carrying :data:`TX_STAMP_REQUEST`."""
    sock.setsockopt(so.SOL_SOCKET, so.SO_TIMESTAMPING, TX_FLAGS_ON_REQUEST)


def enable_recverr(sock: socket.socket) -> None:
    """Queue ICMP errors on the error queue (with offender and quoted payload)."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(so.SOL_IPV6, so.IPV6_RECVERR, 1)
        # v4-mapped destinations on a dual-stack socket report via IP_RECVERR.
        try:
            sock.setsockopt(so.SOL_IP, so.IP_RECVERR, 1)
        except OSError:
            pass
    else:
        sock.setsockopt(so.SOL_IP, so.IP_RECVERR, 1)


def enable_recv_ttl(sock: socket.socket) -> None:
    """Ask for the TTL/hop limit of received packets as a cmsg."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(so.SOL_IPV6, so.IPV6_RECVHOPLIMIT, 1)
    else:
        sock.setsockopt(so.SOL_IP, so.IP_RECVTTL, 1)


def ts_opt_id_cmsg(key: int) -> tuple[int, int, bytes]:
    """The ``SCM_TS_OPT_ID`` cmsg that gives one sendmsg's TX stamp ``key``.

    Works on UDP, raw v4/v6 and AF_PACKET sockets with OPT_ID enabled
    (kernel >= 6.13); the kernel rejects it on TCP with EINVAL.
    """
    if not 0 <= key <= 0xFFFFFFFF:
        raise ValueError(f"timestamp key must be a u32, got {key!r}")
    return (so.SOL_SOCKET, so.SCM_TS_OPT_ID, _U32.pack(key))


def tcp_key_after(bytes_before: int, nbytes: int) -> int:
    """TX-stamp key of a TCP send of ``nbytes`` after ``bytes_before`` were sent.

    Offsets count from when :func:`enable_tx_timestamps` was called.
    """
    if nbytes <= 0:
        raise ValueError("a zero-length TCP send produces no timestamp")
    return (bytes_before + nbytes - 1) & 0xFFFFFFFF


_ts_opt_id_cache: bool | None = None


def supports_ts_opt_id() -> bool:
    """Whether this kernel honours ``SCM_TS_OPT_ID`` (probed once on loopback UDP)."""
    global _ts_opt_id_cache
    if _ts_opt_id_cache is None:
        _ts_opt_id_cache = _probe_ts_opt_id()
    return _ts_opt_id_cache


def _probe_ts_opt_id() -> bool:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        enable_tx_timestamps(tx)
        tx.sendmsg([b"p"], [ts_opt_id_cmsg(0xC0FFEE)], 0, rx.getsockname())
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            for item in read_errqueue(tx):
                if isinstance(item, TxStamp):
                    return item.key == 0xC0FFEE
            time.sleep(0.001)
        return False
    except OSError:
        return False
    finally:
        rx.close()
        tx.close()


# --- parsing ----------------------------------------------------------------


def _timespec_ns(raw: bytes) -> int:
    sec, nsec = _TIMESPEC.unpack_from(raw)
    return sec * 1_000_000_000 + nsec


def _timestamping_ns(raw: bytes) -> int | None:
    """First non-zero of the 3 timespecs (software, legacy, hardware)."""
    if len(raw) < _TIMESPEC3.size:
        return None
    v = _TIMESPEC3.unpack_from(raw)
    for i in (0, 4):
        ns = v[i] * 1_000_000_000 + v[i + 1]
        if ns:
            return ns
    return None


def _kernel_time(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """Kernel time from SCM_TIMESTAMPNS, else the SCM_TIMESTAMPING software stamp."""
    fallback = None
    for level, typ, raw in ancdata:
        if level != so.SOL_SOCKET:
            continue
        if typ == so.SCM_TIMESTAMPNS and len(raw) >= _TIMESPEC.size:
            return _timespec_ns(raw)
        if typ == so.SCM_TIMESTAMPING:
            fallback = _timestamping_ns(raw)
    return fallback


def _ttl(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    for level, typ, raw in ancdata:
        if (level, typ) in ((so.SOL_IP, so.IP_TTL), (so.SOL_IPV6, so.IPV6_HOPLIMIT)):
            if len(raw) >= _INT.size:
                return _INT.unpack_from(raw)[0]
            if len(raw) == 1:  # some paths deliver a single byte
                return raw[0]
    return None


def parse_offender(raw: bytes) -> str | None:
    """Address in the sockaddr that follows ``sock_extended_err`` (SO_EE_OFFENDER)."""
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(socket.AF_INET, raw[4:8])
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return None


def _is_ee_cmsg(level: int, typ: int) -> bool:
    return (
        (level == so.SOL_IP and typ == so.IP_RECVERR)
        or (level == so.SOL_IPV6 and typ == so.IPV6_RECVERR)
        or (level == so.SOL_PACKET and typ == so.PACKET_TX_TIMESTAMP)
    )


def parse_errqueue_message(
    data: bytes, ancdata: list[tuple[int, int, bytes]], addr: object
) -> ErrQueueItem | None:
    """Turn one MSG_ERRQUEUE recvmsg result into a typed item (None if unknown)."""
    ee_raw = None
    for level, typ, raw in ancdata:
        if _is_ee_cmsg(level, typ) and len(raw) >= _EE_SIZE:
            ee_raw = raw
            break
    if ee_raw is None:
        return None
    ee_errno, origin, etype, ecode, _pad, info, edata = so.SOCK_EXTENDED_ERR.unpack_from(ee_raw)
    if origin == so.SO_EE_ORIGIN_TIMESTAMPING:
        ns = _kernel_time(ancdata)
        if ns is None:
            return None
        return TxStamp(key=edata, time_ns=ns, kind=info)
    if origin in (so.SO_EE_ORIGIN_ICMP, so.SO_EE_ORIGIN_ICMP6):
        ns = _kernel_time(ancdata)
        return IcmpError(
            errno=ee_errno,
            origin=origin,
            icmp_type=etype,
            icmp_code=ecode,
            info=info,
            offender=parse_offender(ee_raw[_EE_SIZE:]),
            dest=addr,
            time_ns=ns,
            ts_source="kernel" if ns is not None else None,
            payload=data,
        )
    return LocalError(errno=ee_errno, origin=origin, info=info, dest=addr, payload=data)


# --- reading ----------------------------------------------------------------


def recv_stamped(sock: socket.socket, bufsize: int = 65535) -> Received | None:
    """Non-blocking receive of one packet with its kernel receive time.

    Returns None when nothing is queued.  A pending asynchronous socket error
    (left by an ICMP error, whose details are on the error queue) is consumed
    and the receive retried, so the caller never sees a spurious
    ECONNREFUSED here.
    """
    for _ in range(4):
        try:
            data, anc, flags, peer = sock.recvmsg(bufsize, _ANC_BUFSIZE, _DONTWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in so.ASYNC_SOCK_ERRNOS:
                continue
            raise
        ns = _kernel_time(anc)
        source: TsSource = "kernel"
        if ns is None:
            ns, source = time.time_ns(), "user"
        return Received(
            data=data,
            peer=peer,
            time_ns=ns,
            ts_source=source,
            ttl=_ttl(anc),
            truncated=bool(flags & socket.MSG_TRUNC),
        )
    return None


def read_errqueue(sock: socket.socket, bufsize: int = 65535, limit: int = 1024) -> list[ErrQueueItem]:
    """Drain up to ``limit`` error-queue entries without blocking.

    Only one reader per socket may exist (entries are consumed).  Reading the
    queue also clears the socket's pending error.
    """
    out: list[ErrQueueItem] = []
    for _ in range(limit):
        try:
            data, anc, _flags, addr = sock.recvmsg(
                bufsize, _ANC_BUFSIZE, _ERRQUEUE_DONTWAIT
            )
        except (BlockingIOError, InterruptedError):
            break
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                break
            raise
        item = parse_errqueue_message(data, anc, addr)
        if item is not None:
            out.append(item)
    return out
