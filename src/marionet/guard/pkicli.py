"""``marionet pki``: create an operator CA, issue certificates, inspect, revoke.

Kept apart from ``marionet.cli`` so the PKI commands can be tested without
the rest of the CLI, and so an operator's workflow reads as four verbs:
``init`` once, ``issue`` per controller/endpoint/researcher, ``show`` to
check what a file grants, ``revoke`` to withdraw a certificate.

Delegation: the operator issues a researcher ``--role ca --privileges
@lab.json``; the researcher runs ``pki init LABDIR --from-ca lab.pem --key
lab.key`` and then ``pki issue LABDIR student --role client --privileges
...``, which refuses anything wider than the lab's grants and writes the
student's file as the full chain to present.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from . import pki

__all__ = ["add_pki_parser", "run_pki", "main"]

_ISSUABLE_ROLES = ("controller", "endpoint", "client", "ca")


def add_pki_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pki`` with its ``init``/``issue``/``show`` subcommands to a CLI."""
    parser = subparsers.add_parser(
        "pki", help="manage the operator's certificates", description=__doc__
    )
    sub = parser.add_subparsers(dest="pki_command", metavar="{init,issue,show,revoke}")
    sub.required = True

    p_init = sub.add_parser("init", help="create a PKI directory with a new root CA")
    p_init.add_argument("dir", type=Path, help="directory to create (ca.pem, ca.key)")
    p_init.add_argument("--name", default="marionet operator", help="CA common name")
    p_init.add_argument("--days", type=float, default=3650, help="validity (default 3650)")
    p_init.add_argument("--from-ca", type=Path, metavar="CERT",
                        help="make a delegation directory from this delegation CA certificate"
                             " (issued with --role ca; may hold the chain above it) instead of"
                             " a new root")
    p_init.add_argument("--key", type=Path, metavar="KEY", help="the --from-ca certificate's key")

    p_issue = sub.add_parser("issue", help="issue NAME.pem / NAME.key signed by the CA")
    p_issue.add_argument("dir", type=Path, help="PKI directory made by `pki init`")
    p_issue.add_argument("name", help="certificate name (file stem and CN)")
    p_issue.add_argument("--role", required=True, choices=_ISSUABLE_ROLES)
    p_issue.add_argument("--dns", action="append", default=[], metavar="HOST",
                         help="DNS subjectAltName (repeatable)")
    p_issue.add_argument("--ip", action="append", default=[], metavar="ADDR",
                         help="IP subjectAltName (repeatable)")
    p_issue.add_argument("--days", type=float, default=365, help="validity (default 365)")
    p_issue.add_argument("--privileges", metavar="JSON|@FILE",
                         help="privilege document (a JSON object) to embed; without it the"
                              " certificate grants nothing. From a delegation directory it must"
                              " not widen the delegation CA's privileges, and only --role client"
                              " can be issued")
    p_issue.add_argument("--force", action="store_true", help="overwrite an existing NAME")

    p_show = sub.add_parser("show", help="print a certificate's identity and grants")
    p_show.add_argument("file", type=Path, help="a PEM certificate or chain (leaf first)")
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
    p_show.add_argument("--ca", type=Path, action="append", default=[], metavar="ROOT",
                        help="also verify the file against this operator root, as an endpoint"
                             " would (repeatable)")

    p_rev = sub.add_parser("revoke", help="add a certificate to the operator's revocation list",
                           description="Write DIR/revoked.pem, an operator-signed list to"
                                       " copy to every endpoint and controller.")
    p_rev.add_argument("dir", type=Path, help="the operator's PKI directory")
    what = p_rev.add_mutually_exclusive_group(required=True)
    what.add_argument("name", nargs="?", help="a name issued in DIR")
    what.add_argument("--serial", metavar="HEX", help="serial of a certificate issued by DIR's CA")
    what.add_argument("--cert", type=Path, metavar="FILE",
                      help="a certificate file (for a delegated one, the chain file the student got)")
    p_rev.add_argument("--reason", default="", metavar="TEXT", help="why (shown to the holder)")
    return parser


def _privileges(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise pki.PkiError(f"cannot read privileges file {text[1:]}: {exc.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise pki.PkiError(f"--privileges is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise pki.PkiError("--privileges must be a JSON object")
    return value


def _cert_info(cert: x509.Certificate) -> dict[str, Any]:
    san: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)]
        san += [f"IP:{v}" for v in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    info: dict[str, Any] = {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "role": None,
        "serial": f"{cert.serial_number:#x}",
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "san": san,
        "fingerprint_sha256": pki.fingerprint(cert),
        "privileges": None,
        "grants": [],
    }
    try:
        info["role"] = pki.read_role(cert)
    except pki.PkiError as exc:
        info["role"] = f"(unreadable: {exc})"
    try:
        doc = pki.read_privileges(cert)
    except pki.PkiError as exc:
        info["privileges"] = None
        info["grants"] = [f"(unreadable privileges: {exc})"]
        return info
    info["privileges"] = doc
    info["grants"] = _explain(doc)
    return info


def _explain(doc: dict[str, Any] | None) -> list[str]:
    from marionet.guard import privileges as P

    try:
        parsed = P.NOTHING if doc is None else P.parse(doc)
    except P.PrivilegeError as exc:
        return [f"(not a valid privilege document, endpoints refuse it: {exc})"]
    return P.explain(parsed)


def _chain_check(certs: list[x509.Certificate]) -> dict[str, Any]:
    """Whether a chain file links up and only narrows, and what it grants in all."""
    from marionet.guard import privileges as P

    problems: list[str] = []
    for child, parent in zip(certs, certs[1:]):
        who = pki.common_name(child) or child.subject.rfc4514_string()
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature):
            problems.append(f"{who!r} is not issued by the next certificate"
                            f" {pki.common_name(parent)!r}")
    held: list[Any] = []
    for c in certs:
        if c.subject == c.issuer:
            continue  # an operator root imposes no privileges
        try:
            doc = pki.read_privileges(c)
            held.append(P.NOTHING if doc is None else P.parse(doc))
        except (pki.PkiError, P.PrivilegeError) as exc:
            problems.append(f"{pki.common_name(c)!r} has invalid privileges: {exc}")
            return {"narrows": False, "problems": problems, "effective": None}
    for i in range(len(held) - 1):
        for reason in P.widenings(held[i], held[i + 1]):
            problems.append(f"{pki.common_name(certs[i])!r} widens"
                            f" {pki.common_name(certs[i + 1])!r}: {reason}")
    effective = held[-1] if held else P.NOTHING
    for p in reversed(held[:-1]):
        effective = P.intersect(p, effective)
    return {"narrows": not problems, "problems": problems,
            "effective": P.explain(effective), "effective_doc": P.to_doc(effective)}


def describe(cert_path: Path) -> dict[str, Any]:
    """What ``show`` prints, as data (also handy for other tools).

    The top-level fields describe the first (leaf) certificate; a file with
    several certificates adds ``chain`` (one entry each) and ``check``."""
    certs = pki.load_certs(cert_path)
    info = _cert_info(certs[0])
    if len(certs) > 1:
        info["chain"] = [_cert_info(c) for c in certs]
        info["check"] = _chain_check(certs)
    return info


def _print_cert(info: dict[str, Any], out: TextIO, indent: str = "") -> None:
    width = max(len(k) for k in info if k not in ("grants", "chain", "check"))
    for k, v in info.items():
        if k in ("grants", "chain", "check"):
            continue
        if k == "privileges" and v is not None:
            v = json.dumps(v, sort_keys=True)
        elif k == "san":
            v = ", ".join(v) or "-"
        print(f"{indent}{k:<{width}}  {v if v is not None else '-'}", file=out)
    print(f"{indent}grants:", file=out)
    for line in info["grants"]:
        print(f"{indent}    {line}", file=out)


def _show(args: argparse.Namespace, out: TextIO) -> None:
    info = describe(args.file)
    verified: dict[str, Any] | None = None
    if args.ca:
        verified = _verify(args.file, args.ca)
        info["verified"] = verified
    if args.json:
        print(json.dumps(info, indent=2, default=str), file=out)
        return
    chain = info.get("chain")
    if chain is None:
        _print_cert(info, out)
    else:
        for n, c in enumerate(chain, 1):
            print(f"certificate {n} of {len(chain)}:", file=out)
            _print_cert(c, out, "  ")
        check = info["check"]
        print("chain:", "narrows correctly (each certificate within its issuer)"
              if check["narrows"] else "does NOT narrow correctly", file=out)
        for p in check["problems"]:
            print(f"    {p}", file=out)
        if check["effective"] is not None:
            print("effective grants (intersection along the chain):", file=out)
            for line in check["effective"]:
                print(f"    {line}", file=out)
    if verified is not None:
        print(f"verified: {verified['result']}", file=out)


def _verify(path: Path, ca_paths: list[Path]) -> dict[str, Any]:
    """Run the endpoint's own check (``chain.verify_chain``) on a file."""
    from marionet.guard import chain

    anchors = chain.trusted_anchors(ca_paths)
    certs = pki.load_certs(path)
    role = pki.read_role(certs[0]) or "client"
    try:
        vc = chain.verify_chain(certs, anchors, roles=(role,))
    except chain.ChainError as exc:
        return {"ok": False, "code": exc.code, "result": f"REFUSED ({exc.code}): {exc}"}
    return {"ok": True, "result": f"ok, {vc.name!r} ({vc.role}) chains to"
                                  f" {pki.common_name(vc.anchor)!r}"}


def _revoke(args: argparse.Namespace, out: TextIO) -> None:
    d = pki.PkiDir(args.dir)
    what: Any
    if args.serial is not None:
        try:
            what = int(args.serial.lower().removeprefix("0x").replace(":", ""), 16)
        except ValueError:
            raise pki.PkiError(f"--serial must be hexadecimal, not {args.serial!r}") from None
    elif args.cert is not None:
        what = pki.load_certs(args.cert)
    else:
        what = args.name
    path = d.revoke(what, args.reason)
    target = d.revocation_target(what)
    issuer = target.issuer.rfc4514_string()
    print(f"revoked {target.label}, issued by {issuer}"
          + (f": {args.reason}" if args.reason else ""), file=out)
    print(f"distribute {path} to every endpoint and controller (they reload it on change)",
          file=out)


def run_pki(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``pki`` command; 0 on success, 1 on a PKI error (message on stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.pki_command == "init":
            if args.from_ca is not None:
                if args.key is None:
                    raise pki.PkiError("--from-ca needs --key (the delegation CA's key)")
                d = pki.PkiDir.init_from_ca(args.dir, args.from_ca, args.key)
                cert = pki.load_cert(d.ca_path)
                print(f"created delegation directory {d.path} for"
                      f" {pki.common_name(cert)!r} (fingerprint {pki.fingerprint(cert)});"
                      " it issues client certificates within this CA's grants", file=out)
            else:
                if args.key is not None:
                    raise pki.PkiError("--key only goes with --from-ca")
                d = pki.PkiDir.init(args.dir, name=args.name, days=args.days)
                cert = pki.load_cert(d.ca_path)
                print(f"created {d.ca_path} (fingerprint {pki.fingerprint(cert)})", file=out)
        elif args.pki_command == "issue":
            d = pki.PkiDir(args.dir)
            doc = _privileges(args.privileges)
            delegated = d.is_delegation
            paths = d.issue(
                args.name,
                args.role,
                days=args.days,
                san_dns=args.dns,
                san_ip=args.ip,
                privileges=doc,
                overwrite=args.force,
            )
            cert = pki.load_cert(paths.cert)
            print(f"issued {paths.cert} and {paths.key} (role {args.role},"
                  f" fingerprint {pki.fingerprint(cert)})", file=out)
            if delegated:
                print(f"{paths.cert.name} holds the full chain to present; without --privileges"
                      " it grants nothing" if doc is None else
                      f"{paths.cert.name} holds the full chain to present", file=out)
            if args.role == "controller" and not (args.dns or args.ip):
                print("note: no --dns/--ip given; clients will have to disable hostname checks",
                      file=err)
        elif args.pki_command == "show":
            _show(args, out)
        elif args.pki_command == "revoke":
            _revoke(args, out)
        else:  # pragma: no cover - argparse enforces the choice
            print(f"unknown pki command {args.pki_command!r}", file=err)
            return 2
    except pki.PkiError as exc:
        print(f"marionet pki: error: {exc}", file=err)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m marionet.guard.pkicli``), for testing."""
    parser = argparse.ArgumentParser(prog="marionet")
    add_pki_parser(parser.add_subparsers(dest="command"))
    return run_pki(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
