"""WebAssembly monitors on a running endpoint: operator-local monitors for
everyone, certificate-mandated ones by digest, and a monitor that loops or
eats memory is a denial — the endpoint keeps serving everyone else."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from marionet import aio
from marionet.client.errors import GuardDeniedError
from marionet.endpoint.daemon import Endpoint, EndpointConfig
from marionet.guard import pki, tls
from marionet.guard.monitor import MonitorModule
from marionet.guard.setup import load_guard

HOST = "127.0.0.1"
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "marionet" / "guard" / "monitors"
from tests.unit.test_monitors import GROW, LOOP as SPIN  # noqa: E402  (ABI v1 modules that misbehave)


def _policy(tmp: Path, body: str) -> Path:
    p = tmp / "policy.toml"
    p.write_text(body)
    return p


async def _endpoint(policy: Path, ctx=None):
    rt = load_guard(policy)
    ep = Endpoint(EndpointConfig(name="mon", engine="inline"), rt.guard, trust=rt.trust, audit=rt.audit)
    srv = await ep.serve(HOST, 0, ctx)
    return rt, ep, f"{HOST}:{srv.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("wat, words", [(SPIN, ["spin", "fuel"]), (GROW, ["grow", "memory"])])
async def test_a_runaway_monitor_is_a_denial_not_a_hang(tmp_path, wat, words):
    name = words[0]
    (tmp_path / f"{name}.wat").write_bytes(wat)
    policy = _policy(tmp_path, f'[anonymous]\nprotocols = ["udp"]\ndst = ["127.0.0.0/8"]\n'
                               f'[monitors]\nrun = ["{name}.wat"]\n')
    rt, ep, addr = await _endpoint(policy)
    try:
        s = await aio.connect(addr, insecure=True)
        other = await aio.connect(addr, insecure=True)
        t = time.monotonic()
        with pytest.raises(GuardDeniedError) as ei:
            await s.nopen("udp")
        assert time.monotonic() - t < 1.0
        assert ei.value.rule == f"monitor {name}" and words[1] in ei.value.reason, ei.value
        # the endpoint still serves: this session and another one
        assert await s.ping() and (await other.info()).name == "mon"
        with pytest.raises(GuardDeniedError):  # the poisoned monitor keeps denying
            await s.nopen("udp")
        await s.close()
        await other.close()
    finally:
        await ep.close()
        rt.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mon-pki")
    d = pki.PkiDir.init(base / "pki", name="test operator")
    d.issue("ep", "endpoint", san_ip=[HOST])
    tcp_only = MonitorModule.from_file(EXAMPLES / "tcp-only.wat")
    d.issue("carl", "client", privileges={"protocols": ["udp", "tcp"], "dst": ["127.0.0.0/8"],
                                          "monitors": [tcp_only.digest]})
    return d, tcp_only


async def _tls_session(d: pki.PkiDir, addr: str, monitors: list[bytes]):
    from marionet.client.credentials import Credentials
    from marionet.client.packet import PacketSession

    p = d.paths("carl")
    host, port = addr.rsplit(":", 1)
    ctx = tls.client_context(ca=d.ca_path, cert=p.cert, key=p.key)
    r, w = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host)
    creds = Credentials.load(p.cert, p.key)
    creds = Credentials(key=creds.key, chain=creds.chain, monitors=tuple(monitors))
    return await PacketSession(r, w).start(credentials=creds)


async def test_certificate_mandated_monitor_must_be_supplied_or_installed(tmp_path, certs):
    d, tcp_only = certs
    e = d.paths("ep")
    ctx = tls.server_context(e.cert, e.key, ca=d.ca_path, require_client_cert=True)
    rt, ep, addr = await _endpoint(_policy(tmp_path, f'[trust]\ncas = ["{d.ca_path}"]\n'), ctx)
    try:
        # not supplied, not installed: the session is refused, naming the digest
        with pytest.raises(PermissionError) as ei:
            await _tls_session(d, addr, [])
        assert tcp_only.digest[:16] in ei.value.reason and "neither supplied nor installed" in ei.value.reason
        # another module (allow-all) does not stand in for it
        with pytest.raises(PermissionError):
            await _tls_session(d, addr, [(EXAMPLES / "allow-all.wat").read_bytes()])
        # the right module: it runs, and denies what it is there to deny
        s = await _tls_session(d, addr, [(EXAMPLES / "tcp-only.wat").read_bytes()])
        assert s.identity["name"] == "carl"
        with pytest.raises(GuardDeniedError) as ei:
            await s.nopen("udp")
        assert ei.value.rule.startswith("monitor"), ei.value
        lst = await asyncio.start_server(lambda r, w: w.close(), HOST, 0)
        t = await s.nopen("tcp", raddr=HOST, rport=lst.sockets[0].getsockname()[1])
        assert t
        lst.close()
        await s.close()
    finally:
        await ep.close()
        rt.stop()


async def test_installed_monitor_satisfies_the_certificate(tmp_path, certs):
    d, tcp_only = certs
    mons = tmp_path / "monitors"
    mons.mkdir()
    (mons / "tcp-only.wat").write_text((EXAMPLES / "tcp-only.wat").read_text())
    e = d.paths("ep")
    ctx = tls.server_context(e.cert, e.key, ca=d.ca_path, require_client_cert=True)
    rt, ep, addr = await _endpoint(_policy(tmp_path, f'[trust]\ncas = ["{d.ca_path}"]\n'
                                                     f'[monitors]\ndir = "{mons}"\n'), ctx)
    try:
        s = await _tls_session(d, addr, [])
        with pytest.raises(GuardDeniedError) as ei:
            await s.nopen("udp")
        assert ei.value.rule.startswith("monitor")
        await s.close()
    finally:
        await ep.close()
        rt.stop()
