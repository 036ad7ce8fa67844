"""Run a congruence study: experiments × VPs × runs, sources back to back.

Why alternate: the PAM'25 study ran the native tool and the remote
measurement in turn, 100 times per VP, so both saw the same network
conditions. Here every run of an experiment on a VP runs each source once,
one after the other, and the order rotates from run to run so no source is
always first after an idle gap. Experiments that load the path (throughput,
send gap) take one VP at a time; latency and content experiments run all
VPs at once (their paths share only the server).

The study writes nothing but ``Sample`` rows; ``report.write_report`` turns
them into tables, plots and Parquet.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from marionet.evaluate.experiments import Experiment, StudyContext
from marionet.evaluate.samples import Sample

__all__ = ["Study", "StudyResult", "Progress"]

Progress = Callable[[str, int, int], None]   # (label, done, total)


@dataclass
class StudyResult:
    samples: list[Sample]
    specs: list[Any]                       # report.ExperimentSpec, in study order
    wall_s: float
    runs: dict[str, int]                   # experiment -> runs per VP
    failures: dict[str, int] = field(default_factory=dict)   # "experiment/source" -> failed runs


class Study:
    """``experiments`` on ``vps`` of a running ``ctx`` (see ``StudyContext``), ``runs[exp.name]`` times."""

    def __init__(self, ctx: StudyContext, experiments: Sequence[Experiment], vps: Sequence[str],
                 runs: dict[str, int], progress: Progress | None = None) -> None:
        if not vps:
            raise ValueError("a study needs at least one VP")
        for e in experiments:
            if runs.get(e.name, 0) < 1:
                raise ValueError(f"{e.name}: runs must be at least 1")
        self.ctx = ctx
        self.experiments = list(experiments)
        self.vps = list(vps)
        self.runs = dict(runs)
        self.progress = progress or (lambda label, done, total: None)

    def total_steps(self) -> int:
        return sum(self.runs[e.name] * len(e.sources) * len(self.vps) for e in self.experiments)

    async def run(self) -> StudyResult:
        t0 = time.monotonic()
        samples: list[Sample] = []
        specs: list[Any] = []
        failures: dict[str, int] = {}
        done = 0
        total = self.total_steps()

        def step(label: str) -> None:
            nonlocal done
            done += 1
            self.progress(label, done, total)

        for exp in self.experiments:
            await exp.setup(self.ctx, self.vps)
            try:
                if exp.parallel:
                    parts = await asyncio.gather(*(self._vp_runs(exp, vp, step, failures) for vp in self.vps))
                    for p in parts:
                        samples += p
                else:
                    for vp in self.vps:
                        samples += await self._vp_runs(exp, vp, step, failures)
            finally:
                await exp.teardown(self.ctx)
        for exp in self.experiments:
            specs += exp.specs(self.ctx, self.vps)
        return StudyResult(samples, specs, time.monotonic() - t0,
                           {e.name: self.runs[e.name] for e in self.experiments}, failures)

    async def _vp_runs(self, exp: Experiment, vp: str, step: Callable[[str], None],
                       failures: dict[str, int]) -> list[Sample]:
        out: list[Sample] = []
        sources = list(exp.sources)
        for run in range(self.runs[exp.name]):
            k = run % len(sources)
            for source in sources[k:] + sources[:k]:
                try:
                    got = await asyncio.wait_for(exp.run(self.ctx, vp, source, run), exp.timeout * 2)
                except Exception as e:  # noqa: BLE001 - a failed run is counted and shown, the study goes on
                    key = f"{exp.name}/{source}"
                    failures[key] = failures.get(key, 0) + 1
                    if failures[key] <= 3:
                        self.progress(f"{exp.name} {vp} {source} run {run} failed: {type(e).__name__}: "
                                      f"{str(e)[:200]}", -1, -1)
                    got = []
                out += got
                step(f"{exp.name} {vp} {source}")
        return out


@contextlib.asynccontextmanager
async def lab_context(lab: Any, vps: Sequence[str], server: str) -> Any:
    """A ``StudyContext`` on a running lab: an AsyncCtrl on its controller and
    a native worker per VP; everything closed on exit."""
    from marionet.client.actrl import AsyncCtrl
    from marionet.evaluate.nativeworker import NativeWorker

    cert, key, ca = lab.client_tls()
    ctrl = AsyncCtrl(lab.controller_address(), cert=cert, key=key, ca=ca, vps=list(vps), errors="collect")
    workers: dict[str, NativeWorker] = {}
    conn = None
    try:
        await ctrl.start()
        conn = await lab.aconnect()
        for vp in vps:
            workers[vp] = await NativeWorker(lab.netns(vp)).start()
        yield StudyContext(lab=lab, ctrl=ctrl, conn=conn, workers=workers, server=server,
                           server_addr=lab.addr(server, 4), truth=lab.truth())
    finally:
        for w in workers.values():
            await w.close()
        if conn is not None:
            await conn.close()
        await ctrl.close(raise_errors=False)
