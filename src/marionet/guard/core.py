"""The guard's single call site.

Every operation on an endpoint — from a remote packet session or from a
primitive running on the endpoint — is checked here before it touches a
socket, so operator policy cannot be bypassed by a new code path. Until
certificate privileges, monitors and declarative policy land, the default
guard allows everything; the call sites are already in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Principal:
    """Who is asking: the identity a session was authenticated as."""

    name: str = "local"
    role: str = "client"
    fingerprint: str | None = None
    privileges: dict[str, Any] = field(default_factory=dict)


class GuardDenied(Exception):
    """An operation the guard refused; ``rule`` names the rule or monitor."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"denied by {rule}: {reason}")
        self.rule = rule
        self.reason = reason


class Guard:
    """Operator policy. The base class allows everything."""

    name = "allow-all"

    def check(self, principal: Principal, op: str, request: Any, sock_kind: str | None = None) -> None:
        """Raise ``GuardDenied`` if ``principal`` may not do ``op``.

        ``op`` is the request kind ("nopen", "nsend", "ncap", "nclose",
        "nctl", "task", "accept"); ``request`` is the wire request (its
        fields are the parameters; for "nsend" a ``SendItem``);
        ``sock_kind`` names the socket's kind for socket operations.
        """

    def check_data(self, principal: Principal, sock: int, data: bytes, peer: str | None) -> None:
        """Raise ``GuardDenied`` if received data may not reach the principal."""
