"""Every ping method and the IPv4 RR / timestamp options on a namespace path
(client – r1 – r2 – r3 – target), against Debian's scamper in the same
namespace and against the lab's truth.

For each method, IPv4 and IPv6, marionet's ping — native placement
(``native_session`` in the client namespace) and endpoint placement (a
Task on an in-process Endpoint there) — must draw what ``scamper -c "ping
-P METHOD -c 3"`` draws: the same number of probes and answered probes,
replies from the same address of the same kind (ICMP type/code or TCP
flags) and the same JSON fields per reply. scamper 20211212 has no
udp-sport / tcp-syn-sport (newer scamper does): those are compared with
udp / tcp-syn, whose replies they must share. Record route and IP
timestamps must list the routers the lab built, as scamper's do.
scamper runs under ``nsenter --net`` (not ``ip netns exec``): the lab's
per-namespace resolv.conf has no nameserver, and scamper 20211212 exits
on that.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from typing import Any

import pytest

from marionet.lab import linear_path
from marionet.measure.ping import SUPPORTED_METHODS, ping
from marionet.results import Ping, from_json, to_json

from .labclient import client_endpoint, task_result

pytestmark = [pytest.mark.root, pytest.mark.slow]

SCAMPER = shutil.which("scamper")
#: scamper 20211212's stand-in for the methods it does not have
SCAMPER_METHOD = {"udp-sport": "udp", "tcp-syn-sport": "tcp-syn"}
# Fields marionet writes that scamper 20211212 does not (newer scamper does).
_NEWER_KEYS = {"reply_tos", "tos", "marionet"}
PARAMS = {"attempts": 3, "wait_probe": 0.1, "wait_timeout": 1.0}


def methods(family: int) -> list[str]:
    return [m for m in SUPPORTED_METHODS if not (family == 6 and m == "icmp-time")]


@pytest.fixture(scope="module")
def lab() -> Any:
    if SCAMPER is None:
        pytest.skip("scamper not installed (apt-get install -y scamper)")
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(linear_path(3, name="pmeth")) as lab:
        yield lab


def scamper_ping(lab: Any, family: int, method: str, opts: str = "") -> Ping:
    dst = lab.addr("target", family)
    cmd = f"ping -P {SCAMPER_METHOD.get(method, method)} -c 3 -i 0.1 {opts}".strip()
    cp = subprocess.run(["nsenter", f"--net=/run/netns/{lab.netns('client')}", SCAMPER, "-O", "json",
                         "-c", cmd, "-i", dst], capture_output=True, text=True, timeout=60)
    pings = [json.loads(x) for x in cp.stdout.splitlines() if '"type":"ping"' in x]
    assert cp.returncode == 0 and len(pings) == 1, (cmd, cp.returncode, cp.stderr[-300:])
    return from_json(pings[0])


async def task_ping(session: Any, params: dict) -> Ping:
    return await task_result(session, "ping", params, 30)


async def both(lab: Any, **params: Any) -> list[tuple[str, Ping]]:
    """The ping in the native and the endpoint placement."""
    async with client_endpoint(lab) as (session, native):
        return [("native", await ping(native, **params)), ("endpoint", await task_ping(session, params))]


def kinds(p: Ping) -> list[tuple]:
    return sorted((r.attempt, str(r.src), r.reply_proto, r.icmp_type, r.icmp_code, r.tcp_flags)
                  for r in p.replies)


def reply_keys(p: Ping) -> set[frozenset]:
    return {frozenset(set(r) - _NEWER_KEYS) for r in to_json(p)["responses"]}


def ingress(lab: Any, k: int) -> str:
    """Router k's client-facing address: what the lab's truth says hop k
    answers from."""
    return _path(lab)[k - 1]


def _path(lab: Any) -> list[str]:
    dst = lab.addr("target", 4)
    (p,) = [p for p in lab.truth()["paths"] if p["src"] == "client" and p["dst"] == "target"
            and p["family"] == 4 and p["dst_addr"] == dst]
    return p["paths"][0]


def egress(lab: Any, k: int) -> str:
    """Router k's target-facing address (what RR records on the way out)."""
    (a,) = [a for a in lab.addrs(f"r{k}", 4) if a not in _path(lab)]
    return a


@pytest.mark.parametrize("family", [4, 6])
async def test_every_method_draws_what_scamper_draws(lab, family):
    dst = lab.addr("target", family)
    for method in methods(family):
        ref = scamper_ping(lab, family, method)
        for where, p in await both(lab, dst=dst, method=method, **PARAMS):
            at = (family, method, where)
            assert p.method == method and p.ping_sent == ref.ping_sent == 3, at
            assert p.nreplies == ref.nreplies and p.ndups == ref.ndups == 0, (at, p.replies, ref.replies)
            assert kinds(p) == kinds(ref), at
            assert reply_keys(p) == reply_keys(ref), at
            assert all(r.is_from_target() for r in p.replies), at
            if p.replies:
                assert {r.tx_ts_source for r in p.replies} == {r.rx_ts_source for r in p.replies} == {"kernel"}
            if method.startswith("tcp"):
                assert p.tcp_seq is not None and p.tcp_ack is not None, at
            if method == "icmp-time":
                for r in p.replies:
                    assert r.tsreply is not None and r.is_icmp_tsreply(), at
                    now = (dt.datetime.now(dt.timezone.utc) - dt.datetime.now(dt.timezone.utc).replace(
                        hour=0, minute=0, second=0, microsecond=0)) // dt.timedelta(milliseconds=1)
                    for t in (r.tsreply.tso, r.tsreply.tsr, r.tsreply.tst):  # ms since midnight UTC
                        assert min(abs(now - t), 86_400_000 - abs(now - t)) < 60_000, (at, r.tsreply)
    assert kinds(scamper_ping(lab, family, "tcp-rst")) == []  # a RST draws nothing


@pytest.mark.parametrize("method", ["icmp-echo", "udp", "tcp-ack"])
async def test_record_route_lists_the_routers(lab, method):
    dst = lab.addr("target", 4)
    ref = scamper_ping(lab, 4, method, "-R")
    fwd = [egress(lab, k) for k in (1, 2, 3)]
    back = [ingress(lab, k) for k in (3, 2, 1)]
    for where, p in await both(lab, dst=dst, method=method, ip_rr=True, **PARAMS):
        at = (method, where)
        assert p.flags == ("v4rr",) and p.probe_size == ref.probe_size, at
        assert p.nreplies == ref.nreplies == 3, at
        for r, s in zip(sorted(p.replies, key=lambda r: r.attempt), ref.replies):
            if method == "tcp-ack":  # scamper records RR from ICMP replies only
                assert r.v4rr is None and s.v4rr is None, at
                continue
            rr = [str(a) for a in r.v4rr]
            assert rr == [str(a) for a in s.v4rr], at
            assert rr[:4] == [*fwd, dst], at  # out to the target, which records itself
            if method == "icmp-echo":  # the echo reply keeps recording on its way back
                assert rr[5:8] == back and rr[8] == lab.addr("client", 4), at
            else:  # an ICMP error: RR of the quoted probe, forward path only
                assert len(rr) == 4, at
        back_json = from_json(to_json(p))
        assert [r.v4rr for r in back_json.replies] == [r.v4rr for r in p.replies]


@pytest.mark.parametrize("ts", ["tsonly", "tsandaddr", "tsprespec"])
async def test_ip_timestamps_name_the_routers(lab, ts):
    dst = lab.addr("target", 4)
    hops = [ingress(lab, k) for k in (1, 2, 3)] + [dst]
    ip_ts = f"tsprespec={hops[1]},{dst}" if ts == "tsprespec" else ts
    ref = scamper_ping(lab, 4, "icmp-echo", f"-T {ip_ts}")
    for where, p in await both(lab, dst=dst, method="icmp-echo", ip_ts=ip_ts, **PARAMS):
        at = (ts, where)
        assert p.probe_size == ref.probe_size and p.nreplies == ref.nreplies == 3, at
        assert p.flags == ref.flags and p.probe_tsps == ref.probe_tsps, at
        for r, s in zip(sorted(p.replies, key=lambda r: r.attempt), ref.replies):
            assert r.v4ts is not None and s.v4ts is not None, at
            assert len(r.v4ts.tss) == len(s.v4ts.tss), at
            if ts == "tsonly":
                assert r.v4ts.ips is None and len(r.v4ts.tss) == 9, at  # every slot filled
            else:
                ips = [str(a) for a in r.v4ts.ips]
                assert ips == [str(a) for a in s.v4ts.ips], at
                assert ips == (hops if ts == "tsandaddr" else [hops[1], dst]), at
            assert list(r.v4ts.tss) == sorted(r.v4ts.tss), at  # stamped in path order
        assert from_json(to_json(p)).replies[0].v4ts == p.replies[0].v4ts


async def test_udp_error_carries_the_forward_timestamps(lab):
    """An ICMP error's timestamps come from the quoted probe: the forward
    path up to the target, as scamper reports them."""
    dst = lab.addr("target", 4)
    ref = scamper_ping(lab, 4, "udp", "-T tsandaddr")
    hops = [ingress(lab, k) for k in (1, 2, 3)] + [dst]
    for where, p in await both(lab, dst=dst, method="udp", ip_ts="tsandaddr", **PARAMS):
        assert p.nreplies == ref.nreplies == 3, where
        for r in p.replies:
            assert r.is_icmp_unreach_port() and [str(a) for a in r.v4ts.ips] == hops, where


async def test_ipv6_refuses_ip_options_and_icmp_time(lab):
    async with client_endpoint(lab) as (session, native):
        dst = lab.addr("target", 6)
        for kw in (dict(ip_rr=True), dict(ip_ts="tsonly"), dict(method="icmp-time")):
            with pytest.raises(ValueError, match="IPv6|IPv4"):
                await ping(native, dst, **kw)
        assert native.sockets == {}

