"""Wire codec: round trips, framing across arbitrary splits, hostile input."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from marionet.wire import FrameDecoder, ProtocolError, encode, encode_many
from marionet.wire import messages as m

ints = st.integers(min_value=0, max_value=2**63 - 1)
opt_int = st.none() | ints
addr = st.none() | st.sampled_from(["127.0.0.1", "::1", "10.0.0.1", "fd00::2"])

send = st.builds(
    m.NSend, id=ints, sock=ints, data=st.binary(max_size=256), dst=addr,
    port=st.none() | st.integers(0, 65535), at=opt_int, tag=opt_int,
    ttl=st.none() | st.integers(0, 255), tos=st.none() | st.integers(0, 255),
    df=st.none() | st.booleans(),
)
ndata = st.builds(
    m.NData, sock=ints, time_ns=ints, ts_source=st.sampled_from(["kernel", "user"]),
    data=st.binary(max_size=256), peer=addr, port=st.none() | st.integers(0, 65535),
)
ntag = st.builds(
    m.NTag, sock=ints, tag=ints, time_ns=opt_int,
    ts_source=st.none() | st.sampled_from(["kernel", "user"]), nbytes=ints,
    error=st.none() | st.text(max_size=20),
)
nopen = st.builds(
    m.NOpen, id=ints, proto=st.sampled_from(["udp", "tcp", "raw", "tcp-listen"]),
    family=st.sampled_from([4, 6]), ipproto=st.none() | st.integers(0, 255),
    hdrincl=st.booleans(), laddr=addr, lport=st.integers(0, 65535),
)
ncap = st.builds(
    m.NCap, id=ints, sock=ints, filter=st.none() | st.text(max_size=40),
    program=st.none() | st.lists(st.tuples(*[st.integers(0, 2**16 - 1)] * 2 + [st.integers(0, 255)] * 0 + [st.integers(0, 255), st.integers(0, 2**32 - 1)]), max_size=5),
    until=opt_int,
)
error = st.builds(m.Error, id=ints, code=st.text(max_size=10), reason=st.text(max_size=50))
ndrop = st.builds(m.NDrop, time_ns=ints, count=ints, nbytes=ints,
                  kinds=st.dictionaries(st.text(max_size=8), ints, max_size=3))
sendv = st.builds(m.NSendV, id=ints, sends=st.lists(st.builds(
    m.SendItem, sock=ints, data=st.binary(max_size=64), at=opt_int, tag=opt_int), max_size=5))
any_msg = st.one_of(send, ndata, ntag, nopen, ncap, error, ndrop, sendv,
                    st.builds(m.Ping, id=ints), st.builds(m.Info, id=ints),
                    st.builds(m.Hello, id=ints, version=ints, role=st.text(max_size=10)))


@given(st.lists(any_msg, min_size=1, max_size=8), st.lists(st.integers(1, 50), max_size=20))
@settings(max_examples=300)
def test_round_trip_any_split(msgs, cuts):
    """Any sequence of messages, cut into arbitrary chunks, decodes back."""
    blob = encode_many(msgs)
    dec = FrameDecoder()
    out = []
    pos = 0
    for c in cuts:
        out += dec.feed(blob[pos : pos + c])
        pos += c
    out += dec.feed(blob[pos:])
    assert out == msgs
    assert dec.buffered == 0


@given(st.binary(max_size=600))
@settings(max_examples=1000)
def test_garbage_never_crashes(data):
    """Random bytes either decode to messages or raise ProtocolError."""
    dec = FrameDecoder(max_frame=4096)
    try:
        for msg in dec.feed(data):
            assert isinstance(msg, m.Message)
    except ProtocolError as exc:
        assert exc.code in {"oversized", "malformed", "bad-message", "unknown-message"}
        assert dec.broken


@given(st.binary(min_size=1, max_size=300))
@settings(max_examples=1000)
def test_garbage_bodies_in_valid_frames(body):
    """A well-formed length with a hostile body is a ProtocolError, not a crash."""
    frame = len(body).to_bytes(4, "big") + body
    try:
        FrameDecoder().feed(frame)
    except ProtocolError:
        pass


@given(st.lists(st.one_of(st.integers(-2**63, 2**64 - 1), st.text(max_size=5), st.binary(max_size=5), st.none(), st.booleans()), max_size=12),
       st.sampled_from([t.__struct_config__.tag for t in m.ALL_MESSAGES]))
@settings(max_examples=1000)
def test_known_tags_with_wrong_fields(fields, tag):
    body = msgspec.msgpack.encode([tag, *fields])
    try:
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    except ProtocolError as exc:
        assert exc.code in {"bad-message", "malformed"}


def test_oversized_rejected_before_body():
    dec = FrameDecoder(max_frame=1000)
    with pytest.raises(ProtocolError) as ei:
        dec.feed((10**6).to_bytes(4, "big"))  # only the header has arrived
    assert ei.value.code == "oversized"
    assert dec.broken
    with pytest.raises(ProtocolError):
        dec.feed(b"more")


def test_unknown_message_type():
    body = msgspec.msgpack.encode(["frobnicate", 1, 2])
    with pytest.raises(ProtocolError) as ei:
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)
    assert ei.value.code == "unknown-message"


def test_empty_frame_and_truncated_body():
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    dec = FrameDecoder()
    assert dec.feed(b"\x00\x00\x00\x05\x93") == []  # incomplete: waits
    assert dec.buffered == 1


def test_notification_common_fields():
    for n in [m.NData(sock=1, time_ns=2, ts_source="kernel", data=b"x"),
              m.NTag(sock=1, tag=3, time_ns=4, ts_source="kernel"),
              m.NDrop(time_ns=1, count=2, nbytes=3),
              m.NStat(sock=1, time_ns=2, state="established")]:
        for attr in ("kind", "sock", "time_ns", "tag", "data", "peer", "ts_source"):
            getattr(n, attr)
    assert m.NData(sock=1, time_ns=2, ts_source="kernel", data=b"").kind == "ndata"
    assert m.NTag(sock=1, tag=3, time_ns=4, ts_source="kernel").kind == "ntag"


def test_single_encode_matches_many():
    a = m.Ping(id=1)
    b = m.Info(id=2)
    assert encode(a) + encode(b) == encode_many([a, b])
