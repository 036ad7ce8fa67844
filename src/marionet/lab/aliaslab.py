"""A lab for alias resolution at scale: VPs, kernel routers, hundreds of emulated routers.

::

    vp1 ─d─ r1 ─┐
    vp2 ─d─ r2 ─┤
    vp3 ─d─ r3 ─┼─ core ── ar   (one alias-router emulator: n_routers routers,
    vp4 ─d─ r4 ─┘                 2..9 IPv4 interfaces each, in options.stub4)

The emulated routers' behaviour comes from a *mix* of classes drawn with a
seed, so a run is reproducible and its ground truth is in the spec itself
(:func:`alias_truth`), before the lab exists.  A router's name is
``<class>-<index>``, so the class survives into ``lab.truth()``.

Classes (what the emulator is told; see marionet.lab.aliasrouter):

=============== ===============================================================
shared          one counter for all interfaces, velocity log-uniform 2..2000/s
fast            shared, 20k..40k IDs/s: wraps 2¹⁶ every 2-3 s
byteswapped     shared counter sent in little-endian byte order
lossy           shared, each probe answered with probability 0.8
rate-limited    shared, at most 20 replies/s (burst 5)
icmp-only       shared, answers ICMP echo only (no UDP, no TCP)
silent          shared, stops answering after 30..120 replies
per-interface   one counter per interface (not IP-ID aliases)
per-destination one counter per prober (looks shared from one VP only)
random          random IDs
zero            IP-ID 0
=============== ===============================================================

:func:`alias_truth` says which pairs an IP-ID technique should find
(``monotonic``: the shared-counter classes whose counter is visible to it)
and which routers must never be merged.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import random
from collections.abc import Mapping
from typing import Any

from .spec import Spec, SpecError, parse_dict

__all__ = ["CLASSES", "DEFAULT_MIX", "MONOTONIC_SHARED", "alias_lab", "alias_routers", "alias_truth",
           "alias_targets", "STUB4"]

#: Behaviour classes, and the emulator settings each gets (``rng`` draws the numbers).
CLASSES = ("shared", "fast", "byteswapped", "lossy", "rate-limited", "icmp-only", "silent",
           "per-interface", "per-destination", "random", "zero")
#: Classes whose interfaces share one monotonic counter (byte order aside).
MONOTONIC_SHARED = ("shared", "fast", "byteswapped", "lossy", "rate-limited", "icmp-only", "silent")
DEFAULT_MIX: dict[str, float] = {
    "shared": 0.40, "fast": 0.05, "byteswapped": 0.05, "lossy": 0.05, "rate-limited": 0.03,
    "icmp-only": 0.05, "silent": 0.02, "per-interface": 0.10, "per-destination": 0.05,
    "random": 0.12, "zero": 0.08,
}
STUB4 = "10.210.0.0/20"  # 4094 addresses: room for 500 routers of 8 interfaces
MAX_ROUTERS = 500


def _counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``n · share``: exact totals, no class lost to rounding."""
    total = sum(mix.values())
    raw = {c: n * w / total for c, w in mix.items()}
    out = {c: int(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: (raw[c] - out[c], c), reverse=True)[: n - sum(out.values())]:
        out[c] += 1
    return out


def _behaviour(cls: str, rng: random.Random) -> dict[str, Any]:
    b: dict[str, Any] = {"ipid": "shared", "offset": rng.randrange(65536)}
    if cls in MONOTONIC_SHARED:
        b["velocity"] = round(math.exp(rng.uniform(math.log(2), math.log(2000))), 1)
    if cls == "fast":
        b["velocity"] = float(rng.randrange(20_000, 40_001))
    elif cls == "byteswapped":
        b["ipid"] = "byteswapped"
    elif cls == "lossy":
        b["answer_probability"] = 0.8
    elif cls == "rate-limited":
        b["rate_limit"], b["rate_burst"] = 20.0, 5.0
    elif cls == "icmp-only":
        b["methods"] = ["icmp"]
    elif cls == "silent":
        b["silent_after"] = rng.randrange(30, 121)
    elif cls in ("per-interface", "per-destination", "random", "zero"):
        b["ipid"] = cls
        b["velocity"] = round(math.exp(rng.uniform(math.log(2), math.log(2000))), 1) if cls.startswith("per") else 0.0
    return b


def alias_routers(n_routers: int = 200, *, mix: Mapping[str, float] | None = None, seed: int = 1,
                  stub4: str = STUB4, interfaces: tuple[int, int] = (2, 9)) -> list[dict[str, Any]]:
    """The emulated routers (aliasrouter ``[[router]]`` tables) for a mix, reproducibly."""
    if isinstance(n_routers, bool) or not isinstance(n_routers, int) or not 1 <= n_routers <= MAX_ROUTERS:
        raise ValueError(f"n_routers: expected 1..{MAX_ROUTERS}, got {n_routers!r}")
    mix = dict(DEFAULT_MIX if mix is None else mix)
    bad = [c for c in mix if c not in CLASSES]
    if bad:
        raise ValueError(f"mix: unknown class(es) {', '.join(map(repr, bad))} (known: {', '.join(CLASSES)})")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in mix.values()) \
            or sum(mix.values()) <= 0:
        raise ValueError(f"mix: expected non-negative shares with a positive sum, got {mix!r}")
    lo, hi = interfaces
    if not 1 <= lo <= hi <= 64:
        raise ValueError(f"interfaces: expected 1 <= min <= max <= 64, got {interfaces!r}")
    rng = random.Random(seed)
    classes = [c for c, k in _counts(n_routers, mix).items() for _ in range(k)]
    rng.shuffle(classes)
    hosts = ipaddress.IPv4Network(stub4).hosts()
    routers = []
    for i, cls in enumerate(classes):
        n_if = rng.randint(lo, hi)
        try:
            addrs = [str(next(hosts)) for _ in range(n_if)]
        except StopIteration:
            raise ValueError(f"stub4 {stub4}: too small for {n_routers} routers of up to {hi} interfaces") from None
        routers.append({"name": f"{cls}-{i:03d}", "addresses": addrs, **_behaviour(cls, rng)})
    rng.shuffle(routers)  # addresses of one router are contiguous; routers' order is not by class
    return routers


def alias_lab(n_routers: int = 200, *, vps: int = 4, mix: Mapping[str, float] | None = None, seed: int = 1,
              skew_ms: Mapping[str, float] | None = None, delay_ms: float = 2.0, name: str = "alias") -> Spec:
    """The alias-resolution lab: ``vps`` VPs (with the lab's controller), a kernel
    router each, a core router and one alias-router node with ``n_routers``
    emulated routers; ``skew_ms`` = ``{vp name: ms}`` skews VP clocks
    (``[[vp]] clock_skew_ms``). VPs are named ``vp1`` … ``vpN``."""
    if isinstance(vps, bool) or not isinstance(vps, int) or not 1 <= vps <= 16:
        raise ValueError(f"vps: expected 1..16, got {vps!r}")
    names = [f"vp{k}" for k in range(1, vps + 1)]
    skew = dict(skew_ms or {})
    unknown = [v for v in skew if v not in names]
    if unknown:
        raise ValueError(f"skew_ms: no VP {', '.join(map(repr, unknown))} (VPs: {', '.join(names)})")
    routers = alias_routers(n_routers, mix=mix, seed=seed)
    links: list[dict[str, Any]] = []
    for k, vp in enumerate(names, 1):
        ln: dict[str, Any] = {"a": vp, "b": f"r{k}"}
        if delay_ms:
            ln["delay"] = f"{delay_ms * k}ms"  # distinct RTTs per VP
        links += [ln, {"a": f"r{k}", "b": "core"}]
    links.append({"a": "core", "b": "ar"})
    try:
        return parse_dict({
            "lab": {"name": name, "controller": "auto"},
            "vp": [{"name": v, **({"clock_skew_ms": float(skew[v])} if skew.get(v) else {})} for v in names],
            "router": [{"name": f"r{k}"} for k in range(1, vps + 1)] + [{"name": "core"}],
            "aliasrouter": [{"name": "ar", "options": {"stub4": STUB4, "seed": seed, "routers": routers}}],
            "link": links,
        })
    except SpecError as e:
        raise ValueError(f"alias_lab: {e}") from None


def _emulated(spec_or_truth: Any) -> list[dict[str, Any]]:
    """The emulated routers, from a Spec (its alias-router options) or ``lab.truth()``."""
    if isinstance(spec_or_truth, Spec):
        out = []
        for n in spec_or_truth.nodes.values():
            if n.kind == "aliasrouter":
                out += list(n.options.get("routers") or n.options.get("config", {}).get("router", []))
        return out
    return [r for e in spec_or_truth.get("aliases", []) if e.get("kind") == "aliasrouter"
            for r in e.get("emulated", [])]


def alias_targets(spec_or_truth: Any, *, shuffle_seed: int | None = 0) -> list[str]:
    """Every emulated IPv4 interface address: a MIDAR target list (shuffled, so
    one router's interfaces are not adjacent; ``shuffle_seed=None`` keeps order)."""
    t = [a for r in _emulated(spec_or_truth) for a in r["addresses"] if ":" not in a]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(t)
    return t


def alias_truth(spec_or_truth: Any) -> dict[str, Any]:
    """Ground truth for scoring: per router its class and addresses, the alias
    sets, and the pairs a shared-counter technique should find (``expected_pairs``:
    routers of MONOTONIC_SHARED classes) or must never report (``never_pairs_of``:
    routers of the other classes, by name). ``expected_answering_pairs`` leaves
    out the ``silent`` routers, which stop answering after 30–120 replies —
    often before a run's estimation is over, so no IP-ID technique can pair
    them; they are churn, and PAM'25 scored MIDAR after removing churned
    addresses the same way."""
    routers = _emulated(spec_or_truth)
    out_r, expected, answering, never = [], set(), set(), []
    for r in routers:
        cls = r["name"].rsplit("-", 1)[0]
        v4 = sorted(a for a in r["addresses"] if ":" not in a)
        out_r.append({"name": r["name"], "class": cls, "addresses": v4, "ipid": r.get("ipid", "shared")})
        if cls in MONOTONIC_SHARED:
            pairs = set(itertools.combinations(v4, 2))
            expected |= pairs
            if cls != "silent":
                answering |= pairs
        else:
            never.append(r["name"])
    return {"routers": out_r, "alias_sets": [set(r["addresses"]) for r in out_r],
            "expected_pairs": expected, "expected_answering_pairs": answering, "never_pairs_of": never,
            "owner": {a: r["name"] for r in out_r for a in r["addresses"]}}
