"""Every operation — remote or from a primitive on the endpoint — passes the guard."""

from __future__ import annotations

import socket

import pytest

from marionet import aio
from marionet.client.errors import GuardDeniedError
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.guard import Guard, GuardDenied
from marionet.guard.core import SessionGuard


class RecordingSession(SessionGuard):
    def __init__(self, principal, calls):
        super().__init__(principal)
        self.calls = calls

    def check(self, op, request, sock=None):
        self.calls.append((op, getattr(sock, "kind", None), self.principal.primitive))
        if op == "nsend" and getattr(request, "port", None) == 9:
            raise GuardDenied("no-discard", "port 9 is not allowed")
        return None

    def check_data(self, sock, data, peer):
        if peer == "127.0.0.2":
            raise GuardDenied("peer-filter", "data from 127.0.0.2 is blocked")

    def for_primitive(self, name):
        return RecordingSession(self.principal.for_primitive(name), self.calls)


class Recording(Guard):
    """Denies UDP sends to port 9 and data from 127.0.0.2; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, str | None]] = []

    def open(self, principal, vp, supplied_monitors={}):
        return RecordingSession(principal, self.calls)


@pytest.fixture
async def guarded():
    g = Recording()
    ep = Endpoint(EndpointConfig(name="g"), guard=g)
    srv = await ep.serve("127.0.0.1", 0, None)
    s = await aio.connect(f"127.0.0.1:{srv.sockets[0].getsockname()[1]}", insecure=True)
    yield g, ep, s
    await s.close()
    await ep.close()


async def test_denied_send_is_a_clear_error_and_audited(guarded):
    g, ep, s = guarded
    u = await s.nopen("udp")
    with pytest.raises(GuardDeniedError) as ei:
        await s.nsend(u, b"x", dst="127.0.0.1", port=9)
    assert ei.value.rule == "no-discard" and "port 9" in ei.value.reason
    assert any(r.get("rule") == "no-discard" and r["op"] == "nsend" for r in ep.auditor.recent)
    assert ("nopen", None, None) in g.calls and ("nsend", "udp", None) in g.calls


async def test_blocked_data_becomes_nblock(guarded):
    g, ep, s = guarded
    u = await s.nopen("udp", laddr="127.0.0.1")
    port = s.sockets[u].lport
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    tx.sendto(b"secret", ("127.0.0.1", port))
    tx.close()
    n = await s.next_notification(2)
    assert n.kind == "nblock" and n.rule == "peer-filter" and n.data is None


@pytest.mark.root
async def test_primitives_pass_the_same_guard(guarded):
    g, ep, s = guarded
    g.calls.clear()
    await s.task("ping", {"dst": "127.0.0.1", "attempts": 1, "wait_timeout": 0.5})
    n = await s.next_notification(5)
    assert n.kind == "taskres" and n.error is None
    assert ("task", None, None) in g.calls
    inside = {op for op, _, prim in g.calls if prim == "ping"}
    assert {"nopen", "ncap", "nsend", "nclose"} <= inside
