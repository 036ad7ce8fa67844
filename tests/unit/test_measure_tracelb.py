"""The MDA core (TracelbProbing) against a simulated network of per-flow
balancers (the lab's flow hash), plan validation, and the scamper JSON mapping."""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import subprocess
from typing import Callable

import pytest

from marionet.measure import probes as P
from marionet.measure.tracelb import CONFIDENCE_TABLE, TracelbProbing, n_k, plan_tracelb
from marionet.results import Tracelb, TracelbStop, from_json, loads, to_json
from marionet.results.jsonfmt import dumps

SRC, DST = "10.0.0.1", "10.9.9.9"


class SimNet:
    """``layers[i]``: the addresses at TTL i+1 (then DST).  Where the width
    changes a per-flow balancer picks the branch by a keyed hash of (src, dst,
    proto, first transport word) — what the lab's ``flow`` balancer hashes;
    equal widths continue the same branch.  ``silent`` addresses never answer."""

    def __init__(self, layers: list[list[str]], *, silent: set[str] = frozenset(), salt: int = 0) -> None:
        self.layers = layers  # per TTL, the addresses; branch i continues at branch i mod width
        self.silent = silent
        self.salt = salt
        self.sent = 0

    def path(self, pkt: P.IPPacket, raw: bytes) -> list[str]:
        ihl = (raw[0] & 15) * 4
        key = raw[12:20] + bytes([pkt.proto]) + raw[ihl:ihl + 4] + self.salt.to_bytes(4, "big")
        out: list[str] = []
        prev: list[str] | None = None
        branch = 0
        for i, layer in enumerate(self.layers):
            if prev is None or len(layer) != len(prev):  # a balancer; equal widths: parallel branches
                h = hashlib.blake2b(key + bytes([i]), digest_size=8).digest()
                branch = int.from_bytes(h, "big") % len(layer)
            out.append(layer[branch])
            prev = layer
        return out + [DST]

    def answer(self, raw: bytes) -> bytes | None:
        self.sent += 1
        pkt = P.parse_ip(raw)
        hops = self.path(pkt, raw)
        ttl = pkt.ttl
        if ttl > len(hops):
            ttl = len(hops)
        who = hops[ttl - 1]
        if who in self.silent:
            return None
        quote = bytearray(raw[:28])
        quote[8] = 1  # the TTL the router saw
        if who == DST:
            body = P.icmp_message(3, 3, 0, bytes(quote))
        else:
            body = P.icmp_message(11, 0, 0, bytes(quote))
        return P.ipv4_header(who, SRC, 1, len(body), ttl=64 - ttl) + body


def run(net: SimNet, **kw) -> Tracelb:
    return run_core(net, **kw)[1]


def run_core(net: SimNet, **kw) -> tuple[TracelbProbing, Tracelb]:
    kw.setdefault("wait_probe", 0)
    kw.setdefault("wait_timeout", 1)
    plan = plan_tracelb(DST, **kw)
    mda = TracelbProbing(plan, SRC)
    t = 0
    while not mda.done:
        assert mda.wants_probe()
        pid, _ttl, data = mda.probe(t)
        mda.sent(pid, t, "kernel")
        reply = net.answer(data)
        if reply is None:
            mda.expired(pid)
        else:
            assert mda.received(P.parse_packet(reply), t + 1000)
        t += 10_000
    return mda, mda.result(start_ns=1_700_000_000_000_000_000)


def diamond(width: int, length: int = 1) -> list[list[str]]:
    layers = [["10.1.0.1"]]
    for s in range(length):
        layers.append([f"10.2.{w}.{s + 1}" for w in range(width)])
    layers.append([f"10.3.{w}.1" for w in range(width)])  # the exit router answers per branch
    return layers


def truth(layers: list[list[str]]) -> set[tuple[str, str]]:
    out = set()
    for a, b in zip(layers, layers[1:] + [[DST]]):
        for i, x in enumerate(b):
            for j, y in enumerate(a):
                if len(a) == len(b) and i != j:
                    continue
                out.add((y, x))
    return out


def test_stopping_table_is_scampers():
    assert CONFIDENCE_TABLE[95][1:17] == (6, 11, 16, 21, 27, 33, 38, 44, 51, 57, 63, 70, 76, 83, 90, 96)
    assert CONFIDENCE_TABLE[99][1:17] == (8, 15, 21, 28, 36, 43, 51, 58, 66, 74, 82, 90, 98, 106, 115, 123)
    assert n_k(95, 0) == 1 and n_k(95, 2) == 11
    # the union bound asks for one more at k = 7, 8, 13, 16 (measurement.md): we use the exact values
    ub = {k: math.ceil(math.log(0.05 / (k + 1)) / math.log(k / (k + 1))) for k in range(1, 17)}
    assert [k for k in ub if ub[k] != n_k(95, k)] == [7, 8, 13, 16]


@pytest.mark.parametrize("bad, msg", [
    ({"confidence": 90}, "confidence"), ({"method": "udp-paris"}, "method"), ({"attempts": 0}, "attempts"),
    ({"attempts": 6}, "attempts"), ({"gaplimit": 0}, "gaplimit"), ({"probec_max": 10}, "probec_max"),
    ({"firsthop": 255}, "firsthop"), ({"wait_probe": -1}, "wait_probe"), ({"wait_timeout": 0}, "wait_timeout"),
    ({"sport": 70000}, "sport"), ({"method": "icmp-echo", "dport": 80}, "dport"), ({"size": 20}, "size"),
    ({"tos": 256}, "tos"),
])
def test_plan_rejects_bad_values(bad, msg):
    with pytest.raises(ValueError, match=msg):
        plan_tracelb(DST, **bad)
    with pytest.raises(ValueError):
        plan_tracelb("not an address")


def test_plan_defaults_are_scampers():
    p = plan_tracelb(DST)
    assert (p.method, p.confidence, p.attempts, p.gaplimit, p.firsthop, p.probec_max) == \
        ("udp-dport", 95, 2, 3, 1, 3000)
    assert p.wait_probe_ns == 250_000_000 and p.wait_timeout_ns == 5_000_000_000 and p.dport == 33435
    assert p.size == 44
    p.check_task()
    with pytest.raises(ValueError, match="tracelb could run"):
        plan_tracelb(DST, gaplimit=100, wait_timeout=10).check_task()


@pytest.mark.parametrize("width,length", [(2, 1), (2, 2), (4, 2), (8, 1)])
@pytest.mark.parametrize("method", ["udp-dport", "udp-sport", "icmp-echo", "tcp-sport"])
def test_finds_every_link_of_a_diamond(width, length, method):
    """Fixed flows and balancer keys, so the outcome is fixed: at 99% a miss
    is possible (about 1% per hop here) and these flows do not miss."""
    layers = diamond(width, length)
    kw = {} if method == "icmp-echo" else {"sport": 40000}
    t = run(SimNet(layers, salt=1), method=method, confidence=99, **kw)
    assert t.stop_reason == TracelbStop.COMPLETED
    links = {(str(a.near.addr), str(a.far.addr)) for a in t.links()}
    assert links == truth(layers), (method, links ^ truth(layers))
    assert t.flow_links() == links
    for ln in t.links():
        for ps in ln.probesets:
            for pr in ps.probes:
                assert pr.replies and all(r.src == ln.far.addr for r in pr.replies)
    # node control: every probe at TTL t+1 of a link went on a flow seen at the near node at TTL t
    # — except links into the destination taken from a sibling's probe (scamper's destination rule):
    # their probe went on a flow seen at another node of the near node's TTL.
    seen = {(pr.flowid, pr.ttl): str(ln.far.addr) for ln in t.links() for pr in ln.probesets[0].probes}
    last = {a for a in layers[-1]}
    for ln in t.links():
        for pr in ln.probesets[0].probes:
            if pr.ttl > 2:
                at = seen.get((pr.flowid, pr.ttl - 1), str(ln.near.addr))
                assert at == str(ln.near.addr) or (str(ln.far.addr) == DST and {at, str(ln.near.addr)} <= last)
    # one probe at the destination hop however many exit interfaces (as scamper)
    assert sum(1 for ln in t.links() if str(ln.far.addr) == DST
               for pr in ln.probesets[0].probes) >= len(layers[-1])
    assert len({(pr.flowid, pr.ttl) for ln in t.links() if str(ln.far.addr) == DST
                for pr in ln.probesets[0].probes}) == 1


def test_per_node_stopping_rule():
    """r1 with 2 next hops: exactly n_2 = 11 answered flows probed at TTL 2;
    each diamond router with one next hop: n_1 = 6 flows known to reach it
    (short ones get flows brought forward: new flows probed at its TTL)."""
    mda, t = run_core(SimNet(diamond(2, 2)), sport=40000)
    ex = {e.node: e for e in mda.explores}
    assert len(ex["10.1.0.1"].answered) == 11 and len(ex["10.1.0.1"].succ) == 2
    for level in (("10.2.0.1", "10.2.1.1"), ("10.2.0.2", "10.2.1.2")):
        for a in level:
            assert len(ex[a].succ) == 1 and ex[a].why in ("confident", "hop"), a
            # its own n_1 = 6 (more when its spare flows served the hop-level rule)
            assert ex[a].why == "hop" or len(ex[a].answered) >= 6
            for f in ex[a].answered:  # node control: each flow was seen at the node first
                assert mda.flow_at[(f, ex[a].ttl)] == a
        # nodes short of n_1 flows of their own stop when the hop's flows rule
        # out a third next hop (n_2 = 11), as scamper's clumps do
        assert sum(len(ex[a].answered) for a in level) >= 11
    # the first exit interface's flow meets the destination; the other converges on it unprobed
    assert ex["10.3.0.1"].why == "destination" and len(ex["10.3.0.1"].answered) == 1
    assert ex["10.3.1.1"].why == "converged" and not ex["10.3.1.1"].answered
    assert ex["10.3.1.1"].succ == {DST: ex["10.3.0.1"].succ[DST]}
    by_near: dict[str, set[int]] = {}
    for ln in t.links():
        by_near.setdefault(str(ln.near.addr), set()).update(p.flowid for p in ln.probesets[0].probes)
    assert len(by_near["10.1.0.1"]) >= 11  # plus flows brought forward that landed behind r1
    assert t.probec == len([p for p in mda.probes if p.error is None])


def test_destination_converges_only_over_siblings_at_the_same_distance():
    """The exit router's interfaces (replies back over the same number of
    hops) share the one probe that met the destination; an interface whose
    replies come from farther away is no sibling and gets its own probe."""
    layers = diamond(4, 1)

    class Skewed(SimNet):
        def answer(self, raw: bytes) -> bytes | None:
            out = super().answer(raw)
            if out is not None and out[12:16] == bytes(map(int, "10.3.2.1".split("."))):
                b = bytearray(out)
                b[8] -= 3  # 10.3.2.1's replies travel three more hops
                b[10:12] = b"\0\0"
                b[10:12] = P.checksum(bytes(b[:20])).to_bytes(2, "big")
                out = bytes(b)
            return out

    mda, t = run_core(SimNet(layers, salt=1), sport=40000)
    ex = {e.node: e for e in mda.explores}
    whys = sorted(ex[a].why for a in layers[-1])
    assert whys == ["converged"] * 3 + ["destination"]
    assert {ln.pair() for ln in t.links()} == truth(layers)
    mda2, t2 = run_core(Skewed(layers, salt=1), sport=40000)
    ex2 = {e.node: e for e in mda2.explores}
    assert ex2["10.3.2.1"].why == "destination" and len(ex2["10.3.2.1"].answered) == 1
    assert {ln.pair() for ln in t2.links()} == truth(layers)
    assert t2.probec == t.probec + 1


def test_meshed_hop_gets_node_control():
    """r1 → {a, b} → {c1..c4} with each of a, b balancing over all four c's:
    a and b each show four next hops, so each needs n_4 = 21 flows of its
    own (flows are brought forward), and every one of the 8 links is found."""
    layers = [["10.1.0.1"], ["10.2.0.1", "10.2.1.1"], [f"10.4.{i}.1" for i in range(4)], ["10.5.0.1"]]
    mda, t = run_core(SimNet(layers), sport=40000, confidence=99)
    assert t.is_completed()
    assert {ln.pair() for ln in t.links()} == truth(layers)
    ex = {e.node: e for e in mda.explores}
    for a in ("10.2.0.1", "10.2.1.1"):
        assert ex[a].why == "confident" and len(ex[a].answered) >= n_k(99, 4) and len(ex[a].succ) == 4
    assert t.extra["bringfwd_probes"] > 0


def test_silent_hop_makes_a_longer_link_and_gaplimit_ends_it():
    layers = [["10.1.0.1"], ["10.2.0.1"], ["10.3.0.1"]]
    t = run(SimNet(layers, silent={"10.2.0.1"}), sport=40000)
    assert t.is_completed()
    (ln,) = [ln for ln in t.links() if str(ln.near.addr) == "10.1.0.1"]
    assert str(ln.far.addr) == "10.3.0.1" and ln.length == 2
    assert not any(p.replies for p in ln.probesets[0].probes)
    assert [p.attempt for p in ln.probesets[0].probes] == [0, 1]  # attempts=2 on the lost flow
    dark = run(SimNet([["10.1.0.1"], ["a"], ["b"], ["c"]], silent={"a", "b", "c", DST}), sport=40000,
               gaplimit=2, attempts=1)
    (ln,) = list(dark.links())
    assert ln.far is None and ln.length == 1 and dark.is_completed()
    assert dark.to_text().splitlines()[1] == "10.1.0.1 -> *"


def test_probe_budget_stops_the_run():
    t = run(SimNet(diamond(16, 1)), sport=40000, probec_max=50)
    assert t.stop_reason == TracelbStop.PROBEC_MAX and t.probec == 50


def test_sans_io_failure_rate_matches_theory():
    """2-way balancer at TTL 2, 95%: the second path is missed when the first
    6 flows all hash to one side: 2 * 2**-6. 4000 runs with random sports."""
    layers = [["10.1.0.1"], ["10.2.0.1", "10.2.1.1"], ["10.3.0.1"]]
    rng = random.Random(7)
    n, miss = 4000, 0
    for i in range(n):
        t = run(SimNet(layers, salt=rng.randrange(1 << 20)), sport=rng.randrange(1024, 60000))
        fars = {str(ln.far.addr) for ln in t.links() if str(ln.near.addr) == "10.1.0.1"}
        miss += len(fars) < 2
    p = 2 * 2 ** -6
    sd = math.sqrt(n * p * (1 - p))
    assert abs(miss - n * p) < 3 * sd, (miss, n * p)


def test_json_round_trip_and_text():
    t = run(SimNet(diamond(2, 1)), sport=40000)
    d = to_json(t)
    assert d["type"] == "tracelb" and d["version"] == "0.1" and d["method"] == "udp-dport"
    assert d["probec"] == t.probec and d["nodec"] == t.nodec and d["linkc"] == t.linkc
    assert d["wait_probe"] == 0 and d["confidence"] == 95
    back = loads(dumps(t))
    assert isinstance(back, Tracelb)
    assert {ln.pair() for ln in back.links()} == {ln.pair() for ln in t.links()}
    assert back.flow_links() == t.flow_links() and back.probec == t.probec
    assert back.stop_reason == TracelbStop.COMPLETED
    for a, b in zip(t.links(), back.links()):
        assert [(p.flowid, p.ttl, p.tx_ns // 1000) for p in a.probesets[0].probes] == \
               [(p.flowid, p.ttl, p.tx_ns // 1000) for p in b.probesets[0].probes]
    assert dumps(back) == dumps(t)
    text = t.to_text().splitlines()
    assert text[0].startswith(f"tracelb from {SRC} to {DST}, {t.nodec} nodes, {t.linkc} links")
    assert set(text[1:]) == {f"{a} -> {b}" for a, b in t.flow_links()}


# What Debian scamper 20211212 wrote for `tracelb -P udp-dport -c 95` across a
# 2-wide, 2-long lab diamond (trimmed to two probes per address): it explores
# the diamond as a "clump", one link whose middle probe sets hold both branches.
SCAMPER = {"type": "tracelb", "version": "0.1", "userid": 0, "method": "udp-dport", "src": "10.1.0.1",
           "dst": "10.1.1.2", "sport": 46434, "dport": 33435,
           "start": {"sec": 1796635015, "usec": 169965, "ftime": "2026-12-07 09:16:55"}, "probe_size": 44,
           "firsthop": 1, "attempts": 2, "confidence": 95, "tos": 0, "gaplimit": 3, "wait_timeout": 5,
           "wait_probe": 250, "probec": 35, "probec_max": 3000, "nodec": 2, "linkc": 1, "nodes": [
               {"addr": "10.1.0.2", "q_ttl": 1, "linkc": 1, "links": [
                   [{"addr": "10.1.2.2", "probes": [
                       {"tx": {"sec": 1796635015, "usec": 420990}, "replyc": 1, "ttl": 2, "attempt": 0,
                        "flowid": 33435, "replies": [{"rx": {"sec": 1796635015, "usec": 421067}, "ttl": 63,
                                                      "rtt": 0.077, "ipid": 62918, "icmp_type": 11,
                                                      "icmp_code": 0, "icmp_q_tos": 0, "icmp_q_ttl": 1}]}]},
                    {"addr": "10.1.5.2", "probes": [
                        {"tx": {"sec": 1796635015, "usec": 671613}, "replyc": 1, "ttl": 2, "attempt": 0,
                         "flowid": 33436, "replies": [{"rx": {"sec": 1796635015, "usec": 671678}, "ttl": 63,
                                                       "rtt": 0.065, "ipid": 57753, "icmp_type": 11,
                                                       "icmp_code": 0, "icmp_q_tos": 0, "icmp_q_ttl": 1}]}]}],
                   [{"addr": "10.1.3.2", "probes": [
                       {"tx": {"sec": 1796635018, "usec": 177514}, "replyc": 1, "ttl": 3, "attempt": 0,
                        "flowid": 33435, "replies": [{"rx": {"sec": 1796635018, "usec": 177598}, "ttl": 62,
                                                      "rtt": 0.084, "ipid": 34967, "icmp_type": 11,
                                                      "icmp_code": 0, "icmp_q_tos": 0, "icmp_q_ttl": 1}]}]},
                    {"addr": "10.1.6.2", "probes": [
                        {"tx": {"sec": 1796635018, "usec": 427887}, "replyc": 1, "ttl": 3, "attempt": 0,
                         "flowid": 33436, "replies": [{"rx": {"sec": 1796635018, "usec": 427968}, "ttl": 62,
                                                       "rtt": 0.081, "ipid": 27360, "icmp_type": 11,
                                                       "icmp_code": 0, "icmp_q_tos": 0, "icmp_q_ttl": 1}]}]}],
                   [{"addr": "10.1.1.2", "probes": [
                       {"tx": {"sec": 1796635023, "usec": 690756}, "replyc": 1, "ttl": 4, "attempt": 0,
                        "flowid": 33435, "replies": [{"rx": {"sec": 1796635023, "usec": 690856}, "ttl": 60,
                                                      "rtt": 0.100, "ipid": 382, "icmp_type": 3,
                                                      "icmp_code": 3, "icmp_q_tos": 0, "icmp_q_ttl": 1}]}]}]]}]}


def test_reads_scampers_clumped_json():
    t = from_json(json.loads(json.dumps(SCAMPER)))
    assert isinstance(t, Tracelb) and t.probec == 35 and t.confidence == 95 and t.nodec == 2
    (ln,) = list(t.links())
    assert ln.pair() == ("10.1.0.2", "10.1.1.2") and ln.length == 3
    assert ln.probesets[0].addrs() == ["10.1.2.2", "10.1.5.2"]
    r = ln.probesets[0].probes[0].replies[0]
    assert r.src == "10.1.2.2" and r.rx_ns - ln.probesets[0].probes[0].tx_ns == 77_000
    assert t.flow_links() == {("10.1.0.2", "10.1.2.2"), ("10.1.0.2", "10.1.5.2"), ("10.1.2.2", "10.1.3.2"),
                              ("10.1.5.2", "10.1.6.2"), ("10.1.3.2", "10.1.1.2"), ("10.1.6.2", "10.1.1.2")}
    again = to_json(t)
    for k in ("method", "src", "dst", "sport", "dport", "probe_size", "probec", "nodec", "linkc", "wait_probe",
              "wait_timeout"):
        assert again[k] == SCAMPER[k], k
    assert json.loads(dumps(again))["nodes"][0]["links"][0] == SCAMPER["nodes"][0]["links"][0]


@pytest.mark.skipif(shutil.which("sc_warts2json") is None, reason="needs Debian's scamper (sc_warts2json)")
@pytest.mark.parametrize("layers,method", [(diamond(2, 2), "udp-dport"), (diamond(4, 1), "icmp-echo"),
                                           ([["10.1.0.1"], ["10.2.0.1"], ["10.3.0.1"]], "tcp-sport")])
def test_warts_record_reads_back_in_scampers_tools(tmp_path, layers, method):
    """Our type-8 record, read by sc_warts2json, gives exactly our JSON."""
    from marionet.results import CycleStart, CycleStop
    from marionet.results.warts_writer import WartsWriter

    kw = {} if method == "icmp-echo" else {"sport": 40000}
    silent = {"10.2.0.1"} if method == "tcp-sport" else set()
    t = run(SimNet(layers, silent=silent, salt=1), method=method, userid=7, **kw)
    path = tmp_path / "x.warts"
    with open(path, "wb") as fh:
        w = WartsWriter(fh)
        w.write(CycleStart(start_time=1_700_000_000, hostname="h"))
        w.write(t)
        w.write(CycleStop(stop_time=1_700_000_001))
    cp = subprocess.run(["sc_warts2json", str(path)], capture_output=True, text=True, check=True)
    (theirs,) = [d for d in map(json.loads, cp.stdout.splitlines()) if d["type"] == "tracelb"]
    ours = to_json(t)
    ours.pop("marionet")
    assert theirs == json.loads(dumps(ours))
    text = subprocess.run(["sc_warts2text", str(path)], capture_output=True, text=True, check=True).stdout
    assert set(text.splitlines()[1:]) == set(t.to_text().splitlines()[1:])


def test_halt_keeps_the_partial_graph():
    net = SimNet(diamond(4, 2))
    mda = TracelbProbing(plan_tracelb(DST, sport=40000, wait_probe=0), SRC)
    for t in range(20):
        pid, _ttl, data = mda.probe(t)
        mda.sent(pid, t, "kernel")
        mda.received(P.parse_packet(net.answer(data)), t + 1)
    mda.halt()
    assert mda.done and not mda.wants_probe()
    r = mda.result(start_ns=0)
    assert r.stop_reason == TracelbStop.HALTED and r.probec == 20
    assert {ln.pair() for ln in r.links()} <= truth(diamond(4, 2)) and r.linkc >= 2


def test_registered_as_an_endpoint_primitive():
    from marionet.measure.registry import PRIMITIVES, check_params

    assert "tracelb" in PRIMITIVES
    check_params("tracelb", {"dst": DST, "confidence": 99, "method": "icmp-echo"})
    with pytest.raises(ValueError, match="unknown tracelb parameter"):
        check_params("tracelb", {"dst": DST, "confidance": 99})
    with pytest.raises(ValueError, match="confidence"):
        check_params("tracelb", {"dst": DST, "confidence": 50})
    with pytest.raises(ValueError, match="tracelb could run"):
        check_params("tracelb", {"dst": DST, "gaplimit": 255, "wait_timeout": 60})


# -- warts type 8 read back -------------------------------------------------------------------------------


def _warts(*objs) -> bytes:
    import io

    from marionet.results.warts_writer import WartsWriter

    buf = io.BytesIO()
    w = WartsWriter(buf)
    for o in objs:
        w.write(o)
    return buf.getvalue()


def _read_all(data: bytes) -> list:
    import io

    from marionet.results.warts import WartsReader

    r, out = WartsReader(io.BytesIO(data)), []
    while (o := r.read()) is not None:
        out.append(o)
    return out


def _scamper_view(t: Tracelb) -> dict:
    """Our JSON without marionet's own key: what warts (and sc_warts2json) can carry."""
    d = json.loads(dumps(to_json(t)))
    d.pop("marionet", None)
    return d


_WARTS_CASES = [(diamond(2, 2), "udp-dport", set()), (diamond(4, 1), "icmp-echo", set()),
                ([["10.1.0.1"], ["10.2.0.1"], ["10.3.0.1"]], "tcp-sport", {"10.2.0.1"}),
                ([["10.1.0.1"], ["a1"], ["b1"], ["c1"]], "udp-sport", {"a1", "b1", "c1", DST})]


@pytest.mark.parametrize("layers,method,silent", _WARTS_CASES)
def test_warts_round_trip_reads_into_an_equal_tracelb(layers, method, silent):
    """ours → warts → ours: the same record (everything warts carries), and
    with sc_warts2json present, the same as what it reads from our bytes."""
    layers = [[a if "." in a else f"10.7.{i}.{j + 1}" for j, a in enumerate(lay)] for i, lay in enumerate(layers)]
    silent = {a for lay in layers for a in lay if a in silent or a.startswith("10.7.")} | ({DST} & silent)
    kw = {} if method == "icmp-echo" else {"sport": 40000}
    t = run(SimNet(layers, silent=silent, salt=1), method=method, userid=7, gaplimit=2, attempts=1, **kw)
    data = _warts(t)
    (back,) = _read_all(data)
    assert isinstance(back, Tracelb)
    assert _scamper_view(back) == _scamper_view(t)
    assert back.flow_links() == t.flow_links() and back.nodec == t.nodec and back.linkc == t.linkc
    assert [ln.pair() for ln in back.links()] == [ln.pair() for ln in t.links()]
    assert _warts(back) == data  # and it writes back byte for byte
    if shutil.which("sc_warts2json"):
        import tempfile

        with tempfile.NamedTemporaryFile(suffix=".warts") as fh:
            fh.write(data)
            fh.flush()
            cp = subprocess.run(["sc_warts2json", fh.name], capture_output=True, text=True, check=True)
        (theirs,) = [json.loads(x) for x in cp.stdout.splitlines()]
        assert _scamper_view(from_json(theirs)) == _scamper_view(back) == theirs


def test_truncated_or_garbled_tracelb_records_are_format_errors():
    """Every truncation of a real type-8 record, and random byte damage to it,
    either reads as some record or raises FormatError — never anything else."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from marionet.results.errors import FormatError

    data = _warts(run(SimNet(diamond(2, 1), salt=1), sport=40000))
    body_len = len(data) - 8
    for cut in range(8, len(data)):  # the record claims the bytes the file no longer has
        with pytest.raises(FormatError):
            _read_all(data[:cut])
    for n in range(body_len):  # a shorter record: its length field says so too
        short = data[:4] + n.to_bytes(4, "big") + data[8:8 + n]
        with pytest.raises(FormatError):
            _read_all(short)

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.tuples(st.integers(8, len(data) - 1), st.integers(0, 255)), min_size=1, max_size=8))
    def garble(edits):
        b = bytearray(data)
        for i, v in edits:
            b[i] = v
        try:
            for o in _read_all(bytes(b)):
                if isinstance(o, Tracelb):  # what reads also expands, writes and reads as JSON
                    o.flow_links()
                    assert isinstance(loads(dumps(o)), Tracelb)
        except FormatError:
            pass
    garble()
