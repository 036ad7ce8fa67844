"""The lab's own recursive resolver (Unbound), and the tool check before anything is built.

A VP's "resolver" must be one inside the lab: the machine's own resolver
is unreachable from the lab's namespaces (and no lab traffic may go to
it).  So a lab that serves zones runs Unbound for them, and every host's
and VP's /etc/netns/<ns>/resolv.conf names it::

    vp-de ─5ms─ r1 ── r2 ── ns      (NSD: lab.example; the resolver)
                       │
                     target         (www.lab.example)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest

from marionet.lab import parse_spec
from marionet.lab.core import ETC_NETNS, Lab
from marionet.lab.pytest_plugin import make_lab
from marionet.lab import system, tools
from marionet.lab.tools import MissingTool

pytestmark = pytest.mark.root

NS4, NS6 = "10.96.1.2", "fd00:96:1::2"
T4, T6 = "10.96.2.2", "fd00:96:2::2"

SPEC = f"""
[lab]
name = "rslv"
controller = "auto"

[[vp]]
name = "vp-de"
cc = "DE"

[[router]]
name = "r1"

[[router]]
name = "r2"

[[host]]
name = "ns"

[[host]]
name = "target"

[[link]]
a = "vp-de"
b = "r1"
delay = "5ms"

[[link]]
a = "r1"
b = "r2"

[[link]]
a = "r2"
b = "ns"
ipv4 = ["10.96.1.1/24", "{NS4}/24"]
ipv6 = ["fd00:96:1::1/64", "{NS6}/64"]

[[link]]
a = "r2"
b = "target"
ipv4 = ["10.96.2.1/24", "{T4}/24"]
ipv6 = ["fd00:96:2::1/64", "{T6}/64"]

[[service]]
host = "ns"
kind = "dns"
options = {{ zone = "lab.example", records = [["www", "A", "{T4}"], ["www", "AAAA", "{T6}"]] }}
"""


@pytest.fixture(scope="module")
def rlab():
    with make_lab(parse_spec(SPEC)) as lab:
        yield lab


def _dig(lab: Lab, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, ["dig", "+time=2", "+tries=1", *args], timeout=20)


def test_vp_resolves_lab_names_without_naming_a_server(rlab):
    """`dig +short NAME` (no @server) inside the VP: the lab's resolver answers from the lab zone."""
    res = rlab.resolver()
    assert res and res == [rlab.truth()["resolver"]["ipv4"], rlab.truth()["resolver"]["ipv6"]]
    conf = rlab.exec("vp-de", ["cat", "/etc/resolv.conf"], check=True).stdout
    assert [ln.split()[1] for ln in conf.splitlines() if ln.startswith("nameserver")] == res
    a = _dig(rlab, "vp-de", "+short", "www.lab.example")
    assert a.returncode == 0 and a.stdout.split() == [T4], a.stdout + a.stderr
    aaaa = _dig(rlab, "vp-de", "+short", "AAAA", "www.lab.example")
    assert aaaa.stdout.split() == [T6], aaaa.stdout + aaaa.stderr
    # the answer came through the resolver (recursion available), not from NSD itself
    full = _dig(rlab, "vp-de", "www.lab.example")
    assert f"SERVER: {res[0]}#53" in full.stdout and " ra" in full.stdout.split("flags:")[1].split(";")[0]
    # getaddrinfo too (glibc reads the same resolv.conf)
    ga = rlab.exec("vp-de", ["getent", "ahostsv4", "www.lab.example"], check=True)
    assert ga.stdout.split()[0] == T4


def test_names_outside_the_lab_are_nxdomain_without_leaving_it(rlab):
    """No root hints in use: a name outside the lab's zones is answered locally."""
    r = _dig(rlab, "vp-de", "example.com")
    assert "status: NXDOMAIN" in r.stdout, r.stdout + r.stderr
    # every host got the file, the resolver's own host included
    for node in ("ns", "target"):
        assert _dig(rlab, node, "+short", "www.lab.example").stdout.split() == [T4]


def test_endpoint_info_lists_the_lab_resolver(rlab):
    """The VP's endpoint reads the same resolv.conf: info().resolvers is the lab's resolver."""
    async def go() -> Any:
        conn = await rlab.aconnect()
        try:
            s = await conn.attach("vp-de")
            try:
                return await s.info()
            finally:
                await s.close()
        finally:
            await conn.close()
    info = asyncio.run(go())
    assert list(info.resolvers) == rlab.resolver()


def test_dns_without_server_asks_the_lab_resolver(rlab):
    """do_dns with no server= goes to the VP's resolver (info().resolvers[0]) and gets the lab's answer."""
    with rlab.ctrl() as ctrl:
        inst = [i for i in ctrl.instances() if i.name == "vp-de"][0]
        r = ctrl.do_dns("www.lab.example", qtype="A", inst=inst, sync=True)
        assert str(r.stop_reason) == "done" and r.rcode == 0, r
        assert [str(a) for a in r.ans_addrs()] == [T4]
        assert str(r.dst) == rlab.resolver()[0]


def test_lab_down_removes_the_netns_files():
    spec = parse_spec(SPEC.replace('controller = "auto"', "controller = false"))
    with make_lab(spec) as lab:
        ns = lab.netns("vp-de")
        files = [Path(f) for f in lab.state.files]
        assert ETC_NETNS / ns / "resolv.conf" in files and all(f.exists() for f in files)
    assert not any(f.exists() for f in files)
    assert not (ETC_NETNS / ns).exists()


def test_resolver_false_writes_a_resolv_conf_naming_no_server():
    """Without a resolver VPs still do not inherit the machine's (unreachable) one."""
    spec = parse_spec(SPEC.replace('controller = "auto"', "controller = false\nresolver = false"))
    assert "unbound" not in tools.needed_tools(spec)
    with make_lab(spec) as lab:
        assert lab.resolver() == [] and "resolver" not in lab.truth()
        conf = lab.exec("vp-de", ["cat", "/etc/resolv.conf"], check=True).stdout
        assert "nameserver" not in conf and "no resolver" in conf


# ---------------------------------------------------------------- tool check


def _free_lab_id() -> str:
    while True:
        lab_id = secrets.token_hex(2)
        pre = f"mn{lab_id}"
        if not any(n.startswith(pre) for n in system.list_netns()):
            return lab_id


def _lab_leftovers(pre: str) -> list[str]:
    """Anything machine-wide carrying the prefix: namespaces, links, /etc/netns entries."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    found = [ln.split()[0] for ln in out.splitlines() if ln.startswith(pre)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    found += [ln.split(":")[1].strip() for ln in links.splitlines() if f": {pre}" in ln]
    if ETC_NETNS.is_dir():
        found += [str(p) for p in ETC_NETNS.iterdir() if p.name.startswith(pre)]
    return found


def test_missing_daemon_fails_before_anything_is_made(tmp_path, monkeypatch):
    """PATH without unbound: `up()` names it and its package, and runs no command at all."""
    import shutil

    spec = parse_spec(SPEC)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for t in tools.needed_tools(spec):
        if t not in ("unbound", "unbound-checkconf"):
            os.symlink(shutil.which(t), bindir / t)
    ran: list[list[str]] = []
    real_run = system.run

    def recording_run(cmd, **kw):
        ran.append(list(cmd))
        return real_run(cmd, **kw)

    monkeypatch.setattr(system, "run", recording_run)
    monkeypatch.setenv("PATH", str(bindir))
    lab_id = _free_lab_id()
    lab = Lab(spec, lab_id=lab_id, state_dir=tmp_path / "state")
    with pytest.raises(MissingTool) as ei:
        lab.up()
    monkeypatch.undo()
    msg = str(ei.value)
    assert msg == ("lab needs `unbound` (Debian package unbound) and `unbound-checkconf` (Debian package unbound); "
                   "install them with apt-get install unbound")
    assert "\n" not in msg and ran == []
    assert _lab_leftovers(f"mn{lab_id}") == []
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").iterdir())
    assert lab.plan is None and lab.state is None
