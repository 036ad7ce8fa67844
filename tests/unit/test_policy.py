"""The operator's TOML policy: loading, who gets what, and the explanation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from marionet.guard import pki
from marionet.guard import privileges as P
from marionet.guard.policy import Policy, PolicyError, effective, explain_policy, load_policy
from marionet.guard.privileges import NOTHING, parse

LEAF = "cd" * 32
WASM = b"\0asm\1\0\0\0"


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A policy directory with a CA and a monitor module, as an operator has them."""
    _, ca = pki.make_root("Lab Operator CA", days=30)
    pki.save_cert(ca, tmp_path / "ca.pem")
    (tmp_path / "monitors").mkdir()
    (tmp_path / "monitors" / "tcp-only.wasm").write_bytes(WASM)
    return tmp_path


GOOD = """
    [trust]
    cas = ["ca.pem"]
    revocations = "revoked.pem"

    [anonymous]
    protocols = ["udp"]
    dst = ["192.0.2.0/24"]
    rate = { pps = 10 }

    [limits]
    protocols = ["udp", "tcp", "raw:1", "capture"]
    dst = ["192.0.2.0/24", "2001:db8::/32"]
    rate = { pps = 100, excess = "delay" }

    [[principal]]
    match = { name = "alice" }
    limits = { max_sockets = 8 }

    [[principal]]
    match = { fingerprint = "CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD" }
    limits = { dst = ["192.0.2.128/25"] }

    [monitors]
    dir = "monitors"
    run = ["monitors/tcp-only.wasm"]

    [audit]
    file = "/var/log/marionet/audit.jsonl"
    max_bytes = 1048576
    keep = 3
"""


def write(site: Path, text: str) -> Path:
    path = site / "policy.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_file(site: Path) -> None:
    policy = load_policy(write(site, GOOD))
    assert policy.ca_paths == (site / "ca.pem",)
    assert policy.revocations == site / "revoked.pem"  # relative to the policy file
    assert policy.anonymous == parse({"protocols": ["udp"], "dst": ["192.0.2.0/24"], "rate": {"pps": 10}})
    assert policy.limits is not None and policy.limits.rate is not None
    assert policy.limits.rate.pps == 100 and policy.limits.rate.excess == "delay"
    assert [m for m, _ in policy.principal_rules] == [{"name": "alice"}, {"fingerprint": LEAF}]
    assert policy.monitor_dir == site / "monitors"
    assert policy.run_monitors == (site / "monitors" / "tcp-only.wasm",)
    assert policy.audit_file == Path("/var/log/marionet/audit.jsonl")
    assert (policy.audit_max_bytes, policy.audit_keep) == (1048576, 3)
    assert policy.source == site / "policy.toml"


def test_relative_paths_resolve_against_the_file_not_the_cwd(site: Path, monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    path = write(site, GOOD)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(elsewhere)
    policy = load_policy(Path("..") / path.relative_to(elsewhere.parent))  # a relative policy path, too
    assert policy.ca_paths == (site.resolve() / "ca.pem",)
    assert policy.run_monitors[0].is_file()
    assert policy.audit_file == Path("/var/log/marionet/audit.jsonl")  # absolute paths stay


def test_empty_file_is_the_open_policy(site: Path) -> None:
    policy = load_policy(write(site, ""))
    assert policy == Policy.open()
    assert policy.anonymous == NOTHING and policy.limits is None


BAD = [
    ("[trusts]\ncas = []\n", "policy.toml: trusts: unknown table (known: trust, anonymous"),
    ("[trust]\nca = ['ca.pem']\n", "policy.toml: trust.ca: unknown key (known: cas, revocations)"),
    ("[trust]\ncas = ['missing.pem']\n", "policy.toml: trust.cas[0]: "),
    ("[trust]\ncas = [5]\n", "policy.toml: trust.cas[0]: must be a file path string"),
    ("[anonymous]\ndst = ['10.0.0.1/8']\n", "policy.toml: anonymous.dst[0]: '10.0.0.1/8' has host bits set"),
    ("[limits]\nrate = { ppps = 1 }\n", "policy.toml: limits.rate.ppps: unknown field (known: pps"),
    ("[limits]\nprotocols = ['icmp']\n", "policy.toml: limits.protocols[0]: unknown protocol 'icmp'"),
    ("[[principal]]\nlimits = {}\n", "policy.toml: principal[0].match: missing"),
    ("[[principal]]\nmatch = {}\n", "policy.toml: principal[0].match: names nobody"),
    ("[[principal]]\nmatch = { cn = 'x' }\n", "policy.toml: principal[0].match.cn: unknown key"),
    ("[[principal]]\nmatch = { ca = 'abc' }\n", "policy.toml: principal[0].match.ca: not a SHA-256 fingerprint"),
    ("[[principal]]\nmatch = { name = 'a' }\nlimits = { max_sockets = -1 }\n",
     "policy.toml: principal[0].limits.max_sockets: must be >= 0"),
    ("[[principal]]\nmatch = { name = 'a' }\nlimit = {}\n", "policy.toml: principal[0].limit: unknown key"),
    ("principal = 3\n", "policy.toml: principal: must be an array of tables"),
    ("[monitors]\nrun = ['nope.wasm']\n", "policy.toml: monitors.run[0]: "),
    ("[monitors]\nfile = 'x'\n", "policy.toml: monitors.file: unknown key"),
    ("[audit]\nmax_bytes = 10\n", "policy.toml: audit.max_bytes: must be at least 1024"),
    ("[audit]\nkeep = true\n", "policy.toml: audit.keep: must be an integer, got bool"),
    ("[audit]\nfile = ''\n", "policy.toml: audit.file: must be a file path string"),
    ("[audit\n", "policy.toml: not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m.split(": ")[1] + str(i) for i, (_, m) in enumerate(BAD)])
def test_bad_files_name_file_and_field(site: Path, text: str, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy(write(site, text))
    assert message in str(exc.value)
    assert str(exc.value).startswith(str(site / "policy.toml"))


def test_missing_file(site: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(site / "absent.toml")


def test_limits_tables_restrict_only_what_they_name(site: Path) -> None:
    policy = load_policy(write(site, "[limits]\nmax_sockets = 4\n"))
    cert = parse({"protocols": ["udp", "raw:*"], "dst": ["any"], "spoof": True,
                  "primitives": {"ping": {"attempts": 9}}})
    got = effective(policy, "bob", None, None, cert)
    assert got.max_sockets == 4
    assert got.protocols == cert.protocols and got.dst == cert.dst and got.spoof
    assert P.primitive_bounds(got, "ping") == {"attempts": 9}


# ------------------------------------------------------------ effective

CERT = parse({"protocols": ["udp", "tcp", "raw:*"], "dst": ["192.0.0.0/16", "2001:db8::/32"],
              "rate": {"pps": 1000}, "max_sockets": 100})


def test_verified_principal_gets_cert_within_limits(site: Path) -> None:
    policy = load_policy(write(site, GOOD))
    got = effective(policy, "bob", "ee" * 32, "aa" * 32, CERT)
    assert got.protocols == {"udp", "tcp", "raw:1"}
    assert [str(n) for n in got.dst] == ["192.0.2.0/24", "2001:db8::/32"]
    assert got.rate is not None and got.rate.pps == 100 and got.rate.excess == "deny"  # the cert denies excess
    assert got.max_sockets == 100
    assert P.widenings(got, CERT) == [] and P.widenings(got, policy.limits) == []


def test_principal_rules_narrow_the_principals_they_match(site: Path) -> None:
    policy = load_policy(write(site, GOOD))
    alice = effective(policy, "alice", "ee" * 32, None, CERT)
    assert alice.max_sockets == 8
    pinned = effective(policy, "carol", LEAF.upper(), None, CERT)
    assert [str(n) for n in pinned.dst] == ["192.0.2.128/25"] and pinned.max_sockets == 100
    both = effective(policy, "alice", LEAF, None, CERT)
    assert both.max_sockets == 8 and [str(n) for n in both.dst] == ["192.0.2.128/25"]


def test_rule_with_several_keys_needs_all(site: Path) -> None:
    policy = load_policy(write(site, f"[[principal]]\nmatch = {{ name = 'alice', ca = '{'aa' * 32}' }}\n"
                                     "limits = { max_sockets = 1 }\n"))
    assert effective(policy, "alice", None, "aa" * 32, CERT).max_sockets == 1
    assert effective(policy, "alice", None, "bb" * 32, CERT).max_sockets == 100


def test_unverified_principal_gets_anonymous_and_no_rule(site: Path) -> None:
    policy = load_policy(write(site, GOOD))
    # A controller says this is alice with the pinned certificate: a claim selects nothing.
    got = effective(policy, "alice", LEAF, "aa" * 32, None)
    assert got == policy.anonymous
    assert effective(Policy.open(), "alice", None, None, None) == NOTHING


def test_open_policy_lets_the_certificate_decide() -> None:
    assert effective(Policy.open(), "bob", None, None, CERT) == CERT


# ------------------------------------------------------------ explain

def test_explain_policy_mentions_prefixes_rates_cas_monitors_audit(site: Path) -> None:
    policy = load_policy(write(site, GOOD))
    text = explain_policy(policy, "vp1", {"site": "lab"}, ["192.0.2.1", "2001:db8::1"])
    ca = pki.load_cert(site / "ca.pem")
    for needle in ("Policy for VP 'vp1' (tags: site=lab)", "192.0.2.1, 2001:db8::1",
                   f"CN 'Lab Operator CA', sha256 {pki.fingerprint(ca)}",
                   "Anonymous sessions", "to destinations: 192.0.2.0/24",
                   "rate: at most 10 packets/s (bursts of 10); excess is denied",
                   "to destinations: 192.0.2.0/24, 2001:db8::/32",
                   "rate: at most 100 packets/s (bursts of 100); excess is delayed",
                   "may open: UDP, TCP connections, packet capture, raw IP protocol 1 (ICMP)",
                   "principals named alice: also within", "open sockets: at most 8",
                   f"principals holding the certificate sha256 {LEAF}",
                   f"tcp-only.wasm (sha256 {pki.fingerprint(WASM)})",
                   f"looked up in: {site / 'monitors'}",
                   "Audit: /var/log/marionet/audit.jsonl", "rotated at 1048576 bytes, 3 old files kept"):
        assert needle in text, needle


def test_explain_open_policy() -> None:
    text = explain_policy(Policy.open(), "vp1", {}, [])
    assert "none: no certificate is honoured, every session is anonymous" in text
    assert "Anonymous sessions" in text and "    nothing at all" in text
    assert "the policy adds no limits" in text
    assert "Audit: not written to a file" in text


def test_explain_says_when_a_grant_does_not_apply_on_this_vp(site: Path) -> None:
    policy = load_policy(write(site, "[anonymous]\nprotocols = ['udp']\nvps = ['vp2']\n"))
    assert "does NOT apply on this VP" in explain_policy(policy, "vp1", {}, [])
    assert "does NOT apply" not in explain_policy(policy, "vp2", {}, [])


def test_explain_shows_only_what_limits_restrict(site: Path) -> None:
    text = explain_policy(load_policy(write(site, GOOD)), "vp1", {}, [])
    alice = text.split("principals named alice: also within\n")[1].split("\n  principals")[0]
    assert alice.strip() == "open sockets: at most 8"
    limits = text.split("as the certificate says):\n")[1].split("\n\n")[0]
    assert "spoofing" not in limits and "to destinations: 192.0.2.0/24, 2001:db8::/32" in limits
    empty = load_policy(write(site, "[limits]\n"))
    assert "no restriction (the certificate alone decides)" in explain_policy(empty, "vp1", {}, [])
