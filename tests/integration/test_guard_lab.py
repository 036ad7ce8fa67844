"""Nothing the guard blocks leaves the VP.

Path: client – r1 – r2 – r3 – target (namespaces, see ``pathlab``). An
in-process endpoint with the operator's policy runs in the client
namespace; its sessions are anonymous (plain TCP on the namespace's
loopback), so the policy's ``[anonymous]`` grant is what they hold: UDP and
ICMP to the target only, 50 packets/s, ping (≤ 3 attempts) and trace.
An AF_PACKET capture in r1 — the VP's outside link — records every IPv4
packet the VP sends while the tests try what the guard must refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time

import pytest

from marionet.client.errors import GuardDeniedError
from tests.integration.test_endpoint_paths import icmp_echo, ipv4_udp

pytestmark = [pytest.mark.root, pytest.mark.slow]

ETH_P_ALL = 0x0003


class Capture:
    """Every IPv4 packet seen on r1's interfaces, from a thread."""

    def __init__(self, netns: str) -> None:
        from . import pathlab

        with pathlab.inside(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.settimeout(0.2)
        self.packets: list[tuple[str, str, int, bytes]] = []  # (src, dst, proto, ip packet)
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                frame, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            if addr[2] == socket.PACKET_OUTGOING or len(frame) < 34 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
            self.packets.append((socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20]), ip[9], ip))

    def to(self, dst: str) -> list[bytes]:
        return [p for s, d, _, p in self.packets if d == dst]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture(scope="module")
def path():
    from . import pathlab

    with pathlab.linear(3) as p:
        yield p


@contextlib.asynccontextmanager
async def guarded(path, tmp_path, extra: str = "", protocols: str = '["udp", "raw:1", "capture"]'):
    target = path.target(4)
    policy = f"""
[anonymous]
protocols = {protocols}
dst = ["{target}/32"]
rate = {{ pps = 50, burst_packets = 50, excess = "deny" }}
primitives = {{ ping = {{ attempts = 3 }}, trace = {{}} }}
[audit]
file = "{tmp_path / 'audit.jsonl'}"
{extra}
"""
    async with guarded_with(path, tmp_path, policy) as got:
        yield got


@contextlib.asynccontextmanager
async def guarded_with(path, tmp_path, policy_text: str):
    """An endpoint under ``policy_text`` in the client namespace, and an anonymous session to it."""
    from . import pathlab

    from marionet import aio
    from marionet.endpoint.daemon import Endpoint, EndpointConfig
    from marionet.guard.setup import load_guard

    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    rt = load_guard(policy)
    with pathlab.inside(path.netns("client")):
        ep = Endpoint(EndpointConfig(name="guarded", engine="process"), rt.guard, trust=rt.trust, audit=rt.audit)
        srv = await ep.serve("127.0.0.1", 0, None)
        addr = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        s = await aio.connect(addr, insecure=True)
        try:
            yield s, ep, addr
        finally:
            await s.close()
            await ep.close()
            rt.stop()


async def test_nothing_the_guard_blocks_leaves_the_vp(path, tmp_path):
    target, denied = path.target(4), path.hop_addr(2, 4)
    own = path.client_addr(4)
    cap = Capture(path.netns("r1"))
    try:
        async with guarded(path, tmp_path) as (s, ep, _):
            # destination outside the granted prefix: UDP and ICMP
            u = await s.nopen("udp")
            with pytest.raises(GuardDeniedError) as ei:
                await s.nsend(u, b"denied-dst", dst=denied, port=33434)
            assert ei.value.rule == "privileges.dst"
            r = await s.nopen("raw", ipproto=1)
            with pytest.raises(GuardDeniedError):
                await s.nsend(r, icmp_echo(1, b"denied-icmp"), dst=denied)
            # raw without that raw privilege (raw UDP; full-header mode is checked per send)
            with pytest.raises(GuardDeniedError) as ei:
                await s.nopen("raw", ipproto=17)
            assert ei.value.rule.startswith("privileges.protocols")
            # the allowed sends do go out (so the capture can see them)
            await s.nsend(u, b"allowed-udp", dst=target, port=33434)
            await s.nsend(r, icmp_echo(2, b"allowed-icmp"), dst=target)
            # rate: 200 sends at once against 50 pps, burst 50, excess denied
            accepted = 0
            t0 = time.monotonic()
            for i in range(200):
                try:
                    await s.nsend(u, b"rate-%03d" % i, dst=target, port=33435)
                    accepted += 1
                except GuardDeniedError as exc:
                    assert exc.rule == "privileges.rate"
            elapsed = time.monotonic() - t0
            # the burst of 50 less the two sends above, plus what refilled meanwhile
            assert 48 <= accepted <= 48 + int(50 * elapsed) + 1, (accepted, elapsed)
            # a primitive that would break the policy fails with the reason, sending nothing
            with pytest.raises(GuardDeniedError) as ei:
                await s.task("trace", {"dst": denied, "attempts": 1, "wait_timeout": 0.5})
            assert ei.value.rule == "privileges.dst" and denied in ei.value.reason
        await asyncio.sleep(0.5)
    finally:
        cap.close()
    assert not cap.to(denied), f"{len(cap.to(denied))} packets to the denied {denied} left the VP"
    to_target = cap.to(target)
    assert any(b"allowed-udp" in p for p in to_target) and any(b"allowed-icmp" in p for p in to_target)
    rate = [p for p in to_target if b"rate-" in p]
    assert len(rate) == accepted, (len(rate), accepted)
    assert all(s == own for s, d, _, _ in cap.packets if d == target)


async def test_spoofed_source_never_leaves(path, tmp_path):
    target, own = path.target(4), path.client_addr(4)
    cap = Capture(path.netns("r1"))
    try:
        async with guarded(path, tmp_path, protocols='["udp", "raw:17"]') as (s, ep, _):
            r = await s.nopen("raw", ipproto=17, hdrincl=True)
            with pytest.raises(GuardDeniedError) as ei:
                await s.nsend(r, ipv4_udp("198.51.100.7", target, 40000, 33434, 64, b"spoofed"))
            assert ei.value.rule == "privileges.spoof", ei.value
            with pytest.raises(GuardDeniedError) as ei:  # the header's protocol byte is checked too
                bad = bytearray(ipv4_udp(own, target, 40000, 33434, 64, b"proto"))
                bad[9] = 6
                await s.nsend(r, bytes(bad))
            await s.nsend(r, ipv4_udp(own, target, 40000, 33434, 64, b"own-src"))
            with pytest.raises(GuardDeniedError) as ei:  # a socket bound to a foreign source
                await s.nopen("udp", laddr="198.51.100.7")
            assert ei.value.rule == "privileges.spoof"
        await asyncio.sleep(0.3)
    finally:
        cap.close()
    assert not [p for src, _, _, p in cap.packets if src == "198.51.100.7"]
    assert not [p for p in cap.to(target) if b"proto" in p]
    assert [p for p in cap.to(target) if b"own-src" in p]


async def test_primitives_are_bounded_by_the_policy(path, tmp_path):
    target, denied = path.target(4), path.hop_addr(2, 4)
    cap = Capture(path.netns("r1"))
    try:
        async with guarded(path, tmp_path) as (s, ep, _):
            for prim, params, rule in (("trace", {"dst": denied}, "privileges.dst"),
                                       ("ping", {"dst": denied, "attempts": 1}, "privileges.dst"),
                                       ("ping", {"dst": target, "attempts": 5}, "privileges.primitives.ping.attempts"),
                                       ("dns", {"qname": "example.org", "server": target}, "privileges.primitives")):
                with pytest.raises(GuardDeniedError) as ei:
                    await s.task(prim, params)
                assert ei.value.rule.startswith(rule), (prim, ei.value.rule, ei.value.reason)
            await s.task("ping", {"dst": target, "attempts": 2, "wait_probe": 0.1, "wait_timeout": 1})
            n = await s.next_notification(10)
            while n is not None and n.kind != "taskres":
                n = await s.next_notification(10)
            assert n is not None and n.error is None, n
            denials = [r for r in ep.auditor.recent if r.get("event") == "deny"]
            assert len(denials) == 4 and {r["op"] for r in denials} == {"task"}
    finally:
        cap.close()
    assert not cap.to(denied)
    assert len([p for p in cap.to(target) if p[9] == 1]) == 2  # the two granted echo requests


async def test_midar_probes_keep_to_the_granted_rate(path, tmp_path):
    """MIDAR's discovery task asks for 200 probes/s; the guard grants 50 (burst 20, excess denied). The probes
    beyond the grant are not sent, each says why, the result carries the error, and MIDAR's sample conversion
    counts only what went out (its phase statistics then report the rest as not sent)."""
    from marionet.measure.midar import samples_from_dealias

    from tests.integration.labclient import task_result

    target = path.target(4)
    policy = f"""
[anonymous]
protocols = ["raw:1"]
dst = ["{target}/32"]
rate = {{ pps = 50, burst_packets = 20, excess = "deny" }}
primitives = {{ midardisc = {{}} }}
"""
    cap = Capture(path.netns("r1"))
    try:
        async with guarded_with(path, tmp_path, policy) as (s, ep, _):
            off = await s.clock_offset(samples=3)
            n = 100
            sched = [(i * 5_000_000, 0, 0) for i in range(n)]                # 200 probes/s for 0.5 s
            d = await task_result(s, "midardisc", {
                "probedefs": [{"method": "icmp-echo", "dst": target}], "schedule": sched,
                "startat": time.time_ns() + off.offset_ns + 500_000_000, "wait_timeout": 1})
    finally:
        cap.close()
    sent = [p for p in d.probes if p.tx_ns is not None]
    unsent = [p for p in d.probes if p.tx_ns is None]
    assert len(d.probes) == n
    assert 20 <= len(sent) <= 20 + 50 * 0.5 + 5, len(sent)        # burst + rate × duration, a little slack
    assert unsent and all(p.error and "send failed" in p.error for p in unsent), unsent[:1]
    assert d.error and "probe" in d.error
    echoes = [p for p in cap.to(target) if p[9] == 1]
    assert len(echoes) == len(sent)                                 # nothing beyond the grant left the VP
    assert len(samples_from_dealias(d, "guarded")) == len(sent)
