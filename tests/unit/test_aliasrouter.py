"""The alias-router emulator's sans-I/O core: the behaviours MIDAR-scale labs need
(fast wrapping counters, silence, lossy answers, per-method answers), at scale."""

from __future__ import annotations

import socket
import struct

import pytest

from marionet.lab.aliasrouter import AliasConfigError, AliasEmulator, behaviours, load_config
from tests.packets import icmp_echo

SRC = socket.inet_aton("10.0.0.1")


def _ip(dst: str, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, ttl, proto, 0, SRC,
                       socket.inet_aton(dst)) + payload


def echo(dst: str, seq: int = 1) -> bytes:
    return _ip(dst, 1, icmp_echo(77, seq & 0xFFFF, b"mn"))


def udp(dst: str) -> bytes:
    return _ip(dst, 17, struct.pack("!HHHH", 40000, 33434, 12, 0) + b"mnet")


def tcp_ack(dst: str) -> bytes:
    return _ip(dst, 6, struct.pack("!HHIIBBHHH", 40000, 80, 1, 99, 5 << 4, 0x10, 1024, 0, 0))


def ipid(reply: bytes | None) -> int:
    assert reply is not None
    return struct.unpack_from("!H", reply, 4)[0]


def emu(*routers: dict, seed: int = 3) -> AliasEmulator:
    return AliasEmulator(load_config({"seed": seed, "router": list(routers)}), now_ns=0)


def test_fast_counter_wraps_and_stays_exact() -> None:
    """30k IDs/s wraps 2¹⁶ in ~2.2 s; every reply is start + ⌊v·t⌋ + replies mod 2¹⁶."""
    e = emu({"name": "fast", "addresses": ["192.0.2.1", "192.0.2.2"], "velocity": 30_000.0, "offset": 60_000})
    got = []
    for n in range(400):
        t = n * 10_000_000  # every 10 ms for 4 s
        got.append(ipid(e.handle(echo("192.0.2.1" if n % 2 else "192.0.2.2", n), now_ns=t)))
        assert got[-1] == (60_000 + int(30_000 * t / 1e9) + n) & 0xFFFF
    wraps = sum(1 for a, b in zip(got, got[1:]) if b < a)
    assert wraps == 2  # 60000 + 120000 IDs over 4 s cross 65536 twice
    steps = [(b - a) & 0xFFFF for a, b in zip(got, got[1:])]
    assert all(s == 301 for s in steps)  # 300 background + 1 reply per 10 ms: below MIDAR's half-range


def test_silent_after_replies_and_after_seconds() -> None:
    e = emu({"name": "n", "addresses": ["192.0.2.1"], "silent_after": 5},
            {"name": "s", "addresses": ["192.0.2.2"], "silent_after_s": 1.0})
    answered = [e.handle(echo("192.0.2.1", k), now_ns=k) is not None for k in range(10)]
    assert answered == [True] * 5 + [False] * 5
    assert e.handle(echo("192.0.2.2"), now_ns=999_000_000) is not None
    assert e.handle(echo("192.0.2.2"), now_ns=1_000_000_000) is None
    assert e.handle(udp("192.0.2.2"), now_ns=5_000_000_000) is None
    st = e.stats()["routers"]
    assert st["n"]["silenced"] == 5 and st["n"]["replies"] == 5 and st["s"]["silenced"] == 2


def test_answer_probability_is_seeded_and_costs_no_ipid() -> None:
    cfg = {"name": "lossy", "addresses": ["192.0.2.1"], "answer_probability": 0.3}
    runs = []
    for _ in range(2):
        e = emu(dict(cfg))
        runs.append([e.handle(echo("192.0.2.1", k), now_ns=0) for k in range(2000)])
    assert [r is None for r in runs[0]] == [r is None for r in runs[1]]  # same seed, same losses
    ids = [ipid(r) for r in runs[0] if r is not None]
    assert 0.25 < len(ids) / 2000 < 0.35
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(ids, ids[1:]))  # unanswered probes don't count
    other = emu(dict(cfg), seed=4)
    assert [r is None for r in runs[0]] != [other.handle(echo("192.0.2.1", k), now_ns=0) is None for k in range(2000)]


def test_methods_icmp_only() -> None:
    e = emu({"name": "icmponly", "addresses": ["192.0.2.1", "2001:db8::1"], "methods": ["icmp"]},
            {"name": "all", "addresses": ["192.0.2.2"]})
    assert e.handle(udp("192.0.2.1")) is None and e.handle(tcp_ack("192.0.2.1")) is None
    a = ipid(e.handle(echo("192.0.2.1")))
    assert ipid(e.handle(echo("192.0.2.1"))) == (a + 1) & 0xFFFF  # refused probes did not count
    assert e.handle(udp("192.0.2.2")) is not None and e.handle(tcp_ack("192.0.2.2")) is not None
    assert e.stats()["routers"]["icmponly"]["unanswered"] == 2


def test_new_fields_are_validated() -> None:
    with pytest.raises(AliasConfigError, match=r"answer_probability"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "answer_probability": 1.5}]})
    with pytest.raises(AliasConfigError, match=r"silent_after"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "silent_after": -1}]})
    with pytest.raises(AliasConfigError, match=r"silent_after_s"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "silent_after_s": "soon"}]})
    with pytest.raises(AliasConfigError, match=r"methods"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "methods": ["icmp", "sctp"]}]})


def test_behaviours_round_trip() -> None:
    cfg = {"router": [{"name": "a", "addresses": ["192.0.2.1"], "ipid": "random", "methods": "icmp",
                       "silent_after": 3}]}
    b = behaviours(cfg)
    assert b[0]["name"] == "a" and b[0]["ipid"] == "random" and b[0]["methods"] == ["icmp"]
    assert b[0]["silent_after"] == 3 and b[0]["answer_probability"] == 1.0
    assert load_config({"router": b}).routers == load_config(cfg).routers


def test_hundreds_of_routers_interleaved() -> None:
    """200 routers / 1000 addresses in one emulator: each shared counter stays monotonic
    under interleaved probes to all its interfaces, and routers never share one."""
    routers = [{"name": f"r{i}", "addresses": [f"10.{100 + i // 50}.{i % 50}.{k + 1}" for k in range(5)],
                "ipid": "shared", "offset": (i * 331) % 65536} for i in range(200)]
    e = emu(*routers)
    assert len(e.by_addr) == 1000
    last: dict[int, int] = {}
    for n in range(5000):
        i, k = n % 200, (n // 200) % 5
        v = ipid(e.handle(echo(f"10.{100 + i // 50}.{i % 50}.{k + 1}", n), now_ns=n))
        if i in last:
            assert v == (last[i] + 1) & 0xFFFF
        last[i] = v
    assert e.stats()["replied"] == 5000
