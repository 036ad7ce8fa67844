"""Human-readable text for results, in the style of the classic tools.

Why imitate iputils ``ping``, Butskoy ``traceroute``, ``dig`` and
``curl -i`` rather than scamper's own text: those are what researchers read
every day and what their scripts already grep, so ``marionet ping`` output
can be compared line by line with ``ping`` run on the same path.  Where a
result knows more than the tool prints (the VP a measurement ran from), the
header line says it in the slot the tool uses for the source ("from SRC").

Each function takes one result and returns its block of text (no trailing
newline); the result classes' ``to_text()`` methods call them.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

__all__ = ["ping_text", "trace_text", "dns_text", "http_text", "throughput_text"]


def _ms(td: _dt.timedelta | None) -> str:
    return "*" if td is None else f"{td.total_seconds() * 1000:.3f}"


def _from(src: Any, vp: str | None) -> str:
    """The "from SRC vp NAME" part of a header line ("" when neither is known)."""
    parts = [str(src)] if src is not None else []
    if vp:
        parts.append(f"vp {vp}")
    return (" from " + " ".join(parts)) if parts else ""


# ------------------------------------------------------------------ ping
_IP_HDR = {4: 20, 6: 40}
_L4_HDR = {"icmp": 8, "udp": 8, "tcp": 20}
# iputils' words for ICMP errors (print_icmp / pr_icmph), by (family, type) then code.
_UNREACH4 = {0: "Destination Net Unreachable", 1: "Destination Host Unreachable",
             2: "Destination Protocol Unreachable", 3: "Destination Port Unreachable",
             4: "Frag needed and DF set", 9: "Destination Net Prohibited",
             10: "Destination Host Prohibited", 13: "Packet filtered"}
_UNREACH6 = {0: "Destination unreachable: No route", 1: "Destination unreachable: Administratively prohibited",
             3: "Destination unreachable: Address unreachable", 4: "Destination unreachable: Port unreachable"}
_TCP_FLAGS = "FSRPAUEC"


def _family(addr: Any) -> int:
    return 6 if ":" in str(addr) else 4


def _l4(method: str) -> str:
    return "icmp" if method.startswith("icmp") else method.split("-")[0]


def _tcp_flags(flags: int | None) -> str:
    return "".join(c for i, c in enumerate(_TCP_FLAGS) if (flags or 0) >> i & 1) or "none"


def _icmp_error(fam: int, icmp_type: int | None, code: int | None) -> str:
    if fam == 4 and icmp_type == 3:
        return _UNREACH4.get(code or 0, f"Dest Unreachable, Bad Code: {code}")
    if fam == 6 and icmp_type == 1:
        return _UNREACH6.get(code or 0, f"Destination unreachable: Unknown code {code}")
    if (fam, icmp_type) in ((4, 11), (6, 3)):
        return "Time to live exceeded"
    if (fam, icmp_type) == (6, 2):
        return "Packet too big"
    return f"icmp type={icmp_type} code={code}"


#: IPv4 option bytes of scamper's -R / -T: record route (39, padded) and
#: tsonly fill the header's 40; tsandaddr's four (address, stamp) pairs take 36.
_IP_OPT = {"v4rr": 40, "tsonly": 40, "tsandaddr": 36}


def _ts_lines(ts: Any) -> list[str]:
    """iputils' "TS:" block: the first stamp absolute, each next one as
    the difference from the one before (ms since midnight UTC)."""
    out = []
    prev = None
    for i, t in enumerate(ts.tss):
        where = f"{ts.ips[i]}\t" if ts.ips else ""
        value = f"{t} absolute" if prev is None else str(t - prev)
        out.append(("TS: \t" if i == 0 else "\t") + where + value)
        prev = t
    return out


def ping_text(p: Any) -> str:
    """iputils ``ping``: header, one line per reply, statistics.

    ``icmp_seq`` is the probe number counted from 1, as iputils numbers
    them; replies that are not from the target in the method's sense (an
    ICMP error from a router) print as iputils' "From A icmp_seq=N …" lines
    and count as errors.
    """
    fam = _family(p.dst)
    l4 = _l4(p.method)
    flags = set(getattr(p, "flags", ()) or ()) if fam == 4 else set()
    opts = max((n for f, n in _IP_OPT.items() if f in flags), default=0)
    hdr = _IP_HDR[fam] + opts + _L4_HDR.get(l4, 8)
    size = p.probe_size or 0
    data = max(size - hdr, 0)
    who = _from(p.src, p.vp)
    who = who + ":" if who else ""  # iputils: "PING A (A) from S DEV: 56(84) …", without -I no colon
    how = "" if p.method == "icmp-echo" else f", method {p.method}"
    if fam == 4:
        lines = [f"PING {p.dst} ({p.dst}){who} {data}({size}) bytes of data{how}."]
    else:
        lines = [f"PING {p.dst}({p.dst}){who} {data} data bytes{how}"]
    seq_word = "icmp_seq" if l4 == "icmp" else "seq"
    seen: set[int] = set()
    last_rr: Any = None
    for r in p.replies:
        seq = f"{seq_word}={r.attempt + 1}"
        if not p.is_from_target(r):
            lines.append(f"From {r.src} {seq} {_icmp_error(_family(r.src), r.icmp_type, r.icmp_code)}")
            continue
        rr, ts = getattr(r, "v4rr", None), getattr(r, "v4ts", None)
        ropts = _IP_OPT["v4rr"] if rr is not None else 0 if ts is None else \
            _IP_OPT["tsandaddr" if ts.ips else "tsonly"]
        nbytes = max((r.reply_size or 0) - _IP_HDR[_family(r.src)] - ropts, 0)
        extra = f" flags={_tcp_flags(r.tcp_flags)}" if r.is_tcp() else ""
        ttl = "" if r.reply_ttl is None else f" ttl={r.reply_ttl}"
        dup = " (DUP!)" if r.attempt in seen else ""
        seen.add(r.attempt)
        line = f"{nbytes} bytes from {r.src}: {seq}{extra}{ttl} time={_ms(r.rtt)} ms{dup}"
        if rr is not None and rr == last_rr:
            lines.append(line + "\t(same route)")
            continue
        lines.append(line)
        if rr is not None:
            last_rr = rr
            lines += [("RR: \t" if i == 0 else "\t") + str(a) for i, a in enumerate(rr)] + [""]
        if ts is not None:
            lines += _ts_lines(ts) + [""]
    lines += ["", f"--- {p.dst} ping statistics ---"]
    stats = f"{p.ping_sent} packets transmitted, {p.nreplies} received"
    if p.ndups:
        stats += f", +{p.ndups} duplicates"
    if p.nerrs:
        stats += f", +{p.nerrs} errors"
    loss = 0.0 if not p.ping_sent else 100.0 * p.nloss / p.ping_sent
    lines.append(f"{stats}, {loss:g}% packet loss")
    if p.min_rtt is not None:
        lines.append("rtt min/avg/max/mdev = " + "/".join(
            _ms(t) for t in (p.min_rtt, p.avg_rtt, p.max_rtt, p.stddev_rtt)) + " ms")
    return "\n".join(lines)


# ----------------------------------------------------------------- trace
# Butskoy traceroute's annotations for ICMP unreachables (v4 code, v6 code).
_ANNOT4 = {0: "!N", 1: "!H", 2: "!P", 4: "!F", 5: "!S", 9: "!X", 10: "!X", 13: "!X"}
_ANNOT6 = {0: "!N", 1: "!X", 3: "!H"}


def _annotation(h: Any) -> str:
    if h.is_icmp_unreach():
        if h.is_icmp_unreach_port():
            return ""  # the destination's "done", printed bare as traceroute does
        table = _ANNOT4 if h.src.is_ipv4() else _ANNOT6
        return " " + table.get(h.icmp_code or 0, f"!<{h.icmp_code}>")
    return ""


def trace_text(t: Any) -> str:
    """Butskoy ``traceroute -n``: header, then one line per TTL with each
    probe's responder and RTT ("*" for a probe that drew no reply).

    A TTL answered on its first attempt shows one RTT (scamper, unlike
    traceroute, stops probing a hop once it answers, unless all_attempts);
    a silent TTL shows one "*" per attempt.
    """
    maxhops = t.hoplimit or 255
    size = f", {t.probe_size} byte packets" if t.probe_size else ""
    how = f", method {t.method}"
    lines = [f"traceroute to {t.dst} ({t.dst}){_from(t.src, t.vp)}, {maxhops} hops max{size}{how}"]
    by_ttl: dict[int, list[Any]] = {}
    for h in t.hop_records:
        by_ttl.setdefault(h.probe_ttl, []).append(h)
    for ttl in range(t.firsthop, (t.hop_count or 0) + 1):
        hops = sorted(by_ttl.get(ttl, []), key=lambda h: h.probe_id)
        if not hops:
            lines.append(f"{ttl:2d}  " + " ".join("*" * max(t.attempts, 1)))
            continue
        by_probe: dict[int, list[Any]] = {}
        for h in hops:
            by_probe.setdefault(h.probe_id, []).append(h)
        parts: list[str] = []
        last = None
        for pid in range(1, max(by_probe) + 1):
            replies = by_probe.get(pid)
            if not replies:
                parts.append("*")
                continue
            for h in replies:
                if h.src != last:
                    parts.append(str(h.src))
                    last = h.src
                parts.append(f" {_ms(h.rtt)} ms{_annotation(h)}")
        lines.append(f"{ttl:2d}  " + _join_hop(parts))
    return "\n".join(lines)


def _join_hop(parts: list[str]) -> str:
    """Butskoy spacing: address, two spaces before each RTT, one before "*"."""
    out = ""
    for p in parts:
        if p.startswith(" "):
            out += " " + p  # "  0.123 ms"
        else:
            out += (" " if out else "") + p
    return out


# ------------------------------------------------------------------- dns
_DIG_FLAGS = ["AA", "TC", "RD", "RA", "Z", "AD", "CD"]  # dig's order


def _dot(name: str) -> str:
    return name if name.endswith(".") else name + "."


def _rdata(rr: Any) -> str:
    t = rr.rtype
    if t in ("A", "AAAA") and rr.address is not None:
        return str(rr.address)
    if t in ("NS", "CNAME", "PTR", "DNAME") and rr.target:
        return _dot(rr.target)
    if t == "MX" and rr.mx is not None:
        return f"{rr.mx.preference} {_dot(rr.mx.exchange)}"
    if t == "SOA" and rr.soa is not None:
        s = rr.soa
        return f"{_dot(s.mname)} {_dot(s.rname)} {s.serial} {s.refresh} {s.retry} {s.expire} {s.minimum}"
    if t == "TXT" and rr.txt is not None:
        return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in rr.txt)
    return rr.rdata or ""


def _rr_line(rr: Any) -> str:
    return f"{_dot(rr.name)}\t{rr.ttl}\t{rr.rclass}\t{rr.rtype}\t{_rdata(rr)}"


def dns_text(h: Any) -> str:
    """``dig``: header, QUESTION / ANSWER / AUTHORITY / ADDITIONAL sections,
    query time and server; dig's one-line messages when no reply came."""
    proto = "TCP" if h.tcp else "UDP"
    lines = [f"; <<>> marionet dns{_from(h.src, h.vp)} <<>> @{h.dst} {h.qname} {h.qclass} {h.qtype}"]
    q = h.reply
    if q is None:
        if str(h.stop_reason) == "timeout":
            lines.append(";; connection timed out; no servers could be reached")
        else:
            lines.append(f";; communications error to {h.dst}#{h.port}: {h.error or h.stop_reason}")
        return "\n".join(lines)
    flags = " ".join(["qr", *(f.lower() for f in sorted(q.flags, key=_DIG_FLAGS.index) if f in _DIG_FLAGS)])
    rcode = (h.rcode_str or str(q.rcode)).upper()
    lines += [";; Got answer:",
              f";; ->>HEADER<<- opcode: QUERY, status: {rcode}, id: {q.id}",
              f";; flags: {flags}; QUERY: 1, ANSWER: {q.ancount}, AUTHORITY: {q.nscount}, "
              f"ADDITIONAL: {q.arcount}",
              "", ";; QUESTION SECTION:", f";{_dot(h.qname)}\t\t{h.qclass}\t{h.qtype}"]
    for title, rrs in (("ANSWER", q.an), ("AUTHORITY", q.ns), ("ADDITIONAL", q.ar)):
        if rrs:
            lines += ["", f";; {title} SECTION:", *(_rr_line(rr) for rr in rrs)]
    rtt = q.rtt
    lines += ["", f";; Query time: {0 if rtt is None else int(rtt.total_seconds() * 1000)} msec",
              f";; SERVER: {h.dst}#{h.port}({h.dst}) ({proto})",
              f";; WHEN: {h.start.astimezone(_dt.timezone.utc):%a %b %d %H:%M:%S UTC %Y}"]
    if q.wire is not None:
        lines.append(f";; MSG SIZE  rcvd: {len(q.wire)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ http
def http_text(r: Any) -> str:
    """``curl -i``: the status line and headers as received, a blank line,
    the body; curl's "curl: (…) …" line when there was no response."""
    if r.status_code is None:
        why = r.error or r.parse_error or "no response"
        return f"curl: ({r.stop_reason}) {r.url}: {why}"
    head = r.header_raw.replace("\r\n", "\n").rstrip("\n")
    return f"{head}\n\n{r.text}".rstrip("\n")


# ------------------------------------------------------------ throughput
def throughput_text(r: Any) -> str:
    """iperf3-like: a header, about ten intervals over the transfer, the
    figure over (b, t0)–(size, t1) and who measured it; or why none."""
    head = (f"Connecting to host {r.dst}, port {r.port} ({r.direction}, {r.size} bytes, "
            f"skip {r.skip}, measured by the {'VP' if r.measured_by == 'vp' else 'server'})")
    lines = [head]
    s = r.samples
    if len(s) >= 2:
        step = max(1, (len(s) - 1) // 10)
        t_start = s[0][0]
        picked = s[::step]
        if picked[-1] != s[-1]:
            picked.append(s[-1])
        lines.append("[ ID] Interval           Transfer     Bitrate")
        for (ta, na), (tb, nb) in zip(picked, picked[1:]):
            secs = (tb - ta) / 1e9
            rate = 8 * (nb - na) / secs / 1e6 if secs > 0 else 0.0
            lines.append(f"[  1] {(ta - t_start) / 1e9:6.2f}-{(tb - t_start) / 1e9:6.2f} sec "
                         f"{(nb - na) / (1 << 20):7.2f} MBytes {rate:8.2f} Mbits/sec")
    if r.bps is not None:
        lines.append(f"throughput {r.bps / 1e6:.2f} Mbits/sec: {r.size - r.b} bytes in "
                     f"{(r.t1_ns - r.t0_ns) / 1e9:.3f} s after the first {r.b} ({r.ts_source or '?'} times)")
    else:
        lines.append(f"no throughput figure: {r.stop_reason}: {r.error or 'no error text'} "
                     f"({r.bytes} of {r.size} bytes moved)")
    return "\n".join(lines)
