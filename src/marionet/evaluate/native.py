"""Native tools on lab nodes: run each one in a node's namespace, parse its text.

The congruence study (``marionet evaluate``) alternates marionet's placements
with the tools people already trust — Butskoy ``traceroute``, iputils
``ping``, Debian's ``scamper``, ``dig`` and ``curl`` — on the same VP, so it
needs each tool's result as a plain record that lines up with marionet's.
Every tool has two halves here:

* a **parser**, a pure function of the tool's text (so tests can feed it
  real captured outputs), which raises :class:`ValueError` on text that is
  not that tool's output;
* a **runner** ``run_*(lab, node, …)``, which builds the command line, runs
  it in ``node``'s namespace with a timeout (``lab.exec``) and returns the
  parsed record.  A runner never raises for a failed measurement: a missing
  tool, a timeout, a bad exit status or unparsable output all end up in the
  record's ``error``, as ``"<kind>: <detail>"`` (:func:`error_kind` gives the
  kind: ``missing``, ``timeout``, ``exit``, ``parse``, and for curl also
  ``dns``, ``connect``, ``tls``, ``http``).  Bad *arguments* (a method the
  tool lacks, a negative count) are the caller's bug and raise ValueError.

Conventions shared with marionet's own results:

* :meth:`TraceRun.path_items` is the C3 set for paths: ``"ttl|addr"`` per
  replying address, ``"ttl|*"`` for a TTL where no probe was answered.
* :attr:`DigRun.answer` lines are ``"name ttl CLASS TYPE rdata"`` with names
  (the owner, and those in NS/CNAME/PTR/MX/SOA/SRV data) lower-cased and
  written without the final dot (as ``marionet.results``'
  ``DnsRR.__str__`` writes them), whitespace collapsed to single spaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TraceHop", "TraceRun", "PingRun", "DigRun", "CurlRun", "LocalHost",
    "TRACEROUTE_METHODS", "error_kind",
    "parse_traceroute", "parse_scamper_trace", "parse_ping", "parse_scamper_ping", "parse_dig",
    "parse_curl_status", "curl_error_kind",
    "traceroute_argv", "scamper_trace_argv", "ping_argv", "scamper_ping_argv", "dig_argv", "curl_argv",
    "run_traceroute", "run_scamper_trace", "run_ping", "run_scamper_ping", "run_dig", "run_curl",
]


# ------------------------------------------------------------------ records


@dataclass(slots=True)
class TraceHop:
    """Replies from one address at one TTL (``addr`` None: no probe at this TTL was answered)."""

    ttl: int
    addr: str | None
    rtts_ms: list[float] = field(default_factory=list)


@dataclass(slots=True)
class TraceRun:
    """One traceroute: hops in TTL order (several per TTL when several addresses replied)."""

    hops: list[TraceHop]
    dst: str
    reached: bool = False
    error: str | None = None

    def dest_rtts(self) -> list[float]:
        """RTTs (ms) of the replies that came from the destination itself."""
        return [r for h in self.hops if h.addr == self.dst for r in h.rtts_ms]

    def path_items(self) -> set[str]:
        """The C3 set: ``"ttl|addr"`` per replying address, ``"ttl|*"`` for a silent TTL."""
        return {f"{h.ttl}|{h.addr if h.addr is not None else '*'}" for h in self.hops}


@dataclass(slots=True)
class PingRun:
    """One ping run: RTTs of the answered probes, in order."""

    rtts_ms: list[float]
    sent: int = 0
    received: int = 0
    error: str | None = None


@dataclass(slots=True)
class DigRun:
    """One DNS query: the answer section as normalised RR lines and the response code."""

    answer: list[str]
    rcode: str | None = None
    error: str | None = None


@dataclass(slots=True)
class CurlRun:
    """One HTTP(S) fetch: status code (None if no response) and the body bytes."""

    status: int | None
    body: bytes = b""
    error: str | None = None


def error_kind(error: str | None) -> str | None:
    """The kind of a record's ``error`` (``"timeout: …"`` → ``"timeout"``)."""
    if error is None:
        return None
    return error.split(":", 1)[0].strip() or "error"


class LocalHost:
    """Stands in for a ``Lab`` where the tools run in this process's own
    namespace (``node`` is ignored): for loopback tests and benchmarks that
    measure the native tool beside marionet on the same machine."""

    def exec(self, node: str, cmd: Sequence[str], *, timeout: float | None = 60,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        cp = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise RuntimeError(f"{cmd!r} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp


# ----------------------------------------------------------------- helpers


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _norm_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return value


def _positive_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return float(value)


def _check_ip(name: str, value: str) -> str:
    if not isinstance(value, str) or not _is_ip(value):
        raise ValueError(f"{name}: expected an IP address, got {value!r}")
    return _norm_ip(value)


def _tail(text: str, n: int = 300) -> str:
    text = " ".join(text.split())
    return text[-n:]


def _run(lab: Any, node: str, argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str] | str:
    """Run ``argv`` in ``node``; the CompletedProcess, or an error string for the record."""
    tool = argv[0]
    if shutil.which(tool) is None:
        return f"missing: {tool} is not installed"
    try:
        return lab.exec(node, list(argv), timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout: {tool} did not finish in {timeout:g} s"
    except OSError as e:
        return f"exit: could not run {tool}: {e}"


# ---------------------------------------------------------------- traceroute

#: Butskoy traceroute's probe methods and their options.  ``udp`` is its
#: default (a new destination port per probe, so ECMP may spread the probes);
#: ``udp-paris`` fixes both ports (``-U --sport``, which implies ``-N 1``) so
#: every probe of a run hashes to the same path, like scamper's udp-paris.
TRACEROUTE_METHODS: dict[str, tuple[str, ...]] = {
    "udp": (),
    "udp-paris": ("-U", "--sport=33434"),
    "icmp": ("-I",),
    "tcp": ("-T",),
}

_TR_HEADER = re.compile(r"^traceroute to (\S+) \(([^)]+)\), (\d+) hops max, (\d+) byte packets\s*$")
_TR_HOP = re.compile(r"^\s*(\d+)\s+(.*)$")


def parse_traceroute(text: str) -> TraceRun:
    """Butskoy traceroute's output (``-n``; hostnames with ``(addr)`` are accepted too).

    Lost probes (``*``) are not kept as hops; a TTL where every probe was
    lost becomes one hop with ``addr=None``.  ``!H``-style annotations after
    an RTT are ignored (the reply and its RTT are kept).
    """
    if not isinstance(text, str):
        raise ValueError(f"traceroute output must be text, got {type(text).__name__}")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    head = next((i for i, ln in enumerate(lines) if _TR_HEADER.match(ln.strip())), None)
    if head is None:
        raise ValueError("not traceroute output: no 'traceroute to DST (ADDR), N hops max' line")
    m = _TR_HEADER.match(lines[head].strip())
    assert m
    dst = m.group(2)
    if not _is_ip(dst):
        raise ValueError(f"traceroute header: destination {dst!r} is not an address")
    dst = _norm_ip(dst)
    hops: list[TraceHop] = []
    last_ttl = 0
    for ln in lines[head + 1:]:
        hm = _TR_HOP.match(ln)
        if not hm:
            raise ValueError(f"traceroute: unexpected line {ln!r}")
        ttl = int(hm.group(1))
        if ttl <= last_ttl:
            raise ValueError(f"traceroute: TTL {ttl} after {last_ttl} in {ln!r}")
        last_ttl = ttl
        toks = hm.group(2).split()
        by_addr: dict[str, TraceHop] = {}
        cur: TraceHop | None = None
        i = 0
        while i < len(toks):
            t = toks[i]
            if t == "*":
                i += 1
            elif t.startswith("!"):
                i += 1  # annotation of the previous reply (!H, !N, !X, !<n>, !F-mtu …)
            elif i + 1 < len(toks) and toks[i + 1] == "ms":
                if cur is None:
                    raise ValueError(f"traceroute: RTT before any address in {ln!r}")
                cur.rtts_ms.append(_float(t, "traceroute RTT"))
                i += 2
            else:
                addr = t
                if i + 1 < len(toks) and toks[i + 1].startswith("(") and toks[i + 1].endswith(")"):
                    addr = toks[i + 1][1:-1]  # "name (addr)" without -n
                    i += 1
                if not _is_ip(addr):
                    raise ValueError(f"traceroute: {t!r} is neither an address, an RTT nor '*' in {ln!r}")
                addr = _norm_ip(addr)
                cur = by_addr.get(addr)
                if cur is None:
                    cur = by_addr[addr] = TraceHop(ttl, addr)
                i += 1
        if by_addr:
            hops.extend(by_addr.values())
        else:
            hops.append(TraceHop(ttl, None))
    reached = any(h.addr == dst for h in hops)
    return TraceRun(hops=hops, dst=dst, reached=reached)


def traceroute_argv(dst: str, *, method: str = "udp", queries: int = 3, max_ttl: int = 30,
                    first_ttl: int = 1, wait: float = 2.0, simultaneous: int | None = None) -> list[str]:
    """The Butskoy command line (``-n``: no reverse lookups, addresses only)."""
    dst = _check_ip("dst", dst)
    if method not in TRACEROUTE_METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(TRACEROUTE_METHODS)}")
    argv = ["traceroute", "-n", f"-{ipaddress.ip_address(dst).version}",
            "-q", str(_positive_int("queries", queries)), "-m", str(_positive_int("max_ttl", max_ttl)),
            "-f", str(_positive_int("first_ttl", first_ttl)), "-w", f"{_positive_float('wait', wait):g}"]
    if first_ttl > max_ttl:
        raise ValueError(f"first_ttl: {first_ttl} is above max_ttl {max_ttl}")
    if simultaneous is not None:
        argv += ["-N", str(_positive_int("simultaneous", simultaneous))]
    return argv + list(TRACEROUTE_METHODS[method]) + [dst]


def run_traceroute(lab: Any, node: str, dst: str, *, method: str = "udp", queries: int = 3, max_ttl: int = 30,
                   first_ttl: int = 1, wait: float = 2.0, simultaneous: int | None = None,
                   timeout: float = 120.0) -> TraceRun:
    """Butskoy traceroute from ``node`` to ``dst``."""
    argv = traceroute_argv(dst, method=method, queries=queries, max_ttl=max_ttl, first_ttl=first_ttl,
                           wait=wait, simultaneous=simultaneous)
    dst = argv[-1]
    cp = _run(lab, node, argv, timeout)
    if isinstance(cp, str):
        return TraceRun([], dst, error=cp)
    if cp.returncode != 0:
        return TraceRun([], dst, error=f"exit: traceroute exited {cp.returncode}: {_tail(cp.stderr)}")
    try:
        run = parse_traceroute(cp.stdout)
    except ValueError as e:
        return TraceRun([], dst, error=f"parse: {e}")
    return run


# ------------------------------------------------------------------- scamper


def _scamper_objects(text: str, kind: str) -> list[dict[str, Any]]:
    if not isinstance(text, str):
        raise ValueError(f"scamper output must be text, got {type(text).__name__}")
    objs = []
    for n, ln in enumerate(text.splitlines(), 1):
        if not ln.strip():
            continue
        try:
            d = json.loads(ln)
        except json.JSONDecodeError as e:
            raise ValueError(f"scamper JSON line {n} is not JSON: {e}") from None
        if not isinstance(d, dict) or "type" not in d:
            raise ValueError(f"scamper JSON line {n} has no 'type': {ln[:80]!r}")
        if d["type"] == kind:
            objs.append(d)
    if len(objs) != 1:
        raise ValueError(f"scamper output holds {len(objs)} {kind} objects, expected one")
    return objs


def parse_scamper_trace(text: str) -> TraceRun:
    """scamper ``-O json`` output holding one trace.

    TTLs from ``firsthop`` to ``hop_count`` with no reply become silent
    hops (``addr=None``), as in :func:`parse_traceroute`.
    """
    d = _scamper_objects(text, "trace")[0]
    try:
        dst = _norm_ip(d["dst"])
        first = int(d.get("firsthop", 1))
        last = int(d.get("hop_count", 0))
        by_key: dict[tuple[int, str], TraceHop] = {}
        for h in d.get("hops", []):
            ttl, addr = int(h["probe_ttl"]), _norm_ip(h["addr"])
            hop = by_key.setdefault((ttl, addr), TraceHop(ttl, addr))
            hop.rtts_ms.append(float(h["rtt"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"scamper trace JSON: bad or missing field: {e!r}") from None
    seen = {ttl for ttl, _ in by_key}
    hops = list(by_key.values()) + [TraceHop(t, None) for t in range(first, last + 1) if t not in seen]
    hops.sort(key=lambda h: h.ttl)  # stable: per TTL, addresses in reply order
    reached = d.get("stop_reason") == "COMPLETED" or any(h.addr == dst for h in hops)
    return TraceRun(hops=hops, dst=dst, reached=reached)


def _scamper_base() -> list[str]:
    # -n 127.0.0.1: scamper 20211212 exits 255 when resolv.conf names no
    # server (a lab namespace without a resolver); with -i it resolves nothing.
    return ["scamper", "-n", "127.0.0.1", "-O", "json"]


def scamper_trace_argv(dst: str, *, method: str = "udp-paris", queries: int = 3, all_attempts: bool = True,
                       max_ttl: int = 30, first_ttl: int = 1, wait: int = 2) -> list[str]:
    """``scamper -O json -c "trace -P METHOD -q Q [-Q] …" -i DST``.

    ``all_attempts`` (``-Q``) sends every one of the ``queries`` probes per
    TTL, as traceroute does; without it scamper stops at a TTL's first reply.
    """
    dst = _check_ip("dst", dst)
    if not isinstance(method, str) or not re.fullmatch(r"[a-z-]+", method):
        raise ValueError(f"method: bad scamper trace method {method!r}")
    opts = ["trace", "-P", method, "-q", str(_positive_int("queries", queries)),
            "-m", str(_positive_int("max_ttl", max_ttl)), "-f", str(_positive_int("first_ttl", first_ttl)),
            "-w", str(_positive_int("wait", wait))]
    if all_attempts:
        opts.append("-Q")
    return _scamper_base() + ["-c", " ".join(opts), "-i", dst]


def _run_scamper(lab: Any, node: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str] | str:
    cp = _run(lab, node, argv, timeout)
    if isinstance(cp, str):
        return cp
    if cp.returncode != 0:
        return f"exit: scamper exited {cp.returncode}: {_tail(cp.stderr)}"
    return cp


def run_scamper_trace(lab: Any, node: str, dst: str, *, method: str = "udp-paris", queries: int = 3,
                      all_attempts: bool = True, max_ttl: int = 30, first_ttl: int = 1, wait: int = 2,
                      timeout: float = 120.0) -> TraceRun:
    """scamper's trace from ``node`` to ``dst``."""
    argv = scamper_trace_argv(dst, method=method, queries=queries, all_attempts=all_attempts,
                              max_ttl=max_ttl, first_ttl=first_ttl, wait=wait)
    dst = argv[-1]
    cp = _run_scamper(lab, node, argv, timeout)
    if isinstance(cp, str):
        return TraceRun([], dst, error=cp)
    try:
        return parse_scamper_trace(cp.stdout)
    except ValueError as e:
        return TraceRun([], dst, error=f"parse: {e}")


# ---------------------------------------------------------------------- ping

_PING_HEADER = re.compile(r"^PING [^\s(]+ ?\(([^)]+)\)")  # v6: "PING ::1(::1) 56 data bytes"
_PING_REPLY = re.compile(r"^\d+ bytes from (\S+?):? .*?\btime[=<]([0-9.]+) ms(.*)$")
_PING_STATS = re.compile(r"^(\d+) packets transmitted, (\d+) (?:packets )?received\b")


def parse_ping(text: str) -> PingRun:
    """iputils ping output (``-n``).  Duplicate replies (``DUP!``) are not counted, as ping does not."""
    if not isinstance(text, str):
        raise ValueError(f"ping output must be text, got {type(text).__name__}")
    lines = [ln.strip() for ln in text.splitlines()]
    if not any(_PING_HEADER.match(ln) for ln in lines):
        raise ValueError("not iputils ping output: no 'PING DST (ADDR)' line")
    rtts: list[float] = []
    stats = None
    for ln in lines:
        m = _PING_REPLY.match(ln)
        if m:
            if "DUP!" not in m.group(3):
                rtts.append(_float(m.group(2), "ping RTT"))
            continue
        s = _PING_STATS.match(ln)
        if s:
            stats = (int(s.group(1)), int(s.group(2)))
    if stats is None:
        raise ValueError("ping output has no 'N packets transmitted, M received' statistics line")
    sent, received = stats
    if received != len(rtts):
        raise ValueError(f"ping statistics say {received} received but {len(rtts)} reply lines were printed")
    return PingRun(rtts_ms=rtts, sent=sent, received=received)


def ping_argv(dst: str, *, count: int = 10, interval: float = 0.2, wait: float = 2.0) -> list[str]:
    """``ping -n -c N -i I -W wait DST`` (``-6`` for IPv6 destinations)."""
    dst = _check_ip("dst", dst)
    return ["ping", "-n", f"-{ipaddress.ip_address(dst).version}", "-c", str(_positive_int("count", count)),
            "-i", f"{_positive_float('interval', interval):g}", "-W", f"{_positive_float('wait', wait):g}", dst]


def run_ping(lab: Any, node: str, dst: str, *, count: int = 10, interval: float = 0.2, wait: float = 2.0,
             timeout: float = 120.0) -> PingRun:
    """iputils ping from ``node``.  Exit status 1 (some or all probes unanswered) is data, not an error."""
    argv = ping_argv(dst, count=count, interval=interval, wait=wait)
    cp = _run(lab, node, argv, timeout)
    if isinstance(cp, str):
        return PingRun([], error=cp)
    if cp.returncode not in (0, 1):
        return PingRun([], error=f"exit: ping exited {cp.returncode}: {_tail(cp.stderr or cp.stdout)}")
    try:
        return parse_ping(cp.stdout)
    except ValueError as e:
        return PingRun([], error=f"parse: {e}")


def parse_scamper_ping(text: str) -> PingRun:
    """scamper ``-O json`` output holding one ping."""
    d = _scamper_objects(text, "ping")[0]
    try:
        sent = int(d["ping_sent"])
        seqs: set[int] = set()
        rtts: list[float] = []
        for r in sorted(d.get("responses", []), key=lambda r: int(r["seq"])):
            seq = int(r["seq"])
            if seq in seqs:
                continue  # a duplicate reply
            seqs.add(seq)
            rtts.append(float(r["rtt"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"scamper ping JSON: bad or missing field: {e!r}") from None
    return PingRun(rtts_ms=rtts, sent=sent, received=len(rtts))


def scamper_ping_argv(dst: str, *, count: int = 10, interval: float = 0.2, method: str = "icmp-echo") -> list[str]:
    dst = _check_ip("dst", dst)
    if not isinstance(method, str) or not re.fullmatch(r"[a-z-]+", method):
        raise ValueError(f"method: bad scamper ping method {method!r}")
    cmd = f"ping -P {method} -c {_positive_int('count', count)} -i {_positive_float('interval', interval):g}"
    return _scamper_base() + ["-c", cmd, "-i", dst]


def run_scamper_ping(lab: Any, node: str, dst: str, *, count: int = 10, interval: float = 0.2,
                     method: str = "icmp-echo", timeout: float = 120.0) -> PingRun:
    """scamper's ping from ``node``."""
    argv = scamper_ping_argv(dst, count=count, interval=interval, method=method)
    cp = _run_scamper(lab, node, argv, timeout)
    if isinstance(cp, str):
        return PingRun([], error=cp)
    try:
        return parse_scamper_ping(cp.stdout)
    except ValueError as e:
        return PingRun([], error=f"parse: {e}")


# ----------------------------------------------------------------------- dig

_DIG_STATUS = re.compile(r"->>HEADER<<-.*\bstatus: ([A-Z0-9]+)")
_NAME_TYPES = {"NS", "CNAME", "PTR", "DNAME", "MX", "SOA", "SRV"}


def normalise_rr(line: str) -> str:
    """A resource record line (dig's, or a marionet ``DnsRR``'s ``str``) in
    the one form answers are compared in: lower-case names, no final dots,
    single spaces."""
    return _dig_rr(line)


def _dig_rr(line: str) -> str:
    parts = line.split(None, 4)
    if len(parts) < 4:
        raise ValueError(f"dig: answer line {line!r} is not 'name ttl class type rdata'")
    name, ttl, rclass, rtype = parts[:4]
    rdata = parts[4] if len(parts) == 5 else ""
    if not ttl.isdigit():
        raise ValueError(f"dig: TTL {ttl!r} of {line!r} is not a number")
    rtype = rtype.upper()
    if rtype in _NAME_TYPES:
        rdata = " ".join((t[:-1] if t.endswith(".") and t != "." else t).lower() for t in rdata.split())
    elif rtype != "TXT":
        rdata = " ".join(rdata.split())
    name = name.lower()
    if name.endswith(".") and name != ".":
        name = name[:-1]
    return f"{name} {int(ttl)} {rclass.upper()} {rtype} {rdata}".rstrip()


def parse_dig(text: str) -> DigRun:
    """``dig +noall +answer +comments`` output: the answer section and the status.

    Answer lines are normalised (see the module docstring); a response
    without an answer section gives ``answer=[]``.  A dig that got no
    response at all (``;; connection timed out``) is a ``timeout`` error.
    """
    if not isinstance(text, str):
        raise ValueError(f"dig output must be text, got {type(text).__name__}")
    rcode = None
    answer: list[str] = []
    section = None
    for raw in text.splitlines():
        ln = raw.strip()
        if not ln:
            continue
        m = _DIG_STATUS.search(ln)
        if m:
            if rcode is not None:
                raise ValueError("dig output holds more than one response header")
            rcode = m.group(1)
            continue
        if ln.startswith(";"):
            sm = re.match(r";; ([A-Z ]+) SECTION:", ln)
            section = sm.group(1) if sm else section
            continue
        if rcode is None:
            raise ValueError(f"dig: record line {ln!r} before any response header")
        if section in (None, "ANSWER"):
            answer.append(_dig_rr(ln))
    if rcode is None:
        if re.search(r"timed out|no servers could be reached", text):
            return DigRun([], None, error="timeout: dig got no response")
        raise ValueError("not dig output: no ';; ->>HEADER<<- … status:' line (was +comments given?)")
    return DigRun(answer=answer, rcode=rcode)


def dig_argv(server: str, name: str, rtype: str = "A", *, port: int = 53, tries: int = 1,
             wait: int = 2, tcp: bool = False) -> list[str]:
    """``dig +noall +answer +comments @SERVER -p PORT NAME TYPE`` (no retries by default: one query, one record)."""
    server = _check_ip("server", server)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.*-]+\.?", name):
        raise ValueError(f"name: bad query name {name!r}")
    if not isinstance(rtype, str) or not re.fullmatch(r"[A-Za-z0-9]+", rtype):
        raise ValueError(f"rtype: bad query type {rtype!r}")
    argv = ["dig", "+noall", "+answer", "+comments", f"+tries={_positive_int('tries', tries)}",
            f"+time={_positive_int('wait', wait)}", f"@{server}", "-p", str(_positive_int('port', port))]
    if tcp:
        argv.append("+tcp")
    return argv + [name, rtype.upper()]


def run_dig(lab: Any, node: str, server: str, name: str, rtype: str = "A", *, port: int = 53, tries: int = 1,
            wait: int = 2, tcp: bool = False, timeout: float = 30.0) -> DigRun:
    """dig from ``node`` at ``server``."""
    argv = dig_argv(server, name, rtype, port=port, tries=tries, wait=wait, tcp=tcp)
    cp = _run(lab, node, argv, timeout)
    if isinstance(cp, str):
        return DigRun([], error=cp)
    try:
        run = parse_dig(cp.stdout)
    except ValueError as e:
        if cp.returncode != 0:
            return DigRun([], error=f"exit: dig exited {cp.returncode}: {_tail(cp.stdout + ' ' + cp.stderr)}")
        return DigRun([], error=f"parse: {e}")
    if run.error is None and cp.returncode != 0:
        return DigRun(run.answer, run.rcode, error=f"exit: dig exited {cp.returncode}: {_tail(cp.stderr)}")
    return run


# ---------------------------------------------------------------------- curl

#: curl exit codes → error kind (curl(1) "EXIT CODES"); others are "exit".
_CURL_KINDS = {6: "dns", 7: "connect", 28: "timeout", 35: "tls", 51: "tls", 53: "tls", 54: "tls",
               58: "tls", 59: "tls", 60: "tls", 64: "tls", 66: "tls", 77: "tls", 80: "tls", 82: "tls",
               83: "tls", 90: "tls", 91: "tls", 22: "http", 52: "http", 56: "connect", 55: "connect"}


def curl_error_kind(returncode: int) -> str:
    """The error kind of a curl exit status (0 → ``"ok"``)."""
    if returncode == 0:
        return "ok"
    return _CURL_KINDS.get(returncode, "exit")


def parse_curl_status(text: str) -> int | None:
    """The ``-w '%{http_code}'`` output: the status, or None for ``000`` (no response)."""
    if not isinstance(text, str) or not re.fullmatch(r"\s*\d{3}\s*", text):
        raise ValueError(f"not curl -w '%{{http_code}}' output: {text[:80]!r}")
    code = int(text)
    return code or None


def curl_argv(url: str, out_file: str, *, resolve: Mapping[str, str] | Sequence[str] | str | None = None,
              ca: str | os.PathLike[str] | None = None, max_time: float = 20.0,
              connect_timeout: float = 5.0) -> list[str]:
    """``curl -s -S -o FILE -w '%{http_code}' [--resolve HOST:PORT:ADDR …] [--cacert CA] URL``.

    ``resolve``: ``{"host:port": addr}``, or ready ``"host:port:addr"`` strings.
    """
    if not isinstance(url, str) or not re.match(r"^https?://[^\s]+$", url):
        raise ValueError(f"url: expected an http:// or https:// URL, got {url!r}")
    argv = ["curl", "-s", "-S", "-o", str(out_file), "-w", "%{http_code}",
            "--max-time", f"{_positive_float('max_time', max_time):g}",
            "--connect-timeout", f"{_positive_float('connect_timeout', connect_timeout):g}"]
    entries: list[str] = []
    if isinstance(resolve, str):
        entries = [resolve]
    elif isinstance(resolve, Mapping):
        for hp, addr in resolve.items():
            a = _check_ip(f"resolve[{hp!r}]", addr)
            entries.append(f"{hp}:{f'[{a}]' if ':' in a else a}")
    elif resolve is not None:
        entries = list(resolve)
    for e in entries:
        if not isinstance(e, str) or not re.fullmatch(r"[A-Za-z0-9_.*-]+:\d+:\S+", e):
            raise ValueError(f"resolve: {e!r} is not HOST:PORT:ADDR")
        argv += ["--resolve", e]
    if ca is not None:
        argv += ["--cacert", str(ca)]
    return argv + [url]


def run_curl(lab: Any, node: str, url: str, *, resolve: Mapping[str, str] | Sequence[str] | str | None = None,
             ca: str | os.PathLike[str] | None = None, max_time: float = 20.0, connect_timeout: float = 5.0,
             timeout: float | None = None) -> CurlRun:
    """curl from ``node``; the body goes through a private temporary file (namespaces share the filesystem)."""
    with tempfile.TemporaryDirectory(prefix="mn-curl-") as tmp:
        out = Path(tmp) / "body"
        argv = curl_argv(url, str(out), resolve=resolve, ca=ca, max_time=max_time, connect_timeout=connect_timeout)
        cp = _run(lab, node, argv, timeout if timeout is not None else max_time + 10)
        if isinstance(cp, str):
            return CurlRun(None, error=cp)
        body = out.read_bytes() if out.exists() else b""
    try:
        status = parse_curl_status(cp.stdout)
    except ValueError as e:
        if cp.returncode != 0:
            status = None
        else:
            return CurlRun(None, body, error=f"parse: {e}")
    if cp.returncode != 0:
        return CurlRun(status, body, error=f"{curl_error_kind(cp.returncode)}: curl exited {cp.returncode}: "
                                           f"{_tail(cp.stderr)}")
    if status is None:
        return CurlRun(None, body, error="http: no HTTP response")
    return CurlRun(status, body)
