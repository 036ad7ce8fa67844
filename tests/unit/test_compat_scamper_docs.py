"""The examples in scamper's own module documentation, run as scripts with
only ``from scamper import *`` changed (plus this machine's socket path and
loopback targets for CAIDA's addresses and names)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from marionet.client.loop_thread import LoopThread
from marionet.compat import scamper as sc
from marionet.controller.embedded import start_embedded
from marionet.results import File, Trace, TraceHop

IMPORT = "from marionet.compat.scamper import *  # was: from scamper import *"


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """A controller with one VP behind a Unix socket: scamper's ``scamper -U``."""
    d = tmp_path_factory.mktemp("solo")
    lt = LoopThread()
    emb = lt.run(start_embedded([("solo", {"cc": "NZ"})]))
    lt.run(emb.controller.serve_unix(str(d / "scamper.sock")))
    yield str(d / "scamper.sock")
    lt.run(emb.close())
    lt.stop()


def run(tmp_path, body: str, *args: str) -> str:
    script = tmp_path / "example.py"
    script.write_text(IMPORT + "\n" + textwrap.dedent(body))
    p = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=90)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_sync_ping_prints_its_replies(tmp_path, solo):
    out = run(tmp_path, """
        import sys
        ctrl = ScamperCtrl(unix=sys.argv[1])
        o = ctrl.do_ping("127.0.0.1", attempts=3, wait_probe=0.1, sync=True)
        print("ping from %s to %s" % (o.src, o.dst))
        for r in o:
          print(r)
        """, solo)
    lines = out.splitlines()
    assert lines[0] == "ping from 127.0.0.1 to 127.0.0.1" and len(lines) == 4, out
    for i, ln in enumerate(lines[1:]):
        assert re.fullmatch(rf"\d+ bytes from 127\.0\.0\.1, seq={i} ttl=\d+ time=\d+\.\d{{3}} ms", ln), ln


def test_event_loop_with_poll_until(tmp_path, solo):
    out = run(tmp_path, """
        import sys
        from datetime import *

        ctrl = ScamperCtrl(unix=sys.argv[1])
        round_count = 3
        next_tx = datetime.now()

        while not ctrl.is_done():
            now = datetime.now()
            if now < next_tx:
                o = ctrl.poll(until=(next_tx if round_count > 0 else None))
                if isinstance(o, ScamperPing) and o.min_rtt is not None:
                    print("%s %.1f" % (o.start.strftime("%H:%M:%S"),
                                       o.min_rtt.total_seconds() * 1000))
            elif round_count > 0:
                ctrl.do_ping("127.0.0.1", attempts=2, wait_probe=0.1)
                next_tx = next_tx + timedelta(seconds=0.5)
                round_count -= 1
                if round_count <= 0:
                    ctrl.done()
        """, solo)
    lines = out.splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"\d\d:\d\d:\d\d \d+\.\d", ln) for ln in lines), out


def test_reading_traces_from_a_warts_file(tmp_path):
    path = tmp_path / "foo.warts.gz"
    with File(path, "w") as f:
        for dst, hops in (("192.0.2.9", ["10.0.0.1", "10.0.0.2"]), ("192.0.2.10", ["10.0.0.1", "10.0.0.3"])):
            f.write(Trace(dst=dst, start_ns=1, hop_records=[TraceHop(src=a, probe_ttl=i + 1, rtt_ns=1000)
                                                            for i, a in enumerate(hops)]))
    out = run(tmp_path, """
        import sys
        addrs = {}
        file = ScamperFile(sys.argv[1])
        for o in file:
          if isinstance(o, ScamperTrace):
            for hop in o.hops():
              if hop.addr is not None:
                addrs[hop.addr] = 1

        for o in sorted(list(addrs)):
          print(o)

        file.close()
        """, str(path))
    assert out.splitlines() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


@pytest.mark.root
def test_writing_pings_and_dns_to_a_warts_file(tmp_path, solo, loop_dns):
    out = tmp_path / "foo.warts.gz"
    run(tmp_path, """
        import sys
        ctrl = ScamperCtrl()
        ctrl.add_unix(sys.argv[1])
        ctrl.do_ping("127.0.0.1", attempts=3, wait_probe=0.1)
        ctrl.do_dns("www.example", server=sys.argv[3])
        ctrl.done()

        out = ScamperFile(sys.argv[2], 'w', kind="warts.gz")
        while not ctrl.is_done():
          o = ctrl.poll()
          if o is not None:
            out.write(o)
        out.close()
        """, solo, str(out), loop_dns)
    got = [o for o in sc.ScamperFile(str(out)) if not isinstance(o, sc.ScamperCycle)]
    assert sorted(type(o).__name__ for o in got) == ["ScamperHost", "ScamperPing"]
    (host,) = [o for o in got if isinstance(o, sc.ScamperHost)]
    assert host.rcode == "NoError" and [str(a) for a in host.ans_addrs()] == ["192.0.2.7"]


@pytest.fixture
def loop_dns():
    """An authoritative DNS server on a random 127/8 address, port 53 (root)."""
    import dns.flags
    import dns.message
    import dns.rrset

    addr = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((addr, 53))
    except PermissionError:
        sock.close()
        pytest.skip("binding port 53 needs root")
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            r.flags |= dns.flags.AA
            r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.7"))
            sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield addr
    stop.set()
    t.join(2)
    sock.close()
