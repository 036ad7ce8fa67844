"""VP clock skew (``[[vp]] clock_skew_ms``): the endpoint behaves as if its clock were off.

Namespaces share CLOCK_REALTIME, so the skew is applied where messages cross
the endpoint's session (marionet.wire.skew). Seen from the controller's
client: the NTP-style offset estimate finds the skew, RTTs are unchanged
(both stamps shift alike), and a send scheduled ``at`` a time in the VP's
skewed clock leaves at the intended real time.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from marionet.lab.pytest_plugin import make_lab
from marionet.lab.spec import parse_dict

pytestmark = pytest.mark.root

SKEW_MS = {"vp-fast": 50.0, "vp-slow": -30.0, "vp-true": 0.0}
DELAY_MS = 5.0


def skew_spec() -> Any:
    return parse_dict({
        "lab": {"name": "skew", "controller": "auto"},
        "vp": [{"name": n, **({"clock_skew_ms": s} if s else {})} for n, s in SKEW_MS.items()],
        "router": [{"name": "r1"}],
        "host": [{"name": "sink"}],
        "link": [*({"a": n, "b": "r1", "delay": f"{DELAY_MS}ms"} for n in SKEW_MS), {"a": "r1", "b": "sink"}],
    })


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(skew_spec()) as lab:
        lab.wait_vps(30)
        yield lab


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _attached(lab: Any, vp: str, fn: Any) -> Any:
    conn = await lab.aconnect()
    try:
        s = await conn.attach(vp)
        try:
            return await fn(s)
        finally:
            await s.close()
    finally:
        await conn.close()


def test_spec_and_truth_carry_the_skew(lab: Any) -> None:
    assert lab.spec.nodes["vp-fast"].clock_skew_ms == 50.0
    assert parse_dict(lab.spec.to_dict()).nodes["vp-slow"].clock_skew_ms == -30.0
    nodes = lab.truth()["nodes"]
    assert nodes["vp-fast"]["clock_skew_ms"] == 50.0 and nodes["vp-true"]["clock_skew_ms"] == 0.0


def test_controller_estimate_finds_the_skew(lab: Any) -> None:
    """The controller's own estimate (keepalive Ping/Pong on the endpoint's uplink, what
    ``Inst.clock_offset`` reports and MIDAR schedules by) sees the skewed clock too."""
    deadline = time.monotonic() + 10
    while True:
        reg = {r["name"]: r for r in lab.registry()}
        if all(reg.get(vp, {}).get("clock_offset_ns") is not None for vp in SKEW_MS) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for vp, skew in SKEW_MS.items():
        est_ms = reg[vp]["clock_offset_ns"] / 1e6
        assert abs(est_ms - skew) < 3.0, (vp, est_ms, skew)


@pytest.mark.parametrize("vp", list(SKEW_MS))
def test_clock_offset_estimate_finds_the_skew(lab: Any, vp: str) -> None:
    async def go(s: Any) -> Any:
        info = await s.info()
        t_local = time.time_ns()
        return await s.clock_offset(16), info, t_local
    off, info, t_local = _run(_attached(lab, vp, go))
    est_ms = off.offset_ns / 1e6
    print(f"\n{vp}: configured skew {SKEW_MS[vp]:+.1f} ms, estimated {est_ms:+.3f} ms (rtt {off.rtt_ns / 1e6:.3f} ms)")
    assert abs(est_ms - SKEW_MS[vp]) < 3.0
    clock_ns = info.clock_ns if hasattr(info, "clock_ns") else info["clock_ns"]
    assert abs((clock_ns - t_local) / 1e6 - SKEW_MS[vp]) < 20.0  # Info's clock is the skewed one too


def test_ping_rtt_from_a_skewed_vp_is_unchanged(lab: Any) -> None:
    dst = lab.addr("sink")

    async def ping(s: Any) -> dict:
        tid = await s.task("ping", {"dst": dst, "attempts": 3, "wait_probe": 0.1})
        async for n in s.notifications(timeout=10):
            if n.kind == "taskres" and n.task == tid:
                assert n.error is None, n.error
                return {"result": n.result, "time_ns": n.time_ns, "local_ns": time.time_ns()}
        raise AssertionError("no task result")
    out = {vp: _run(_attached(lab, vp, ping)) for vp in ("vp-fast", "vp-true")}
    for vp, o in out.items():
        rtts = [r["rtt"] for r in o["result"]["responses"]]
        print(f"\n{vp}: ping rtts {rtts} ms")
        assert len(rtts) == 3
        assert 2 * DELAY_MS - 1.0 <= min(rtts) < 2 * DELAY_MS + 5.0, (vp, rtts)
        # the task result's time is in the VP's clock
        assert abs((o["time_ns"] - o["local_ns"]) / 1e6 - SKEW_MS[vp]) < 20.0
    fast = min(r["rtt"] for r in out["vp-fast"]["result"]["responses"])
    true = min(r["rtt"] for r in out["vp-true"]["result"]["responses"])
    assert abs(fast - true) < 2.0


_RECEIVER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 35, 1)  # SO_TIMESTAMPNS
s.bind(("0.0.0.0", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(10)
data, anc, _f, _a = s.recvmsg(2048, 256)
ts = [int.from_bytes(d[:8], "little") * 10**9 + int.from_bytes(d[8:16], "little") for _l, _t, d in anc]
print(json.dumps({"data": data.decode(), "rx_ns": ts[0] if ts else time.time_ns()}), flush=True)
"""


@pytest.mark.parametrize("vp", ["vp-fast", "vp-slow"])
def test_scheduled_send_leaves_when_intended(lab: Any, vp: str) -> None:
    """``at`` is read in the VP's clock: at = intended real time + offset estimate."""
    rp = lab.popen("sink", [sys.executable, "-c", _RECEIVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                   text=True)
    try:
        port = int(rp.stdout.readline())
        dst = lab.addr("sink")

        async def go(s: Any) -> tuple[int, int, Any]:
            off = await s.clock_offset(8)
            sock = await s.nopen("udp")
            intended = time.time_ns() + 300_000_000
            at = intended + off.offset_ns
            await s.nsend(sock, b"skewed", dst=dst, port=port, at=at, tag=7)
            async for n in s.notifications(timeout=5):
                if n.kind == "ntag" and n.tag == 7:
                    return intended, at, n
            raise AssertionError("no ntag")
        intended, at, ntag = _run(_attached(lab, vp, go))
        line = rp.stdout.readline()
        rx = json.loads(line)
    finally:
        rp.kill()
        rp.wait()
    late_ms = (rx["rx_ns"] - intended) / 1e6
    print(f"\n{vp}: arrived {late_ms:+.3f} ms after the intended real time (one-way delay {DELAY_MS} ms); "
          f"NTag tx {(ntag.time_ns - at) / 1e6:+.3f} ms after at (VP clock)")
    assert rx["data"] == "skewed"
    assert DELAY_MS - 1.0 <= late_ms < DELAY_MS + 8.0
    assert ntag.error is None and 0 <= (ntag.time_ns - at) / 1e6 < 8.0  # the stamp is in the VP's clock


def test_bad_skew_is_refused() -> None:
    from marionet.lab.spec import SpecError
    with pytest.raises(SpecError, match="clock_skew_ms"):
        parse_dict({"vp": [{"name": "a", "clock_skew_ms": "50ms"}], "host": [{"name": "b"}],
                    "link": [{"a": "a", "b": "b"}]})
    with pytest.raises(SpecError, match="clock_skew_ms"):
        parse_dict({"vp": [{"name": "a", "clock_skew_ms": 1e9}], "host": [{"name": "b"}],
                    "link": [{"a": "a", "b": "b"}]})
