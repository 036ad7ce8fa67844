"""TLS 1.3 contexts and peer identities for every marionet connection.

Why a module of its own: controller, endpoint and client all need the same
three things — a context fixed to TLS 1.3 built from PKI files with errors a
person can act on, the peer's marionet identity (name, role, privileges)
read from its certificate, and a refusal that the server logs and survives.
Keeping them here means the guard has one place that decides who is on the
other end of a socket.

Trust modes
-----------
* **CA** (normal): both sides load the operator's ``ca.pem``; the server
  requires a client certificate; each side checks the other's role.
* **Pin by file** (standalone endpoint): the client loads the endpoint's
  self-signed ``server.pem`` as its only CA.  Full OpenSSL verification
  runs (expiry, hostname/IP SAN), nothing else is trusted.
* **Pin by fingerprint**: the client knows only a SHA-256 of the endpoint's
  certificate (e.g. printed by the endpoint at start-up).  Python's ``ssl``
  has no verification callback, so the context uses ``CERT_NONE`` and the
  certificate is compared *after* the handshake, before any application
  byte is sent.  Trade-offs: (1) it is safe against a man in the middle,
  because TLS 1.3 still checks the server's CertificateVerify signature
  against the certificate we then compare; (2) expiry and hostname are not
  checked — the pin *is* the trust decision, and a renewed certificate
  needs a new pin; (3) an impostor completes the handshake and so learns
  our client certificate (not its key) before we hang up; (4) a caller who
  passes this context to plain ``asyncio.open_connection`` gets *no*
  verification at all — use :func:`open_connection` here, or call
  :func:`check_identity` yourself.

Error timing in TLS 1.3: the client's handshake completes before the
server has checked the client certificate, so a client whose certificate
is refused learns it on its first read (an alert, which :func:`explain`
turns into a sentence), not from ``open_connection``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Collection, Union

from cryptography import x509

from . import pki

__all__ = [
    "TLSConfigError",
    "IdentityError",
    "TLSHandshakeError",
    "Identity",
    "Rejection",
    "PinnedClientContext",
    "server_context",
    "client_context",
    "peer_identity",
    "check_identity",
    "explain",
    "open_connection",
    "start_server",
]

log = logging.getLogger("marionet.guard.tls")

PathLike = Union[str, "os.PathLike[str]"]


class TLSConfigError(ValueError):
    """Our own TLS material is missing, unreadable or inconsistent."""


class IdentityError(PermissionError):
    """The peer's certificate is absent, unparsable, has the wrong role or pin."""


class _NotEstablished(IdentityError):
    """The TLS object is in an error state: the peer refused us just after the handshake."""


class TLSHandshakeError(ConnectionError):
    """The TLS handshake failed; the message says why in plain words."""


# --------------------------------------------------------------------------
# Contexts.


def _check_file(path: PathLike, what: str) -> str:
    """Fail early with the file's name: OpenSSL's own errors omit it."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise TLSConfigError(f"{what} file not found: {p}")
    if not os.path.isfile(p):
        raise TLSConfigError(f"{what} is not a regular file: {p}")
    if not os.access(p, os.R_OK):
        raise TLSConfigError(f"{what} file is not readable (permissions?): {p}")
    return p


def _load_chain(ctx: ssl.SSLContext, cert: PathLike, key: PathLike | None) -> None:
    cert_p = _check_file(cert, "certificate")
    key_p = _check_file(key, "private key") if key is not None else None
    try:
        pki.load_certs(cert_p)
        if key_p is not None:
            pki.load_key(key_p)
    except pki.PkiError as exc:
        raise TLSConfigError(str(exc)) from None
    try:
        ctx.load_cert_chain(cert_p, key_p)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc):
            raise TLSConfigError(f"key {key_p} does not belong to certificate {cert_p}") from None
        raise TLSConfigError(f"cannot load {cert_p} / {key_p}: {exc}") from None


def _load_ca(ctx: ssl.SSLContext, ca: PathLike) -> None:
    ca_p = _check_file(ca, "CA certificate")
    try:
        pki.load_certs(ca_p)
        ctx.load_verify_locations(cafile=ca_p)
    except (pki.PkiError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load CA certificate {ca_p}: {exc}") from None


def _tls13_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.3 only: one handshake to reason about, Ed25519 signatures
    always available, and the certificate exchange encrypted."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    return ctx


def server_context(
    cert: PathLike,
    key: PathLike,
    ca: PathLike | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """A TLS 1.3 server context.

    With ``ca`` the server asks for a client certificate and verifies it
    against that CA; ``require_client_cert`` makes it mandatory (the
    handshake fails without one).  Roles are not checked here — TLS knows
    nothing of them — but by :func:`check_identity` / :func:`start_server`.
    """
    ctx = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(ctx, cert, key)
    if ca is not None:
        _load_ca(ctx, ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise TLSConfigError("require_client_cert needs a CA file to verify clients against")
    return ctx


class PinnedClientContext(ssl.SSLContext):
    """A client context that trusts exactly one certificate, by SHA-256.

    OpenSSL does no verification (``CERT_NONE``); :func:`open_connection`
    and :func:`check_identity` compare ``pin_sha256`` after the handshake.
    """

    pin_sha256: str


def client_context(
    ca: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
    check_hostname: bool = True,
    *,
    pin_sha256: str | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context.

    ``ca`` is the operator's CA — or a standalone endpoint's self-signed
    certificate, which pins it by file.  Without ``ca`` and without a pin
    the system's trust store is used.  ``cert``/``key`` present our own
    certificate (needed by marionet servers, which require one).
    ``pin_sha256`` pins by fingerprint instead (see the module docstring
    for what that does and does not check).
    """
    if (cert is None) != (key is None):
        raise TLSConfigError("give both cert and key, or neither")
    if pin_sha256 is not None:
        if ca is not None:
            raise TLSConfigError("give either ca (pin by file / CA) or pin_sha256, not both")
        try:
            pin = pki.normalize_fingerprint(pin_sha256)
        except pki.PkiError as exc:
            raise TLSConfigError(str(exc)) from None
        ctx: ssl.SSLContext = PinnedClientContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.pin_sha256 = pin  # type: ignore[attr-defined]
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if ca is not None:
            _load_ca(ctx, ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
    _tls13_only(ctx)
    if cert is not None:
        _load_chain(ctx, cert, key)
    return ctx


# --------------------------------------------------------------------------
# Identities.


@dataclass(frozen=True)
class Identity:
    """Who is on the other end, as its certificate says."""

    common_name: str | None
    role: str | None
    fingerprint: str
    privileges: dict[str, Any] | None = field(default=None, compare=False)
    not_valid_after: dt.datetime | None = None
    certificate: x509.Certificate | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_der(cls, der: bytes) -> Identity:
        try:
            cert = x509.load_der_x509_certificate(der)
            return cls(
                common_name=pki.common_name(cert),
                role=pki.read_role(cert),
                fingerprint=pki.fingerprint(der),
                privileges=pki.read_privileges(cert),
                not_valid_after=cert.not_valid_after_utc,
                certificate=cert,
            )
        except (ValueError, pki.PkiError) as exc:
            raise IdentityError(f"cannot read the peer's certificate: {exc}") from None


def _ssl_object(conn: Any) -> ssl.SSLObject | ssl.SSLSocket:
    """Accept what callers have at hand: an SSLObject/SSLSocket, an asyncio
    StreamWriter or a transport."""
    if isinstance(conn, (ssl.SSLObject, ssl.SSLSocket)):
        return conn
    get = getattr(conn, "get_extra_info", None)
    obj = get("ssl_object") if get is not None else None
    if obj is None:
        raise IdentityError("not a TLS connection (no ssl_object)")
    return obj


def peer_identity(conn: Any) -> Identity:
    """The peer's identity from its certificate; IdentityError if it sent none."""
    try:
        der = _ssl_object(conn).getpeercert(binary_form=True)
    except ValueError:  # the connection failed after the handshake began
        raise _NotEstablished("the TLS connection is not established (refused by the peer?)") from None
    if not der:
        raise IdentityError("the peer presented no certificate")
    return Identity.from_der(der)


def check_identity(
    conn: Any,
    require_role: str | Collection[str] | None = None,
    pin_sha256: str | None = None,
) -> Identity:
    """The peer's identity, after checking its pin and/or role.

    ``require_role`` is one role or a collection of acceptable roles.
    """
    ident = peer_identity(conn)
    if pin_sha256 is not None:
        want = pki.normalize_fingerprint(pin_sha256)
        if ident.fingerprint != want:
            raise IdentityError(
                f"certificate fingerprint {ident.fingerprint} does not match the pinned {want}"
            )
    if require_role is not None:
        allowed = {require_role} if isinstance(require_role, str) else set(require_role)
        if ident.role is None:
            raise IdentityError(
                f"peer {ident.common_name!r} has no marionet role (certificate from another PKI?);"
                f" need {' or '.join(sorted(allowed))}"
            )
        if ident.role not in allowed:
            raise IdentityError(
                f"peer {ident.common_name!r} has role {ident.role!r};"
                f" need {' or '.join(sorted(allowed))}"
            )
    return ident


# --------------------------------------------------------------------------
# Explaining failures.

_REASONS: dict[str, str] = {
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate (issued by a CA it does not know)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the peer says our certificate has expired",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the peer rejected our certificate's purpose (extended key usage / role)",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the peer says our certificate was revoked",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate and we sent none",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate, but one is required",
    "UNSUPPORTED_PROTOCOL": "TLS version mismatch: marionet requires TLS 1.3",
    "TLSV1_ALERT_PROTOCOL_VERSION": "TLS version mismatch: marionet requires TLS 1.3",
    "NO_PROTOCOLS_AVAILABLE": "no common TLS version: marionet requires TLS 1.3",
    "WRONG_VERSION_NUMBER": "the peer is not speaking TLS",
    "HTTP_REQUEST": "the peer sent plain HTTP, not TLS",
    "NO_SHARED_CIPHER": "no common cipher or signature algorithm (Ed25519 unsupported?)",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no common signature algorithm (Ed25519 unsupported?)",
}


def explain(exc: BaseException) -> str:
    """One sentence for a person, from whatever a TLS connection raised."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return f"the peer's certificate failed verification: {why}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _REASONS:
            return _REASONS[reason]
        return f"TLS error: {reason or exc}"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "the TLS handshake timed out"
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc):
        return "the TLS handshake timed out"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)):
        return "the peer closed the connection (it may have rejected our certificate or role)"
    if isinstance(exc, IdentityError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------
# asyncio helpers.


async def open_connection(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    require_role: str | Collection[str] | None = None,
    timeout: float = 10.0,
    limit: int = 2**16,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Identity]:
    """Connect, handshake, and check the server's pin and role.

    Handshake failures become :class:`TLSHandshakeError` with an explained
    message (the original exception is its ``__cause__``); a wrong pin or
    role closes the connection and raises :class:`IdentityError`.  A refused
    TCP connection stays a plain ``ConnectionRefusedError``.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host,
                port,
                ssl=context,
                server_hostname=server_hostname,
                ssl_handshake_timeout=timeout,
                limit=limit,
            ),
            timeout,
        )
    except (ssl.SSLError, TimeoutError, ConnectionResetError, ConnectionAbortedError) as exc:
        raise TLSHandshakeError(explain(exc)) from exc
    try:
        ident = check_identity(
            writer, require_role=require_role, pin_sha256=getattr(context, "pin_sha256", None)
        )
    except _NotEstablished:
        # In TLS 1.3 the server's refusal of *our* certificate can arrive
        # right after our side of the handshake; the alert is already read
        # and its error is on its way to the reader: report it, not a symptom.
        failure = await _pending_failure(reader)
        writer.transport.abort()
        if failure is not None:
            raise TLSHandshakeError(explain(failure)) from failure
        raise
    except IdentityError:
        writer.transport.abort()
        raise
    return reader, writer, ident


async def _pending_failure(reader: asyncio.StreamReader) -> BaseException | None:
    try:
        await asyncio.wait_for(reader.read(1), 1.0)
    except Exception as exc:
        return exc
    return None


@dataclass(frozen=True)
class Rejection:
    """A connection the server refused, for logging and tests."""

    peer: Any
    reason: str
    error: BaseException = field(repr=False)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Identity | None"], Awaitable[None]]


def _log_rejection(rej: Rejection) -> None:
    log.warning("refused TLS connection from %s: %s", rej.peer, rej.reason)


try:  # asyncio's private TLS protocol (the 3.11+ implementation)
    from asyncio import sslproto as _sslproto

    _HAVE_SSLPROTO = hasattr(_sslproto.SSLProtocol, "_do_handshake") and hasattr(
        _sslproto, "SSLAgainErrors"
    )
except ImportError:  # pragma: no cover
    _HAVE_SSLPROTO = False

if _HAVE_SSLPROTO:

    class _AlertingSSLProtocol(_sslproto.SSLProtocol):  # type: ignore[misc,name-defined]
        """asyncio's SSLProtocol, but a failed handshake sends its TLS alert.

        Stock asyncio drops the alert OpenSSL wrote (``_do_handshake`` never
        flushes the outgoing BIO on error), so a refused client only sees
        the connection vanish.  Flushing first lets it read "certificate
        expired" / "unknown CA" / "certificate required" instead.
        """

        def _do_handshake(self) -> None:
            try:
                self._sslobj.do_handshake()
            except _sslproto.SSLAgainErrors:
                self._process_outgoing()
            except ssl.SSLError as exc:
                try:
                    self._process_outgoing()
                except Exception:  # pragma: no cover - best effort only
                    pass
                self._on_handshake_complete(exc)
            else:
                self._on_handshake_complete(None)


async def _start_tls_server(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.Transport,
    protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    timeout: float,
) -> asyncio.Transport:
    """``loop.start_tls(server_side=True)`` that delivers handshake alerts.

    Mirrors ``BaseEventLoop.start_tls``; falls back to it when asyncio's
    internals are not the ones this was written against (the alerts are
    then lost, nothing else changes).
    """
    if not _HAVE_SSLPROTO or not getattr(transport, "_start_tls_compatible", False):
        tls_transport = await loop.start_tls(
            transport, protocol, context, server_side=True, ssl_handshake_timeout=timeout
        )
        if tls_transport is None:
            raise ConnectionResetError("connection closed during the TLS handshake")
        return tls_transport
    waiter = loop.create_future()
    ssl_protocol = _AlertingSSLProtocol(
        loop,
        protocol,
        context,
        waiter,
        server_side=True,
        ssl_handshake_timeout=timeout,
        call_connection_made=False,
    )
    transport.pause_reading()
    transport.set_protocol(ssl_protocol)
    conmade = loop.call_soon(ssl_protocol.connection_made, transport)
    resume = loop.call_soon(transport.resume_reading)
    try:
        await waiter
    except BaseException:
        transport.close()
        conmade.cancel()
        resume.cancel()
        raise
    return ssl_protocol._app_transport  # type: ignore[no-any-return]


class _HandshakeFirst(asyncio.Protocol):
    """Holds a fresh TCP connection still (reading paused, so no TLS byte
    can be lost) until :func:`_accept` replaces it with the TLS protocol.

    Why not ``asyncio.start_server(ssl=...)``: there a failed handshake is
    only a debug log line inside asyncio; here it is a :class:`Rejection`
    with a reason, and identity checks happen before the handler runs."""

    def __init__(self, start: Callable[[asyncio.Transport], None]) -> None:
        self._start = start

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._start(transport)


async def start_server(
    handler: Handler,
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    require_role: str | Collection[str] | None = None,
    handshake_timeout: float = 10.0,
    on_reject: Callable[[Rejection], None] | None = None,
    limit: int = 2**16,
    **server_kwargs: Any,
) -> asyncio.Server:
    """Serve TLS 1.3; call ``handler(reader, writer, identity)`` per accepted peer.

    A failed handshake, a missing certificate when a role is required, or a
    wrong role is reported to ``on_reject`` (default: a warning on the
    ``marionet.guard.tls`` logger) and the connection is dropped; the
    server keeps serving.  ``identity`` is None only when the context does
    not require client certificates and the client sent none.
    """
    loop = asyncio.get_running_loop()
    report = on_reject or _log_rejection
    tasks: set[asyncio.Task[None]] = set()

    def reject(peer: Any, exc: BaseException) -> None:
        try:
            report(Rejection(peer, explain(exc), exc))
        except Exception:  # a faulty reporter must not stop the server
            log.exception("on_reject callback failed")

    async def accept(transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            tls = await _start_tls_server(loop, transport, protocol, context, handshake_timeout)
        except Exception as exc:
            transport.abort()
            reject(peer, exc)
            return
        protocol.connection_made(tls)
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        try:
            ident = _server_side_identity(writer, require_role)
        except IdentityError as exc:
            tls.abort()
            reject(peer, exc)
            return
        try:
            await handler(reader, writer, ident)
        except Exception:
            log.exception("handler for %s failed", peer)
        finally:
            writer.close()

    def start(transport: asyncio.Transport) -> None:
        task = loop.create_task(accept(transport))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return await loop.create_server(lambda: _HandshakeFirst(start), host, port, **server_kwargs)


def _server_side_identity(
    writer: asyncio.StreamWriter, require_role: str | Collection[str] | None
) -> Identity | None:
    """Identity of a client; None is allowed only when nothing demands one."""
    if require_role is None:
        so = _ssl_object(writer)
        if not so.getpeercert(binary_form=True):
            return None
    return check_identity(writer, require_role=require_role)
