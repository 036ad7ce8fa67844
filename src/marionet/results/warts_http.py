"""warts "http" records (type 0x0f): ``Http`` to and from scamper's binary format.

Why: scamper writes HTTP measurements as http records; a script that sends
``do_http`` results to a ``.warts`` output file must get one that newer
scamper tools read (scamper 20211212 predates http records and skips them).

Layout (scamper_http_warts.c): a parameter block — list, cycle, userid,
src, dst (addresses written in full: ``uint8 len, uint8 type, bytes``),
sport, dport (left out when it is the scheme's default), start, stop, type
(0 https, 1 http), host, file, the request headers (``uint8`` count, then
strings), bufc, hsrtt (µs), flags (0x1 insecure), maxtime, errmsg — then
``bufc`` buffers, each a parameter block: ``dir << 7 | type`` (dir 0 rx,
1 tx; type 0 data, 1 hdr, 2 tls), time, ``uint16`` length, bytes.

Lossy on purpose where warts has no field: a buffer longer than a
parameter block holds is written as several buffers with the same time;
marionet's "limit" stop reason (body larger than ``limit_size``) is written
as scamper's "error"; TLS details and the tls/ttfb/total timings are JSON
only.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Callable
from urllib.parse import urlsplit

from .common import Addr, NS_PER_US
from .http import Http, HttpBuf, HttpStop
from .warts import Cursor, Truncated, read_params
from .warts import register as register_reader
from .warts_writer import RecordContext
from .warts_writer import register as register_writer

__all__ = ["HTTP_RTYPE", "http_body", "http_decode"]

HTTP_RTYPE = 0x0F

_TYPE_HTTPS, _TYPE_HTTP = 0, 1
_DEFAULT_PORT = {_TYPE_HTTPS: 443, _TYPE_HTTP: 80}
_STOPS = (HttpStop.NONE, HttpStop.HALTED, HttpStop.NOCONN, HttpStop.DONE, HttpStop.ERROR,
          HttpStop.TIMEOUT, HttpStop.INSECURE)
_FLAG_INSECURE = 0x1
_DIRS = {"rx": 0, "tx": 1}
_BUF_TYPES = {"data": 0, "hdr": 1, "tls": 2}
_CHUNK = 65000  # a buffer's bytes and its other fields must fit a 65535-byte block


def _addr_static(a: Addr, ctx: RecordContext) -> bytes:
    raw = a.packed
    return ctx.u8(len(raw)) + ctx.u8(1 if len(raw) == 4 else 2) + raw


def _duration(td: _dt.timedelta, ctx: RecordContext) -> bytes:
    us = td // _dt.timedelta(microseconds=1)
    return ctx.u32(us // 1_000_000) + ctx.u32(us % 1_000_000)


def _buf_block(b: HttpBuf, data: bytes, ctx: RecordContext) -> bytes:
    f: dict[int, bytes] = {}
    kind = _DIRS[b.dir] << 7 | _BUF_TYPES[b.type]
    if kind:
        f[1] = ctx.u8(kind)
    if b.time_ns:
        f[2] = ctx.timeval(b.time_ns)
    if data:
        f[3], f[4] = ctx.u16(len(data)), data
    return ctx.params(f)


def http_body(h: Http, ctx: RecordContext) -> bytes:
    """The warts http record body for ``h`` (without the record header)."""
    u = urlsplit(h.url)
    scheme = u.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"http record: URL scheme {scheme!r} is not http or https")
    htype = _TYPE_HTTPS if scheme == "https" else _TYPE_HTTP
    f: dict[int, bytes] = {}
    ctx.in_cycle(f)
    if h.userid:
        f[3] = ctx.u32(h.userid)
    if h.src is not None:
        f[4] = _addr_static(h.src, ctx)
    f[5] = _addr_static(h.dst, ctx)
    if h.sport:
        f[6] = ctx.u16(h.sport)
    dport = h.dport if h.dport is not None else (u.port or _DEFAULT_PORT[htype])
    if dport != _DEFAULT_PORT[htype]:
        f[7] = ctx.u16(dport)
    f[8] = ctx.timeval(h.start_ns)
    stop = _STOPS.index(h.stop_reason) if h.stop_reason in _STOPS else \
        (_STOPS.index(HttpStop.ERROR) if h.stop_reason == HttpStop.LIMIT else 0)
    if stop:
        f[9] = ctx.u8(stop)
    if htype:
        f[10] = ctx.u8(htype)
    f[11] = ctx.string(u.hostname or "")
    f[12] = ctx.string((u.path or "/") + (f"?{u.query}" if u.query else ""))
    if h.request_headers:
        if len(h.request_headers) > 255:
            raise ValueError(f"http record: {len(h.request_headers)} request headers do not fit (max 255)")
        f[13] = ctx.u8(len(h.request_headers)) + b"".join(
            ctx.string(f"{k}: {v}") for k, v in h.request_headers)
    chunks = [(b, b.data[i:i + _CHUNK]) for b in h.bufs for i in range(0, max(len(b.data), 1), _CHUNK)]
    if chunks:
        f[14] = ctx.u32(len(chunks))
    if h.connect_ns:
        f[15] = ctx.rtt(h.connect_ns)
    if h.insecure:
        f[16] = ctx.u32(_FLAG_INSECURE)
    if h.limit_time:
        f[17] = _duration(h.limit_time, ctx)
    if h.error:
        f[18] = ctx.string(h.error)
    return ctx.params(f) + b"".join(_buf_block(b, data, ctx) for b, data in chunks)


def _setter(store: dict[str, Any], name: str, fn: Callable[[Cursor], Any]) -> Callable[[Cursor], None]:
    def reader(c: Cursor) -> None:
        store[name] = fn(c)
    return reader


def _read_addr_static(c: Cursor) -> Addr | None:
    n, kind = c.u8(), c.u8()
    raw = c.take(n)
    return Addr(raw) if kind in (1, 2) and n in (4, 16) else None


def _read_headers(c: Cursor) -> list[str]:
    return [c.string() for _ in range(c.u8())]


def _read_duration(c: Cursor) -> _dt.timedelta:
    sec, usec = c.u32(), c.u32()
    return _dt.timedelta(seconds=sec, microseconds=usec)


_BUF_DIR_NAMES = {v: k for k, v in _DIRS.items()}
_BUF_TYPE_NAMES = {v: k for k, v in _BUF_TYPES.items()}


def _read_buf(c: Cursor) -> HttpBuf:
    v: dict[str, Any] = {"kind": 0, "len": 0}

    def data(c: Cursor) -> None:
        v["data"] = c.take(v["len"])
    read_params(c, [_setter(v, "kind", Cursor.u8), _setter(v, "tv", Cursor.timeval_ns),
                    _setter(v, "len", Cursor.u16), data])
    kind = v["kind"]
    btype = _BUF_TYPE_NAMES.get(kind & 0x7F)
    if btype is None:
        raise Truncated(f"unknown http buffer type {kind & 0x7F}")
    return HttpBuf(dir=_BUF_DIR_NAMES[kind >> 7], type=btype, time_ns=v.get("tv", 0),
                   data=v.get("data", b""))


def http_decode(body: bytes, reader: Any) -> Http:
    """A warts http record body → ``Http``."""
    c = Cursor(body)
    h: dict[str, Any] = {}
    read_params(c, [_setter(h, "list", Cursor.u32), _setter(h, "cycle", Cursor.u32),
                    _setter(h, "userid", Cursor.u32), _setter(h, "src", _read_addr_static),
                    _setter(h, "dst", _read_addr_static), _setter(h, "sport", Cursor.u16),
                    _setter(h, "dport", Cursor.u16), _setter(h, "start", Cursor.timeval_ns),
                    _setter(h, "stop", Cursor.u8), _setter(h, "type", Cursor.u8),
                    _setter(h, "host", Cursor.string), _setter(h, "file", Cursor.string),
                    _setter(h, "headers", _read_headers), _setter(h, "bufc", Cursor.u32),
                    _setter(h, "hsrtt", Cursor.u32), _setter(h, "flags", Cursor.u32),
                    _setter(h, "maxtime", _read_duration), _setter(h, "errmsg", Cursor.string)])
    if not isinstance(h.get("dst"), Addr):
        raise Truncated("http record without a destination address")
    htype = h.get("type", _TYPE_HTTPS)
    if htype not in _DEFAULT_PORT:
        raise Truncated(f"unknown http type {htype}")
    dport = h.get("dport", _DEFAULT_PORT[htype])
    host = h.get("host", "")
    netloc = f"[{host}]" if ":" in host else host
    if dport != _DEFAULT_PORT[htype]:
        netloc += f":{dport}"
    url = f"{'https' if htype == _TYPE_HTTPS else 'http'}://{netloc}{h.get('file', '/')}"
    bufs = [_read_buf(c) for _ in range(h.get("bufc", 0))]
    # adjacent pieces of one buffer (split on write) join again
    merged: list[HttpBuf] = []
    for b in bufs:
        prev = merged[-1] if merged else None
        if (prev is not None and (prev.dir, prev.type, prev.time_ns) == (b.dir, b.type, b.time_ns)
                and len(prev.data) % _CHUNK == 0 and prev.data):
            prev.data += b.data
        else:
            merged.append(b)
    headers = []
    for line in h.get("headers", []):
        k, _, val = line.partition(":")
        headers.append((k.strip(), val.strip()))
    stop_i = h.get("stop", 0)
    hsrtt = h.get("hsrtt")
    return Http(dst=h["dst"], url=url, start_ns=h.get("start", 0), src=h.get("src"),
                sport=h.get("sport"), dport=dport, userid=h.get("userid", 0),
                insecure=bool(h.get("flags", 0) & _FLAG_INSECURE),
                limit_time=h.get("maxtime", _dt.timedelta(seconds=60)),
                stop_reason=_STOPS[stop_i] if stop_i < len(_STOPS) else HttpStop.NONE,
                request_headers=headers, bufs=merged,
                connect_ns=None if hsrtt is None else hsrtt * NS_PER_US, error=h.get("errmsg"))


register_writer(Http, HTTP_RTYPE, http_body)
register_reader(HTTP_RTYPE, http_decode)
