"""The endpoint daemon: shared state, and serving connections.

``Endpoint`` holds what all sessions share — configuration, the guard, the
send engine, capabilities. ``ClientConnection`` turns one byte stream into
a ``Session``: it checks the hello, decodes frames (a protocol error ends
only this connection, after a ``Bye`` that says why) and applies
backpressure from the transport to the session's notification buffer.
The same connection class serves clients connecting directly (``--listen``)
and, later, a controller the endpoint dials out to.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import ipaddress
import logging
import os
import socket
import ssl
import struct
import time
import resource
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marionet import __version__
from marionet.endpoint.addresses import BadRequest
from marionet.endpoint.engine import InlineEngine
from marionet.endpoint.resolvconf import read_resolvers
from marionet.endpoint.session import Session
from marionet.guard import Guard, GuardDenied, Principal
from marionet.guard.audit import AuditLog
from marionet.wire import messages as m
from marionet.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, ProtocolError, bye_and_close, encode

log = logging.getLogger("marionet.endpoint")


def default_state_dir() -> Path:
    """Where a standalone endpoint keeps its self-signed certificate."""
    base = os.environ.get("MARIONET_STATE")
    if base:
        return Path(base)
    if os.geteuid() == 0:
        return Path("/var/lib/marionet")
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state")) / "marionet"


@dataclass
class EndpointConfig:
    name: str = field(default_factory=socket.gethostname)
    buffer_limit: int = 16 * 1024 * 1024
    max_frame: int = DEFAULT_MAX_FRAME
    max_sockets: int = 256
    connect_timeout_ns: int = 10_000_000_000
    engine: str = "process"  # "process" (dedicated sender) or "inline"
    resolv_conf: str = "/etc/resolv.conf"  # where info() finds the host's DNS resolvers
    write_high_water: int = 1024 * 1024
    #: How far ahead a send, shutdown or capture end may be scheduled.
    max_schedule_ahead_ns: int = 24 * 3600 * 1_000_000_000
    #: A connection that has not said hello by then is closed.
    hello_timeout_s: float = 5.0
    #: Per principal (one certificate, or one unauthenticated identity):
    #: sessions connected at once (in-process primitive sessions not
    #: counted: they are bounded by tasks) and sockets open across them.
    max_sessions_per_principal: int = 64
    max_sockets_per_principal: int = 2048
    #: File descriptors kept free of sockets, so that others can still
    #: connect (a connection and its TLS need a few) while sockets are busy.
    fd_reserve: int = 128
    #: Longest worst case a task's parameters may ask for (s); a task still
    #: running 30 s past it is halted.
    max_task_s: int = 600
    #: Behave as if this endpoint's clock were off by this much (ns): every
    #: time it reports is shifted by it, every time it is given read in it
    #: (lab VPs share one clock; see marionet.wire.skew). 0: no cost at all.
    clock_skew_ns: int = 0
    tags: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


#: Requests handled per connection per event-loop iteration, so that one
#: client's flood of requests interleaves with everyone else's.
INBOX_BUDGET = 64
#: Decoded requests waiting on one connection before we stop reading it.
INBOX_MAX = 1024
ADDRESS_CACHE_S = 1.0


@dataclass
class Usage:
    """What one principal holds on this endpoint."""

    sessions: int = 0
    sockets: int = 0


def principal_key(p: Principal) -> str:
    """Limits are per certificate when there is one, else per name; a
    controller's word about a fingerprint never shares a verified
    certificate's counters."""
    return f"{p.auth}:fp:{p.fingerprint}" if p.fingerprint else f"{p.auth}:{p.role}:{p.name}"


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit.

    Why: sockets are what an endpoint hands out; the usual soft limit of
    1024 would make the fd table, not our limits, the first thing to run
    out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


class Endpoint:
    """State shared by every session on this vantage point."""

    def __init__(self, config: EndpointConfig | None = None, guard: Guard | None = None, *,
                 trust: Any = None, audit: AuditLog | None = None) -> None:
        """``guard`` decides what sessions may do (default: the open guard);
        ``trust`` (``marionet.guard.trust.Trust``) verifies certificate
        chains and revocations; ``audit`` gets one line per session and
        per denial."""
        self.config = config or EndpointConfig()
        self.guard = guard or Guard()
        self.trust = trust
        self.auditor = audit or AuditLog()
        if trust is not None:
            trust.on_revoked(self._revocations_changed)
        self.version = __version__
        self.sessions: set[Session] = set()
        self.primitives: Any = __import__("marionet.endpoint.primitives", fromlist=["PrimitiveRunner"]).PrimitiveRunner(self)
        self.engine: Any = None
        self._stamp_anchor: socket.socket | None = None
        self._caps: dict[str, bool] | None = None
        self.servers: list[asyncio.base_events.Server] = []
        self.usage: dict[str, Usage] = {}
        self.open_sockets = 0
        self.connections = 0
        self.fd_limit = raise_fd_limit()
        self._addr_cache: tuple[float, list[str]] | None = None

    async def start(self) -> None:
        """Start the send engine (call inside the running loop)."""
        loop = asyncio.get_running_loop()
        if self.engine is not None:
            return
        # The kernel turns receive timestamping on lazily (a static key
        # flipped from a workqueue) when the first socket asks, so packets
        # in the first moments after that are not stamped. One socket that
        # asks for stamps for the endpoint's whole life keeps it on, so the
        # first measurement on a fresh endpoint gets kernel times too.
        from marionet.endpoint.timestamps import enable_rx_timestamps, recv_stamped

        anchor = self._stamp_anchor = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        enable_rx_timestamps(anchor)
        anchor.bind(("127.0.0.1", 0))
        anchor.setblocking(False)
        for _ in range(100):  # until a packet to ourselves comes back kernel-stamped
            anchor.sendto(b"t", anchor.getsockname())
            await asyncio.sleep(0.002)
            got = recv_stamped(anchor)
            if got is not None and got.ts_source == "kernel":
                break
        if self.config.engine == "process":
            try:
                from marionet.endpoint.procengine import ProcessEngine

                self.engine = ProcessEngine(loop)
                await self.engine.start()
            except Exception as exc:  # noqa: BLE001 - fall back and say so
                log.warning("sender process unavailable (%s); sending from the event loop", exc)
                self.engine = InlineEngine(loop)
        else:
            self.engine = InlineEngine(loop)

    async def close(self) -> None:
        for srv in self.servers:
            srv.close()
        for s in list(self.sessions):
            s.close()
        if self.engine is not None:
            self.engine.close()
        if self._stamp_anchor is not None:
            self._stamp_anchor.close()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass

    # ------------------------------------------------------------ facts
    def capabilities(self) -> dict[str, bool]:
        if self._caps is None:
            caps = {"kernel_rx_timestamps": True, "kernel_tx_timestamps": True}
            try:
                socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()
                caps["raw"] = True
            except PermissionError:
                caps["raw"] = False
            try:
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.bind(("::1", 0))
                s.close()
                caps["ipv6"] = True
            except OSError:
                caps["ipv6"] = False
            caps["capture"] = caps["raw"]
            from marionet.endpoint import timestamps

            caps["tx_key_per_send"] = timestamps.supports_ts_opt_id()
            self._caps = caps
        caps = dict(self._caps)
        # not cached: a sender that keeps dying falls back to inline sending
        caps["sender_process"] = getattr(self.engine, "name", "") == "process"
        return caps

    def addresses(self) -> list[str]:
        """Cached for a second: an ``info`` flood must not cost an ioctl per
        interface per request."""
        now = time.monotonic()
        if self._addr_cache is None or now - self._addr_cache[0] > ADDRESS_CACHE_S:
            self._addr_cache = (now, local_addresses())
        return list(self._addr_cache[1])

    def engine_status(self) -> dict[str, Any]:
        status = getattr(self.engine, "status", None)
        if callable(status):
            return dict(status())
        return {"engine": getattr(self.engine, "name", "none")}

    def limits(self) -> dict[str, int]:
        """What a client may do here, so it can plan instead of probing."""
        c = self.config
        return {"max_sockets": c.max_sockets, "max_frame": c.max_frame,
                "max_sessions_per_principal": c.max_sessions_per_principal,
                "max_sockets_per_principal": c.max_sockets_per_principal,
                "max_schedule_ahead_s": c.max_schedule_ahead_ns // 1_000_000_000,
                "buffer_limit": c.buffer_limit, "max_task_s": c.max_task_s}

    def status(self, session: Session) -> dict[str, Any]:
        """Health as one session sees it: the send engine (did it restart,
        why), what its principal holds against the limits, what was lost."""
        use = self.usage.get(principal_key(session.principal), Usage())
        return {
            "engine": self.engine_status(),
            "principal": {"name": session.principal.name, "auth": session.principal.auth,
                          "sessions": use.sessions, "sockets": use.sockets},
            "guard": self.guard.describe(),
            "session": {"sockets": len(session.sockets), "dropped": session.dropped_total,
                        "kernel_drops": session.kernel_drops},
            "endpoint": {"sessions": len(self.sessions), "sockets": self.open_sockets,
                         "connections": self.connections, "fd_limit": self.fd_limit},
        }

    # ------------------------------------------------------------ limits
    def admit_session(self, principal: Principal, local: bool) -> Usage:
        """Count a new session of ``principal``; BadRequest("limit") if it has
        too many already."""
        use = self.usage.setdefault(principal_key(principal), Usage())
        limit = self.config.max_sessions_per_principal
        if not local and use.sessions >= limit:
            raise BadRequest("limit", f"{principal.name!r} already has {use.sessions} sessions "
                                      f"on this endpoint (at most {limit})")
        if not local:
            use.sessions += 1
        return use

    def session_ended(self, principal: Principal, local: bool) -> None:
        key = principal_key(principal)
        use = self.usage.get(key)
        if use is None:
            return
        if not local:
            use.sessions -= 1
        if use.sessions <= 0 and use.sockets <= 0:
            del self.usage[key]

    def admit_socket(self, principal: Principal) -> None:
        """Room for one more socket for ``principal``? BadRequest("limit") if not.

        Three bounds: the principal's own, and the endpoint's file
        descriptors less a reserve, so that one client (or many) filling
        the table cannot keep anyone else from connecting."""
        use = self.usage.get(principal_key(principal))
        limit = self.config.max_sockets_per_principal
        if use is not None and use.sockets >= limit:
            raise BadRequest("limit", f"{principal.name!r} has {use.sockets} sockets open on this "
                                      f"endpoint (at most {limit})")
        room = self.fd_limit - self.config.fd_reserve - self.connections
        if self.open_sockets >= room:
            raise BadRequest("limit", f"the endpoint is at its file-descriptor budget "
                                      f"({self.open_sockets} sockets open); try again later")

    def sockets_of(self, principal: Principal) -> int:
        use = self.usage.get(principal_key(principal))
        return use.sockets if use is not None else 0

    def move_session(self, old: Principal, new: Principal, local: bool) -> None:
        """A session proved a new identity: count it under that one."""
        self.admit_session(new, local)
        self.session_ended(old, local)

    def socket_opened(self, principal: Principal) -> None:
        self.open_sockets += 1
        self.usage.setdefault(principal_key(principal), Usage()).sockets += 1

    def socket_closed(self, principal: Principal) -> None:
        self.open_sockets -= 1
        key = principal_key(principal)
        use = self.usage.get(key)
        if use is not None:
            use.sockets -= 1
            if use.sessions <= 0 and use.sockets <= 0:
                del self.usage[key]

    def accepting_connections(self) -> bool:
        """New connections may use half the reserve; the rest stays for
        the sockets and TLS state of connections already admitted."""
        return self.connections < self.fd_limit - self.config.fd_reserve // 2 - self.open_sockets

    def resolvers(self) -> list[str]:
        return read_resolvers(self.config.resolv_conf)

    def device_of(self, _esock: Any) -> str | None:
        return None

    # ------------------------------------------------------------ VpView
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def tags(self) -> dict[str, str]:
        return self.config.tags

    def local_addresses(self) -> list[str]:
        return self.addresses()

    # ------------------------------------------------------------ audit
    @staticmethod
    def _who(p: Principal) -> dict[str, Any]:
        who: dict[str, Any] = {"who": p.name, "role": p.role, "auth": p.auth}
        if p.fingerprint:
            who["fingerprint"] = p.fingerprint
        if p.anchor:
            who["ca"] = p.anchor
        if p.serials:
            who["serials"] = [f"{s:x}" for s in p.serials]
        if p.primitive:
            who["primitive"] = p.primitive
        return who

    def audit_denial(self, session: Session, op: str, exc: GuardDenied) -> None:
        self.auditor.write({"event": "deny", **self._who(session.principal), "from": session.peer,
                            "vp": self.config.name, "op": op, "rule": exc.rule, "reason": exc.reason})
        log.info("denied %s %s for %s: %s: %s", op, session.peer, session.principal.name, exc.rule, exc.reason)

    def audit_session(self, session: Session, event: str, **extra: Any) -> None:
        """``event``: "start", "auth" (identity proven), "end"."""
        from marionet.guard.audit import iso

        rec: dict[str, Any] = {"event": f"session-{event}", **self._who(session.principal), "from": session.peer,
                               "vp": self.config.name, "start": iso(session.started_ns)}
        if event == "end":
            rec["end"] = iso()
            rec["counts"] = dict(session.counts)
        rec.update(extra)
        self.auditor.write(rec)

    # ------------------------------------------------------------ revocation
    def _revocations_changed(self, _revset: Any) -> None:
        """End every open session whose chain the new list revokes."""
        if self.trust is None:
            return
        for session in list(self.sessions):
            reason = self.trust.revocation_of(session.principal)
            if reason is not None:
                end = getattr(session.outlet, "fail", None)
                log.warning("ending session of %s from %s: %s", session.principal.name, session.peer, reason)
                self.audit_session(session, "revoked", reason=reason)
                if callable(end):
                    end("revoked", reason)
                else:
                    session.close()

    # ------------------------------------------------------------ serving
    async def serve(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None) -> asyncio.base_events.Server:
        await self.start()
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ClientConnection(self), host, port, ssl=ssl_ctx,
            ssl_handshake_timeout=10 if ssl_ctx else None,
        )
        self.servers.append(server)
        return server


class ClientConnection(asyncio.Protocol):
    """One byte stream from a client to this endpoint.

    Requests are decoded into an inbox and handled at most
    ``INBOX_BUDGET`` per loop iteration, so one client's flood interleaves
    with other clients' requests instead of starving them; while this
    client's output is full (it does not read its replies) or the inbox is
    long, it is not read from either, so its requests wait in its own
    socket buffers, not in endpoint memory.
    """

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.decoder = FrameDecoder(endpoint.config.max_frame)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self._paused = False
        self.peer = "?"
        self.principal = Principal()
        self.local = False  # an in-process session (a primitive's): not counted per principal
        self.preset_guard: Any = None  # a primitive's session: its parent's guard
        self.tls_fingerprint: str | None = None  # the TLS peer certificate, which an Auth chain must start with
        self.loop = asyncio.get_running_loop()
        self._inbox: deque[m.Message] = deque()
        self._work: asyncio.Handle | None = None
        self._input_paused = False
        self._ended = False
        self._counted = False
        self._hello_timer: asyncio.TimerHandle | None = self.loop.call_later(
            endpoint.config.hello_timeout_s, self._hello_expired)

    # -- outlet interface for the session
    def write(self, data: bytes, note: bool = False) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def writable(self) -> bool:
        return not self._paused and self.transport is not None and not self.transport.is_closing()

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        hw = self.endpoint.config.write_high_water
        self.transport.set_write_buffer_limits(high=hw, low=hw // 4)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        if not self.endpoint.accepting_connections():
            self.fail("busy", "the endpoint is at its connection limit; try again later")
            return
        self.endpoint.connections += 1
        self._counted = True
        sslobj = transport.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if der:
            try:
                self.principal = self._tls_principal(der)
            except Exception as exc:  # noqa: BLE001 - a bad certificate ends this connection only
                self.fail("bad-identity", str(exc))

    def _tls_principal(self, der: bytes) -> Principal:
        """Who the TLS peer certificate says the client is.

        With a ``Trust``, the endpoint checks the certificate itself (role,
        validity, revocation, privileges); a certificate issued by a
        delegation CA cannot be checked from the leaf alone (Python's ssl
        hides the rest of the chain), so it starts unverified and its
        holder sends the chain in ``Auth``."""
        from marionet.guard.tls import Identity

        ident = Identity.from_der(der)
        self.tls_fingerprint = ident.fingerprint
        trust = self.endpoint.trust
        if trust is not None:
            from marionet.guard.chain import ChainError

            try:
                return trust.principal(trust.verify([der], roles=("client",)))
            except ChainError as exc:
                if exc.code != "foreign-ca":
                    raise
        return Principal(name=ident.common_name or "?", role=ident.role or "client",
                         fingerprint=ident.fingerprint, privileges=ident.privileges or {},
                         auth="none")

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        try:
            msgs = self.decoder.feed(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
            return
        if not msgs:
            return
        self._inbox.extend(msgs)
        if len(self._inbox) >= INBOX_MAX:
            self._pause_input()
        self._schedule()

    def _schedule(self) -> None:
        if self._work is None and self._inbox and not self._ended:
            self._work = self.loop.call_soon(self._process)

    def _process(self) -> None:
        """Handle up to ``INBOX_BUDGET`` requests, then yield the loop."""
        self._work = None
        budget = INBOX_BUDGET
        while self._inbox and budget and not self._ended:
            if self.session is not None and not self.writable():
                break  # replies would pile up: wait for resume_writing
            budget -= 1
            msg = self._inbox.popleft()
            if self.session is None:
                self._hello(msg)
                continue
            if isinstance(msg, m.Hello):
                self.fail("bad-message", "hello sent twice")
                return
            if isinstance(msg, m.Bye):
                self.close_stream()
                return
            self.session.handle(msg)
        if self._ended:
            return
        if self._inbox and (self.session is None or self.writable()):
            self._schedule()
        elif self._inbox:
            self._pause_input()
        elif self._input_paused and not self._paused:
            self._resume_input()

    def _pause_input(self) -> None:
        if not self._input_paused and self.transport is not None and not self.transport.is_closing():
            self._input_paused = True
            self.transport.pause_reading()

    def _resume_input(self) -> None:
        if self._input_paused and self.transport is not None and not self.transport.is_closing():
            self._input_paused = False
            self.transport.resume_reading()

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if self.session is None and not self._ended:
            self.fail("timeout", f"no hello within {self.endpoint.config.hello_timeout_s:g} s")

    def _hello(self, msg: m.Message) -> None:
        if not isinstance(msg, m.Hello):
            self.fail("no-hello", f"expected hello first, got {type(msg).__struct_config__.tag}")
            return
        if msg.version != m.PROTOCOL_VERSION:
            self.fail("version", f"protocol version {msg.version} not supported (this endpoint speaks {m.PROTOCOL_VERSION})")
            return
        try:
            try:
                session = Session(self.endpoint, self, self.principal, sguard=self.preset_guard, peer=self.peer)
            except GuardDenied:
                if self.principal.auth != "chain" or self.tls_fingerprint is None:
                    raise
                # The TLS certificate's grant needs what only an Auth can
                # bring (a monitor the client supplies): start unverified,
                # and let the Auth open the grant or say why it cannot.
                self.principal = dataclasses.replace(self.principal, auth="none", grants=None, serials=())
                session = Session(self.endpoint, self, self.principal, sguard=self.preset_guard, peer=self.peer)
        except GuardDenied as exc:
            self.endpoint.auditor.write({"event": "deny", **self.endpoint._who(self.principal), "from": self.peer,
                                         "vp": self.endpoint.config.name, "op": "hello",
                                         "rule": exc.rule, "reason": exc.reason})
            self.fail("denied", f"{exc.rule}: {exc.reason}")
            return
        try:
            self.endpoint.admit_session(self.principal, self.local)
        except BadRequest as exc:
            session.close()
            self.fail(exc.code, exc.reason)
            return
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        self.session = session
        session.tls_fingerprint = self.tls_fingerprint
        session.local = self.local
        # A fresh challenge per session: the client signs it in Auth.
        session.nonce = b"" if self.local else os.urandom(32)
        self.endpoint.sessions.add(session)
        if not self.local:
            self.endpoint.audit_session(session, "start")
        self.write(encode(m.Hello(id=msg.id, version=m.PROTOCOL_VERSION, role="endpoint",
                                  name=self.endpoint.config.name,
                                  features=["nsendv", "ncap-filter", "ncap-program", "tasks", "auth"],
                                  nonce=session.nonce)))

    def close_stream(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._end()

    def fail(self, code: str, reason: str) -> None:
        """End this connection with a ``Bye`` naming the problem."""
        log.info("closing connection from %s: %s: %s", self.peer, code, reason)
        bye_and_close(self.transport, code, reason)
        self._end()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        """Replies first (the inbox), then held notifications."""
        self._paused = False
        self._schedule()
        if self.session is not None:
            self.session.on_writable()
        if len(self._inbox) < INBOX_MAX:
            self._resume_input()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._inbox.clear()
        if self._work is not None:
            self._work.cancel()
            self._work = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._counted:
            self._counted = False
            self.endpoint.connections -= 1
        if self.session is not None:
            session = self.session
            session.close()
            self.endpoint.sessions.discard(session)
            self.endpoint.session_ended(session.principal, self.local)
            if not self.local:
                self.endpoint.audit_session(session, "end")
            self.session = None


# ---------------------------------------------------------------------------
# Local addresses (no external dependency)
# ---------------------------------------------------------------------------

SIOCGIFADDR = 0x8915


def local_addresses() -> list[str]:
    """IPv4 and IPv6 addresses of this host's interfaces."""
    out: list[str] = []
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _idx, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
                out.append(socket.inet_ntoa(res[20:24]))
            except OSError:
                continue
    finally:
        s.close()
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                hexaddr = line.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    except OSError:
        pass
    return out
