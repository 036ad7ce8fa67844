"""The study runner: sources alternate back to back, the order rotates per
run, a failing run is counted (and shown) without stopping the study, and
latency experiments run VPs together while loading ones take them in turn."""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

import pytest

from marionet.evaluate.experiments import Experiment
from marionet.evaluate.report import ExperimentSpec
from marionet.evaluate.samples import Sample
from marionet.evaluate.study import Study


class Recorder(Experiment):
    """Answers a sample per run and remembers who ran when."""

    sources = ("ref", "a", "b")
    reference = "ref"

    def __init__(self, name: str, parallel: bool, fail: str | None = None, delay: float = 0.0) -> None:
        self.name = name
        self.parallel = parallel
        self.fail = fail
        self.delay = delay
        self.calls: list[tuple[str, str, int]] = []
        self.active = 0
        self.max_active = 0
        self.setups = self.teardowns = 0

    def specs(self, ctx: Any, vps: Sequence[str]) -> list[Any]:
        return [ExperimentSpec(self.name, self.name, "x_ms", self.reference)]

    async def setup(self, ctx: Any, vps: Sequence[str]) -> None:
        self.setups += 1

    async def teardown(self, ctx: Any) -> None:
        self.teardowns += 1

    async def run(self, ctx: Any, vp: str, source: str, run: int) -> list[Sample]:
        self.calls.append((vp, source, run))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.delay)
            if source == self.fail:
                raise RuntimeError("tool exploded")
            return [Sample(self.name, vp, source, run, "x_ms", float(run))]
        finally:
            self.active -= 1


async def test_sources_alternate_and_rotate_per_run() -> None:
    e = Recorder("lat", parallel=True)
    res = await Study(None, [e], ["v1"], {"lat": 3}).run()
    order = [s for _, s, _ in e.calls]
    assert order == ["ref", "a", "b", "a", "b", "ref", "b", "ref", "a"]
    assert len(res.samples) == 9 and res.failures == {}
    assert [sp.name for sp in res.specs] == ["lat"]
    assert e.setups == e.teardowns == 1


async def test_a_failing_source_is_counted_and_the_study_goes_on() -> None:
    seen: list[tuple[str, int, int]] = []
    e = Recorder("lat", parallel=True, fail="b")
    res = await Study(None, [e], ["v1", "v2"], {"lat": 4}, lambda l, d, t: seen.append((l, d, t))).run()
    assert res.failures == {"lat/b": 8}
    assert {s.source for s in res.samples} == {"ref", "a"} and len(res.samples) == 16
    failed = [l for l, d, _ in seen if d == -1]
    assert 1 <= len(failed) <= 3 and all("tool exploded" in l for l in failed)   # shown, not flooded
    steps = [d for _, d, t in seen if d >= 0]
    assert steps == list(range(1, 25)) and all(t == 24 for _, d, t in seen if d >= 0)


async def test_loading_experiments_take_one_vp_at_a_time() -> None:
    lat = Recorder("lat", parallel=True, delay=0.02)
    load = Recorder("load", parallel=False, delay=0.02)
    await Study(None, [lat, load], ["v1", "v2", "v3"], {"lat": 1, "load": 1}).run()
    assert lat.max_active == 3
    assert load.max_active == 1
    assert [vp for vp, _, _ in load.calls] == ["v1"] * 3 + ["v2"] * 3 + ["v3"] * 3


def test_bad_studies_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one VP"):
        Study(None, [Recorder("lat", True)], [], {"lat": 1})
    with pytest.raises(ValueError, match="runs must be at least 1"):
        Study(None, [Recorder("lat", True)], ["v1"], {"lat": 0})
