"""The lab's web certificate authority.

Lab HTTPS servers need certificates that ordinary clients (curl, OpenSSL,
Python's ``ssl``, browsers) accept once they trust one root file. The guard's
PKI (``marionet.guard.pki``) uses Ed25519, which many TLS stacks still refuse
for server certificates, so the web CA is separate and uses ECDSA P-256 — the
one key type every TLS client accepts.

The CA lives in a directory (normally the lab's state dir): ``ca.pem`` (the
root, what VPs and tests trust), ``ca.key`` (mode 0600). ``LabCA.load_or_create``
makes the pair once and reuses it, so a lab restarted on the same state dir
keeps one root.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["LabCA", "LabCAError", "CA_CERT_NAME", "CA_KEY_NAME"]

CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"

#: Leaf lifetime. Short enough that clients applying CA/B-style limits
#: (398 days) accept it, long enough for any lab run.
LEAF_DAYS = 90
CA_DAYS = 3650
#: Backdate validity so a VP whose clock is slightly behind still accepts.
BACKDATE = dt.timedelta(hours=1)


class LabCAError(Exception):
    """The CA directory is unusable (half a key pair, unreadable files)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only (a private key)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass
class LabCA:
    """A loaded lab CA: its key, its root certificate, and where they live."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def root_path(self) -> Path:
        """The PEM root that clients pass as ``--cacert`` / ``cafile``."""
        return self.directory / CA_CERT_NAME

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str], name: str = "marionet lab CA") -> "LabCA":
        """Load the CA in ``directory``, creating it the first time.

        Creating only when *both* files are missing keeps a half-written
        directory from silently replacing a root that clients already trust.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cert_p, key_p = d / CA_CERT_NAME, d / CA_KEY_NAME
        if cert_p.exists() and key_p.exists():
            return cls.load(d)
        if cert_p.exists() or key_p.exists():
            raise LabCAError(f"{d}: only one of {CA_CERT_NAME}/{CA_KEY_NAME} exists; remove it or restore the other")
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "marionet lab"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        now = _utcnow()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_private(key_p, _key_pem(key))
        cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(d, key, cert)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "LabCA":
        """Load an existing CA; errors name the file that is wrong."""
        d = Path(directory)
        cert_p, key_p = d / CA_CERT_NAME, d / CA_KEY_NAME
        try:
            cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
        except (OSError, ValueError) as e:
            raise LabCAError(f"{cert_p}: cannot load CA certificate: {e}") from e
        try:
            key = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as e:
            raise LabCAError(f"{key_p}: cannot load CA key: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise LabCAError(f"{key_p}: expected an ECDSA key, got {type(key).__name__}")
        if cert.public_key().public_numbers() != key.public_key().public_numbers():
            raise LabCAError(f"{d}: {CA_CERT_NAME} and {CA_KEY_NAME} do not belong together")
        return cls(d, key, cert)

    def issue_server_cert(
        self,
        names: Iterable[str],
        addresses: Iterable[str] = (),
        out_dir: str | os.PathLike[str] | None = None,
        stem: str = "server",
    ) -> tuple[Path, Path]:
        """Issue a TLS server certificate for DNS ``names`` and IP ``addresses``.

        Returns ``(cert_path, key_path)``. The certificate file holds only the
        leaf: the root is the trust anchor clients already have, and the chain
        is one level deep, so there is nothing else to send. Both DNS names and IPs
        go into the SAN, because clients ignore the CN and lab tests often
        connect by address.
        """
        dns = [n.rstrip(".") for n in names if n]
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = []
        for a in addresses:
            try:
                ips.append(ipaddress.ip_address(a))
            except ValueError as e:
                raise LabCAError(f"addresses: {a!r} is not an IP address") from e
        if not dns and not ips:
            raise LabCAError("names/addresses: a server certificate needs at least one name or address")
        out = Path(out_dir) if out_dir is not None else self.directory
        out.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        cn = dns[0] if dns else str(ips[0])
        now = _utcnow()
        san: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        san += [x509.IPAddress(i) for i in ips]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_p, key_p = out / f"{stem}.pem", out / f"{stem}.key"
        _write_private(key_p, _key_pem(key))
        cert_p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_p, key_p
