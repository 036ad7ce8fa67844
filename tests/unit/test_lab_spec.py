"""Lab spec: parsing, validation with line numbers, planning and ground truth (no root)."""

from __future__ import annotations

import pytest

from marionet.lab import SpecError, diamond_path, linear_path, parse_spec
from marionet.lab.balancer import bytecode, flow_bucket, hash_program
from marionet.lab.labcli import default_spec_path
from marionet.lab.plan import make_plan, paths, truth
from marionet.lab.spec import load_spec, parse_duration_ms, parse_rate_bps

GOOD = """\
[lab]
name = "t"

[[host]]
name = "a"

[[router]]
name = "r"

[[host]]
name = "b"

[[link]]
a = "a"
b = "r"
delay = "20ms"

[[link]]
a = "r"
b = "b"
rate = "50mbit"
"""


def _line_of(text: str, needle: str) -> int:
    return [i for i, l in enumerate(text.splitlines(), 1) if needle in l][-1]


def test_good_spec_parses():
    s = parse_spec(GOOD)
    assert set(s.nodes) == {"a", "r", "b"}
    assert s.links[0].delay_ms == 20 and s.links[0].impaired
    assert s.links[1].rate_bps == 50_000_000 and not s.links[1].impaired


@pytest.mark.parametrize("bad, needle, words", [
    (GOOD.replace('b = "r"\ndelay', 'b = "nowhere"\ndelay'), 'b = "nowhere"', "unknown node"),
    (GOOD.replace('rate = "50mbit"', 'rate = "-5mbit"'), "rate =", "rate"),
    (GOOD.replace('rate = "50mbit"', 'rate = "900tbit"'), "rate =", "impossible"),
    (GOOD.replace('delay = "20ms"', 'delay = true'), "delay =", "duration"),
    (GOOD.replace('delay = "20ms"', 'delay = "20 parsecs"'), "delay =", "duration"),
    (GOOD.replace('delay = "20ms"', 'loss = 1.5'), "loss =", "loss"),
    (GOOD.replace('[[link]]\na = "a"\n', '[[link]]\n'), 'b = "r"', "nowhere"),
    (GOOD.replace('name = "b"', 'name = "a"'), 'name = "a"', "duplicate node"),
    (GOOD.replace('delay = "20ms"', 'colour = "red"'), "colour", "unknown key"),
    (GOOD + '\n[[service]]\nhost = "ghost"\nkind = "dns"\n', 'host = "ghost"', "unknown node"),
    (GOOD + '\n[[router]]\nname = "lonely"\n', 'name = "lonely"', "no links"),
])
def test_bad_specs_name_the_line(bad, needle, words):
    with pytest.raises(SpecError) as ei:
        parse_spec(bad)
    line = ei.value.line
    assert line is not None, str(ei.value)
    # the line named is the offending key or the header of its table
    expected = _line_of(bad, needle)
    assert line == expected or bad.splitlines()[line - 1].startswith("[["), (str(ei.value), expected)
    assert words in str(ei.value)
    assert f"line {line}" in str(ei.value)


def test_duplicate_address_names_line():
    text = GOOD.replace('delay = "20ms"', 'ipv4 = ["10.9.0.1/24", "10.9.0.2/24"]').replace(
        'rate = "50mbit"', 'ipv4 = ["10.9.0.2/24", "10.9.0.3/24"]')
    with pytest.raises(SpecError) as ei:
        parse_spec(text)
    assert "duplicate address 10.9.0.2" in str(ei.value)
    assert ei.value.line == [i for i, l in enumerate(text.splitlines(), 1) if "10.9.0.3" in l][0]


def test_toml_syntax_error_has_line():
    with pytest.raises(SpecError) as ei:
        parse_spec(GOOD + "\n[[link]\n")
    assert ei.value.line is not None


def test_units():
    assert parse_duration_ms("250us") == 0.25 and parse_duration_ms(3) == 3.0 and parse_duration_ms("1s") == 1000
    assert parse_rate_bps("1gbit") == 10**9 and parse_rate_bps("1mbps") == 8 * 10**6


def test_linear_truth_and_routes():
    p = make_plan(linear_path(3), "0000")
    tgt = str(p.iface("target").ipv4.ip)
    assert paths(p, "client", tgt) == [["10.1.0.2", "10.1.1.2", "10.1.2.2", tgt]]
    assert paths(p, "client", str(p.iface("target").ipv6.ip))[0][0] == "fd00:0:0:1::2"
    # every node can reach every subnet
    for node, routes in p.routes.items():
        attached = {str(i.ipv4.network) for i in p.ifaces[node]}
        assert {r.dst for r in routes if r.family == 4} | attached == {f"10.1.{k}.0/24" for k in range(4)}


def test_unresponsive_and_roundtrip():
    s = linear_path(2, unresponsive=(2,), delay="5ms", impair_link=1)
    p = make_plan(s, "0000")
    t = truth(p)
    path = [x for x in t["paths"] if x["src"] == "client" and x["dst"] == "target" and x["family"] == 4][0]
    assert path["paths"][0][1] is None and path["one_way_delay_ms"] == [5.0, 5.0]
    s2 = parse_spec(s.to_toml())
    assert s2.nodes["r2"].unresponsive and s2.links[1].delay_ms == 5


def test_diamond_paths():
    p = make_plan(diamond_path(3, 2), "0000")
    ps = paths(p, "client", str(p.iface("target").ipv4.ip))
    assert len(ps) == 3 and len({tuple(x) for x in ps}) == 3
    assert all(len(x) == 5 for x in ps)


def test_flow_hash_program_shape():
    prog = hash_program(4, 3, 1)
    assert bytecode(prog).startswith(f"{len(prog)},")
    buckets = {flow_bucket(4, bytes([10, 1, 0, 1]), bytes([10, 1, 2, 2]), 1, bytes([8, 0, c >> 8, c & 255]), 3)
               for c in range(64)}
    assert buckets == {0, 1, 2}


def test_default_spec_valid():
    s = load_spec(default_spec_path())
    assert sum(n.kind == "vp" for n in s.nodes.values()) >= 4
    assert len({n.cc for n in s.nodes.values() if n.kind == "vp"}) >= 4
    t = truth(make_plan(s, "0000"))
    assert any(not x["deterministic"] for x in t["paths"])


def test_rtt_bounds_add_the_forwarders_figures_per_direction():
    from marionet.lab import rtt_bounds_ms
    from marionet.lab.plan import forwarder_truth

    t = truth(make_plan(linear_path(2, delay="3ms", impair_link=1), "0000"))
    assert [ln["forwarder"] for ln in t["links"]] == [False, True, False]
    assert rtt_bounds_ms(t) == (6.0, 6.0)            # configured only: the forwarder has not reported yet
    stats = {"links": {"1": {"send_late_us": {"n": 10, "mean": 5.0, "median": 4.0},
                             "write_us": {"n": 10, "mean": 20.0, "median": 18.0}}}}
    forwarder_truth(t, {"send_late_us": {"n": 5, "mean": 1.0}}, stats)
    link = t["links"][1]
    assert link["added_us"]["source"] == "live" and link["delivery_us"]["mean"] == 20.0
    lo, hi = rtt_bounds_ms(t)
    assert lo == pytest.approx(6.0 + 2 * 0.005) and hi == pytest.approx(lo + 2 * 0.020)
    assert rtt_bounds_ms(t, links=[0]) == (0.0, 0.0)  # an undelayed link adds nothing configured
    assert "delivery_us" in t["forwarder"]["model"]
