"""marionet.wire.skew and the endpoint's skew option, without a network."""

from __future__ import annotations

import pytest

from marionet.endpoint.run import clock_skew_from_env
from marionet.wire import messages as m
from marionet.wire.skew import shift


def test_outgoing_times_shift_and_durations_do_not() -> None:
    pong = m.Pong(id=1, t_rx=1000, t_tx=2000)
    out = shift(pong, 50)
    assert (out.t_rx, out.t_tx, out.id) == (1050, 2050, 1)
    assert (pong.t_rx, pong.t_tx) == (1000, 2000)  # copied, not changed in place
    end = m.NCountEnd(sock=3, time_ns=10, state="closed", nbytes=5, first_ns=1, last_ns=2, mark_ns=0,
                      samples=[(100, 1), (200, 5)])
    e = shift(end, 7)
    assert (e.time_ns, e.first_ns, e.last_ns, e.mark_ns) == (17, 8, 9, 7) and e.samples == [(107, 1), (207, 5)]
    tag = m.NTag(sock=1, tag=2, time_ns=None, ts_source=None, at=5)
    assert shift(tag, 3).time_ns is None and shift(tag, 3).at == 8
    count = m.NCount(id=1, sock=1, interval_ns=10)
    assert shift(count, 99) is count  # no absolute time: untouched


def test_incoming_at_and_until_shift_back() -> None:
    sv = m.NSendV(id=1, sends=[m.SendItem(sock=1, data=b"x", at=1000), m.SendItem(sock=1, data=b"y")])
    got = shift(sv, -50)
    assert [i.at for i in got.sends] == [950, None]
    assert shift(m.NCap(id=1, sock=2, until=500), -50).until == 450
    o = m.NOpen(id=1, proto="tcp", timeout_ns=1000) if "proto" in m.NOpen.__struct_fields__ else None
    if o is not None:
        assert shift(o, -50).timeout_ns == 1000


def test_zero_skew_is_the_same_object() -> None:
    p = m.Pong(id=1, t_rx=1, t_tx=2)
    assert shift(p, 0) is p


def test_env_option() -> None:
    assert clock_skew_from_env({}) == 0
    assert clock_skew_from_env({"MARIONET_CLOCK_SKEW_MS": "-50"}) == -50_000_000
    assert clock_skew_from_env({"MARIONET_CLOCK_SKEW_MS": "0.5"}) == 500_000
    with pytest.raises(ValueError, match="not a number"):
        clock_skew_from_env({"MARIONET_CLOCK_SKEW_MS": "50ms"})
    with pytest.raises(ValueError, match="outside"):
        clock_skew_from_env({"MARIONET_CLOCK_SKEW_MS": "1e9"})
    with pytest.raises(ValueError, match="outside"):
        clock_skew_from_env({"MARIONET_CLOCK_SKEW_MS": "nan"})
