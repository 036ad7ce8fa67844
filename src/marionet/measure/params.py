"""Parameter checks shared by the primitives.

Every primitive validates its whole parameter set before any I/O, with
messages that name the parameter, the value given and the range allowed;
keeping the checks here gives every primitive the same wording and bounds
handling, in the API (``Ctrl.do_*``, ``ping(io, …)``) and on the endpoint
(a raw ``Task`` is checked by the very same code).

Two kinds of bound live here:

* **Per parameter** (``seconds``, ``integer``, ``payload``, …): what makes
  sense for one probe or query — a TTL is 1..255, a wait is finite.
* **Per task** (``task_duration``, ``MAX_TASK_S``): what one client may ask
  an endpoint to spend on one task. Each parameter may be sensible while
  their product is not (65535 attempts, 20 s apart, is 15 days), so an
  endpoint task's worst-case duration is bounded as a whole.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import math
from typing import Any

NS = 1_000_000_000

#: The longest an endpoint task may be planned to run (and, with
#: ``TASK_GRACE_S``, the longest it may run before the endpoint halts it).
#: Ten minutes: far beyond a measurement with scamper's defaults (a ping is
#: 4 s, a DNS lookup 15 s, an HTTP fetch 60 s), short enough that one client
#: cannot tie up an endpoint's sockets for hours. Longer work is more tasks.
MAX_TASK_S = 600.0
#: Slack past ``MAX_TASK_S`` before the endpoint halts a running task: the
#: estimate leaves out clock sampling and waiting for transmit stamps.
TASK_GRACE_S = 30.0


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, shortened: an error message quotes what was given,
    but a 4 MiB string (or a 400-digit int) must not become a 4 MiB error."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit - 5]}…({len(r)} chars)"


def seconds(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> int:
    """Float/int seconds or a timedelta → ns, within ``lo``..``hi`` seconds.

    NaN and infinities are refused (a NaN compares false with every bound,
    an infinite wait never ends); ``lo_open`` excludes ``lo`` itself (for
    "any positive time").
    """
    if not lo_open:
        desc = f"within {lo:g} s - {hi:g} s"
    elif lo == 0:
        desc = f"positive and at most {hi:g} s"
    else:
        desc = f"above {lo:g} s and at most {hi:g} s"
    if isinstance(value, _dt.timedelta):
        secs = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            secs = float(value)
        except OverflowError:  # an int beyond any float
            raise ValueError(f"{name} must be {desc}, got {shown(value)}") from None
    else:
        raise ValueError(f"{name} must be seconds (float) or a timedelta, {desc}, got {shown(value)}")
    if not math.isfinite(secs):
        raise ValueError(f"{name} must be a finite time, {desc}, got {secs!r}")
    if (secs <= lo if lo_open else secs < lo) or secs > hi:
        raise ValueError(f"{name} must be {desc}, got {secs:g} s")
    return int(round(secs * NS))


def integer(name: str, value: Any, lo: int, hi: int, optional: bool = False) -> int | None:
    """An int (not a bool) within ``lo``..``hi``; None passes if ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an integer within {lo} - {hi}, got {shown(value)}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be within {lo} - {hi}, got {shown(value)}")
    return value


def boolean(name: str, value: Any) -> bool:
    """Only True or False: 1, "yes" or "false" are too easy to get wrong."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {shown(value)}")
    return value


def address(name: str, value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IP address given as text (or an ``ipaddress`` object), never a name."""
    try:
        return ipaddress.ip_address(str(value) if value is not None else "")
    except ValueError:
        raise ValueError(f"{name} {shown(value)} is not an IPv4 or IPv6 address") from None


def method(kind: str, value: Any, supported: tuple[str, ...], not_yet: tuple[str, ...] = (),
           aliases: dict[str, str] | None = None) -> str:
    """A probing method name, lower-cased and resolved through ``aliases``."""
    if not isinstance(value, str):
        raise ValueError(f"method must be a string (one of: {', '.join(supported)}), got {shown(value)}")
    m = value.lower()
    m = (aliases or {}).get(m, m)
    if m not in supported:
        if m in not_yet:
            raise ValueError(f"{kind} method {m!r} is not implemented yet "
                             f"(supported: {', '.join(supported)})")
        raise ValueError(f"unknown {kind} method {shown(value)} (supported: {', '.join(supported)})")
    return m


def target(dst: Any, src: Any) -> tuple[str, int, str | None]:
    """(destination, family, source or None) for a probing primitive."""
    d = address("dst", dst)
    if d.is_multicast or d.is_unspecified:
        raise ValueError(f"dst {d} is a multicast or unspecified address")
    s = None
    if src is not None:
        sa = address("src", src)
        if sa.version != d.version:
            raise ValueError(f"src {sa} is IPv{sa.version} but destination {d} is IPv{d.version}")
        s = str(sa)
    return str(d), d.version, s


#: scamper's limit on an explicit probe payload.
MAX_PAYLOAD = 1000


def payload(value: Any) -> bytes | None:
    """A probe payload given as bytes or a hex string (as scamper takes it)."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > 2 * MAX_PAYLOAD:
            raise ValueError(f"payload limit is {MAX_PAYLOAD} bytes, got {len(value) // 2} (as hex)")
        try:
            value = bytes.fromhex(value)
        except ValueError:
            raise ValueError("payload must be bytes or a hex string with an even number of digits") from None
    elif isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value)
    else:
        raise ValueError(f"payload must be bytes or a hex string (0 - {MAX_PAYLOAD} bytes), "
                         f"got {type(value).__name__}")
    if len(value) > MAX_PAYLOAD:
        raise ValueError(f"payload limit is {MAX_PAYLOAD} bytes, got {len(value)}")
    return value


def task_duration(kind: str, worst_s: float, how: str, cap_s: float = MAX_TASK_S) -> None:
    """Refuse an endpoint task that could run longer than ``cap_s``.

    ``worst_s`` is the primitive's worst case for the parameters given
    (``how`` says how it was reckoned, in the parameters' own names), so the
    message tells the caller which knob to turn.
    """
    if worst_s > cap_s:
        raise ValueError(f"{kind} could run for up to {worst_s:g} s ({how}); an endpoint task may take "
                         f"at most {cap_s:g} s: use fewer attempts or shorter waits, or split it into tasks")
