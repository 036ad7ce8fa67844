"""The operator's declarative policy: one TOML file an operator can read.

Why a file and not a monitor: most sites want a few common rules ("UDP and
ICMP to 192.0.2.0/24 at <= 100 pps; no raw for anonymous; these CAs"), and
an operator must be able to read, review and explain them. The file::

    # /etc/marionet/policy.toml
    [trust]
    cas = ["/etc/marionet/ca.pem"]             # operator CAs whose certificates are honoured
    revocations = "/etc/marionet/revoked.pem"  # optional revocation list

    [anonymous]           # sessions without a verified chain (absent: nothing at all)
    protocols = ["udp"]
    dst = ["192.0.2.0/24"]
    rate = { pps = 10 }

    [limits]              # on top of EVERY verified certificate (intersection)
    protocols = ["udp", "tcp", "raw:1", "capture"]
    dst = ["192.0.2.0/24", "2001:db8::/32"]
    rate = { pps = 100, excess = "delay" }

    [[principal]]         # narrower limits for some verified principals
    match = { name = "alice" }   # and/or ca = "<sha256>", fingerprint = "<sha256>"
    limits = { max_sockets = 8 }

    [monitors]
    dir = "/etc/marionet/monitors"   # installed monitors, found by digest
    run = ["/etc/marionet/monitors/tcp-only.wasm"]   # run for everyone

    [audit]
    file = "/var/log/marionet/audit.jsonl"
    max_bytes = 10485760
    keep = 5

``[anonymous]``, ``[limits]`` and a principal's ``limits`` use the privilege
schema (``privileges.parse``). ``[anonymous]`` is a grant: what it does not
list is not granted. ``[limits]`` and principal ``limits`` only restrict: a
grant field they leave out (``protocols``, ``dst``, ``src``/``spoof``,
``primitives``) does not restrict that field, so ``{ max_sockets = 8 }``
limits sockets and nothing else.

Who gets what (``effective``): a principal whose chain the endpoint verified
gets its certificate's grant ∩ ``[limits]`` ∩ the limits of every matching
``[[principal]]`` rule (a match names all of: the leaf's CN, the CA's or the
leaf's SHA-256). Anyone else gets ``[anonymous]`` and no rule applies:
their name is only a claim (a controller's word), and a claim must not
select rules. Unknown tables or keys are errors; relative paths are taken
from the policy file's directory.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from marionet.guard import privileges as priv
from marionet.guard.privileges import EVERYTHING, NOTHING, PrivilegeError, Privileges

__all__ = ["Policy", "PolicyError", "load_policy", "effective", "explain_policy", "rule_matches"]

_TABLES = ("trust", "anonymous", "limits", "principal", "monitors", "audit")
_TRUST_KEYS = ("cas", "revocations")
_RULE_KEYS = ("match", "limits")
_MATCH_KEYS = ("name", "ca", "fingerprint")
_MONITOR_KEYS = ("dir", "run")
_AUDIT_KEYS = ("file", "max_bytes", "keep")
_GRANT_FIELDS = ("protocols", "dst", "primitives")


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names file and field."""


@dataclass(frozen=True)
class Policy:
    """A loaded policy (see the module docstring)."""

    ca_paths: tuple[Path, ...] = ()
    revocations: Path | None = None
    anonymous: Privileges = NOTHING
    limits: Privileges | None = None
    #: ({"name"|"ca"|"fingerprint": value}, limits) in file order
    principal_rules: tuple[tuple[dict[str, str], Privileges], ...] = ()
    monitor_dir: Path | None = None
    run_monitors: tuple[Path, ...] = ()
    audit_file: Path | None = None
    audit_max_bytes: int = 10 << 20
    audit_keep: int = 5
    source: Path | None = field(default=None, compare=False)

    @classmethod
    def open(cls) -> "Policy":
        """No policy file: anonymous sessions get nothing and a verified
        certificate alone decides (no extra limits)."""
        return cls()


def _err(where: str, msg: str) -> PolicyError:
    return PolicyError(f"{where}: {msg}")


def _table(doc: Any, where: str, known: tuple[str, ...], top: bool = False) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _err(where, f"must be a table, got {type(doc).__name__}")
    for key in doc:
        if key not in known:
            at = f"{where}: {key}" if top else f"{where}.{key}"
            raise _err(at, f"unknown {'table' if top else 'key'} (known: {', '.join(known)})")
    return doc


def _path(value: Any, where: str, base: Path) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise _err(where, f"must be a file path string, got {value!r}")
    path = Path(value.strip()).expanduser()
    return path if path.is_absolute() else base / path


def _paths(value: Any, where: str, base: Path) -> tuple[Path, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _err(where, f"must be a list of file paths, got {type(value).__name__}")
    return tuple(_path(v, f"{where}[{i}]", base) for i, v in enumerate(value))


def _existing(paths: Iterable[Path], where: str) -> None:
    for i, path in enumerate(paths):
        if not path.is_file():
            raise _err(f"{where}[{i}]", f"{path} does not exist or is not a file")


def _int(value: Any, where: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(where, f"must be an integer, got {type(value).__name__}")
    if value < lo:
        raise _err(where, f"must be at least {lo}, got {value}")
    return value


def _grant(doc: Any, where: str) -> Privileges:
    try:
        return priv.parse(doc, where=where)
    except PrivilegeError as exc:
        raise PolicyError(str(exc)) from None


def _limits(doc: Any, where: str) -> Privileges:
    """A limits table: what it leaves out of the grant fields is unrestricted."""
    parsed = _grant(doc, where)
    fill: dict[str, Any] = {}
    for name in _GRANT_FIELDS:
        if name not in doc:
            fill[name] = getattr(EVERYTHING, name)
    if "src" not in doc and "spoof" not in doc:
        fill["spoof"] = True
    if not fill:
        return parsed
    kw = {f: getattr(parsed, f) for f in parsed.__dataclass_fields__}
    kw.update(fill)
    return Privileges(**kw)


def _match(doc: Any, where: str) -> dict[str, str]:
    doc = _table(doc, where, _MATCH_KEYS)
    if not doc:
        raise _err(where, "names nobody (give name, ca or fingerprint; for everyone use [limits])")
    out: dict[str, str] = {}
    for key, value in doc.items():
        if not isinstance(value, str) or not value.strip():
            raise _err(f"{where}.{key}", f"must be a non-empty string, got {value!r}")
        if key == "name":
            out[key] = value.strip()
        else:
            from marionet.guard.pki import PkiError, normalize_fingerprint
            try:
                out[key] = normalize_fingerprint(value)
            except PkiError as exc:
                raise _err(f"{where}.{key}", str(exc)) from None
    return out


def parse_policy(doc: Mapping[str, Any], where: str, base: Path) -> Policy:
    """A policy from an already-read TOML document (``where`` names it in
    errors, ``base`` anchors relative paths)."""
    doc = _table(dict(doc), where, _TABLES, top=True)
    kw: dict[str, Any] = {}
    trust = _table(doc.get("trust", {}), f"{where}: trust", _TRUST_KEYS)
    if "cas" in trust:
        kw["ca_paths"] = _paths(trust["cas"], f"{where}: trust.cas", base)
        _existing(kw["ca_paths"], f"{where}: trust.cas")
    if "revocations" in trust:
        kw["revocations"] = _path(trust["revocations"], f"{where}: trust.revocations", base)
    if "anonymous" in doc:
        kw["anonymous"] = _grant(doc["anonymous"], f"{where}: anonymous")
    if "limits" in doc:
        kw["limits"] = _limits(doc["limits"], f"{where}: limits")
    rules = doc.get("principal", [])
    if not isinstance(rules, list):
        raise _err(f"{where}: principal", "must be an array of tables ([[principal]])")
    parsed_rules = []
    for i, rule in enumerate(rules):
        at = f"{where}: principal[{i}]"
        rule = _table(rule, at, _RULE_KEYS)
        if "match" not in rule:
            raise _err(f"{at}.match", "missing (whom the rule applies to)")
        limits = _limits(rule.get("limits", {}), f"{at}.limits")
        parsed_rules.append((_match(rule["match"], f"{at}.match"), limits))
    kw["principal_rules"] = tuple(parsed_rules)
    monitors = _table(doc.get("monitors", {}), f"{where}: monitors", _MONITOR_KEYS)
    if "dir" in monitors:
        kw["monitor_dir"] = _path(monitors["dir"], f"{where}: monitors.dir", base)
    if "run" in monitors:
        kw["run_monitors"] = _paths(monitors["run"], f"{where}: monitors.run", base)
        _existing(kw["run_monitors"], f"{where}: monitors.run")
    audit = _table(doc.get("audit", {}), f"{where}: audit", _AUDIT_KEYS)
    if "file" in audit:
        kw["audit_file"] = _path(audit["file"], f"{where}: audit.file", base)
    if "max_bytes" in audit:
        kw["audit_max_bytes"] = _int(audit["max_bytes"], f"{where}: audit.max_bytes", 1024)
    if "keep" in audit:
        kw["audit_keep"] = _int(audit["keep"], f"{where}: audit.keep", 1)
    return Policy(**kw)


def load_policy(path: str | Path) -> Policy:
    """Read and check the policy file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the policy: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    return replace(parse_policy(doc, str(path), path.resolve().parent), source=path)


# --------------------------------------------------------------------------
# Who gets what.


def rule_matches(match: Mapping[str, str], name: str | None, fingerprint: str | None,
                 anchor: str | None) -> bool:
    """Every key of ``match`` must hold for the verified principal."""
    have = {"name": name, "fingerprint": fingerprint and fingerprint.lower(), "ca": anchor and anchor.lower()}
    return all(have.get(key) == value for key, value in match.items())


def effective(policy: Policy, name: str | None, fingerprint: str | None, anchor: str | None,
              cert_grants: Privileges | None) -> Privileges:
    """The privileges a principal has under ``policy``.

    ``cert_grants`` is the verified chain's grant (None: not verified, so
    ``[anonymous]`` alone, whatever name was claimed)."""
    if cert_grants is None:
        return policy.anonymous
    grant = cert_grants if policy.limits is None else priv.intersect(cert_grants, policy.limits)
    for match, limits in policy.principal_rules:
        if rule_matches(match, name, fingerprint, anchor):
            grant = priv.intersect(grant, limits)
    return grant


# --------------------------------------------------------------------------
# Explaining it to the operator.


def _indent(lines: Iterable[str], prefix: str = "    ") -> list[str]:
    return [prefix + line for line in lines]


def _vp_note(p: Privileges, vp_name: str, vp_tags: Mapping[str, Any]) -> list[str]:
    if priv.allows_vp(p, vp_name, vp_tags):
        return []
    return [f"    (does NOT apply on this VP: its name or tags are outside the vps/tags limits,"
            f" so nothing may be sent from {vp_name} this way)"]


def _ca_lines(policy: Policy) -> list[str]:
    if not policy.ca_paths:
        return ["  none: no certificate is honoured, every session is anonymous"]
    from marionet.guard.pki import PkiError, common_name, fingerprint, load_cert
    out = []
    for path in policy.ca_paths:
        try:
            cert = load_cert(path)
        except (PkiError, OSError) as exc:
            out.append(f"  {path}: cannot read ({exc})")
            continue
        out.append(f"  {path}: CN {common_name(cert)!r}, sha256 {fingerprint(cert)}")
    return out


def _limit_lines(p: Privileges, prefix: str) -> list[str]:
    """Only what a limits table restricts (lines that differ from "anything")."""
    lines = [line for line in priv.explain(p) if line not in _UNRESTRICTED]
    return _indent(lines or ["no restriction (the certificate alone decides)"], prefix)


_UNRESTRICTED = frozenset(priv.explain(EVERYTHING))


def _match_text(match: Mapping[str, str]) -> str:
    words = {"name": "named", "ca": "issued under the CA with sha256", "fingerprint": "holding the certificate sha256"}
    return " and ".join(f"{words[k]} {v}" for k, v in match.items())


def explain_policy(policy: Policy, vp_name: str, vp_tags: Mapping[str, Any],
                   own_addrs: Iterable[str]) -> str:
    """What ``marionet endpoint --explain-policy`` prints: for whom, what
    traffic this VP may send, which CAs vouch, which monitors run, where
    the audit goes."""
    tags = ", ".join(f"{k}={v}" for k, v in sorted(vp_tags.items())) or "none"
    own = ", ".join(own_addrs) or "none found"
    lines = [f"Policy for VP {vp_name!r} (tags: {tags})"
             + (f", from {policy.source}" if policy.source else ", no policy file"),
             f"This VP's own source addresses: {own}", "",
             "Trusted operator CAs (certificates issued under them are honoured):", *_ca_lines(policy),
             f"  revocation list: {policy.revocations or 'none'}", "",
             "Anonymous sessions (no verified certificate chain; also any identity that only a "
             "controller asserts):", *_indent(priv.explain(policy.anonymous)),
             *_vp_note(policy.anonymous, vp_name, vp_tags), ""]
    if policy.limits is None:
        lines += ["Every verified principal: what its certificate grants (the policy adds no limits).", ""]
    else:
        lines += ["Every verified principal: what its certificate grants, within these limits"
                  " (fields not shown: as the certificate says):",
                  *_limit_lines(policy.limits, "    "), *_vp_note(policy.limits, vp_name, vp_tags), ""]
    if policy.principal_rules:
        lines.append("Principal rules (each narrows the principals it matches further):")
        for match, limits in policy.principal_rules:
            lines += [f"  principals {_match_text(match)}: also within", *_limit_lines(limits, "      "),
                      *_vp_note(limits, vp_name, vp_tags)]
        lines.append("")
    lines.append("Monitors:")
    if policy.run_monitors:
        from marionet.guard.pki import fingerprint as sha256_of
        for path in policy.run_monitors:
            try:
                digest = sha256_of(path.read_bytes())
            except OSError as exc:
                digest = f"cannot read ({exc})"
            lines.append(f"  runs for every session: {path} (sha256 {digest})")
    else:
        lines.append("  no operator-local monitor runs for every session")
    lines.append("  monitors a certificate requires are looked up in: "
                 + (str(policy.monitor_dir) if policy.monitor_dir else "nowhere (the client must supply them)"))
    lines.append("")
    if policy.audit_file is None:
        lines.append("Audit: not written to a file (no [audit] file)")
    else:
        lines.append(f"Audit: {policy.audit_file} (one JSON line per session and per denial; rotated at "
                     f"{policy.audit_max_bytes} bytes, {policy.audit_keep} old files kept)")
    return "\n".join(lines) + "\n"
