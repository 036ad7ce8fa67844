"""The congruence study's experiments: one measurement, every source, one row shape.

Each experiment knows its *sources* — marionet's placements (``native``: the
measurement in a worker process on the VP; ``endpoint``: the VP's endpoint
runs it as a primitive; ``remote``: this process runs it over the VP's
packet interface) and the native tools it is judged against — and turns one
run of one source on one VP into ``Sample`` rows. The study (``study``)
alternates the sources back to back; the report (``report``) compares every
source with the experiment's reference source, as PAM'25 compares
PacketLab with the native tool.

Why these defaults:

* traceroute: ``udp-paris``-free plain UDP as Butskoy sends it, three
  attempts per hop with every attempt kept, so each run gives three RTTs
  from the destination and one path; the reference is Butskoy traceroute
  (user-space send stamp, kernel receive stamp).
* throughput: the PAM'25 pipe-saturation method in both directions against
  the lab's throughput server; the reference is a plain-socket client of the
  same protocol (``native_throughput``); iperf3 is reported beside it.
* web: fetch every lab site with curl and with the HTTP primitive; a site's
  body is compared after the paper's cleaning step (``web.clean_body``).
* send gap: trains of scheduled UDP sends; the reference is a plain Python
  sender on the VP (sleep, then spin), both stamped by the kernel.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit
from dataclasses import dataclass, field
from typing import Any, Sequence

from marionet.evaluate.samples import Sample
from marionet.measure.throughput_proto import DEFAULT_PORT as THROUGHPUT_PORT

__all__ = ["Experiment", "TraceExperiment", "PingExperiment", "DnsExperiment", "ThroughputExperiment",
           "WebExperiment", "SendGapExperiment", "dns_names", "web_sites",
           "StudyContext", "GOODPUT_RATIO", "WebSite"]

#: TCP payload per Ethernet frame at MTU 1500 (timestamps on): what a rate limit leaves for goodput
GOODPUT_RATIO = 1448 / 1514


@dataclass
class StudyContext:
    """What experiments need from the running study."""

    lab: Any                       # marionet.lab.core.Lab
    ctrl: Any                      # marionet.client.actrl.AsyncCtrl attached to the lab's VPs
    conn: Any                      # a ControllerConnection (for packet sessions to VPs)
    workers: dict[str, Any]        # vp -> NativeWorker in the VP's namespace
    server: str                    # the server node's name
    server_addr: str               # its IPv4 address
    truth: dict[str, Any] = field(default_factory=dict)

    def inst(self, vp: str) -> Any:
        for i in self.ctrl.instances():
            if i.name == vp:
                return i
        raise LookupError(f"VP {vp!r} is not attached")

    async def exec(self, node: str, argv: Sequence[str], timeout: float) -> Any:
        return await asyncio.to_thread(self.lab.exec, node, list(argv), timeout=timeout)

    def link_to(self, vp: str) -> dict[str, Any]:
        """The VP's access link in the lab truth (its delay and rate); {} off a lab."""
        for ln in self.truth.get("links", []):
            if vp in (ln["a"], ln["b"]):
                return ln
        return {}

    def rtt_ms(self, vp: str, dst_node: str) -> float | None:
        """The round-trip time from ``vp`` to ``dst_node`` (IPv4) the lab really
        emulates: the configured delays plus, for each delayed link on the
        path, the forwarder's own lateness measured unloaded at start-up (its
        calibration median, both ways; the live figures include bulk
        transfers' queueing, which latency probes sent alone do not see)."""
        import ipaddress

        for p in self.truth.get("paths", []):
            if p["src"] != vp or p["dst"] != dst_node or p["family"] != 4 or not p.get("one_way_delay_ms"):
                continue
            lo, hi = p["one_way_delay_ms"]
            hops = {ipaddress.ip_address(a) for path in p.get("paths", []) for a in path if a}
            cal = ((self.truth.get("forwarder") or {}).get("calibration") or {}).get("send_late_us") or {}
            late_us = float(cal.get("median") or 0.0)
            added_ms = 0.0
            for ln in self.truth.get("links", []):
                nets = [ipaddress.ip_interface(x).network for x in ln.get("ipv4", [])]
                if ln.get("forwarder") and any(h in n for h in hops for n in nets):
                    added_ms += 2 * late_us / 1000
            return (lo + hi) + added_ms
        return None

class Experiment:
    """One measurement across sources. Subclasses set the class attributes."""

    name: str = ""
    sources: tuple[str, ...] = ()
    reference: str = ""
    #: run VPs at the same time (latency/content experiments) or one at a time (throughput, send gap)
    parallel: bool = True
    #: seconds one run of one source may take before it counts as failed
    timeout: float = 120.0

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        """``report.ExperimentSpec`` s for the samples this experiment writes."""
        raise NotImplementedError

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        raise NotImplementedError

    async def setup(self, ctx: StudyContext, vps: Sequence[str]) -> None:
        """Once before the first run (start receivers, check tools)."""

    async def teardown(self, ctx: StudyContext) -> None:
        """Once after the last run."""


async def _marionet(ctx: StudyContext, vp: str, source: str, primitive: str, params: dict[str, Any],
                    timeout: float) -> Any:
    """Run ``primitive`` from ``vp`` in marionet placement ``source``."""
    if source == "native":
        return await ctx.workers[vp].run(primitive, params, timeout=timeout)
    do = getattr(ctx.ctrl, f"do_{primitive}")
    return await asyncio.wait_for(do(inst=ctx.inst(vp), sync=True, placement=source, **params), timeout)


# ------------------------------------------------------------------ traceroute
class TraceExperiment(Experiment):
    """Traceroute to the server: destination RTTs (``trace-rtt``) and the path (``trace-path``)."""

    name = "trace"
    sources = ("traceroute", "scamper", "native", "endpoint", "remote")
    reference = "traceroute"
    attempts = 3
    max_ttl = 16

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate.report import ExperimentSpec

        truth = {vp: ctx.rtt_ms(vp, ctx.server) for vp in vps}
        return [
            ExperimentSpec("trace-rtt", "Traceroute: RTT of the destination's replies", "rtt_ms",
                           self.reference, kind="numeric", truth={k: v for k, v in truth.items() if v},
                           unit="ms"),
            ExperimentSpec("trace-path", "Traceroute: path ((hop, address) pairs over all runs)", "path",
                           self.reference, kind="set"),
        ]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        dst = ctx.server_addr
        now = time.time_ns()
        if source in ("traceroute", "scamper"):
            from marionet.evaluate import native

            fn = native.run_traceroute if source == "traceroute" else native.run_scamper_trace
            tr = await asyncio.to_thread(fn, ctx.lab, vp, dst, queries=self.attempts, max_ttl=self.max_ttl,
                                         timeout=self.timeout)
            if tr.error:
                return [Sample("trace-rtt", vp, source, run, "rtt_ms", None, None, None, now)]
            rtts, items = tr.dest_rtts(), sorted(tr.path_items())
        else:
            res = await _marionet(ctx, vp, source, "trace",
                                  {"dst": dst, "method": "udp", "attempts": self.attempts, "all_attempts": True,
                                   "hoplimit": self.max_ttl, "wait_timeout": 2}, self.timeout)
            rtts, items = _trace_dest_rtts(res, dst), sorted(_trace_path_items(res))
        out = [Sample("trace-rtt", vp, source, run, "rtt_ms", r, None, None, now) for r in rtts]
        if not rtts:
            out.append(Sample("trace-rtt", vp, source, run, "rtt_ms", None, None, None, now))
        out += [Sample("trace-path", vp, source, run, "path", None, it, None, now) for it in items]
        return out


def _trace_dest_rtts(res: Any, dst: str) -> list[float]:
    """RTTs (ms) of every reply from the destination, all attempts."""
    return [h.rtt_ns / 1e6 for h in res.hop_records if str(h.src) == dst and h.rtt_ns is not None]


def _trace_path_items(res: Any) -> set[str]:
    """The C3 items of one trace, as ``native.TraceRun.path_items``: "ttl|address"
    for every responding address, "ttl|*" for a TTL nothing answered."""
    items = {f"{h.probe_ttl}|{h.src}" for h in res.hop_records if h.src is not None}
    answered = {h.probe_ttl for h in res.hop_records}
    items |= {f"{ttl}|*" for ttl in range(res.firsthop, (res.hop_count or 0) + 1) if ttl not in answered}
    return items


# ------------------------------------------------------------------ ping
class PingExperiment(Experiment):
    """ICMP echo RTTs to the server: iputils ping (reference), scamper, marionet."""

    name = "ping"
    sources = ("ping", "scamper", "native", "endpoint", "remote")
    reference = "ping"
    count = 10
    interval = 0.2

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate.report import ExperimentSpec

        truth = {vp: ctx.rtt_ms(vp, ctx.server) for vp in vps}
        return [ExperimentSpec("ping-rtt", "Ping: RTT of echo replies", "rtt_ms", self.reference, kind="numeric",
                               truth={k: v for k, v in truth.items() if v}, unit="ms")]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        now = time.time_ns()
        if source in ("ping", "scamper"):
            from marionet.evaluate import native

            if source == "ping":
                pr = await asyncio.to_thread(native.run_ping, ctx.lab, vp, ctx.server_addr, count=self.count,
                                             interval=self.interval, timeout=self.timeout)
            else:
                pr = await asyncio.to_thread(native.run_scamper_ping, ctx.lab, vp, ctx.server_addr,
                                             count=self.count, interval=self.interval, timeout=self.timeout)
            rtts = [] if pr.error else list(pr.rtts_ms)
        else:
            res = await _marionet(ctx, vp, source, "ping",
                                  {"dst": ctx.server_addr, "attempts": self.count, "wait_probe": self.interval,
                                   "wait_timeout": 2}, self.timeout)
            rtts = [r.rtt.total_seconds() * 1e3 for r in res.from_target() if r.rtt is not None]
        out = [Sample("ping-rtt", vp, source, run, "rtt_ms", r, None, None, now) for r in rtts]
        return out or [Sample("ping-rtt", vp, source, run, "rtt_ms", None, None, None, now)]


# ------------------------------------------------------------------ DNS
class DnsExperiment(Experiment):
    """DNS answers from the server's authoritative zone: dig (reference) vs marionet's dns; C3."""

    name = "dns"
    sources = ("dig", "native", "endpoint", "remote")
    reference = "dig"

    def __init__(self, names: Sequence[tuple[str, str]]) -> None:
        if not names:
            raise ValueError("the dns experiment needs names to ask (a dns service with records on the server)")
        self.names = list(names)

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate.report import ExperimentSpec

        return [ExperimentSpec("dns", "DNS: (name, type, answer record) triples", "dns", self.reference, kind="set")]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        from marionet.evaluate import native

        now = time.time_ns()
        items: list[str] = []
        for qname, qtype in self.names:
            key = f"{qname} {qtype}"
            if source == "dig":
                r = await asyncio.to_thread(native.run_dig, ctx.lab, vp, ctx.server_addr, qname, qtype, timeout=30)
                if r.error:
                    items.append(f"{key}|ERROR:{native.error_kind(r.error)}")
                    continue
                answers, rcode = r.answer, (r.rcode or "").upper()
            else:
                try:
                    res = await _marionet(ctx, vp, source, "dns",
                                          {"qname": qname, "qtype": qtype, "server": ctx.server_addr, "rd": False},
                                          30)
                except Exception as e:  # noqa: BLE001 - a failed query is a result
                    items.append(f"{key}|ERROR:{type(e).__name__}")
                    continue
                if res.reply is None:
                    items.append(f"{key}|ERROR:timeout")
                    continue
                answers = [native.normalise_rr(str(rr)) for rr in res.ans()]
                rcode = str(res.rcode_str).upper()
            items += [f"{key}|{a}" for a in answers] or [f"{key}|{rcode}"]
        return [Sample("dns", vp, source, run, "dns", None, it, None, now) for it in sorted(set(items))]


def dns_names(lab: Any, server: str) -> list[tuple[str, str]]:
    """(name, type) of every record the server's dns services hold (from the lab spec)."""
    out: list[tuple[str, str]] = []
    for svc in lab.spec.services:
        if svc.host != server or svc.kind != "dns":
            continue
        zones = svc.options.get("zones") or [svc.options]
        for z in zones:
            zone = str(z.get("zone", "")).rstrip(".")
            for rec in z.get("records", []):
                owner, rtype = str(rec[0]), str(rec[1]).upper()
                name = zone if owner == "@" else f"{owner}.{zone}"
                if (name, rtype) not in out:
                    out.append((name, rtype))
    return out


# ------------------------------------------------------------------ throughput
class ThroughputExperiment(Experiment):
    """TCP pipe saturation (PAM'25 §5.2) against the lab's throughput server."""

    parallel = False
    sources = ("native-client", "native", "endpoint", "remote", "iperf3")
    reference = "native-client"
    timeout = 180.0

    def __init__(self, direction: str, size: int = 25 << 20, skip: int = 1 << 20, *, iperf3: bool = True) -> None:
        if direction not in ("download", "upload"):
            raise ValueError("direction must be download or upload")
        if not iperf3:
            self.sources = tuple(s for s in self.sources if s != "iperf3")
        self.direction = direction
        self.size = size
        self.skip = skip
        self.port = THROUGHPUT_PORT
        self.name = "throughput-down" if direction == "download" else "throughput-up"

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate.report import ExperimentSpec

        truth = {}
        for vp in vps:
            rate = ctx.link_to(vp).get("rate_bps")
            if rate:
                truth[vp] = rate * GOODPUT_RATIO / 1e6
        return [ExperimentSpec(self.name, f"TCP throughput, {self.direction} ({self.size >> 20} MiB, "
                               f"first {self.skip >> 10} KiB skipped)", "mbps", self.reference, kind="numeric",
                               threshold=0.06, truth=truth, unit="Mbit/s")]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        now = time.time_ns()
        mbps: float | None = None
        if source == "native-client":
            cp = await ctx.exec(vp, [sys.executable, "-m", "marionet.evaluate.native_throughput", ctx.server_addr,
                                     str(self.port), self.direction, str(self.size), str(self.skip)],
                                self.timeout)
            mbps = _native_client_mbps(cp.stdout)
        elif source == "iperf3":
            from marionet.evaluate import iperf

            # iperf3's receiver average over a timed test with the first second omitted (slow start),
            # long enough to carry about `size` bytes at the link's rate
            rate = ctx.link_to(vp).get("rate_bps") or 100_000_000
            secs = max(3, round(self.size * 8 / rate) + 1)
            r = await asyncio.to_thread(iperf.run_iperf3, ctx.lab, vp, ctx.server_addr, direction=self.direction,
                                        seconds=secs, omit=1, timeout=self.timeout)
            mbps = None if r.error else r.mbps
        else:
            res = await _marionet(ctx, vp, source, "throughput",
                                  {"dst": ctx.server_addr, "port": self.port, "direction": self.direction,
                                   "size": self.size, "skip": self.skip}, self.timeout)
            mbps = None if res.error else res.bps / 1e6
        return [Sample(self.name, vp, source, run, "mbps", mbps, None, None, now)]


def _native_client_mbps(stdout: str) -> float | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if d.get("error") or not d.get("bps"):
            return None
        return float(d["bps"]) / 1e6
    return None


# ------------------------------------------------------------------ web content
@dataclass(frozen=True)
class WebSite:
    name: str        # how the site is named in results ("https://host/page")
    host: str        # the host name (SNI, Host; curl --resolve)
    url: str         # what is fetched


class WebExperiment(Experiment):
    """Web content: every site fetched by curl and by the HTTP primitive; C3 over (site, body)."""

    name = "web"
    sources = ("curl", "native", "endpoint", "remote")
    reference = "curl"

    def __init__(self, sites: Sequence[WebSite], ca_file: str | None) -> None:
        if not sites:
            raise ValueError("the web experiment needs at least one site (an http/https service on the server)")
        self.sites = list(sites)
        self.ca_file = ca_file
        self.ca_pem = open(ca_file).read() if ca_file else None

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate.report import ExperimentSpec

        return [ExperimentSpec("web", "Web content: (site, cleaned body) pairs", "web", self.reference,
                               kind="set")]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        from marionet.evaluate import native, web

        now = time.time_ns()
        out = []
        for site in self.sites:
            if source == "curl":
                port = urlsplit(site.url).port or (443 if site.url.startswith("https:") else 80)
                r = await asyncio.to_thread(native.run_curl, ctx.lab, vp, site.url,
                                            resolve={f"{site.host}:{port}": ctx.server_addr}, ca=self.ca_file,
                                            timeout=30)
                item = web.web_item(site.name, r.status, r.body, r.error)
            else:
                params: dict[str, Any] = {"dst": ctx.server_addr, "url": site.url}
                if self.ca_pem:
                    params["ca"] = self.ca_pem
                try:
                    res = await _marionet(ctx, vp, source, "http", params, 60)
                    item = web.web_item(site.name, res.status_code, res.body,
                                        None if res.status_code else (res.error or str(res.stop_reason)))
                except Exception as e:  # noqa: BLE001 - a failed fetch is a result ("site|ERROR:…")
                    item = web.web_item(site.name, None, None, f"{type(e).__name__}: {e}")
            out.append(Sample("web", vp, source, run, "web", None, item, None, now))
        return out


def web_sites(lab: Any, server: str) -> tuple[list[WebSite], str | None]:
    """Every page the server's http/https services serve under each host name,
    and the lab CA (for https): the web experiment's site list."""
    sites: list[WebSite] = []
    ca: str | None = None
    for h in lab.services():
        if h.netns != lab.netns(server) or h.kind not in ("http", "https"):
            continue
        port = h.ports.get(h.kind)
        scheme = h.kind
        default = 443 if scheme == "https" else 80
        names = h.info.get("hostnames") or [server]
        pages = sorted(h.info.get("files") or ["/"])
        for name in names:
            for page in pages:
                page = page if page.startswith("/") else "/" + page
                hostport = name if port == default else f"{name}:{port}"
                sites.append(WebSite(f"{scheme}://{name}{page}", name, f"{scheme}://{hostport}{page}"))
        if scheme == "https":
            ca = h.info.get("ca")
    return sites, ca


# ------------------------------------------------------------------ send gap
class SendGapExperiment(Experiment):
    """Scheduled UDP sends at fixed spacings: achieved gaps at the sender
    (kernel TX stamps, ``send-gap``) and at the receiver (``send-gap-rx``).

    Sources: the native sender (a plain Python process on the VP: sleep,
    then spin), marionet in the native placement (the train over a private
    endpoint in the VP's worker) and remote (this process schedules the
    train on the VP's endpoint through the controller). There is no endpoint
    placement: the train *is* a packet-model operation (``nsendv`` with
    ``at=``), so the endpoint-side run is the native one.
    """

    name = "sendgap"
    parallel = False
    sources = ("native-sender", "native", "remote")
    reference = "native-sender"
    spacings_ns: tuple[int, ...] = (100_000, 20_000, 10_000, 7_300, 5_000)
    count = 500
    start_delay_ns = 300_000_000
    timeout = 60.0

    def specs(self, ctx: StudyContext, vps: Sequence[str]) -> list[Any]:
        from marionet.evaluate import sendgap as sg
        from marionet.evaluate.report import ExperimentSpec

        params = [sg.spacing_param(s) for s in self.spacings_ns]
        truth = {(vp, sg.spacing_param(s)): s / 1000 for vp in vps for s in self.spacings_ns}
        return [ExperimentSpec(sg.EXPERIMENT_TX, "Send gap at the sender (kernel TX stamps)", "gap_us",
                               self.reference, kind="numeric", unit="µs", params_order=params, truth=truth),
                ExperimentSpec(sg.EXPERIMENT_RX, "Send gap at the receiver (kernel RX stamps)", "gap_us",
                               self.reference, kind="numeric", unit="µs", params_order=params, truth=truth)]

    async def run(self, ctx: StudyContext, vp: str, source: str, run: int) -> list[Sample]:
        from marionet.evaluate import sendgap as sg

        out: list[Sample] = []
        session = await ctx.conn.attach(vp) if source == "remote" else None
        try:
            for spacing in self.spacings_ns:
                train = await self._train(ctx, vp, source, spacing, session)
                out += sg.train_samples(train, vp=vp, source=source, run=run)
        finally:
            if session is not None:
                await session.close()
        return out

    async def _train(self, ctx: StudyContext, vp: str, source: str, spacing_ns: int, session: Any) -> Any:
        from marionet.evaluate import sendgap as sg

        span_s = (self.count * spacing_ns + self.start_delay_ns) / 1e9
        receiver = _Receiver(ctx.lab.netns(ctx.server), self.count, span_s + 10)
        port = await receiver.start()
        kw = dict(dst=ctx.server_addr, port=port, count=self.count, spacing_ns=spacing_ns,
                  start_delay_ns=self.start_delay_ns)
        if source == "native-sender":
            d = await ctx.workers[vp].call("sendgap.native_train", timeout=self.timeout, **kw)
        elif source == "native":
            d = await ctx.workers[vp].call("sendgap.train", timeout=self.timeout, **kw)
        else:
            d = None
            train = await asyncio.wait_for(sg.marionet_train(session, **kw), self.timeout)
        if d is not None:
            train = sg.Train.from_dict(d)
        return train.with_receiver(await receiver.result(span_s + 15))


class _Receiver:
    """``sendgap.receive`` in a thread of its own moved into the server's
    namespace (sockets keep the namespace they were made in; the thread, and
    with it the namespace switch, ends with the train) — no process start
    per train."""

    def __init__(self, netns: str, count: int, timeout: float) -> None:
        import threading

        self.netns, self.count, self.timeout = netns, count, timeout
        self._loop = asyncio.get_running_loop()
        self._port: asyncio.Future[int] = self._loop.create_future()
        self._done: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name="sendgap-receiver", daemon=True)

    def _work(self) -> None:
        from marionet.evaluate import sendgap as sg
        from marionet.lab.system import setns

        def settle(fut: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
            def go() -> None:
                if not fut.done():
                    fut.set_exception(exc) if exc is not None else fut.set_result(value)
            self._loop.call_soon_threadsafe(go)

        try:
            setns(self.netns)
            report = sg.receive(0, self.count, self.timeout, ready=lambda port: settle(self._port, port))
            settle(self._done, report)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting study
            settle(self._port, exc=e)
            settle(self._done, exc=e)

    async def start(self) -> int:
        self._thread.start()
        return await asyncio.wait_for(self._port, 15)

    async def result(self, timeout: float) -> dict[str, Any]:
        return await asyncio.wait_for(self._done, timeout)
