"""Where a redirected TCP connection was going: ``SO_ORIGINAL_DST``.

The program's namespace NATs every outgoing TCP connection to the relay
(iptables ``REDIRECT``); conntrack still knows the destination the program
asked for, and hands it out as a ``sockaddr_in``/``sockaddr_in6`` through
``getsockopt(SOL_IP, SO_ORIGINAL_DST)`` (``SOL_IPV6, IP6T_SO_ORIGINAL_DST``
for IPv6, the same number 80).
"""

from __future__ import annotations

import socket
import struct

__all__ = ["SO_ORIGINAL_DST", "parse_sockaddr", "original_dst"]

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST in linux/netfilter_ipv6/ip6_tables.h
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28


def parse_sockaddr(raw: bytes) -> tuple[int, str, int]:
    """(family 4/6, address, port) of a raw ``sockaddr_in``/``sockaddr_in6``.

    ``sa_family`` is in host byte order (little-endian here); the port is
    in network order. ValueError for anything else.
    """
    if len(raw) < 2:
        raise ValueError(f"a sockaddr needs at least 2 bytes, got {len(raw)}")
    fam = struct.unpack("=H", raw[:2])[0]
    if fam == socket.AF_INET:
        if len(raw) < 8:
            raise ValueError(f"sockaddr_in of {len(raw)} bytes is truncated")
        return 4, socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack("!H", raw[2:4])[0]
    if fam == socket.AF_INET6:
        if len(raw) < 24:
            raise ValueError(f"sockaddr_in6 of {len(raw)} bytes is truncated")
        return 6, socket.inet_ntop(socket.AF_INET6, raw[8:24]), struct.unpack("!H", raw[2:4])[0]
    raise ValueError(f"unknown address family {fam} in a sockaddr")


def original_dst(sock: socket.socket) -> tuple[int, str, int]:
    """The destination the program connected to before the redirect.

    OSError (ENOENT) if the connection was not NATed — someone connected to
    the relay's own port directly.
    """
    if sock.family == socket.AF_INET6:
        raw = sock.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, _SOCKADDR_IN6)
    else:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
    return parse_sockaddr(raw)
