"""Impairments and router behaviour: forwarder delay, loss, unresponsive hops, crash cleanup."""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from marionet.lab import linear_path
from marionet.lab.pytest_plugin import lab_factory  # noqa: F401
from marionet.lab.state import all_states, teardown
from marionet.lab.system import list_netns

pytestmark = pytest.mark.root


def _rtts(lab, n=50, fam=4):
    cp = lab.exec("client", ["ping", f"-{fam}", "-n", "-c", str(n), "-i", "0.01", lab.addr("target", fam)],
                  timeout=60)
    return [float(x) for x in re.findall(r"time=([\d.]+)", cp.stdout)]


def test_forwarder_delay(lab_factory):  # noqa: F811
    lab = lab_factory(linear_path(1, delay="10ms", impair_link=0))
    for fam in (4, 6):
        r = _rtts(lab, fam=fam)
        assert len(r) >= 45
        assert 19.5 < statistics.median(r) < 21.5, r


def test_forwarder_loss(lab_factory):  # noqa: F811
    lab = lab_factory(linear_path(1, loss=0.3, impair_link=0))
    r = _rtts(lab, n=200)
    # round-trip delivery 0.7**2 = 0.49; generous bounds
    assert 0.3 < len(r) / 200 < 0.7


def test_unresponsive_hop(lab_factory):  # noqa: F811
    lab = lab_factory(linear_path(3, unresponsive=(2,)))
    for fam in (4, 6):
        cp = lab.exec("client", ["traceroute", f"-{fam}", "-n", "-q1", "-w1", "-m", "4", lab.addr("target", fam)])
        lines = cp.stdout.splitlines()[1:]
        assert "*" in lines[1] and lab.addr("r1", fam) in lines[0] and lab.addr("r3", fam) in lines[2], cp.stdout


def test_leftovers_after_crash_are_found_and_removed():
    """A process that builds a lab and is SIGKILLed leaves a state file `lab down --all-mine` cleans."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    code = ("from marionet.lab import Lab, linear_path\nimport time,sys\n"
            "lab=Lab(linear_path(1, delay='5ms', impair_link=0)); lab.up(); print(lab.lab_id, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    lab_id = p.stdout.readline().strip()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    st = [s for s in all_states() if s.lab_id == lab_id]
    assert st and not st[0].owner_alive()
    fwd = [x["pid"] for x in st[0].procs if x["role"] == "forwarder"]
    assert fwd and os.path.exists(f"/proc/{fwd[0]}")
    cp = subprocess.run([sys.executable, "-m", "marionet.lab.labcli", "lab", "down", "--id", lab_id],
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert not any(n.startswith(f"mn{lab_id}") for n in list_netns())
    time.sleep(0.1)
    assert not os.path.exists(f"/proc/{fwd[0]}") or "Z" in open(f"/proc/{fwd[0]}/stat").read().split()[2]


def _timxceed_count(lab, ttl: int, n: int, fam: int = 4) -> int:
    """Send ``n`` TTL-limited UDP probes quickly; count ICMP time-exceeded replies."""
    prog = f"""
import socket, time
fam = {fam}
s = socket.socket(socket.AF_INET6 if fam == 6 else socket.AF_INET, socket.SOCK_DGRAM)
if fam == 6:
    s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, {ttl})
else:
    s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR (missing from Python 3.11)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, {ttl})
s.setblocking(False)
got = 0
def drain():
    global got
    while True:
        try:
            s.recvmsg(512, 512, socket.MSG_ERRQUEUE)  # also clears the pending error
            got += 1
        except BlockingIOError:
            return
for i in range({n}):
    s.sendto(b"x", ({lab.addr("target", fam)!r}, 33434 + i))
    time.sleep(0.002)
    drain()
time.sleep(0.5)
drain()
print(got)
"""
    cp = lab.exec("client", [sys.executable, "-c", prog], timeout=60)
    assert cp.returncode == 0, cp.stderr
    return int(cp.stdout.strip())


def test_icmp_rate_limited_router(lab_factory):  # noqa: F811
    """A router with an ICMP rate limit answers only some of a quick burst;
    one without answers every probe."""
    lab = lab_factory(linear_path(2, icmp_ratelimit={1: 1000}))
    limited = _timxceed_count(lab, ttl=1, n=60)
    free = _timxceed_count(lab, ttl=2, n=60)
    assert free == 60
    assert 1 <= limited < 20, limited
    truth = lab.truth()
    assert truth is not None
