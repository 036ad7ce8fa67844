"""The one table every evaluation writes: raw samples in long form.

Why one long table: a study mixes numeric samples (an RTT, a throughput, a
send gap) and set-valued ones (a traceroute path's (hop, address) pairs, a
web fetch's (site, body digest)); each row is one observation by one
*source* (a marionet placement or a native tool) in one run on one VP. The
criteria (``criteria``), the report (``report``) and the Parquet file all
read this shape, so a study is only a producer of rows.

Columns
-------
``experiment``  what is measured, e.g. ``"trace-rtt"``, ``"throughput-down"``
``vp``          the vantage point's name
``source``      who measured: ``"native"``, ``"endpoint"``, ``"remote"``
                (marionet placements) or a native tool name: ``"traceroute"``,
                ``"ping"``, ``"scamper"``, ``"dig"``, ``"curl"``, ``"iperf3"``,
                ``"native-sender"``, ``"native-client"``
``run``         the run number (runs alternate sources back to back)
``metric``      the quantity, with its unit in the name: ``"rtt_ms"``,
                ``"mbps"``, ``"gap_us"``; or a set metric: ``"path"``, ``"web"``
``value``       the number (None for set metrics, and for a failed run)
``item``        for set metrics, one member of the run's set as text
                (``"3|10.0.0.1"``, ``"site-a|<sha256>"``); None otherwise
``param``       what varies inside an experiment (the hop number, the
                scheduled spacing ``"7.3us"``), or None
``time_ns``     when the sample was taken (CLOCK_REALTIME ns)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

__all__ = ["Sample", "COLUMNS", "as_records", "MARIONET_SOURCES"]

#: sources that are marionet's own placements (the rest are native tools)
MARIONET_SOURCES = ("native", "endpoint", "remote")


@dataclass(frozen=True, slots=True)
class Sample:
    experiment: str
    vp: str
    source: str
    run: int
    metric: str
    value: float | None = None
    item: str | None = None
    param: str | None = None
    time_ns: int = 0


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Sample))


def as_records(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Plain dicts (for pandas/pyarrow), in column order."""
    return [asdict(s) for s in samples]
