"""The endpoint's resolver list: resolv.conf parsing and info()."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from marionet.endpoint.resolvconf import MAX_RESOLVERS, parse_resolvers, read_resolvers


def test_nameservers_in_order_canonical_and_once():
    text = """
# generated
search lab.example example
options edns0 trust-ad
nameserver 192.0.2.53
nameserver   2001:DB8:0::53   # trailing comment
;nameserver 192.0.2.1
nameserver 192.0.2.53
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
domain example
"""
    assert parse_resolvers(text) == ["192.0.2.53", "2001:db8::53", "fe80::1%eth0"]


def test_at_most_max_resolvers():
    text = "".join(f"nameserver 192.0.2.{i}\n" for i in range(1, 40))
    assert len(parse_resolvers(text)) == MAX_RESOLVERS


def test_missing_or_unreadable_file_gives_none(tmp_path):
    assert read_resolvers(str(tmp_path / "absent")) == []
    assert read_resolvers(str(tmp_path)) == []  # a directory
    (tmp_path / "bin").write_bytes(b"nameserver 192.0.2.7\n\xff\xfe\x00garbage\n")
    assert read_resolvers(str(tmp_path / "bin")) == ["192.0.2.7"]


@given(st.text(max_size=400))
def test_any_text_parses_to_valid_addresses(text):
    import ipaddress

    for addr in parse_resolvers(text):
        ipaddress.ip_address(addr)


async def test_info_reports_the_configured_file(tmp_path):
    from marionet.endpoint.daemon import EndpointConfig
    from marionet.endpoint.local import native_session

    conf = tmp_path / "resolv.conf"
    conf.write_text("nameserver 127.0.0.53\n")
    async with native_session(EndpointConfig(name="t", resolv_conf=str(conf))) as s:
        assert (await s.info()).resolvers == ["127.0.0.53"]
        conf.write_text("nameserver ::1\n")  # read when asked: a changed file shows
        assert (await s.info()).resolvers == ["::1"]
