"""Records that are not measurements: cycle markers and unknown types.

Why cycles exist at all: scamper brackets each run with cycle-start and
cycle-stop records (list name, cycle id, host, times), and analysis code
uses them to group results by run.  ``UnknownResult`` exists so that a file
from a newer scamper (tracelb, dealias, http, ...) can still be read: the
records we do not model yet come back with their raw dict instead of
stopping the whole file.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from .common import EPOCH, check_int

__all__ = ["CycleStart", "CycleStop", "UnknownResult"]


@dataclass(slots=True, kw_only=True)
class CycleStart:
    """Start of a measurement cycle.  ``start_time`` is whole seconds since
    the epoch, as scamper records it."""
    start_time: int
    list_name: str = "default"
    cycle_id: int = 0
    hostname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("start_time", self.start_time)
        check_int("cycle_id", self.cycle_id, minimum=0)

    @property
    def start(self) -> _dt.datetime:
        return EPOCH + _dt.timedelta(seconds=self.start_time)

    # scamper's ScamperCycle names (marionet.compat.scamper)
    @property
    def id(self) -> int:
        return self.cycle_id

    @property
    def stop(self) -> None:
        """Not known at the start of a cycle (scamper: None)."""
        return None


@dataclass(slots=True, kw_only=True)
class CycleStop:
    """End of a measurement cycle."""
    stop_time: int
    list_name: str = "default"
    cycle_id: int = 0
    hostname: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int("stop_time", self.stop_time)
        check_int("cycle_id", self.cycle_id, minimum=0)

    @property
    def stop(self) -> _dt.datetime:
        return EPOCH + _dt.timedelta(seconds=self.stop_time)

    # scamper's ScamperCycle names (marionet.compat.scamper)
    @property
    def id(self) -> int:
        return self.cycle_id

    @property
    def start(self) -> None:
        """A cycle-stop record carries no start time (scamper: None)."""
        return None


@dataclass(slots=True)
class UnknownResult:
    """A record of a type marionet does not model; ``data`` is the raw dict
    (JSON) or ``None`` with ``raw`` bytes (warts).  Written back unchanged."""
    type: str | None
    data: dict[str, Any] | None = None
    raw: bytes | None = None
