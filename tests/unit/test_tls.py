"""Real TLS 1.3 over loopback: mutual auth, roles, refusals, pinning."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from marionet.guard import pki, tls

HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# Fixtures: one operator PKI, plus a foreign one.


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiDir:
    d = pki.PkiDir.init(tmp_path_factory.mktemp("pki"), name="test operator")
    d.issue("ctl", "controller", san_dns=["localhost"], san_ip=["127.0.0.1", "::1"])
    d.issue("ep1", "endpoint", san_ip=["127.0.0.1"])
    d.issue("alice", "client", privileges={"tags": {"region": ["eu"]}, "max_sockets": 100})
    d.issue(
        "old",
        "client",
        days=1,
        not_before=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10),
    )
    return d


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> pki.PkiDir:
    d = pki.PkiDir.init(tmp_path_factory.mktemp("foreign"), name="someone else")
    d.issue("mallory", "client")
    d.issue("ctl", "controller", san_ip=["127.0.0.1"])
    return d


def client_ctx(d: pki.PkiDir, name: str, ca: Path | None = None) -> ssl.SSLContext:
    p = d.paths(name)
    return tls.client_context(ca=ca or p.ca, cert=p.cert, key=p.key)


class Server:
    """A controller-like server recording whom it served and whom it refused."""

    def __init__(self) -> None:
        self.served: list[tls.Identity | None] = []
        self.rejected: list[tls.Rejection] = []
        self.rejection = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def handler(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ident: Any
    ) -> None:
        self.served.append(ident)
        line = await reader.readline()
        who = f"{ident.role}:{ident.common_name}" if ident else "anonymous"
        writer.write(who.encode() + b" " + line)
        await writer.drain()

    def on_reject(self, rej: tls.Rejection) -> None:
        self.rejected.append(rej)
        self.rejection.set()

    async def start(self, ctx: ssl.SSLContext, **kw: Any) -> int:
        self.server = await tls.start_server(
            self.handler, HOST, 0, ctx, on_reject=self.on_reject, **kw
        )
        return self.server.sockets[0].getsockname()[1]

    async def next_rejection(self) -> tls.Rejection:
        await asyncio.wait_for(self.rejection.wait(), 5)
        self.rejection.clear()
        return self.rejected[-1]

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def controller(pkidir: pki.PkiDir):
    srv = Server()
    p = pkidir.paths("ctl")
    ctx = tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True)
    port = await srv.start(ctx, require_role={"client", "endpoint"})
    yield srv, port
    await srv.close()


async def talk(port: int, ctx: ssl.SSLContext, **kw: Any) -> tuple[bytes, tls.Identity]:
    reader, writer, ident = await tls.open_connection(HOST, port, ctx, **kw)
    try:
        writer.write(b"hello\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 5), ident
    finally:
        writer.close()


async def refused_by_server(port: int, ctx: ssl.SSLContext) -> str:
    """Connect a client the server will refuse after the handshake; return
    what the client saw, explained.  In TLS 1.3 the client's handshake
    completes first, so the refusal shows up on the first read."""
    try:
        reader, writer, _ = await tls.open_connection(HOST, port, ctx, require_role="controller")
    except (tls.TLSHandshakeError, tls.IdentityError) as exc:
        return str(exc)
    try:
        writer.write(b"hello\n")
        data = await asyncio.wait_for(reader.read(100), 5)
    except (ssl.SSLError, ConnectionError) as exc:
        return tls.explain(exc)
    finally:
        writer.close()
    assert data == b"", f"refused client got data {data!r}"
    return "closed by peer"


# --------------------------------------------------------------------------
# Success paths.


async def test_mutual_tls_each_side_sees_the_other(controller, pkidir: pki.PkiDir) -> None:
    srv, port = controller
    line, ident = await talk(port, client_ctx(pkidir, "alice"), require_role="controller")
    assert line == b"client:alice hello\n"
    assert ident.role == "controller" and ident.common_name == "ctl"
    assert ident.fingerprint == pki.fingerprint(pki.load_cert(pkidir.paths("ctl").cert))
    seen = srv.served[-1]
    assert seen is not None and seen.role == "client" and seen.common_name == "alice"
    assert seen.privileges == {"tags": {"region": ["eu"]}, "max_sockets": 100}
    assert not srv.rejected


async def test_endpoint_role_also_accepted_and_version_is_tls13(controller, pkidir) -> None:
    srv, port = controller
    reader, writer, ident = await tls.open_connection(HOST, port, client_ctx(pkidir, "ep1"))
    try:
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        writer.write(b"x\n")
        assert await reader.readline() == b"endpoint:ep1 x\n"
    finally:
        writer.close()


async def test_hostname_via_dns_san(controller, pkidir) -> None:
    _, port = controller
    line, _ = await talk(port, client_ctx(pkidir, "alice"), server_hostname="localhost")
    assert line.endswith(b"hello\n")


# --------------------------------------------------------------------------
# Refusals: each is clear on the server and the server keeps serving.


async def assert_still_serving(port: int, pkidir: pki.PkiDir) -> None:
    line, _ = await talk(port, client_ctx(pkidir, "alice"))
    assert line == b"client:alice hello\n"


async def test_expired_client_cert(controller, pkidir) -> None:
    srv, port = controller
    seen = await refused_by_server(port, client_ctx(pkidir, "old"))
    rej = await srv.next_rejection()
    assert "expired" in rej.reason
    assert "expired" in seen
    await assert_still_serving(port, pkidir)


async def test_client_cert_from_foreign_ca(controller, pkidir, foreign) -> None:
    srv, port = controller
    ctx = client_ctx(foreign, "mallory", ca=pkidir.ca_path)  # trusts our server, alien cert
    seen = await refused_by_server(port, ctx)
    rej = await srv.next_rejection()
    assert "local issuer" in rej.reason or "unknown" in rej.reason
    assert "does not trust our certificate" in seen
    await assert_still_serving(port, pkidir)


async def test_wrong_role(pkidir) -> None:
    """The controller requires a client; an endpoint certificate is refused."""
    srv = Server()
    p = pkidir.paths("ctl")
    ctx = tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True)
    port = await srv.start(ctx, require_role="client")
    try:
        seen = await refused_by_server(port, client_ctx(pkidir, "ep1"))
        rej = await srv.next_rejection()
        assert isinstance(rej.error, tls.IdentityError)
        assert "role 'endpoint'" in rej.reason and "need client" in rej.reason
        assert seen  # closed by peer
        await assert_still_serving(port, pkidir)
    finally:
        await srv.close()


async def test_missing_client_cert(controller, pkidir) -> None:
    srv, port = controller
    ctx = tls.client_context(ca=pkidir.ca_path)
    seen = await refused_by_server(port, ctx)
    rej = await srv.next_rejection()
    assert "sent no certificate" in rej.reason
    assert "requires a client certificate" in seen
    await assert_still_serving(port, pkidir)


async def test_tls12_only_client_refused(controller, pkidir) -> None:
    srv, port = controller
    ctx = client_ctx(pkidir, "alice")
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(tls.TLSHandshakeError, match="TLS 1.3"):
        await tls.open_connection(HOST, port, ctx)
    rej = await srv.next_rejection()
    assert "TLS 1.3" in rej.reason
    await assert_still_serving(port, pkidir)


async def test_plain_tcp_and_silence(pkidir) -> None:
    """Garbage and a silent peer (handshake timeout) are refused, not hung on."""
    srv = Server()
    p = pkidir.paths("ctl")
    ctx = tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True)
    port = await srv.start(ctx, require_role="client", handshake_timeout=0.3)
    try:
        r, w = await asyncio.open_connection(HOST, port)
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        assert "HTTP" in (await srv.next_rejection()).reason

        r, w = await asyncio.open_connection(HOST, port)
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        assert "timed out" in (await srv.next_rejection()).reason
        await assert_still_serving(port, pkidir)
    finally:
        await srv.close()


async def test_client_refuses_foreign_server(pkidir, foreign) -> None:
    srv = Server()
    p = foreign.paths("ctl")
    port = await srv.start(tls.server_context(p.cert, p.key, ca=p.ca))
    try:
        with pytest.raises(tls.TLSHandshakeError, match="failed verification"):
            await tls.open_connection(HOST, port, client_ctx(pkidir, "alice"))
    finally:
        await srv.close()


async def test_client_requires_server_role(pkidir) -> None:
    """A client that wants a controller refuses an endpoint posing as one."""
    srv = Server()
    p = pkidir.paths("ep1")
    port = await srv.start(tls.server_context(p.cert, p.key, ca=p.ca))
    try:
        with pytest.raises(tls.IdentityError, match="role 'endpoint'"):
            await tls.open_connection(
                HOST, port, client_ctx(pkidir, "alice"), require_role="controller"
            )
    finally:
        await srv.close()


async def test_client_cert_cannot_serve(pkidir) -> None:
    """EKU: a client certificate is not accepted as a server's."""
    srv = Server()
    p = pkidir.paths("alice")
    port = await srv.start(tls.server_context(p.cert, p.key))
    try:
        ctx = tls.client_context(ca=pkidir.ca_path, check_hostname=False)
        with pytest.raises(tls.TLSHandshakeError, match="unsuitable certificate purpose"):
            await tls.open_connection(HOST, port, ctx)
    finally:
        await srv.close()


# --------------------------------------------------------------------------
# Standalone endpoint: self-signed certificate, pinned by fingerprint or file.


@pytest.fixture
async def standalone(tmp_path: Path):
    ss = pki.self_signed_server(tmp_path / "state")
    srv = Server()
    port = await srv.start(tls.server_context(ss.cert_path, ss.key_path))
    yield ss, srv, port
    await srv.close()


async def test_pin_by_fingerprint_accepts_right_cert(standalone) -> None:
    ss, srv, port = standalone
    colon = ":".join(ss.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    line, ident = await talk(port, tls.client_context(pin_sha256=colon))
    assert line == b"anonymous hello\n"
    assert ident.fingerprint == ss.fingerprint and ident.role == "endpoint"


async def test_pin_by_fingerprint_rejects_other_cert(standalone, tmp_path: Path) -> None:
    ss, srv, port = standalone
    other = pki.self_signed_server(tmp_path / "other")
    assert other.fingerprint != ss.fingerprint
    with pytest.raises(tls.IdentityError, match="does not match the pinned"):
        await tls.open_connection(HOST, port, tls.client_context(pin_sha256=other.fingerprint))


async def test_pin_by_file(standalone, tmp_path: Path) -> None:
    ss, srv, port = standalone
    line, ident = await talk(port, tls.client_context(ca=ss.cert_path))
    assert line == b"anonymous hello\n"
    other = pki.self_signed_server(tmp_path / "other")
    with pytest.raises(tls.TLSHandshakeError, match="failed verification"):
        await tls.open_connection(HOST, port, tls.client_context(ca=other.cert_path))


async def test_pinned_client_with_its_own_cert(standalone, pkidir) -> None:
    """A researcher can still present a certificate to a pinned endpoint."""
    ss, srv, port = standalone
    p = pkidir.paths("alice")
    ctx = tls.client_context(pin_sha256=ss.fingerprint, cert=p.cert, key=p.key)
    line, _ = await talk(port, ctx)
    assert line == b"anonymous hello\n"  # server did not ask (no CA configured)


# --------------------------------------------------------------------------
# Configuration errors and identity helpers.


def test_config_errors(pkidir: pki.PkiDir, tmp_path: Path) -> None:
    p = pkidir.paths("ctl")
    with pytest.raises(tls.TLSConfigError, match="certificate file not found"):
        tls.server_context(tmp_path / "nope.pem", p.key)
    with pytest.raises(tls.TLSConfigError, match="private key file not found"):
        tls.server_context(p.cert, tmp_path / "nope.key")
    with pytest.raises(tls.TLSConfigError, match="CA certificate file not found"):
        tls.client_context(ca=tmp_path / "nope.pem")
    with pytest.raises(tls.TLSConfigError, match="does not belong"):
        tls.server_context(p.cert, pkidir.paths("alice").key)
    with pytest.raises(tls.TLSConfigError, match="needs a CA"):
        tls.server_context(p.cert, p.key, require_client_cert=True)
    with pytest.raises(tls.TLSConfigError, match="both cert and key"):
        tls.client_context(ca=p.ca, cert=p.cert)
    with pytest.raises(tls.TLSConfigError, match="not both"):
        tls.client_context(ca=p.ca, pin_sha256="00" * 32)
    with pytest.raises(tls.TLSConfigError, match="64 hex"):
        tls.client_context(pin_sha256="abc")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    with pytest.raises(tls.TLSConfigError, match="not a PEM certificate"):
        tls.server_context(junk, p.key)
    with pytest.raises(tls.TLSConfigError, match="cannot load CA"):
        tls.client_context(ca=junk)
    with pytest.raises(tls.TLSConfigError, match="not a regular file"):
        tls.client_context(ca=tmp_path)


def test_contexts_are_tls13_only(pkidir: pki.PkiDir) -> None:
    p = pkidir.paths("ctl")
    for ctx in (
        tls.server_context(p.cert, p.key, ca=p.ca, require_client_cert=True),
        tls.client_context(ca=p.ca, cert=p.cert, key=p.key),
        tls.client_context(pin_sha256="ab" * 32),
    ):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert tls.server_context(p.cert, p.key, ca=p.ca).verify_mode == ssl.CERT_OPTIONAL
    assert tls.server_context(p.cert, p.key).verify_mode == ssl.CERT_NONE


def test_peer_identity_needs_tls() -> None:
    class Plain:
        def get_extra_info(self, name: str) -> None:
            return None

    with pytest.raises(tls.IdentityError, match="not a TLS connection"):
        tls.peer_identity(Plain())
    with pytest.raises(tls.IdentityError, match="cannot read"):
        tls.Identity.from_der(b"\x30\x03junk")


def test_identity_without_marionet_role(pkidir, tmp_path: Path) -> None:
    """A certificate from another PKI (no role extension) fails a role check clearly."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "plain")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, None)
    )
    der = cert.public_bytes(Encoding.DER)

    class Fake:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return der

    fake: Any = Fake()
    ident = tls.Identity.from_der(der)
    assert ident.role is None and ident.common_name == "plain"
    with pytest.raises(tls.IdentityError, match="no marionet role"):
        tls.check_identity(_Holder(fake), require_role="client")


class _Holder:
    """Looks like a StreamWriter: exposes an ssl_object via get_extra_info."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def get_extra_info(self, name: str) -> Any:
        return self.obj if name == "ssl_object" else None


def test_explain_is_total() -> None:
    assert "timed out" in tls.explain(TimeoutError())
    assert "closed the connection" in tls.explain(ConnectionResetError())
    assert "ValueError" in tls.explain(ValueError("x"))


# --------------------------------------------------------------------------
# Handshake time (a figure, not a pass/fail bound beyond "not absurd").


async def test_handshake_time(controller, pkidir, capsys) -> None:
    _, port = controller
    ctx = client_ctx(pkidir, "alice")
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        reader, writer, _ = await tls.open_connection(HOST, port, ctx, require_role="controller")
        times.append(time.perf_counter() - t0)
        writer.close()
    med = statistics.median(times) * 1e3
    with capsys.disabled():
        print(f"\n[mutual TLS 1.3 Ed25519 handshake over loopback: median {med:.2f} ms,"
              f" min {min(times) * 1e3:.2f} ms, n={len(times)}]")
    assert med < 1000
