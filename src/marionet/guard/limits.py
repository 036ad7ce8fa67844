"""Rate limits and period totals the guard keeps per principal.

Why our own and so small: the guard charges every send on the endpoint's hot
path (~100k datagrams/s), so these are plain slotted objects with float
arithmetic and an injected ``now`` (seconds on a monotonic clock): no
locking, no clock reads, no allocation per call, and tests can give exact
figures. They are used from the endpoint's event loop thread only.

``TokenBucket`` answers the two excess policies a grant may choose: "deny"
(``try_take``: all or nothing now) and "delay" (``take``: a reservation, the
balance goes negative and the caller is told how long to hold the send, so
delayed sends leave spaced at exactly the rate). ``WindowTotal`` counts
against a limit per fixed window ("1 GB per day").
"""

from __future__ import annotations

import math

__all__ = ["TokenBucket", "WindowTotal"]

#: Float slack in tokens: refills of a few ms at round rates are not exact in
#: binary (0.03 - 0.02 s at 100/s is 0.9999999999999998 tokens), and a
#: millionth of a packet or byte is nothing worth refusing a send for.
_EPS = 1e-6


class TokenBucket:
    """``rate`` tokens per second into a bucket of ``burst`` tokens (default
    one second's worth, as ``privileges.parse`` fills it in); full at first use.

    A request larger than ``burst`` (a datagram bigger than a byte burst) is
    let through when the bucket is full and leaves it negative, so it is not
    refused forever and the long-run rate still holds."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if burst is None:
            burst = max(1.0, math.ceil(rate))
        if not burst > 0:
            raise ValueError(f"burst must be positive, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = self.burst
        self.stamp: float | None = None

    def _refill(self, now: float) -> None:
        stamp = self.stamp
        if stamp is None:
            self.stamp = now
        elif now > stamp:
            t = self.tokens + (now - stamp) * self.rate
            self.tokens = t if t < self.burst else self.burst
            self.stamp = now

    def available(self, now: float) -> float:
        """Tokens at ``now`` (negative: reserved ahead by delayed sends)."""
        self._refill(now)
        return self.tokens

    def try_take(self, n: float, now: float) -> bool:
        """Take ``n`` tokens now if there are that many (or the bucket is
        full); otherwise take nothing and return False ("deny")."""
        self._refill(now)
        t = self.tokens
        if t + _EPS >= n or t + _EPS >= self.burst:
            self.tokens = t - n
            return True
        return False

    def take(self, n: float, now: float, max_wait: float = math.inf) -> float:
        """Reserve ``n`` tokens ("delay"): returns the seconds the caller must
        wait before using them, 0.0 if available now. If the wait would exceed
        ``max_wait`` nothing is reserved and the (too long) wait is returned,
        so the caller can compare and refuse."""
        self._refill(now)
        after = self.tokens - n
        if after + _EPS >= 0:
            self.tokens = after
            return 0.0
        wait = -after / self.rate
        if wait > max_wait:
            return wait
        self.tokens = after
        return wait

    def refund(self, n: float) -> None:
        """Give back ``n`` tokens taken for a send that was then refused."""
        t = self.tokens + n
        self.tokens = t if t < self.burst else self.burst

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely (its holder is idle)."""
        return self.available(now) + _EPS >= self.burst

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate:g}, burst={self.burst:g}, tokens={self.tokens:g})"


class WindowTotal:
    """At most ``limit`` units per fixed window of ``period_s`` seconds.

    The first window starts at first use; later windows follow back to back
    (``start + k * period_s``), so idle time does not shift them."""

    __slots__ = ("limit", "period_s", "start", "used")

    def __init__(self, limit: float, period_s: float) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        if not period_s > 0 or not math.isfinite(period_s):
            raise ValueError(f"period_s must be a positive number, got {period_s!r}")
        self.limit = limit
        self.period_s = float(period_s)
        self.start: float | None = None
        self.used: float = 0

    def _roll(self, now: float) -> None:
        start = self.start
        if start is None:
            self.start = now
        elif now >= start + self.period_s:
            self.start = start + math.floor((now - start) / self.period_s) * self.period_s
            self.used = 0

    def try_add(self, n: float, now: float) -> bool:
        """Count ``n`` units if they fit in this window; else count nothing."""
        self._roll(now)
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def refund(self, n: float) -> None:
        """Uncount ``n`` units counted for a send that was then refused."""
        u = self.used - n
        self.used = u if u > 0 else 0

    def remaining(self, now: float) -> float:
        self._roll(now)
        return self.limit - self.used

    def resets_in(self, now: float) -> float:
        """Seconds until the current window ends (0 before first use)."""
        self._roll(now)
        return 0.0 if self.start is None else self.start + self.period_s - now

    def idle(self, now: float) -> bool:
        """Whether nothing is counted in the window containing ``now``."""
        self._roll(now)
        return self.used == 0

    def __repr__(self) -> str:
        return f"WindowTotal(limit={self.limit:g}, period_s={self.period_s:g}, used={self.used:g})"
