"""DNS results (scamper's "host" record): one ``DnsResult`` per lookup.

Why this shape: scamper's ``do_dns`` returns a ``ScamperHost`` holding the
question, the host-level options (flags, wait, retries, stop reason) and one
*query* per packet it sent (a retry is a new query with a new id).  Analysis
code asks the result for the answer (``rcode``, ``rtt``, ``ans_addrs()``,
``ans_nses()``, …), which comes from the query that drew the reply, so we
keep every query (the failed attempts are data too: how many timed out, which
one was truncated before the TCP retry) and project the answering one.

Records (``DnsRR``) keep the typed views scamper offers — ``addr`` for A and
AAAA, ``ns``/``cname``/``ptr`` names, ``mx`` (preference, exchange), ``soa``,
``txt`` strings — and the presentation text (``rdata``) for any other type,
so nothing in a reply is lost even when scamper would have no field for it.

JSON follows scamper's ``scamper_host_json.c`` (version "0.1"): the host
header, then ``queries`` with ``id``, section counts, ``tx``/``rx``,
``rcode`` as scamper's text ("NoError", "NXDomain", …), header ``flags``
(CD AD Z RA RD TC AA), and ``an``/``ns``/``ar`` record lists.  marionet-only
data (exact ns times, timestamp sources, TCP use, the raw reply, errors, the
malformed-datagram count) sits under the ``"marionet"`` key as elsewhere.
Debian's scamper 20211212 has no JSON writer for host records, so the newer
scamper's layout is the reference.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Iterator

from .common import (Addr, StopReason, TimedReply, NS_PER_US, check_int, ns_to_datetime,
                     ns_to_timedelta, ns_to_timeval, to_addr)
from .jsonfmt import EXT_KEY, _exact, _Fields, _source, register

__all__ = ["DnsResult", "DnsQuery", "DnsRR", "DnsMX", "DnsSOA", "DnsStop",
           "RCODE_NAMES", "rcode_text", "rcode_value", "rrtype_value", "HOST_VERSION"]

HOST_VERSION = "0.1"

#: scamper's rcode names (scamper_host_rcode_tostr), index = rcode.
RCODE_NAMES = ("NoError", "FormErr", "ServFail", "NXDomain", "NotImp", "Refused",
               "YXDomain", "YXRRSet", "NXRRSet", "NotAuth", "NotZone", "DSOTYPENI",
               None, None, None, None, "BADVERS", "BADKEY", "BADTIME", "BADMODE",
               "BADNAME", "BADALG", "BADTRUNC", "BADCOOKIE")

#: DNS header flag names in scamper's order (bit 0 = CD … bit 6 = AA), as
#: packed from the header: ``((byte2 & 0x07) << 4) | (byte3 >> 4)``.
_FLAG_BITS = (("CD", 0x0010), ("AD", 0x0020), ("Z", 0x0040), ("RA", 0x0080),
              ("RD", 0x0100), ("TC", 0x0200), ("AA", 0x0400))
_FLAG_NAMES = tuple(n for n, _ in _FLAG_BITS)


def rcode_text(rcode: int) -> str:
    """scamper's name for ``rcode`` (its number as text when it has none)."""
    if 0 <= rcode < len(RCODE_NAMES) and RCODE_NAMES[rcode] is not None:
        return RCODE_NAMES[rcode]  # type: ignore[return-value]
    return str(rcode)


#: 4 bits in the header and 8 more in EDNS (RFC 6891).
_MAX_RCODE = 0xFFF


def rcode_value(text: str | int) -> int:
    """Inverse of ``rcode_text``; accepts any case and plain numbers
    (0 to ``_MAX_RCODE``: what ``rcode_text`` writes must read back)."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif not isinstance(text, str):
        raise ValueError(f"rcode must be a name or a number, got {text!r}")
    else:
        for i, n in enumerate(RCODE_NAMES):
            if n is not None and n.lower() == text.lower():
                return i
        if not text.isdigit():
            raise ValueError(f"unknown rcode {text!r}")
        value = int(text)
    if not 0 <= value <= _MAX_RCODE:
        raise ValueError(f"rcode {text!r} is not between 0 and {_MAX_RCODE}")
    return value


def header_flag_names(flags: int) -> list[str]:
    """The DNS header's flag bits (the 16-bit flags word) as scamper's names."""
    return [n for n, bit in _FLAG_BITS if flags & bit]


class DnsStop(StopReason):
    """Why a DNS measurement stopped (scamper's host stop reasons)."""
    NONE = "none"
    DONE = "done"
    TIMEOUT = "timeout"
    HALTED = "halted"
    ERROR = "error"


class DnsTxt(list):  # type: ignore[type-arg]
    """A TXT record's strings (a list), with scamper's ``strc`` and ``str(i)``."""

    __slots__ = ()

    @property
    def strc(self) -> int:
        return len(self)

    def str(self, i: int) -> str | None:
        return self[i] if isinstance(i, int) and 0 <= i < len(self) else None


class DnsRRs(list):  # type: ignore[type-arg]
    """A query's section (a list of records), also callable as scamper's
    ``query.an(i)``: record ``i`` or None."""

    __slots__ = ()

    def __call__(self, i: int) -> "DnsRR | None":
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"record index must be an int, got {i!r}")
        return self[i] if 0 <= i < len(self) else None


@dataclass(frozen=True, slots=True)
class DnsMX:
    """An MX record's data (scamper: preference, exchange)."""
    preference: int
    exchange: str

    @property
    def pref(self) -> int:
        return self.preference

    @property
    def exch(self) -> str:
        return self.exchange


@dataclass(frozen=True, slots=True)
class DnsSOA:
    mname: str
    rname: str
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int


_STR_TYPES = {"NS": "ns", "CNAME": "cname", "PTR": "ptr"}  # scamper's JSON key per type


@dataclass(slots=True, kw_only=True)
class DnsRR:
    """One resource record.  ``name`` and names inside the data are written
    without the final dot, as scamper prints them."""

    name: str
    rclass: str = "IN"
    rtype: str = "A"
    ttl: int = 0
    address: Addr | None = None
    target: str | None = None          # NS / CNAME / PTR
    mx: DnsMX | None = None
    soa: DnsSOA | None = None
    txt: list[str] | None = None
    rdata: str | None = None           # presentation text, for every type
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"DnsRR.name must be a string, got {self.name!r}")
        check_int("ttl", self.ttl, minimum=0)
        self.address = to_addr(self.address)
        self.rclass = str(self.rclass).upper()
        self.rtype = str(self.rtype).upper()
        if self.txt is not None:
            self.txt = DnsTxt(self.txt)

    # scamper-style views -------------------------------------------------
    @property
    def addr(self) -> Addr | None:
        return self.address

    @property
    def ns(self) -> str | None:
        return self.target if self.rtype == "NS" else None

    @property
    def cname(self) -> str | None:
        return self.target if self.rtype == "CNAME" else None

    @property
    def ptr(self) -> str | None:
        return self.target if self.rtype == "PTR" else None

    def __str__(self) -> str:
        return f"{self.name} {self.ttl} {self.rclass} {self.rtype} {self.rdata or ''}".rstrip()


# ---------------------------------------------------------------------------
# Queries and the result
# ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class DnsQuery(TimedReply):
    """One query packet sent and (maybe) its reply.

    ``rcode``/``flags``/records are set only when a reply came; ``error``
    says why an attempt failed otherwise (ICMP unreachable, TCP refused,
    malformed TCP reply …); a plain timeout has neither.
    """

    id: int
    tx_ns: int | None = None
    rx_ns: int | None = None
    rcode: int | None = None
    flags: list[str] = field(default_factory=list)
    an: list[DnsRR] = field(default_factory=list)
    ns: list[DnsRR] = field(default_factory=list)
    ar: list[DnsRR] = field(default_factory=list)
    tcp: bool = False
    wire: bytes | None = None
    error: str | None = None
    tx_ts_source: str | None = None
    rx_ts_source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("id", self.id, minimum=0)
        for name in ("tx_ns", "rx_ns", "rcode"):
            check_int(name, getattr(self, name), optional=True)
        self.an, self.ns, self.ar = DnsRRs(self.an), DnsRRs(self.ns), DnsRRs(self.ar)

    @property
    def answered(self) -> bool:
        return self.rcode is not None

    @property
    def rtt_ns(self) -> int | None:
        if self.tx_ns is None or self.rx_ns is None:
            return None
        return self.rx_ns - self.tx_ns

    @property
    def rtt(self) -> _dt.timedelta | None:  # type: ignore[override]  # None: no reply
        v = self.rtt_ns
        return None if v is None else ns_to_timedelta(v)

    @property
    def ancount(self) -> int:
        return len(self.an)

    @property
    def nscount(self) -> int:
        return len(self.ns)

    @property
    def arcount(self) -> int:
        return len(self.ar)

    # -- EDNS (RFC 6891), read from the reply's OPT record ------------------
    def _opt(self) -> Any:
        """dnspython's view of the reply's OPT record, or None."""
        if self.wire is None:
            return None
        import dns.message

        try:
            msg = dns.message.from_wire(self.wire, ignore_trailing=True)
        except Exception:  # noqa: BLE001 - a bad reply simply has no EDNS view
            return None
        return msg if msg.edns >= 0 else None

    @property
    def edns(self) -> bool:
        return self._opt() is not None

    @property
    def edns_version(self) -> int | None:
        m = self._opt()
        return None if m is None else m.edns

    @property
    def edns_udp_size(self) -> int | None:
        m = self._opt()
        return None if m is None else m.payload

    @property
    def edns_do(self) -> bool | None:
        m = self._opt()
        return None if m is None else bool(m.ednsflags & 0x8000)

    @property
    def edns_nsid(self) -> str | None:
        m = self._opt()
        if m is None:
            return None
        for o in m.options:
            if int(o.otype) == 3:
                data = getattr(o, "nsid", None) or getattr(o, "data", b"")
                return data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        return None


@dataclass(slots=True, kw_only=True)
class DnsResult:
    """A DNS lookup of ``qname`` at ``dst`` (the server) and its queries.

    The answer accessors use ``reply``: the query that drew the (last)
    reply.  With no reply they return empty lists and ``rcode``/``rtt`` are
    None; ``stop_reason`` then says ``timeout`` (or ``error``/``halted``)
    and ``error`` carries the reason for an error.
    """

    dst: Addr
    qname: str
    start_ns: int
    src: Addr | None = None
    port: int = 53
    qtype: str = "A"
    qclass: str = "IN"
    userid: int = 0
    rd: bool = True
    tcp: bool = False
    nsid: bool = False
    ecs: str | None = None
    wait_timeout: _dt.timedelta = _dt.timedelta(seconds=5)
    attempts: int = 2
    queries: list[DnsQuery] = field(default_factory=list)
    stop_reason: DnsStop | str | None = None
    malformed: int = 0
    error: str | None = None
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inst: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        dst = to_addr(self.dst)
        if dst is None:
            raise ValueError("DnsResult.dst (the server) is required")
        self.dst = dst
        self.src = to_addr(self.src)
        check_int("start_ns", self.start_ns)
        check_int("attempts", self.attempts, minimum=1)
        check_int("malformed", self.malformed, minimum=0)
        if isinstance(self.wait_timeout, (int, float)) and not isinstance(self.wait_timeout, bool):
            self.wait_timeout = _dt.timedelta(seconds=self.wait_timeout)
        if not isinstance(self.wait_timeout, _dt.timedelta):
            raise TypeError(f"wait_timeout must be a timedelta, got {self.wait_timeout!r}")
        self.qtype = str(self.qtype).upper()
        self.qclass = str(self.qclass).upper()
        self.stop_reason = DnsStop.coerce(self.stop_reason)

    # -- scamper's names --------------------------------------------------
    @property
    def server(self) -> Addr:
        return self.dst

    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def retries(self) -> int:
        return self.attempts - 1

    @property
    def qcount(self) -> int:
        """Queries sent (attempts used, plus a TCP retry after truncation)."""
        return len(self.queries)

    @property
    def attempts_used(self) -> int:
        return len(self.queries)

    @property
    def reply(self) -> DnsQuery | None:
        """The query whose reply is the result (the last one answered)."""
        for q in reversed(self.queries):
            if q.answered:
                return q
        return None

    @property
    def rcode(self) -> int | None:
        r = self.reply
        return None if r is None else r.rcode

    @property
    def rcode_str(self) -> str | None:
        rc = self.rcode
        return None if rc is None else rcode_text(rc)

    @property
    def flags(self) -> list[str]:
        r = self.reply
        return [] if r is None else list(r.flags)

    @property
    def rtt(self) -> _dt.timedelta | None:
        r = self.reply
        return None if r is None else r.rtt

    @property
    def rtt_ns(self) -> int | None:
        r = self.reply
        return None if r is None else r.rtt_ns

    @property
    def tx(self) -> _dt.datetime | None:
        r = self.reply
        return None if r is None else r.tx

    @property
    def rx(self) -> _dt.datetime | None:
        r = self.reply
        return None if r is None else r.rx

    @property
    def wire(self) -> bytes | None:
        """The raw reply (DNS message bytes, without TCP's length prefix)."""
        r = self.reply
        return None if r is None else r.wire

    @property
    def ancount(self) -> int:
        return len(self.ans())

    @property
    def nscount(self) -> int:
        return len(self.nss())

    @property
    def arcount(self) -> int:
        return len(self.ars())

    def ans(self, rrtypes: Any = None) -> list[DnsRR]:
        """Answer records; ``rrtypes`` (e.g. ``["A", "AAAA"]``) keeps those
        types only, as scamper's ``ans(rrtypes)``."""
        r = self.reply
        return [] if r is None else _filtered(r.an, rrtypes)

    def nss(self, rrtypes: Any = None) -> list[DnsRR]:
        r = self.reply
        return [] if r is None else _filtered(r.ns, rrtypes)

    def ars(self, rrtypes: Any = None) -> list[DnsRR]:
        r = self.reply
        return [] if r is None else _filtered(r.ar, rrtypes)

    def ans_addrs(self) -> list[Addr]:
        """Addresses in A/AAAA answers, in answer order."""
        return [rr.address for rr in self.ans() if rr.address is not None]

    def ans_nses(self) -> list[str]:
        return [rr.target for rr in self.ans() if rr.rtype == "NS" and rr.target is not None]

    def ans_ptrs(self) -> list[str]:
        return [rr.target for rr in self.ans() if rr.rtype == "PTR" and rr.target is not None]

    def ans_cnames(self) -> list[str]:
        return [rr.target for rr in self.ans() if rr.rtype == "CNAME" and rr.target is not None]

    def ans_mxes(self) -> list[DnsMX]:
        return [rr.mx for rr in self.ans() if rr.mx is not None]

    def ans_txts(self) -> list[list[str]]:
        """Each TXT answer's character-strings."""
        return [list(rr.txt) for rr in self.ans() if rr.txt is not None]

    def ans_soas(self) -> list[DnsSOA]:
        return [rr.soa for rr in self.ans() if rr.soa is not None]

    def __iter__(self) -> Iterator[DnsRR]:
        return iter(self.ans())

    # -- scamper module names (marionet.compat.scamper) --------------------
    def an(self, i: int) -> DnsRR | None:
        """Answer record ``i`` (from 0) of the reply, or None."""
        return _nth(self.ans(), i)

    def ns(self, i: int) -> DnsRR | None:
        """Authority record ``i`` (from 0) of the reply, or None."""
        return _nth(self.nss(), i)

    def ar(self, i: int) -> DnsRR | None:
        """Additional record ``i`` (from 0) of the reply, or None."""
        return _nth(self.ars(), i)

    @property
    def qtype_num(self) -> int:
        return rrtype_value(self.qtype)

    @property
    def qclass_num(self) -> int:
        return {"IN": 1, "CH": 3, "HS": 4}.get(self.qclass, 1)

    @property
    def edns(self) -> bool:
        """The reply carried an EDNS OPT record."""
        r = self.reply
        return r is not None and r.edns

    @property
    def edns_version(self) -> int | None:
        r = self.reply
        return None if r is None else r.edns_version

    @property
    def edns_udp_size(self) -> int | None:
        r = self.reply
        return None if r is None else r.edns_udp_size

    @property
    def edns_do(self) -> bool | None:
        r = self.reply
        return None if r is None else r.edns_do

    @property
    def edns_nsid(self) -> str | None:
        """The server's NSID option (RFC 5001) text, if it sent one
        (``nsid`` is the request flag)."""
        r = self.reply
        return None if r is None else r.edns_nsid

    @property
    def stop_reason_str(self) -> str:
        return str(self.stop_reason if self.stop_reason is not None else DnsStop.NONE)

    def is_stop_done(self) -> bool:
        return self.stop_reason == DnsStop.DONE

    def is_stop_timeout(self) -> bool:
        return self.stop_reason == DnsStop.TIMEOUT

    def is_stop_error(self) -> bool:
        return self.stop_reason == DnsStop.ERROR

    def is_stop_halted(self) -> bool:
        return self.stop_reason == DnsStop.HALTED

    type_name = "host"  # scamper's name for DNS records (warts and JSON)

    def to_json(self) -> str:
        """scamper's JSON line for this lookup."""
        from .jsonline import json_line
        return json_line(self)

    def to_text(self) -> str:
        """Text in the style of the classic tool (``marionet.results.text``)."""
        from .text import dns_text

        return dns_text(self)


#: type names scamper's ``ans(rrtypes)`` filter knows, and a few more.
_RRTYPE_NUMS = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
                "AAAA": 28, "SRV": 33, "NAPTR": 35, "OPT": 41, "DS": 43, "SSHFP": 44,
                "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "NSEC3": 50, "TLSA": 52,
                "SVCB": 64, "HTTPS": 65, "CAA": 257, "ANY": 255}


def rrtype_value(name: str) -> int:
    """A record type's number ("AAAA" → 28; "TYPE65534" → 65534)."""
    up = str(name).upper()
    if up in _RRTYPE_NUMS:
        return _RRTYPE_NUMS[up]
    if up.startswith("TYPE") and up[4:].isdigit():
        return int(up[4:])
    import dns.rdatatype

    try:
        return int(dns.rdatatype.from_text(up))
    except Exception:  # noqa: BLE001 - dnspython raises several kinds
        raise ValueError(f"unknown DNS record type {name!r}") from None


def _filtered(rrs: list[DnsRR], rrtypes: Any) -> list[DnsRR]:
    if rrtypes is None:
        return list(rrs)
    if isinstance(rrtypes, str):
        rrtypes = [rrtypes]
    want: set[str] = set()
    for t in rrtypes:
        if not isinstance(t, str):
            raise ValueError(f"expected str in rrtypes, got {t!r}")
        rrtype_value(t)  # unknown names are an error, not an empty result
        want.add(t.upper())
    return [rr for rr in rrs if rr.rtype in want]


def _nth(rrs: list[DnsRR], i: int) -> DnsRR | None:
    if isinstance(i, bool) or not isinstance(i, int):
        raise TypeError(f"record index must be an int, got {i!r}")
    return rrs[i] if 0 <= i < len(rrs) else None


# ---------------------------------------------------------------------------
# JSON (scamper's "host" records)
# ---------------------------------------------------------------------------

_HOST_KEYS = frozenset({"type", "version", "src", "dst", "userid", "start", "flags", "wait",
                        "retries", "stop", "qname", "qclass", "qtype", "qcount", "ecs",
                        "queries", EXT_KEY})
_QUERY_KEYS = frozenset({"id", "ancount", "nscount", "arcount", "tx", "rx", "rcode", "flags",
                         "an", "ns", "ar", EXT_KEY})
_RR_KEYS = frozenset({"class", "type", "ttl", "name", "address", "ns", "cname", "ptr",
                      "preference", "exchange", "mname", "rname", "serial", "refresh",
                      "retry", "expire", "minimum", "strc", "strs", EXT_KEY})


def _rr_to_json(rr: DnsRR) -> dict[str, Any]:
    d: dict[str, Any] = {"class": rr.rclass, "type": rr.rtype, "ttl": rr.ttl, "name": rr.name}
    ext: dict[str, Any] = {}
    if rr.address is not None:
        d["address"] = str(rr.address)
    elif rr.target is not None and rr.rtype in _STR_TYPES:
        d[_STR_TYPES[rr.rtype]] = rr.target
    elif rr.mx is not None:
        d["preference"] = rr.mx.preference
        d["exchange"] = rr.mx.exchange
    elif rr.soa is not None:
        s = rr.soa
        d.update(mname=s.mname, rname=s.rname, serial=s.serial, refresh=s.refresh,
                 retry=s.retry, expire=s.expire, minimum=s.minimum)
    elif rr.txt is not None:
        d["strc"] = len(rr.txt)
        d["strs"] = list(rr.txt)
    elif rr.rdata is not None:
        ext["rdata"] = rr.rdata  # scamper has no field for this type
    for k, v in rr.extra.items():
        if k not in _RR_KEYS and k not in d:
            d[k] = v
    if ext:
        d[EXT_KEY] = ext
    return d


def _query_to_json(q: DnsQuery) -> dict[str, Any]:
    d: dict[str, Any] = {"id": q.id, "ancount": q.ancount, "nscount": q.nscount,
                         "arcount": q.arcount}
    if q.tx_ns is not None:
        d["tx"] = ns_to_timeval(q.tx_ns)
    if q.rx_ns is not None and q.rcode is not None:
        d["rx"] = ns_to_timeval(q.rx_ns)
        d["rcode"] = rcode_text(q.rcode)
        d["flags"] = list(q.flags)
    if q.an:
        d["an"] = [_rr_to_json(r) for r in q.an]
    if q.ns:
        d["ns"] = [_rr_to_json(r) for r in q.ns]
    if q.ar:
        d["ar"] = [_rr_to_json(r) for r in q.ar]
    for k, v in q.extra.items():
        if k not in _QUERY_KEYS and k not in d:
            d[k] = v
    ext: dict[str, Any] = {}
    for name in ("tx_ns", "rx_ns"):
        v = getattr(q, name)
        if v is not None and v % NS_PER_US:
            ext[name] = v
    if q.rx_ns is not None and q.rcode is None:
        ext["rx_ns"] = q.rx_ns
    if q.tx_ts_source is not None:
        ext["tx_ts_source"] = q.tx_ts_source
    if q.rx_ts_source is not None:
        ext["rx_ts_source"] = q.rx_ts_source
    if q.tcp:
        ext["tcp"] = True
    if q.wire is not None:
        ext["wire"] = q.wire.hex()
    if q.error is not None:
        ext["error"] = q.error
    if ext:
        d[EXT_KEY] = ext
    return d


def _td_us(td: _dt.timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def dns_to_json(h: DnsResult) -> dict[str, Any]:
    """A ``DnsResult`` → scamper's host JSON object."""
    d: dict[str, Any] = {"type": "host", "version": HOST_VERSION}
    if h.src is not None:
        d["src"] = str(h.src)
    d["dst"] = str(h.dst)
    d["userid"] = h.userid
    d["start"] = ns_to_timeval(h.start_ns)
    flags = [n for n, on in (("norecurse", not h.rd), ("tcp", h.tcp), ("nsid", h.nsid)) if on]
    if flags:
        d["flags"] = flags
    wait_us = _td_us(h.wait_timeout)
    d["wait"] = wait_us // 1000
    d["retries"] = h.retries
    d["stop"] = str(h.stop_reason if h.stop_reason is not None else DnsStop.NONE)
    d["qname"] = h.qname
    d["qclass"] = h.qclass
    d["qtype"] = h.qtype
    d["qcount"] = h.qcount
    if h.ecs is not None:
        d["ecs"] = h.ecs
    for k, v in h.extra.items():
        if k not in _HOST_KEYS and k not in d:
            d[k] = v
    d["queries"] = [_query_to_json(q) for q in h.queries]
    ext: dict[str, Any] = {}
    if h.start_ns % NS_PER_US:
        ext["start_ns"] = h.start_ns
    if wait_us % 1000:
        ext["wait_us"] = wait_us
    if h.port != 53:
        ext["port"] = h.port
    if h.malformed:
        ext["malformed"] = h.malformed
    if h.error is not None:
        ext["error"] = h.error
    if h.vp is not None:
        ext["vp"] = h.vp
    if ext:
        d[EXT_KEY] = ext
    return d


def _str_list(f: _Fields, key: str) -> list[str]:
    out = []
    for v in f.list(key):
        if not isinstance(v, str):
            raise f.fail(key, f"must hold strings, got {v!r}")
        out.append(v)
    return out


def _rr_from_json(raw: Any, where: str) -> DnsRR:
    f = _Fields(raw, where)
    ext = f.ext()
    rtype = (f.str("type") or "").upper()
    kw: dict[str, Any] = {}
    if f.d.get("address") is not None:
        kw["address"] = f.addr("address")
    elif rtype in _STR_TYPES and f.d.get(_STR_TYPES[rtype]) is not None:
        kw["target"] = f.str(_STR_TYPES[rtype])
    elif f.d.get("exchange") is not None or f.d.get("preference") is not None:
        kw["mx"] = DnsMX(f.int("preference", default=0), f.str("exchange") or "")
    elif f.d.get("mname") is not None:
        kw["soa"] = DnsSOA(f.str("mname") or "", f.str("rname") or "",
                           *(f.int(k, default=0) for k in ("serial", "refresh", "retry", "expire",
                                                           "minimum")))
    elif f.d.get("strs") is not None:
        kw["txt"] = _str_list(f, "strs")
    rdata = ext.get("rdata") if isinstance(ext.get("rdata"), str) else None
    rr = DnsRR(name=f.str("name") or "", rclass=f.str("class") or "IN", rtype=rtype or "A",
               ttl=f.int("ttl", default=0), rdata=rdata,
               extra={k: v for k, v in f.d.items() if k not in _RR_KEYS}, **kw)
    if rr.rdata is None:
        rr.rdata = _rdata_text(rr)
    return rr


def _rdata_text(rr: DnsRR) -> str | None:
    """Presentation text for the typed data (what dnspython would print)."""
    if rr.address is not None:
        return str(rr.address)
    if rr.target is not None:
        return rr.target + "."
    if rr.mx is not None:
        return f"{rr.mx.preference} {rr.mx.exchange}."
    if rr.soa is not None:
        s = rr.soa
        return f"{s.mname}. {s.rname}. {s.serial} {s.refresh} {s.retry} {s.expire} {s.minimum}"
    if rr.txt is not None:
        return " ".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in rr.txt)
    return None


def _query_from_json(raw: Any, i: int) -> DnsQuery:
    where = f"host.queries[{i}]"
    f = _Fields(raw, where)
    ext = f.ext()
    tx = _exact(ext, "tx_ns", f.timeval("tx"))
    rx = _exact(ext, "rx_ns", f.timeval("rx"))
    rc = f.d.get("rcode")
    rcode = None
    if rc is not None:
        try:
            rcode = rcode_value(rc)
        except ValueError as e:
            raise f.fail("rcode", str(e)) from None
    wire = None
    if isinstance(ext.get("wire"), str):
        try:
            wire = bytes.fromhex(ext["wire"])
        except ValueError:
            wire = None
    flags = _str_list(f, "flags")
    return DnsQuery(
        id=f.int("id", default=0), tx_ns=tx, rx_ns=rx, rcode=rcode, flags=flags,
        an=[_rr_from_json(r, f"{where}.an[{j}]") for j, r in enumerate(f.list("an"))],
        ns=[_rr_from_json(r, f"{where}.ns[{j}]") for j, r in enumerate(f.list("ns"))],
        ar=[_rr_from_json(r, f"{where}.ar[{j}]") for j, r in enumerate(f.list("ar"))],
        tcp=ext.get("tcp") is True, wire=wire,
        error=ext.get("error") if isinstance(ext.get("error"), str) else None,
        tx_ts_source=_source(ext, "tx_ts_source"), rx_ts_source=_source(ext, "rx_ts_source"),
        extra=f.extra(_QUERY_KEYS))


def dns_from_json(d: dict[str, Any]) -> DnsResult:
    """scamper's host JSON object → ``DnsResult``."""
    f = _Fields(d, "host")
    ext = f.ext()
    flags = set(_str_list(f, "flags"))
    wait_us = ext.get("wait_us")
    if not isinstance(wait_us, int) or isinstance(wait_us, bool):
        wait_us = f.int("wait", default=5000) * 1000
    start = _exact(ext, "start_ns", f.timeval("start", True))
    assert start is not None
    port = ext.get("port", 53)
    if not isinstance(port, int) or isinstance(port, bool):
        port = 53
    malformed = ext.get("malformed", 0)
    if not isinstance(malformed, int) or isinstance(malformed, bool) or malformed < 0:
        malformed = 0
    return DnsResult(
        dst=f.addr("dst", True), src=f.addr("src"), port=port, qname=f.str("qname") or "",
        qtype=f.str("qtype") or "A", qclass=f.str("qclass") or "IN", start_ns=start,
        userid=f.int("userid", default=0), rd="norecurse" not in flags, tcp="tcp" in flags,
        nsid="nsid" in flags, ecs=f.str("ecs"), wait_timeout=_dt.timedelta(microseconds=wait_us),
        attempts=f.int("retries", default=0) + 1,
        queries=[_query_from_json(q, i) for i, q in enumerate(f.list("queries"))],
        stop_reason=f.str("stop"), malformed=malformed,
        error=ext.get("error") if isinstance(ext.get("error"), str) else None,
        vp=ext.get("vp") if isinstance(ext.get("vp"), str) else None,
        extra=f.extra(_HOST_KEYS))


register("host", DnsResult, dns_to_json, dns_from_json)
