"""Running primitives on the endpoint (the scamper model, "endpoint" placement).

A ``Task(primitive, params)`` request starts a measurement from
``marionet.measure`` next to the sockets; its result comes back as one
``TaskResult`` notification, in scamper's JSON schema.

Why the primitive talks to the endpoint through an in-process
``PacketSession`` opened *as the requesting principal*: the measurement
code is the very code a remote client would run, and every packet it sends
passes the same guard call site with the same identity. A primitive can do
nothing its requester could not do over the wire.

Halting: ``Halt`` cancels the task registered in ``session.tasks``. The
runner turns that cancellation into a cooperative halt (an
``asyncio.Event`` the primitive watches), so a halted ping still reports
what it measured, with stop reason "halted".

Bounded work: a client may bypass the library and send any ``Task``, so
the parameters are checked here by the same code the API runs
(``check_params``): every value in its range, and a worst case of at most
``max_task_s`` (``MAX_TASK_S``, 600 s) per task — otherwise an ``Error``
"bad-params" naming the parameter. What the parameters cannot bound (a trace
through slowly answering routers) the run-time cap does: a task still
running ``max_task_s + TASK_GRACE_S`` after it started is halted, and its
partial result says why in ``extra["task_limit"]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from marionet.endpoint.addresses import BadRequest
from marionet.wire import messages as m

if TYPE_CHECKING:
    from marionet.endpoint.daemon import Endpoint
    from marionet.endpoint.session import Session

log = logging.getLogger("marionet.endpoint")

DEFAULT_MAX_TASKS = 64
HALT_GRACE_S = 5.0  # how long a halted primitive may take to hand back its partial result


def result_dict(result: Any) -> dict[str, Any]:
    """A result object as a plain JSON dict (what ``File`` writes), safe for
    msgpack: ``to_json`` keeps scamper's number formatting in float
    subclasses, which a round trip through text turns into plain values."""
    from marionet.results import dumps

    return json.loads(dumps(result))


class PrimitiveRunner:
    """Starts, tracks, halts and reports primitive tasks for an endpoint.

    ``max_tasks`` bounds the tasks running at once in one session (default
    from ``EndpointConfig.max_tasks`` if present); a task beyond it is
    refused with an ``Error`` reply (code "limit"). ``max_task_s`` bounds
    one task's planned worst case (default ``EndpointConfig.max_task_s`` if
    present, else ``MAX_TASK_S``); ``max_run_s`` is the run-time cap (None:
    ``max_task_s + TASK_GRACE_S``).
    """

    def __init__(self, endpoint: "Endpoint", max_tasks: int | None = None,
                 max_task_s: float | None = None) -> None:
        from marionet.measure.params import MAX_TASK_S

        self.endpoint = endpoint
        self.max_tasks = max_tasks if max_tasks is not None else \
            int(getattr(endpoint.config, "max_tasks", DEFAULT_MAX_TASKS))
        self.max_task_s = float(max_task_s if max_task_s is not None else
                                getattr(endpoint.config, "max_task_s", MAX_TASK_S))
        self.max_run_s: float | None = None
        self._next_id: weakref.WeakKeyDictionary[Session, int] = weakref.WeakKeyDictionary()

    def run_cap_s(self) -> float:
        """How long a task may run before the endpoint halts it."""
        from marionet.measure.params import TASK_GRACE_S

        return self.max_run_s if self.max_run_s is not None else self.max_task_s + TASK_GRACE_S

    def start(self, session: "Session", msg: m.Task) -> None:
        """Handle a ``Task`` request (the guard has already allowed it).

        Bad names or parameters raise ``BadRequest``, which the session turns
        into an ``Error`` reply; otherwise the reply is ``Ok(value=task_id)``.
        """
        from marionet.measure.registry import UnknownPrimitive, check_params

        try:
            check_params(msg.primitive, msg.params, self.max_task_s)
        except UnknownPrimitive as exc:
            raise BadRequest("unknown-primitive", str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise BadRequest("bad-params", str(exc)) from None
        if len(session.tasks) >= self.max_tasks:
            raise BadRequest("limit", f"at most {self.max_tasks} tasks may run at once in a session")
        task_id = self._next_id.get(session, 1)
        self._next_id[session] = task_id + 1
        session.reply(m.Ok(id=msg.id, value=task_id))
        task = session.loop.create_task(self._run(session, task_id, msg.primitive, dict(msg.params)),
                                        name=f"marionet-task-{task_id}-{msg.primitive}")
        session.tasks[task_id] = task

    async def _run(self, session: "Session", task_id: int, name: str, params: dict[str, Any]) -> None:
        from marionet.endpoint.local import local_session
        from marionet.measure.registry import run_primitive

        halt = asyncio.Event()
        io = None
        result: dict[str, Any] | None = None
        error: str | None = None
        cap = self.run_cap_s()
        try:
            io = await local_session(self.endpoint, session.principal.for_primitive(name),
                                     sguard=session.sguard.for_primitive(name))
            inner = asyncio.ensure_future(run_primitive(io, name, params, halt=halt, max_s=self.max_task_s))
            try:
                # asyncio.wait, not wait_for: reaching the cap must halt the
                # primitive (keeping its partial result), not cancel it.
                done, _ = await asyncio.wait({inner}, timeout=cap)
                over = not done
                if over:
                    halt.set()
                    done, _ = await asyncio.wait({inner}, timeout=HALT_GRACE_S)
                if done:
                    obj = inner.result()
                    if over and obj is not None and isinstance(getattr(obj, "extra", None), dict):
                        obj.extra["task_limit"] = (f"halted by the endpoint after {cap:g} s: one task may "
                                                   f"run at most {self.max_task_s:g} s")
                else:
                    inner.cancel()
                    error = f"time-limit: still running {cap:g} s after it started, and did not stop when halted"
                    obj = None
            except asyncio.CancelledError:
                # Halt (or the session closing): ask for the partial result.
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                halt.set()
                done, _ = await asyncio.wait({inner}, timeout=HALT_GRACE_S)
                if not done:
                    inner.cancel()
                    error = "halted"
                    obj = None
                else:
                    obj = inner.result()
            if obj is not None:
                result = result_dict(obj)
        except asyncio.CancelledError:
            error = "halted"
        except Exception as exc:  # noqa: BLE001 - every failure becomes the task's error
            from marionet.client.errors import MarionetError

            known = isinstance(exc, (ValueError, MarionetError))  # their text already says what failed
            error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            if not known:
                log.debug("task %s (%s) failed", task_id, name, exc_info=True)
        finally:
            if io is not None:
                await io.close()
            session.tasks.pop(task_id, None)
            if not session.closed:
                session.notify(m.TaskResult(task=task_id, time_ns=time.time_ns(), result=result,
                                            error=error))
