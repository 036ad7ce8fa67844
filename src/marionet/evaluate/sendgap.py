"""The send-gap experiment: a train of scheduled UDP sends, marionet vs a native sender.

The question: when a measurement asks the endpoint to send ``count``
datagrams ``spacing_ns`` apart (``nsendv`` with an ``at`` per send), how close
to that spacing do they leave, and arrive — compared with the best a plain
Python program on the VP can do? Both senders are judged by the same
clocks: the *kernel* TX timestamps of the sends (software ``SO_TIMESTAMPING``,
keyed per send) and the *kernel* RX timestamps at a receiver
(``SO_TIMESTAMPNS``), so neither side's user-space clock flatters it.

Pieces:

* :func:`marionet_train` — the train over any ``PacketSession`` (native
  session, a lab VP through the controller, …): one ``nsendv`` batch,
  TX stamps from ``ntag``.
* :func:`native_train` — the native sender: one process, sleep to T−spin,
  then spin on ``time.time_ns()`` (CLOCK_REALTIME, the kernel stamps' clock),
  optionally ``SCHED_FIFO`` (as the endpoint's own sender), stamps read
  from the error queue.
* :func:`receive` — the receiver: kernel RX stamps and sequence numbers.
* :class:`Train`, :func:`tx_stats` / :func:`rx_stats`, :func:`train_samples`
  — achieved gaps and their statistics, and the study's samples.

Command line (one JSON line on stdout each; run inside a VP's namespace
with ``lab.popen``)::

    python -m marionet.evaluate.sendgap native-send DST PORT COUNT SPACING_NS
    python -m marionet.evaluate.sendgap marionet-send DST PORT COUNT SPACING_NS
    python -m marionet.evaluate.sendgap receive PORT COUNT TIMEOUT

``receive`` writes ``ready PORT`` to stderr once it is bound (PORT 0 picks
one); :func:`wait_ready` reads it.

Payload: ``b"MNGP"`` + u32 sequence number (network order), padded to
``size`` bytes; the receiver ignores (and counts) anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ipaddress
import json
import math
import os
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from marionet.evaluate.samples import Sample

if TYPE_CHECKING:
    from marionet.client.packet import PacketSession

__all__ = [
    "Train", "GapStats", "marionet_train", "native_train", "receive", "check_train",
    "sender_gaps", "receiver_gaps", "reordered_count", "gap_stats", "tx_stats", "rx_stats",
    "schedule_errors", "train_samples", "spacing_param", "payload", "parse_payload",
    "receiver_argv", "native_send_argv", "marionet_send_argv", "wait_ready", "read_report",
    "SPACINGS_NS", "EXPERIMENT_TX", "EXPERIMENT_RX", "MAX_COUNT",
]

#: the study's spacings: 100, 20, 10, 7.3 and 5 µs
SPACINGS_NS = (100_000, 20_000, 10_000, 7_300, 5_000)
#: experiment names of the samples: gaps between kernel TX stamps / kernel RX stamps
EXPERIMENT_TX = "send-gap"
EXPERIMENT_RX = "send-gap-rx"

MAGIC = b"MNGP"
_HEADER = struct.Struct("!4sI")
DEFAULT_SIZE = 32
MAX_SIZE = 1400
#: one train fits one ``nsendv`` frame (≈60 bytes a send) and its stamps fit
#: the socket's receive buffer (where the kernel charges them)
MAX_COUNT = 10_000
MIN_SPACING_NS = 1_000
MAX_SPACING_NS = 1_000_000_000
MAX_TRAIN_NS = 60_000_000_000
DEFAULT_START_DELAY_NS = 200_000_000
MAX_START_DELAY_NS = 10_000_000_000
#: the endpoint reports a stamp that never came after 2 s (ts_source "user")
_STAMP_GRACE_S = 3.0
_RCVBUF = 16 * 1024 * 1024
_SO_RCVBUFFORCE = 33


# ------------------------------------------------------------------ the train


@dataclass
class Train:
    """One train as sent (and, once :meth:`with_receiver` ran, as received).

    ``at[i]`` is send ``i``'s scheduled time and ``tx_ns[i]`` its kernel TX
    stamp, both on the sender's clock (the endpoint's for marionet); None
    when the send failed (``errors``), its stamp never came (``missing``) or
    was only a user-space fallback (``user_stamps``) — gaps use kernel
    stamps only. ``rx_seq``/``rx_ns``: the receiver's sequence numbers in
    arrival order and their kernel RX stamps.
    """

    sender: str
    count: int
    spacing_ns: int
    at: list[int]
    tx_ns: list[int | None]
    errors: int = 0
    missing: int = 0
    user_stamps: int = 0
    rx_seq: list[int] | None = None
    rx_ns: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def with_receiver(self, report: dict[str, Any]) -> "Train":
        """This train with a :func:`receive` report attached."""
        seq, rx = list(report["seq"]), list(report["rx_ns"])
        if len(seq) != len(rx):
            raise ValueError(f"receiver report has {len(seq)} sequence numbers but {len(rx)} stamps")
        self.rx_seq, self.rx_ns = seq, rx
        self.extra["rx_foreign"] = int(report.get("foreign", 0))
        self.extra["rx_user_stamps"] = int(report.get("user_stamps", 0))
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Train":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def check_train(dst: str, port: int, count: int, spacing_ns: int, start_delay_ns: int,
                size: int = DEFAULT_SIZE) -> int:
    """Validate a train's parameters; its address family (4 or 6).

    ValueError with a message for anything out of range: a train must be
    one the endpoint can hold in one batch and one the receiver can tell
    apart (≥ 2 sends, so there is a gap).
    """
    try:
        family = ipaddress.ip_address(dst).version
    except (ValueError, TypeError):
        raise ValueError(f"dst {dst!r} is not an IP address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} not in 1..65535")
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= MAX_COUNT:
        raise ValueError(f"count {count!r} not in 2..{MAX_COUNT}")
    if isinstance(spacing_ns, bool) or not isinstance(spacing_ns, int) or \
            not MIN_SPACING_NS <= spacing_ns <= MAX_SPACING_NS:
        raise ValueError(f"spacing_ns {spacing_ns!r} not an integer in {MIN_SPACING_NS}..{MAX_SPACING_NS}")
    if (count - 1) * spacing_ns > MAX_TRAIN_NS:
        raise ValueError(f"a train of {count} sends {spacing_ns} ns apart lasts more than "
                         f"{MAX_TRAIN_NS // 1_000_000_000} s")
    if isinstance(start_delay_ns, bool) or not isinstance(start_delay_ns, int) or \
            not 0 <= start_delay_ns <= MAX_START_DELAY_NS:
        raise ValueError(f"start_delay_ns {start_delay_ns!r} not in 0..{MAX_START_DELAY_NS}")
    if isinstance(size, bool) or not isinstance(size, int) or not _HEADER.size <= size <= MAX_SIZE:
        raise ValueError(f"size {size!r} not in {_HEADER.size}..{MAX_SIZE}")
    return family


def payload(seq: int, size: int = DEFAULT_SIZE) -> bytes:
    return _HEADER.pack(MAGIC, seq).ljust(size, b"\0")


def parse_payload(data: bytes) -> int | None:
    """The sequence number of a train datagram, None for anything else."""
    if len(data) < _HEADER.size:
        return None
    magic, seq = _HEADER.unpack_from(data)
    return seq if magic == MAGIC else None


async def marionet_train(io: "PacketSession", dst: str, port: int, *, count: int, spacing_ns: int,
                         start_delay_ns: int = DEFAULT_START_DELAY_NS, size: int = DEFAULT_SIZE) -> Train:
    """Send a train from ``io``'s endpoint: one ``nsendv`` with an ``at`` per send.

    The first send is due ``start_delay_ns`` after now on the endpoint's
    clock (local clock + the session's measured offset); the delay must
    cover shipping the batch to the endpoint, else the first sends leave as
    soon as they arrive (visible as ``schedule_errors``). Works over any
    session, so the same call is the native, endpoint-side and remote
    placement. The socket has its own notification stream and is closed
    before returning.
    """
    from marionet.wire.messages import SendItem

    family = check_train(dst, port, count, spacing_ns, start_delay_ns, size)
    stream = io.stream()
    sock: int | None = None
    tx: list[int | None] = [None] * count
    seen = [False] * count
    errors = user = 0
    dropped = 0
    try:
        sock = await io.nopen("udp", family, stream=stream)
        offset = (await io.clock_offset(4)).offset_ns
        first = time.time_ns() + offset + start_delay_ns
        at = [first + i * spacing_ns for i in range(count)]
        await io.nsendv([SendItem(sock=sock, data=payload(i, size), dst=dst, port=port, at=t, tag=i)
                         for i, t in enumerate(at)])
        deadline = time.monotonic() + (start_delay_ns + count * spacing_ns) / 1e9 + _STAMP_GRACE_S
        outstanding = count
        while outstanding:
            n = await stream.next(timeout=max(0.0, deadline - time.monotonic()))
            if n is None:
                break
            if n.kind == "ndrop":
                dropped += n.count
            elif n.kind == "ntag" and n.sock == sock and 0 <= n.tag < count and not seen[n.tag]:
                seen[n.tag] = True
                outstanding -= 1
                if n.error is not None or n.time_ns is None:
                    errors += 1
                elif n.ts_source != "kernel":
                    user += 1
                else:
                    tx[n.tag] = n.time_ns
    finally:
        if sock is not None:
            try:
                await io.nclose(sock)
            except Exception:  # noqa: BLE001 - a closed session closed the socket too
                pass
        stream.close()
    train = Train(sender="marionet", count=count, spacing_ns=spacing_ns, at=at, tx_ns=tx,
                  errors=errors, missing=seen.count(False), user_stamps=user)
    if dropped:
        train.extra["notifications_dropped"] = dropped
    return train


# ------------------------------------------------------------ native sender


def _timer_slack_1ns() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _set_fifo(on: bool) -> bool:
    try:
        if on:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        else:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        return True
    except (OSError, AttributeError):
        return False


def native_train(dst: str, port: int, *, count: int, spacing_ns: int,
                 start_delay_ns: int = DEFAULT_START_DELAY_NS, size: int = DEFAULT_SIZE,
                 spin_ns: int = 1_000_000, realtime: bool = True) -> Train:
    """The native sender: the same train from this process, the best plain way.

    Sleep until ``spin_ns`` before each due time, spin on ``time.time_ns()``,
    ``sendmsg`` with a keyed TX-stamp request (``SCM_TS_OPT_ID`` = sequence
    number, or the OPT_ID counter on kernels without it). The error queue is
    read only when the next send is more than 300 µs away (and at the end),
    so reading stamps never delays a send. ``realtime``: timer slack 1 ns
    and ``SCHED_FIFO`` while the train runs (if allowed), as the endpoint's
    sender does, so the comparison is with the best a VP's owner could do.
    """
    from marionet.endpoint.timestamps import (TxStamp, enable_tx_timestamps, read_errqueue,
                                              supports_ts_opt_id, ts_opt_id_cmsg)

    family = check_train(dst, port, count, spacing_ns, start_delay_ns, size)
    keyed = supports_ts_opt_id()
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    tx: list[int | None] = [None] * count
    seq_of_key: list[int] = []  # OPT_ID counter: key k is the k-th successful send
    errors = 0
    fifo = used_fifo = False
    addr = (dst, port)
    datas = [payload(i, size) for i in range(count)]

    def drain(limit: int = 1024) -> None:
        for item in read_errqueue(s, limit=limit):
            if isinstance(item, TxStamp):
                seq = item.key if keyed else (seq_of_key[item.key] if item.key < len(seq_of_key) else -1)
                if 0 <= seq < count:
                    tx[seq] = item.time_ns

    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        enable_tx_timestamps(s)
        if realtime:
            _timer_slack_1ns()
        first = time.time_ns() + start_delay_ns
        at = [first + i * spacing_ns for i in range(count)]
        if realtime:
            fifo = used_fifo = _set_fifo(True)
        for i, due in enumerate(at):
            wait = due - spin_ns - time.time_ns()
            if wait > 300_000:
                drain(64)
                wait = due - spin_ns - time.time_ns()
            if wait > 0:
                time.sleep(wait / 1e9)
            while time.time_ns() < due:
                pass
            try:
                if keyed:
                    s.sendmsg((datas[i],), [ts_opt_id_cmsg(i)], 0, addr)
                else:
                    s.sendto(datas[i], addr)
                    seq_of_key.append(i)
            except OSError:
                errors += 1
        if fifo:
            _set_fifo(False)
            fifo = False
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and sum(t is not None for t in tx) < count - errors:
            drain()
            time.sleep(0.001)
        drain()
    finally:
        if fifo:
            _set_fifo(False)
        s.close()
    have = sum(t is not None for t in tx)
    return Train(sender="native-sender", count=count, spacing_ns=spacing_ns, at=at, tx_ns=tx,
                 errors=errors, missing=count - errors - have,
                 extra={"realtime": bool(realtime), "fifo": used_fifo, "keyed": keyed, "spin_ns": spin_ns})


# ------------------------------------------------------------------ receiver


def receive(port: int, count: int, timeout: float, *, family: int = 4, idle: float = 1.0,
            ready: Any = None) -> dict[str, Any]:
    """Receive a train on UDP ``port``: sequence numbers in arrival order and
    their kernel RX stamps.

    Ends when ``count`` distinct sequence numbers arrived, ``timeout``
    seconds passed, or — once something arrived — nothing did for ``idle``
    seconds. ``ready(port)`` is called once the socket is bound. The
    receive buffer is large (16 MiB, forced as root) so a fast train is
    queued, not dropped, while this process catches up: the stamps are the
    kernel's, so reading late costs no accuracy.
    """
    from marionet.endpoint.timestamps import enable_rx_timestamps, recv_stamped

    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} not in 0..65535")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count {count!r} not in 1..{MAX_COUNT}")
    if not (isinstance(timeout, (int, float)) and 0 < timeout <= 600):
        raise ValueError(f"timeout {timeout!r} not in (0, 600] seconds")
    if family not in (4, 6):
        raise ValueError(f"family {family!r} is not 4 or 6")
    s = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    seqs: list[int] = []
    rx: list[int] = []
    distinct: set[int] = set()
    foreign = user = 0
    try:
        try:
            s.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, _RCVBUF)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        if family == 6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::" if family == 6 else "0.0.0.0", port))
        enable_rx_timestamps(s)
        s.setblocking(False)
        bound = s.getsockname()[1]
        if ready is not None:
            ready(bound)
        end = time.monotonic() + timeout
        last = None
        while len(distinct) < count:
            now = time.monotonic()
            wait = end - now
            if last is not None:
                wait = min(wait, last + idle - now)
            if wait <= 0:
                break
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                continue
            while (got := recv_stamped(s)) is not None:
                last = time.monotonic()
                seq = parse_payload(got.data)
                if seq is None:
                    foreign += 1
                    continue
                if got.ts_source != "kernel":
                    user += 1
                seqs.append(seq)
                rx.append(got.time_ns)
                distinct.add(seq)
    finally:
        s.close()
    return {"port": bound, "count": count, "seq": seqs, "rx_ns": rx, "foreign": foreign,
            "user_stamps": user}


# ---------------------------------------------------------------- statistics


@dataclass(frozen=True)
class GapStats:
    """Achieved gaps of one train at one side, in µs.

    ``p99_err_us``: the 99th percentile (nearest rank) of |gap − spacing|;
    ``lost``: sends with no (kernel) stamp at this side; ``reordered``:
    arrivals with a lower sequence number than one already seen.
    """

    n: int
    median_us: float
    mean_us: float
    sd_us: float
    p99_err_us: float
    median_err_us: float
    lost: int = 0
    reordered: int = 0


def sender_gaps(train: Train) -> list[int]:
    """TX-stamp differences (ns) of consecutive sends that both have a kernel stamp."""
    t = train.tx_ns
    return [b - a for a, b in zip(t, t[1:]) if a is not None and b is not None]


def receiver_gaps(train: Train) -> list[int]:
    """RX-stamp differences (ns) of consecutive *sequence numbers* both received
    (first arrival of a duplicate); negative where the pair was reordered."""
    if train.rx_seq is None or train.rx_ns is None:
        return []
    first: dict[int, int] = {}
    for seq, t in zip(train.rx_seq, train.rx_ns):
        first.setdefault(seq, t)
    return [first[i + 1] - first[i] for i in range(train.count - 1) if i in first and i + 1 in first]


def reordered_count(seqs: Sequence[int]) -> int:
    """Arrivals whose sequence number is below the highest seen before them."""
    n, top = 0, -1
    for s in seqs:
        if s < top:
            n += 1
        else:
            top = s
    return n


def _nearest_rank(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank: the ceil(q·n)-th smallest."""
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)]


def gap_stats(gaps_ns: Sequence[int], spacing_ns: int, *, lost: int = 0, reordered: int = 0) -> GapStats:
    if not gaps_ns:
        nan = float("nan")
        return GapStats(0, nan, nan, nan, nan, nan, lost, reordered)
    us = [g / 1000 for g in gaps_ns]
    err = [abs(g - spacing_ns) / 1000 for g in gaps_ns]
    return GapStats(n=len(us), median_us=statistics.median(us), mean_us=statistics.fmean(us),
                    sd_us=statistics.stdev(us) if len(us) > 1 else 0.0,
                    p99_err_us=_nearest_rank(err, 0.99), median_err_us=statistics.median(err),
                    lost=lost, reordered=reordered)


def tx_stats(train: Train) -> GapStats:
    """Gaps at the sender (kernel TX stamps)."""
    lost = sum(t is None for t in train.tx_ns)
    return gap_stats(sender_gaps(train), train.spacing_ns, lost=lost)


def rx_stats(train: Train) -> GapStats:
    """Gaps at the receiver (kernel RX stamps, by sequence number)."""
    if train.rx_seq is None:
        raise ValueError("this train has no receiver report (Train.with_receiver)")
    lost = train.count - len({s for s in train.rx_seq if 0 <= s < train.count})
    return gap_stats(receiver_gaps(train), train.spacing_ns, lost=lost,
                     reordered=reordered_count(train.rx_seq))


def schedule_errors(train: Train) -> list[int]:
    """Kernel TX stamp − scheduled time (ns) per stamped send."""
    return [t - a for a, t in zip(train.at, train.tx_ns) if t is not None]


def spacing_param(spacing_ns: int) -> str:
    """The sample ``param`` of a spacing: 7300 → ``"7.3us"``."""
    return f"{spacing_ns / 1000:g}us"


def train_samples(train: Train, *, vp: str, source: str, run: int, param: str | None = None) -> list[Sample]:
    """The study's samples of one train: one per achieved gap, metric ``gap_us``.

    One sample per gap (not per-train medians) so that a few runs already
    give the ECDF and the KS test (C2) hundreds of values, and C1 compares
    mean gaps. Experiment ``send-gap`` holds the gaps between kernel TX
    stamps, ``send-gap-rx`` those between kernel RX stamps at the receiver
    (if the train has a receiver report). ``param`` defaults to the
    spacing (``"7.3us"``); ``time_ns`` is the later packet's stamp.
    """
    param = spacing_param(train.spacing_ns) if param is None else param
    out: list[Sample] = []
    t = train.tx_ns
    for a, b in zip(t, t[1:]):
        if a is not None and b is not None:
            out.append(Sample(EXPERIMENT_TX, vp, source, run, "gap_us", (b - a) / 1000, param=param, time_ns=b))
    if train.rx_seq is not None and train.rx_ns is not None:
        first: dict[int, int] = {}
        for seq, ts in zip(train.rx_seq, train.rx_ns):
            first.setdefault(seq, ts)
        for i in range(train.count - 1):
            if i in first and i + 1 in first:
                out.append(Sample(EXPERIMENT_RX, vp, source, run, "gap_us", (first[i + 1] - first[i]) / 1000,
                                  param=param, time_ns=first[i + 1]))
    return out


# --------------------------------------------------------- processes (lab)


def _module_argv(*args: Any) -> list[str]:
    return [sys.executable, "-m", "marionet.evaluate.sendgap", *(str(a) for a in args)]


def receiver_argv(port: int, count: int, timeout: float, *, idle: float = 1.0, family: int = 4) -> list[str]:
    return _module_argv("receive", port, count, timeout, "--idle", idle, "--family", family)


def native_send_argv(dst: str, port: int, count: int, spacing_ns: int, *,
                     start_delay_ns: int = DEFAULT_START_DELAY_NS, size: int = DEFAULT_SIZE,
                     realtime: bool = True) -> list[str]:
    return _module_argv("native-send", dst, port, count, spacing_ns, "--start-delay-ns", start_delay_ns,
                        "--size", size, *(() if realtime else ("--no-realtime",)))


def marionet_send_argv(dst: str, port: int, count: int, spacing_ns: int, *,
                       start_delay_ns: int = DEFAULT_START_DELAY_NS, size: int = DEFAULT_SIZE) -> list[str]:
    """A marionet train over a private in-process endpoint (the native
    placement) run in whatever namespace the process starts in."""
    return _module_argv("marionet-send", dst, port, count, spacing_ns, "--start-delay-ns", start_delay_ns,
                        "--size", size)


def wait_ready(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """The port a ``receive`` process bound (its ``ready PORT`` stderr line)."""
    if proc.stderr is None:
        raise ValueError("start the receiver with stderr=subprocess.PIPE")
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stderr.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith("ready "):
                    return int(line.split()[1])
        elif proc.poll() is not None:
            break
    raise RuntimeError(f"receiver not ready (exit {proc.poll()}): {buf.decode(errors='replace')[-2000:]}")


def read_report(proc: subprocess.Popen, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for a sendgap process and parse its JSON line (RuntimeError if it failed)."""
    out, err = proc.communicate(timeout=timeout)
    out = out.decode() if isinstance(out, bytes) else (out or "")
    err = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- CLI


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dst")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("spacing_ns", type=int)
    p.add_argument("--start-delay-ns", type=int, default=DEFAULT_START_DELAY_NS)
    p.add_argument("--size", type=int, default=DEFAULT_SIZE)


async def _marionet_send(a: argparse.Namespace) -> Train:
    from marionet.endpoint.local import native_session

    async with native_session() as io:
        return await marionet_train(io, a.dst, a.port, count=a.count, spacing_ns=a.spacing_ns,
                                    start_delay_ns=a.start_delay_ns, size=a.size)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m marionet.evaluate.sendgap",
                                 description="send-gap experiment: senders and receiver (one JSON line each)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ns = sub.add_parser("native-send", help="the native sender (sleep + spin, kernel TX stamps)")
    _add_train_args(ns)
    ns.add_argument("--spin-ns", type=int, default=1_000_000)
    ns.add_argument("--no-realtime", action="store_true", help="no SCHED_FIFO, default timer slack")
    ms = sub.add_parser("marionet-send", help="the same train through a private in-process endpoint")
    _add_train_args(ms)
    rc = sub.add_parser("receive", help="receive a train (kernel RX stamps)")
    rc.add_argument("port", type=int)
    rc.add_argument("count", type=int)
    rc.add_argument("timeout", type=float)
    rc.add_argument("--idle", type=float, default=1.0)
    rc.add_argument("--family", type=int, default=4)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "native-send":
            out = native_train(a.dst, a.port, count=a.count, spacing_ns=a.spacing_ns,
                               start_delay_ns=a.start_delay_ns, size=a.size, spin_ns=a.spin_ns,
                               realtime=not a.no_realtime).to_dict()
        elif a.cmd == "marionet-send":
            out = asyncio.run(_marionet_send(a)).to_dict()
        else:
            out = receive(a.port, a.count, a.timeout, family=a.family, idle=a.idle,
                          ready=lambda p: print(f"ready {p}", file=sys.stderr, flush=True))
    except ValueError as exc:
        print(f"sendgap: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
