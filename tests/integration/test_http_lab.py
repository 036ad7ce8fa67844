"""do_http from lab VPs to the lab's nginx over real paths (needs root).

The scamper paper's CDN-catchment example fetches a JSON API over HTTPS
from each VP; here each VP fetches ``/api/servers`` from the lab's HTTPS
service, trusting the lab CA's root, through ``Ctrl`` (endpoint placement)
and through a remote packet session (remote placement), and the timings
carry the access links' delays::

    vp-de ─10ms─┐
                r1 ── r2 ── target (nginx: http, https with the lab CA)
    vp-jp ──────────┘
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest

from marionet.lab import parse_spec
from marionet.lab.pytest_plugin import make_lab
from marionet.results import Http, HttpStop

pytestmark = pytest.mark.root

SERVERS = ["a.lab.example", "b.lab.example"]
API = "api.lab.example"
SPEC = f"""
[lab]
name = "httpw"
controller = "auto"

[[vp]]
name = "vp-de"
cc = "DE"

[[vp]]
name = "vp-jp"
cc = "JP"

[[router]]
name = "r1"

[[router]]
name = "r2"

[[host]]
name = "target"

[[link]]
a = "vp-de"
b = "r1"
delay = "10ms"

[[link]]
a = "vp-jp"
b = "r2"

[[link]]
a = "r1"
b = "r2"

[[link]]
a = "r2"
b = "target"

[[service]]
host = "target"
kind = "https"
options = {{ hostnames = ["{API}"], servers = {SERVERS!r} }}

[[service]]
host = "target"
kind = "http"
options = {{ hostnames = ["{API}"], files = {{ "big.bin" = 300000 }} }}
"""

DELAY_MS = {"vp-de": 10.0, "vp-jp": 0.0}  # one-way, access link


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    with make_lab(parse_spec(SPEC)) as lab:
        yield lab


@pytest.fixture(scope="module")
def ca_pem(lab: Any) -> str:
    from marionet.lab.hooks import service_dir
    from marionet.lab.labca import LabCA

    return Path(LabCA.load(service_dir(lab) / "ca").root_path).read_text()


@pytest.mark.parametrize("family", [4, 6])
def test_https_api_from_each_vp_via_ctrl(lab: Any, ca_pem: str, family: int) -> None:
    dst = lab.addr("target", family)
    with lab.ctrl() as ctrl:
        insts = {i.name: i for i in ctrl.instances()}
        assert set(DELAY_MS) <= set(insts)
        for vp, delay in DELAY_MS.items():
            r = ctrl.do_http(dst, f"https://{API}/api/servers", ca=ca_pem, inst=insts[vp], sync=True)
            assert isinstance(r, Http) and r.vp == vp
            assert r.stop_reason == HttpStop.DONE, r.error
            assert r.status_code == 200 and r.json() == {"served_by": API, "servers": SERVERS}
            assert r.headers["content-type"] == "application/json"
            assert "X-Served-By" in list(r.headers) and r.headers["x-served-by"] == API  # case kept
            assert r.tls_version in ("TLSv1.2", "TLSv1.3") and r.tls_peer_subject == f"CN={API}"
            assert str(r.dst) == dst and str(r.src) == lab.addr(vp, family)
            rtt_ms = 2 * delay
            # the TLS handshake is at least one round trip, TTFB exactly one
            assert rtt_ms <= r.tls_ns / 1e6 < rtt_ms + 50, (vp, r.tls_ns)
            assert rtt_ms <= r.ttfb_ns / 1e6 < rtt_ms + 50, (vp, r.ttfb_ns)
            assert r.connect_ns / 1e6 >= rtt_ms * 0.9, (vp, r.connect_ns)
            # connect + TLS 1.3 (one round trip) + request: three round trips,
            # and no more (the request rides with the client's Finished)
            if r.tls_version == "TLSv1.3":
                assert 3 * rtt_ms * 0.95 <= r.total_ns / 1e6 < 3 * rtt_ms + 15, (vp, r.total_ns)


def test_https_without_lab_ca_is_refused_and_insecure_works(lab: Any) -> None:
    dst = lab.addr("target", 4)
    with lab.ctrl() as ctrl:
        inst = next(i for i in ctrl.instances() if i.name == "vp-jp")
        r = ctrl.do_http(dst, f"https://{API}/api/servers", inst=inst, sync=True)
        assert r.stop_reason == HttpStop.INSECURE and "certificate" in r.error
        r = ctrl.do_http(dst, f"https://{API}/api/servers", insecure=True, inst=inst, sync=True)
        assert r.stop_reason == HttpStop.DONE and r.json()["servers"] == SERVERS


def test_remote_placement_matches_endpoint_placement(lab: Any, ca_pem: str) -> None:
    """The same fetch run remotely (TLS and HTTP in this process, bytes via
    the VP) sees the same path: TTFB within a few ms of the endpoint's."""
    from marionet.measure.http import http

    dst = lab.addr("target", 4)
    url = f"https://{API}/api/servers"

    async def both() -> tuple[Http, Http]:
        conn = await lab.aconnect()
        try:
            s = await conn.attach("vp-de")
            try:
                remote = await http(s, dst, url=url, ca=ca_pem)
                tid = await s.task("http", {"dst": dst, "url": url, "ca": ca_pem})
                async for n in s.notifications(timeout=20):
                    if n.kind == "taskres" and n.task == tid:
                        assert n.error is None, n.error
                        from marionet.results import from_json
                        return remote, from_json(n.result)
                raise AssertionError("no task result")
            finally:
                await s.close()
        finally:
            await conn.close()

    remote, ep = asyncio.run(both())
    assert remote.stop_reason == ep.stop_reason == HttpStop.DONE, (remote.error, ep.error)
    assert remote.body == ep.body
    assert abs(remote.ttfb_ns - ep.ttfb_ns) < 5_000_000, (remote.ttfb_ns, ep.ttfb_ns)
    assert remote.ttfb_ns >= 20_000_000 and ep.ttfb_ns >= 20_000_000


def test_plain_http_large_file_and_redirectless_404(lab: Any) -> None:
    dst = lab.addr("target", 4)
    with lab.ctrl() as ctrl:
        inst = next(i for i in ctrl.instances() if i.name == "vp-de")
        r = ctrl.do_http(dst, f"http://{API}/big.bin", inst=inst, sync=True)
        assert r.stop_reason == HttpStop.DONE and r.status_code == 200 and len(r.body) == 300000
        assert len(r.timed_buffers) > 1
        r = ctrl.do_http(dst, f"http://{API}/missing", inst=inst, sync=True)
        assert r.stop_reason == HttpStop.DONE and r.status_code == 404
