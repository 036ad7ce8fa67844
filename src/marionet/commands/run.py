"""Run one subcommand's measurements in the placement asked for.

A subcommand is reduced to a list of *jobs* (the keyword arguments of one
``do_<name>`` call each, one per TARGET) and a predicate saying whether a
result counts as success. This module runs the jobs from every selected VP
(endpoint or remote placement, through ``marionet.Ctrl``) or in this
process (native placement, ``marionet.measure`` over a private endpoint),
prints each result as it arrives, and turns what happened into the exit
status: 0 all ok, 1 some measurement failed, 2 bad arguments.

Why parameters are checked before anything starts: a typo must cost no
embedded controller, no VP and no probe, and must read as one line naming
the parameter (the primitive's own check, ``check_task_params``).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from .common import CliError, ctrl_kwargs, select_insts
from .output import Output

__all__ = ["Job", "run_jobs"]


@dataclass
class Job:
    """One ``do_<primitive>(**params)`` call, made from every selected VP."""
    primitive: str
    params: dict[str, Any]


def _check(jobs: list[Job], placement: str) -> None:
    from marionet.client.actrl import check_task_params, params_of

    for job in jobs:
        problem = check_task_params(job.primitive, params_of(**job.params), placement)
        if problem is not None:
            raise CliError(problem)


def run_jobs(args: argparse.Namespace, jobs: list[Job], ok: Callable[[Any], bool]) -> int:
    """Run ``jobs`` as ``args`` say (selection, placement, output); the exit status."""
    if not jobs:
        raise CliError("nothing to measure")
    native = args.placement == "native"
    # native runs here, as remote does: the primitive must be known, with no per-task bound
    _check(jobs, "remote" if native else args.placement or "endpoint")
    if native and (args.vp or args.all or args.tag or args.controller):
        raise CliError("--placement native runs in this process, without a VP: "
                       "drop --vp/--all/--tag/--controller")
    if native:
        return _run_native(args, jobs, ok)
    return _run_ctrl(args, jobs, ok)


# ------------------------------------------------------------ via a Ctrl
#: Tasks outstanding per VP: an endpoint runs a bounded number at once per
#: session (64 by default), so a run over many targets is fed as results
#: come back instead of all at once.
WINDOW = 32


class _Feeder:
    """Issue each VP's jobs, at most ``WINDOW`` outstanding per VP."""

    def __init__(self, ctrl: Any, insts: list[Any], jobs: list[Job], placement: str | None, out: Output) -> None:
        self.ctrl = ctrl
        self.insts = {i.name: i for i in insts}
        self.pending = {i.name: list(reversed(jobs)) for i in insts}
        self.outstanding = dict.fromkeys(self.insts, 0)
        self.placement = {} if placement is None else {"placement": placement}
        self.out = out
        self.failed = self.bad = False

    def fill(self, name: str) -> None:
        from marionet.client.actrl import BadParams
        from marionet.client.inst import InstError

        inst, queue = self.insts[name], self.pending[name]
        while queue and self.outstanding[name] < WINDOW:
            job = queue.pop()
            do = getattr(self.ctrl, f"do_{job.primitive}", None)
            if do is None:
                raise CliError(f"this marionet has no do_{job.primitive} (primitive not installed)")
            try:
                do(**job.params, inst=inst, **self.placement)
            except BadParams as exc:  # the VP's check refused what ours let through
                self.failure(f"error: {exc}", bad=True)
                continue
            except InstError as exc:
                self.failure(str(exc))
                continue
            except TypeError as exc:  # this marionet's do_* lacks a parameter the option sets
                raise CliError(f"do_{job.primitive}: {exc}") from None
            except ValueError as exc:
                raise CliError(str(exc)) from None
            self.outstanding[name] += 1

    def done(self, name: str | None) -> None:
        if name in self.outstanding:
            self.outstanding[name] = max(self.outstanding[name] - 1, 0)
            self.fill(name)

    def lost(self, name: str) -> None:
        """The VP went away: what it had not finished counts as failed."""
        for _ in range(self.outstanding.get(name, 0) + len(self.pending.get(name, []))):
            self.out.advance()
        self.outstanding[name] = 0
        self.pending[name] = []

    def failure(self, message: str, bad: bool = False) -> None:
        self.out.error(message)
        self.out.advance()
        self.bad |= bad
        self.failed = True

    def idle(self) -> bool:
        return not any(self.outstanding.values()) and not any(self.pending.values())


def _run_ctrl(args: argparse.Namespace, jobs: list[Job], ok: Callable[[Any], bool]) -> int:
    from marionet import Ctrl
    from marionet.client.inst import InstError

    kw = ctrl_kwargs(args)
    try:
        ctrl = Ctrl(**kw)
    except (OSError, ValueError, InstError, ExceptionGroup) as exc:
        raise CliError(f"cannot reach the controller: {exc}") from None
    try:
        insts = select_insts(ctrl, args)
        with Output(args.prog, as_json=args.json, path=args.output, total=len(jobs) * len(insts)) as out:
            feed = _Feeder(ctrl, insts, jobs, args.placement, out)
            for name in feed.insts:
                feed.fill(name)
            while not feed.idle():
                try:
                    r = ctrl.poll()
                except InstError as exc:
                    name = getattr(exc.inst, "name", None)
                    feed.failure(str(exc), bad=isinstance(exc, ValueError))
                    if exc.task is None and name is not None:
                        feed.lost(name)
                    else:
                        feed.done(name)
                    continue
                if r is None:  # nothing outstanding at the Ctrl: what is left cannot run
                    for name in feed.insts:
                        feed.lost(name)
                    break
                out.result(r)
                feed.failed |= not ok(r)
                feed.done(getattr(getattr(r, "inst", None), "name", None) or getattr(r, "vp", None))
    finally:
        ctrl.close(raise_errors=False)
    return 2 if feed.bad else 1 if feed.failed or out.file_failed else 0


# -------------------------------------------------------- native placement
_CONCURRENCY = 8


def _run_native(args: argparse.Namespace, jobs: list[Job], ok: Callable[[Any], bool]) -> int:
    """``marionet.measure.<name>`` over a private in-process endpoint: no
    controller, no VP — the measurement runs where this command runs."""
    from marionet.client.actrl import params_of
    from marionet.endpoint.local import native_session
    from marionet.measure.registry import run_primitive

    failed = False

    async def main(out: Output) -> None:
        nonlocal failed
        sem = asyncio.Semaphore(_CONCURRENCY)

        async def one(job: Job) -> Any:
            async with sem:
                return await run_primitive(io, job.primitive, params_of(**job.params), max_s=None)

        async with native_session() as io:
            for fut in asyncio.as_completed([one(j) for j in jobs]):
                try:
                    r = await fut
                except (ValueError, TypeError) as exc:
                    raise CliError(str(exc)) from None
                except (OSError, RuntimeError) as exc:
                    out.error(f"native: {exc}")
                    out.advance()
                    failed = True
                    continue
                out.result(r)
                failed |= not ok(r)

    with Output(args.prog, as_json=args.json, path=args.output, total=len(jobs)) as out:
        asyncio.run(main(out))
    return 1 if failed or out.file_failed else 0
