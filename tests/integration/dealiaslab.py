"""The small alias lab the dealias tests share: a client, a kernel router and one alias-router
emulator holding a shared-counter, a per-interface, a random-ID and a mercator router."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator

from marionet.lab.spec import parse_dict

SH = ["10.200.0.1", "10.200.0.2", "10.200.0.3"]  # one shared counter
PI = ["10.200.0.11", "10.200.0.12"]  # per-interface counters
RND = ["10.200.0.31", "10.200.0.32"]  # random IDs
MERC = ["10.200.0.21", "10.200.0.22", "fd00:c8::21", "fd00:c8::22"]  # port unreachables from .21 / ::21
ROUTERS = [
    {"name": "sh", "ipid": "shared", "addresses": SH, "velocity": 50.0},
    {"name": "pi", "ipid": "per-interface", "addresses": PI},
    {"name": "rnd", "ipid": "random", "addresses": RND},
    {"name": "merc", "ipid": "shared", "addresses": MERC, "udp_reply_source": [MERC[0], MERC[2]]},
]


@contextmanager
def dealias_lab(name: str) -> Iterator[Any]:
    """The lab, up and answering (the emulator's first echo reply seen from the client)."""
    from marionet.lab.pytest_plugin import make_lab

    spec = parse_dict({
        "lab": {"name": name, "controller": False},
        "host": [{"name": "client"}], "router": [{"name": "r1"}],
        "aliasrouter": [{"name": "ar", "options": {"seed": 3, "routers": ROUTERS}}],
        "link": [{"a": "client", "b": "r1"}, {"a": "r1", "b": "ar"}]})
    with make_lab(spec) as lab:
        assert not lab.warnings, lab.warnings
        for _ in range(20):
            if lab.exec("client", ["ping", "-c", "1", "-W", "1", SH[0]]).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError("the emulator does not answer")
        yield lab
