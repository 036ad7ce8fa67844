"""Token buckets and period totals with an injected clock: exact figures."""

from __future__ import annotations

import math

import pytest

from marionet.guard.limits import TokenBucket, WindowTotal


def test_deny_mode_burst_then_one_per_interval() -> None:
    b = TokenBucket(100, 10)
    assert [b.try_take(1, 0.0) for _ in range(11)] == [True] * 10 + [False]
    # one token every 10 ms, never two
    for k in range(1, 50):
        now = k * 0.01
        assert b.try_take(1, now), now
        assert not b.try_take(1, now), now


def test_deny_mode_counts_over_one_second() -> None:
    """100 pps, burst 10, offered 1000 pps for 1 s: 10 + 100 pass."""
    b = TokenBucket(100, 10)
    passed = sum(b.try_take(1, k / 1000) for k in range(1001))
    assert passed == 110


def test_refill_caps_at_burst() -> None:
    b = TokenBucket(100, 10)
    assert all(b.try_take(1, 0.0) for _ in range(10))
    assert b.available(100.0) == 10
    assert sum(b.try_take(1, 100.0) for _ in range(20)) == 10


def test_default_burst_is_one_second() -> None:
    assert TokenBucket(100).burst == 100
    assert TokenBucket(0.5).burst == 1


def test_delay_mode_spacing() -> None:
    b = TokenBucket(100, 10)
    waits = [b.take(1, 0.0) for _ in range(15)]
    assert waits[:10] == [0.0] * 10
    assert waits[10:] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])


def test_delay_mode_max_wait_reserves_nothing() -> None:
    b = TokenBucket(100, 1)
    assert b.take(1, 0.0) == 0.0
    for k in range(1, 11):
        assert b.take(1, 0.0, max_wait=0.1) == pytest.approx(k * 0.01)
    too_long = b.take(1, 0.0, max_wait=0.1)
    assert too_long == pytest.approx(0.11)
    assert b.available(0.0) == pytest.approx(-10)  # the refused one was not reserved
    # after the backlog drains, sends are immediate again
    assert b.take(1, 0.11) == 0.0


def test_oversized_request_passes_when_full_then_waits() -> None:
    b = TokenBucket(1000, 500)  # bytes: 1000 B/s, burst 500
    assert b.try_take(1500, 0.0)
    assert b.available(0.0) == -1000
    assert not b.try_take(1, 0.5)   # still at -500
    assert not b.try_take(1500, 1.4)  # 400 tokens, not full
    assert b.try_take(1500, 1.5)    # full again


def test_refund() -> None:
    b = TokenBucket(100, 2)
    assert b.try_take(1, 0.0) and b.try_take(1, 0.0)
    assert not b.try_take(1, 0.0)
    b.refund(1)
    assert b.try_take(1, 0.0)
    b.refund(5)
    assert b.available(0.0) == 2  # never above the burst


def test_bucket_rejects_bad_parameters() -> None:
    for rate in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError):
            TokenBucket(rate)
    with pytest.raises(ValueError):
        TokenBucket(10, 0)


def test_window_total_counts_and_resets_at_window_end() -> None:
    w = WindowTotal(5, 60)
    assert [w.try_add(1, 10.0 + k) for k in range(6)] == [True] * 5 + [False]
    assert w.remaining(69.9) == 0
    assert w.resets_in(20.0) == pytest.approx(50.0)
    assert not w.try_add(1, 69.999)
    assert w.try_add(5, 70.0)      # window 2 starts at 10 + 60
    assert not w.try_add(1, 129.9)
    # windows stay aligned to the first use after idle time
    assert w.try_add(1, 250.0)     # window [190, 250) ended; now in [250, 310)
    assert w.resets_in(250.0) == pytest.approx(60.0)


def test_window_total_all_or_nothing_and_refund() -> None:
    w = WindowTotal(1000, 10)
    assert w.try_add(900, 0.0)
    assert not w.try_add(200, 0.0)
    assert w.remaining(0.0) == 100
    w.refund(900)
    assert w.try_add(1000, 1.0)
    w.refund(5000)
    assert w.remaining(1.0) == 1000


def test_window_total_zero_limit_refuses_everything() -> None:
    w = WindowTotal(0, 10)
    assert not w.try_add(1, 0.0)
    assert w.try_add(0, 0.0)
