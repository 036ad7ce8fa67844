"""Packet-interface plumbing shared by the primitives: probe sockets, queue
lead, route source, and waits that a halt ends."""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P


#: what ``HaltWatch.next`` returns when the halt came first
HALTED: Any = type("Halted", (), {"__repr__": lambda self: "HALTED"})()


class HaltWatch:
    """Waits for the next notification that end the moment ``halt`` is set.

    Why one helper: a halted primitive must stop waiting at once, to hand
    back its partial result, and must not leave a ``stream.next`` pending
    behind it (it would eat the next notification). ``halt`` None: plain
    waits. ``close()`` when the measurement ends.
    """

    def __init__(self, halt: asyncio.Event | None) -> None:
        self.halt = halt
        self._wait: asyncio.Future | None = None

    @property
    def halted(self) -> bool:
        return self.halt is not None and self.halt.is_set()

    async def next(self, stream: Any, timeout: float) -> Any:
        """The next notification, None on timeout, ``HALTED`` if the halt
        fired first."""
        if self.halt is None:
            return await stream.next(timeout)
        if self._wait is None:
            self._wait = asyncio.ensure_future(self.halt.wait())
        nt = asyncio.ensure_future(stream.next(timeout))
        await asyncio.wait({nt, self._wait}, return_when=asyncio.FIRST_COMPLETED)
        if not nt.done():
            nt.cancel()
            try:
                await nt
            except (asyncio.CancelledError, ConnectionLost):
                pass
            return HALTED
        return nt.result()

    def close(self) -> None:
        if self._wait is not None:
            self._wait.cancel()
            self._wait = None


@dataclass
class ProbeSockets:
    """The sockets one measurement opened: ``send`` probes, ``capture``
    maps socket → filter role ("probe" or "icmp")."""

    send: int = 0
    capture: dict[int, str] = field(default_factory=dict)
    opened: list[int] = field(default_factory=list)


def queue_lead_ns(ctl_rtt_ns: int) -> int:
    """How far ahead of its send time a probe is queued at the endpoint.

    Enough for the request to arrive first (two control round trips and a
    margin), so the endpoint's scheduler, not the client's loop, sets the
    send time; no more, because a path left idle between probes goes cold
    (on a 3-router veth path a 2 ms floor doubled hop RTTs and trace time).
    """
    return max(700_000, 2 * ctl_rtt_ns + 500_000)


async def route_source(io: PacketSession, family: int, dst: str, port: int) -> str:
    """The endpoint's source address toward ``dst``: a connected UDP
    socket's local address is the kernel's route lookup."""
    sid = await io.nopen("udp", family=family, raddr=dst, rport=port)
    try:
        laddr = io.sockets[sid].laddr
    finally:
        await io.nclose(sid)
    if not laddr or ipaddress.ip_address(laddr).is_unspecified:
        raise ValueError(f"the endpoint has no source address toward {dst}")
    return laddr


async def open_probe_sockets(io: PacketSession, socks: ProbeSockets, *, family: int, proto: int,
                             src: str, filters: dict[str, str], stream: Any,
                             ttl: int | None = None, tos: int | None = None) -> None:
    """Raw sockets for probes of IP protocol ``proto``, capture filters set.

    IPv4 probes carry our own header (``hdrincl``: the probe's IP-ID is
    known), and ICMP errors are captured on a second raw ICMP socket when
    ``filters`` has an "icmp" role. IPv6 captures on the probe socket (the
    endpoint captures full IPv6 packets there). Every socket is bound to
    ``src``: the kernel then hands it only packets addressed to us, instead
    of cloning every packet of that protocol to every raw socket on the
    host (which makes thousands of concurrent measurements quadratic).
    ``socks`` is filled as sockets open, so a failure part-way still closes
    what was opened.
    """
    if family == 4:
        socks.send = await io.nopen("raw", family=4, ipproto=proto, hdrincl=True, laddr=src, stream=stream)
        socks.opened.append(socks.send)
        socks.capture[socks.send] = "probe"
        if "icmp" in filters:
            c = await io.nopen("raw", family=4, ipproto=P.IPPROTO_ICMP, laddr=src, stream=stream)
            socks.opened.append(c)
            socks.capture[c] = "icmp"
    else:
        socks.send = await io.nopen("raw", family=6, ipproto=proto, laddr=src, stream=stream,
                                    ttl=ttl, tos=tos)
        socks.opened.append(socks.send)
        socks.capture[socks.send] = "probe"
    for sid, role in socks.capture.items():
        await io.ncap(sid, filters[role])


async def with_probe_sockets(io: PacketSession, drive: Callable[[ProbeSockets, Any], Awaitable[Any]], *,
                             family: int, proto: int, src: str, filters: dict[str, str],
                             ttl: int | None = None, tos: int | None = None) -> Any:
    """``drive(socks, stream)`` over probe sockets opened on a notification
    stream of their own (other measurements on the session neither see our
    packets nor lose theirs to us), closed afterwards whatever happens."""
    socks = ProbeSockets()
    with io.stream() as stream:
        try:
            await open_probe_sockets(io, socks, family=family, proto=proto, src=src, filters=filters,
                                     stream=stream, ttl=ttl, tos=tos)
            return await drive(socks, stream)
        finally:
            await close_sockets(io, socks)


async def close_sockets(io: PacketSession, socks: ProbeSockets) -> None:
    """Close what was opened; a session already gone has closed them."""
    for sid in socks.opened:
        try:
            await io.nclose(sid)
        except (EndpointError, ConnectionLost):
            pass
