"""do_dns against a real authoritative server (NSD) in a lab, from lab VPs.

The paper's authoritative-nameserver-delay script runs through
``marionet.compat.scamper`` with two changes only: the import, and
``server=`` on ``do_dns`` (marionet endpoints do not expose their host's
resolver, so the script names the server it asks — here the lab's NSD).

::

    vp-de ─10ms─┐
                r1 ── r2 ── ns   (NSD: lab.example, ns1 = ns, ns2 = target)
    vp-jp ──────┘      │
                      target
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from marionet.lab import parse_spec
from marionet.lab.forwarder import TX_STAMP_SLACK_MS
from marionet.lab.pytest_plugin import make_lab

pytestmark = pytest.mark.root

NS4, NS6 = "10.97.1.2", "fd00:97:1::2"
T4, T6 = "10.97.2.2", "fd00:97:2::2"
DELAY = {"vp-de": 10.0, "vp-jp": 0.0}  # one-way ms on each VP's access link

SPEC = f"""
[lab]
name = "dnslab"
controller = "auto"

[[vp]]
name = "vp-de"
cc = "DE"
asn = 64501

[[vp]]
name = "vp-jp"
cc = "JP"
asn = 64520

[[router]]
name = "r1"

[[router]]
name = "r2"

[[host]]
name = "ns"

[[host]]
name = "target"

[[link]]
a = "vp-de"
b = "r1"
delay = "10ms"

[[link]]
a = "vp-jp"
b = "r1"

[[link]]
a = "r1"
b = "r2"

[[link]]
a = "r2"
b = "ns"
ipv4 = ["10.97.1.1/24", "{NS4}/24"]
ipv6 = ["fd00:97:1::1/64", "{NS6}/64"]

[[link]]
a = "r2"
b = "target"
ipv4 = ["10.97.2.1/24", "{T4}/24"]
ipv6 = ["fd00:97:2::1/64", "{T6}/64"]

[[service]]
host = "ns"
kind = "dns"
options = {{ zone = "lab.example", ns = ["ns1", "ns2"], records = [
  ["ns1", "A", "{NS4}"], ["ns1", "AAAA", "{NS6}"], ["ns2", "A", "{T4}"],
  ["www", "A", "{T4}"], ["www", "AAAA", "{T6}"],
  ["@", "MX", "10 mail"], ["mail", "A", "{T4}"], ["@", "TXT", "marionet lab"],
] }}
"""


@pytest.fixture(scope="module")
def dnslab():
    with make_lab(parse_spec(SPEC)) as lab:
        yield lab


def test_paper_authoritative_nameserver_delay_script(dnslab):
    """The paper's script (scamper.md), per VP: NS of the zone, A and AAAA
    of each name server, a ping to each address; printed as in the paper."""
    scamper = pytest.importorskip("marionet.compat.scamper")

    zone = "lab.example"
    ctrl = scamper.ScamperCtrl(remote_dir=str(Path(dnslab.controller_unix()).parent))
    lines: list[tuple[str, str, str, object]] = []
    try:
        insts = {i.name: i for i in ctrl.instances()}
        assert sorted(insts) == ["vp-de", "vp-jp"]
        for vp, inst in sorted(insts.items()):
            res = ctrl.do_dns(zone, server=NS4, qtype="NS", inst=inst, sync=True)
            names = {}
            for ns in res.ans_nses():
                for qtype in ("A", "AAAA"):
                    r = ctrl.do_dns(ns, server=NS4, qtype=qtype, inst=inst, sync=True)
                    for addr in r.ans_addrs():
                        names[str(addr)] = ns
                        ctrl.do_ping(addr, inst=inst)
            assert sorted(res.ans_nses()) == ["ns1.lab.example", "ns2.lab.example"]
            assert names == {NS4: "ns1.lab.example", NS6: "ns1.lab.example", T4: "ns2.lab.example"}
            for o in ctrl.responses(timeout=dt.timedelta(seconds=20)):
                name = names[str(o.dst)]
                lines.append((vp, str(o.dst), name, o.min_rtt))
                print(o.dst, name, "none" if o.min_rtt is None else f"{o.min_rtt.total_seconds() * 1000:.1f} ms")
        assert not list(ctrl.exceptions())
    finally:
        ctrl.done()
        ctrl.close()
    assert len(lines) == 6 and all(rtt is not None for *_, rtt in lines)
    for vp, _addr, _name, rtt in lines:
        ms = rtt.total_seconds() * 1000
        assert 2 * DELAY[vp] - 2 * TX_STAMP_SLACK_MS <= ms < 2 * DELAY[vp] + 15, (vp, ms)


def test_dns_rtt_matches_the_path_and_records_parse(dnslab):
    """From each VP over UDP, TCP, IPv4 and IPv6: answers from NSD, and a
    kernel-stamped RTT that carries the configured link delay."""
    with dnslab.ctrl() as ctrl:
        for inst in sorted(ctrl.instances(), key=lambda i: i.name):
            floor = 2 * DELAY[inst.name]
            for server in (NS4, NS6):
                for tcp in (False, True):
                    r = ctrl.do_dns("www.lab.example", server=server, qtype="A", tcp=tcp, inst=inst,
                                    sync=True)
                    assert str(r.stop_reason) == "done" and r.rcode == 0 and "AA" in r.flags
                    assert [str(a) for a in r.ans_addrs()] == [T4]
                    assert r.reply.tcp is tcp and r.reply.tx_ts_source == "kernel"
                    ms = r.rtt.total_seconds() * 1000
                    assert floor - 2 * TX_STAMP_SLACK_MS <= ms < floor + 15, (inst.name, server, tcp, ms)
            mx = ctrl.do_dns("lab.example", server=NS6, qtype="MX", inst=inst, sync=True)
            assert [(m.pref, m.exch) for m in mx.ans_mxes()] == [(10, "mail.lab.example")]
            txt = ctrl.do_dns("lab.example", server=NS4, qtype="TXT", inst=inst, sync=True)
            assert txt.ans_txts() == [["marionet lab"]]
            nx = ctrl.do_dns("nope.lab.example", server=NS4, inst=inst, sync=True)
            assert nx.rcode_str == "NXDomain" and nx.ans() == []
            # no server listens on the target: ICMP port unreachable, reported as an error
            dead = ctrl.do_dns("www.lab.example", server=T4, attempts=1, wait_timeout=2, inst=inst,
                               sync=True)
            assert str(dead.stop_reason) == "error" and "ICMP" in dead.error
