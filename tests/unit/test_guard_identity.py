"""Identity end to end: the endpoint verifies the researcher's own chain,
also through a controller, and never takes a controller's word for it.

Real certificates, a real TLS controller on loopback, a real endpoint
dialing it with the operator's policy; a hand-driven "controller" plays
the liar (or the compromised one)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from marionet import aio
from marionet.client.controller import connect_controller
from marionet.client.errors import AuthError, ConnectionLost, EndpointError, GuardDeniedError
from marionet.endpoint import dialer
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.guard import chain, pki, tls
from marionet.guard.setup import load_guard
from marionet.wire import messages as m
from tests.unit.test_controller_hardening import HOST, Raw, _ctx, _tls_controller, _until

ALICE = {"protocols": ["udp"], "dst": ["127.0.0.0/8"], "primitives": {"ping": {"attempts": 3}}}


def _der(path) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in pki.load_certs(path)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("guard-id")
    d = pki.PkiDir.init(base / "pki", name="test operator")
    d.issue("ctl", "controller", san_ip=[HOST])
    d.issue("ep1", "endpoint", san_ip=[HOST])
    d.issue("alice", "client", privileges=ALICE)
    d.issue("carol", "client", privileges=ALICE)
    d.issue("bob", "client")  # no privileges: may do nothing
    d.issue("old", "client")
    now = dt.datetime.now(dt.timezone.utc)
    d.issue("expired", "client", privileges=ALICE, days=1, not_before=now - dt.timedelta(days=3))
    d.issue("future", "client", privileges=ALICE, days=1, not_before=now + dt.timedelta(days=2))
    d.issue("lab", "ca", privileges={"protocols": ["udp"], "dst": ["127.0.0.0/16"]})
    d.revoke("old", reason="test set-up")  # so the list exists from the start
    lab = pki.PkiDir.init_from_ca(base / "lab", d.path / "lab.pem", d.path / "lab.key")
    lab.issue("student", "client", privileges={"protocols": ["udp"], "dst": ["127.0.0.1/32"]})
    foreign = pki.PkiDir.init(base / "foreign", name="other operator")
    foreign.issue("mallory", "client", privileges={"protocols": ["*"], "dst": ["any"], "spoof": True})
    policy = base / "policy.toml"
    policy.write_text(f'[trust]\ncas = ["{d.ca_path}"]\nrevocations = "{d.revocations_path}"\n'
                      f'[audit]\nfile = "{base / "audit.jsonl"}"\n')
    return {"pki": d, "lab": lab, "foreign": foreign, "policy": policy, "base": base}


class Site:
    """A TLS controller and the endpoint 'ep1' dialing it under the policy."""

    async def start(self, world, *, controller: bool = True) -> "Site":
        d = world["pki"]
        self.world_pki = d
        self.conns: list = []
        self.rt = load_guard(world["policy"])
        self.ep = Endpoint(EndpointConfig(name="ep1", engine="inline"), self.rt.guard,
                           trust=self.rt.trust, audit=self.rt.audit)
        self.stop = asyncio.Event()
        self.dial = None
        if controller:
            self.ctl, eport, cport = await _tls_controller(d)
            self.caddr = f"{HOST}:{cport}"
            self.dial = asyncio.get_running_loop().create_task(
                dialer.dial_forever(self.ep, f"{HOST}:{eport}", _ctx(d, "ep1"), {}, self.stop))
            assert await _until(lambda: "ep1" in self.ctl.endpoints)
            self.ctl.set_trust(self.rt.trust)  # the controller honours the same revocation list
        return self

    async def client(self, name: str, where=None):
        p = (where or self.world_pki).paths(name)
        conn = await connect_controller(self.caddr, ca=self.world_pki.ca_path, cert=p.cert, key=p.key)
        self.conns.append(conn)
        return await conn.attach("ep1")

    async def close(self) -> None:
        for c in self.conns:
            await c.close()
        self.stop.set()
        if self.dial is not None:
            await asyncio.wait_for(self.dial, 5)
            await self.ctl.close()
        await self.ep.close()
        self.rt.stop()


@pytest.fixture
async def site(world):
    s = await Site().start(world)
    yield s
    await s.close()


async def test_researcher_chain_verified_through_the_controller(site):
    s = await site.client("alice")
    assert s.identity["auth"] == "chain" and s.identity["name"] == "alice"
    assert any("UDP" in line for line in s.identity["grants"])
    u = await s.nopen("udp")
    await s.nsend(u, b"x", dst="127.0.0.1", port=9)
    with pytest.raises(GuardDeniedError) as ei:
        await s.nopen("raw", ipproto=1)
    assert ei.value.rule.startswith("privileges.protocols"), ei.value
    with pytest.raises(GuardDeniedError) as ei:
        await s.nsend(u, b"x", dst="192.0.2.1", port=9)
    assert ei.value.rule == "privileges.dst" and "192.0.2.1" in ei.value.reason
    st = (await s.info()).status
    assert st["principal"]["name"] == "alice" and st["principal"]["auth"] == "chain"


async def test_certificate_without_privileges_may_do_nothing(site):
    s = await site.client("bob")
    assert s.identity["auth"] == "chain"
    with pytest.raises(GuardDeniedError):
        await s.nopen("udp")
    assert await s.ping()  # but the session itself works


@pytest.mark.parametrize("name, words", [("expired", ["'expired'", "expired"]),
                                         ("future", ["'future'", "not valid before"])])
async def test_expired_and_not_yet_valid_are_refused_with_the_reason(world, name, words):
    """The controller (plain OpenSSL) already refuses these at TLS; the
    endpoint refuses them too, naming the certificate, on a direct
    connection that only checks the CA file's signature."""
    d = world["pki"]
    site = await Site().start(world, controller=False)
    try:
        srv = await site.ep.serve(HOST, 0, None)
        port = srv.sockets[0].getsockname()[1]
        from marionet.client.credentials import Credentials

        p = d.paths(name)
        r, w = await asyncio.open_connection(HOST, port)
        from marionet.client.packet import PacketSession

        sess = PacketSession(r, w)
        with pytest.raises(AuthError) as ei:
            await sess.start(credentials=Credentials.load(p.cert, p.key))
        text = str(ei.value)
        assert all(word in text for word in words), text
        await sess.close()
        assert any(r.get("event") == "auth-refused" for r in site.ep.auditor.recent)
    finally:
        await site.close()


async def test_delegation_narrows_and_widening_is_refused(site, world):
    lab = world["lab"]
    conn = await connect_controller(site.caddr, ca=site.world_pki.ca_path, cert=lab.paths("student").cert,
                                    key=lab.paths("student").key)
    site.conns.append(conn)
    s = await conn.attach("ep1")
    assert s.identity["auth"] == "chain" and s.identity["name"] == "student"
    u = await s.nopen("udp")
    await s.nsend(u, b"x", dst="127.0.0.1", port=9)
    with pytest.raises(GuardDeniedError):  # within the lab CA's /16 but not the student's /32
        await s.nsend(u, b"x", dst="127.0.0.2", port=9)
    # A certificate the lab CA signed that widens its grant (pki.issue would refuse to make it).
    lab_key, lab_cert = lab.ca()
    key = ed25519.Ed25519PrivateKey.generate()
    start, end = pki._validity(1, None)
    wide = (pki._builder(pki._name("wide"), lab_cert.subject, key.public_key(), start, end, ca=False)
            .add_extension(pki._unrecognized(pki.ROLE_OID, "client"), critical=False)
            .add_extension(pki._unrecognized(pki.PRIVILEGES_OID, '{"protocols":["*"],"dst":["any"]}'),
                           critical=False)
            .sign(lab_key, None))
    from marionet.client.credentials import Credentials

    creds = Credentials(key=key, chain=(wide.public_bytes(serialization.Encoding.DER),
                                        lab_cert.public_bytes(serialization.Encoding.DER)))
    conn.credentials = creds  # TLS stays student's: the endpoint judges the chain it is shown
    with pytest.raises(AuthError) as ei:
        await conn.attach("ep1")
    assert "widening" in str(ei.value)


async def test_revocation_ends_open_sessions_and_refuses_new_ones(site, world):
    s = await site.client("carol")
    u = await s.nopen("udp")
    assert u
    world["pki"].revoke("carol", reason="key lost")
    site.rt.trust.reload()
    with pytest.raises(ConnectionLost) as ei:
        for _ in range(50):
            await s.ping()
            await asyncio.sleep(0.05)
    assert "revoked" in str(ei.value) and "key lost" in str(ei.value)
    assert any(r.get("event") == "session-revoked" and r["who"] == "carol" for r in site.ep.auditor.recent)
    # the controller, sharing the list, ended carol's link too and refuses her TLS now
    assert await _until(lambda: site.conns[-1].closed_reason is not None)
    assert "revoked" in site.conns[-1].closed_reason
    with pytest.raises(ConnectionLost) as ei:
        await site.client("carol")
    assert "revoked" in str(ei.value)
    # alice is unaffected
    assert await (await site.client("alice")).ping()


class RogueController:
    """A TLS server with the operator's controller certificate that the
    endpoint dials; it forges ChOpen principals and Auth messages."""

    async def start(self, d: pki.PkiDir) -> "RogueController":
        p = d.paths("ctl")
        self.links: asyncio.Queue = asyncio.Queue()

        async def handle(reader, writer):
            await self.links.put(Raw(reader, writer))

        self.srv = await asyncio.start_server(handle, HOST, 0, ssl=tls.server_context(
            p.cert, p.key, ca=p.ca, require_client_cert=True))
        self.port = self.srv.sockets[0].getsockname()[1]
        return self

    async def link(self) -> Raw:
        raw = await asyncio.wait_for(self.links.get(), 5)
        hello = await raw.until(m.Hello)
        raw.send(m.Hello(id=hello.id, version=m.PROTOCOL_VERSION, role="controller", name="rogue"))
        reg = await raw.until(m.Register)
        raw.send(m.Ok(id=reg.id))
        return raw


async def _channel(raw: Raw, ch: int, principal: dict) -> m.Hello:
    raw.send(m.ChOpen(ch=ch, principal=principal),
             m.ChData(ch=ch, data=m_encode(m.Hello(id=1, version=m.PROTOCOL_VERSION, role="client"))))
    return await _reply(raw, ch, 1)


def m_encode(msg: m.Message) -> bytes:
    from marionet.wire.codec import encode

    return encode(msg)


async def _reply(raw: Raw, ch: int, rid: int) -> m.Message:
    from marionet.wire.codec import FrameDecoder

    dec = getattr(raw, "_chdec", None) or {}
    raw._chdec = dec  # type: ignore[attr-defined]
    while True:
        msg = await raw.until(m.ChData, 5)
        assert msg is not None, "no reply from the endpoint"
        if msg.ch != ch:
            continue
        for inner in dec.setdefault(ch, FrameDecoder()).feed(msg.data):
            if getattr(inner, "id", None) == rid or isinstance(inner, m.Bye):
                return inner


async def test_a_lying_controller_gets_nothing(world):
    d = world["pki"]
    rogue = await RogueController().start(d)
    rt = load_guard(world["policy"])
    ep = Endpoint(EndpointConfig(name="ep1", engine="inline"), rt.guard, trust=rt.trust, audit=rt.audit)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(
        dialer.dial_forever(ep, f"{HOST}:{rogue.port}", _ctx(d, "ep1"), {}, stop))
    try:
        raw = await rogue.link()
        alice = pki.load_cert(d.paths("alice").cert)
        # 1. it claims the client is alice, with everything granted
        forged = {"name": "alice", "role": "client", "fingerprint": pki.fingerprint(alice),
                  "privileges": {"protocols": ["*"], "dst": ["any"], "spoof": True}}
        hello = await _channel(raw, 1, forged)
        assert isinstance(hello, m.Hello) and len(hello.nonce) == 32
        raw.send(m.ChData(ch=1, data=m_encode(m.NOpen(id=2, proto="udp"))))
        err = await _reply(raw, 1, 2)
        assert isinstance(err, m.Error) and err.code == "denied", err
        # 2. it presents alice's chain with a signature made for another nonce (a replay)
        key = pki.load_key(d.paths("alice").key)
        old = chain.sign_auth(key, b"\0" * 32, "ep1", pki.fingerprint(alice))
        raw.send(m.ChData(ch=1, data=m_encode(m.Auth(id=3, chain=_der(d.paths("alice").cert), signature=old))))
        err = await _reply(raw, 1, 3)
        assert isinstance(err, m.Error) and err.code == "auth" and "bad-signature" in err.reason, err
        # 3. a proof for another VP's name does not work here either
        hello = await _channel(raw, 2, forged)
        sig = chain.sign_auth(key, hello.nonce, "ep2", pki.fingerprint(alice))
        raw.send(m.ChData(ch=2, data=m_encode(m.Auth(id=3, chain=_der(d.paths("alice").cert), signature=sig))))
        err = await _reply(raw, 2, 3)
        assert isinstance(err, m.Error) and "bad-signature" in err.reason, err
        # 4. a chain from another operator, properly signed, is refused naming the CA
        hello = await _channel(raw, 3, {"name": "mallory"})
        f = world["foreign"].paths("mallory")
        sig = chain.sign_auth(pki.load_key(f.key), hello.nonce, "ep1", pki.fingerprint(pki.load_cert(f.cert)))
        raw.send(m.ChData(ch=3, data=m_encode(m.Auth(id=3, chain=_der(f.cert), signature=sig))))
        err = await _reply(raw, 3, 3)
        assert isinstance(err, m.Error) and "foreign-ca" in err.reason and "other operator" in err.reason, err
        # 5. an endpoint certificate cannot act as a client
        hello = await _channel(raw, 4, {"name": "ep1"})
        e = d.paths("ep1")
        sig = chain.sign_auth(pki.load_key(e.key), hello.nonce, "ep1", pki.fingerprint(pki.load_cert(e.cert)))
        raw.send(m.ChData(ch=4, data=m_encode(m.Auth(id=3, chain=_der(e.cert), signature=sig))))
        err = await _reply(raw, 4, 3)
        assert isinstance(err, m.Error) and "bad-role" in err.reason, err
        # 6. relaying the live nonce to the real alice works — and grants alice's, not more
        hello = await _channel(raw, 5, forged)
        sig = chain.sign_auth(key, hello.nonce, "ep1", pki.fingerprint(alice))
        raw.send(m.ChData(ch=5, data=m_encode(m.Auth(id=3, chain=_der(d.paths("alice").cert), signature=sig))))
        ok = await _reply(raw, 5, 3)
        assert isinstance(ok, m.Ok) and ok.value["name"] == "alice"
        raw.send(m.ChData(ch=5, data=m_encode(m.NOpen(id=4, proto="raw", ipproto=1))))
        err = await _reply(raw, 5, 4)
        assert isinstance(err, m.Error) and err.code == "denied"
        # the replayed nonce is spent
        raw.send(m.ChData(ch=5, data=m_encode(m.Auth(id=5, chain=_der(d.paths("alice").cert), signature=sig))))
        err = await _reply(raw, 5, 5)
        assert isinstance(err, m.Error) and err.code == "bad-state"
        denials = [r for r in ep.auditor.recent if r.get("event") in ("deny", "auth-refused")]
        assert len(denials) >= 6
    finally:
        stop.set()
        rogue.srv.close()
        await asyncio.wait_for(task, 5)
        await ep.close()
        rt.stop()


async def test_direct_tls_leaf_is_verified_by_the_endpoint(world):
    d = world["pki"]
    site = await Site().start(world, controller=False)
    try:
        p = d.paths("ep1")
        srv = await site.ep.serve(HOST, 0, tls.server_context(p.cert, p.key, ca=d.ca_path, require_client_cert=True))
        port = srv.sockets[0].getsockname()[1]
        a = d.paths("alice")
        s = await aio.connect(f"{HOST}:{port}", ca=d.ca_path, cert=a.cert, key=a.key)
        assert s.identity["auth"] == "chain"
        u = await s.nopen("udp")
        with pytest.raises(GuardDeniedError):
            await s.nsend(u, b"x", dst="10.1.2.3", port=9)
        # another client cannot touch alice's socket: ids are per session
        b = d.paths("bob")
        s2 = await aio.connect(f"{HOST}:{port}", ca=d.ca_path, cert=b.cert, key=b.key)
        with pytest.raises(EndpointError) as ei:
            await s2.nclose(u)
        assert ei.value.code == "unknown-socket"
        with pytest.raises(EndpointError) as ei:
            await s2.halt(1)
        assert ei.value.code == "unknown-task"
        await s.nsend(u, b"still mine", dst="127.0.0.1", port=9)
        await s.close()
        await s2.close()
        events = [r["event"] for r in site.ep.auditor.recent]
        assert "session-start" in events and "session-end" in events
        ends = [r for r in site.ep.auditor.recent if r["event"] == "session-end" and r["who"] == "alice"]
        assert ends and ends[0]["counts"]["sends"] == 1 and ends[0]["counts"]["denied"] == 1
    finally:
        await site.close()
