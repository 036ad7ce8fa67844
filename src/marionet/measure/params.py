"""Parameter checks shared by the primitives.

Every primitive validates its whole parameter set before any I/O, with
messages that name the parameter; keeping the checks here gives every
primitive the same wording and bounds handling.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from typing import Any

NS = 1_000_000_000


def seconds(name: str, value: Any, lo: float, hi: float) -> int:
    """Float seconds or timedelta → ns, within ``lo``..``hi`` seconds."""
    if isinstance(value, _dt.timedelta):
        secs = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
    else:
        raise ValueError(f"{name} must be seconds (float) or a timedelta, got {value!r}")
    if not lo <= secs <= hi:
        raise ValueError(f"{name} must be within {lo:g} s - {hi:g} s, got {secs:g} s")
    return int(round(secs * NS))


def integer(name: str, value: Any, lo: int, hi: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be within {lo} - {hi}, got {value}")
    return value


def boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def address(name: str, value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(str(value) if value is not None else "")
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an IPv4 or IPv6 address") from None


def method(kind: str, value: Any, supported: tuple[str, ...], not_yet: tuple[str, ...] = (),
           aliases: dict[str, str] | None = None) -> str:
    """A probing method name, lower-cased and resolved through ``aliases``."""
    if not isinstance(value, str):
        raise ValueError(f"method must be a string, got {value!r}")
    m = value.lower()
    m = (aliases or {}).get(m, m)
    if m not in supported:
        if m in not_yet:
            raise ValueError(f"{kind} method {m!r} is not implemented yet "
                             f"(supported: {', '.join(supported)})")
        raise ValueError(f"unknown {kind} method {m!r} (supported: {', '.join(supported)})")
    return m


def target(dst: Any, src: Any) -> tuple[str, int, str | None]:
    """(destination, family, source or None) for a probing primitive."""
    d = address("destination", dst)
    if d.is_multicast or d.is_unspecified:
        raise ValueError(f"destination {d} is a multicast or unspecified address")
    s = None
    if src is not None:
        sa = address("source", src)
        if sa.version != d.version:
            raise ValueError(f"source {sa} is IPv{sa.version} but destination {d} is IPv{d.version}")
        s = str(sa)
    return str(d), d.version, s


#: scamper's limit on an explicit probe payload.
MAX_PAYLOAD = 1000


def payload(value: Any) -> bytes | None:
    """A probe payload given as bytes or a hex string (as scamper takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise ValueError("payload must be bytes or a hex string with an even number of digits") from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
    else:
        raise ValueError(f"payload must be bytes or a hex string, got {type(value).__name__}")
    if len(value) > MAX_PAYLOAD:
        raise ValueError(f"payload limit is {MAX_PAYLOAD} bytes, got {len(value)}")
    return value
