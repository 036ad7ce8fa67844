"""Emulated load balancers on a router (beyond the kernel's own ECMP hash).

Linux hashes ICMP on addresses only, so ICMP-Paris traceroute would see one
path through a kernel ECMP diamond.  Real per-flow balancers often hash the
first four bytes of the transport header: the ports for UDP/TCP and
type/code/checksum for ICMP.  ``flow`` reproduces that with a classic BPF
program in an iptables ``bpf`` match that computes
``hash(src, dst, proto, transport[0:4]) % K`` and marks the packet; policy
routing sends mark j to a table whose multipath routes keep only nexthop j.
``packet`` balances per packet (round robin via the ``statistic`` match).
"""

from __future__ import annotations

from typing import Sequence

from . import system
from .plan import Route

# classic BPF opcodes
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_W_IND = 0x40
LDX_B_MSH = 0xB1
LDX_MEM = 0x61
ST = 0x02
ALU_XOR_X, ALU_MUL_K, ALU_RSH_K, ALU_MOD_K, ALU_XOR_K = 0xAC, 0x24, 0x74, 0x94, 0xA4
JEQ_K = 0x15
RET_K = 0x06
MIX = 2654435761  # Knuth's multiplicative hash constant
TABLE_BASE = 100
MARK_BASE = 0x4D4E00  # "MN" — our marks, unlikely to clash with anything
RULE_PREF = 1000


def _ins(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> tuple[int, int, int, int]:
    return (code, jt, jf, k & 0xFFFFFFFF)


def hash_program(family: int, buckets: int, bucket: int) -> list[tuple[int, int, int, int]]:
    """cBPF returning 1 iff the flow hash of an IP packet (starting at the IP header) is ``bucket``."""
    prog: list[tuple[int, int, int, int]] = []
    if family == 4:
        prog += [_ins(LD_W_ABS, 12), _ins(ST, 0), _ins(LD_W_ABS, 16), _ins(LDX_MEM, 0), _ins(ALU_XOR_X),
                 _ins(ST, 0), _ins(LD_B_ABS, 9), _ins(LDX_MEM, 0), _ins(ALU_XOR_X), _ins(ST, 0),
                 _ins(LDX_B_MSH, 0), _ins(LD_W_IND, 0), _ins(LDX_MEM, 0), _ins(ALU_XOR_X)]
    else:
        prog += [_ins(LD_W_ABS, 8), _ins(ST, 0)]
        for off in range(12, 40, 4):
            prog += [_ins(LD_W_ABS, off), _ins(LDX_MEM, 0), _ins(ALU_XOR_X), _ins(ST, 0)]
        prog += [_ins(LD_B_ABS, 6), _ins(LDX_MEM, 0), _ins(ALU_XOR_X), _ins(ST, 0),
                 _ins(LD_W_ABS, 40), _ins(LDX_MEM, 0), _ins(ALU_XOR_X)]
    prog += [_ins(ALU_MUL_K, MIX), _ins(ST, 0), _ins(ALU_RSH_K, 16), _ins(LDX_MEM, 0), _ins(ALU_XOR_X),
             _ins(ALU_MOD_K, buckets), _ins(JEQ_K, bucket, 0, 1), _ins(RET_K, 1), _ins(RET_K, 0)]
    return prog


def bytecode(prog: Sequence[tuple[int, int, int, int]]) -> str:
    """iptables' ``--bytecode`` text: "n,code jt jf k,…"."""
    return ",".join([str(len(prog))] + [f"{c} {jt} {jf} {k}" for c, jt, jf, k in prog])


def flow_bucket(family: int, src: bytes, dst: bytes, proto: int, l4: bytes, buckets: int) -> int:
    """The same hash in Python, for ground truth and tests."""
    def w(b: bytes, i: int) -> int:
        return int.from_bytes(b[i:i + 4], "big")
    h = 0
    if family == 4:
        h = w(src, 0) ^ w(dst, 0)
    else:
        words = [w(src, i) for i in range(0, 16, 4)] + [w(dst, i) for i in range(0, 16, 4)]
        for x in words:
            h ^= x
    h ^= proto
    h ^= w(l4.ljust(4, b"\0"), 0)
    h = (h * MIX) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return h % buckets


def install(ns: str, kind: str, routes: list[Route]) -> None:
    """Mark by flow hash (or per packet) and route each mark through one nexthop."""
    multi = [r for r in routes if len(r.nexthops) > 1]
    if not multi:
        return
    for family in (4, 6):
        fam_routes = [r for r in multi if r.family == family]
        if not fam_routes:
            continue
        k = max(len(r.nexthops) for r in fam_routes)
        ipt = "iptables" if family == 4 else "ip6tables"
        fam = "-4" if family == 4 else "-6"
        lines = []
        for j in range(k):
            table = TABLE_BASE + j
            mark = MARK_BASE + j + 1
            for r in fam_routes:
                via, dev = r.nexthops[j % len(r.nexthops)]
                lines.append(f"route add {r.dst} via {via} dev {dev} table {table}")
            system.run(["ip", "-n", ns, fam, "rule", "add", "fwmark", str(mark), "lookup", str(table),
                        "pref", str(RULE_PREF + j)])
            if kind == "flow":
                match = ["-m", "bpf", "--bytecode", bytecode(hash_program(family, k, j))]
            else:
                match = ["-m", "statistic", "--mode", "nth", "--every", str(k), "--packet", str(j)]
            system.run(["ip", "netns", "exec", ns, ipt, "-w", "-t", "mangle", "-A", "PREROUTING",
                        *match, "-j", "MARK", "--set-mark", str(mark)])
        system.ip_batch(ns, lines)
