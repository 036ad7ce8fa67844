"""tbit (TCP behaviour inference), written once over the packet interface.

``tbit(io, dst, method=…)`` holds one TCP conversation with a remote server
from raw sockets — IPv4 with our own IP and TCP headers (``hdrincl``),
IPv6 with our TCP header, the hop limit set on the socket and the traffic
class (ECN) per send — with replies from a kernel-stamped capture
(``ncap``), and infers how the remote TCP behaves, as scamper's tbit does
(Padhye & Floyd, "On Inferring TCP Behaviour"; Medina, Allman & Floyd).
Every packet is recorded with its kernel time; a sent IPv6 packet's header
is the one the kernel writes for those settings, except that we record flow
label 0 (the kernel may choose one). Methods (pmtud: IPv4 only):

* ``ecn``: SYN with ECE|CWR; a SYN-ACK with ECE (and not CWR) means the
  server negotiated ECN, then the request goes out marked CE and the server
  must echo ECE: ``ecn-success``, ``ecn-incapable`` (no ECE on the
  SYN-ACK), ``ecn-badsynack``, ``ecn-noece``, ``ecn-nodata``.
* ``sack-rcvr``: SYN with SACK-permitted; one byte of the request, then six
  one-byte segments each leaving a one-byte hole: the server's duplicate
  ACKs must carry SACK blocks naming them: ``sack-rcvr-success``,
  ``sack-incapable`` (no SACK-permitted on the SYN-ACK), ``-shifted``,
  ``-nosack``, ``-timeout``.
* ``null``: a plain connection and HTTP GET to the end: ``null-success``.
* ``icw``: an HTTP GET of a large object whose data we do not acknowledge
  until the server retransmits its first segment: what it sent before that
  is its initial window (``Tbit.icw_bytes``): ``icw-success``/``-tooshort``.
* ``pmtud``: an HTTP GET of a large object; the first segment larger than
  ``mtu`` with DF set is answered with an ICMP "fragmentation needed"
  quoting it (from a raw ICMP socket); the server must resend it smaller:
  ``pmtud-success``, ``-cleardf`` (resent without DF), ``-fail`` (PTBs
  ignored), ``-nodf`` (big segments never had DF), ``-toosmall``, ``-nodata``.
* ``blind-rst`` / ``blind-syn``: each of the first data segments is answered
  with a RST (SYN) ``blind_off`` past the right sequence number, as an
  off-path attacker would guess (RFC 5961): ``blind-challenge`` (a challenge
  ACK), ``blind-accepted``, ``blind-ignored``, ``blind-rst`` (the server
  reset in answer to the SYN).
* ``blind-data``: the request in thirds, the last sent first with an
  acknowledgement number ``blind_off`` (-70000) off, leaving a hole:
  ``blind-challenge`` (dropped with a challenge ACK, RFC 5961 §5),
  ``blind-accepted`` (held and acknowledged once the hole was filled),
  ``blind-ignored``.
* ``blind-fin``: the request's first third, then a FIN past a hole with an
  acknowledgement number ``blind_off`` (-70000) off, then the rest:
  ``blind-challenge``, ``blind-accepted`` (the FIN acknowledged with the
  request), ``blind-ignored``.

The state machine (``TbitConversation``, measure/tbitconv.py) follows
``scamper_tbit_do.c``: the same probes (16-bit ISN, DF set, window 65535,
scamper's HTTP/1.0 request), the same per-packet handling and the same classification, so result codes
mean what scamper's mean (all of scamper's tbit tests but abc, and the
application is always HTTP). It is sans-I/O — bytes in, bytes out, times in
ns on the endpoint's clock — so it is unit-tested without sockets and is
the same in every placement. Two deliberate differences: scamper waits 70 s
of silence before classifying an ECN test on a keep-alive server; we close
as soon as the server has acknowledged our CE-marked request and sent data
(the result can no longer change). And the whole test is bounded by
``max_time`` so an endpoint task has a known worst case.

**The local kernel's RST.** Our SYN leaves from a raw socket, so no kernel
socket owns the source port, and the VP's own TCP answers the server's
SYN-ACK with a RST before our ACK can follow; the server drops the
half-open connection and answers our ACK with a RST. A kernel socket on the
port does not help: a listener resets a SYN-ACK just the same, and a
connected socket would hold the conversation itself. Nothing in the packet
interface can silence it (the one kernel-side trick, a listening socket
whose socket filter drops everything — the filter runs before TCP's
state machine, so the segment is discarded, not answered — needs an
endpoint feature: see docs/decisions.md). So tbit requires the VP to drop
its own RSTs for the test's source port, as scamper's users do on Linux::

    iptables -A OUTPUT -p tcp --tcp-flags RST RST --sport SPORT -j DROP
    (ip6tables for IPv6)

and gives the port to use as ``sport`` (a rule can cover a range). When the
RSTs were not suppressed, the server's reset of our handshake-completing ACK
has a telltale shape (a bare RST, no data yet, seq = the server's ISN + 1):
the result is ``tcp-rst`` and ``error`` says that the VP's RSTs must be
dropped, with the rule. That rule also drops blind-rst's own RSTs (the send
fails with EPERM, and ``error`` says so): for blind-rst the rule must spare
them (e.g. match only the kernel's TTL) or the port be held another way.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import PacketSession
from marionet.measure import probes as P
from marionet.measure import tcpseg as T
from marionet.measure.params import NS as _NS
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import method as check_method
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import target as check_target
from marionet.measure.rawio import route_source
from marionet.measure.tbitconv import RST_RULE, TbitConversation, http_request
from marionet.results.tbit import NULL_OPTIONS, Tbit, TbitPkt, TbitResult

__all__ = ["tbit", "plan_tbit", "TbitPlan", "TbitConversation", "SUPPORTED_METHODS", "http_request",
           "RST_RULE"]

SUPPORTED_METHODS = ("ecn", "sack-rcvr", "null", "icw", "pmtud", "blind-rst", "blind-syn", "blind-data",
                     "blind-fin")
_KNOWN_METHODS = ("pmtud", "ecn", "null", "sack-rcvr", "icw", "abc", "blind-rst", "blind-syn",
                  "blind-data", "blind-fin")
_OPTIONS = ("sack", "tcpts")

R = TbitResult


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TbitPlan:
    """Validated tbit parameters, with scamper's defaults filled in."""

    dst: str
    method: str
    url: str
    host: str
    file: str
    src: str | None
    sport: int
    dport: int
    mss: int
    wscale: int
    ttl: int
    options: int  # bit 0 tcpts, bit 1 sack (scamper's SCAMPER_TBIT_OPTION_*)
    syn_retx: int
    dat_retx: int
    wait_probe_ns: int
    wait_idle_ns: int
    max_time_ns: int
    userid: int
    mtu: int = 1280  # pmtud: the MTU our "fragmentation needed" messages advertise
    ptb_retx: int = 4  # pmtud: PTBs sent for one segment before giving up
    blind_off: int = 10  # blind-*: sequence (rst, syn) or acknowledgement (data) offset
    blind_retx: int = 3  # blind-*: how many blinded segments are tried

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """The driver stops the test at ``max_time`` whatever happens, then
        waits at most a second for the last transmit stamps."""
        task_duration("tbit", self.max_time_ns / _NS + 1,
                      f"max_time {self.max_time_ns / _NS:g} s + 1 s for the last transmit stamps", max_s)


def plan_tbit(dst: Any, *, method: str = "null", url: str | None = None, dport: int = 80,
              sport: int | None = None, src: Any = None, mss: int = 1460, wscale: int = 0,
              ttl: int = 255, options: Any = (), syn_retx: int = 3, dat_retx: int | None = None,
              wait_probe: Any = 10.0, wait_idle: Any = 10.0, max_time: Any = 60.0, userid: int = 0,
              mtu: int = 1280, ptb_retx: int = 4, blind_off: int | None = None, blind_retx: int = 3,
              rng: random.Random | None = None) -> TbitPlan:
    """Check every parameter (``ValueError`` with the reason) and fill defaults.

    ``url`` is the HTTP URL requested (scamper's ``-u``; default
    ``http://DST/``); its host goes in the Host header, the connection
    always goes to ``dst``:``dport``. ``options``: "sack" and/or "tcpts"
    (scamper's ``-O``) to offer SACK / timestamps on the SYN. ``wait_probe``
    is how long a SYN or request waits before it is sent again
    (``syn_retx``/``dat_retx`` times), ``wait_idle`` how long a silent
    server is waited for, ``max_time`` the bound on the whole test.
    ``mtu`` (pmtud, scamper's ``-M``) is what our ICMP "fragmentation
    needed" messages advertise; ``ptb_retx`` how many are sent for one
    segment before the server is declared to ignore them. ``blind_off``
    and ``blind_retx`` (blind-rst/-syn, scamper's ``-o``/``-q``): each of the
    first ``blind_retx`` data segments is answered with a RST (or SYN) whose
    sequence number is ``blind_off`` past the right one, as an off-path
    attacker would guess (default 10); blind-data sends the last third of
    the request with an acknowledgement number ``blind_off`` off (default
    -70000, scamper's).
    """
    rng = rng or random.SystemRandom()
    method = check_method("tbit", method, SUPPORTED_METHODS, _KNOWN_METHODS)
    d, family, s = check_target(dst, src)
    if family != 4 and method == "pmtud":
        raise ValueError(f"tbit pmtud runs over IPv4 only for now (dst {d} is IPv6)")
    dport = _int("dport", dport, 1, 65535)  # type: ignore[assignment]
    sp = _int("sport", sport, 1, 65535, optional=True)
    if sp is None:
        sp = rng.randrange(0x8000, 0x10000)
    mss = _int("mss", mss, 64, 65495)  # type: ignore[assignment]
    wscale = _int("wscale", wscale, 0, 14)  # type: ignore[assignment]
    ttl = _int("ttl", ttl, 1, 255)  # type: ignore[assignment]
    syn_retx = _int("syn_retx", syn_retx, 1, 10)  # type: ignore[assignment]
    if dat_retx is None:
        dat_retx = 1 if method == "sack-rcvr" else 3  # scamper's defaults
    dat_retx = _int("dat_retx", dat_retx, 1, 10)  # type: ignore[assignment]
    userid = _int("userid", userid, 0, 2**32 - 1)  # type: ignore[assignment]
    mtu = _int("mtu", mtu, 68, 65535)  # type: ignore[assignment]
    ptb_retx = _int("ptb_retx", ptb_retx, 1, 10)  # type: ignore[assignment]
    if blind_off is None:
        blind_off = -70000 if method in ("blind-data", "blind-fin") else 10  # scamper's defaults
    blind_off = _int("blind_off", blind_off, -(2**31), 2**31 - 1)  # type: ignore[assignment]
    blind_retx = _int("blind_retx", blind_retx, 1, 10)  # type: ignore[assignment]
    if method == "pmtud" and mtu >= mss + 40:
        raise ValueError(f"mtu {mtu} must be below mss {mss} + 40: the server's full segments must be "
                         "too big for it")
    wp = _seconds("wait_probe", wait_probe, 0.1, 60)
    wi = _seconds("wait_idle", wait_idle, 0.1, 120)
    mt = _seconds("max_time", max_time, 1, 3600)
    if isinstance(options, str):
        options = [o for o in options.replace(",", " ").split() if o]
    if not isinstance(options, (list, tuple, set, frozenset)):
        raise ValueError(f"options must be a list of {', '.join(_OPTIONS)}, got {type(options).__name__}")
    obits = 0
    for o in options:
        if o not in _OPTIONS:
            known = " or ".join(_OPTIONS) + (" (null's IP options are not supported)" if o in NULL_OPTIONS else "")
            raise ValueError(f"unknown tbit option {o!r} (use {known})")
        obits |= 1 << _OPTIONS[::-1].index(o)  # tcpts = 0x01, sack = 0x02
    if url is None:
        url = f"http://[{d}]/" if family == 6 else f"http://{d}/"
    if not isinstance(url, str) or len(url) > 400 or any(c in url for c in "\r\n \t"):
        raise ValueError(f"url must be an http:// URL of at most 400 characters without spaces, got {url!r:.60}")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"url {url!r} has a bad port") from None
    if parts.scheme != "http" or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"url {url!r} must be http://host[:port]/path (tbit speaks plain HTTP)")
    host = parts.hostname if port is None else f"{parts.hostname}:{port}"
    if ":" in parts.hostname:
        host = f"[{parts.hostname}]" + (f":{port}" if port is not None else "")
    file = parts.path or "/"
    if parts.query:
        file += "?" + parts.query
    return TbitPlan(dst=d, method=method, url=f"http://{host}{file}", host=host, file=file, src=s,
                    sport=sp, dport=dport, mss=mss, wscale=wscale, ttl=ttl, options=obits,
                    syn_retx=syn_retx, dat_retx=dat_retx, wait_probe_ns=wp, wait_idle_ns=wi,
                    max_time_ns=mt, userid=userid, mtu=mtu, ptb_retx=ptb_retx, blind_off=blind_off,
                    blind_retx=blind_retx)


# ---------------------------------------------------------------------------
# The I/O driver
# ---------------------------------------------------------------------------


def _filter(plan: TbitPlan) -> str:
    if ":" in plan.dst:  # the endpoint captures whole IPv6 packets (no extension headers expected)
        return (f"ip6 and ip6[6] = 6 and ip6 src {plan.dst} and ip6[40:2] = {plan.dport} "
                f"and ip6[42:2] = {plan.sport}")
    return f"tcp and src host {plan.dst} and src port {plan.dport} and dst port {plan.sport}"


async def tbit(io: PacketSession, dst: Any, *, method: str = "null", url: str | None = None,
               dport: int = 80, sport: int | None = None, src: Any = None, mss: int = 1460,
               wscale: int = 0, ttl: int = 255, options: Any = (), syn_retx: int = 3,
               dat_retx: int | None = None,
               wait_probe: Any = 10.0, wait_idle: Any = 10.0, max_time: Any = 60.0, userid: int = 0,
               mtu: int = 1280, ptb_retx: int = 4, blind_off: int | None = None, blind_retx: int = 3,
               halt: asyncio.Event | None = None) -> Tbit:
    """Run tbit test ``method`` against ``dst`` from the endpoint behind
    ``io``; returns a ``Tbit``. Parameters as ``plan_tbit``. Needs the VP's
    own RSTs dropped for ``sport`` (see the module docstring)."""
    plan = plan_tbit(dst, method=method, url=url, dport=dport, sport=sport, src=src, mss=mss,
                     wscale=wscale, ttl=ttl, options=options, syn_retx=syn_retx, dat_retx=dat_retx,
                     wait_probe=wait_probe, wait_idle=wait_idle, max_time=max_time, userid=userid,
                     mtu=mtu, ptb_retx=ptb_retx, blind_off=blind_off, blind_retx=blind_retx)
    family = 6 if ":" in plan.dst else 4
    source = plan.src or await route_source(io, family, plan.dst, plan.dport)
    with io.stream() as stream:
        socks: dict[int, int] = {}  # IP protocol -> socket
        try:
            if family == 4:
                socks[P.IPPROTO_TCP] = await io.nopen("raw", family=4, ipproto=P.IPPROTO_TCP, hdrincl=True,
                                                      laddr=source, stream=stream)
            else:
                socks[P.IPPROTO_TCP] = await io.nopen("raw", family=6, ipproto=P.IPPROTO_TCP, laddr=source,
                                                      ttl=plan.ttl, stream=stream)
            await io.ncap(socks[P.IPPROTO_TCP], _filter(plan))
            if plan.method == "pmtud":  # our PTBs leave from a raw ICMP socket; it captures nothing
                socks[P.IPPROTO_ICMP] = await io.nopen("raw", family=4, ipproto=P.IPPROTO_ICMP,
                                                       hdrincl=True, laddr=source, stream=stream)
                await io.ncap(socks[P.IPPROTO_ICMP], program=[(0x06, 0, 0, 0)])
            return await _drive(io, plan, source, socks, stream, halt)
        finally:
            for sid in socks.values():
                try:
                    await io.nclose(sid)
                except (EndpointError, ConnectionLost):
                    pass


async def _drive(io: PacketSession, plan: TbitPlan, source: str, socks: dict[int, int], stream: Any,
                 halt: asyncio.Event | None) -> Tbit:
    sock = socks[P.IPPROTO_TCP]
    off = await io.clock_offset(samples=3)
    offset = off.offset_ns

    def now_ep() -> int:
        return time.time_ns() + offset

    start = now_ep()
    conv = TbitConversation(plan, source, start_ns=start)
    hard_end = start + plan.max_time_ns
    tags: dict[int, TbitPkt] = {}
    tag_base = random.SystemRandom().randrange(1, 2**31)
    extra: dict[str, Any] = {}

    async def flush() -> None:
        for pkt, data in conv.take():
            tag = tag_base + len(tags)
            tags[tag] = pkt
            try:
                if data[0] >> 4 == 6:  # the kernel writes the IPv6 header: ours is the record's
                    tclass = ((data[0] & 0x0F) << 4) | (data[1] >> 4)
                    await io.nsend(sock, data[40:], dst=plan.dst, tag=tag, tos=tclass or None)
                else:
                    await io.nsend(socks.get(data[9], sock), data, dst=plan.dst, tag=tag)
            except EndpointError as exc:
                conv.halt(R.ERROR, f"send failed: {exc}")
                return

    def note_tag(note: Any) -> None:
        pkt = tags.get(note.tag)
        if pkt is None:
            return
        if note.error:
            hint = ""
            if "EPERM" in note.error and pkt.tcp() is not None and pkt.tcp()[3] & T.TH_RST:
                hint = (" (a firewall rule dropped our own RST: the rule that drops the VP's RSTs must "
                        "spare tbit's, e.g. match only the kernel's TTL, or use a port hold)")
            conv.halt(R.ERROR, f"send failed: {note.error}{hint}")
        elif note.time_ns:
            pkt.time_ns, pkt.ts_source = note.time_ns, note.ts_source

    try:
        conv.start(start)
        await flush()
        while not conv.done:
            if halt is not None and halt.is_set():
                conv.halt(R.HALTED)
                break
            t = now_ep()
            if t >= hard_end:
                conv.halt(conv.code if conv.code != R.NONE else R.ABORTED,
                          f"stopped after max_time {plan.max_time_ns / _NS:g} s")
                break
            dl = conv.deadline_ns
            if dl is not None and t >= dl:
                conv.timeout(t)
                await flush()
                continue
            wake = min(dl if dl is not None else hard_end, hard_end)
            timeout = max(0.0, (wake - t) / _NS)
            if halt is not None:
                timeout = min(timeout, 0.05)
            note = await stream.next(timeout)
            if note is None:
                continue
            if note.kind == "ndata" and note.sock == sock:
                if conv.received(note.data, note.time_ns, note.ts_source):
                    await flush()
            elif note.kind == "ntag":
                note_tag(note)
            elif note.kind == "ndrop":
                extra["ndrop"] = extra.get("ndrop", 0) + note.count
        # The last transmit stamps are on their way: wait for them briefly.
        grace = time.monotonic() + 1.0
        while any(p.ts_source == "user" for p in tags.values()) and time.monotonic() < grace:
            note = await stream.next(max(0.0, grace - time.monotonic()))
            if note is None:
                break
            if note.kind == "ntag":
                note_tag(note)
            elif note.kind == "ndata" and note.sock == sock:
                conv.received(note.data, note.time_ns, note.ts_source)
    except ConnectionLost as exc:
        conv.halt(R.ERROR, str(exc))
    return conv.result(vp=io.endpoint_name, extra=extra)
