"""Typed exceptions for the endpoint's error replies.

The endpoint answers a failed request with a code and a reason; the client
raises the matching subclass so callers can catch what they care about
(``except GuardDeniedError``) and still read the endpoint's own words.
"""

from __future__ import annotations


class MarionetError(Exception):
    """Base of marionet's client-side errors."""


class ConnectionLost(MarionetError):
    """The connection to the endpoint or controller ended."""


class PeerProtocolError(ConnectionLost):
    """The peer ended the connection because of a protocol problem (its ``Bye``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class SessionRefused(PeerProtocolError, PermissionError):
    """The endpoint's guard ended the session: it may not use this VP at all
    (``denied``: a VP, period or mandated monitor its grant lacks), its
    certificate was revoked (``revoked``) or is unusable (``bad-identity``)."""


#: ``Bye`` codes that are the guard's refusal rather than a protocol fault.
REFUSAL_CODES = frozenset({"denied", "revoked", "bad-identity"})


class EndpointError(MarionetError):
    """An error reply: ``code`` (machine-readable), ``reason`` (the endpoint's text)."""

    def __init__(self, code: str, reason: str, rule: str | None = None) -> None:
        text = f"{code}: {reason}" + (f" (rule {rule})" if rule else "")
        super().__init__(text)
        self.code = code
        self.reason = reason
        self.rule = rule


class UnknownSocketError(EndpointError):
    pass


class BadAddressError(EndpointError, ValueError):
    pass


class BadFilterError(EndpointError, ValueError):
    pass


class NoPrivilegeError(EndpointError, PermissionError):
    pass


class GuardDeniedError(EndpointError, PermissionError):
    """The operator's guard refused the operation; ``rule`` names the rule."""


class AuthError(EndpointError, PermissionError):
    """The endpoint refused our certificate chain (expired, revoked, from a
    CA it does not trust, a widening delegation, a bad proof); the reason
    names which certificate and why."""


class ConnectFailedError(EndpointError, ConnectionError):
    pass


class LimitError(EndpointError):
    pass


_BY_CODE: dict[str, type[EndpointError]] = {
    "unknown-socket": UnknownSocketError,
    "closed": UnknownSocketError,
    "bad-address": BadAddressError,
    "bad-port": BadAddressError,
    "bad-family": BadAddressError,
    "bad-filter": BadFilterError,
    "no-privilege": NoPrivilegeError,
    "denied": GuardDeniedError,
    "auth": AuthError,
    "connect-failed": ConnectFailedError,
    "timeout": ConnectFailedError,
    "limit": LimitError,
}


def error_from_reply(code: str, reason: str, rule: str | None = None) -> EndpointError:
    return _BY_CODE.get(code, EndpointError)(code, reason, rule)
