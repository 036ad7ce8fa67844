"""Coverage-guided fuzzing (atheris) of the wire decoder and the parsers, in CI.

Each test runs one target of ``atheris_targets.py`` in a subprocess for a
few seconds, from a seed corpus built with the project's own encoders
(``fuzz_seeds.py``), and fails if libFuzzer reports a crash: an exception
outside the target's contract, a failed invariant, a hang (``-timeout``)
or a runaway allocation (``-rss_limit_mb``).  The failure shows the
crashing input (hex) and the traceback, and how to replay it.

The budget is short on purpose (all targets together: under a minute on
two cores); long runs are local, see README.md here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import fuzz_seeds

pytest.importorskip(
    "atheris",
    reason="atheris (libFuzzer for Python) has wheels for x86_64 Linux only; "
           "the test extra installs it there",
)

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "atheris_targets.py"


@dataclass(frozen=True)
class Budget:
    seconds: int  # -max_total_time
    runs: int     # -runs: whichever of the two comes first ends the run
    max_len: int  # -max_len: longest input tried


# Per-target budgets from measured speed on a 2-vCPU machine (exec/s: wire
# ~40k, warts ~6k, dns ~2.5k, probes ~80k, json ~30k, resolvconf ~35k); the
# run caps end a run early only on a much faster machine.  All six: ~45 s.
BUDGETS = {
    "wire": Budget(5, 400_000, 4096),
    "warts": Budget(9, 120_000, 4096),
    "dns": Budget(9, 50_000, 1024),
    "probes": Budget(3, 500_000, 1600),
    "json": Budget(8, 500_000, 4096),
    "resolvconf": Budget(2, 150_000, 2048),
}

_ARTIFACT = re.compile(r"^(crash|timeout|oom|leak|slow-unit)-")


def _report(target: str, proc: subprocess.CompletedProcess, artifacts: list[Path]) -> str:
    lines = [f"atheris target {target!r} failed (exit {proc.returncode})"]
    for a in artifacts:
        data = a.read_bytes()
        lines.append(f"--- {a.name} ({len(data)} bytes)")
        lines.append(f"hex: {data[:2048].hex()}{' ...' if len(data) > 2048 else ''}")
        lines.append(f"repr: {data[:512]!r}")
        lines.append(f"replay: {sys.executable} {RUNNER} {target} {a}")
    # atheris prints the Python traceback on stdout, libFuzzer its verdict
    # (crash, ALARM for a hang, out-of-memory) on stderr after its progress
    marks = [i for i in (proc.stdout.find("=== Uncaught Python exception"),
                         proc.stdout.find("=== Timeout")) if i >= 0]
    if marks:
        exc = min(marks)
        lines += ["--- traceback:", proc.stdout[exc:][:6000]]
    err = [line for line in proc.stderr.splitlines() if not line.startswith("INFO: Instrumenting")]
    verdict = next((i for i, line in enumerate(err)
                    if line.startswith(("ALARM", "==")) or "ERROR: libFuzzer" in line), None)
    seed = [line for line in err if line.startswith("INFO: Seed:")]
    lines.append("--- libFuzzer:")
    lines += seed + (err[verdict:verdict + 60] if verdict is not None else err[-40:])
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("target", list(BUDGETS))
def test_fuzz_target(target, tmp_path):
    budget = BUDGETS[target]
    corpus = tmp_path / "corpus"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    fuzz_seeds.write_seeds(target, corpus)
    args = [sys.executable, str(RUNNER), target,
            f"-max_total_time={budget.seconds}", f"-runs={budget.runs}",
            f"-max_len={budget.max_len}", "-timeout=10", "-rss_limit_mb=1024",
            f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    d = fuzz_seeds.write_dict(target, tmp_path / "tokens.dict")
    if d is not None:
        args.append(f"-dict={d}")
    args.append(str(corpus))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True,
                          errors="replace", timeout=budget.seconds + 90, env=env)
    found = sorted(p for p in artifacts.iterdir() if _ARTIFACT.match(p.name))
    assert proc.returncode == 0 and not found, _report(target, proc, found)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", proc.stderr, re.M))
    runs = int(stats.get("number_of_executed_units", 0))
    print(f"{target}: {runs} runs, {stats.get('average_exec_per_sec', '?')} exec/s, "
          f"corpus {len(list(corpus.iterdir()))} inputs")
    assert runs > 0, "libFuzzer ran no input:\n" + proc.stderr[-3000:]


def test_runner_lists_every_target():
    proc = subprocess.run([sys.executable, str(RUNNER), "--list"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("targets:")[1].split() == list(BUDGETS)
