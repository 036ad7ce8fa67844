"""trace against Debian's scamper on the same namespace paths, method by method.

Oracle: ``scamper -O json -c "trace -P METHOD …"`` run in the client
namespace right after marionet's trace (native placement; the endpoint
placement as a task and the remote one must agree with it).  Per TTL the first responder, the stop reason, the
number of TTLs probed and how many replies each TTL got must be equal:

* every method (udp-paris, icmp-paris, udp, icmp, tcp, tcp-ack), IPv4 and
  IPv6, on client – r1 – r2 – r3 – target;
* ``firsthop``, ``all_attempts`` (-Q), ``confidence`` 95 and 99 (-c);
* ``gaplimit`` on a path whose routers 2 and 3 are silent (GAPLIMIT);
* ``loops`` through a real routing loop (r2 sends the target back to r1:
  stop reason LOOP);
* MPLS: behind r1 the alias-router emulator's ``mpls_hops`` are LSRs that
  send RFC 4950 label stacks; every hop carries exactly the configured
  stack, scamper reads the same ``icmpext``, and our JSON and warts
  (checked with ``sc_warts2json``) carry them unchanged.

The lab turns transmit checksum offload off on every veth
(``marionet.lab.system.tx_checksum_off``); without that, scamper sends IPv6 udp-paris probes from a UDP socket,
so over veth their checksum is left unfinished (CHECKSUM_PARTIAL), the
Linux routers quote that unfinished field in their ICMPv6 errors, and
scamper, which names IPv6 udp-paris probes by their checksum, then matches
no reply at all (a GAPLIMIT trace without hops).  marionet writes its own
checksums and is unaffected either way.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections import Counter
from typing import Any

import pytest

from marionet.lab import linear_path
from marionet.lab.spec import parse_dict
from marionet.measure.trace import trace
from marionet.results import Trace, from_json, to_json
from marionet.results.warts import WartsReader
from marionet.results.warts_writer import WartsWriter

from .labclient import client_endpoint
from .test_trace_lab import path_of, task_trace, truth_path

pytestmark = [pytest.mark.root, pytest.mark.slow,
              pytest.mark.skipif(shutil.which("scamper") is None, reason="Debian's scamper not installed")]

FAMILIES = [4, 6]
METHODS = ["udp-paris", "icmp-paris", "udp", "icmp", "tcp", "tcp-ack"]
#: scamper's option for each of our parameters
SCAMPER_OPT = {"firsthop": "-f", "attempts": "-q", "gaplimit": "-g", "loops": "-l", "confidence": "-c"}


def scamper_trace(lab: Any, dst: str, method: str, **kw: Any) -> dict[str, Any]:
    """Debian scamper's trace from the client namespace, as parsed JSON."""
    opts = ["-P", method, "-w", "1"]
    for k, v in kw.items():
        if k == "all_attempts":
            opts += ["-Q"] if v else []
        else:
            opts += [SCAMPER_OPT[k], str(v)]
    # -n: the namespace's resolv.conf names no server, and scamper will not start without one
    cp = lab.exec("client", ["scamper", "-n", "127.0.0.1", "-O", "json", "-c", "trace " + " ".join(opts),
                             "-i", dst], timeout=300)
    for line in cp.stdout.splitlines():
        d = json.loads(line)
        if d.get("type") == "trace":
            return d
    raise AssertionError(f"scamper gave no trace: rc {cp.returncode} {cp.stderr.strip()}")


def scamper_path(d: dict[str, Any]) -> list[str | None]:
    first: dict[int, str] = {}
    for h in d.get("hops", []):
        first.setdefault(h["probe_ttl"], h["addr"])
    return [first.get(t) for t in range(d["firsthop"], d["hop_count"] + 1)]


def assert_same(ours: Trace, theirs: dict[str, Any], where: Any) -> None:
    assert path_of(ours) == scamper_path(theirs), where
    assert ours.stop_reason.value.upper() == theirs["stop_reason"], (where, ours.extra)
    assert ours.hop_count == theirs["hop_count"] and ours.firsthop == theirs["firsthop"], where
    assert ours.probe_count == theirs["probe_count"], where
    assert Counter(h.probe_ttl for h in ours.hop_records) == \
        Counter(h["probe_ttl"] for h in theirs.get("hops", [])), where
    assert ours.method == theirs["method"], where


async def both_placements(lab: Any, session: Any, native: Any, dst: str, method: str, **kw: Any) -> Trace:
    """Native, endpoint (a task) and remote traces of one path; they must
    agree; the native one is returned."""
    t = await trace(native, dst, method=method, wait_timeout=1.0, **kw)
    task = await task_trace(session, {"dst": dst, "method": method, "wait_timeout": 1.0, **kw})
    remote = await trace(session, dst, method=method, wait_timeout=1.0, **kw)
    for name, other in (("endpoint", task), ("remote", remote)):
        where = (name, dst, method, kw)
        assert path_of(other) == path_of(t) and other.stop_reason == t.stop_reason, where
        assert other.probe_count == t.probe_count and other.hop_count == t.hop_count, where
        assert [(h.probe_ttl, h.icmpext) for h in other.hop_records] == \
            [(h.probe_ttl, h.icmpext) for h in t.hop_records], where
    return t


@pytest.fixture(scope="module")
def lab() -> Any:
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(linear_path(3, name="trsc")) as lab:
        yield lab


@pytest.mark.parametrize("family", FAMILIES)
async def test_every_method_equals_scamper(lab, family):
    dst = lab.addr("target", family)
    async with client_endpoint(lab) as (session, native):
        for method in METHODS:
            ours = await both_placements(lab, session, native, dst, method)
            assert ours.is_completed() and path_of(ours) == truth_path(lab, family), method
            theirs = scamper_trace(lab, dst, method)
            assert_same(ours, theirs, (family, method))
            last = ours.hop(ours.hop_count)
            if method == "tcp-ack":
                assert last.is_tcp() and last.tcp_flags == 0x04  # a bare RST answers the stray ACK


@pytest.mark.parametrize("family", FAMILIES)
async def test_firsthop_all_attempts_and_confidence_equal_scamper(lab, family):
    dst = lab.addr("target", family)
    method = "udp-paris"
    cases = [dict(firsthop=2), dict(all_attempts=True, attempts=3), dict(confidence=95),
             dict(confidence=99), dict(confidence=95, method="icmp-paris")]
    async with client_endpoint(lab) as (session, native):
        for kw in cases:
            m = kw.pop("method", method)
            ours = await both_placements(lab, session, native, dst, m, **kw)
            assert_same(ours, scamper_trace(lab, dst, m, **kw), (family, m, kw))
            if "confidence" in kw:  # one interface per hop: 6 (95%) or 8 (99%) probes each
                per = 6 if kw["confidence"] == 95 else 8
                assert ours.confidence == kw["confidence"] and ours.probe_count == 4 * per


async def test_gaplimit_equals_scamper(lab_factory):
    lab = lab_factory(linear_path(3, unresponsive=(2, 3), name="trsg"))
    async with client_endpoint(lab) as (session, native):
        for family in FAMILIES:
            dst = lab.addr("target", family)
            method = "udp-paris"
            for gap, stop in ((2, "gaplimit"), (3, "completed")):
                kw = dict(gaplimit=gap, attempts=1)
                ours = await both_placements(lab, session, native, dst, method, **kw)
                assert ours.stop_reason.value == stop, (family, gap)
                assert_same(ours, scamper_trace(lab, dst, method, **kw), (family, gap))


async def test_routing_loop_equals_scamper(lab_factory):
    """r2 routes the target back to r1: r1, r2, r1, r2 … until ``loops``."""
    lab = lab_factory(linear_path(3, name="trsl"))
    for family in FAMILIES:
        f = f"-{family}"
        route = json.loads(lab.exec("r2", ["ip", "-j", f, "route", "get", lab.addr("client", family)],
                                    check=True).stdout)
        lab.exec("r2", ["ip", f, "route", "replace", lab.addr("target", family), "via", route[0]["gateway"]],
                 check=True)
    async with client_endpoint(lab) as (session, native):
        for family in FAMILIES:
            dst = lab.addr("target", family)
            for method in ("udp-paris", "icmp-paris", "tcp"):
                for loops in (1, 2):
                    ours = await both_placements(lab, session, native, dst, method, loops=loops)
                    p = path_of(ours)
                    assert ours.stop_reason.value == "loop" and len(p) == 3 + loops, (family, method, p)
                    assert p[1] == p[3] and p[0] != p[2], p  # r2's address again two hops later
                    assert_same(ours, scamper_trace(lab, dst, method, loops=loops), (family, method, loops))


# ------------------------------------------------------------------ MPLS

MPLS_HOPS = [
    {"addresses": ["10.200.0.201", "fd00:c8::201"], "labels": [{"label": 16001, "exp": 0, "s": 1, "ttl": 1}]},
    {"addresses": ["10.200.0.202", "fd00:c8::202"],
     "labels": [{"label": 24005, "exp": 5, "s": 0, "ttl": 254}, {"label": 3001, "exp": 1, "s": 1, "ttl": 1}]},
    {"addresses": ["10.200.0.203", "fd00:c8::203"]},  # an LSR that sends no extension
]
MPLS_DST = {4: "10.200.0.1", 6: "fd00:c8::1"}  # the emulated router behind the LSRs


def mpls_spec() -> Any:
    return parse_dict({
        "lab": {"name": "trmpls", "controller": False},
        "host": [{"name": "client"}], "router": [{"name": "r1"}],
        "aliasrouter": [{"name": "lsr", "options": {"interfaces": 1, "mpls_hops": MPLS_HOPS}}],
        "link": [{"a": "client", "b": "r1"}, {"a": "r1", "b": "lsr"}]})


def want_icmpext(ttl: int) -> list[dict[str, Any]] | None:
    """scamper's JSON icmpext for the hop at ``ttl`` (r1, the emulator's
    namespace, then the emulated hops), None for none."""
    k = ttl - 3
    if not 0 <= k < len(MPLS_HOPS) or not MPLS_HOPS[k].get("labels"):
        return None
    labels = MPLS_HOPS[k]["labels"]
    return [{"ie_cn": 1, "ie_ct": 1, "ie_dl": 4 * len(labels),
             "mpls_labels": [{"mpls_ttl": e["ttl"], "mpls_s": e["s"], "mpls_exp": e["exp"],
                              "mpls_label": e["label"]} for e in labels]}]


def sc_warts2json(data: bytes) -> list[dict[str, Any]]:
    cp = subprocess.run(["sc_warts2json"], input=data, capture_output=True, check=True)
    return [json.loads(line) for line in cp.stdout.decode().splitlines() if line.strip()]


async def test_mpls_label_stacks_end_to_end(lab_factory):
    lab = lab_factory(mpls_spec())
    assert not lab.warnings, lab.warnings
    async with client_endpoint(lab) as (session, native):
        for family in FAMILIES:
            dst = MPLS_DST[family]
            want_path = [lab.addr("r1", family), lab.addr("lsr", family),
                         *(h["addresses"][family // 6] for h in MPLS_HOPS), dst]
            for method in METHODS:
                ours = await both_placements(lab, session, native, dst, method)
                where = (family, method)
                assert ours.is_completed() and path_of(ours) == want_path, (where, path_of(ours))
                js = to_json(ours)  # scamper-schema dict
                for h in js["hops"]:
                    assert h.get("icmpext") == want_icmpext(h["probe_ttl"]), (where, h)
                h3 = ours.hop(3)
                assert [(m.label, m.exp, m.s, m.ttl) for m in h3.mpls_labels] == [(16001, 0, 1, 1)], where
                assert h3.icmp_q_ttl == 1 and h3.icmp_q_ipl == ours.probe_size, where
                # warts: our writer, scamper's reader, and ours again
                buf = io.BytesIO()
                WartsWriter(buf).write(ours)
                (theirs_w,) = [d for d in sc_warts2json(buf.getvalue()) if d.get("type") == "trace"]
                assert [h.get("icmpext") for h in theirs_w["hops"]] == [h.get("icmpext") for h in js["hops"]]
                back = WartsReader(io.BytesIO(buf.getvalue())).read()
                assert [h.icmpext for h in back.hop_records] == [h.icmpext for h in ours.hop_records]
                assert [h.icmpext for h in from_json(to_json(ours)).hop_records] == \
                    [h.icmpext for h in ours.hop_records]
                theirs = scamper_trace(lab, dst, method)
                assert_same(ours, theirs, where)
                assert [(h["probe_ttl"], h.get("icmpext")) for h in theirs["hops"]] == \
                    [(h["probe_ttl"], h.get("icmpext")) for h in js["hops"]], where
