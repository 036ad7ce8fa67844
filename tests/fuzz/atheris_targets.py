"""Coverage-guided fuzz targets (atheris / libFuzzer) for marionet's parsers.

Each target takes the fuzzer's bytes, drives one parser and checks its
contract: the documented error type is swallowed, anything else — another
exception, a failed invariant — propagates and is a crash.  A hang shows up
as a libFuzzer timeout, a runaway allocation as its RSS limit.

Run one target (libFuzzer flags pass through; a directory is a corpus)::

    python tests/fuzz/atheris_targets.py json -max_total_time=600 corpus/json
    python tests/fuzz/atheris_targets.py json --write-seeds corpus/json   # seeds (+ corpus/json.dict)
    python tests/fuzz/atheris_targets.py json crash-0123abcd              # replay one input
    python tests/fuzz/atheris_targets.py --list

``test_atheris.py`` runs every target for a few seconds in CI; README.md in
this folder says more.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import random
import sys
from pathlib import Path
from typing import Any, Callable

import atheris

#: What each target's coverage is measured on (module name prefixes).
#: Instrumenting all of marionet costs seconds at every start, and the
#: other modules would only add noise to the coverage signal.
INSTRUMENT = {
    "wire": ["marionet.wire"],
    "warts": ["marionet.results"],
    "dns": ["marionet.measure.dns", "marionet.results", "dns"],
    "probes": ["marionet.measure.probes"],
    "json": ["marionet.results"],
    "resolvconf": ["marionet.endpoint.resolvconf"],
}


def _instrumentation(target: str | None) -> Any:
    """Instrument ``target``'s modules as the imports below load them: all
    of marionet and dnspython when imported as a module, none for --list."""
    if target is None:
        return atheris.instrument_imports(include=["marionet", "dns"])
    if target not in INSTRUMENT:
        return contextlib.nullcontext()
    wanted = INSTRUMENT[target]
    spec = importlib.util.find_spec("marionet")  # locates the package, runs nothing
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    others = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not any(name == w or name.startswith(w + ".") for w in wanted):
            others.append(name)
    include = ["marionet"] + (["dns"] if "dns" in wanted else [])
    return atheris.instrument_imports(include=include, exclude=others)


with _instrumentation(sys.argv[1] if __name__ == "__main__" and len(sys.argv) > 1 else None):
    from marionet.endpoint.resolvconf import MAX_RESOLVERS, parse_resolvers
    import dns.flags
    import dns.message

    from marionet.measure.dns import (DnsExchange, ParsedReply, _question_ok, parse_reply,
                                      plan_dns)
    from marionet.measure import probes as P
    from marionet.results import (CycleStart, CycleStop, FormatError, Http, Ping, Sniff, Tbit, Trace,
                                  Tracelb, Udpprobe, UnknownResult, dumps, from_json, loads, to_json)
    from marionet.results.dns import DnsQuery, DnsResult, DnsStop
    from marionet.results.warts import WartsReader
    from marionet.wire import codec
    from marionet.wire import messages as m

import fuzz_seeds  # noqa: E402 - after the instrumented imports, so they are the first

# --------------------------------------------------------------------------- wire

_CODES = {"oversized", "malformed", "unknown-message", "bad-message"}
_MAX_FRAMES = (codec.DEFAULT_MAX_FRAME, 16, 64, 1024)


def _feed_all(dec: codec.FrameDecoder, chunks: list[bytes]) -> tuple[list[m.Message], str | None]:
    """Feed every chunk; the messages decoded and the error code, if any.
    Checks the memory bound after each chunk."""
    out: list[m.Message] = []
    for chunk in chunks:
        try:
            out += dec.feed(chunk)
        except codec.ProtocolError as exc:
            assert exc.code in _CODES, exc.code
            try:
                dec.feed(b"\x00")
            except codec.ProtocolError as again:
                assert again.code == "broken", again.code
            else:
                raise AssertionError("a failed decoder accepted more input")
            return out, exc.code
        # what is buffered is at most one frame in progress: a header's
        # worth before its length is known, then less than that length
        assert dec.buffered < max(4, dec.max_frame), (dec.buffered, dec.max_frame)
    return out, None


def fuzz_wire(data: bytes) -> None:
    """``FrameDecoder``: byte 0 picks the maximum frame size, byte 1 seeds
    the chunking, the rest is the stream.  Fed whole and in chunks, the
    decoder must agree with itself; only ``ProtocolError`` may escape."""
    if len(data) < 2:
        return
    max_frame = _MAX_FRAMES[data[0] & 3]
    rng = random.Random(data[1])
    stream = data[2:]
    chunks, pos = [], 0
    while pos < len(stream):
        n = rng.choice((1, 1, 2, 3, 4, 5, 7, 16, 64, 1000))
        chunks.append(stream[pos:pos + n])
        pos += n
    if rng.random() < 0.2:
        chunks.insert(rng.randrange(len(chunks) + 1), b"")  # an empty read
    whole, whole_err = _feed_all(codec.FrameDecoder(max_frame), [stream])
    split, split_err = _feed_all(codec.FrameDecoder(max_frame), chunks)
    assert split_err == whole_err, (split_err, whole_err)
    # compared by encoding: a message may hold a NaN, which equals nothing
    enc = [codec.encode_body(msg) for msg in split]
    if whole_err is None:
        assert enc == [codec.encode_body(msg) for msg in whole]
    else:
        # one feed() that fails returns nothing, so the split decoder may
        # have handed out messages that the whole one dropped with the error
        assert enc[:len(whole)] == [codec.encode_body(msg) for msg in whole]
    for msg, body in zip(split, enc):
        assert isinstance(msg, m.Message), type(msg)
        # whatever decodes re-encodes, and decodes to the same message
        assert codec.encode_body(codec.decode_body(body)) == body


# -------------------------------------------------------------------------- warts

# every record type the reader decodes (ping, trace here; the rest registered)
_WARTS_TYPES = (Ping, Trace, Tracelb, Tbit, Sniff, Udpprobe, DnsResult, Http, CycleStart, CycleStop,
                UnknownResult)


def fuzz_warts(data: bytes) -> None:
    """``WartsReader``: only ``FormatError``; every record read advances the
    stream (no endless loop), and every record read writes as JSON and reads back as its type."""
    reader = WartsReader(io.BytesIO(data), path="fuzz.warts")
    for _ in range(len(data) // 8 + 2):  # a record is at least its 8-byte header
        try:
            obj = reader.read()
        except FormatError:
            return
        if obj is None:
            return
        assert isinstance(obj, _WARTS_TYPES), type(obj)
        if not isinstance(obj, UnknownResult):
            line = dumps(obj)  # File converts warts to JSON lines
            assert type(loads(line)) is type(obj)
    raise AssertionError("WartsReader.read() returned more records than the input can hold")


# ---------------------------------------------------------------------------- dns

_PLAN = plan_dns(fuzz_seeds.DNS_QNAME, server="127.0.0.1", qtype="A")


def _is_our_reply(data: bytes) -> bool:
    """dnspython reads ``data`` as a response repeating our question."""
    try:
        msg = dns.message.from_wire(data)
    except Exception:  # noqa: BLE001 - whatever dnspython refuses is not a reply
        return False
    return bool(msg.flags & dns.flags.QR) and _question_ok(msg, _PLAN)


def fuzz_dns(data: bytes) -> None:
    """``parse_reply`` never raises, and takes every response dnspython
    reads (its catch-all must not hide a bug that drops a valid reply); a
    reply it accepts goes through ``DnsExchange`` into a ``DnsResult`` that
    writes and reads back as JSON."""
    parsed = parse_reply(data, _PLAN)
    if parsed is None:
        assert not _is_our_reply(data), "a valid reply was counted as malformed"
        return
    assert isinstance(parsed, ParsedReply), type(parsed)
    assert 0 <= parsed.id <= 0xFFFF
    run = DnsExchange(_PLAN)
    q = DnsQuery(id=parsed.id, tcp=False)
    run.queries.append(q)
    assert run.received(data, 1_000, "kernel", tcp=False) is q
    r = run.result(start_ns=1, stop=DnsStop.DONE, src="127.0.0.1", error=None, vp=None)
    back = loads(dumps(r))
    assert isinstance(back, DnsResult)
    assert to_json(back) == to_json(from_json(to_json(r)))


# ------------------------------------------------------------------------- probes

_PARSERS: tuple[Callable[[bytes, int], object], ...] = (
    lambda b, f: P.parse_ip(b, truncated_ok=bool(f & 1), quoted=bool(f & 2)),
    lambda b, f: P.parse_icmp(b, False, quote_ok=bool(f & 1)),
    lambda b, f: P.parse_icmp(b, True, quote_ok=bool(f & 1)),
    lambda b, f: P.parse_tcp(b),
    lambda b, f: P.parse_udp(b),
)


def fuzz_probes(data: bytes) -> None:
    """Byte 0: the parser (low 3 bits) and its options; the rest is the
    packet.  ``parse_*`` raise only ``PacketError``; ``parse_packet`` never
    raises."""
    if not data:
        return
    sel, body = data[0], data[1:]
    try:
        _PARSERS[(sel & 7) % len(_PARSERS)](body, sel >> 3)
    except P.PacketError:
        pass
    pkt = P.parse_packet(body)
    if pkt is not None:
        assert pkt.version in (4, 6)
        assert len(pkt.payload) <= len(body)


# --------------------------------------------------------------------------- json


# "x.yyy" ms reads back to the same µs while a float's spacing there is well
# under 0.001: below 2**42 ms (139 years) it is at most 2**-11
_EXACT_MS = 2.0**42


def _floats_exact(v: object) -> bool:
    """Every float in a ``to_json`` dict reads back exactly from its text."""
    if isinstance(v, float):
        return abs(v) < _EXACT_MS
    if isinstance(v, dict):
        return all(_floats_exact(x) for x in v.values())
    if isinstance(v, list):
        return all(_floats_exact(x) for x in v)
    return True


def fuzz_json(data: bytes) -> None:
    """``loads`` raises only ``FormatError``; a record it reads writes back
    (``dumps``) and reads again to the same line (RTTs of centuries aside:
    a float cannot hold their microseconds)."""
    try:
        obj = loads(data)
    except FormatError:
        return
    line = dumps(obj)
    again = loads(line)
    assert type(again) is type(obj)
    if _floats_exact(to_json(obj)):
        assert dumps(again) == line, (line, dumps(again))


# --------------------------------------------------------------------- resolvconf


def fuzz_resolvconf(data: bytes) -> None:
    """``parse_resolvers`` never raises and returns at most MAX_RESOLVERS
    distinct canonical addresses."""
    import ipaddress

    out = parse_resolvers(data.decode("utf-8", errors="replace"))
    assert len(out) <= MAX_RESOLVERS
    assert len(set(out)) == len(out)
    for a in out:
        assert str(ipaddress.ip_address(a)) == a


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": fuzz_wire,
    "warts": fuzz_warts,
    "dns": fuzz_dns,
    "probes": fuzz_probes,
    "json": fuzz_json,
    "resolvconf": fuzz_resolvconf,
}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] in ("-h", "--help", "--list"):
        print("usage: atheris_targets.py TARGET [--write-seeds DIR] [libFuzzer args...]\n"
              "targets: " + " ".join(TARGETS))
        sys.exit(0 if len(argv) >= 2 else 2)
    name, rest = argv[1], argv[2:]
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; targets: {' '.join(TARGETS)}")
    if rest[:1] == ["--write-seeds"]:
        if len(rest) != 2:
            sys.exit("usage: atheris_targets.py TARGET --write-seeds DIR")
        for p in fuzz_seeds.write_seeds(name, rest[1]):
            print(p)
        d = fuzz_seeds.write_dict(name, rest[1].rstrip("/") + ".dict")
        if d is not None:
            print(f"{d}  (pass -dict={d})")
        return
    atheris.Setup([argv[0], *rest], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
