"""The operator's PKI: Ed25519 keys and X.509 v3 certificates with marionet roles.

Why this shape: every marionet connection is mutual TLS 1.3, so the TLS
certificate *is* the identity.  A peer must be able to tell from the
certificate alone what the other side is allowed to be (a controller, an
endpoint, an experimenter's client, a CA) and, for experimenters, what it
may do.  Like PacketLab's PPKS we put both in private X.509 extensions, but
with one role string and one JSON privilege document instead of ad-hoc
``name=value;`` lists, so the guard can grow fields without a format change.

Private OIDs live under a UUID arc (ITU-T X.667 / RFC 4122 section 2.25),
which anyone may allocate without registering a Private Enterprise Number::

    MARIONET_ARC   = 2.25.149809639626332813576580980244828111662
    ROLE_OID       = MARIONET_ARC.1   UTF8String, one of ROLES
    PRIVILEGES_OID = MARIONET_ARC.2   UTF8String, compact JSON object
    REASON_OID     = MARIONET_ARC.3   UTF8String, a CRL entry's free-text reason
                                      (``marionet.guard.revocation``)

Both extensions are non-critical: OpenSSL rejects certificates with
critical extensions it does not understand, and the TLS stack only needs
the standard fields; marionet code reads the private ones after the
handshake.  Roles are also reflected in ExtendedKeyUsage (serverAuth /
clientAuth) so that plain OpenSSL verification already refuses, say, a
client certificate presented by a server.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "MARIONET_ARC",
    "ROLE_OID",
    "PRIVILEGES_OID",
    "ROLES",
    "CA_ROLES",
    "PkiError",
    "make_root",
    "issue",
    "make_self_signed",
    "self_signed_server",
    "SelfSigned",
    "read_role",
    "read_privileges",
    "common_name",
    "fingerprint",
    "normalize_fingerprint",
    "save_key",
    "save_cert",
    "load_key",
    "load_cert",
    "load_certs",
    "PkiDir",
    "PkiPaths",
    "RevocationTarget",
]

MARIONET_ARC = "2.25.149809639626332813576580980244828111662"
ROLE_OID = x509.ObjectIdentifier(f"{MARIONET_ARC}.1")
PRIVILEGES_OID = x509.ObjectIdentifier(f"{MARIONET_ARC}.2")

ROLES: tuple[str, ...] = ("operator", "ca", "controller", "endpoint", "client")
CA_ROLES = frozenset({"operator", "ca"})
# Friendly names accepted on input and stored as the canonical role.
ROLE_ALIASES = {"experimenter": "client", "root": "operator"}

# What each leaf role may do in TLS.  Controllers serve clients and
# endpoints; endpoints dial out (client) but a standalone endpoint also
# serves researchers directly (server); clients only ever dial.
_EKU: dict[str, list[x509.ObjectIdentifier]] = {
    "controller": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "endpoint": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
}

# Certificates start a little in the past so a peer whose clock lags ours
# does not see a "not yet valid" certificate right after issuance.
CLOCK_SKEW = dt.timedelta(minutes=5)


class PkiError(ValueError):
    """Bad PKI input: unknown role, unreadable file, wrong key type, ..."""


# --------------------------------------------------------------------------
# Small DER helpers for the private extensions (a bare UTF8String).


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der_utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return b"\x0c" + _der_length(len(raw)) + raw


def _parse_der_utf8(data: bytes) -> str:
    """Decode a DER UTF8String exactly (no trailing bytes), or raise PkiError."""
    if len(data) < 2 or data[0] != 0x0C:
        raise PkiError("private extension is not a UTF8String")
    first = data[1]
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise PkiError("private extension has a bad DER length")
        length, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if start + length != len(data):
        raise PkiError("private extension length does not match its content")
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PkiError(f"private extension is not valid UTF-8: {exc}") from None


# --------------------------------------------------------------------------
# Roles and privileges.


def _canonical_role(role: str) -> str:
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def _unrecognized(oid: x509.ObjectIdentifier, text: str) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(oid, _der_utf8(text))


def _privileges_json(privileges: dict[str, Any]) -> str:
    if not isinstance(privileges, dict):
        raise PkiError(f"privileges must be a dict, not {type(privileges).__name__}")
    try:
        return json.dumps(privileges, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PkiError(f"privileges are not JSON-serialisable: {exc}") from None


def _private_text(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
        raise PkiError(f"extension {oid.dotted_string} has an unexpected type")
    return _parse_der_utf8(value.value)


def read_role(cert: x509.Certificate) -> str | None:
    """The marionet role string, or None for a certificate from another PKI."""
    return _private_text(cert, ROLE_OID)


def read_privileges(cert: x509.Certificate) -> dict[str, Any] | None:
    """The privilege document the issuer granted, or None if there is none.

    The PKI only carries it; interpreting the fields is the guard's job.
    """
    text = _private_text(cert, PRIVILEGES_OID)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PkiError(f"privileges extension is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PkiError("privileges extension is not a JSON object")
    return value


def common_name(cert: x509.Certificate) -> str | None:
    """The subject's CN, which marionet uses as the peer's name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 over the DER certificate, lowercase hex (what pins compare)."""
    if isinstance(cert, (bytes, bytearray)):
        digest = hashes.Hash(hashes.SHA256())
        digest.update(bytes(cert))
        return digest.finalize().hex()
    return cert.fingerprint(hashes.SHA256()).hex()


_HEX64 = re.compile(r"[0-9a-f]{64}")


def normalize_fingerprint(text: str) -> str:
    """Accept ``ab12…``, ``AB:12:…`` or ``sha256:…`` and return bare lowercase hex."""
    cleaned = text.strip().lower()
    if cleaned.startswith("sha256:"):
        cleaned = cleaned[len("sha256:") :]
    cleaned = cleaned.replace(":", "").replace(" ", "")
    if not _HEX64.fullmatch(cleaned):
        raise PkiError(f"not a SHA-256 fingerprint (64 hex digits): {text!r}")
    return cleaned


# --------------------------------------------------------------------------
# Building certificates.


def _name(subject: str | x509.Name) -> x509.Name:
    if isinstance(subject, x509.Name):
        return subject
    if not subject or not isinstance(subject, str):
        raise PkiError("subject name must be a non-empty string")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])


def _validity(days: float, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    if not isinstance(days, (int, float)) or days <= 0:
        raise PkiError(f"validity must be a positive number of days, not {days!r}")
    if not_before is None:
        not_before = dt.datetime.now(dt.timezone.utc) - CLOCK_SKEW
    elif not_before.tzinfo is None:
        raise PkiError("not_before must be timezone-aware")
    return not_before, not_before + dt.timedelta(days=days)


def _sans(san_dns: Iterable[str], san_ip: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in san_dns:
        if not host or any(c.isspace() for c in host):
            raise PkiError(f"bad DNS name {host!r}")
        names.append(x509.DNSName(host))
    for addr in san_ip:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(addr)))
        except ValueError:
            raise PkiError(f"bad IP address {addr!r}") from None
    return names


def _key_usage(is_ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=is_ca,
        crl_sign=is_ca,
        encipher_only=False,
        decipher_only=False,
    )


def _require_ed25519_public(key: Any) -> ed25519.Ed25519PublicKey:
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise PkiError(f"marionet certificates use Ed25519 keys, not {type(key).__name__}")
    return key


def _builder(subject: x509.Name, issuer: x509.Name, public: Any, not_before: Any, not_after: Any,
             *, ca: bool, path_length: int | None = None) -> x509.CertificateBuilder:
    """What every marionet certificate has: names, key, a random serial,
    validity, basic constraints, key usage and the subject key identifier."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(_key_usage(ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def make_root(
    name: str = "marionet operator", days: float = 3650
) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    """A fresh operator root: the trust anchor every marionet peer is given."""
    key = ed25519.Ed25519PrivateKey.generate()
    subject = _name(name)
    not_before, not_after = _validity(days, None)
    public = key.public_key()
    builder = _builder(subject, subject, public, not_before, not_after, ca=True).add_extension(
        _unrecognized(ROLE_OID, "operator"), critical=False)
    return key, builder.sign(key, None)


def _check_issuer(ca_key: ed25519.Ed25519PrivateKey, ca_cert: x509.Certificate) -> None:
    """Refuse to sign with a non-CA or with a key that does not match the CA cert."""
    if not isinstance(ca_key, ed25519.Ed25519PrivateKey):
        raise PkiError("the CA key must be an Ed25519 private key")
    try:
        bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise PkiError("the issuing certificate is not a CA (BasicConstraints CA:FALSE)")
    if ca_key.public_key().public_bytes_raw() != _require_ed25519_public(
        ca_cert.public_key()
    ).public_bytes_raw():
        raise PkiError("the CA key does not belong to the CA certificate")


def _check_delegated(ca_cert: x509.Certificate, role: str, privileges: dict[str, Any] | None) -> None:
    """What a delegation CA may sign: client certificates that only narrow.

    Only clients, because controller and endpoint certificates are the
    operator's infrastructure (an endpoint certificate registers a VP) and a
    delegation CA has ``path_length=0``, so a CA below it could never verify.
    Endpoints refuse the same things at verification (``chain``)."""
    who = common_name(ca_cert) or ca_cert.subject.rfc4514_string()
    if role != "client":
        raise PkiError(f"delegation CA {who!r} may only issue client certificates, not {role!r}"
                       " (controllers, endpoints and CAs come from the operator)")
    if privileges is None:
        return  # no extension: the certificate grants nothing, which never widens
    from marionet.guard import privileges as P

    try:
        child = P.parse(privileges)
    except P.PrivilegeError as exc:
        raise PkiError(f"privileges are not a valid privilege document: {exc}") from None
    try:
        held = read_privileges(ca_cert)
        parent = P.NOTHING if held is None else P.parse(held)
    except (PkiError, P.PrivilegeError) as exc:
        raise PkiError(f"delegation CA {who!r} carries an invalid privilege document: {exc}") from None
    reasons = P.widenings(child, parent)
    if reasons:
        raise PkiError(f"refusing to widen what delegation CA {who!r} holds: " + "; ".join(reasons))


def issue(
    ca_key: ed25519.Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    subject_name: str | x509.Name,
    role: str,
    days: float = 365,
    public_key: ed25519.Ed25519PublicKey | None = None,
    san_dns: Sequence[str] = (),
    san_ip: Sequence[str] = (),
    is_ca: bool | None = None,
    privileges: dict[str, Any] | None = None,
    *,
    not_before: dt.datetime | None = None,
    _check_schema: bool = True,
) -> tuple[ed25519.Ed25519PrivateKey | None, x509.Certificate]:
    """Sign a certificate for ``subject_name`` with ``role``.

    Returns ``(key, cert)``: a fresh key when ``public_key`` is None, else
    ``(None, cert)`` for the given key (so an endpoint can keep its private
    key on the VP and send only a public key for signing).

    ``is_ca`` defaults to whether the role is a CA role; a delegation CA
    (role ``"ca"``) gets ``path_length=0``.  Signing *with* a delegation CA
    only makes client certificates whose privileges do not widen the CA's
    (PkiError lists how they would); without ``privileges`` such a
    certificate grants nothing.  The validity is clamped to the
    issuer's, because a certificate outliving its issuer would fail to
    verify on that day without any obvious reason.  ``not_before`` lets
    tests and the guard make certificates valid in a chosen window.
    """
    role = _canonical_role(role)
    if is_ca is None:
        is_ca = role in CA_ROLES
    if is_ca != (role in CA_ROLES):
        raise PkiError(f"role {role!r} {'cannot' if is_ca else 'must'} be a CA")
    _check_issuer(ca_key, ca_cert)
    if read_role(ca_cert) == "ca":
        _check_delegated(ca_cert, role, privileges)
    key = None
    if public_key is None:
        key = ed25519.Ed25519PrivateKey.generate()
        public_key = key.public_key()
    public_key = _require_ed25519_public(public_key)
    start, end = _validity(days, not_before)
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise PkiError("the issuing CA expires before the new certificate would start")

    ca_public = ca_cert.public_key()
    builder = (
        _builder(_name(subject_name), ca_cert.subject, public_key, start, end,
                 ca=is_ca, path_length=0 if is_ca else None)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(_unrecognized(ROLE_OID, role), critical=False)
    )
    if role in _EKU:
        builder = builder.add_extension(x509.ExtendedKeyUsage(_EKU[role]), critical=False)
    sans = _sans(san_dns, san_ip)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if privileges is not None:
        text = _privileges_json(privileges)
        from marionet.guard.privileges import PrivilegeError, parse

        try:  # validated when issued, not only when an endpoint loads it
            if _check_schema:
                parse(privileges)
        except PrivilegeError as exc:
            raise PkiError(f"privileges do not follow the schema (docs/guard.md): {exc}") from None
        builder = builder.add_extension(_unrecognized(PRIVILEGES_OID, text), critical=False)
    return key, builder.sign(ca_key, None)


def make_self_signed(
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    days: float = 365,
    name: str | None = None,
    role: str = "endpoint",
) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    """A self-signed server certificate, for peers that trust it by pinning.

    It is a leaf (CA:FALSE), yet OpenSSL accepts it as its own trust anchor
    when a client loads it as its CA file, which is how pin-by-file works.
    """
    role = _canonical_role(role)
    if role in CA_ROLES:
        raise PkiError("a self-signed server certificate cannot have a CA role")
    key = ed25519.Ed25519PrivateKey.generate()
    subject = _name(name or (hostnames[0] if hostnames else "marionet endpoint"))
    not_before, not_after = _validity(days, None)
    public = key.public_key()
    builder = (
        _builder(subject, subject, public, not_before, not_after, ca=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_unrecognized(ROLE_OID, role), critical=False)
    )
    sans = _sans(hostnames, ips)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(key, None)


# --------------------------------------------------------------------------
# Files.


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file + rename so a crash never leaves half a key,
    and create it with ``mode`` from the start so a key is never world-readable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_key(key: ed25519.Ed25519PrivateKey, path: str | os.PathLike[str]) -> Path:
    """PEM (PKCS#8, unencrypted) with mode 0600: the file system is the protection."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(Path(path), data, 0o600)
    return Path(path)


def save_cert(
    cert: x509.Certificate | Sequence[x509.Certificate], path: str | os.PathLike[str]
) -> Path:
    """PEM; several certificates are written in order (leaf first, then chain)."""
    certs = [cert] if isinstance(cert, x509.Certificate) else list(cert)
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _atomic_write(Path(path), data, 0o644)
    return Path(path)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise PkiError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None


def load_key(path: str | os.PathLike[str]) -> ed25519.Ed25519PrivateKey:
    """Load an unencrypted PEM Ed25519 private key."""
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PkiError(f"{path} holds a {type(key).__name__}; marionet uses Ed25519")
    return key


def load_certs(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """All PEM certificates in a file, in order."""
    data = _read(path, "certificate")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate file: {exc}") from None
    if not certs:  # pragma: no cover - cryptography raises instead
        raise PkiError(f"{path} contains no certificate")
    return certs


def load_cert(path: str | os.PathLike[str]) -> x509.Certificate:
    """The first (leaf) certificate in a PEM file."""
    return load_certs(path)[0]


# --------------------------------------------------------------------------
# A standalone endpoint's own server certificate.


class SelfSigned(NamedTuple):
    cert_path: Path
    key_path: Path
    fingerprint: str
    regenerated: bool


def _covers(cert: x509.Certificate, hostnames: Sequence[str], ips: Sequence[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not hostnames and not ips
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ip = set(san.get_values_for_type(x509.IPAddress))
    return set(hostnames) <= have_dns and {ipaddress.ip_address(a) for a in ips} <= have_ip


def _still_good(
    cert_path: Path,
    key_path: Path,
    hostnames: Sequence[str],
    ips: Sequence[str],
    renew_before: dt.timedelta,
) -> x509.Certificate | None:
    """The stored certificate if it is readable, matches its key, covers the
    requested names and is not about to expire; otherwise None."""
    try:
        cert = load_cert(cert_path)
        key = load_key(key_path)
    except PkiError:
        return None
    now = dt.datetime.now(dt.timezone.utc)
    if cert.not_valid_after_utc - renew_before <= now or cert.not_valid_before_utc > now:
        return None
    pub = cert.public_key()
    if not isinstance(pub, ed25519.Ed25519PublicKey):
        return None
    if pub.public_bytes_raw() != key.public_key().public_bytes_raw():
        return None
    return cert if _covers(cert, hostnames, ips) else None


def self_signed_server(
    state_dir: str | os.PathLike[str],
    hostnames: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    days: float = 365,
    *,
    basename: str = "server",
    renew_before: dt.timedelta = dt.timedelta(days=1),
) -> SelfSigned:
    """Key and certificate for a standalone endpoint, kept in ``state_dir``.

    Reused across runs so that clients which pinned its fingerprint keep
    working; regenerated when missing, unreadable, mismatched, not covering
    the requested names, or within ``renew_before`` of expiry.  A
    regeneration changes the fingerprint: ``regenerated`` tells the caller
    to show the new one to the operator.
    """
    state = Path(state_dir)
    cert_path, key_path = state / f"{basename}.pem", state / f"{basename}.key"
    cert = _still_good(cert_path, key_path, hostnames, ips, renew_before)
    if cert is not None:
        return SelfSigned(cert_path, key_path, fingerprint(cert), False)
    key, cert = make_self_signed(hostnames, ips, days)
    save_key(key, key_path)
    save_cert(cert, cert_path)
    return SelfSigned(cert_path, key_path, fingerprint(cert), True)


# --------------------------------------------------------------------------
# A PKI directory (what `marionet pki` manages).


class PkiPaths(NamedTuple):
    cert: Path
    key: Path
    ca: Path


class RevocationTarget(NamedTuple):
    """A certificate to revoke: its issuer, serial and how to name it."""

    issuer: x509.Name
    serial: int
    label: str


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESERVED = frozenset({"ca", "chain", "revoked"})


class PkiDir:
    """A directory holding ``ca.pem``/``ca.key`` and issued ``NAME.pem``/``NAME.key``.

    Plain files so an operator can inspect, copy and back them up with
    ordinary tools; keys are mode 0600 and the directory 0700.

    Two kinds: an operator directory (``ca.pem`` is a self-signed root) and
    a delegation directory (``ca.pem`` is a delegation CA the operator
    issued, ``chain.pem`` any CAs between it and the root).  A delegation
    directory only issues client certificates that narrow its CA's
    privileges, and writes them as the full chain a client presents.
    ``revoked.pem`` is the operator's revocation list (``revoke``).
    """

    CA_CERT = "ca.pem"
    CA_KEY = "ca.key"
    CHAIN = "chain.pem"
    REVOKED = "revoked.pem"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / self.CA_CERT).is_file() or not (self.path / self.CA_KEY).is_file():
            raise PkiError(
                f"{self.path} is not a marionet PKI directory (no {self.CA_CERT}/{self.CA_KEY});"
                " create one with `marionet pki init`"
            )

    def __repr__(self) -> str:
        return f"PkiDir({str(self.path)!r})"

    @classmethod
    def _create(cls, path: str | os.PathLike[str]) -> Path:
        root = Path(path)
        if (root / cls.CA_CERT).exists() or (root / cls.CA_KEY).exists():
            raise PkiError(f"{root} already holds a CA; refusing to overwrite it")
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise PkiError(f"cannot create {root}: {exc.strerror or exc}") from None
        return root

    @classmethod
    def init(
        cls, path: str | os.PathLike[str], name: str = "marionet operator", days: float = 3650
    ) -> PkiDir:
        """Create the directory and its root CA; refuse to overwrite an existing CA."""
        root = cls._create(path)
        key, cert = make_root(name, days)
        save_key(key, root / cls.CA_KEY)
        save_cert(cert, root / cls.CA_CERT)
        return cls(root)

    @classmethod
    def init_from_ca(
        cls, path: str | os.PathLike[str], cert_path: str | os.PathLike[str],
        key_path: str | os.PathLike[str],
    ) -> PkiDir:
        """A delegation directory from a delegation CA certificate and its key.

        ``cert_path`` holds the delegation certificate first, then
        optionally the CAs above it; those go to ``chain.pem`` (a
        self-signed root is left out: endpoints already have it).  Only
        the delegation CA's own key is ever stored, never the operator's.
        """
        certs = load_certs(cert_path)
        key = load_key(key_path)
        ca = certs[0]
        who = common_name(ca) or ca.subject.rfc4514_string()
        role = read_role(ca)
        if role != "ca":
            raise PkiError(f"{cert_path}: {who!r} has role {role!r}; --from-ca takes a delegation"
                           " CA certificate (issued with --role ca)")
        _check_issuer(key, ca)
        above = [c for c in certs[1:] if c.subject != c.issuer]
        for child, parent in zip([ca, *above], above):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                raise PkiError(f"{cert_path}: {common_name(child)!r} is not issued by the next"
                               f" certificate {common_name(parent)!r}") from None
        root = cls._create(path)
        save_key(key, root / cls.CA_KEY)
        save_cert(ca, root / cls.CA_CERT)
        if above:
            save_cert(above, root / cls.CHAIN)
        return cls(root)

    @property
    def ca_path(self) -> Path:
        return self.path / self.CA_CERT

    @property
    def chain_path(self) -> Path:
        return self.path / self.CHAIN

    @property
    def revocations_path(self) -> Path:
        """The operator's revocation list, to distribute to endpoints and controllers."""
        return self.path / self.REVOKED

    def ca(self) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
        return load_key(self.path / self.CA_KEY), load_cert(self.ca_path)

    @property
    def is_delegation(self) -> bool:
        """Whether ``ca.pem`` is a delegation CA rather than an operator root."""
        return read_role(load_cert(self.ca_path)) == "ca"

    def chain_above(self) -> list[x509.Certificate]:
        """The CAs between this directory's CA and the root (``chain.pem``)."""
        return load_certs(self.chain_path) if self.chain_path.is_file() else []

    @staticmethod
    def _check_name(name: str) -> str:
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name in _RESERVED:
            raise PkiError(
                f"bad certificate name {name!r}: use letters, digits, '.', '_', '-'"
                " (not 'ca', 'chain' or 'revoked', not starting with a dot)"
            )
        return name

    def _paths(self, name: str) -> PkiPaths:
        name = self._check_name(name)
        return PkiPaths(self.path / f"{name}.pem", self.path / f"{name}.key", self.ca_path)

    def issue(
        self,
        name: str,
        role: str,
        days: float = 365,
        san_dns: Sequence[str] = (),
        san_ip: Sequence[str] = (),
        privileges: dict[str, Any] | None = None,
        *,
        subject_name: str | None = None,
        overwrite: bool = False,
        not_before: dt.datetime | None = None,
    ) -> PkiPaths:
        """Issue ``NAME.pem``/``NAME.key`` (CN defaults to NAME) and return their paths.

        From a delegation directory, ``NAME.pem`` holds the full chain
        (the new leaf, this CA, then ``chain.pem``) so a client can present it."""
        paths = self._paths(name)
        if not overwrite and (paths.cert.exists() or paths.key.exists()):
            raise PkiError(f"{name!r} was already issued in {self.path}; pass overwrite=True")
        ca_key, ca_cert = self.ca()
        key, cert = issue(
            ca_key,
            ca_cert,
            subject_name or name,
            role,
            days,
            san_dns=san_dns,
            san_ip=san_ip,
            privileges=privileges,
            not_before=not_before,
        )
        assert key is not None
        chain = [cert, ca_cert, *self.chain_above()] if read_role(ca_cert) == "ca" else [cert]
        save_key(key, paths.key)
        save_cert(chain, paths.cert)
        return paths

    def paths(self, name: str) -> PkiPaths:
        """(cert, key, ca) for an issued name; PkiError if it was never issued."""
        paths = self._paths(name)
        if not paths.cert.is_file() or not paths.key.is_file():
            raise PkiError(f"no certificate {name!r} in {self.path}")
        return paths

    def names(self) -> list[str]:
        """Issued names (every NAME.pem with a NAME.key beside it)."""
        return sorted(
            p.stem
            for p in self.path.glob("*.pem")
            if p.name != self.CA_CERT and p.with_suffix(".key").is_file()
        )

    # ---------------------------------------------------------------- revoking

    def revocation_target(self, what: str | int | x509.Certificate | Sequence[x509.Certificate]
                          ) -> RevocationTarget:
        """Resolve an issued NAME, a serial (issued by this CA), a certificate,
        or a chain (leaf first) to what ``revoke`` will list.

        A certificate issued under a delegation CA is accepted as a chain
        that leads to this CA, so the operator only revokes what its own PKI
        issued."""
        ca = load_cert(self.ca_path)
        if isinstance(what, bool):
            raise PkiError("give a certificate name, serial or file to revoke")
        if isinstance(what, int):
            if what <= 0:
                raise PkiError(f"a certificate serial is a positive number, not {what}")
            return RevocationTarget(ca.subject, what, f"serial {what:#x}")
        if isinstance(what, str):
            certs = load_certs(self.paths(what).cert)
        elif isinstance(what, x509.Certificate):
            certs = [what]
        else:
            certs = list(what)
            if not certs:
                raise PkiError("no certificate given to revoke")
        leaf = certs[0]
        label = (f"{common_name(leaf) or leaf.subject.rfc4514_string()!r}"
                 f" ({read_role(leaf) or 'no role'}, serial {leaf.serial_number:#x})")
        if fingerprint(leaf) == fingerprint(ca):
            raise PkiError("refusing to revoke this directory's own CA; to retire it, stop"
                           " distributing ca.pem")
        ca_fp = fingerprint(ca)
        cur = leaf
        for parent in [*certs[1:], ca]:
            if cur.issuer != parent.subject:
                continue  # e.g. a chain file that also holds the root
            try:
                cur.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                break
            if fingerprint(parent) == ca_fp:
                return RevocationTarget(leaf.issuer, leaf.serial_number, label)
            cur = parent
        raise PkiError(f"{label} was not issued under this CA"
                       f" ({common_name(ca) or ca.subject.rfc4514_string()!r})")

    def revoke(self, what: str | int | x509.Certificate | Sequence[x509.Certificate],
               reason: str = "", *, now: dt.datetime | None = None) -> Path:
        """Add ``what`` to ``revoked.pem`` (a new CRL with every earlier entry)
        and return its path, the file to distribute.

        Only an operator directory can: endpoints accept lists signed by an
        operator root only, so a delegation CA holder asks the operator
        (``marionet pki revoke OPERATOR_DIR --cert student.pem``)."""
        from marionet.guard import revocation as R

        ca_key, ca = self.ca()
        if read_role(ca) != "operator":
            raise PkiError(
                f"{self.path} holds delegation CA {common_name(ca)!r}; endpoints only accept"
                " revocation lists signed by the operator, so ask the operator to run"
                " `marionet pki revoke OPERATOR_DIR --cert FILE`")
        if not isinstance(reason, str) or len(reason) > 1000 or any(
                c in reason for c in "\r\n\x00"):
            raise PkiError("the reason must be one line of at most 1000 characters")
        target = self.revocation_target(what)
        entries: list[Any] = []
        number = 0
        if self.revocations_path.exists():
            entries, number = R.read_entries(self.revocations_path, ca)
        now = now or dt.datetime.now(dt.timezone.utc)
        if not any(e.issuer == target.issuer and e.serial == target.serial for e in entries):
            entries.append(R.Revocation(target.issuer, target.serial,
                                        now.replace(microsecond=0), reason.strip()))
        crl = R.make_crl(ca_key, ca, entries, number=number + 1, now=now)
        _atomic_write(self.revocations_path, R.crl_pem(crl), 0o644)
        return self.revocations_path
