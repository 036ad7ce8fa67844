"""The lab's check of the programs a spec needs, before anything is made (no root needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from marionet.lab import parse_spec
from marionet.lab.labcli import default_spec_path
from marionet.lab.spec import linear_path, load_spec, small_world
from marionet.lab.tools import MissingTool, check_tools, find_missing, missing_message, needed_tools

DNS_SPEC = """
[lab]
controller = false
{extra}

[[vp]]
name = "vp1"

[[host]]
name = "ns"

[[link]]
a = "vp1"
b = "ns"

[[service]]
host = "ns"
kind = "dns"
options = {{ zone = "lab.example" }}
"""


def test_empty_path_reports_every_tool_with_its_package(tmp_path, monkeypatch):
    """With PATH an empty directory, the real lookup finds nothing and says which package to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    spec = linear_path(2, rate="10mbit")
    missing = find_missing(needed_tools(spec))
    assert ("ip", "iproute2") in missing and ("tc", "iproute2") in missing and ("ping", "iputils-ping") in missing
    with pytest.raises(MissingTool) as ei:
        check_tools(spec)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("lab needs `ip` (Debian package iproute2)")
    assert msg.endswith("install them with apt-get install iproute2 dash iputils-ping")


def test_one_missing_tool_is_one_clear_line():
    spec = linear_path(1, rate="10mbit")
    with pytest.raises(MissingTool) as ei:
        check_tools(spec, which=lambda t: None if t == "tc" else f"/usr/sbin/{t}")
    assert str(ei.value) == "lab needs `tc` (Debian package iproute2); install it with apt-get install iproute2"
    assert ei.value.missing == [("tc", "iproute2")]


def test_needed_tools_follow_the_spec():
    plain = needed_tools(linear_path(1))
    assert plain == ["ip", "sh", "ping"]
    assert "tc" in needed_tools(linear_path(1, rate="1mbit"))
    assert {"iptables", "ip6tables"} <= set(needed_tools(linear_path(2, unresponsive=(1,))))
    # VPs dialling the lab's controller are fenced in by iptables on their management link
    assert "iptables" in needed_tools(small_world()) and "ip6tables" not in needed_tools(small_world())
    # a lab whose links all go through the forwarder has nothing to warm up with ping
    assert "ping" not in needed_tools(linear_path(1, delay="5ms"))
    default = needed_tools(load_spec(default_spec_path()))
    assert {"nsd", "nsd-checkzone", "nsd-checkconf", "nginx", "unbound", "unbound-checkconf", "tc"} <= set(default)
    assert "iperf3" not in default  # its bulk service is the Python one


def test_dns_service_brings_the_resolver_unless_turned_off():
    on = parse_spec(DNS_SPEC.format(extra=""))
    assert on.resolver_host() == "ns" and "unbound" in needed_tools(on)
    off = parse_spec(DNS_SPEC.format(extra="resolver = false"))
    assert off.resolver_host() is None and "unbound" not in needed_tools(off) and "nsd" in needed_tools(off)
    moved = parse_spec(DNS_SPEC.format(extra='resolver = "vp1"'))
    assert moved.resolver_host() == "vp1"


def test_iperf3_bulk_needs_iperf3():
    spec = parse_spec(DNS_SPEC.format(extra="") + '\n[[service]]\nhost = "ns"\nkind = "bulk"\noptions = { impl = "iperf3" }\n')
    assert "iperf3" in needed_tools(spec)


def test_missing_message_names_each_package_once():
    assert missing_message([("nsd", "nsd"), ("nsd-checkconf", "nsd")]) == (
        "lab needs `nsd` (Debian package nsd) and `nsd-checkconf` (Debian package nsd); "
        "install them with apt-get install nsd")


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 not installed")
def test_lab_up_check_reports_missing_tools(tmp_path):
    """`marionet lab up --check` (no root needed) fails with the same line when a program is missing."""
    spec = tmp_path / "lab.toml"
    spec.write_text(DNS_SPEC.format(extra=""))
    env = {"PATH": str(tmp_path)}  # nothing on it
    cp = subprocess.run([sys.executable, "-m", "marionet.lab.labcli", "lab", "up", "--check", str(spec)],
                        capture_output=True, text=True, env=env, timeout=60)
    assert cp.returncode == 1
    assert cp.stderr.strip().startswith("error: lab needs `ip` (Debian package iproute2)"), cp.stderr
    assert "apt-get install iproute2 dash" in cp.stderr and "unbound" in cp.stderr


def test_resolver_spec_errors_name_the_line():
    from marionet.lab import SpecError

    with pytest.raises(SpecError, match=r"line 4: lab.resolver: unknown node 'nope'"):
        parse_spec(DNS_SPEC.format(extra='resolver = "nope"'))
    text = DNS_SPEC.format(extra='resolver = "vp1"').split("[[service]]")[0]
    with pytest.raises(SpecError, match="no dns service"):
        parse_spec(text)
    with pytest.raises(SpecError, match="must be"):
        parse_spec(DNS_SPEC.format(extra="resolver = 3"))


# ------------------------------------------- the resolver's plan (also no root)


def test_resolver_addresses_avoid_the_specs_ranges_and_are_routed():
    from marionet.lab.plan import make_plan, truth

    text = DNS_SPEC.format(extra="").replace(
        'b = "ns"\n', 'b = "ns"\nipv4 = ["10.53.0.1/24", "10.53.0.2/24"]\nipv6 = ["fd00:53::1/64", "fd00:53::2/64"]\n', 1)
    plan = make_plan(parse_spec(text), "abcd")
    assert plan.resolver is not None and plan.resolver.node == "ns"
    assert plan.resolver.addresses == ["10.53.1.53", "fd00:53:0:1::53"]
    assert {r.dst for r in plan.routes["vp1"]} >= {"10.53.1.0/24", "fd00:53:0:1::/64"}
    assert truth(plan)["resolver"] == {"node": "ns", "ipv4": "10.53.1.53", "ipv6": "fd00:53:0:1::53"}
    assert make_plan(linear_path(1), "abcd").resolver is None
