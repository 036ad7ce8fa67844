"""The wrap report: every connection and UDP flow the program made, with VP-side times.

Why: a wrapped program measures its own timings on *this* machine, so they
include the path from here to the VP (through the controller) twice per
round trip. The endpoint's notifications carry the VP-side times instead,
and ``--timing vp`` records them per connection (all ns since the epoch on
the endpoint's clock, ``CLOCK_REALTIME``):

``tcp`` records
  ``open_ns``         this machine's clock when the relay asked for the
                      connection (local clock, for ordering only);
  ``established_ns``  endpoint clock when its ``connect()`` completed
                      (``established_source`` "user": the endpoint reads
                      its clock as the connect returns; there is no kernel
                      stamp of a SYN-ACK);
  ``first_tx_ns``     kernel TX stamp of the program's first byte leaving
                      the VP (the request);
  ``first_rx_ns`` /   kernel RX stamps of the first and the last byte the
  ``last_rx_ns``      VP received from the server (``rx_source`` says
                      "kernel" or, without kernel stamps, "user");
  derived: ``ttfb_ns = first_rx_ns - first_tx_ns`` (request to first
  response byte, at the VP) and ``transfer_ns = last_rx_ns - first_rx_ns``.

``udp`` records (one per program socket and destination): the first
query's kernel TX stamp, the first reply's kernel RX stamp (``rtt_ns``),
datagram counts both ways.

``icmp`` records (one per echo request carried, ``icmprelay``): id, seq,
TTL, the kernel TX stamp of the request at the VP, the kernel RX stamp of
its answer and who answered (``from``: the target's echo reply, or a
router's time exceeded), ``rtt_ns`` — the VP-side RTT ping would print.

Without ``--timing vp`` the report still lists every connection and how it
ended (the outcome and bytes), without stamps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TcpRecord", "UdpRecord", "WrapReport"]


@dataclass
class TcpRecord:
    dst: str
    port: int
    family: int
    open_ns: int
    outcome: str = "open"  # "closed", "reset", "refused", "denied", "timeout", "error", "program-reset"
    reason: str | None = None
    tx_bytes: int = 0
    rx_bytes: int = 0
    established_ns: int | None = None
    established_source: str | None = None
    first_tx_ns: int | None = None
    first_tx_source: str | None = None
    first_rx_ns: int | None = None
    last_rx_ns: int | None = None
    rx_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "tcp"
        if self.first_tx_ns is not None and self.first_rx_ns is not None:
            d["ttfb_ns"] = self.first_rx_ns - self.first_tx_ns
        if self.first_rx_ns is not None and self.last_rx_ns is not None:
            d["transfer_ns"] = self.last_rx_ns - self.first_rx_ns
        return d


@dataclass
class UdpRecord:
    dst: str
    port: int
    family: int
    src_port: int  # the program's source port
    open_ns: int
    outcome: str = "open"
    reason: str | None = None
    tx_datagrams: int = 0
    rx_datagrams: int = 0
    first_tx_ns: int | None = None
    first_tx_source: str | None = None
    first_rx_ns: int | None = None
    rx_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "udp"
        if self.first_tx_ns is not None and self.first_rx_ns is not None:
            d["rtt_ns"] = self.first_rx_ns - self.first_tx_ns
        return d


@dataclass
class WrapReport:
    argv: list[str]
    vp: str
    timing: str
    exit_status: int | None = None
    tcp: list[TcpRecord] = field(default_factory=list)
    udp: list[UdpRecord] = field(default_factory=list)
    icmp: list[dict[str, Any]] = field(default_factory=list)  # echo requests carried (icmprelay)
    refused: dict[str, int] = field(default_factory=dict)  # what the wrap does not carry, by kind
    clock_offset_ns: int | None = None  # endpoint clock - local clock (NTP-style), with --timing vp
    refused_reason: str | None = None  # the last refusal's reason (e.g. the guard's rule)

    def refuse(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        conns = [r.to_dict() for r in self.tcp] + [r.to_dict() for r in self.udp] + [dict(r) for r in self.icmp]
        if self.timing != "vp":
            conns = [{k: v for k, v in c.items() if k == "open_ns" or not k.endswith(("_ns", "_source"))}
                     for c in conns]
        return {"argv": self.argv, "vp": self.vp, "timing": self.timing, "exit_status": self.exit_status,
                "clock_offset_ns": self.clock_offset_ns, "refused": self.refused,
                "refused_reason": self.refused_reason,
                "connections": conns}

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")
