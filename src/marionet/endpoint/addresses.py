"""Address validation for requests: bad input becomes a clear error."""

from __future__ import annotations

import ipaddress
import socket


class BadRequest(Exception):
    """A request that cannot be carried out as given; ``code`` goes on the wire."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def family_const(family: int) -> int:
    if family == 4:
        return socket.AF_INET
    if family == 6:
        return socket.AF_INET6
    raise BadRequest("bad-family", f"family must be 4 or 6, not {family!r}")


def check_addr(addr: str, family: int, what: str = "address") -> str:
    """Parse ``addr`` as an IP address of ``family``; return its canonical text.

    On the send path: valid answers are cached (probing sends many packets
    to few destinations, and ``ipaddress`` parsing is slow)."""
    key = (addr, family)
    hit = _valid.get(key)
    if hit is not None:
        return hit
    canon = _check_addr(addr, family, what)
    if len(_valid) > 65536:
        _valid.clear()
    _valid[key] = canon
    return canon


_valid: dict[tuple[str, int], str] = {}


def _check_addr(addr: str, family: int, what: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except (ValueError, TypeError):
        raise BadRequest("bad-address", f"{what} {addr!r} is not an IP address") from None
    if ip.version != family:
        raise BadRequest(
            "bad-address", f"{what} {addr} is IPv{ip.version} but the socket is IPv{family}"
        )
    return str(ip)


def check_port(port: int | None, what: str = "port", required: bool = True) -> int:
    if port is None:
        if required:
            raise BadRequest("bad-port", f"{what} is required")
        return 0
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise BadRequest("bad-port", f"{what} {port!r} is not in 0..65535")
    return port


def sockaddr(addr: str, port: int, family: int) -> tuple:
    if family == 6:
        return (addr, port, 0, 0)
    return (addr, port)


def peer_text(peer: object) -> tuple[str | None, int | None]:
    """(address, port) from a sockaddr as returned by recvmsg."""
    if isinstance(peer, tuple) and peer:
        addr = peer[0]
        port = peer[1] if len(peer) > 1 and isinstance(peer[1], int) else None
        if isinstance(addr, str):
            if addr.startswith("::ffff:") and "." in addr:
                addr = addr[7:]
            return addr, port
    return None, None
