"""Shift every absolute time in a wire message by a fixed offset (clock skew).

Why here: an endpoint that should behave as if its clock were off by *s*
(lab VPs share CLOCK_REALTIME, so skew cannot be set on the clock) only
needs its times shifted where they cross the session boundary. Every time
the endpoint reports (kernel RX/TX stamps, ``clock_ns``, Pong ``t_rx``/
``t_tx``, notification ``time_ns``) leaves as ``t + s``; every time it is
given (``at``, ``until``) arrives as ``t - s``.  Durations (``timeout_ns``,
``interval_ns``) are not times on a clock and are left alone.

The fields are found by name once per message type; a message without any
is returned as is.  Messages are copied, never changed in place (a caller
may hold on to what it sent).
"""

from __future__ import annotations

import msgspec

from marionet.wire import messages as m

__all__ = ["TIME_FIELDS", "shift"]

#: Field names that hold an absolute time in ns since the epoch.
TIME_FIELDS = frozenset({"time_ns", "clock_ns", "t_rx", "t_tx", "first_ns", "last_ns", "mark_ns", "at", "until"})

_fields_cache: dict[type, tuple[tuple[str, ...], bool, bool]] = {}


def _fields(t: type) -> tuple[tuple[str, ...], bool, bool]:
    f = _fields_cache.get(t)
    if f is None:
        names = getattr(t, "__struct_fields__", ())
        # ``time_ns`` is a property on Notification; only real fields count.
        f = (tuple(n for n in names if n in TIME_FIELDS), "samples" in names, "sends" in names)
        _fields_cache[t] = f
    return f


def shift(msg: m.Message, delta_ns: int) -> m.Message:
    """``msg`` with every absolute time moved by ``delta_ns`` (None stays None)."""
    if not delta_ns:
        return msg
    names, samples, items = _fields(type(msg))
    if not names and not samples and not items:
        return msg
    changes: dict = {}
    for n in names:
        v = getattr(msg, n)
        if v is not None:
            changes[n] = v + delta_ns
    if samples and msg.samples:  # NCountEnd: (kernel rx ns, cumulative bytes)
        changes["samples"] = [(t + delta_ns, b) for t, b in msg.samples]
    if items and msg.sends:  # NSendV: a batch of SendItem
        changes["sends"] = [shift(i, delta_ns) if i.at is not None else i for i in msg.sends]
    return msgspec.structs.replace(msg, **changes) if changes else msg
