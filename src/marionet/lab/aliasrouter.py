"""An emulated router with chosen IP-ID behaviour: ground truth for alias resolution.

Linux routers in namespaces draw IP-IDs from hashed per-(src, dst, proto)
counters, so two interfaces of one namespace router look like independent
counters: they are only *negative* ground truth. Testing Ally, RadarGun and
MIDAR needs routers whose interfaces really share a counter, and the traps
those techniques must avoid (per-interface counters, random, zero,
byte-swapped, two routers with the same velocity but different offsets).

This module is that router, in user space. One emulator process serves
several routers, each owning several addresses. It runs inside a lab
namespace (``python -m marionet.lab.aliasrouter --config FILE``), creates a
TUN device, routes every router address to it (/32 and /128 routes), enables
forwarding in the namespace, and answers what arrives:

- ICMP / ICMPv6 echo request → echo reply;
- TCP: SYN → RST+ACK (or SYN-ACK with ``tcp_reply = "synack"``), ACK or
  anything else → RST (the MIDAR "TCP ACK" method);
- UDP → ICMP port unreachable (ICMPv6 port unreachable), whose source is the
  probed address or a fixed interface (``udp_reply_source``: Mercator-style
  alias discovery);
- other IPv4 protocols → ICMP protocol unreachable.

Every IPv4 reply (echo reply, RST, SYN-ACK and ICMP error alike) takes its
IP-ID from the router's behaviour. IPv6 is answered too, but IPv6 has no
IP-ID outside fragment headers and we never fragment, so IP-ID behaviour is
IPv4-only. Fragmented probes are ignored. The router is an end router: it
sends no time-exceeded (the namespace's forwarding decrements TTL before the
TUN, and probes arriving with TTL 0 are never delivered to it).

``mpls_hops`` puts emulated label-switching routers in front of a router,
because Linux's own MPLS forwarding (``mpls_forward`` in net/mpls/af_mpls.c)
drops a labelled packet whose TTL would expire and sends no ICMP error at
all, while traceroute's MPLS support (RFC 4950
label stacks in RFC 4884 extensions) needs a router that sends one.  A
probe for one of the router's addresses that reaches the TUN with TTL t ≤
len(mpls_hops) is answered by hop t: an ICMP time exceeded from that hop's
address (of the probe's family; a hop without one is silent) quoting the
probe as it arrived there (TTL 1, padded to 128 bytes, the RFC 4884 length
field set), followed by an extension structure (version 2, checksummed)
with one MPLS label stack object (class 1, c-type 1) holding the configured
entries.  A hop with no labels sends a plain time exceeded.  Seen from a
traceroute: the emulator's namespace (whose kernel forwards into the TUN)
is one hop, then the emulated hops, then the router.

The packet logic is sans-I/O (:class:`AliasEmulator` turns a packet into a
reply), so it is unit-testable without a namespace; :func:`run` is the thin
TUN loop.

Config (TOML, JSON or a dict)::

    tun = "mnar0"         # TUN device name (≤ 15 chars), default mnar0
    seed = 1              # makes per-interface / per-destination / random reproducible
    forwarding = true     # set ip_forward / ipv6 forwarding in the namespace

    [[router]]
    name = "r1"
    addresses = ["192.0.2.1", "192.0.2.2", "2001:db8::1"]
    ipid = "shared"       # shared | per-interface | per-destination | random | zero | byteswapped
    velocity = 100.0      # background IDs per second (plus one per reply)
    offset = 0            # counter value at start
    udp_reply_source = "probed"   # or an address of this router (one per family, as a list)
    tcp_reply = "rst"     # or "synack"
    reply_ttl = 64
    rate_limit = 0        # replies per second (token bucket), 0 = unlimited
    rate_burst = 0        # bucket size, 0 = max(1, rate_limit / 10)
    silent_after = 0      # stop answering after this many replies (0 = never)
    silent_after_s = 0.0  # stop answering this many seconds after start (0 = never)
    answer_probability = 1.0      # each probe answered with this probability (seeded)
    methods = ["icmp", "udp", "tcp", "other"]   # probe kinds answered (e.g. ["icmp"]: no UDP/TCP)

    [[router.mpls_hops]]  # emulated LSRs in front of r1, nearest first
    addresses = ["192.0.2.101", "2001:db8::101"]
    labels = [{label = 16001, exp = 0, s = 1, ttl = 1}]   # s: 1 on the last entry by default
"""

from __future__ import annotations

import argparse
import array
import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "IPID_BEHAVIOURS",
    "AliasConfigError",
    "RouterConfig",
    "EmulatorConfig",
    "load_config",
    "config_to_dict",
    "alias_sets",
    "ipid_alias_sets",
    "behaviours",
    "METHODS",
    "AliasEmulator",
    "run",
    "main",
]

IPID_BEHAVIOURS = ("shared", "per-interface", "per-destination", "random", "zero", "byteswapped")
TCP_REPLIES = ("rst", "synack")
#: Probe kinds a router may answer: ICMP echo, UDP (port unreachable), TCP
#: (RST / SYN-ACK), other protocols (protocol unreachable).
METHODS = ("icmp", "udp", "tcp", "other")


class AliasConfigError(ValueError):
    """The emulator config is wrong; the message names the field."""


@dataclass(frozen=True)
class MplsEntry:
    """One RFC 3032 label stack entry, as an LSR quotes it (RFC 4950)."""

    label: int
    exp: int = 0
    s: int = 0
    ttl: int = 1


@dataclass(frozen=True)
class MplsHop:
    """An emulated LSR in front of a router (see the module docstring)."""

    addresses: tuple[str, ...]
    labels: tuple[MplsEntry, ...] = ()


# -------------------------------------------------------------------- config


@dataclass(frozen=True)
class RouterConfig:
    """One emulated router: its interface addresses and its IP-ID behaviour."""

    name: str
    addresses: tuple[str, ...]
    ipid: str = "shared"
    velocity: float = 0.0
    offset: int = 0
    udp_reply_source: tuple[str, ...] = ()  # empty: the probed address
    tcp_reply: str = "rst"
    reply_ttl: int = 64
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    mpls_hops: tuple[MplsHop, ...] = ()
    silent_after: int = 0
    silent_after_s: float = 0.0
    answer_probability: float = 1.0
    methods: tuple[str, ...] = METHODS


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything one emulator process serves."""

    routers: tuple[RouterConfig, ...]
    tun: str = "mnar0"
    seed: int = 0
    forwarding: bool = True


def _num(v: Any, where: str, *, integer: bool = False, lo: float | None = None, hi: float | None = None) -> Any:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise AliasConfigError(f"{where}: expected {'an integer' if integer else 'a number'}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise AliasConfigError(f"{where}: {v!r} is outside {lo}..{hi}")
    return v


def _addresses(where: str, addrs_in: Any, owner: str, seen: dict[str, str], *, empty: bool = False) -> list[str]:
    if not isinstance(addrs_in, (list, tuple)) or (not addrs_in and not empty):
        raise AliasConfigError(f"{where}: expected a non-empty list of IP addresses")
    out: list[str] = []
    for a in addrs_in:
        try:
            s = str(ipaddress.ip_address(a))
        except (ValueError, TypeError):
            raise AliasConfigError(f"{where}: {a!r} is not an IP address") from None
        if s in seen:
            raise AliasConfigError(f"{where}: {s} is already an address of {seen[s]}")
        seen[s] = owner
        out.append(s)
    return out


def _mpls_hops(w: str, hops_in: Any, seen: dict[str, str]) -> tuple[MplsHop, ...]:
    if not isinstance(hops_in, (list, tuple)):
        raise AliasConfigError(f"{w}.mpls_hops: expected a list of tables")
    hops = []
    for j, h in enumerate(hops_in):
        wh = f"{w}.mpls_hops[{j}]"
        if not isinstance(h, Mapping):
            raise AliasConfigError(f"{wh}: expected a table, got {h!r}")
        for k in h:
            if k not in ("addresses", "labels"):
                raise AliasConfigError(f"{wh}.{k}: unknown field (known: addresses, labels)")
        addrs = _addresses(f"{wh}.addresses", h.get("addresses"), f"{wh}", seen)
        if len({ipaddress.ip_address(a).version for a in addrs}) != len(addrs):
            raise AliasConfigError(f"{wh}.addresses: at most one address per family")
        labels_in = h.get("labels", [])
        if not isinstance(labels_in, (list, tuple)):
            raise AliasConfigError(f"{wh}.labels: expected a list of tables")
        labels = []
        for k, e in enumerate(labels_in):
            we = f"{wh}.labels[{k}]"
            if not isinstance(e, Mapping) or "label" not in e:
                raise AliasConfigError(f"{we}: expected a table with at least 'label'")
            for key in e:
                if key not in ("label", "exp", "s", "ttl"):
                    raise AliasConfigError(f"{we}.{key}: unknown field (known: label, exp, s, ttl)")
            last = 1 if k == len(labels_in) - 1 else 0
            labels.append(MplsEntry(_num(e["label"], f"{we}.label", integer=True, lo=0, hi=2**20 - 1),
                                    _num(e.get("exp", 0), f"{we}.exp", integer=True, lo=0, hi=7),
                                    _num(e.get("s", last), f"{we}.s", integer=True, lo=0, hi=1),
                                    _num(e.get("ttl", 1), f"{we}.ttl", integer=True, lo=0, hi=255)))
        if len(labels) > 64:
            raise AliasConfigError(f"{wh}.labels: at most 64 entries")
        hops.append(MplsHop(tuple(addrs), tuple(labels)))
    if len(hops) > 32:
        raise AliasConfigError(f"{w}.mpls_hops: at most 32 hops")
    return tuple(hops)


def _router(i: int, r: Any, seen: dict[str, str]) -> RouterConfig:
    w = f"router[{i}]"
    if not isinstance(r, Mapping):
        raise AliasConfigError(f"{w}: expected a table, got {r!r}")
    known = {f for f in RouterConfig.__dataclass_fields__}
    for k in r:
        if k not in known:
            raise AliasConfigError(f"{w}.{k}: unknown field (known: {', '.join(sorted(known))})")
    name = r.get("name", f"r{i}")
    if not isinstance(name, str) or not name:
        raise AliasConfigError(f"{w}.name: expected a non-empty string")
    w = f"router[{i}] ({name})"
    addrs = _addresses(f"{w}.addresses", r.get("addresses"), f"router {name!r}", seen)
    ipid = r.get("ipid", "shared")
    if ipid not in IPID_BEHAVIOURS:
        raise AliasConfigError(f"{w}.ipid: {ipid!r} is not one of {', '.join(IPID_BEHAVIOURS)}")
    velocity = float(_num(r.get("velocity", 0.0), f"{w}.velocity", lo=0, hi=1e7))
    offset = _num(r.get("offset", 0), f"{w}.offset", integer=True, lo=0, hi=65535)
    src = r.get("udp_reply_source", "probed")
    if isinstance(src, str):
        src = [] if src == "probed" else [src]
    if not isinstance(src, (list, tuple)):
        raise AliasConfigError(f"{w}.udp_reply_source: expected 'probed', an address or a list of addresses")
    fixed: list[str] = []
    for a in src:
        try:
            s = str(ipaddress.ip_address(a))
        except (ValueError, TypeError):
            raise AliasConfigError(f"{w}.udp_reply_source: {a!r} is neither 'probed' nor an IP address") from None
        if s not in addrs:
            raise AliasConfigError(f"{w}.udp_reply_source: {s} is not one of this router's addresses")
        if any(ipaddress.ip_address(f).version == ipaddress.ip_address(s).version for f in fixed):
            raise AliasConfigError(f"{w}.udp_reply_source: more than one IPv{ipaddress.ip_address(s).version} address")
        fixed.append(s)
    tcp = r.get("tcp_reply", "rst")
    if tcp not in TCP_REPLIES:
        raise AliasConfigError(f"{w}.tcp_reply: {tcp!r} is not one of {', '.join(TCP_REPLIES)}")
    ttl = _num(r.get("reply_ttl", 64), f"{w}.reply_ttl", integer=True, lo=1, hi=255)
    rate = float(_num(r.get("rate_limit", 0), f"{w}.rate_limit", lo=0))
    burst = float(_num(r.get("rate_burst", 0), f"{w}.rate_burst", lo=0))
    hops = _mpls_hops(w, r.get("mpls_hops", []), seen)
    silent_n = _num(r.get("silent_after", 0), f"{w}.silent_after", integer=True, lo=0)
    silent_s = float(_num(r.get("silent_after_s", 0.0), f"{w}.silent_after_s", lo=0))
    prob = float(_num(r.get("answer_probability", 1.0), f"{w}.answer_probability", lo=0, hi=1))
    methods = r.get("methods", list(METHODS))
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or any(x not in METHODS for x in methods):
        raise AliasConfigError(f"{w}.methods: {methods!r} must be a list of {', '.join(METHODS)}")
    return RouterConfig(name, tuple(addrs), ipid, velocity, offset, tuple(fixed), tcp, ttl, rate, burst, hops,
                        silent_after=silent_n, silent_after_s=silent_s, answer_probability=prob,
                        methods=tuple(m for m in METHODS if m in methods))


def load_config(src: "EmulatorConfig | Mapping[str, Any] | str | os.PathLike[str]") -> EmulatorConfig:
    """Parse and validate a config from a dict, a ``.toml``/``.json`` file, or pass one through."""
    if isinstance(src, EmulatorConfig):
        return src
    if isinstance(src, (str, os.PathLike)):
        p = Path(src)
        try:
            text = p.read_text()
        except OSError as e:
            raise AliasConfigError(f"config: cannot read {p}: {e}") from None
        try:
            data: Any = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as e:
            raise AliasConfigError(f"config: {p}: {e}") from None
    else:
        data = src
    if not isinstance(data, Mapping):
        raise AliasConfigError("config: expected a table")
    for k in data:
        if k not in ("router", "routers", "tun", "seed", "forwarding"):
            raise AliasConfigError(f"{k}: unknown top-level field (known: router, tun, seed, forwarding)")
    routers_in = data.get("router", data.get("routers"))
    if not isinstance(routers_in, (list, tuple)) or not routers_in:
        raise AliasConfigError("router: at least one [[router]] is required")
    seen: dict[str, str] = {}
    routers = tuple(_router(i, r, seen) for i, r in enumerate(routers_in))
    names = [r.name for r in routers]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise AliasConfigError(f"router.name: duplicate router name(s) {', '.join(sorted(dup))}")
    tun = data.get("tun", "mnar0")
    if not isinstance(tun, str) or not 0 < len(tun) <= 15 or "/" in tun or " " in tun:
        raise AliasConfigError(f"tun: {tun!r} is not a valid interface name (1-15 chars)")
    seed = _num(data.get("seed", 0), "seed", integer=True)
    fwd = data.get("forwarding", True)
    if not isinstance(fwd, bool):
        raise AliasConfigError(f"forwarding: expected true or false, got {fwd!r}")
    return EmulatorConfig(routers, tun, seed, fwd)


def config_to_dict(cfg: EmulatorConfig) -> dict[str, Any]:
    """The JSON-able form :func:`load_config` reads back."""
    d = asdict(cfg)
    routers = d.pop("routers")
    for r in routers:
        r["addresses"] = list(r["addresses"])
        r["udp_reply_source"] = list(r["udp_reply_source"]) or "probed"
        r["mpls_hops"] = [{"addresses": list(h["addresses"]), "labels": list(h["labels"])}
                          for h in r["mpls_hops"]]
        r["methods"] = list(r["methods"])
    d["router"] = list(routers)
    return d


def behaviours(config: "EmulatorConfig | Mapping[str, Any] | str | os.PathLike[str]") -> list[dict[str, Any]]:
    """Every router's behaviour as ground truth: name, addresses, IP-ID kind,
    velocity, offset, rate limit, silence, answer probability, methods."""
    out = []
    for r in config_to_dict(load_config(config))["router"]:
        r = {k: v for k, v in r.items() if k != "mpls_hops" or v}
        out.append(r)
    return out


def alias_sets(config: "EmulatorConfig | Mapping[str, Any] | str | os.PathLike[str]") -> list[set[str]]:
    """Ground truth: the address set of every router (physical aliases).

    Addresses of one router are aliases whatever its IP-ID behaviour; a
    technique that relies on IP-IDs can only *find* the ones in
    :func:`ipid_alias_sets`, and must not merge different routers.
    """
    return [set(r.addresses) for r in load_config(config).routers]


def ipid_alias_sets(config: "EmulatorConfig | Mapping[str, Any] | str | os.PathLike[str]") -> list[set[str]]:
    """The IPv4 alias sets a shared-counter test (Ally, MIDAR) can confirm.

    Only ``shared`` and ``byteswapped`` routers with two or more IPv4
    addresses; a byte-swapped counter is only found by techniques that
    consider byte order (MIDAR does).
    """
    out = []
    for r in load_config(config).routers:
        v4 = {a for a in r.addresses if ipaddress.ip_address(a).version == 4}
        if r.ipid in ("shared", "byteswapped") and len(v4) >= 2:
            out.append(v4)
    return out


# ------------------------------------------------------------------ checksum


def _csum(data: bytes | bytearray | memoryview) -> int:
    """Internet checksum, in native byte order (store with ``=H``).

    Summing native-order 16-bit words and storing the result natively gives
    the right bytes on either endianness (RFC 1071 §2(B)), and ``array``
    sums far faster than a Python loop.
    """
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = sum(array.array("H", bytes(data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# --------------------------------------------------------------- IP-ID state


def derived_seed(seed: int, *parts: str) -> int:
    """A stable pseudo-random 16-bit value of ``seed`` and ``parts`` (not Python's salted hash): the emulator
    derives counter starts and per-router RNG seeds from it, and midar_sim recomputes them to pick truths."""
    h = hashlib.blake2s(("/".join([str(seed), *parts])).encode(), digest_size=4).digest()
    return int.from_bytes(h, "big") & 0xFFFF


class _IpidSource:
    """IP-ID generator of one router.

    A counter's value at time t is ``start + floor(velocity · t) + replies``
    mod 2¹⁶: a background rate (traffic the router sends elsewhere) plus one
    per reply we send — the model RadarGun and MIDAR assume.
    """

    def __init__(self, r: RouterConfig, seed: int, t0_ns: int) -> None:
        self.kind = r.ipid
        self.velocity = r.velocity
        self.t0 = t0_ns
        self.offset = r.offset
        self.seed = seed
        self.name = r.name
        self.counts: dict[str, int] = {}
        self.starts: dict[str, int] = {}
        self.rng = random.Random(derived_seed(seed, r.name, "random"))

    def _counter(self, key: str, start: int, now_ns: int) -> int:
        n = self.counts.get(key, 0)
        self.counts[key] = n + 1
        bg = int(self.velocity * (now_ns - self.t0) / 1e9)
        return (start + bg + n) & 0xFFFF

    def next(self, probed: str, peer: str, now_ns: int) -> int:
        k = self.kind
        if k == "zero":
            return 0
        if k == "random":
            return self.rng.getrandbits(16)
        if k in ("shared", "byteswapped"):
            v = self._counter("", self.offset, now_ns)
            return ((v & 0xFF) << 8) | (v >> 8) if k == "byteswapped" else v
        key = probed if k == "per-interface" else peer
        start = self.starts.get(key)
        if start is None:
            start = self.starts[key] = (self.offset + derived_seed(self.seed, self.name, k, key)) & 0xFFFF
        return self._counter(key, start, now_ns)


class _Bucket:
    """Token bucket for a router's reply rate (like ICMP rate limiting)."""

    def __init__(self, rate: float, burst: float, now_ns: int) -> None:
        self.rate = rate
        self.burst = burst or max(1.0, rate / 10)
        self.tokens = self.burst
        self.last = now_ns

    def take(self, now_ns: int) -> bool:
        if self.rate <= 0:
            return True
        self.tokens = min(self.burst, self.tokens + (now_ns - self.last) * self.rate / 1e9)
        self.last = now_ns
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass
class _RouterState:
    cfg: RouterConfig
    ipid: _IpidSource
    bucket: _Bucket
    fixed4: bytes | None
    fixed6: bytes | None
    t0: int = 0
    rng: random.Random | None = None  # answer_probability's draws (seeded per router)
    replies: int = 0
    limited: int = 0
    silenced: int = 0
    unanswered: int = 0  # lost to answer_probability or a method the router does not answer


# ------------------------------------------------------------ packet builders

_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")

_TH_FIN, _TH_SYN, _TH_RST, _TH_ACK = 0x01, 0x02, 0x04, 0x10


def _ip4(src: bytes, dst: bytes, proto: int, ident: int, ttl: int, payload: bytes) -> bytes:
    hdr = bytearray(_IP4.pack(0x45, 0, 20 + len(payload), ident, 0, ttl, proto, 0, src, dst))
    struct.pack_into("=H", hdr, 10, _csum(hdr))
    return bytes(hdr) + payload


def _ip6(src: bytes, dst: bytes, nh: int, hlim: int, payload: bytes) -> bytes:
    return _IP6.pack(6 << 28, len(payload), nh, hlim, src, dst) + payload


def _l4_csum(src: bytes, dst: bytes, proto: int, seg: bytearray) -> None:
    """Fill the TCP (offset 16) or ICMPv6 (offset 2) checksum over the pseudo-header."""
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, proto, len(seg))
    else:
        pseudo = src + dst + struct.pack("!I3xB", len(seg), proto)
    off = 16 if proto == socket.IPPROTO_TCP else 2
    seg[off : off + 2] = b"\0\0"
    struct.pack_into("=H", seg, off, _csum(pseudo + seg))


def _tcp_reply(probe: memoryview) -> bytearray | None:
    """RST (or SYN-ACK, chosen by caller) header for a TCP probe segment; None for RSTs."""
    if len(probe) < 20:
        return None
    sport, dport, seq, ack, off, flags, _win, _cs, _urg = _TCP.unpack_from(probe)
    if flags & _TH_RST:
        return None
    data_len = len(probe) - (off >> 4) * 4
    if flags & _TH_ACK:
        return bytearray(_TCP.pack(dport, sport, ack, 0, 5 << 4, _TH_RST, 0, 0, 0))
    seg_len = data_len + (1 if flags & _TH_SYN else 0) + (1 if flags & _TH_FIN else 0)
    return bytearray(_TCP.pack(dport, sport, 0, (seq + seg_len) & 0xFFFFFFFF, 5 << 4, _TH_RST | _TH_ACK, 0, 0, 0))


def _mpls_extension(labels: Sequence[MplsEntry]) -> bytes:
    """RFC 4884 extension structure (version 2, checksummed) holding one
    RFC 4950 MPLS label stack object (class 1, c-type 1)."""
    entries = b"".join(struct.pack("!I", (e.label << 12) | (e.exp << 9) | (e.s << 8) | e.ttl) for e in labels)
    ext = bytearray(b"\x20\x00\x00\x00" + struct.pack("!HBB", 4 + len(entries), 1, 1) + entries)
    struct.pack_into("=H", ext, 2, _csum(ext))
    return bytes(ext)


def _expired_quote(pkt: bytes, v6: bool, padded: bool) -> bytes:
    """The probe as the expiring hop saw it (TTL 1), zero-padded to the 128
    bytes RFC 4884 requires before an extension structure."""
    q = bytearray(pkt[:128] if padded else pkt[: (AliasEmulator.QUOTE6 if v6 else AliasEmulator.QUOTE4)])
    if v6:
        q[7] = 1
    else:
        q[8] = 1
        ihl = (q[0] & 0x0F) * 4
        q[10:12] = b"\0\0"
        struct.pack_into("=H", q, 10, _csum(q[:ihl]))
    if padded:
        q += bytes(128 - len(q))
    return bytes(q)


class AliasEmulator:
    """Sans-I/O core: :meth:`handle` maps one probe packet to its reply (or None)."""

    #: RFC 1812 4.3.2.3: ICMPv4 errors quote as much as fits in 576 bytes.
    QUOTE4 = 576 - 20 - 8
    #: RFC 4443 2.4(c): ICMPv6 errors must fit in the minimum MTU, 1280.
    QUOTE6 = 1280 - 40 - 8

    def __init__(self, cfg: EmulatorConfig, now_ns: int | None = None) -> None:
        now = time.monotonic_ns() if now_ns is None else now_ns
        self.cfg = cfg
        self.by_addr: dict[bytes, _RouterState] = {}
        self.routers: list[_RouterState] = []
        self.received = 0
        self.replied = 0
        self.ignored = 0
        self.limited = 0
        self._secret = os.urandom(16)
        for r in cfg.routers:
            f4 = next((socket.inet_pton(socket.AF_INET, a) for a in r.udp_reply_source if ":" not in a), None)
            f6 = next((socket.inet_pton(socket.AF_INET6, a) for a in r.udp_reply_source if ":" in a), None)
            rng = random.Random(derived_seed(cfg.seed, r.name, "answer")) if r.answer_probability < 1 else None
            st = _RouterState(r, _IpidSource(r, cfg.seed, now), _Bucket(r.rate_limit, r.rate_burst, now), f4, f6,
                              now, rng)
            self.routers.append(st)
            for a in r.addresses:
                fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                self.by_addr[socket.inet_pton(fam, a)] = st

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "replied": self.replied,
            "ignored": self.ignored,
            "rate_limited": self.limited,
            "silenced": sum(s.silenced for s in self.routers),
            "unanswered": sum(s.unanswered for s in self.routers),
            "routers": {s.cfg.name: {"replies": s.replies, "rate_limited": s.limited, "silenced": s.silenced,
                                     "unanswered": s.unanswered} for s in self.routers},
        }

    def handle(self, pkt: bytes, now_ns: int | None = None) -> bytes | None:
        """The reply to ``pkt`` (a raw IP packet as read from the TUN), or None."""
        self.received += 1
        if not pkt:
            self.ignored += 1
            return None
        now = time.monotonic_ns() if now_ns is None else now_ns
        ver = pkt[0] >> 4
        out = self._v4(pkt, now) if ver == 4 else self._v6(pkt, now) if ver == 6 else None
        if out is None:
            self.ignored += 1
        else:
            self.replied += 1
        return out

    def _admit(self, st: _RouterState, now: int, method: str | None = None) -> bool:
        """Whether ``st`` answers this probe: its methods, silence, answer
        probability and rate limit, in that order (a probe that is not
        answered costs no IP-ID)."""
        r = st.cfg
        if method is not None and method not in r.methods:
            st.unanswered += 1
            return False
        if (r.silent_after and st.replies >= r.silent_after) or (
                r.silent_after_s and now - st.t0 >= r.silent_after_s * 1e9):
            st.silenced += 1
            return False
        if st.rng is not None and st.rng.random() >= r.answer_probability:
            st.unanswered += 1
            return False
        if st.bucket.take(now):
            st.replies += 1
            return True
        st.limited += 1
        self.limited += 1
        self.ignored -= 1  # counted as limited, not ignored
        return False

    def _v4(self, pkt: bytes, now: int) -> bytes | None:
        if len(pkt) < 20:
            return None
        vihl, _tos, tot, _id, frag, _ttl, proto, _cs, src, dst = _IP4.unpack_from(pkt)
        ihl = (vihl & 0x0F) * 4
        if frag & 0x3FFF or tot > len(pkt) or ihl < 20 or tot < ihl:
            return None  # fragments and truncated packets
        st = self.by_addr.get(dst)
        if st is None:
            return None
        if _ttl <= len(st.cfg.mpls_hops):
            return self._expired(st, st.cfg.mpls_hops[_ttl - 1], pkt[:tot], src, False, now)
        body = memoryview(pkt)[ihl:tot]
        r = st.cfg
        if proto == socket.IPPROTO_ICMP:
            if len(body) < 8 or body[0] != 8 or body[1] != 0:
                return None
            if not self._admit(st, now, "icmp"):
                return None
            icmp = bytearray(body)
            icmp[0] = 0
            icmp[2:4] = b"\0\0"
            struct.pack_into("=H", icmp, 2, _csum(icmp))
            return _ip4(dst, src, proto, self._ipid(st, dst, src, now), r.reply_ttl, bytes(icmp))
        if proto == socket.IPPROTO_TCP:
            seg = self._tcp(r, src, dst, body)
            if seg is None:
                return None
            if not self._admit(st, now, "tcp"):
                return None
            _l4_csum(dst, src, proto, seg)
            return _ip4(dst, src, proto, self._ipid(st, dst, src, now), r.reply_ttl, bytes(seg))
        # UDP → port unreachable; anything else → protocol unreachable.
        code = 3 if proto == socket.IPPROTO_UDP else 2
        if not self._admit(st, now, "udp" if code == 3 else "other"):
            return None
        quote = pkt[: min(tot, self.QUOTE4)]
        icmp = bytearray(struct.pack("!BBHI", 3, code, 0, 0) + quote)
        struct.pack_into("=H", icmp, 2, _csum(icmp))
        rsrc = st.fixed4 if (st.fixed4 is not None and proto == socket.IPPROTO_UDP) else dst
        return _ip4(rsrc, src, socket.IPPROTO_ICMP, self._ipid(st, rsrc, src, now), r.reply_ttl, bytes(icmp))

    def _expired(self, st: _RouterState, hop: MplsHop, pkt: bytes, peer: bytes, v6: bool, now: int) -> bytes | None:
        """Time exceeded from an emulated LSR, with its label stack (if any)."""
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        mine = next((a for a in hop.addresses if (":" in a) == v6), None)
        if mine is None or not self._admit(st, now):
            return None
        hsrc = socket.inet_pton(fam, mine)
        quote = _expired_quote(pkt, v6, bool(hop.labels))
        ext = _mpls_extension(hop.labels) if hop.labels else b""
        length = len(quote) // 8 if v6 else len(quote) // 4
        if not ext:
            length = 0  # no extension: the classic message (RFC 4884 allows either)
        # ICMPv6 carries the length in byte 4, ICMPv4 in byte 5 (RFC 4884 4.1, 4.5)
        hdr = struct.pack("!BBHBBH", *((3, 0, 0, length, 0, 0) if v6 else (11, 0, 0, 0, length, 0)))
        icmp = bytearray(hdr + quote + ext)
        if v6:
            _l4_csum(hsrc, peer, socket.IPPROTO_ICMPV6, icmp)
            return _ip6(hsrc, peer, socket.IPPROTO_ICMPV6, st.cfg.reply_ttl, bytes(icmp))
        struct.pack_into("=H", icmp, 2, _csum(icmp))
        return _ip4(hsrc, peer, socket.IPPROTO_ICMP, self._ipid(st, hsrc, peer, now), st.cfg.reply_ttl, bytes(icmp))

    def _cookie(self, src: bytes, dst: bytes, sport: int, dport: int) -> int:
        """Stateless ISN (a SYN cookie) so the handshake's final ACK is recognisable."""
        h = hashlib.blake2s(src + dst + struct.pack("!HH", sport, dport), key=self._secret, digest_size=4)
        return int.from_bytes(h.digest(), "big")

    def _tcp(self, r: RouterConfig, src: bytes, dst: bytes, probe: memoryview) -> bytearray | None:
        """Reply segment for a TCP probe: RST, SYN-ACK, or None.

        In ``synack`` mode the ACK that completes a handshake we offered is
        swallowed (a listener that never accepts); without this, a client's
        ``connect()`` would race our RST and fail. Any other ACK still gets
        the RST the TCP-ACK IP-ID method needs.
        """
        if len(probe) < 20:
            return None
        sport, dport, seq, ack, off, flags, _w, _c, _u = _TCP.unpack_from(probe)
        if r.tcp_reply == "synack":
            if flags & (_TH_SYN | _TH_ACK | _TH_RST) == _TH_SYN:
                isn = self._cookie(src, dst, sport, dport)
                # 6 words: header + MSS option so real stacks accept it.
                return bytearray(
                    _TCP.pack(dport, sport, isn, (seq + 1) & 0xFFFFFFFF, 6 << 4, _TH_SYN | _TH_ACK, 65535, 0, 0)
                    + b"\x02\x04\x05\xb4"
                )
            if (flags & (_TH_SYN | _TH_ACK | _TH_RST | _TH_FIN) == _TH_ACK and len(probe) == (off >> 4) * 4
                    and ack == (self._cookie(src, dst, sport, dport) + 1) & 0xFFFFFFFF):
                return None
        return _tcp_reply(probe)

    def _ipid(self, st: _RouterState, probed: bytes, peer: bytes, now: int) -> int:
        kind = st.ipid.kind
        # Address text only where the behaviour keys on it.
        p = socket.inet_ntop(socket.AF_INET, probed) if kind == "per-interface" else ""
        q = socket.inet_ntop(socket.AF_INET, peer) if kind == "per-destination" else ""
        return st.ipid.next(p, q, now)

    def _v6(self, pkt: bytes, now: int) -> bytes | None:
        if len(pkt) < 40:
            return None
        _vtf, plen, nh, hlim, src, dst = _IP6.unpack_from(pkt)
        st = self.by_addr.get(dst)
        if st is None or 40 + plen > len(pkt):
            return None
        if hlim <= len(st.cfg.mpls_hops):
            return self._expired(st, st.cfg.mpls_hops[hlim - 1], pkt[: 40 + plen], src, True, now)
        body = memoryview(pkt)[40 : 40 + plen]
        r = st.cfg
        if nh == socket.IPPROTO_ICMPV6:
            if len(body) < 8 or body[0] != 128 or body[1] != 0:
                return None
            if not self._admit(st, now, "icmp"):
                return None
            icmp = bytearray(body)
            icmp[0] = 129
            _l4_csum(dst, src, nh, icmp)
            return _ip6(dst, src, nh, r.reply_ttl, bytes(icmp))
        if nh == socket.IPPROTO_TCP:
            seg = self._tcp(r, src, dst, body)
            if seg is None:
                return None
            if not self._admit(st, now, "tcp"):
                return None
            _l4_csum(dst, src, nh, seg)
            return _ip6(dst, src, nh, r.reply_ttl, bytes(seg))
        if nh == socket.IPPROTO_UDP:
            if not self._admit(st, now, "udp"):
                return None
            quote = pkt[: min(40 + plen, self.QUOTE6)]
            icmp = bytearray(struct.pack("!BBHI", 1, 4, 0, 0) + quote)
            rsrc = st.fixed6 if st.fixed6 is not None else dst
            _l4_csum(rsrc, src, socket.IPPROTO_ICMPV6, icmp)
            return _ip6(rsrc, src, socket.IPPROTO_ICMPV6, r.reply_ttl, bytes(icmp))
        return None  # extension headers and other protocols: not emulated


# ------------------------------------------------------------------ TUN loop

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _sysctl(path: str, value: str) -> None:
    """Set a sysctl only if it differs: re-writing ``forwarding`` resets IPv6
    neighbour/router state on every interface, which costs the next probes a
    second of neighbour discovery."""
    p = Path("/proc/sys", path)
    if p.read_text().strip() != value:
        p.write_text(value)


def _write_stats(path: str | None, emu: AliasEmulator, started: float) -> None:
    if not path:
        return
    st = emu.stats()
    st["started"] = started
    st["updated"] = time.time()
    tmp = f"{path}.tmp"
    Path(tmp).write_text(json.dumps(st, indent=1))
    os.replace(tmp, path)


def _routed(r: RouterConfig) -> list[str]:
    """Addresses routed to the TUN: the router's and its emulated hops' (the
    hops' so that reverse-path filtering accepts their time exceeded)."""
    return [*r.addresses, *(a for h in r.mpls_hops for a in h.addresses)]


def run(cfg: EmulatorConfig, ready_file: str | None = None, stats_file: str | None = None) -> None:
    """Serve ``cfg`` on a TUN device in the current namespace until SIGTERM/SIGINT.

    The TUN is not persistent, so when this process ends (even by SIGKILL)
    the kernel removes the device and every route through it: nothing is
    left behind in the namespace except the forwarding sysctls.
    """
    fd = _open_tun(cfg.tun)
    emu: AliasEmulator | None = None
    started = time.time()
    try:
        _ip("link", "set", "dev", cfg.tun, "up")
        if cfg.forwarding:
            _sysctl("net/ipv4/ip_forward", "1")
        has6 = any(":" in a for r in cfg.routers for a in _routed(r))
        if has6 and cfg.forwarding and os.path.exists("/proc/sys/net/ipv6"):
            _sysctl("net/ipv6/conf/all/forwarding", "1")
        # one `ip -batch` per family for every route: hundreds of routers, one process
        routed = [a for r in cfg.routers for a in _routed(r)]
        for fam, plen, addrs in (("-4", 32, [a for a in routed if ":" not in a]),
                                 ("-6", 128, [a for a in routed if ":" in a])):
            if not addrs:
                continue
            batch = "".join(f"route replace {a}/{plen} dev {cfg.tun}\n" for a in addrs)
            rb = subprocess.run(["ip", fam, "-batch", "-"], input=batch, capture_output=True, text=True)
            if rb.returncode != 0:
                raise RuntimeError(f"ip {fam} -batch (routes to {cfg.tun}): {rb.stderr.strip()}")
        emu = AliasEmulator(cfg)
        if ready_file:
            Path(ready_file).write_text(json.dumps({"pid": os.getpid(), "tun": cfg.tun}))
        next_stats = time.monotonic() + 1.0
        dirty = True
        while True:
            timeout = max(0.0, next_stats - time.monotonic())
            rl, _, _ = select.select([fd], [], [], timeout)
            if rl:
                while True:
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    reply = emu.handle(pkt)
                    if reply is not None:
                        try:
                            os.write(fd, reply)
                        except OSError as e:
                            if e.errno not in (errno.EAGAIN, errno.ENOBUFS):
                                raise
                dirty = True
            if time.monotonic() >= next_stats:
                if dirty:
                    _write_stats(stats_file, emu, started)
                    dirty = False
                next_stats = time.monotonic() + 1.0
    finally:
        if emu is not None:
            _write_stats(stats_file, emu, started)
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marionet.lab.aliasrouter --config FILE`` (inside a namespace)."""
    ap = argparse.ArgumentParser(prog="python -m marionet.lab.aliasrouter",
                                 description="Emulated routers with chosen IP-ID behaviour (alias ground truth).")
    ap.add_argument("--config", required=True, help="TOML or JSON config")
    ap.add_argument("--ready-file", help="written once the TUN and routes are up")
    ap.add_argument("--stats", help="JSON stats file, updated every second and at exit")
    ap.add_argument("--check", action="store_true", help="validate the config, print the alias sets, exit")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except AliasConfigError as e:
        print(f"aliasrouter: {args.config}: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps({"alias_sets": [sorted(s) for s in alias_sets(cfg)],
                          "ipid_alias_sets": [sorted(s) for s in ipid_alias_sets(cfg)]}, indent=1))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run(cfg, args.ready_file, args.stats)
    except KeyboardInterrupt:
        pass
    except (OSError, RuntimeError) as e:
        print(f"aliasrouter: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
