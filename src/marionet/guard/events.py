"""The flat view of one operation that monitors (and audit lines) see.

Why flat: a WebAssembly monitor reads fixed fields from linear memory, so
every request kind is reduced to the same record — who, which operation,
which socket, addresses, ports, the payload — before it crosses into wasm.
The enforcing guard builds these from wire requests; monitors never see
wire structs.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Operation codes, as numbered in the monitor ABI (docs/monitors.md).
OPS: dict[str, int] = {
    "nopen": 1, "nsend": 2, "ncap": 3, "nclose": 4, "nctl": 5, "task": 6,
    "accept": 7, "ndata": 8,
}

#: Socket kinds, as numbered in the monitor ABI.
PROTOS: dict[str, int] = {"": 0, "udp": 1, "tcp": 2, "tcp-listen": 3, "raw": 4}


@dataclass(slots=True)
class Event:
    """One operation or one piece of received data.

    ``dst``/``dport`` are where a send goes (or the peer data came from,
    for "ndata"/"accept"); ``src``/``sport`` the source the request asks
    for (None: the endpoint's choice). ``data`` is the payload (for "task"
    the primitive's parameters as compact JSON); ``primitive`` names the
    primitive an in-process session runs, or the one a "task" starts."""

    op: str
    sock: int = 0
    proto: str = ""
    family: int = 4
    ipproto: int = 0
    dst: str | None = None
    dport: int = 0
    src: str | None = None
    sport: int = 0
    data: bytes = b""
    primitive: str = ""
    principal: str = ""
