"""The primitives an endpoint runs by name, and their parameter checks.

Why a registry: a ``Task`` request names a primitive and carries its
parameters as a plain dict off the wire. Before anything runs, the name
must be known and every parameter must be one the primitive declares —
a typo such as ``attempt=3`` is an error, never silently ignored — and
every value must be in its range, and the whole task within what one task
may cost an endpoint (``MAX_TASK_S``). A new primitive adds one line to
``PRIMITIVES`` and ``VALIDATORS``; its plan's ``check_task`` states its
worst case.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Awaitable, Callable

from marionet.client.packet import PacketSession
from marionet.measure.dealias import (ally, mercator, midardisc, midarest, plan_ally, plan_mercator,
                                      plan_midardisc, plan_midarest, plan_prefixscan, plan_radargun,
                                      prefixscan, radargun)
from marionet.measure.dns import dns, plan_dns
from marionet.measure.http import http, plan_http
from marionet.measure.params import MAX_TASK_S, shown
from marionet.measure.ping import ping, plan_ping
from marionet.measure.tbit import plan_tbit, tbit
from marionet.measure.trace import plan_trace, trace
from marionet.measure.udpprobe import plan_udpprobe, udpprobe
from marionet.measure.sniff import plan_sniff, sniff
from marionet.measure.tracelb import plan_tracelb, tracelb
from marionet.measure.throughput import plan_throughput, throughput

__all__ = ["PRIMITIVES", "VALIDATORS", "run_primitive", "check_params", "UnknownPrimitive"]

Primitive = Callable[..., Awaitable[Any]]

#: name -> coroutine function ``f(io, *args, **params)``
PRIMITIVES: dict[str, Primitive] = {
    "ping": ping,
    "dns": dns,
    "trace": trace,
    "http": http,
    "udpprobe": udpprobe,
    "sniff": sniff,
    "tracelb": tracelb,
    "tbit": tbit,
    "throughput": throughput,
    "ally": ally,
    "mercator": mercator,
    "radargun": radargun,
    "prefixscan": prefixscan,
    "midarest": midarest,
    "midardisc": midardisc,
}

#: name -> a function taking the same parameters that raises ``ValueError``
#: for bad values without doing any I/O, so a bad task is refused at once.
VALIDATORS: dict[str, Callable[..., Any]] = {
    "ping": plan_ping,
    "dns": plan_dns,
    "trace": plan_trace,
    "http": plan_http,
    "udpprobe": plan_udpprobe,
    "sniff": plan_sniff,
    "tracelb": plan_tracelb,
    "tbit": plan_tbit,
    "throughput": plan_throughput,
    "ally": plan_ally,
    "mercator": plan_mercator,
    "radargun": plan_radargun,
    "prefixscan": plan_prefixscan,
    "midarest": plan_midarest,
    "midardisc": plan_midardisc,
}

# Keyword arguments the runner supplies itself; never accepted from a Task.
_RESERVED = frozenset({"io", "halt"})


class UnknownPrimitive(ValueError):
    """A task named a primitive this endpoint does not run."""


def _signature(name: str) -> tuple[Primitive, inspect.Signature]:
    fn = PRIMITIVES.get(name) if isinstance(name, str) else None
    if fn is None:
        known = ", ".join(sorted(PRIMITIVES))
        raise UnknownPrimitive(f"unknown primitive {shown(name)} (this endpoint runs: {known})")
    return fn, inspect.signature(fn)


def check_params(name: str, params: dict[str, Any], max_s: float | None = MAX_TASK_S) -> None:
    """Raise ``ValueError`` if ``params`` does not fit primitive ``name``:
    unknown or reserved parameter names, a missing required one, a value out
    of its range, or (unless ``max_s`` is None) more work than one task may
    do: a worst case longer than ``max_s`` seconds (``check_task`` of the
    primitive's plan).

    The same check runs in the API before a task is sent and on the
    endpoint when it arrives, so both say the same thing."""
    _, sig = _signature(name)
    if not isinstance(params, dict):
        raise ValueError(f"{name} parameters must be a mapping, got {type(params).__name__}")
    accepted = {p.name for p in list(sig.parameters.values())[1:]
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - _RESERVED
    bad = [k for k in params if not isinstance(k, str) or k not in accepted]
    if bad:
        raise ValueError(f"unknown {name} parameter(s): {', '.join(str(k)[:40] for k in bad[:10])} "
                         f"(accepted: {', '.join(sorted(accepted))})")
    missing = [p.name for p in list(sig.parameters.values())[1:]
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in params and p.name not in _RESERVED]
    if missing:
        raise ValueError(f"{name} needs parameter(s): {', '.join(missing)}")
    validate = VALIDATORS.get(name)
    if validate is None:
        return
    try:
        plan = validate(**params)
    except (ValueError, TypeError):
        raise
    except Exception as exc:  # noqa: BLE001 - values off the wire must never get past as a crash
        raise ValueError(f"{name} parameters not usable: {type(exc).__name__}: {exc}") from None
    check_task = getattr(plan, "check_task", None)
    if max_s is not None and check_task is not None:
        check_task(max_s)


async def run_primitive(io: PacketSession, name: str, params: dict[str, Any], *,
                        halt: asyncio.Event | None = None, max_s: float | None = MAX_TASK_S) -> Any:
    """Run primitive ``name`` with ``params`` over ``io``; returns its result
    object. ``halt``, if the primitive supports it, stops it early with a
    partial result. ``max_s``: the per-task bound, as in ``check_params``."""
    check_params(name, params, max_s)
    fn, sig = _signature(name)
    kwargs = dict(params)
    if halt is not None and "halt" in sig.parameters:
        kwargs["halt"] = halt
    return await fn(io, **kwargs)
