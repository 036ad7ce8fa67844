"""What a certificate (or the operator's policy) lets a principal do on a VP.

Why a typed schema: the privilege document travels as JSON in a private
X.509 extension (``pki.PRIVILEGES_OID``) and as tables in the operator's
TOML policy. Both are parsed here into one frozen ``Privileges`` value, so
issuing, verifying a delegation chain, explaining a grant and enforcing it
read the same fields, and a typo in a field name is an error, not a grant.

The document (every key optional; JSON shown, TOML is the same shape)::

    {
      "v": 1,
      "period":     {"not_before": "2026-12-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z"},
      "vps":        ["vp1", "vp2"],            # VP names; absent: any VP
      "tags":       {"site": ["lab", "ams"]},  # the VP must carry site=lab or site=ams
      "protocols":  ["udp", "tcp", "tcp-listen", "capture", "raw:1", "raw:17", "raw:*"],
      "dst":        ["192.0.2.0/24", "::1/128"],   # destination prefixes
      "ports":      ["53", "80", "443", "33434-33534"],  # destination ports; absent: any
      "src":        ["198.51.100.7/32"],       # source addresses beyond the VP's own
      "spoof":      false,                     # true: any source address
      "max_sockets": 16,
      "rate":       {"pps": 100, "bps": 1000000, "burst_packets": 50,
                     "burst_bytes": 65536, "excess": "delay"},   # or "deny"
      "total":      {"packets": 1000000, "bytes": 1000000000, "period_s": 86400},
      "primitives": {"ping": {"attempts": 10, "methods": ["icmp-echo"]},
                     "trace": {"hoplimit": 32},
                     "dns": {"servers": ["192.0.2.53"]},
                     "http": {"hosts": ["www.example.org"]},
                     "*": {}},
      "monitors":   ["<sha256 hex of a wasm module>"]
    }

Two kinds of field, and absence means opposite things:

* **Grants** — ``protocols``, ``dst``, ``src``/``spoof``, ``primitives``:
  absent grants nothing. A certificate without privileges may do nothing.
* **Limits** — ``period``, ``vps``, ``tags``, ``ports``, ``max_sockets``,
  ``rate``, ``total`` and a primitive's bounds: absent is no limit *at this
  level* (an issuer's limit still applies through the intersection).

``monitors`` accumulate: every monitor named anywhere along a chain must run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Protocol names a grant may list (``raw:N`` for IP protocol N, ``raw:*``).
PROTOCOLS = ("udp", "tcp", "tcp-listen", "capture")


class PrivilegeError(ValueError):
    """A privilege document that is malformed; the message names the field."""


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``pps``/``bps`` refill, ``burst_*`` capacity.

    ``None`` for one dimension means that dimension is not limited."""

    pps: float | None = None
    bps: float | None = None
    burst_packets: int | None = None
    burst_bytes: int | None = None
    excess: Literal["delay", "deny"] = "deny"


@dataclass(frozen=True)
class Totals:
    """At most ``packets``/``bytes`` sent per ``period_s`` (a fixed window)."""

    packets: int | None = None
    bytes: int | None = None
    period_s: float = 86400.0


@dataclass(frozen=True)
class PortRange:
    lo: int
    hi: int


@dataclass(frozen=True)
class Privileges:
    """A parsed privilege document (see the module docstring).

    ``None`` for a limit field means "no limit at this level"; an empty
    grant field grants nothing."""

    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    vps: frozenset[str] | None = None
    tags: dict[str, frozenset[str]] | None = None
    protocols: frozenset[str] = frozenset()
    dst: tuple[IPNet, ...] = ()
    ports: tuple[PortRange, ...] | None = None
    src: tuple[IPNet, ...] = ()
    spoof: bool = False
    max_sockets: int | None = None
    rate: Rate | None = None
    total: Totals | None = None
    #: primitive name (or "*") -> bounds: numbers are maxima of the parameter
    #: of that name; lists are the allowed values ("methods", "servers", "hosts").
    primitives: dict[str, dict[str, Any]] = field(default_factory=dict)
    monitors: frozenset[str] = frozenset()
