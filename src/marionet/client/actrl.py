"""``AsyncCtrl``: the primitive model (scamper's environment) on asyncio.

Issue measurements (``do_ping`` …) to attached VPs ("instances") and read
their results as they arrive. This is the engine; ``marionet.Ctrl`` is a
thin synchronous wrapper that drives it on a background loop.

How errors surface (the scamper module's pain point was that
``responses()`` silently skipped them unless ``exceptions()`` was drained):

* ``errors="raise"`` (the default): ``responses()`` and ``poll()`` raise
  ``InstError`` at the point in the stream where the failure happened (a VP
  died, the endpoint refused a task, a primitive failed). Results that
  arrived before it were already yielded; results after it stay queued —
  call ``responses()`` again to continue.
* ``errors="collect"``: ``responses()``/``poll()`` skip errors and keep
  them; ``exceptions()`` returns (and forgets) them.
* Either way, errors nobody retrieved are raised when the controller
  closes (``__aexit__``/``close()``) as an ``ExceptionGroup`` of the
  ``InstError`` s (or warned, if another exception is already on its way).
* ``do_*(…, sync=True)`` and ``do_*`` for a single instance raise at the
  call. For a list of instances, a per-instance refusal is returned as a
  finished task with ``task.error`` set and is also queued as above.

``morecb(ctrl, inst, param)`` runs (inside ``poll``/``responses``) when an
instance can take more work: when it is attached and has fewer than
``window`` tasks outstanding — at attach, after each task is issued while
still below the window, and after each task finishes. ``eofcb(ctrl, inst,
param)`` runs when an instance is finished: ``done()`` was called and its
last task ended, or its VP went away.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import ipaddress
import logging
import operator
import time
import warnings
from collections import deque
from typing import Any, AsyncIterator, Callable, Iterable

from marionet.client.controller import ControllerConnection, connect_controller
from marionet.client.errors import ConnectionLost, MarionetError
from marionet.client.inst import InstError, Inst, Task, VpInfo, matches
from marionet.wire import messages as m

log = logging.getLogger("marionet.ctrl")

Callback = Callable[[Any, Inst, Any], Any]

DEFAULT_WINDOW = 8
HALT_GRACE_S = 2.0


class BadParams(InstError, ValueError):
    """A ``do_*`` call's parameters fail the primitive's checks, found here
    before anything was sent (the endpoint would refuse them with
    "bad-params"). Both an ``InstError`` (like any refusal, so code that
    handles refusals handles this) and a ``ValueError`` (it is a bad value)."""


PLACEMENTS = ("endpoint", "remote")


def check_task_params(primitive: str, params: dict[str, Any], placement: str = "endpoint") -> str | None:
    """Why the endpoint would refuse ``params`` for ``primitive``, or None.

    The endpoint's own check (``marionet.measure.registry.check_params``,
    with the default per-task bound), run before sending so a mistake costs
    no round trip and no VP sees it. A primitive this library does not know
    is left to the endpoint, which may run more than we do — unless it is
    to run here (``placement="remote"``), where it must be known. Remote
    runs are not held to the endpoint's per-task bound: they cost the VP
    only the packets, which its guard governs.
    """
    from marionet.measure.params import MAX_TASK_S
    from marionet.measure.registry import PRIMITIVES, check_params

    if primitive not in PRIMITIVES and placement == "endpoint":
        return None
    try:
        check_params(primitive, params, None if placement == "remote" else MAX_TASK_S)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _check_placement(placement: Any) -> str:
    if placement == "native":
        raise ValueError("placement 'native' runs without a VP: call marionet.measure.<primitive>(session, …) "
                         "over marionet.endpoint.local.native_session() (or `marionet <primitive> --placement "
                         "native`)")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    return placement


def _seconds(v: Any) -> Any:
    """Parameter values on the wire: seconds as floats, addresses as text."""
    if isinstance(v, _dt.timedelta):
        return v.total_seconds()
    if isinstance(v, _dt.datetime):
        return v.timestamp()
    if isinstance(v, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(v)
    if type(v).__name__ == "Addr":
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_seconds(x) for x in v]
    return v


def params_of(**kw: Any) -> dict[str, Any]:
    """Drop unset (None) parameters; convert the rest to wire values."""
    return {k: _seconds(v) for k, v in kw.items() if v is not None}


def deadline_of(timeout: float | _dt.timedelta | None, until: _dt.datetime | float | None) -> float | None:
    """A ``time.monotonic()`` deadline from scamper-style ``timeout``/``until``."""
    now = time.monotonic()
    d: float | None = None
    if timeout is not None:
        secs = timeout.total_seconds() if isinstance(timeout, _dt.timedelta) else float(timeout)
        d = now + secs
    if until is not None:
        ts = until.timestamp() if isinstance(until, _dt.datetime) else float(until)
        u = now + (ts - time.time())
        d = u if d is None else min(d, u)
    return d


def local_vp_specs(n: int) -> list[tuple[str, dict[str, Any]]]:
    """Metadata for ``n`` embedded local VPs (distinct names and cc's)."""
    if n == 1:
        return [("local", {"cc": "ZZ", "place": "this machine", "tags": {"kind": "local"}})]
    ccs = ["NZ", "US", "DE", "JP", "BR", "ZA", "AU", "IN", "GB", "CA"]
    return [(f"local{i + 1}", {"cc": ccs[i % len(ccs)], "place": "this machine",
                               "asn4": 64512 + i, "tags": {"kind": "local", "n": str(i + 1)}})
            for i in range(n)]


class AsyncCtrl:
    """Drive measurements on many VPs through a controller (asyncio).

    ``controller``: ``"HOST:PORT"`` (TLS; ``ca``/``cert``/``key``, or
    ``insecure=True`` on loopback) or ``"unix:PATH"``; None starts an
    embedded controller with local endpoints in this process
    (``local_vps``: how many, or a list of ``(name, meta)``; default one).
    ``embedded``: an already running ``marionet.controller.embedded.Embedded``.
    ``vps``: which VPs to attach at start — None for every live VP, or a
    list of names / ``VpInfo`` s (``[]`` for none; see ``add_vps``).
    ``outfile``: a ``marionet.File`` every result is written to.
    ``window``: tasks outstanding per instance before ``morecb`` waits.
    ``errors``: "raise" or "collect" (see the module docstring).
    ``reconnect``: reconnect to the controller and re-attach instances
    whose VPs come back.
    """

    def __init__(self, controller: str | None = None, *, cert: Any = None, key: Any = None, ca: Any = None,
                 insecure: bool = False, outfile: Any = None, morecb: Callback | None = None,
                 eofcb: Callback | None = None, param: Any = None,
                 vps: Iterable[Any] | None = None, local_vps: int | list[tuple[str, dict[str, Any]]] | None = None,
                 embedded: Any = None, window: int = DEFAULT_WINDOW, errors: str = "raise",
                 reconnect: bool = True, attach_timeout: float = 10.0, connect_timeout: float = 10.0) -> None:
        if errors not in ("raise", "collect"):
            raise ValueError("errors must be 'raise' or 'collect'")
        if window < 1:
            raise ValueError("window must be at least 1")
        self.controller = controller
        self._tls = {"cert": cert, "key": key, "ca": ca, "insecure": insecure}
        self.outfile = outfile
        self.outfile_errors = 0  # results the outfile could not take (each also in exceptions())
        self.morecb = morecb
        self.eofcb = eofcb
        self.param = param
        self._want_vps = vps
        self._local_vps = local_vps
        self.embedded = embedded
        self._own_embedded = False
        self.window = window
        self.errors = errors
        self.reconnect = reconnect
        self.attach_timeout = attach_timeout
        self.connect_timeout = connect_timeout
        self._conn: ControllerConnection | None = None
        self._insts: dict[str, Inst] = {}
        self._events: deque[tuple[str, Any]] = deque()
        self._errors: list[InstError] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._started = False
        self._bg: set[asyncio.Task] = set()
        self._lt: Any = None  # the LoopThread when driven by the sync Ctrl
        self._owner: Any = self  # what callbacks receive as ``ctrl``

    # ================================================================ life
    async def start(self) -> "AsyncCtrl":
        if self._started:
            return self
        self._started = True
        if self.controller is None:
            if self.embedded is None:
                from marionet.controller.embedded import start_embedded

                lv = self._local_vps if self._local_vps is not None else 1
                specs = local_vp_specs(lv) if isinstance(lv, int) else list(lv)
                self.embedded = await start_embedded(specs)
                self._own_embedded = True
            self.controller = self.embedded.client_address
            self._tls = {"cert": None, "key": None, "ca": None, "insecure": True}
        try:
            self._conn = await self._connect()
            self._spawn(self._watch_conn(self._conn))
            if self._want_vps is None:
                await self.add_vps(await self.vps())
            else:
                await self.add_vps(list(self._want_vps))
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def _connect(self) -> ControllerConnection:
        conn = await connect_controller(self.controller, timeout=self.connect_timeout, **self._tls)
        conn.on_vp_event = self._on_vp_event
        return conn

    async def __aenter__(self) -> "AsyncCtrl":
        return await self.start()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(raise_errors=exc_type is None)

    async def close(self, raise_errors: bool = True) -> None:
        """Detach every instance (the endpoints halt their tasks), stop an
        owned embedded controller, flush ``outfile``; then raise (or, with
        ``raise_errors=False``, warn about) errors nobody retrieved."""
        if self._closed:
            return
        unretrieved = self._take_errors()
        await self._shutdown()
        if unretrieved:
            msg = f"{len(unretrieved)} measurement error(s) were never retrieved"
            if raise_errors:
                raise ExceptionGroup(msg, unretrieved)
            warnings.warn(f"{msg}: " + "; ".join(str(e) for e in unretrieved), RuntimeWarning, stacklevel=2)

    async def _shutdown(self) -> None:
        self._closing = True
        self._closed = True
        for inst in self._insts.values():
            if inst.session is not None:
                await inst.session.close()
        if self._conn is not None:
            await self._conn.close()
        for t in list(self._bg):
            t.cancel()
        for inst in self._insts.values():
            if inst._pump is not None:
                inst._pump.cancel()
        await asyncio.gather(*self._bg, *(i._pump for i in self._insts.values() if i._pump),
                             return_exceptions=True)
        if self.outfile is not None:
            try:
                self.outfile.flush()
            except (OSError, ValueError):
                pass
        if self._own_embedded and self.embedded is not None:
            await self.embedded.close()

    def _spawn(self, coro: Any) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)
        return t

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Apply a state change on the owning loop (from a sync callback's
        thread too), and wait for it so later calls see it."""
        if self._lt is None or self._lt.in_loop_thread():
            return fn(*args)

        async def apply() -> Any:
            return fn(*args)

        return self._lt.run(apply())

    # ============================================================ registry
    @property
    def instc(self) -> int:
        return sum(1 for i in list(self._insts.values()) if not i._removed)

    @property
    def taskc(self) -> int:
        return sum(i.taskc for i in list(self._insts.values()))

    def instances(self, *, name: str | None = None, tags: dict[str, str] | None = None,
                  tag: str | None = None, cc: Any = None, asn: int | None = None) -> list[Inst]:
        """Attached instances sorted by name, optionally selected (``name`` shell pattern,
        ``tags`` key=value pairs, ``tag`` key present, ``cc``, ``asn``)."""
        return sorted((i for i in list(self._insts.values())
                       if not i._removed and matches(i._meta, name=name, tags=tags, tag=tag, cc=cc, asn=asn)),
                      key=lambda i: i.name)

    def instance(self, name: str) -> Inst:
        inst = self._insts.get(name)
        if inst is None or inst._removed:
            raise KeyError(f"no instance {name!r} (instances: {', '.join(sorted(self._insts)) or 'none'})")
        return inst

    async def vps(self, *, alive_only: bool = True, name: str | None = None,
                  tags: dict[str, str] | None = None, tag: str | None = None, cc: Any = None,
                  asn: int | None = None) -> list[VpInfo]:
        """The controller's registry (live VPs by default), optionally selected."""
        conn = self._need_conn()
        vps = await conn.vps(alive_only=alive_only)
        return [VpInfo(d) for d in vps if matches(d, name=name, tags=tags, tag=tag, cc=cc, asn=asn)]

    def _need_conn(self) -> ControllerConnection:
        if self._conn is None or self._closed:
            raise MarionetError("this Ctrl is not connected (closed, or not started)")
        if self._conn.closed_reason is not None:
            raise ConnectionLost(f"controller connection lost: {self._conn.closed_reason}")
        return self._conn

    async def add_vps(self, vps: Any) -> list[Inst]:
        """Attach VPs (names, ``VpInfo`` s or registry dicts; one or a list)
        as instances. Already attached ones are returned as they are."""
        if isinstance(vps, (str, VpInfo, dict)):
            vps = [vps]
        names = []
        for v in vps:
            if isinstance(v, str):
                names.append(v)
            elif isinstance(v, VpInfo):
                names.append(v.name)
            elif isinstance(v, dict):
                names.append(v["name"])
            elif isinstance(v, Inst):
                names.append(v.name)
            else:
                raise TypeError(f"add_vps: expected VP names, VpInfo or dicts, got {v!r}")
        out = await asyncio.gather(*(self._add_one(n) for n in names), return_exceptions=True)
        errors = [e for e in out if isinstance(e, BaseException)]
        if errors:
            if len(errors) == 1:
                raise errors[0]
            raise ExceptionGroup(f"{len(errors)} VPs could not be attached", errors)  # type: ignore[arg-type]
        return list(out)  # type: ignore[arg-type]

    async def _add_one(self, name: str) -> Inst:
        inst = self._insts.get(name)
        if inst is not None and not inst._removed:
            return inst
        inst = Inst(self, {"name": name})
        try:
            await self._attach(inst)
        except (MarionetError, asyncio.TimeoutError) as exc:
            raise InstError(f"cannot attach VP {name!r}: {exc}", inst) from None
        self._insts[name] = inst
        return inst

    async def remove(self, inst: Inst | str) -> None:
        """Detach an instance; the endpoint halts its tasks (they finish
        without an error, as if halted)."""
        if isinstance(inst, str):
            inst = self.instance(inst)
        inst._removed = True
        for t in list(inst._tasks.values()):
            t.halted = True
        if inst.session is not None:
            await inst.session.close()
        if inst._pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(inst._pump), 2)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                inst._pump.cancel()
        self._insts.pop(inst.name, None)

    # ============================================================ attaching
    async def _attach(self, inst: Inst) -> None:
        conn = self._need_conn()
        session = await conn.attach(inst.name, timeout=self.attach_timeout)
        info = getattr(session, "vp_info", None)
        if isinstance(info, dict):
            inst._meta.update(info)
        inst.session = session
        inst.detach_reason = None
        inst._attached.set()
        if inst._eof and not inst._done:
            inst._eof = False  # back from the dead: usable again
        inst._pump = asyncio.get_running_loop().create_task(self._pump(inst, session))
        self._maybe_more(inst)

    async def _pump(self, inst: Inst, session: Any) -> None:
        """Read one instance's notifications: task results, drops."""
        async for n in session.notifications():
            if isinstance(n, m.TaskResult):
                task = inst._tasks.get(n.task)
                if task is None:
                    inst._early[n.task] = n
                else:
                    self._finish(task, n)
            elif isinstance(n, m.NDrop):
                self._push_error(InstError(
                    f"{inst.name}: {n.count} notification(s) were dropped on the way ({dict(n.kinds)}); "
                    "task results may be missing", inst))
        exc = getattr(session, "_closed_exc", None)
        if inst.session is session:
            self._detached(inst, str(exc) if exc is not None else "session ended")

    def _detached(self, inst: Inst, reason: str) -> None:
        inst.session = None
        inst._attached.clear()
        inst.detach_reason = reason
        quiet = self._closing or inst._removed
        for task in list(inst._tasks.values()):
            if task.halted or quiet:
                self._complete(task, None, None)
            else:
                self._complete(task, None, InstError(f"{inst.name}: {task.primitive} {task.params.get('dst', '')}: "
                                                     f"the VP went away ({reason})", inst, task))
        inst._tasks.clear()
        inst._early.clear()
        if quiet:
            return
        if not inst._eof:
            inst._eof = True
            self._push("eof", inst)
        log.info("instance %s detached: %s", inst.name, reason)
        if self.reconnect and not inst._done:
            self._spawn(self._reattach_when_alive(inst))

    async def _reattach_when_alive(self, inst: Inst) -> None:
        """Try now (the VP may only have lost its channel); afterwards the
        ``arrived`` event or a controller reconnect brings it back."""
        await asyncio.sleep(0.05)
        await self._try_reattach(inst)

    async def _try_reattach(self, inst: Inst) -> None:
        if (self._closing or inst._removed or inst._done or inst.attached
                or getattr(inst, "_reattaching", False)):
            return
        conn = self._conn
        if conn is None or conn.closed_reason is not None:
            return
        inst._reattaching = True  # type: ignore[attr-defined]
        try:
            await self._attach(inst)
            log.info("instance %s re-attached", inst.name)
        except (MarionetError, asyncio.TimeoutError) as exc:
            log.debug("re-attach %s failed: %s", inst.name, exc)
        finally:
            inst._reattaching = False  # type: ignore[attr-defined]

    def _on_vp_event(self, ev: m.VpEvent) -> None:
        inst = self._insts.get(ev.vp)
        if inst is None:
            return
        if ev.info:
            inst._meta.update({k: v for k, v in ev.info.items() if k != "name"})
        if ev.event == "arrived" and not inst.attached:
            self._spawn(self._try_reattach(inst))

    async def _watch_conn(self, conn: ControllerConnection) -> None:
        """When the controller connection ends, reconnect with backoff and
        re-attach instances whose VPs are (or become) alive again."""
        if conn._task is not None:
            await asyncio.gather(conn._task, return_exceptions=True)
        if self._closing or not self.reconnect:
            return
        log.warning("controller connection lost (%s); reconnecting", conn.closed_reason)
        delay = 0.1
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                new = await self._connect()
            except (MarionetError, OSError, asyncio.TimeoutError) as exc:
                log.debug("reconnect to %s failed: %s", self.controller, exc)
                delay = min(delay * 2, 1.0)
                continue
            if self._closing:
                await new.close()
                return
            self._conn = new
            self._spawn(self._watch_conn(new))
            try:
                alive = {d["name"] for d in await new.vps()}
            except MarionetError:
                alive = set()
            for inst in list(self._insts.values()):
                if inst.name in alive:
                    self._spawn(self._try_reattach(inst))
            return

    # =============================================================== tasks
    def _resolve(self, inst: Any) -> Inst | list[Inst]:
        if inst is None:
            live = self.instances()
            if len(live) == 1:
                return live[0]
            raise ValueError(f"inst= is required: this controller has {len(live)} instances"
                             + (f" ({', '.join(i.name for i in live[:5])}{' …' if len(live) > 5 else ''})"
                                if live else " (no VP attached)"))
        if isinstance(inst, str):
            return self.instance(inst)
        if isinstance(inst, Inst):
            if inst._ctrl is not self:
                raise ValueError(f"instance {inst.name} belongs to another Ctrl")
            return inst
        if isinstance(inst, (list, tuple, set)):
            return [self._resolve(i) for i in inst]  # type: ignore[misc]
        raise TypeError(f"inst must be an Inst, a VP name or a list of them, got {inst!r}")

    async def _do(self, primitive: str, params: dict[str, Any], inst: Any = None, sync: bool = False,
                  userid: int | None = None, placement: str = "endpoint") -> Any:
        """Issue ``primitive`` with ``params`` to one instance or each of a list.

        Every ``do_*`` is this one call; a new primitive is a one-line
        method (see ``_primitive``). ``placement``: "endpoint" (the VP runs
        the primitive, scamper's model) or "remote" (the same measurement
        code runs in this process and drives the VP's sockets over the
        packet interface, PacketLab's model); results are alike.
        """
        if self._closed:
            raise MarionetError("this Ctrl is closed")
        placement = _check_placement(placement)
        if userid is not None:
            try:
                userid = operator.index(userid)  # numpy and other integer types
            except TypeError:
                pass  # the check below names it
            params = {**params, "userid": userid}
        target = self._resolve(inst)
        problem = check_task_params(primitive, params, placement)
        if isinstance(target, list):
            tasks = await asyncio.gather(*(self._issue(i, primitive, params, userid, sync, quiet=True,
                                                       problem=problem, placement=placement)
                                           for i in target))
            if not sync:
                return tasks
            results = []
            for t in tasks:
                results.append(await t)
            return results
        task = await self._issue(target, primitive, params, userid, sync, quiet=False, problem=problem,
                                 placement=placement)
        return await task if sync else task

    async def _issue(self, inst: Inst, primitive: str, params: dict[str, Any], userid: int | None,
                     sync: bool, quiet: bool, problem: str | None = None, placement: str = "endpoint") -> Task:
        """Send one task; ``problem`` (from ``check_task_params``) refuses it
        unsent, as the endpoint would, with a ``BadParams``."""
        task = Task(self, inst, primitive, params, userid, sync)
        task.placement = placement
        try:
            if problem is not None:
                what = str(params.get("dst", params.get("qname", "")))[:60]
                raise BadParams(f"{inst.name}: {primitive} {what} refused before sending: bad-params: {problem}",
                                inst, task)
            if inst._removed:
                raise InstError(f"{inst.name} was removed", inst, task)
            if inst._done:
                raise InstError(f"{inst.name}: done() was called; it takes no more tasks", inst, task)
            if not inst.attached:
                try:
                    await asyncio.wait_for(inst._attached.wait(), self.attach_timeout)
                except asyncio.TimeoutError:
                    raise InstError(f"{inst.name} is not attached ({inst.detach_reason or 'VP gone'}) "
                                    f"and did not come back within {self.attach_timeout:g} s", inst, task) from None
            session = inst.session
            assert session is not None
            if placement == "remote":
                inst.taskc += 1
                self._spawn(self._run_remote(task))
                self._maybe_more(inst)
                return task
            inst.taskc += 1
            try:
                tid = await session.task(primitive, params)
            except MarionetError as exc:
                inst.taskc -= 1
                raise InstError(f"{inst.name}: {primitive} {params.get('dst', '')} refused: {exc}",
                                inst, task) from None
        except InstError as err:
            task.error = err
            task._future.set_result(None)
            if quiet and not sync:
                self._push_error(err)
                return task
            raise
        task.id = tid
        inst._tasks[tid] = task
        early = inst._early.pop(tid, None)
        if early is not None:
            self._finish(task, early)
        elif inst.session is not session:  # detached while we awaited the reply
            self._complete(task, None, InstError(f"{inst.name}: the VP went away", inst, task))
            inst._tasks.pop(tid, None)
        else:
            self._maybe_more(inst)
        return task

    async def _run_remote(self, task: Task) -> None:
        """Remote placement: run the primitive here over a packet session of
        its own to the VP (a channel through the controller, under this
        client's identity and the VP's guard), and finish ``task`` with its
        result as if the endpoint had sent it."""
        from marionet.measure.registry import run_primitive

        inst = task.inst
        halt = asyncio.Event()
        task._halt_event = halt
        session = None
        what = f"{inst.name}: {task.primitive} {task.params.get('dst', task.params.get('qname', ''))}"
        try:
            conn = self._need_conn()
            session = await conn.attach(inst.name, timeout=self.attach_timeout)
            if task.halted:
                halt.set()
            obj = await run_primitive(session, task.primitive, dict(task.params), halt=halt, max_s=None)
        except asyncio.CancelledError:
            self._complete(task, None, None)
            raise
        except (MarionetError, asyncio.TimeoutError, OSError, ValueError) as exc:
            err = None if task.halted else InstError(f"{what} (remote): {exc or type(exc).__name__}", inst, task)
            self._complete(task, None, err)
            return
        except Exception as exc:  # noqa: BLE001 - a failing measurement is the task's error, never a crash
            log.debug("remote %s failed", what, exc_info=True)
            self._complete(task, None, InstError(f"{what} (remote): {type(exc).__name__}: {exc}", inst, task))
            return
        finally:
            if session is not None:
                try:
                    await session.close()
                except Exception:  # noqa: BLE001 - the result is what matters here
                    pass
        if obj is not None:
            if hasattr(obj, "vp"):
                obj.vp = inst.name
            if hasattr(obj, "inst"):
                obj.inst = inst
            inst.resultc += 1
        self._complete(task, obj, None)

    def _finish(self, task: Task, n: m.TaskResult) -> None:
        """A task's result notification arrived."""
        inst = task.inst
        if task.id is not None:
            inst._tasks.pop(task.id, None)
        if n.error is not None:
            if task.halted:
                self._complete(task, None, None)
            else:
                self._complete(task, None, InstError(
                    f"{inst.name}: {task.primitive} {task.params.get('dst', '')}: {n.error}", inst, task))
            return
        try:
            from marionet.results import from_json

            obj = from_json(n.result)
        except Exception as exc:  # noqa: BLE001 - a bad result is an error, never a crash
            self._complete(task, None, InstError(
                f"{inst.name}: unreadable {task.primitive} result: {exc}", inst, task))
            return
        if hasattr(obj, "vp"):
            obj.vp = inst.name
        if hasattr(obj, "inst"):
            obj.inst = inst
        inst.resultc += 1
        self._complete(task, obj, None)

    def _complete(self, task: Task, result: Any, error: InstError | None) -> None:
        """Bookkeeping shared by results, errors and halts."""
        inst = task.inst
        if task._future.done():
            return
        if task.id is not None and inst._tasks.get(task.id) is task:
            del inst._tasks[task.id]
        inst.taskc = max(0, inst.taskc - 1)
        task.result = result
        task.error = error
        task._future.set_result(None)
        if result is not None and self.outfile is not None:
            try:
                self.outfile.write(result)
                self.outfile.flush()
            except Exception as exc:  # noqa: BLE001
                # An output-file problem never stops result delivery: the
                # result is still returned; the failure is counted and kept
                # for exceptions() (and close()), not raised in responses().
                self.outfile_errors += 1
                self._errors.append(InstError(f"cannot write the result to "
                                              f"{getattr(self.outfile, 'filename', '?')}: {exc}", inst, task))
        if not task.sync:
            if error is not None:
                self._push_error(error)
            elif result is not None:
                self._push("result", result)
        self._after_task(inst)

    def _after_task(self, inst: Inst) -> None:
        if inst._done and inst.taskc == 0 and not inst._eof:
            inst._eof = True
            self._push("eof", inst)
        else:
            self._maybe_more(inst)

    def _halt_soon(self, task: Task) -> None:
        if task._future.done():
            return
        task.halted = True
        self._spawn(self._halt(task))

    async def _halt(self, task: Task) -> None:
        inst = task.inst
        session = inst.session
        event = getattr(task, "_halt_event", None)
        if event is not None:  # a remote-placement task: halt it here
            event.set()
        elif task.id is not None and session is not None:
            try:
                await session.halt(task.id)
            except MarionetError as exc:
                log.debug("halt %s on %s: %s", task.id, inst.name, exc)
        # A halted primitive normally reports (a partial result or an
        # error); if it does not within the grace period, finish it here so
        # taskc and responses() do not wait for it forever.
        try:
            await asyncio.wait_for(asyncio.shield(task._future), HALT_GRACE_S)
        except asyncio.TimeoutError:
            self._complete(task, None, None)

    def _inst_done(self, inst: Inst) -> None:
        inst._done = True
        if inst.taskc == 0 and not inst._eof:
            inst._eof = True
            self._push("eof", inst)

    def done(self) -> None:
        """No more tasks for any instance."""
        for inst in self.instances():
            self._call(self._inst_done, inst)

    def is_done(self) -> bool:
        """Every instance is finished (EOF) and no event is left to read."""
        return not self._events and all(i._eof for i in self.instances())

    # ============================================================== events
    def _push(self, kind: str, obj: Any) -> None:
        self._events.append((kind, obj))
        self._wake.set()

    def _push_error(self, err: InstError) -> None:
        self._push("error", err)

    def _forget_error(self, err: InstError) -> None:
        """An error the caller got by awaiting its task is retrieved."""
        if err in self._errors:
            self._errors.remove(err)
        try:
            self._events.remove(("error", err))
        except ValueError:
            pass

    def _maybe_more(self, inst: Inst) -> None:
        if (self.morecb is not None and not inst._more_pending and self._can_take_more(inst)):
            inst._more_pending = True
            self._push("more", inst)

    def _can_take_more(self, inst: Inst) -> bool:
        return (not inst._done and not inst._eof and not inst._removed and inst.attached
                and inst.taskc < self.window and not self._closing)

    def _take_errors(self) -> list[InstError]:
        out = list(self._errors)
        self._errors.clear()
        keep: deque[tuple[str, Any]] = deque()
        for kind, obj in self._events:
            if kind == "error":
                out.append(obj)
            else:
                keep.append((kind, obj))
        self._events = keep
        return out

    def exceptions(self) -> list[InstError]:
        """Errors not yet retrieved (collected, or still queued), oldest
        first; retrieving them forgets them."""
        return self._take_errors()

    async def _next_item(self, deadline: float | None, errors: str | None = None) -> tuple[str, Any] | None:
        """The next result or callback event; None when nothing is
        outstanding or the deadline passed. Raises queued errors in
        "raise" mode."""
        mode = errors or self.errors
        while True:
            while self._events:
                kind, obj = self._events.popleft()
                if kind == "error":
                    if mode == "collect":
                        self._errors.append(obj)
                        continue
                    raise obj
                if kind == "more":
                    obj._more_pending = False
                    if self.morecb is None or not self._can_take_more(obj):
                        continue
                elif kind == "eof" and self.eofcb is None:
                    continue
                return kind, obj
            if self.taskc == 0:
                return None
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return None
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.TimeoutError:
                return None

    async def poll(self, timeout: float | _dt.timedelta | None = None, until: _dt.datetime | None = None,
                   errors: str | None = None) -> Any:
        """The next result, or None when nothing is outstanding or the
        deadline passed; runs ``morecb``/``eofcb`` on the way."""
        deadline = deadline_of(timeout, until)
        while True:
            item = await self._next_item(deadline, errors)
            if item is None:
                return None
            kind, obj = item
            if kind == "result":
                return obj
            cb = self.morecb if kind == "more" else self.eofcb
            if cb is not None:
                r = cb(self._owner, obj, self.param)
                if inspect.isawaitable(r):
                    await r

    async def responses(self, timeout: float | _dt.timedelta | None = None, until: _dt.datetime | None = None,
                        errors: str | None = None) -> AsyncIterator[Any]:
        """Yield results as they arrive until no task is outstanding or the
        deadline (``timeout`` from now, or ``until``) passes."""
        deadline = deadline_of(timeout, until)
        while True:
            r = await self.poll(until=None, errors=errors, timeout=None if deadline is None
                                else max(0.0, deadline - time.monotonic()))
            if r is None:
                return
            yield r

    # ========================================================== primitives
    async def do_ping(self, dst: Any, *, method: str | None = None, attempts: int | None = None,
                      wait_probe: float | _dt.timedelta | None = None,
                      wait_timeout: float | _dt.timedelta | None = None, stop_count: int | None = None,
                      ttl: int | None = None, tos: int | None = None, size: int | None = None,
                      payload: bytes | None = None, src: Any = None, sport: int | None = None,
                      dport: int | None = None, icmp_id: int | None = None, icmp_seq: int | None = None,
                      icmp_sum: int | None = None, tcp_seq: int | None = None, tcp_ack: int | None = None,
                      mtu: int | None = None, rtr: Any = None, recordroute: bool | None = None,
                      ip_rr: bool | None = None, ip_ts: str | None = None,
                      dltx: bool | None = None, userid: int | None = None, inst: Any = None,
                      sync: bool = False, placement: str = "endpoint") -> Any:
        """Ping ``dst`` (scamper's do_ping parameters; seconds or timedelta).
        ``placement``: "endpoint" (default) or "remote" (see ``_do``).

        Returns a ``Task`` (a list for a list of instances), or with
        ``sync=True`` the ``Ping`` result. Parameters out of range raise
        ``BadParams`` (a ``ValueError`` naming the parameter) before
        anything is sent; for a list of instances each task carries it.
        """
        return await self._do("ping", params_of(
            dst=dst, method=method, attempts=attempts, wait_probe=wait_probe, wait_timeout=wait_timeout,
            stop_count=stop_count, ttl=ttl, tos=tos, size=size, payload=payload, src=src, sport=sport,
            dport=dport, icmp_id=icmp_id, icmp_seq=icmp_seq, icmp_sum=icmp_sum, tcp_seq=tcp_seq,
            tcp_ack=tcp_ack, mtu=mtu, rtr=rtr, recordroute=recordroute, ip_rr=ip_rr, ip_ts=ip_ts,
            dltx=dltx), inst, sync, userid,
            placement)


def _primitive(name: str, *positional: str) -> Callable[..., Any]:
    """A ``do_<name>`` method in one line: positional arguments named
    ``positional``, every other parameter by keyword, checked here by the
    endpoint's own check (``check_task_params``) and passed on as is."""

    async def do(self: AsyncCtrl, *args: Any, inst: Any = None, sync: bool = False,
                 userid: int | None = None, placement: str = "endpoint", **params: Any) -> Any:
        if len(args) > len(positional):
            raise TypeError(f"do_{name}() takes {len(positional)} positional argument(s)")
        return await self._do(name, params_of(**dict(zip(positional, args)), **params), inst, sync, userid,
                              placement)

    do.__name__ = f"do_{name}"
    do.__doc__ = f"Run the endpoint's {name!r} primitive; like do_ping."
    return do


# Primitives whose endpoint side lands later are one line each here.
AsyncCtrl.do_trace = _primitive("trace", "dst")  # type: ignore[attr-defined]
AsyncCtrl.do_tracelb = _primitive("tracelb", "dst")  # type: ignore[attr-defined]
AsyncCtrl.do_dns = _primitive("dns", "qname")  # type: ignore[attr-defined]
AsyncCtrl.do_http = _primitive("http", "dst", "url")  # type: ignore[attr-defined]
AsyncCtrl.do_udpprobe = _primitive("udpprobe", "dst", "dport")  # type: ignore[attr-defined]
AsyncCtrl.do_sniff = _primitive("sniff", "src")  # type: ignore[attr-defined]
AsyncCtrl.do_tbit = _primitive("tbit", "dst")  # type: ignore[attr-defined]
AsyncCtrl.do_throughput = _primitive("throughput", "dst", "port")  # type: ignore[attr-defined]
AsyncCtrl.do_ally = _primitive("ally", "dst1", "dst2")  # type: ignore[attr-defined]
AsyncCtrl.do_mercator = _primitive("mercator", "dst")  # type: ignore[attr-defined]
AsyncCtrl.do_radargun = _primitive("radargun", "addrs")  # type: ignore[attr-defined]
AsyncCtrl.do_prefixscan = _primitive("prefixscan", "near", "far", "prefixlen")  # type: ignore[attr-defined]
AsyncCtrl.do_midarest = _primitive("midarest", "addrs", "probedefs")  # type: ignore[attr-defined]
AsyncCtrl.do_midardisc = _primitive("midardisc", "probedefs", "schedule")  # type: ignore[attr-defined]

__all__ = ["AsyncCtrl", "BadParams", "InstError", "Inst", "Task", "VpInfo", "params_of", "deadline_of",
           "local_vp_specs", "check_task_params"]
