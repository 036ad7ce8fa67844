"""`marionet demo --lab` on the built-in default lab: all three of the paper's examples."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_demo_lab_runs_the_papers_examples():
    out = subprocess.run([sys.executable, "-m", "marionet.cli", "demo", "--lab"],
                         capture_output=True, text=True, timeout=240, env={"COLUMNS": "200", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "shortest: vp-de (DE)" in text                      # shortest ping
    assert "authoritative-nameserver delay" in text and "10.99.0.2" in text
    assert "not available yet" not in text
    assert text.count("200 in") == 4                           # HTTPS API from each VP, lab CA trusted
    assert text.count("cdn1.lab.example = 10.99.0.2") == 4     # DNS for the listed server
    assert "→ 10.99.0.2" in text                               # TCP traceroute reached it
    assert "results written to" in text
