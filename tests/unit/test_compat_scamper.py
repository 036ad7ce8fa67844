"""marionet.compat.scamper: scamper scripts run with only the import changed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from marionet.client.loop_thread import LoopThread
from marionet.compat import scamper as sc
from marionet.controller.embedded import start_embedded

ROOT = Path(__file__).resolve().parents[2]
FAST = dict(attempts=1, wait_timeout=0.3)


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    """An embedded controller with three local VPs whose client socket sits
    in a directory, as sc_remoted's sockets do."""
    d = tmp_path_factory.mktemp("remote")
    lt = LoopThread()
    emb = lt.run(start_embedded([("ark-nz", {"cc": "NZ"}), ("ark-us", {"cc": "US"}), ("ark-de", {"cc": "DE"})]))
    lt.run(emb.controller.serve_unix(str(d / "controller.sock")))
    yield d
    lt.run(emb.close())
    lt.stop()


@pytest.mark.parametrize("target", ["127.0.0.1", "::1", "127.0.0.3"])
def test_paper_shortest_ping_script(remote_dir, target):
    src = (ROOT / "examples" / "scamper_shortest_ping.py").read_text()
    # the script is the paper's, with only the import line changed
    body = src.split('"""', 2)[2]
    assert [ln for ln in body.splitlines() if "marionet" in ln] == [
        "from marionet.compat.scamper import ScamperCtrl  # was: from scamper import ScamperCtrl"]
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "scamper_shortest_ping.py"),
                          str(remote_dir), target], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"ark-(nz|us|de) \d+\.\d ms\n", out.stdout), out.stdout
    assert "Warning" not in out.stderr, out.stderr


def test_remote_dir_attaches_every_vp(remote_dir):
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        assert sorted(i.name for i in ctrl.instances()) == ["ark-de", "ark-nz", "ark-us"]
        assert ctrl.instc == 3
        inst = ctrl.instances()[0]
        assert isinstance(inst, sc.ScamperInst)
        p = ctrl.do_ping("127.0.0.1", inst=inst, sync=True, **FAST)
        assert isinstance(p, sc.ScamperPing) and isinstance(p.dst, sc.ScamperAddr)


def test_mux_attaches_nothing_until_add_vps(remote_dir):
    with sc.ScamperCtrl(mux=str(remote_dir / "controller.sock")) as ctrl:
        assert ctrl.instances() == []
        vps = ctrl.vps()
        assert sorted(v.name for v in vps) == ["ark-de", "ark-nz", "ark-us"]
        assert all(isinstance(v, sc.ScamperVp) for v in vps)
        insts = ctrl.add_vps([v for v in vps if v.cc == "US"])
        assert [i.name for i in insts] == ["ark-us"]
        ctrl.do_ping("127.0.0.1", **FAST)  # one instance: inst may be omitted
        (r,) = list(ctrl.responses())
        assert r.inst.name == "ark-us"


def test_remote_is_one_vp(remote_dir):
    with sc.ScamperCtrl(remote=str(remote_dir / "ark-de")) as ctrl:
        assert [i.name for i in ctrl.instances()] == ["ark-de"]
        inst = ctrl.add_remote(str(remote_dir / "ark-nz"))
        assert inst.name == "ark-nz" and ctrl.instc == 2


def test_morecb_pattern_from_scamper_docs(remote_dir):
    def feedme(ctrl, inst, vps):
        if len(vps[inst.name]) == 0:
            inst.done()
        else:
            ctrl.do_ping(vps[inst.name].pop(0), inst=inst, **FAST)

    vps = {}
    ctrl = sc.ScamperCtrl(morecb=feedme, param=vps, mux=str(remote_dir))
    ctrl.add_vps(ctrl.vps())
    for inst in ctrl.instances():
        vps[inst.name] = ["127.0.0.1", "::1"]
    got = []
    while not ctrl.is_done():
        o = ctrl.poll(timeout=5)
        if o is not None:
            got.append((o.inst.name, str(o.dst)))
    assert len(got) == 6
    ctrl.close()


def test_unsupported_is_said_clearly(remote_dir, tmp_path):
    with pytest.raises(NotImplementedError, match="one controller"):
        sc.ScamperCtrl(remote_dir=str(remote_dir), mux=str(remote_dir))
    with pytest.raises(FileNotFoundError, match="no marionet controller socket"):
        sc.ScamperCtrl(remote_dir=str(tmp_path))
    with pytest.raises(AttributeError, match="ScamperTracelb.*not implemented"):
        sc.ScamperTracelb  # noqa: B018
    assert sc.ScamperHost.__name__ == "DnsResult"  # DNS results exist now
    with pytest.raises(ValueError, match="appending to a warts file"):
        sc.ScamperFile(str(tmp_path / "x.warts"), "a")
    with sc.ScamperFile(str(tmp_path / "x.warts"), "w") as wf:  # warts writing exists now
        assert wf.kind == "warts"
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        with pytest.raises(sc.ScamperInstError, match="unknown primitive 'tracelb'"):
            ctrl._do("tracelb", {"dst": "127.0.0.1"}, inst=ctrl.instances()[0])


def test_scamper_file(tmp_path, remote_dir):
    path = str(tmp_path / "out.json")
    with sc.ScamperCtrl(remote_dir=str(remote_dir), outfile=sc.ScamperFile(path, "w")) as ctrl:
        ctrl.do_ping("127.0.0.1", inst=ctrl.instances(), **FAST)
        assert len(list(ctrl.responses(timeout=5))) == 3
        ctrl.outfile.close()
    f = sc.ScamperFile(path)
    assert f.filetype == "json" and f.is_read() and not f.is_write()
    f.filter_types(sc.ScamperPing)
    pings = list(f)
    assert sorted(p.vp for p in pings) == ["ark-de", "ark-nz", "ark-us"]
    f.close()


def test_no_source_means_embedded_local():
    with sc.ScamperCtrl() as ctrl:
        p = ctrl.do_ping("127.0.0.1", sync=True, **FAST)
        assert p.nreplies == 1 and p.inst.name == "local"
