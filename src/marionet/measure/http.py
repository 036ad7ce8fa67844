"""HTTP(S) fetch, written once over the packet interface, run in every placement.

``http(io, dst, url=…)`` connects a TCP socket *on the endpoint* to the
explicit address ``dst`` (scamper's do_http: the URL names the host for
``Host``/SNI/certificate checks, ``dst`` says where to connect — so one can
fetch from a chosen CDN replica), speaks HTTP/1.1 with h11 and TLS with
``ssl.MemoryBIO``, and returns a ``marionet.results.Http``.

Why it is shaped this way:

* **Validation first** (``plan_http``): a bad URL, header, CA bundle or
  limit raises ``ValueError`` before any socket exists — the endpoint
  placement refuses a bad task at once, and nothing reaches the network.
* **TLS and HTTP in the measurement, not the endpoint.** The endpoint only
  moves TCP bytes (``nsend``/``ndata``); ``SSLObject`` over memory BIOs and
  h11 run wherever the measurement runs. So a remote researcher fetches
  HTTPS through a VP that holds no key material or HTTP code of its own,
  and every placement runs the very same protocol code.
* **Endpoint stamps, not our clock.** Send times come from ``ntag`` (kernel
  TX), receive times from ``ndata`` (kernel RX); only the connect start is
  an estimate (see ``marionet.results.http`` for each timing's clock).
* **Failures are results.** Refused connects, certificate failures,
  timeouts, resets and malformed responses end with a stop reason and an
  ``error`` text; only bad parameters raise.
* **No tight time cap** (a scamper pain point): ``limit_time`` is any
  positive duration up to a week. As an endpoint task a fetch is bounded
  like every task (``check_task``: 600 s, and a body that fits one frame).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import random
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11

from marionet.client.errors import ConnectFailedError, ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure.params import MAX_TASK_S, shown, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import seconds as _seconds
from marionet.results.http import Http, HttpBuf, HttpStop, parse_response

__all__ = ["http", "plan_http", "HttpPlan", "DEFAULT_LIMIT_SIZE"]

# Body bytes. The response is held in memory, and in the endpoint placement
# the whole result (buffers as hex) must fit one wire frame (4 MiB): 1 MiB
# keeps the default safe in every placement; raise it for native/remote runs.
DEFAULT_LIMIT_SIZE = 1 << 20
_MAX_BODY = 1 << 20            # request body limit (it travels in one task/request)
MAX_LIMIT_TIME = 7 * 86400.0   # s: a fetch longer than a week is a mistake, not a measurement
MAX_LIMIT_SIZE = 1 << 30       # bytes held in memory by the measurement
#: limit_size for an endpoint task: its result carries the body as hex in one
#: 4 MiB frame, so more could not come back anyway (the endpoint turns a
#: result that does not fit into a task error) and would only cost it memory.
MAX_TASK_LIMIT_SIZE = 2 << 20
_MAX_HEADERS = 100
_MAX_HEADER_BYTES = 64 * 1024
_MAX_METHOD = 32
_MAX_URL = 8192
_MAX_CA = 1 << 20
_NS = 1_000_000_000
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_USER_AGENT = "marionet"


@dataclass(frozen=True)
class HttpPlan:
    """Validated HTTP parameters."""

    dst: str
    family: int
    url: str
    scheme: str
    host: str          # for SNI and certificate checks (no brackets)
    port: int
    target: str        # request target: path and query
    method: str
    headers: list[tuple[str, str]]  # request headers as sent, in order
    body: bytes | None
    insecure: bool
    ca: str | None
    limit_time_ns: int
    limit_size: int
    userid: int

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this fetch is too big a job for one endpoint
        task: ``limit_time`` bounds its duration, and the body it may hold
        must come back (as hex) in the task's one result frame."""
        task_duration("http", self.limit_time_ns / _NS, f"limit_time {self.limit_time_ns / _NS:g} s", max_s)
        if self.limit_size > MAX_TASK_LIMIT_SIZE:
            raise ValueError(f"limit_size must be within 1 - {MAX_TASK_LIMIT_SIZE} bytes for an endpoint task "
                             f"(the result carries the body in one frame), got {self.limit_size}")


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        items = list(headers.items())
    elif isinstance(headers, (list, tuple)):
        items = []
        for h in headers:
            if not isinstance(h, (list, tuple)) or len(h) != 2:
                raise ValueError(f"headers must be a dict or (name, value) pairs, got {shown(h)}")
            items.append((h[0], h[1]))
    else:
        raise ValueError(f"headers must be a dict or (name, value) pairs, got {type(headers).__name__}")
    if len(items) > _MAX_HEADERS:
        raise ValueError(f"headers: at most {_MAX_HEADERS} headers, got {len(items)}")
    out = []
    for k, v in items:
        if not isinstance(k, str) or not _TOKEN.match(k):
            raise ValueError(f"bad header name {shown(k)}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or any(c in v for c in "\r\n\0"):
            raise ValueError(f"bad value for header {k}: {shown(v)}")
        try:
            v.encode("iso-8859-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {k}: value must be ISO-8859-1 text") from None
        out.append((k, v.strip()))
    size = sum(len(k) + len(v) + 4 for k, v in out)
    if size > _MAX_HEADER_BYTES:
        raise ValueError(f"headers: at most {_MAX_HEADER_BYTES} bytes in all, got {size}")
    return out


def plan_http(dst: Any = None, *, url: Any, headers: Any = None, insecure: bool = False,
              ca: str | None = None, limit_time: Any = 60.0, limit_size: int = DEFAULT_LIMIT_SIZE,
              method: str = "GET", body: bytes | str | None = None, family: int | None = None,
              userid: int = 0) -> HttpPlan:
    """Check every parameter (``ValueError`` with the reason) and build the request.

    ``dst`` is the address to connect to; if None, the URL's host must be an
    IP literal. ``headers`` (dict or pairs) add to or replace the defaults
    (Host, User-Agent, Accept, Connection: close); names keep their case.
    ``ca`` is PEM text of extra trusted roots (e.g. a lab CA).
    """
    if not isinstance(url, str) or not url:
        raise ValueError(f"url must be a non-empty string, got {shown(url)}")
    if len(url) > _MAX_URL:
        raise ValueError(f"url: at most {_MAX_URL} characters, got {len(url)}")
    if any(c in url for c in " \r\n\t\0"):
        raise ValueError(f"url {shown(url)} contains whitespace or control characters")
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"url scheme must be http or https, got {shown(u.scheme)}")
    try:
        host, port = u.hostname, u.port
    except ValueError as exc:
        raise ValueError(f"bad url {shown(url)}: {exc}") from None
    if not host:
        raise ValueError(f"url {shown(url)} has no host")
    port = port if port is not None else (443 if scheme == "https" else 80)
    if not 1 <= port <= 65535:
        raise ValueError(f"url port must be within 1 - 65535, got {port}")
    if dst is None:
        try:
            d = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"dst is required when the url host ({host}) is not an IP address") from None
    else:
        try:
            d = ipaddress.ip_address(str(dst))
        except ValueError:
            raise ValueError(f"dst {shown(dst)} is not an IPv4 or IPv6 address") from None
    if d.is_multicast or d.is_unspecified:
        raise ValueError(f"dst {d} is a multicast or unspecified address")
    if family is not None and (not isinstance(family, int) or isinstance(family, bool) or family not in (4, 6)):
        raise ValueError(f"family must be 4 or 6, got {shown(family)}")
    if family is not None and family != d.version:
        raise ValueError(f"dst {d} is IPv{d.version} but family is {family}")
    if not isinstance(method, str) or not _TOKEN.match(method) or len(method) > _MAX_METHOD:
        raise ValueError(f"bad method {shown(method)} (an HTTP token of 1 - {_MAX_METHOD} characters)")
    method = method.upper()
    if isinstance(body, str):
        body = body.encode()
    elif isinstance(body, (bytearray, memoryview)):
        body = bytes(body)
    elif body is not None and not isinstance(body, bytes):
        raise ValueError(f"body must be bytes or text, got {type(body).__name__}")
    if body is not None and len(body) > _MAX_BODY:
        raise ValueError(f"request body limit is {_MAX_BODY} bytes, got {len(body)}")
    if not isinstance(insecure, bool):
        raise ValueError(f"insecure must be True or False, got {shown(insecure)}")
    if ca is not None:
        if not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca:
            raise ValueError("ca must be PEM text of one or more certificates")
        if len(ca) > _MAX_CA:
            raise ValueError(f"ca: at most {_MAX_CA} characters of PEM, got {len(ca)}")
        try:
            ssl.create_default_context().load_verify_locations(cadata=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"ca: not usable PEM certificates: {exc}") from None
    lt = _seconds("limit_time", limit_time, 0, MAX_LIMIT_TIME, lo_open=True)
    limit_size = _int("limit_size", limit_size, 1, MAX_LIMIT_SIZE)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    user = _header_pairs(headers)
    given = {k.lower() for k, _ in user}
    if "transfer-encoding" in given:
        raise ValueError("Transfer-Encoding is not supported in requests (bodies go with Content-Length)")
    hosthdr = f"[{host}]" if ":" in host else host
    if u.port is not None and port != (443 if scheme == "https" else 80):
        hosthdr += f":{port}"
    hdrs: list[tuple[str, str]] = []
    for name, value in (("Host", hosthdr), ("User-Agent", _USER_AGENT), ("Accept", "*/*"),
                        ("Connection", "close")):
        if name.lower() not in given:
            hdrs.append((name, value))
    hdrs += user
    if body is not None and "content-length" not in given:
        hdrs.append(("Content-Length", str(len(body))))
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    try:  # h11 has the last word on what is a valid request
        h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=hdrs))
    except h11.LocalProtocolError as exc:
        raise ValueError(f"bad request: {exc}") from None
    return HttpPlan(dst=str(d), family=d.version, url=url, scheme=scheme, host=host, port=port,
                    target=target, method=method, headers=hdrs, body=body, insecure=insecure, ca=ca,
                    limit_time_ns=lt, limit_size=limit_size, userid=userid)


def _tls_context(plan: HttpPlan) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if plan.ca:
        ctx.load_verify_locations(cadata=plan.ca)
    if plan.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _name_text(name: Any) -> str | None:
    """``getpeercert()``'s subject tuple → "CN=a,O=b" (RFC 4514 order)."""
    if not name:
        return None
    parts = []
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    for rdn in reversed(name):
        parts.append("+".join(f"{short.get(k, k)}={v}" for k, v in rdn))
    return ",".join(parts)


def _peer_names(obj: ssl.SSLObject) -> tuple[str | None, str | None]:
    """Subject and issuer of the server's leaf certificate. With
    verification off, ``getpeercert()`` is empty, so parse the DER."""
    cert = obj.getpeercert()
    if cert:
        return _name_text(cert.get("subject")), _name_text(cert.get("issuer"))
    der = obj.getpeercert(binary_form=True)
    if not der:
        return None, None
    try:
        from cryptography import x509

        c = x509.load_der_x509_certificate(der)
        return c.subject.rfc4514_string(), c.issuer.rfc4514_string()
    except Exception:  # noqa: BLE001 - an unparsable certificate is a fact, not a failure
        return None, None


class _Exchange:
    """One fetch's state: buffers, TLS, h11 and timings (the driver feeds it)."""

    def __init__(self, plan: HttpPlan, io: PacketSession, sid: int, stream: Any, offset: int,
                 ctx: ssl.SSLContext | None) -> None:
        self.plan, self.io, self.sid, self.stream, self.offset = plan, io, sid, stream, offset
        self.ctx = ctx
        self.bufs: list[HttpBuf] = []
        self.tags: dict[int, list[HttpBuf]] = {}
        self.tag_next = random.SystemRandom().randrange(1, 2**31)
        self.tls: ssl.SSLObject | None = None
        self.inb = ssl.MemoryBIO()
        self.outb = ssl.MemoryBIO()
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        self.rx_plain = bytearray()
        self.body_len = 0
        self.first_tx: HttpBuf | None = None   # ClientHello
        self.req_buf: HttpBuf | None = None    # the request's last send
        self.established_ns: int | None = None
        self.tls_done_ns: int | None = None
        self.first_rx_ns: int | None = None
        self.last_rx_ns: int | None = None
        self.response_done = False
        self.eof = False

    async def send(self, wire: bytes, records: list[tuple[str, bytes]]) -> HttpBuf:
        """Send ``wire`` in one ``nsend`` and record ``records`` (kind, bytes)
        for it — the plaintext request for TLS, not its ciphertext. The
        buffers' time becomes the kernel's TX stamp when the ``ntag``
        arrives (until then: our estimate on the endpoint clock)."""
        now = time.time_ns() + self.offset
        bufs = [HttpBuf("tx", kind, now, data, "user") for kind, data in records if data]
        tag = self.tag_next
        self.tag_next += 1
        self.tags[tag] = bufs
        self.bufs += bufs
        await self.io.nsend(self.sid, wire, tag=tag)
        return bufs[-1]

    async def flush_tls(self) -> HttpBuf | None:
        data = self.outb.read()
        if data:
            return await self.send(data, [("tls", data)])
        return None

    def on_ntag(self, note: Any) -> None:
        for buf in self.tags.pop(note.tag, []):
            if note.time_ns is not None:
                buf.time_ns, buf.ts_source = note.time_ns, note.ts_source

    def on_plain(self, data: bytes, rx_ns: int, src: str | None) -> None:
        """Application bytes from the server."""
        if not data:
            return
        if self.first_rx_ns is None:
            self.first_rx_ns = rx_ns
        self.last_rx_ns = rx_ns
        self.bufs.append(HttpBuf("rx", "data", rx_ns, data, src))  # split into hdr/data later
        self.rx_plain += data
        self.h11.receive_data(data)
        self._events()

    def on_eof(self) -> None:
        if not self.eof:
            self.eof = True
            self.h11.receive_data(b"")
            self._events()

    def _events(self) -> None:
        while not self.response_done:
            ev = self.h11.next_event()
            if ev is h11.NEED_DATA or ev is h11.PAUSED:
                return
            if isinstance(ev, h11.Data):
                self.body_len += len(ev.data)
            elif isinstance(ev, h11.EndOfMessage):
                self.response_done = True
            elif isinstance(ev, h11.ConnectionClosed):
                return

    def split_rx(self) -> None:
        """Mark the plaintext buffers holding the header block as "hdr"
        (a buffer straddling its end is split at it, same time)."""
        hdr_len = parse_response(bytes(self.rx_plain), method=self.plan.method, eof=self.eof).header_len
        out: list[HttpBuf] = []
        pos = 0
        for b in self.bufs:
            if b.dir != "rx" or b.type == "tls":
                out.append(b)
                continue
            n = len(b.data)
            if pos + n <= hdr_len:
                b.type = "hdr"
                out.append(b)
            elif pos >= hdr_len:
                out.append(b)
            else:
                cut = hdr_len - pos
                out.append(HttpBuf("rx", "hdr", b.time_ns, b.data[:cut], b.ts_source))
                out.append(HttpBuf("rx", "data", b.time_ns, b.data[cut:], b.ts_source))
            pos += n
        self.bufs = out


async def http(io: PacketSession, dst: Any = None, *, url: str, headers: Any = None,
               insecure: bool = False, ca: str | None = None, limit_time: Any = 60.0,
               limit_size: int = DEFAULT_LIMIT_SIZE, method: str = "GET",
               body: bytes | str | None = None, family: int | None = None, userid: int = 0,
               halt: asyncio.Event | None = None) -> Http:
    """Fetch ``url`` from the endpoint behind ``io``, connecting to ``dst``.

    Parameters as ``plan_http``. Returns an ``Http`` whatever happens on the
    network (stop reason and ``error`` say what); ``halt`` stops early with
    stop reason ``halted``.
    """
    plan = plan_http(dst, url=url, headers=headers, insecure=insecure, ca=ca, limit_time=limit_time,
                     limit_size=limit_size, method=method, body=body, family=family, userid=userid)
    deadline = time.monotonic() + plan.limit_time_ns / _NS
    # Loading the trust store takes tens of ms: do it before connecting, so
    # the handshake starts the moment the connection is up (total time).
    ctx = _tls_context(plan) if plan.scheme == "https" else None
    with io.stream() as stream:
        off = await io.clock_offset(samples=3)
        offset, ctl_rtt = off.offset_ns, off.rtt_ns
        t_req = time.time_ns()
        # When the connect request reaches the endpoint, on its clock.
        start_ep = t_req + offset + ctl_rtt // 2
        result = dict(dst=plan.dst, url=plan.url, start_ns=start_ep, dport=plan.port, method=plan.method,
                      userid=plan.userid, insecure=plan.insecure,
                      limit_time=_dt.timedelta(microseconds=plan.limit_time_ns // 1000),
                      limit_size=plan.limit_size, request_headers=plan.headers, vp=io.endpoint_name or None)
        sid: int | None = None
        try:
            remaining = deadline - time.monotonic()
            try:
                sid = await asyncio.wait_for(
                    io.nopen("tcp", family=plan.family, raddr=plan.dst, rport=plan.port,
                             timeout=max(0.001, remaining), stream=stream),
                    max(0.001, remaining) + 5 + ctl_rtt / _NS)
            except asyncio.TimeoutError:
                return Http(**result, stop_reason=HttpStop.TIMEOUT, error="connect timed out")
            except ConnectFailedError as exc:
                return Http(**result, stop_reason=HttpStop.NOCONN, error=exc.reason)
            except EndpointError as exc:
                stop = HttpStop.TIMEOUT if exc.code == "timeout" else HttpStop.NOCONN
                return Http(**result, stop_reason=stop, error=exc.reason)
            info = io.sockets.get(sid)
            if info is not None:
                result.update(src=info.laddr, sport=info.lport)
            ex = _Exchange(plan, io, sid, stream, offset, ctx)
            stop, error, extra = await _drive(ex, plan, deadline, halt)
            await _collect_stamps(ex)
            ex.split_rx()
            if ex.established_ns is not None:
                result["connect_ns"] = max(0, ex.established_ns - start_ep)
            sources = {"connect": "user", "total": "user/kernel"}
            if ex.tls_done_ns is not None and ex.first_tx is not None:
                result["tls_ns"] = ex.tls_done_ns - ex.first_tx.time_ns
                sources["tls"] = f"{ex.first_tx.ts_source}/kernel"
            if ex.first_rx_ns is not None and ex.req_buf is not None:
                result["ttfb_ns"] = ex.first_rx_ns - ex.req_buf.time_ns
                sources["ttfb"] = f"{ex.req_buf.ts_source}/kernel"
            if ex.last_rx_ns is not None and stop == HttpStop.DONE:
                result["total_ns"] = ex.last_rx_ns - start_ep
            if ex.tls is not None and ex.tls_done_ns is not None:
                result["tls_version"] = ex.tls.version()
                c = ex.tls.cipher()
                result["tls_cipher"] = c[0] if c else None
                result["tls_peer_subject"], result["tls_peer_issuer"] = _peer_names(ex.tls)
            return Http(**result, bufs=ex.bufs, stop_reason=stop, error=error, timing_sources=sources,
                        extra=extra)
        finally:
            if sid is not None:
                try:
                    await io.nclose(sid)
                except (EndpointError, ConnectionLost):
                    pass


async def _next(ex: _Exchange, deadline: float, halt: asyncio.Event | None) -> Any:
    """The next notification for us, None at the deadline, "halt" if halted."""
    while True:
        if halt is not None and halt.is_set():
            return "halt"
        n = ex.stream.poll()
        if n is not None:
            return n
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            return None
        if halt is None:
            n = await ex.stream.next(timeout)
            if n is None:
                continue
            return n
        nt = asyncio.ensure_future(ex.stream.next(timeout))
        hw = asyncio.ensure_future(halt.wait())
        try:
            await asyncio.wait({nt, hw}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hw.cancel()
            if not nt.done():
                nt.cancel()
                try:
                    await nt
                except (asyncio.CancelledError, ConnectionLost):
                    pass
        if nt.done() and not nt.cancelled() and nt.result() is not None:
            return nt.result()


async def _drive(ex: _Exchange, plan: HttpPlan, deadline: float,
                 halt: asyncio.Event | None) -> tuple[HttpStop, str | None, dict[str, Any]]:
    """Run the exchange; returns (stop reason, error text, extra)."""
    extra: dict[str, Any] = {}
    phase = "connect"  # connect → tls → response
    pending: list[Any] = []   # notifications to handle before reading more
    deferred: list[Any] = []  # data seen before "established" (not expected; order kept)

    async def start_request(tls_tail: bytes = b"") -> None:
        """Send the request; under TLS, in the same segment as the client's
        last handshake flight (``tls_tail``): sent apart, Nagle would hold
        the request back a whole round trip until that flight is acked."""
        head = ex.h11.send(h11.Request(method=plan.method, target=plan.target, headers=plan.headers))
        body = ex.h11.send(h11.Data(data=plan.body)) if plan.body else b""
        tail = ex.h11.send(h11.EndOfMessage())
        records = [("hdr", head), ("data", body + tail)]
        if ex.tls is not None:
            ex.tls.write(head + body + tail)
            ex.req_buf = await ex.send(tls_tail + ex.outb.read(), [("tls", tls_tail)] + records)
        else:
            ex.req_buf = await ex.send(head + body + tail, records)

    async def tls_step() -> bool:
        """Advance the handshake; True once it is complete (its last
        flight then stays in the BIO for ``start_request``)."""
        assert ex.tls is not None
        try:
            ex.tls.do_handshake()
        except ssl.SSLWantReadError:
            sent = await ex.flush_tls()
            if ex.first_tx is None:
                ex.first_tx = sent
            return False
        return True

    try:
        while True:
            n = pending.pop(0) if pending else await _next(ex, deadline, halt)
            if n is None:
                return HttpStop.TIMEOUT, f"no complete response within {plan.limit_time_ns / _NS:g} s " \
                                         f"(while in {phase})", extra
            if n == "halt":
                return HttpStop.HALTED, None, extra
            kind = n.kind
            if kind == "ndrop":
                return HttpStop.ERROR, f"notifications were dropped ({n.count}): the byte stream is incomplete", extra
            if getattr(n, "sock", None) != ex.sid:
                continue
            if kind == "ntag":
                ex.on_ntag(n)
                continue
            if kind == "nstat":
                if n.state == "established" and phase == "connect":
                    ex.established_ns = n.time_ns
                    pending[:0], deferred[:] = deferred, []
                    if plan.scheme == "https":
                        phase = "tls"
                        assert ex.ctx is not None
                        ex.tls = ex.ctx.wrap_bio(ex.inb, ex.outb, server_hostname=plan.host)
                        await tls_step()
                    else:
                        phase = "response"
                        await start_request()
                elif n.state == "peer-closed":
                    if phase == "tls":
                        return HttpStop.ERROR, "the server closed the connection during the TLS handshake", extra
                    try:
                        if ex.tls is not None:
                            ex.inb.write_eof()
                            _drain_tls(ex, n.time_ns, n.ts_source)
                        ex.on_eof()
                    except h11.RemoteProtocolError as exc:
                        return HttpStop.ERROR, f"the server closed the connection before the end of the " \
                                               f"response ({exc})", extra
                    return _finish(ex)
                elif n.state in ("reset", "timeout", "error"):
                    return HttpStop.ERROR, f"connection {n.state}" + (f": {n.reason}" if n.reason else ""), extra
                continue
            if kind != "ndata":
                continue
            if phase == "connect":
                deferred.append(n)
                continue
            if ex.tls is None:
                ex.on_plain(n.data, n.time_ns, n.ts_source)
            else:
                if phase == "tls":
                    ex.bufs.append(HttpBuf("rx", "tls", n.time_ns, n.data, n.ts_source))
                ex.inb.write(n.data)
                if phase == "tls":
                    try:
                        done = await tls_step()
                    except ssl.SSLCertVerificationError as exc:
                        return HttpStop.INSECURE, f"certificate verification failed: {exc.verify_message}", extra
                    except ssl.SSLError as exc:
                        return HttpStop.ERROR, f"TLS handshake failed: {exc.reason or exc}", extra
                    if not done:
                        continue
                    ex.tls_done_ns = n.time_ns
                    phase = "response"
                    await start_request(ex.outb.read())
                try:
                    _drain_tls(ex, n.time_ns, n.ts_source)
                except ssl.SSLError as exc:
                    return HttpStop.ERROR, f"TLS error: {exc.reason or exc}", extra
            if ex.response_done:
                return _finish(ex)
            if ex.body_len > plan.limit_size:
                return HttpStop.LIMIT, f"body exceeds limit_size ({plan.limit_size} bytes)", extra
    except h11.RemoteProtocolError as exc:
        return HttpStop.ERROR, f"bad HTTP response: {exc}", extra
    except ssl.SSLError as exc:
        return HttpStop.ERROR, f"TLS error: {exc.reason or exc}", extra
    except ConnectionLost as exc:
        return HttpStop.ERROR, f"session lost: {exc}", extra
    except EndpointError as exc:
        return HttpStop.ERROR, str(exc), extra


async def _collect_stamps(ex: _Exchange, grace: float = 2.0) -> None:
    """Wait briefly for the kernel TX stamps still owed: the response can
    overtake the ``ntag`` of the request that drew it, and a buffer stamped
    by our own clock would make TTFB a mixed-clock figure."""
    until = time.monotonic() + grace
    while ex.tags:
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            n = await ex.stream.next(left)
        except ConnectionLost:
            return
        if n is None:
            return
        if n.kind == "ntag" and getattr(n, "sock", None) == ex.sid:
            ex.on_ntag(n)


def _drain_tls(ex: _Exchange, rx_ns: int, src: str | None) -> None:
    """Decrypt whatever the incoming BIO holds and feed it to HTTP."""
    assert ex.tls is not None
    while True:
        try:
            data = ex.tls.read(1 << 16)
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            ex.on_eof()
            return
        if not data:
            ex.on_eof()
            return
        ex.on_plain(data, rx_ns, src)
        if ex.response_done:
            return


def _finish(ex: _Exchange) -> tuple[HttpStop, str | None, dict[str, Any]]:
    if ex.response_done:
        return HttpStop.DONE, None, {}
    if not ex.rx_plain:
        return HttpStop.ERROR, "the server closed the connection without a response", {}
    return HttpStop.ERROR, "the server closed the connection before the end of the response", {}
