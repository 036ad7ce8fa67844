"""The enforcing guard: every endpoint operation checked against the
principal's effective privileges, its rate limits and totals, then its
monitors.

Why this shape: ``PolicyGuard.open`` does everything that can be decided
once per session (which VP, which period, which monitors must run, the
grants themselves, the VP's own addresses), so the per-send check on the hot
path is a few dict lookups and a token-bucket update — a few µs, no
``datetime``, no ``ipaddress`` on a cache hit, no ``Event`` unless a monitor
runs. Rates and totals belong to the *principal*, not the session: they live
in the ``PolicyGuard`` keyed by identity, so opening more sessions (or
running primitives on the endpoint) never buys more budget.

A primitive run on the endpoint (``for_primitive``) is vetted code, so it may
open the sockets it needs (UDP, TCP, raw ICMP/TCP/UDP/ICMPv6, capture)
without the matching protocol grants; everything else — destinations, ports,
source addresses, rates, totals, monitors — applies to it exactly as to a
remote packet session, so a ``do_trace`` to a denied prefix fails at the
task check and, were it to get further, at its sends.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
import ipaddress
import json
import math
import socket
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from marionet.guard import privileges as P
from marionet.guard.core import Guard, GuardDenied, Principal, SessionGuard, SockView, VpView
from marionet.guard.events import Event
from marionet.guard.limits import TokenBucket, WindowTotal
from marionet.guard.privileges import Privileges

__all__ = ["PolicyGuard", "PolicySessionGuard", "Budget", "IMPLIED_PROTOCOLS", "TCP_SEGMENT"]

#: Bytes per TCP segment for counting packets of a TCP send (a 1500-byte MTU
#: less IPv4, TCP and timestamp option headers).
TCP_SEGMENT = 1448
#: The VP's own addresses (for the spoofing check) are re-read at most this often.
OWN_REFRESH_S = 5.0
#: Entries of a session's destination / source caches before they are cleared.
CACHE_MAX = 4096
#: What a granted primitive may open without protocol grants of its own.
IMPLIED_PROTOCOLS = frozenset({"udp", "tcp", "capture", "raw:1", "raw:6", "raw:17", "raw:58"})
#: How many prefixes, ports or names a denial reason lists.
_LIST_MAX = 4

_UNSPEC4 = b"\0\0\0\0"


class MonitorModuleLike(Protocol):
    """What the guard needs of ``marionet.guard.monitor.MonitorModule``."""

    name: str
    digest: str

    def instantiate(self) -> Any: ...


# --------------------------------------------------------------------------
# Reason texts


def _num(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


def _listing(items: Iterable[Any], empty: str = "none") -> str:
    items = [str(x) for x in items]
    if not items:
        return empty
    more = len(items) - _LIST_MAX
    return ", ".join(items[:_LIST_MAX]) + (f" and {more} more" if more > 0 else "")


def _ports_text(ports: Sequence[P.PortRange]) -> str:
    return _listing(str(r.lo) if r.lo == r.hi else f"{r.lo}-{r.hi}" for r in ports)


def _duration(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{_num(round(s / size, 1))} {unit}"
    return f"{_num(round(s, 1))} s"


def _proto_name(n: int) -> str:
    name = P.IPPROTO_NAMES.get(n)
    return f"{n} ({name})" if name else str(n)


# --------------------------------------------------------------------------
# Per-principal budget


class Budget:
    """One principal's rate buckets and period totals, shared by all of its
    sessions (and the primitives they run).

    ``charge`` is all or nothing: a refused send consumes no tokens and
    counts toward no total; ``refund`` undoes a charge whose send a monitor
    (or a later step) then refused."""

    __slots__ = ("rate", "total", "pkt", "byt", "delay", "max_delay", "tot_p", "tot_b",
                 "active", "sessions")

    def __init__(self, rate: P.Rate | None, total: P.Totals | None, max_delay: float) -> None:
        self.rate = rate
        self.total = total
        self.pkt = TokenBucket(rate.pps, rate.burst_packets) if rate and rate.pps else None
        self.byt = TokenBucket(rate.bps, rate.burst_bytes) if rate and rate.bps else None
        self.delay = bool(rate and rate.excess == "delay")
        self.max_delay = max_delay
        self.tot_p = WindowTotal(total.packets, total.period_s) if total and total.packets is not None else None
        self.tot_b = WindowTotal(total.bytes, total.period_s) if total and total.bytes is not None else None
        #: whether anything is limited at all (the send path skips the clock if not)
        self.active = any(x is not None for x in (self.pkt, self.byt, self.tot_p, self.tot_b))
        self.sessions = 0

    def charge(self, pkts: int, nbytes: int, now: float) -> float:
        """Count a send of ``pkts`` packets, ``nbytes`` bytes at ``now``;
        returns how many seconds it must wait (delay mode), raises
        ``GuardDenied`` if it may not go at all."""
        tp, tb = self.tot_p, self.tot_b
        if tp is not None and not tp.try_add(pkts, now):
            raise self._total_denied("packets", tp, now)
        if tb is not None and not tb.try_add(nbytes, now):
            if tp is not None:
                tp.refund(pkts)
            raise self._total_denied("bytes", tb, now)
        pk, by = self.pkt, self.byt
        if pk is None and by is None:
            return 0.0
        try:
            if self.delay:
                return self._reserve(pk, by, pkts, nbytes, now)
            if pk is not None and not pk.try_take(pkts, now):
                raise GuardDenied("privileges.rate", f"{_num(pk.rate)} packets/s exceeded "
                                                     f"(burst {_num(pk.burst)})")
            if by is not None and not by.try_take(nbytes, now):
                if pk is not None:
                    pk.refund(pkts)
                raise GuardDenied("privileges.rate", f"{_num(by.rate)} bytes/s exceeded "
                                                     f"(burst {_num(by.burst)} bytes)")
            return 0.0
        except GuardDenied:
            if tp is not None:
                tp.refund(pkts)
            if tb is not None:
                tb.refund(nbytes)
            raise

    def _reserve(self, pk: TokenBucket | None, by: TokenBucket | None, pkts: int, nbytes: int,
                 now: float) -> float:
        limit = self.max_delay
        wp = 0.0
        if pk is not None:
            wp = pk.take(pkts, now, limit)
            if wp > limit:
                raise self._backlog(f"{_num(pk.rate)} packets/s", wp)
        wb = 0.0
        if by is not None:
            wb = by.take(nbytes, now, limit)
            if wb > limit:
                if pk is not None:
                    pk.refund(pkts)
                raise self._backlog(f"{_num(by.rate)} bytes/s", wb)
        return wp if wp > wb else wb

    def _backlog(self, what: str, wait: float) -> GuardDenied:
        return GuardDenied("privileges.rate",
                           f"{what} exceeded and the backlog is too long: this send would wait "
                           f"{wait:.1f} s, at most {_num(self.max_delay)} s of sends are held back")

    @staticmethod
    def _total_denied(what: str, w: WindowTotal, now: float) -> GuardDenied:
        return GuardDenied("privileges.total",
                           f"total of {_num(w.limit)} {what} per {_duration(w.period_s)} exceeded "
                           f"({_num(w.used)} used; the period resets in {_duration(w.resets_in(now))})")

    def refund(self, pkts: int, nbytes: int) -> None:
        for x, n in ((self.pkt, pkts), (self.byt, nbytes), (self.tot_p, pkts), (self.tot_b, nbytes)):
            if x is not None:
                x.refund(n)

    def idle(self, now: float) -> bool:
        """No session and nothing outstanding: forgetting it loses nothing."""
        if self.sessions:
            return False
        return all(x is None or x.full(now) for x in (self.pkt, self.byt)) and \
            all(x is None or x.idle(now) for x in (self.tot_p, self.tot_b))


def _identity(p: Principal) -> tuple[str, ...]:
    if p.fingerprint:
        return ("cert", p.fingerprint, p.anchor or "")
    return ("name", p.name, p.auth)


# --------------------------------------------------------------------------
# Primitive parameters


@functools.lru_cache(maxsize=64)
def _defaults(name: str) -> dict[str, Any] | None:
    """Parameter name -> default of the primitive's plan function (no
    default: ``inspect.Parameter.empty``); None for an unknown primitive."""
    from marionet.measure.registry import VALIDATORS

    fn = VALIDATORS.get(name)
    if fn is None:
        return None
    return {p.name: p.default for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


_LIST_BOUNDS = {"servers": "server", "hosts": "url"}  # list bounds on a parameter of another name


def _bounds_a_parameter(key: str, params: dict[str, Any]) -> bool:
    """Whether bound ``key`` applies to one of ``params``: the parameter
    itself, its plural (``methods`` for ``method``), or a named list bound."""
    if key in params:
        return True
    if key in _LIST_BOUNDS:
        return _LIST_BOUNDS[key] in params
    return key.endswith("s") and key[:-1] in params


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return None


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "…"


def _addr(value: Any) -> str | None:
    """Canonical text of an IP address, None if ``value`` is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


def _url_host(url: Any) -> str | None:
    if not isinstance(url, str):
        return None
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


# --------------------------------------------------------------------------
# The guard


class PolicyGuard(Guard):
    """Operator policy: per session, the principal's effective privileges
    (``grants_for``: certificate grants ∩ operator policy, or the anonymous
    grant), plus operator-local monitors and the monitors its certificate
    mandates. ``clock`` is the monotonic clock rates and totals run on;
    ``max_delay_s`` how far ahead a delaying rate limit may schedule a send
    before it refuses instead."""

    name = "policy"

    def __init__(self, grants_for: Callable[[Principal], Privileges], *,
                 local_monitors: Sequence[MonitorModuleLike] = (),
                 installed_monitors: Mapping[str, MonitorModuleLike] = {},
                 clock: Callable[[], float] = time.monotonic,
                 max_delay_s: float = 10.0) -> None:
        if not max_delay_s >= 0:
            raise ValueError(f"max_delay_s must be >= 0, got {max_delay_s!r}")
        self.grants_for = grants_for
        self.local_monitors = tuple(local_monitors)
        self.installed_monitors = dict(installed_monitors)
        self.clock = clock
        self.max_delay_s = float(max_delay_s)
        self._budgets: dict[tuple[str, ...], Budget] = {}

    # -- sessions --------------------------------------------------------
    def open(self, principal: Principal, vp: VpView,
             supplied_monitors: Mapping[str, MonitorModuleLike] = {}) -> "PolicySessionGuard":
        grants = self.grants_for(principal)
        self._check_vp(grants, vp)
        self._check_period(grants)
        modules = self._monitor_modules(grants, supplied_monitors)
        instances = []
        for mod in modules:
            try:
                instances.append(mod.instantiate())
            except Exception as exc:  # noqa: BLE001 - a broken monitor refuses the session
                raise GuardDenied(f"monitor {getattr(mod, 'name', 'monitor')}",
                                  f"cannot start monitor: {type(exc).__name__}: {exc}") from None
        budget = self._budget_for(principal, grants)
        budget.sessions += 1
        return PolicySessionGuard(self, principal, grants, vp, budget, instances)

    @staticmethod
    def _check_vp(grants: Privileges, vp: VpView) -> None:
        if grants.vps is not None and vp.name not in grants.vps:
            raise GuardDenied("privileges.vps", f"VP {vp.name!r} is not granted "
                                                f"(granted VPs: {_listing(sorted(grants.vps))})")
        for key, allowed in sorted((grants.tags or {}).items()):
            have = vp.tags.get(key)
            if have not in allowed:
                got = f"has {key}={have}" if have is not None else f"has no tag {key!r}"
                raise GuardDenied("privileges.tags", f"VP {vp.name!r} {got}; granted only on VPs with "
                                                     f"{key} in {_listing(sorted(allowed))}")

    @staticmethod
    def _check_period(grants: Privileges) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        if grants.not_before is not None and now < grants.not_before:
            raise GuardDenied("privileges.period", f"the experiment period starts at "
                                                   f"{grants.not_before.isoformat()}; it is {now.isoformat(timespec='seconds')}")
        if grants.not_after is not None and now >= grants.not_after:
            raise GuardDenied("privileges.period", f"the experiment period ended at "
                                                   f"{grants.not_after.isoformat()}; it is {now.isoformat(timespec='seconds')}")

    def _monitor_modules(self, grants: Privileges,
                         supplied: Mapping[str, MonitorModuleLike]) -> list[MonitorModuleLike]:
        """Local monitors, then each mandated one once (a mandated digest an
        operator already runs locally is not run twice)."""
        out = list(self.local_monitors)
        have = {getattr(m, "digest", None) for m in out}
        for digest in sorted(grants.monitors):
            if digest in have:
                continue
            mod = supplied.get(digest) or self.installed_monitors.get(digest)
            if mod is None:
                raise GuardDenied("privileges.monitors",
                                  f"certificate requires monitor {digest[:16]}…, which is neither "
                                  f"supplied nor installed on this VP")
            if getattr(mod, "digest", None) != digest:
                raise GuardDenied("privileges.monitors",
                                  f"the module offered for monitor {digest[:16]}… has digest "
                                  f"{str(getattr(mod, 'digest', None))[:16]}…")
            out.append(mod)
            have.add(digest)
        return out

    def _budget_for(self, principal: Principal, grants: Privileges) -> Budget:
        key = _identity(principal)
        b = self._budgets.get(key)
        if b is None or b.rate != grants.rate or b.total != grants.total:
            # new principal, or its limits changed (policy reload): a fresh
            # budget; sessions already open keep charging the old one
            if len(self._budgets) >= 1024:
                self._prune()
            b = self._budgets[key] = Budget(grants.rate, grants.total, self.max_delay_s)
        return b

    def _prune(self) -> None:
        now = self.clock()
        for key in [k for k, b in self._budgets.items() if b.idle(now)]:
            del self._budgets[key]

    def budget_of(self, principal: Principal) -> Budget | None:
        """The budget ``principal`` charges (for status and tests)."""
        return self._budgets.get(_identity(principal))

    def describe(self) -> dict[str, Any]:
        def mods(ms: Iterable[MonitorModuleLike]) -> list[dict[str, str]]:
            return [{"name": getattr(m, "name", "?"), "digest": getattr(m, "digest", "")} for m in ms]

        return {"guard": self.name, "local_monitors": mods(self.local_monitors),
                "installed_monitors": mods(self.installed_monitors.values()),
                "max_delay_s": self.max_delay_s, "principals": len(self._budgets)}


class PolicySessionGuard(SessionGuard):
    """The guard of one session (see the module docstring). ``grants`` is
    the session's effective ``Privileges`` (the endpoint reads
    ``max_sockets`` from it)."""

    def __init__(self, guard: PolicyGuard, principal: Principal, grants: Privileges, vp: VpView,
                 budget: Budget, monitors: list[Any], parent: "PolicySessionGuard | None" = None) -> None:
        super().__init__(principal)
        self.guard = guard
        self.grants = grants
        self.vp = vp
        self.budget = budget
        self.monitors = monitors
        self._parent = parent
        self._clock = guard.clock
        self._pname = principal.name
        self._prim = principal.primitive or ""
        # protocol grants, widened for a granted primitive's own session
        g = grants
        if principal.primitive and P.primitive_bounds(grants, principal.primitive) is not None:
            g = replace(grants, protocols=grants.protocols | IMPLIED_PROTOCOLS)
        self._pg = g
        self._raw_any = "raw:*" in g.protocols
        self._raw = frozenset(int(x[4:]) for x in g.protocols if x.startswith("raw:") and x != "raw:*")
        self._ports = grants.ports
        self._dst_ok: dict[Any, bool] = {}
        self._src_ok: dict[Any, bool] = {}
        self._port_ok: dict[int, bool] = {}
        self._own: frozenset[str] = frozenset()
        self._own_at = -math.inf
        self._refresh_own(self._clock())
        now = self._clock()
        self._wall_at = now
        self._wall_off = time.time_ns() - int(now * 1e9)
        #: the end of the experiment period on the monotonic clock, so the
        #: hot path compares floats instead of making datetimes
        self._until = math.inf
        if grants.not_after is not None:
            left = (grants.not_after - dt.datetime.now(dt.timezone.utc)).total_seconds()
            self._until = now + left
        self.closed = False

    # -- caches ----------------------------------------------------------
    def _refresh_own(self, now: float) -> None:
        own = set()
        for a in self.vp.local_addresses():
            c = _addr(a.split("%", 1)[0])
            if c is not None:
                own.add(c)
        if own != self._own:
            self._src_ok.clear()
        self._own = frozenset(own)
        self._own_at = now

    def _epoch_ns(self, now: float, wait: float) -> int:
        """The endpoint (CLOCK_REALTIME) time ``wait`` s after monotonic ``now``."""
        if now - self._wall_at > OWN_REFRESH_S:
            self._wall_at = now
            self._wall_off = time.time_ns() - int(now * 1e9)
        return int((now + wait) * 1e9) + self._wall_off

    def _ended(self) -> GuardDenied:
        assert self.grants.not_after is not None
        return GuardDenied("privileges.period",
                           f"the experiment period ended at {self.grants.not_after.isoformat()}")

    # -- address and port checks ----------------------------------------
    def _dst_check(self, dst: Any) -> bool:
        """Slow path of the destination cache: ``dst`` is text or 4 packed bytes."""
        if dst is None:
            raise GuardDenied("privileges.dst", "a send without a destination cannot be checked")
        text = socket.inet_ntoa(dst) if isinstance(dst, bytes) else dst
        ok = isinstance(text, str) and P.allows_dst(self.grants, text)
        cache = self._dst_ok
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[dst] = ok
        return ok

    def _dst_denied(self, dst: Any) -> GuardDenied:
        text = socket.inet_ntoa(dst) if isinstance(dst, bytes) else dst
        if _addr(text) is None:
            return GuardDenied("privileges.dst", f"destination {_shown(text)} is not an IP address")
        if not self.grants.dst:
            return GuardDenied("privileges.dst", f"destination {text}: no destinations are granted")
        return GuardDenied("privileges.dst", f"destination {text} is not in the granted prefixes "
                                             f"({_listing(self.grants.dst)})")

    def _dst(self, dst: Any) -> None:
        ok = self._dst_ok.get(dst)
        if ok is None:
            ok = self._dst_check(dst)
        if not ok:
            raise self._dst_denied(dst)

    def _port(self, port: int | None) -> None:
        ok = self._port_ok.get(port)  # type: ignore[arg-type]
        if ok is None:
            if not isinstance(port, int):
                raise GuardDenied("privileges.ports", "a send without a destination port cannot be checked")
            ok = self._port_ok[port] = P.allows_port(self.grants, port)
        if not ok:
            raise GuardDenied("privileges.ports", f"destination port {port} is not granted "
                                                  f"(granted: {_ports_text(self._ports or ())})")

    def _src(self, src: Any) -> None:
        """``src``: text or 4 packed bytes; own, unspecified, granted or spoof."""
        ok = self._src_ok.get(src)
        if ok is None:
            text = socket.inet_ntoa(src) if isinstance(src, bytes) else src
            canon = _addr(text)
            ok = canon is not None and (canon in self._own or P.allows_src(self.grants, canon, self._own))
            if len(self._src_ok) >= CACHE_MAX:
                self._src_ok.clear()
            self._src_ok[src] = ok
        if not ok:
            text = socket.inet_ntoa(src) if isinstance(src, bytes) else src
            extra = f"; granted sources: {_listing(self.grants.src)}" if self.grants.src else ""
            raise GuardDenied("privileges.spoof", f"source address {_shown(text)} is not one of this VP's "
                                                  f"addresses and spoofing is not granted{extra}")

    def _proto(self, kind: str, ipproto: int | None = None) -> None:
        if P.allows_proto(self._pg, kind, ipproto):
            return
        granted = _listing(sorted(self._pg.protocols), "nothing")
        if kind == "raw":
            what = (f"raw sockets for IP protocol {_proto_name(ipproto)} (raw:{ipproto})"
                    if ipproto is not None else "raw sockets without an IP protocol (raw:*)")
        else:
            what = {"udp": "UDP sockets (udp)", "tcp": "TCP connections (tcp)",
                    "tcp-listen": "TCP listening sockets (tcp-listen)",
                    "capture": "packet capture (capture)"}.get(kind, repr(kind))
        raise GuardDenied("privileges.protocols", f"{what} not granted (granted protocols: {granted})")

    # -- the checks --------------------------------------------------------
    def check(self, op: str, request: Any, sock: SockView | None = None) -> int | None:
        if op == "nsend":
            return self._check_send(request, sock)  # type: ignore[arg-type]
        if self._clock() >= self._until:
            raise self._ended()
        if op == "nopen":
            self._check_open(request)
        elif op == "ncap":
            self._proto("capture")
        elif op == "accept":
            self._proto("tcp-listen")
            self._dst(request.get("peer"))
        elif op == "task":
            self._check_task(request)
        elif op not in ("nclose", "nctl"):
            raise GuardDenied("privileges", f"unknown operation {op!r}")
        if self.monitors:
            self._monitor(self._event(op, request, sock))
        return None

    def _check_open(self, msg: Any) -> None:
        kind = msg.proto
        if kind == "raw":
            if msg.hdrincl or (msg.family == 4 and msg.ipproto == 255):
                # the caller writes the header: its protocol byte is checked per send
                if not (self._raw_any or self._raw):
                    raise GuardDenied("privileges.protocols",
                                      "raw sockets writing their own IP header (hdrincl) need a raw grant "
                                      f"(raw:<protocol> for each protocol sent, or raw:*); granted protocols: "
                                      f"{_listing(sorted(self._pg.protocols), 'nothing')}")
            else:
                self._proto("raw", msg.ipproto)
        elif kind in ("udp", "tcp", "tcp-listen"):
            self._proto(kind)
        else:
            raise GuardDenied("privileges.protocols", f"unknown socket kind {_shown(kind)}")
        if kind == "tcp" or (kind == "udp" and msg.raddr is not None):
            self._dst(msg.raddr)
            if self._ports is not None and msg.rport is not None:
                self._port(msg.rport)
        if msg.laddr:
            if self._clock() - self._own_at > OWN_REFRESH_S:
                self._refresh_own(self._clock())
            self._src(msg.laddr)

    def _send_policy(self, item: Any, sock: SockView, now: float) -> tuple[int, int]:
        """Privileges for one send; returns (packets, bytes) to charge."""
        kind = sock.kind
        data = item.data
        if kind == "udp":
            dst = item.dst or sock.raddr
            ok = self._dst_ok.get(dst)
            if ok is None:
                ok = self._dst_check(dst)
            if not ok:
                raise self._dst_denied(dst)
            if self._ports is not None:
                self._port(item.port or sock.rport)
            return 1, len(data)
        if kind == "raw":
            if sock.hdrincl or (sock.family == 4 and sock.ipproto == 255):
                self._check_header(item, data, now)
            else:
                self._dst(item.dst)
                if self._ports is not None and sock.ipproto in (6, 17):
                    if len(data) < 4:
                        raise GuardDenied("privileges.ports", f"malformed packet: {len(data)} bytes is too "
                                                              "short for the port the grant limits")
                    self._port(int.from_bytes(data[2:4], "big"))
            return 1, len(data)
        if kind == "tcp":
            n = len(data) + getattr(item, "fill", 0)  # endpoint-generated bytes count like any other
            return -(-n // TCP_SEGMENT), n
        raise GuardDenied("privileges.protocols", f"cannot send on a {_shown(kind)} socket")

    def _check_header(self, item: Any, data: bytes, now: float) -> None:
        """An IPv4 header the caller wrote: protocol, destination, source
        (and the port, when ports are limited) are what will be on the wire."""
        if len(data) < 20 or data[0] >> 4 != 4 or data[0] & 15 < 5:
            raise GuardDenied("privileges.protocols",
                              "malformed packet: hdrincl data must start with an IPv4 header "
                              f"(got {len(data)} bytes, first byte {data[0] if data else 'none'})")
        proto = data[9]
        if not self._raw_any and proto not in self._raw:
            raise GuardDenied("privileges.protocols", f"IP protocol {_proto_name(proto)} in the header is not "
                                                      f"granted (granted protocols: "
                                                      f"{_listing(sorted(self._pg.protocols), 'nothing')})")
        dst = data[16:20]
        ok = self._dst_ok.get(dst)
        if ok is None:
            ok = self._dst_check(dst)
        if not ok:
            raise self._dst_denied(dst)
        if item.dst is not None and item.dst != socket.inet_ntoa(dst):
            self._dst(item.dst)  # the kernel routes by this one
        src = data[12:16]
        if src != _UNSPEC4:
            if now - self._own_at > OWN_REFRESH_S:
                self._refresh_own(now)
            self._src(src)
        if self._ports is not None and proto in (6, 17):
            ihl = (data[0] & 15) * 4
            if int.from_bytes(data[6:8], "big") & 0x1FFF:
                raise GuardDenied("privileges.ports", "a non-first IPv4 fragment of a TCP/UDP packet: "
                                                      "its port cannot be checked against the granted ports")
            if len(data) < ihl + 4:
                raise GuardDenied("privileges.ports", f"malformed packet: {len(data)} bytes is too short "
                                                      f"for the port after a {ihl}-byte header")
            self._port(int.from_bytes(data[ihl + 2:ihl + 4], "big"))

    def _check_send(self, item: Any, sock: SockView) -> int | None:
        now = self._clock()
        if now >= self._until:
            raise self._ended()
        pkts, nbytes = self._send_policy(item, sock, now)
        budget = self.budget
        earliest = None
        if budget.active:
            wait = budget.charge(pkts, nbytes, now)
            if wait > 0:
                earliest = self._epoch_ns(now, wait)
        if self.monitors:
            try:
                self._monitor(self._send_event(item, sock))
            except GuardDenied:
                if budget.active:
                    budget.refund(pkts, nbytes)
                raise
        return earliest

    def check_batch(self, items: list[Any], socks: list[SockView]) -> list[int | None]:
        n = len(items)
        times: list[int | None] = [None] * n
        costs: list[tuple[int, int]] = []
        budget = self.budget
        active = budget.active
        now = self._clock()
        denied: GuardDenied | None = None
        k = n
        if now >= self._until:
            denied, k = self._ended(), 0
        for i in range(k):
            try:
                cost = self._send_policy(items[i], socks[i], now)
                if active:
                    wait = budget.charge(cost[0], cost[1], now)
                    if wait > 0:
                        times[i] = self._epoch_ns(now, wait)
                    costs.append(cost)
            except GuardDenied as exc:
                denied, k = exc, i
                break
        if self.monitors and k > 0:
            events = [self._send_event(items[j], socks[j]) for j in range(k)]
            limit, first = k, None
            for mon in self.monitors:
                try:
                    mon.check_batch(events if limit == k else events[:limit])
                except GuardDenied as exc:
                    limit = exc.index if exc.index is not None and 0 <= exc.index < limit else 0
                    first = exc
                except Exception as exc:  # noqa: BLE001 - a failing monitor denies
                    limit, first = 0, self._monitor_failed(mon, exc)
                if limit == 0:
                    break
            if first is not None:
                if active:
                    for pk, nb in costs[limit:k]:
                        budget.refund(pk, nb)
                denied, k = first, limit
        if denied is not None:
            denied.index = k
            denied.times = times[:k]
            raise denied
        return times

    def check_data(self, sock: SockView, data: bytes, peer: str | None) -> None:
        if self.monitors:
            self._monitor(Event(op="ndata", sock=sock.sid, proto=sock.kind, family=sock.family,
                                ipproto=sock.ipproto or 0, dst=peer, data=data,
                                primitive=self._prim, principal=self._pname))

    # -- tasks -----------------------------------------------------------
    def _check_task(self, msg: Any) -> None:
        name = msg.primitive
        params = msg.params if isinstance(msg.params, dict) else {}
        bounds = P.primitive_bounds(self.grants, name) if isinstance(name, str) else None
        if bounds is None:
            granted = _listing(sorted(self.grants.primitives), "none")
            raise GuardDenied("privileges.primitives", f"primitive {_shown(name)} is not granted "
                                                       f"(granted primitives: {granted})")
        defaults = _defaults(name) or {}
        own = self.grants.primitives.get(name) or {}
        unknown = sorted(k for k in own if defaults and not _bounds_a_parameter(k, defaults))
        if unknown:
            # A bound naming no parameter (a typo such as "atempts") would
            # enforce nothing; the grant is refused rather than silently lax.
            raise GuardDenied(f"privileges.primitives.{name}.{unknown[0]}",
                              f"the grant bounds {', '.join(map(repr, unknown))}, which {name} does not take "
                              f"(its parameters: {', '.join(sorted(defaults))}); fix the grant")

        def value(key: str) -> Any:
            v = params.get(key, defaults.get(key))
            return None if v is inspect.Parameter.empty else v

        for key, bound in sorted(bounds.items()):
            rule = f"privileges.primitives.{name}.{key}"
            if isinstance(bound, (list, tuple)):
                self._list_bound(name, key, bound, value, params, defaults, rule)
                continue
            if key not in params and key not in defaults:
                continue  # a bound (e.g. from "*") on a parameter this primitive does not take
            v = value(key)
            if name == "trace" and key == "hoplimit" and v == 0:
                v = 255  # 0: probe up to TTL 255
            x = _number(v)
            if x is None:
                raise GuardDenied(rule, f"{key} {_shown(v)} cannot be checked against the granted "
                                        f"maximum {_num(bound)}; give it as a number")
            if x > bound:
                raise GuardDenied(rule, f"{name} {key} {_num(x)} is over the granted maximum {_num(bound)}")
        self._task_addresses(name, params, value)

    @staticmethod
    def _list_bound(name: str, key: str, bound: Sequence[str], value: Callable[[str], Any],
                    params: Mapping[str, Any], defaults: Mapping[str, Any], rule: str) -> None:
        allowed = _listing(bound)
        if key == "servers":
            if "server" not in params and "server" not in defaults:
                return
            v = value("server")
            got = "resolver" if v is None else (_addr(v) or v)
            if got not in bound:
                what = "the endpoint's resolver" if got == "resolver" else f"server {_shown(got)}"
                raise GuardDenied(rule, f"{name} to {what} is not granted (granted servers: {allowed})")
            return
        if key == "hosts":
            if "url" not in params:
                return
            host = _url_host(params.get("url"))
            got = (_addr(host) or host.lower()) if host else None
            if got not in bound:
                raise GuardDenied(rule, f"{name} to host {_shown(got)} is not granted (granted hosts: {allowed})")
            return
        param = key[:-1] if key.endswith("s") and (key[:-1] in params or key[:-1] in defaults) else key
        if param not in params and param not in defaults:
            return
        v = value(param)
        fold = {b.casefold() for b in bound}
        if not (isinstance(v, str) and v.casefold() in fold):
            raise GuardDenied(rule, f"{name} {param} {_shown(v)} is not granted (granted: {allowed})")

    def _task_addresses(self, name: str, params: Mapping[str, Any], value: Callable[[str], Any]) -> None:
        """Destination and source parameters pass the same checks as sends."""
        dsts: list[Any] = []
        if name in ("ping", "trace"):
            dsts.append(value("dst"))
        elif name == "dns":
            server = value("server")
            if server is not None:
                dsts.append(server)
        elif name == "http":
            if value("dst") is not None:
                dsts.append(value("dst"))
            host = _url_host(params.get("url"))
            if host is not None and _addr(host) is not None:
                dsts.append(host)
        elif name in _DEALIAS:
            dsts += _dealias_addresses(name, params)
        elif "dst" in params:
            dsts.append(params["dst"])
        srcs = [params.get("src")] + [pd.get("src") for pd in _probedefs(params)]
        for d in dsts:
            canon = _addr(d)
            if canon is None:
                raise GuardDenied("privileges.dst", f"{name} destination {_shown(d)} is not an IP address")
            self._dst(canon)
        for src in srcs:
            if src is None:
                continue
            canon = _addr(src)
            if canon is None:
                raise GuardDenied("privileges.spoof", f"{name} source {_shown(src)} is not an IP address")
            self._src(canon)

    # -- monitors ----------------------------------------------------------
    def _monitor(self, ev: Event) -> None:
        for mon in self.monitors:
            try:
                mon.check(ev)
            except GuardDenied:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing monitor denies, never crashes
                raise self._monitor_failed(mon, exc) from None

    @staticmethod
    def _monitor_failed(mon: Any, exc: BaseException) -> GuardDenied:
        name = getattr(getattr(mon, "module", None), "name", None) or type(mon).__name__
        return GuardDenied(f"monitor {name}", f"monitor failed: {type(exc).__name__}: {exc}")

    def _send_event(self, item: Any, sock: SockView) -> Event:
        data = item.data
        src = None
        if sock.kind == "raw" and (sock.hdrincl or (sock.family == 4 and sock.ipproto == 255)) \
                and len(data) >= 20:
            dst = socket.inet_ntoa(data[16:20])
            src = socket.inet_ntoa(data[12:16])
        else:
            dst = item.dst or sock.raddr
        return Event(op="nsend", sock=sock.sid, proto=sock.kind, family=sock.family,
                     ipproto=sock.ipproto or 0, dst=dst, dport=item.port or sock.rport or 0,
                     src=src, data=data, primitive=self._prim, principal=self._pname,
                     fill=getattr(item, "fill", 0))

    def _event(self, op: str, req: Any, sock: SockView | None) -> Event:
        ev = Event(op=op, primitive=self._prim, principal=self._pname)
        if sock is not None:
            ev.sock, ev.proto, ev.family, ev.ipproto = sock.sid, sock.kind, sock.family, sock.ipproto or 0
        if op == "nopen":
            ev.proto, ev.family, ev.ipproto = req.proto, req.family, req.ipproto or 0
            ev.dst, ev.dport, ev.src, ev.sport = req.raddr, req.rport or 0, req.laddr, req.lport or 0
        elif op == "accept":
            ev.dst, ev.dport = req.get("peer"), req.get("port") or 0
        elif op == "task":
            ev.primitive = req.primitive if isinstance(req.primitive, str) else ""
            params = req.params if isinstance(req.params, dict) else {}
            d = params.get("dst") or params.get("server")
            ev.dst = d if isinstance(d, str) else None
            ev.data = json.dumps(params, separators=(",", ":"), sort_keys=True, default=str).encode()
        elif op == "ncap":
            ev.data = (req.filter or "").encode()
        elif op == "nctl":
            ev.data = str(req.op).encode()
            if sock is None and req.sock is not None:
                ev.sock = req.sock
        elif op == "nclose" and sock is None:
            ev.sock = req.sock
        return ev

    # -- lifetime ----------------------------------------------------------
    def for_primitive(self, name: str) -> "PolicySessionGuard":
        """Same grants, budget and monitor instances; protocols implied if
        ``name`` is granted."""
        return PolicySessionGuard(self.guard, self.principal.for_primitive(name), self.grants, self.vp,
                                  self.budget, self.monitors, parent=self)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._parent is None:
            # monitor instances stay: a primitive still finishing must not
            # run unmonitored
            self.budget.sessions -= 1


_DEALIAS = frozenset({"ally", "mercator", "radargun", "prefixscan", "midarest", "midardisc"})


def _probedefs(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    pds = params.get("probedefs")
    if not isinstance(pds, (list, tuple)):
        return []
    return [pd for pd in pds if isinstance(pd, Mapping)]


def _dealias_addresses(name: str, params: Mapping[str, Any]) -> list[Any]:
    """Every address an alias-resolution task will probe, so a denied one refuses the task at once
    (the sends would be denied one by one anyway, but only after the task had started)."""
    out: list[Any] = [params[k] for k in ("dst", "dst1", "dst2", "near", "far") if params.get(k) is not None]
    addrs = params.get("addrs")
    if isinstance(addrs, (list, tuple)):
        out += list(addrs)
    out += [pd["dst"] for pd in _probedefs(params) if pd.get("dst") is not None]
    return out
