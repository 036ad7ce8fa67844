"""Impairments and router behaviour: forwarder delay, loss, unresponsive hops, crash cleanup."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from marionet.lab import linear_path, rtt_bounds_ms
from marionet.lab.probe import one_way, precise_rtts
from marionet.lab.pytest_plugin import lab_factory  # noqa: F401
from marionet.lab.state import all_states
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


def test_delay_accuracy_on_a_linear_path(lab_factory):  # noqa: F811
    """5 delayed links of 2 ms (20 ms RTT): the RTT matches the configured sum, and truth reports the
    forwarder's own figures (one process, kernel stamps, per-link added delay)."""
    lab = lab_factory(linear_path(4, delay="2ms"))
    precise_rtts(lab, 10)
    # VM stalls and other labs' busy forwarders delay some probes by 2–70 ms on a shared 2-vCPU
    # machine (seen: > 2 % of probes while another lab forwarded 10k pkt/s): the mean is taken over
    # the lower 90 %, so the tail cannot move it, and a burst of noise gets one rerun; a forwarder
    # 0.2 ms late per link (+2 ms RTT) fails both
    for attempt in range(2):
        r = sorted(precise_rtts(lab, 300))
        assert len(r) >= 295
        kept = r[: int(len(r) * 0.90)]
        mean_err, median_err = statistics.fmean(kept) - 20.0, statistics.median(r) - 20.0
        if abs(mean_err) < 0.3 and abs(median_err) < 0.3:
            break
    assert abs(mean_err) < 0.3, (mean_err, r[-10:])
    assert abs(median_err) < 0.3, median_err
    assert [p["role"] for p in lab.state.procs].count("forwarder") == 1
    t = lab.truth()
    fw = t["forwarder"]
    assert fw["calibration"]["stamp"] == "kernel" and fw["calibration"]["send_late_us"]["n"] > 0
    assert "offset_us" in fw["calibration"] and fw["model"]
    for ln in t["links"]:
        st = fw["links"][str(ln["index"])]
        assert st["in"] >= 300 and st["out"] >= 300, st  # request and reply directions
        assert ln["added_us"]["source"] == "live" and ln["added_us"]["n"] >= 300
        assert 0 <= ln["added_us"]["median"] < 1000, ln["added_us"]
        assert ln["delivery_us"]["n"] >= 300 and 0 < ln["delivery_us"]["median"] < 1000, ln["delivery_us"]
    lo, hi = rtt_bounds_ms(t)
    assert 20.0 < lo <= hi                   # truth never claims less than configured, and the delivery adds
    # What truth claims must hold the measurement (the same 0.3 ms allowance as above for VM noise).
    assert lo - 0.3 < statistics.fmean(kept) < hi + 0.3, (lo, hi, statistics.fmean(kept))


def test_no_packet_arrives_before_its_configured_delay(lab_factory):  # noqa: F811
    """A delay emulator must not beat the delay it claims.  Measured from where the forwarder
    measures (the packet's kernel stamp as it leaves through the link's device, seen by our own
    tap), at 2,000 packets/s where the forwarder's own path costs next to nothing: a fixed
    send-early credit of a few µs (once used to cover that path at low rates) delivers early."""
    lab = lab_factory(linear_path(1, delay="5ms", impair_link=0, name="early"))
    link = lab.truth()["links"][0]
    assert link["forwarder"] and link["a"] == "client"
    rows = one_way(lab, 2000, 1000, tap=link["a_if"])
    gaps = [r["rx_ns"] - r["tap_ns"] for r in rows if r["tap_ns"] is not None]
    assert len(rows) == 1000 and len(gaps) >= 990, (len(rows), len(gaps))
    assert min(gaps) >= 5_000_000, sorted(gaps)[:5]
    assert statistics.median(gaps) < 5_000_000 + 200_000, statistics.median(gaps)


def test_rate_and_delay_on_one_link(lab_factory):  # noqa: F811
    """tbf on the TUNs plus forwarder delay: iperf3 gets ≥ 90 % of the rate in goodput terms."""
    import json
    rate = 50e6
    lab = lab_factory(linear_path(1, delay="5ms", rate="50mbit", impair_link=0))
    srv = lab.popen("target", ["iperf3", "-s", "-1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        cp = lab.exec("client", ["iperf3", "-c", lab.addr("target"), "-t", "3", "-J"], timeout=40)
        bps = json.loads(cp.stdout)["end"]["sum_received"]["bits_per_second"]
    finally:
        srv.wait(timeout=10)
    assert bps >= 0.9 * rate * 1448 / 1514, bps
    assert bps <= 1.05 * rate, bps
    t = lab.truth()
    assert t["links"][0]["rate_bps"] == rate and t["links"][0]["delay_ms"] == 5.0
    assert t["forwarder"]["links"]["0"]["out"] > 1000


def test_senders_behind_a_delayed_link_keep_their_kernel_tx_stamps(lab_factory):  # noqa: F811
    """The forwarder reads packets through a tap and mutes the TUN's own copy;
    a *dropping* mute would also drop the TUN driver's software TX stamp
    (taken after the filter), leaving every VP socket behind a delayed link
    without kernel send times. One stamp per datagram, all delivered."""
    from marionet.evaluate import sendgap as sg

    lab = lab_factory(linear_path(1, delay="1ms", name="txst"))
    dst = lab.addr("target")
    recv = lab.popen("target", sg.receiver_argv(0, 50, 10), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    port = sg.wait_ready(recv)
    cp = lab.exec("client", sg.native_send_argv(dst, port, 50, 100_000), timeout=30)
    assert cp.returncode == 0, cp.stderr
    train = sg.Train.from_dict(json.loads([ln for ln in cp.stdout.splitlines() if ln.startswith("{")][-1]))
    assert train.missing == 0 and train.user_stamps == 0
    assert all(t is not None for t in train.tx_ns)
    assert len(set(sg.read_report(recv)["seq"])) == 50
