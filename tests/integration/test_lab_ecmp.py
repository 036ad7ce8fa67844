"""ECMP diamonds: kernel L4 hashing vs the emulated per-flow balancer (ICMP-Paris)."""

from __future__ import annotations

import json

import pytest

from marionet.lab import diamond_path
from marionet.lab.pytest_plugin import lab_factory  # noqa: F401

pytestmark = pytest.mark.root

# Sends, per flow, 3 probes with TTL 3 that keep the flow identifier constant
# (ICMP: same checksum — payload compensates the sequence; UDP: same ports)
# and reports which diamond router answered.
PROBE = r'''
import socket, struct, select, time, sys, json
fam = int(sys.argv[1]); dst = sys.argv[2]; proto = sys.argv[3]
F = socket.AF_INET if fam == 4 else socket.AF_INET6
IC = socket.IPPROTO_ICMP if fam == 4 else socket.IPPROTO_ICMPV6
ic = socket.socket(F, socket.SOCK_RAW, IC)
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
res = {}
for flow in range(12):
    for rep in range(3):
        if proto == "icmp":
            s = socket.socket(F, socket.SOCK_RAW, IC)
            pkt = struct.pack("!BBHHHH", 8 if fam == 4 else 128, 0, 0, flow, rep, (0xffff - rep) & 0xffff)
            if fam == 4:
                pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
        else:
            s = socket.socket(F, socket.SOCK_DGRAM)
            s.bind(("", 20000 + flow)); pkt = b"xx"
        if fam == 4:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 3)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 3)
        s.sendto(pkt, (dst, 0 if proto == "icmp" else 33434))
        end = time.time() + 1
        while time.time() < end:
            r, _, _ = select.select([ic], [], [], end - time.time())
            if not r:
                break
            d, a = ic.recvfrom(2000)
            t = d[(d[0] & 15) * 4] if fam == 4 else d[0]
            if (fam == 4 and t == 11) or (fam == 6 and t == 3):
                res.setdefault(flow, []).append(a[0]); break
        s.close()
print(json.dumps(res))
'''


def _observe(lab, fam: int, proto: str) -> dict[str, list[str]]:
    cp = lab.exec("client", ["python3", "-c", PROBE, str(fam), lab.addr("target", fam), proto], check=True)
    return json.loads(cp.stdout)


def _hop3_truth(lab, fam: int) -> set[str]:
    t = lab.truth()
    p = [p for p in t["paths"] if p["src"] == "client" and p["dst_addr"] == lab.addr("target", fam)][0]
    assert not p["deterministic"] and len(p["paths"]) == 3
    return {path[2] for path in p["paths"]}


@pytest.mark.parametrize("fam", [4, 6])
def test_kernel_ecmp_udp_spreads_icmp_sticks(lab_factory, fam):  # noqa: F811
    lab = lab_factory(diamond_path(3, balancer="kernel"))
    allowed = _hop3_truth(lab, fam)
    udp = _observe(lab, fam, "udp")
    icmp = _observe(lab, fam, "icmp")
    assert all(len(set(v)) == 1 for v in udp.values()), udp  # per flow
    seen_udp = {a for v in udp.values() for a in v}
    assert seen_udp <= allowed and len(seen_udp) >= 2
    seen_icmp = {a for v in icmp.values() for a in v}
    assert seen_icmp <= allowed and len(seen_icmp) == 1  # Linux hashes ICMP on addresses only


@pytest.mark.parametrize("fam", [4, 6])
def test_flow_balancer_hashes_icmp_checksum(lab_factory, fam):  # noqa: F811
    lab = lab_factory(diamond_path(3, balancer="flow"))
    allowed = _hop3_truth(lab, fam)
    for proto in ("icmp", "udp"):
        obs = _observe(lab, fam, proto)
        assert len(obs) >= 10
        assert all(len(set(v)) == 1 for v in obs.values()), (proto, obs)  # Paris: one path per flow
        seen = {a for v in obs.values() for a in v}
        assert seen <= allowed and len(seen) >= 2, (proto, seen)
