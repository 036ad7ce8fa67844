"""The lab's NTP and SNMP services: wire helpers, option checks, tools.

The daemons themselves answer in tests/integration/test_udpprobe_lab.py.
"""

from __future__ import annotations

import pytest

from marionet.lab import parse_spec
from marionet.lab.services import KINDS, ServiceConfigError
from marionet.lab.tools import needed_tools, package_of
from marionet.lab.udpservices import (NTP_EPOCH_OFFSET, SYS_DESCR, SYS_NAME, _ber_oid, _oid_text, ntp_request,
                                      parse_ntp, parse_snmp, snmp_get, start_ntp, start_snmp)


def test_ntp_request_carries_its_transmit_time() -> None:
    t = 1_796_635_188_807_707_777
    req = ntp_request(t)
    assert len(req) == 48 and req[0] == 0x23  # LI 0, version 4, mode 3
    r = parse_ntp(req)
    assert (r.mode, r.version, r.stratum) == (3, 4, 0)
    assert abs(r.transmit_ns - t) <= 1  # 2^-32 s resolution, truncated
    assert int.from_bytes(req[40:44], "big") == t // 10**9 + NTP_EPOCH_OFFSET
    with pytest.raises(ValueError, match="48 bytes"):
        parse_ntp(req[:47])


def test_snmp_get_round_trips() -> None:
    msg = snmp_get([SYS_DESCR, SYS_NAME, "1.3.6.1.4.1.99999.300.1"], "public", request_id=70000)
    r = parse_snmp(msg)
    assert (r.version, r.community, r.pdu_type, r.request_id, r.error_status) == (1, "public", 0xA0, 70000, 0)
    assert r.varbinds == {SYS_DESCR: None, SYS_NAME: None, "1.3.6.1.4.1.99999.300.1": None}
    assert _oid_text(_ber_oid("1.3.6.1.2.1.1.1.0")[2:]) == "1.3.6.1.2.1.1.1.0"
    assert _ber_oid(SYS_DESCR) == bytes.fromhex("06082b06010201010100")  # sysDescr.0 as every agent knows it
    long = snmp_get(["1.3.6." + ".".join(["1"] * 200)], "c" * 300)  # lengths in the long form
    assert parse_snmp(long).community == "c" * 300
    for bad in (b"", b"\x30", b"\x02\x01\x00", msg[:-3], b"\x30\x85" + bytes(8)):
        with pytest.raises(ValueError):
            parse_snmp(bad)


@pytest.mark.parametrize("start,options,field", [
    (start_ntp, {"stratum": 0}, "ntp.stratum"),
    (start_ntp, {"stratum": 16}, "ntp.stratum"),
    (start_ntp, {"port": 0}, "ntp.port"),
    (start_snmp, {"community": "pub lic"}, "snmp.community"),
    (start_snmp, {"sysdescr": "two\nlines"}, "snmp.sysdescr"),
    (start_snmp, {"sysname": ""}, "snmp.sysname"),
    (start_snmp, {"syslocation": 5}, "snmp.syslocation"),
])
def test_bad_options_name_the_field(tmp_path, start, options, field) -> None:
    # checked before the namespace is touched: a missing one would fail later
    with pytest.raises(ServiceConfigError, match=field):
        start("no-such-netns-for-this-test", "t", tmp_path, {"addresses": ["192.0.2.1"], **options})


def test_kinds_and_tools() -> None:
    assert {"ntp", "snmp"} <= set(KINDS)
    spec = parse_spec("""
[lab]
name = "svc"
[[host]]
name = "a"
[[host]]
name = "b"
[[link]]
a = "a"
b = "b"
[[service]]
host = "b"
kind = "ntp"
[[service]]
host = "b"
kind = "snmp"
options = { sysdescr = "x" }
""")
    need = needed_tools(spec)
    assert "chronyd" in need and "snmpd" in need
    assert package_of("chronyd") == "chrony" and package_of("snmpd") == "snmpd"
