"""A MIDAR Prober in virtual time over the alias-router emulator's real
packet logic (:class:`marionet.lab.aliasrouter.AliasEmulator`).

Each simulated VP has a true clock offset (VP − controller), the offset
the controller *believes* (its NTP-style estimate) with that estimate's
uncertainty, a one-way delay and jitter. A planned send at controller time
t leaves when the VP's clock reads t + believed offset, i.e. at true time
t + believed − true; the packet reaches the emulator after the delay and
the emulator, fed packets in arrival order, picks the IP-ID; the VP stamps
send and receive in its own clock, and the sample is converted back with
the believed offset. So a wrong estimate shows up exactly as it would on
the wire: probes land out of the planned order and times are off by the
estimate's error. Used by the tests and bench/midar_analysis.py.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marionet.lab.aliasrouter import AliasEmulator, derived_seed, load_config

from .midar import PlannedProbe
from .midar_analysis import IpidSample

__all__ = ["SimVP", "SimProber", "probe_packet", "mixed_routers"]


@dataclass(frozen=True)
class SimVP:
    name: str
    src: str  # the VP's IPv4 address
    true_offset_ns: int = 0
    believed_offset_ns: int = 0
    offset_err_ns: int = 0  # what the controller reports as the estimate's uncertainty
    delay_ns: int = 5_000_000
    jitter_ns: int = 500_000


def probe_packet(src: str, dst: str, method: str, seq: int) -> bytes:
    """An IPv4 probe of a MIDAR method, as the emulator reads it from its TUN."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    if method == "icmp-echo":
        proto, body = socket.IPPROTO_ICMP, struct.pack("!BBHHH", 8, 0, 0, 0x4D49, seq & 0xFFFF)
    elif method in ("udp", "udp-dport"):
        proto, body = socket.IPPROTO_UDP, struct.pack("!HHHH", 40000 + seq % 1000, 33435, 8, 0)
    elif method in ("tcp-ack", "tcp-ack-sport"):
        proto, body = socket.IPPROTO_TCP, struct.pack("!HHIIBBHHH", 40000 + seq % 1000, 80, seq, 1, 5 << 4,
                                                      0x10, 1024, 0, 0)
    else:
        raise ValueError(f"probe_packet: unknown method {method!r}")
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), seq & 0xFFFF, 0, 64, proto, 0, s, d)
    return hdr + body


class SimProber:
    """A :class:`marionet.measure.midar.Prober` in virtual time."""

    def __init__(self, config: Any, vps: Sequence[SimVP], *, seed: int = 1, start_ns: int = 10**18) -> None:
        self.emu = AliasEmulator(load_config(config), now_ns=start_ns)
        self.vps = {v.name: v for v in vps}
        self.rng = random.Random(seed)
        self.clock = start_ns
        self.sent: dict[str, int] = {v.name: 0 for v in vps}

    def now_ns(self) -> int:
        return self.clock

    async def run(self, plan: Sequence[PlannedProbe], phase: str) -> list[IpidSample]:
        events = []
        for i, pp in enumerate(plan):
            vp = self.vps.get(pp.vp)
            if vp is None:
                raise ValueError(f"SimProber: unknown VP {pp.vp!r}")
            send = pp.at_ns + vp.believed_offset_ns - vp.true_offset_ns
            arrive = send + vp.delay_ns + int(self.rng.uniform(0, vp.jitter_ns))
            events.append((arrive, i, send, vp))
            self.sent[pp.vp] += 1
        events.sort()
        out = []
        last = self.clock
        for arrive, i, send, vp in events:
            pp = plan[i]
            reply = self.emu.handle(probe_packet(vp.src, pp.addr, pp.method, i), now_ns=arrive)
            tx_vp = send + vp.true_offset_ns
            rx = ipid = None
            if reply is not None:
                ipid = struct.unpack_from("!H", reply, 4)[0]
                back = arrive + vp.delay_ns + int(self.rng.uniform(0, vp.jitter_ns))
                rx = back + vp.true_offset_ns - vp.believed_offset_ns
                last = max(last, back)
            last = max(last, arrive)
            out.append(IpidSample(pp.addr, pp.method, pp.vp, tx_vp - vp.believed_offset_ns, rx, ipid,
                                  vp.offset_err_ns))
        self.clock = last + 1_000_000_000  # the wait_timeout after the last probe
        return out


def _min_gap(starts: list[int]) -> int:
    return min(min((x - y) % 65536, (y - x) % 65536) for i, x in enumerate(starts) for y in starts[i + 1:])


def mixed_routers(n: int = 240, *, seed: int = 7, base: str = "10.200.0.0") -> dict[str, Any]:
    """An emulator config of ``n`` routers with MIDAR's cases mixed:
    shared counters at velocities 2–2000 IDs/s (2–4 addresses), byte-swapped,
    same-velocity pairs at distant offsets (the false-positive trap),
    counters too fast to sample, per-interface, per-destination, random
    and zero IDs. Fractions are fixed so every kind is present."""
    if n < 20:
        raise ValueError(f"mixed_routers: n {n} must be >= 20 to hold every kind")
    rng = random.Random(seed)
    kinds = (["shared"] * 40 + ["byteswapped"] * 8 + ["trap"] * 12 + ["fast"] * 5 + ["per-interface"] * 12
             + ["per-destination"] * 8 + ["random"] * 8 + ["zero"] * 7)
    net = int(ipaddress.IPv4Address(base))
    routers = []
    k = 0
    trap_v = None
    for i in range(n):
        kind = kinds[i * len(kinds) // n]
        naddr = rng.randint(2, 4)
        addrs = [str(ipaddress.IPv4Address(net + k + j + 1)) for j in range(naddr)]
        k += naddr
        v = round(10 ** rng.uniform(0.3, 3.3), 1)
        off = rng.randrange(65536)
        r: dict[str, Any] = {"name": f"r{i}", "addresses": addrs, "velocity": v, "offset": off}
        if kind == "trap":
            if trap_v is None:
                trap_v, trap_off = v, off
            else:
                r["velocity"], r["offset"] = trap_v, (trap_off + 20000) % 65536
                trap_v = None
            kind = "shared"
        elif kind == "fast":
            r["velocity"] = float(rng.randint(40000, 60000))
            kind = "shared"
        r["ipid"] = kind
        if kind == "per-interface":
            # Two interface counters starting a few IDs apart at one velocity
            # are indistinguishable from one shared counter by any IP-ID test;
            # keep them >= 1000 apart (the emulator derives each start from
            # the seed, router name and address: rename until they are).
            tries = 0
            while _min_gap([derived_seed(seed, r["name"], kind, a) for a in addrs]) < 1000:
                tries += 1
                r["name"] = f"r{i}.{tries}"
        routers.append(r)
    return {"seed": seed, "router": routers}
