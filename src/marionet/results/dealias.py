"""Alias-resolution results (scamper's ``ScamperDealias``): probedefs, probes, replies.

Why this shape: every dealias method (ally, mercator, radargun, prefixscan,
midarest, midardisc) is a set of *probe definitions* (method, dst, ports …)
and the probes sent from them, each with its kernel transmit time, its own
IP-ID and the replies it drew (source, kernel receive time, the reply's
IP-ID). The verdict (``result``) is the method's; ``aliases()`` reads it the
way scamper's module does. MIDAR analysis (marionet.measure.midar) reads
``probe.dst``, ``probedefs[probe.probedef].method``, ``probe.tx_ns`` and each
reply's ``rx_ns`` and ``ipid``.

JSON is the shape of Debian scamper 20211212's ``sc_warts2json`` dealias
object (version "0.2"), checked against ``scamper -O json`` on a lab:
header keys per method, ``probedefs`` with ``udp_sport``/``tcp_dport``/
``icmp_id`` …, ``probes`` with ``probedef_id``, ``seq``, ``tx``, ``ipid`` and
``replies`` of ``src``, ``rx``, ``ttl``, ``ipid``, ``proto``, ICMP type/code
or ``tcp_flags``. Exact nanosecond times, the VP and the radargun/midar
extras live under ``"marionet"``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from .common import NS_PER_US, check_int, ns_to_datetime, ns_to_timeval
from .jsonfmt import EXT_KEY, _Fields, exact_ns_of_visible as _exact, register

__all__ = ["Dealias", "DealiasProbedef", "DealiasProbe", "DealiasReply", "DEALIAS_METHODS",
           "DEALIAS_VERSION", "ipid_inseq", "radargun_sets"]

DEALIAS_VERSION = "0.2"
DEALIAS_METHODS = ("mercator", "ally", "radargun", "prefixscan", "bump", "midarest", "midardisc")
RESULTS = ("none", "aliases", "not-aliases", "halted", "ipid-echo")
PROBE_METHODS = ("icmp-echo", "tcp-ack", "udp", "tcp-ack-sport", "udp-dport", "tcp-syn-sport")


def ipid_inseq(ids: list[int], fudge: int) -> bool:
    """Do the IP-IDs, in send order, come from one counter? Each step forward
    (mod 2¹⁶) by at least 1 and at most ``fudge`` (scamper's ally test;
    ``fudge`` 0: any forward step under half the space)."""
    lim = fudge if fudge > 0 else 0x7FFF
    return all(0 < (b - a) % 0x10000 <= lim for a, b in zip(ids, ids[1:]))


@dataclass(slots=True)
class DealiasReply:
    """One reply: who sent it, when the kernel got it, its IP-ID."""

    src: str
    rx_ns: int
    ipid: int | None = None
    ttl: int = 0
    proto: int = 1
    icmp_type: int | None = None
    icmp_code: int | None = None
    icmp_q_ttl: int | None = None
    tcp_flags: int | None = None
    size: int = 0

    @property
    def rx(self) -> _dt.datetime:
        return ns_to_datetime(self.rx_ns)

    def is_tcp(self) -> bool:
        return self.proto == 6

    def is_icmp(self) -> bool:
        return self.proto in (1, 58)


@dataclass(slots=True)
class DealiasProbe:
    """One probe sent from probedef ``probedef`` (an index) to ``dst``."""

    probedef: int
    dst: str
    seq: int
    tx_ns: int | None = None
    ipid: int | None = None
    replies: list[DealiasReply] = field(default_factory=list)
    tx_ts_source: str | None = None
    error: str | None = None

    @property
    def tx(self) -> _dt.datetime | None:
        return None if self.tx_ns is None else ns_to_datetime(self.tx_ns)

    @property
    def reply_count(self) -> int:
        return len(self.replies)

    def reply(self, i: int = 0) -> DealiasReply:
        return self.replies[i]


@dataclass(slots=True)
class DealiasProbedef:
    """How to probe: scamper's probedef (method, src, dst, ttl, size, ports, ICMP id)."""

    id: int
    method: str
    dst: str | None
    src: str | None = None
    ttl: int = 255
    size: int = 0
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None
    icmp_sum: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("method", "dst", "src", "ttl", "size", "sport", "dport",
                                              "icmp_id", "icmp_sum") if getattr(self, k) is not None}


@dataclass
class Dealias:
    """An alias-resolution measurement (scamper's ``ScamperDealias``)."""

    method: str
    start_ns: int = 0
    probedefs: list[DealiasProbedef] = field(default_factory=list)
    probes: list[DealiasProbe] = field(default_factory=list)
    result: str = "none"
    userid: int = 0
    attempts: int = 0
    fudge: int = 0
    wait_probe_ns: int = 0
    wait_round_ns: int = 0
    wait_timeout_ns: int = 0
    prefix: tuple[str, str, str | None] | None = None  #: prefixscan: (a, b/len, ab/len or None)
    replyc: int = 0
    alias_sets: list[list[str]] | None = None  #: radargun: addresses grouped by shared counter
    startat_ns: int | None = None  #: midardisc: the schedule's origin (endpoint clock)
    schedule: list[tuple[int, int, int]] | None = None  #: midardisc rounds (offset ns, begin, end)
    error: str | None = None
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    type_name = "dealias"

    def __post_init__(self) -> None:
        if self.method not in DEALIAS_METHODS:
            raise ValueError(f"dealias method must be one of {', '.join(DEALIAS_METHODS)}, got {self.method!r}")
        if self.result not in RESULTS:
            raise ValueError(f"dealias result must be one of {', '.join(RESULTS)}, got {self.result!r}")
        check_int("start_ns", self.start_ns, minimum=0)

    # -- scamper's views -----------------------------------------------------
    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def probedef_count(self) -> int:
        return len(self.probedefs)

    def probedef(self, i: int) -> DealiasProbedef:
        return self.probedefs[i]

    @property
    def probe_count(self) -> int:
        return len(self.probes)

    def probe(self, i: int) -> DealiasProbe:
        return self.probes[i]

    def is_ally(self) -> bool:
        return self.method == "ally"

    def is_mercator(self) -> bool:
        return self.method == "mercator"

    def is_radargun(self) -> bool:
        return self.method == "radargun"

    def is_prefixscan(self) -> bool:
        return self.method == "prefixscan"

    def is_midarest(self) -> bool:
        return self.method == "midarest"

    def is_midardisc(self) -> bool:
        return self.method == "midardisc"

    def aliases(self) -> list[tuple[str, ...]]:
        """What the method found, as scamper reports it: ally — the probed
        pair; mercator — (probed, replying) address; prefixscan — (a, the
        alias found in b's prefix); radargun — each set of addresses whose
        IP-IDs form one counter. Empty when nothing was found."""
        if self.method == "radargun":
            return [tuple(s) for s in (self.alias_sets or []) if len(s) > 1]
        if self.result != "aliases":
            return []
        if self.method == "ally" and len(self.probedefs) >= 2:
            return [(str(self.probedefs[0].dst), str(self.probedefs[1].dst))]
        if self.method == "mercator" and self.probes:
            for p in self.probes:
                for r in p.replies:
                    if r.src != p.dst:
                        return [(p.dst, r.src)]
        if self.method == "prefixscan" and self.prefix and self.prefix[2]:
            return [(self.prefix[0], self.prefix[2].split("/")[0])]
        return []

    def has_aliases(self) -> bool:
        return bool(self.aliases())

    # -- output --------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return dealias_to_json(self)

    def to_text(self) -> str:
        found = "; ".join(" = ".join(a) for a in self.aliases()) or "no aliases"
        return f"dealias {self.method}: {self.result}, {self.probe_count} probes, {found}"


def radargun_sets(probes: list[DealiasProbe], fudge: int = 0) -> list[list[str]]:
    """Addresses grouped by shared IP-ID counter: two addresses share one if
    their replies' IP-IDs, merged in transmit order, are in sequence
    (``ipid_inseq``: every step forward, within ``fudge``; 0: half the
    space). Addresses with fewer than two replies, or whose own IDs are not
    in sequence (random, zero), are left on their own."""
    samples: dict[str, list[tuple[int, int]]] = {}
    order: list[str] = []
    for p in probes:
        if p.dst not in samples:
            samples[p.dst] = []
            order.append(p.dst)
        if p.tx_ns is not None and p.replies and p.replies[0].ipid is not None:
            samples[p.dst].append((p.tx_ns, p.replies[0].ipid))
    ok = [a for a in order if len(samples[a]) >= 2 and ipid_inseq([i for _, i in sorted(samples[a])], fudge)]
    parent = {a: a for a in order}

    def find(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            merged = sorted(samples[a] + samples[b])
            if ipid_inseq([v for _, v in merged], fudge):
                parent[find(b)] = find(a)
    groups: dict[str, list[str]] = {}
    for a in order:
        groups.setdefault(find(a), []).append(a)
    return list(groups.values())


# ---------------------------------------------------------------------------
# JSON (scamper 20211212's sc_warts2json shape)
# ---------------------------------------------------------------------------

def _ms(ns: int) -> int:
    return ns // 1_000_000


def _probedef_json(pd: DealiasProbedef) -> dict[str, Any]:
    d: dict[str, Any] = {"id": pd.id}
    if pd.src is not None:
        d["src"] = pd.src
    if pd.dst is not None:
        d["dst"] = pd.dst
    d.update(ttl=pd.ttl, size=pd.size, method=pd.method)
    if pd.method == "icmp-echo":
        d.update(icmp_id=pd.icmp_id or 0, icmp_csum=pd.icmp_sum or 0)
    elif pd.method.startswith("udp"):
        d.update(udp_sport=pd.sport or 0, udp_dport=pd.dport or 0)
    else:
        # SYN for scamper's tcp-syn-sport (read from scamper's files), ACK for the tcp-ack methods.
        d.update(tcp_sport=pd.sport or 0, tcp_dport=pd.dport or 0,
                 tcp_flags=0x02 if pd.method == "tcp-syn-sport" else 0x10)
    return d


def _reply_json(r: DealiasReply) -> dict[str, Any]:
    d: dict[str, Any] = {"src": r.src, "rx": ns_to_timeval(r.rx_ns), "ttl": r.ttl}
    if r.ipid is not None:
        d["ipid"] = r.ipid
    d["proto"] = r.proto
    if r.proto == 6:
        d["tcp_flags"] = r.tcp_flags or 0
    else:
        d["icmp_type"] = r.icmp_type or 0
        d["icmp_code"] = r.icmp_code or 0
        if r.icmp_q_ttl is not None:
            d["icmp_q_ttl"] = r.icmp_q_ttl
    ext: dict[str, Any] = {}
    if r.rx_ns % NS_PER_US:
        ext["rx_ns"] = r.rx_ns
    if r.size:
        ext["size"] = r.size
    if ext:
        d[EXT_KEY] = ext
    return d


def _probe_json(p: DealiasProbe) -> dict[str, Any]:
    d: dict[str, Any] = {"probedef_id": p.probedef, "seq": p.seq}
    if p.tx_ns is not None:
        d["tx"] = ns_to_timeval(p.tx_ns)
    if p.ipid is not None:
        d["ipid"] = p.ipid
    d["replies"] = [_reply_json(r) for r in p.replies]
    ext: dict[str, Any] = {}
    if p.tx_ns is not None and p.tx_ns % NS_PER_US:
        ext["tx_ns"] = p.tx_ns
    if p.tx_ts_source:
        ext["tx_ts_source"] = p.tx_ts_source
    if p.error:
        ext["error"] = p.error
    if ext:
        d[EXT_KEY] = ext
    return d


def dealias_to_json(x: Dealias) -> dict[str, Any]:
    """A ``Dealias`` → scamper's dealias JSON object."""
    d: dict[str, Any] = {"type": "dealias", "version": DEALIAS_VERSION, "method": x.method,
                         "userid": x.userid, "result": x.result, "start": ns_to_timeval(x.start_ns)}
    m = x.method
    if m == "mercator":
        d.update(attempts=x.attempts, wait_timeout=x.wait_timeout_ns // 10**9)
    elif m == "ally":
        d.update(wait_probe=_ms(x.wait_probe_ns), wait_timeout=x.wait_timeout_ns // 10**9,
                 attempts=x.attempts, fudge=x.fudge)
    elif m == "prefixscan":
        a, b, ab = x.prefix or ("", "", None)
        d.update(a=a, b=b)
        if ab:
            d["ab"] = ab
        d.update(attempts=x.attempts, replyc=x.replyc, fudge=x.fudge, wait_probe=_ms(x.wait_probe_ns),
                 wait_timeout=x.wait_timeout_ns // 10**9)
    else:  # radargun, midarest, midardisc
        d.update(attempts=x.attempts, wait_probe=_ms(x.wait_probe_ns), wait_round=_ms(x.wait_round_ns),
                 wait_timeout=x.wait_timeout_ns // 10**9)
    d["probedefs"] = [_probedef_json(pd) for pd in x.probedefs]
    d["probes"] = [_probe_json(p) for p in x.probes]
    ext: dict[str, Any] = {"wait_probe_ns": x.wait_probe_ns, "wait_round_ns": x.wait_round_ns,
                           "wait_timeout_ns": x.wait_timeout_ns}
    if x.start_ns % NS_PER_US:
        ext["start_ns"] = x.start_ns
    if x.alias_sets is not None:
        ext["alias_sets"] = [list(s) for s in x.alias_sets]
    if x.startat_ns is not None:
        ext["startat_ns"] = x.startat_ns
    if x.schedule is not None:
        ext["schedule"] = [list(r) for r in x.schedule]
    if x.error:
        ext["error"] = x.error
    if x.vp:
        ext["vp"] = x.vp
    if x.extra:
        ext["extra"] = dict(x.extra)
    d[EXT_KEY] = ext
    return d



def _opt_int(f: _Fields, key: str) -> int | None:
    return f.int(key)


def _probedef_from(raw: Any, where: str) -> DealiasProbedef:
    f = _Fields(raw, where)
    method = f.str("method", True)
    if method not in PROBE_METHODS:
        raise f.fail("method", f"is not a dealias probe method: {method!r}")
    udp = method.startswith("udp")
    icmp = method == "icmp-echo"
    return DealiasProbedef(
        id=f.int("id", default=0), method=method, dst=f.str("dst"), src=f.str("src"),
        ttl=f.int("ttl", default=255), size=f.int("size", default=0),
        sport=None if icmp else f.int("udp_sport" if udp else "tcp_sport"),
        dport=None if icmp else f.int("udp_dport" if udp else "tcp_dport"),
        icmp_id=f.int("icmp_id") if icmp else None, icmp_sum=f.int("icmp_csum") if icmp else None)


def _reply_from(raw: Any, where: str) -> DealiasReply:
    f = _Fields(raw, where)
    ext = f.ext()
    proto = f.int("proto", default=1)
    return DealiasReply(src=f.str("src", True), rx_ns=_exact(ext, "rx_ns", f.timeval("rx", True)),
                        ipid=f.int("ipid"), ttl=f.int("ttl", default=0), proto=proto,
                        icmp_type=None if proto == 6 else f.int("icmp_type"),
                        icmp_code=None if proto == 6 else f.int("icmp_code"),
                        icmp_q_ttl=f.int("icmp_q_ttl"), tcp_flags=f.int("tcp_flags") if proto == 6 else None,
                        size=ext.get("size") if isinstance(ext.get("size"), int) else 0)


def _probe_from(raw: Any, where: str, defs: list[DealiasProbedef]) -> DealiasProbe:
    f = _Fields(raw, where)
    ext = f.ext()
    pid = f.int("probedef_id", True)
    if not 0 <= pid < len(defs):
        raise f.fail("probedef_id", f"{pid} names no probedef (there are {len(defs)})")
    p = DealiasProbe(probedef=pid, dst=str(defs[pid].dst), seq=f.int("seq", default=0),
                     tx_ns=_exact(ext, "tx_ns", f.timeval("tx")), ipid=f.int("ipid"),
                     tx_ts_source=ext.get("tx_ts_source") if isinstance(ext.get("tx_ts_source"), str) else None,
                     error=ext.get("error") if isinstance(ext.get("error"), str) else None)
    p.replies = [_reply_from(r, f"{where}.replies[{i}]") for i, r in enumerate(f.list("replies"))]
    return p


def _ns(ext: dict[str, Any], key: str, fallback: int) -> int:
    v = ext.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else fallback


def dealias_from_json(d: dict[str, Any]) -> Dealias:
    f = _Fields(d, "dealias")
    ext = f.ext()
    method = f.str("method", True)
    result = f.str("result") or "none"
    if method not in DEALIAS_METHODS:
        raise f.fail("method", f"is not a dealias method: {method!r}")
    if result not in RESULTS:
        raise f.fail("result", f"is not a dealias result: {result!r}")
    defs = [_probedef_from(p, f"dealias.probedefs[{i}]") for i, p in enumerate(f.list("probedefs"))]
    wp = (f.int("wait_probe") or 0) * 1_000_000
    wr = (f.int("wait_round") or 0) * 1_000_000
    wt = (f.int("wait_timeout") or 0) * 10**9
    prefix = None
    if method == "prefixscan":
        prefix = (f.str("a") or "", f.str("b") or "", f.str("ab"))
    sched = ext.get("schedule")
    x = Dealias(method=method, start_ns=_exact(ext, "start_ns", f.timeval("start")) or 0, probedefs=defs,
                result=result, userid=f.int("userid", default=0), attempts=f.int("attempts", default=0),
                fudge=f.int("fudge", default=0), wait_probe_ns=_ns(ext, "wait_probe_ns", wp),
                wait_round_ns=_ns(ext, "wait_round_ns", wr), wait_timeout_ns=_ns(ext, "wait_timeout_ns", wt),
                prefix=prefix, replyc=f.int("replyc", default=0),
                alias_sets=[list(map(str, s)) for s in ext["alias_sets"]] if isinstance(ext.get("alias_sets"), list)
                else None,
                startat_ns=ext.get("startat_ns") if isinstance(ext.get("startat_ns"), int) else None,
                schedule=[tuple(int(v) for v in r) for r in sched] if isinstance(sched, list) else None,
                error=ext.get("error") if isinstance(ext.get("error"), str) else None,
                vp=ext.get("vp") if isinstance(ext.get("vp"), str) else None,
                extra=dict(ext["extra"]) if isinstance(ext.get("extra"), dict) else {})
    x.probes = [_probe_from(p, f"dealias.probes[{i}]", defs) for i, p in enumerate(f.list("probes"))]
    return x


register("dealias", Dealias, dealias_to_json, dealias_from_json)


def _is_v6(a: str) -> bool:
    return ipaddress.ip_address(a).version == 6
