"""The README's packet-interface examples run against a real endpoint (TLS, self-signed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.unit.test_controller import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def endpoint_process(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    port = free_port()
    env = dict(os.environ, MARIONET_STATE=str(state))
    proc = subprocess.Popen([sys.executable, "-m", "marionet.cli", "endpoint", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    line = proc.stdout.readline().decode()
    assert "listening" in line, line
    assert "self-signed" in line and "sha256" in line
    yield f"127.0.0.1:{port}", env
    proc.terminate()
    proc.wait(5)


def run_example(name: str, endpoint_process) -> str:
    addr, env = endpoint_process
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), addr], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.root
def test_icmp_echo_example(endpoint_process):
    out = run_example("packet_icmp_echo.py", endpoint_process)
    assert "echo reply from 127.0.0.1" in out and "(kernel)" in out


def test_udp_example(endpoint_process):
    out = run_example("packet_udp.py", endpoint_process)
    assert "server got b'hello'" in out and "client got b'HELLO'" in out
    assert "type 3 code 3 from 127.0.0.1" in out
