"""The native tools of ``marionet evaluate`` on a lab, against the lab's truth.

::

    client ─2ms─ r1 ─2ms─ r2 ─2ms─ r3 ─2ms─ target   (RTT 16 ms)
                                            nginx https: index.html stable, news.html dynamic (SSI)
                                            nginx http:  dynamic = true (the default page)
                                            NSD: lab.example

Butskoy traceroute (each method) and scamper draw exactly the lab's path
(``lab.truth()``) and their destination RTTs sit at the configured RTT;
ping gets every reply; dig's answer is the zone; curl's bodies of the stable
page are identical, those of the dynamic pages differ raw but not after
``clean_body``.  The lab runs no resolver, so scamper starts only because
the runner names a nameserver itself (``-n``).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Iterator

import pytest

from marionet.evaluate import native as nt
from marionet.evaluate.web import clean_body, web_item
from marionet.lab import linear_path
from marionet.lab.spec import parse_dict

pytestmark = pytest.mark.root

SITE = "www.lab.example"
STABLE = "<!doctype html><title>stable</title><p>the same bytes for everyone</p>\n"
NEWS = ('<!doctype html><title>news</title><p>breaking</p>\n'
        '<p>request <!--# echo var="request_id" --> at <!--# echo var="msec" -->'
        ' on <!--# echo var="date_gmt" --></p>\n')
RECORDS = [["www", "A", "192.0.2.10"], ["www", "A", "192.0.2.11"], ["www", "AAAA", "2001:db8::10"],
           ["@", "MX", "10 mail"], ["mail", "A", "192.0.2.25"], ["txt", "TXT", "hello lab"]]
ZONE_TTL = 300
ONE_WAY_MS = 2.0


def spec() -> Any:
    d = linear_path(3, delay=f"{ONE_WAY_MS}ms", name="evnat").to_dict()
    d["lab"]["resolver"] = False
    d["service"] = [
        {"host": "target", "kind": "https",
         "options": {"hostnames": [SITE], "files": {"index.html": STABLE, "news.html": NEWS},
                     "dynamic": ["news.html"]}},
        {"host": "target", "kind": "http", "options": {"dynamic": True}},
        {"host": "target", "kind": "dns", "options": {"zone": "lab.example", "ttl": ZONE_TTL, "records": RECORDS}},
    ]
    return parse_dict(d)


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from marionet.lab.pytest_plugin import make_lab

    with make_lab(spec()) as lab:
        yield lab


def truth_path(lab: Any, family: int) -> tuple[list[str], float]:
    dst = lab.addr("target", family)
    entry = next(p for p in lab.truth()["paths"] if p["src"] == "client" and p["dst_addr"] == dst)
    assert entry["deterministic"] and len(entry["paths"]) == 1
    return entry["paths"][0], 2 * entry["one_way_delay_ms"][0]


def assert_rtts_near(rtts: list[float], rtt: float, where: Any) -> None:
    assert rtts, where
    # the emulated links add their delay and a little of their own; never less
    assert min(rtts) >= rtt - 0.3, (where, rtts)
    assert statistics.median(rtts) <= rtt + 3.0, (where, rtts)


@pytest.mark.parametrize("family", [4, 6])
def test_traceroute_and_scamper_draw_the_lab_path(lab: Any, family: int) -> None:
    path, rtt = truth_path(lab, family)
    assert rtt == pytest.approx(8 * ONE_WAY_MS)
    want = {f"{ttl}|{addr}" for ttl, addr in enumerate(path, 1)}
    dst = lab.addr("target", family)
    runs = {m: nt.run_traceroute(lab, "client", dst, method=m, queries=3, max_ttl=8)
            for m in nt.TRACEROUTE_METHODS}
    runs["scamper"] = nt.run_scamper_trace(lab, "client", dst, method="udp-paris", queries=3)
    runs["scamper-icmp"] = nt.run_scamper_trace(lab, "client", dst, method="icmp-paris", queries=3)
    for name, run in runs.items():
        assert run.error is None, (name, run.error)
        assert run.reached and run.dst == dst, (name, run)
        assert run.path_items() == want, (name, run)
        assert len(run.dest_rtts()) == 3, (name, run)
        assert_rtts_near(run.dest_rtts(), rtt, (family, name))


@pytest.mark.parametrize("family", [4, 6])
def test_ping_and_scamper_ping_get_every_reply(lab: Any, family: int) -> None:
    _, rtt = truth_path(lab, family)
    dst = lab.addr("target", family)
    for name, run in (("ping", nt.run_ping(lab, "client", dst, count=5, interval=0.1)),
                      ("scamper", nt.run_scamper_ping(lab, "client", dst, count=5, interval=0.1))):
        assert run.error is None, (name, run.error)
        assert (run.sent, run.received, len(run.rtts_ms)) == (5, 5, 5), (name, run)
        assert_rtts_near(run.rtts_ms, rtt, (family, name))


def test_dig_answer_is_the_zone(lab: Any) -> None:
    server = lab.addr("target", 4)
    a = nt.run_dig(lab, "client", server, "www.lab.example", "A")
    assert (a.rcode, a.error) == ("NOERROR", None)
    assert sorted(a.answer) == [f"www.lab.example {ZONE_TTL} IN A 192.0.2.10",
                                f"www.lab.example {ZONE_TTL} IN A 192.0.2.11"]
    v6 = nt.run_dig(lab, "client", lab.addr("target", 6), "WWW.lab.example.", "aaaa")
    assert v6.answer == [f"www.lab.example {ZONE_TTL} IN AAAA 2001:db8::10"]
    assert nt.run_dig(lab, "client", server, "lab.example", "MX").answer == [
        f"lab.example {ZONE_TTL} IN MX 10 mail.lab.example"]
    assert nt.run_dig(lab, "client", server, "txt.lab.example", "TXT").answer == [
        f'txt.lab.example {ZONE_TTL} IN TXT "hello lab"']
    nx = nt.run_dig(lab, "client", server, "nope.lab.example", "A")
    assert (nx.rcode, nx.answer, nx.error) == ("NXDOMAIN", [], None)


def lab_ca(lab: Any) -> Path:
    from marionet.lab.hooks import service_dir
    from marionet.lab.labca import LabCA

    return Path(LabCA.load(service_dir(lab) / "ca").root_path)


def fetch(lab: Any, url: str, **kw: Any) -> nt.CurlRun:
    run = nt.run_curl(lab, "client", url, **kw)
    assert (run.status, run.error) == (200, None), (url, run)
    return run


@pytest.mark.parametrize("family", [4, 6])
def test_curl_stable_and_dynamic_sites(lab: Any, family: int) -> None:
    addr = lab.addr("target", family)
    tls = {"resolve": {f"{SITE}:443": addr}, "ca": lab_ca(lab)}
    stable = [fetch(lab, f"https://{SITE}/", **tls).body for _ in range(3)]
    assert stable[0] == stable[1] == stable[2] == STABLE.encode()
    news = [fetch(lab, f"https://{SITE}/news.html", **tls).body for _ in range(3)]
    assert len(set(news)) == 3, news  # a new request id every time
    assert len({clean_body(b) for b in news}) == 1, [clean_body(b) for b in news]
    assert b"<!--#" not in news[0] and b"error occurred" not in news[0] and b"breaking" in news[0]
    assert len({web_item("news", 200, b, None) for b in news}) == 1
    host = addr if family == 4 else f"[{addr}]"
    plain = [fetch(lab, f"http://{host}/").body for _ in range(2)]  # dynamic = true: the default page
    assert plain[0] != plain[1] and clean_body(plain[0]) == clean_body(plain[1])
    assert b"request <hex> at <epoch> (<time>)" in clean_body(plain[0])


def test_curl_failures_are_items(lab: Any) -> None:
    addr = lab.addr("target", 4)
    untrusted = nt.run_curl(lab, "client", f"https://{SITE}/", resolve={f"{SITE}:443": addr})
    assert nt.error_kind(untrusted.error) == "tls" and untrusted.status is None
    refused = nt.run_curl(lab, "client", f"http://{addr}:81/")
    assert web_item("x", refused.status, refused.body, refused.error) == "x|ERROR:connect"
    missing = nt.run_curl(lab, "client", f"http://{addr}/missing")
    assert (missing.status, missing.error) == (404, None)


@pytest.mark.parametrize("dynamic", ["yes", ["nope.html"], [""], 1])
def test_dynamic_option_errors_name_the_field(lab: Any, tmp_path: Path, dynamic: Any) -> None:
    from marionet.lab.services import ServiceConfigError, start_service

    with pytest.raises(ServiceConfigError, match=r"http\.dynamic"):
        start_service("http", lab.netns("target"), {"port": 8080, "dynamic": dynamic,
                                                    "files": {"index.html": "x"}}, state_dir=tmp_path)
