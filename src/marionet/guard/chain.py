"""Verify a researcher's certificate chain on the endpoint, and their proof of key.

Why the endpoint verifies chains itself: a session may reach it through a
controller, and then TLS only authenticates the controller.  The client
sends its chain (leaf first, then any delegation CAs) inside the channel,
and the endpoint checks it up to an operator root it trusts: each link's
name and signature, roles (intermediates are delegation CAs, the leaf has
an expected role), validity at *now*, the revocation list, and that every
delegated certificate only narrows what its issuer holds.  The grants a
session gets are the intersection of the privileges along the chain, so a
controller cannot add any.

Proof of key possession.  A chain is public, so presenting one proves
nothing; the client must also sign::

    len || "marionet-channel-auth-v1" || len || nonce || len || VP name || len || leaf fingerprint

(each field prefixed by its 4-byte big-endian length, so no two field
tuples encode alike).  The endpoint picks a fresh random nonce per session,
so an old proof cannot be replayed; the VP name is bound so a controller
cannot relay one VP's challenge to a client who meant to talk to another VP
and use the answer there; the leaf fingerprint binds the proof to the chain
presented.

What a compromised controller can and cannot do.  It cannot obtain
privileges the operator never signed (it holds no key the chain accepts),
cannot make a client's proof count for another VP or another session, and
cannot replay an old proof.  The channel is not end-to-end protected,
though: once an authenticated client has opened a session through it, a
controller can inject or alter requests in that session, within that
client's privileges, and read its results.  Researchers who cannot accept
that connect to the endpoint directly (mutual TLS end to end).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from marionet.guard import pki

if TYPE_CHECKING:
    from marionet.guard.privileges import Privileges
    from marionet.guard.revocation import RevocationSet

__all__ = [
    "AUTH_CONTEXT",
    "CODES",
    "ChainError",
    "VerifiedChain",
    "verify_chain",
    "trusted_anchors",
    "describe_cert",
    "auth_message",
    "sign_auth",
    "verify_auth",
]

AUTH_CONTEXT = b"marionet-channel-auth-v1"

CODES = ("malformed", "foreign-ca", "expired", "not-yet-valid", "bad-signature", "bad-role",
         "revoked", "widening", "too-long", "bad-privileges")


class ChainError(PermissionError):
    """A chain the endpoint refuses; ``code`` is one of ``CODES`` and the
    message names which certificate and why."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:  # pragma: no cover - programming error
            raise ValueError(f"unknown chain error code {code!r}")
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that passed ``verify_chain``: who it is and what it grants."""

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, then delegation CAs; excludes the anchor
    anchor: x509.Certificate
    name: str
    role: str
    fingerprint: str
    anchor_fingerprint: str
    serials: tuple[int, ...]  # every certificate of ``chain`` (leaf first)
    grants: "Privileges"  # intersection of privileges along the chain
    not_after: dt.datetime  # earliest expiry along the chain (anchor included)


def _safe_role(cert: x509.Certificate) -> str | None:
    try:
        return pki.read_role(cert)
    except pki.PkiError:
        return "?"


def describe_cert(cert: x509.Certificate) -> str:
    """``certificate 'alice' (client, serial 0x1f…)``: how messages name a certificate."""
    name = pki.common_name(cert) or cert.subject.rfc4514_string() or "(no name)"
    role = _safe_role(cert) or "no marionet role"
    return f"certificate {name!r} ({role}, serial {cert.serial_number:#x})"


def _issuer_label(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cns and isinstance(cns[0].value, str):
        return cns[0].value
    return name.rfc4514_string() or "(empty name)"


def _fmt(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _parse(certs: Sequence[x509.Certificate | bytes], max_depth: int) -> list[x509.Certificate]:
    if isinstance(certs, (bytes, bytearray, memoryview, x509.Certificate)):
        certs = [certs]  # type: ignore[list-item]
    try:
        items = list(certs)
    except TypeError:
        raise ChainError("malformed", "the chain is not a list of certificates") from None
    if not items:
        raise ChainError("malformed", "the chain is empty (no certificate presented)")
    # +1: the client may append the operator root, which is dropped below.
    if len(items) > max_depth + 1:
        raise ChainError("too-long", f"the chain holds {len(items)} certificates; at most"
                                     f" {max_depth} (plus the operator CA) are accepted")
    out = []
    for i, item in enumerate(items, 1):
        if isinstance(item, x509.Certificate):
            out.append(item)
            continue
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise ChainError("malformed", f"chain element {i} is a {type(item).__name__},"
                                          " not a DER certificate")
        try:
            out.append(x509.load_der_x509_certificate(bytes(item)))
        except ValueError as exc:
            raise ChainError("malformed", f"chain element {i} is not a DER X.509 certificate"
                                          f" ({exc})") from None
    return out


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (names are checked by the caller)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:  # pragma: no cover - a duplicate extension fails at parse
        return None


def _key_cert_sign(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True  # RFC 5280: absent KeyUsage does not restrict


def _link(chain: list[x509.Certificate], anchors: Sequence[x509.Certificate]) -> x509.Certificate:
    """Check every link's name and signature; return the anchor the chain ends at."""
    for cert, issuer in zip(chain, chain[1:]):
        if cert.issuer != issuer.subject:
            raise ChainError("malformed", f"{describe_cert(cert)} is issued by"
                             f" {_issuer_label(cert.issuer)!r}, but the next certificate in the chain"
                             f" is {_issuer_label(issuer.subject)!r} (chain out of order?)")
        if not _signed_by(cert, issuer):
            raise ChainError("bad-signature", f"the signature on {describe_cert(cert)} does not"
                             f" verify with the key of {describe_cert(issuer)} (forged or damaged)")
    top = chain[-1]
    named = [a for a in anchors if a.subject == top.issuer]
    if not named:
        raise ChainError("foreign-ca", f"{describe_cert(top)} is issued by"
                         f" {_issuer_label(top.issuer)!r}, which this endpoint does not trust")
    for anchor in named:
        if _signed_by(top, anchor):
            return anchor
    raise ChainError("bad-signature", f"{describe_cert(top)} names"
                     f" {_issuer_label(top.issuer)!r} as its issuer, but its signature does not"
                     " verify with that operator CA's key (forged, or a different CA of the same name)")


def _check_roles(chain: list[x509.Certificate], anchor: x509.Certificate,
                 roles: Collection[str]) -> str:
    for depth, ca in enumerate(chain[1:]):  # depth: CAs below this one
        bc = _basic_constraints(ca)
        role = _safe_role(ca)
        if bc is None or not bc.ca or not _key_cert_sign(ca):
            raise ChainError("bad-role", f"{describe_cert(ca)} issued {describe_cert(chain[depth])}"
                             " but is not a CA certificate")
        if role != "ca":
            raise ChainError("bad-role", f"{describe_cert(ca)} sits in the middle of the chain but"
                             f" has role {role!r}, not a delegation CA ('ca')")
        if bc.path_length is not None and depth > bc.path_length:
            raise ChainError("too-long", f"{describe_cert(ca)} allows {bc.path_length} CA(s) below"
                             f" it, but the chain puts {depth} there")
    abc = _basic_constraints(anchor)
    below = len(chain) - 1
    if abc is not None and abc.path_length is not None and below > abc.path_length:
        raise ChainError("too-long", f"operator CA {_issuer_label(anchor.subject)!r} allows"
                         f" {abc.path_length} delegation CA(s), but the chain has {below}")
    leaf = chain[0]
    role = _safe_role(leaf)
    if role == "?":
        raise ChainError("malformed", f"{describe_cert(leaf)} has an unreadable role extension")
    wanted = " or ".join(sorted(roles)) or "(none)"
    if role is None:
        raise ChainError("bad-role", f"{describe_cert(leaf)} carries no marionet role, not {wanted}")
    if role not in roles:
        raise ChainError("bad-role", f"certificate {pki.common_name(leaf) or '?'!r} (serial"
                         f" {leaf.serial_number:#x}) has role {role!r}, not {wanted}")
    bc = _basic_constraints(leaf)
    if role not in pki.CA_ROLES and bc is not None and bc.ca:
        raise ChainError("bad-role", f"{describe_cert(leaf)} is a CA certificate, not a {role}")
    if len(chain) > 1 and role != "client":
        raise ChainError("bad-role", f"{describe_cert(leaf)} was issued by delegation CA"
                         f" {_issuer_label(leaf.issuer)!r}; delegation CAs may only issue client"
                         " certificates")
    return role


def _check_times(chain: list[x509.Certificate], anchor: x509.Certificate, now: dt.datetime) -> dt.datetime:
    # Top down: when a CA and the certificates under it are all out of
    # date, naming the CA says what actually needs renewing.
    for cert in [anchor, *reversed(chain)]:
        label = describe_cert(cert) if cert is not anchor else \
            f"operator CA {_issuer_label(anchor.subject)!r}"
        if now < cert.not_valid_before_utc:
            raise ChainError("not-yet-valid", f"{label} is not valid before"
                             f" {_fmt(cert.not_valid_before_utc)} (now {_fmt(now)})")
        if now > cert.not_valid_after_utc:
            raise ChainError("expired", f"{label} expired at {_fmt(cert.not_valid_after_utc)}")
    return min(c.not_valid_after_utc for c in [*chain, anchor])


def _privileges(cert: x509.Certificate) -> "Privileges":
    from marionet.guard import privileges as P

    try:
        doc = pki.read_privileges(cert)
        return P.NOTHING if doc is None else P.parse(doc)
    except (pki.PkiError, P.PrivilegeError) as exc:
        raise ChainError("bad-privileges", f"{describe_cert(cert)} has an invalid privilege"
                         f" document: {exc}") from None


def _grants(chain: list[x509.Certificate]) -> "Privileges":
    from marionet.guard import privileges as P

    held = [_privileges(c) for c in chain]
    for i in range(len(chain) - 1):
        reasons = P.widenings(held[i], held[i + 1])
        if reasons:
            raise ChainError("widening", f"{describe_cert(chain[i])} grants more than its issuer,"
                             f" delegation CA {pki.common_name(chain[i + 1]) or '?'!r}, holds: "
                             + "; ".join(reasons))
    return functools.reduce(lambda acc, p: P.intersect(p, acc), reversed(held[:-1]), held[-1])


def verify_chain(
    certs: Sequence[x509.Certificate | bytes],
    anchors: Sequence[x509.Certificate],
    *,
    roles: Collection[str] = ("client",),
    now: dt.datetime | None = None,
    revoked: "RevocationSet | None" = None,
    max_depth: int = 4,
) -> VerifiedChain:
    """Check ``certs`` (leaf first, DER or parsed) up to one of ``anchors``.

    Raises ``ChainError`` naming the first problem: links and signatures
    first (so a foreign chain reads "foreign-ca" whatever else is wrong),
    then roles and path lengths, validity, revocation (both from the top
    down) and privileges.
    """
    if now is None:
        now = dt.datetime.now(dt.timezone.utc)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if isinstance(roles, str):
        roles = (roles,)
    chain = _parse(certs, max_depth)
    anchor_fps = {pki.fingerprint(a) for a in anchors}
    if len(chain) > 1 and pki.fingerprint(chain[-1]) in anchor_fps:
        chain = chain[:-1]  # the client sent the root too
    if len(chain) > max_depth:
        raise ChainError("too-long", f"the chain holds {len(chain)} certificates below the"
                         f" operator CA; at most {max_depth} are accepted")
    if pki.fingerprint(chain[0]) in anchor_fps:
        raise ChainError("bad-role", f"{describe_cert(chain[0])} is the operator CA itself, not a"
                         f" {' or '.join(sorted(roles))} certificate")
    anchor = _link(chain, anchors)
    role = _check_roles(chain, anchor, roles)
    not_after = _check_times(chain, anchor, now)
    if revoked is not None:
        for cert in reversed(chain):  # a revoked CA explains its whole subtree
            why = revoked.reason(cert)
            if why is not None:
                raise ChainError("revoked", f"{describe_cert(cert)} was {why}")
    grants = _grants(chain)
    leaf = chain[0]
    return VerifiedChain(
        leaf=leaf,
        chain=tuple(chain),
        anchor=anchor,
        name=pki.common_name(leaf) or leaf.subject.rfc4514_string(),
        role=role,
        fingerprint=pki.fingerprint(leaf),
        anchor_fingerprint=pki.fingerprint(anchor),
        serials=tuple(c.serial_number for c in chain),
        grants=grants,
        not_after=not_after,
    )


def trusted_anchors(paths: Sequence[str | Path]) -> list[x509.Certificate]:
    """The operator roots in ``paths`` (PEM files); PkiError for anything else.

    Refusing rather than skipping a non-root matters: configuring a
    delegation CA or a leaf as a trust anchor is a mistake that would
    otherwise silently trust the wrong thing (or nothing)."""
    out: list[x509.Certificate] = []
    seen: set[str] = set()
    for p in paths:
        for cert in pki.load_certs(p):
            what = describe_cert(cert)
            role = _safe_role(cert)
            bc = _basic_constraints(cert)
            if role != "operator":
                hint = " (a delegation CA: endpoints trust operator roots only)" if role == "ca" else ""
                raise pki.PkiError(f"{p}: {what} is not an operator CA{hint}")
            if bc is None or not bc.ca:
                raise pki.PkiError(f"{p}: {what} is not a CA certificate")
            if cert.issuer != cert.subject or not _signed_by(cert, cert):
                raise pki.PkiError(f"{p}: {what} is not self-signed, so it is not a root")
            fp = pki.fingerprint(cert)
            if fp not in seen:
                seen.add(fp)
                out.append(cert)
    return out


# --------------------------------------------------------------------------
# Proof of key possession.


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def auth_message(nonce: bytes, vp_name: str, leaf_fingerprint: str) -> bytes:
    """The exact bytes a client signs (see the module docstring)."""
    if not isinstance(nonce, (bytes, bytearray)) or not nonce:
        raise ValueError("the auth nonce must be non-empty bytes")
    if not isinstance(vp_name, str) or not vp_name:
        raise ValueError("the VP name must be a non-empty string")
    try:
        fp = pki.normalize_fingerprint(leaf_fingerprint)
    except (pki.PkiError, AttributeError):
        raise ValueError(f"not a leaf fingerprint: {leaf_fingerprint!r}") from None
    return b"".join(_field(f) for f in (AUTH_CONTEXT, bytes(nonce), vp_name.encode("utf-8"),
                                        fp.encode("ascii")))


def sign_auth(key: ed25519.Ed25519PrivateKey, nonce: bytes, vp_name: str,
              leaf: x509.Certificate | str) -> bytes:
    """The client's answer to an endpoint's challenge; ``leaf`` is the
    leaf certificate or its fingerprint."""
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError("marionet keys are Ed25519")
    fp = pki.fingerprint(leaf) if isinstance(leaf, x509.Certificate) else leaf
    return key.sign(auth_message(nonce, vp_name, fp))


def verify_auth(chain: VerifiedChain, signature: bytes, nonce: bytes, vp_name: str) -> None:
    """ChainError("bad-signature") unless the leaf's key signed exactly this
    nonce, VP name and leaf fingerprint."""
    who = describe_cert(chain.leaf)
    key = chain.leaf.public_key()
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ChainError("bad-signature", f"{who} has a {type(key).__name__}, not an Ed25519 key")
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != 64:
        raise ChainError("bad-signature", f"the key proof for {who} is not a 64-byte Ed25519 signature")
    try:
        key.verify(bytes(signature), auth_message(nonce, vp_name, chain.fingerprint))
    except InvalidSignature:
        raise ChainError("bad-signature", f"{who}'s key did not sign this session's challenge for"
                         f" VP {vp_name!r} (wrong key, stale nonce or another VP)") from None
