"""Seed inputs for the atheris targets, built with the project's own encoders.

A coverage-guided fuzzer starting from a few valid inputs reaches the deep
paths (a frame body, a warts ping reply, a DNS answer section, a JSON hop)
in seconds instead of minutes.  ``test_atheris.py`` writes these to a
temporary corpus; ``atheris_targets.py TARGET --write-seeds DIR`` writes
them for a long local run.  Plain module: no atheris needed to import it.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``tests.unit`` importable
    sys.path.insert(0, str(ROOT))

T0 = 1_700_000_000_000_000_000


def wire_seeds() -> list[bytes]:
    """One or more encoded frames.  The fuzz target's first two bytes pick
    the maximum frame size and the chunking; the rest is the stream."""
    from marionet.wire import encode, encode_many
    from marionet.wire import messages as m

    msgs = [
        m.Hello(id=1, version=m.PROTOCOL_VERSION, role="client", name="fuzz", features=["nsendv"]),
        m.NSend(id=2, sock=3, data=b"\x45\x00payload", dst="192.0.2.1", port=53, tag=7),
        m.NData(sock=3, time_ns=T0, ts_source="kernel", data=b"\x00" * 12, peer="::1", port=53),
        m.Task(id=4, primitive="ping", params={"dst": "192.0.2.1", "attempts": 3, "x": [1, 2.5, None]}),
        m.NCap(id=5, sock=3, program=[(0x28, 0, 0, 12)], until=T0),
        m.Error(id=6, code="denied", reason="no", rule="r1"),
        m.NDrop(time_ns=T0, count=2, nbytes=100, kinds={"ndata": 2}),
        m.Bye(code="bye", reason="done"),
    ]
    prefix = b"\x40\x21"  # max_frame selector, chunking seed
    return [prefix + encode(msgs[0]), prefix + encode_many(msgs), b"\x00\x00" + encode(msgs[3])]


def sample_results() -> list:
    """A ping (v4, with replies), a trace with MPLS extensions and a v6 ping."""
    from marionet.results import (Addr, CycleStart, CycleStop, IcmpExt, MplsLabel, Ping,
                                  PingReply, PingStop, Trace, TraceHop, TraceStop)

    ping = Ping(dst=Addr("192.0.2.9"), src=Addr("192.0.2.1"), start_ns=T0, ping_sent=3,
                ttl=64, probe_size=84, stop_reason=PingStop.DONE,
                replies=[PingReply(src=Addr("192.0.2.9"), attempt=k, rtt_ns=250_000 + k * 1000,
                                   reply_ttl=60, reply_ipid=100 + k, probe_ipid=k,
                                   reply_size=84, icmp_type=0, icmp_code=0,
                                   tx_ns=T0 + k * 1_000_000_000) for k in range(2)])
    ping6 = Ping(dst=Addr("2001:db8::9"), src=Addr("2001:db8::1"), method="udp", start_ns=T0,
                 ping_sent=1, sport=40000, dport=33434, stop_reason=PingStop.DONE,
                 replies=[PingReply(src=Addr("2001:db8::9"), attempt=0, rtt_ns=1_000_000,
                                    reply_ttl=60, reply_size=48, reply_proto="icmp",
                                    icmp_type=1, icmp_code=4, tx_ns=T0)])
    mpls = IcmpExt(cn=1, ct=1, dl=8, mpls_labels=[MplsLabel(label=16001, exp=0, s=0, ttl=1),
                                                  MplsLabel(label=24, exp=5, s=1, ttl=1)])
    hops = [
        TraceHop(src=Addr("192.0.2.1"), probe_ttl=1, probe_id=1, probe_size=44, rtt_ns=1_234_000,
                 tx_ns=T0 + 100_000_000, reply_ttl=255, reply_tos=0xC0, reply_ipid=77,
                 reply_size=56, icmp_type=11, icmp_code=0, icmp_q_ttl=1, icmp_q_ipl=44,
                 icmp_q_tos=0, icmpext=[mpls, IcmpExt(cn=2, ct=1, dl=3, data=b"abc")]),
        TraceHop(src=Addr("192.0.2.2"), probe_ttl=2, probe_id=2, probe_size=44, rtt_ns=2_000_000,
                 tx_ns=T0 + 200_000_000, reply_ttl=254, reply_size=56, icmp_type=3, icmp_code=4,
                 icmp_q_ttl=0, icmp_q_ipl=40, icmp_q_tos=4, icmp_nhmtu=1400),
        TraceHop(src=Addr("192.0.2.9"), probe_ttl=3, probe_id=1, probe_size=44, rtt_ns=3_000_000,
                 tx_ns=T0 + 300_000_000, reply_ttl=60, reply_ipid=5, reply_size=40, tcp_flags=0x14),
    ]
    trace = Trace(dst=Addr("192.0.2.9"), src=Addr("192.0.2.100"), method="tcp", start_ns=T0,
                  sport=40000, dport=80, stop_reason=TraceStop.COMPLETED, hop_count=3,
                  attempts=2, hoplimit=30, firsthop=1, wait_timeout=dt.timedelta(seconds=2),
                  wait_probe=dt.timedelta(milliseconds=50), tos=8, probe_size=44, probe_count=3,
                  userid=99, hop_records=hops)
    return [CycleStart(start_time=1_700_000_000, list_name="fuzz", cycle_id=3, hostname="vp"),
            ping, trace, ping6, CycleStop(stop_time=1_700_000_009, list_name="fuzz", cycle_id=3)]


def warts_seeds() -> list[bytes]:
    """A whole file (list, cycle, ping, trace, cycle-stop), each record alone,
    a tracelb record and one of a type the reader does not decode."""
    from marionet.results.warts_writer import WartsWriter

    objs = sample_results()
    whole = io.BytesIO()
    w = WartsWriter(whole)
    for o in objs:
        w.write(o)
    out = [whole.getvalue()]
    for o in objs[1:4]:
        buf = io.BytesIO()
        WartsWriter(buf).write(o)
        out.append(buf.getvalue())
    buf = io.BytesIO()
    WartsWriter(buf).write(sample_tracelb())
    out.append(buf.getvalue())
    # a record type the reader does not decode (sting): comes back as UnknownResult
    out.append(struct.pack(">HHI", 0x1205, 0x0C, 4) + b"\x00\x01\x02\x03")
    return out


def sample_tracelb():
    """A small MDA graph: r1 balancing over two routers that meet at the
    destination, with ICMP time-exceeded, port-unreachable and silent probes."""
    from marionet.results import (Addr, Tracelb, TracelbLink, TracelbNode, TracelbProbe, TracelbProbeset,
                                  TracelbReply)

    def probe(ttl: int, flow: int, src: str | None, k: int) -> TracelbProbe:
        rs = [] if src is None else [TracelbReply(src=Addr(src), rx_ns=T0 + k * 1000 + 500, reply_ttl=64 - ttl,
                                                  reply_ipid=k, icmp_type=3 if src == "192.0.2.9" else 11,
                                                  icmp_code=3 if src == "192.0.2.9" else 0, icmp_q_tos=0,
                                                  icmp_q_ttl=1)]
        return TracelbProbe(tx_ns=T0 + k * 1000, ttl=ttl, flowid=33435 + flow, attempt=0, replies=rs)

    r1, a, b, d = (TracelbNode(addr=Addr(x), q_ttl=1) for x in ("192.0.2.1", "192.0.2.2", "192.0.2.3",
                                                                 "192.0.2.9"))
    r1.links = [TracelbLink(near=r1, far=a, probesets=[TracelbProbeset([probe(2, 0, "192.0.2.2", 1)])]),
                TracelbLink(near=r1, far=b, probesets=[TracelbProbeset([probe(2, 1, "192.0.2.3", 2)])])]
    a.links = [TracelbLink(near=a, far=d, probesets=[TracelbProbeset([probe(3, 0, None, 3)]),
                                                     TracelbProbeset([probe(4, 0, "192.0.2.9", 4)])])]
    b.links = [TracelbLink(near=b, far=d, probesets=[TracelbProbeset([probe(3, 1, "192.0.2.9", 5)])])]
    return Tracelb(dst=Addr("192.0.2.9"), src=Addr("192.0.2.100"), start_ns=T0, sport=40000, dport=33435,
                   probe_size=44, probec=5, node_list=[r1, a, b, d])


DNS_QNAME = "www.example"


def dns_seeds() -> list[bytes]:
    """Replies to ``DNS_QNAME``/A: every record type the parser has a view
    for, an EDNS NSID option, a truncated (TC) reply and an NXDOMAIN."""
    import dns.edns
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rrset

    q = dns.message.make_query(DNS_QNAME, "A", id=0x1234, use_edns=0,
                               options=[dns.edns.GenericOption(dns.edns.NSID, b"")])
    r = dns.message.make_response(q)
    r.use_edns(0, options=[dns.edns.GenericOption(dns.edns.NSID, b"ns1")])
    name = DNS_QNAME + "."
    for rtype, text in [("CNAME", "alias.example."), ("A", "192.0.2.1"),
                        ("AAAA", "2001:db8::1"), ("MX", "10 mail.example."),
                        ("TXT", '"hello" "world"'), ("PTR", "ptr.example.")]:
        r.answer.append(dns.rrset.from_text(name, 60, "IN", rtype, text))
    r.authority.append(dns.rrset.from_text("example.", 60, "IN", "NS", "ns1.example."))
    r.authority.append(dns.rrset.from_text(
        "example.", 60, "IN", "SOA", "ns1.example. admin.example. 1 7200 3600 1209600 300"))
    r.additional.append(dns.rrset.from_text("ns1.example.", 60, "IN", "A", "192.0.2.53"))
    full = r.to_wire()
    tc = dns.message.make_response(dns.message.make_query(DNS_QNAME, "A", id=7))
    tc.flags |= dns.flags.TC
    nx = dns.message.make_response(dns.message.make_query(DNS_QNAME, "A", id=8))
    nx.set_rcode(dns.rcode.NXDOMAIN)
    return [full, tc.to_wire() + b"\xc0", nx.to_wire()]


def probe_seeds() -> list[bytes]:
    """Packets from the project's builders: ICMP echo, an ICMP time-exceeded
    quoting a UDP probe, TCP and UDP over IPv4 and IPv6.  The target's first
    byte picks the parser; 0 is ``parse_ip``."""
    from marionet.measure import probes as P

    a, b, a6, b6 = "192.0.2.1", "192.0.2.9", "2001:db8::1", "2001:db8::9"
    udp = P.udp_segment(a, b, 40000, 33435, b"probe")
    probe = P.ipv4_header(a, b, 17, len(udp), ttl=1) + udp
    te = P.icmp_message(11, 0, 0, probe)
    tcp = P.tcp_segment(a6, b6, 40000, 80, seq=1, payload=b"x")
    udp6 = P.udp_segment(a6, b6, 40000, 33435, b"probe")
    probe6 = P.ipv6_header(a6, b6, 17, len(udp6), hlim=1) + udp6
    te6 = P.icmp_message(3, 0, 0, probe6, src=b6, dst=a6, v6=True)
    echo = P.icmp_echo(0x99, 1, b"ping")
    return [
        b"\x00" + P.ipv4_header(b, a, 1, len(te)) + te,
        b"\x00" + P.ipv4_header(a, b, 1, len(echo)) + echo,
        b"\x00" + P.ipv6_header(a6, b6, 6, len(tcp)) + tcp,
        b"\x00" + P.ipv6_header(b6, a6, 58, len(te6)) + te6,
        b"\x01" + te,
    ]


def json_seeds() -> list[bytes]:
    """scamper's own ping and trace lines, ours (ping, trace, cycles, DNS)."""
    from marionet.results import DnsResult, dumps
    from marionet.results.dns import DnsMX, DnsQuery, DnsRR
    from tests.unit.test_results_json import SCAMPER_PING, SCAMPER_TRACE

    dnsr = DnsResult(dst="192.0.2.53", src="192.0.2.1", qname="example", qtype="MX",
                     start_ns=T0 + 123_456_000, rd=False, wait_timeout=dt.timedelta(seconds=2),
                     attempts=3, stop_reason="done")
    dnsr.queries.append(DnsQuery(
        id=4660, tx_ns=T0 + 123_456_000, rx_ns=T0 + 124_000_000, rcode=0, flags=["RD", "AA"],
        an=[DnsRR(name="example", rtype="MX", ttl=60, mx=DnsMX(10, "mail.example"))]))
    lines = [SCAMPER_PING, SCAMPER_TRACE] + [dumps(o) for o in sample_results()] + [dumps(dnsr)]
    return [line.encode() for line in lines]


def resolvconf_seeds() -> list[bytes]:
    return [b"# generated\nnameserver 192.0.2.53\nnameserver 2001:db8::53 ; v6\n"
            b"search example\noptions edns0\nnameserver fe80::1%eth0\n"]


def json_dict() -> list[bytes]:
    """libFuzzer dictionary for the JSON target: every key the readers know,
    the record types, and numbers at the edges (huge, negative, fractional)."""
    from marionet.results import dns as rdns
    from marionet.results import jsonfmt

    keys: set[str] = set()
    for ks in (jsonfmt._PING_KEYS, jsonfmt._REPLY_KEYS, jsonfmt._TRACE_KEYS, jsonfmt._HOP_KEYS,
               jsonfmt._CYCLE_KEYS, rdns._HOST_KEYS, rdns._QUERY_KEYS, rdns._RR_KEYS):
        keys |= ks
    keys |= {"sec", "usec", "ie_cn", "ie_ct", "ie_dl", "mpls_labels", "mpls_label", "mpls_ttl",
             "tx_ns", "rx_ns", "rtt_ns", "start_ns", "wait_timeout_us", "wait_probe_us",
             "wait_us", "icmp_id", "vp", "stop_reason", "wire", "port", "malformed"}
    tokens = [f'"{k}":' for k in sorted(keys)]
    tokens += [f'"{t}"' for t in ("ping", "trace", "host", "cycle-start", "cycle-stop",
                                  "kernel", "user", "NoError", "norecurse", "tcp", "icmp")]
    tokens += ["null", "true", "false", "[]", "{}", "-1", "0.001", "1e308", "1e-9", "-0",
               "4294967296", "18446744073709551616", "99999999999999999999999", '"::1"',
               '"127.0.0.1"', '{"sec":1,"usec":0}']
    return [t.encode() for t in tokens]


DICTS = {"json": json_dict}


SEEDS = {
    "wire": wire_seeds,
    "warts": warts_seeds,
    "dns": dns_seeds,
    "probes": probe_seeds,
    "json": json_seeds,
    "resolvconf": resolvconf_seeds,
}


def write_seeds(target: str, directory: str | Path) -> list[Path]:
    """Write ``target``'s seeds as ``seed-N`` files in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, data in enumerate(SEEDS[target]()):
        p = d / f"seed-{i}"
        p.write_bytes(data)
        out.append(p)
    return out


def write_dict(target: str, path: str | Path) -> Path | None:
    """Write ``target``'s libFuzzer dictionary (``-dict=PATH``), if it has one."""
    if target not in DICTS:
        return None
    lines = []
    for tok in DICTS[target]():
        esc = "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}"
                      for b in tok)
        lines.append(f'"{esc}"')
    p = Path(path)
    p.write_text("\n".join(lines) + "\n")
    return p
