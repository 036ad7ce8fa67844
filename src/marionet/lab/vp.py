"""Vantage points: a management network to the host's controller, and the endpoint.

A VP's endpoint dials a controller that runs in the root namespace.  Probe
traffic must stay inside the lab, so each VP gets one extra veth (``mgmt0``)
on a per-lab bridge in the root namespace with a lab-private /24, and
iptables in the VP lets only TCP to the controller address out of ``mgmt0``.
The lab's routes are all specific prefixes, so nothing else leaks there.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import random
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from . import system
from .system import LabError

if TYPE_CHECKING:
    from .core import Lab
    from .spec import Node

MGMT_RANGE = ipaddress.ip_network("10.254.0.0/16")
MGMT_IF = "mgmt0"
DEFAULT_CONTROLLER_PORT = 7890


def _root_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix the root namespace already routes or owns."""
    nets = []
    cp = system.run(["ip", "-4", "-o", "route", "show", "table", "all"], check=False)
    for line in cp.stdout.splitlines():
        tok = line.split()[0] if line.split() else ""
        if tok in ("local", "broadcast", "unicast", "multicast"):
            tok = line.split()[1]
        try:
            nets.append(ipaddress.ip_network(tok if tok != "default" else "0.0.0.0/32", strict=False))
        except ValueError:
            continue
    cp = system.run(["ip", "-4", "-o", "addr", "show"], check=False)
    for line in cp.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


def pick_mgmt_subnet(seed: str) -> ipaddress.IPv4Network:
    used = _root_networks()
    subnets = list(MGMT_RANGE.subnets(new_prefix=24))
    random.Random(seed).shuffle(subnets)
    for n in subnets:
        if not any(n.overlaps(u) for u in used if u.prefixlen > 0):
            return n
    raise LabError("no free management /24 in 10.254.0.0/16")


def controller_address(lab: "Lab") -> tuple[str, int] | None:
    """(host, port) the VPs dial: the lab's own controller, or an external one.

    ``Lab(controller=…)`` or the spec's ``[lab] controller``: "auto"/true →
    the controller the lab started (``lab.ctl``); "HOST:PORT" → an existing
    controller ("auto:PORT" = the management gateway); false → none.
    """
    if lab.ctl is not None:
        host, _, port = lab.ctl.endpoints.rpartition(":")
        return host.strip("[]"), int(port)
    ctl = lab.controller or lab.spec.controller
    if ctl is False or ctl is None or ctl is True or ctl == "auto":
        return None
    host, _, port = str(ctl).rpartition(":")
    if host == "auto" and lab._mgmt:
        host = lab._mgmt["_gateway"]
    return host.strip("[]"), int(port)


def setup_mgmt(lab: "Lab", vps: list["Node"]) -> dict[str, str]:
    """Bridge in the root namespace + one veth per VP; returns {vp: addr, "_gateway": addr}."""
    assert lab.state and lab.plan
    st = lab.state
    net = pick_mgmt_subnet(lab.lab_id)
    hosts = list(net.hosts())
    gw = hosts[0]
    br = f"{lab.prefix}br"
    if system.link_exists(br):
        raise LabError(f"{br} already exists; not touching it")
    st.root_links.append(br)
    st.save()
    system.run(["ip", "link", "add", br, "type", "bridge"])
    system.run(["ip", "addr", "add", f"{gw}/{net.prefixlen}", "dev", br])
    system.run(["ip", "link", "set", br, "up"])
    out: dict[str, str] = {"_gateway": str(gw), "_subnet": str(net), "_bridge": br}
    for i, node in enumerate(vps):
        host_if = f"{lab.prefix}m{i}"
        if system.link_exists(host_if):
            raise LabError(f"{host_if} already exists; not touching it")
        ns = lab.plan.netns(node.name)
        addr = hosts[1 + i]
        st.root_links.append(host_if)
        st.save()
        system.run(["ip", "link", "add", host_if, "type", "veth", "peer", "name", MGMT_IF, "netns", ns])
        system.run(["ip", "link", "set", host_if, "master", br, "up"])
        system.ip_batch(ns, [f"addr add {addr}/{net.prefixlen} dev {MGMT_IF}", f"link set {MGMT_IF} up"])
        rules = [
            ["-A", "OUTPUT", "-o", MGMT_IF, "-p", "tcp", "-d", str(gw), "-j", "ACCEPT"],
            ["-A", "OUTPUT", "-o", MGMT_IF, "-j", "DROP"],
            ["-A", "INPUT", "-i", MGMT_IF, "-p", "tcp", "-s", str(gw), "-j", "ACCEPT"],
            ["-A", "INPUT", "-i", MGMT_IF, "-j", "DROP"],
        ]
        for r in rules:
            system.run(["ip", "netns", "exec", ns, "iptables", "-w", *r])
        out[node.name] = str(addr)
    return out


def marionet_argv() -> list[str]:
    exe = shutil.which("marionet")
    return [exe] if exe else [sys.executable, "-m", "marionet.cli"]


@functools.lru_cache(maxsize=1)
def endpoint_supported() -> bool:
    """True once ``marionet endpoint --help`` lists ``--controller`` (lands with the controller issue)."""
    try:
        cp = subprocess.run([*marionet_argv(), "endpoint", "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cp.returncode == 0 and "--controller" in cp.stdout


def endpoint_command(node: "Node", controller: tuple[str, int], meta_file: str | None = None,
                     tls: tuple[str, str, str] | None = None, engine: str | None = None) -> list[str]:
    """The command line a VP runs.

    ``marionet endpoint --controller H:P --name N [--tag k=v …] [--meta F]
    [--cert C --key K --ca CA]``: the VPs reach the controller over the
    management bridge, not loopback, so the endpoint refuses plain TCP and
    needs all three TLS files.
    """
    host, port = controller
    hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [*marionet_argv(), "endpoint", "--controller", hp, "--name", node.name]
    for k, v in sorted(node.tags.items()):
        argv += ["--tag", f"{k}={v}"]
    if meta_file:
        argv += ["--meta", meta_file]
    if tls:
        cert, key, ca = tls
        argv += ["--cert", cert, "--key", key, "--ca", ca]
    if engine:
        argv += ["--engine", engine]
    return argv


def vp_meta(node: "Node", ipv4: list[str] | None = None, ipv6: list[str] | None = None) -> dict[str, Any]:
    """Registry metadata in the controller's field names (asn4/asn6, ipv4/ipv6, addresses).

    The lab's addresses are given explicitly: otherwise the endpoint would
    report every local address, including the management interface, which
    is not a measurement source.
    """
    meta: dict[str, Any] = {"tags": dict(node.tags)}
    if node.cc is not None:
        meta["cc"] = node.cc
    if node.asn is not None:
        meta["asn4"] = node.asn
        meta["asn6"] = node.asn
    if node.loc is not None:
        meta["loc"] = list(node.loc)
    if ipv4:
        meta["ipv4"] = ipv4[0]
    if ipv6:
        meta["ipv6"] = ipv6[0]
    meta["addresses"] = [*(ipv4 or []), *(ipv6 or [])]
    return meta


def launch_endpoint(lab: "Lab", node: "Node") -> subprocess.Popen | None:
    """Start the endpoint inside the VP; None (with a warning) when not possible."""
    ctl = controller_address(lab)
    if ctl is None:
        return None
    if not endpoint_supported():
        lab.warnings.append(f"vp {node.name}: `marionet endpoint --controller` not available; endpoint not started")
        return None
    tls = lab.vp_tls(node.name)
    if tls is None and ctl[0] not in ("127.0.0.1", "::1", "localhost"):
        lab.warnings.append(f"vp {node.name}: no certificate for the external controller {ctl[0]}:{ctl[1]} "
                            "(pass Lab(pki=PKI_DIR) with the CA it trusts); endpoint not started")
        return None
    from .hooks import service_dir
    d = service_dir(lab)
    meta = d / f"{node.name}.meta.json"
    meta.write_text(json.dumps(vp_meta(node, lab.addrs(node.name, 4), lab.addrs(node.name, 6))))
    log = open(d / f"{node.name}.endpoint.log", "ab")
    env = None
    if node.clock_skew_ms:  # the endpoint's clock, as if off by this much (marionet.wire.skew)
        import os
        env = {**os.environ, "MARIONET_CLOCK_SKEW_MS": repr(node.clock_skew_ms)}
    try:
        return subprocess.Popen(["ip", "netns", "exec", lab.netns(node.name),
                                 *endpoint_command(node, ctl, str(meta), tls, lab.vp_engine)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
    finally:
        log.close()
