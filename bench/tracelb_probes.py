"""Probes per diamond: our tracelb vs Debian scamper's tracelb on the same lab path.

Diamonds (``marionet.lab`` ``diamond_path``): client – r1 – {width branches
of ``length`` routers} – r2 – target, balanced by Linux ECMP (kernel, UDP)
or by the lab's per-flow balancer that hashes the ICMP checksum (flow,
icmp-echo).  Per diamond: ``--rounds`` runs of ``tracelb()`` over a native
session in the client namespace (back-to-back probes), ``--scamper-rounds``
runs of ``scamper -c 'tracelb -P METHOD -c 95'`` there (its fastest pacing,
``-W 15``; each takes seconds).  Prints, per diamond, the median and p99 of
``probec`` for both, the ratio of medians ours/scamper (target ≤ 1.0), and
how often each found every link of the lab's truth.  Figures only; never
fails on them.  Needs root and Debian's scamper.

Where the two differ: our MDA keeps node control, scamper explores a
diamond as one "clump"; on these unmeshed diamonds both end up needing the
hop's n_K flows per TTL.  At the destination hop each uses one probe however
many interfaces the exit router shows (the others converge on it unprobed).

Usage: python bench/tracelb_probes.py [--rounds 30] [--scamper-rounds 3] [--confidence 95]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

from _common import summary  # noqa: E402

DIAMONDS = [("kernel", 2, 2, "udp-dport"), ("kernel", 4, 2, "udp-dport"), ("kernel", 8, 1, "udp-dport"),
            ("flow", 2, 2, "icmp-echo")]


def truth_links(lab, family: int = 4) -> set[tuple[str, str]]:
    dst = lab.addr("target", family)
    (p,) = [p for p in lab.truth()["paths"] if p["src"] == "client" and p["dst_addr"] == dst]
    return {(a, b) for path in p["paths"] for a, b in zip(path, path[1:])}


def scamper_run(lab, method: str, confidence: int, resolv: str):
    from marionet.results import from_json

    cmd = (f"mount --bind {resolv} /etc/resolv.conf && scamper -O json -c "
           f"'tracelb -P {method} -c {confidence} -W 15 -w 1' -i {lab.addr('target')}")
    cp = lab.exec("client", ["unshare", "-m", "sh", "-c", cmd], check=True, timeout=600)
    (rec,) = [json.loads(line) for line in cp.stdout.splitlines() if '"tracelb"' in line]
    return from_json(rec)


async def ours(lab, method: str, confidence: int, rounds: int) -> list:
    import pathlab
    from marionet.endpoint.local import native_session
    from marionet.measure.tracelb import tracelb

    out = []
    with pathlab.inside(lab.netns("client")):
        async with native_session() as ns:
            for _ in range(rounds):
                out.append(await tracelb(ns, lab.addr("target"), method=method, confidence=confidence,
                                         wait_probe=0.0, wait_timeout=1.0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--scamper-rounds", type=int, default=3)
    ap.add_argument("--confidence", type=int, default=95, choices=(95, 99))
    a = ap.parse_args()
    from marionet.lab import diamond_path
    from marionet.lab.pytest_plugin import make_lab

    with tempfile.NamedTemporaryFile("w", suffix=".resolv", delete=False) as f:
        f.write("nameserver 127.0.0.1\n")
    try:
        print(f"tracelb probes per diamond, confidence {a.confidence}% "
              f"(ours: {a.rounds} runs, scamper: {a.scamper_rounds} runs)")
        print(f"{'diamond':<24} {'ours median':>11} {'p99':>6} {'scamper median':>14} {'p99':>6} "
              f"{'ratio':>6}  {'all links ours/scamper':>22}")
        for bal, width, length, method in DIAMONDS:
            with make_lab(diamond_path(width, length, balancer=bal, name=f"tlbb{width}{length}")) as lab:
                want = truth_links(lab)
                t0 = time.monotonic()
                mine = asyncio.run(ours(lab, method, a.confidence, a.rounds))
                t_ours = time.monotonic() - t0
                t0 = time.monotonic()
                theirs = [scamper_run(lab, method, a.confidence, f.name) for _ in range(a.scamper_rounds)]
                t_sc = time.monotonic() - t0
                so, ss = summary([t.probec for t in mine]), summary([t.probec for t in theirs])
                ok_o = sum(t.flow_links() == want for t in mine)
                ok_s = sum(t.flow_links() == want for t in theirs)
                name = f"{bal} {width}x{length} {method}"
                print(f"{name:<24} {so['median']:>11.1f} {so['p99']:>6.0f} {ss['median']:>14.1f} {ss['p99']:>6.0f} "
                      f"{so['median'] / ss['median']:>6.2f}  {ok_o:>9}/{len(mine)} {ok_s:>5}/{len(theirs)}"
                      f"   ({t_ours / len(mine):.2f} s vs {t_sc / max(1, len(theirs)):.1f} s per run)")
    finally:
        os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
