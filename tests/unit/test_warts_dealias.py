"""Warts type 9 (dealias): our Dealias → warts → Dealias is the same object,
for every method we produce, every probedef method, IPv4 and IPv6; bad
bodies are FormatErrors; File reads and writes dealias warts."""

from __future__ import annotations

import io
import struct

import pytest

from marionet.results import Dealias, DealiasProbe, DealiasProbedef, DealiasReply, File, FormatError
from marionet.results.dealias import PROBE_METHODS, radargun_sets
from marionet.results.warts import WartsReader
from marionet.results.warts_dealias import dealias_body, dealias_from_warts
from marionet.results.warts_writer import RecordContext, WartsWriter

T0 = 1_700_000_000_123_456_000  # µs-aligned: warts keeps microseconds


def _pd(i: int, method: str, dst: str, src: str, **kw: object) -> DealiasProbedef:
    icmp = method == "icmp-echo"
    return DealiasProbedef(id=i, method=method, dst=dst, src=src, ttl=kw.get("ttl", 255),  # type: ignore[arg-type]
                           size=kw.get("size", 0),  # type: ignore[arg-type]
                           sport=None if icmp else kw.get("sport", 40000),  # type: ignore[arg-type]
                           dport=None if icmp else kw.get("dport", 33435),  # type: ignore[arg-type]
                           icmp_id=kw.get("icmp_id", 0x1234) if icmp else None,  # type: ignore[arg-type]
                           icmp_sum=kw.get("icmp_sum", 0) if icmp else None)  # type: ignore[arg-type]


def _reply(src: str, k: int, *, v6: bool = False, method: str = "icmp-echo", ipid: int | None = None) -> DealiasReply:
    if method.startswith("tcp"):
        return DealiasReply(src=src, rx_ns=T0 + 1000 * k + 300_000, ipid=ipid if not v6 else None, ttl=63,
                            proto=6, tcp_flags=0x04, size=40)
    if method.startswith("udp"):
        return DealiasReply(src=src, rx_ns=T0 + 1000 * k + 300_000, ipid=ipid if not v6 else None, ttl=63,
                            proto=58 if v6 else 1, icmp_type=1 if v6 else 3, icmp_code=4 if v6 else 3,
                            icmp_q_ttl=254, size=56)
    return DealiasReply(src=src, rx_ns=T0 + 1000 * k + 300_000, ipid=ipid if not v6 else None, ttl=64,
                        proto=58 if v6 else 1, icmp_type=129 if v6 else 0, icmp_code=0, size=84)


def _probes(pds: list[DealiasProbedef], rounds: int, *, v6: bool = False) -> list[DealiasProbe]:
    out = []
    n = 0
    for r in range(rounds):
        for pd in pds:
            p = DealiasProbe(probedef=pd.id, dst=str(pd.dst), seq=r, tx_ns=T0 + 1000 * n,
                             ipid=None if v6 else 1 + n)
            if n % 5 != 4:  # some probes unanswered
                p.replies.append(_reply(str(pd.dst), n, v6=v6, method=pd.method, ipid=100 + 3 * n))
            out.append(p)
            n += 1
    return out


def _roundtrip(x: Dealias) -> Dealias:
    return dealias_from_warts(dealias_body(x, RecordContext(None)))


def _ally(method: str = "icmp-echo", v6: bool = False) -> Dealias:
    a, b, s = ("2001:db8::1", "2001:db8::2", "2001:db8::99") if v6 else ("192.0.2.1", "192.0.2.2", "192.0.2.99")
    pds = [_pd(0, method, a, s), _pd(1, method, b, s)]
    return Dealias(method="ally", start_ns=T0, probedefs=pds, probes=_probes(pds, 3, v6=v6), result="aliases",
                   userid=7, attempts=5, fudge=200, wait_probe_ns=150 * 10**6, wait_timeout_ns=5 * 10**9)


@pytest.mark.parametrize("method", PROBE_METHODS)
@pytest.mark.parametrize("v6", [False, True])
def test_ally_roundtrip_every_probe_method(method: str, v6: bool) -> None:
    x = _ally(method, v6)
    assert _roundtrip(x) == x


def test_mercator_roundtrip_v4_v6() -> None:
    for dst, src, alias in (("192.0.2.1", "192.0.2.99", "192.0.2.77"), ("2001:db8::1", "2001:db8::99", "2001:db8::7")):
        v6 = ":" in dst
        pd = _pd(0, "udp", dst, src, sport=51000)
        probes = [DealiasProbe(0, dst, seq=k, tx_ns=T0 + k * 10**9, ipid=None if v6 else 9 + k) for k in range(2)]
        probes[1].replies.append(DealiasReply(src=alias, rx_ns=T0 + 10**9 + 500_000, ipid=None if v6 else 4242, ttl=64,
                                              proto=58 if v6 else 1, icmp_type=1 if v6 else 3,
                                              icmp_code=4 if v6 else 3, icmp_q_ttl=1, size=56))
        x = Dealias(method="mercator", start_ns=T0, probedefs=[pd], probes=probes, result="aliases", attempts=3,
                    wait_timeout_ns=5 * 10**9)
        back = _roundtrip(x)
        assert back == x
        assert back.aliases() == [(dst, alias)]


def test_radargun_roundtrip_recomputes_alias_sets() -> None:
    pds = [_pd(i, "icmp-echo", f"192.0.2.{i + 1}", "192.0.2.99") for i in range(3)]
    probes = _probes(pds, 4)
    x = Dealias(method="radargun", start_ns=T0, probedefs=pds, probes=probes, attempts=4,
                wait_probe_ns=150 * 10**6, wait_round_ns=2 * 10**9, wait_timeout_ns=5 * 10**9,
                alias_sets=radargun_sets(probes, 0))
    back = _roundtrip(x)
    assert back == x
    assert back.aliases() == [("192.0.2.1", "192.0.2.2", "192.0.2.3")]


def test_prefixscan_roundtrip_with_and_without_alias() -> None:
    pds = [_pd(i, "icmp-echo", d, "192.0.2.99") for i, d in enumerate(["192.0.2.1", "198.51.100.5", "198.51.100.6"])]
    probes = _probes(pds, 2)
    for ab, result in (("198.51.100.6/30", "aliases"), (None, "none")):
        x = Dealias(method="prefixscan", start_ns=T0, probedefs=pds, probes=probes, result=result, attempts=2,
                    fudge=200, wait_probe_ns=10**9, wait_timeout_ns=5 * 10**9, replyc=5,
                    prefix=("192.0.2.1", "198.51.100.4/30", ab), extra={"prefix": "198.51.100.4/30"})
        back = _roundtrip(x)
        assert back == x
        assert back.aliases() == ([("192.0.2.1", "198.51.100.6")] if ab else [])
    x.replyc = 7
    assert _roundtrip(x).replyc == 7


@pytest.mark.parametrize("v6", [False, True])
def test_midarest_and_midardisc_roundtrip(v6: bool) -> None:
    dsts = ["2001:db8::1", "2001:db8::2"] if v6 else ["192.0.2.1", "192.0.2.2"]
    src = "2001:db8::99" if v6 else "192.0.2.99"
    pds = [_pd(0, "icmp-echo", dsts[0], src), _pd(1, "udp", dsts[1], src), _pd(2, "tcp-ack", dsts[0], src)]
    est = Dealias(method="midarest", start_ns=T0, probedefs=pds, probes=_probes(pds, 3, v6=v6), attempts=3,
                  wait_probe_ns=10_000_000 + 7_000, wait_round_ns=1_000_003_000, wait_timeout_ns=1_500_000_000)
    assert _roundtrip(est) == est  # midarest keeps waits to the µs
    disc = Dealias(method="midardisc", start_ns=T0, probedefs=pds, probes=_probes(pds, 2, v6=v6), attempts=2,
                   wait_timeout_ns=1_000_000_000, startat_ns=T0 - 5_000,
                   schedule=[(0, 0, 2), (250_000_000, 0, 2)])
    back = _roundtrip(disc)
    assert back == disc
    assert back.schedule == [(0, 0, 2), (250_000_000, 0, 2)]


def test_ipv6_reply_ipid32_flag_keeps_zero_apart_from_none() -> None:
    x = _ally("icmp-echo", v6=True)
    x.probes[0].replies[0].ipid = 0
    x.probes[1].replies[0].ipid = 0xDEADBEEF
    back = _roundtrip(x)
    assert [p.replies[0].ipid for p in back.probes[:3]] == [0, 0xDEADBEEF, None]


def test_what_warts_drops_is_documented_loss() -> None:
    x = _ally()
    x.vp, x.error, x.start_ns = "vp1", "boom", T0 + 789  # below the µs
    x.probes[0].tx_ts_source = "kernel"
    x.wait_timeout_ns = 2_500_000_000
    back = _roundtrip(x)
    assert (back.vp, back.error, back.start_ns, back.probes[0].tx_ts_source) == (None, None, T0, None)
    assert back.wait_timeout_ns == 2 * 10**9  # ally's timeout is whole seconds in warts


def test_writer_refuses_what_warts_cannot_hold() -> None:
    x = _ally()
    x.probedefs[1].id = 5
    with pytest.raises(ValueError, match="ids equal to positions"):
        dealias_body(x, RecordContext(None))
    x = _ally()
    x.probes[0].probedef = 9
    with pytest.raises(ValueError, match="names probedef 9"):
        dealias_body(x, RecordContext(None))
    x = _ally()
    x.probedefs[0].dst = None
    with pytest.raises(ValueError, match="no destination"):
        dealias_body(x, RecordContext(None))


def _record(body: bytes) -> bytes:
    return struct.pack(">HHI", 0x1205, 9, len(body)) + body


def test_bad_bodies_are_format_errors() -> None:
    good = dealias_body(_ally(), RecordContext(None))
    for bad in (good[:-3], good[:20], b"\x08\x00\x01\x09"):  # truncated; method 9 unknown
        with pytest.raises(FormatError, match="dealias"):
            WartsReader(io.BytesIO(_record(bad))).read()


def test_file_writes_and_reads_dealias_warts(tmp_path) -> None:
    objs = [_ally(), _ally("udp", v6=True)]
    path = tmp_path / "d.warts.gz"
    with File(path, "w") as f:
        for o in objs:
            f.write(o)
    with File(path) as f:
        got = [o for o in f if isinstance(o, Dealias)]
    assert got == objs
    with File(path, filter_types=["dealias"]) as f:
        assert list(f) == objs
    assert "dealias" in WartsWriter.kinds()


def test_cli_output_writes_dealias_results_as_warts(tmp_path) -> None:
    """``marionet … -o FILE.warts`` goes through commands.output.Output → File."""
    from marionet.commands.output import Output

    path = tmp_path / "cli.warts"
    out_text = io.StringIO()
    with Output("marionet", as_json=True, path=str(path), total=2, stdout=out_text, stderr=io.StringIO()) as out:
        out.result(_ally())
        out.result(_ally("tcp-ack"))
    assert not out.file_failed
    with File(path) as f:
        assert [o for o in f if isinstance(o, Dealias)] == [_ally(), _ally("tcp-ack")]
    assert out_text.getvalue().count('"type":"dealias"') + out_text.getvalue().count('"type": "dealias"') == 2
