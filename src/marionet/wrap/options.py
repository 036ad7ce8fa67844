"""What a wrap run is asked to do, checked before anything is built.

Everything a user types (``--resolve`` entries, ``--timing``, the program)
is parsed here into plain values, so a mistake is one clear ValueError and
no namespace is ever created for a run that cannot start.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ResolveEntry", "WrapOptions", "parse_resolve", "hosts_text", "resolv_conf_text", "TIMINGS"]

TIMINGS = ("none", "vp")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+$")


@dataclass(frozen=True)
class ResolveEntry:
    """``HOST:PORT:ADDR[,ADDR…]`` (curl's ``--resolve``): HOST resolves to ADDR.

    The program's name lookups read a hosts file, which has no ports: the
    entry applies to every port (PORT is checked and kept for the report).
    """

    host: str
    port: int
    addrs: tuple[str, ...]


def _addr(text: str, entry: str) -> str:
    t = text.strip()
    if t.startswith("[") and t.endswith("]"):
        t = t[1:-1]
    try:
        return str(ipaddress.ip_address(t))
    except ValueError:
        raise ValueError(f"--resolve {entry!r}: {text!r} is not an IP address") from None


def parse_resolve(entry: str) -> ResolveEntry:
    """Parse one ``HOST:PORT:ADDR[,ADDR…]``; IPv6 addresses may be bracketed."""
    if not isinstance(entry, str):
        raise ValueError(f"--resolve wants HOST:PORT:ADDR, got {entry!r}")
    parts = entry.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"--resolve wants HOST:PORT:ADDR[,ADDR…], got {entry!r}")
    host, port_text, addrs_text = parts
    if host.startswith("+"):
        host = host[1:]  # curl's "+HOST" (resolve lazily) means the same here
    if not _HOSTNAME.match(host) or host.replace(".", "").isdigit():
        raise ValueError(f"--resolve {entry!r}: {host!r} is not a host name")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"--resolve {entry!r}: port {port_text!r} is not 1..65535")
    addrs = tuple(_addr(a, entry) for a in addrs_text.split(","))
    return ResolveEntry(host.rstrip(".").lower(), int(port_text), addrs)


@dataclass
class WrapOptions:
    """A wrap run: the program, name resolution and the report."""

    argv: list[str]
    resolve: list[ResolveEntry] = field(default_factory=list)
    timing: str = "none"
    report: Path | None = None
    #: seconds an endpoint TCP connect may take before the program sees a reset
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise ValueError("give the program to run after --: marionet wrap [options] -- PROGRAM [ARGS…]")
        if not self.argv[0]:
            raise ValueError("the program name is empty")
        if self.timing not in TIMINGS:
            raise ValueError(f"--timing must be one of {', '.join(TIMINGS)}, not {self.timing!r}")
        if not 0 < self.connect_timeout <= 60:
            raise ValueError(f"connect timeout must be within (0, 60] s, got {self.connect_timeout!r}")
        self.resolve = [r if isinstance(r, ResolveEntry) else parse_resolve(r) for r in self.resolve]
        if self.report is not None:
            self.report = Path(self.report)
            if not self.report.parent.is_dir():
                raise ValueError(f"--report {self.report}: directory {self.report.parent} does not exist")


def hosts_text(entries: list[ResolveEntry]) -> str:
    """The program's /etc/hosts: localhost, then every ``--resolve`` mapping."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    for e in entries:
        lines += [f"{a}\t{e.host}" for a in e.addrs]
    return "\n".join(lines) + "\n"


def resolv_conf_text(resolver_alias: str) -> str:
    """The program's /etc/resolv.conf: one name server, the relayed alias."""
    return f"# marionet wrap: queries to this address are relayed to the VP's resolver\n" \
           f"nameserver {resolver_alias}\noptions attempts:2 timeout:3\n"
