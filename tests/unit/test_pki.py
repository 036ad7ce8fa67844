"""marionet.guard.pki and the `marionet pki` commands (no network)."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import ipaddress
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from marionet.guard import pki, pkicli

NOW = dt.datetime.now(dt.timezone.utc)


@pytest.fixture(scope="module")
def root() -> tuple[ed25519.Ed25519PrivateKey, x509.Certificate]:
    return pki.make_root("test operator", days=30)


def eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


# --------------------------------------------------------------------------
# Certificates.


def test_root_is_an_operator_ca(root) -> None:
    key, cert = root
    assert pki.read_role(cert) == "operator"
    assert pki.common_name(cert) == "test operator"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    # Backdated for clock skew: valid from before the moment it was made.
    made = dt.datetime.now(dt.timezone.utc)
    assert cert.not_valid_before_utc <= made - pki.CLOCK_SKEW


@pytest.mark.parametrize(
    "role, want",
    [
        ("controller", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("endpoint", {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("client", {ExtendedKeyUsageOID.CLIENT_AUTH}),
        ("experimenter", {ExtendedKeyUsageOID.CLIENT_AUTH}),
    ],
)
def test_leaf_roles(root, role: str, want: set) -> None:
    key, cert = pki.issue(*root, "x", role)
    assert key is not None and eku(cert) == want
    assert pki.read_role(cert) == ("client" if role == "experimenter" else role)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(root[1])


def test_role_extension_is_private_and_noncritical(root) -> None:
    _, cert = pki.issue(*root, "x", "endpoint", privileges={"protocols": ["udp"]})
    for oid in (pki.ROLE_OID, pki.PRIVILEGES_OID):
        ext = cert.extensions.get_extension_for_oid(oid)
        assert not ext.critical
        assert oid.dotted_string.startswith("2.25.")


def test_delegation_ca(root) -> None:
    key, cert = pki.issue(*root, "delegate", "ca", privileges={"tags": {"region": ["eu"]}})
    assert key is not None
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    _, leaf = pki.issue(key, cert, "bob", "client")
    leaf.verify_directly_issued_by(cert)
    assert pki.read_privileges(cert) == {"tags": {"region": ["eu"]}}


def test_issue_for_given_public_key(root) -> None:
    mine = ed25519.Ed25519PrivateKey.generate()
    key, cert = pki.issue(*root, "ep", "endpoint", public_key=mine.public_key())
    assert key is None
    assert cert.public_key().public_bytes_raw() == mine.public_key().public_bytes_raw()


def test_sans(root) -> None:
    _, cert = pki.issue(*root, "ctl", "controller", san_dns=["a.example", "localhost"],
                        san_ip=["127.0.0.1", "::1"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]


@pytest.mark.parametrize("size", [0, 5, 200, 70_000])
def test_privileges_round_trip(root, size: int) -> None:
    """Sizes cross the DER short/long length forms."""
    privs = {"vps": ["v" + "x" * size, "Ωμ"], "rate": {"pps": 100}, "dst": ["192.0.2.0/24"],
             "spoof": False}
    _, cert = pki.issue(*root, "alice", "client", privileges=privs)
    assert pki.read_privileges(cert) == privs
    # survives a PEM round trip too
    again = x509.load_pem_x509_certificate(cert.public_bytes(serialization.Encoding.PEM))
    assert pki.read_privileges(again) == privs


def test_no_privileges_is_none(root) -> None:
    _, cert = pki.issue(*root, "c", "client")
    assert pki.read_privileges(cert) is None
    _, cert = pki.issue(*root, "c", "client", privileges={})
    assert pki.read_privileges(cert) == {}


def test_validity_clamped_to_issuer(root) -> None:
    _, cert = pki.issue(*root, "long", "client", days=10_000)
    assert cert.not_valid_after_utc == root[1].not_valid_after_utc


def test_not_before_window(root) -> None:
    start = NOW - dt.timedelta(days=3)
    _, cert = pki.issue(*root, "old", "client", days=1, not_before=start)
    assert cert.not_valid_after_utc < NOW


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"role": "wizard"}, "unknown role"),
        ({"role": "client", "is_ca": True}, "cannot be a CA"),
        ({"role": "ca", "is_ca": False}, "must be a CA"),
        ({"role": "client", "days": 0}, "positive number of days"),
        ({"role": "client", "days": -1}, "positive number of days"),
        ({"role": "client", "san_ip": ["999.1.1.1"]}, "bad IP address"),
        ({"role": "client", "san_dns": ["a b"]}, "bad DNS name"),
        ({"role": "client", "privileges": {"x": {1, 2}}}, "not JSON-serialisable"),
        ({"role": "client", "privileges": {"x": float("nan")}}, "not JSON-serialisable"),
        ({"role": "client", "privileges": ["not", "a", "dict"]}, "must be a dict"),
        ({"role": "client", "not_before": dt.datetime(2020, 1, 1)}, "timezone-aware"),
    ],
)
def test_issue_rejects_bad_input(root, kwargs: dict, match: str) -> None:
    with pytest.raises(pki.PkiError, match=match):
        pki.issue(*root, "x", **kwargs)


def test_issue_rejects_bad_issuer(root) -> None:
    key, leaf = pki.issue(*root, "leaf", "client")
    with pytest.raises(pki.PkiError, match="not a CA"):
        pki.issue(key, leaf, "x", "client")
    other_key, _ = pki.make_root("other")
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.issue(other_key, root[1], "x", "client")
    with pytest.raises(pki.PkiError, match="Ed25519"):
        pki.issue(*root, "x", "client", public_key=ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(pki.PkiError, match="non-empty"):
        pki.issue(*root, "", "client")


def test_corrupt_private_extensions() -> None:
    for bad in (b"", b"\x04\x01a", b"\x0c\x05ab", b"\x0c\x01ab", b"\x0c\x02\xff\xfe", b"\x0c\x85aaaaa"):
        with pytest.raises(pki.PkiError):
            pki._parse_der_utf8(bad)
    assert pki._parse_der_utf8(pki._der_utf8("é" * 300)) == "é" * 300


def test_privileges_extension_must_be_a_json_object(root) -> None:
    key, ca = root
    for text, match in (("[1]", "not a JSON object"), ("{", "not valid JSON")):
        builder = (
            x509.CertificateBuilder().subject_name(ca.subject).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(pki.PRIVILEGES_OID, pki._der_utf8(text)),
                           critical=False)
        )
        with pytest.raises(pki.PkiError, match=match):
            pki.read_privileges(builder.sign(key, None))


def test_fingerprints(root) -> None:
    _, cert = root
    fp = pki.fingerprint(cert)
    assert len(fp) == 64 and fp == pki.fingerprint(cert.public_bytes(serialization.Encoding.DER))
    colon = ":".join(fp[i:i + 2] for i in range(0, 64, 2)).upper()
    assert pki.normalize_fingerprint(colon) == fp
    assert pki.normalize_fingerprint("sha256:" + fp.upper()) == fp
    for bad in ("", "abc", fp + "0", "g" * 64):
        with pytest.raises(pki.PkiError, match="64 hex"):
            pki.normalize_fingerprint(bad)


# --------------------------------------------------------------------------
# Files.


def test_save_load_round_trip(root, tmp_path: Path) -> None:
    key, cert = root
    kp = pki.save_key(key, tmp_path / "sub" / "k.key")
    cp = pki.save_cert([cert, cert], tmp_path / "c.pem")
    assert stat.S_IMODE(os.stat(kp).st_mode) == 0o600
    assert pki.load_key(kp).public_key().public_bytes_raw() == key.public_key().public_bytes_raw()
    assert pki.load_cert(cp) == cert and len(pki.load_certs(cp)) == 2
    assert not [p for p in tmp_path.rglob(".*")]  # no temp files left behind


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="not found"):
        pki.load_cert(tmp_path / "none.pem")
    with pytest.raises(pki.PkiError, match="cannot read"):
        pki.load_key(tmp_path)
    junk = tmp_path / "junk"
    junk.write_text("hello")
    with pytest.raises(pki.PkiError, match="not a PEM certificate"):
        pki.load_cert(junk)
    with pytest.raises(pki.PkiError, match="not an unencrypted PEM private key"):
        pki.load_key(junk)
    ec_key = tmp_path / "ec.key"
    ec_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(pki.PkiError, match="marionet uses Ed25519"):
        pki.load_key(ec_key)


# --------------------------------------------------------------------------
# Standalone endpoint certificate.


def test_self_signed_server_reused_and_renewed(tmp_path: Path) -> None:
    first = pki.self_signed_server(tmp_path)
    assert first.regenerated
    assert stat.S_IMODE(os.stat(first.key_path).st_mode) == 0o600
    cert = pki.load_cert(first.cert_path)
    assert pki.read_role(cert) == "endpoint" and eku(cert) == {ExtendedKeyUsageOID.SERVER_AUTH}
    again = pki.self_signed_server(tmp_path)
    assert not again.regenerated and again.fingerprint == first.fingerprint
    # Near expiry: regenerated.
    renewed = pki.self_signed_server(tmp_path, days=1, renew_before=dt.timedelta(days=400))
    assert renewed.regenerated and renewed.fingerprint != first.fingerprint
    # New name not covered: regenerated.
    wider = pki.self_signed_server(tmp_path, hostnames=("localhost", "vp1.example"))
    assert wider.regenerated
    assert not pki.self_signed_server(tmp_path, hostnames=("vp1.example",), ips=()).regenerated


def test_self_signed_server_repairs_damage(tmp_path: Path) -> None:
    first = pki.self_signed_server(tmp_path)
    first.cert_path.write_text("garbage")
    assert pki.self_signed_server(tmp_path).regenerated
    # key that does not match the certificate
    pki.save_key(ed25519.Ed25519PrivateKey.generate(), first.key_path)
    assert pki.self_signed_server(tmp_path).regenerated


def test_self_signed_rejects_ca_role() -> None:
    with pytest.raises(pki.PkiError, match="CA role"):
        pki.make_self_signed(role="operator")


# --------------------------------------------------------------------------
# PkiDir.


def test_pkidir(tmp_path: Path) -> None:
    d = pki.PkiDir.init(tmp_path / "p", name="Op", days=100)
    assert stat.S_IMODE(os.stat(d.path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(d.path / "ca.key").st_mode) == 0o600
    paths = d.issue("vp-1.example", "endpoint", san_ip=["127.0.0.1"], privileges={"max_sockets": 1})
    assert paths == d.paths("vp-1.example")
    assert (paths.cert.name, paths.key.name, paths.ca.name) == ("vp-1.example.pem", "vp-1.example.key", "ca.pem")
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    cert = pki.load_cert(paths.cert)
    cert.verify_directly_issued_by(pki.load_cert(paths.ca))
    assert pki.common_name(cert) == "vp-1.example" and pki.read_privileges(cert) == {"max_sockets": 1}
    assert d.names() == ["vp-1.example"]
    with pytest.raises(pki.PkiError, match="already issued"):
        d.issue("vp-1.example", "endpoint")
    d.issue("vp-1.example", "client", overwrite=True)
    assert pki.read_role(pki.load_cert(paths.cert)) == "client"


def test_pkidir_errors(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="not a marionet PKI directory"):
        pki.PkiDir(tmp_path)
    d = pki.PkiDir.init(tmp_path)
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.PkiDir.init(tmp_path)
    for bad in ("ca", "../x", ".hidden", "a/b", "", "x" * 200):
        with pytest.raises(pki.PkiError, match="bad certificate name"):
            d.issue(bad, "client")
    with pytest.raises(pki.PkiError, match="no certificate"):
        d.paths("nobody")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(pki.PkiError, match="cannot create"):
        pki.PkiDir.init(blocker / "sub")


# --------------------------------------------------------------------------
# CLI.


def run(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="marionet")
    pkicli.add_pki_parser(parser.add_subparsers(dest="command"))
    out, err = io.StringIO(), io.StringIO()
    rc = pkicli.run_pki(parser.parse_args(list(argv)), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_init_issue_show(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    rc, out, _ = run("pki", "init", d, "--name", "Test Op", "--days", "50")
    assert rc == 0 and "ca.pem" in out
    rc, out, err = run("pki", "issue", d, "ctl", "--role", "controller",
                       "--dns", "localhost", "--ip", "127.0.0.1", "--ip", "::1")
    assert rc == 0 and "role controller" in out and not err
    privs = tmp_path / "p.json"
    privs.write_text(json.dumps({"tags": {"region": "eu"}, "max_sockets": 10}))
    rc, _, _ = run("pki", "issue", d, "alice", "--role", "client", "--privileges", f"@{privs}")
    assert rc == 0
    rc, out, _ = run("pki", "show", f"{d}/alice.pem")
    assert rc == 0
    assert "CN=alice" in out and "client" in out and "CN=Test Op" in out
    assert "open sockets: at most 10" in out and "region" in out
    fp = pki.fingerprint(pki.load_cert(f"{d}/alice.pem"))
    assert fp in out
    rc, out, _ = run("pki", "show", f"{d}/ctl.pem", "--json")
    info = json.loads(out)
    assert info["role"] == "controller" and info["san"] == ["DNS:localhost", "IP:127.0.0.1", "IP:::1"]
    assert info["privileges"] is None


def test_cli_errors(tmp_path: Path) -> None:
    d = str(tmp_path / "pki")
    rc, _, err = run("pki", "issue", d, "x", "--role", "client")
    assert rc == 1 and "not a marionet PKI directory" in err
    assert run("pki", "init", d)[0] == 0
    rc, _, err = run("pki", "init", d)
    assert rc == 1 and "already holds a CA" in err
    rc, _, err = run("pki", "issue", d, "x", "--role", "client", "--privileges", "{bad")
    assert rc == 1 and "not valid JSON" in err
    rc, _, err = run("pki", "issue", d, "x", "--role", "client", "--privileges", "[1]")
    assert rc == 1 and "JSON object" in err
    rc, _, err = run("pki", "issue", d, "x", "--role", "client", "--privileges", "@/nonexistent")
    assert rc == 1 and "cannot read privileges file" in err
    rc, _, err = run("pki", "issue", d, "x", "--role", "controller", "--ip", "nope")
    assert rc == 1 and "bad IP address" in err
    rc, _, err = run("pki", "issue", d, "ctl", "--role", "controller")
    assert rc == 0 and "hostname checks" in err
    rc, _, err = run("pki", "show", str(tmp_path / "missing.pem"))
    assert rc == 1 and "not found" in err
    with pytest.raises(SystemExit):
        run("pki", "issue", d, "x", "--role", "wizard")
