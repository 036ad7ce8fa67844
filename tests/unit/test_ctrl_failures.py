"""Failures seen through the Ctrl API: a VP dies mid-task, a client goes
away, the controller restarts. The controller and endpoints handle them;
these tests check what a researcher sees."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from marionet import Ctrl, InstError
from marionet.client.loop_thread import LoopThread
from marionet.controller.broker import ControllerConfig
from marionet.controller.embedded import start_embedded
from tests.unit.test_controller import free_port

LONG = dict(attempts=30, wait_probe=0.1, wait_timeout=0.3)  # ~3 s
FAST = dict(attempts=1, wait_timeout=0.3)


def _drain(ctrl: Ctrl, timeout: float = 15) -> tuple[list, list[InstError]]:
    results, errors = [], []
    while True:
        try:
            for r in ctrl.responses(timeout=timeout):
                results.append(r)
            return results, errors
        except InstError as e:
            errors.append(e)


def test_embedded_vp_dies_mid_task():
    eofs = []
    with Ctrl(local_vps=3, eofcb=lambda c, i, p: eofs.append(i.name)) as c:
        insts = c.instances()
        c.do_ping("127.0.0.1", inst=insts, **LONG)
        time.sleep(0.4)
        victim = next(v for v in c.embedded.vps if v.name == "local2")
        c._run(c.embedded.stop_vp(victim))
        results, errors = _drain(c)
        assert sorted(r.vp for r in results) == ["local1", "local3"]
        assert all(r.nreplies == 30 for r in results)
        assert len(errors) == 1 and errors[0].inst.name == "local2"
        assert "went away" in str(errors[0]) and errors[0].task is not None
        assert eofs == ["local2"] and c.instance("local2").is_eof()
        with pytest.raises(InstError, match="not attached"):
            c._actrl.attach_timeout = 0.5
            c.do_ping("127.0.0.1", inst=c.instance("local2"))


def test_client_disconnect_halts_its_tasks():
    lt = LoopThread()
    try:
        emb = lt.run(start_embedded([("a", {"cc": "NZ"})]))
        ep = emb.vps[0].endpoint

        async def running_tasks() -> int:
            return sum(len(s.tasks) for s in ep.sessions)

        c = Ctrl(embedded=emb)
        c.do_ping("127.0.0.1", attempts=100, wait_probe=0.1)
        time.sleep(0.3)
        assert lt.run(running_tasks()) == 1
        c.close()
        deadline = time.monotonic() + 5
        while lt.run(running_tasks()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lt.run(running_tasks()) == 0
        lt.run(emb.close())
    finally:
        lt.stop()


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "marionet.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if p.poll() is None:
        os.kill(p.pid, sig)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        _stop(p)


def _controller(eport: int, cport: int) -> subprocess.Popen:
    return _spawn(["controller", "--endpoints", f"127.0.0.1:{eport}", "--clients", f"127.0.0.1:{cport}",
                   "--insecure", "--keepalive", "0.3", "--dead-after", "1.5"])


def _endpoint(eport: int, name: str, cc: str) -> subprocess.Popen:
    return _spawn(["endpoint", "--controller", f"127.0.0.1:{eport}", "--name", name, "--tag", f"cc={cc}",
                   "--insecure", "--engine", "inline"])


def _wait_vps(addr: str, n: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Ctrl(addr, insecure=True, vps=[]) as probe:
                if len(probe.vps()) >= n:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{n} VPs did not register at {addr}")


def test_killed_endpoint_process(procs):
    eport, cport = free_port(), free_port()
    procs.append(_controller(eport, cport))
    eps = {name: _endpoint(eport, name, cc) for name, cc in (("vpa", "NZ"), ("vpb", "US"), ("vpc", "DE"))}
    procs.extend(eps.values())
    addr = f"127.0.0.1:{cport}"
    _wait_vps(addr, 3)
    with Ctrl(addr, insecure=True) as c:
        assert [i.name for i in c.instances()] == ["vpa", "vpb", "vpc"]
        c.do_ping("127.0.0.1", inst=c.instances(), **LONG)
        time.sleep(0.4)
        os.kill(eps["vpb"].pid, signal.SIGKILL)
        results, errors = _drain(c)
        assert sorted(r.vp for r in results) == ["vpa", "vpc"]
        assert [e.inst.name for e in errors] == ["vpb"]


def test_controller_restart_instances_usable_again(procs):
    eport, cport = free_port(), free_port()
    ctl = _controller(eport, cport)
    procs.append(ctl)
    procs.extend(_endpoint(eport, name, "NZ") for name in ("vpa", "vpb"))
    addr = f"127.0.0.1:{cport}"
    _wait_vps(addr, 2)
    with Ctrl(addr, insecure=True) as c:
        insts = c.instances()
        assert [p.nreplies for p in c.do_ping("127.0.0.1", inst=insts, sync=True, **FAST)] == [1, 1]
        c.do_ping("127.0.0.1", inst=insts, **LONG)
        time.sleep(0.3)
        _stop(ctl)
        results, errors = _drain(c)
        assert results == [] and sorted(e.inst.name for e in errors) == ["vpa", "vpb"]
        assert all(i.is_eof() and not i.attached for i in insts)
        t0 = time.monotonic()
        procs.append(_controller(eport, cport))
        while not all(i.attached for i in insts) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        took = time.monotonic() - t0
        assert all(i.attached for i in insts), f"not re-attached after {took:.1f} s"
        assert took < 5, f"re-attached only after {took:.1f} s"
        assert c.instances() == insts and not any(i.is_eof() for i in insts)
        again = c.do_ping("::1", inst=insts, sync=True, **FAST)
        assert [(p.vp, p.nreplies) for p in again] == [("vpa", 1), ("vpb", 1)]


def test_ctrl_over_mutual_tls(tmp_path):
    """Ctrl(controller=HOST:PORT, ca=, cert=, key=): the client side of mutual TLS 1.3."""
    from marionet.guard import tls
    from marionet.guard.pki import PkiDir

    pki = PkiDir.init(tmp_path / "pki")
    srv = pki.issue("controller", "controller", san_ip=["127.0.0.1"])
    cli = pki.issue("alice", "client")
    lt = LoopThread()
    try:
        emb = lt.run(start_embedded([("tls-vp", {"cc": "NZ"})]))

        async def serve_tls() -> int:
            ctx = tls.server_context(srv.cert, srv.key, ca=srv.ca, require_client_cert=True)
            s = await emb.controller.serve_clients("127.0.0.1", 0, ctx)
            return s.sockets[0].getsockname()[1]

        port = lt.run(serve_tls())
        with Ctrl(f"127.0.0.1:{port}", ca=cli.ca, cert=cli.cert, key=cli.key) as c:
            assert c.do_ping("127.0.0.1", sync=True, **FAST).vp == "tls-vp"
        # No client certificate: refused, and the error says what probably happened.
        with pytest.raises(Exception, match="client certificate"):
            Ctrl(f"127.0.0.1:{port}", ca=cli.ca)
        lt.run(emb.close())
    finally:
        lt.stop()
