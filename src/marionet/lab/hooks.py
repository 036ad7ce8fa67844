"""Glue to the lab's services and the alias-router emulator (separate modules).

The interface is ``marionet.lab.services.start_service(kind, netns, options,
state_dir=…) -> handle`` with ``.stop()`` and ``.pid``.  Each lab gives its
services ``<state dir>/<lab id>.d`` so crash cleanup
(``services.stop_leftovers``) sees exactly this lab's services.  If the
module is missing the lab still comes up, with a warning: tests that only
need routing should not depend on nginx being installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .system import LabError

if TYPE_CHECKING:
    from .core import Lab
    from .spec import Node, Service


def service_dir(lab: "Lab") -> Path:
    assert lab.state
    d = lab.state.path.with_name(f"{lab.lab_id}.d")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _services_module() -> Any | None:
    try:
        return importlib.import_module("marionet.lab.services")
    except ImportError:
        return None


def start_service(lab: "Lab", svc: "Service") -> Any | None:
    mod = _services_module()
    if mod is None or not hasattr(mod, "start_service"):
        lab.warnings.append(f"service {svc.kind} on {svc.host}: marionet.lab.services not available; skipped")
        return None
    opts = dict(svc.options)
    opts.setdefault("name", f"{svc.host}-{svc.kind}")
    try:
        return mod.start_service(svc.kind, lab.netns(svc.host), opts, state_dir=service_dir(lab))
    except Exception as e:
        raise LabError(f"service {svc.kind} on {svc.host} (spec line {svc.line}): {e}") from e


def start_resolver(lab: "Lab", dns_handles: list[Any]) -> Any | None:
    """Start the lab's recursive resolver (Unbound) for the zones its dns services serve.

    Runs after the dns services, whose handles say which zones exist and
    where; the resolver's own addresses go onto its host's lo only now, so
    an NSD on the same host (which binds every address present when it
    starts) leaves port 53 on them free.  Clients: every prefix of the lab.
    """
    assert lab.plan
    res = lab.plan.resolver
    if res is None:
        return None
    mod = _services_module()
    if mod is None or "resolver" not in getattr(mod, "KINDS", ()):
        raise LabError("the lab's resolver needs marionet.lab.services with the resolver kind")
    zones: dict[str, list[str]] = {}
    for h in dns_handles:
        port = h.ports.get("dns", 53)
        servers = [a if port == 53 else f"{a}@{port}" for a in h.addresses if not a.startswith(("127.", "::1"))]
        for z in h.info.get("zones", []):
            zones.setdefault(z, []).extend(a for a in servers if a not in zones.get(z, []))
    if not zones:
        lab.warnings.append("resolver: the lab's dns services serve no zones; no resolver started")
        return None
    ns = lab.netns(res.node)
    from . import system
    system.ip_batch(ns, [f"addr add {res.ipv4}/32 dev lo", f"addr add {res.ipv6}/128 dev lo nodad"])
    allow = sorted({str(n) for ifs in lab.plan.ifaces.values() for i in ifs for n in (i.ipv4.network, i.ipv6.network)}
                   | {str(n) for pair in lab.plan.stubs.values() for n in pair})
    opts = {"name": "lab-resolver", "addresses": res.addresses, "zones": zones, "allow": allow}
    try:
        return mod.start_service("resolver", ns, opts, state_dir=service_dir(lab))
    except Exception as e:
        raise LabError(f"resolver on {res.node}: {e}") from e


def alias_config(lab: "Lab", node: "Node") -> dict[str, Any]:
    """The emulator config for an alias-router node.

    ``options.config`` passes through unchanged.  Otherwise ``options.routers``
    (default: one router) lists emulated routers with their behaviour keys
    (``ipid``, ``velocity``, ``offset`` …); a router without ``addresses``
    gets ``interfaces`` (default 3) IPv4 and one IPv6 address from the node's
    virtual prefix, which the lab routes to this node.
    """
    assert lab.plan
    if "config" in node.options:
        return node.options["config"]
    v4net, v6net = lab.plan.stubs[node.name]
    hosts4 = v4net.hosts()
    routers = []
    opts = {k: v for k, v in node.options.items() if k not in ("routers", "tun", "seed", "stub4")}
    for i, r in enumerate(node.options.get("routers", [opts])):
        r = dict(r)
        r.setdefault("name", f"{node.name}-{i + 1}")
        n_if = int(r.pop("interfaces", 3))
        if "addresses" not in r:
            r["addresses"] = [str(next(hosts4)) for _ in range(n_if)] + [str(v6net.network_address + 1 + i)]
        routers.append(r)
    cfg: dict[str, Any] = {"router": routers, "tun": f"{lab.prefix}ar"}
    if "seed" in node.options:
        cfg["seed"] = node.options["seed"]
    return cfg


def start_aliasrouter(lab: "Lab", node: "Node") -> None:
    """Run the alias-router emulator in ``node``'s namespace as a service.

    Options from the spec go through unchanged when they contain ``config``;
    otherwise the node's own interface addresses form one router whose
    behaviour keys (e.g. ``ipid``) come from the node's options.
    """
    mod = _services_module()
    if mod is None or "aliasrouter" not in getattr(mod, "KINDS", ()):
        lab.warnings.append(f"aliasrouter {node.name}: emulator not available; node is a plain host")
        return None
    try:
        importlib.import_module("marionet.lab.aliasrouter")
    except ImportError:
        lab.warnings.append(f"aliasrouter {node.name}: marionet.lab.aliasrouter missing; node is a plain host")
        return None
    opts: dict[str, Any] = {"name": f"{node.name}-aliasrouter"}
    opts["config"] = alias_config(lab, node)
    try:
        h = mod.start_service("aliasrouter", lab.netns(node.name), opts, state_dir=service_dir(lab))
    except Exception as e:
        raise LabError(f"aliasrouter {node.name} (spec line {node.line}): {e}") from e
    lab._services.append(h)
    pid = getattr(h, "pid", None)
    if isinstance(pid, int) and lab.state:
        lab.state.add_proc(pid, "aliasrouter", node.name)
    return None


def stop_leftovers(state_path: Path) -> list[int]:
    """After a crash: end services recorded under this lab's service dir."""
    mod = _services_module()
    d = state_path.with_suffix(".d")
    if mod is None or not d.exists() or not hasattr(mod, "stop_leftovers"):
        return []
    try:
        return list(mod.stop_leftovers(d))
    except Exception:
        return []
