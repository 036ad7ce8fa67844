"""Lab topology spec: parse, validate and build in code.

The spec is TOML because tests and users write it by hand and Python reads it
with the standard library.  Validation happens entirely before anything is
created, and every error names the line of the raw text it comes from, so a
typo never leaves half a lab behind.

Tables (all optional except at least one node and one link)::

    [lab]        name, controller = "auto" | "HOST:PORT" | false
                 ("auto": the lab starts its own controller and PKI for its
                 VPs; "HOST:PORT": VPs dial an existing controller, "auto:PORT"
                 meaning the management gateway; false: VPs run no endpoint),
                 resolver = "auto" | HOST | false (an in-lab recursive resolver
                 for the lab's DNS zones, which every host's and VP's
                 resolv.conf names; "auto": on the host of the first dns
                 service, if there is one)
    [[host]]     name
    [[vp]]       name, cc, asn, loc = [lat, long], tags = {k = "v"},
                 clock_skew_ms (the VP's endpoint behaves as if its clock were
                 off by this much, ±3600000; see marionet.wire.skew)
    [[router]]   name, icmp_ratelimit (ms), icmp_msgs_per_sec, icmp_msgs_burst,
                 unresponsive, balancer = "kernel" | "flow" | "packet"
    [[aliasrouter]] name, options = {...}   (process from marionet.lab.aliasrouter;
                 options.mpls_hops: emulated LSRs sending RFC 4950 label stacks)
    [[link]]     a, b, delay, jitter, loss, rate, cost, ipv4 = [A, B], ipv6 = [A, B]
    [[diamond]]  name, entry, exit, width, length, balancer, delay, jitter, loss, rate
    [[service]]  host, kind, options = {...}
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
NODE_KINDS = ("host", "vp", "router", "aliasrouter")
BALANCERS = ("kernel", "flow", "packet")
MIN_RATE_BPS = 8_000
MAX_RATE_BPS = 40_000_000_000
MAX_DELAY_MS = 10_000.0


class SpecError(ValueError):
    """An invalid spec; ``line`` is the 1-based line in the raw text (or None)."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None):
        self.line = line
        self.source = source
        where = ""
        if source and line:
            where = f"{source}:{line}: "
        elif line:
            where = f"line {line}: "
        super().__init__(f"{where}{message}")
        self.bare = message


@dataclass
class Node:
    name: str
    kind: str
    line: int | None = None
    # VP metadata
    cc: str | None = None
    asn: int | None = None
    loc: tuple[float, float] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    clock_skew_ms: float = 0.0
    # router behaviour
    icmp_ratelimit: int | None = None
    icmp_msgs_per_sec: int | None = None
    icmp_msgs_burst: int | None = None
    unresponsive: bool = False
    balancer: str = "kernel"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def forwards(self) -> bool:
        """Only kernel routers forward; hosts, VPs and the alias router do not."""
        return self.kind == "router"

    @property
    def is_host(self) -> bool:
        return self.kind in ("host", "vp")


@dataclass
class Link:
    a: str
    b: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    rate_bps: int | None = None
    cost: int = 1
    ipv4: tuple[str, str] | None = None
    ipv6: tuple[str, str] | None = None
    line: int | None = None

    @property
    def impaired(self) -> bool:
        """Links with delay, jitter or loss go through the userspace forwarder."""
        return self.delay_ms > 0 or self.jitter_ms > 0 or self.loss > 0


@dataclass
class Service:
    host: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    line: int | None = None


@dataclass
class Spec:
    name: str = "lab"
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    controller: str | bool = "auto"
    resolver: str | bool = "auto"
    source: str | None = None

    def resolver_host(self) -> str | None:
        """The node that runs the lab's recursive resolver, or None for none.

        "auto" puts it beside the first authoritative server, so any lab
        that serves zones also resolves them for its VPs without a line of
        spec; a host name moves it (e.g. next to the VPs, like an ISP's).
        """
        if self.resolver is False:
            return None
        if self.resolver is True or self.resolver == "auto":
            return next((s.host for s in self.services if s.kind == "dns"), None)
        return str(self.resolver)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``parse_dict`` accepts again (for state files and dumps)."""
        out: dict[str, Any] = {"lab": {"name": self.name, "controller": self.controller}}
        if self.resolver != "auto":
            out["lab"]["resolver"] = self.resolver
        for n in self.nodes.values():
            d: dict[str, Any] = {"name": n.name}
            if n.kind == "vp":
                for k in ("cc", "asn"):
                    if getattr(n, k) is not None:
                        d[k] = getattr(n, k)
                if n.loc is not None:
                    d["loc"] = list(n.loc)
                if n.tags:
                    d["tags"] = dict(n.tags)
                if n.clock_skew_ms:
                    d["clock_skew_ms"] = n.clock_skew_ms
            if n.kind == "router":
                for k in ("icmp_ratelimit", "icmp_msgs_per_sec", "icmp_msgs_burst"):
                    if getattr(n, k) is not None:
                        d[k] = getattr(n, k)
                if n.unresponsive:
                    d["unresponsive"] = True
                if n.balancer != "kernel":
                    d["balancer"] = n.balancer
            if n.kind == "aliasrouter" and n.options:
                d["options"] = dict(n.options)
            out.setdefault(n.kind, []).append(d)
        for ln in self.links:
            d = {"a": ln.a, "b": ln.b}
            if ln.delay_ms:
                d["delay"] = f"{ln.delay_ms}ms"
            if ln.jitter_ms:
                d["jitter"] = f"{ln.jitter_ms}ms"
            if ln.loss:
                d["loss"] = ln.loss
            if ln.rate_bps:
                d["rate"] = ln.rate_bps
            if ln.cost != 1:
                d["cost"] = ln.cost
            if ln.ipv4:
                d["ipv4"] = list(ln.ipv4)
            if ln.ipv6:
                d["ipv6"] = list(ln.ipv6)
            out.setdefault("link", []).append(d)
        for s in self.services:
            out.setdefault("service", []).append({"host": s.host, "kind": s.kind, "options": dict(s.options)})
        return out

    def to_toml(self) -> str:
        """Serialise to TOML (small writer: the spec only has scalars, lists and flat dicts)."""
        d = self.to_dict()
        lines = ["[lab]"]
        for k, v in d["lab"].items():
            lines.append(f"{k} = {_toml_value(v)}")
        for table in ("host", "vp", "router", "aliasrouter", "link", "service"):
            for item in d.get(table, []):
                lines.append("")
                lines.append(f"[[{table}]]")
                for k, v in item.items():
                    lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_value(k)


# --------------------------------------------------------------------------
# line lookup


class _Lines:
    """Finds the line of a table entry or key in the raw TOML text.

    tomllib keeps no positions, so we index table headers (``[[link]]`` number
    i) and search the block after the header for ``key =``.
    """

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"]+)\s*\]\]?")

    def __init__(self, text: str | None):
        self.lines = text.splitlines() if text else []
        self.headers: list[tuple[int, str, bool]] = []  # (lineno, name, is_array)
        for i, raw in enumerate(self.lines, 1):
            m = self.HEADER.match(raw)
            if m:
                self.headers.append((i, m.group(2).strip('"'), m.group(1) == "[["))

    def table(self, name: str, index: int | None = None) -> int | None:
        count = 0
        for lineno, hname, is_array in self.headers:
            if hname != name:
                continue
            if index is None or not is_array:
                return lineno
            if count == index:
                return lineno
            count += 1
        # maybe the table is written inline at top level: `host = [{...}]`
        return self.top_key(name)

    def top_key(self, key: str) -> int | None:
        pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
        for i, raw in enumerate(self.lines, 1):
            if pat.match(raw):
                return i
        return None

    def key(self, table: str, index: int | None, key: str) -> int | None:
        start = self.table(table, index)
        if start is None:
            return None
        pat = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(start, len(self.lines)):  # lines after header (0-based index == lineno)
            raw = self.lines[i]
            if self.HEADER.match(raw):
                break
            if pat.match(raw):
                return i + 1
        return start


# --------------------------------------------------------------------------
# value parsers


_DUR = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s)?\s*$")
_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|tbit|bps|kbps|mbps|gbps|k|m|g)?\s*$", re.I)
_RATE_MUL = {
    None: 1, "bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12,
    "k": 1e3, "m": 1e6, "g": 1e9,
    # tc's "bps" means bytes per second
    "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9,
}


def parse_duration_ms(v: Any) -> float:
    """Numbers are milliseconds; strings take us/ms/s suffixes."""
    if isinstance(v, bool):
        raise ValueError("expected a duration like \"20ms\", got a boolean")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = _DUR.match(v)
        if m:
            x = float(m.group(1))
            unit = m.group(2) or "ms"
            return x * {"us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0}[unit]
    raise ValueError(f"expected a duration like \"20ms\", got {v!r}")


def parse_rate_bps(v: Any) -> int:
    """Numbers are bit/s; strings take tc-style suffixes (kbit, mbit, gbit; *bps = bytes)."""
    if isinstance(v, bool):
        raise ValueError("expected a rate like \"50mbit\", got a boolean")
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        m = _RATE.match(v)
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(float(m.group(1)) * _RATE_MUL[unit])
    raise ValueError(f"expected a rate like \"50mbit\", got {v!r}")


def parse_loss(v: Any) -> float:
    """A probability in [0, 1) or a percentage string like "10%"."""
    if isinstance(v, bool):
        raise ValueError("expected a loss probability, got a boolean")
    if isinstance(v, str) and v.strip().endswith("%"):
        return float(v.strip()[:-1]) / 100.0
    if isinstance(v, (int, float)):
        return float(v)
    raise ValueError(f"expected a loss probability like 0.1 or \"10%\", got {v!r}")


# --------------------------------------------------------------------------
# parsing


_ALLOWED = {
    "lab": {"name", "controller", "resolver"},
    "host": {"name"},
    "vp": {"name", "cc", "asn", "loc", "tags", "clock_skew_ms"},
    "router": {"name", "icmp_ratelimit", "icmp_msgs_per_sec", "icmp_msgs_burst", "unresponsive", "balancer"},
    "aliasrouter": {"name", "options"},
    "link": {"a", "b", "delay", "jitter", "loss", "rate", "cost", "ipv4", "ipv6"},
    "diamond": {"name", "entry", "exit", "width", "length", "balancer", "delay", "jitter", "loss", "rate"},
    "service": {"host", "kind", "options"},
}


def load_spec(path: str | Path) -> Spec:
    p = Path(path)
    return parse_spec(p.read_text(), source=str(p))


def parse_spec(text: str, source: str | None = None) -> Spec:
    """Parse TOML text; errors (syntax or semantic) name the line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise SpecError(f"TOML syntax: {e}", int(m.group(1)) if m else None, source) from None
    return parse_dict(data, text=text, source=source)


def parse_dict(data: dict[str, Any], text: str | None = None, source: str | None = None) -> Spec:
    """Validate a spec dict (from TOML or built in code) into a ``Spec``."""
    return _Parser(data, text, source).run()


def _controller_ok(v: str) -> bool:
    """ "auto", "none", or HOST:PORT ("auto:PORT" = the management gateway; [v6]:PORT)."""
    if v in ("auto", "none"):
        return True
    host, sep, port = v.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) < 65536)


class _Parser:
    def __init__(self, data: dict[str, Any], text: str | None, source: str | None):
        self.data = data
        self.lines = _Lines(text)
        self.source = source
        self.spec = Spec(source=source)

    def err(self, msg: str, table: str | None = None, index: int | None = None, key: str | None = None) -> SpecError:
        line = None
        if table is not None:
            line = self.lines.key(table, index, key) if key else self.lines.table(table, index)
        return SpecError(msg, line, self.source)

    def entries(self, table: str) -> list[dict[str, Any]]:
        v = self.data.get(table, [])
        if table == "lab":
            return v
        if isinstance(v, dict):
            v = [v]
        if not isinstance(v, list):
            raise self.err(f"[[{table}]] must be an array of tables", table)
        for i, e in enumerate(v):
            if not isinstance(e, dict):
                raise self.err(f"{table} entry {i + 1} must be a table", table, i)
            unknown = set(e) - _ALLOWED[table]
            if unknown:
                k = sorted(unknown)[0]
                raise self.err(f"{table}: unknown key {k!r} (allowed: {', '.join(sorted(_ALLOWED[table]))})", table, i, k)
        return v

    def typed(self, e: dict, key: str, typ: type | tuple, table: str, i: int, what: str, default: Any = None) -> Any:
        if key not in e:
            return default
        v = e[key]
        ok = isinstance(v, typ) and not (typ in (int, float, (int, float)) and isinstance(v, bool))
        if not ok:
            raise self.err(f"{table}.{key} must be {what}, got {type(v).__name__} {v!r}", table, i, key)
        return v

    def run(self) -> Spec:
        unknown = set(self.data) - set(_ALLOWED)
        if unknown:
            k = sorted(unknown)[0]
            raise self.err(f"unknown table {k!r} (allowed: {', '.join(sorted(_ALLOWED))})", k)
        lab = self.data.get("lab", {})
        if not isinstance(lab, dict):
            raise self.err("[lab] must be a table", "lab")
        unknown = set(lab) - _ALLOWED["lab"]
        if unknown:
            k = sorted(unknown)[0]
            raise self.err(f"lab: unknown key {k!r}", "lab", None, k)
        name = lab.get("name", "lab")
        if not isinstance(name, str):
            raise self.err("lab.name must be a string", "lab", None, "name")
        self.spec.name = name
        ctl = lab.get("controller", "auto")
        if not isinstance(ctl, (str, bool)) or (isinstance(ctl, str) and not _controller_ok(ctl)):
            raise self.err(f"lab.controller must be \"auto\", \"HOST:PORT\" or false, got {ctl!r}",
                           "lab", None, "controller")
        self.spec.controller = ctl

        for kind in NODE_KINDS:
            for i, e in enumerate(self.entries(kind)):
                self.node(kind, i, e)
        diamonds = [self.diamond(i, e) for i, e in enumerate(self.entries("diamond"))]
        for i, e in enumerate(self.entries("link")):
            self.spec.links.append(self.link(i, e, "link"))
        for links in diamonds:  # after plain links so their subnets number first
            self.spec.links.extend(links)
        for i, e in enumerate(self.entries("service")):
            self.service(i, e)
        self.resolver(lab.get("resolver", "auto"))
        self.check_global()
        return self.spec

    # nodes ---------------------------------------------------------------
    def add_node(self, node: Node, table: str, i: int) -> None:
        if not NAME_RE.match(node.name):
            raise self.err(f"{table}: bad name {node.name!r} (letters, digits, _ and -, at most 32, starting with a letter)", table, i, "name")
        if node.name in self.spec.nodes:
            raise self.err(f"duplicate node name {node.name!r}", table, i, "name")
        self.spec.nodes[node.name] = node

    def node(self, kind: str, i: int, e: dict) -> None:
        name = self.typed(e, "name", str, kind, i, "a string")
        if name is None:
            raise self.err(f"{kind} entry needs a name", kind, i)
        n = Node(name=name, kind=kind, line=self.lines.table(kind, i))
        if kind == "vp":
            n.cc = self.typed(e, "cc", str, kind, i, "a country code string")
            n.asn = self.typed(e, "asn", int, kind, i, "an integer")
            if n.asn is not None and not (0 < n.asn < 2**32):
                raise self.err(f"vp.asn out of range: {n.asn}", kind, i, "asn")
            loc = self.typed(e, "loc", list, kind, i, "[lat, long]")
            if loc is not None:
                if len(loc) != 2 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in loc):
                    raise self.err("vp.loc must be [lat, long] numbers", kind, i, "loc")
                if not (-90 <= loc[0] <= 90 and -180 <= loc[1] <= 180):
                    raise self.err(f"vp.loc out of range: {loc}", kind, i, "loc")
                n.loc = (float(loc[0]), float(loc[1]))
            tags = e.get("tags", {})
            if isinstance(tags, list):  # ["k=v", ...]
                try:
                    tags = dict(str(t).split("=", 1) for t in tags)
                except ValueError:
                    raise self.err("vp.tags list entries must be \"k=v\"", kind, i, "tags") from None
            if not isinstance(tags, dict) or not all(isinstance(v, (str, int, float)) for v in tags.values()):
                raise self.err("vp.tags must be a table of strings", kind, i, "tags")
            n.tags = {str(k): str(v) for k, v in tags.items()}
            skew = self.typed(e, "clock_skew_ms", (int, float), kind, i, "a number of ms", 0.0)
            if not abs(skew) <= 3_600_000:
                raise self.err(f"vp.clock_skew_ms must be within ±3600000 ms, got {skew}", kind, i, "clock_skew_ms")
            n.clock_skew_ms = float(skew)
        elif kind == "router":
            for k in ("icmp_ratelimit", "icmp_msgs_per_sec", "icmp_msgs_burst"):
                v = self.typed(e, k, int, kind, i, "an integer")
                if v is not None and v < 0:
                    raise self.err(f"router.{k} must be >= 0", kind, i, k)
                setattr(n, k, v)
            n.unresponsive = bool(self.typed(e, "unresponsive", bool, kind, i, "true or false", False))
            n.balancer = self.balancer(e, kind, i)
        elif kind == "aliasrouter":
            n.options = dict(self.typed(e, "options", dict, kind, i, "a table", {}))
            if "stub4" in n.options:
                try:
                    net = ipaddress.IPv4Network(n.options["stub4"])
                except (ValueError, TypeError):
                    raise self.err(f"aliasrouter.options.stub4: {n.options['stub4']!r} is not an IPv4 prefix",
                                   kind, i, "options") from None
                if not (net.subnet_of(ipaddress.IPv4Network("10.192.0.0/11")) and 16 <= net.prefixlen <= 28):
                    raise self.err(f"aliasrouter.options.stub4: {net} must be a /16../28 inside 10.192.0.0/11 "
                                   "(clear of link and management subnets)", kind, i, "options")
        self.add_node(n, kind, i)

    def balancer(self, e: dict, table: str, i: int) -> str:
        b = self.typed(e, "balancer", str, table, i, "a string", "kernel")
        if b not in BALANCERS:
            raise self.err(f"{table}.balancer must be one of {', '.join(BALANCERS)}, got {b!r}", table, i, "balancer")
        return b

    # links ---------------------------------------------------------------
    def impair(self, e: dict, table: str, i: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, fn in (("delay", parse_duration_ms), ("jitter", parse_duration_ms)):
            if key in e:
                try:
                    v = fn(e[key])
                except ValueError as ex:
                    raise self.err(f"{table}.{key}: {ex}", table, i, key) from None
                if not (0 <= v <= MAX_DELAY_MS):
                    raise self.err(f"{table}.{key} must be between 0 and {MAX_DELAY_MS:.0f} ms, got {v} ms", table, i, key)
                out[key + "_ms"] = v
        if "loss" in e:
            try:
                p = parse_loss(e["loss"])
            except ValueError as ex:
                raise self.err(f"{table}.loss: {ex}", table, i, "loss") from None
            if not (0 <= p < 1):
                raise self.err(f"{table}.loss must be in [0, 1), got {p}", table, i, "loss")
            out["loss"] = p
        if "rate" in e:
            try:
                r = parse_rate_bps(e["rate"])
            except ValueError as ex:
                raise self.err(f"{table}.rate: {ex}", table, i, "rate") from None
            if not (MIN_RATE_BPS <= r <= MAX_RATE_BPS):
                raise self.err(f"{table}.rate is impossible: {r} bit/s (must be 8kbit .. 40gbit)", table, i, "rate")
            out["rate_bps"] = r
        return out

    def endpoint(self, e: dict, key: str, table: str, i: int) -> str:
        if key not in e:
            raise self.err(f"{table} to nowhere: missing {key!r}", table, i)
        v = e[key]
        if not isinstance(v, str):
            raise self.err(f"{table}.{key} must be a node name, got {v!r}", table, i, key)
        if v not in self.spec.nodes:
            raise self.err(f"{table}.{key}: unknown node {v!r}", table, i, key)
        return v

    def link(self, i: int, e: dict, table: str) -> Link:
        a = self.endpoint(e, "a", table, i)
        b = self.endpoint(e, "b", table, i)
        if a == b:
            raise self.err(f"{table} from {a!r} to itself", table, i, "b")
        ln = Link(a=a, b=b, line=self.lines.table(table, i), **self.impair(e, table, i))
        cost = self.typed(e, "cost", int, table, i, "an integer", 1)
        if cost < 1:
            raise self.err("link.cost must be >= 1", table, i, "cost")
        ln.cost = cost
        for fam, key in ((4, "ipv4"), (6, "ipv6")):
            v = e.get(key)
            if v is None:
                continue
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
                raise self.err(f"link.{key} must be two interface addresses like [\"10.9.0.1/24\", \"10.9.0.2/24\"]", table, i, key)
            try:
                ifs = [ipaddress.ip_interface(x) for x in v]
            except ValueError as ex:
                raise self.err(f"link.{key}: {ex}", table, i, key) from None
            if any(x.version != fam for x in ifs):
                raise self.err(f"link.{key} needs IPv{fam} addresses", table, i, key)
            if ifs[0].network != ifs[1].network:
                raise self.err(f"link.{key}: {v[0]} and {v[1]} are not in one subnet", table, i, key)
            if ifs[0].ip == ifs[1].ip or ifs[0].ip in (ifs[0].network.network_address,) and fam == 4 and ifs[0].network.prefixlen < 31:
                raise self.err(f"link.{key}: unusable address pair {v}", table, i, key)
            setattr(ln, key, (str(ifs[0]), str(ifs[1])))
        return ln

    def diamond(self, i: int, e: dict) -> list[Link]:
        """Create the branch routers now (links may name them) and return the links."""
        t = "diamond"
        name = self.typed(e, "name", str, t, i, "a string")
        if name is None:
            raise self.err("diamond needs a name", t, i)
        entry = self.endpoint(e, "entry", t, i)
        exit_ = self.endpoint(e, "exit", t, i)
        for k, v in (("entry", entry), ("exit", exit_)):
            if self.spec.nodes[v].kind != "router":
                raise self.err(f"diamond.{k} must be a router, {v!r} is a {self.spec.nodes[v].kind}", t, i, k)
        width = self.typed(e, "width", int, t, i, "an integer", 2)
        length = self.typed(e, "length", int, t, i, "an integer", 1)
        if not (2 <= width <= 16):
            raise self.err(f"diamond.width must be 2..16, got {width}", t, i, "width")
        if not (1 <= length <= 8):
            raise self.err(f"diamond.length must be 1..8, got {length}", t, i, "length")
        imp = self.impair(e, t, i)
        if "balancer" in e:
            self.spec.nodes[entry].balancer = self.balancer(e, t, i)
        line = self.lines.table(t, i)
        links: list[Link] = []
        for w in range(1, width + 1):
            prev = entry
            for s in range(1, length + 1):
                rn = f"{name}-{w}" if length == 1 else f"{name}-{w}-{s}"
                self.add_node(Node(name=rn, kind="router", line=line), t, i)
                links.append(Link(a=prev, b=rn, line=line, **imp))
                prev = rn
            links.append(Link(a=prev, b=exit_, line=line, **imp))
        return links

    def service(self, i: int, e: dict) -> None:
        t = "service"
        host = self.endpoint(e, "host", t, i)
        if not self.spec.nodes[host].is_host:
            raise self.err(f"service.host must be a host or vp, {host!r} is a {self.spec.nodes[host].kind}", t, i, "host")
        kind = self.typed(e, "kind", str, t, i, "a string")
        if not kind:
            raise self.err("service needs a kind", t, i)
        opts = self.typed(e, "options", dict, t, i, "a table", {})
        self.spec.services.append(Service(host=host, kind=kind, options=dict(opts), line=self.lines.table(t, i)))

    def resolver(self, v: Any) -> None:
        """``[lab] resolver``: "auto", false, or a host/vp that also needs a dns service to ask."""
        if isinstance(v, bool) or v == "auto":
            self.spec.resolver = v
            return
        if not isinstance(v, str):
            raise self.err(f"lab.resolver must be \"auto\", a host name or false, got {v!r}", "lab", None, "resolver")
        node = self.spec.nodes.get(v)
        if node is None:
            raise self.err(f"lab.resolver: unknown node {v!r}", "lab", None, "resolver")
        if not node.is_host:
            raise self.err(f"lab.resolver must be a host or vp, {v!r} is a {node.kind}", "lab", None, "resolver")
        if not any(s.kind == "dns" for s in self.spec.services):
            raise self.err("lab.resolver: the lab has no dns service whose zones it could resolve",
                           "lab", None, "resolver")
        self.spec.resolver = v

    # whole-spec checks ----------------------------------------------------
    def check_global(self) -> None:
        if not self.spec.nodes:
            raise SpecError("spec has no nodes", None, self.source)
        linked: set[str] = set()
        seen: dict[str, int | None] = {}
        nets: dict[Any, int | None] = {}
        for ln in self.spec.links:
            linked.update((ln.a, ln.b))
            for key in ("ipv4", "ipv6"):
                pair = getattr(ln, key)
                if not pair:
                    continue
                net = ipaddress.ip_interface(pair[0]).network
                for a in pair:
                    ip = str(ipaddress.ip_interface(a).ip)
                    if ip in seen:
                        raise SpecError(f"duplicate address {ip} (also on line {seen[ip]})", self._link_key_line(ln, key), self.source)
                    seen[ip] = ln.line
                for other, oline in nets.items():
                    if other.version == net.version and other.overlaps(net):
                        raise SpecError(f"subnet {net} overlaps {other} (line {oline})", self._link_key_line(ln, key), self.source)
                nets[net] = ln.line
        for n in self.spec.nodes.values():
            if n.name not in linked:
                raise SpecError(f"node {n.name!r} has no links", n.line, self.source)

    def _link_key_line(self, ln: Link, key: str) -> int | None:
        try:
            idx = [x for x in self.spec.links if x.line == ln.line].index(ln)
        except ValueError:
            idx = 0
        # link.line is the header line; search the key after it
        if ln.line is None:
            return None
        for j in range(ln.line, len(self.lines.lines)):
            if re.match(rf"^\s*{key}\s*=", self.lines.lines[j]):
                return j + 1
            if _Lines.HEADER.match(self.lines.lines[j]):
                break
        del idx
        return ln.line


# --------------------------------------------------------------------------
# builders


def linear_path(
    n_routers: int = 3,
    *,
    delay: str | float | None = None,
    jitter: str | float | None = None,
    loss: float | None = None,
    rate: str | int | None = None,
    client: str = "client",
    target: str = "target",
    client_vp: bool = False,
    impair_link: int | None = None,
    unresponsive: tuple[int, ...] = (),
    icmp_ratelimit: dict[int, int] | None = None,
    name: str = "linear",
) -> Spec:
    """client — r1 — … — rN — target, dual-stack.

    Impairments (delay/jitter/loss/rate) go on every link, or only on link
    number ``impair_link`` (0 = client–r1).  ``unresponsive`` lists router
    numbers (1-based) that drop TTL-expired silently.
    """
    d: dict[str, Any] = {"lab": {"name": name, "controller": False}}
    if client_vp:
        d["vp"] = [{"name": client}]
    else:
        d["host"] = [{"name": client}]
    d.setdefault("host", []).append({"name": target})
    routers = []
    for k in range(1, n_routers + 1):
        r: dict[str, Any] = {"name": f"r{k}"}
        if k in unresponsive:
            r["unresponsive"] = True
        if icmp_ratelimit and k in icmp_ratelimit:
            r["icmp_ratelimit"] = icmp_ratelimit[k]
        routers.append(r)
    if routers:
        d["router"] = routers
    chain = [client] + [r["name"] for r in routers] + [target]
    links = []
    for k, (a, b) in enumerate(zip(chain, chain[1:])):
        ln: dict[str, Any] = {"a": a, "b": b}
        if impair_link is None or impair_link == k:
            for key, v in (("delay", delay), ("jitter", jitter), ("loss", loss), ("rate", rate)):
                if v is not None:
                    ln[key] = v
        links.append(ln)
    d["link"] = links
    return parse_dict(d)


def diamond_path(
    width: int = 2,
    length: int = 1,
    *,
    balancer: str = "kernel",
    name: str = "diamond",
) -> Spec:
    """client — r1 — {width parallel branches} — r2 — target (an ECMP diamond)."""
    d: dict[str, Any] = {
        "lab": {"name": name, "controller": False},
        "host": [{"name": "client"}, {"name": "target"}],
        "router": [{"name": "r1", "balancer": balancer}, {"name": "r2"}],
        "diamond": [{"name": "d", "entry": "r1", "exit": "r2", "width": width, "length": length}],
        "link": [{"a": "client", "b": "r1"}, {"a": "r2", "b": "target"}],
    }
    return parse_dict(d)


def throughput_path(rate: str = "50mbit", delay: str = "10ms", *, name: str = "tput") -> Spec:
    """client —``delay``— r1 —``rate``— target, with the MNTPUT1 server and iperf3 on target.

    The throughput tests' and ``bench/throughput.py``'s lab: the delay and the
    bottleneck on different links, so tbf's queue does not sit behind the forwarder.
    """
    return parse_dict({
        "lab": {"name": name, "controller": False},
        "host": [{"name": "client"}, {"name": "target"}],
        "router": [{"name": "r1"}],
        "link": [{"a": "client", "b": "r1", "delay": delay}, {"a": "r1", "b": "target", "rate": rate}],
        "service": [{"host": "target", "kind": "throughput", "options": {}},
                    {"host": "target", "kind": "bulk", "options": {"impl": "iperf3"}}],
    })


def vp_and_sink(name: str = "sgap", vp: str = "vp-a", sink: str = "sink") -> Spec:
    """One VP (with the lab's controller) on a plain veth to one host: the send-gap lab."""
    return parse_dict({"lab": {"name": name, "controller": "auto"}, "vp": [{"name": vp}],
                       "host": [{"name": sink}], "link": [{"a": vp, "b": sink}]})


def small_world(name: str = "world", *, delays: dict[str, float] | None = None) -> Spec:
    """Three VPs in distinct countries, two routers, one target; the lab runs a controller.

    ::

        vp-de ─10ms─┐
                    r1 ── r2 ── target
        vp-us ─25ms─┘     │
                  vp-jp ──┘

    ``delays`` (one-way ms per VP access link) overrides the defaults
    ``{"vp-de": 10, "vp-us": 25, "vp-jp": 0}``.  The smallest world where
    "which VP is closest" has a known, non-trivial answer.
    """
    d = {"vp-de": 10.0, "vp-us": 25.0, "vp-jp": 0.0, **(delays or {})}
    meta = {
        "vp-de": {"cc": "DE", "asn": 64501, "loc": [52.52, 13.40], "tags": {"continent": "EU", "tier": "a"}},
        "vp-us": {"cc": "US", "asn": 64510, "loc": [40.71, -74.01], "tags": {"continent": "NA"}},
        "vp-jp": {"cc": "JP", "asn": 64520, "tags": {"continent": "AS"}},
    }
    links: list[dict[str, Any]] = []
    for vp, router in (("vp-de", "r1"), ("vp-us", "r1"), ("vp-jp", "r2")):
        ln: dict[str, Any] = {"a": vp, "b": router}
        if d[vp]:
            ln["delay"] = f"{d[vp]}ms"
        links.append(ln)
    links += [{"a": "r1", "b": "r2"}, {"a": "r2", "b": "target"}]
    return parse_dict({
        "lab": {"name": name, "controller": "auto"},
        "vp": [{"name": n, **m} for n, m in meta.items()],
        "router": [{"name": "r1"}, {"name": "r2"}],
        "host": [{"name": "target"}],
        "link": links,
    })
