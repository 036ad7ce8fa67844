"""Shortest ping with marionet's own API: which VP is closest to a target?

Usage: python shortest_ping.py TARGET [CONTROLLER]
Without CONTROLLER an embedded controller with three local VPs is used.
Results are also written to shortest_ping.json (scamper JSON lines).
"""
import sys

from marionet import Ctrl, File, InstError

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
where = {"controller": sys.argv[2], "insecure": True} if len(sys.argv) > 2 else {"local_vps": 3}

with File("shortest_ping.json", "w") as out, Ctrl(outfile=out, **where) as ctrl:
    ctrl.do_ping(target, inst=ctrl.instances(), attempts=3, wait_probe=0.2)
    best = None
    try:
        for ping in ctrl.responses(timeout=10):
            if ping.min_rtt is not None and (best is None or ping.min_rtt < best.min_rtt):
                best = ping
    except InstError as e:  # a VP failed: say so, keep the others' results
        print(f"{e.inst.name}: {e}", file=sys.stderr)
    if best is None:
        print(f"no responses for {target}")
    else:
        print(f"{best.inst.name} {best.min_rtt.total_seconds() * 1000:.3f} ms")
