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

Units and shorthands: ``rate.bps`` is bytes per second (like ``burst_bytes``
and ``total.bytes``); a burst defaults to one second's worth
(``max(1, ceil(rate))``). ``"*"`` in ``protocols`` is udp, tcp, tcp-listen,
capture and raw:*; ``"any"`` in ``dst``/``src`` is 0.0.0.0/0 and ::/0;
``"*"`` in ``ports`` is no limit. The period is half-open
``[not_before, not_after)``. IPv4-mapped IPv6 addresses are checked as the
IPv4 address they carry.

``intersect(a, b)`` is what both allow (a chain's effective grant, or a
certificate under the operator's limits): grants intersect (prefix sets by
address, ``raw:*`` ∩ ``raw:17`` = ``raw:17``), limits take the stricter
side (None = no limit), ``rate.excess`` "deny" beats "delay", ``total``
keeps the smaller counts over the *longer* window, disjoint periods leave an
empty period (``not_before >= not_after``: no instant is inside it),
primitives keep names granted on both sides (``*`` standing for any name)
with merged bounds, and monitors are the union. ``widenings(child,
parent)`` says in words where ``child`` exceeds ``parent``; docs/guard.md
is the operator's description.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import math
import re
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Mapping

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


# --------------------------------------------------------------------------
# Constants.

NOTHING = Privileges()

_ANY4 = ipaddress.IPv4Network("0.0.0.0/0")
_ANY6 = ipaddress.IPv6Network("::/0")

EVERYTHING = Privileges(
    protocols=frozenset({*PROTOCOLS, "raw:*"}),
    dst=(_ANY4, _ANY6),
    spoof=True,
    primitives={"*": {}},
)

#: Most prefixes, ports and list entries one document may hold in total:
#: a certificate extension or policy table is not a place for a routing table.
MAX_ENTRIES = 4096

#: Largest rate, window or primitive bound accepted (beyond it, no limit is meant).
_MAX_NUMBER = 10**15

#: Names shown for common IP protocol numbers.
IPPROTO_NAMES = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6-in-IP", 47: "GRE",
                 50: "ESP", 58: "ICMPv6", 132: "SCTP"}

_KIND_WORDS = {"udp": "UDP", "tcp": "TCP connections", "tcp-listen": "TCP listening sockets",
               "capture": "packet capture"}

_TOP_KEYS = ("v", "period", "vps", "tags", "protocols", "dst", "ports", "src", "spoof",
             "max_sockets", "rate", "total", "primitives", "monitors")
_PERIOD_KEYS = ("not_before", "not_after")
_RATE_KEYS = ("pps", "bps", "burst_packets", "burst_bytes", "excess")
_TOTAL_KEYS = ("packets", "bytes", "period_s")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_NAME = re.compile(r"[A-Za-z0-9_.*-]{1,64}")


# --------------------------------------------------------------------------
# Parsing.


def _err(path: str, msg: str) -> PrivilegeError:
    return PrivilegeError(f"{path}: {msg}")


def _tname(value: Any) -> str:
    return "boolean" if isinstance(value, bool) else type(value).__name__


def _check_keys(doc: Any, path: str, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _err(path, f"must be a table/object, got {_tname(doc)}")
    for key in doc:
        if not isinstance(key, str) or key not in known:
            raise _err(f"{path}.{key}", f"unknown field (known: {', '.join(known)})")
    return doc


def _int(value: Any, path: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, f"must be an integer, got {_tname(value)}")
    if value < lo:
        raise _err(path, f"must be >= {lo}, got {value}")
    return value


def _positive(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(path, f"must be a number, got {_tname(value)}")
    if isinstance(value, int) and abs(value) > _MAX_NUMBER:
        raise _err(path, f"must be at most {_MAX_NUMBER:.0e}")
    if not math.isfinite(value) or value <= 0:
        raise _err(path, f"must be a finite number > 0, got {value}")
    if value > _MAX_NUMBER:
        raise _err(path, f"must be at most {_MAX_NUMBER:.0e}")
    return float(value)


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _err(path, f"must be a list, got {_tname(value)}")
    return value


def _time(value: Any, path: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise _err(path, f"not an ISO 8601 time: {value!r} (e.g. 2026-12-01T00:00:00Z)") from None
    elif isinstance(value, dt.datetime):  # a TOML offset date-time
        when = value
    else:
        raise _err(path, f"must be an ISO 8601 time string, got {_tname(value)}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise _err(path, f"{value!s} has no time zone (add Z or +HH:MM)")
    try:
        return when.astimezone(dt.timezone.utc)
    except OverflowError:
        raise _err(path, f"{value!s} is out of range") from None


def _proto(value: Any, path: str) -> set[str]:
    if not isinstance(value, str):
        raise _err(path, f"must be a string, got {_tname(value)}")
    name = value.strip().lower()
    if name == "*":
        return {*PROTOCOLS, "raw:*"}
    if name in PROTOCOLS or name == "raw:*":
        return {name}
    if name.startswith("raw:"):
        num = name[4:]
        if num.isdigit() and 0 <= int(num) <= 255:
            return {f"raw:{int(num)}"}
        raise _err(path, f"{value!r}: raw IP protocol must be 0..255 or *")
    raise _err(path, f"unknown protocol {value!r} (known: {', '.join(PROTOCOLS)}, raw:N, raw:*, *)")


def _net(value: Any, path: str) -> list[IPNet]:
    if not isinstance(value, str):
        raise _err(path, f"must be a prefix string, got {_tname(value)}")
    text = value.strip()
    if text.lower() == "any":
        return [_ANY4, _ANY6]
    if "%" in text:
        raise _err(path, f"{value!r}: scoped addresses are not prefixes")
    try:
        return [ipaddress.ip_network(text, strict=True)]
    except ValueError as exc:
        if "host bits set" in str(exc):
            loose = ipaddress.ip_network(text, strict=False)
            raise _err(path, f"{value!r} has host bits set (did you mean {loose}?)") from None
        raise _err(path, f"{value!r} is not an IP address or prefix") from None


def _nets(value: Any, path: str) -> tuple[IPNet, ...]:
    if isinstance(value, str) and value.strip().lower() == "any":
        return (_ANY4, _ANY6)
    out: list[IPNet] = []
    for i, item in enumerate(_list(value, path)):
        out.extend(_net(item, f"{path}[{i}]"))
    return _canonical_nets(out)


def _port(value: Any, path: str) -> PortRange | None:
    if isinstance(value, bool):
        raise _err(path, "must be a port number or range, got boolean")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        text = value.strip()
        if text == "*":
            return None
        lo_s, sep, hi_s = text.partition("-")
        if not lo_s.strip().isdigit() or (sep and not hi_s.strip().isdigit()):
            raise _err(path, f"{value!r} is not a port N, a range A-B or *")
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    else:
        raise _err(path, f"must be a port number or range, got {_tname(value)}")
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise _err(path, f"{value!r}: ports are 0..65535")
    if lo > hi:
        raise _err(path, f"{value!r}: range start is above its end")
    return PortRange(lo, hi)


def _ports(value: Any, path: str) -> tuple[PortRange, ...] | None:
    if isinstance(value, str) and value.strip() == "*":
        return None
    ranges: list[PortRange] = []
    for i, item in enumerate(_list(value, path)):
        r = _port(item, f"{path}[{i}]")
        if r is None:
            return None
        ranges.append(r)
    return _canonical_ports(ranges)


def _strings(value: Any, path: str) -> list[str]:
    out = []
    for i, item in enumerate(_list(value, path)):
        if not isinstance(item, str) or not item.strip():
            raise _err(f"{path}[{i}]", f"must be a non-empty string, got {item!r}")
        out.append(item.strip())
    return out


def _host(value: str, path: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value.lower().rstrip(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(l) for l in name.split(".")):
        raise _err(path, f"{value!r} is not a host name or address")
    return name


def _bound(key: str, value: Any, path: str) -> Any:
    if isinstance(value, bool):
        raise _err(path, "a bound is a number (a maximum) or a list (allowed values), got boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, int) and value > _MAX_NUMBER:
            raise _err(path, f"a maximum must be at most {_MAX_NUMBER:.0e}")
        if not math.isfinite(value) or value < 0:
            raise _err(path, f"a maximum must be a finite number >= 0, got {value}")
        return value
    if isinstance(value, list):
        items = _strings(value, path)
        if key == "servers":
            norm = []
            for i, s in enumerate(items):
                if s.lower() == "resolver":
                    norm.append("resolver")
                    continue
                try:
                    norm.append(str(ipaddress.ip_address(s)))
                except ValueError:
                    raise _err(f"{path}[{i}]", f"{s!r} is not an IP address or 'resolver'") from None
            items = norm
        elif key == "hosts":
            items = [_host(s, f"{path}[{i}]") for i, s in enumerate(items)]
        return sorted(set(items))
    raise _err(path, f"a bound is a number (a maximum) or a list (allowed values), got {_tname(value)}")


def _primitives(value: Any, path: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise _err(path, f"must be a table/object, got {_tname(value)}")
    out: dict[str, dict[str, Any]] = {}
    for name, bounds in value.items():
        p = f"{path}.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ("*" in name and name != "*"):
            raise _err(p, "a primitive name (letters, digits, _ . -) or *")
        if not isinstance(bounds, dict):
            raise _err(p, f"must be a table of bounds (may be empty), got {_tname(bounds)}")
        norm: dict[str, Any] = {}
        for key, bound in bounds.items():
            if not isinstance(key, str) or not _NAME.fullmatch(key) or "*" in key:
                raise _err(f"{p}.{key}", "not a parameter name")
            norm[key] = _bound(key, bound, f"{p}.{key}")
        out[name] = norm
    return out


def _count_entries(doc: dict[str, Any]) -> int:
    n = 0
    for key in ("vps", "protocols", "dst", "src", "ports", "monitors"):
        if isinstance(doc.get(key), list):
            n += len(doc[key])
    tags = doc.get("tags")
    if isinstance(tags, dict):
        n += sum(len(v) if isinstance(v, list) else 1 for v in tags.values())
    prims = doc.get("primitives")
    if isinstance(prims, dict):
        for bounds in prims.values():
            n += 1
            if isinstance(bounds, dict):
                n += sum(len(v) if isinstance(v, list) else 1 for v in bounds.values())
    return n


def parse(doc: Any, where: str = "privileges") -> Privileges:
    """Validate a privilege document (JSON object or TOML table) strictly.

    ``where`` prefixes every error's field path (the policy passes its file
    and table). Unknown fields are errors: a misspelt limit must never turn
    into no limit."""
    doc = _check_keys(doc, where, _TOP_KEYS)
    total_entries = _count_entries(doc)
    if total_entries > MAX_ENTRIES:
        raise _err(where, f"{total_entries} prefixes/ports/entries, at most {MAX_ENTRIES} are allowed")
    if "v" in doc and (isinstance(doc["v"], bool) or doc["v"] != 1):
        raise _err(f"{where}.v", f"unsupported version {doc['v']!r} (this marionet reads 1)")
    kw: dict[str, Any] = {}
    if "period" in doc:
        period = _check_keys(doc["period"], f"{where}.period", _PERIOD_KEYS)
        for key in _PERIOD_KEYS:
            if key in period:
                kw[key] = _time(period[key], f"{where}.period.{key}")
        if "not_before" in kw and "not_after" in kw and kw["not_before"] >= kw["not_after"]:
            raise _err(f"{where}.period", "not_before must be before not_after")
    if "vps" in doc:
        kw["vps"] = frozenset(_strings(doc["vps"], f"{where}.vps"))
    if "tags" in doc:
        tags = doc["tags"]
        if not isinstance(tags, dict):
            raise _err(f"{where}.tags", f"must be a table of key = [values], got {_tname(tags)}")
        norm_tags: dict[str, frozenset[str]] = {}
        for key, values in tags.items():
            p = f"{where}.tags.{key}"
            if not isinstance(key, str) or not key.strip():
                raise _err(p, "a tag key must be a non-empty string")
            if isinstance(values, str):
                values = [values]
            norm_tags[key] = frozenset(_strings(values, p))
        kw["tags"] = norm_tags
    if "protocols" in doc:
        protos: set[str] = set()
        for i, item in enumerate(_list(doc["protocols"], f"{where}.protocols")):
            protos |= _proto(item, f"{where}.protocols[{i}]")
        kw["protocols"] = _canonical_protocols(protos)
    for key in ("dst", "src"):
        if key in doc:
            kw[key] = _nets(doc[key], f"{where}.{key}")
    if "ports" in doc:
        kw["ports"] = _ports(doc["ports"], f"{where}.ports")
    if "spoof" in doc:
        if not isinstance(doc["spoof"], bool):
            raise _err(f"{where}.spoof", f"must be true or false, got {_tname(doc['spoof'])}")
        kw["spoof"] = doc["spoof"]
    if "max_sockets" in doc:
        kw["max_sockets"] = _int(doc["max_sockets"], f"{where}.max_sockets", 0)
    if "rate" in doc:
        kw["rate"] = _parse_rate(doc["rate"], f"{where}.rate")
    if "total" in doc:
        kw["total"] = _parse_total(doc["total"], f"{where}.total")
    if "primitives" in doc:
        kw["primitives"] = _primitives(doc["primitives"], f"{where}.primitives")
    if "monitors" in doc:
        digests = []
        for i, item in enumerate(_list(doc["monitors"], f"{where}.monitors")):
            text = item.strip().lower() if isinstance(item, str) else None
            if text is None or not _HEX64.fullmatch(text):
                raise _err(f"{where}.monitors[{i}]", f"not a SHA-256 digest (64 hex digits): {item!r}")
            digests.append(text)
        kw["monitors"] = frozenset(digests)
    return Privileges(**kw)


def _parse_rate(value: Any, path: str) -> Rate | None:
    doc = _check_keys(value, path, _RATE_KEYS)
    pps = _positive(doc["pps"], f"{path}.pps") if "pps" in doc else None
    bps = _positive(doc["bps"], f"{path}.bps") if "bps" in doc else None
    bursts: dict[str, int | None] = {}
    for key, base in (("burst_packets", pps), ("burst_bytes", bps)):
        if key in doc:
            if base is None:
                raise _err(f"{path}.{key}", f"needs {'pps' if key == 'burst_packets' else 'bps'}"
                           " (a burst without a rate limits nothing)")
            bursts[key] = _int(doc[key], f"{path}.{key}", 1)
        else:
            bursts[key] = _default_burst(base)
    excess = doc.get("excess", "deny")
    if excess not in ("delay", "deny"):
        raise _err(f"{path}.excess", f"must be \"delay\" or \"deny\", got {excess!r}")
    if pps is None and bps is None:
        return None
    return Rate(pps=pps, bps=bps, excess=excess, **bursts)


def _parse_total(value: Any, path: str) -> Totals | None:
    doc = _check_keys(value, path, _TOTAL_KEYS)
    packets = _int(doc["packets"], f"{path}.packets", 0) if "packets" in doc else None
    nbytes = _int(doc["bytes"], f"{path}.bytes", 0) if "bytes" in doc else None
    period = _positive(doc["period_s"], f"{path}.period_s") if "period_s" in doc else 86400.0
    if packets is None and nbytes is None:
        return None
    return Totals(packets=packets, bytes=nbytes, period_s=period)


def _default_burst(rate: float | None) -> int | None:
    """One second's worth, so a bucket starts with room for a steady second."""
    return None if rate is None else max(1, math.ceil(rate))


# --------------------------------------------------------------------------
# Canonical forms (shared by parse and intersect, so equal grants compare equal).


def _ranges(nets: tuple[IPNet, ...] | list[IPNet], version: int) -> list[tuple[int, int]]:
    """Sorted, merged [lo, hi] integer ranges of one family's prefixes."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in nets if n.version == version)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def _nets_of(ranges: list[tuple[int, int]], version: int) -> list[IPNet]:
    cls = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    out: list[IPNet] = []
    for lo, hi in ranges:
        out.extend(ipaddress.summarize_address_range(cls(lo), cls(hi)))  # type: ignore[arg-type]
    return out


def _canonical_nets(nets: tuple[IPNet, ...] | list[IPNet]) -> tuple[IPNet, ...]:
    """The fewest prefixes covering exactly the same addresses, v4 first, sorted."""
    return tuple(_nets_of(_ranges(nets, 4), 4) + _nets_of(_ranges(nets, 6), 6))


def _canonical_ports(ranges: list[PortRange] | tuple[PortRange, ...]) -> tuple[PortRange, ...]:
    merged: list[PortRange] = []
    for r in sorted(ranges, key=lambda r: (r.lo, r.hi)):
        if merged and r.lo <= merged[-1].hi + 1:
            if r.hi > merged[-1].hi:
                merged[-1] = PortRange(merged[-1].lo, r.hi)
        else:
            merged.append(r)
    return tuple(merged)


def _canonical_protocols(protos: set[str] | frozenset[str]) -> frozenset[str]:
    """``raw:*`` subsumes every ``raw:N``."""
    if "raw:*" in protos:
        return frozenset(p for p in protos if not p.startswith("raw:") or p == "raw:*")
    return frozenset(protos)


def _proto_key(name: str) -> tuple[int, int, str]:
    if name.startswith("raw:"):
        num = name[4:]
        return (1, 256 if num == "*" else int(num), name)
    return (0, PROTOCOLS.index(name) if name in PROTOCOLS else 99, name)


# --------------------------------------------------------------------------
# Back to a document.


def _time_text(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _num(value: float) -> int | float:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else value


def _port_text(r: PortRange) -> str:
    return str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}"


def to_doc(p: Privileges) -> dict[str, Any]:
    """The canonical JSON-able document of ``p`` (what certificates carry);
    ``parse(to_doc(p)) == p`` for every parsed ``p``."""
    doc: dict[str, Any] = {"v": 1}
    if p.not_before is not None or p.not_after is not None:
        period = {}
        if p.not_before is not None:
            period["not_before"] = _time_text(p.not_before)
        if p.not_after is not None:
            period["not_after"] = _time_text(p.not_after)
        doc["period"] = period
    if p.vps is not None:
        doc["vps"] = sorted(p.vps)
    if p.tags is not None:
        doc["tags"] = {k: sorted(v) for k, v in sorted(p.tags.items())}
    if p.protocols:
        doc["protocols"] = sorted(p.protocols, key=_proto_key)
    if p.dst:
        doc["dst"] = [str(n) for n in p.dst]
    if p.ports is not None:
        doc["ports"] = [_port_text(r) for r in p.ports]
    if p.src:
        doc["src"] = [str(n) for n in p.src]
    if p.spoof:
        doc["spoof"] = True
    if p.max_sockets is not None:
        doc["max_sockets"] = p.max_sockets
    if p.rate is not None:
        rate: dict[str, Any] = {}
        if p.rate.pps is not None:
            rate["pps"] = _num(p.rate.pps)
            rate["burst_packets"] = _burst_of(p.rate.pps, p.rate.burst_packets)
        if p.rate.bps is not None:
            rate["bps"] = _num(p.rate.bps)
            rate["burst_bytes"] = _burst_of(p.rate.bps, p.rate.burst_bytes)
        rate["excess"] = p.rate.excess
        doc["rate"] = rate
    if p.total is not None:
        total: dict[str, Any] = {}
        if p.total.packets is not None:
            total["packets"] = p.total.packets
        if p.total.bytes is not None:
            total["bytes"] = p.total.bytes
        total["period_s"] = _num(p.total.period_s)
        doc["total"] = total
    if p.primitives:
        doc["primitives"] = {name: {k: (list(v) if isinstance(v, (list, tuple)) else v)
                                    for k, v in sorted(b.items())}
                             for name, b in sorted(p.primitives.items())}
    if p.monitors:
        doc["monitors"] = sorted(p.monitors)
    return doc


def _burst_of(rate: float, burst: int | None) -> int:
    return burst if burst is not None else max(1, math.ceil(rate))


# --------------------------------------------------------------------------
# Intersection: what both allow.


def _min_opt(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _intersect_nets(a: tuple[IPNet, ...], b: tuple[IPNet, ...]) -> tuple[IPNet, ...]:
    out: list[IPNet] = []
    for version in (4, 6):
        ra, rb = _ranges(a, version), _ranges(b, version)
        i = j = 0
        both: list[tuple[int, int]] = []
        while i < len(ra) and j < len(rb):
            lo, hi = max(ra[i][0], rb[j][0]), min(ra[i][1], rb[j][1])
            if lo <= hi:
                both.append((lo, hi))
            if ra[i][1] < rb[j][1]:
                i += 1
            else:
                j += 1
        out.extend(_nets_of(both, version))
    return tuple(out)


def _intersect_ports(a: tuple[PortRange, ...] | None,
                     b: tuple[PortRange, ...] | None) -> tuple[PortRange, ...] | None:
    if a is None:
        return None if b is None else _canonical_ports(b)
    if b is None:
        return _canonical_ports(a)
    out = [PortRange(max(x.lo, y.lo), min(x.hi, y.hi)) for x in a for y in b
           if max(x.lo, y.lo) <= min(x.hi, y.hi)]
    return _canonical_ports(out)


def _intersect_protocols(a: frozenset[str], b: frozenset[str]) -> frozenset[str]:
    out = {p for p in a & b}
    for x, y in ((a, b), (b, a)):
        if "raw:*" in x:
            out |= {p for p in y if p.startswith("raw:")}
    return _canonical_protocols(out)


def _merge_bounds(a: dict[str, Any], b: dict[str, Any], path: str) -> dict[str, Any]:
    """Per bound: numbers take the minimum, lists the common values; a bound
    on one side only is kept (it limits the result)."""
    out: dict[str, Any] = {}
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out[key] = _copy_bound(a[key])
        elif key not in a:
            out[key] = _copy_bound(b[key])
        else:
            x, y = a[key], b[key]
            if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
                out[key] = sorted(set(x) & set(y))
            elif _is_number(x) and _is_number(y):
                out[key] = min(x, y)
            else:
                raise _err(f"{path}.{key}", "a maximum on one side and a list of values on the other")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _copy_bound(v: Any) -> Any:
    return sorted(set(v)) if isinstance(v, (list, tuple)) else v


def _effective_bounds(prims: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    star = prims.get("*")
    own = prims.get(name) if name != "*" else None
    if own is None and star is None:
        return None
    if own is None:
        return _merge_bounds(star or {}, {}, f"primitives.{name}")
    if star is None:
        return _merge_bounds(own, {}, f"primitives.{name}")
    return _merge_bounds(own, star, f"primitives.{name}")


def _intersect_primitives(a: dict[str, dict[str, Any]],
                          b: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every name's effective bounds in the result are the merge of its
    effective bounds on both sides (``*`` stands for names not listed)."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted((set(a) | set(b)) - {"*"}):
        ea, eb = _effective_bounds(a, name), _effective_bounds(b, name)
        if ea is not None and eb is not None:
            out[name] = _merge_bounds(ea, eb, f"primitives.{name}")
    if "*" in a and "*" in b:
        out["*"] = _merge_bounds(a["*"], b["*"], "primitives.*")
    return out


def _intersect_rate(a: Rate | None, b: Rate | None) -> Rate | None:
    if a is None or b is None:
        return _normal_rate(a if b is None else b)
    pps = _min_opt(a.pps, b.pps)
    bps = _min_opt(a.bps, b.bps)
    bp = _min_opt(_burst_or_none(a.pps, a.burst_packets), _burst_or_none(b.pps, b.burst_packets))
    bb = _min_opt(_burst_or_none(a.bps, a.burst_bytes), _burst_or_none(b.bps, b.burst_bytes))
    excess: Literal["delay", "deny"] = "deny" if "deny" in (a.excess, b.excess) else "delay"
    return _normal_rate(Rate(pps=pps, bps=bps, burst_packets=bp, burst_bytes=bb, excess=excess))


def _burst_or_none(rate: float | None, burst: int | None) -> int | None:
    return None if rate is None else _burst_of(rate, burst)


def _normal_rate(r: Rate | None) -> Rate | None:
    if r is None or (r.pps is None and r.bps is None):
        return None
    return Rate(pps=r.pps, bps=r.bps, burst_packets=_burst_or_none(r.pps, r.burst_packets),
                burst_bytes=_burst_or_none(r.bps, r.burst_bytes), excess=r.excess)


def _intersect_total(a: Totals | None, b: Totals | None) -> Totals | None:
    """Smaller counts over the LONGER window: at most N in a window of the
    longer period implies at most N in any window of the shorter one nested
    in it, so the result is at least as strict as both sides."""
    if a is None or (a.packets is None and a.bytes is None):
        return None if b is None or (b.packets is None and b.bytes is None) else b
    if b is None or (b.packets is None and b.bytes is None):
        return a
    return Totals(packets=_min_opt(a.packets, b.packets), bytes=_min_opt(a.bytes, b.bytes),
                  period_s=max(a.period_s, b.period_s))


def intersect(a: Privileges, b: Privileges) -> Privileges:
    """What both ``a`` and ``b`` allow (a chain's effective privileges, or a
    certificate under the operator's policy). Monitors accumulate."""
    if a.tags is None or b.tags is None:
        tags = None if a.tags is None and b.tags is None else dict(a.tags or b.tags or {})
    else:
        tags = {k: (a.tags[k] & b.tags[k]) if k in a.tags and k in b.tags else a.tags.get(k, b.tags.get(k))
                for k in sorted(set(a.tags) | set(b.tags))}
    if a.spoof and b.spoof:
        src = _intersect_nets(a.src, b.src)
    elif a.spoof:
        src = _canonical_nets(b.src)
    elif b.spoof:
        src = _canonical_nets(a.src)
    else:
        src = _intersect_nets(a.src, b.src)
    return Privileges(
        not_before=a.not_before if b.not_before is None else b.not_before if a.not_before is None
        else max(a.not_before, b.not_before),
        not_after=_min_opt(a.not_after, b.not_after),
        vps=None if a.vps is None and b.vps is None else
        (a.vps if b.vps is None else b.vps if a.vps is None else a.vps & b.vps),
        tags=tags,
        protocols=_intersect_protocols(a.protocols, b.protocols),
        dst=_intersect_nets(a.dst, b.dst),
        ports=_intersect_ports(a.ports, b.ports),
        src=src,
        spoof=a.spoof and b.spoof,
        max_sockets=_min_opt(a.max_sockets, b.max_sockets),
        rate=_intersect_rate(a.rate, b.rate),
        total=_intersect_total(a.total, b.total),
        primitives=_intersect_primitives(a.primitives, b.primitives),
        monitors=a.monitors | b.monitors,
    )


# --------------------------------------------------------------------------
# Widenings: where a child grants more than its issuer.


def _uncovered(child: tuple[IPNet, ...], parent: tuple[IPNet, ...]) -> list[IPNet]:
    """Child prefixes not wholly inside the union of the parent's."""
    out = []
    pr = {4: _ranges(parent, 4), 6: _ranges(parent, 6)}
    for net in child:
        lo, hi = int(net.network_address), int(net.broadcast_address)
        spans = pr[net.version]
        k = bisect.bisect_right(spans, (lo, 1 << 129)) - 1
        if k < 0 or spans[k][1] < hi:
            out.append(net)
    return out


def _nets_text(nets: tuple[IPNet, ...] | list[IPNet], limit: int = 4) -> str:
    if not nets:
        return "none"
    shown = ", ".join(str(n) for n in nets[:limit])
    return shown + (f" and {len(nets) - limit} more" if len(nets) > limit else "")


def _ports_text(ports: tuple[PortRange, ...], limit: int = 8) -> str:
    if not ports:
        return "none"
    shown = ", ".join(_port_text(r) for r in ports[:limit])
    return shown + (f" and {len(ports) - limit} more" if len(ports) > limit else "")


def _bounds_widen(name: str, c: dict[str, Any], p: dict[str, Any], out: list[str]) -> None:
    label = "any primitive" if name == "*" else f"primitive {name}"
    for key, pv in sorted(p.items()):
        if key not in c:
            out.append(f"{label} has no {key} bound, the issuer's is {_bound_text(pv)}")
            continue
        cv = c[key]
        if isinstance(pv, (list, tuple)):
            if not isinstance(cv, (list, tuple)):
                out.append(f"{label} bounds {key} by a number, the issuer lists allowed values")
            elif set(cv) - set(pv):
                extra = ", ".join(sorted(set(cv) - set(pv)))
                out.append(f"{label} allows {key} {extra}, not among the issuer's {_bound_text(pv)}")
        elif not _is_number(cv):
            out.append(f"{label} bounds {key} by a list, the issuer's bound is a maximum of {pv}")
        elif cv > pv:
            out.append(f"{label} {key} {cv} exceeds the issuer's {pv}")


def _bound_text(v: Any) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else f"≤ {v}"


def widenings(child: Privileges, parent: Privileges) -> list[str]:
    """Plain-words reasons why ``child`` grants more than ``parent``; an
    empty list means ``child`` is within ``parent`` (a valid delegation)."""
    out: list[str] = []
    c, p = child, parent
    if not c.protocols and not c.primitives:
        return out  # grants nothing, so it cannot grant more than anyone
    empty_period = c.not_before is not None and c.not_after is not None and c.not_before >= c.not_after
    if not empty_period:
        if p.not_before is not None and (c.not_before is None or c.not_before < p.not_before):
            out.append(f"period starts {_time_text(c.not_before) if c.not_before else 'without a start'}, "
                       f"before the issuer's {_time_text(p.not_before)}")
        if p.not_after is not None and (c.not_after is None or c.not_after > p.not_after):
            out.append(f"period ends {_time_text(c.not_after) if c.not_after else 'never'}, "
                       f"after the issuer's {_time_text(p.not_after)}")
    if p.vps is not None:
        if c.vps is None:
            out.append(f"any VP, the issuer only {', '.join(sorted(p.vps)) or 'none'}")
        elif c.vps - p.vps:
            out.append(f"VPs {', '.join(sorted(c.vps - p.vps))} are not among the issuer's")
    if p.tags is not None:
        for key, values in sorted(p.tags.items()):
            cvals = None if c.tags is None else c.tags.get(key)
            if cvals is None:
                out.append(f"no limit on VP tag {key}, the issuer requires {key}={'|'.join(sorted(values))}")
            elif cvals - values:
                out.append(f"VP tag {key}={'|'.join(sorted(cvals - values))} is not among the issuer's")
    for proto in sorted(c.protocols, key=_proto_key):
        if proto not in p.protocols and not (proto.startswith("raw:") and "raw:*" in p.protocols):
            out.append(f"protocol {proto} is not granted to the issuer")
    for net in _uncovered(c.dst, p.dst):
        out.append(f"dst {net} is not within the issuer's {_nets_text(p.dst)}")
    if p.ports is not None:
        if c.ports is None:
            out.append(f"any destination port, the issuer only {_ports_text(p.ports)}")
        else:
            for r in c.ports:
                if not any(q.lo <= r.lo and r.hi <= q.hi for q in p.ports):
                    out.append(f"ports {_port_text(r)} are not within the issuer's {_ports_text(p.ports)}")
    if c.spoof and not p.spoof:
        out.append("spoofs source addresses, the issuer may not")
    if not p.spoof and not c.spoof:
        for net in _uncovered(c.src, p.src):
            out.append(f"src {net} is not within the issuer's {_nets_text(p.src)}")
    if p.max_sockets is not None:
        if c.max_sockets is None:
            out.append(f"no max_sockets limit, the issuer has {p.max_sockets}")
        elif c.max_sockets > p.max_sockets:
            out.append(f"max_sockets {c.max_sockets} exceeds the issuer's {p.max_sockets}")
    _rate_widen(_normal_rate(c.rate), _normal_rate(p.rate), out)
    _total_widen(c.total, p.total, out)
    names = sorted((set(c.primitives) | set(p.primitives)) - {"*"}) + ["*"]
    for name in names:
        cb = _effective_bounds(c.primitives, name)
        if cb is None:
            continue
        pb = _effective_bounds(p.primitives, name)
        label = "any primitive (*)" if name == "*" else f"primitive {name}"
        if pb is None:
            out.append(f"{label} is not granted to the issuer")
        else:
            _bounds_widen(name, cb, pb, out)
    for digest in sorted(p.monitors - c.monitors):
        out.append(f"drops monitor {digest} the issuer requires")
    return out


def _rate_widen(c: Rate | None, p: Rate | None, out: list[str]) -> None:
    if p is None:
        return
    for key, burst, unit in (("pps", "burst_packets", "packets"), ("bps", "burst_bytes", "bytes")):
        pv = getattr(p, key)
        if pv is None:
            continue
        cv = None if c is None else getattr(c, key)
        if cv is None:
            out.append(f"no rate.{key} limit, the issuer has {_num(pv)} {unit}/s")
            continue
        if cv > pv:
            out.append(f"rate.{key} {_num(cv)} exceeds the issuer's {_num(pv)}")
        cb, pb = _burst_of(cv, getattr(c, burst)), _burst_of(pv, getattr(p, burst))
        if cb > pb:
            out.append(f"rate.{burst} {cb} exceeds the issuer's {pb}")
    if c is not None and c.excess == "delay" and p.excess == "deny":
        out.append("rate excess is delayed, the issuer's is denied")


def _total_widen(c: Totals | None, p: Totals | None, out: list[str]) -> None:
    if p is None or (p.packets is None and p.bytes is None):
        return
    for key in ("packets", "bytes"):
        pv = getattr(p, key)
        if pv is None:
            continue
        cv = None if c is None else getattr(c, key)
        if cv is None:
            out.append(f"no total.{key} limit, the issuer has {pv} per {_duration(p.period_s)}")
        elif cv > pv:
            out.append(f"total.{key} {cv} exceeds the issuer's {pv}")
    if c is not None and (c.packets is not None or c.bytes is not None) and c.period_s < p.period_s:
        out.append(f"total.period_s {_num(c.period_s)} is shorter than the issuer's {_num(p.period_s)}"
                   " (the budget renews more often)")


# --------------------------------------------------------------------------
# Explaining a grant in plain words.


def _duration(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}" if n != 1 else unit
    return f"{_num(seconds)} s"


def _si(value: float, unit: str) -> str:
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{_num(round(value / size, 3))} {prefix}{unit}"
    return f"{_num(round(value, 3))} {unit}"


def _proto_words(protocols: frozenset[str]) -> str:
    words = []
    for proto in sorted(protocols, key=_proto_key):
        if proto in _KIND_WORDS:
            words.append(_KIND_WORDS[proto])
        elif proto == "raw:*":
            words.append("raw IP, any protocol")
        else:
            num = int(proto[4:])
            name = IPPROTO_NAMES.get(num)
            words.append(f"raw IP protocol {num}" + (f" ({name})" if name else ""))
    return ", ".join(words)


def _dst_words(nets: tuple[IPNet, ...]) -> str:
    if not nets:
        return "none"
    if _ANY4 in nets and _ANY6 in nets:
        return "any address (IPv4 and IPv6)"
    return _nets_text(nets, limit=16)


def explain(p: Privileges) -> list[str]:
    """The grant in plain words, one line per field (``marionet pki show``
    and the operator's ``--explain-policy``)."""
    if p == NOTHING:
        return ["nothing at all"]
    lines = []
    if p.not_before is None and p.not_after is None:
        lines.append("period: any time (no limit)")
    elif p.not_before is not None and p.not_after is not None and p.not_before >= p.not_after:
        lines.append("period: never (the periods along the chain do not overlap)")
    else:
        start = f"from {_time_text(p.not_before)}" if p.not_before else "from any time"
        end = f"until {_time_text(p.not_after)}" if p.not_after else "with no end"
        lines.append(f"period: {start} {end}")
    lines.append("on VPs: " + ("any VP (no limit)" if p.vps is None else ", ".join(sorted(p.vps)) or "none"))
    if p.tags is None or not p.tags:
        lines.append("VP tags: no limit")
    else:
        parts = [f"{k}={' or '.join(sorted(v)) if v else '(nothing)'}" for k, v in sorted(p.tags.items())]
        lines.append("VP tags: the VP must carry " + " and ".join(parts))
    lines.append("may open: " + (_proto_words(p.protocols) or "nothing (no protocols)"))
    lines.append("to destinations: " + _dst_words(p.dst))
    lines.append("destination ports: " + ("any (no limit)" if p.ports is None else _ports_text(p.ports, 16)))
    if p.spoof:
        lines.append("source addresses: any (spoofing allowed)")
    elif p.src:
        lines.append(f"source addresses: the VP's own and {_nets_text(p.src, 16)} (no other spoofing)")
    else:
        lines.append("source addresses: the VP's own only (no spoofing)")
    lines.append("open sockets: " + ("no limit" if p.max_sockets is None else f"at most {p.max_sockets}"))
    rate = _normal_rate(p.rate)
    if rate is None:
        lines.append("rate: no limit")
    else:
        parts = []
        if rate.pps is not None:
            parts.append(f"{_num(rate.pps)} packets/s (bursts of {rate.burst_packets})")
        if rate.bps is not None:
            parts.append(f"{_si(rate.bps, 'B/s')} = {_si(rate.bps * 8, 'bit/s')} "
                         f"(bursts of {rate.burst_bytes} bytes)")
        verb = "delayed" if rate.excess == "delay" else "denied"
        lines.append(f"rate: at most {' and '.join(parts)}; excess is {verb}")
    total = p.total
    if total is None or (total.packets is None and total.bytes is None):
        lines.append("totals: no limit")
    else:
        parts = []
        if total.packets is not None:
            parts.append(f"{total.packets} packets")
        if total.bytes is not None:
            parts.append(f"{total.bytes} bytes")
        lines.append(f"totals: at most {' and '.join(parts)} per {_duration(total.period_s)}")
    if not p.primitives:
        lines.append("primitives: none")
    else:
        words = []
        for name in sorted(p.primitives, key=lambda n: (n == "*", n)):
            bounds = _effective_bounds(p.primitives, name) or {}
            label = name if name != "*" else "any primitive" if len(p.primitives) == 1 else "any other primitive"
            if bounds:
                label += " (" + ", ".join(f"{k} {_bound_text(v)}" if _is_number(v) else f"{k}: {_bound_text(v) or 'none'}"
                                          for k, v in sorted(bounds.items())) + ")"
            words.append(label)
        lines.append("primitives: " + ", ".join(words))
    if p.monitors:
        lines.append("monitors that must run: " + ", ".join(d[:16] + "…" for d in sorted(p.monitors)))
    else:
        lines.append("monitors that must run: none")
    return lines


# --------------------------------------------------------------------------
# Checks the enforcement code calls per operation.
#
# IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are checked as the IPv4
# address they carry, since that is what a dual-stack socket puts on the
# wire; an IPv6 prefix therefore never grants an IPv4 destination.


class _Index:
    """Per-value lookup tables, built on first use and kept on the value."""

    __slots__ = ("dst", "src", "ports_lo", "ports_hi", "raw", "raw_any", "kinds")

    def __init__(self, p: Privileges) -> None:
        self.dst = _family_table(p.dst)
        self.src = _family_table(p.src)
        ports = _canonical_ports(p.ports) if p.ports is not None else None
        self.ports_lo = None if ports is None else [r.lo for r in ports]
        self.ports_hi = None if ports is None else [r.hi for r in ports]
        self.raw_any = "raw:*" in p.protocols
        self.raw = frozenset(int(x[4:]) for x in p.protocols if x.startswith("raw:") and x != "raw:*")
        self.kinds = frozenset(x for x in p.protocols if not x.startswith("raw:"))


def _family_table(nets: tuple[IPNet, ...]) -> dict[int, tuple[list[int], list[int]]]:
    table = {}
    for version in (4, 6):
        ranges = _ranges(nets, version)
        table[version] = ([lo for lo, _ in ranges], [hi for _, hi in ranges])
    return table


def _index(p: Privileges) -> _Index:
    ix = p.__dict__.get("_ix")
    if ix is None:
        ix = _Index(p)
        object.__setattr__(p, "_ix", ix)  # frozen, so the tables never go stale
    return ix


@functools.lru_cache(maxsize=8192)
def _addr_key(addr: str) -> tuple[int, int] | None:
    """(IP version, integer) of an address text; None if not an address."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
        ip = ip.ipv4_mapped  # type: ignore[union-attr]
    return ip.version, int(ip)


def _in_table(table: dict[int, tuple[list[int], list[int]]], key: tuple[int, int]) -> bool:
    los, his = table[key[0]]
    k = bisect.bisect_right(los, key[1]) - 1
    return k >= 0 and key[1] <= his[k]


def allows_dst(p: Privileges, addr: str) -> bool:
    """Whether ``addr`` (IPv4/IPv6 text) is an allowed destination; text that
    is not an address is not allowed."""
    key = _addr_key(addr)
    return key is not None and _in_table(_index(p).dst, key)


def allows_src(p: Privileges, addr: str, own_addrs: Iterable[str]) -> bool:
    """Whether packets may carry source ``addr``: the VP's own addresses and
    the unspecified address (the kernel fills in an own one) always; any with
    ``spoof``; else only the granted ``src`` prefixes."""
    key = _addr_key(addr)
    if key is None:
        return False
    if key[1] == 0 or p.spoof:
        return True
    if isinstance(own_addrs, (set, frozenset)) and addr in own_addrs:
        return True
    for own in own_addrs:
        if _addr_key(own) == key:
            return True
    return _in_table(_index(p).src, key)


def allows_port(p: Privileges, port: int) -> bool:
    """Whether destination ``port`` is allowed (no ``ports`` limit: any)."""
    ix = _index(p)
    if ix.ports_lo is None:
        return True
    k = bisect.bisect_right(ix.ports_lo, port) - 1
    return k >= 0 and port <= ix.ports_hi[k]  # type: ignore[index]


_KINDS = frozenset({*PROTOCOLS, "raw"})


def allows_proto(p: Privileges, kind: str, ipproto: int | None = None) -> bool:
    """Whether a socket of ``kind`` (udp, tcp, tcp-listen, capture, raw) may
    be opened; a raw socket needs ``raw:<ipproto>`` or ``raw:*`` (an unknown
    protocol, ``ipproto`` None, needs ``raw:*``)."""
    ix = _index(p)
    if kind == "raw":
        return ix.raw_any or (ipproto is not None and ipproto in ix.raw)
    if kind not in _KINDS:
        raise PrivilegeError(f"socket kind {kind!r} is not one of {', '.join(sorted(_KINDS))}")
    return kind in ix.kinds


def allows_time(p: Privileges, when: dt.datetime) -> bool:
    """Whether ``when`` (timezone-aware) lies in the period
    ``[not_before, not_after)``; an empty period contains no instant."""
    if p.not_before is not None and when < p.not_before:
        return False
    return p.not_after is None or when < p.not_after


def allows_vp(p: Privileges, name: str, tags: Mapping[str, str | Iterable[str]]) -> bool:
    """Whether the grant applies on the VP ``name`` carrying ``tags``: the
    name must be listed (if ``vps`` is set) and every tag key the grant
    names must carry one of its values."""
    if p.vps is not None and name not in p.vps:
        return False
    for key, allowed in (p.tags or {}).items():
        have = tags.get(key)
        values = {have} if isinstance(have, str) else set(have or ())
        if not values & allowed:
            return False
    return True


def primitive_bounds(p: Privileges, name: str) -> dict[str, Any] | None:
    """The bounds primitive ``name`` runs under (its own entry merged with
    ``*``), or None if it is not granted. A fresh dict: the caller may keep it."""
    return _effective_bounds(p.primitives, name)
