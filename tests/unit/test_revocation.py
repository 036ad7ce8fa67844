"""marionet.guard.revocation: operator-signed CRLs, PkiDir.revoke and the watcher."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509

from marionet.guard import pki
from marionet.guard.revocation import (
    Revocation,
    RevocationError,
    RevocationSet,
    RevocationWatcher,
    make_crl,
)


@pytest.fixture
def op(tmp_path: Path) -> pki.PkiDir:
    d = pki.PkiDir.init(tmp_path / "op", name="Test Operator", days=30)
    d.issue("alice", "client")
    d.issue("bob", "client")
    return d


def cert(d: pki.PkiDir, name: str) -> x509.Certificate:
    return pki.load_cert(d.paths(name).cert)


def anchors(d: pki.PkiDir) -> list[x509.Certificate]:
    return [pki.load_cert(d.ca_path)]


def test_revoke_round_trip(op: pki.PkiDir) -> None:
    when = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.timezone.utc)
    path = op.revoke("alice", "key lost", now=when)
    assert path == op.revocations_path and path.name == "revoked.pem"
    assert path.read_bytes().startswith(b"-----BEGIN X509 CRL-----")
    rs = RevocationSet.load([path], anchors(op))
    alice, bob = cert(op, "alice"), cert(op, "bob")
    assert rs.reason(alice) == "revoked 2026-12-07 10:00 UTC: key lost"
    assert rs.reason(bob) is None
    assert rs.serials == {alice.serial_number}
    assert rs.reason_for_serial(alice.serial_number) == rs.reason(alice)
    # A second revocation keeps the first entry; the digest changes.
    before = rs.digest
    op.revoke(bob.serial_number)
    rs2 = RevocationSet.load([path], anchors(op))
    assert rs2.serials == {alice.serial_number, bob.serial_number}
    assert rs2.reason(alice) == "revoked 2026-12-07 10:00 UTC: key lost"
    assert rs2.reason(bob) is not None and rs2.reason(bob).startswith("revoked ")
    assert rs2.digest != before
    # Revoking again is idempotent (same content, same digest).
    op.revoke("alice", "again")
    assert RevocationSet.load([path], anchors(op)).digest == rs2.digest
    # The CRL is a standard one, signed by the operator root.
    crl = x509.load_pem_x509_crl(path.read_bytes())
    assert crl.is_signature_valid(anchors(op)[0].public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3


def test_same_serial_other_issuer_is_not_revoked(op: pki.PkiDir, tmp_path: Path) -> None:
    other = pki.PkiDir.init(tmp_path / "other", name="Other Operator")
    alice = cert(op, "alice")
    op.revoke(alice.serial_number)
    rs = RevocationSet.load([op.revocations_path], anchors(op))
    # A certificate with the same serial from another issuer is a different certificate.
    k, c = other.ca()
    _, twin = pki.issue(k, c, "twin", "client")
    twin = x509.CertificateBuilder().subject_name(twin.subject).issuer_name(c.subject) \
        .public_key(twin.public_key()).serial_number(alice.serial_number) \
        .not_valid_before(twin.not_valid_before_utc).not_valid_after(twin.not_valid_after_utc) \
        .sign(k, None)
    assert rs.reason(alice) is not None and rs.reason(twin) is None


def test_crl_signed_by_another_ca_refused(op: pki.PkiDir, tmp_path: Path) -> None:
    other = pki.PkiDir.init(tmp_path / "other", name="Other Operator")
    other.revoke(pki.load_cert(other.ca_path).serial_number + 1)
    with pytest.raises(RevocationError, match=r"revoked\.pem is issued by 'CN=Other Operator',"
                                              " which is not an operator CA trusted here"):
        RevocationSet.load([other.revocations_path], anchors(op))
    # Same issuer name, different key: a forged list.
    impostor_key, impostor = pki.make_root("Test Operator")
    forged = make_crl(impostor_key, impostor, [Revocation(impostor.subject, 7, dt.datetime.now(
        dt.timezone.utc))])
    fpath = tmp_path / "forged.pem"
    fpath.write_bytes(forged.public_bytes(pki.serialization.Encoding.PEM))
    with pytest.raises(RevocationError, match=r"forged\.pem names 'Test Operator' as issuer but"
                                              " its signature does not verify"):
        RevocationSet.load([fpath], anchors(op))


def test_load_errors_name_the_file(op: pki.PkiDir, tmp_path: Path) -> None:
    with pytest.raises(RevocationError, match=r"missing\.pem not found"):
        RevocationSet.load([tmp_path / "missing.pem"], anchors(op))
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN X509 CRL-----\nnope\n-----END X509 CRL-----\n")
    with pytest.raises(RevocationError, match=r"junk\.pem is not an X\.509 revocation list"):
        RevocationSet.load([junk], anchors(op))
    assert len(RevocationSet.load([], anchors(op))) == 0


def test_revoke_errors(op: pki.PkiDir, tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="no certificate 'nobody'"):
        op.revoke("nobody")
    with pytest.raises(pki.PkiError, match="own CA"):
        op.revoke(pki.load_cert(op.ca_path))
    other = pki.PkiDir.init(tmp_path / "other", name="Other Operator")
    other.issue("eve", "client")
    with pytest.raises(pki.PkiError, match=r"'eve' \(client, serial 0x[0-9a-f]+\) was not issued"
                                           " under this CA"):
        op.revoke(pki.load_cert(other.paths("eve").cert))
    with pytest.raises(pki.PkiError, match="one line"):
        op.revoke("alice", "a\nb")
    with pytest.raises(pki.PkiError, match="positive"):
        op.revoke(0)
    # A damaged revoked.pem is not silently replaced (that would drop entries).
    op.revocations_path.write_text("garbage")
    with pytest.raises(RevocationError, match="not an X.509 revocation list"):
        op.revoke("alice")
    assert op.revocations_path.read_text() == "garbage"


def test_revoke_delegated_certificate_and_delegation_dir_refuses(op: pki.PkiDir, tmp_path: Path) -> None:
    op.issue("lab", "ca")  # no privileges: its students get nothing, which is still issuable
    lab_paths = op.paths("lab")
    lab = pki.PkiDir.init_from_ca(tmp_path / "lab", lab_paths.cert, lab_paths.key)
    student = lab.issue("student", "client")
    chain = pki.load_certs(student.cert)
    with pytest.raises(pki.PkiError, match="ask the operator"):
        lab.revoke("student")
    op.revoke(chain, "left the lab")
    rs = RevocationSet.load([op.revocations_path], anchors(op))
    assert rs.reason(chain[0]) is not None and rs.reason(chain[0]).endswith("left the lab")
    assert rs.reason(chain[1]) is None  # the delegation CA itself is still good
    # The entry names the delegation CA as the certificate's issuer.
    crl = x509.load_pem_x509_crl(op.revocations_path.read_bytes())
    entry = next(iter(crl))
    ci = entry.extensions.get_extension_for_class(x509.CertificateIssuer).value
    assert ci.get_values_for_type(x509.DirectoryName) == [chain[1].subject]
    assert crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint).value.indirect_crl


# --------------------------------------------------------------------------
# Watcher.


def test_watcher_picks_up_a_change_and_keeps_the_old_set_on_damage(
        op: pki.PkiDir, caplog: pytest.LogCaptureFixture) -> None:
    path = op.revoke("alice", "first")
    seen: list[RevocationSet] = []

    async def main() -> None:
        w = RevocationWatcher([path], anchors(op), seen.append, interval_s=0.05)
        w.start()
        try:
            assert w.running and w.current is not None and len(w.current) == 1
            await asyncio.sleep(0.15)
            assert seen == []  # the baseline is not a change
            op.revoke("bob", "second")
            for _ in range(40):
                if seen:
                    break
                await asyncio.sleep(0.05)
            assert len(seen) == 1 and len(seen[0]) == 2
            good = w.current
            # Damage the file: the previous set stays, an error is logged.
            with caplog.at_level(logging.ERROR, logger="marionet.guard.revocation"):
                path.write_text("not a crl at all")
                for _ in range(40):
                    if w.last_error:
                        break
                    await asyncio.sleep(0.05)
            assert w.last_error and "not an X.509 revocation list" in w.last_error
            assert w.current is good and len(seen) == 1
            assert any("keeping the previous revocation list (2 revoked)" in r.getMessage()
                       for r in caplog.records)
            # A deleted file keeps the set too.
            path.unlink()
            await asyncio.sleep(0.2)
            assert w.current is good and "not found" in (w.last_error or "")
        finally:
            w.stop()
        assert not w.running

    asyncio.run(main())


def test_watcher_reload_and_callback_failure(op: pki.PkiDir, caplog: pytest.LogCaptureFixture) -> None:
    path = op.revoke("alice")
    calls: list[int] = []

    def on_change(rs: RevocationSet) -> None:
        calls.append(len(rs))
        raise RuntimeError("listener bug")

    initial = RevocationSet.load([path], anchors(op))
    w = RevocationWatcher([path], anchors(op), on_change, interval_s=60, initial=initial)
    assert w.reload() is False  # unchanged content: no call
    op.revoke("bob")
    # Same size and mtime granularity could hide a change from polling; reload never misses it.
    with caplog.at_level(logging.ERROR, logger="marionet.guard.revocation"):
        assert w.reload() is True
    assert calls == [2] and w.current is not None and len(w.current) == 2
    assert any("callback failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        RevocationWatcher([path], anchors(op), on_change, interval_s=0)


def test_watcher_signed_by_other_ca_is_refused_and_logged(
        op: pki.PkiDir, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = op.revoke("alice")
    w = RevocationWatcher([path], anchors(op), lambda rs: None)
    w.reload()
    other = pki.PkiDir.init(tmp_path / "other", name="Other Operator")
    os.replace(other.revoke(12345), path)
    with caplog.at_level(logging.ERROR, logger="marionet.guard.revocation"):
        assert w.poll() is False
    assert w.current is not None and w.current.reason(cert(op, "alice")) is not None
    assert "not an operator CA trusted here" in (w.last_error or "")
