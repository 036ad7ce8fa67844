"""Lab core: a linear path answers traceroute per hop on both families; teardown is clean."""

from __future__ import annotations

import sys

import pytest

from marionet.lab import linear_path
from marionet.lab.pytest_plugin import lab_factory, make_lab  # noqa: F401  (fixture)
from marionet.lab.system import list_netns

pytestmark = pytest.mark.root


def _te_sources(lab, family: int, max_ttl: int) -> list[str | None]:
    """Send one UDP probe per TTL from the client (raw ICMP socket reads the answers)."""
    code = f"""
import socket, select, time
fam = socket.AF_INET if {family} == 4 else socket.AF_INET6
icmp = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP if {family} == 4 else socket.IPPROTO_ICMPV6)
out = []
for ttl in range(1, {max_ttl} + 1):
    u = socket.socket(fam, socket.SOCK_DGRAM)
    if {family} == 4:
        u.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
    else:
        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
    u.sendto(b"x" * 8, ("{lab.addr('target', family)}", 33434 + ttl))
    src = None
    end = time.time() + 1
    while time.time() < end:
        r, _, _ = select.select([icmp], [], [], end - time.time())
        if not r:
            break
        data, addr = icmp.recvfrom(2048)
        src = addr[0]
        break
    out.append(src)
    u.close()
print(out)
"""
    cp = lab.exec("client", ["python3", "-c", code], check=True)
    return eval(cp.stdout.strip())


@pytest.mark.parametrize("family", [4, 6])
def test_linear_path_time_exceeded_per_hop(lab_factory, family):  # noqa: F811
    lab = lab_factory(linear_path(3))
    got = _te_sources(lab, family, 4)
    truth = lab.truth()
    path = [p for p in truth["paths"] if p["src"] == "client" and p["dst"] == "target" and p["family"] == family
            and p["dst_addr"] == lab.addr("target", family)][0]
    assert path["deterministic"]
    assert got == path["paths"][0]
    assert got[:3] == [lab.addr(f"r{k}", family, iface="eth0") for k in (1, 2, 3)]


def test_teardown_removes_everything():
    before = set(list_netns())
    with make_lab(linear_path(2)) as lab:
        prefix = lab.prefix
        state = lab.state.path
        assert any(n.startswith(prefix) for n in list_netns())
    assert not any(n.startswith(prefix) for n in list_netns())
    assert set(list_netns()) <= before | set()
    assert not state.exists()


def test_teardown_on_failure():
    with pytest.raises(RuntimeError):
        with make_lab(linear_path(1)) as lab:
            prefix = lab.prefix
            raise RuntimeError("test body failed")
    assert not any(n.startswith(prefix) for n in list_netns())


def test_exec_and_addr(lab_factory):  # noqa: F811
    lab = lab_factory(linear_path(1))
    cp = lab.exec("client", ["ping", "-c1", "-W2", lab.addr("target")])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = lab.exec("client", ["ping", "-6", "-c1", "-W2", lab.addr("target", 6)])
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert lab.netns("r1").startswith(lab.prefix)
    st = lab.status()
    assert st["up"] and all(n["present"] for n in st["nodes"].values())


_GET_TX_CSUM = r"""
import ctypes, fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for name in sys.argv[1:]:
    ev = bytearray(struct.pack("II", 0x16, 0xFF))  # ETHTOOL_GTXCSUM
    ptr = ctypes.addressof(ctypes.c_char.from_buffer(ev))
    fcntl.ioctl(s, 0x8946, struct.pack("16sP", name.encode(), ptr))
    print(name, struct.unpack("II", ev)[1])
"""


def test_veths_finish_checksums_before_the_wire(lab_factory):  # noqa: F811
    """TX checksum offload is off on every veth, so a router's ICMP error
    quotes the checksum the sender's kernel computed (as on a real NIC)."""
    lab = lab_factory(linear_path(2))
    assert not lab.warnings, lab.warnings
    for node in ("client", "r1", "target"):
        names = [i.name for i in lab.plan.ifaces[node] if not i.tun]
        out = lab.exec(node, [sys.executable, "-c", _GET_TX_CSUM, *names], check=True).stdout
        got = dict(line.split() for line in out.splitlines())
        assert got == {n: "0" for n in names}, (node, got)
