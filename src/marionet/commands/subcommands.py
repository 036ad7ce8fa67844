"""The measurement subcommands: ``marionet ping | trace | tracelb | dns |
http | udpprobe | sniff | tbit | throughput``.

Each subcommand's own options are named after scamper's ``do_*``
parameters (``-c`` sets ``attempts``, ``-W`` ``wait_timeout`` …) and map
one to one onto them; an option left out is not passed, so the primitive's
own default (scamper's) applies. Each also says what counts as failure,
the way the tool it imitates decides its exit status: ping fails with no
reply (iputils), dns without a reply (dig), http without a response
(curl), the others only when the measurement itself errs (traceroute).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from .common import CliError, add_common_args
from .run import Job, run_jobs

__all__ = ["add_measure_parsers", "COMMANDS"]

Builder = Callable[[argparse.Namespace], list[Job]]


def _pick(args: argparse.Namespace, **names: str) -> dict[str, Any]:
    """do_* keyword arguments from options: ``param=option_dest``, unset ones left out."""
    return {param: getattr(args, dest) for param, dest in names.items() if getattr(args, dest) is not None}


def _stopped_in_error(r: Any) -> bool:
    return str(getattr(r, "stop_reason", "") or "").lower() == "error"


# ------------------------------------------------------------------ ping
def _ping_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="address(es) to ping")
    p.add_argument("-c", dest="attempts", type=int, help="probes to send (default 4)")
    p.add_argument("-i", dest="wait_probe", type=float, metavar="SECONDS", help="time between probes (default 1)")
    p.add_argument("-W", dest="wait_timeout", type=float, metavar="SECONDS",
                   help="time to wait for replies after the last probe (default 1)")
    p.add_argument("-P", dest="method", help="icmp-echo (default), icmp-time, udp, udp-dport, tcp-syn, tcp-ack, …")
    p.add_argument("-s", dest="size", type=int, help="whole IP packet size in bytes (scamper's -s)")
    p.add_argument("-t", dest="ttl", type=int, help="IP TTL / hop limit of the probes")
    p.add_argument("--tos", type=int, help="IP TOS / traffic class byte")
    p.add_argument("-R", dest="ip_rr", action="store_true", default=None, help="IPv4 record route option")
    p.add_argument("-T", dest="ip_ts", metavar="tsonly|tsandaddr|tsprespec=A,…", help="IPv4 timestamp option")
    p.add_argument("--sport", type=int, help="source port (udp/tcp methods)")
    p.add_argument("--dport", type=int, help="destination port (udp/tcp methods)")
    p.add_argument("-S", "--src", help="source address (one of the VP's)")


def _ping_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, attempts="attempts", wait_probe="wait_probe", wait_timeout="wait_timeout", method="method",
               size="size", ttl="ttl", tos="tos", ip_rr="ip_rr", ip_ts="ip_ts", sport="sport", dport="dport",
               src="src")
    return [Job("ping", {"dst": t, **kw}) for t in a.targets]


def _ping_ok(r: Any) -> bool:
    return r.nreplies > 0  # iputils ping: exit 1 when nothing answered


# ----------------------------------------------------------------- trace
def _trace_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="address(es) to trace toward")
    p.add_argument("-P", dest="method", help="udp-paris (default), icmp-paris, udp, icmp, tcp, tcp-ack")
    p.add_argument("-q", dest="attempts", type=int, help="probes per hop (default 2)")
    p.add_argument("-m", dest="hoplimit", type=int, help="largest TTL to probe (default: until the gap limit)")
    p.add_argument("-f", dest="firsthop", type=int, help="first TTL to probe (default 1)")
    p.add_argument("-g", dest="gaplimit", type=int, help="stop after this many silent hops in a row (default 5)")
    p.add_argument("-l", dest="loops", type=int, help="stop after this many loops (0: never; default 1)")
    p.add_argument("-w", dest="wait_timeout", type=float, metavar="SECONDS", help="time to wait per probe (default 5)")
    p.add_argument("-N", dest="squeries", type=int, help="consecutive hops probed at once (default 1)")
    p.add_argument("--sport", type=int, help="source port / ICMP id")
    p.add_argument("--dport", type=int, help="destination port")
    p.add_argument("-S", "--src", help="source address (one of the VP's)")


def _trace_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, method="method", attempts="attempts", hoplimit="hoplimit", firsthop="firsthop",
               gaplimit="gaplimit", loops="loops", wait_timeout="wait_timeout", squeries="squeries",
               sport="sport", dport="dport", src="src")
    return [Job("trace", {"dst": t, **kw}) for t in a.targets]


# --------------------------------------------------------------- tracelb
def _tracelb_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="address(es) to trace toward")
    p.add_argument("-P", dest="method", help="udp-dport (default), udp-sport, icmp-echo, tcp-sport, tcp-ack-sport")
    p.add_argument("-c", dest="confidence", type=int, choices=(95, 99), help="MDA confidence in %% (default 95)")
    p.add_argument("-q", dest="attempts", type=int, help="attempts per probe (default 2)")
    p.add_argument("-g", dest="gaplimit", type=int, help="stop after this many silent hops (default 3)")


def _tracelb_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, method="method", confidence="confidence", attempts="attempts", gaplimit="gaplimit")
    return [Job("tracelb", {"dst": t, **kw}) for t in a.targets]


# ------------------------------------------------------------------- dns
def _dns_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("qnames", nargs="+", metavar="QNAME", help="name(s) to look up")
    p.add_argument("--server", help="the server to ask (default: the VP's first resolver)")
    p.add_argument("-t", dest="qtype", help="query type (default A)")
    p.add_argument("--class", dest="qclass", help="query class (default IN)")
    p.add_argument("--tcp", action="store_true", default=None, help="ask over TCP")
    p.add_argument("--no-rd", dest="rd", action="store_false", default=None, help="clear the recursion-desired bit")
    p.add_argument("--nsid", action="store_true", default=None, help="ask for the server's NSID (EDNS)")


def _dns_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, server="server", qtype="qtype", qclass="qclass", tcp="tcp", rd="rd", nsid="nsid")
    return [Job("dns", {"qname": q, **kw}) for q in a.qnames]


def _dns_ok(r: Any) -> bool:
    return r.reply is not None  # dig: any reply (NXDOMAIN too) is success, none is not


# ------------------------------------------------------------------ http
def _http_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", nargs="+", metavar="URL", help="http[s]://host[:port]/path")
    p.add_argument("--dst", help="address to connect to (default: the URL's host, which must then be an address)")
    p.add_argument("-H", dest="header", action="append", metavar="'NAME: VALUE'", help="request header (repeatable)")
    p.add_argument("-k", "--insecure", dest="insecure", action="store_true", default=None,
                   help="do not verify the server's certificate")
    p.add_argument("--cacert", metavar="FILE", help="PEM file of extra trusted roots")
    p.add_argument("--limit-time", dest="limit_time", type=float, metavar="SECONDS",
                   help="give up after this long (default 60)")


def _http_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, insecure="insecure", limit_time="limit_time")
    if a.header:
        pairs = []
        for h in a.header:
            name, sep, value = h.partition(":")
            if not sep or not name.strip():
                raise CliError(f"-H wants 'NAME: VALUE', got {h!r}")
            pairs.append((name.strip(), value.strip()))
        kw["headers"] = pairs
    if a.cacert:
        try:
            with open(a.cacert, encoding="ascii") as f:
                kw["ca"] = f.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--cacert {a.cacert}: {exc}") from None
    dst = {} if a.dst is None else {"dst": a.dst}
    return [Job("http", {**dst, "url": u, **kw}) for u in a.urls]


def _http_ok(r: Any) -> bool:
    return r.status_code is not None  # curl without -f: any HTTP response is success


# -------------------------------------------------------------- udpprobe
def _udpprobe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="address of the UDP service")
    p.add_argument("dport", type=int, metavar="DPORT", help="its port")
    p.add_argument("--payload", metavar="HEX", help="the request's bytes, in hex")
    p.add_argument("-q", dest="attempts", type=int, help="requests to send (default 1)")
    p.add_argument("--stop-count", dest="stop_count", type=int, help="stop after this many replies")


def _udpprobe_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, payload="payload", attempts="attempts", stop_count="stop_count")
    return [Job("udpprobe", {"dst": a.target, "dport": a.dport, **kw})]


def _udpprobe_ok(r: Any) -> bool:
    replies = getattr(r, "replies", None)
    if replies is not None:
        return len(replies() if callable(replies) else replies) > 0  # request/response: no reply is a failure
    return not _stopped_in_error(r)


# ----------------------------------------------------------------- sniff
def _sniff_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--src", required=True, help="the VP's address to capture packets for")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--icmp-id", dest="icmp_id", type=int, metavar="N", help="capture ICMP with this id")
    what.add_argument("--filter", dest="expr", metavar="EXPR", help="capture by a tcpdump filter expression")
    p.add_argument("--count", dest="limit_pkt_count", type=int, help="stop after this many packets (default 100)")
    p.add_argument("--time", dest="limit_time", type=float, metavar="SECONDS", help="stop after this long (default 60)")


def _sniff_jobs(a: argparse.Namespace) -> list[Job]:
    return [Job("sniff", _pick(a, src="src", icmp_id="icmp_id", expr="expr",
                               limit_pkt_count="limit_pkt_count", limit_time="limit_time"))]


# ------------------------------------------------------------------ tbit
TBIT_METHODS = ("ecn", "sack-rcvr", "null", "icw", "pmtud")


def _tbit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="address(es) of the web server")
    p.add_argument("-t", dest="method", choices=TBIT_METHODS, help="the test (default: the primitive's)")
    p.add_argument("-u", dest="url", help="URL to fetch during the test")
    p.add_argument("--sport", type=int, help="source port (the VP must drop its own RSTs from it)")
    p.add_argument("--dport", type=int, help="the server's port (default 80)")


def _tbit_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, method="method", url="url", sport="sport", dport="dport")
    return [Job("tbit", {"dst": t, **kw}) for t in a.targets]


#: scamper's tbit results below this code say the test could not run (no
#: connection, a reset, an error, aborted, halted); from it on they describe
#: the server (ecn-incapable, sack-rcvr-nosack …), a result like any other.
_TBIT_FIRST_OUTCOME = 8


def _tbit_ok(r: Any) -> bool:
    code = getattr(r, "result", None)
    return code is not None and int(code) >= _TBIT_FIRST_OUTCOME


# ------------------------------------------------------------ throughput
def _size(text: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary, as iperf3 reads -n)."""
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if mult > 1 else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a byte count: {text!r} (e.g. 25M)") from None


def _throughput_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("targets", nargs="+", metavar="TARGET", help="address(es) of marionet throughput-servers")
    p.add_argument("-p", "--port", type=int, help="the server's port (default 5301)")
    p.add_argument("-d", "--direction", choices=("download", "upload"), help="default download")
    p.add_argument("-n", "--size", type=_size, help="bytes to move, K/M/G suffixes (default 25M)")
    p.add_argument("--skip", type=_size, help="bytes left out of the figure at the start (default 1M)")
    p.add_argument("--interval", type=float, metavar="SECONDS", help="sample spacing (default 0.01)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="transfer time limit (default 60)")


def _throughput_jobs(a: argparse.Namespace) -> list[Job]:
    kw = _pick(a, port="port", direction="direction", size="size", skip="skip", interval="interval",
               timeout="timeout")
    return [Job("throughput", {"dst": t, **kw}) for t in a.targets]


def _throughput_ok(r: Any) -> bool:
    return getattr(r, "bps", None) is not None


# ------------------------------------------------------------- the table
#: name -> (help, add own arguments, jobs from args, success predicate)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Builder, Callable[[Any], bool]]] = {
    "ping": ("ping targets from VPs (iputils ping output)", _ping_args, _ping_jobs, _ping_ok),
    "trace": ("traceroute from VPs (traceroute output)", _trace_args, _trace_jobs,
              lambda r: not _stopped_in_error(r)),
    "tracelb": ("MDA load-balancer traceroute from VPs", _tracelb_args, _tracelb_jobs,
                lambda r: not _stopped_in_error(r)),
    "dns": ("DNS queries from VPs (dig output)", _dns_args, _dns_jobs, _dns_ok),
    "http": ("HTTP(S) fetches from VPs (curl -i output)", _http_args, _http_jobs, _http_ok),
    "udpprobe": ("a UDP request/response from VPs", _udpprobe_args, _udpprobe_jobs, _udpprobe_ok),
    "sniff": ("capture packets at VPs", _sniff_args, _sniff_jobs, lambda r: not _stopped_in_error(r)),
    "tbit": ("TCP behaviour inference from VPs", _tbit_args, _tbit_jobs, _tbit_ok),
    "throughput": ("TCP throughput from VPs to a throughput server (PAM'25 method)", _throughput_args,
                   _throughput_jobs, _throughput_ok),
}


def add_measure_parsers(sub: argparse._SubParsersAction) -> None:
    """Add every measurement subcommand to ``marionet``'s subparsers."""
    for name, (help_, own, jobs, ok) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_ + ". Options are scamper's do_" + name +
                           " parameters; unset ones keep scamper's defaults.")
        own(p)
        add_common_args(p, insecure_alias=name != "http")
        p.set_defaults(handler=_handler(jobs, ok), prog=p.prog)


def _handler(jobs: Builder, ok: Callable[[Any], bool]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        try:
            return run_jobs(args, jobs(args), ok)
        except CliError as exc:
            print(f"{args.prog}: error: {exc}", file=sys.stderr)
            return exc.status
        except KeyboardInterrupt:
            print(f"{args.prog}: interrupted", file=sys.stderr)
            return 130

    return handle
