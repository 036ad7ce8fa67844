"""Tabular export: results → pandas DataFrames → Parquet files.

Why a module of its own that imports pandas only inside its functions:
pandas and pyarrow are the ``analysis`` extra, not endpoint dependencies, so
``import marionet.results`` (and even this module) must work without them;
the ImportError comes when a frame is asked for, with the install command.

Shape (one row per thing a researcher filters or aggregates):

* ping: one row per reply, with the ping's identity repeated; a ping with
  no reply keeps one row whose reply columns are missing, so losses stay in
  the frame instead of vanishing from it;
* trace: one row per hop record (every reply), a trace with none keeps one;
* dns: one row per answer record, a lookup with none (timeout, NXDomain …)
  keeps one;
* http: one row per fetch.

``result_index`` numbers the exported results, so ``groupby("result_index")``
gives back one group per measurement.  Times keep the results' nanoseconds
(``datetime64[ns, UTC]``, ``timedelta64[ns]``) rather than the µs-floored
``datetime`` views; ``*_ms`` columns carry the same durations as floats.
Records that are not of the exported kind (cycle markers, unknown types,
other kinds) are counted in ``frame.attrs["skipped"]``: nothing is dropped
silently.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .cycle import CycleStart, CycleStop, UnknownResult
from .dns import DnsQuery, DnsResult, DnsRR, DnsStop, _rdata_text, rcode_text
from .file import File
from .http import Http, HttpStop
from .ping import PING_METHODS, Ping, PingReply, PingStop
from .trace import TRACE_METHODS, Trace, TraceHop, TraceStop

if TYPE_CHECKING:
    import pandas

__all__ = ["to_frame", "to_parquet", "read_parquet"]

INSTALL_HINT = "pip install 'marionet[analysis]'"
_META_KEY = b"marionet.frame"
_NAT = -(2 ** 63)  # numpy's NaT, as an int64

# Column dtypes, by short name (see _column).
STR, CAT, INT, NINT, FLOAT, BOOL, TIME, DELTA = (
    "string", "category", "int64", "Int64", "float64", "boolean", "time", "delta")

Row = dict[str, Any]
Columns = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------
# optional dependencies
# ---------------------------------------------------------------------------

def _pandas() -> Any:
    try:
        import pandas
    except ImportError as e:
        raise ImportError(f"exporting results to a DataFrame needs pandas: {INSTALL_HINT}") from e
    return pandas


def _parquet() -> tuple[Any, Any]:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:
        raise ImportError(f"Parquet files need pyarrow: {INSTALL_HINT}") from e
    return pyarrow, pyarrow.parquet


# ---------------------------------------------------------------------------
# rows per kind
# ---------------------------------------------------------------------------

def _s(value: Any) -> str | None:
    """Text of an address, enum or string; None stays missing."""
    return None if value is None else str(value)


def _ms(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e6


def _ident(i: int, r: Any) -> Row:
    """Columns every kind has: which result, from where, to where, when."""
    return {"result_index": i, "vp": r.vp, "src": _s(r.src), "dst": _s(r.dst),
            "start": r.start_ns, "userid": r.userid, "stop_reason": _s(r.stop_reason)}


def _ping_rows(i: int, p: Ping) -> Iterator[Row]:
    ident = _ident(i, p) | {
        "method": p.method, "ping_sent": p.ping_sent, "probe_size": p.probe_size,
        "probe_ttl": p.ttl, "probe_tos": p.tos, "sport": p.sport, "dport": p.dport}
    if not p.replies:
        yield ident
    for r in p.replies:
        yield ident | _ping_reply(p, r)


def _ping_reply(p: Ping, r: PingReply) -> Row:
    return {"attempt": r.attempt, "reply_from": _s(r.src), "from_target": p.is_from_target(r),
            "reply_proto": _s(r.reply_proto), "rtt": r.rtt_ns, "rtt_ms": _ms(r.rtt_ns),
            "tx": r.tx_ns, "rx": r.rx_ns, "reply_ttl": r.reply_ttl, "reply_size": r.reply_size,
            "reply_tos": r.reply_tos, "reply_ipid": r.reply_ipid, "probe_ipid": r.probe_ipid,
            "icmp_type": r.icmp_type, "icmp_code": r.icmp_code, "tcp_flags": r.tcp_flags}


def _trace_rows(i: int, t: Trace) -> Iterator[Row]:
    ident = _ident(i, t) | {
        "method": t.method, "stop_data": t.stop_data, "hop_count": t.hop_count,
        "firsthop": t.firsthop, "attempts": t.attempts, "sport": t.sport, "dport": t.dport}
    if not t.hop_records:
        yield ident
    for h in t.hop_records:
        yield ident | _trace_hop(h)


def _trace_hop(h: TraceHop) -> Row:
    return {"probe_ttl": h.probe_ttl, "probe_id": h.probe_id, "probe_size": h.probe_size,
            "addr": _s(h.src), "rtt": h.rtt_ns, "rtt_ms": _ms(h.rtt_ns), "tx": h.tx_ns,
            "rx": h.rx_ns, "reply_ttl": h.reply_ttl, "reply_size": h.reply_size,
            "reply_tos": h.reply_tos, "reply_ipid": h.reply_ipid, "icmp_type": h.icmp_type,
            "icmp_code": h.icmp_code, "icmp_q_ttl": h.icmp_q_ttl, "icmp_nhmtu": h.icmp_nhmtu,
            "tcp_flags": h.tcp_flags, "mpls": bool(h.mpls_labels)}


def _dns_rows(i: int, d: DnsResult) -> Iterator[Row]:
    ident = _ident(i, d)
    ident["server"] = ident.pop("dst")
    ident |= {"qname": d.qname, "qtype": d.qtype, "qclass": d.qclass, "queries": d.qcount,
              "error": d.error}
    q = d.reply
    if q is not None:
        ident |= _dns_reply(q)
    if not d.ans():
        yield ident
    for rr in d.ans():
        yield ident | _dns_rr(rr)


def _dns_reply(q: DnsQuery) -> Row:
    assert q.rcode is not None
    return {"rcode": q.rcode, "rcode_name": rcode_text(q.rcode), "flags": " ".join(q.flags),
            "tcp": q.tcp, "rtt": q.rtt_ns, "rtt_ms": _ms(q.rtt_ns), "tx": q.tx_ns, "rx": q.rx_ns}


def _dns_rr(rr: DnsRR) -> Row:
    rdata = rr.rdata if rr.rdata is not None else _rdata_text(rr)
    return {"name": rr.name, "rclass": rr.rclass, "rtype": rr.rtype, "ttl": rr.ttl,
            "rdata": rdata}


def _http_rows(i: int, h: Http) -> Iterator[Row]:
    row = _ident(i, h) | {
        "method": h.method, "url": h.url, "sport": h.sport, "dport": h.dport,
        "status_code": h.status_code, "http_version": h.http_version, "complete": h.complete,
        "header_size": len(h.header_raw.encode("iso-8859-1")), "body_size": len(h.body),
        "tls_version": h.tls_version, "error": h.error or h.parse_error}
    for name in ("connect", "tls", "ttfb", "total"):
        ns = getattr(h, f"{name}_ns")
        row[name], row[f"{name}_ms"] = ns, _ms(ns)
    yield row


# ---------------------------------------------------------------------------
# the kinds: class, columns (in order, with dtypes), rows, known categories
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Kind:
    cls: type
    columns: Columns
    rows: Callable[[int, Any], Iterator[Row]]
    categories: dict[str, tuple[str, ...]]


_IDENT: Columns = (("result_index", INT), ("vp", STR), ("src", STR), ("dst", STR),
                   ("start", TIME), ("userid", INT), ("stop_reason", CAT))
_RTT: Columns = (("rtt", DELTA), ("rtt_ms", FLOAT), ("tx", TIME), ("rx", TIME))


def _stops(enum: Any) -> tuple[str, ...]:
    return tuple(e.value for e in enum)


KINDS: dict[str, _Kind] = {
    "ping": _Kind(Ping, _IDENT + (
        ("method", CAT), ("ping_sent", INT), ("probe_size", NINT), ("probe_ttl", NINT),
        ("probe_tos", NINT), ("sport", NINT), ("dport", NINT), ("attempt", NINT),
        ("reply_from", STR), ("from_target", BOOL), ("reply_proto", STR)) + _RTT + (
        ("reply_ttl", NINT), ("reply_size", NINT), ("reply_tos", NINT), ("reply_ipid", NINT),
        ("probe_ipid", NINT), ("icmp_type", NINT), ("icmp_code", NINT), ("tcp_flags", NINT)),
        _ping_rows, {"method": PING_METHODS, "stop_reason": _stops(PingStop)}),
    "trace": _Kind(Trace, _IDENT + (
        ("method", CAT), ("stop_data", INT), ("hop_count", INT), ("firsthop", INT),
        ("attempts", INT), ("sport", NINT), ("dport", NINT), ("probe_ttl", NINT),
        ("probe_id", NINT), ("probe_size", NINT), ("addr", STR)) + _RTT + (
        ("reply_ttl", NINT), ("reply_size", NINT), ("reply_tos", NINT), ("reply_ipid", NINT),
        ("icmp_type", NINT), ("icmp_code", NINT), ("icmp_q_ttl", NINT), ("icmp_nhmtu", NINT),
        ("tcp_flags", NINT), ("mpls", BOOL)),
        _trace_rows, {"method": TRACE_METHODS, "stop_reason": _stops(TraceStop)}),
    "dns": _Kind(DnsResult, tuple(("server", t) if c == "dst" else (c, t) for c, t in _IDENT) + (
        ("qname", STR), ("qtype", STR), ("qclass", STR), ("queries", INT), ("error", STR),
        ("rcode", NINT), ("rcode_name", STR), ("flags", STR), ("tcp", BOOL)) + _RTT + (
        ("name", STR), ("rclass", STR), ("rtype", STR), ("ttl", NINT), ("rdata", STR)),
        _dns_rows, {"stop_reason": _stops(DnsStop)}),
    "http": _Kind(Http, _IDENT + (
        ("method", CAT), ("url", STR), ("sport", NINT), ("dport", NINT), ("status_code", NINT),
        ("http_version", STR), ("complete", BOOL), ("header_size", INT), ("body_size", INT),
        ("tls_version", STR), ("error", STR), ("connect", DELTA), ("connect_ms", FLOAT),
        ("tls", DELTA), ("tls_ms", FLOAT), ("ttfb", DELTA), ("ttfb_ms", FLOAT),
        ("total", DELTA), ("total_ms", FLOAT)),
        _http_rows, {"method": ("GET", "HEAD"), "stop_reason": _stops(HttpStop)}),
}

_RECORDS = (CycleStart, CycleStop, UnknownResult)


# ---------------------------------------------------------------------------
# columns with their dtypes
# ---------------------------------------------------------------------------

def _categories(known: Iterable[str], values: list[Any]) -> list[str]:
    """Known values first (so frames of different files concatenate as
    categoricals), then any others seen, sorted."""
    known = list(known)
    return known + sorted({v for v in values if v is not None} - set(known))


def _column(pd: Any, values: list[Any], dtype: str, known: Iterable[str]) -> Any:
    """One column's values (None = missing) as an array of ``dtype``."""
    import numpy as np  # a pandas dependency
    if dtype in (TIME, DELTA):
        ns = np.array([_NAT if v is None else v for v in values], dtype="int64")
        if dtype == DELTA:
            return ns.view("m8[ns]")
        return pd.to_datetime(ns.view("M8[ns]"), utc=True)
    if dtype == CAT:
        return pd.Categorical(values, categories=_categories(known, values))
    if dtype in (INT, FLOAT):
        return np.array(values, dtype=dtype)
    return pd.array(values, dtype=dtype)


def _frame(pd: Any, kind: _Kind, results: list[Any]) -> "pandas.DataFrame":
    cols: dict[str, list[Any]] = {name: [] for name, _ in kind.columns}
    for i, result in enumerate(results):
        for row in kind.rows(i, result):
            for name, values in cols.items():
                values.append(row.get(name))
    return pd.DataFrame({name: _column(pd, cols[name], dtype, kind.categories.get(name, ()))
                         for name, dtype in kind.columns})


# ---------------------------------------------------------------------------
# input: results, a File, or a path
# ---------------------------------------------------------------------------

def _records(results: Any) -> list[Any]:
    """Everything in ``results`` as a list (a path is read with ``File``)."""
    if isinstance(results, (str, os.PathLike)):
        with File(results) as f:
            return list(f)
    if isinstance(results, (Ping, Trace, DnsResult, Http) + _RECORDS):
        return [results]  # one result (a DnsResult would iterate its answers)
    try:
        return list(results)
    except TypeError:
        raise TypeError(f"expected results, a File or a path, got "
                        f"{type(results).__name__}") from None


def _label(obj: Any) -> tuple[str, bool]:
    """(kind or record type name, is it an exportable result)."""
    for name, kind in KINDS.items():
        if isinstance(obj, kind.cls):
            return name, True
    if isinstance(obj, CycleStart):
        return "cycle-start", False
    if isinstance(obj, CycleStop):
        return "cycle-stop", False
    if isinstance(obj, UnknownResult):
        return obj.type or "unknown", False
    raise TypeError(f"not a result: {type(obj).__name__} ({obj!r:.80})")


def _choose(kind: str | None, found: collections.Counter[str]) -> str | None:
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return kind
    if len(found) > 1:
        mix = ", ".join(f"{k} ({n})" for k, n in sorted(found.items()))
        raise ValueError(f"results mix several types: {mix}; pass kind= to choose one")
    return next(iter(found), None)


# ---------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------

def to_frame(results: Any, kind: str | None = None) -> "pandas.DataFrame":
    """Results as a DataFrame, one row per reply / hop / answer / fetch.

    ``results``: result objects (an iterable or one), an open ``File``, or
    a path read with ``File``.  ``kind`` ("ping", "trace", "dns", "http")
    picks one type when they are mixed, which is an error without it.  With
    no result at all and no ``kind``, the frame has no columns.
    ``attrs["kind"]`` names the kind; ``attrs["skipped"]`` counts the records
    left out, by type name (``{"cycle-start": 1, "trace": 2}``).
    """
    pd = _pandas()
    labelled = [(obj, *_label(obj)) for obj in _records(results)]
    found = collections.Counter(name for _, name, is_result in labelled if is_result)
    chosen = _choose(kind, found)
    kept = [obj for obj, name, _ in labelled if name == chosen]
    skipped = collections.Counter(name for _, name, _ in labelled if name != chosen)
    frame = pd.DataFrame() if chosen is None else _frame(pd, KINDS[chosen], kept)
    frame.attrs["kind"] = chosen
    frame.attrs["skipped"] = dict(skipped)
    return frame


def to_parquet(results: Any, path: str | os.PathLike[str] | Any, kind: str | None = None,
               compression: str | None = "zstd") -> None:
    """Write ``to_frame(results, kind)`` (or a DataFrame it made) as Parquet.

    Parquet has no categorical type, and older pyarrow versions restore
    neither unused categories nor every extension dtype; so each column's
    dtype, the categories and ``attrs`` are stored in the file's metadata
    and ``read_parquet`` puts them back: the round trip is exact.
    """
    pd = _pandas()
    pa, pq = _parquet()
    frame = results if isinstance(results, pd.DataFrame) else to_frame(results, kind)
    table = pa.Table.from_pandas(frame)
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps(_describe(pd, frame), default=str).encode()
    where = os.fspath(path) if isinstance(path, os.PathLike) else path
    pq.write_table(table.replace_schema_metadata(meta), where, compression=compression)


def read_parquet(path: str | os.PathLike[str] | Any) -> "pandas.DataFrame":
    """A frame written by ``to_parquet``, with its dtypes and ``attrs``.
    Other Parquet files read as pyarrow reads them."""
    pd = _pandas()
    _, pq = _parquet()
    table = pq.read_table(os.fspath(path) if isinstance(path, os.PathLike) else path)
    frame = table.to_pandas()
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is not None:
        _restore(pd, frame, json.loads(raw))
    return frame


def _describe(pd: Any, frame: "pandas.DataFrame") -> dict[str, Any]:
    """What Parquet loses about a frame: dtypes, categories, attrs."""
    dtypes = {str(c): str(t) for c, t in frame.dtypes.items()}
    cats = {str(c): {"values": t.categories.tolist(), "ordered": bool(t.ordered)}
            for c, t in frame.dtypes.items() if isinstance(t, pd.CategoricalDtype)}
    return {"version": 1, "dtypes": dtypes, "categories": cats, "attrs": frame.attrs}


def _restore(pd: Any, frame: "pandas.DataFrame", desc: dict[str, Any]) -> None:
    """Put back what ``_describe`` recorded (in place)."""
    for col, dtype in desc.get("dtypes", {}).items():
        if col not in frame.columns:
            continue
        if dtype == "category":
            frame[col] = _as_category(pd, frame[col], desc["categories"][col])
        elif frame[col].dtype != pd.api.types.pandas_dtype(dtype):
            frame[col] = frame[col].astype(dtype)
    frame.attrs.update(desc.get("attrs", {}))


def _as_category(pd: Any, column: Any, cats: dict[str, Any]) -> Any:
    """Exactly these categories in this order (dtype equality of unordered
    categoricals ignores order, so an ``astype`` could keep the wrong one)."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        column = column.astype("category")
    return column.cat.set_categories(cats["values"], ordered=cats["ordered"])
