"""Socket constants that Python 3.11's :mod:`socket` lacks.

Why this module exists: timestamping, classic BPF and error-queue options are
Linux ABI numbers that CPython only exposes on some versions/builds.  Every
name is taken from :mod:`socket` when present (so a newer CPython wins) and
falls back to the value from the kernel UAPI headers (asm-generic/socket.h,
linux/net_tstamp.h, linux/errqueue.h, linux/in.h, linux/in6.h,
linux/if_packet.h).  Values verified on kernel 6.18 (x86_64).
"""

from __future__ import annotations

import errno as _errno
import socket
import struct


def _const(name: str, value: int) -> int:
    """Prefer CPython's value; fall back to the kernel UAPI number."""
    return int(getattr(socket, name, value))


# --- SOL_SOCKET level -------------------------------------------------------
SOL_SOCKET = socket.SOL_SOCKET
SO_TIMESTAMPNS = _const("SO_TIMESTAMPNS", 35)  # SO_TIMESTAMPNS_OLD on 64-bit
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
SO_TIMESTAMPING = _const("SO_TIMESTAMPING", 37)
SCM_TIMESTAMPING = SO_TIMESTAMPING
SO_ATTACH_FILTER = _const("SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = _const("SO_DETACH_FILTER", 27)
SO_LOCK_FILTER = _const("SO_LOCK_FILTER", 44)
#: Per-sendmsg timestamp key (u32 cmsg at SOL_SOCKET), kernel >= 6.13.
#: Verified on 6.18: accepted on UDP, raw IPv4 (incl. IP_HDRINCL), raw IPv6
#: and AF_PACKET; EINVAL on TCP.  It does not advance the OPT_ID counter.
SCM_TS_OPT_ID = _const("SCM_TS_OPT_ID", 81)
SO_ORIGINAL_DST = _const("SO_ORIGINAL_DST", 80)

# --- SOF_TIMESTAMPING_* flags (linux/net_tstamp.h) --------------------------
SOF_TIMESTAMPING_TX_HARDWARE = 1 << 0
SOF_TIMESTAMPING_TX_SOFTWARE = 1 << 1
SOF_TIMESTAMPING_RX_HARDWARE = 1 << 2
SOF_TIMESTAMPING_RX_SOFTWARE = 1 << 3
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SOF_TIMESTAMPING_SYS_HARDWARE = 1 << 5
SOF_TIMESTAMPING_RAW_HARDWARE = 1 << 6
SOF_TIMESTAMPING_OPT_ID = 1 << 7
SOF_TIMESTAMPING_TX_SCHED = 1 << 8
SOF_TIMESTAMPING_TX_ACK = 1 << 9
SOF_TIMESTAMPING_OPT_CMSG = 1 << 10
SOF_TIMESTAMPING_OPT_TSONLY = 1 << 11
SOF_TIMESTAMPING_OPT_STATS = 1 << 12
SOF_TIMESTAMPING_OPT_PKTINFO = 1 << 13
SOF_TIMESTAMPING_OPT_TX_SWHW = 1 << 14
SOF_TIMESTAMPING_BIND_PHC = 1 << 15
SOF_TIMESTAMPING_OPT_ID_TCP = 1 << 16
SOF_TIMESTAMPING_OPT_RX_FILTER = 1 << 17

# ee_info of a timestamping error-queue message says which point was stamped.
SCM_TSTAMP_SND = 0
SCM_TSTAMP_SCHED = 1
SCM_TSTAMP_ACK = 2

# --- linux/errqueue.h -------------------------------------------------------
SO_EE_ORIGIN_NONE = 0
SO_EE_ORIGIN_LOCAL = 1
SO_EE_ORIGIN_ICMP = 2
SO_EE_ORIGIN_ICMP6 = 3
SO_EE_ORIGIN_TXSTATUS = 4
SO_EE_ORIGIN_TIMESTAMPING = SO_EE_ORIGIN_TXSTATUS
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_ORIGIN_TXTIME = 6
#: struct sock_extended_err: ee_errno u32, origin/type/code/pad u8, info u32, data u32.
SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")

# --- IPv4 (SOL_IP) -----------------------------------------------------------
SOL_IP = _const("SOL_IP", 0)
IP_TOS = _const("IP_TOS", 1)
IP_TTL = _const("IP_TTL", 2)
IP_HDRINCL = _const("IP_HDRINCL", 3)
IP_PKTINFO = _const("IP_PKTINFO", 8)
IP_RECVERR = _const("IP_RECVERR", 11)
IP_RECVTTL = _const("IP_RECVTTL", 12)
IP_RECVTOS = _const("IP_RECVTOS", 13)
IP_MTU_DISCOVER = _const("IP_MTU_DISCOVER", 10)
IP_RECVORIGDSTADDR = _const("IP_RECVORIGDSTADDR", 20)
IP_PMTUDISC_DONT = 0
IP_PMTUDISC_PROBE = 3

# --- IPv6 (SOL_IPV6 = IPPROTO_IPV6) -----------------------------------------
SOL_IPV6 = _const("SOL_IPV6", 41)
IPV6_RECVERR = _const("IPV6_RECVERR", 25)
IPV6_RECVPKTINFO = _const("IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = _const("IPV6_PKTINFO", 50)
IPV6_RECVHOPLIMIT = _const("IPV6_RECVHOPLIMIT", 51)
IPV6_HOPLIMIT = _const("IPV6_HOPLIMIT", 52)
IPV6_RECVTCLASS = _const("IPV6_RECVTCLASS", 66)
IPV6_TCLASS = _const("IPV6_TCLASS", 67)
IPV6_UNICAST_HOPS = _const("IPV6_UNICAST_HOPS", 16)

# --- AF_PACKET (SOL_PACKET) --------------------------------------------------
SOL_PACKET = _const("SOL_PACKET", 263)
PACKET_TX_TIMESTAMP = 16  # cmsg type carrying sock_extended_err on AF_PACKET
PACKET_IGNORE_OUTGOING = _const("PACKET_IGNORE_OUTGOING", 23)
PACKET_AUXDATA = _const("PACKET_AUXDATA", 8)
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ALL = 0x0003

#: errnos that an *asynchronous* ICMP error leaves in sk_err.  With
#: IP_RECVERR the kernel reports a pending sk_err on the next send/recv
#: call (and clears it) even though that call's own packet is fine; the
#: details stay in the error queue.  Callers retry once on these.
ASYNC_SOCK_ERRNOS = frozenset(
    {
        _errno.ECONNREFUSED,
        _errno.EHOSTUNREACH,
        _errno.ENETUNREACH,
        _errno.EHOSTDOWN,
        _errno.ENETDOWN,
        _errno.EPROTO,
        _errno.EMSGSIZE,
        _errno.ENOPROTOOPT,
        _errno.EACCES,
    }
)
