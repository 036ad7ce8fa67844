"""marionet.guard.chain: chain verification and the channel proof of key, with real certificates."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from marionet.guard import pki
from marionet.guard import privileges as P
from marionet.guard.chain import (
    AUTH_CONTEXT,
    ChainError,
    auth_message,
    sign_auth,
    trusted_anchors,
    verify_auth,
    verify_chain,
)
from marionet.guard.revocation import Revocation, RevocationSet

UTC = dt.timezone.utc
T0 = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(hours=1)

LAB = {"protocols": ["udp", "tcp"], "dst": ["192.0.2.0/24"], "rate": {"pps": 100}}
STUDENT = {"protocols": ["udp"], "dst": ["192.0.2.0/25"], "rate": {"pps": 10}}
DIRECT = {"protocols": ["udp"], "dst": ["198.51.100.0/24"]}


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def hexserial(cert: x509.Certificate) -> str:
    return f"{cert.serial_number:#x}"


@pytest.fixture(scope="module")
def pk() -> dict[str, Any]:
    """An operator root, a delegation CA 'lab' (30 days) with a student, a
    direct client 'alice' (10 days), and an endpoint certificate."""
    root_key, root = pki.make_root("Test Operator", days=365)
    lab_key, lab = pki.issue(root_key, root, "lab", "ca", days=30, privileges=LAB, not_before=T0)
    _, student = pki.issue(lab_key, lab, "student", "client", days=60, privileges=STUDENT,
                           not_before=T0)
    alice_key, alice = pki.issue(root_key, root, "alice", "client", days=10, privileges=DIRECT,
                                 not_before=T0)
    _, vp = pki.issue(root_key, root, "vp1", "endpoint", not_before=T0)
    return dict(root_key=root_key, root=root, lab_key=lab_key, lab=lab, student=student,
                alice_key=alice_key, alice=alice, vp=vp)


def raw_cert(issuer_key: ed25519.Ed25519PrivateKey, issuer: x509.Name | x509.Certificate,
             name: str, role: str | None, *, ca: bool = False, path_length: int | None = None,
             privileges: dict[str, Any] | None = None, days: float = 5,
             key: ed25519.Ed25519PrivateKey | None = None) -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    """Sign a certificate by hand, without pki.issue's refusals (to build bad chains)."""
    key = key or ed25519.Ed25519PrivateKey.generate()
    issuer_name = issuer.subject if isinstance(issuer, x509.Certificate) else issuer
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
         .issuer_name(issuer_name)
         .public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(T0)
         .not_valid_after(T0 + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True))
    if role is not None:
        b = b.add_extension(pki._unrecognized(pki.ROLE_OID, role), critical=False)
    if privileges is not None:
        b = b.add_extension(pki._unrecognized(pki.PRIVILEGES_OID, pki._privileges_json(privileges)),
                            critical=False)
    return key, b.sign(issuer_key, None)


def refused(code: str, certs: list, anchors: list, **kw: Any) -> str:
    with pytest.raises(ChainError) as info:
        verify_chain(certs, anchors, **kw)
    assert info.value.code == code, str(info.value)
    assert isinstance(info.value, PermissionError)
    return str(info.value)


# --------------------------------------------------------------------------
# Good chains.


def test_direct_chain(pk) -> None:
    vc = verify_chain([pk["alice"]], [pk["root"]])
    assert vc.leaf == pk["alice"] and vc.chain == (pk["alice"],) and vc.anchor == pk["root"]
    assert (vc.name, vc.role) == ("alice", "client")
    assert vc.fingerprint == pki.fingerprint(pk["alice"])
    assert vc.anchor_fingerprint == pki.fingerprint(pk["root"])
    assert vc.serials == (pk["alice"].serial_number,)
    assert vc.grants == P.parse(DIRECT)
    assert vc.not_after == pk["alice"].not_valid_after_utc


def test_delegated_chain_grants_the_intersection(pk) -> None:
    certs = [der(pk["student"]), der(pk["lab"])]  # DER, as it arrives in the channel
    vc = verify_chain(certs, [pk["root"]])
    assert vc.chain == (pk["student"], pk["lab"]) and vc.name == "student"
    assert vc.serials == (pk["student"].serial_number, pk["lab"].serial_number)
    assert vc.grants == P.intersect(P.parse(STUDENT), P.parse(LAB))
    assert P.allows_dst(vc.grants, "192.0.2.1") and not P.allows_dst(vc.grants, "192.0.2.200")
    # The student asked for 60 days; it is clamped to the lab's 30.
    assert vc.not_after == pk["lab"].not_valid_after_utc
    # The client may append the root; it is dropped.
    vc2 = verify_chain([pk["student"], pk["lab"], pk["root"]], [pk["root"]])
    assert vc2.chain == vc.chain and vc2.grants == vc.grants


def test_narrower_student_within_an_issuer_limit(pk) -> None:
    # A student with no rate limit of its own still gets the lab's limit
    # through the intersection... but issuing it is a widening, so the
    # library refuses; a student *with* a stricter limit is fine.
    with pytest.raises(pki.PkiError, match="refusing to widen what delegation CA 'lab' holds"):
        pki.issue(pk["lab_key"], pk["lab"], "s2", "client",
                  privileges={"protocols": ["udp"], "dst": ["192.0.2.0/25"]})
    _, s3 = pki.issue(pk["lab_key"], pk["lab"], "s3", "client")  # no privileges: nothing
    vc = verify_chain([s3, pk["lab"]], [pk["root"]])
    assert vc.grants == P.intersect(P.NOTHING, P.parse(LAB))
    assert not P.allows_proto(vc.grants, "udp")


# --------------------------------------------------------------------------
# Each refusal, naming the certificate.


def test_foreign_ca(pk) -> None:
    okey, other = pki.make_root("Other Operator")
    _, eve = pki.issue(okey, other, "eve", "client", privileges=DIRECT)
    msg = refused("foreign-ca", [eve], [pk["root"]])
    assert msg == (f"certificate 'eve' (client, serial {hexserial(eve)}) is issued by"
                   " 'Other Operator', which this endpoint does not trust")
    # A delegated leaf sent without its CA is foreign too (its issuer is no anchor).
    assert "issued by 'lab'" in refused("foreign-ca", [pk["student"]], [pk["root"]])


def test_expired_leaf(pk) -> None:
    now = T0 + dt.timedelta(days=11)
    msg = refused("expired", [pk["alice"]], [pk["root"]], now=now)
    end = pk["alice"].not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
    assert msg == f"certificate 'alice' (client, serial {hexserial(pk['alice'])}) expired at {end}"


def test_expired_delegation_ca(pk) -> None:
    msg = refused("expired", [pk["student"], pk["lab"]], [pk["root"]],
                  now=T0 + dt.timedelta(days=31))
    assert msg.startswith(f"certificate 'lab' (ca, serial {hexserial(pk['lab'])}) expired at")


def test_not_yet_valid(pk) -> None:
    _, later = pki.issue(pk["root_key"], pk["root"], "alice", "client", privileges=DIRECT,
                         not_before=dt.datetime.now(UTC) + dt.timedelta(days=2))
    msg = refused("not-yet-valid", [later], [pk["root"]])
    assert re.fullmatch(r"certificate 'alice' \(client, serial 0x[0-9a-f]+\) is not valid before"
                        r" \d{4}-\d\d-\d\d \d\d:\d\d UTC \(now .*\)", msg), msg
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain([pk["alice"]], [pk["root"]], now=dt.datetime(2026, 1, 1))


def test_tampered_certificate(pk) -> None:
    raw = der(pk["alice"])
    assert raw.count(b"alice") == 1
    tampered = raw.replace(b"alice", b"alicf")
    msg = refused("bad-signature", [tampered], [pk["root"]])
    assert "'alicf'" in msg and "signature does not verify with that operator CA's key" in msg


def test_same_issuer_name_other_key(pk) -> None:
    ikey, impostor = pki.make_root("Test Operator")
    _, fake = pki.issue(ikey, impostor, "mallory", "client", privileges=LAB)
    msg = refused("bad-signature", [fake], [pk["root"]])
    assert msg.startswith(f"certificate 'mallory' (client, serial {hexserial(fake)}) names"
                          " 'Test Operator' as its issuer, but its signature does not verify")
    # Inside the chain: a leaf naming 'lab' but signed by another key.
    _, forged = raw_cert(ed25519.Ed25519PrivateKey.generate(), pk["lab"], "forged", "client",
                         privileges=STUDENT)
    msg = refused("bad-signature", [forged, pk["lab"]], [pk["root"]])
    assert "the signature on certificate 'forged'" in msg and "'lab' (ca," in msg


def test_wrong_leaf_role(pk) -> None:
    msg = refused("bad-role", [pk["vp"]], [pk["root"]])
    assert msg == (f"certificate 'vp1' (serial {hexserial(pk['vp'])}) has role 'endpoint',"
                   " not client")
    # ... and the same certificate is fine where an endpoint is expected.
    assert verify_chain([pk["vp"]], [pk["root"]], roles=("endpoint",)).role == "endpoint"
    # A client certificate cannot register as an endpoint.
    assert "has role 'client', not endpoint" in refused(
        "bad-role", [pk["alice"]], [pk["root"]], roles=("endpoint",))
    # The root alone is not a client certificate.
    assert "is the operator CA itself" in refused("bad-role", [pk["root"]], [pk["root"]])


def test_delegation_ca_cannot_mint_endpoints(pk) -> None:
    _, ep = raw_cert(pk["lab_key"], pk["lab"], "rogue-vp", "endpoint")
    msg = refused("bad-role", [ep, pk["lab"]], [pk["root"]], roles=("endpoint",))
    assert "issued by delegation CA 'lab'; delegation CAs may only issue client" in msg
    with pytest.raises(pki.PkiError, match="may only issue client certificates, not 'endpoint'"):
        pki.issue(pk["lab_key"], pk["lab"], "rogue-vp", "endpoint")


def test_intermediate_not_a_delegation_ca(pk) -> None:
    mkey, mid = raw_cert(pk["root_key"], pk["root"], "sneaky", "client", ca=True, path_length=0)
    _, leaf = raw_cert(mkey, mid, "bob", "client")
    msg = refused("bad-role", [leaf, mid], [pk["root"]])
    assert msg == (f"certificate 'sneaky' (client, serial {hexserial(mid)}) sits in the middle of"
                   " the chain but has role 'client', not a delegation CA ('ca')")
    nkey, notca = raw_cert(pk["root_key"], pk["root"], "plain", "ca", ca=False)
    _, leaf2 = raw_cert(nkey, notca, "carol", "client")
    msg = refused("bad-role", [leaf2, notca], [pk["root"]])
    assert "certificate 'plain' (ca, serial" in msg and "is not a CA certificate" in msg


def test_too_long(pk) -> None:
    # A sub-CA under 'lab' breaks lab's path length 0.
    subkey, sub = raw_cert(pk["lab_key"], pk["lab"], "sub", "ca", ca=True, path_length=0)
    _, leaf = raw_cert(subkey, sub, "deep", "client")
    msg = refused("too-long", [leaf, sub, pk["lab"]], [pk["root"]])
    assert msg.startswith(f"certificate 'lab' (ca, serial {hexserial(pk['lab'])}) allows 0 CA(s)"
                          " below it, but the chain puts 1 there")
    # More certificates than max_depth, whatever they are.
    msg = refused("too-long", [pk["alice"]] * 6, [pk["root"]])
    assert "holds 6 certificates" in msg
    assert "at most 1" in refused("too-long", [leaf, sub, pk["lab"]], [pk["root"]], max_depth=1)


def test_revoked_leaf_and_delegation_ca(pk) -> None:
    when = dt.datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
    rs = RevocationSet([Revocation(pk["root"].subject, pk["alice"].serial_number, when, "key lost")])
    msg = refused("revoked", [pk["alice"]], [pk["root"]], revoked=rs)
    assert msg == (f"certificate 'alice' (client, serial {hexserial(pk['alice'])}) was revoked"
                   " 2026-12-07 10:00 UTC: key lost")
    assert verify_chain([pk["student"], pk["lab"]], [pk["root"]], revoked=rs).name == "student"
    # Revoking the delegation CA ends every certificate under it.
    rs2 = RevocationSet([Revocation(pk["root"].subject, pk["lab"].serial_number, when)])
    msg = refused("revoked", [pk["student"], pk["lab"]], [pk["root"]], revoked=rs2)
    assert msg == (f"certificate 'lab' (ca, serial {hexserial(pk['lab'])}) was revoked"
                   " 2026-12-07 10:00 UTC")


def test_revoked_through_pkidir(tmp_path: Path) -> None:
    d = pki.PkiDir.init(tmp_path / "op", name="Op")
    d.issue("dave", "client", privileges=DIRECT)
    anchors = trusted_anchors([d.ca_path])
    d.revoke("dave", "left")
    rs = RevocationSet.load([d.revocations_path], anchors)
    dave = pki.load_certs(d.paths("dave").cert)
    assert "was revoked" in refused("revoked", dave, anchors, revoked=rs)


def test_widening_delegation(pk) -> None:
    wide = {"protocols": ["udp", "raw:1"], "dst": ["192.0.2.0/24", "198.51.100.0/24"],
            "rate": {"pps": 100}}
    _, greedy = raw_cert(pk["lab_key"], pk["lab"], "greedy", "client", privileges=wide)
    msg = refused("widening", [greedy, pk["lab"]], [pk["root"]])
    assert msg.startswith(f"certificate 'greedy' (client, serial {hexserial(greedy)}) grants more"
                          " than its issuer, delegation CA 'lab', holds: ")
    assert "raw:1" in msg and "198.51.100.0/24" in msg


def test_bad_privileges(pk) -> None:
    _, odd = pki.issue(pk["root_key"], pk["root"], "odd", "client", privileges={"max_pps": 10},
                        _check_schema=False)  # as an older or careless issuer might have made it
    msg = refused("bad-privileges", [odd], [pk["root"]])
    assert msg.startswith(f"certificate 'odd' (client, serial {hexserial(odd)}) has an invalid"
                          " privilege document:") and "max_pps" in msg


def test_malformed(pk) -> None:
    assert "empty" in refused("malformed", [], [pk["root"]])
    assert "chain element 1 is not a DER X.509 certificate" in refused(
        "malformed", [b"garbage"], [pk["root"]])
    assert "chain element 2 is a str" in refused("malformed", [der(pk["alice"]), "x"], [pk["root"]])
    msg = refused("malformed", [pk["lab"], pk["student"]], [pk["root"]])  # out of order
    assert "certificate 'lab'" in msg and "out of order" in msg


# --------------------------------------------------------------------------
# Anchors.


def test_trusted_anchors(tmp_path: Path, pk) -> None:
    root_pem = pki.save_cert(pk["root"], tmp_path / "root.pem")
    both = pki.save_cert([pk["root"], pk["root"]], tmp_path / "both.pem")
    assert trusted_anchors([root_pem, both]) == [pk["root"]]
    lab_pem = pki.save_cert(pk["lab"], tmp_path / "lab.pem")
    with pytest.raises(pki.PkiError, match=r"lab\.pem: certificate 'lab' \(ca, serial 0x[0-9a-f]+\)"
                                           r" is not an operator CA \(a delegation CA"):
        trusted_anchors([lab_pem])
    with pytest.raises(pki.PkiError, match="'alice' .* is not an operator CA"):
        trusted_anchors([pki.save_cert(pk["alice"], tmp_path / "alice.pem")])
    # Role operator but not self-signed.
    _, fake_root = raw_cert(pk["root_key"], pk["root"], "sub-op", "operator", ca=True)
    with pytest.raises(pki.PkiError, match="not self-signed"):
        trusted_anchors([pki.save_cert(fake_root, tmp_path / "f.pem")])
    with pytest.raises(pki.PkiError, match="not found"):
        trusted_anchors([tmp_path / "missing.pem"])


# --------------------------------------------------------------------------
# Proof of key possession.


def test_auth_round_trip_and_refusals(pk) -> None:
    vc = verify_chain([pk["alice"]], [pk["root"]])
    nonce = b"\x01" * 32
    sig = sign_auth(pk["alice_key"], nonce, "vp1", pk["alice"])
    verify_auth(vc, sig, nonce, "vp1")
    # The fingerprint string works as well as the certificate.
    assert sign_auth(pk["alice_key"], nonce, "vp1", vc.fingerprint) == sig
    for args, what in [((sig, b"\x02" * 32, "vp1"), "wrong nonce"),
                       ((sig, nonce, "vp2"), "another VP"),
                       ((sign_auth(ed25519.Ed25519PrivateKey.generate(), nonce, "vp1",
                                   pk["alice"]), nonce, "vp1"), "other key"),
                       ((b"\x00" * 63, nonce, "vp1"), "short")]:
        with pytest.raises(ChainError) as info:
            verify_auth(vc, *args)
        assert info.value.code == "bad-signature", what
        assert "certificate 'alice'" in str(info.value)
    # A proof for another leaf (same key, other certificate) does not count.
    _, alice2 = pki.issue(pk["root_key"], pk["root"], "alice", "client",
                          public_key=pk["alice_key"].public_key(), privileges=DIRECT)
    sig2 = sign_auth(pk["alice_key"], nonce, "vp1", alice2)
    with pytest.raises(ChainError, match="did not sign this session's challenge"):
        verify_auth(vc, sig2, nonce, "vp1")


def test_auth_message_is_length_prefixed() -> None:
    fp = "ab" * 32
    m = auth_message(b"ab", "c", fp)
    assert m != auth_message(b"a", "bc", fp)
    assert m.startswith(len(AUTH_CONTEXT).to_bytes(4, "big") + AUTH_CONTEXT)
    assert m.endswith((64).to_bytes(4, "big") + fp.encode())
    assert auth_message(b"ab", "c", "AB:" * 31 + "AB") == m  # fingerprint normalised
    for bad in [(b"", "vp", fp), (b"n", "", fp), (b"n", "vp", "nope"), ("n", "vp", fp)]:
        with pytest.raises(ValueError):
            auth_message(*bad)  # type: ignore[arg-type]
