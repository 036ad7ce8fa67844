"""The privilege schema: strict parsing, canonical round trip, intersection
and widenings (property tests), explanations and the enforcement checks."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marionet.guard import privileges as P
from marionet.guard.privileges import (EVERYTHING, NOTHING, PrivilegeError, Privileges, PortRange,
                                       Rate, Totals, intersect, parse, to_doc, widenings)

DIGEST = "ab" * 32

RICH = {
    "v": 1,
    "period": {"not_before": "2026-12-01T00:00:00Z", "not_after": "2027-01-01T00:00:00Z"},
    "vps": ["vp1", "vp2"],
    "tags": {"site": ["lab", "ams"]},
    "protocols": ["udp", "tcp", "raw:1"],
    "dst": ["192.0.2.0/24", "2001:db8::/32"],
    "ports": ["53", 80, "33434-33534"],
    "src": ["198.51.100.7"],
    "max_sockets": 16,
    "rate": {"pps": 100, "burst_packets": 50, "bps": 125000, "excess": "delay"},
    "total": {"packets": 1000000, "bytes": 10**9, "period_s": 86400},
    "primitives": {"ping": {"attempts": 10, "methods": ["icmp-echo"]}, "trace": {"hoplimit": 32},
                   "dns": {"servers": ["resolver", "192.0.2.53"]}, "http": {"hosts": ["WWW.Example.org."]}},
    "monitors": [DIGEST.upper()],
}


# ---------------------------------------------------------------- parsing

def test_rich_document_parses_to_normalised_values() -> None:
    p = parse(RICH)
    assert p.not_before == dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    assert p.vps == {"vp1", "vp2"}
    assert p.tags == {"site": frozenset({"lab", "ams"})}
    assert p.protocols == {"udp", "tcp", "raw:1"}
    assert p.dst == (ipaddress.ip_network("192.0.2.0/24"), ipaddress.ip_network("2001:db8::/32"))
    assert p.ports == (PortRange(53, 53), PortRange(80, 80), PortRange(33434, 33534))
    assert p.src == (ipaddress.ip_network("198.51.100.7/32"),)
    assert p.rate == Rate(pps=100.0, bps=125000.0, burst_packets=50, burst_bytes=125000, excess="delay")
    assert p.total == Totals(packets=1000000, bytes=10**9, period_s=86400.0)
    assert p.primitives["http"] == {"hosts": ["www.example.org"]}
    assert p.primitives["dns"] == {"servers": ["192.0.2.53", "resolver"]}
    assert p.monitors == {DIGEST}


def test_shorthands() -> None:
    p = parse({"protocols": ["*"], "dst": "any", "ports": "*", "tags": {"site": "lab"}})
    assert p.protocols == EVERYTHING.protocols
    assert p.dst == EVERYTHING.dst
    assert p.ports is None
    assert p.tags == {"site": frozenset({"lab"})}
    assert parse({"dst": ["any"]}).dst == EVERYTHING.dst
    assert parse({"ports": ["80", "*"]}).ports is None


def test_canonical_forms() -> None:
    p = parse({"dst": ["10.0.0.128/25", "10.0.0.0/25", "10.0.0.5", "::1"],
               "ports": ["1000-2000", "1500-3000", 3001], "protocols": ["raw:17", "raw:*"]})
    assert [str(n) for n in p.dst] == ["10.0.0.0/24", "::1/128"]
    assert p.ports == (PortRange(1000, 3001),)
    assert p.protocols == {"raw:*"}


def test_default_burst_is_one_seconds_worth() -> None:
    assert parse({"rate": {"pps": 2.5, "bps": 0.1}}).rate == Rate(pps=2.5, bps=0.1, burst_packets=3, burst_bytes=1)


def test_empty_rate_or_total_is_no_limit() -> None:
    assert parse({"rate": {"excess": "delay"}, "total": {"period_s": 60}}) == NOTHING


def test_times_accept_offsets_and_toml_datetimes() -> None:
    p = parse({"period": {"not_before": "2026-12-01T01:00:00+01:00",
                          "not_after": dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)}})
    assert p.not_before == dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    assert p.not_after == dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)


BAD = [
    ({"protocol": ["udp"]}, "privileges.protocol: unknown field (known: v, period"),
    ({"rate": {"ppps": 1}}, "privileges.rate.ppps: unknown field (known: pps, bps, burst_packets"),
    ({"total": {"packet": 1}}, "privileges.total.packet: unknown field"),
    ({"period": {"start": "x"}}, "privileges.period.start: unknown field"),
    ({"v": 2}, "privileges.v: unsupported version 2"),
    ({"v": True}, "privileges.v: unsupported version"),
    ([], "privileges: must be a table/object, got list"),
    ({"period": {"not_before": "yesterday"}}, "privileges.period.not_before: not an ISO 8601 time"),
    ({"period": {"not_after": "2026-12-01T00:00:00"}}, "privileges.period.not_after: 2026-12-01T00:00:00 has no time zone"),
    ({"period": {"not_before": 5}}, "privileges.period.not_before: must be an ISO 8601 time string, got int"),
    ({"period": {"not_before": "2027-01-01T00:00:00Z", "not_after": "2026-01-01T00:00:00Z"}},
     "privileges.period: not_before must be before not_after"),
    ({"period": {"not_after": "9999-12-31T23:59:59-01:00"}}, "privileges.period.not_after: 9999-12-31T23:59:59-01:00 is out of range"),
    ({"vps": "vp1"}, "privileges.vps: must be a list, got str"),
    ({"vps": ["vp1", ""]}, "privileges.vps[1]: must be a non-empty string"),
    ({"vps": [3]}, "privileges.vps[0]: must be a non-empty string"),
    ({"tags": ["site"]}, "privileges.tags: must be a table"),
    ({"tags": {"site": [1]}}, "privileges.tags.site[0]: must be a non-empty string"),
    ({"protocols": "udp"}, "privileges.protocols: must be a list"),
    ({"protocols": ["udp", "icmp"]}, "privileges.protocols[1]: unknown protocol 'icmp'"),
    ({"protocols": ["raw:256"]}, "privileges.protocols[0]: 'raw:256': raw IP protocol must be 0..255"),
    ({"protocols": ["raw:-1"]}, "privileges.protocols[0]: 'raw:-1'"),
    ({"protocols": [17]}, "privileges.protocols[0]: must be a string, got int"),
    ({"dst": ["10.0.0.1/8"]}, "privileges.dst[0]: '10.0.0.1/8' has host bits set (did you mean 10.0.0.0/8?)"),
    ({"dst": ["192.0.2.0/24", "example.org"]}, "privileges.dst[1]: 'example.org' is not an IP address or prefix"),
    ({"dst": ["10.0.0.0/33"]}, "privileges.dst[0]: '10.0.0.0/33' is not an IP address or prefix"),
    ({"dst": ["fe80::1%eth0"]}, "privileges.dst[0]: 'fe80::1%eth0': scoped addresses"),
    ({"dst": "10.0.0.0/8"}, "privileges.dst: must be a list, got str"),
    ({"src": [None]}, "privileges.src[0]: must be a prefix string, got NoneType"),
    ({"ports": ["70000"]}, "privileges.ports[0]: '70000': ports are 0..65535"),
    ({"ports": [-1]}, "privileges.ports[0]: -1: ports are 0..65535"),
    ({"ports": ["90-80"]}, "privileges.ports[0]: '90-80': range start is above its end"),
    ({"ports": ["http"]}, "privileges.ports[0]: 'http' is not a port N, a range A-B or *"),
    ({"ports": [True]}, "privileges.ports[0]: must be a port number or range, got boolean"),
    ({"spoof": 1}, "privileges.spoof: must be true or false, got int"),
    ({"spoof": "false"}, "privileges.spoof: must be true or false, got str"),
    ({"max_sockets": True}, "privileges.max_sockets: must be an integer, got boolean"),
    ({"max_sockets": -1}, "privileges.max_sockets: must be >= 0"),
    ({"max_sockets": 1.5}, "privileges.max_sockets: must be an integer, got float"),
    ({"rate": {"pps": 0}}, "privileges.rate.pps: must be a finite number > 0"),
    ({"rate": {"bps": float("inf")}}, "privileges.rate.bps: must be a finite number > 0"),
    ({"rate": {"pps": "100"}}, "privileges.rate.pps: must be a number, got str"),
    ({"rate": {"pps": True}}, "privileges.rate.pps: must be a number, got boolean"),
    ({"rate": {"pps": 10, "burst_packets": 0}}, "privileges.rate.burst_packets: must be >= 1"),
    ({"rate": {"burst_bytes": 10}}, "privileges.rate.burst_bytes: needs bps"),
    ({"rate": {"pps": 1, "excess": "drop"}}, "privileges.rate.excess: must be \"delay\" or \"deny\""),
    ({"rate": 100}, "privileges.rate: must be a table/object, got int"),
    ({"rate": {"pps": 10**400}}, "privileges.rate.pps: must be at most 1e+15"),
    ({"rate": {"bps": 1e308}}, "privileges.rate.bps: must be at most 1e+15"),
    ({"total": {"bytes": 1, "period_s": 10**400}}, "privileges.total.period_s: must be at most"),
    ({"primitives": {"ping": {"attempts": 10**400}}}, "privileges.primitives.ping.attempts: a maximum must be at most"),
    ({"total": {"packets": -5}}, "privileges.total.packets: must be >= 0"),
    ({"total": {"bytes": 1, "period_s": 0}}, "privileges.total.period_s: must be a finite number > 0"),
    ({"primitives": ["ping"]}, "privileges.primitives: must be a table/object, got list"),
    ({"primitives": {"ping": 10}}, "privileges.primitives.ping: must be a table of bounds"),
    ({"primitives": {"pi ng": {}}}, "privileges.primitives.pi ng: a primitive name"),
    ({"primitives": {"ping": {"attempts": True}}}, "privileges.primitives.ping.attempts: a bound is a number"),
    ({"primitives": {"ping": {"attempts": -1}}}, "privileges.primitives.ping.attempts: a maximum must be"),
    ({"primitives": {"ping": {"attempts": "10"}}}, "privileges.primitives.ping.attempts: a bound is a number"),
    ({"primitives": {"dns": {"servers": ["ns.example"]}}},
     "privileges.primitives.dns.servers[0]: 'ns.example' is not an IP address or 'resolver'"),
    ({"primitives": {"http": {"hosts": ["bad_host!"]}}}, "privileges.primitives.http.hosts[0]: 'bad_host!' is not a host name"),
    ({"monitors": ["abc"]}, "privileges.monitors[0]: not a SHA-256 digest (64 hex digits): 'abc'"),
    ({"monitors": [5]}, "privileges.monitors[0]: not a SHA-256 digest"),
]


@pytest.mark.parametrize(("doc", "message"), BAD, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD)])
def test_malformed_fields_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(PrivilegeError) as exc:
        parse(doc)
    assert message in str(exc.value)


def test_where_prefixes_the_path() -> None:
    with pytest.raises(PrivilegeError, match=r"^policy.toml: limits.rate.ppps: unknown field"):
        parse({"rate": {"ppps": 1}}, where="policy.toml: limits")


def test_size_limit() -> None:
    doc = {"dst": [f"10.{i // 256}.{i % 256}.0/24" for i in range(4000)], "ports": list(range(97))}
    with pytest.raises(PrivilegeError, match=r"privileges: 4097 prefixes/ports/entries, at most 4096"):
        parse(doc)
    doc["ports"] = list(range(96))
    assert len(parse(doc).dst) < 4096  # exactly at the limit is fine (and collapses)


# ------------------------------------------------- hypothesis strategies

_protos = st.sampled_from(["udp", "tcp", "tcp-listen", "capture", "raw:1", "raw:6", "raw:17", "raw:*"])
_v4 = st.builds(lambda a, n: str(ipaddress.ip_network((a << 24, n), strict=False)),
                st.integers(8, 12), st.sampled_from([8, 9, 16, 24]))
_v6 = st.builds(lambda a, n: str(ipaddress.ip_network(((0x20010db8 << 96) | (a << 80), n), strict=False)),
                st.integers(0, 3), st.sampled_from([32, 46, 48, 64]))
_net = st.one_of(_v4, _v6, st.just("any"))
_port = st.one_of(st.integers(0, 100).map(str),
                  st.tuples(st.integers(0, 100), st.integers(0, 50)).map(lambda t: f"{t[0]}-{t[0] + t[1]}"))
_times = st.sampled_from(["2026-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "2027-01-01T00:00:00Z",
                          "2028-01-01T00:00:00Z"])


@st.composite
def _period(draw: st.DrawFn) -> dict[str, str]:
    chosen = sorted(draw(st.sets(_times, min_size=1, max_size=2)))
    if len(chosen) == 2:
        return {"not_before": chosen[0], "not_after": chosen[1]}
    return {draw(st.sampled_from(["not_before", "not_after"])): chosen[0]}


_bounds = st.dictionaries(st.sampled_from(["attempts", "hoplimit"]), st.integers(0, 20), max_size=2).flatmap(
    lambda nums: st.dictionaries(st.sampled_from(["methods", "hosts"]),
                                 st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), max_size=2)
    .map(lambda lists: {**nums, **lists}))
_rate = st.fixed_dictionaries({}, optional={
    "pps": st.sampled_from([1, 10, 100.5]), "bps": st.sampled_from([1000, 5000]),
    "excess": st.sampled_from(["delay", "deny"])}).flatmap(
    lambda r: st.fixed_dictionaries(r and {k: st.just(v) for k, v in r.items()}, optional={
        **({"burst_packets": st.integers(1, 200)} if "pps" in r else {}),
        **({"burst_bytes": st.integers(1, 9000)} if "bps" in r else {})}))

docs = st.fixed_dictionaries({}, optional={
    "period": _period(),
    "vps": st.lists(st.sampled_from(["vp1", "vp2", "vp3"]), max_size=3),
    "tags": st.dictionaries(st.sampled_from(["site", "as"]), st.lists(st.sampled_from(["x", "y", "z"]), max_size=2),
                            max_size=2),
    "protocols": st.lists(_protos, max_size=5),
    "dst": st.lists(_net, max_size=4),
    "ports": st.lists(_port, max_size=3),
    "src": st.lists(_net, max_size=2),
    "spoof": st.booleans(),
    "max_sockets": st.integers(0, 20),
    "rate": _rate,
    "total": st.fixed_dictionaries({}, optional={"packets": st.integers(0, 100), "bytes": st.integers(0, 10**6),
                                                 "period_s": st.sampled_from([60, 3600, 86400])}),
    "primitives": st.dictionaries(st.sampled_from(["ping", "trace", "http", "*"]), _bounds, max_size=3),
    "monitors": st.lists(st.sampled_from(["0" * 64, "1" * 64, "f" * 64]), max_size=2),
})
privs = docs.map(parse)


@settings(max_examples=300, deadline=None)
@given(docs)
def test_round_trip(doc: dict) -> None:
    p = parse(doc)
    back = to_doc(p)
    assert parse(json.loads(json.dumps(back))) == p
    assert to_doc(parse(back)) == back


@settings(max_examples=300, deadline=None)
@given(privs, privs)
def test_intersection_is_within_both(a: Privileges, b: Privileges) -> None:
    both = intersect(a, b)
    assert widenings(both, a) == []
    assert widenings(both, b) == []
    assert intersect(b, a) == both
    assert intersect(both, a) == both  # idempotent: narrowing again changes nothing


@settings(max_examples=200, deadline=None)
@given(privs)
def test_identity_everything_and_nothing(x: Privileges) -> None:
    assert widenings(x, x) == []
    assert widenings(x, EVERYTHING) == []
    assert widenings(NOTHING, x) == []  # granting nothing is within any issuer


def test_everything_widens_nothing() -> None:
    reasons = widenings(EVERYTHING, NOTHING)
    assert "protocol udp is not granted to the issuer" in reasons
    assert "spoofs source addresses, the issuer may not" in reasons
    assert widenings(NOTHING, EVERYTHING) == []


_ADDRS = ["8.0.0.1", "9.128.0.1", "10.0.0.0", "12.255.255.255", "13.0.0.1", "2001:db8::1",
          "2001:db8:2::1", "2001:db8:3:ffff::1", "2001:db9::1", "::ffff:10.1.2.3"]
_PORTS = [0, 1, 7, 50, 99, 100, 120, 151, 65535]
_KIND_CASES = [("udp", None), ("tcp", None), ("tcp-listen", None), ("capture", None),
               ("raw", 1), ("raw", 6), ("raw", 17), ("raw", 99), ("raw", None)]


@settings(max_examples=300, deadline=None)
@given(privs, privs)
def test_intersection_allows_exactly_what_both_allow(a: Privileges, b: Privileges) -> None:
    both = intersect(a, b)
    for addr in _ADDRS:
        assert P.allows_dst(both, addr) == (P.allows_dst(a, addr) and P.allows_dst(b, addr)), addr
        own = ["192.0.2.1"]
        assert P.allows_src(both, addr, own) == (P.allows_src(a, addr, own) and P.allows_src(b, addr, own)), addr
    for port in _PORTS:
        assert P.allows_port(both, port) == (P.allows_port(a, port) and P.allows_port(b, port)), port
    for kind, proto in _KIND_CASES:
        assert P.allows_proto(both, kind, proto) == (P.allows_proto(a, kind, proto) and
                                                      P.allows_proto(b, kind, proto)), (kind, proto)
    for name in ("ping", "trace", "http", "dns"):
        ba, bb, bo = (P.primitive_bounds(x, name) for x in (a, b, both))
        assert (bo is None) == (ba is None or bb is None), name
        if bo is not None:
            assert set(bo) == set(ba) | set(bb)
            for key, value in bo.items():
                sides = [s[key] for s in (ba, bb) if key in s]
                if isinstance(value, list):
                    assert set(value) == set.intersection(*(set(v) for v in sides))
                else:
                    assert value == min(sides)
    for when in ("2026-03-01T00:00:00Z", "2026-09-01T00:00:00Z", "2027-06-01T00:00:00Z"):
        t = dt.datetime.fromisoformat(when)
        assert P.allows_time(both, t) == (P.allows_time(a, t) and P.allows_time(b, t))
    for vp, tags in (("vp1", {"site": "x"}), ("vp2", {"site": "y", "as": ["x", "z"]}), ("vp3", {})):
        assert P.allows_vp(both, vp, tags) == (P.allows_vp(a, vp, tags) and P.allows_vp(b, vp, tags))
    assert both.monitors == a.monitors | b.monitors


# ------------------------------------------------------ intersection examples

def test_prefix_intersection_keeps_the_more_specific() -> None:
    a = parse({"dst": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.0/24"]})
    b = parse({"dst": ["10.1.0.0/16", "10.2.3.0/24", "2001:db8:1::/48", "198.51.100.0/24"]})
    assert [str(n) for n in intersect(a, b).dst] == ["10.1.0.0/16", "10.2.3.0/24", "2001:db8:1::/48"]


def test_protocol_intersection() -> None:
    a = parse({"protocols": ["udp", "raw:*", "capture"]})
    b = parse({"protocols": ["udp", "raw:17", "tcp"]})
    assert intersect(a, b).protocols == {"udp", "raw:17"}
    assert intersect(a, a).protocols == {"udp", "raw:*", "capture"}


def test_limit_intersection() -> None:
    a = parse({"vps": ["vp1", "vp2"], "tags": {"site": ["lab", "ams"]}, "ports": ["0-100"], "max_sockets": 4,
               "rate": {"pps": 100, "excess": "delay"},
               "total": {"packets": 1000, "period_s": 86400},
               "period": {"not_before": "2026-01-01T00:00:00Z"}})
    b = parse({"vps": ["vp2", "vp3"], "tags": {"site": ["ams"], "as": ["64500"]}, "ports": ["50-200", "443"],
               "rate": {"pps": 10, "bps": 1000},
               "total": {"packets": 10, "bytes": 500, "period_s": 1},
               "period": {"not_after": "2027-01-01T00:00:00Z"}})
    c = intersect(a, b)
    assert c.vps == {"vp2"}
    assert c.tags == {"site": frozenset({"ams"}), "as": frozenset({"64500"})}
    assert c.ports == (PortRange(50, 100),)
    assert c.max_sockets == 4
    assert c.rate == Rate(pps=10.0, bps=1000.0, burst_packets=10, burst_bytes=1000, excess="deny")
    # smaller counts over the longer window: at least as strict as both
    assert c.total == Totals(packets=10, bytes=500, period_s=86400.0)
    assert (c.not_before, c.not_after) == (a.not_before, b.not_after)


def test_disjoint_periods_make_an_empty_period() -> None:
    a = parse({"period": {"not_before": "2026-01-01T00:00:00Z", "not_after": "2026-02-01T00:00:00Z"}})
    b = parse({"period": {"not_before": "2026-03-01T00:00:00Z", "not_after": "2026-04-01T00:00:00Z"}})
    c = intersect(a, b)
    assert c.not_before >= c.not_after  # type: ignore[operator]
    for month in (1, 2, 3):
        assert not P.allows_time(c, dt.datetime(2026, month, 15, tzinfo=dt.timezone.utc))
    assert "period: never" in P.explain(intersect(c, parse({"protocols": ["udp"]})))[0]
    with pytest.raises(PrivilegeError, match="not_before must be before not_after"):
        parse(to_doc(c))  # nobody issues an empty period on purpose


def test_primitive_intersection_with_star() -> None:
    a = parse({"primitives": {"*": {"attempts": 5}, "trace": {"hoplimit": 30}}})
    b = parse({"primitives": {"ping": {"attempts": 10, "methods": ["icmp-echo", "udp"]}, "trace": {}}})
    c = intersect(a, b)
    assert P.primitive_bounds(c, "ping") == {"attempts": 5, "methods": ["icmp-echo", "udp"]}
    assert P.primitive_bounds(c, "trace") == {"attempts": 5, "hoplimit": 30}
    assert P.primitive_bounds(c, "dns") is None  # only a has "*"
    assert P.primitive_bounds(a, "dns") == {"attempts": 5}


def test_mismatched_bound_kinds_are_an_error_not_a_crash() -> None:
    a = parse({"primitives": {"ping": {"attempts": 3}}})
    b = parse({"primitives": {"ping": {"attempts": ["x"]}}})
    with pytest.raises(PrivilegeError, match="primitives.ping.attempts: a maximum on one side"):
        intersect(a, b)


def test_spoof_intersection() -> None:
    spoof = parse({"spoof": True})
    some = parse({"src": ["198.51.100.0/24"]})
    c = intersect(spoof, some)
    assert not c.spoof and [str(n) for n in c.src] == ["198.51.100.0/24"]
    assert intersect(spoof, spoof).spoof


# ------------------------------------------------------------ widenings

def test_widening_reasons() -> None:
    parent = parse({"protocols": ["udp"], "dst": ["10.1.0.0/16"], "max_sockets": 16,
                    "rate": {"pps": 100}, "monitors": [DIGEST], "primitives": {"ping": {"attempts": 3}},
                    "ports": ["53"], "total": {"packets": 5, "period_s": 3600}})
    child = parse({"protocols": ["udp", "raw:1"], "dst": ["10.0.0.0/8"], "rate": {"pps": 1000},
                   "primitives": {"ping": {"attempts": 9}, "trace": {}}, "ports": ["53-54"],
                   "total": {"packets": 5, "period_s": 60}})
    reasons = widenings(child, parent)
    assert reasons == [
        "protocol raw:1 is not granted to the issuer",
        "dst 10.0.0.0/8 is not within the issuer's 10.1.0.0/16",
        "ports 53-54 are not within the issuer's 53",
        "no max_sockets limit, the issuer has 16",
        "rate.pps 1000 exceeds the issuer's 100",
        "rate.burst_packets 1000 exceeds the issuer's 100",
        "total.period_s 60 is shorter than the issuer's 3600 (the budget renews more often)",
        "primitive ping attempts 9 exceeds the issuer's 3",
        "primitive trace is not granted to the issuer",
        f"drops monitor {DIGEST} the issuer requires",
    ]


def test_split_prefixes_are_within_their_union() -> None:
    parent = Privileges(protocols=frozenset({"udp"}), dst=(ipaddress.ip_network("10.0.0.0/25"),
                                                          ipaddress.ip_network("10.0.0.128/25")))
    assert widenings(parse({"protocols": ["udp"], "dst": ["10.0.0.0/24"]}), parent) == []


def test_delay_is_wider_than_deny() -> None:
    assert widenings(parse({"protocols": ["udp"], "rate": {"pps": 1, "excess": "delay"}}),
                     parse({"protocols": ["udp"], "rate": {"pps": 1}})) == [
        "rate excess is delayed, the issuer's is denied"]


# ------------------------------------------------------------- explain

def test_explain_rich() -> None:
    assert P.explain(parse(RICH)) == [
        "period: from 2026-12-01T00:00:00Z until 2027-01-01T00:00:00Z",
        "on VPs: vp1, vp2",
        "VP tags: the VP must carry site=ams or lab",
        "may open: UDP, TCP connections, raw IP protocol 1 (ICMP)",
        "to destinations: 192.0.2.0/24, 2001:db8::/32",
        "destination ports: 53, 80, 33434-33534",
        "source addresses: the VP's own and 198.51.100.7/32 (no other spoofing)",
        "open sockets: at most 16",
        "rate: at most 100 packets/s (bursts of 50) and 125 kB/s = 1 Mbit/s (bursts of 125000 bytes); "
        "excess is delayed",
        "totals: at most 1000000 packets and 1000000000 bytes per day",
        "primitives: dns (servers: 192.0.2.53, resolver), http (hosts: www.example.org), "
        "ping (attempts ≤ 10, methods: icmp-echo), trace (hoplimit ≤ 32)",
        f"monitors that must run: {DIGEST[:16]}…",
    ]


def test_explain_nothing_and_everything() -> None:
    assert P.explain(NOTHING) == ["nothing at all"]
    lines = P.explain(EVERYTHING)
    assert "may open: UDP, TCP connections, TCP listening sockets, packet capture, raw IP, any protocol" in lines
    assert "to destinations: any address (IPv4 and IPv6)" in lines
    assert "source addresses: any (spoofing allowed)" in lines
    assert "rate: no limit" in lines and "open sockets: no limit" in lines
    assert "primitives: any primitive" in lines


def test_explain_limits_without_grants() -> None:
    lines = P.explain(parse({"max_sockets": 2}))
    assert "may open: nothing (no protocols)" in lines and "primitives: none" in lines


# -------------------------------------------------------------- checks

def test_allows_dst_families_and_mapped() -> None:
    p = parse({"dst": ["192.0.2.0/24", "2001:db8::/32"]})
    assert P.allows_dst(p, "192.0.2.0") and P.allows_dst(p, "192.0.2.255")
    assert not P.allows_dst(p, "192.0.3.0") and not P.allows_dst(p, "192.0.1.255")
    assert P.allows_dst(p, "2001:db8:ffff::1") and not P.allows_dst(p, "2001:db9::")
    assert P.allows_dst(p, "::ffff:192.0.2.7")  # mapped: checked as the IPv4 address on the wire
    assert not P.allows_dst(p, "::ffff:192.0.3.7")
    v6only = parse({"dst": ["::ffff:0:0/96"]})
    assert not P.allows_dst(v6only, "::ffff:192.0.2.7")  # a v6 prefix never grants v4
    assert not P.allows_dst(p, "not an address") and not P.allows_dst(p, "")
    assert not P.allows_dst(NOTHING, "192.0.2.1")
    assert P.allows_dst(EVERYTHING, "0.0.0.0") and P.allows_dst(EVERYTHING, "ffff::")


def test_allows_src() -> None:
    p = parse({"src": ["198.51.100.0/24"]})
    own = ["192.0.2.1", "2001:db8::1"]
    assert P.allows_src(p, "192.0.2.1", own)
    assert P.allows_src(p, "2001:db8:0::1", own)  # the same address written differently
    assert P.allows_src(p, "198.51.100.9", own)
    assert P.allows_src(p, "0.0.0.0", own) and P.allows_src(p, "::", own)  # kernel picks an own one
    assert not P.allows_src(p, "203.0.113.1", own)
    assert not P.allows_src(NOTHING, "203.0.113.1", own)
    assert P.allows_src(parse({"spoof": True}), "203.0.113.1", own)
    assert not P.allows_src(p, "garbage", own)


def test_allows_port() -> None:
    p = parse({"ports": ["53", "33434-33534"]})
    assert [P.allows_port(p, x) for x in (52, 53, 54, 33433, 33434, 33534, 33535)] == [
        False, True, False, False, True, True, False]
    assert P.allows_port(NOTHING, 65535)  # no ports limit: any
    assert not P.allows_port(parse({"ports": []}), 80)


def test_allows_proto() -> None:
    p = parse({"protocols": ["udp", "raw:1"]})
    assert P.allows_proto(p, "udp") and not P.allows_proto(p, "tcp") and not P.allows_proto(p, "tcp-listen")
    assert P.allows_proto(p, "raw", 1) and not P.allows_proto(p, "raw", 17) and not P.allows_proto(p, "raw", None)
    star = parse({"protocols": ["raw:*"]})
    assert P.allows_proto(star, "raw", 255) and P.allows_proto(star, "raw", None)
    assert not P.allows_proto(star, "capture")
    with pytest.raises(PrivilegeError, match="socket kind 'sctp'"):
        P.allows_proto(p, "sctp")


def test_allows_vp() -> None:
    p = parse({"vps": ["vp1"], "tags": {"site": ["lab", "ams"]}})
    assert P.allows_vp(p, "vp1", {"site": "lab"})
    assert P.allows_vp(p, "vp1", {"site": ["x", "ams"]})
    assert not P.allows_vp(p, "vp1", {"site": "nyc"}) and not P.allows_vp(p, "vp1", {})
    assert not P.allows_vp(p, "vp2", {"site": "lab"})
    assert P.allows_vp(NOTHING, "anything", {})


def test_checks_work_on_directly_built_values() -> None:
    p = Privileges(protocols=frozenset({"udp"}), dst=(ipaddress.ip_network("10.0.0.0/8"),),
                   ports=(PortRange(80, 90), PortRange(10, 20)))
    assert P.allows_dst(p, "10.9.9.9") and P.allows_port(p, 15) and P.allows_port(p, 85)
    assert not P.allows_port(p, 50)


_json = st.recursive(st.none() | st.booleans() | st.integers(-5, 70000) | st.integers() | st.floats(allow_nan=True)
                     | st.text(max_size=12) | st.sampled_from(["any", "*", "udp", "raw:1", "10.0.0.0/8", "1-2",
                                                              "2026-01-01T00:00:00Z", "resolver"]),
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
                     max_leaves=12)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(list(P._TOP_KEYS)), _json, max_size=4))
def test_arbitrary_input_is_parsed_or_refused_never_crashes(doc: dict) -> None:
    try:
        p = parse(doc)
    except PrivilegeError as exc:
        assert str(exc).startswith("privileges")
    else:
        assert parse(to_doc(p)) == p


def test_checks_are_fast() -> None:
    import time
    p = parse({"dst": [f"10.{i // 256}.{i % 256}.0/24" for i in range(0, 4000, 2)], "ports": ["1-100", "200"]})
    P.allows_dst(p, "10.0.0.1")
    t0 = time.perf_counter()
    for _ in range(20000):
        P.allows_dst(p, "10.3.4.5")
        P.allows_port(p, 150)
    per_call = (time.perf_counter() - t0) / 40000
    assert per_call < 20e-6, per_call  # a generous ceiling; about 0.5 µs on a laptop
