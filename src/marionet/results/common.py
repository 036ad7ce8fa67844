"""Types shared by every result class: addresses, times, durations.

Why a module of its own: every primitive (ping, trace, dns, ...) reports the
same three kinds of value, and researchers compare them across primitives.
One representation for each keeps ``ping.dst == trace.dst`` and
``reply.rtt < hop.rtt`` meaningful without conversions.

Conventions (documented once here, relied on everywhere):

* Times are integers, **nanoseconds since the Unix epoch** (``*_ns`` fields),
  because that is what the endpoint reports on the wire and what kernel
  timestamps carry.  The researcher-facing projections are tz-aware UTC
  ``datetime`` objects (``tx``, ``rx``, ``start`` properties).
* Durations are integer nanoseconds (``rtt_ns``) projected to
  ``datetime.timedelta`` (``rtt``).
* ``datetime``/``timedelta`` and scamper's ``{"sec","usec"}`` only hold
  microseconds.  Every projection from ns to µs **floors** (rounds toward
  minus infinity), exactly like truncating a ``struct timespec`` to a
  ``struct timeval``; so ``rx - tx`` computed from the projections never
  disagrees with scamper tools that do the same arithmetic on timevals.
"""

from __future__ import annotations

import datetime as _dt
import enum
import functools
import ipaddress
from typing import Any, Union

__all__ = [
    "Addr",
    "AddrLike",
    "EPOCH",
    "NS_PER_US",
    "NS_PER_S",
    "ns_to_datetime",
    "ns_to_timedelta",
    "timedelta_to_ns",
    "datetime_to_ns",
    "ns_to_timeval",
    "timeval_to_ns",
    "ns_to_ms_str",
    "seconds_to_ns",
]

NS_PER_US = 1_000
NS_PER_S = 1_000_000_000
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)

_IP = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Ranges that scamper calls "reserved" but ``ipaddress`` considers global
# in Python 3.11 (multicast and the 240/4 block are handled by flags).
_SHARED_V4 = ipaddress.ip_network("100.64.0.0/10")
_RESERVED_V4 = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
_RESERVED_V6 = tuple(ipaddress.ip_network(n) for n in (
    "2002::/16", "2001::/32", "2001:2::/48", "2001:3::/32", "2001:4:112::/48",
    "2001:10::/28", "2001:20::/28", "2001:db8::/32"))
_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_SIXTOFOUR = ipaddress.ip_network("2002::/16")


@functools.total_ordering
class Addr:
    """An IPv4 or IPv6 address, as scamper's ``ScamperAddr`` offers it.

    Hashable, orderable (all IPv4 before all IPv6, then numerically), and
    ``str()`` gives the canonical RFC 5952 text (which is what scamper
    prints; IPv4-mapped IPv6 addresses print as ``::ffff:a.b.c.d`` like
    ``inet_ntop``).

    Equality with strings (decision): ``Addr("127.0.0.1") == "127.0.0.1"``
    is True, because researchers write ``if reply.src == "192.0.2.1"``.  A
    string compares equal only when it *is* the canonical text, and
    ``hash(addr) == hash(str(addr))``; that keeps Python's rule "equal
    objects have equal hashes", so ``addr in {"127.0.0.1"}`` and
    ``{"127.0.0.1": x}[addr]`` work.  Non-canonical spellings such as
    ``"::0001"`` compare unequal: parse them with ``Addr(...)`` first.
    ``ipaddress`` objects compare unequal for the same hashing reason; use
    ``addr.ip`` to get one.  Ordering is defined between ``Addr`` objects
    only.
    """

    __slots__ = ("_ip", "_text")

    def __init__(self, value: "AddrLike") -> None:
        ip: _IP
        if isinstance(value, Addr):
            ip = value._ip
        elif isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            ip = value
        elif isinstance(value, str):
            try:
                ip = ipaddress.ip_address(value.strip())
            except ValueError:
                raise ValueError(f"not an IP address: {value!r}") from None
        elif isinstance(value, (bytes, bytearray)):
            if len(value) not in (4, 16):
                raise ValueError(
                    f"packed address must be 4 or 16 bytes, got {len(value)}")
            ip = ipaddress.ip_address(bytes(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise ValueError(f"not an IP address: {value!r}") from None
        else:
            raise TypeError(
                f"cannot make an address from {type(value).__name__}: {value!r}")
        self._ip = ip
        mapped = getattr(ip, "ipv4_mapped", None)
        self._text = f"::ffff:{mapped}" if mapped is not None else str(ip)

    # -- identity -------------------------------------------------------
    @property
    def ip(self) -> _IP:
        """The underlying ``ipaddress`` object."""
        return self._ip

    @property
    def version(self) -> int:
        return self._ip.version

    @property
    def packed(self) -> bytes:
        return self._ip.packed

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"Addr({self._text!r})"

    def __hash__(self) -> int:
        return hash(self._text)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Addr):
            return self._ip == other._ip
        if isinstance(other, str):
            return other == self._text
        return NotImplemented

    def _key(self) -> tuple[int, int]:
        return (self._ip.version, int(self._ip))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Addr):
            return NotImplemented
        return self._key() < other._key()

    def __int__(self) -> int:
        return int(self._ip)

    # -- scamper's predicates ------------------------------------------
    def is_ipv4(self) -> bool:
        return self._ip.version == 4

    def is_ipv6(self) -> bool:
        return self._ip.version == 6

    def is_loopback(self) -> bool:
        return self._ip.is_loopback

    def is_linklocal(self) -> bool:
        return self._ip.is_link_local

    def is_rfc1918(self) -> bool:
        """10/8, 172.16/12, 192.168/16 (IPv4 only, as in scamper)."""
        if self._ip.version != 4:
            return False
        n = int(self._ip)
        return (n >> 24 == 10 or n >> 20 == (172 << 4 | 1)
                or n >> 16 == (192 << 8 | 168))

    def is_multicast(self) -> bool:
        return self._ip.is_multicast

    def is_reserved(self) -> bool:
        """Not routable on the public Internet: scamper's list of reserved
        prefixes (``scamper_addr_isreserved``: for IPv4 0/8, 10/8,
        100.64/10, 127/8, 169.254/16, 172.16/12, 192.0.0/24, 192.0.2/24,
        192.88.99/24, 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24,
        224/4, 240/4; for IPv6 anything outside 2000::/3, and 2002::/16,
        2001::/32, 2001:2::/48, 2001:3::/32, 2001:4:112::/48, 2001:10::/28,
        2001:20::/28), plus the IPv6 documentation prefix 2001:db8::/32,
        which scamper's list leaves out but is never routed."""
        nets = _RESERVED_V4 if self._ip.version == 4 else _RESERVED_V6
        if self._ip.version == 6 and not self._ip in _UNICAST_V6:  # noqa: E713
            return True
        return any(self._ip in n for n in nets)

    def is_unicast(self) -> bool:
        """In the IPv6 global unicast prefix 2000::/3 (scamper: IPv6 only)."""
        return self._ip.version == 6 and self._ip in _UNICAST_V6

    def is_6to4(self) -> bool:
        """In the IPv6 6to4 prefix 2002::/16."""
        return self._ip.version == 6 and self._ip in _SIXTOFOUR


AddrLike = Union[Addr, str, bytes, int, ipaddress.IPv4Address,
                 ipaddress.IPv6Address]


def to_addr(value: AddrLike | None) -> Addr | None:
    """Coerce to ``Addr``, passing ``None`` through (an absent address)."""
    if value is None or isinstance(value, Addr):
        return value
    return Addr(value)


# -- times ---------------------------------------------------------------

def check_int(name: str, value: Any, *, optional: bool = False,
              minimum: int | None = None) -> None:
    """Raise a clear TypeError/ValueError for a non-integer field.

    Result objects are built by measurement code and by file readers; a
    float or a string sneaking into an ns field would silently lose
    precision later, so it is rejected where it enters.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def ns_to_datetime(ns: int) -> _dt.datetime:
    """Nanoseconds since the epoch → tz-aware UTC datetime (floored to µs)."""
    return EPOCH + _dt.timedelta(microseconds=ns // NS_PER_US)


def datetime_to_ns(when: _dt.datetime) -> int:
    """tz-aware datetime → ns since the epoch (naive datetimes are refused:
    guessing a timezone is how measurement timestamps go wrong)."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (UTC)")
    delta = when - EPOCH
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000
            + delta.microseconds) * NS_PER_US


def ns_to_timedelta(ns: int) -> _dt.timedelta:
    """Duration in ns → timedelta (floored to µs)."""
    return _dt.timedelta(microseconds=ns // NS_PER_US)


def timedelta_to_ns(delta: _dt.timedelta) -> int:
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000
            + delta.microseconds) * NS_PER_US


def seconds_to_ns(value: "float | int | _dt.timedelta") -> int:
    """Accept a duration the way scamper's API does: timedelta or seconds."""
    if isinstance(value, _dt.timedelta):
        return timedelta_to_ns(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"duration must be timedelta or seconds, got {value!r}")
    return round(value * NS_PER_S)


def ns_to_timeval(ns: int) -> dict[str, int]:
    """ns → scamper's ``{"sec": s, "usec": us}`` (floored to µs)."""
    us = ns // NS_PER_US
    return {"sec": us // 1_000_000, "usec": us % 1_000_000}


def timeval_to_ns(sec: int, usec: int) -> int:
    return (sec * 1_000_000 + usec) * NS_PER_US


def ns_to_ms_str(ns: int) -> str:
    """Duration → milliseconds with exactly three decimals ("0.258"), the
    way scamper prints RTTs.  Integer arithmetic, so no float artefacts."""
    us = ns // NS_PER_US
    sign = "-" if us < 0 else ""
    us = abs(us)
    return f"{sign}{us // 1000}.{us % 1000:03d}"


class TimedReply:
    """The scamper-style time views of a reply (ping reply, trace hop), which
    keeps ``tx_ns``/``rx_ns``/``rtt_ns`` inside."""

    __slots__ = ()
    tx_ns: int | None
    rx_ns: int | None
    rtt_ns: int | None

    @property
    def tx(self) -> _dt.datetime | None:
        return None if self.tx_ns is None else ns_to_datetime(self.tx_ns)

    @property
    def rx(self) -> _dt.datetime | None:
        return None if self.rx_ns is None else ns_to_datetime(self.rx_ns)

    @property
    def rtt(self) -> _dt.timedelta:
        assert self.rtt_ns is not None
        return ns_to_timedelta(self.rtt_ns)


class StopReason(str, enum.Enum):
    """Base of the per-measurement stop reasons: prints as scamper spells it."""

    def __str__(self) -> str:
        return self.value

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """Known reasons become this enum; unknown strings are kept verbatim,
        so a newer writer's reason survives a read instead of failing it.
        None stays None."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(f"stop_reason must be a string, got {value!r}")
        try:
            return cls(value.lower())
        except ValueError:
            return value


def complete_times(obj: Any, what: str) -> None:
    """Fill a reply's ``rtt_ns`` / ``rx_ns`` from the others (tx + rtt = rx),
    checking they are integers; a reply needs rtt, or both tx and rx."""
    for name in ("tx_ns", "rx_ns", "rtt_ns"):
        check_int(name, getattr(obj, name), optional=True)
    if obj.rtt_ns is None:
        if obj.tx_ns is None or obj.rx_ns is None:
            raise ValueError(f"{what} needs rtt_ns, or both tx_ns and rx_ns")
        obj.rtt_ns = obj.rx_ns - obj.tx_ns
    if obj.rx_ns is None and obj.tx_ns is not None:
        obj.rx_ns = obj.tx_ns + obj.rtt_ns
