"""Debian's ``iperf3 -J`` as a reference throughput tool: command, run, parse.

The congruence study compares marionet's throughput against iperf3 (the tool
people trust) as well as against our native client. This module builds the
command line, runs it inside a lab node's namespace and reads iperf3 3.12's
JSON: receiver-side and sender-side rates from ``end.sum_received`` /
``end.sum_sent`` (omitted intervals excluded, as iperf3 does) and the
per-interval samples, which iperf3 reports from the client's side (sender
for uploads, receiver for downloads with ``-R``). iperf3 reports errors in
its own ``"error"`` key — with ``-J``, 3.12 exits 0 even then (seen for
"unable to connect") — so the key, not the status, decides; those become
``Iperf3Result.error``, and so does output that is not complete JSON.

Beware in byte mode (``-n``) uploads: the client stops the test when it has
*written* ``-n`` bytes, so the server (receiver) has counted fewer
(``bytes_received < bytes_sent``; the rest was still in flight or in the
send buffer) and the sender-side rate is inflated by what sat in its
buffer. The receiver's rate (``mbps``) is the one to compare.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Iperf3Result", "Iperf3Interval", "iperf3_command", "parse_iperf3_json", "run_iperf3",
           "IPERF3_DEFAULT_PORT"]

IPERF3_DEFAULT_PORT = 5201


@dataclass(frozen=True, slots=True)
class Iperf3Interval:
    start: float          # seconds since the test started (omitted time included)
    end: float
    bytes: int
    bps: float
    omitted: bool


@dataclass(slots=True)
class Iperf3Result:
    """One iperf3 run. ``mbps`` is the receiver's figure (what the paper compares)."""

    direction: str | None = None            # "download" (-R) or "upload"
    mbps: float | None = None               # receiver side, Mbit/s
    sender_mbps: float | None = None
    bytes_received: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0                    # receiver-side duration
    retransmits: int | None = None
    intervals: list[Iperf3Interval] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.mbps is not None

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "mbps": self.mbps, "sender_mbps": self.sender_mbps,
                "bytes_received": self.bytes_received, "bytes_sent": self.bytes_sent, "seconds": self.seconds,
                "retransmits": self.retransmits, "error": self.error,
                "intervals": [[i.start, i.end, i.bytes, i.bps, i.omitted] for i in self.intervals]}


def iperf3_command(server: str, port: int = IPERF3_DEFAULT_PORT, direction: str = "download", *,
                   bytes: int | None = None, seconds: float | None = None, omit: float = 0,
                   interval: float | None = None, connect_timeout_ms: int | None = 5000,
                   extra: list[str] | None = None) -> list[str]:
    """The ``iperf3 -c`` argv: ``-J``, download as ``-R``; exactly one of ``bytes`` (``-n``) or ``seconds`` (``-t``).

    ``omit`` (``-O``, whole seconds) leaves slow start out of the end figures;
    ``interval`` (``-i``) sets the per-interval sample period (iperf3: 1 s).
    """
    if direction not in ("download", "upload"):
        raise ValueError(f"direction must be download or upload, got {direction!r}")
    if not server or not isinstance(server, str):
        raise ValueError("server: an address or host name is required")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    if (bytes is None) == (seconds is None):
        raise ValueError("give exactly one of bytes (-n) or seconds (-t)")
    cmd = ["iperf3", "-c", server, "-p", str(port), "-J"]
    if bytes is not None:
        if isinstance(bytes, bool) or not isinstance(bytes, int) or bytes <= 0:
            raise ValueError(f"bytes must be a positive integer, got {bytes!r}")
        if omit:
            raise ValueError("omit (-O) works with seconds (-t) only: iperf3 counts -n bytes from the start")
        cmd += ["-n", str(bytes)]
    else:
        assert seconds is not None
        if not 0 < seconds <= 86400:
            raise ValueError(f"seconds must be in (0, 86400], got {seconds!r}")
        cmd += ["-t", _num(seconds)]
    if omit:
        # iperf3 reads -O with atoi: 0.5 would silently mean 0.
        if isinstance(omit, bool) or not float(omit).is_integer() or omit < 0:
            raise ValueError(f"omit must be a whole number of seconds >= 0 (iperf3 reads an integer), got {omit!r}")
        cmd += ["-O", str(int(omit))]
    if interval is not None:
        if not 0.1 <= interval <= 60:
            raise ValueError(f"interval must be 0.1..60 seconds, got {interval!r}")
        cmd += ["-i", _num(interval)]
    if connect_timeout_ms is not None:
        cmd += ["--connect-timeout", str(int(connect_timeout_ms))]
    if direction == "download":
        cmd.append("-R")
    return cmd + list(extra or [])


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def parse_iperf3_json(text: str) -> Iperf3Result:
    """An :class:`Iperf3Result` from ``iperf3 -J`` output; never raises for bad output.

    iperf3's own error (``"error"`` key) and output that is empty, truncated
    or not iperf3's JSON give a result with ``error`` set and what figures
    could be read.
    """
    res = Iperf3Result()
    if not text or not text.strip():
        res.error = "iperf3 printed nothing (killed, or not run with -J?)"
        return res
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        res.error = f"iperf3 output is not complete JSON (truncated?): {e.msg} at char {e.pos} of {len(text)}"
        return res
    if not isinstance(doc, dict):
        res.error = f"iperf3 output is JSON but not an object: {type(doc).__name__}"
        return res
    try:
        _fill(res, doc)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        res.error = res.error or f"iperf3 JSON has an unexpected shape: {type(e).__name__}: {e}"
    if doc.get("error"):
        res.error = f"iperf3: {doc['error']}"
    elif res.error is None and res.mbps is None:
        res.error = "iperf3 JSON has no end.sum_received (test did not finish)"
    return res


def _fill(res: Iperf3Result, doc: dict[str, Any]) -> None:
    start = doc.get("start") or {}
    ts = start.get("test_start") or {}
    if "reverse" in ts:
        res.direction = "download" if ts["reverse"] else "upload"
    # iperf3 3.12 restarts its interval clock where omitting (-O) ends, so the measured intervals count from
    # there; shifting them by the omit time puts every interval on one since-the-start timeline. The interval
    # at the switch can come out with its start on the old clock and its end on the new one: its start is
    # clamped to its end rather than reported as a negative duration.
    omit = float(ts.get("omit") or 0)
    for iv in doc.get("intervals") or []:
        s = iv.get("sum") or {}
        if not s:
            continue
        omitted = bool(s.get("omitted", False))
        shift = 0.0 if omitted else omit
        begin, end = float(s["start"]) + shift, float(s["end"]) + shift
        res.intervals.append(Iperf3Interval(min(begin, end), end, int(s["bytes"]),
                                            float(s["bits_per_second"]), omitted))
    end = doc.get("end") or {}
    rcv, snd = end.get("sum_received"), end.get("sum_sent")
    if snd:
        res.sender_mbps = float(snd["bits_per_second"]) / 1e6
        res.bytes_sent = int(snd.get("bytes", 0))
        if "retransmits" in snd:
            res.retransmits = int(snd["retransmits"])
    if rcv:
        res.mbps = float(rcv["bits_per_second"]) / 1e6
        res.bytes_received = int(rcv.get("bytes", 0))
        res.seconds = float(rcv.get("seconds", 0.0))


def run_iperf3(lab: Any, node: str, server: str, port: int = IPERF3_DEFAULT_PORT, direction: str = "download", *,
               bytes: int | None = None, seconds: float | None = None, omit: float = 0,
               interval: float | None = None, timeout: float | None = None) -> Iperf3Result:
    """Run ``iperf3 -c server`` inside lab ``node``'s namespace and parse it.

    ``timeout`` (default: the test's length plus 30 s, or 120 s for a byte
    count) ends a run that hangs; that run's result carries the error.
    """
    cmd = iperf3_command(server, port, direction, bytes=bytes, seconds=seconds, omit=omit, interval=interval)
    if timeout is None:
        timeout = (seconds + omit + 30) if seconds is not None else 120.0
    try:
        cp = lab.exec(node, cmd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Iperf3Result(direction=direction, error=f"iperf3 did not finish within {timeout:g} s")
    except FileNotFoundError:
        return Iperf3Result(direction=direction, error="iperf3 is not installed (apt-get install -y iperf3)")
    res = parse_iperf3_json(cp.stdout)
    if res.direction is None:
        res.direction = direction
    if res.error is None and cp.returncode != 0:
        res.error = f"iperf3 exited {cp.returncode}: {cp.stderr.strip()[-300:]}"
    elif res.error and cp.stderr.strip() and "printed nothing" in res.error:
        res.error += f"; stderr: {cp.stderr.strip()[-300:]}"
    return res
