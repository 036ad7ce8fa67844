"""The program's TUN device: UDP flows ⇄ endpoint UDP sockets; refusals for the rest.

Everything the program sends that is not TCP and not to its loopback
arrives here as an IP packet. UDP is carried: each program socket (source
address and port) gets one endpoint UDP socket, its datagrams are sent to
the destinations the program chose (the resolver alias maps to the VP's
resolver), and what comes back is written into the TUN as UDP packets
from the peer to the program — a NAT with endpoint-independent mapping,
whose public side is the VP. Flows idle for ``IDLE_S`` are closed.

ICMP echo requests go to ``icmprelay`` (carried where the guard grants raw
ICMP and capture, refused otherwise). Not carried, and refused so the
program fails at once instead of waiting for a timeout: other IP protocols (an ICMP
"administratively prohibited" from the relay's address: ping prints
"Packet filtered"), IP fragments (same), and datagrams the guard denies or
the endpoint cannot send (same, per datagram). Neighbour discovery and
other link-local ICMPv6 chatter of the TUN is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.wire import messages as m

from . import packets as pk
from .icmprelay import IcmpRelay
from .netns import RELAY_ADDR4, RELAY_ADDR6
from .report import UdpRecord, WrapReport

__all__ = ["TunRelay"]

log = logging.getLogger("marionet.wrap")

IDLE_S = 30.0
#: ICMPv6 types that are the TUN's own link chatter (RS, RA, NS, NA, redirect, MLD).
_V6_LINK_TYPES = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})


@dataclass
class _Flow:
    """One program UDP socket (family, address, port) and its endpoint socket."""

    family: int  # the program's family
    src: str
    sport: int
    ep_family: int
    sid: int | None = None
    stream: Any = None
    ready: asyncio.Future | None = None
    reader: asyncio.Task | None = None
    last_ns: int = field(default_factory=time.monotonic_ns)
    #: endpoint-side (addr, port) -> (what the program sent to, its record, last packet sent)
    dests: dict[tuple[str, int], tuple[str, UdpRecord, pk.Packet]] = field(default_factory=dict)
    tags: dict[int, UdpRecord] = field(default_factory=dict)


class TunRelay:
    """Reads the TUN; see the module docstring."""

    def __init__(self, session: Any, tun_fd: int, report: WrapReport,
                 map_dst: Callable[[int, str, int], tuple[int, str, int] | None]) -> None:
        self.session = session
        self.fd = tun_fd
        self.report = report
        self.map_dst = map_dst
        self.loop = asyncio.get_running_loop()
        self.flows: dict[tuple[int, str, int, int], _Flow] = {}
        self._tags = iter(range(1, 1 << 62))
        self._sweeper: asyncio.Task | None = None
        self.malformed = 0
        self.icmp = IcmpRelay(session, report, self._write, self._refuse)

    def start(self) -> None:
        self.loop.add_reader(self.fd, self._on_readable)
        self._sweeper = self.loop.create_task(self._sweep())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in list(self.flows.values()):
            await self._close_flow(flow)
        self.flows.clear()
        await self.icmp.close()

    # ---------------------------------------------------------------- input
    def _on_readable(self) -> None:
        for _ in range(256):
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EIO):
                    self.loop.remove_reader(self.fd)
                return
            try:
                pkt = pk.parse_packet(data)
            except ValueError:
                self.malformed += 1
                continue
            self._handle(pkt)

    def _handle(self, pkt: pk.Packet) -> None:
        if pkt.fragment:
            self.report.refuse("ip-fragment")
            self._refuse(pkt)
        elif pkt.proto == pk.PROTO_UDP:
            self._udp(pkt)
        elif pkt.proto == pk.PROTO_ICMPV6 and pkt.icmp_type in _V6_LINK_TYPES:
            return
        elif pkt.proto in (pk.PROTO_ICMP, pk.PROTO_ICMPV6):
            if pkt.icmp_type in (8, 128):  # echo requests; errors the program sends are dropped
                self.icmp.handle(pkt)
        elif pkt.proto == pk.PROTO_TCP:
            # the REDIRECT rule is gone (the program, as root, flushed it): still nothing leaves
            self.report.refuse("tcp-unredirected")
            self._refuse(pkt)
        else:
            self.report.refuse(f"ipproto-{pkt.proto}")
            self._refuse(pkt)

    def _write(self, packet: bytes) -> None:
        try:
            os.write(self.fd, packet)
        except OSError as exc:
            log.debug("TUN write failed: %s", exc)

    def _refuse(self, pkt: pk.Packet, kind: str = "prohibited") -> None:
        src = RELAY_ADDR4 if pkt.family == 4 else RELAY_ADDR6
        self._write(pk.build_icmp_error(pkt, src, kind))

    # ------------------------------------------------------------------ UDP
    def _udp(self, pkt: pk.Packet) -> None:
        assert pkt.sport is not None and pkt.dport is not None
        mapped = self.map_dst(pkt.family, pkt.dst, pkt.dport)
        if mapped is None:  # e.g. the resolver alias, but the VP has no resolver
            self.report.refuse("udp-no-resolver")
            self._refuse(pkt, "port")
            return
        ep_family, dst, dport = mapped
        key = (pkt.family, pkt.src, pkt.sport, ep_family)
        flow = self.flows.get(key)
        if flow is None:
            flow = self.flows[key] = _Flow(pkt.family, pkt.src, pkt.sport, ep_family)
            flow.ready = self.loop.create_task(self._open(flow))
        flow.last_ns = time.monotonic_ns()
        entry = flow.dests.get((dst, dport))
        if entry is None:
            rec = UdpRecord(dst=dst, port=dport, family=ep_family, src_port=pkt.sport, open_ns=time.time_ns())
            self.report.udp.append(rec)
            tag = next(self._tags)
            flow.tags[tag] = rec
        else:
            rec, tag = entry[1], None
        flow.dests[(dst, dport)] = (pkt.dst, rec, pkt)
        rec.tx_datagrams += 1
        self.loop.create_task(self._send(flow, pkt, dst, dport, rec, tag))

    async def _open(self, flow: _Flow) -> None:
        flow.stream = self.session.stream()
        flow.sid = await self.session.nopen("udp", flow.ep_family, stream=flow.stream)
        flow.reader = self.loop.create_task(self._read(flow))

    async def _send(self, flow: _Flow, pkt: pk.Packet, dst: str, dport: int, rec: UdpRecord,
                    tag: int | None) -> None:
        try:
            assert flow.ready is not None
            await asyncio.shield(flow.ready)
            assert flow.sid is not None
            await self.session.nsend(flow.sid, pkt.payload, dst=dst, port=dport, tag=tag)
        except EndpointError as exc:
            rec.outcome = "denied" if exc.code == "denied" else "error"
            rec.reason = str(exc)
            self._refuse(pkt)
        except (ConnectionLost, OSError) as exc:
            rec.outcome, rec.reason = "error", str(exc)
            self._refuse(pkt)

    async def _read(self, flow: _Flow) -> None:
        st = flow.stream
        while True:
            try:
                n = await st.next()
            except ConnectionLost:
                return
            if n is None:
                continue
            flow.last_ns = time.monotonic_ns()
            if isinstance(n, m.NData):
                key = (n.peer, n.port)
                entry = flow.dests.get(key)  # type: ignore[arg-type]
                if entry is None and n.peer is not None:
                    entry = next((e for (a, p), e in flow.dests.items()
                                  if p == n.port and pk.same_address(a, n.peer)), None)
                if entry is None:
                    # a reply from somewhere the program never sent to: shown as it is (NAT with
                    # endpoint-independent filtering would pass it; same family only)
                    if n.peer is None or n.port is None or (":" in n.peer) != (flow.family == 6):
                        continue
                    src, rec = n.peer, None
                else:
                    src, rec = entry[0], entry[1]
                if rec is not None:
                    if rec.first_rx_ns is None:
                        rec.first_rx_ns, rec.rx_source = n.time_ns, n.ts_source
                    rec.rx_datagrams += 1
                try:
                    self._write(pk.build_udp(flow.family, src, n.port or 0, flow.src, flow.sport, n.data))
                except ValueError:
                    continue
            elif isinstance(n, m.NTag):
                rec = flow.tags.pop(n.tag, None)
                if rec is not None:
                    if n.error is not None:
                        rec.outcome, rec.reason = "error", n.error
                    else:
                        rec.first_tx_ns, rec.first_tx_source = n.time_ns, n.ts_source
            elif isinstance(n, m.NIcmp):
                entry = next((e for (a, _), e in flow.dests.items()
                              if n.peer is not None and pk.same_address(a, n.peer)), None)
                if entry is None and flow.dests:
                    entry = list(flow.dests.values())[-1]
                if entry is not None:
                    entry[1].outcome, entry[1].reason = "icmp", f"ICMP type {n.icmp_type} code {n.icmp_code}"
                    self._refuse(entry[2], "port" if n.icmp_code == 3 or n.icmp_type == 1 else "prohibited")

    async def _close_flow(self, flow: _Flow) -> None:
        if flow.reader is not None:
            flow.reader.cancel()
        if flow.ready is not None and not flow.ready.done():
            flow.ready.cancel()
        if flow.stream is not None:
            flow.stream.close()
        if flow.sid is not None:
            with contextlib.suppress(Exception):
                await self.session.nclose(flow.sid)
        for _, rec, _ in flow.dests.values():
            if rec.outcome == "open":
                rec.outcome = "closed"

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(IDLE_S / 4)
            now = time.monotonic_ns()
            for key, flow in list(self.flows.items()):
                if now - flow.last_ns > IDLE_S * 1e9:
                    del self.flows[key]
                    await self._close_flow(flow)
