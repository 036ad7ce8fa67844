"""marionet.compat.scamper: scamper scripts run with only the import changed."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    with pytest.raises(NotImplementedError, match="ScamperSting.*not implemented"):
        sc.ScamperSting  # noqa: B018
    assert isinstance(sc.ScamperDealias, type)  # dealias wrappers exist now
    assert issubclass(sc.ScamperHost, sc.DnsResult)  # DNS results exist now
    with pytest.raises(ValueError, match="appending to a warts file"):
        sc.ScamperFile(str(tmp_path / "x.warts"), "a")
    with sc.ScamperFile(str(tmp_path / "x.warts"), "w") as wf:  # warts writing exists now
        assert wf.kind == "warts"
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        with pytest.raises(sc.ScamperInstError, match="unknown primitive 'nosuch'"):
            ctrl._do("nosuch", {"dst": "127.0.0.1"}, inst=ctrl.instances()[0])
        with pytest.raises(NotImplementedError, match="do_owamp.*OWAMP"):
            ctrl.do_owamp("127.0.0.1")


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


# ----------------------------------------------------- compat gaps (issue 10)

def test_sync_results_are_scampers_classes(remote_dir):
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        inst = ctrl.instance("ark-nz")
        p = ctrl.do_ping("127.0.0.1", inst=inst, sync=True, attempts=3, wait_probe=0.05, wait_timeout=0.3)
        assert isinstance(p, sc.ScamperPing)
        assert [r.attempt for r in p] == [0, 1, 2] and len(list(p.replies())) == len(p.replies) == 3
        assert p.reply(1) is p.replies[1] and p.is_stop_done()


@pytest.mark.root
def test_sync_and_async_traces_count_hops_from_zero(remote_dir):
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        inst = ctrl.instance("ark-nz")
        t = ctrl.do_trace("127.0.0.1", inst=inst, sync=True, method="icmp-paris", attempts=1, wait_timeout=0.5)
        assert isinstance(t, sc.ScamperTrace) and t.is_stop_completed()
        assert t.hop(0).probe_ttl == 1 and str(t.hop(0).src) == "127.0.0.1" and t.hop(1) is None
        assert [h.probe_ttl for h in t.hops()] == [1]
        ctrl.do_trace("127.0.0.1", inst=inst, method="icmp-paris", attempts=1, wait_timeout=0.5)
        (again,) = list(ctrl.responses(timeout=10))
        assert isinstance(again, sc.ScamperTrace) and again.hop(0).probe_ttl == 1


class _Dns:
    """A tiny authoritative UDP DNS server (dnspython) on 127.0.0.1, a free port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        import dns.flags
        import dns.message
        import dns.rrset

        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.7"))
            self.sock.sendto(r.to_wire(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"hello from marionet"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("X-MiXeD", "CaSe")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a) -> None:
        pass


@pytest.fixture
def services():
    dns_srv = _Dns()
    web = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    t = threading.Thread(target=web.serve_forever, daemon=True)
    t.start()
    yield dns_srv.port, web.server_address[1]
    web.shutdown()
    web.server_close()
    dns_srv.close()


def test_dns_and_http_results_go_to_a_warts_outfile(remote_dir, tmp_path, services):
    dns_port, web_port = services
    path = tmp_path / "out.warts"
    out = sc.ScamperFile(str(path), "w")
    with sc.ScamperCtrl(remote_dir=str(remote_dir), outfile=out) as ctrl:
        inst = ctrl.instance("ark-us")
        ctrl.do_dns("www.example", server="127.0.0.1", port=dns_port, inst=inst, attempts=1, wait_timeout=2)
        ctrl.do_http("127.0.0.1", url=f"http://127.0.0.1:{web_port}/page", inst=inst, limit_time=5)
        ctrl.do_ping("127.0.0.1", inst=inst, **FAST)
        got = {type(o).__name__: o for o in ctrl.responses(timeout=15)}
        assert sorted(got) == ["ScamperHost", "ScamperHttp", "ScamperPing"] and ctrl.outfile_errors == 0
        assert got["ScamperHost"].rcode == "NoError" and got["ScamperHost"].ans_addrs() == ["192.0.2.7"]
        assert got["ScamperHttp"].response == b"hello from marionet"
        assert got["ScamperHttp"].response_hdrs["x-mixed"] == "CaSe"
        assert list(ctrl.exceptions()) == []
    out.close()
    back = {type(o).__name__: o for o in sc.ScamperFile(str(path)) if not isinstance(o, sc.ScamperCycle)}
    assert sorted(back) == ["ScamperHost", "ScamperHttp", "ScamperPing"]
    assert back["ScamperHost"].ans_addrs() == ["192.0.2.7"] and back["ScamperHost"].rcode == "NoError"
    assert (back["ScamperHttp"].status_code, back["ScamperHttp"].response) == (200, b"hello from marionet")
    if shutil.which("sc_wartsdump"):
        dump = subprocess.run(["sc_wartsdump", str(path)], capture_output=True, text=True, timeout=30).stdout
        assert "qname: www.example, qclass: IN, qtype: A" in dump and "IN A 192.0.2.7" in dump
        assert "cycle stop" in dump


def test_an_unwritable_outfile_never_stops_results(remote_dir, tmp_path):
    out = sc.ScamperFile(str(tmp_path / "gone.json"), "w")
    out.close()  # every write now fails
    with sc.ScamperCtrl(remote_dir=str(remote_dir), outfile=out) as ctrl:  # errors="raise", the default
        ctrl.do_ping("127.0.0.1", inst=ctrl.instances(), **FAST)
        got = list(ctrl.responses(timeout=10))
        assert len(got) == 3 and all(isinstance(p, sc.ScamperPing) for p in got)
        assert ctrl.outfile_errors == 3
        errs = list(ctrl.exceptions())
        assert len(errs) == 3 and all("cannot write the result" in str(e) and "closed" in str(e) for e in errs)
        assert {e.inst.name for e in errs} == {"ark-de", "ark-nz", "ark-us"}


def test_outfile_must_be_writable(tmp_path):
    (tmp_path / "r.json").write_text("")
    with pytest.raises(RuntimeError, match="not opened in write mode"):
        sc.ScamperCtrl(outfile=sc.ScamperFile(str(tmp_path / "r.json")))


def test_poll_until_waits_for_the_deadline(remote_dir):
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        t0 = time.monotonic()
        assert ctrl.poll(until=dt.datetime.now() + dt.timedelta(seconds=0.6)) is None
        assert time.monotonic() - t0 >= 0.55, "returned before the deadline"
        t0 = time.monotonic()
        assert ctrl.poll(timeout=dt.timedelta(seconds=0.4)) is None
        assert time.monotonic() - t0 >= 0.35
        # scamper's event-loop example: a round of pings every 0.3 s, poll(until=next round) in between
        inst, got, next_tx, rounds, polls = ctrl.instance("ark-nz"), [], dt.datetime.now(), 3, 0
        while not ctrl.is_done():
            if dt.datetime.now() < next_tx:
                polls += 1
                o = ctrl.poll(until=next_tx if rounds > 0 else None)
                if isinstance(o, sc.ScamperPing):
                    got.append(o)
            elif rounds > 0:
                ctrl.do_ping("127.0.0.1", inst=inst, **FAST)
                next_tx += dt.timedelta(seconds=0.3)
                rounds -= 1
                if rounds == 0:
                    ctrl.done()
            else:
                o = ctrl.poll(timeout=5)
                if isinstance(o, sc.ScamperPing):
                    got.append(o)
        assert len(got) == 3
        assert polls < 100, f"{polls} polls: poll(until=) did not wait"
        t0 = time.monotonic()
        assert ctrl.poll(until=dt.datetime.now() + dt.timedelta(seconds=5)) is None  # all done: at once
        assert time.monotonic() - t0 < 4


def test_remote_takes_one_vp_socket_path(remote_dir):
    with sc.ScamperCtrl(remote=str(remote_dir / "ark-de-192.0.2.1:31337")) as ctrl:  # sc_remoted's naming
        assert [i.name for i in ctrl.instances()] == ["ark-de"]
        assert ctrl.add_remote(str(remote_dir / "ark-us")).name == "ark-us"
        with pytest.raises(RuntimeError, match="no live VP 'ark-zz'.*ark-de, ark-nz, ark-us"):
            ctrl.add_remote(str(remote_dir / "ark-zz"))
    assert sc.vp_name_of("ark-nz") == "ark-nz" and sc.vp_name_of("a-b-[2001:db8::1]:9") == "a-b"


def test_vp_tags_are_a_set_of_strings():
    with sc.ScamperCtrl(local_vps=2) as ctrl:
        vps = sorted(ctrl.vps(), key=lambda v: v.name)
        assert all(isinstance(v, sc.ScamperVp) for v in vps)
        assert vps[0].tags == {"kind=local", "n=1"} and vps[1].tag_dict == {"kind": "local", "n": "2"}
        assert "kind=local" in vps[1].tags
        insts = ctrl.instances()
        assert all(type(i) is sc.ScamperInst for i in insts) and insts[0].tags == {"kind=local", "n=1"}
        p = ctrl.do_ping("127.0.0.1", inst=insts[1], sync=True, **FAST)
        assert p.inst is insts[1] and p.inst.tag_dict == {"kind": "local", "n": "2"}
        seen = []
        ctrl.eofcb = lambda c, inst, param: seen.append(inst.tags)
        insts[0].done()
        assert ctrl.poll(timeout=1) is None and seen == [{"kind=local", "n=1"}]


#: do_* parameters scamper's module documents (scamper.pyx signatures)
SCAMPER_PARAMS = {
    "do_ping": ("dst", "tcp_ack", "tcp_seq", "attempts", "icmp_id", "icmp_seq", "icmp_sum", "dport", "sport",
                "wait_probe", "ttl", "mtu", "stop_count", "method", "payload", "rtr", "recordroute", "size", "src",
                "wait_timeout", "tos", "userid"),
    "do_trace": ("dst", "confidence", "dport", "icmp_sum", "firsthop", "gaplimit", "loops", "hoplimit", "pmtud",
                 "squeries", "ptr", "payload", "method", "attempts", "all_attempts", "rtr", "sport", "src", "tos",
                 "wait_timeout", "wait_probe", "userid"),
    "do_dns": ("qname", "server", "qclass", "qtype", "attempts", "rd", "wait_timeout", "tcp", "userid", "nsid",
               "ecs"),
    "do_http": ("dst", "url", "headers", "insecure", "limit_time", "userid"),
}
#: what marionet refuses today, with a ScamperInstError naming the parameter
REFUSED = {"do_ping": {"mtu", "rtr", "icmp_sum"},
           "do_trace": {"pmtud", "ptr", "rtr"}, "do_dns": set(), "do_http": set()}
#: parameters other work will add (refused until then)
PENDING_PARAMS: dict[str, set[str]] = {}
FIRST = {"do_ping": ("127.0.0.1",), "do_trace": ("127.0.0.1",), "do_dns": ("x.example",),
         "do_http": ("127.0.0.1",)}
SAMPLE = {"rtr": "127.0.0.2", "mtu": 1400, "recordroute": True, "ptr": True, "pmtud": True, "confidence": 95,
          "icmp_sum": 1, "tcp_seq": 1, "tcp_ack": 1, "stop_count": 1, "ttl": 64, "tos": 0}


@pytest.mark.parametrize("fn", sorted(SCAMPER_PARAMS))
def test_every_documented_do_parameter_is_taken_or_refused_by_name(remote_dir, fn):
    with sc.ScamperCtrl(remote_dir=str(remote_dir)) as ctrl:
        inst = ctrl.instance("ark-nz")
        extra = {"url": "http://127.0.0.1/"} if fn == "do_http" else {}
        bad = "zzbogus" if fn != "do_ping" else "mtu"
        with pytest.raises(sc.ScamperInstError) as ei:
            getattr(ctrl, fn)(*FIRST[fn], inst=inst, sync=True, **extra, **{bad: SAMPLE.get(bad, 1)})
        accepted = set(re.search(r"accepted: ([^)]*)\)", str(ei.value)).group(1).split(", "))
        accepted |= {"userid"}  # every do_* takes it (the wire carries it beside the parameters)
        missing = {p for p in SCAMPER_PARAMS[fn] if p not in accepted}
        assert missing <= REFUSED[fn], f"{fn}: {missing - REFUSED[fn]} not taken and not listed as refused"
        stale = REFUSED[fn] - missing - PENDING_PARAMS.get(fn, set())
        assert not stale, f"{fn}: {stale} are taken now; drop them from REFUSED"
        for p in missing:
            with pytest.raises(sc.ScamperInstError, match=p):
                getattr(ctrl, fn)(*FIRST[fn], inst=inst, sync=True, **extra, **{p: SAMPLE.get(p, 1)})
