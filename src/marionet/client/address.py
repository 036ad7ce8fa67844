"""Parsing ``HOST:PORT`` addresses (IPv6 in brackets) with clear errors."""

from __future__ import annotations

import ipaddress


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """``"127.0.0.1:7000"``, ``"[::1]:7000"``, ``"localhost:7000"`` → (host, port)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"address {text!r} is not HOST:PORT")
    host, sep, port_s = text.rpartition(":")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"address {text!r}: missing ']'")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"address {text!r} is not [HOST]:PORT")
        port_s = rest[1:]
        sep = ":" if rest else ""
    elif text.count(":") > 1:  # bare IPv6 without port
        host, sep, port_s = text, "", ""
    if not sep or not port_s:
        if default_port is None:
            raise ValueError(f"address {text!r} has no port")
        return (host or text), default_port
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"address {text!r}: port {port_s!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"address {text!r}: port {port} not in 1..65535")
    if not host:
        raise ValueError(f"address {text!r} has no host")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
