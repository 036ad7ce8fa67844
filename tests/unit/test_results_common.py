"""Addr and the ns/µs time helpers."""

import datetime as dt
import ipaddress

import pytest

from marionet.results.common import (Addr, datetime_to_ns, ns_to_datetime,
                                     ns_to_ms_str, ns_to_timedelta,
                                     ns_to_timeval, seconds_to_ns,
                                     timeval_to_ns)


def test_addr_basics():
    a = Addr("127.0.0.1")
    assert str(a) == "127.0.0.1" and repr(a) == "Addr('127.0.0.1')"
    assert a.is_ipv4() and not a.is_ipv6() and a.is_loopback()
    assert a == Addr(ipaddress.ip_address("127.0.0.1")) == Addr(bytes([127, 0, 0, 1]))
    assert Addr(Addr("::1")) == Addr("::1")


def test_addr_equals_canonical_string_and_hashes_like_it():
    a = Addr("::1")
    assert a == "::1" and "::1" == a
    assert a != "0::1"  # non-canonical spelling: documented
    assert a in {"::1"} and {"::1": 5}[a] == 5
    assert hash(a) == hash("::1")
    assert a != ipaddress.ip_address("::1")


def test_addr_ipv4_mapped_prints_like_inet_ntop():
    assert str(Addr("::ffff:1.2.3.4")) == "::ffff:1.2.3.4"
    assert Addr("::ffff:1.2.3.4") == "::ffff:1.2.3.4"


def test_addr_ordering_v4_before_v6():
    addrs = [Addr("::1"), Addr("10.0.0.2"), Addr("10.0.0.10"), Addr("1.1.1.1")]
    assert [str(a) for a in sorted(addrs)] == ["1.1.1.1", "10.0.0.2", "10.0.0.10", "::1"]
    with pytest.raises(TypeError):
        Addr("1.1.1.1") < "2.2.2.2"  # noqa: B015


@pytest.mark.parametrize("text,rfc1918,reserved,linklocal", [
    ("10.1.2.3", True, True, False),
    ("172.16.0.1", True, True, False),
    ("172.32.0.1", False, False, False),
    ("192.168.1.1", True, True, False),
    ("8.8.8.8", False, False, False),
    ("100.64.0.1", False, True, False),
    ("224.0.0.1", False, True, False),
    ("240.0.0.1", False, True, False),
    ("169.254.1.1", False, True, True),
    ("127.0.0.1", False, True, False),
    ("fe80::1", False, True, True),
    ("2001:db8::1", False, True, False),
    ("2606:4700::1", False, False, False),
])
def test_addr_predicates(text, rfc1918, reserved, linklocal):
    a = Addr(text)
    assert a.is_rfc1918() is rfc1918
    assert a.is_reserved() is reserved
    assert a.is_linklocal() is linklocal


@pytest.mark.parametrize("bad", ["", "1.2.3", "not an ip", "1.2.3.4.5", "::g"])
def test_addr_bad_text(bad):
    with pytest.raises(ValueError, match="not an IP address"):
        Addr(bad)


@pytest.mark.parametrize("bad", [None, 1.5, [], True])
def test_addr_bad_type(bad):
    with pytest.raises(TypeError):
        Addr(bad)


def test_addr_bad_packed():
    with pytest.raises(ValueError):
        Addr(b"\x01\x02\x03")


def test_times_floor_to_microseconds():
    ns = 1_700_000_000_123_456_789
    d = ns_to_datetime(ns)
    assert d.tzinfo is dt.timezone.utc
    assert d == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.timezone.utc)
    assert datetime_to_ns(d) == ns - 789
    assert ns_to_timeval(ns) == {"sec": 1_700_000_000, "usec": 123456}
    assert timeval_to_ns(1_700_000_000, 123456) == ns - 789
    assert ns_to_timedelta(1_999) == dt.timedelta(microseconds=1)
    assert ns_to_timeval(-1) == {"sec": -1, "usec": 999999}


def test_naive_datetime_refused():
    with pytest.raises(ValueError, match="naive"):
        datetime_to_ns(dt.datetime(2020, 1, 1))


def test_ms_text_has_three_decimals():
    assert ns_to_ms_str(258_000) == "0.258"
    assert ns_to_ms_str(50_000) == "0.050"
    assert ns_to_ms_str(1_000_000) == "1.000"
    assert ns_to_ms_str(12_345_678_999) == "12345.678"
    assert ns_to_ms_str(-1_000) == "-0.001"


def test_seconds_to_ns():
    assert seconds_to_ns(1.5) == 1_500_000_000
    assert seconds_to_ns(dt.timedelta(milliseconds=2)) == 2_000_000
    with pytest.raises(TypeError):
        seconds_to_ns("1")
