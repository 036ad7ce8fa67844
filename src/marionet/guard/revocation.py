"""The operator's revocation list: which certificates no longer count.

Why an X.509 CRL: it is the standard, operator-signed format (``openssl crl
-text`` reads it), so a list copied to every endpoint and controller cannot
be forged or trimmed by whoever carries it: each list must verify against an
operator CA the reader already trusts, and its issuer must be that CA.

Who can revoke what: only operator roots sign lists that endpoints accept.
The operator can revoke any serial its PKI issued, *including a delegation
CA's*; since every element of a chain is checked (``chain.verify_chain``),
revoking a delegation CA ends every certificate issued under it at once.
A delegation CA holder cannot publish a list; to revoke a student's
certificate they ask the operator, who runs ``marionet pki revoke DIR --cert
student.pem`` (the student's file holds the chain, which shows it was issued
under this operator).  Such an entry names the delegation CA as the
certificate's issuer (the standard ``certificateIssuer`` entry extension),
because a serial only identifies a certificate together with its issuer.

Each entry may carry the operator's free-text reason in a private,
non-critical entry extension (``MARIONET_ARC.3``, a UTF8String), so a
refused researcher reads "revoked 2026-12-07 10:00 UTC: key lost".

A list past its ``next_update`` still applies (it is logged): an old list
is no reason to forget a revocation.  The ``RevocationWatcher`` reloads on
change and, if a file becomes unreadable or badly signed, keeps the previous
set and logs an error: revocations are never dropped silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from marionet.guard import pki

__all__ = [
    "REASON_OID",
    "RevocationError",
    "Revocation",
    "RevocationSet",
    "RevocationWatcher",
    "make_crl",
    "format_time",
]

log = logging.getLogger("marionet.guard.revocation")

#: Private CRL entry extension holding the operator's free-text reason.
REASON_OID = x509.ObjectIdentifier(f"{pki.MARIONET_ARC}.3")

#: How long a freshly written list claims to be current.
NEXT_UPDATE = dt.timedelta(days=30)


class RevocationError(pki.PkiError):
    """A revocation list that cannot be used; the message names the file."""


def format_time(when: dt.datetime) -> str:
    """``2026-12-07 10:00 UTC``: what error messages show."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate: who issued it, its serial, when and why."""

    issuer: x509.Name
    serial: int
    date: dt.datetime
    reason: str = ""

    def describe(self) -> str:
        text = f"revoked {format_time(self.date)}"
        return f"{text}: {self.reason}" if self.reason else text


def _entry_reason(entry: x509.RevokedCertificate) -> str:
    try:
        ext = entry.extensions.get_extension_for_oid(REASON_OID)
    except x509.ExtensionNotFound:
        return ""
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):  # pragma: no cover - defensive
        return ""
    try:
        return pki._parse_der_utf8(value.value)
    except pki.PkiError:
        return "(unreadable reason)"


def _entries(crl: x509.CertificateRevocationList) -> list[Revocation]:
    """The entries, resolving ``certificateIssuer`` as RFC 5280 5.3.3 says:
    it applies to its entry and every later one until the next."""
    issuer = crl.issuer
    out = []
    for entry in crl:
        try:
            ci = entry.extensions.get_extension_for_class(x509.CertificateIssuer).value
        except x509.ExtensionNotFound:
            ci = None
        if ci is not None:
            names = ci.get_values_for_type(x509.DirectoryName)
            if names:
                issuer = names[0]
        out.append(Revocation(issuer, entry.serial_number, entry.revocation_date_utc,
                              _entry_reason(entry)))
    return out


def make_crl(
    ca_key: ed25519.Ed25519PrivateKey,
    ca_cert: x509.Certificate,
    entries: Iterable[Revocation],
    *,
    number: int = 1,
    now: dt.datetime | None = None,
    next_update: dt.timedelta = NEXT_UPDATE,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca_cert`` (Ed25519, so no hash algorithm) listing ``entries``."""
    pki._check_issuer(ca_key, ca_cert)
    now = now or dt.datetime.now(dt.timezone.utc)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    entries = list(entries)
    if any(e.issuer != ca_cert.subject for e in entries):
        # RFC 5280 5.2.5: entries for another issuer's certificates (a
        # delegation CA's students) make this an indirect CRL.
        builder = builder.add_extension(x509.IssuingDistributionPoint(
            full_name=None, relative_name=None, only_contains_user_certs=False,
            only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=True,
            only_contains_attribute_certs=False), critical=True)
    for e in sorted(entries, key=lambda e: (e.date, e.serial)):
        rb = (
            x509.RevokedCertificateBuilder()
            .serial_number(e.serial)
            .revocation_date(e.date)
            # On every entry, so the list never depends on entry order.
            .add_extension(x509.CertificateIssuer([x509.DirectoryName(e.issuer)]), critical=True)
        )
        if e.reason:
            rb = rb.add_extension(pki._unrecognized(REASON_OID, e.reason), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    return builder.sign(ca_key, None)


def _read_crl(path: Path) -> x509.CertificateRevocationList:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RevocationError(f"revocation list {path} not found") from None
    except OSError as exc:
        raise RevocationError(f"cannot read revocation list {path}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise RevocationError(f"{path} is not an X.509 revocation list (CRL): {exc}") from None


def _check_signed(path: Path, crl: x509.CertificateRevocationList,
                  anchors: Sequence[x509.Certificate]) -> x509.Certificate:
    """The anchor that signed ``crl``, or RevocationError naming the file."""
    same_name = [a for a in anchors if a.subject == crl.issuer]
    if not same_name:
        who = crl.issuer.rfc4514_string() or "(empty name)"
        raise RevocationError(
            f"revocation list {path} is issued by {who!r}, which is not an operator CA trusted here")
    for anchor in same_name:
        try:
            if crl.is_signature_valid(anchor.public_key()):  # type: ignore[arg-type]
                return anchor
        except (TypeError, ValueError):
            continue
    raise RevocationError(
        f"revocation list {path} names {pki.common_name(same_name[0])!r} as issuer but its"
        " signature does not verify with that CA's key (forged or damaged)")


class RevocationSet:
    """Revoked certificates from one or more operator-signed lists.

    Looked up by (issuer name, serial), since serials are unique per issuer
    only; ``reason_for_serial`` ignores the issuer for callers that kept
    only serials (160-bit random serials do not collide in practice)."""

    def __init__(self, entries: Iterable[Revocation] = (), *,
                 next_update: dt.datetime | None = None) -> None:
        self._by_key: dict[tuple[x509.Name, int], Revocation] = {}
        for e in entries:
            # The earliest date wins when two lists name the same certificate.
            old = self._by_key.get((e.issuer, e.serial))
            if old is None or e.date < old.date:
                self._by_key[(e.issuer, e.serial)] = e
        self._by_serial: Mapping[int, Revocation] = {e.serial: e for e in self._by_key.values()}
        self.next_update = next_update

    @classmethod
    def load(cls, paths: Sequence[str | os.PathLike[str]],
             anchors: Sequence[x509.Certificate]) -> "RevocationSet":
        """Read and verify every list; RevocationError names the first bad file."""
        entries: list[Revocation] = []
        next_update: dt.datetime | None = None
        now = dt.datetime.now(dt.timezone.utc)
        for p in paths:
            path = Path(p)
            crl = _read_crl(path)
            _check_signed(path, crl, anchors)
            entries.extend(_entries(crl))
            nu = crl.next_update_utc
            if nu is not None:
                next_update = nu if next_update is None else min(next_update, nu)
                if nu < now:
                    log.warning("revocation list %s was due for renewal at %s; its entries"
                                " still apply", path, format_time(nu))
        return cls(entries, next_update=next_update)

    def __len__(self) -> int:
        return len(self._by_key)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._by_key.values(), key=lambda e: (e.date, e.serial)))

    def __repr__(self) -> str:
        return f"RevocationSet({len(self)} revoked, digest {self.digest[:12]})"

    @property
    def serials(self) -> frozenset[int]:
        return frozenset(self._by_serial)

    @property
    def digest(self) -> str:
        """SHA-256 of the content (not the file), so re-signing an unchanged
        list does not look like a change."""
        h = hashlib.sha256()
        for e in sorted(self._by_key.values(),
                        key=lambda e: (e.issuer.public_bytes(), e.serial)):
            for part in (e.issuer.public_bytes(), str(e.serial).encode(),
                         e.date.isoformat().encode(), e.reason.encode()):
                h.update(len(part).to_bytes(4, "big") + part)
        return h.hexdigest()

    def entry(self, cert: x509.Certificate) -> Revocation | None:
        return self._by_key.get((cert.issuer, cert.serial_number))

    def reason(self, cert: x509.Certificate) -> str | None:
        """``"revoked 2026-12-07 10:00 UTC: key lost"``, or None if not revoked."""
        e = self.entry(cert)
        return None if e is None else e.describe()

    def reason_for_serial(self, serial: int) -> str | None:
        e = self._by_serial.get(serial)
        return None if e is None else e.describe()


def _stat(paths: Sequence[Path]) -> tuple[tuple[int, int, int] | None, ...]:
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class RevocationWatcher:
    """Reload the lists when a file changes (polled), or on ``reload()``.

    Polling mtime/size/inode once per ``interval_s`` is cheap, works for
    editors and ``rename``-style updates alike, and needs no inotify.
    ``on_change`` is called with the new set only when its content changed.
    A failed load keeps the previous set and logs an error; the watcher
    itself never raises into the event loop.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], anchors: Sequence[x509.Certificate],
                 on_change: Callable[[RevocationSet], None], interval_s: float = 1.0, *,
                 initial: RevocationSet | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s!r}")
        self.paths = [Path(p) for p in paths]
        self.anchors = list(anchors)
        self.on_change = on_change
        self.interval_s = interval_s
        self.current: RevocationSet | None = initial
        self.last_error: str | None = None
        self._stats: tuple[tuple[int, int, int] | None, ...] | None = None
        self._task: asyncio.Task[None] | None = None

    def _load(self) -> bool:
        """Load now; True if the content changed (``on_change`` was called)."""
        self._stats = _stat(self.paths)
        try:
            new = RevocationSet.load(self.paths, self.anchors)
        except RevocationError as exc:
            self.last_error = str(exc)
            kept = len(self.current) if self.current is not None else 0
            log.error("%s; keeping the previous revocation list (%d revoked)", exc, kept)
            return False
        self.last_error = None
        if self.current is not None and new.digest == self.current.digest:
            self.current = new
            return False
        self.current = new
        try:
            self.on_change(new)
        except Exception:  # noqa: BLE001 - a failing listener must not stop the watcher
            log.exception("revocation on_change callback failed")
        return True

    def reload(self) -> bool:
        """Re-read the files now (the daemon calls this on SIGHUP)."""
        return self._load()

    def poll(self) -> bool:
        """Reload if any file's mtime, size or inode changed."""
        if _stat(self.paths) == self._stats:
            return False
        return self._load()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - never let the watcher die
                log.exception("revocation watcher poll failed")

    def start(self) -> None:
        """Start polling; call inside the running event loop.

        Without an ``initial`` set, the current files become the baseline
        (no ``on_change`` for them)."""
        if self._task is not None:
            return
        if self.current is None:
            self._stats = _stat(self.paths)
            try:
                self.current = RevocationSet.load(self.paths, self.anchors)
            except RevocationError as exc:
                self.last_error = str(exc)
                log.error("%s; no revocation list loaded yet", exc)
        else:
            self._load()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


def read_entries(path: Path, ca_cert: x509.Certificate) -> tuple[list[Revocation], int]:
    """The entries and CRL number of a list ``ca_cert`` signed (for appending)."""
    crl = _read_crl(path)
    _check_signed(path, crl, [ca_cert])
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = 0
    return _entries(crl), number


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
