"""The enforcing guard driven directly: real wire structs, a small socket and
VP view, an injected monotonic clock. Monitors here are Python fakes
(``RecordingMonitor``) with the two methods the guard calls; real wasm
monitors are tested in test_monitor."""

from __future__ import annotations

import datetime as dt
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pytest

from marionet.guard import privileges as P
from marionet.guard.core import GuardDenied, Principal
from marionet.guard.enforce import PolicyGuard, PolicySessionGuard
from marionet.guard.events import Event
from marionet.wire import messages as m

OWN = "192.0.2.10"
ALICE = Principal(name="alice", fingerprint="a1" * 16, anchor="ca" * 16, auth="chain")
BOB = Principal(name="bob", fingerprint="b2" * 16, anchor="ca" * 16, auth="chain")


@dataclass
class Sock:
    """A ``SockView``."""

    sid: int = 1
    kind: str = "udp"
    family: int = 4
    ipproto: int | None = None
    hdrincl: bool = False
    raddr: str | None = None
    rport: int | None = None


@dataclass
class Vp:
    """A ``VpView``."""

    name: str = "vp1"
    tags: dict[str, str] = field(default_factory=lambda: {"site": "lab"})
    addrs: list[str] = field(default_factory=lambda: [OWN, "127.0.0.1", "2001:db8::10"])

    def local_addresses(self) -> list[str]:
        return list(self.addrs)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class RecordingMonitor:
    """A Python stand-in for a MonitorInstance: records what it is shown and
    refuses events matching ``deny`` (with the instance's own rule)."""

    def __init__(self, deny: Callable[[Event], bool] = lambda ev: False, rule: str = "monitor rec") -> None:
        self.deny = deny
        self.rule = rule
        self.events: list[Event] = []
        self.batches: list[int] = []

    def check(self, event: Event) -> None:
        if self.deny(event):
            raise GuardDenied(self.rule, f"{event.op} to {event.dst} refused by the test monitor")
        self.events.append(event)

    def check_batch(self, events: Sequence[Event]) -> None:
        self.batches.append(len(events))
        for i, ev in enumerate(events):
            if self.deny(ev):
                raise GuardDenied(self.rule, f"send {i} refused by the test monitor", index=i)
            self.events.append(ev)


class FakeModule:
    """A MonitorModule stand-in: ``instantiate`` gives a RecordingMonitor."""

    def __init__(self, name: str, digest: str, deny: Callable[[Event], bool] = lambda ev: False) -> None:
        self.name = name
        self.digest = digest
        self.deny = deny
        self.instances: list[RecordingMonitor] = []

    def instantiate(self) -> RecordingMonitor:
        inst = RecordingMonitor(self.deny, rule=f"monitor {self.name}")
        self.instances.append(inst)
        return inst


BASE = {
    "protocols": ["udp", "tcp", "tcp-listen", "raw:1", "raw:17", "capture"],
    "dst": ["198.51.100.0/24", "2001:db8:1::/48"],
}


def grants(**over: Any) -> P.Privileges:
    doc = {**BASE, **over}
    return P.parse({k: v for k, v in doc.items() if v is not None})


def session(g: P.Privileges, principal: Principal = ALICE, clock: Clock | None = None, vp: Vp | None = None,
            **kw: Any) -> PolicySessionGuard:
    guard = PolicyGuard(lambda p: g, clock=clock or Clock(), **kw)
    return guard.open(principal, vp or Vp())


def denied(fn: Callable[[], Any]) -> GuardDenied:
    with pytest.raises(GuardDenied) as ei:
        fn()
    return ei.value


def ipv4(src: str, dst: str, proto: int = 17, payload: bytes = b"\x82\x9b\x82\x9b\0\x08\0\0",
         frag: int = 0) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


HDR = Sock(kind="raw", ipproto=17, hdrincl=True)


def send(dst: str | None = "198.51.100.1", data: bytes = b"x" * 100, port: int | None = 53) -> m.SendItem:
    return m.SendItem(sock=1, data=data, dst=dst, port=port)


# --------------------------------------------------------------------------- sources


def test_hdrincl_foreign_source_denied_own_allowed() -> None:
    s = session(grants())
    s.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1")), HDR)
    s.check("nsend", m.SendItem(sock=1, data=ipv4("0.0.0.0", "198.51.100.1")), HDR)  # kernel fills it in
    exc = denied(lambda: s.check("nsend", m.SendItem(sock=1, data=ipv4("203.0.113.5", "198.51.100.1")), HDR))
    assert exc.rule == "privileges.spoof"
    assert "203.0.113.5" in exc.reason and "spoofing is not granted" in exc.reason


def test_spoof_and_src_grants_allow_foreign_sources() -> None:
    item = m.SendItem(sock=1, data=ipv4("203.0.113.5", "198.51.100.1"))
    session(grants(spoof=True)).check("nsend", item, HDR)
    session(grants(src=["203.0.113.0/28"])).check("nsend", item, HDR)
    exc = denied(lambda: session(grants(src=["203.0.113.128/25"])).check("nsend", item, HDR))
    assert "203.0.113.128/25" in exc.reason


def test_ipproto_255_socket_is_header_checked_like_hdrincl() -> None:
    """On IPv4, IPPROTO_RAW implies IP_HDRINCL in the kernel, flag or not."""
    s = session(grants())
    raw255 = Sock(kind="raw", ipproto=255, hdrincl=False)
    s.check("nopen", m.NOpen(id=1, proto="raw", ipproto=255))  # a raw grant suffices at open
    exc = denied(lambda: s.check("nsend", m.SendItem(sock=1, data=ipv4("203.0.113.5", "198.51.100.1"),
                                                     dst="198.51.100.1"), raw255))
    assert exc.rule == "privileges.spoof"


def test_nopen_laddr_must_be_own_or_granted() -> None:
    s = session(grants())
    s.check("nopen", m.NOpen(id=1, proto="udp", laddr=OWN))
    s.check("nopen", m.NOpen(id=1, proto="udp", laddr="0.0.0.0"))
    s.check("nopen", m.NOpen(id=1, proto="udp", family=6, laddr="2001:db8:0::10"))
    exc = denied(lambda: s.check("nopen", m.NOpen(id=1, proto="udp", laddr="203.0.113.5")))
    assert exc.rule == "privileges.spoof"


def test_own_addresses_refreshed_after_a_few_seconds() -> None:
    clock, vp = Clock(), Vp()
    s = session(grants(), clock=clock, vp=vp)
    item = m.SendItem(sock=1, data=ipv4("192.0.2.99", "198.51.100.1"))
    assert denied(lambda: s.check("nsend", item, HDR)).rule == "privileges.spoof"
    vp.addrs.append("192.0.2.99")
    assert denied(lambda: s.check("nsend", item, HDR)).rule == "privileges.spoof"  # cached
    clock.t += 6
    s.check("nsend", item, HDR)


# --------------------------------------------------------------------------- destinations, ports


def test_destination_outside_prefixes_denied_for_udp_raw_tcp() -> None:
    s = session(grants())
    for msg in (m.NOpen(id=1, proto="udp", raddr="203.0.113.1", rport=53),
                m.NOpen(id=1, proto="tcp", raddr="203.0.113.1", rport=80)):
        exc = denied(lambda: s.check("nopen", msg))
        assert exc.rule == "privileges.dst"
        assert "203.0.113.1" in exc.reason and "198.51.100.0/24" in exc.reason
    s.check("nopen", m.NOpen(id=1, proto="tcp", raddr="198.51.100.7", rport=80))
    s.check("nopen", m.NOpen(id=1, proto="udp", family=6, raddr="2001:db8:1::53", rport=53))
    udp = Sock()
    s.check("nsend", send("198.51.100.1"), udp)
    assert denied(lambda: s.check("nsend", send("203.0.113.1"), udp)).rule == "privileges.dst"
    connected = Sock(raddr="203.0.113.1", rport=53)
    assert denied(lambda: s.check("nsend", send(None), connected)).rule == "privileges.dst"
    icmp = Sock(kind="raw", ipproto=1)
    s.check("nsend", send("198.51.100.1", b"\x08\0\0\0\0\0\0\0", None), icmp)
    assert denied(lambda: s.check("nsend", send("203.0.113.1", b"\x08" + b"\0" * 7, None), icmp)).rule \
        == "privileges.dst"
    hdr = m.SendItem(sock=1, data=ipv4(OWN, "203.0.113.1"))
    assert denied(lambda: s.check("nsend", hdr, HDR)).rule == "privileges.dst"
    # an address the kernel routes by (sendto) must be allowed too
    both = m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1"), dst="203.0.113.1")
    assert denied(lambda: s.check("nsend", both, HDR)).rule == "privileges.dst"


def test_no_destination_is_denied_not_waved_through() -> None:
    s = session(grants())
    exc = denied(lambda: s.check("nsend", send(None), Sock()))
    assert exc.rule == "privileges.dst" and "without a destination" in exc.reason


def test_ports_limits() -> None:
    s = session(grants(ports=["53", "33434-33534"]))
    udp = Sock()
    s.check("nsend", send(port=53), udp)
    exc = denied(lambda: s.check("nsend", send(port=80), udp))
    assert exc.rule == "privileges.ports"
    assert "80" in exc.reason and "53, 33434-33534" in exc.reason
    assert denied(lambda: s.check("nsend", send(None, port=None), Sock(raddr="198.51.100.1", rport=123))).rule \
        == "privileges.ports"
    assert denied(lambda: s.check("nopen", m.NOpen(id=1, proto="tcp", raddr="198.51.100.1", rport=80))).rule \
        == "privileges.ports"
    # raw UDP: the port is read from the UDP header
    s.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1")), HDR)  # 33435
    bad = ipv4(OWN, "198.51.100.1", payload=b"\x82\x9b\x00\x50\0\x08\0\0")  # dport 80
    assert denied(lambda: s.check("nsend", m.SendItem(sock=1, data=bad), HDR)).rule == "privileges.ports"
    frag = ipv4(OWN, "198.51.100.1", frag=0x0010)
    assert "fragment" in denied(lambda: s.check("nsend", m.SendItem(sock=1, data=frag), HDR)).reason
    rawudp = Sock(kind="raw", ipproto=17)
    s.check("nsend", send(data=b"\x82\x9b\x82\x9b\0\x08\0\0", port=None), rawudp)
    assert denied(lambda: s.check("nsend", send(data=b"\x82\x9b\x00\x50\0\x08\0\0", port=None), rawudp)).rule \
        == "privileges.ports"


# --------------------------------------------------------------------------- protocols


def test_raw_without_raw_privilege() -> None:
    s = session(grants(protocols=["udp"]))
    exc = denied(lambda: s.check("nopen", m.NOpen(id=1, proto="raw", ipproto=1)))
    assert exc.rule == "privileges.protocols"
    assert "raw:1" in exc.reason and "ICMP" in exc.reason and "udp" in exc.reason
    hdr = denied(lambda: s.check("nopen", m.NOpen(id=1, proto="raw", ipproto=17, hdrincl=True)))
    assert hdr.rule == "privileges.protocols" and "hdrincl" in hdr.reason
    s17 = session(grants(protocols=["raw:17"]))
    s17.check("nopen", m.NOpen(id=1, proto="raw", ipproto=17))
    assert denied(lambda: s17.check("nopen", m.NOpen(id=1, proto="raw", ipproto=1))).rule == "privileges.protocols"
    session(grants(protocols=["raw:*"])).check("nopen", m.NOpen(id=1, proto="raw", ipproto=47))
    assert denied(lambda: s.check("nopen", m.NOpen(id=1, proto="tcp", raddr="198.51.100.1", rport=80))).rule \
        == "privileges.protocols"
    assert denied(lambda: s.check("nopen", m.NOpen(id=1, proto="tcp-listen"))).rule == "privileges.protocols"
    assert denied(lambda: s.check("nopen", m.NOpen(id=1, proto="sctp"))).rule == "privileges.protocols"


def test_hdrincl_protocol_byte_must_be_granted() -> None:
    s = session(grants(protocols=["raw:17"]))
    s.check("nopen", m.NOpen(id=1, proto="raw", ipproto=17, hdrincl=True))
    s.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1", proto=17)), HDR)
    exc = denied(lambda: s.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1", proto=6)), HDR))
    assert exc.rule == "privileges.protocols" and "6 (TCP)" in exc.reason


def test_hdrincl_short_or_not_ipv4_is_malformed() -> None:
    s = session(grants())
    for data in (b"", b"\x45" + b"\0" * 18, b"\x65" + bytes(ipv4(OWN, "198.51.100.1")[1:]),
                 b"\x44" + bytes(ipv4(OWN, "198.51.100.1")[1:])):
        exc = denied(lambda: s.check("nsend", m.SendItem(sock=1, data=data, dst="198.51.100.1"), HDR))
        assert "malformed" in exc.reason


def test_capture_and_accept() -> None:
    s = session(grants(protocols=["raw:1"]))
    exc = denied(lambda: s.check("ncap", m.NCap(id=1, sock=1), Sock(kind="raw", ipproto=1)))
    assert exc.rule == "privileges.protocols" and "capture" in exc.reason
    session(grants()).check("ncap", m.NCap(id=1, sock=1), Sock(kind="raw", ipproto=1))
    lst = Sock(kind="tcp-listen")
    s2 = session(grants())
    s2.check("accept", {"sock": 1, "peer": "198.51.100.9", "port": 40000}, lst)
    assert denied(lambda: s2.check("accept", {"sock": 1, "peer": "203.0.113.9", "port": 4}, lst)).rule \
        == "privileges.dst"
    assert denied(lambda: s.check("accept", {"sock": 1, "peer": "198.51.100.9", "port": 4}, lst)).rule \
        == "privileges.protocols"


def test_close_and_ctl_allowed_and_monitored() -> None:
    mod = FakeModule("rec", "d" * 64)
    g = PolicyGuard(lambda p: P.NOTHING, local_monitors=[mod], clock=Clock())
    s = g.open(ALICE, Vp())
    s.check("nclose", m.NClose(id=1, sock=3), Sock(sid=3))
    s.check("nctl", m.NCtl(id=2, op="suppress"), None)
    assert [(e.op, e.sock) for e in mod.instances[0].events] == [("nclose", 3), ("nctl", 0)]


def test_nothing_denies_everything() -> None:
    s = session(P.NOTHING)
    ops: list[tuple[str, Any, Any]] = [
        ("nopen", m.NOpen(id=1, proto="udp"), None),
        ("nopen", m.NOpen(id=1, proto="tcp", raddr="198.51.100.1", rport=80), None),
        ("nopen", m.NOpen(id=1, proto="tcp-listen"), None),
        ("nopen", m.NOpen(id=1, proto="raw", ipproto=1), None),
        ("nopen", m.NOpen(id=1, proto="raw", ipproto=17, hdrincl=True), None),
        ("ncap", m.NCap(id=1, sock=1), Sock(kind="raw", ipproto=1)),
        ("accept", {"sock": 1, "peer": "198.51.100.1", "port": 1}, Sock(kind="tcp-listen")),
        ("task", m.Task(id=1, primitive="ping", params={"dst": "198.51.100.1"}), None),
        ("nsend", send(), Sock()),
        ("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1")), HDR),
    ]
    for op, req, sock in ops:
        with pytest.raises(GuardDenied):
            s.check(op, req, sock)
    with pytest.raises(GuardDenied):
        s.check_batch([send()], [Sock()])


# --------------------------------------------------------------------------- rates and totals


def test_rate_deny_exact_counts() -> None:
    clock = Clock()
    s = session(grants(rate={"pps": 100, "burst_packets": 10}), clock=clock)
    udp = Sock()
    assert [s.check("nsend", send(), udp) for _ in range(10)] == [None] * 10
    exc = denied(lambda: s.check("nsend", send(), udp))
    assert exc.rule == "privileges.rate" and "100 packets/s exceeded" in exc.reason
    clock.t += 0.01
    assert s.check("nsend", send(), udp) is None
    assert denied(lambda: s.check("nsend", send(), udp)).rule == "privileges.rate"
    # over 1 s at 1000 offered/s: 100 more pass
    passed, base = 0, clock.t
    for k in range(1, 1001):
        clock.t = base + k / 1000
        try:
            s.check("nsend", send(), udp)
            passed += 1
        except GuardDenied:
            pass
    assert passed == 100


def test_rate_bytes_deny() -> None:
    clock = Clock()
    s = session(grants(rate={"bps": 1000, "burst_bytes": 500}), clock=clock)
    assert [s.check("nsend", send(data=b"x" * 100), Sock()) for _ in range(5)] == [None] * 5
    exc = denied(lambda: s.check("nsend", send(data=b"x" * 100), Sock()))
    assert "1000 bytes/s exceeded" in exc.reason
    clock.t += 0.1
    s.check("nsend", send(data=b"x" * 100), Sock())


def test_rate_delay_returns_times_spaced_one_over_pps() -> None:
    clock = Clock()
    t0 = time.time_ns()
    s = session(grants(rate={"pps": 100, "burst_packets": 5, "excess": "delay"}), clock=clock, max_delay_s=1.0)
    got = [s.check("nsend", send(), Sock()) for _ in range(15)]
    assert got[:5] == [None] * 5
    times = got[5:]
    assert all(isinstance(t, int) for t in times)
    gaps = [b - a for a, b in zip(times, times[1:])]  # type: ignore[operator]
    assert all(abs(g - 10_000_000) <= 1 for g in gaps), gaps
    # the first delayed send is 10 ms after now, on the epoch clock
    assert 0 <= times[0] - t0 - 10_000_000 < 500_000_000  # type: ignore[operator]
    # at most 1 s ahead: 100 more may queue, then the backlog is too long
    for _ in range(90):
        assert s.check("nsend", send(), Sock()) is not None
    exc = denied(lambda: s.check("nsend", send(), Sock()))
    assert exc.rule == "privileges.rate" and "backlog is too long" in exc.reason


def test_bucket_shared_by_sessions_of_one_principal_not_between_principals() -> None:
    clock = Clock()
    g = grants(rate={"pps": 10, "burst_packets": 4})
    guard = PolicyGuard(lambda p: g, clock=clock)
    a1, a2 = guard.open(ALICE, Vp()), guard.open(ALICE, Vp())
    b = guard.open(BOB, Vp())
    prim = a1.for_primitive("ping")
    for sg in (a1, a2, prim, a1):
        sg.check("nsend", send(), Sock())
    for sg in (a1, a2, prim):
        assert denied(lambda: sg.check("nsend", send(), Sock())).rule == "privileges.rate"
    for _ in range(4):
        b.check("nsend", send(), Sock())
    # a reconnecting principal gets the same (spent) budget
    a1.close()
    a2.close()
    a3 = guard.open(ALICE, Vp())
    assert denied(lambda: a3.check("nsend", send(), Sock())).rule == "privileges.rate"
    # principals without a certificate are told apart by name and auth
    anon = Principal(name="x", auth="none")
    ctl = Principal(name="x", auth="controller")
    s_anon, s_ctl = guard.open(anon, Vp()), guard.open(ctl, Vp())
    for _ in range(4):
        s_anon.check("nsend", send(), Sock())
    s_ctl.check("nsend", send(), Sock())


def test_totals_packets_bytes_and_window_reset() -> None:
    clock = Clock()
    s = session(grants(total={"packets": 5, "period_s": 60}), clock=clock)
    for _ in range(5):
        s.check("nsend", send(), Sock())
    exc = denied(lambda: s.check("nsend", send(), Sock()))
    assert exc.rule == "privileges.total" and "5 packets per 1 min" in exc.reason
    clock.t += 59.9
    assert denied(lambda: s.check("nsend", send(), Sock())).rule == "privileges.total"
    clock.t += 0.1
    s.check("nsend", send(), Sock())
    sb = session(grants(total={"bytes": 1000}), clock=clock)
    sb.check("nsend", send(data=b"x" * 600), Sock())
    assert "bytes" in denied(lambda: sb.check("nsend", send(data=b"x" * 600), Sock())).reason
    sb.check("nsend", send(data=b"x" * 400), Sock())  # the refused one counted nothing


def test_tcp_sends_count_segments_and_skip_address_checks() -> None:
    s = session(grants(total={"packets": 4}))
    tcp = Sock(kind="tcp", raddr="198.51.100.1", rport=80)
    s.check("nsend", m.SendItem(sock=1, data=b"x" * 2897), tcp)  # 3 segments of 1448
    exc = denied(lambda: s.check("nsend", m.SendItem(sock=1, data=b"x" * 1449), tcp))  # 2 more
    assert exc.rule == "privileges.total"
    s.check("nsend", m.SendItem(sock=1, data=b"x" * 1448), tcp)


# --------------------------------------------------------------------------- tasks


def task(primitive: str, **params: Any) -> m.Task:
    return m.Task(id=1, primitive=primitive, params=params)


def test_task_primitive_not_granted() -> None:
    s = session(grants(primitives={"ping": {}}))
    exc = denied(lambda: s.check("task", task("trace", dst="198.51.100.1")))
    assert exc.rule == "privileges.primitives" and exc.reason.startswith("primitive 'trace' is not granted")
    s.check("task", task("ping", dst="198.51.100.1"))


def test_task_numeric_bounds_use_effective_values() -> None:
    s = session(grants(primitives={"ping": {"attempts": 3}, "trace": {"hoplimit": 32}}))
    s.check("task", task("ping", dst="198.51.100.1", attempts=3))
    exc = denied(lambda: s.check("task", task("ping", dst="198.51.100.1", attempts=10)))
    assert exc.rule == "privileges.primitives.ping.attempts"
    assert "10" in exc.reason and "maximum 3" in exc.reason
    # the default (4 attempts) is over the bound too
    assert denied(lambda: s.check("task", task("ping", dst="198.51.100.1"))).rule \
        == "privileges.primitives.ping.attempts"
    s.check("task", task("trace", dst="198.51.100.1", hoplimit=30))
    exc = denied(lambda: s.check("task", task("trace", dst="198.51.100.1")))  # hoplimit 0: up to 255
    assert exc.rule == "privileges.primitives.trace.hoplimit" and "255" in exc.reason


def test_task_destination_and_source_checked() -> None:
    s = session(grants(primitives={"*": {}}))
    exc = denied(lambda: s.check("task", task("trace", dst="203.0.113.1")))
    assert exc.rule == "privileges.dst" and "203.0.113.1" in exc.reason
    s.check("task", task("trace", dst="198.51.100.1"))
    assert denied(lambda: s.check("task", task("ping", dst="198.51.100.1", src="203.0.113.2"))).rule \
        == "privileges.spoof"
    assert denied(lambda: s.check("task", task("http", url="http://203.0.113.1/"))).rule == "privileges.dst"
    assert denied(lambda: s.check("task", task("http", dst="203.0.113.1", url="http://www.example.org/"))).rule \
        == "privileges.dst"
    assert denied(lambda: s.check("task", task("dns", qname="example.org", server="203.0.113.53"))).rule \
        == "privileges.dst"


def test_dealias_task_addresses_checked_before_any_probe() -> None:
    """Alias-resolution tasks name their targets in dst1/dst2, addrs, near/far and probedefs:
    a denied one refuses the whole task at once."""
    s = session(grants(primitives={"*": {}}))
    ok, bad = "198.51.100.1", "203.0.113.1"
    s.check("task", task("ally", dst1=ok, dst2="198.51.100.2"))
    assert denied(lambda: s.check("task", task("ally", dst1=ok, dst2=bad))).rule == "privileges.dst"
    assert denied(lambda: s.check("task", task("radargun", addrs=[ok, bad]))).rule == "privileges.dst"
    assert denied(lambda: s.check("task", task("prefixscan", near=ok, far=bad, prefixlen=30))).rule \
        == "privileges.dst"
    assert denied(lambda: s.check("task", task("midardisc", probedefs=[{"method": "icmp-echo", "dst": bad}],
                                               schedule=[]))).rule == "privileges.dst"
    assert denied(lambda: s.check("task", task("midarest", addrs=[ok],
                                               probedefs=[{"method": "udp", "src": "203.0.113.2"}]))).rule \
        == "privileges.spoof"
    assert denied(lambda: s.check("task", task("mercator", dst="not-an-address"))).rule == "privileges.dst"


def test_task_list_bounds() -> None:
    s = session(grants(primitives={"dns": {"servers": ["198.51.100.53"]},
                                   "http": {"hosts": ["www.example.org"]},
                                   "ping": {"methods": ["icmp-echo"]}}))
    s.check("task", task("dns", qname="example.org", server="198.51.100.53"))
    exc = denied(lambda: s.check("task", task("dns", qname="example.org", server="198.51.100.54")))
    assert exc.rule == "privileges.primitives.dns.servers" and "198.51.100.54" in exc.reason
    exc = denied(lambda: s.check("task", task("dns", qname="example.org")))  # the resolver
    assert "resolver" in exc.reason
    s.check("task", task("http", dst="198.51.100.80", url="https://WWW.example.org/x"))
    exc = denied(lambda: s.check("task", task("http", dst="198.51.100.80", url="https://evil.example/")))
    assert exc.rule == "privileges.primitives.http.hosts" and "evil.example" in exc.reason
    s.check("task", task("ping", dst="198.51.100.1"))  # default method icmp-echo
    exc = denied(lambda: s.check("task", task("ping", dst="198.51.100.1", method="udp")))
    assert exc.rule == "privileges.primitives.ping.methods" and "'udp'" in exc.reason


def test_a_bound_naming_no_parameter_refuses_the_task() -> None:
    """A misspelt bound ("atempts") would enforce nothing: refuse, naming it."""
    s = session(grants(primitives={"ping": {"atempts": 3}, "dns": {"servers": ["198.51.100.53"]}}))
    exc = denied(lambda: s.check("task", task("ping", dst="198.51.100.1", attempts=2)))
    assert exc.rule == "privileges.primitives.ping.atempts"
    assert "'atempts', which ping does not take" in exc.reason and "attempts" in exc.reason
    s.check("task", task("dns", qname="example.org", server="198.51.100.53"))  # a named list bound is fine


def test_star_grant_allows_any_primitive_with_its_bounds() -> None:
    s = session(grants(primitives={"*": {"attempts": 2}}))
    s.check("task", task("ping", dst="198.51.100.1", attempts=2))
    s.check("task", task("http", dst="198.51.100.80", url="http://www.example.org/"))  # no attempts parameter
    assert denied(lambda: s.check("task", task("dns", qname="example.org", server="198.51.100.53",
                                               attempts=5))).rule == "privileges.primitives.dns.attempts"


def test_primitive_session_implied_protocols_but_dst_still_checked() -> None:
    g = grants(protocols=[], primitives={"trace": {}})
    s = session(g)
    raw = m.NOpen(id=1, proto="raw", ipproto=17, hdrincl=True)
    assert denied(lambda: s.check("nopen", raw)).rule == "privileges.protocols"
    prim = s.for_primitive("trace")
    assert prim.principal.primitive == "trace"
    prim.check("nopen", raw)
    prim.check("nopen", m.NOpen(id=2, proto="raw", ipproto=1))
    prim.check("ncap", m.NCap(id=3, sock=2), Sock(kind="raw", ipproto=1))
    prim.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1")), HDR)
    assert denied(lambda: prim.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "203.0.113.1")), HDR)).rule \
        == "privileges.dst"
    assert denied(lambda: prim.check("nsend", m.SendItem(sock=1, data=ipv4("203.0.113.7", "198.51.100.1")),
                                     HDR)).rule == "privileges.spoof"
    # only what a primitive needs: no listening sockets, no other IP protocols in headers
    assert denied(lambda: prim.check("nopen", m.NOpen(id=4, proto="tcp-listen"))).rule == "privileges.protocols"
    assert denied(lambda: prim.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.1", proto=47)),
                                     HDR)).rule == "privileges.protocols"
    # a primitive that is not granted implies nothing
    other = s.for_primitive("ping")
    assert denied(lambda: other.check("nopen", raw)).rule == "privileges.protocols"


# --------------------------------------------------------------------------- open


def test_open_refuses_vp_name_tags_and_period() -> None:
    guard = lambda g: PolicyGuard(lambda p: g, clock=Clock())  # noqa: E731
    exc = denied(lambda: guard(grants(vps=["vp2", "vp3"])).open(ALICE, Vp(name="vp1")))
    assert exc.rule == "privileges.vps" and "'vp1'" in exc.reason and "vp2" in exc.reason
    guard(grants(vps=["vp1"])).open(ALICE, Vp(name="vp1"))
    exc = denied(lambda: guard(grants(tags={"site": ["ams"]})).open(ALICE, Vp(tags={"site": "lab"})))
    assert exc.rule == "privileges.tags" and "site=lab" in exc.reason and "ams" in exc.reason
    exc = denied(lambda: guard(grants(tags={"owner": ["x"]})).open(ALICE, Vp(tags={"site": "lab"})))
    assert "no tag 'owner'" in exc.reason
    guard(grants(tags={"site": ["ams", "lab"]})).open(ALICE, Vp(tags={"site": "lab"}))
    now = dt.datetime.now(dt.timezone.utc)
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    future = grants(period={"not_before": fmt(now + dt.timedelta(days=1))})
    exc = denied(lambda: guard(future).open(ALICE, Vp()))
    assert exc.rule == "privileges.period" and "starts" in exc.reason
    past = grants(period={"not_after": fmt(now - dt.timedelta(days=1))})
    exc = denied(lambda: guard(past).open(ALICE, Vp()))
    assert exc.rule == "privileges.period" and "ended" in exc.reason
    guard(grants(period={"not_before": fmt(now - dt.timedelta(days=1)),
                         "not_after": fmt(now + dt.timedelta(days=1))})).open(ALICE, Vp())


def test_mandated_monitor_missing_supplied_or_installed() -> None:
    d1, d2 = "1" * 64, "2" * 64
    g = grants(monitors=[d1])
    exc = denied(lambda: PolicyGuard(lambda p: g, clock=Clock()).open(ALICE, Vp()))
    assert exc.rule == "privileges.monitors"
    assert exc.reason == (f"certificate requires monitor {'1' * 16}…, which is neither supplied "
                          "nor installed on this VP")
    sup = FakeModule("sup", d1)
    s = PolicyGuard(lambda p: g, clock=Clock()).open(ALICE, Vp(), supplied_monitors={d1: sup})
    inst = FakeModule("inst", d1)
    s2 = PolicyGuard(lambda p: g, installed_monitors={d1: inst}, clock=Clock()).open(ALICE, Vp())
    s.check("nsend", send(), Sock())
    s2.check("nsend", send(), Sock())
    assert len(sup.instances[0].events) == 1 and len(inst.instances[0].events) == 1
    wrong = FakeModule("wrong", d2)
    exc = denied(lambda: PolicyGuard(lambda p: g, clock=Clock()).open(ALICE, Vp(), supplied_monitors={d1: wrong}))
    assert exc.rule == "privileges.monitors" and "digest" in exc.reason


def test_monitor_instances_fresh_per_session_shared_with_primitives() -> None:
    mod = FakeModule("rec", "3" * 64)
    guard = PolicyGuard(lambda p: grants(), local_monitors=[mod], clock=Clock())
    s1, s2 = guard.open(ALICE, Vp()), guard.open(ALICE, Vp())
    assert len(mod.instances) == 2
    s1.for_primitive("ping").check("nsend", send(), Sock())
    s2.check("nsend", send(), Sock())
    assert [len(i.events) for i in mod.instances] == [1, 1]
    ev = mod.instances[0].events[0]
    assert (ev.op, ev.dst, ev.dport, ev.principal, ev.primitive) == ("nsend", "198.51.100.1", 53, "alice", "ping")


# --------------------------------------------------------------------------- monitors


def test_monitor_denial_propagated_with_its_rule_and_refunds_tokens() -> None:
    clock = Clock()
    deny_dst = FakeModule("dstlist", "4" * 64, deny=lambda ev: ev.dst == "198.51.100.66")
    guard = PolicyGuard(lambda p: grants(rate={"pps": 10, "burst_packets": 2}), local_monitors=[deny_dst],
                        clock=clock)
    s = guard.open(ALICE, Vp())
    for _ in range(5):
        exc = denied(lambda: s.check("nsend", send("198.51.100.66"), Sock()))
        assert exc.rule == "monitor dstlist" and "198.51.100.66" in exc.reason
    # the refused sends consumed nothing: the burst of 2 is still there
    s.check("nsend", send(), Sock())
    s.check("nsend", send(), Sock())
    assert denied(lambda: s.check("nsend", send(), Sock())).rule == "privileges.rate"


def test_monitors_see_each_allowed_op_and_not_refused_ones() -> None:
    mod = FakeModule("rec", "5" * 64)
    s = PolicyGuard(lambda p: grants(primitives={"ping": {}}), local_monitors=[mod], clock=Clock()).open(ALICE, Vp())
    rec = mod.instances[0]
    s.check("nopen", m.NOpen(id=1, proto="udp", laddr=OWN, lport=5000, raddr="198.51.100.1", rport=53))
    s.check("nsend", m.SendItem(sock=1, data=ipv4(OWN, "198.51.100.2")), HDR)
    s.check("task", task("ping", dst="198.51.100.1", attempts=2))
    s.check_data(Sock(sid=7), b"reply", "198.51.100.1")
    with pytest.raises(GuardDenied):
        s.check("nsend", send("203.0.113.1"), Sock())
    ops = [(e.op, e.dst, e.src) for e in rec.events]
    assert ops == [("nopen", "198.51.100.1", OWN), ("nsend", "198.51.100.2", OWN),
                   ("task", "198.51.100.1", None), ("ndata", "198.51.100.1", None)]
    assert rec.events[2].primitive == "ping" and b'"attempts":2' in rec.events[2].data
    assert rec.events[3].sock == 7 and rec.events[3].data == b"reply"


def test_check_data_denied_by_monitor() -> None:
    mod = FakeModule("nodata", "6" * 64, deny=lambda ev: ev.op == "ndata")
    s = PolicyGuard(lambda p: P.NOTHING, local_monitors=[mod], clock=Clock()).open(ALICE, Vp())
    assert denied(lambda: s.check_data(Sock(), b"x", "198.51.100.1")).rule == "monitor nodata"
    session(P.NOTHING).check_data(Sock(), b"x", None)  # no monitors: policy alone never blocks data


def test_a_crashing_monitor_denies() -> None:
    class Broken:
        def check(self, ev: Event) -> None:
            raise RuntimeError("boom")

        def check_batch(self, evs: Sequence[Event]) -> None:
            raise RuntimeError("boom")

    class BrokenModule:
        name, digest = "broken", "7" * 64

        def instantiate(self) -> Broken:
            return Broken()

    s = PolicyGuard(lambda p: grants(), local_monitors=[BrokenModule()], clock=Clock()).open(ALICE, Vp())
    assert "boom" in denied(lambda: s.check("nsend", send(), Sock())).reason
    exc = denied(lambda: s.check_batch([send(), send()], [Sock(), Sock()]))
    assert exc.index == 0


# --------------------------------------------------------------------------- batches


def test_batch_policy_denial_index_and_no_tokens_for_refused() -> None:
    clock = Clock()
    guard = PolicyGuard(lambda p: grants(rate={"pps": 10, "burst_packets": 5}), clock=clock)
    s = guard.open(ALICE, Vp())
    items = [send(), send(), send("203.0.113.1"), send(), send()]
    exc = denied(lambda: s.check_batch(items, [Sock()] * 5))
    assert exc.index == 2 and exc.rule == "privileges.dst" and exc.times == [None, None]
    # 2 tokens went to the two allowed sends, none to the refused or later ones
    assert s.check_batch([send()] * 3, [Sock()] * 3) == [None] * 3
    exc = denied(lambda: s.check_batch([send()], [Sock()]))
    assert exc.index == 0 and exc.rule == "privileges.rate"


def test_batch_rate_refusal_mid_batch() -> None:
    s = session(grants(rate={"pps": 10, "burst_packets": 3}))
    exc = denied(lambda: s.check_batch([send()] * 5, [Sock()] * 5))
    assert exc.index == 3 and exc.rule == "privileges.rate"


def test_batch_one_monitor_call_and_monitor_index_refunds() -> None:
    clock = Clock()
    a = FakeModule("a", "8" * 64)
    b = FakeModule("b", "9" * 64, deny=lambda ev: ev.dst == "198.51.100.66")
    guard = PolicyGuard(lambda p: grants(rate={"pps": 10, "burst_packets": 6}), local_monitors=[a, b],
                        clock=clock)
    s = guard.open(ALICE, Vp())
    assert s.check_batch([send()] * 2, [Sock()] * 2) == [None, None]
    assert a.instances[0].batches == [2] and b.instances[0].batches == [2]
    items = [send(), send("198.51.100.66"), send(), send()]
    exc = denied(lambda: s.check_batch(items, [Sock()] * 4))
    assert exc.index == 1 and exc.rule == "monitor b" and exc.times == [None]
    assert a.instances[0].batches == [2, 4] and b.instances[0].batches == [2, 4]
    # 2 + 1 tokens used: 3 of the burst of 6 left
    assert s.check_batch([send()] * 3, [Sock()] * 3) == [None] * 3
    assert denied(lambda: s.check_batch([send()], [Sock()])).rule == "privileges.rate"


def test_batch_policy_refusal_checks_earlier_items_with_monitors() -> None:
    b = FakeModule("b", "a" * 64, deny=lambda ev: ev.dst == "198.51.100.66")
    s = PolicyGuard(lambda p: grants(), local_monitors=[b], clock=Clock()).open(ALICE, Vp())
    items = [send(), send("198.51.100.66"), send("203.0.113.1")]
    exc = denied(lambda: s.check_batch(items, [Sock()] * 3))
    assert exc.index == 1 and exc.rule == "monitor b"
    exc = denied(lambda: s.check_batch([send(), send("203.0.113.1")], [Sock()] * 2))
    assert exc.index == 1 and exc.rule == "privileges.dst"
    assert b.instances[0].batches == [2, 1]


def test_batch_delay_times_spaced() -> None:
    s = session(grants(rate={"pps": 1000, "burst_packets": 2, "excess": "delay"}))
    times = s.check_batch([send()] * 6, [Sock()] * 6)
    assert times[:2] == [None, None]
    gaps = [b - a for a, b in zip(times[2:], times[3:])]  # type: ignore[operator]
    assert all(abs(g - 1_000_000) <= 1 for g in gaps), gaps


def test_describe() -> None:
    mod = FakeModule("rec", "b" * 64)
    d = PolicyGuard(lambda p: P.NOTHING, local_monitors=[mod], clock=Clock()).describe()
    assert d["guard"] == "policy" and d["local_monitors"] == [{"name": "rec", "digest": "b" * 64}]


def test_period_ending_mid_session_ends_sends_and_opens() -> None:
    clock = Clock()
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=30)
    s = session(grants(period={"not_after": end.isoformat()}), clock=clock)
    s.check("nsend", send(), Sock())
    clock.t += 31
    exc = denied(lambda: s.check("nsend", send(), Sock()))
    assert exc.rule == "privileges.period" and "ended" in exc.reason
    assert denied(lambda: s.check_batch([send()], [Sock()])).index == 0
    assert denied(lambda: s.check("nopen", m.NOpen(id=1, proto="udp"))).rule == "privileges.period"


def test_with_a_real_wasm_monitor() -> None:
    """The shipped tcp-only monitor behind the policy: its denial (rule and
    reason) reaches the caller, one wasm call per batch, and refused sends
    consume no tokens."""
    monitor = pytest.importorskip("marionet.guard.monitor")
    from pathlib import Path

    wat = Path(monitor.__file__).parent / "monitors" / "tcp-only.wat"
    mod = monitor.MonitorModule.from_bytes(wat.read_bytes(), "tcp-only")
    guard = PolicyGuard(lambda p: grants(rate={"pps": 10, "burst_packets": 3}),
                        installed_monitors={mod.digest: mod}, clock=Clock())
    s = PolicyGuard(lambda p: grants(monitors=[mod.digest], rate={"pps": 10, "burst_packets": 3}),
                    installed_monitors={mod.digest: mod}, clock=Clock()).open(ALICE, Vp())
    exc = denied(lambda: s.check("nsend", send(), Sock()))
    assert exc.rule == "monitor tcp-only" and "TCP" in exc.reason
    tcp = Sock(kind="tcp", raddr="198.51.100.1", rport=80)
    exc = denied(lambda: s.check_batch([m.SendItem(sock=1, data=b"x")] * 2 + [send()], [tcp, tcp, Sock()]))
    assert exc.index == 2 and exc.rule == "monitor tcp-only"
    s.check("nsend", m.SendItem(sock=1, data=b"x"), tcp)  # the 3rd token: the refused sends took none
    assert denied(lambda: s.check("nsend", m.SendItem(sock=1, data=b"x"), tcp)).rule == "privileges.rate"
    assert guard.describe()["installed_monitors"] == [{"name": "tcp-only", "digest": mod.digest}]
