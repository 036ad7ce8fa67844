"""The alias-resolution router emulator, probed for real across a namespace pair.

Two namespaces we create (prefix ``mnas<pid>``): A is the prober, B runs the
emulator (via ``start_service("aliasrouter", …)``, so the service glue is
covered too). A routes 192.0.2.0/24 and 2001:db8::/32 to B, B forwards them
into the emulator's TUN. Probes are hand-built on raw sockets in A; the
checks are the ones alias-resolution techniques rely on.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from marionet.lab import aliasrouter
from marionet.lab.aliasrouter import AliasConfigError, AliasEmulator, alias_sets, ipid_alias_sets, load_config
from marionet.lab.services import netns_socket, start_service
from tests.packets import drain_echo_replies, icmp_echo

PREFIX = f"mnas{os.getpid()}"
NS_A, NS_B = f"{PREFIX}a", f"{PREFIX}b"
SRC1, SRC2 = "10.77.0.1", "10.77.0.11"

CONFIG = {
    "seed": 7,
    "router": [
        {"name": "shared", "addresses": ["192.0.2.1", "192.0.2.2", "2001:db8::1"], "ipid": "shared", "offset": 1000},
        {"name": "perif", "addresses": ["192.0.2.11", "192.0.2.12"], "ipid": "per-interface"},
        {"name": "perdst", "addresses": ["192.0.2.21", "192.0.2.22"], "ipid": "per-destination"},
        {"name": "random", "addresses": ["192.0.2.31"], "ipid": "random"},
        {"name": "zero", "addresses": ["192.0.2.41"], "ipid": "zero"},
        {"name": "swapped", "addresses": ["192.0.2.51", "192.0.2.52"], "ipid": "byteswapped", "offset": 0x1234},
        # The false-positive trap: same velocity, offsets 20000 apart.
        {"name": "trap1", "addresses": ["192.0.2.61"], "ipid": "shared", "velocity": 500.0, "offset": 100},
        {"name": "trap2", "addresses": ["192.0.2.62"], "ipid": "shared", "velocity": 500.0, "offset": 20100},
        {"name": "mercator", "addresses": ["192.0.2.71", "192.0.2.72", "2001:db8::71", "2001:db8::72"],
         "udp_reply_source": ["192.0.2.71", "2001:db8::71"]},
        {"name": "synack", "addresses": ["192.0.2.81"], "tcp_reply": "synack"},
        {"name": "limited", "addresses": ["192.0.2.91"], "rate_limit": 100, "rate_burst": 10},
        {"name": "fast", "addresses": ["192.0.2.101"], "ipid": "shared"},
    ],
}

root_only = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (network namespaces)"
)


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


@pytest.fixture(scope="module")
def lab() -> Iterator[dict]:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with build_lab() as env:
        yield env


@contextlib.contextmanager
def build_lab() -> Iterator[dict]:
    """Namespace pair + emulator; everything removed on exit, also on failure."""
    for n in (NS_A, NS_B):
        if _netns_exists(n):
            raise RuntimeError(f"namespace {n} already exists; not ours, not touching it")
    made: list[str] = []
    state = tempfile.mkdtemp(prefix=f"{PREFIX}-")
    handle = None
    try:
        for n in (NS_A, NS_B):
            _sh("ip", "netns", "add", n)
            made.append(n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        va, vb = f"{PREFIX}x", f"{PREFIX}y"
        _sh("ip", "link", "add", va, "netns", NS_A, "type", "veth", "peer", "name", vb, "netns", NS_B)
        _sh("ip", "-n", NS_A, "addr", "add", f"{SRC1}/24", "dev", va)
        _sh("ip", "-n", NS_A, "addr", "add", f"{SRC2}/24", "dev", va)
        _sh("ip", "-n", NS_B, "addr", "add", "10.77.0.2/24", "dev", vb)
        _sh("ip", "-n", NS_A, "addr", "add", "fd00:77::1/64", "dev", va, "nodad")
        _sh("ip", "-n", NS_B, "addr", "add", "fd00:77::2/64", "dev", vb, "nodad")
        _sh("ip", "-n", NS_A, "link", "set", va, "up")
        _sh("ip", "-n", NS_B, "link", "set", vb, "up")
        _sh("ip", "-n", NS_A, "route", "add", "192.0.2.0/24", "via", "10.77.0.2")
        _sh("ip", "-n", NS_A, "-6", "route", "add", "2001:db8::/32", "via", "fd00:77::2")
        handle = start_service("aliasrouter", NS_B, {"config": CONFIG}, state_dir=state)
        _warm_up()
        yield {"handle": handle, "state": Path(state)}
    finally:
        if handle is not None:
            handle.stop()
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _warm_up() -> None:
    """Resolve neighbours (ND restarts when B turns into a router) before timing anything."""
    s4 = netns_socket(NS_A, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s6 = netns_socket(NS_A, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        for s, dst, typ, reply in ((s4, "192.0.2.1", 8, 0), (s6, "2001:db8::1", 128, 129)):
            s.settimeout(0.5)
            for attempt in range(10):
                msg = struct.pack("!BBHHH", typ, 0, 0, 0x5757, attempt) + b"warm"
                if typ == 8:
                    msg = icmp_echo(0x5757, attempt, b"warm")
                s.sendto(msg, (dst, 0))
                try:
                    while True:
                        pkt = s.recv(2048)
                        off = (pkt[0] & 0x0F) * 4 if typ == 8 else 0
                        if pkt[off] == reply:
                            break
                    break
                except TimeoutError:
                    continue
            else:
                raise RuntimeError(f"emulator does not answer {dst} after warm-up")
    finally:
        s4.close()
        s6.close()


# ----------------------------------------------------------------- probers


class Prober:
    """ICMP echo prober on a raw socket in namespace A; returns reply IP-IDs."""

    def __init__(self, src: str = SRC1) -> None:
        self.sock = netns_socket(NS_A, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.bind((src, 0))
        self.sock.settimeout(1.0)
        self.ident = (os.getpid() + hash(src)) & 0xFFFF
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def ipid(self, dst: str) -> int:
        self.seq = (self.seq + 1) & 0xFFFF
        self.sock.sendto(icmp_echo(self.ident, self.seq), (dst, 0))
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            pkt, (peer, _) = self.sock.recvfrom(2048)
            ihl = (pkt[0] & 0x0F) * 4
            typ, _code, _cs, ident, seq = struct.unpack_from("!BBHHH", pkt, ihl)
            if typ == 0 and peer == dst and ident == self.ident and seq == self.seq:
                return struct.unpack_from("!H", pkt, 4)[0]
        raise TimeoutError(f"no echo reply from {dst}")


@pytest.fixture
def prober(lab: dict) -> Iterator[Prober]:
    p = Prober()
    yield p
    p.close()


def _diff(a: int, b: int) -> int:
    return (b - a) & 0xFFFF


def _swap(v: int) -> int:
    return ((v & 0xFF) << 8) | (v >> 8)


# ------------------------------------------------------------------- tests


def test_config_errors_name_the_field() -> None:
    with pytest.raises(AliasConfigError, match=r"router\[0\] \(r0\)\.ipid"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "ipid": "hashed"}]})
    with pytest.raises(AliasConfigError, match=r"already an address of router 'a'"):
        load_config({"router": [{"name": "a", "addresses": ["192.0.2.1"]}, {"name": "b", "addresses": ["192.0.2.1"]}]})
    with pytest.raises(AliasConfigError, match=r"offset"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "offset": 70000}]})
    with pytest.raises(AliasConfigError, match=r"udp_reply_source"):
        load_config({"router": [{"addresses": ["192.0.2.1"], "udp_reply_source": "192.0.2.9"}]})
    with pytest.raises(AliasConfigError, match=r"^router:"):
        load_config({"tun": "x"})


def test_ground_truth_sets() -> None:
    sets = alias_sets(CONFIG)
    assert {"192.0.2.1", "192.0.2.2", "2001:db8::1"} in sets
    assert {"192.0.2.11", "192.0.2.12"} in sets  # physical aliases even if IP-IDs don't show it
    assert len(sets) == len(CONFIG["router"])
    found = ipid_alias_sets(CONFIG)
    assert {"192.0.2.1", "192.0.2.2"} in found and {"192.0.2.51", "192.0.2.52"} in found
    assert {"192.0.2.11", "192.0.2.12"} not in found


def test_toml_config_and_check_cli(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('tun = "mnar9"\n[[router]]\nname = "x"\naddresses = ["198.51.100.1", "198.51.100.2"]\nipid = "zero"\n')
    cfg = load_config(f)
    assert cfg.tun == "mnar9" and cfg.routers[0].ipid == "zero"
    assert aliasrouter.main(["--config", str(f), "--check"]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[router]]\naddresses = ["not-an-ip"]\n')
    assert aliasrouter.main(["--config", str(bad), "--check"]) == 2


def test_sans_io_shared_counter_with_velocity() -> None:
    """Background velocity plus one per reply, checked without a network."""
    cfg = load_config({"router": [{"addresses": ["192.0.2.1", "192.0.2.2"], "velocity": 1000.0, "offset": 5}]})
    emu = AliasEmulator(cfg, now_ns=0)
    probe = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 36, 0, 0, 64, 1, 0,
                                  socket.inet_aton("10.0.0.1"), socket.inet_aton("192.0.2.1")) + icmp_echo(1, 1))
    r0 = emu.handle(bytes(probe), now_ns=0)
    probe[19] = 2  # now to 192.0.2.2
    r1 = emu.handle(bytes(probe), now_ns=500_000_000)
    assert r0 is not None and r1 is not None
    assert struct.unpack_from("!H", r0, 4)[0] == 5
    assert struct.unpack_from("!H", r1, 4)[0] == 5 + 500 + 1
    assert r1[12:16] == socket.inet_aton("192.0.2.2")


@root_only
def test_shared_counter_interleaved_is_monotonic(prober: Prober) -> None:
    ids = [prober.ipid(a) for _ in range(50) for a in ("192.0.2.1", "192.0.2.2")]
    diffs = [_diff(a, b) for a, b in zip(ids, ids[1:])]
    assert all(d == 1 for d in diffs), diffs  # velocity 0: exactly one per reply
    assert ids[0] >= 1000


@root_only
def test_per_interface_counters_are_independent(prober: Prober) -> None:
    a = [prober.ipid("192.0.2.11") if i % 2 == 0 else prober.ipid("192.0.2.12") for i in range(40)]
    s1, s2 = a[0::2], a[1::2]
    assert all(_diff(x, y) == 1 for x, y in zip(s1, s1[1:]))
    assert all(_diff(x, y) == 1 for x, y in zip(s2, s2[1:]))
    merged = [_diff(x, y) for x, y in zip(a, a[1:])]
    assert not all(d < 200 for d in merged), "per-interface counters must not look shared (Ally fudge 200)"


@root_only
def test_per_destination_depends_on_the_prober(lab: dict) -> None:
    p1, p2 = Prober(SRC1), Prober(SRC2)
    try:
        # Seen from one VP a per-destination counter looks shared across
        # interfaces — the reason MIDAR probes from several VPs.
        one = [p1.ipid(a) for _ in range(10) for a in ("192.0.2.21", "192.0.2.22")]
        assert all(_diff(x, y) == 1 for x, y in zip(one, one[1:]))
        x1, x2 = p1.ipid("192.0.2.21"), p2.ipid("192.0.2.21")
        y1, y2 = p1.ipid("192.0.2.21"), p2.ipid("192.0.2.21")
        assert _diff(x1, y1) == 1 and _diff(x2, y2) == 1
        assert _diff(x1, x2) > 200 and _diff(x2, x1) > 200
    finally:
        p1.close()
        p2.close()


@root_only
def test_zero_random_and_byteswapped(prober: Prober) -> None:
    assert {prober.ipid("192.0.2.41") for _ in range(20)} == {0}
    rnd = [prober.ipid("192.0.2.31") for _ in range(40)]
    assert len(set(rnd)) > 30
    assert not all(0 < _diff(x, y) < 200 for x, y in zip(rnd, rnd[1:]))
    sw = [prober.ipid(a) for _ in range(20) for a in ("192.0.2.51", "192.0.2.52")]
    host = [_swap(v) for v in sw]
    assert all(_diff(x, y) == 1 for x, y in zip(host, host[1:]))
    assert not all(_diff(x, y) == 1 for x, y in zip(sw, sw[1:]))  # raw order steps by 256


@root_only
def test_similar_velocity_different_offset_trap(prober: Prober) -> None:
    t0 = time.monotonic()
    s1 = [(time.monotonic(), prober.ipid("192.0.2.61"))]
    s2 = [(time.monotonic(), prober.ipid("192.0.2.62"))]
    time.sleep(0.5)
    s1.append((time.monotonic(), prober.ipid("192.0.2.61")))
    s2.append((time.monotonic(), prober.ipid("192.0.2.62")))
    v1 = _diff(s1[0][1], s1[1][1]) / (s1[1][0] - s1[0][0])
    v2 = _diff(s2[0][1], s2[1][1]) / (s2[1][0] - s2[0][0])
    print(f"\ntrap velocities: {v1:.0f} and {v2:.0f} IDs/s (configured 500 + replies) over {time.monotonic() - t0:.2f}s")
    assert 350 < v1 < 700 and 350 < v2 < 700
    gap = _diff(s1[0][1], s2[0][1])
    assert 19_000 < gap < 21_000  # similar velocity, far apart: not aliases


@root_only
def test_tcp_rst_and_synack(lab: dict) -> None:
    cap = netns_socket(NS_A, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    cap.settimeout(1.0)
    try:
        ids = []
        for dst in ("192.0.2.1", "192.0.2.2", "192.0.2.1"):
            c = netns_socket(NS_A, socket.AF_INET, socket.SOCK_STREAM)
            c.settimeout(1.0)
            with pytest.raises(ConnectionRefusedError):
                c.connect((dst, 80))
            lport = c.getsockname()[1]
            c.close()
            while True:
                pkt, (peer, _) = cap.recvfrom(2048)
                ihl = (pkt[0] & 0x0F) * 4
                sport, dport = struct.unpack_from("!HH", pkt, ihl)
                if peer == dst and sport == 80 and dport == lport and pkt[ihl + 13] & 0x04:
                    ids.append(struct.unpack_from("!H", pkt, 4)[0])
                    break
        assert [_diff(a, b) for a, b in zip(ids, ids[1:])] == [1, 1]  # TCP shares the ICMP counter
        c = netns_socket(NS_A, socket.AF_INET, socket.SOCK_STREAM)
        c.settimeout(1.0)
        c.connect(("192.0.2.81", 443))  # SYN-ACK: the handshake completes
        c.close()
        c6 = netns_socket(NS_A, socket.AF_INET6, socket.SOCK_STREAM)
        c6.settimeout(1.0)
        with pytest.raises(ConnectionRefusedError):
            c6.connect(("2001:db8::1", 22))
        c6.close()
    finally:
        cap.close()


@root_only
def test_udp_port_unreachable_and_mercator_source(lab: dict) -> None:
    # Connected UDP sockets see the ICMP error as ECONNREFUSED (v4 and v6).
    for fam, dst in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        u = netns_socket(NS_A, fam, socket.SOCK_DGRAM)
        u.settimeout(1.0)
        u.connect((dst, 33434))
        u.send(b"probe")
        with pytest.raises(OSError) as ei:
            u.recv(100)
        assert ei.value.errno == errno.ECONNREFUSED
        u.close()
    cap = netns_socket(NS_A, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    cap.settimeout(1.0)
    u = netns_socket(NS_A, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        seen = {}
        for dst in ("192.0.2.72", "192.0.2.1"):
            u.sendto(b"mercator", (dst, 40000))
            while True:
                pkt, (peer, _) = cap.recvfrom(2048)
                ihl = (pkt[0] & 0x0F) * 4
                if pkt[ihl] == 3 and pkt[ihl + 1] == 3:
                    inner = pkt[ihl + 8 :]
                    qdst = socket.inet_ntoa(inner[16:20])
                    if qdst == dst:
                        seen[dst] = peer
                        break
        assert seen["192.0.2.72"] == "192.0.2.71"  # fixed interface: Mercator finds the alias
        assert seen["192.0.2.1"] == "192.0.2.1"  # default: the probed address
    finally:
        cap.close()
        u.close()
    cap6 = netns_socket(NS_A, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    cap6.settimeout(1.0)
    u6 = netns_socket(NS_A, socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        u6.sendto(b"mercator6", ("2001:db8::72", 40000))
        while True:
            pkt, peer = cap6.recvfrom(2048)
            if pkt[0] == 1 and pkt[1] == 4:
                break
        assert peer[0] == "2001:db8::71"
    finally:
        cap6.close()
        u6.close()


@root_only
def test_ipv6_echo(lab: dict) -> None:
    s = netns_socket(NS_A, socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.settimeout(1.0)
    try:
        s.sendto(struct.pack("!BBHHH", 128, 0, 0, 0x4D4E, 1) + b"v6", ("2001:db8::1", 0))  # kernel fills csum
        while True:
            pkt, peer = s.recvfrom(2048)
            if pkt[0] == 129:
                break
        assert peer[0] == "2001:db8::1" and pkt[4:6] == b"\x4d\x4e" and pkt[8:] == b"v6"
    finally:
        s.close()


@root_only
def test_rate_limit(lab: dict, prober: Prober) -> None:
    s = prober.sock
    s.settimeout(0.05)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < 0.5:
        s.sendto(icmp_echo(0x7777, sent & 0xFFFF), ("192.0.2.91", 0))
        sent += 1
        time.sleep(0.001)
    elapsed = time.monotonic() - t0
    got = 0
    try:
        while True:
            pkt, (peer, _) = s.recvfrom(2048)
            if peer == "192.0.2.91" and pkt[(pkt[0] & 0x0F) * 4] == 0:
                got += 1
    except TimeoutError:
        pass
    expect = 10 + 100 * elapsed
    print(f"\nrate limit 100/s burst 10: sent {sent} in {elapsed:.2f}s, {got} replies (expected ≈{expect:.0f})")
    assert sent > 2 * expect
    assert 0.7 * expect <= got <= 1.3 * expect


@root_only
def test_reply_rate(lab: dict) -> None:
    """Figure: echo replies per second the emulator sustains (closed loop, window 64)."""
    s = netns_socket(NS_A, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.setblocking(False)
    dst, ident, window, duration = "192.0.2.101", 0x5151, 64, 2.0
    import select

    seq = sent = got = 0
    outstanding = 0
    t0 = time.monotonic()
    last_progress = t0
    while (now := time.monotonic()) - t0 < duration:
        while outstanding < window:
            seq = (seq + 1) & 0xFFFF
            s.sendto(icmp_echo(ident, seq), (dst, 0))
            sent += 1
            outstanding += 1
        r, _, _ = select.select([s], [], [], 0.02)
        if not r:
            if now - last_progress > 0.05:  # losses: refill the window
                outstanding = 0
            continue
        for peer, pid, _seq, _ipid in drain_echo_replies(s):
            if peer == dst and pid == ident:
                got += 1
                outstanding = max(0, outstanding - 1)
                last_progress = time.monotonic()
    elapsed = time.monotonic() - t0
    s.close()
    rate = got / elapsed
    print(f"\nalias router reply rate: {rate:,.0f} replies/s ({got} of {sent} echoes in {elapsed:.2f}s, window {window})")
    assert rate > 1000


@root_only
def test_stats_file_and_stop(lab: dict) -> None:
    h = lab["handle"]
    time.sleep(1.2)
    import json

    stats = json.loads(Path(h.info["stats"]).read_text())
    assert stats["replied"] > 0 and stats["routers"]["shared"]["replies"] > 0
    assert h.running()
