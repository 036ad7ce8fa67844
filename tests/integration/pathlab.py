"""A linear namespace path (client – r1 – … – rN – target) for tests and benchmarks.

Uses ``marionet.lab`` (``Lab(linear_path(n))``) when it is importable; else
builds the path itself with ``ip netns`` and veth pairs under a unique
prefix ``mnb<pid>``, checking that no name exists before creating it and
removing only what it created (also when the build fails).

Either way the result is a ``Path`` with:
  * ``netns(node)``: namespace name of ``client``, ``r1``…``rN``, ``target``
  * ``hop_addr(k, family)``: the address router k (1-based) answers from —
    its client-facing interface (``icmp_errors_use_inbound_ifaddr=1``);
    ``hop_addr(n+1)`` is the target
  * ``target(family)``, ``client_addr(family)``
  * ``exec(node, argv)``, ``ns_argv(node, argv)``
Routers forward, and ICMP rate limits are off on every node.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from typing import Iterator, Sequence


@dataclass
class Path:
    n_routers: int
    nodes: dict[str, str]  # node -> netns
    addrs4: list[str]  # hop k (1..n+1) -> address, index k-1
    addrs6: list[str]
    client4: str
    client6: str
    backend: str
    created: list[str] = field(default_factory=list)

    def netns(self, node: str) -> str:
        return self.nodes[node]

    def hop_addr(self, k: int, family: int = 4) -> str:
        return (self.addrs4 if family == 4 else self.addrs6)[k - 1]

    def target(self, family: int = 4) -> str:
        return self.hop_addr(self.n_routers + 1, family)

    def client_addr(self, family: int = 4) -> str:
        return self.client4 if family == 4 else self.client6

    def ns_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def exec(self, node: str, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.ns_argv(node, argv), capture_output=True, text=True, timeout=timeout)


def _lab_available() -> bool:
    if os.environ.get("MARIONET_PATHLAB_OWN"):
        return False
    try:
        from marionet.lab import Lab, linear_path  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


@contextlib.contextmanager
def linear(n_routers: int = 3) -> Iterator[Path]:
    """The path, up for the duration of the ``with`` block."""
    if _lab_available():
        with _lab_path(n_routers) as p:
            yield p
    else:
        with _own_path(n_routers) as p:
            yield p


@contextlib.contextmanager
def _lab_path(n: int) -> Iterator[Path]:
    from marionet.lab import Lab, linear_path

    with Lab(linear_path(n)) as lab:
        routers = [f"r{k}" for k in range(1, n + 1)]
        nodes = {x: lab.netns(x) for x in ["client", *routers, "target"]}
        hops = [*routers, "target"]
        yield Path(n, nodes, [lab.addr(h, 4) for h in hops], [lab.addr(h, 6) for h in hops],
                   lab.addr("client", 4), lab.addr("client", 6), backend="marionet.lab")


# --------------------------------------------------------------- own builder

def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {cp.stderr.strip()}")
    return cp


def _existing_netns() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def _own_path(n: int) -> Iterator[Path]:
    prefix = f"mnb{os.getpid()}"
    chain = ["client", *[f"r{k}" for k in range(1, n + 1)], "target"]
    nodes = {x: f"{prefix}-{x}" for x in chain}
    taken = _existing_netns() & set(nodes.values())
    if taken:
        raise RuntimeError(f"namespaces already exist, not touching them: {sorted(taken)}")
    created: list[str] = []
    # link k joins chain[k] (side a, .1) and chain[k+1] (side b, .2)
    a4 = lambda k, side: f"10.{250 - (os.getpid() % 50)}.{k}.{side}"  # noqa: E731
    a6 = lambda k, side: str(ipaddress.ip_address(f"fd00:6d62:{os.getpid() % 65536:x}:{k}::{side}"))  # noqa: E731
    path = Path(n, nodes, [a4(k, 2) for k in range(n + 1)], [a6(k, 2) for k in range(n + 1)],
                a4(0, 1), a6(0, 1), backend="own", created=created)
    try:
        for x in chain:
            _run(["ip", "netns", "add", nodes[x]])
            created.append(nodes[x])
        for x in chain:
            ns = nodes[x]
            sysctls = {
                "net/ipv4/icmp_ratelimit": "0", "net/ipv6/icmp/ratelimit": "0",
                "net/ipv4/icmp_errors_use_inbound_ifaddr": "1",
                "net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/default/rp_filter": "0",
                "net/ipv6/conf/all/accept_dad": "0", "net/ipv6/conf/default/accept_dad": "0",
            }
            if x.startswith("r"):
                sysctls["net/ipv4/ip_forward"] = "1"
                sysctls["net/ipv6/conf/all/forwarding"] = "1"
            script = "; ".join(f"echo {v} > /proc/sys/{k}" for k, v in sysctls.items())
            _run(["ip", "netns", "exec", ns, "sh", "-c", script + "; ip link set lo up"])
            _run(["ip", "netns", "exec", ns, "sh", "-c",
                  "echo 1000000 > /proc/sys/net/ipv4/icmp_msgs_per_sec 2>/dev/null; "
                  "echo 1000000 > /proc/sys/net/ipv4/icmp_msgs_burst 2>/dev/null; true"])
        for k in range(n + 1):
            left, right = chain[k], chain[k + 1]
            va, vb = f"{prefix}a{k}", f"{prefix}b{k}"
            # veth names live in the root namespace until moved: created here with netns set
            _run(["ip", "link", "add", va, "netns", nodes[left], "type", "veth", "peer", "name", vb,
                  "netns", nodes[right]])
            for node, dev, side in ((left, va, 1), (right, vb, 2)):
                ns = nodes[node]
                _run(["ip", "-n", ns, "addr", "add", f"{a4(k, side)}/24", "dev", dev])
                _run(["ip", "-n", ns, "addr", "add", f"{a6(k, side)}/64", "dev", dev, "nodad"])
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
        # routes: everything left of node i goes left, everything right goes right
        for i, x in enumerate(chain):
            ns = nodes[x]
            for k in range(n + 1):
                if k < i - 1:  # link k is to the left, reach via left neighbour (link i-1, side 1)
                    _run(["ip", "-n", ns, "route", "add", f"{a4(k, 0)}/24", "via", a4(i - 1, 1)])
                    _run(["ip", "-n", ns, "-6", "route", "add", f"{a6(k, 0)}/64".replace("::0/", "::/"), "via", a6(i - 1, 1)])
                elif k > i:  # to the right, via right neighbour (link i, side 2)
                    _run(["ip", "-n", ns, "route", "add", f"{a4(k, 0)}/24", "via", a4(i, 2)])
                    _run(["ip", "-n", ns, "-6", "route", "add", f"{a6(k, 0)}/64".replace("::0/", "::/"), "via", a6(i, 2)])
        yield path
    finally:
        for ns in reversed(created):
            _run(["ip", "netns", "del", ns], check=False)


@contextlib.contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling *thread* inside ``netns`` for the block, then return.

    Sockets keep the namespace they were created in, so everything the
    block opens (an in-process endpoint, its listening socket, a client
    connection to it) lives in ``netns``.  Python 3.11 has no os.setns.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, 0x40000000) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(home, 0x40000000) != 0:  # must not stay in the lab's namespace
                err = ctypes.get_errno()
                raise OSError(err, f"setns(back): {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(home)
