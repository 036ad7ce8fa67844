"""``marionet pki``: create an operator CA, issue certificates, inspect them.

Kept apart from ``marionet.cli`` so the PKI commands can be tested without
the rest of the CLI, and so an operator's workflow reads as three verbs:
``init`` once, ``issue`` per controller/endpoint/researcher, ``show`` to
check what a file grants.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509

from . import pki

__all__ = ["add_pki_parser", "run_pki", "main"]

_ISSUABLE_ROLES = ("controller", "endpoint", "client", "ca")


def add_pki_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``pki`` with its ``init``/``issue``/``show`` subcommands to a CLI."""
    parser = subparsers.add_parser(
        "pki", help="manage the operator's certificates", description=__doc__
    )
    sub = parser.add_subparsers(dest="pki_command", metavar="{init,issue,show}")
    sub.required = True

    p_init = sub.add_parser("init", help="create a PKI directory with a new root CA")
    p_init.add_argument("dir", type=Path, help="directory to create (ca.pem, ca.key)")
    p_init.add_argument("--name", default="marionet operator", help="CA common name")
    p_init.add_argument("--days", type=float, default=3650, help="validity (default 3650)")

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
                         help="privilege document (a JSON object) to embed")
    p_issue.add_argument("--force", action="store_true", help="overwrite an existing NAME")

    p_show = sub.add_parser("show", help="print a certificate's identity and grants")
    p_show.add_argument("file", type=Path, help="a PEM certificate")
    p_show.add_argument("--json", action="store_true", help="machine-readable output")
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


def describe(cert_path: Path) -> dict[str, Any]:
    """What ``show`` prints, as data (also handy for other tools)."""
    cert = pki.load_cert(cert_path)
    san: list[str] = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san = [f"DNS:{v}" for v in ext.get_values_for_type(x509.DNSName)]
        san += [f"IP:{v}" for v in ext.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "role": pki.read_role(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "san": san,
        "fingerprint_sha256": pki.fingerprint(cert),
        "privileges": pki.read_privileges(cert),
    }


def _show(args: argparse.Namespace, out: TextIO) -> None:
    info = describe(args.file)
    if args.json:
        print(json.dumps(info, indent=2), file=out)
        return
    width = max(len(k) for k in info)
    for k, v in info.items():
        if k == "privileges" and v is not None:
            v = json.dumps(v, sort_keys=True)
        elif k == "san":
            v = ", ".join(v) or "-"
        print(f"{k:<{width}}  {v if v is not None else '-'}", file=out)


def run_pki(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``pki`` command; 0 on success, 1 on a PKI error (message on stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if args.pki_command == "init":
            d = pki.PkiDir.init(args.dir, name=args.name, days=args.days)
            cert = pki.load_cert(d.ca_path)
            print(f"created {d.ca_path} (fingerprint {pki.fingerprint(cert)})", file=out)
        elif args.pki_command == "issue":
            d = pki.PkiDir(args.dir)
            paths = d.issue(
                args.name,
                args.role,
                days=args.days,
                san_dns=args.dns,
                san_ip=args.ip,
                privileges=_privileges(args.privileges),
                overwrite=args.force,
            )
            cert = pki.load_cert(paths.cert)
            print(f"issued {paths.cert} and {paths.key} (role {args.role},"
                  f" fingerprint {pki.fingerprint(cert)})", file=out)
            if args.role == "controller" and not (args.dns or args.ip):
                print("note: no --dns/--ip given; clients will have to disable hostname checks",
                      file=err)
        elif args.pki_command == "show":
            _show(args, out)
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
