"""scamper's JSON-lines format: ``to_json(obj) -> dict``, ``from_json(dict)``.

Why scamper's schema: existing analysis code (and sc_* tools' users) read
these lines; a marionet file must be a scamper file.  The mapping:

* ping records are ``"version":"0.4"``, trace records ``"version":"0.1"``,
  field names and order as Debian's scamper 20211212 (plus the few keys
  newer scamper adds: ``tos``, ``wait_us``/``timeout_us``).
* ``tx``/``rx``/``start`` are ``{"sec","usec"}``; RTTs are milliseconds
  printed with exactly three decimals (``0.258``); ``statistics`` is
  recomputed on write and ignored on read (it is derived data).
* Trace ``stop_reason`` is upper case in the file, ``TraceStop`` in Python.
  Trace ``wait_probe`` is in scamper's unit, hundredths of a second.

marionet-only data lives under one key, ``"marionet"``, in the record and
in each reply/hop.  JSON readers that do not know it ignore it, so scamper
consumers still read our files, while our reader restores:

* ``tx_ns`` / ``rx_ns`` / ``rtt_ns`` / ``start_ns`` — written only when the
  value has sub-microsecond digits (otherwise the visible field is exact);
  on read they are used only when consistent with the visible µs field, so
  a file edited by another tool never yields contradictory times;
* ``tx_ts_source`` / ``rx_ts_source`` ("kernel" or "user");
* ``vp`` (vantage-point name), ping ``stop_reason`` and ``icmp_id``, and
  exact trace waits (``wait_timeout_us``, ``wait_probe_us``) when the
  scamper field would round them.

Keys we do not model are kept in the object's ``extra`` dict and written
back, so reading and re-writing a newer scamper's file loses nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from typing import Any, Callable

from .common import (Addr, NS_PER_US, datetime_to_ns, ns_to_ms_str,
                     ns_to_timeval, timeval_to_ns)
from .cycle import CycleStart, CycleStop, UnknownResult
from .errors import FormatError
from .ping import PING_FLAGS, Ping, PingReply, PingTsReply, PingV4TS
from .trace import IcmpExt, MplsLabel, Trace, TraceHop, TraceStop

__all__ = ["to_json", "from_json", "dumps", "loads", "RawNumber",
           "PING_VERSION", "TRACE_VERSION", "EXT_KEY"]

PING_VERSION = "0.4"
TRACE_VERSION = "0.1"
EXT_KEY = "marionet"


class RawNumber(float):
    """A float that serialises with fixed text ("0.050", not "0.05").

    Why: scamper prints RTTs with exactly three decimals and some scripts
    parse the text.  ``to_json`` dicts stay usable as plain numbers.
    """

    text: str

    def __new__(cls, text: str) -> "RawNumber":
        self = super().__new__(cls, text)
        self.text = text
        return self

    def __repr__(self) -> str:
        return self.text


def _ms(ns: int) -> RawNumber:
    return RawNumber(ns_to_ms_str(ns))


# -- encoding ------------------------------------------------------------

def dumps(value: Any) -> str:
    """Serialise a ``to_json`` dict (or a result object) as one JSON line,
    without the newline.  Honors ``RawNumber`` text; rejects NaN/inf."""
    if not isinstance(value, dict):
        value = to_json(value)
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _encode(v: Any, out: list[str]) -> None:
    if isinstance(v, RawNumber):
        out.append(v.text)
    elif v is None or isinstance(v, (bool, str)):
        out.append(json.dumps(v))
    elif isinstance(v, int):
        out.append(str(int(v)))
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write non-finite number {v!r} to JSON")
        out.append(repr(float(v)))
    elif isinstance(v, dict):
        out.append("{")
        first = True
        for k, item in v.items():
            if not isinstance(k, str):
                raise TypeError(f"JSON keys must be strings, got {k!r}")
            if not first:
                out.append(", ")
            first = False
            out.append(json.dumps(k))
            out.append(":")
            _encode(item, out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(v, Addr):
        out.append(json.dumps(str(v)))
    else:
        raise TypeError(f"cannot write {type(v).__name__} to JSON: {v!r}")


def _put_extra(d: dict[str, Any], extra: dict[str, Any], known: frozenset[str]) -> None:
    for k, v in extra.items():
        if k not in known and k != EXT_KEY and k not in d:
            d[k] = v


def _times_ext(ext: dict[str, Any], obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        if v is not None and v % NS_PER_US:
            ext[name] = v


def _sources_ext(ext: dict[str, Any], obj: Any) -> None:
    if obj.tx_ts_source is not None:
        ext["tx_ts_source"] = obj.tx_ts_source
    if obj.rx_ts_source is not None:
        ext["rx_ts_source"] = obj.rx_ts_source


_PING_KEYS = frozenset({
    "type", "version", "method", "src", "dst", "start", "ping_sent",
    "probe_size", "userid", "ttl", "tos", "wait", "wait_us", "timeout",
    "timeout_us", "sport", "dport", "tcp_seq", "tcp_ack", "responses",
    "statistics", "probe_tsps", EXT_KEY})
#: scamper ping flags ``Ping.flags`` models (the IP options marionet sends);
#: other flags scamper writes ("payload", "spoof", ...) stay in ``extra``.
_OPT_FLAGS = ("v4rr", "tsonly", "tsandaddr")
_REPLY_KEYS = frozenset({
    "from", "seq", "reply_size", "reply_ttl", "reply_proto", "ifname", "tx",
    "rx", "rtt", "probe_ipid", "reply_ipid", "reply_tos", "icmp_type",
    "icmp_code", "tcp_flags", "RR", "tsonly", "tsandaddr", EXT_KEY})
_TRACE_KEYS = frozenset({
    "type", "version", "userid", "method", "src", "dst", "sport", "dport",
    "icmp_sum", "stop_reason", "stop_data", "start", "hop_count", "attempts",
    "hoplimit", "firsthop", "wait", "wait_probe", "tos", "probe_size",
    "probe_count", "hops", EXT_KEY})
_HOP_KEYS = frozenset({
    "addr", "name", "probe_ttl", "probe_id", "probe_size", "tx", "rtt",
    "reply_ttl", "reply_tos", "reply_ipid", "reply_size", "icmp_type",
    "icmp_code", "icmp_q_ttl", "icmp_q_ipl", "icmp_q_tos", "icmp_nhmtu",
    "icmp_nhmtu:", "tcp_flags", "icmpext", EXT_KEY})
_CYCLE_KEYS = frozenset({"type", "list_name", "id", "hostname", "start_time",
                         "stop_time"})


def _td_us(td: _dt.timedelta) -> int:
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def _reply_to_json(r: PingReply) -> dict[str, Any]:
    d: dict[str, Any] = {"from": str(r.src), "seq": r.attempt}
    if r.reply_size is not None:
        d["reply_size"] = r.reply_size
    if r.reply_ttl is not None:
        d["reply_ttl"] = r.reply_ttl
    d["reply_proto"] = r.reply_proto
    if r.ifname is not None:
        d["ifname"] = r.ifname
    if r.tx_ns is not None:
        d["tx"] = ns_to_timeval(r.tx_ns)
    if r.rx_ns is not None:
        d["rx"] = ns_to_timeval(r.rx_ns)
    assert r.rtt_ns is not None
    d["rtt"] = _ms(r.rtt_ns)
    for k in ("probe_ipid", "reply_ipid", "reply_tos", "icmp_type",
              "icmp_code", "tcp_flags"):
        v = getattr(r, k)
        if v is not None:
            d[k] = v
    if r.v4rr is not None:
        d["RR"] = [str(a) for a in r.v4rr]
    if r.v4ts is not None:
        if r.v4ts.ips is None:
            d["tsonly"] = list(r.v4ts.tss)
        else:
            d["tsandaddr"] = [{"ip": str(a), "ts": t} for a, t in zip(r.v4ts.ips, r.v4ts.tss)]
    _put_extra(d, r.extra, _REPLY_KEYS)
    ext: dict[str, Any] = {}
    _times_ext(ext, r, ("tx_ns", "rx_ns", "rtt_ns"))
    _sources_ext(ext, r)
    if r.tsreply is not None:  # in warts, not in scamper's JSON
        ext["tsreply"] = {"tso": r.tsreply.tso, "tsr": r.tsreply.tsr, "tst": r.tsreply.tst}
    if ext:
        d[EXT_KEY] = ext
    return d


def _merge_flags(kept: Any, modeled: tuple[str, ...]) -> list[str]:
    """extra's flags and ``Ping.flags`` together, in scamper's order."""
    names = [x for x in kept if isinstance(x, str)] if isinstance(kept, list) else []
    names += [x for x in modeled if x not in names]
    rank = {n: i for i, n in enumerate(PING_FLAGS)}
    return sorted(names, key=lambda n: rank.get(n, len(rank)))


def _ping_stats(p: Ping) -> dict[str, Any]:
    s: dict[str, Any] = {"replies": p.nreplies}
    if p.ping_sent:
        if p.nreplies == 0:
            s["loss"] = 1
        elif p.nreplies >= p.ping_sent:
            s["loss"] = 0
        else:
            s["loss"] = RawNumber(f"{(p.ping_sent - p.nreplies) / p.ping_sent:.2f}")
    rtts = p._rtts()
    if rtts:
        n = len(rtts)
        mean = sum(rtts) / n
        s["min"] = _ms(min(rtts))
        s["max"] = _ms(max(rtts))
        s["avg"] = _ms(sum(rtts) // n)
        s["stddev"] = _ms(int(math.sqrt(sum((x - mean) ** 2 for x in rtts) / n)))
    if p.ndups:
        s["ndups"] = p.ndups
    if p.nerrs:
        s["nerrs"] = p.nerrs
    return s


def _ping_to_json(p: Ping) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "ping", "version": PING_VERSION,
                         "method": p.method}
    if p.src is not None:
        d["src"] = str(p.src)
    d["dst"] = str(p.dst)
    d["start"] = ns_to_timeval(p.start_ns)
    d["ping_sent"] = p.ping_sent
    if p.probe_size is not None:
        d["probe_size"] = p.probe_size
    d["userid"] = p.userid
    if p.ttl is not None:
        d["ttl"] = p.ttl
    if p.tos is not None:
        d["tos"] = p.tos
    wp, wt = _td_us(p.wait_probe), _td_us(p.wait_timeout)
    d["wait"] = wp // 1_000_000
    if wp % 1_000_000:
        d["wait_us"] = wp % 1_000_000
    d["timeout"] = wt // 1_000_000
    if wt % 1_000_000:
        d["timeout_us"] = wt % 1_000_000
    for k in ("sport", "dport", "tcp_seq", "tcp_ack"):
        v = getattr(p, k)
        if v is not None:
            d[k] = v
    _put_extra(d, p.extra, _PING_KEYS)
    if p.flags:  # else extra's "flags", if any, went out as it came in
        d["flags"] = _merge_flags(p.extra.get("flags"), p.flags)
    if p.probe_tsps:
        d["probe_tsps"] = [str(a) for a in p.probe_tsps]
    d["responses"] = [_reply_to_json(r) for r in p.replies]
    d["statistics"] = _ping_stats(p)
    ext: dict[str, Any] = {}
    _times_ext(ext, p, ("start_ns",))
    if p.vp is not None:
        ext["vp"] = p.vp
    if p.stop_reason is not None:
        ext["stop_reason"] = str(p.stop_reason)
    if p.icmp_id is not None:
        ext["icmp_id"] = p.icmp_id
    if ext:
        d[EXT_KEY] = ext
    return d


def _hop_to_json(h: TraceHop) -> dict[str, Any]:
    d: dict[str, Any] = {"addr": str(h.src)}
    if h.name is not None:
        d["name"] = h.name
    d["probe_ttl"] = h.probe_ttl
    d["probe_id"] = h.probe_id
    if h.probe_size is not None:
        d["probe_size"] = h.probe_size
    if h.tx_ns is not None:
        d["tx"] = ns_to_timeval(h.tx_ns)
    assert h.rtt_ns is not None
    d["rtt"] = _ms(h.rtt_ns)
    for k in ("reply_ttl", "reply_tos", "reply_ipid", "reply_size",
              "icmp_type", "icmp_code", "icmp_q_ttl", "icmp_q_ipl",
              "icmp_q_tos", "icmp_nhmtu", "tcp_flags"):
        v = getattr(h, k)
        if v is not None:
            d[k] = v
    if h.icmpext:
        d["icmpext"] = [
            {"ie_cn": ie.cn, "ie_ct": ie.ct, "ie_dl": ie.dl,
             **({"mpls_labels": [
                 {"mpls_ttl": m.ttl, "mpls_s": m.s, "mpls_exp": m.exp,
                  "mpls_label": m.label} for m in ie.mpls_labels]}
                if ie.is_mpls() else {})}
            for ie in h.icmpext]
    _put_extra(d, h.extra, _HOP_KEYS)
    ext: dict[str, Any] = {}
    _times_ext(ext, h, ("tx_ns", "rtt_ns"))
    if h.rx_ns is not None and (h.tx_ns is None or h.rx_ns != h.tx_ns + h.rtt_ns):
        ext["rx_ns"] = h.rx_ns
    _sources_ext(ext, h)
    if ext:
        d[EXT_KEY] = ext
    return d


def _trace_to_json(t: Trace) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "trace", "version": TRACE_VERSION,
                         "userid": t.userid, "method": t.method}
    if t.src is not None:
        d["src"] = str(t.src)
    d["dst"] = str(t.dst)
    if t.sport is not None:
        d["sport"] = t.sport
    if t.dport is not None:
        d["dport"] = t.dport
    if t.icmp_sum is not None:
        d["icmp_sum"] = t.icmp_sum
    stop = t.stop_reason if t.stop_reason is not None else TraceStop.NONE
    d["stop_reason"] = str(stop).upper()
    d["stop_data"] = t.stop_data
    start = ns_to_timeval(t.start_ns)
    ftime = _dt.datetime.fromtimestamp(start["sec"], _dt.timezone.utc)
    d["start"] = {**start, "ftime": ftime.strftime("%Y-%m-%d %H:%M:%S")}
    d["hop_count"] = t.hop_count
    d["attempts"] = t.attempts
    d["hoplimit"] = t.hoplimit
    d["firsthop"] = t.firsthop
    wt, wp = _td_us(t.wait_timeout), _td_us(t.wait_probe)
    d["wait"] = wt // 1_000_000
    d["wait_probe"] = wp // 10_000
    d["tos"] = t.tos
    if t.probe_size is not None:
        d["probe_size"] = t.probe_size
    d["probe_count"] = t.probe_count
    _put_extra(d, t.extra, _TRACE_KEYS)
    if t.hop_records:
        d["hops"] = [_hop_to_json(h) for h in t.hop_records]
    ext: dict[str, Any] = {}
    _times_ext(ext, t, ("start_ns",))
    if wt % 1_000_000:
        ext["wait_timeout_us"] = wt
    if wp % 10_000:
        ext["wait_probe_us"] = wp
    if t.vp is not None:
        ext["vp"] = t.vp
    if ext:
        d[EXT_KEY] = ext
    return d


def _cycle_to_json(c: CycleStart | CycleStop) -> dict[str, Any]:
    start = isinstance(c, CycleStart)
    d: dict[str, Any] = {"type": "cycle-start" if start else "cycle-stop",
                         "list_name": c.list_name, "id": c.cycle_id}
    if c.hostname is not None:
        d["hostname"] = c.hostname
    if isinstance(c, CycleStart):
        d["start_time"] = c.start_time
    else:
        d["stop_time"] = c.stop_time
    _put_extra(d, c.extra, _CYCLE_KEYS)
    return d


def to_json(obj: Any) -> dict[str, Any]:
    """A result object → the dict scamper would write for it."""
    if isinstance(obj, Ping):
        return _ping_to_json(obj)
    if isinstance(obj, Trace):
        return _trace_to_json(obj)
    if isinstance(obj, (CycleStart, CycleStop)):
        return _cycle_to_json(obj)
    if isinstance(obj, UnknownResult):
        if obj.data is None:
            raise ValueError(f"cannot write {obj.type!r} record without JSON data to a JSON file")
        return dict(obj.data)
    writer = _WRITERS.get(type(obj))
    if writer is not None:
        return writer(obj)
    raise TypeError(f"not a result object: {type(obj).__name__}")


#: Result types defined in their own modules (dns, http, …): class -> writer.
_WRITERS: dict[type, Callable[[Any], dict[str, Any]]] = {}


def register(type_name: str, cls: type, writer: Callable[[Any], dict[str, Any]],
             reader: Callable[[dict[str, Any]], Any]) -> None:
    """Add a result type: ``type_name`` is scamper's JSON ``"type"`` value.

    Lets each primitive's result module own its JSON mapping without this
    module importing it."""
    _WRITERS[cls] = writer
    _READERS[type_name] = reader


# -- decoding --------------------------------------------------------------

_MIN_NS = datetime_to_ns(_dt.datetime.min.replace(tzinfo=_dt.timezone.utc))
_MAX_NS = datetime_to_ns(_dt.datetime.max.replace(tzinfo=_dt.timezone.utc)) + NS_PER_US - 1


class _Fields:
    """Typed access to one JSON object with errors that name the field."""

    def __init__(self, d: Any, what: str) -> None:
        if not isinstance(d, dict):
            raise FormatError(f"{what}: expected an object, got {type(d).__name__}")
        self.d = d
        self.what = what

    def fail(self, key: str, msg: str) -> FormatError:
        return FormatError(f"{self.what}: field {key!r} {msg}")

    def int(self, key: str, required: bool = False, default: Any = None) -> Any:
        v = self.d.get(key)
        if v is None:
            if required:
                raise self.fail(key, "is missing")
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"must be an integer, got {v!r}")
        return v

    def str(self, key: str, required: bool = False) -> Any:
        v = self.d.get(key)
        if v is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        if not isinstance(v, str):
            raise self.fail(key, f"must be a string, got {v!r}")
        return v

    def addr(self, key: str, required: bool = False) -> Addr | None:
        v = self.str(key, required)
        if v is None:
            return None
        try:
            return Addr(v)
        except ValueError as e:
            raise self.fail(key, str(e)) from None

    def timeval(self, key: str, required: bool = False) -> int | None:
        v = self.d.get(key)
        if v is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        tv = _Fields(v, f"{self.what}.{key}")
        ns = timeval_to_ns(tv.int("sec", True), tv.int("usec", True))
        if not _MIN_NS <= ns <= _MAX_NS:  # .start/.tx are datetimes: years 1 to 9999
            raise self.fail(key, f"is not a time between the years 1 and 9999: {v!r}")
        return ns

    def ms(self, key: str, required: bool = False) -> int | None:
        """Milliseconds (scamper's RTT) → ns, exact for 3 decimals."""
        v = self.d.get(key)
        if v is None:
            if required:
                raise self.fail(key, "is missing")
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.fail(key, f"must be a number of milliseconds, got {v!r}")
        return round(v * 1000) * NS_PER_US

    def list(self, key: str) -> list[Any]:
        v = self.d.get(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(key, f"must be a list, got {type(v).__name__}")
        return v

    def ext(self) -> dict[str, Any]:
        v = self.d.get(EXT_KEY)
        return v if isinstance(v, dict) else {}

    def extra(self, known: frozenset[str]) -> dict[str, Any]:
        return {k: v for k, v in self.d.items() if k not in known}


def exact_ns_of_visible(ext: dict[str, Any], key: str, visible: int | None) -> int | None:
    """The extension's ns value for a visible µs field, only when that field is present and the
    two agree (the sniff, udpprobe and dealias readers: no visible field, no time)."""
    v = ext.get(key)
    if visible is None or not isinstance(v, int) or isinstance(v, bool):
        return visible
    return v if v // NS_PER_US == visible // NS_PER_US else visible


def _exact(ext: dict[str, Any], key: str, visible: int | None) -> int | None:
    """Use the ns value from the extension only when it agrees with what a
    scamper tool would see; otherwise trust the visible field."""
    v = ext.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        if visible is None or v // NS_PER_US == visible // NS_PER_US:
            return v
    return visible


def _source(ext: dict[str, Any], key: str) -> str | None:
    v = ext.get(key)
    return v if v in ("kernel", "user") else None


def _reply_from_json(raw: Any, i: int) -> PingReply:
    f = _Fields(raw, f"ping.responses[{i}]")
    ext = f.ext()
    tx = _exact(ext, "tx_ns", f.timeval("tx"))
    rx = _exact(ext, "rx_ns", f.timeval("rx"))
    rtt = _exact(ext, "rtt_ns", f.ms("rtt"))
    if rtt is None and (tx is None or rx is None):
        raise f.fail("rtt", "is missing")
    if rx is None and tx is not None and rtt is not None and not _MIN_NS <= tx + rtt <= _MAX_NS:
        raise f.fail("rtt", "puts rx (tx + rtt, written back) outside the years 1 to 9999")
    proto = f.d.get("reply_proto", "icmp")
    if not isinstance(proto, (str, int)) or isinstance(proto, bool):
        raise f.fail("reply_proto", f"must be a string or integer, got {proto!r}")
    src = f.addr("from", True)
    assert src is not None
    attempt = f.int("seq") if f.d.get("seq") is not None else f.int("probe_id", default=0)
    rr = [_list_addr(f, "RR", j, a) for j, a in enumerate(f.list("RR"))] if "RR" in f.d else None
    v4ts = None
    if "tsonly" in f.d:
        tss = f.list("tsonly")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in tss):
            raise f.fail("tsonly", "must be a list of non-negative integers")
        v4ts = PingV4TS(tuple(tss))
    elif "tsandaddr" in f.d:
        pairs = [_Fields(x, f"{f.what}.tsandaddr[{j}]") for j, x in enumerate(f.list("tsandaddr"))]
        tss = [x.int("ts", True) for x in pairs]
        if any(t < 0 for t in tss):
            raise f.fail("tsandaddr", "timestamps must be non-negative")
        v4ts = PingV4TS(tuple(tss), tuple(x.addr("ip", True) for x in pairs))
    tsr = ext.get("tsreply")
    tsreply = None
    if isinstance(tsr, dict):
        tf = _Fields(tsr, f"{f.what}.{EXT_KEY}.tsreply")
        tsreply = PingTsReply(tf.int("tso", True), tf.int("tsr", True), tf.int("tst", True))
    return PingReply(
        src=src, attempt=attempt,
        tx_ns=tx, rx_ns=rx, rtt_ns=rtt,
        probe_ipid=f.int("probe_ipid"), reply_ipid=f.int("reply_ipid"),
        reply_ttl=f.int("reply_ttl"), reply_tos=f.int("reply_tos"),
        reply_size=f.int("reply_size"), reply_proto=proto,
        icmp_type=f.int("icmp_type"), icmp_code=f.int("icmp_code"),
        tcp_flags=f.int("tcp_flags"), ifname=f.str("ifname"),
        v4rr=tuple(rr) if rr is not None else None, v4ts=v4ts, tsreply=tsreply,
        tx_ts_source=_source(ext, "tx_ts_source"),
        rx_ts_source=_source(ext, "rx_ts_source"),
        extra=f.extra(_REPLY_KEYS))


def _ping_from_json(d: dict[str, Any]) -> Ping:
    f = _Fields(d, "ping")
    ext = f.ext()
    replies = [_reply_from_json(r, i) for i, r in enumerate(f.list("responses"))]
    wait_us = f.int("wait", default=1) * 1_000_000 + f.int("wait_us", default=0)
    timeout_us = f.int("timeout", default=1) * 1_000_000 + f.int("timeout_us", default=0)
    icmp_id = ext.get("icmp_id")
    if not isinstance(icmp_id, int) or isinstance(icmp_id, bool):
        icmp_id = None
        if replies and isinstance(replies[0].extra.get("icmp_id"), int):
            icmp_id = replies[0].extra["icmp_id"]
    vp = ext.get("vp") if isinstance(ext.get("vp"), str) else None
    stop = ext.get("stop_reason") if isinstance(ext.get("stop_reason"), str) else None
    start = _exact(ext, "start_ns", f.timeval("start", True))
    assert start is not None
    extra = f.extra(_PING_KEYS)
    raw = d.get("flags")
    flags: list[str] = []
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw) and set(raw) & set(_OPT_FLAGS):
        flags = [x for x in raw if x in _OPT_FLAGS]
        others = [x for x in raw if x not in _OPT_FLAGS]
        if others:
            extra["flags"] = others
        else:
            extra.pop("flags", None)
    tsps = [_list_addr(f, "probe_tsps", j, a) for j, a in enumerate(f.list("probe_tsps"))]
    return Ping(
        dst=f.addr("dst", True), src=f.addr("src"),
        method=f.str("method") or "icmp-echo", start_ns=start,
        ping_sent=f.int("ping_sent", default=0),
        probe_size=f.int("probe_size"), ttl=f.int("ttl"), tos=f.int("tos"),
        wait_probe=_dt.timedelta(microseconds=wait_us),
        wait_timeout=_dt.timedelta(microseconds=timeout_us),
        sport=f.int("sport"), dport=f.int("dport"),
        tcp_seq=f.int("tcp_seq"), tcp_ack=f.int("tcp_ack"), icmp_id=icmp_id,
        userid=f.int("userid", default=0), stop_reason=stop,
        replies=replies, flags=tuple(flags), probe_tsps=tuple(tsps), vp=vp,
        extra=extra)


def _list_addr(f: "_Fields", key: str, j: int, v: Any) -> Addr:
    """An address inside a list field (``RR``, ``probe_tsps``)."""
    try:
        if isinstance(v, str):
            return Addr(v)
    except ValueError:
        pass
    raise f.fail(f"{key}[{j}]", f"must be an IP address, got {v!r}")


def _icmpext_from_json(raw: Any, where: str) -> IcmpExt:
    f = _Fields(raw, where)
    labels = []
    for j, m in enumerate(f.list("mpls_labels")):
        mf = _Fields(m, f"{where}.mpls_labels[{j}]")
        labels.append(MplsLabel(label=mf.int("mpls_label", True),
                                exp=mf.int("mpls_exp", default=0),
                                s=mf.int("mpls_s", default=0),
                                ttl=mf.int("mpls_ttl", default=0)))
    return IcmpExt(cn=f.int("ie_cn", True), ct=f.int("ie_ct", True),
                   dl=f.int("ie_dl", default=0), mpls_labels=labels)


def _hop_from_json(raw: Any, i: int) -> TraceHop:
    where = f"trace.hops[{i}]"
    f = _Fields(raw, where)
    ext = f.ext()
    tx = _exact(ext, "tx_ns", f.timeval("tx"))
    rtt = _exact(ext, "rtt_ns", f.ms("rtt", True))
    rx = ext.get("rx_ns")
    if not isinstance(rx, int) or isinstance(rx, bool):
        rx = None
    nhmtu = f.int("icmp_nhmtu")
    if nhmtu is None:
        nhmtu = f.int("icmp_nhmtu:")  # scamper's writer has this typo
    src = f.addr("addr", True)
    assert src is not None
    return TraceHop(
        src=src, name=f.str("name"), probe_ttl=f.int("probe_ttl", True),
        probe_id=f.int("probe_id", default=1), probe_size=f.int("probe_size"),
        tx_ns=tx, rx_ns=rx, rtt_ns=rtt,
        reply_ttl=f.int("reply_ttl"), reply_tos=f.int("reply_tos"),
        reply_ipid=f.int("reply_ipid"), reply_size=f.int("reply_size"),
        icmp_type=f.int("icmp_type"), icmp_code=f.int("icmp_code"),
        icmp_q_ttl=f.int("icmp_q_ttl"), icmp_q_ipl=f.int("icmp_q_ipl"),
        icmp_q_tos=f.int("icmp_q_tos"), icmp_nhmtu=nhmtu,
        tcp_flags=f.int("tcp_flags"),
        icmpext=[_icmpext_from_json(ie, f"{where}.icmpext[{j}]")
                 for j, ie in enumerate(f.list("icmpext"))],
        tx_ts_source=_source(ext, "tx_ts_source"),
        rx_ts_source=_source(ext, "rx_ts_source"),
        extra=f.extra(_HOP_KEYS))


def _trace_from_json(d: dict[str, Any]) -> Trace:
    f = _Fields(d, "trace")
    ext = f.ext()
    hops = [_hop_from_json(h, i) for i, h in enumerate(f.list("hops"))]
    wt = ext.get("wait_timeout_us")
    if not isinstance(wt, int) or isinstance(wt, bool):
        wt = f.int("wait", default=5) * 1_000_000
    wp = ext.get("wait_probe_us")
    if not isinstance(wp, int) or isinstance(wp, bool):
        wp = f.int("wait_probe", default=0) * 10_000
    vp = ext.get("vp") if isinstance(ext.get("vp"), str) else None
    start = _exact(ext, "start_ns", f.timeval("start", True))
    assert start is not None
    return Trace(
        dst=f.addr("dst", True), src=f.addr("src"),
        method=f.str("method") or "udp-paris", start_ns=start,
        sport=f.int("sport"), dport=f.int("dport"), icmp_sum=f.int("icmp_sum"),
        stop_reason=f.str("stop_reason"), stop_data=f.int("stop_data", default=0),
        hop_count=f.int("hop_count"), attempts=f.int("attempts", default=2),
        hoplimit=f.int("hoplimit", default=0),
        firsthop=f.int("firsthop", default=1),
        wait_timeout=_dt.timedelta(microseconds=wt),
        wait_probe=_dt.timedelta(microseconds=wp), tos=f.int("tos", default=0),
        probe_size=f.int("probe_size"), probe_count=f.int("probe_count"),
        userid=f.int("userid", default=0), hop_records=hops, vp=vp,
        extra=f.extra(_TRACE_KEYS))


def _cycle_from_json(d: dict[str, Any]) -> CycleStart | CycleStop:
    start = d.get("type") == "cycle-start"
    f = _Fields(d, str(d.get("type")))
    common = dict(list_name=f.str("list_name") or "default",
                  cycle_id=f.int("id", default=0), hostname=f.str("hostname"),
                  extra=f.extra(_CYCLE_KEYS))
    if start:
        return CycleStart(start_time=f.int("start_time", True), **common)
    return CycleStop(stop_time=f.int("stop_time", True), **common)


_READERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ping": _ping_from_json,
    "trace": _trace_from_json,
    "cycle-start": _cycle_from_json,
    "cycle-stop": _cycle_from_json,
}


def from_json(d: Any) -> Any:
    """A decoded JSON object → result object.

    Unknown ``type`` values give ``UnknownResult``; a record of a known
    type that does not fit the schema raises ``FormatError``.
    """
    if not isinstance(d, dict):
        raise FormatError(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("type")
    if not isinstance(kind, str):
        raise FormatError(f"record has no \"type\" string: {str(d)[:80]}")
    reader = _READERS.get(kind)
    if reader is None:
        return UnknownResult(type=kind, data=d)
    try:
        return reader(d)
    except FormatError:
        raise
    except (ValueError, TypeError) as e:
        raise FormatError(f"{kind}: {e}") from None
    except OverflowError as e:  # a number too large for a timedelta or a float
        raise FormatError(f"{kind}: number out of range: {e}") from None


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"number {text[:40]} is out of range")
    return v


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def loads(line: str | bytes) -> Any:
    """One JSON line → result object (``FormatError`` on bad input).

    Numbers must be finite: ``NaN``/``Infinity`` (not JSON) and numbers too
    large for a float (``1e999``) are refused here, as ``dumps`` could not
    write them back."""
    try:
        d = json.loads(line, parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise FormatError(f"not valid JSON: {e}") from None
    return from_json(d)
