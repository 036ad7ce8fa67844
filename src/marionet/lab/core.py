"""``Lab``: build a spec into namespaces, links, routes and processes; tear it down.

Every machine-wide name carries the prefix ``mn<id>``; everything is recorded
in the state file before it is created and removed in ``down()`` (also from a
``finally`` or after a crash via ``lab down``).
"""

from __future__ import annotations

import json
import os
import signal
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import balancer, system, tools
from .controller import ControllerInfo
from .plan import Iface, Plan, forwarder_truth, make_plan, truth as plan_truth
from .spec import Spec, _controller_ok, load_spec, parse_spec
from .state import STATE_DIR, State, all_states, teardown
from .system import LabError

MGMT_IF = "mgmt0"
ETC_NETNS = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*


def _new_id() -> str:
    existing = {s.lab_id for s in all_states()}
    nets = system.list_netns()
    for _ in range(100):
        lab_id = secrets.token_hex(2)
        pre = f"mn{lab_id}"
        if lab_id in existing or any(n.startswith(pre) for n in nets):
            continue
        if ETC_NETNS.is_dir() and any(p.name.startswith(pre) for p in ETC_NETNS.iterdir()):
            continue
        if system.run(["sh", "-c", f"ip -o link show | grep -q ': {pre}'"], check=False).returncode == 0:
            continue
        return lab_id
    raise LabError("could not find a free lab id")


def router_sysctls(node: Any) -> dict[str, str]:
    """Per-namespace settings; routers forward and answer from the inbound interface."""
    s = {
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv6.conf.all.accept_dad": "0",
        "net.ipv6.conf.default.accept_dad": "0",
        "net.ipv6.conf.all.accept_ra": "0",
        "net.ipv6.conf.default.accept_ra": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
        "net.ipv4.icmp_errors_use_inbound_ifaddr": "1",
        "net.ipv4.fib_multipath_hash_policy": "1",
        "net.ipv6.fib_multipath_hash_policy": "1",
        "net.ipv4.icmp_ratelimit": "0",
        "net.ipv6.icmp.ratelimit": "0",
    }
    if node.kind == "router":
        s["net.ipv4.ip_forward"] = "1"
        s["net.ipv6.conf.all.forwarding"] = "1"
        s["net.ipv6.conf.default.forwarding"] = "1"
    if node.icmp_ratelimit:
        s["net.ipv4.icmp_ratelimit"] = str(node.icmp_ratelimit)
        s["net.ipv6.icmp.ratelimit"] = str(node.icmp_ratelimit)
    return s


def optional_sysctls(node: Any) -> dict[str, str]:
    """Settings that are per-netns only on some kernels; failure is tolerated."""
    s = {"net.ipv4.icmp_msgs_per_sec": "1000000", "net.ipv4.icmp_msgs_burst": "1000000"}
    if node.icmp_msgs_per_sec is not None:
        s["net.ipv4.icmp_msgs_per_sec"] = str(node.icmp_msgs_per_sec)
    if node.icmp_msgs_burst is not None:
        s["net.ipv4.icmp_msgs_burst"] = str(node.icmp_msgs_burst)
    if node.icmp_ratelimit or node.icmp_msgs_per_sec is not None:
        # a rate-limited router keeps the kernel's global limit unless told otherwise
        s.setdefault("net.ipv4.icmp_msgs_per_sec", "1000")
        if node.icmp_msgs_per_sec is None:
            s["net.ipv4.icmp_msgs_per_sec"] = "1000"
            s["net.ipv4.icmp_msgs_burst"] = "50"
    return s


def tbf_args(rate_bps: int) -> list[str]:
    """tbf with a burst of ≥10 full frames or 4 ms of traffic, a 50 ms queue."""
    burst = max(15140, int(rate_bps / 8 * 0.004))
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(burst), "latency", "50ms"]


class Lab:
    """An emulated network in namespaces.  Use as a context manager.

    VPs (``[[vp]]`` nodes) run ``marionet endpoint`` and register with a
    controller.  By default (spec ``controller = "auto"``) the lab starts its
    own controller with a private PKI; ``controller_address()`` and
    ``client_tls()`` say how to attach.  ``controller="HOST:PORT"`` (here or
    in the spec) points the VPs at an existing controller instead, whose CA
    is given as ``pki=`` (a ``marionet pki`` directory) so VP certificates
    can be issued; the VPs can reach only the management gateway
    ("auto:PORT"), and that controller's certificate must carry the gateway
    address in its SANs (endpoints verify the address they dial).  ``wait_vps`` seconds: ``up()`` returns only once every
    VP is registered (None: do not wait).
    """

    def __init__(self, spec: Spec | str | Path, *, lab_id: str | None = None,
                 state_dir: Path | None = None, controller: str | bool | None = None,
                 start_vps: bool = True, realtime: bool = True, pki: str | Path | None = None,
                 wait_vps: float | None = 20.0, vp_engine: str | None = None):
        if isinstance(spec, Spec):
            self.spec = spec
        elif isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith(".toml")):
            self.spec = load_spec(spec)
        else:
            self.spec = parse_spec(str(spec))
        if controller is not None and not (isinstance(controller, bool) or _controller_ok(str(controller))):
            raise LabError(f"controller must be \"auto\", \"HOST:PORT\" or False, got {controller!r}")
        self._lab_id = lab_id
        self.state_dir = state_dir or STATE_DIR
        self.controller = controller
        self.start_vps = start_vps
        self.realtime = realtime
        self.plan: Plan | None = None
        self.state: State | None = None
        self._procs: list[subprocess.Popen] = []
        self._forwarder: subprocess.Popen | None = None
        self._forwarder_stats: Path | None = None
        self._forwarder_calibration: dict[str, Any] = {}
        self._services: list[Any] = []
        self._mgmt: dict[str, str] = {}
        self.warnings: list[str] = []
        self.pki = str(pki) if pki is not None else None
        self.wait_vps_timeout = wait_vps
        self.vp_engine = vp_engine
        self.ctl: ControllerInfo | None = None
        self.timings: dict[str, float] = {}

    # -- context ------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.up()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    @property
    def lab_id(self) -> str:
        if self.plan is None:
            raise LabError("lab is not up")
        return self.plan.lab_id

    @property
    def prefix(self) -> str:
        return f"mn{self.lab_id}"

    # -- build --------------------------------------------------------------
    def up(self) -> "Lab":
        system.require_root()
        if self.plan is not None:
            raise LabError("lab already up")
        tools.check_tools(self.spec)  # before anything exists: a missing program leaves nothing behind
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lab_id = self._lab_id or _new_id()
        plan = make_plan(self.spec, lab_id)
        for node in self.spec.nodes:
            if system.netns_exists(plan.netns(node)):
                raise LabError(f"namespace {plan.netns(node)} already exists; not touching it")
            if (ETC_NETNS / plan.netns(node)).exists():
                raise LabError(f"{ETC_NETNS / plan.netns(node)} already exists; not touching it")
        self.plan = plan
        self.state = State.new(lab_id, self.spec.name, self.state_dir)
        self.state.save()
        t0 = time.monotonic()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def _build(self) -> None:
        plan, st, spec = self.plan, self.state, self.spec
        assert plan and st
        st.info = self._info()
        st.save()
        # namespaces and sysctls
        for name, node in spec.nodes.items():
            ns = plan.netns(name)
            st.netns.append(ns)
            st.save()
            system.run(["ip", "netns", "add", ns])
            system.sysctl(ns, router_sysctls(node))
            system.sysctl(ns, optional_sysctls(node), check=False)
            system.run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # links
        for k, (a, b) in enumerate(plan.link_ifaces):
            nsa, nsb = plan.netns(a.node), plan.netns(b.node)
            if a.tun:
                system.run(["ip", "-n", nsa, "tuntap", "add", "dev", a.name, "mode", "tun"])
                system.run(["ip", "-n", nsb, "tuntap", "add", "dev", b.name, "mode", "tun"])
            else:
                system.run(["ip", "-n", nsa, "link", "add", a.name, "type", "veth",
                            "peer", "name", b.name, "netns", nsb])
        for name in spec.nodes:
            # a first neighbour solicitation right after link-up is sometimes
            # ignored; retry after 100 ms instead of 1 s (no "default" in a netns)
            system.sysctl(plan.netns(name), {
                f"net.{f}.neigh.{ifc.name}.retrans_time_ms": "100"
                for ifc in plan.ifaces[name] if not ifc.tun for f in ("ipv4", "ipv6")}, check=False)
            lines = []
            for ifc in plan.ifaces[name]:
                lines.append(f"addr add {ifc.ipv4} dev {ifc.name}")
                lines.append(f"addr add {ifc.ipv6} dev {ifc.name} nodad")
                lines.append(f"link set {ifc.name} up")
            system.ip_batch(plan.netns(name), lines)
            veths = [ifc.name for ifc in plan.ifaces[name] if not ifc.tun]
            if veths:  # checksums finished before the "wire", as a NIC would (see tx_checksum_off)
                for bad in system.tx_checksum_off(plan.netns(name), veths):
                    self.warnings.append(f"{name}: cannot turn off TX checksum offload on {bad}")
        # forwarders must hold the TUNs before routes via them are useful
        self._start_forwarder([k for k, (a, _) in enumerate(plan.link_ifaces) if a.tun])
        # routes
        for name in spec.nodes:
            lines = []
            for r in plan.routes[name]:
                if len(r.nexthops) == 1:
                    via, dev = r.nexthops[0]
                    lines.append(f"route add {r.dst} via {via} dev {dev}")
                else:
                    hops = " ".join(f"nexthop via {via} dev {dev} weight 1" for via, dev in r.nexthops)
                    lines.append(f"route add {r.dst} {hops}")
            system.ip_batch(plan.netns(name), lines)
        # router behaviour: unresponsive hops, emulated balancers
        for name, node in spec.nodes.items():
            ns = plan.netns(name)
            if node.unresponsive:
                system.run(["ip", "netns", "exec", ns, "iptables", "-w", "-A", "OUTPUT", "-p", "icmp",
                            "--icmp-type", "time-exceeded", "-j", "DROP"])
                system.run(["ip", "netns", "exec", ns, "ip6tables", "-w", "-A", "OUTPUT", "-p", "icmpv6",
                            "--icmpv6-type", "time-exceeded", "-j", "DROP"])
            if node.kind == "router" and node.balancer != "kernel":
                balancer.install(ns, node.balancer, plan.routes[name])
        # rates
        for k, ln in enumerate(spec.links):
            if ln.rate_bps:
                for ifc in plan.link_ifaces[k]:
                    system.run(["ip", "netns", "exec", plan.netns(ifc.node), "tc", "qdisc", "replace",
                                "dev", ifc.name, "root", *tbf_args(ln.rate_bps)])
        self._warm_up()
        self._start_aliasrouters()
        self._start_services()
        self._start_resolver()
        self._setup_vps()
        st.info = self._info()
        st.save()
        st.truth_path.write_text(json.dumps(self.truth(), indent=1))
        if self.wait_vps_timeout is not None and self._vp_procs():
            t = time.monotonic()
            try:
                self.wait_vps(self.wait_vps_timeout)
            except LabError as e:
                self.warnings.append(str(e))
            self.timings["vps_registered"] = time.monotonic() - t

    def _warm_up(self, timeout: float = 5.0) -> None:
        """Ping across every veth link (v4 and v6) so ARP/ND are settled before use.

        Right after link-up a first IPv6 neighbour solicitation can go
        unanswered; tests that probe immediately would see lost hops.
        """
        assert self.plan
        todo = []
        for a, b in self.plan.link_ifaces:
            if a.tun:
                continue
            for fam in (4, 6):
                todo.append((a.node, str(b.addr(fam).ip), fam))
                todo.append((b.node, str(a.addr(fam).ip), fam))
        deadline = time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            procs = [(t, subprocess.Popen(["ip", "netns", "exec", self.plan.netns(t[0]), "ping", f"-{t[2]}", "-c1",
                                           "-W1", "-q", t[1]], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)) for t in todo]
            todo = [t for t, p in procs if p.wait() != 0]
        if todo:
            self.warnings.append(f"links not answering ping after {timeout}s: {todo}")

    def _info(self) -> dict[str, Any]:
        assert self.plan
        return {
            "nodes": {n: {"kind": node.kind, "netns": self.plan.netns(n),
                          "ipv4": [str(i.ipv4.ip) for i in self.plan.ifaces[n]],
                          "ipv6": [str(i.ipv6.ip) for i in self.plan.ifaces[n]],
                          **({"mgmt": self._mgmt[n]} if n in self._mgmt else {})}
                      for n, node in self.spec.nodes.items()},
            "controller": self.ctl.to_dict() if self.ctl else self.controller,
            **({"resolver": self.resolver()} if self.resolver() else {}),
        }

    # -- processes ------------------------------------------------------------
    def _track(self, p: subprocess.Popen, role: str, node: str | None) -> subprocess.Popen:
        assert self.state
        self._procs.append(p)
        self.state.add_proc(p.pid, role, node)
        return p

    def _start_forwarder(self, links: list[int]) -> None:
        """One forwarder process for every delayed link (one heap, one timer: see forwarder.py)."""
        assert self.plan
        if not links:
            return
        from .hooks import service_dir
        cfg_links = []
        for k in links:
            a, b = self.plan.link_ifaces[k]
            ln = self.spec.links[k]
            cfg_links.append({"id": k, "a": [self.plan.netns(a.node), a.name], "b": [self.plan.netns(b.node), b.name],
                              "delay_ms": ln.delay_ms, "jitter_ms": ln.jitter_ms, "loss": ln.loss, "seed": None})
        self._forwarder_stats = service_dir(self) / "forwarder-stats.json"
        cfg = {"links": cfg_links, "realtime": self.realtime, "stats_path": str(self._forwarder_stats)}
        log_path = service_dir(self) / "forwarder.log"
        with open(log_path, "ab") as log:
            p = subprocess.Popen([sys.executable, "-m", "marionet.lab.forwarder", json.dumps(cfg)],
                                 stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        self._forwarder = self._track(p, "forwarder", ",".join(
            f"{self.spec.links[k].a}-{self.spec.links[k].b}" for k in links))
        line = p.stdout.readline() if p.stdout else ""
        try:
            ready = json.loads(line)
        except ValueError:
            ready = {}
        if not ready.get("ready"):
            p.wait(timeout=5)
            raise LabError(f"forwarder for links {links} failed to start: "
                           f"{log_path.read_text(errors='replace')[-1000:]}")
        self._forwarder_calibration = ready.get("calibration", {})

    def forwarder_stats(self, fresh: bool = True) -> dict[str, Any] | None:
        """The forwarder's live figures (per link: packets, send lateness, read wait), or None without one.

        ``fresh`` asks the process to write them now (SIGUSR1) and waits up to 0.5 s for the file.
        """
        p, path = self._forwarder, self._forwarder_stats
        if p is None or path is None:
            return None
        before = path.stat().st_mtime_ns if path.exists() else 0
        if fresh and p.poll() is None:
            os.kill(p.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline and (not path.exists() or path.stat().st_mtime_ns == before):
                time.sleep(0.005)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def _start_aliasrouters(self) -> None:
        nodes = [n for n in self.spec.nodes.values() if n.kind == "aliasrouter"]
        if not nodes:
            return
        from . import hooks
        for n in nodes:
            hooks.start_aliasrouter(self, n)

    def _start_services(self) -> None:
        if not self.spec.services:
            return
        from . import hooks
        for s in self.spec.services:
            h = hooks.start_service(self, s)
            if h is not None:
                self._add_service(h, s.kind, s.host)

    def _add_service(self, h: Any, kind: str, host: str) -> None:
        self._services.append(h)
        pid = getattr(h, "pid", None) or getattr(getattr(h, "proc", None), "pid", None)
        if isinstance(pid, int) and self.state:
            self.state.add_proc(pid, f"service:{kind}", host)

    def _start_resolver(self) -> None:
        """The lab's recursive resolver, then every host's and VP's resolv.conf naming it.

        Programs started with ``ip netns exec`` (VP endpoints, ``exec``,
        ``popen``, ``lab exec``) see /etc/netns/<ns>/resolv.conf as
        /etc/resolv.conf, so ``dig NAME``, getaddrinfo and the endpoint's
        ``info().resolvers`` all use the lab's resolver.  A lab without one
        still gets the file, naming no server: the machine's own resolver
        is unreachable from the lab and must not appear as the VPs'.
        """
        assert self.plan and self.state
        from . import hooks
        h = hooks.start_resolver(self, [x for x in self._services if getattr(x, "kind", None) == "dns"])
        if h is not None:
            self._add_service(h, "resolver", self.plan.resolver.node if self.plan.resolver else "")
        res = self.plan.resolver if h is not None else None
        if res is not None:
            text = f"# marionet lab {self.lab_id}: the lab's resolver on {res.node}\n" + "".join(
                f"nameserver {a}\n" for a in res.addresses)
        else:
            text = f"# marionet lab {self.lab_id}: this lab runs no resolver\n"
        for name, node in self.spec.nodes.items():
            if node.is_host:
                self._write_netns_file(self.plan.netns(name), "resolv.conf", text)
        self.state.info = self._info()
        self.state.save()

    def _write_netns_file(self, ns: str, fname: str, text: str) -> None:
        """Write /etc/netns/<ns>/<fname>, recorded (file, and directories made) before it is made."""
        assert self.state
        st = self.state
        d = ETC_NETNS / ns
        if not d.exists():
            st.dirs.append(str(d))
            st.save()
            try:
                d.mkdir(mode=0o755)
            except FileNotFoundError:  # no /etc/netns yet (or another lab just removed its last entry)
                st.dirs.insert(len(st.dirs) - 1, str(ETC_NETNS))
                st.save()
                ETC_NETNS.mkdir(mode=0o755, exist_ok=True)
                d.mkdir(mode=0o755)
        f = d / fname
        st.files.append(str(f))
        st.save()
        f.write_text(text)

    def _controller_mode(self) -> str:
        """"managed" (the lab runs one), "external" (HOST:PORT) or "none"."""
        ctl = self.controller if self.controller is not None else self.spec.controller
        if ctl is False or ctl is None or ctl == "none":
            return "none"
        if ctl is True or ctl == "auto":
            return "managed"
        return "external"

    def _setup_vps(self) -> None:
        vps = [n for n in self.spec.nodes.values() if n.kind == "vp"]
        mode = self._controller_mode()
        if not vps or mode == "none":
            return
        from . import controller as labctl
        from . import vp
        t = time.monotonic()
        self._mgmt = vp.setup_mgmt(self, vps)
        self.timings["mgmt"] = time.monotonic() - t
        if mode == "managed":
            t = time.monotonic()
            self.ctl = labctl.start(self, self._mgmt["_gateway"], [n.name for n in vps])
            self.timings["controller"] = time.monotonic() - t
        else:
            host, port = vp.controller_address(self) or ("", 0)
            self.ctl = ControllerInfo(endpoints=f"{host}:{port}", managed=False, pki=self.pki)
            if self.pki:
                from marionet.guard.pki import PkiDir
                self.ctl.ca = str(PkiDir(self.pki).ca_path)
                self.ctl.vp_certs = labctl.issue_vp_certs(self.pki, [n.name for n in vps])
        assert self.state
        self.state.info = self._info()
        self.state.save()
        if self.start_vps:
            for n in vps:
                p = vp.launch_endpoint(self, n)
                if p is not None:
                    self._track(p, "endpoint", n.name)

    def _vp_procs(self) -> list[str]:
        return [p["node"] for p in (self.state.procs if self.state else []) if p["role"] == "endpoint"]

    # -- teardown -------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop everything this lab started and delete what it created."""
        problems: list[str] = []
        t0 = time.monotonic()
        if self._services:
            # each stop waits for its process group to end; in parallel the
            # whole lab goes down in the time of the slowest service
            from concurrent.futures import ThreadPoolExecutor

            def stop(h: Any) -> str | None:
                try:
                    h.stop()
                except Exception as e:
                    return f"service: {e}"
                return None
            with ThreadPoolExecutor(max_workers=min(8, len(self._services))) as ex:
                problems += [r for r in ex.map(stop, reversed(self._services)) if r]
        self._services.clear()
        for p in self._procs:
            for f in (p.stdout, p.stderr, p.stdin):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass
        if self.state is not None:
            problems += teardown(self.state)
        for p in self._procs:
            try:
                p.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        self._forwarder = None
        self.plan = None
        self.state = None
        self.ctl = None
        self.timings["down"] = time.monotonic() - t0
        return problems

    # -- use ----------------------------------------------------------------
    def netns(self, node: str) -> str:
        self._check_node(node)
        assert self.plan
        return self.plan.netns(node)

    def _check_node(self, node: str) -> None:
        if self.plan is None:
            raise LabError("lab is not up")
        if node not in self.spec.nodes:
            raise LabError(f"unknown node {node!r} (nodes: {', '.join(self.spec.nodes)})")

    def _cmd(self, node: str, cmd: str | Sequence[str]) -> list[str]:
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return ["ip", "netns", "exec", self.netns(node), *argv]

    def exec(self, node: str, cmd: str | Sequence[str], *, check: bool = False,
             timeout: float | None = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` (argv list, or a string for sh -c) inside ``node``'s namespace."""
        cp = subprocess.run(self._cmd(node, cmd), capture_output=True, text=True, timeout=timeout, input=input)
        if check and cp.returncode != 0:
            raise LabError(f"{node}: {cmd!r} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp

    def popen(self, node: str, cmd: str | Sequence[str], **kw: Any) -> subprocess.Popen:
        """Start ``cmd`` in ``node``; the lab stops it on down() if still running."""
        p = subprocess.Popen(self._cmd(node, cmd), **kw)
        return self._track(p, "user", node)

    def addr(self, node: str, family: int = 4, iface: str | None = None) -> str:
        """An address of ``node`` (first interface unless ``iface`` is given)."""
        self._check_node(node)
        assert self.plan
        ifs = self.plan.ifaces[node]
        if iface is not None:
            ifs = [i for i in ifs if i.name == iface]
            if not ifs:
                raise LabError(f"{node} has no interface {iface}")
        return str(ifs[0].addr(family).ip)

    def addrs(self, node: str, family: int = 4) -> list[str]:
        self._check_node(node)
        assert self.plan
        return [str(i.addr(family).ip) for i in self.plan.ifaces[node]]

    def services(self) -> list[Any]:
        """The running services' handles (kind, name, netns, addresses, ports, info)."""
        return list(self._services)

    def resolver(self) -> list[str]:
        """Addresses of the lab's recursive resolver (what its VPs' resolv.conf names); [] for none."""
        if self.plan is None or self.plan.resolver is None:
            return []
        if not any(getattr(h, "kind", None) == "resolver" for h in self._services):
            return []
        return self.plan.resolver.addresses

    def truth(self) -> dict[str, Any]:
        if self.plan is None:
            raise LabError("lab is not up")
        t = plan_truth(self.plan)
        if not self.resolver():
            t.pop("resolver", None)  # planned, but no zones to resolve: not started
        for name, node in self.spec.nodes.items():
            if node.kind == "vp" and name in t.get("nodes", {}):
                t["nodes"][name]["clock_skew_ms"] = node.clock_skew_ms
        from .hooks import alias_config
        for entry in t["aliases"]:
            if entry["kind"] == "aliasrouter":
                cfg = alias_config(self, self.spec.nodes[entry["router"]])
                from .aliasrouter import behaviours  # every router's full behaviour (ground truth)
                entry["emulated"] = behaviours(cfg)
        if self._mgmt:
            t["management"] = dict(self._mgmt)
        if self._forwarder is not None:
            forwarder_truth(t, self._forwarder_calibration, self.forwarder_stats())
        t["controller"] = self.ctl.to_dict() if self.ctl else self.controller
        return t

    def status(self) -> dict[str, Any]:
        if self.plan is None or self.state is None:
            return {"up": False}
        procs = [{**p, "alive": system.alive(p["pid"], p.get("start"))} for p in self.state.procs]
        return {
            "up": True, "lab_id": self.lab_id, "name": self.spec.name,
            "state_file": str(self.state.path), "truth_file": str(self.state.truth_path),
            "nodes": {n: {"kind": node.kind, "netns": self.plan.netns(n),
                          "present": system.netns_exists(self.plan.netns(n)),
                          "ipv4": self.addrs(n, 4), "ipv6": self.addrs(n, 6)}
                      for n, node in self.spec.nodes.items()},
            "processes": procs,
            "controller": self.ctl.to_dict() if self.ctl else None,
        }

    # -- controller -----------------------------------------------------------
    def vp_names(self) -> list[str]:
        """Names of the spec's VPs (each registers under this name)."""
        return [n for n, node in self.spec.nodes.items() if node.kind == "vp"]

    def controller_address(self) -> str | None:
        """Where a researcher attaches: "127.0.0.1:PORT" (mutual TLS, see ``client_tls()``).

        For an external controller this is what the VPs dial; None when the
        lab has no controller.
        """
        if self.ctl is None:
            return None
        return self.ctl.clients if self.ctl.managed else self.ctl.endpoints

    def controller_unix(self) -> str | None:
        """The lab controller's Unix socket ("unix:PATH" form works with ``connect_controller``)."""
        return self.ctl.unix if self.ctl and self.ctl.managed else None

    def client_tls(self) -> tuple[str, str, str]:
        """(cert, key, ca) of the researcher's client certificate for ``controller_address()``."""
        tls = self.ctl.client_tls() if self.ctl else None
        if tls is None:
            raise LabError("this lab has no client certificate (no lab-managed controller)")
        return tls

    def vp_tls(self, vp: str) -> tuple[str, str, str] | None:
        """(cert, key, ca) the VP's endpoint presents to the controller, if the lab issued one."""
        if self.ctl is None or vp not in self.ctl.vp_certs or not self.ctl.ca:
            return None
        cert, key = self.ctl.vp_certs[vp]
        return cert, key, self.ctl.ca

    async def aconnect(self) -> Any:
        """A ``ControllerConnection`` to the lab's controller (``vps()``, ``attach(vp)``)."""
        if self.ctl is None:
            raise LabError("this lab has no controller")
        from . import controller as labctl
        return await labctl.connect(self.ctl)

    def registry(self) -> list[dict[str, Any]]:
        """The controller's VP registry (alive VPs), synchronously."""
        from . import controller as labctl

        async def go() -> list[dict[str, Any]]:
            conn = await self.aconnect()
            try:
                return await conn.vps()
            finally:
                await conn.close()
        return labctl.run_coro(go)

    def wait_vps(self, timeout: float = 20.0, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Block until the VPs (default: all whose endpoint was started) are registered."""
        if self.ctl is None:
            raise LabError("this lab has no controller")
        from . import controller as labctl
        want = list(names) if names is not None else [n for n in self._vp_procs() if n]
        ctl = self.ctl
        if not ctl.managed:
            raise LabError("waiting for VPs needs the lab's own controller (an external one is not ours to query)")
        return labctl.run_coro(lambda: labctl.wait_registered(ctl, want, timeout))

    def ctrl(self, **kw: Any) -> Any:
        """A ``marionet.Ctrl`` attached to the lab's controller (mutual TLS)."""
        try:
            from marionet import Ctrl  # type: ignore[attr-defined]
        except ImportError:
            from marionet.client.ctrl import Ctrl  # type: ignore[no-redef]
        cert, key, ca = self.client_tls()
        return Ctrl(controller=self.controller_address(), cert=cert, key=key, ca=ca, **kw)
