"""DNS lookups (scamper's ``do_dns``), written once over the packet interface.

``dns(io, qname, server=…)`` takes any ``PacketSession`` — native, a
primitive's own session on the endpoint, or a remote endpoint — and returns
a ``marionet.results.DnsResult`` (scamper's "host" record).

Why it is shaped this way (the same shape as ``ping``):

* **Validation first** (``plan_dns``): a bad name, type, class, server,
  ECS prefix or time raises ``ValueError`` before any socket is opened, so a
  mistake never sends a packet — and the endpoint refuses a bad task at once.
* **The endpoint stamps both ends.** Each query is a tagged ``nsend``: its
  ``ntag`` carries the kernel transmit time; the reply's ``ndata`` carries
  the kernel receive time.  The RTT is ``rx − tx`` of those two stamps, so it
  does not include the control path of a remote placement.
* **Sans-I/O core** (``DnsExchange``): building queries, parsing and
  matching replies, and assembling the result know nothing of sockets.  The
  reply parser never raises: bytes that are not a DNS response to one of our
  queries are counted in ``DnsResult.malformed`` and the wait goes on — a
  middlebox or attacker spraying garbage at the port cannot crash or end the
  measurement.
* **Transport as DNS uses it**: UDP first; a truncated (TC) reply is
  recorded and the question is asked again over TCP (RFC 7766, 2-byte length
  framing) without spending an attempt; ``tcp=True`` asks over TCP only.
  Retries are new queries with new ids; a late reply to an earlier attempt
  still counts (it answers that query), as in scamper.

Without ``server`` the question goes to the endpoint host's first resolver
(``info().resolvers``, from *its* resolv.conf), as scamper asks its VP's
resolver; reading the *caller's* resolv.conf would silently measure from the
wrong place in the remote placement.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import ipaddress
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

# Aliased: this module's public coroutine is itself called ``dns``.
from dns import edns as _edns
from dns import exception as _dnsexc
from dns import flags as _flags
from dns import message as _message
from dns import name as _name
from dns import rdataclass as _rdataclass
from dns import rdatatype as _rdatatype
from dns import reversename as _reversename

from marionet.client.errors import ConnectionLost, EndpointError
from marionet.client.packet import NotificationStream, PacketSession
from marionet.measure.params import NS as _NS
from marionet.measure.params import boolean as _bool
from marionet.measure.params import MAX_TASK_S, task_duration
from marionet.measure.params import integer as _int
from marionet.measure.params import seconds as _seconds
from marionet.measure.params import shown
from marionet.measure.rawio import HALTED, HaltWatch
from marionet.results.dns import (DnsMX, DnsQuery, DnsResult, DnsRR, DnsSOA,
                                  DnsStop, header_flag_names)

__all__ = ["dns", "plan_dns", "DnsPlan", "DnsExchange", "ParsedReply", "parse_reply"]

_EDNS_PAYLOAD = 1232  # the 2020 DNS flag day's safe UDP size
_TX_GRACE_S = 2.0     # how long after a reply its transmit stamp is awaited
_MAX_ATTEMPTS = 20
_REFUSED_QTYPES = frozenset({_rdatatype.AXFR, _rdatatype.IXFR, _rdatatype.OPT,
                             _rdatatype.TSIG, _rdatatype.TKEY})


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsPlan:
    """Validated ``do_dns`` parameters, defaults filled in."""

    qname: _name.Name
    qname_text: str
    server: str | None  # None: the endpoint's resolver, looked up when the measurement runs
    family: int
    port: int
    qtype: int
    qclass: int
    attempts: int
    rd: bool
    wait_timeout_ns: int
    tcp: bool
    nsid: bool
    ecs: str | None
    ecs_option: Any
    userid: int

    @property
    def qtype_text(self) -> str:
        return _rdatatype.to_text(self.qtype)

    @property
    def qclass_text(self) -> str:
        return _rdataclass.to_text(self.qclass)

    @property
    def edns(self) -> bool:
        return self.nsid or self.ecs_option is not None

    def check_task(self, max_s: float = MAX_TASK_S) -> None:
        """``ValueError`` if this lookup, as an endpoint task, could run longer
        than ``max_s``: every attempt may wait ``wait_timeout``, and a
        truncated reply adds one TCP query that spends no attempt."""
        wt = self.wait_timeout_ns / _NS
        task_duration("dns", (self.attempts + 1) * wt,
                      f"(attempts {self.attempts} + 1 TCP retry) × wait_timeout {wt:g} s", max_s)


def _rdtype(value: Any) -> int:
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            t = _rdatatype.RdataType.make(value)
        elif isinstance(value, str) and value.strip():
            t = _rdatatype.from_text(value.strip().upper())
        else:
            raise ValueError
    except (ValueError, _dnsexc.DNSException):
        raise ValueError(f"qtype {shown(value)} is not a DNS record type "
                         "(a name such as 'AAAA', or a number 1 - 65535)") from None
    if t == 0:
        raise ValueError("qtype 0 is reserved, not a record type (qtype must be 1 - 65535)")
    if t in _REFUSED_QTYPES:
        raise ValueError(f"qtype {_rdatatype.to_text(t)} is not a lookup (zone transfers and "
                         "meta-types are not supported)")
    return int(t)


def _rdclass(value: Any) -> int:
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            c = _rdataclass.RdataClass.make(value)
        elif isinstance(value, str) and value.strip():
            c = _rdataclass.from_text(value.strip().upper())
        else:
            raise ValueError
    except (ValueError, _dnsexc.DNSException):
        raise ValueError(f"qclass {shown(value)} is not a DNS class "
                         "(a name such as 'IN', or a number 1 - 65535)") from None
    if c == 0:
        raise ValueError("qclass 0 is reserved, not a class (qclass must be 1 - 65535)")
    if c == _rdataclass.NONE:
        raise ValueError("qclass NONE is for updates, not lookups")
    return int(c)


def _qname(value: Any, qtype: int) -> tuple[_name.Name, str]:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"qname must be a non-empty string, got {shown(value)}")
    text = value.strip()
    if qtype == _rdatatype.PTR:
        try:  # scamper: a PTR lookup of an address asks for its reverse name
            name = _reversename.from_address(text)
            return name, name.to_text(omit_final_dot=True)
        except (ValueError, _dnsexc.DNSException):
            pass
    try:
        name = _name.from_text(text)
    except _dnsexc.DNSException as exc:
        raise ValueError(f"qname {shown(value)} is not a valid DNS name: {exc}") from None
    return name, name.to_text(omit_final_dot=True)


def _ecs(value: Any) -> tuple[str | None, Any]:
    if value is None:
        return None, None
    if not isinstance(value, str):
        raise ValueError(f"ecs must be a prefix such as '192.0.2.0/24', got {shown(value)}")
    try:
        net = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"ecs {shown(value)} is not an address prefix (e.g. '192.0.2.0/24')") from None
    text = str(net)
    return text, _edns.ECSOption(str(net.network_address), net.prefixlen)


def _server(server: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(str(server).strip())
    except ValueError:
        raise ValueError(f"server {shown(server)} is not an IPv4 or IPv6 address") from None
    if addr.is_multicast or addr.is_unspecified:
        raise ValueError(f"server {addr} is a multicast or unspecified address")
    return addr


async def _endpoint_resolver(io: PacketSession, plan: DnsPlan) -> DnsPlan:
    """``plan`` aimed at the endpoint host's first resolver."""
    resolvers = list(getattr(await io.info(), "resolvers", None) or [])
    if not resolvers:
        raise ValueError("no server given and the endpoint reports no resolvers "
                         "(its resolv.conf names none): give server=")
    addr = _server(resolvers[0])
    return dataclasses.replace(plan, server=str(addr), family=addr.version)


def plan_dns(qname: Any, *, server: Any = None, port: int = 53, qclass: Any = "IN",
             qtype: Any = "A", attempts: int = 2, rd: bool = True, wait_timeout: Any = 5.0,
             tcp: bool = False, nsid: bool = False, ecs: Any = None, userid: int = 0) -> DnsPlan:
    """Check every parameter (``ValueError`` naming it) and fill defaults.

    ``qtype``/``qclass``: names ("AAAA", "in") or numbers. ``wait_timeout``:
    per query, seconds or ``timedelta``. ``ecs``: an EDNS client-subnet
    prefix ("192.0.2.0/24"). ``attempts`` counts UDP/TCP tries; a TCP retry
    after a truncated reply is extra.
    """
    t = _rdtype(qtype)
    c = _rdclass(qclass)
    name, text = _qname(qname, t)
    addr = None if server is None else _server(server)
    ecs_text, ecs_opt = _ecs(ecs)
    return DnsPlan(
        qname=name, qname_text=text, server=None if addr is None else str(addr),
        family=0 if addr is None else addr.version,
        port=_int("port", port, 1, 65535), qtype=t, qclass=c,
        attempts=_int("attempts", attempts, 1, _MAX_ATTEMPTS), rd=_bool("rd", rd),
        wait_timeout_ns=_seconds("wait_timeout", wait_timeout, 0.001, 60.0),
        tcp=_bool("tcp", tcp), nsid=_bool("nsid", nsid), ecs=ecs_text, ecs_option=ecs_opt,
        userid=_int("userid", userid, 0, 2**32 - 1))


# ---------------------------------------------------------------------------
# Sans-I/O: queries, reply parsing, the result
# ---------------------------------------------------------------------------

_HEADER = struct.Struct("!HHHHHH")


@dataclass
class ParsedReply:
    """A DNS response, decoded.  ``truncated``: the TC bit was set."""

    id: int
    rcode: int
    flags: int
    an: list[DnsRR]
    ns: list[DnsRR]
    ar: list[DnsRR]
    truncated: bool
    nsid: bytes | None = None


def _name_text(n: _name.Name) -> str:
    return n.to_text(omit_final_dot=True)


def _rr(name: _name.Name, rdclass: int, rdtype: int, ttl: int, rd: Any) -> DnsRR:
    """One dnspython rdata → ``DnsRR`` with scamper's typed views."""
    kw: dict[str, Any] = {}
    if rdtype in (_rdatatype.A, _rdatatype.AAAA) and rdclass == _rdataclass.IN:
        # an address only in class IN: a CH A is a domain and a number, and
        # other classes' A/AAAA are opaque data (rdata text below)
        kw["address"] = rd.address
    elif rdtype in (_rdatatype.NS, _rdatatype.CNAME, _rdatatype.PTR):
        kw["target"] = _name_text(rd.target)
    elif rdtype == _rdatatype.MX:
        kw["mx"] = DnsMX(int(rd.preference), _name_text(rd.exchange))
    elif rdtype == _rdatatype.SOA:
        kw["soa"] = DnsSOA(_name_text(rd.mname), _name_text(rd.rname), int(rd.serial),
                           int(rd.refresh), int(rd.retry), int(rd.expire), int(rd.minimum))
    elif rdtype == _rdatatype.TXT:
        kw["txt"] = [s.decode("utf-8", "backslashreplace") for s in rd.strings]
    return DnsRR(name=_name_text(name), rclass=_rdataclass.to_text(rdclass),
                 rtype=_rdatatype.to_text(rdtype), ttl=int(ttl), rdata=rd.to_text(), **kw)


def _section(rrsets: list[Any]) -> list[DnsRR]:
    return [_rr(rs.name, rs.rdclass, rs.rdtype, rs.ttl, rd) for rs in rrsets for rd in rs]


def parse_reply(wire: bytes, plan: DnsPlan) -> ParsedReply | None:
    """Decode ``wire`` as a response to ``plan``'s question; None if it is not.

    Never raises: anything dnspython (or our checks) rejects gives None.  A
    truncated reply whose records do not parse still counts (header only) —
    its job is to say "ask again over TCP".
    """
    try:
        return _parse_reply(bytes(wire), plan)
    except Exception:  # noqa: BLE001 - bytes off the network: every failure is "malformed"
        return None


def _parse_reply(wire: bytes, plan: DnsPlan) -> ParsedReply | None:
    if len(wire) < _HEADER.size:
        return None
    qid, flags, _qd, _an, _ns, _ar = _HEADER.unpack_from(wire)
    if not flags & _flags.QR:
        return None  # a query, not a response
    truncated = bool(flags & _flags.TC)
    try:
        msg = _message.from_wire(wire)
    except _dnsexc.DNSException:
        if not truncated:
            return None
        try:
            msg = _message.from_wire(wire, question_only=True)
        except _dnsexc.DNSException:
            return None
        if not _question_ok(msg, plan):
            return None
        return ParsedReply(qid, flags & 0xF, flags, [], [], [], True)
    if not _question_ok(msg, plan):
        return None
    nsid = None
    for opt in msg.options:
        if opt.otype == _edns.NSID:
            nsid = bytes(getattr(opt, "nsid", b"") or b"")
    return ParsedReply(qid, int(msg.rcode()), flags, _section(msg.answer), _section(msg.authority),
                       _section(msg.additional), truncated, nsid)


def _question_ok(msg: _message.Message, plan: DnsPlan) -> bool:
    """The reply must repeat our question (servers may omit it in errors)."""
    if not msg.question:
        return True
    if len(msg.question) != 1:
        return False
    q = msg.question[0]
    return q.name == plan.qname and q.rdtype == plan.qtype and q.rdclass == plan.qclass


@dataclass
class DnsExchange:
    """The measurement's state, without I/O: queries sent, replies matched."""

    plan: DnsPlan
    rng: random.Random = field(default_factory=random.SystemRandom)
    queries: list[DnsQuery] = field(default_factory=list)
    malformed: int = 0
    strays: int = 0
    _ids: set[int] = field(default_factory=set)

    def new_query(self, tcp: bool) -> tuple[DnsQuery, bytes]:
        """A fresh query (new random id, never reused in this measurement)
        and its wire bytes (TCP: with the 2-byte length prefix)."""
        qid = self.rng.randrange(0, 65536)
        while qid in self._ids and len(self._ids) < 65536:
            qid = self.rng.randrange(0, 65536)
        self._ids.add(qid)
        p = self.plan
        options = []
        if p.nsid:
            options.append(_edns.GenericOption(_edns.NSID, b""))
        if p.ecs_option is not None:
            options.append(p.ecs_option)
        if p.edns:
            msg = _message.make_query(p.qname, p.qtype, p.qclass, use_edns=0, options=options,
                                      payload=_EDNS_PAYLOAD, id=qid)
        else:  # a plain query, as scamper sends without nsid/ecs
            msg = _message.make_query(p.qname, p.qtype, p.qclass, use_edns=False, id=qid)
        if not p.rd:
            msg.flags &= ~_flags.RD
        wire = msg.to_wire()
        q = DnsQuery(id=qid, tcp=tcp)
        self.queries.append(q)
        return q, (struct.pack("!H", len(wire)) + wire) if tcp else wire

    def received(self, wire: bytes, rx_ns: int, rx_source: str | None, *,
                 tcp: bool) -> DnsQuery | None:
        """Match a reply to an unanswered query of the same transport; the
        answered query, or None (and counted as malformed)."""
        parsed = parse_reply(wire, self.plan)
        q = None
        if parsed is not None:
            q = next((x for x in self.queries
                      if x.id == parsed.id and x.tcp == tcp and x.rcode is None), None)
        if parsed is None or q is None:
            self.malformed += 1
            return None
        q.rx_ns = rx_ns
        q.rx_ts_source = rx_source if rx_source in ("kernel", "user") else None
        q.rcode = parsed.rcode
        q.flags = header_flag_names(parsed.flags)
        q.an, q.ns, q.ar = parsed.an, parsed.ns, parsed.ar
        q.wire = bytes(wire)
        q.error = None
        if parsed.nsid is not None:
            q.extra["nsid"] = parsed.nsid.hex()
        return q

    def result(self, *, start_ns: int, stop: DnsStop, src: str | None, error: str | None,
               vp: str | None) -> DnsResult:
        p = self.plan
        extra: dict[str, Any] = {}
        return DnsResult(
            dst=p.server, src=src, port=p.port, qname=p.qname_text, qtype=p.qtype_text,
            qclass=p.qclass_text, start_ns=start_ns, userid=p.userid, rd=p.rd, tcp=p.tcp,
            nsid=p.nsid, ecs=p.ecs, wait_timeout=_dt.timedelta(microseconds=p.wait_timeout_ns // 1000),
            attempts=p.attempts, queries=list(self.queries), stop_reason=stop,
            malformed=self.malformed, error=error, vp=vp or None, extra=extra)


# ---------------------------------------------------------------------------
# The I/O driver
# ---------------------------------------------------------------------------

_ANSWERED, _TIMEOUT, _ERROR, _HALTED = "answered", "timeout", "error", "halted"


class _Driver:
    """Sends one query at a time over the session and waits for its reply."""

    def __init__(self, io: PacketSession, run: DnsExchange, stream: NotificationStream,
                 halt: asyncio.Event | None) -> None:
        self.io = io
        self.run = run
        self.plan = run.plan
        self.stream = stream
        self.halt = halt
        self.udp: int | None = None
        self.src: str | None = None
        self.tags: dict[int, DnsQuery] = {}
        self._tag = random.SystemRandom().randrange(1, 2**31)
        self.watch = HaltWatch(halt)
        self.error: str | None = None

    def next_tag(self, q: DnsQuery) -> int:
        self._tag += 1
        self.tags[self._tag] = q
        return self._tag

    async def next_note(self, deadline: float) -> Any:
        """The next notification before ``deadline`` (monotonic); None on
        timeout; ``_HALTED`` when the halt event fires."""
        if self.watch.halted:
            return _HALTED
        note = self.stream.poll()
        if note is not None:
            return note
        note = await self.watch.next(self.stream, max(0.0, deadline - time.monotonic()))
        return _HALTED if note is HALTED else note

    def on_ntag(self, note: Any) -> DnsQuery | None:
        q = self.tags.get(note.tag)
        if q is None:
            return None
        if note.error:
            q.error = f"send failed: {note.error}"
            return q
        q.tx_ns = note.time_ns
        q.tx_ts_source = note.ts_source if note.ts_source in ("kernel", "user") else None
        return None

    def _is_server(self, peer: Any, port: Any) -> bool:
        try:
            return ipaddress.ip_address(peer) == ipaddress.ip_address(self.plan.server) \
                and port == self.plan.port
        except ValueError:
            return False

    async def udp_query(self) -> str:
        io, plan = self.io, self.plan
        if self.udp is None:
            self.udp = await io.nopen("udp", family=plan.family, stream=self.stream)
        q, wire = self.run.new_query(tcp=False)
        try:
            await io.nsend(self.udp, wire, dst=plan.server, port=plan.port, tag=self.next_tag(q))
        except EndpointError as exc:
            q.error = f"send failed: {exc}"
            return _ERROR
        deadline = time.monotonic() + plan.wait_timeout_ns / _NS
        while True:
            note = await self.next_note(deadline)
            if note is None:
                return _TIMEOUT
            if note is _HALTED:
                return _HALTED
            kind = note.kind
            if kind == "ntag" and note.sock == self.udp:
                failed = self.on_ntag(note)
                if failed is q:
                    return _ERROR
            elif kind == "ndata" and note.sock == self.udp:
                if not self._is_server(note.peer, note.port):
                    self.run.strays += 1  # not from the server: not a reply at all
                    continue
                if self.run.received(note.data, note.time_ns, note.ts_source, tcp=False) is not None:
                    return _ANSWERED
            elif kind == "nicmp" and note.sock == self.udp:
                q.error = f"ICMP type {note.icmp_type} code {note.icmp_code} from {note.peer}"
                return _ERROR

    async def tcp_query(self) -> str:
        io, plan = self.io, self.plan
        q, wire = self.run.new_query(tcp=True)
        deadline = time.monotonic() + plan.wait_timeout_ns / _NS
        try:
            sid = await io.nopen("tcp", family=plan.family, raddr=plan.server, rport=plan.port,
                                 timeout=plan.wait_timeout_ns / _NS, stream=self.stream)
        except EndpointError as exc:
            q.error = f"TCP connect failed: {exc}"
            return _ERROR
        try:
            info = io.sockets.get(sid)
            if info is not None and info.laddr:
                self.src = info.laddr
            try:
                await io.nsend(sid, wire, tag=self.next_tag(q))
            except EndpointError as exc:
                q.error = f"send failed: {exc}"
                return _ERROR
            buf = bytearray()
            while True:
                note = await self.next_note(deadline)
                if note is None:
                    return _TIMEOUT
                if note is _HALTED:
                    return _HALTED
                if note.sock != sid:
                    continue
                if note.kind == "ntag":
                    if self.on_ntag(note) is q:
                        return _ERROR
                elif note.kind == "ndata":
                    buf += note.data
                    if len(buf) < 2:
                        continue
                    need = 2 + struct.unpack_from("!H", buf)[0]
                    if len(buf) < need:
                        continue
                    if self.run.received(bytes(buf[2:need]), note.time_ns, note.ts_source,
                                         tcp=True) is not None:
                        await self.await_tx(q)  # before the close drops its pending stamp
                        return _ANSWERED
                    q.error = "malformed reply over TCP"
                    return _ERROR
                elif note.kind == "nstat" and note.state in ("peer-closed", "reset", "timeout",
                                                             "error", "refused"):
                    q.error = f"TCP {note.state} before a full reply" + \
                        (f" ({note.reason})" if note.reason else "")
                    return _ERROR
        finally:
            try:
                await io.nclose(sid)
            except (EndpointError, ConnectionLost):
                pass

    async def await_tx(self, q: DnsQuery) -> None:
        """An answered query also needs its kernel transmit stamp (the ntag
        may arrive after the reply's ndata)."""
        deadline = time.monotonic() + _TX_GRACE_S
        while q.tx_ns is None and q.error is None:
            note = await self.next_note(deadline)
            if note is None or note is _HALTED:
                return
            if note.kind == "ntag":
                self.on_ntag(note)
            elif note.kind == "ndata" and note.sock == self.udp:
                if self._is_server(note.peer, note.port):
                    self.run.received(note.data, note.time_ns, note.ts_source, tcp=False)
                else:
                    self.run.strays += 1

    async def route_source(self) -> None:
        """The endpoint's source address toward the server (for ``src``)."""
        try:
            sid = await self.io.nopen("udp", family=self.plan.family, raddr=self.plan.server,
                                      rport=self.plan.port)
        except EndpointError:
            return
        try:
            self.src = self.io.sockets[sid].laddr or None
        finally:
            try:
                await self.io.nclose(sid)
            except (EndpointError, ConnectionLost):
                pass

    async def close(self) -> None:
        self.watch.close()
        if self.udp is not None:
            try:
                await self.io.nclose(self.udp)
            except (EndpointError, ConnectionLost):
                pass
            self.udp = None


async def dns(io: PacketSession, qname: Any, *, server: Any = None, port: int = 53,
              qclass: Any = "IN", qtype: Any = "A", attempts: int = 2, rd: bool = True,
              wait_timeout: Any = 5.0, tcp: bool = False, nsid: bool = False, ecs: Any = None,
              userid: int = 0, halt: asyncio.Event | None = None) -> DnsResult:
    """Ask ``server`` (default: the endpoint host's first resolver) for
    ``qname``/``qtype`` from the endpoint behind ``io``.

    Parameters are scamper's ``do_dns`` (plus ``port``); the result is a
    ``DnsResult`` whose stop reason is ``done`` (a reply, whatever its
    rcode), ``timeout`` (no reply to any attempt), ``error`` (the last
    attempt failed outright: ICMP unreachable, TCP refused …; see
    ``error``) or ``halted`` (``halt`` was set).
    """
    plan = plan_dns(qname, server=server, port=port, qclass=qclass, qtype=qtype, attempts=attempts,
                    rd=rd, wait_timeout=wait_timeout, tcp=tcp, nsid=nsid, ecs=ecs, userid=userid)
    if plan.server is None:
        plan = await _endpoint_resolver(io, plan)
    run = DnsExchange(plan)
    start_local = time.time_ns()
    stop = DnsStop.NONE
    with io.stream() as stream:
        d = _Driver(io, run, stream, halt)
        try:
            await d.route_source()
            use_tcp = plan.tcp
            left = plan.attempts
            while left > 0:
                outcome = await (d.tcp_query() if use_tcp else d.udp_query())
                if outcome == _HALTED:
                    stop = DnsStop.HALTED
                    break
                if outcome == _ANSWERED:
                    answered = next(q for q in reversed(run.queries) if q.rcode is not None)
                    await d.await_tx(answered)
                    if "TC" in answered.flags and not use_tcp:
                        use_tcp = True  # truncated: ask again over TCP, not an attempt
                        continue
                    stop = DnsStop.DONE
                    break
                left -= 1
                stop = DnsStop.TIMEOUT if outcome == _TIMEOUT else DnsStop.ERROR
            if stop != DnsStop.DONE and any(q.rcode is not None for q in run.queries) \
                    and stop != DnsStop.HALTED:
                stop = DnsStop.DONE  # a truncated UDP reply is still an answer
        except ConnectionLost as exc:
            d.error = str(exc)
            stop = DnsStop.ERROR
        finally:
            await d.close()
    if stop == DnsStop.ERROR and d.error is None:
        d.error = next((q.error for q in reversed(run.queries) if q.error), None)
    first_tx = next((q.tx_ns for q in run.queries if q.tx_ns is not None), None)
    return run.result(start_ns=first_tx if first_tx is not None else start_local, stop=stop,
                      src=d.src, error=d.error, vp=io.endpoint_name)
