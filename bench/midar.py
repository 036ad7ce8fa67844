"""MIDAR's cost and accuracy as the number of targets grows (simulated).

The full pipeline (``marionet.measure.midar.run_midar``: estimation →
discovery → elimination → corroboration) over ``midar_sim.SimProber``: the
alias-router emulator's real packet logic in virtual time, ``--vps`` VPs
(3, 7, 11, … ms away), the last one's clock ``--skew-ms`` off and corrected
by the controller's estimate (0.3 ms wrong, ±1 ms). Routers of mixed IP-ID
behaviour (``mixed_routers``: shared, byte-swapped, same-velocity traps,
too fast, per-interface, per-destination, random, zero; ~3 addresses each).

Per size: probes sent per phase and in all; the virtual probing duration at
``--rate`` probes/s per VP (what a real run would take on the wire); the
analysis wall time — the run's wall time minus the time spent inside the
emulator — median and p99 over ``--reps`` runs (one run above
``--rep-limit`` targets); precision and recall over the alias pairs of
routers with a shared monotonic counter. Then growth ratios between
consecutive sizes (targets, probes, virtual duration, analysis time).
Figures only; never fails on them. The machine is shared: wall times are
noisy while other sessions run.

Sizes: ``200r`` = 200 routers (≈ the lab acceptance bed), a plain number =
that many target addresses. No live section yet: the run over real
endpoints (CtrlProber on alias_lab) is tests/integration on main.

Usage: python bench/midar.py [--sizes 200r,1000,5000,20000] [--vps 4] [--skew-ms 50]
                             [--rate 100] [--reps 3] [--rep-limit 5000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import summary  # noqa: E402


class TimedProber:
    """A Prober wrapper: wall time inside the emulator, virtual time and
    probes per phase."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sim_wall_s = 0.0
        self.virtual_s: dict[str, float] = {}

    def now_ns(self) -> int:
        return self.inner.now_ns()

    async def run(self, plan: Sequence[Any], phase: str) -> list[Any]:
        v0, t0 = self.inner.now_ns(), time.perf_counter()
        out = await self.inner.run(plan, phase)
        self.sim_wall_s += time.perf_counter() - t0
        self.virtual_s[phase] = self.virtual_s.get(phase, 0.0) + (self.inner.now_ns() - v0) / 1e9
        return out


def parse_sizes(text: str) -> list[tuple[str, int]]:
    """'200r,1000' -> [('200r', 200 routers), ('1000', 334 routers)]."""
    out = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        try:
            n = int(tok[:-1]) if tok.endswith("r") else max(20, round(int(tok) / 3))
        except ValueError:
            raise SystemExit(f"--sizes: {tok!r} is not N (targets) or Nr (routers)") from None
        if n < 20:
            raise SystemExit(f"--sizes: {tok!r}: at least 20 routers")
        out.append((tok, n))
    if not out:
        raise SystemExit("--sizes: no size")
    return out


def one_run(cfg: dict, n_vps: int, skew_ms: float, rate: float) -> dict[str, Any]:
    from marionet.measure.midar import run_midar
    from marionet.measure.midar_sim import SimProber, score, sim_vps

    vps = sim_vps(n_vps, skew_ms=skew_ms)
    prober = TimedProber(SimProber(cfg, vps))
    addrs = [a for r in cfg["router"] for a in r["addresses"]]
    t0 = time.perf_counter()
    res = asyncio.run(run_midar(None, addrs, vps=[v.name for v in vps], rate_pps=rate, prober=prober))
    wall = time.perf_counter() - t0
    precision, recall = score(cfg, res.pairs)
    return {"targets": len(addrs), "routers": len(cfg["router"]),
            "probes": {ph: st["probes_total"] for ph, st in res.phases.items()},
            "virtual_s": {ph: round(v, 1) for ph, v in prober.virtual_s.items()},
            "analysis_s": wall - prober.sim_wall_s, "sim_s": prober.sim_wall_s,
            "window": res.phases["discovery"].get("window"), "windows": res.phases["discovery"].get("windows"),
            "pairs": len(res.pairs), "precision": precision, "recall": recall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200r,1000,5000,20000")
    ap.add_argument("--vps", type=int, default=4)
    ap.add_argument("--skew-ms", type=float, default=50.0, help="the last VP's clock offset")
    ap.add_argument("--rate", type=float, default=100.0, help="probes per second per VP")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rep-limit", type=int, default=5000, help="one run above this many targets")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", metavar="OUT")
    a = ap.parse_args()
    if a.vps < 1 or a.rate <= 0 or a.reps < 1:
        raise SystemExit("--vps and --reps must be >= 1, --rate > 0")
    from marionet.measure.midar_sim import mixed_routers

    print(f"MIDAR, simulated: {a.vps} VPs at {a.rate:g} probes/s each, last VP's clock {a.skew_ms:g} ms off")
    print(f"{'size':>6} {'targets':>7} {'probes: est':>11} {'disc':>7} {'elim':>6} {'corr':>6} {'total':>8} "
          f"{'virtual':>8} {'analysis med':>12} {'p99':>6} {'emu':>6} {'window':>6} {'prec':>6} {'recall':>6}")
    rows = []
    for label, n_routers in parse_sizes(a.sizes):
        cfg = mixed_routers(n_routers, seed=a.seed)
        n_targets = sum(len(r["addresses"]) for r in cfg["router"])
        reps = a.reps if n_targets <= a.rep_limit else 1
        runs = [one_run(cfg, a.vps, a.skew_ms, a.rate) for _ in range(reps)]
        r0 = runs[0]
        an = summary([r["analysis_s"] for r in runs])
        total = sum(r0["probes"].values())
        virtual = sum(r0["virtual_s"].values())
        pr = r0["probes"]
        print(f"{label:>6} {n_targets:>7} {pr.get('estimation', 0) + pr.get('estimation-fast', 0):>11} "
              f"{pr['discovery']:>7} {pr['elimination']:>6} {pr['corroboration']:>6} {total:>8} "
              f"{virtual:>7.0f}s {an['median']:>11.2f}s {an['p99']:>5.2f}s {r0['sim_s']:>5.1f}s "
              f"{r0['window']:>6} {r0['precision']:>6.4f} {r0['recall']:>6.4f}", flush=True)
        rows.append({"size": label, **r0, "probes_total": total, "virtual_total_s": round(virtual, 1),
                     "analysis": {k: round(v, 3) for k, v in an.items()}, "reps": reps})
    if len(rows) > 1:
        print("growth between consecutive sizes (×):")
        print(f"{'from → to':>16} {'targets':>8} {'probes':>7} {'virtual':>8} {'analysis':>9}")
        for x, y in zip(rows, rows[1:]):
            print(f"{x['size'] + ' → ' + y['size']:>16} {y['targets'] / x['targets']:>8.2f} "
                  f"{y['probes_total'] / x['probes_total']:>7.2f} {y['virtual_total_s'] / x['virtual_total_s']:>8.2f} "
                  f"{y['analysis']['median'] / x['analysis']['median']:>9.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"vps": a.vps, "rate_pps": a.rate, "skew_ms": a.skew_ms, "rows": rows}, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
