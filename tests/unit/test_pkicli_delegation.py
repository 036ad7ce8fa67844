"""`marionet pki` delegation, revoke and show, end to end through the CLI."""

from __future__ import annotations


import json
import os
import stat
from pathlib import Path

import pytest

from marionet.guard import pki
from marionet.guard import privileges as P
from marionet.guard.chain import trusted_anchors, verify_chain
from marionet.guard.revocation import RevocationSet
from tests.unit.test_pki import run  # the CLI driven in-process

LAB = {"protocols": ["udp", "tcp"], "dst": ["192.0.2.0/24"], "rate": {"pps": 100}}
NARROW = {"protocols": ["udp"], "dst": ["192.0.2.0/25"], "rate": {"pps": 10}}
WIDE = {"protocols": ["udp", "raw:1"], "dst": ["192.0.2.0/24"], "rate": {"pps": 100}}


def write_json(path: Path, doc: dict) -> str:
    path.write_text(json.dumps(doc))
    return f"@{path}"


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An operator dir with delegation CA 'lab', and the lab's own dir."""
    op, lab = tmp_path / "op", tmp_path / "lab"
    assert run("pki", "init", str(op), "--name", "Test Op")[0] == 0
    rc, _, err = run("pki", "issue", str(op), "lab", "--role", "ca",
                     "--privileges", write_json(tmp_path / "lab.json", LAB))
    assert rc == 0, err
    rc, out, err = run("pki", "init", str(lab), "--from-ca", str(op / "lab.pem"),
                       "--key", str(op / "lab.key"))
    assert rc == 0, err
    assert "delegation directory" in out and "'lab'" in out
    return op, lab


def test_init_from_ca(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    op, lab = dirs
    assert pki.load_cert(lab / "ca.pem") == pki.load_cert(op / "lab.pem")
    assert (lab / "ca.key").read_bytes() == (op / "lab.key").read_bytes()
    assert stat.S_IMODE(os.stat(lab / "ca.key").st_mode) == 0o600
    assert not (lab / "chain.pem").exists()  # lab.pem held no chain above it
    # The operator's key is never copied.
    assert (op / "ca.key").read_bytes() not in b"".join(p.read_bytes() for p in lab.iterdir())
    assert pki.PkiDir(lab).is_delegation and not pki.PkiDir(op).is_delegation
    # A file holding the chain above (and the root) keeps only the CAs in between.
    both = pki.save_cert([pki.load_cert(op / "lab.pem"), pki.load_cert(op / "ca.pem")],
                         tmp_path / "lab-and-root.pem")
    d2 = pki.PkiDir.init_from_ca(tmp_path / "lab2", both, op / "lab.key")
    assert d2.chain_above() == []
    # Refusals: not a delegation CA, wrong key, missing --key.
    rc, _, err = run("pki", "init", str(tmp_path / "x"), "--from-ca", str(op / "ca.pem"),
                     "--key", str(op / "ca.key"))
    assert rc == 1 and "has role 'operator'; --from-ca takes a delegation CA" in err
    run("pki", "issue", str(op), "other", "--role", "client")
    rc, _, err = run("pki", "init", str(tmp_path / "y"), "--from-ca", str(op / "lab.pem"),
                     "--key", str(op / "other.key"))
    assert rc == 1 and "does not belong to the CA certificate" in err
    rc, _, err = run("pki", "init", str(tmp_path / "z"), "--from-ca", str(op / "lab.pem"))
    assert rc == 1 and "--from-ca needs --key" in err
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()


def test_issue_student_narrower_ok_and_verifies(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    op, lab = dirs
    rc, out, err = run("pki", "issue", str(lab), "student", "--role", "client",
                       "--privileges", write_json(tmp_path / "s.json", NARROW))
    assert rc == 0, err
    assert "full chain" in out
    certs = pki.load_certs(lab / "student.pem")
    assert [pki.common_name(c) for c in certs] == ["student", "lab"]
    vc = verify_chain(certs, trusted_anchors([op / "ca.pem"]))
    assert vc.grants == P.intersect(P.parse(NARROW), P.parse(LAB))
    # Without --privileges the student gets nothing (no extension), and is told so.
    rc, out, _ = run("pki", "issue", str(lab), "idle", "--role", "client")
    assert rc == 0 and "grants nothing" in out
    idle = pki.load_certs(lab / "idle.pem")
    assert pki.read_privileges(idle[0]) is None
    assert not P.allows_proto(verify_chain(idle, trusted_anchors([op / "ca.pem"])).grants, "udp")


def test_issue_student_wider_refused_with_reason(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _, lab = dirs
    rc, _, err = run("pki", "issue", str(lab), "greedy", "--role", "client",
                     "--privileges", write_json(tmp_path / "w.json", WIDE))
    assert rc == 1
    assert "refusing to widen what delegation CA 'lab' holds" in err and "raw:1" in err
    assert not (lab / "greedy.pem").exists() and not (lab / "greedy.key").exists()
    for role in ("ca", "endpoint", "controller"):
        rc, _, err = run("pki", "issue", str(lab), "x", "--role", role)
        assert rc == 1 and f"may only issue client certificates, not {role!r}" in err
    rc, _, err = run("pki", "issue", str(lab), "typo", "--role", "client",
                     "--privileges", '{"protocol": ["udp"]}')
    assert rc == 1 and "not a valid privilege document" in err


def test_operator_issue_refuses_a_bad_schema(dirs: tuple[Path, Path]) -> None:
    op, _ = dirs
    rc, _, err = run("pki", "issue", str(op), "odd", "--role", "client", "--privileges",
                     '{"max_pps": 10}')
    assert rc == 1 and "do not follow the schema" in err and "max_pps" in err
    assert not (op / "odd.pem").exists()
    rc, _, err = run("pki", "issue", str(op), "fine", "--role", "client", "--privileges",
                     json.dumps(NARROW))
    assert rc == 0 and err == ""


def test_revoke_by_name_serial_and_cert(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    op, lab = dirs
    for name in ("alice", "bob"):
        assert run("pki", "issue", str(op), name, "--role", "client")[0] == 0
    alice = pki.load_cert(op / "alice.pem")
    bob = pki.load_cert(op / "bob.pem")
    rc, out, err = run("pki", "revoke", str(op), "alice", "--reason", "key lost")
    assert rc == 0, err
    assert f"revoked 'alice' (client, serial {alice.serial_number:#x}), issued by CN=Test Op:" \
           " key lost" in out
    assert f"distribute {op / 'revoked.pem'}" in out
    rc, out, err = run("pki", "revoke", str(op), "--serial", f"{bob.serial_number:X}")
    assert rc == 0, err
    assert f"revoked serial {bob.serial_number:#x}, issued by CN=Test Op" in out
    # A student of the lab, revoked by the operator from the student's chain file.
    run("pki", "issue", str(lab), "student", "--role", "client")
    rc, out, err = run("pki", "revoke", str(op), "--cert", str(lab / "student.pem"))
    assert rc == 0, err
    assert "revoked 'student' (client, serial" in out and "issued by CN=lab" in out
    anchors = trusted_anchors([op / "ca.pem"])
    rs = RevocationSet.load([op / "revoked.pem"], anchors)
    student = pki.load_certs(lab / "student.pem")
    assert rs.reason(alice) is not None and rs.reason(alice).endswith("key lost")
    assert rs.reason(bob) is not None and rs.reason(student[0]) is not None
    assert len(rs) == 3
    # The lab cannot publish a list; it is told to ask the operator.
    rc, _, err = run("pki", "revoke", str(lab), "student")
    assert rc == 1 and "ask the operator" in err
    rc, _, err = run("pki", "revoke", str(op), "--serial", "xyz")
    assert rc == 1 and "hexadecimal" in err
    rc, _, err = run("pki", "revoke", str(op), "nobody")
    assert rc == 1 and "no certificate 'nobody'" in err
    with pytest.raises(SystemExit):
        run("pki", "revoke", str(op), "alice", "--serial", "1f")


def test_show_plain_words_and_chain(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    op, lab = dirs
    rc, out, _ = run("pki", "show", str(op / "lab.pem"))
    assert rc == 0
    assert "role" in out and " ca" in out and "serial" in out and "grants:" in out
    for line in P.explain(P.parse(LAB)):
        assert f"    {line}\n" in out
    run("pki", "issue", str(lab), "student", "--role", "client", "--privileges", json.dumps(NARROW))
    rc, out, _ = run("pki", "show", str(lab / "student.pem"))
    assert rc == 0
    assert "certificate 1 of 2:" in out and "certificate 2 of 2:" in out
    assert "  subject             CN=student" in out and "CN=lab" in out
    assert "chain: narrows correctly" in out
    tail = out.split("effective grants (intersection along the chain):\n", 1)[1]
    want = P.explain(P.intersect(P.parse(NARROW), P.parse(LAB)))
    assert [line.strip() for line in tail.splitlines()] == want
    # --ca runs the endpoint's own check.
    rc, out, _ = run("pki", "show", str(lab / "student.pem"), "--ca", str(op / "ca.pem"))
    assert rc == 0 and "verified: ok, 'student' (client) chains to 'Test Op'" in out
    other = tmp_path / "other"
    run("pki", "init", str(other), "--name", "Other")
    rc, out, _ = run("pki", "show", str(lab / "student.pem"), "--ca", str(other / "ca.pem"))
    assert rc == 0 and "verified: REFUSED (foreign-ca)" in out
    # JSON keeps the leaf's fields on top and adds the chain and the check.
    rc, out, _ = run("pki", "show", str(lab / "student.pem"), "--json")
    info = json.loads(out)
    assert info["role"] == "client" and info["subject"] == "CN=student"
    assert [c["subject"] for c in info["chain"]] == ["CN=student", "CN=lab"]
    assert info["check"]["narrows"] is True
    assert info["check"]["effective_doc"] == P.to_doc(P.intersect(P.parse(NARROW), P.parse(LAB)))


def test_show_flags_a_widening_chain(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    op, lab = dirs
    # Built by hand: the library and CLI refuse to sign it.
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ed25519

    lab_key, lab_cert = pki.PkiDir(lab).ca()
    key = ed25519.Ed25519PrivateKey.generate()
    greedy = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "greedy")]))
              .issuer_name(lab_cert.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(lab_cert.not_valid_before_utc)
              .not_valid_after(lab_cert.not_valid_after_utc)
              .add_extension(pki._unrecognized(pki.ROLE_OID, "client"), critical=False)
              .add_extension(pki._unrecognized(pki.PRIVILEGES_OID, json.dumps(WIDE)), critical=False)
              .sign(lab_key, None))
    path = pki.save_cert([greedy, lab_cert], tmp_path / "greedy.pem")
    rc, out, _ = run("pki", "show", str(path), "--ca", str(op / "ca.pem"))
    assert rc == 0
    assert "chain: does NOT narrow correctly" in out
    assert "'greedy' widens 'lab': protocol raw:1 is not granted to the issuer" in out
    assert "verified: REFUSED (widening)" in out


def test_show_invalid_privileges_in_plain_words(dirs: tuple[Path, Path]) -> None:
    op, _ = dirs
    ca_key, ca_cert = pki.PkiDir(op).ca()  # as an older or careless issuer might have made it
    _, odd = pki.issue(ca_key, ca_cert, "odd", "client", privileges={"max_pps": 10}, _check_schema=False)
    pki.save_cert(odd, op / "odd.pem")
    rc, out, _ = run("pki", "show", str(op / "odd.pem"))
    assert rc == 0 and "(not a valid privilege document, endpoints refuse it:" in out
    run("pki", "issue", str(op), "none", "--role", "client")
    rc, out, _ = run("pki", "show", str(op / "none.pem"))
    assert rc == 0 and "grants:\n    nothing at all\n" in out
