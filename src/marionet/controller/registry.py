"""The VP registry: who is attached, where they are, how their clocks sit.

Metadata mirrors what scamper's sc_remoted publishes per VP (name, ASNs,
country, state, place, location, IATA code, tags) plus what a packet-model
controller needs: arrival time, liveness, and the clock offset measured
NTP-style over the control channel.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

META_KEYS = ("shortname", "tags", "asn4", "asn6", "ipv4", "ipv6", "cc", "st", "place",
             "loc", "iata", "addresses")


class MetaError(ValueError):
    """VP metadata of the wrong shape; the message names the field."""


def _check_meta(meta: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise MetaError("meta must be a mapping")
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if k not in META_KEYS:
            continue  # tolerate newer endpoints' extra fields
        if k == "tags":
            if not isinstance(v, dict) or not all(isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
                raise MetaError("tags must map strings to strings")
        elif k in ("asn4", "asn6"):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 2**32):
                raise MetaError(f"{k} must be an AS number")
        elif k == "loc":
            if v is not None and (not isinstance(v, (list, tuple)) or len(v) != 2
                                  or not all(isinstance(x, (int, float)) for x in v)
                                  or not -90 <= v[0] <= 90 or not -180 <= v[1] <= 180):
                raise MetaError("loc must be [lat, long] in degrees")
            v = tuple(v) if v is not None else None
        elif k == "addresses":
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise MetaError("addresses must be a list of strings")
        elif v is not None and not isinstance(v, str):
            raise MetaError(f"{k} must be a string")
        out[k] = v
    return out


@dataclass
class VpRecord:
    name: str
    shortname: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    asn4: int | None = None
    asn6: int | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    cc: str | None = None
    st: str | None = None
    place: str | None = None
    loc: tuple[float, float] | None = None
    iata: str | None = None
    addresses: list[str] = field(default_factory=list)
    arrival_ns: int = 0
    last_seen_ns: int = 0
    alive: bool = True
    clock_offset_ns: int | None = None
    clock_rtt_ns: int | None = None
    connections: int = 0

    @classmethod
    def from_register(cls, name: str, meta: dict[str, Any]) -> "VpRecord":
        clean = _check_meta(meta)
        now = time.time_ns()
        rec = cls(name=name, arrival_ns=now, last_seen_ns=now, **clean)
        if rec.shortname is None:
            rec.shortname = name.split(".")[0]
        if rec.ipv4 is None:
            rec.ipv4 = next((a for a in rec.addresses if "." in a and not a.startswith("127.")), None)
        if rec.ipv6 is None:
            rec.ipv6 = next((a for a in rec.addresses if ":" in a and a != "::1"
                             and not a.lower().startswith("fe80")), None)
        return rec

    def update(self, meta: dict[str, Any]) -> None:
        for k, v in _check_meta(meta).items():
            setattr(self, k, v)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loc"] = list(self.loc) if self.loc is not None else None
        return d


class Registry:
    """Name -> record, kept after a VP goes (its state may be resumed)."""

    def __init__(self) -> None:
        self.vps: dict[str, VpRecord] = {}

    def arrive(self, name: str, meta: dict[str, Any]) -> VpRecord:
        old = self.vps.get(name)
        rec = VpRecord.from_register(name, meta)
        if old is not None:
            rec.connections = old.connections
        rec.connections += 1
        self.vps[name] = rec
        return rec

    def gone(self, name: str, record: VpRecord | None = None) -> bool:
        """Mark ``name`` gone; with ``record``, only if that is still its
        current record (a replaced link must not bury its successor).
        Returns whether anything was marked."""
        rec = self.vps.get(name)
        if rec is None or (record is not None and rec is not record):
            return False
        rec.alive = False
        return True

    def select(self, *, alive_only: bool = True, pattern: str | None = None,
               tags: dict[str, str] | None = None, cc: str | Iterable[str] | None = None,
               asn: int | None = None) -> list[VpRecord]:
        out = []
        ccs = {cc} if isinstance(cc, str) else set(cc) if cc is not None else None
        for rec in self.vps.values():
            if alive_only and not rec.alive:
                continue
            if pattern is not None and not fnmatch.fnmatchcase(rec.name, pattern):
                continue
            if tags and any(rec.tags.get(k) != v for k, v in tags.items()):
                continue
            if ccs is not None and rec.cc not in ccs:
                continue
            if asn is not None and asn not in (rec.asn4, rec.asn6):
                continue
            out.append(rec)
        return sorted(out, key=lambda r: r.name)
