"""HTTP results: one ``Http`` per fetch, built from its timed buffers.

Why the buffers are the record: scamper's http result keeps every buffer
sent and received with its time (``bufs``), and derives status code, headers
and body from them.  We do the same, so there is one source of truth — a
record read back from a file re-derives exactly what the live measurement
reported, and nothing derived can disagree with the bytes.

Fixes to scamper's pain points, on purpose:

* **Header case is preserved.** ``Http.headers`` is a mapping whose keys are
  the names as the server wrote them (``X-MiXeD``) while lookups ignore case
  (``headers["x-mixed"]``); values are never lowercased.  The raw block is
  in ``header_raw``.
* **No 60 s cap**: ``limit_time`` is whatever positive time the caller asked
  for, recorded as ``maxtime``.

Buffers: ``dir`` is "tx"/"rx"; ``type`` is "tls" (handshake bytes on the
wire), "hdr" (the plaintext header block) or "data" (the plaintext body,
on the wire encoding: chunk framing included, as received).  Times are ns
on the endpoint clock; ``ts_source`` says whether the kernel stamped them.

Timings (ns; ``timing_sources`` says which clock):

* ``connect_ns`` (scamper's ``hsrtt``): from the endpoint's receipt of the
  connect request (estimated: local send time + clock offset + half the
  control round trip) to the endpoint's "established" notification — both
  on the endpoint's user-space clock, since the packet interface connects
  for us and reports no SYN/SYN-ACK stamps.
* ``tls_ns``: kernel TX of the ClientHello to kernel RX of the segment that
  completed the handshake.
* ``ttfb_ns``: kernel TX of the request to kernel RX of the first response
  byte (for TLS: the first segment that decrypted to application data, so a
  session ticket is not mistaken for the response).
* ``total_ns``: connect start (as for ``connect_ns``) to kernel RX of the
  last byte of the response.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import h11

from .common import (Addr, StopReason, check_int, ns_to_datetime, ns_to_timedelta,
                     ns_to_timeval, seconds_to_ns, timeval_to_ns, to_addr)
from .errors import FormatError
from .jsonfmt import EXT_KEY, _ms, register

__all__ = ["Http", "HttpBuf", "HttpHeaders", "HttpStop", "parse_response", "ParsedResponse"]

HTTP_VERSION = "0.1"
_HDR_LIMIT = 1 << 20  # header blocks larger than this are a protocol error


class HttpStop(StopReason):
    """Why an HTTP measurement stopped (scamper's reasons, plus "limit")."""
    NONE = "none"
    HALTED = "halted"
    NOCONN = "noconn"      # TCP connect failed (refused, unreachable)
    DONE = "done"          # the whole response arrived
    ERROR = "error"        # protocol error, reset, early close, TLS failure
    TIMEOUT = "timeout"    # limit_time passed (connect or response)
    INSECURE = "insecure"  # the server's certificate failed verification
    LIMIT = "limit"        # more than limit_size body bytes (marionet)


class HttpHeaders(Mapping[str, str]):
    """Response header fields: original case kept, lookups case-insensitive.

    Iteration yields each name once, spelled as the server first wrote it,
    in order. ``h[name]`` joins repeated fields with ", " (RFC 9110 §5.3);
    ``get_all(name)`` gives them one by one; ``fields`` is the list of
    ``(name, value)`` pairs exactly as received.
    """

    __slots__ = ("fields", "_index", "_names")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self.fields: list[tuple[str, str]] = [(str(k), str(v)) for k, v in fields]
        self._index: dict[str, list[str]] = {}
        self._names: dict[str, str] = {}
        for k, v in self.fields:
            low = k.lower()
            self._index.setdefault(low, []).append(v)
            self._names.setdefault(low, k)

    def __getitem__(self, name: str) -> str:
        if not isinstance(name, str):
            raise KeyError(name)
        vals = self._index.get(name.lower())
        if vals is None:
            raise KeyError(name)
        return ", ".join(vals)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._names)

    def get_all(self, name: str) -> list[str]:
        return list(self._index.get(name.lower(), []))

    def __repr__(self) -> str:
        return f"HttpHeaders({self.fields!r})"


@dataclass(frozen=True)
class ParsedResponse:
    """What a byte stream of one HTTP/1.1 response says."""
    status_code: int | None
    reason: str | None
    http_version: str | None
    headers: HttpHeaders
    header_raw: str
    header_len: int      # bytes of the wire before the body (1xx blocks included)
    body: bytes          # decoded from chunked framing
    complete: bool       # the message ended (EndOfMessage)
    error: str | None    # protocol error text


def _header_end(data: bytes, start: int) -> int:
    """Offset just past the blank line ending the header block at ``start``, or -1."""
    a = data.find(b"\r\n\r\n", start)
    b = data.find(b"\n\n", start)
    ends = [x + 4 for x in (a,) if x >= 0] + [x + 2 for x in (b,) if x >= 0]
    return min(ends) if ends else -1


def parse_response(data: bytes, *, method: str = "GET", eof: bool = False) -> ParsedResponse:
    """Parse the response bytes of one exchange with h11 (sans-I/O).

    ``eof``: the peer closed after ``data`` (ends a close-delimited body, or
    makes a truncated message an error). Used live and when reading files,
    so both see the same status, headers and body.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HDR_LIMIT)
    conn.send(h11.Request(method="HEAD" if method.upper() == "HEAD" else "GET", target="/",
                          headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status = reason = version = None
    fields: list[tuple[str, str]] = []
    body = bytearray()
    complete = False
    error = None
    pos = 0  # where the current header block starts
    header_raw = ""
    header_len = 0
    conn.receive_data(data)
    if eof:
        conn.receive_data(b"")
    try:
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                if eof and not complete:
                    error = "connection closed before the end of the response"
                break
            if isinstance(ev, (h11.InformationalResponse, h11.Response)):
                end = _header_end(data, pos)
                block = data[pos:end if end >= 0 else len(data)]
                if isinstance(ev, h11.Response):
                    status, reason = ev.status_code, ev.reason.decode("iso-8859-1")
                    version = ev.http_version.decode("ascii")
                    fields = [(k.decode("iso-8859-1"), v.decode("iso-8859-1"))
                              for k, v in ev.headers.raw_items()]
                    header_raw = block.decode("iso-8859-1")
                    header_len = end if end >= 0 else len(data)
                pos = end if end >= 0 else len(data)
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                complete = True
                break
            elif isinstance(ev, h11.ConnectionClosed):
                if not complete:
                    error = "connection closed before the end of the response"
                break
    except h11.RemoteProtocolError as exc:
        error = f"bad HTTP response: {exc}"
    return ParsedResponse(status, reason, version, HttpHeaders(fields), header_raw, header_len,
                          bytes(body), complete, error)


@dataclass
class HttpBuf:
    """One buffer sent or received, with its time (scamper's ``bufs``)."""
    dir: str            # "tx" | "rx"
    type: str           # "tls" | "hdr" | "data"
    time_ns: int
    data: bytes
    ts_source: str | None = None  # "kernel" | "user"

    def __post_init__(self) -> None:
        if self.dir not in ("tx", "rx"):
            raise ValueError(f"HttpBuf.dir must be 'tx' or 'rx', got {self.dir!r}")
        if self.type not in ("tls", "hdr", "data"):
            raise ValueError(f"HttpBuf.type must be 'tls', 'hdr' or 'data', got {self.type!r}")
        check_int("HttpBuf.time_ns", self.time_ns)
        if not isinstance(self.data, (bytes, bytearray)):
            raise TypeError(f"HttpBuf.data must be bytes, got {type(self.data).__name__}")
        self.data = bytes(self.data)

    @property
    def tv(self) -> _dt.datetime:
        return ns_to_datetime(self.time_ns)

    # -- scamper's ScamperHttpBuf names (marionet.compat.scamper) ------------
    @property
    def timestamp(self) -> _dt.datetime:
        return self.tv

    @property
    def payload(self) -> bytes | None:
        """The buffer's bytes (scamper: None when empty)."""
        return self.data or None

    def is_tx(self) -> bool:
        return self.dir == "tx"

    def is_rx(self) -> bool:
        return self.dir == "rx"

    def is_tls(self) -> bool:
        return self.type == "tls"

    def is_hdr(self) -> bool:
        return self.type == "hdr"

    def is_data(self) -> bool:
        return self.type == "data"


def _timedelta(ns: int | None) -> _dt.timedelta | None:
    return None if ns is None else ns_to_timedelta(ns)


@dataclass
class Http:
    """An HTTP(S) fetch from a vantage point to an explicit address.

    Stored: what was asked (url, method, request headers, limits), the timed
    buffers, timings, TLS facts and why it stopped. Derived from the buffers
    (not stored, not compared): ``status_code``, ``reason``,
    ``http_version``, ``headers``, ``header_raw``, ``body``, ``complete``.
    """

    dst: Addr
    url: str
    start_ns: int
    src: Addr | None = None
    sport: int | None = None
    dport: int | None = None
    method: str = "GET"
    userid: int = 0
    insecure: bool = False
    limit_time: _dt.timedelta = _dt.timedelta(seconds=60)
    limit_size: int | None = None
    stop_reason: HttpStop | str = HttpStop.NONE
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    bufs: list[HttpBuf] = field(default_factory=list)
    connect_ns: int | None = None
    tls_ns: int | None = None
    ttfb_ns: int | None = None
    total_ns: int | None = None
    timing_sources: dict[str, str] = field(default_factory=dict)
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_peer_subject: str | None = None
    tls_peer_issuer: str | None = None
    error: str | None = None
    vp: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inst: Any = field(default=None, repr=False, compare=False)
    status_code: int | None = field(default=None, init=False, compare=False)
    reason: str | None = field(default=None, init=False, compare=False, repr=False)
    http_version: str | None = field(default=None, init=False, compare=False, repr=False)
    headers: HttpHeaders = field(default_factory=HttpHeaders, init=False, compare=False, repr=False)
    header_raw: str = field(default="", init=False, compare=False, repr=False)
    body: bytes = field(default=b"", init=False, compare=False, repr=False)
    complete: bool = field(default=False, init=False, compare=False, repr=False)
    parse_error: str | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        dst = to_addr(self.dst)
        if dst is None:
            raise ValueError("Http.dst is required")
        self.dst = dst
        self.src = to_addr(self.src)
        check_int("start_ns", self.start_ns)
        check_int("userid", self.userid, minimum=0)
        for name in ("sport", "dport", "connect_ns", "tls_ns", "ttfb_ns", "total_ns", "limit_size"):
            check_int(name, getattr(self, name), optional=True)
        if not isinstance(self.limit_time, _dt.timedelta):
            self.limit_time = _dt.timedelta(microseconds=seconds_to_ns(self.limit_time) // 1000)
        self.stop_reason = HttpStop.coerce(self.stop_reason)
        self.request_headers = [(str(k), str(v)) for k, v in self.request_headers]
        self.reparse()

    def reparse(self) -> None:
        """Re-derive status, headers and body from ``bufs`` (after editing them)."""
        rx = b"".join(b.data for b in self.bufs if b.dir == "rx" and b.type != "tls")
        p = parse_response(rx, method=self.method, eof=self.stop_reason == HttpStop.DONE)
        self.status_code, self.reason, self.http_version = p.status_code, p.reason, p.http_version
        self.headers, self.header_raw, self.body = p.headers, p.header_raw, p.body
        self.complete, self.parse_error = p.complete, p.error

    # -- scamper-style views -------------------------------------------------
    @property
    def start(self) -> _dt.datetime:
        return ns_to_datetime(self.start_ns)

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme.lower()

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def file(self) -> str:
        """The request target (path and query), as scamper's ``file``."""
        u = urlsplit(self.url)
        return (u.path or "/") + (f"?{u.query}" if u.query else "")

    @property
    def hsrtt(self) -> _dt.timedelta | None:
        """TCP handshake time (scamper's name): ``connect_ns`` as a timedelta."""
        return _timedelta(self.connect_ns)

    connect_time = hsrtt

    @property
    def tls_time(self) -> _dt.timedelta | None:
        return _timedelta(self.tls_ns)

    @property
    def ttfb(self) -> _dt.timedelta | None:
        return _timedelta(self.ttfb_ns)

    @property
    def total_time(self) -> _dt.timedelta | None:
        return _timedelta(self.total_ns)

    @property
    def maxtime(self) -> _dt.timedelta:
        return self.limit_time

    @property
    def timed_buffers(self) -> list[tuple[int, bytes]]:
        """Received plaintext as ``(endpoint rx time ns, bytes)``, in order."""
        return [(b.time_ns, b.data) for b in self.bufs if b.dir == "rx" and b.type != "tls"]

    @property
    def text(self) -> str:
        """The body as text, in the Content-Type's charset (default UTF-8)."""
        charset = "utf-8"
        for part in self.headers.get("Content-Type", "").split(";")[1:]:
            k, _, v = part.strip().partition("=")
            if k.lower() == "charset" and v:
                charset = v.strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.text)

    # -- scamper's ScamperHttp names (marionet.compat.scamper) ---------------
    # Header dicts key on lowercased names as scamper's do, but keep values
    # as received (scamper lowercases them too: a known pain point).
    def __iter__(self) -> Iterator[HttpBuf]:
        """The timed buffers in order, as iterating a ScamperHttp yields."""
        return iter(self.bufs)

    @property
    def response(self) -> bytes | None:
        """The response body (scamper: None when there is none)."""
        return self.body or None

    @property
    def response_hdr(self) -> str | None:
        """The response header block as one string."""
        return self.header_raw or None

    @property
    def response_hdrs(self) -> dict[str, str] | None:
        if not self.header_raw:
            return None
        return {k.lower(): v for k, v in ((k, self.headers[k]) for k in self.headers)}

    def response_hdr_byname(self, name: str) -> str | None:
        if not isinstance(name, str):
            raise ValueError(f"header name must be a string, got {name!r}")
        return self.headers.get(name)

    @property
    def transmit_hdr(self) -> str | None:
        """The request header block as sent (the tx "hdr" buffers)."""
        raw = b"".join(b.data for b in self.bufs if b.dir == "tx" and b.type == "hdr")
        return raw.decode("iso-8859-1") if raw else None

    @property
    def transmit_hdrs(self) -> dict[str, str] | None:
        block = self.transmit_hdr
        if block is None:
            return None
        out: dict[str, str] = {}
        for line in block.split("\r\n")[1:]:
            k, sep, v = line.partition(":")
            if sep and k.strip():
                low = k.strip().lower()
                out[low] = f"{out[low]}, {v.strip()}" if low in out else v.strip()
        return out

    def transmit_hdr_byname(self, name: str) -> str | None:
        if not isinstance(name, str):
            raise ValueError(f"header name must be a string, got {name!r}")
        hdrs = self.transmit_hdrs or {}
        return hdrs.get(name.lower())

    @property
    def stop_reason_str(self) -> str:
        return str(self.stop_reason)

    def is_stop_done(self) -> bool:
        return self.stop_reason == HttpStop.DONE

    def to_json(self) -> str:
        """scamper's JSON line for this result."""
        from .jsonline import json_line
        return json_line(self)
    def to_text(self) -> str:
        """Text in the style of the classic tool (``marionet.results.text``)."""
        from .text import http_text

        return http_text(self)


# ---------------------------------------------------------------------------
# JSON (scamper-like field names; marionet-only data under "marionet")
# ---------------------------------------------------------------------------

_KEYS = frozenset({"type", "version", "userid", "src", "dst", "sport", "dport", "start", "hsrtt",
                   "maxtime", "flags", "stop_reason", "url", "scheme", "host", "file", "method",
                   "headers", "status_code", "bufs", "marionet"})


def http_to_json(h: Http) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "http", "version": HTTP_VERSION, "userid": h.userid}
    if h.src is not None:
        d["src"] = str(h.src)
    d["dst"] = str(h.dst)
    if h.sport is not None:
        d["sport"] = h.sport
    if h.dport is not None:
        d["dport"] = h.dport
    d["start"] = ns_to_timeval(h.start_ns)
    if h.connect_ns is not None:
        d["hsrtt"] = _ms(h.connect_ns)  # ms, three decimals, like RTTs
    lt = h.limit_time
    d["maxtime"] = {"sec": lt.days * 86400 + lt.seconds, "usec": lt.microseconds}
    d["flags"] = ["insecure"] if h.insecure else []
    d["stop_reason"] = str(h.stop_reason)
    d["url"] = h.url
    d["scheme"] = h.scheme
    d["host"] = h.host
    d["file"] = h.file
    d["method"] = h.method
    d["headers"] = [f"{k}: {v}" for k, v in h.request_headers]
    if h.status_code is not None:
        d["status_code"] = h.status_code  # derived; ignored on read
    bufs = []
    for b in h.bufs:
        e: dict[str, Any] = {"dir": b.dir, "type": b.type, "tv": ns_to_timeval(b.time_ns),
                             "len": len(b.data), "data": b.data.hex()}
        x: dict[str, Any] = {}
        if b.time_ns % 1000:
            x["time_ns"] = b.time_ns
        if b.ts_source is not None:
            x["ts_source"] = b.ts_source
        if x:
            e[EXT_KEY] = x
        bufs.append(e)
    d["bufs"] = bufs
    ext: dict[str, Any] = {}
    if h.start_ns % 1000:
        ext["start_ns"] = h.start_ns
    for name in ("connect_ns", "tls_ns", "ttfb_ns", "total_ns", "limit_size"):
        v = getattr(h, name)
        if v is not None:
            ext[name] = v
    if h.timing_sources:
        ext["timing_sources"] = dict(h.timing_sources)
    tls = {k: getattr(h, f"tls_{k}") for k in ("version", "cipher", "peer_subject", "peer_issuer")
           if getattr(h, f"tls_{k}") is not None}
    if tls:
        ext["tls"] = tls
    if h.error is not None:
        ext["error"] = h.error
    if h.vp:
        ext["vp"] = h.vp
    d[EXT_KEY] = ext
    for k, v in h.extra.items():
        if k not in _KEYS and k not in d:
            d[k] = v
    return d


def _ns_from(ext: Mapping[str, Any], key: str, tv: Any, what: str) -> int:
    if not isinstance(tv, Mapping) or not isinstance(tv.get("sec"), int) or not isinstance(tv.get("usec"), int):
        raise FormatError(f"http: {what} must be {{\"sec\",\"usec\"}}, got {tv!r}")
    base = timeval_to_ns(tv["sec"], tv["usec"])
    exact = ext.get(key)
    if isinstance(exact, int) and not isinstance(exact, bool) and exact // 1000 == base // 1000:
        return exact
    return base


def http_from_json(d: dict[str, Any]) -> Http:
    ext = d.get(EXT_KEY) or {}
    if not isinstance(ext, dict):
        raise FormatError("http: \"marionet\" must be an object")
    if not isinstance(d.get("dst"), str) or not isinstance(d.get("url"), str):
        raise FormatError("http: record needs \"dst\" and \"url\" strings")
    bufs = []
    for i, e in enumerate(d.get("bufs") or []):
        if not isinstance(e, dict) or not isinstance(e.get("data"), str):
            raise FormatError(f"http: bufs[{i}] must be an object with hex \"data\"")
        x = e.get(EXT_KEY) or {}
        try:
            data = bytes.fromhex(e["data"])
        except ValueError:
            raise FormatError(f"http: bufs[{i}].data is not hex") from None
        bufs.append(HttpBuf(dir=e.get("dir"), type=e.get("type"),
                            time_ns=_ns_from(x, "time_ns", e.get("tv"), f"bufs[{i}].tv"),
                            data=data, ts_source=x.get("ts_source")))
    headers = []
    for line in d.get("headers") or []:
        if not isinstance(line, str) or ":" not in line:
            raise FormatError(f"http: request header {line!r} is not \"Name: value\"")
        k, _, v = line.partition(":")
        headers.append((k, v.strip()))
    mt = d.get("maxtime") or {"sec": 60, "usec": 0}
    if not isinstance(mt, dict):
        raise FormatError("http: maxtime must be {\"sec\",\"usec\"}")
    hsrtt_ns = ext.get("connect_ns")
    if hsrtt_ns is None and isinstance(d.get("hsrtt"), (int, float)):
        hsrtt_ns = round(float(d["hsrtt"]) * 1_000_000)
    tls = ext.get("tls") or {}
    return Http(
        dst=d["dst"], url=d["url"], start_ns=_ns_from(ext, "start_ns", d.get("start"), "start"),
        src=d.get("src"), sport=d.get("sport"), dport=d.get("dport"), method=d.get("method", "GET"),
        userid=d.get("userid", 0), insecure="insecure" in (d.get("flags") or []),
        limit_time=_dt.timedelta(seconds=mt.get("sec", 0), microseconds=mt.get("usec", 0)),
        limit_size=ext.get("limit_size"), stop_reason=d.get("stop_reason", "none"),
        request_headers=headers, bufs=bufs, connect_ns=hsrtt_ns, tls_ns=ext.get("tls_ns"),
        ttfb_ns=ext.get("ttfb_ns"), total_ns=ext.get("total_ns"),
        timing_sources=dict(ext.get("timing_sources") or {}), tls_version=tls.get("version"),
        tls_cipher=tls.get("cipher"), tls_peer_subject=tls.get("peer_subject"),
        tls_peer_issuer=tls.get("peer_issuer"), error=ext.get("error"), vp=ext.get("vp"),
        extra={k: v for k, v in d.items() if k not in _KEYS})


register("http", Http, http_to_json, http_from_json)
