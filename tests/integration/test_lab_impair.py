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


_RAW_PING = r"""
import json, select, socket, struct, sys, time
dst, count, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS: receive time from the kernel
sent, rtts = {}, {}
def csum(b):
    t = sum(struct.unpack(f"!{len(b) // 2}H", b)); t = (t >> 16) + (t & 0xffff); t += t >> 16
    return ~t & 0xffff
def take(wait):
    while select.select([s], [], [], max(0.0, wait))[0]:
        data, anc, _, _ = s.recvmsg(2048, 64)
        ihl = (data[0] & 15) * 4
        typ, _, _, ident, seq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and ident == 0x4d4e and seq in sent:
            sec, ns = struct.unpack("qq", [d for _, t, d in anc if t == 35][0][:16])
            rtts[seq] = (sec * 10**9 + ns - sent[seq]) / 1e6
        wait = 0
start = time.monotonic()
for seq in range(count):
    take(start + seq * interval - time.monotonic())
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4d4e, seq) + b"\0" * 48
    sent[seq] = time.time_ns()
    s.sendto(hdr[:2] + struct.pack("!H", csum(hdr)) + hdr[4:], (dst, 0))
end = time.monotonic() + 2
while len(rtts) < count and time.monotonic() < end:
    take(0.05)
print(json.dumps(list(rtts.values())))
"""


def _precise_rtts(lab, n: int, interval: float = 0.01) -> list[float]:
    """ICMP echo RTTs (ms) client→target: user-space send stamp, kernel receive stamp (µs precision;
    iputils ping prints 0.1 ms above 10 ms)."""
    import json
    cp = lab.exec("client", [sys.executable, "-c", _RAW_PING, lab.addr("target"), str(n), str(interval)],
                  timeout=n * interval + 30)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


def test_delay_accuracy_on_a_linear_path(lab_factory):  # noqa: F811
    """5 delayed links of 2 ms (20 ms RTT): the RTT matches the configured sum, and truth reports the
    forwarder's own figures (one process, kernel stamps, per-link added delay)."""
    lab = lab_factory(linear_path(4, delay="2ms"))
    _precise_rtts(lab, 10)
    # VM stalls and other labs' busy forwarders delay some probes by 2–70 ms on a shared 2-vCPU
    # machine (seen: > 2 % of probes while another lab forwarded 10k pkt/s): the mean is taken over
    # the lower 90 %, so the tail cannot move it, and a burst of noise gets one rerun; a forwarder
    # 0.2 ms late per link (+2 ms RTT) fails both
    for attempt in range(2):
        r = sorted(_precise_rtts(lab, 300))
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
