"""What ``marionet wrap`` costs: HTTPS fetches and a bulk download, wrapped vs native.

On one lab path (vp ─3ms─ r1 ─ srv, nginx with the lab CA; a second VP's
access link is rate-limited to 50 Mbit/s) this prints:

* per-fetch wall time of ``--fetches`` HTTPS fetches (curl's own
  ``time_total``, a fresh connection and TLS handshake each), run by one
  wrapped ``sh`` loop through the lab's controller vs the same loop run
  inside the VP's namespace: median, p99, ratio;
* the wrap's fixed cost: wall time of ``marionet wrap -- true`` (process
  start, controller attach, namespace up and down);
* a bulk download's throughput (curl ``speed_download``, ``--bulk-mb``),
  wrapped vs native, on the unlimited and the 50 Mbit/s path (``--runs``
  each): median and ratio.

Figures only, no verdicts; the machine is shared, so timings are noisy.
Needs root. Everything it starts (the lab) is torn down, also on failure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import summary  # noqa: E402

SPEC = """
[lab]
name = "wrbn"
controller = "auto"

[[vp]]
name = "vp-fast"

[[vp]]
name = "vp-slow"

[[router]]
name = "r1"

[[host]]
name = "srv"

[[link]]
a = "vp-fast"
b = "r1"
delay = "3ms"

[[link]]
a = "vp-slow"
b = "r1"
delay = "3ms"
rate = "50mbit"

[[link]]
a = "r1"
b = "srv"

[[service]]
host = "srv"
kind = "https"
options = {{ hostnames = ["www.wrbn.example"], files = {{ "index.html" = "<p>bench page</p>\\n", "bulk.bin" = {bulk} }} }}
"""


def wrap_argv(lab, vp: str, *opts: str) -> list[str]:
    cert, key, ca = lab.client_tls()
    return [sys.executable, "-m", "marionet", "wrap", "--controller", lab.controller_address(), "--cert", cert,
            "--key", key, "--ca", ca, "--vp", vp, *opts, "--"]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def run(argv: list[str], timeout: float = 300) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())
    if cp.returncode != 0:
        raise RuntimeError(f"{argv[:3]}… exited {cp.returncode}: {cp.stderr[-800:]}")
    return cp.stdout


def native(lab, vp: str, argv: list[str], timeout: float = 300) -> str:
    return run(["ip", "netns", "exec", lab.netns(vp), *argv], timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fetches", type=int, default=100)
    ap.add_argument("--bulk-mb", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--starts", type=int, default=5, help="wrap -- true runs for the fixed cost")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (lab namespaces)", file=sys.stderr)
        return 2
    from marionet.lab import Lab, parse_spec
    from marionet.lab.hooks import service_dir
    from marionet.lab.labca import LabCA

    lab = Lab(parse_spec(SPEC.format(bulk=a.bulk_mb * 1_000_000)))
    lab.up()
    try:
        lab.wait_vps()
        ca = str(LabCA.load(service_dir(lab) / "ca").root_path)
        srv = lab.addr("srv", 4)
        host = "www.wrbn.example"
        curl = ["curl", "-sS", "--cacert", ca, "--resolve", f"{host}:443:{srv}"]
        loop = ["sh", "-c", f"for i in $(seq {a.fetches}); do "
                + " ".join(curl) + f" -o /dev/null -w '%{{time_total}}\\n' https://{host}/; done"]
        print(f"lab path: vp ─3ms─ r1 ─ srv (RTT ≥ 6 ms); {a.fetches} HTTPS fetches, a new connection each")
        t = time.monotonic()
        w = [float(x) * 1e3 for x in run(wrap_argv(lab, "vp-fast") + loop).split()]
        wall_w = time.monotonic() - t
        t = time.monotonic()
        n = [float(x) * 1e3 for x in native(lab, "vp-fast", loop).split()]
        wall_n = time.monotonic() - t
        sw, sn = summary(w), summary(n)
        print(f"  native  per fetch: median {sn['median']:7.2f} ms  p99 {sn['p99']:7.2f} ms   (loop {wall_n:5.1f} s)")
        print(f"  wrapped per fetch: median {sw['median']:7.2f} ms  p99 {sw['p99']:7.2f} ms   (loop {wall_w:5.1f} s,"
              f" incl. the wrap's start)")
        print(f"  ratio wrapped/native: median {sw['median'] / sn['median']:.2f}  p99 {sw['p99'] / sn['p99']:.2f}"
              f"  loop wall {wall_w / wall_n:.2f}")
        starts = []
        for _ in range(a.starts):
            t = time.monotonic()
            run(wrap_argv(lab, "vp-fast") + ["true"])
            starts.append((time.monotonic() - t) * 1e3)
        s = summary(starts)
        print(f"  fixed cost of `marionet wrap -- true`: median {s['median']:.0f} ms  max {s['max']:.0f} ms"
              f" (n={s['n']})")
        for vp, label in (("vp-fast", "unlimited"), ("vp-slow", "50 Mbit/s")):
            get = curl + ["-o", "/dev/null", "-w", "%{speed_download}\\n", f"https://{host}/bulk.bin"]
            tw, tn = [], []
            for _ in range(a.runs):
                tn.append(float(native(lab, vp, get)) * 8 / 1e6)
                tw.append(float(run(wrap_argv(lab, vp) + get)) * 8 / 1e6)
            mw, mn = statistics.median(tw), statistics.median(tn)
            print(f"bulk download {a.bulk_mb} MB, {label} path, {a.runs} runs:  native median {mn:7.1f} Mbit/s"
                  f"  wrapped median {mw:7.1f} Mbit/s  ratio {mw / mn:.2f}"
                  f"  (wrapped {', '.join(f'{x:.0f}' for x in tw)}; native {', '.join(f'{x:.0f}' for x in tn)})")
    finally:
        problems = lab.down()
        if problems:
            print(f"lab teardown: {problems}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
