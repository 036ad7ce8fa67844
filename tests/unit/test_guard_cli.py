"""``marionet endpoint --policy/--explain-policy`` from the shell."""

from __future__ import annotations

import subprocess
import sys


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "marionet.cli", "endpoint", *args],
                          capture_output=True, text=True, timeout=60)


def test_explain_policy_says_what_each_kind_of_client_may_send(tmp_path):
    pol = tmp_path / "policy.toml"
    pol.write_text('[anonymous]\nprotocols = ["udp", "raw:1"]\ndst = ["192.0.2.0/24"]\nrate = { pps = 100 }\n')
    cp = _run("--policy", str(pol), "--explain-policy", "--name", "vp-x")
    assert cp.returncode == 0, cp.stderr
    out = cp.stdout
    assert "VP 'vp-x'" in out and "192.0.2.0/24" in out and "100 packets/s" in out
    assert "raw IP protocol 1 (ICMP)" in out and "no spoofing" in out


def test_explain_without_policy_says_the_guard_is_open():
    cp = _run("--explain-policy")
    assert cp.returncode == 0 and "open" in cp.stdout


def test_a_bad_policy_is_a_clear_error_not_a_traceback(tmp_path):
    pol = tmp_path / "policy.toml"
    pol.write_text('[anonymous]\ndst = ["10.0.0.1/8"]\n')
    cp = _run("--policy", str(pol), "--listen", "127.0.0.1:0", "--insecure")
    assert cp.returncode == 2 and "Traceback" not in cp.stderr
    assert "dst" in cp.stderr and "10.0.0.1/8" in cp.stderr
