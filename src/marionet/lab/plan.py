"""Turn a validated Spec into a concrete plan: names, addresses, routes, truth.

Kept free of side effects so it can be unit-tested without root and so the
ground truth the lab exports is exactly what it configured.
"""

from __future__ import annotations

import heapq
import ipaddress
import itertools
from dataclasses import dataclass, field
from typing import Any

from .spec import Spec

# Lab-private ranges; they only ever exist inside the lab's own namespaces.
V4_BASE = ipaddress.ip_network("10.0.0.0/8")
V6_BASE = ipaddress.ip_network("fd00::/16")
MAX_PATHS = 256


@dataclass
class Iface:
    node: str
    name: str  # name inside the node's namespace
    link: int  # index into spec.links
    peer: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface
    tun: bool  # True when the link goes through the userspace forwarder

    def addr(self, family: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
        return self.ipv4 if family == 4 else self.ipv6


@dataclass
class Route:
    family: int
    dst: str  # prefix
    nexthops: list[tuple[str, str]]  # (via address, dev)


@dataclass
class Resolver:
    """Where the lab's recursive resolver answers: one address per family on ``node``'s lo.

    Addresses of their own (not the host's interface addresses) keep port 53
    free for an authoritative server on the same host and give every
    resolv.conf in the lab the same, recognisable nameserver.
    """

    node: str
    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address

    @property
    def addresses(self) -> list[str]:
        return [str(self.ipv4), str(self.ipv6)]


@dataclass
class Plan:
    spec: Spec
    lab_id: str
    ifaces: dict[str, list[Iface]] = field(default_factory=dict)
    routes: dict[str, list[Route]] = field(default_factory=dict)
    link_ifaces: list[tuple[Iface, Iface]] = field(default_factory=list)
    # virtual prefixes routed to a node (an alias router's emulated routers,
    # the resolver's addresses): node -> (v4 net, v6 net)
    stubs: dict[str, tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]] = field(default_factory=dict)
    resolver: Resolver | None = None

    @property
    def prefix(self) -> str:
        return f"mn{self.lab_id}"

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def tun_name(self, link: int, side: str) -> str:
        """Machine-unique (≤15 chars) name for the TUN of a link end; used only while creating."""
        return f"{self.prefix}t{link}{side}"

    def iface(self, node: str, name: str | None = None, link: int | None = None) -> Iface:
        for i in self.ifaces[node]:
            if (name is None or i.name == name) and (link is None or i.link == link):
                return i
        raise KeyError(f"{node} has no interface {name or link}")

    def owner(self, ip: str) -> tuple[str, Iface]:
        a = ipaddress.ip_address(ip)
        for node, ifs in self.ifaces.items():
            for i in ifs:
                if i.ipv4.ip == a or i.ipv6.ip == a:
                    return node, i
        raise KeyError(ip)


def _auto_subnets(spec: Spec) -> tuple[list[ipaddress.IPv4Network], list[ipaddress.IPv6Network]]:
    """Give every link without explicit addresses a /24 and a /64, skipping taken ones."""
    taken4 = [ipaddress.ip_interface(ln.ipv4[0]).network for ln in spec.links if ln.ipv4]
    taken6 = [ipaddress.ip_interface(ln.ipv6[0]).network for ln in spec.links if ln.ipv6]
    gen4 = (ipaddress.ip_network(f"10.{1 + k // 256}.{k % 256}.0/24") for k in itertools.count())
    gen6 = (ipaddress.ip_network(f"fd00:0:0:{k:x}::/64") for k in itertools.count(1))
    out4, out6 = [], []
    for ln in spec.links:
        if ln.ipv4:
            out4.append(ipaddress.ip_interface(ln.ipv4[0]).network)
        else:
            n = next(gen4)
            while any(n.overlaps(t) for t in taken4):
                n = next(gen4)
            out4.append(n)
        if ln.ipv6:
            out6.append(ipaddress.ip_interface(ln.ipv6[0]).network)
        else:
            n6 = next(gen6)
            while any(n6.overlaps(t) for t in taken6):
                n6 = next(gen6)
            out6.append(n6)
    return out4, out6


def make_plan(spec: Spec, lab_id: str) -> Plan:
    plan = Plan(spec=spec, lab_id=lab_id)
    for name in spec.nodes:
        plan.ifaces[name] = []
    nets4, nets6 = _auto_subnets(spec)
    for k, ln in enumerate(spec.links):
        pair: list[Iface] = []
        for side, (node, peer) in enumerate(((ln.a, ln.b), (ln.b, ln.a))):
            if ln.ipv4:
                a4 = ipaddress.IPv4Interface(ln.ipv4[side])
            else:
                a4 = ipaddress.IPv4Interface(f"{nets4[k].network_address + 1 + side}/{nets4[k].prefixlen}")
            if ln.ipv6:
                a6 = ipaddress.IPv6Interface(ln.ipv6[side])
            else:
                a6 = ipaddress.IPv6Interface(f"{nets6[k].network_address + 1 + side}/{nets6[k].prefixlen}")
            ifc = Iface(node=node, name=f"eth{len(plan.ifaces[node])}", link=k, peer=peer,
                        ipv4=a4, ipv6=a6, tun=ln.impaired)
            plan.ifaces[node].append(ifc)
            pair.append(ifc)
        plan.link_ifaces.append((pair[0], pair[1]))
    for idx, n in enumerate(x for x in spec.nodes.values() if x.kind == "aliasrouter"):
        # options.stub4: a larger IPv4 prefix for hundreds of emulated routers (alias_lab)
        v4stub = n.options.get("stub4") or f"10.200.{idx}.0/24"
        plan.stubs[n.name] = (ipaddress.IPv4Network(v4stub),
                              ipaddress.IPv6Network(f"fd00:c8:0:{idx:x}::/64"))
    host = spec.resolver_host()
    if host is not None:
        v4net, v6net = _resolver_nets(plan)
        plan.stubs[host] = (v4net, v6net)
        plan.resolver = Resolver(host, v4net.network_address + 53, v6net.network_address + 0x53)
    for node in spec.nodes:
        plan.routes[node] = _routes_for(plan, node)
    return plan


def _resolver_nets(plan: Plan) -> tuple[ipaddress.IPv4Network, ipaddress.IPv6Network]:
    """The first 10.53.k.0/24 and fd00:53:0:k::/64 that no link or stub of the lab uses."""
    used = [n for ifs in plan.ifaces.values() for i in ifs for n in (i.ipv4.network, i.ipv6.network)]
    used += [n for pair in plan.stubs.values() for n in pair]

    def free(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
        return not any(net.version == u.version and net.overlaps(u) for u in used)
    v4 = next(n for k in range(256) if free(n := ipaddress.IPv4Network(f"10.53.{k}.0/24")))
    v6 = next(n for k in range(256) if free(n := ipaddress.IPv6Network(f"fd00:53:0:{k:x}::/64")))
    return v4, v6


def _ends(plan: Plan, k: int | str) -> tuple[str, ...]:
    """Nodes that own destination k: a link index, or the node name of a stub prefix."""
    if isinstance(k, str):
        return (k,)
    ln = plan.spec.links[k]
    return (ln.a, ln.b)


def _dist_to_link(plan: Plan, k: int | str) -> dict[str, int]:
    """Routing distance from each node to link k's subnet; only routers relay."""
    spec = plan.spec
    ends = _ends(plan, k)
    dist: dict[str, int] = {e: 0 for e in ends}
    heap = [(0, e) for e in ends]
    while heap:
        d, n = heapq.heappop(heap)
        if d > dist.get(n, 1 << 30):
            continue
        if not spec.nodes[n].forwards and not (d == 0 and isinstance(k, str)):
            continue  # hosts do not relay; a node does reach its own stub prefix
        for ifc in plan.ifaces[n]:
            nd = d + spec.links[ifc.link].cost
            if nd < dist.get(ifc.peer, 1 << 30):
                dist[ifc.peer] = nd
                heapq.heappush(heap, (nd, ifc.peer))
    return dist


def nexthops(plan: Plan, node: str, k: int | str, dist: dict[str, int] | None = None) -> list[Iface]:
    """The interfaces of ``node`` on shortest paths towards link k (ECMP keeps all)."""
    spec = plan.spec
    ends = _ends(plan, k)
    if node in ends:
        return []
    dist = dist if dist is not None else _dist_to_link(plan, k)
    best = None
    cands: list[tuple[int, Iface]] = []
    for ifc in plan.ifaces[node]:
        peer = ifc.peer
        if peer not in dist:
            continue
        if dist[peer] != 0 and not spec.nodes[peer].forwards:
            continue
        if dist[peer] == 0 and not spec.nodes[peer].forwards and peer not in ends:
            continue
        c = spec.links[ifc.link].cost + dist[peer]
        cands.append((c, ifc))
        best = c if best is None else min(best, c)
    return [i for c, i in cands if c == best]


def _routes_for(plan: Plan, node: str) -> list[Route]:
    out: list[Route] = []
    for k in range(len(plan.spec.links)):
        nh = nexthops(plan, node, k)
        if not nh:
            continue
        a, b = plan.link_ifaces[k]
        for fam in (4, 6):
            dst = str(a.addr(fam).network)
            hops = []
            for ifc in nh:
                peer_if = _peer_iface(plan, ifc)
                hops.append((str(peer_if.addr(fam).ip), ifc.name))
            out.append(Route(family=fam, dst=dst, nexthops=hops))
    for stub, nets in plan.stubs.items():
        nh = nexthops(plan, node, stub)
        for fam, net in ((4, nets[0]), (6, nets[1])):
            if nh:
                out.append(Route(family=fam, dst=str(net),
                                 nexthops=[(str(_peer_iface(plan, i).addr(fam).ip), i.name) for i in nh]))
    return out


def _peer_iface(plan: Plan, ifc: Iface) -> Iface:
    a, b = plan.link_ifaces[ifc.link]
    return b if a is ifc else a


# --------------------------------------------------------------------------
# ground truth


def paths(plan: Plan, src: str, dst_ip: str) -> list[list[str | None]]:
    """Router-level paths a probe from ``src`` to ``dst_ip`` may take.

    Each path lists, per TTL, the address that answers with time-exceeded:
    IPv4 routers answer from the inbound interface
    (icmp_errors_use_inbound_ifaddr=1); for IPv6, Linux picks the source of
    the interface facing the probe's source, which in a symmetric lab is the
    inbound one too.  Unresponsive routers appear as None.  The last element
    is the destination itself.  One path when deterministic; every ECMP
    combination otherwise (capped at MAX_PATHS).
    """
    dst_node, dst_if = plan.owner(dst_ip)
    fam = ipaddress.ip_address(dst_ip).version
    k = dst_if.link
    dist = _dist_to_link(plan, k)
    results: list[list[str | None]] = []

    def walk(node: str, acc: list[str | None], depth: int) -> None:
        if len(results) >= MAX_PATHS or depth > 64:
            return
        if node == dst_node:
            results.append(acc)
            return
        ln = plan.spec.links[k]
        if node in (ln.a, ln.b):  # on the destination's link: next hop is the destination
            here = [i for i in plan.ifaces[node] if i.link == k][0]
            peer = _peer_iface(plan, here)
            results.append(acc + [str(peer.addr(fam).ip)])
            return
        hops = nexthops(plan, node, k, dist)
        for ifc in hops:
            peer_if = _peer_iface(plan, ifc)
            nxt = peer_if.node
            if nxt == dst_node:
                results.append(acc + [dst_ip])
                continue
            n = plan.spec.nodes[nxt]
            addr = None if n.unresponsive else str(peer_if.addr(fam).ip)
            walk(nxt, acc + [addr], depth + 1)

    walk(src, [], 0)
    # dedupe preserving order
    seen: set[tuple] = set()
    uniq = []
    for p in results:
        t = tuple(p)
        if t not in seen:
            seen.add(t)
            uniq.append(p)
    return uniq


def truth(plan: Plan) -> dict[str, Any]:
    """Everything the lab configured, as JSON-ready data."""
    spec = plan.spec
    hosts = [n for n in spec.nodes.values() if n.is_host]
    out: dict[str, Any] = {
        "lab_id": plan.lab_id,
        "name": spec.name,
        "nodes": {},
        "links": [],
        "aliases": [],
        "paths": [],
    }
    for n in spec.nodes.values():
        out["nodes"][n.name] = {
            "kind": n.kind,
            "netns": plan.netns(n.name),
            "interfaces": {i.name: {"ipv4": str(i.ipv4), "ipv6": str(i.ipv6), "peer": i.peer, "link": i.link}
                           for i in plan.ifaces[n.name]},
        }
        if n.kind == "vp":
            out["nodes"][n.name]["meta"] = {"cc": n.cc, "asn": n.asn, "loc": list(n.loc) if n.loc else None, "tags": n.tags}
        if n.kind == "router":
            out["nodes"][n.name].update(unresponsive=n.unresponsive, balancer=n.balancer,
                                        icmp_ratelimit=n.icmp_ratelimit or 0)
        if n.kind in ("router", "aliasrouter"):
            out["aliases"].append({
                "router": n.name,
                "kind": n.kind,
                "ipv4": [str(i.ipv4.ip) for i in plan.ifaces[n.name]],
                "ipv6": [str(i.ipv6.ip) for i in plan.ifaces[n.name]],
                **({"options": n.options} if n.options else {}),
            })
    if plan.resolver is not None:
        out["resolver"] = {"node": plan.resolver.node, "ipv4": str(plan.resolver.ipv4),
                           "ipv6": str(plan.resolver.ipv6)}
    for k, ln in enumerate(spec.links):
        a, b = plan.link_ifaces[k]
        out["links"].append({
            "index": k, "a": ln.a, "b": ln.b,
            "a_if": a.name, "b_if": b.name,
            "ipv4": [str(a.ipv4), str(b.ipv4)], "ipv6": [str(a.ipv6), str(b.ipv6)],
            "delay_ms": ln.delay_ms, "jitter_ms": ln.jitter_ms, "loss": ln.loss,
            "rate_bps": ln.rate_bps, "cost": ln.cost, "forwarder": ln.impaired,
        })
    for s in hosts:
        for t in hosts:
            if s is t:
                continue
            for ifc in plan.ifaces[t.name]:
                for fam in (4, 6):
                    dst = str(ifc.addr(fam).ip)
                    ps = paths(plan, s.name, dst)
                    if not ps:
                        continue
                    out["paths"].append({
                        "src": s.name, "dst": t.name, "family": fam,
                        "src_addr": _src_addr(plan, s.name, ifc.link, fam),
                        "dst_addr": dst,
                        "deterministic": len(ps) == 1 and not _has_ecmp(plan, s.name, ifc.link),
                        "paths": ps,
                        "one_way_delay_ms": _path_delay(plan, s.name, t.name, ifc.link),
                    })
    return out


FORWARDER_MODEL = (
    "one userspace process for all delayed links; a packet's delay runs from the kernel's stamp when the "
    "sending node hands it to the TUN (AF_PACKET tap, SO_TIMESTAMPNS) to the forwarder's write into the "
    "peer TUN; added_us is how late that write is against the configured due time (timer + spin error). "
    "delivery_us is how long that write takes: the next node's kernel runs inside it (routing, a host's "
    "reply, waking a reader), so the packet arrives somewhere within it -- an upper bound of what delivery "
    "adds, tens of us when the machine was idle, ~15 us when busy. A path's real one-way delay is the "
    "configured sum plus, per delayed link, added_us plus up to delivery_us (see rtt_bounds_ms)")


def forwarder_truth(t: dict[str, Any], calibration: dict[str, Any], stats: dict[str, Any] | None) -> None:
    """Add the forwarder's own error to truth ``t``: a top-level "forwarder" section and, per delayed link,
    ``added_us`` (live send lateness once the link carried packets, else the start-up calibration)."""
    live = (stats or {}).get("links", {})
    t["forwarder"] = {"model": FORWARDER_MODEL, "calibration": calibration,
                      "tap_drops": (stats or {}).get("tap_drops", 0), "links": live}
    cal = calibration.get("send_late_us", {})
    for ln in t["links"]:
        if not ln.get("forwarder"):
            continue
        st = live.get(str(ln["index"]), {})
        late = st.get("send_late_us", {})
        if late.get("n"):
            ln["added_us"] = {"source": "live", **late}
        elif cal.get("n"):
            ln["added_us"] = {"source": "calibration", **cal}
        if st.get("write_us", {}).get("n"):
            ln["delivery_us"] = st["write_us"]


def rtt_bounds_ms(t: dict[str, Any], links: list[int] | None = None) -> tuple[float, float]:
    """The RTT (ms) truth ``t`` claims for a round trip over ``links`` (indices; default: every link),
    each crossed once per direction: configured delays plus the forwarder's mean ``added_us``, and at
    most its mean ``delivery_us`` on top.  Links without live figures count their configured delay only."""
    lo = hi = 0.0
    for ln in t["links"]:
        if links is not None and ln["index"] not in links:
            continue
        lo += 2 * ln["delay_ms"]
        hi += 2 * ln["delay_ms"]
        if ln.get("forwarder"):
            added = 2 * ln.get("added_us", {}).get("mean", 0.0) / 1e3
            lo += added
            hi += added + 2 * ln.get("delivery_us", {}).get("mean", 0.0) / 1e3
    return lo, hi


def _has_ecmp(plan: Plan, src: str, k: int) -> bool:
    dist = _dist_to_link(plan, k)
    seen: set[str] = set()
    stack = [src]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        hops = nexthops(plan, n, k, dist)
        if len(hops) > 1:
            return True
        stack.extend(h.peer for h in hops if plan.spec.nodes[h.peer].forwards)
    return False


def _src_addr(plan: Plan, src: str, k: int, fam: int) -> str | None:
    if any(i.link == k for i in plan.ifaces[src]):
        return str([i for i in plan.ifaces[src] if i.link == k][0].addr(fam).ip)
    hops = nexthops(plan, src, k)
    return str(hops[0].addr(fam).ip) if hops else None


def _path_delay(plan: Plan, src: str, dst: str, k: int) -> list[float]:
    """Configured one-way delay (ms) along each path (min and max over ECMP branches)."""
    dist = _dist_to_link(plan, k)
    totals: list[float] = []

    def walk(node: str, acc: float, depth: int) -> None:
        if depth > 64 or len(totals) > MAX_PATHS:
            return
        if node == dst:
            totals.append(acc)
            return
        ln = plan.spec.links[k]
        if node in (ln.a, ln.b):
            totals.append(acc + ln.delay_ms)
            return
        for ifc in nexthops(plan, node, k, dist):
            walk(ifc.peer, acc + plan.spec.links[ifc.link].delay_ms, depth + 1)

    walk(src, 0.0, 0)
    return [min(totals), max(totals)] if totals else []
