"""The scamper module's names over marionet: change only the import.

    from scamper import ScamperCtrl          # before
    from marionet.compat.scamper import ScamperCtrl   # after

How scamper's ways of reaching VPs map onto a marionet controller:

* ``remote_dir=DIR`` (sc_remoted's directory of per-VP sockets): DIR holds
  a marionet controller's Unix socket (``marionet controller --unix
  DIR/controller.sock``; any socket file in DIR is taken); every live VP is
  attached, as scamper attaches every socket in the directory.
* ``remote=DIR/NAME`` (one VP's socket): the controller in DIR, VP NAME.
* ``mux=ADDR`` (sc_remoted's multiplexed socket): ADDR is a controller
  (a Unix socket path or ``HOST:PORT``); no VP is attached until
  ``add_vps(ctrl.vps())``, as with scamper.
* ``unix=PATH`` (a local scamper's control socket): a controller's Unix
  socket; all its VPs are attached.
* ``add_inet(port, addr)``: a controller's client port (plain TCP on
  loopback unless TLS material is given as marionet keyword arguments).
* none of them: marionet's default, an embedded controller with a local
  endpoint (``local_vps=N`` for more), started on first use.

Results are marionet's classes with scamper's names added
(``marionet.results``); where scamper's meaning differs from marionet's
documented one, the object a script gets is a compat subclass, converted on
delivery and on reading a ``ScamperFile``: ``ScamperTrace.hop(i)`` counts
from 0 and ``hops()`` starts at TTL 1 (marionet's ``Trace.hop(ttl)`` takes
the TTL), ``ScamperHost.rcode`` is scamper's text ("NoError"; marionet's
is the number). ``ScamperVp.tags`` is a set of strings (``"k=v"``, or
``"k"`` for an empty value). ``ScamperHost.ans_addrs()``/``ans_nses()``
are distinct, and ``ans_txts()`` gives the TXT records. ``ping.replies``
is a list and callable;
iterating a ping yields the first reply of each answered probe, as scamper.
Instances are ``ScamperInst`` (marionet's ``Inst`` re-classed, ``tags`` a
set of strings too). Alias-resolution results are ``ScamperDealias``, a
wrapper (not a subclass: scamper's ``probes()`` is a method where marionet's
``Dealias.probes`` is a list) whose ``probes()``/``probe(i)`` give
``ScamperDealiasProbe`` objects with the probedef as an object
(``ScamperDealiasProbedef``) and ``replies()``; the marionet object is
``.dealias``. ``do_radargun``/``do_midarest``/``do_midardisc`` take
``ScamperDealiasProbedef`` and ``ScamperDealiasMidardiscRound`` objects and
an aware-datetime ``startat``.

Unsupported, said clearly: one ``ScamperCtrl`` talks to one controller
(adding a second raises ``NotImplementedError``); ``meta=True`` is accepted
but no list objects are produced (files yield cycle records, which are
``ScamperCycle`` instances); results carry no ``list``/``cycle`` (their
properties raise ``NotImplementedError``); primitives marionet has no
implementation of (``do_owamp``) raise ``NotImplementedError`` naming
them, and ones the endpoints refuse raise ``ScamperInstError``.
``PingReply.attempt`` counts from 0 (scamper's from 1); DNS records'
``rclass``/``rtype`` are names ("IN", "AAAA"; scamper's are numbers); a
trace hop's ``icmpext`` is a list (scamper's one object); HTTP header
values keep their case (scamper lowercases them).

One deliberate difference: errors are not dropped silently.
``responses()``/``poll()`` raise ``ScamperInstError`` where a failure
happened; pass ``errors="collect"`` to get scamper's collect-then-
``exceptions()`` behaviour (errors still unread at the end are raised
when the controller closes). A result the ``outfile`` cannot take is still
delivered; the failure is counted (``outfile_errors``) and kept for
``exceptions()``. ``poll(until=…)`` with nothing outstanding waits for the
deadline, as scamper's does; with no deadline it returns None at once
(scamper would block).
"""

from __future__ import annotations

import copy
import datetime as _dt
import enum
import ipaddress
import os
import stat
import time
from typing import Any, Callable, Iterator

import marionet.results as _results
from marionet.client.address import is_loopback, parse_hostport
from marionet.client.ctrl import Ctrl
from marionet.client.inst import Inst, InstError, Task, VpInfo
from marionet.results import (Addr, CycleStart, CycleStop, DnsResult, DnsRR, File, Http, HttpBuf, Ping,
                              PingReply, PingStop, Trace, TraceHop, TraceStop)
from marionet.results.dns import DnsMX, DnsQuery, DnsSOA, rcode_text
from marionet.results.trace import IcmpExt, MplsLabel

__all__ = ["ScamperCtrl", "ScamperInst", "ScamperTask", "ScamperInstError", "ScamperFile", "ScamperPing",
           "ScamperPingReply", "ScamperPingStop", "ScamperTrace", "ScamperTraceHop", "ScamperTraceStop",
           "ScamperIcmpExt", "ScamperIcmpMplsLabelStackEntry", "ScamperAddr", "ScamperVp", "ScamperList",
           "ScamperCycle", "ScamperHost", "ScamperHostRR", "ScamperHostQuery", "ScamperHostMX",
           "ScamperHostSOA", "ScamperHostType", "ScamperHttp", "ScamperHttpBuf", "ScamperDealias",
           "ScamperDealiasProbedef", "ScamperDealiasProbe", "ScamperDealiasReply", "ScamperDealiasMidardiscRound"]

ScamperTask = Task
ScamperInstError = InstError
ScamperPingReply = PingReply
ScamperTraceHop = TraceHop
ScamperIcmpExt = IcmpExt
ScamperIcmpMplsLabelStackEntry = MplsLabel
ScamperAddr = Addr
ScamperHostRR = DnsRR
ScamperHostQuery = DnsQuery
ScamperHostMX = DnsMX
ScamperHostSOA = DnsSOA
ScamperHttpBuf = HttpBuf


# ---------------------------------------------------------------- stop reasons
class ScamperTraceStop:
    """scamper's trace stop reasons, by its names: each equals the
    ``stop_reason`` of a trace that stopped so (``TraceStop`` members)."""
    NoReason = TraceStop.NONE
    Completed = TraceStop.COMPLETED
    Unreach = TraceStop.UNREACH
    Icmp = TraceStop.ICMP
    ICMP = TraceStop.ICMP
    Loop = TraceStop.LOOP
    GapLimit = TraceStop.GAPLIMIT
    Gaplimit = TraceStop.GAPLIMIT
    Error = TraceStop.ERROR
    HopLimit = TraceStop.HOPLIMIT
    GSS = TraceStop.GSS
    Halted = TraceStop.HALTED


class ScamperPingStop:
    """scamper's ping stop reasons, by its names (``PingStop`` members)."""
    NoReason = PingStop.NONE
    Done = PingStop.DONE
    Error = PingStop.ERROR
    Halted = PingStop.HALTED


class ScamperHostType(enum.IntEnum):
    """DNS record types by scamper's names."""
    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    DS = 43
    SSHFP = 44
    RRSIG = 46
    NSEC = 47
    DNSKEY = 48


# ------------------------------------------------------- result subclasses
def _no_meta(what: str) -> NotImplementedError:
    return NotImplementedError(f"{what}: marionet results carry no scamper list/cycle objects "
                               "(a file's cycle records are ScamperCycle objects)")


class _Meta:
    """``list``/``cycle`` of a scamper result: marionet does not keep them.
    Members scamper documents that this marionet lacks (``_LACKS``) raise
    ``NotImplementedError`` naming them; once marionet's class has one, it
    is found first and this is never reached."""

    __slots__ = ()
    _LACKS: frozenset[str] = frozenset()

    def __getattr__(self, name: str) -> Any:
        if name in type(self)._LACKS:
            raise NotImplementedError(f"{type(self).__name__}.{name}: marionet does not record this "
                                      "(scamper's module has it)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def list(self) -> Any:
        raise _no_meta(f"{type(self).__name__}.list")

    @property
    def cycle(self) -> Any:
        raise _no_meta(f"{type(self).__name__}.cycle")


class ScamperPing(Ping, _Meta):
    """marionet's ``Ping`` as scamper scripts see it."""

    __slots__ = ()
    _LACKS = frozenset({"rtr", "attempts", "payload", "probe_icmp_sum", "stop_count", "reply_pmtu"})


class ScamperTrace(Trace, _Meta):
    """marionet's ``Trace`` with scamper's hop indexing: ``hop(i)`` is the
    hop at distance ``i`` counted from 0 (TTL ``i + 1``), ``hops()`` yields
    ``hop(0)`` … ``hop(hop_count - 1)``."""

    __slots__ = ()
    _LACKS = frozenset({"rtr", "squeries", "gaplimit", "gapaction", "confidence", "payload", "offset",
                        "pmtud"})

    def hop(self, i: int) -> TraceHop | None:  # type: ignore[override]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i <= 255:
            raise ValueError(f"invalid hop index: {i!r} (0 to 255; hop(0) is TTL 1)")
        return Trace.hop(self, i + 1)

    def hops(self) -> Iterator[TraceHop | None]:  # type: ignore[override]
        return (self.hop(i) for i in range(min(self.hop_count or 0, 256)))


class ScamperHost(DnsResult, _Meta):
    """marionet's ``DnsResult`` with scamper's ``rcode`` text ("NoError",
    "NXDomain", …; None without a reply); ``rcode_num`` is the number."""

    __slots__ = ()

    @property
    def rcode(self) -> str | None:  # type: ignore[override]
        r = self.reply
        return None if r is None or r.rcode is None else rcode_text(r.rcode)

    @property
    def rcode_num(self) -> int | None:
        r = self.reply
        return None if r is None else r.rcode

    def ans_txts(self) -> list[DnsRR]:  # type: ignore[override]
        """The TXT answer records, as scamper's (marionet's gives their strings)."""
        return [rr for rr in self.ans() if rr.txt is not None]

    def ans_addrs(self) -> list[Addr]:
        """The distinct answer addresses, first-seen order (scamper's)."""
        return list(dict.fromkeys(DnsResult.ans_addrs(self)))

    def ans_nses(self) -> list[str]:
        """The distinct answer name servers, first-seen order (scamper's)."""
        return list(dict.fromkeys(DnsResult.ans_nses(self)))


class ScamperHttp(Http, _Meta):
    """marionet's ``Http`` as scamper scripts see it."""

    __slots__ = ()


# ------------------------------------------------------- alias resolution
def _td(ns: int | None) -> _dt.timedelta | None:
    return None if ns is None else _dt.timedelta(microseconds=ns / 1000)


def _ns_of(v: Any, what: str) -> int:
    """A scamper time parameter (timedelta, or float seconds) as ns."""
    if isinstance(v, _dt.timedelta):
        return int(round(v.total_seconds() * 1e9))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(round(float(v) * 1e9))
    raise ValueError(f"{what} must be a timedelta or seconds, got {type(v).__name__}")


_PD_KEYS = ("method", "src", "dst", "ttl", "size", "sport", "dport", "icmp_id", "icmp_sum")


class ScamperDealiasProbedef:
    """scamper's probe definition: built by scripts for ``do_radargun``,
    ``do_midarest``, ``do_midardisc`` … (``ScamperDealiasProbedef('icmp-echo',
    ttl=255)``), and found on results (``probe.probedef``). Unset fields
    keep the primitive's defaults."""

    __slots__ = ("_pd",)

    def __init__(self, method: str = "icmp-echo", src: Any = None, dst: Any = None, ttl: int | None = None,
                 size: int | None = None, sport: int | None = None, dport: int | None = None,
                 icmp_id: int | None = None, icmp_sum: int | None = None) -> None:
        from marionet.results.dealias import PROBE_METHODS

        if method not in PROBE_METHODS:
            raise ValueError(f"probedef method must be one of {', '.join(PROBE_METHODS)}, got {method!r}")
        for name, v in (("ttl", ttl), ("size", size), ("sport", sport), ("dport", dport), ("icmp_id", icmp_id),
                        ("icmp_sum", icmp_sum)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 0xFFFF):
                raise ValueError(f"probedef {name} must be an integer 0..65535, got {v!r}")
        self._pd = _results.DealiasProbedef(id=0, method=method, dst=None if dst is None else str(Addr(dst)),
                                            src=None if src is None else str(Addr(src)), ttl=ttl,  # type: ignore[arg-type]
                                            size=size, sport=sport, dport=dport, icmp_id=icmp_id,  # type: ignore[arg-type]
                                            icmp_sum=icmp_sum)

    @classmethod
    def _of(cls, pd: Any) -> "ScamperDealiasProbedef":
        obj = cls.__new__(cls)
        obj._pd = pd
        return obj

    def to_params(self) -> dict[str, Any]:
        """The probedef as the primitives take it (unset fields left out)."""
        return {k: getattr(self._pd, k) for k in _PD_KEYS if getattr(self._pd, k) is not None}

    @property
    def id(self) -> int:
        return self._pd.id

    @property
    def method(self) -> str:
        return self._pd.method

    @property
    def dst(self) -> Addr | None:
        return None if self._pd.dst is None else Addr(self._pd.dst)

    @property
    def src(self) -> Addr | None:
        return None if self._pd.src is None else Addr(self._pd.src)

    @property
    def ttl(self) -> int | None:
        return self._pd.ttl

    @property
    def size(self) -> int | None:
        return self._pd.size

    @property
    def sport(self) -> int | None:
        return self._pd.sport

    @property
    def dport(self) -> int | None:
        return self._pd.dport

    @property
    def icmp_id(self) -> int | None:
        return self._pd.icmp_id

    @property
    def icmp_sum(self) -> int | None:
        return self._pd.icmp_sum

    def is_icmp(self) -> bool:
        return self._pd.method == "icmp-echo"

    def is_udp(self) -> bool:
        return self._pd.method.startswith("udp")

    def is_tcp(self) -> bool:
        return self._pd.method.startswith("tcp")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScamperDealiasProbedef) and other._pd == self._pd

    def __repr__(self) -> str:
        return f"ScamperDealiasProbedef({', '.join(f'{k}={v!r}' for k, v in self.to_params().items())})"


class ScamperDealiasMidardiscRound:
    """One round of a midardisc schedule: ``start`` (offset from ``startat``,
    a timedelta), probedefs ``begin`` … ``end`` (indexes, inclusive)."""

    __slots__ = ("start", "begin", "end")

    def __init__(self, start: Any, begin: int, end: int) -> None:
        self.start = _dt.timedelta(microseconds=_ns_of(start, "round start") / 1000)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (begin, end)) or end < begin:
            raise ValueError(f"round begin/end must be probedef indexes with begin <= end, got {begin!r}, {end!r}")
        self.begin, self.end = begin, end

    def to_params(self) -> tuple[int, int, int]:
        return (self.start // _dt.timedelta(microseconds=1) * 1000, self.begin, self.end)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScamperDealiasMidardiscRound) and other.to_params() == self.to_params()

    def __repr__(self) -> str:
        return f"ScamperDealiasMidardiscRound({self.start!r}, {self.begin}, {self.end})"


class ScamperDealiasReply:
    """One reply to a dealias probe, as scamper's module shows it."""

    __slots__ = ("_r", "_probe")

    def __init__(self, reply: Any, probe: "ScamperDealiasProbe") -> None:
        self._r, self._probe = reply, probe

    @property
    def src(self) -> Addr:
        return Addr(self._r.src)

    @property
    def rx(self) -> _dt.datetime:
        return self._r.rx

    @property
    def ipid(self) -> int | None:
        return self._r.ipid

    @property
    def ttl(self) -> int:
        return self._r.ttl

    @property
    def size(self) -> int:
        return self._r.size

    @property
    def proto(self) -> int:
        return self._r.proto

    @property
    def icmp_type(self) -> int | None:
        return self._r.icmp_type

    @property
    def icmp_code(self) -> int | None:
        return self._r.icmp_code

    @property
    def icmp_q_ttl(self) -> int | None:
        return self._r.icmp_q_ttl

    @property
    def tcp_flags(self) -> int | None:
        return self._r.tcp_flags

    def is_from_target(self) -> bool:
        """Did the probed address itself answer?"""
        return self._r.src == self._probe._p.dst

    def is_tcp(self) -> bool:
        return self._r.is_tcp()

    def is_icmp(self) -> bool:
        return self._r.is_icmp()

    def is_icmp_echo_reply(self) -> bool:
        return self.is_icmp() and self._r.icmp_type in (0, 129)

    def is_icmp_ttl_exp(self) -> bool:
        return self.is_icmp() and self._r.icmp_type == (11 if self._r.proto == 1 else 3)

    def is_icmp_unreach(self) -> bool:
        return self.is_icmp() and self._r.icmp_type == (3 if self._r.proto == 1 else 1)

    def is_icmp_unreach_port(self) -> bool:
        return self.is_icmp_unreach() and self._r.icmp_code == (3 if self._r.proto == 1 else 4)

    def __repr__(self) -> str:
        return f"ScamperDealiasReply(src={self._r.src}, ipid={self._r.ipid})"


class ScamperDealiasProbe:
    """One dealias probe: its probedef (an object, as scamper's), tx, IP-ID, replies."""

    __slots__ = ("_p", "_def")

    def __init__(self, probe: Any, probedef: ScamperDealiasProbedef) -> None:
        self._p, self._def = probe, probedef

    @property
    def probedef(self) -> ScamperDealiasProbedef:
        return self._def

    @property
    def seq(self) -> int:
        return self._p.seq

    @property
    def tx(self) -> _dt.datetime | None:
        return self._p.tx

    @property
    def ipid(self) -> int | None:
        return self._p.ipid

    @property
    def reply_count(self) -> int:
        return len(self._p.replies)

    def reply(self, i: int = 0) -> ScamperDealiasReply | None:
        """Reply ``i``, or None past the last (scamper's)."""
        return ScamperDealiasReply(self._p.replies[i], self) if 0 <= i < len(self._p.replies) else None

    def replies(self) -> Iterator[ScamperDealiasReply]:
        return (ScamperDealiasReply(r, self) for r in self._p.replies)

    def __repr__(self) -> str:
        return f"ScamperDealiasProbe(dst={self._p.dst}, seq={self._p.seq}, replies={len(self._p.replies)})"


class ScamperDealias:
    """marionet's ``Dealias`` with scamper's module names: ``probes()`` and
    ``probe(i)`` give ``ScamperDealiasProbe`` objects (whose ``probedef`` is
    the object, not an index), ``probedefs()``/``probedef(i)``
    ``ScamperDealiasProbedef``, times are datetimes/timedeltas, addresses
    ``ScamperAddr``. marionet's own fields are reached through ``dealias``
    (and, where scamper has no name of its own, as attributes)."""

    __slots__ = ("dealias", "_defs", "_inst")

    def __init__(self, dealias: Any, inst: Any = None) -> None:
        if not isinstance(dealias, _results.Dealias):
            raise TypeError(f"ScamperDealias wraps a marionet Dealias, not {type(dealias).__name__}")
        self.dealias = dealias
        self._defs = [ScamperDealiasProbedef._of(pd) for pd in dealias.probedefs]
        self._inst = inst

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.dealias, name)

    @property
    def inst(self) -> Any:
        """The instance that measured it (None for results read from a file)."""
        return _inst(self._inst)

    @property
    def list(self) -> Any:
        raise _no_meta("ScamperDealias.list")

    @property
    def cycle(self) -> Any:
        raise _no_meta("ScamperDealias.cycle")

    @property
    def method(self) -> str:
        return self.dealias.method

    @property
    def result(self) -> str:
        return self.dealias.result

    @property
    def userid(self) -> int:
        return self.dealias.userid

    @property
    def start(self) -> _dt.datetime:
        return self.dealias.start

    @property
    def startat(self) -> _dt.datetime | None:
        at = self.dealias.startat_ns
        return None if at is None else _results.ns_to_datetime(at)

    @property
    def attempts(self) -> int:
        return self.dealias.attempts

    @property
    def rounds(self) -> int:
        return self.dealias.attempts

    @property
    def fudge(self) -> int:
        return self.dealias.fudge

    @property
    def wait_probe(self) -> _dt.timedelta:
        return _td(self.dealias.wait_probe_ns)  # type: ignore[return-value]

    @property
    def wait_round(self) -> _dt.timedelta:
        return _td(self.dealias.wait_round_ns)  # type: ignore[return-value]

    @property
    def wait_timeout(self) -> _dt.timedelta:
        return _td(self.dealias.wait_timeout_ns)  # type: ignore[return-value]

    @property
    def prefix(self) -> tuple[Any, ...] | None:
        return self.dealias.prefix

    @property
    def schedule(self) -> list[ScamperDealiasMidardiscRound]:
        return [ScamperDealiasMidardiscRound(_dt.timedelta(microseconds=off / 1000), b, e)
                for off, b, e in self.dealias.schedule or ()]

    @property
    def probedef_count(self) -> int:
        return len(self._defs)

    def probedef(self, i: int) -> ScamperDealiasProbedef | None:
        return self._defs[i] if 0 <= i < len(self._defs) else None

    def probedefs(self) -> Iterator[ScamperDealiasProbedef]:
        return iter(self._defs)

    @property
    def probe_count(self) -> int:
        return len(self.dealias.probes)

    def probe(self, i: int) -> ScamperDealiasProbe | None:
        ps = self.dealias.probes
        return ScamperDealiasProbe(ps[i], self._defs[ps[i].probedef]) if 0 <= i < len(ps) else None

    def probes(self) -> Iterator[ScamperDealiasProbe]:
        return (ScamperDealiasProbe(p, self._defs[p.probedef]) for p in self.dealias.probes)

    def aliases(self) -> list[tuple[Addr, ...]]:
        """What the method found (see ``Dealias.aliases``), as ``ScamperAddr`` tuples."""
        return [tuple(Addr(a) for a in group) for group in self.dealias.aliases()]

    def has_aliases(self) -> bool:
        return self.dealias.has_aliases()

    def is_ally(self) -> bool:
        return self.dealias.method == "ally"

    def is_mercator(self) -> bool:
        return self.dealias.method == "mercator"

    def is_radargun(self) -> bool:
        return self.dealias.method == "radargun"

    def is_prefixscan(self) -> bool:
        return self.dealias.method == "prefixscan"

    def is_bump(self) -> bool:
        return self.dealias.method == "bump"

    def is_midarest(self) -> bool:
        return self.dealias.method == "midarest"

    def is_midardisc(self) -> bool:
        return self.dealias.method == "midardisc"

    def is_result_aliases(self) -> bool:
        return self.dealias.result == "aliases"

    def is_result_not_aliases(self) -> bool:
        return self.dealias.result == "not-aliases"

    def is_result_none(self) -> bool:
        return self.dealias.result == "none"

    def is_result_halted(self) -> bool:
        return self.dealias.result == "halted"

    def is_result_ipid_echo(self) -> bool:
        return self.dealias.result == "ipid-echo"

    def to_json(self) -> dict[str, Any]:
        return self.dealias.to_json()

    def to_text(self) -> str:
        return self.dealias.to_text()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScamperDealias) and other.dealias == self.dealias

    def __repr__(self) -> str:
        return f"ScamperDealias({self.dealias.method}, {self.dealias.result}, {len(self.dealias.probes)} probes)"


def _dealias_params(params: dict[str, Any]) -> dict[str, Any]:
    """scamper-typed dealias arguments as the primitives take them:
    probedef objects as dicts, schedule rounds as (ns, begin, end), a
    datetime ``startat`` as ns since the epoch (endpoint clock)."""
    out = dict(params)
    pds = out.get("probedefs")
    if isinstance(pds, ScamperDealiasProbedef):
        pds = [pds]
    if isinstance(pds, (list, tuple)):
        out["probedefs"] = [p.to_params() if isinstance(p, ScamperDealiasProbedef) else p for p in pds]
    sched = out.get("schedule")
    if isinstance(sched, (list, tuple)):
        out["schedule"] = [r.to_params() if isinstance(r, ScamperDealiasMidardiscRound) else r for r in sched]
    at = out.get("startat")
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            raise ValueError("startat must be a timezone-aware datetime (scamper's are UTC)")
        out["startat"] = int(round(at.timestamp() * 1e6)) * 1000
    return out


def _with_inst(ctrl: Any, obj: Any) -> Any:
    """A ScamperDealias from ``ctrl`` learns its instance from the VP name
    marionet's Dealias carries (Dealias has no ``inst`` field of its own)."""
    if isinstance(obj, ScamperDealias) and obj._inst is None and obj.dealias.vp:
        obj._inst = getattr(ctrl._actrl, "_insts", {}).get(obj.dealias.vp)  # removed ones too
    return obj


_DEALIAS_DO = frozenset({"do_ally", "do_mercator", "do_radargun", "do_prefixscan", "do_midarest", "do_midardisc"})


_TO_SCAMPER: dict[type, type] = {Ping: ScamperPing, Trace: ScamperTrace, DnsResult: ScamperHost,
                                 Http: ScamperHttp}
_TO_MARIONET: dict[type, type] = {v: k for k, v in _TO_SCAMPER.items()}


def as_scamper(obj: Any) -> Any:
    """``obj`` (a marionet result) as the compat class scripts expect; the
    same object, re-classed (no copy)."""
    if type(obj) is _results.Dealias:
        wrapped = ScamperDealias(obj)
        _inst(getattr(obj, "inst", None))
        return wrapped
    cls = _TO_SCAMPER.get(type(obj))
    if cls is not None:
        obj.__class__ = cls
        _inst(getattr(obj, "inst", None))
    elif isinstance(obj, Task):
        _inst(obj.inst)
    return obj


def as_marionet(obj: Any) -> Any:
    """A compat result as marionet's own class (a shallow copy), for the
    writers, which dispatch on marionet's classes."""
    if isinstance(obj, ScamperDealias):
        return obj.dealias
    base = _TO_MARIONET.get(type(obj))
    if base is None:
        return obj
    out = copy.copy(obj)
    out.__class__ = base
    return out


class _CycleMeta(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, (CycleStart, CycleStop))


class ScamperCycle(metaclass=_CycleMeta):
    """scamper's cycle objects: marionet's ``CycleStart``/``CycleStop``
    records are instances (``id``, ``start``, ``stop``, ``hostname``)."""

    def __init__(self) -> None:
        raise TypeError("ScamperCycle cannot be instantiated directly (read cycles from a ScamperFile)")


class ScamperList:
    """scamper's list objects. marionet files carry lists only as the
    ``list_name`` of their cycle records, so no object is ever one; the
    class exists so that ``isinstance(o, (ScamperList, ScamperCycle))``
    filters work unchanged."""

    def __init__(self) -> None:
        raise TypeError("ScamperList cannot be instantiated directly")


# ---------------------------------------------------------------- VPs
def _tag_strings(tags: Any) -> set[str]:
    if isinstance(tags, dict):
        return {f"{k}={v}" if v not in (None, "", True) else str(k) for k, v in tags.items()}
    return {str(t) for t in (tags or ())}


class _AnyInst(type):
    """Every marionet ``Inst`` counts as a ``ScamperInst`` (isinstance)."""

    def __instancecheck__(cls, obj: Any) -> bool:
        return isinstance(obj, Inst)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, Inst)


class ScamperInst(Inst, metaclass=_AnyInst):
    """An attached VP as scamper's ``ScamperInst``: marionet's ``Inst`` with
    ``tags`` as a set of strings (``"k=v"``, or ``"k"`` for an empty value);
    the dict is ``tag_dict``. The compat controller hands out its instances
    as this class (the same objects, re-classed)."""

    @property
    def tags(self) -> set[str]:  # type: ignore[override]
        return _tag_strings(self._meta.get("tags"))

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self._meta.get("tags") or {})


def _inst(obj: Any) -> Any:
    if type(obj) is Inst:
        obj.__class__ = ScamperInst
    return obj


class ScamperVp(VpInfo):
    """A registry entry as scamper's ``ScamperVp``: ``tags`` is a set of
    strings (``"k=v"``, or ``"k"`` when the value is empty); the dict is
    ``tag_dict``."""

    @property
    def tags(self) -> set[str]:  # type: ignore[override]
        return _tag_strings(self._d.get("tags"))

    @property
    def tag_dict(self) -> dict[str, str]:
        return dict(self._d.get("tags") or {})


# ---------------------------------------------------------------- files
_FILE_CLASSES: dict[Any, type | tuple[type, ...]] = {
    ScamperPing: Ping, Ping: Ping, ScamperTrace: Trace, Trace: Trace, ScamperHost: DnsResult,
    DnsResult: DnsResult, ScamperHttp: Http, Http: Http, ScamperCycle: (CycleStart, CycleStop),
    CycleStart: CycleStart, CycleStop: CycleStop, ScamperDealias: _results.Dealias,
    _results.Dealias: _results.Dealias}
_SCAMPER_KINDS = {"warts": ("warts", None), "warts.gz": ("warts", "gzip"), "warts.bz2": ("warts", "bz2"),
                  "warts.xz": ("warts", "xz"), "json": ("json", None)}


def _file_class(t: Any) -> tuple[type, ...]:
    """The marionet classes a ``filter_types`` entry stands for."""
    got = _FILE_CLASSES.get(t)
    if got is None and isinstance(t, type):
        for name in ("Tracelb", "Sniff", "Udpprobe", "Tbit"):  # primitives other modules add
            cls = getattr(_results, name, None)
            if cls is not None and t is cls:
                got = cls
    if got is None:
        raise ValueError(f"invalid type for filter_types: {t!r} (give result classes such as ScamperPing, "
                         "ScamperTrace, ScamperHost, ScamperHttp, ScamperCycle)")
    return got if isinstance(got, tuple) else (got,)


class ScamperFile(File):
    """scamper's ``ScamperFile``: marionet's ``File`` plus scamper's names
    (``filetype``, ``is_read()``, ``is_write()``, ``filter_types(…)``), its
    kinds (``"warts.gz"`` …; ``"text"`` is not written) and its checks
    (filters only on files opened for reading; unknown types are a
    ``ValueError``). Reading yields the compat result classes; writing takes
    them and marionet's."""

    def __init__(self, filename: Any, mode: str = "r", kind: str | None = None,
                 filter_types: Any = None, **marionet: Any) -> None:
        if mode not in ("r", "w", "a"):
            raise ValueError(f"invalid mode: {mode!r} (give 'r' or 'w')")
        fkind = kind
        if kind is not None:
            if kind == "text":
                raise NotImplementedError("ScamperFile kind 'text' is not written by marionet; use 'json' "
                                          "or 'warts'")
            if kind not in _SCAMPER_KINDS:
                raise ValueError(f"invalid kind {kind!r}: give one of {', '.join(_SCAMPER_KINDS)}")
            fkind, comp = _SCAMPER_KINDS[kind]
            name = os.fspath(filename).lower()
            want = {"gzip": ".gz", "bz2": ".bz2", "xz": ".xz"}.get(comp or "", "")
            if mode != "r" and want and not name.endswith(want):
                raise ValueError(f"kind {kind!r} needs a file name ending in {want} (marionet compresses "
                                 "by the name's suffix)")
        if filter_types is not None and mode != "r":
            raise ValueError("cannot add filter to non-readable files")
        super().__init__(filename, mode, fkind, **marionet)
        if filter_types is not None:
            self.filter_types(*filter_types)

    @property
    def filetype(self) -> str:
        return self.kind

    def is_read(self) -> bool:
        return self.mode == "r"

    def is_write(self) -> bool:
        return self.mode != "r"

    def filter_types(self, *types: Any) -> None:  # type: ignore[override]
        """Return only objects of these types from now on (scamper's rule:
        a ``ValueError`` for a file not opened for reading, an unknown type,
        or no type at all)."""
        if self.mode != "r":
            raise ValueError("cannot add filter to non-readable files")
        flat: list[Any] = []
        for t in types:
            flat.extend(t if isinstance(t, (list, tuple, set)) else [t])
        classes: list[type] = []
        for t in flat:
            classes.extend(_file_class(t))
        if not classes:
            raise ValueError("nothing to filter")
        self._filter = self._make_filter(classes)

    def read(self) -> Any:
        return as_scamper(super().read())

    def write(self, obj: Any) -> None:
        super().write(as_marionet(obj))


# ---------------------------------------------------------------- control
def controller_in(path: str) -> str:
    """The controller address a scamper-style path names (see the module
    docstring): a directory holding a controller socket, a socket, or
    ``HOST:PORT``."""
    if os.path.isdir(path):
        preferred = os.path.join(path, "controller.sock")
        if os.path.exists(preferred):
            return "unix:" + preferred
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            try:
                if stat.S_ISSOCK(os.stat(full).st_mode):
                    return "unix:" + full
            except OSError:
                continue
        raise FileNotFoundError(f"no marionet controller socket in {path} (start one with "
                                f"`marionet controller --unix {os.path.join(path, 'controller.sock')} …`)")
    if path.startswith("unix:"):
        return path
    if os.path.exists(path):
        return "unix:" + path
    if ":" in path and not path.startswith("/"):
        parse_hostport(path)
        return path
    raise FileNotFoundError(f"{path}: no such controller socket, directory or HOST:PORT")


def vp_name_of(socket_name: str) -> str:
    """The VP name in a per-VP socket name: sc_remoted names them
    ``NAME-ADDR:PORT`` (scamper's module shows NAME); a plain name stays."""
    base, sep, tail = socket_name.rpartition("-")
    if sep and base:
        host = tail.rsplit(":", 1)[0] if tail.count(":") == 1 or tail.startswith("[") else tail
        try:
            ipaddress.ip_address(host.strip("[]"))
            return base
        except ValueError:
            pass
    return socket_name


_NOT_IN_MARIONET = {
    "do_owamp": "one-way delay (OWAMP)",
}


def _scamper_cb(cb: Callable[..., Any] | None) -> Callable[..., Any] | None:
    """A ``morecb``/``eofcb`` that gets the instance as a ``ScamperInst``."""
    if cb is None:
        return None

    def call(ctrl: Any, inst: Any, param: Any) -> Any:
        return cb(ctrl, _inst(inst), param)

    call.__wrapped__ = cb  # type: ignore[attr-defined]
    return call


def _converting(method: Callable[..., Any]) -> Callable[..., Any]:
    """A ``do_*`` whose ``sync=True`` result comes back as the compat class."""

    def call(self: "ScamperCtrl", *args: Any, **kw: Any) -> Any:
        if method.__name__ in _DEALIAS_DO:
            kw = _dealias_params(kw)
            if method.__name__ in ("do_midarest", "do_midardisc") and args:
                names = ("addrs", "probedefs") if method.__name__ == "do_midarest" else ("probedefs", "schedule")
                kw.update(_dealias_params(dict(zip(names, args))))
                args = ()
        try:
            r = method(self, *args, **kw)
        except InstError as e:
            _inst(e.inst)
            raise
        if isinstance(r, list):
            return [_with_inst(self, as_scamper(x)) for x in r]
        return _with_inst(self, as_scamper(r))

    call.__name__ = method.__name__
    call.__doc__ = method.__doc__
    return call


class ScamperCtrl(Ctrl):
    """scamper's ``ScamperCtrl`` over marionet (see the module docstring).

    Extra keyword arguments are marionet's ``Ctrl`` options (``ca``,
    ``cert``, ``key``, ``insecure``, ``local_vps``, ``window``,
    ``errors``, …); ``controller=`` names a controller directly.
    """

    def __init__(self, meta: bool = False, morecb: Callable[..., Any] | None = None,
                 eofcb: Callable[..., Any] | None = None, param: Any = None, unix: str | None = None,
                 remote: str | None = None, remote_dir: str | None = None, mux: str | None = None,
                 outfile: Any = None, **marionet: Any) -> None:
        if isinstance(outfile, File) and outfile.mode == "r":
            raise RuntimeError("outfile not opened in write mode")
        controller = marionet.pop("controller", None) or os.environ.get("MARIONET_CONTROLLER") or None
        super().__init__(None, morecb=_scamper_cb(morecb), eofcb=_scamper_cb(eofcb), param=param,
                         outfile=outfile, _start=False, **marionet)
        self.meta = meta
        self._explicit = {k for k in ("insecure", "ca", "cert", "key") if k in marionet}
        given = [(k, v) for k, v in (("remote_dir", remote_dir), ("mux", mux), ("unix", unix),
                                     ("remote", remote)) if v]
        if len(given) > 1:
            raise NotImplementedError("marionet's ScamperCtrl talks to one controller: give one of "
                                      f"unix=, remote=, remote_dir=, mux= (got {', '.join(k for k, _ in given)})")
        if given:
            kind, value = given[0]
            {"remote_dir": self.add_remote_dir, "mux": self.add_mux, "unix": self.add_unix,
             "remote": self.add_remote}[kind](value)
        elif controller is not None:
            self._use(controller, None)

    def __getattr__(self, name: str) -> Any:
        if name in _NOT_IN_MARIONET:
            raise NotImplementedError(f"ScamperCtrl.{name}: {_NOT_IN_MARIONET[name]} is not available in "
                                      "this marionet")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------ sources
    def _use(self, controller: str, vps: list[str] | None) -> bool:
        """Start on ``controller`` attaching ``vps`` (None: all); False if
        already started there."""
        if self._a is not None:
            if self._a.controller != controller and not (
                    controller.startswith("unix:") and self._a.controller == controller):
                raise NotImplementedError(f"this ScamperCtrl already uses controller {self._a.controller}; "
                                          "marionet's ScamperCtrl talks to one controller")
            return False
        if not controller.startswith("unix:") and "insecure" not in self._explicit \
                and self._kw.get("ca") is None:
            host, _ = parse_hostport(controller)
            self._kw["insecure"] = is_loopback(host)
        self._controller = controller
        self._kw["vps"] = vps
        self._start()
        return True

    def add_remote_dir(self, path: str) -> None:
        """Attach every live VP of the controller whose socket is in ``path``."""
        if not self._use(controller_in(path), None):
            self.add_vps(self.vps())

    def add_mux(self, path: str) -> None:
        """Use the controller at ``path``; attach VPs with ``add_vps``."""
        self._use(controller_in(path), [])

    def add_remote(self, path: str) -> Inst:
        """One VP's socket path, ``DIR/NAME`` (sc_remoted's ``NAME-ADDR:PORT``
        too): VP NAME of the controller whose socket is in DIR."""
        directory, sock = os.path.split(os.path.abspath(path).rstrip("/"))
        name = vp_name_of(sock)
        ctl = controller_in(directory)
        if self._use(ctl, []) or name not in {i.name for i in self.instances()}:
            known = {v.name for v in self.vps()}
            if name not in known:
                raise RuntimeError(f"could not connect to {path}: the controller in {directory} has no live VP "
                                   f"{name!r} (VPs: {', '.join(sorted(known)) or 'none'})")
            self.add_vps([name])
        return self.instance(name)

    def add_unix(self, path: str) -> Inst | None:
        """A controller's Unix socket; attaches all its VPs and returns the
        first instance (scamper: the one local scamper)."""
        if not self._use(controller_in(path), None):
            self.add_vps(self.vps())
        insts = self.instances()
        return insts[0] if insts else None

    def add_inet(self, port: int, addr: str | None = None) -> Inst | None:
        """A controller's client port on ``addr`` (default 127.0.0.1)."""
        host = addr or "127.0.0.1"
        ctl = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self._use(ctl, None):
            self.add_vps(self.vps())
        insts = self.instances()
        return insts[0] if insts else None

    # ------------------------------------------------------------ registry
    def vps(self, *args: Any, **kw: Any) -> list[ScamperVp]:  # type: ignore[override]
        """The controller's VPs as ``ScamperVp`` (tags as a set of strings)."""
        return [ScamperVp(v.to_dict()) for v in super().vps(*args, **kw)]

    def instances(self, **select: Any) -> list[Inst]:
        return [_inst(i) for i in super().instances(**select)]

    def instance(self, name: str) -> Inst:
        return _inst(super().instance(name))

    def add_vps(self, *args: Any, **kw: Any) -> list[Inst]:  # type: ignore[override]
        return [_inst(i) for i in super().add_vps(*args, **kw)]

    def exceptions(self) -> Iterator[InstError]:
        for e in super().exceptions():
            _inst(e.inst)
            yield e

    @property
    def morecb(self) -> Callable[..., Any] | None:
        cb = self._actrl.morecb
        return getattr(cb, "__wrapped__", cb)

    @morecb.setter
    def morecb(self, cb: Callable[..., Any] | None) -> None:
        self._actrl.morecb = _scamper_cb(cb)

    @property
    def eofcb(self) -> Callable[..., Any] | None:
        cb = self._actrl.eofcb
        return getattr(cb, "__wrapped__", cb)

    @eofcb.setter
    def eofcb(self, cb: Callable[..., Any] | None) -> None:
        self._actrl.eofcb = _scamper_cb(cb)

    # ------------------------------------------------------------ results
    def _poll_until(self, deadline: float | None, errors: str | None) -> Any:
        try:
            return _with_inst(self, as_scamper(super()._poll_until(deadline, errors)))
        except InstError as e:
            _inst(e.inst)
            raise

    def poll(self, timeout: float | _dt.timedelta | None = None, until: _dt.datetime | None = None,
             errors: str | None = None) -> Any:
        """The next result, or None at the deadline. As scamper's: with
        nothing outstanding it waits until ``until``/``timeout`` (a VP may
        ask for more work meanwhile) unless every instance is done; with
        no deadline it returns None at once instead of blocking."""
        from marionet.client.actrl import deadline_of

        deadline = deadline_of(timeout, until)
        while True:
            r = self._poll_until(deadline, errors)
            if r is not None:
                return r
            if deadline is None or self.is_done():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.taskc == 0:
                time.sleep(min(left, 0.05))


for _name in dir(Ctrl):
    if _name.startswith("do_"):
        setattr(ScamperCtrl, _name, _converting(getattr(Ctrl, _name)))
del _name


_LATER = {"ScamperTracelb": "Tracelb", "ScamperTracelbNode": "TracelbNode", "ScamperTracelbLink": "TracelbLink",
          "ScamperTracelbProbeset": "TracelbProbeset", "ScamperTracelbProbe": "TracelbProbe",
          "ScamperTracelbReply": "TracelbReply", "ScamperUdpprobe": "Udpprobe",
          "ScamperUdpprobeProbe": "UdpprobeProbe", "ScamperUdpprobeReply": "UdpprobeReply",
          "ScamperSniff": "Sniff", "ScamperSniffPkt": "SniffPkt", "ScamperTbit": "Tbit"}
_MISSING = {
    "ScamperNeighbourdisc": "neighbour discovery is not implemented in marionet",
    "ScamperSting": "sting is not implemented in marionet",
    "ScamperTracePmtud": "path MTU discovery results are not implemented in marionet",
    "ScamperMux": "use ScamperCtrl(mux=ADDR) and ctrl.vps()",
}


def __getattr__(name: str) -> Any:
    if name in _LATER:
        cls = getattr(_results, _LATER[name], None)
        if cls is not None:
            return cls
        raise NotImplementedError(f"marionet.compat.scamper.{name}: this marionet has no "
                                  f"{_LATER[name]} results yet")
    if name in _MISSING:
        raise NotImplementedError(f"marionet.compat.scamper.{name}: {_MISSING[name]}")
    raise AttributeError(f"module 'marionet.compat.scamper' has no attribute {name!r}")
