"""Which external programs a lab needs, and a check that runs before anything is made.

A lab that discovers a missing program half-way through (``tc`` for the
first rate-limited link, ``nsd`` for the first DNS service) has already
made namespaces and rules it must then take down again, and the error it
shows is a subprocess's, not the fix.  So ``Lab.up()`` asks
:func:`check_tools` first: from the spec alone it knows every program the
build will run, looks each up on ``PATH`` the way ``subprocess`` will, and
fails with one line naming the program and the Debian package to install.

Sysctls are written through ``/proc/sys`` by ``sh`` (no ``sysctl`` binary),
and iptables is the only firewall front end used (``iptables-nft`` on
current Debian needs no ``nft`` program), so neither ``sysctl`` nor ``nft``
is listed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .system import LabError

if TYPE_CHECKING:
    from .spec import Spec

#: program -> the Debian package that ships it (bookworm names).
PACKAGES: dict[str, str] = {
    "sh": "dash",
    "ip": "iproute2",
    "tc": "iproute2",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "ping": "iputils-ping",
    "nsd": "nsd",
    "nsd-checkconf": "nsd",
    "nsd-checkzone": "nsd",
    "nginx": "nginx",
    "iperf3": "iperf3",
    "unbound": "unbound",
    "unbound-checkconf": "unbound",
    "chronyd": "chrony",
    "snmpd": "snmpd",
}

#: programs each service kind runs (Python servers need none).
SERVICE_TOOLS: dict[str, tuple[str, ...]] = {
    "dns": ("nsd", "nsd-checkzone", "nsd-checkconf"),
    "http": ("nginx",),
    "https": ("nginx",),
    "resolver": ("unbound", "unbound-checkconf"),
    "ntp": ("chronyd",),
    "snmp": ("snmpd",),
}


class MissingTool(LabError):
    """Programs the lab needs are not on PATH; ``missing`` holds (program, package) pairs."""

    def __init__(self, missing: list[tuple[str, str]]):
        self.missing = missing
        super().__init__(missing_message(missing))


def missing_message(missing: list[tuple[str, str]]) -> str:
    """One line: which programs, which packages, the command that installs them."""
    what = " and ".join(f"`{tool}` (Debian package {pkg})" for tool, pkg in missing)
    pkgs = " ".join(dict.fromkeys(pkg for _, pkg in missing))
    it = "it" if len(missing) == 1 else "them"
    return f"lab needs {what}; install {it} with apt-get install {pkgs}"


def package_of(tool: str) -> str:
    """The Debian package for ``tool`` (its own name when unknown)."""
    return PACKAGES.get(tool, tool)


def needed_tools(spec: "Spec") -> list[str]:
    """Every external program building ``spec`` will run, in a stable order."""
    need: list[str] = ["ip", "sh"]
    nodes = list(spec.nodes.values())
    if any(not ln.impaired for ln in spec.links):
        need.append("ping")  # warm-up of ARP/ND across plain veth links
    if any(ln.rate_bps for ln in spec.links):
        need.append("tc")
    v4_rules = any(n.unresponsive or (n.kind == "router" and n.balancer != "kernel") for n in nodes)
    vps_dial = spec.controller not in (False, "none") and any(n.kind == "vp" for n in nodes)
    if v4_rules or vps_dial:
        need.append("iptables")  # unresponsive hops, balancers, the VPs' management filter
    if v4_rules:
        need.append("ip6tables")
    for s in spec.services:
        need += SERVICE_TOOLS.get(s.kind, ())
        if s.kind == "bulk" and s.options.get("impl") == "iperf3":
            need.append("iperf3")
    if spec.resolver_host() is not None:
        need += SERVICE_TOOLS["resolver"]
    return list(dict.fromkeys(need))


def find_missing(tools: Iterable[str], which: Callable[[str], str | None] = shutil.which) -> list[tuple[str, str]]:
    """(program, package) for each of ``tools`` that ``which`` cannot find."""
    return [(t, package_of(t)) for t in tools if which(t) is None]


def check_tools(spec: "Spec", which: Callable[[str], str | None] = shutil.which) -> None:
    """Raise :class:`MissingTool` unless every program ``spec`` needs is on PATH."""
    missing = find_missing(needed_tools(spec), which)
    if missing:
        raise MissingTool(missing)
