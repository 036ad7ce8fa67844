"""marionet.measure.http against real HTTP/1.1 and HTTPS servers on loopback,
in all three placements (native, remote over the wire, endpoint task).

The servers are small asyncio servers written here, so each test controls
exactly what the wire carries (chunking, header case, never answering);
the HTTPS one uses a certificate from a test ``LabCA``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from marionet.endpoint.local import native_session
from marionet.lab.labca import LabCA
from marionet.measure.http import http, plan_http
from marionet.results import File, Http, HttpStop, dumps, from_json, loads

BIG = bytes(range(256)) * (6 * 1024)  # 1.5 MiB: as hex, the endpoint task's result still fits a 4 MiB frame
HOST = "www.test.example"


# ------------------------------------------------------------------ servers
class Server:
    """A loopback HTTP/1.1 server with fixed routes (optionally over TLS)."""

    def __init__(self) -> None:
        self.handlers: set[asyncio.Task] = set()
        self.servers: list[asyncio.base_events.Server] = []
        self.port = 0
        self.requests: list[bytes] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> "Server":
        s4 = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls)
        self.port = s4.sockets[0].getsockname()[1]
        self.servers.append(s4)
        with contextlib.suppress(OSError):
            self.servers.append(await asyncio.start_server(self._handle, "::1", self.port, ssl=tls))
        return self

    async def close(self) -> None:
        for s in self.servers:
            s.close()
        for t in list(self.handlers):
            t.cancel()
        for s in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(s.wait_closed(), 2)

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            head = await r.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for ln in lines[1:]:
                if ln.lower().startswith("content-length:"):
                    length = int(ln.split(":", 1)[1])
            body = await r.readexactly(length) if length else b""
            await self.route(method, path, head, body, w)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self.handlers.discard(task)
            w.close()

    async def route(self, method: str, path: str, head: bytes, body: bytes, w: asyncio.StreamWriter) -> None:
        def reply(status: str, payload: bytes, *extra: str) -> None:
            hdrs = "".join(f"{h}\r\n" for h in extra)
            w.write(f"HTTP/1.1 {status}\r\n{hdrs}Content-Length: {len(payload)}\r\n\r\n".encode() + payload)

        if path == "/":
            reply("200 OK", b"hello marionet\n", "Content-Type: text/plain; charset=utf-8",
                  "X-MiXeD-Case: VaLuE Keeps CASE", "Set-Cookie: a=1", "Set-Cookie: b=2")
        elif path == "/chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"first,", b"second,", b"third"):
                w.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await w.drain()
                await asyncio.sleep(0.05)
            w.write(b"0\r\n\r\n")
        elif path == "/redirect":
            reply("301 Moved Permanently", b"", "Location: /elsewhere")
        elif path == "/big":
            reply("200 OK", BIG, "Content-Type: application/octet-stream")
        elif path == "/close":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        elif path == "/echo":
            reply("200 OK", method.encode() + b" " + body)
        elif path == "/headers":
            reply("200 OK", head)
        elif path == "/hang":
            await asyncio.sleep(3600)
        elif path == "/truncated":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        else:
            reply("404 Not Found", b"no such page")
        await w.drain()


@pytest.fixture(scope="module")
def labca(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabCA, Path, Path]:
    d = tmp_path_factory.mktemp("http-ca")
    ca = LabCA.load_or_create(d / "ca")
    cert, key = ca.issue_server_cert([HOST], ["127.0.0.1", "::1"], d, stem="server")
    return ca, cert, key


@pytest.fixture
def ca_pem(labca: tuple[LabCA, Path, Path]) -> str:
    return labca[0].root_path.read_text()


@pytest_asyncio.fixture
async def web() -> AsyncIterator[Server]:
    s = await Server().start()
    yield s
    await s.close()


@pytest_asyncio.fixture
async def tlsweb(labca: tuple[LabCA, Path, Path]) -> AsyncIterator[Server]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(labca[1]), str(labca[2]))
    s = await Server().start(ctx)
    yield s
    await s.close()


# --------------------------------------------------------------- placements
Run = Callable[..., Awaitable[Http]]


async def _task_result(session: Any, tid: int, timeout: float) -> Any:
    while True:
        n = await session.next_notification(timeout)
        assert n is not None, f"no result for task {tid}"
        if n.kind == "taskres" and n.task == tid:
            return n


@pytest_asyncio.fixture(params=["native", "remote", "endpoint"])
async def fetch(request: pytest.FixtureRequest, session: Any) -> AsyncIterator[Run]:
    """``await fetch(dst, url=…, …)`` in the parametrised placement
    (``session`` is conftest's remote session to an in-process endpoint)."""
    if request.param == "native":
        async with native_session() as s:
            async def run(dst: str, **kw: Any) -> Http:
                return await http(s, dst, **kw)
            yield run
        return
    if request.param == "remote":
        async def run(dst: str, **kw: Any) -> Http:
            return await http(session, dst, **kw)
    else:
        async def run(dst: str, **kw: Any) -> Http:
            tid = await session.task("http", {"dst": dst, **kw})
            n = await asyncio.wait_for(_task_result(session, tid, 30), 30)
            assert n.error is None, n.error
            return from_json(n.result)
    yield run


def _url(server: Server, path: str = "/", scheme: str = "http", host: str = HOST) -> str:
    return f"{scheme}://{host}:{server.port}{path}"


# ------------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs,match", [
    (dict(dst="127.0.0.1", url="ftp://x/"), "scheme"),
    (dict(dst="127.0.0.1", url="http:///nohost"), "no host"),
    (dict(dst="127.0.0.1", url="http://x:99999/"), "[Pp]ort"),
    (dict(dst="nope", url="http://x/"), "not an IPv4 or IPv6"),
    (dict(dst=None, url="http://name.example/"), "dst is required"),
    (dict(dst="224.0.0.1", url="http://x/"), "multicast"),
    (dict(dst="::1", url="http://x/", family=4), "family"),
    (dict(dst="127.0.0.1", url="http://x/", limit_time=0), "positive"),
    (dict(dst="127.0.0.1", url="http://x/", limit_time="60"), "seconds"),
    (dict(dst="127.0.0.1", url="http://x/", limit_size=0), "limit_size"),
    (dict(dst="127.0.0.1", url="http://x/", headers={"Bad Name": "x"}), "header name"),
    (dict(dst="127.0.0.1", url="http://x/", headers={"X-A": "a\r\nInjected: 1"}), "bad value"),
    (dict(dst="127.0.0.1", url="http://x/", headers=["X-A"]), "pairs"),
    (dict(dst="127.0.0.1", url="http://x/", ca="not pem"), "PEM"),
    (dict(dst="127.0.0.1", url="http://x/", method="GE T"), "method"),
    (dict(dst="127.0.0.1", url="http://x/", insecure="yes"), "insecure"),
    (dict(dst="127.0.0.1", url="http://x/", body=bytes(2 << 20)), "body limit"),
    (dict(dst="127.0.0.1", url="http://x /"), "whitespace"),
])
def test_bad_parameters(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_http(**kwargs)


def test_plan_defaults_and_headers() -> None:
    p = plan_http("127.0.0.1", url="https://www.test.example/a/b?c=1")
    assert (p.port, p.target, p.host, p.scheme) == (443, "/a/b?c=1", "www.test.example", "https")
    assert p.headers[0] == ("Host", "www.test.example")
    assert ("Connection", "close") in p.headers
    p = plan_http(url="http://[::1]:8080", headers={"X-Custom-CaSe": "Value", "user-agent": "me"})
    assert p.dst == "::1" and p.family == 6 and p.target == "/"
    names = [k for k, _ in p.headers]
    assert ("Host", "[::1]:8080") in p.headers and "User-Agent" not in names and ("user-agent", "me") in p.headers
    assert ("X-Custom-CaSe", "Value") in p.headers
    assert plan_http("127.0.0.1", url="http://x/", limit_time=3600 * 24).limit_time_ns == 86400 * 10**9  # no cap
    assert ("Content-Length", "3") in plan_http("127.0.0.1", url="http://x/", method="post", body="abc").headers


async def test_bad_input_opens_nothing() -> None:
    async with native_session() as s:
        with pytest.raises(ValueError):
            await http(s, "127.0.0.1", url="gopher://x/")
        assert s.sockets == {}


# ------------------------------------------------------------------- HTTP
async def test_get_with_content_length(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web))
    assert r.stop_reason == HttpStop.DONE and r.error is None
    assert r.status_code == 200 and r.reason == "OK" and r.http_version == "1.1"
    assert r.body == b"hello marionet\n" and r.text == "hello marionet\n"
    assert str(r.dst) == "127.0.0.1" and r.dport == web.port and r.sport and str(r.src) == "127.0.0.1"
    assert r.header_raw.startswith("HTTP/1.1 200 OK\r\n") and r.header_raw.endswith("\r\n\r\n")
    # timings: all present, sane, and in order
    assert r.connect_ns is not None and 0 <= r.connect_ns < 1_000_000_000
    assert r.ttfb_ns is not None and 0 < r.ttfb_ns < 1_000_000_000
    assert r.total_ns is not None and r.total_ns >= r.ttfb_ns
    assert r.tls_ns is None and r.tls_version is None
    assert r.timing_sources["ttfb"] == "kernel/kernel"
    tx = [b for b in r.bufs if b.dir == "tx"]
    assert tx[0].type == "hdr" and tx[0].data.startswith(b"GET / HTTP/1.1\r\nHost: www.test.example:")
    assert all(b.ts_source == "kernel" for b in r.bufs)
    assert r.timed_buffers and r.timed_buffers[0][0] >= tx[0].time_ns
    assert web.requests[-1].startswith(b"GET / HTTP/1.1\r\n")


async def test_header_case_and_values_preserved(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web), headers={"X-Custom-CaSe": "KeepMe"})
    assert "X-MiXeD-Case" in list(r.headers)  # original spelling when iterating
    assert r.headers["x-mixed-case"] == "VaLuE Keeps CASE" == r.headers["X-MIXED-CASE"]
    assert "x-mixed-case" in r.headers and "x-absent" not in r.headers
    assert r.headers.get_all("set-cookie") == ["a=1", "b=2"] and r.headers["Set-Cookie"] == "a=1, b=2"
    assert "X-MiXeD-Case: VaLuE Keeps CASE\r\n" in r.header_raw
    # and our request's header case reached the server as written
    assert b"\r\nX-Custom-CaSe: KeepMe\r\n" in web.requests[-1]


async def test_chunked_body(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/chunked"))
    assert r.stop_reason == HttpStop.DONE and r.status_code == 200
    assert r.body == b"first,second,third"
    assert r.headers["transfer-encoding"] == "chunked"
    # the server paused between chunks: several timed buffers, increasing times
    times = [t for t, _ in r.timed_buffers]
    assert len(times) >= 3 and times == sorted(times) and times[-1] - times[0] >= 80_000_000


async def test_redirect_is_reported_not_followed(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/redirect"))
    assert r.stop_reason == HttpStop.DONE and r.status_code == 301
    assert r.headers["Location"] == "/elsewhere" and r.body == b""
    assert len(web.requests) == 1


async def test_large_body(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/big"), limit_size=2 << 20)
    assert r.stop_reason == HttpStop.DONE and r.body == BIG
    assert sum(len(d) for _, d in r.timed_buffers) > len(BIG)


async def test_limit_size_stops(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/big"))  # default 1 MiB
    assert r.stop_reason == HttpStop.LIMIT and 1 << 20 < len(r.body) < len(BIG)
    r = await fetch("127.0.0.1", url=_url(web, "/big"), limit_size=100_000)
    assert r.stop_reason == HttpStop.LIMIT and "limit_size" in r.error
    assert 100_000 < len(r.body) < len(BIG) and r.status_code == 200


async def test_close_delimited_body_and_post(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/close"))
    assert r.stop_reason == HttpStop.DONE and r.body == b"until the end"
    r = await fetch("127.0.0.1", url=_url(web, "/echo"), method="POST", body=b"payload \x00\xff")
    assert r.stop_reason == HttpStop.DONE and r.body == b"POST payload \x00\xff"


async def test_truncated_response_is_an_error(fetch: Run, web: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(web, "/truncated"))
    assert r.stop_reason == HttpStop.ERROR and "before the end" in r.error
    assert r.status_code == 200 and r.body == b"only this"


async def test_ipv6(fetch: Run, web: Server) -> None:
    if len(web.servers) < 2:
        pytest.skip("no IPv6 loopback")
    r = await fetch("::1", url=f"http://[::1]:{web.port}/")
    assert r.stop_reason == HttpStop.DONE and r.status_code == 200 and str(r.src) == "::1"
    assert b"Host: [::1]:" in web.requests[-1]


# -------------------------------------------------------------------- TLS
async def test_tls_verified_with_ca(fetch: Run, tlsweb: Server, ca_pem: str) -> None:
    r = await fetch("127.0.0.1", url=_url(tlsweb, "/", "https"), ca=ca_pem)
    assert r.stop_reason == HttpStop.DONE, r.error
    assert r.status_code == 200 and r.body == b"hello marionet\n"
    assert r.tls_version in ("TLSv1.3", "TLSv1.2") and r.tls_cipher
    assert r.tls_peer_subject == f"CN={HOST}" and "marionet lab CA" in (r.tls_peer_issuer or "")
    assert r.tls_ns is not None and 0 < r.tls_ns < 2_000_000_000
    assert r.timing_sources["tls"] == "kernel/kernel"
    assert r.ttfb_ns is not None and r.ttfb_ns > 0
    kinds = [(b.dir, b.type) for b in r.bufs]
    assert kinds[0] == ("tx", "tls") and ("rx", "tls") in kinds
    assert ("tx", "hdr") in kinds and ("rx", "hdr") in kinds and ("rx", "data") in kinds
    # the plaintext request is recorded, not its ciphertext
    assert next(b for b in r.bufs if b.type == "hdr" and b.dir == "tx").data.startswith(b"GET / HTTP/1.1")
    assert r.headers["X-MiXeD-Case"] == "VaLuE Keeps CASE"


async def test_tls_by_ip_literal_and_chunked(fetch: Run, tlsweb: Server, ca_pem: str) -> None:
    r = await fetch("127.0.0.1", url=f"https://127.0.0.1:{tlsweb.port}/chunked", ca=ca_pem)
    assert r.stop_reason == HttpStop.DONE, r.error
    assert r.body == b"first,second,third"


async def test_tls_verify_failure_without_ca(fetch: Run, tlsweb: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(tlsweb, "/", "https"))
    assert r.stop_reason == HttpStop.INSECURE
    assert "certificate verify" in r.error or "verification failed" in r.error
    assert r.status_code is None and r.body == b""
    assert tlsweb.requests == []  # nothing was sent in the clear or otherwise


async def test_tls_wrong_name_fails(fetch: Run, tlsweb: Server, ca_pem: str) -> None:
    r = await fetch("127.0.0.1", url=_url(tlsweb, "/", "https", host="other.example"), ca=ca_pem)
    assert r.stop_reason == HttpStop.INSECURE and "other.example" in r.error


async def test_tls_insecure_skips_verification(fetch: Run, tlsweb: Server) -> None:
    r = await fetch("127.0.0.1", url=_url(tlsweb, "/big", "https"), insecure=True, limit_size=2 << 20)
    assert r.stop_reason == HttpStop.DONE and r.insecure
    assert r.body == BIG
    assert r.tls_peer_subject == f"CN={HOST}"  # still reported, read from the DER


async def test_https_to_plain_server_times_out_in_tls(fetch: Run, web: Server) -> None:
    """The plain server waits for a header block a ClientHello never ends."""
    r = await fetch("127.0.0.1", url=_url(web, "/", "https"), limit_time=0.5)
    assert r.stop_reason == HttpStop.TIMEOUT and "while in tls" in r.error
    assert r.connect_ns is not None and r.tls_ns is None


# ------------------------------------------------------------ failures
def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_connect_refused(fetch: Run) -> None:
    port = _closed_port()
    r = await fetch("127.0.0.1", url=f"http://{HOST}:{port}/")
    assert r.stop_reason == HttpStop.NOCONN and "refused" in r.error.lower()
    assert r.status_code is None and r.bufs == []


async def test_timeout_when_the_server_never_answers(fetch: Run, web: Server) -> None:
    t0 = time.monotonic()
    r = await fetch("127.0.0.1", url=_url(web, "/hang"), limit_time=0.5)
    took = time.monotonic() - t0
    assert r.stop_reason == HttpStop.TIMEOUT and "0.5 s" in r.error
    assert 0.45 <= took < 3.0, took
    assert r.limit_time.total_seconds() == 0.5 and r.connect_ns is not None and r.status_code is None


async def test_halt_returns_partial_result(web: Server) -> None:
    async with native_session() as s:
        halt = asyncio.Event()
        task = asyncio.ensure_future(http(s, "127.0.0.1", url=_url(web, "/hang"), halt=halt))
        await asyncio.sleep(0.3)
        halt.set()
        r = await asyncio.wait_for(task, 5)
        assert r.stop_reason == HttpStop.HALTED


async def test_endpoint_refuses_bad_task(session: Any) -> None:
    from marionet.client.errors import EndpointError

    with pytest.raises(EndpointError, match="bad-params.*scheme"):
        await session.task("http", {"dst": "127.0.0.1", "url": "ftp://x/"})
    with pytest.raises(EndpointError, match="bad-params.*unknown http parameter"):
        await session.task("http", {"dst": "127.0.0.1", "url": "http://x/", "limit": 5})


# ----------------------------------------------------------------- files
async def test_json_round_trip_via_file(tmp_path: Path, web: Server, tlsweb: Server, ca_pem: str) -> None:
    async with native_session() as s:
        results = [await http(s, "127.0.0.1", url=_url(web, "/chunked")),
                   await http(s, "127.0.0.1", url=_url(tlsweb, "/", "https"), ca=ca_pem),
                   await http(s, "127.0.0.1", url=f"http://{HOST}:{_closed_port()}/")]
    path = tmp_path / "http.json.gz"
    with File(str(path), "w") as f:
        for r in results:
            f.write(r)
    with File(str(path)) as f:
        back = [x for x in f if isinstance(x, Http)]
    assert back == results
    for a, b in zip(results, back):
        assert (a.status_code, a.body, dict(a.headers), a.header_raw) == \
               (b.status_code, b.body, dict(b.headers), b.header_raw)
        assert [(x.time_ns, x.ts_source) for x in a.bufs] == [(x.time_ns, x.ts_source) for x in b.bufs]
    d = loads(dumps(results[1]))
    assert d.tls_version == results[1].tls_version and d.hsrtt == results[1].hsrtt
    line = dumps(results[0])
    assert '"type":"http"' in line and '"status_code":200' in line and '"bufs":[' in line
