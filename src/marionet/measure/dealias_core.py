"""Sans-I/O core of the dealias primitives: probedefs, schedules, probes, replies, verdicts.

Why sans-I/O: every alias-resolution method is "send these probes at these
times, then read the IP-IDs and sources of what came back". ``Probing``
builds each probe's bytes and matches captured packets to probes without
touching a socket, so ally's verdict, radargun's grouping, mercator's and
prefixscan's logic and midardisc's schedule are unit-testable and the same
in every placement; ``marionet.measure.dealias`` is the thin driver.

How a reply names its probe (IPv4 probes carry our own header, so we know
each probe's IP-ID): an ICMP error by the quoted probe's (dst, IP-ID); an
echo reply by (source, ICMP sequence: the probe's number); a TCP RST by its
sequence number, which is the ACK number our probe carried (unique per
probe). IPv6 (mercator only: no IP-ID) puts the probe number in the UDP
payload, read back from the quote.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass, field
from typing import Any

from marionet.measure import probes as P
from marionet.measure.params import integer, shown
from marionet.results.dealias import (Dealias, DealiasProbe, DealiasProbedef, DealiasReply, ipid_inseq,
                                      radargun_sets)

__all__ = ["PROBE_METHODS", "Probedef", "Slot", "Probing", "check_probedef", "check_probedefs",
           "ally_verdict", "mercator_verdict", "prefix_candidates", "covering_prefix", "alternating_slots",
           "round_slots", "check_schedule", "disc_slots", "result_of", "radargun_sets", "ipid_inseq"]

PROBE_METHODS = ("icmp-echo", "udp", "udp-dport", "tcp-ack", "tcp-ack-sport")
_KEYS = frozenset({"method", "dst", "src", "ttl", "size", "sport", "dport", "icmp_id", "icmp_sum"})
_PROTO = {"icmp-echo": P.IPPROTO_ICMP, "udp": P.IPPROTO_UDP, "udp-dport": P.IPPROTO_UDP,
          "tcp-ack": P.IPPROTO_TCP, "tcp-ack-sport": P.IPPROTO_TCP}
_MIN_SIZE = {"icmp-echo": 8, "udp": 8, "udp-dport": 8, "tcp-ack": 20, "tcp-ack-sport": 20}


@dataclass(frozen=True)
class Probedef:
    """A validated probe definition (scamper's probedef)."""

    method: str
    dst: str | None
    src: str | None
    ttl: int
    size: int
    sport: int
    dport: int
    icmp_id: int
    icmp_sum: int | None

    @property
    def family(self) -> int | None:
        return None if self.dst is None else ipaddress.ip_address(self.dst).version

    def with_dst(self, dst: str) -> "Probedef":
        return Probedef(self.method, dst, self.src, self.ttl, self.size, self.sport, self.dport,
                        self.icmp_id, self.icmp_sum)

    def result(self, i: int, src: str | None) -> DealiasProbedef:
        icmp = self.method == "icmp-echo"
        return DealiasProbedef(id=i, method=self.method, dst=self.dst, src=self.src or src, ttl=self.ttl,
                               size=self.size, sport=None if icmp else self.sport,
                               dport=None if icmp else self.dport, icmp_id=self.icmp_id if icmp else None,
                               icmp_sum=(self.icmp_sum or 0) if icmp else None)


def _addr(name: str, v: Any) -> str:
    try:
        return str(ipaddress.ip_address(v if not isinstance(v, bytes) else v.decode()))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValueError(f"{name} must be an IP address, got {shown(v)}") from None


def check_probedef(raw: Any, where: str = "probedef", *, default_method: str = "udp",
                   rng: random.Random | None = None) -> Probedef:
    """One probedef dict (method, dst, src, ttl, size, sport, dport, icmp_id,
    icmp_sum) → ``Probedef``; ``ValueError`` naming the bad key."""
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be a dict of method, dst, src, ttl, size, sport, dport, icmp_id, "
                         f"icmp_sum, got {type(raw).__name__}")
    bad = [str(k)[:30] for k in raw if k not in _KEYS]
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)} (accepted: {', '.join(sorted(_KEYS))})")
    rng = rng or random.SystemRandom()
    method = raw.get("method", default_method)
    if method not in PROBE_METHODS:
        raise ValueError(f"{where}.method must be one of {', '.join(PROBE_METHODS)}, got {shown(method)}")
    dst = None if raw.get("dst") is None else _addr(f"{where}.dst", raw["dst"])
    src = None if raw.get("src") is None else _addr(f"{where}.src", raw["src"])
    if dst and src and ipaddress.ip_address(dst).version != ipaddress.ip_address(src).version:
        raise ValueError(f"{where}: src {src} and dst {dst} are different address families")
    ttl = integer(f"{where}.ttl", raw.get("ttl", 255), 1, 255)
    size = integer(f"{where}.size", raw.get("size", 0), 0, 1500)
    sport = integer(f"{where}.sport", raw.get("sport", rng.randrange(20000, 60000)), 1, 65535)
    dport_default = 80 if method.startswith("tcp") else 33435
    dport = integer(f"{where}.dport", raw.get("dport", dport_default), 1, 65535)
    icmp_id = integer(f"{where}.icmp_id", raw.get("icmp_id", rng.randrange(1, 0x10000)), 0, 0xFFFF)
    icmp_sum = integer(f"{where}.icmp_sum", raw.get("icmp_sum"), 0, 0xFFFF, optional=True)
    if icmp_sum is not None and method != "icmp-echo":
        raise ValueError(f"{where}.icmp_sum is for icmp-echo probes, not {method}")
    return Probedef(method, dst, src, ttl, size, sport, dport, icmp_id, icmp_sum)  # type: ignore[arg-type]


def check_probedefs(raw: Any, *, what: str, dsts: list[str] | None = None, default: str = "udp",
                    v6_ok: bool = False) -> list[Probedef]:
    """A list of probedefs; with ``dsts`` every probedef without a dst is
    crossed with every address (radargun / midarest: one probedef per
    (address, method)). All one address family; IPv6 only if ``v6_ok``."""
    if raw is None:
        raw = [{"method": default}]
    if isinstance(raw, (dict, str)):
        raw = [raw]
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"{what}: probedefs must be a non-empty list of dicts")
    if len(raw) > 100_000:
        raise ValueError(f"{what}: at most 100000 probedefs, got {len(raw)}")
    out: list[Probedef] = []
    base = [check_probedef(r, f"probedefs[{i}]", default_method=default) for i, r in enumerate(raw)]
    for pd in base:
        if pd.dst is not None:
            out.append(pd)
        elif dsts:
            out.extend(pd.with_dst(d) for d in dsts)
        else:
            raise ValueError(f"{what}: a probedef has no dst and no addresses were given")
    fams = {pd.family for pd in out}
    if len(fams) > 1:
        raise ValueError(f"{what}: probedefs mix IPv4 and IPv6 destinations; use one family per measurement")
    if 6 in fams and not v6_ok:
        raise ValueError(f"{what} needs IPv4: it compares IP-IDs, and IPv6 packets carry none "
                         "(scamper's dealias refuses this too)")
    srcs = {pd.src for pd in out if pd.src is not None}
    if len(srcs) > 1:
        raise ValueError(f"{what}: probedefs name different sources ({', '.join(sorted(srcs))}); use one")
    if 6 in fams and any(pd.method != "udp" for pd in out):
        raise ValueError(f"{what} over IPv6 probes with udp only")
    return out


# ---------------------------------------------------------------------------
# Schedules: (probedef index, send time offset in ns)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Slot:
    pd: int
    at_ns: int  #: offset from the run's start (endpoint clock)


def alternating_slots(n: int, wait_probe_ns: int, pds: tuple[int, ...] = (0, 1)) -> list[Slot]:
    """Ally: ``n`` probes, cycling through ``pds``, ``wait_probe`` apart."""
    return [Slot(pds[i % len(pds)], i * wait_probe_ns) for i in range(n)]


def round_slots(npd: int, rounds: int, wait_probe_ns: int, wait_round_ns: int) -> list[Slot]:
    """Radargun / midarest: each round probes every probedef once,
    ``wait_probe`` apart; a round starts ``max(round length, wait_round)``
    after the previous one."""
    period = max(npd * wait_probe_ns, wait_round_ns)
    return [Slot(k, r * period + k * wait_probe_ns) for r in range(rounds) for k in range(npd)]


def check_schedule(schedule: Any, npd: int) -> list[tuple[int, int, int]]:
    """midardisc rounds ``(start_ns_offset, begin, end)``: offsets >= 0 and
    not decreasing, ``begin <= end`` indexes into the probedefs (inclusive)."""
    if not isinstance(schedule, (list, tuple)) or not schedule:
        raise ValueError("schedule must be a non-empty list of (start_ns_offset, begin, end)")
    out: list[tuple[int, int, int]] = []
    last = 0
    for i, r in enumerate(schedule):
        if not isinstance(r, (list, tuple)) or len(r) != 3:
            raise ValueError(f"schedule[{i}] must be (start_ns_offset, begin, end), got {shown(r)}")
        off = integer(f"schedule[{i}] start offset", r[0], 0, 86_400 * 10**9)
        b = integer(f"schedule[{i}] begin", r[1], 0, npd - 1)
        e = integer(f"schedule[{i}] end", r[2], 0, npd - 1)
        assert off is not None and b is not None and e is not None
        if b > e:
            raise ValueError(f"schedule[{i}]: begin {b} is after end {e}")
        if off < last:
            raise ValueError(f"schedule[{i}]: start offset {off} ns is before the previous round's {last} ns")
        last = off
        out.append((off, b, e))
    return out


def disc_slots(rounds: list[tuple[int, int, int]], wait_probe_ns: int) -> list[Slot]:
    """midardisc: round k sends probedefs begin..end (inclusive) from its
    start offset on, ``wait_probe`` apart (0: all at the round's start)."""
    return [Slot(i, off + j * wait_probe_ns) for off, b, e in rounds for j, i in enumerate(range(b, e + 1))]


# ---------------------------------------------------------------------------
# Probes and replies
# ---------------------------------------------------------------------------

def _fix_sum(msg: bytes, want: int) -> bytes:
    """An ICMP message whose last two bytes are chosen so its checksum is
    ``want`` (scamper's icmp_sum: the checksum held constant while the
    sequence number varies)."""
    body = msg[:2] + b"\0\0" + msg[4:]
    s = (~P.checksum(body)) & 0xFFFF  # folded sum of the message with a zero word at the end
    w = ((~want) & 0xFFFF) + ((~s) & 0xFFFF)  # one's complement: s + w = ~want
    w = (w & 0xFFFF) + (w >> 16)
    body = body[:-2] + struct.pack("!H", w & 0xFFFF)
    return body[:2] + struct.pack("!H", P.checksum(body)) + body[4:]


@dataclass
class Probing:
    """Probes of one run: built from ``probedefs`` at ``slots``, matched to
    captured replies. ``src``: the run's source address."""

    probedefs: list[Probedef]
    slots: list[Slot]
    src: str
    ipid_base: int = field(default_factory=lambda: random.SystemRandom().randrange(1, 0x10000))
    ack_base: int = field(default_factory=lambda: random.SystemRandom().randrange(0, 2**32))
    probes: list[DealiasProbe] = field(default_factory=list)
    _seqs: dict[int, int] = field(default_factory=dict)
    _by_quote: dict[tuple[str, int], int] = field(default_factory=dict)
    _by_echo: dict[tuple[str, int, int], int] = field(default_factory=dict)
    _by_ack: dict[int, int] = field(default_factory=dict)
    strays: int = 0

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.src).version

    def protos(self) -> set[int]:
        return {_PROTO[pd.method] for pd in self.probedefs}

    def filters(self) -> dict[int, str]:
        """tcpdump filter per capturing socket's protocol (ICMP for echo
        replies and errors, TCP for RSTs; IPv6: ICMPv6 errors)."""
        if self.family == 6:
            return {P.IPPROTO_UDP: "ip6 and ip6[6] = 58 and ip6[40] >= 1 and ip6[40] <= 4"}
        out = {P.IPPROTO_ICMP: f"icmp and dst host {self.src} and (icmp[0] = 0 or icmp[0] = 3 or icmp[0] = 11)"}
        if P.IPPROTO_TCP in self.protos():
            out[P.IPPROTO_TCP] = f"tcp and dst host {self.src} and (tcp[13] & 4) != 0"
        return out

    def probe(self, k: int) -> tuple[int, bytes, str]:
        """(IP protocol, bytes, dst) of slot ``k``'s probe; records it."""
        slot = self.slots[k]
        pd = self.probedefs[slot.pd]
        assert pd.dst is not None
        seq = self._seqs.get(slot.pd, 0)
        self._seqs[slot.pd] = seq + 1
        n = len(self.probes)
        v6 = self.family == 6
        proto = _PROTO[pd.method]
        hdr = 40 if v6 else 20
        pad = max(0, pd.size - hdr - _MIN_SIZE[pd.method])
        if pd.method == "icmp-echo":
            body = P.icmp_echo(pd.icmp_id, n & 0xFFFF, bytes(max(pad, 2 if pd.icmp_sum is not None else 0)))
            if pd.icmp_sum is not None:
                body = _fix_sum(body, pd.icmp_sum)
            self._by_echo[(pd.dst, pd.icmp_id, n & 0xFFFF)] = n
        elif proto == P.IPPROTO_UDP:
            dport = pd.dport + seq if pd.method == "udp-dport" else pd.dport
            payload = struct.pack("!H", n & 0xFFFF) + bytes(max(0, pad - 2)) if v6 else bytes(pad)
            body = P.udp_segment(self.src, pd.dst, pd.sport, dport & 0xFFFF or 1, payload)
        else:
            sport = pd.sport + seq if pd.method == "tcp-ack-sport" else pd.sport
            ack = (self.ack_base + n) % 2**32
            self._by_ack[ack] = n
            body = P.tcp_segment(self.src, pd.dst, sport & 0xFFFF or 1, pd.dport, seq=0, ack=ack,
                                 flags=P.TCP_ACK, payload=bytes(pad))
        ipid = None
        if not v6:
            ipid = (self.ipid_base + n) % 0xFFFF + 1  # never 0: the kernel would fill it in
            self._by_quote[(pd.dst, ipid)] = n
            body = P.ipv4_header(self.src, pd.dst, proto, len(body), ttl=pd.ttl, ipid=ipid) + body
        else:
            self._by_quote[(pd.dst, n & 0xFFFF)] = n
        self.probes.append(DealiasProbe(probedef=slot.pd, dst=pd.dst, seq=seq, ipid=ipid))
        return proto, body, pd.dst

    def sent(self, n: int, tx_ns: int | None, ts_source: str | None, error: str | None = None) -> None:
        p = self.probes[n]
        p.tx_ns, p.tx_ts_source, p.error = tx_ns, ts_source, error

    def match(self, pkt: P.IPPacket) -> int | None:
        """The probe number a captured packet answers, None if not ours."""
        icmp = pkt.icmp
        if icmp is not None:
            if icmp.type in (0, 129) and icmp.ident is not None and icmp.seq is not None:
                return self._by_echo.get((pkt.src, icmp.ident, icmp.seq))
            q = icmp.quote
            if q is None:
                return None
            if pkt.version == 4:
                return self._by_quote.get((q.dst, q.ipid or 0))
            udp = q.udp
            if udp is not None and len(udp.payload) >= 2:
                return self._by_quote.get((q.dst, struct.unpack_from("!H", udp.payload)[0]))
            return None
        tcp = pkt.tcp
        if tcp is not None and tcp.flags & P.TCP_RST:
            n = self._by_ack.get(tcp.seq)
            if n is not None and self.probes[n].dst == pkt.src:
                return n
        return None

    def received(self, pkt: P.IPPacket, rx_ns: int) -> bool:
        n = self.match(pkt)
        if n is None:
            self.strays += 1
            return False
        icmp, tcp = pkt.icmp, pkt.tcp
        q = icmp.quote if icmp is not None else None
        self.probes[n].replies.append(DealiasReply(
            src=pkt.src, rx_ns=rx_ns, ipid=pkt.ipid if pkt.version == 4 else None, ttl=pkt.ttl,
            proto=pkt.proto, icmp_type=icmp.type if icmp else None, icmp_code=icmp.code if icmp else None,
            icmp_q_ttl=q.ttl if q is not None else None, tcp_flags=tcp.flags if tcp is not None else None,
            size=pkt.size))
        return True

    def all_done(self) -> bool:
        """Every slot sent, every probe answered and stamped."""
        return (len(self.probes) == len(self.slots) and
                all(p.error is not None or (p.replies and p.tx_ns is not None) for p in self.probes))


# ---------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------

def ally_verdict(probes: list[DealiasProbe], fudge: int) -> str:
    """scamper's ally: "aliases" if the replies' IP-IDs, in send order,
    alternate between the two addresses and come from one counter (each
    step forward by 1..``fudge``, wrapping at 65536); "not-aliases" if they
    do not; "none" if either address did not answer, or answered with an
    unusable ID (zero, or our own probe's IP-ID echoed)."""
    got = [(p.tx_ns or 0, p.probedef, p.replies[0].ipid, p.ipid) for p in probes if p.replies]
    if {g[1] for g in got} != {0, 1}:
        return "none"
    got.sort()
    if any(ipid is None or ipid == 0 or ipid == mine for _, _, ipid, mine in got):
        return "none"
    return "aliases" if ipid_inseq([g[2] for g in got], fudge) else "not-aliases"  # type: ignore[misc]


def mercator_verdict(probes: list[DealiasProbe]) -> str:
    """"aliases" if a reply to the probe came from another address than the
    one probed, "not-aliases" if from the probed one, "none" if none came."""
    for p in probes:
        for r in p.replies:
            return "aliases" if r.src != p.dst else "not-aliases"
    return "none"


def prefix_candidates(a: str, b: str, prefixlen: int) -> list[str]:
    """prefixscan's search order: the addresses of the /``prefixlen`` around
    ``b``, starting after ``b`` and wrapping round, without ``a`` or ``b``
    themselves (``b`` is the known far side; its alias is one of the others)."""
    net = ipaddress.ip_network(f"{b}/{prefixlen}", strict=False)
    bi = int(ipaddress.ip_address(b))
    lo, n = int(net.network_address), net.num_addresses
    out = []
    for k in range(1, n):
        c = str(ipaddress.ip_address(lo + (bi - lo + k) % n))
        if c != a:
            out.append(c)
    return out


def covering_prefix(x: str, y: str) -> str:
    """The smallest prefix holding both addresses, as "addr/len" (scamper's ``ab``)."""
    ix, iy = int(ipaddress.ip_address(x)), int(ipaddress.ip_address(y))
    bits = 32 if ipaddress.ip_address(x).version == 4 else 128
    plen = bits - (ix ^ iy).bit_length()
    return f"{y}/{plen}"


def result_of(method: str, run: Probing, *, start_ns: int, result: str, **kw: Any) -> Dealias:
    return Dealias(method=method, start_ns=start_ns, result=result,
                   probedefs=[pd.result(i, run.src) for i, pd in enumerate(run.probedefs)],
                   probes=list(run.probes), **kw)
