"""Every primitive, the same result in both of ``Ctrl``'s placements.

A lab VP behind an ECMP diamond (kernel L4 hashing) reaches a target running
DNS and HTTP. Each primitive runs twice from the same VP through the lab's
controller: ``placement="endpoint"`` (the VP runs it) and
``placement="remote"`` (this process runs the very same code and drives the
VP's sockets). What the network answered must be the same: reply sources
and kinds, hop addresses, diamond links, answer sections, bodies. (Native
runs are compared with the endpoint's in each primitive's own lab test.)
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from marionet.lab.pytest_plugin import make_lab
from marionet.lab.spec import parse_spec

from .test_tracelb_lab import links

pytestmark = pytest.mark.root

SPEC = """
[lab]
name = "plc"
controller = "auto"

[[vp]]
name = "vp-a"

[[router]]
name = "r1"

[[router]]
name = "r2"

[[host]]
name = "target"

[[link]]
a = "vp-a"
b = "r1"

[[diamond]]
name = "d"
entry = "r1"
exit = "r2"
width = 2
length = 1

[[link]]
a = "r2"
b = "target"

[[service]]
host = "target"
kind = "dns"
options = { zone = "plc.example", ns = ["ns1"], records = [
  ["ns1", "A", "192.0.2.53"], ["www", "A", "192.0.2.80"], ["@", "TXT", "placements"],
] }

[[service]]
host = "target"
kind = "http"
options = { files = { "index.html" = "same either way\\n" } }
"""

PLACEMENTS = ("endpoint", "remote")


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(parse_spec(SPEC)) as lab:
        yield lab


@pytest.fixture(scope="module")
def run(lab: Any) -> Iterator[Any]:
    with lab.ctrl() as ctrl:
        (inst,) = [i for i in ctrl.instances() if i.name == "vp-a"]

        def both(primitive: str, *args: Any, **params: Any) -> list[Any]:
            fn = getattr(ctrl, f"do_{primitive}")
            out = [fn(*args, inst=inst, sync=True, placement=p, **params) for p in PLACEMENTS]
            for r in out:
                assert getattr(r, "vp", "vp-a") == "vp-a"
            return out
        yield both


@pytest.mark.parametrize("method", ["icmp-echo", "icmp-time", "udp", "tcp-syn", "tcp-ack"])
def test_ping(lab: Any, run: Any, method: str) -> None:
    a, b = run("ping", lab.addr("target"), method=method, attempts=3, wait_probe=0.05, wait_timeout=0.5)
    for p in (a, b):
        assert p.method == method and p.ping_sent == 3 and p.nreplies == 3, p.to_text()
    assert [(str(r.src), r.icmp_type, r.tcp_flags) for r in a.replies] == \
        [(str(r.src), r.icmp_type, r.tcp_flags) for r in b.replies]


@pytest.mark.parametrize("method", ["udp-paris", "icmp-paris", "tcp"])
def test_trace(lab: Any, run: Any, method: str) -> None:
    # one flow for both runs (the diamond hashes on ports): a fixed source port
    flow = {} if method.startswith("icmp") else {"sport": 40123}
    a, b = run("trace", lab.addr("target"), method=method, wait_timeout=1, **flow)
    paths = [[None if h is None else str(h.src) for h in t.hops()] for t in (a, b)]
    assert paths[0] == paths[1] and paths[0][-1] == lab.addr("target")
    assert a.stop_reason == b.stop_reason


def test_tracelb(lab: Any, run: Any) -> None:
    a, b = run("tracelb", lab.addr("target"), confidence=99, wait_probe=0.02)
    dst = lab.addr("target")
    (p,) = [p for p in lab.truth()["paths"] if p["src"] == "vp-a" and p["dst_addr"] == dst]
    truth = {(x, y) for path in p["paths"] for x, y in zip(path, path[1:])}
    # MDA at 99% misses a branch of a 2-way diamond with probability 2·2⁻⁸ per
    # run, by design: a run that found fewer links is run once more (what it
    # found must still be true links)
    for i, t in enumerate((a, b)):
        if links(t) != truth:
            assert links(t) < truth, (links(t), truth)
            (t,) = [x for x in run("tracelb", dst, confidence=99, wait_probe=0.02)][i:i + 1]
        assert links(t) == truth, PLACEMENTS[i]  # both branches of the diamond


def test_dns(lab: Any, run: Any) -> None:
    server = lab.addr("target")
    a, b = run("dns", "www.plc.example", server=server)
    assert [str(x) for x in a.ans_addrs()] == [str(x) for x in b.ans_addrs()] == ["192.0.2.80"]
    assert a.rcode == b.rcode == 0


def test_http(lab: Any, run: Any) -> None:
    target = lab.addr("target")
    a, b = run("http", target, f"http://{target}/index.html")
    assert a.status_code == b.status_code == 200
    assert a.body == b.body == b"same either way\n"


def test_udpprobe(lab: Any, run: Any) -> None:
    import dns.message

    q = dns.message.make_query("www.plc.example", "A")
    q.id = 4242
    a, b = run("udpprobe", lab.addr("target"), 53, payload=q.to_wire(), attempts=1)
    for u in (a, b):
        (probe,) = u.probes
        (reply,) = probe.replies
        ans = dns.message.from_wire(reply.data)
        assert ans.id == 4242 and [r.to_text() for r in ans.answer[0]] == ["192.0.2.80"]


def test_sniff(lab: Any, run: Any) -> None:
    # a capture with no traffic for its ICMP id ends at its time limit, empty, in both placements
    a, b = run("sniff", lab.addr("vp-a"), icmp_id=54321, limit_time=0.5)
    assert a.pkts == b.pkts == [] and a.stop_reason == b.stop_reason
