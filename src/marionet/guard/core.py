"""The guard's single call site.

Every operation on an endpoint — from a remote packet session or from a
primitive running on the endpoint — is checked here before it touches a
socket, so operator policy cannot be bypassed by a new code path. Until
the operator configures a policy or a CA, the guard allows everything (an
"open" endpoint: development on loopback, the embedded demo); the checking
guard is ``marionet.guard.enforce.PolicyGuard``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Mapping, Protocol

if TYPE_CHECKING:
    from marionet.guard.privileges import Privileges

#: How a principal's identity was established, strongest first.
#: "chain": the endpoint verified the certificate chain itself (TLS peer
#: certificate or a channel proof of key possession); "controller": only a
#: controller's word (worth what anonymous sessions get); "none": no
#: identity at all; "local": a session the endpoint made for itself.
AuthKind = Literal["chain", "controller", "none", "local"]


@dataclass(frozen=True)
class Principal:
    """Who is asking: the identity a session was authenticated as.

    ``grants`` are the effective privileges (the intersection along the
    verified chain), None when no chain was verified. ``serials`` and
    ``issuers`` identify every certificate of that chain, so a revocation
    can find the sessions it ends. ``primitive`` is set on the in-process
    session a primitive runs in: the same principal, acting through
    operator-vetted code."""

    name: str = "local"
    role: str = "client"
    fingerprint: str | None = None
    privileges: dict[str, Any] = field(default_factory=dict)
    auth: AuthKind = "none"
    grants: "Privileges | None" = field(default=None, compare=False)
    serials: tuple[int, ...] = ()
    anchor: str | None = None  # fingerprint of the operator CA the chain ends at
    primitive: str | None = None

    def for_primitive(self, name: str) -> "Principal":
        return replace(self, primitive=name)


class SockView(Protocol):
    """What the guard may read of an endpoint socket."""

    sid: int
    kind: str  # "udp", "raw", "tcp", "tcp-listen"
    family: int
    ipproto: int | None
    hdrincl: bool
    raddr: str | None  # connected peer (TCP, connected UDP)
    rport: int | None


class GuardDenied(Exception):
    """An operation the guard refused; ``rule`` names the rule or monitor."""

    def __init__(self, rule: str, reason: str, index: int | None = None) -> None:
        super().__init__(f"denied by {rule}: {reason}")
        self.rule = rule
        self.reason = reason
        self.index = index  # for a batch: which item
        #: for a batch: the send times the guard gave the items before ``index``
        self.times: list[int | None] | None = None


class VpView(Protocol):
    """What the guard may read of the VP itself."""

    name: str
    tags: dict[str, str]

    def local_addresses(self) -> list[str]: ...


class SessionGuard:
    """The guard for one session: holds that session's monitor instances
    (their state lives across calls) and refers to per-principal counters
    (rates and totals are shared by all of a principal's sessions).

    The base class allows everything ("open")."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def check(self, op: str, request: Any, sock: SockView | None = None) -> int | None:
        """Raise ``GuardDenied`` if the principal may not do ``op``.

        ``op`` is the request kind ("nopen", "nsend", "ncap", "nclose",
        "nctl", "task", "accept"); ``request`` is the wire request (its
        fields are the parameters; for "nsend" a ``SendItem``; for
        "accept" a dict with ``peer`` and ``port``); ``sock`` is the
        socket a socket operation acts on (None for "nopen" and "task").

        For "nsend" the guard may return an endpoint time (ns) before which
        the send must not leave (a rate limit that delays rather than
        denies); otherwise it returns None.
        """
        return None

    def check_batch(self, items: list[Any], socks: list[SockView]) -> list[int | None]:
        """``check("nsend", …)`` for each send of an ``nsendv`` batch in one
        call, so a monitor is entered once per batch. Raises ``GuardDenied``
        with ``index`` set to the first refused item."""
        return [None] * len(items)

    def check_data(self, sock: SockView, data: bytes, peer: str | None) -> None:
        """Raise ``GuardDenied`` if received data may not reach the principal."""

    def for_primitive(self, name: str) -> "SessionGuard":
        """The guard of the in-process session a primitive runs in for this
        session: same principal and counters, ``principal.primitive`` set."""
        return type(self)(self.principal.for_primitive(name))

    def close(self) -> None:
        """The session ended."""


class Guard:
    """Operator policy: makes one ``SessionGuard`` per session.

    The base class allows everything ("open"): what an endpoint without a
    configured policy or CA does (development on loopback, the demo)."""

    name = "open"

    def open(self, principal: Principal, vp: VpView, supplied_monitors: Mapping[str, Any] = {}) -> SessionGuard:
        """The guard for a new session of ``principal`` on ``vp``; raises
        ``GuardDenied`` if it may not use this VP at all (name or tags not
        granted, outside its period, revoked, a mandated monitor missing)."""
        return SessionGuard(principal)

    def describe(self) -> dict[str, Any]:
        """For ``info()``: which guard, which policy and monitors."""
        return {"guard": self.name}
