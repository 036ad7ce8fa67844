"""The host's DNS resolvers, as its ``resolv.conf`` names them.

Why: scamper's ``do_dns`` without a server asks the vantage point's own
resolver.  Only the endpoint can know which that is (reading the caller's
file would measure from the wrong place), so the endpoint reports them in
``info()`` and ``dns()`` falls back to the first.
"""

from __future__ import annotations

import ipaddress
import logging

log = logging.getLogger("marionet.endpoint")

#: glibc uses at most three; a longer list is someone else's file format.
MAX_RESOLVERS = 8


def parse_resolvers(text: str) -> list[str]:
    """``nameserver`` addresses in file order, canonical, without duplicates.

    Lines that are not valid are skipped (a broken resolv.conf must not
    break ``info()``); an IPv6 scope (``fe80::1%eth0``) is kept.
    """
    out: list[str] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            addr = str(ipaddress.ip_address(fields[1]))
        except ValueError:
            continue
        if addr not in out:
            out.append(addr)
        if len(out) == MAX_RESOLVERS:
            break
    return out


def read_resolvers(path: str) -> list[str]:
    """Resolvers from ``path``; none when it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolvers(f.read(64 * 1024))
    except OSError as exc:
        log.debug("no resolvers from %s: %s", path, exc)
        return []
