"""ICMP echo (ping, ``traceroute -I``) from the program through the VP's raw sockets.

Where the guard grants raw ICMP and capture (``raw:1``/``raw:58`` and
``capture``), the program's echo requests are sent by an endpoint raw socket
with the program's own identifier, sequence, payload and TTL; a capture on
that socket (echo replies and the ICMP errors that quote an echo request)
brings the answers back, and only answers to what this program sent are
written into its TUN: echo replies from the target, and errors from routers
(time exceeded, unreachable) re-quoting the program's *own* request, so its
kernel matches them to its socket. Where the guard refuses, every echo
request gets an administratively-prohibited error instead (ping: "Packet
filtered"), and the report counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.wire import messages as m

from . import packets as pk
from .report import WrapReport

__all__ = ["IcmpRelay"]

#: Echo requests remembered for matching answers (oldest forgotten first).
REMEMBER = 4096
_FILTERS = {4: "icmp[0] == 0 or icmp[0] == 3 or icmp[0] == 11 or icmp[0] == 12",
            6: "icmp6 and (ip6[40] == 129 or ip6[40] == 1 or ip6[40] == 3 or ip6[40] == 4)"}


def _canon(addr: str) -> str:
    return ipaddress.ip_address(addr).compressed


@dataclass
class _Raw:
    family: int
    ready: asyncio.Task | None = None
    sid: int | None = None
    stream: Any = None
    reader: asyncio.Task | None = None


class IcmpRelay:
    def __init__(self, session: Any, report: WrapReport, write: Callable[[bytes], None],
                 refuse: Callable[[pk.Packet], None]) -> None:
        self.session = session
        self.report = report
        self.write = write
        self.refuse = refuse
        self.loop = asyncio.get_running_loop()
        self.raw: dict[int, _Raw] = {}
        self.sent: OrderedDict[tuple[int, str, int, int], pk.Packet] = OrderedDict()
        self.carried = 0
        self.records: dict[tuple[int, str, int, int], dict[str, Any]] = {}
        self.tags: dict[int, dict[str, Any]] = {}
        self._tag = 0

    def handle(self, pkt: pk.Packet) -> None:
        r = self.raw.get(pkt.family)
        if r is None:
            r = self.raw[pkt.family] = _Raw(pkt.family)
            r.ready = self.loop.create_task(self._open(r))
        self.loop.create_task(self._send(r, pkt))

    async def _open(self, r: _Raw) -> None:
        r.stream = self.session.stream()
        r.sid = await self.session.nopen("raw", r.family, ipproto=1 if r.family == 4 else 58, stream=r.stream)
        await self.session.ncap(r.sid, _FILTERS[r.family])
        r.reader = self.loop.create_task(self._read(r))

    async def _send(self, r: _Raw, pkt: pk.Packet) -> None:
        try:
            assert r.ready is not None
            await asyncio.shield(r.ready)
            message = pk.icmp_message(pkt)
            ident, seq = pk.echo_key(message)
            key = (pkt.family, _canon(pkt.dst), ident, seq)
            self.sent[key] = pkt
            rec = {"kind": "icmp", "dst": pkt.dst, "family": pkt.family, "id": ident, "seq": seq, "ttl": pkt.ttl,
                   "outcome": "sent", "from": None, "tx_ns": None, "rx_ns": None}
            self.records[key] = rec
            self.report.icmp.append(rec)
            while len(self.sent) > REMEMBER:
                self.records.pop(self.sent.popitem(last=False)[0], None)
            self._tag += 1
            self.tags[self._tag] = rec
            await self.session.nsend(r.sid, message, dst=pkt.dst, ttl=pkt.ttl, tag=self._tag)  # type: ignore[arg-type]
            self.carried += 1
        except (EndpointError, ConnectionLost, ValueError) as exc:
            self.report.refuse("icmp-echo")
            self.report.refused_reason = str(exc)
            self.refuse(pkt)

    async def _read(self, r: _Raw) -> None:
        while True:
            try:
                n = await r.stream.next()
            except ConnectionLost:
                return
            if isinstance(n, m.NTag):
                rec = self.tags.pop(n.tag, None)
                if rec is not None:
                    rec["tx_ns"], rec["tx_source"] = n.time_ns, n.ts_source
                continue
            if not isinstance(n, m.NData):
                continue
            message, ttl, src = pk.strip_ip(n.data, r.family)
            peer = n.peer or src
            if peer is None or len(message) < 8:
                continue
            with contextlib.suppress(ValueError):
                if message[0] == pk.ECHO_REPLY[r.family]:
                    ident, seq = pk.echo_key(message)
                    key = (r.family, _canon(peer), ident, seq)
                    orig = self.sent.get(key)
                    if orig is not None:
                        self._answered(key, "echo-reply", peer, n)
                        self.write(pk.build_icmp(r.family, peer, orig.src, message, ttl or 64))
                elif message[0] in pk.ICMP_ERRORS[r.family]:
                    q = pk.quoted_echo(message, r.family)
                    if q is None:
                        continue
                    key = (r.family, _canon(q[0]), q[1], q[2])
                    orig = self.sent.get(key)
                    if orig is not None:
                        self._answered(key, f"icmp-{message[0]}-{message[1]}", peer, n)
                        requote = message[:8] + orig.raw[:q[3]]
                        self.write(pk.build_icmp(r.family, peer, orig.src, requote, ttl or 64))

    def _answered(self, key: tuple[int, str, int, int], outcome: str, peer: str, n: m.NData) -> None:
        rec = self.records.get(key)
        if rec is not None and rec["rx_ns"] is None:
            rec.update(outcome=outcome, rx_ns=n.time_ns, rx_source=n.ts_source, **{"from": peer})
            if rec["tx_ns"] is not None:
                rec["rtt_ns"] = n.time_ns - rec["tx_ns"]

    async def close(self) -> None:
        for r in self.raw.values():
            for t in (r.reader, r.ready):
                if t is not None and not t.done():
                    t.cancel()
            if r.stream is not None:
                r.stream.close()
            if r.sid is not None:
                with contextlib.suppress(Exception):
                    await self.session.nclose(r.sid)
