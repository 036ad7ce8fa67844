"""``Ctrl``: the synchronous measurement API (scamper's ``ScamperCtrl``).

A thin wrapper over ``AsyncCtrl``: marionet's event loop runs on a
background thread (``LoopThread``) and each call here submits a coroutine
to it. That is what makes the sync API work in Jupyter or anywhere an
event loop already runs in the caller's thread — we never call
``asyncio.run`` there. ``morecb``/``eofcb`` run on the caller's thread,
inside ``poll()``/``responses()``, so they may call ``do_*`` directly.

See ``marionet.client.actrl`` for how errors surface (they are never
dropped silently: ``responses()`` raises ``InstError`` where the failure
happened unless ``errors="collect"``; un-retrieved errors are raised at
``close()``/``__exit__``).
"""

from __future__ import annotations

import atexit
import datetime as _dt
import functools
import weakref
from typing import Any, Callable, Iterable, Iterator

from marionet.client.actrl import DEFAULT_WINDOW, AsyncCtrl, deadline_of
from marionet.client.inst import Inst, InstError, Task, VpInfo
from marionet.client.loop_thread import LoopThread

__all__ = ["Ctrl", "Inst", "Task", "InstError", "VpInfo"]

# Scripts written for scamper often never close their controller. Close
# what is still open at exit (warning about unread errors), so embedded
# endpoints and their helper processes go away cleanly.
_open: "weakref.WeakSet[Ctrl]" = weakref.WeakSet()


@atexit.register
def _close_open_ctrls() -> None:
    for c in list(_open):
        try:
            c.close(raise_errors=False)
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _sync(method: Callable[..., Any]) -> Callable[..., Any]:
    """A sync version of an ``AsyncCtrl`` coroutine method (same signature
    and docstring, for ``help()`` and editors)."""

    @functools.wraps(method)
    def call(self: "Ctrl", *args: Any, **kw: Any) -> Any:
        return self._run(getattr(self._actrl, method.__name__)(*args, **kw))

    return call


class Ctrl:
    """Drive measurements on many VPs (synchronous; a context manager).

    ``Ctrl()`` with no controller starts an embedded controller and one
    local endpoint in this process (``local_vps=N`` for N of them), so a
    script works on a fresh machine. Arguments as ``AsyncCtrl``::

        with Ctrl() as ctrl:
            for inst in ctrl.instances():
                ctrl.do_ping("127.0.0.1", inst=inst)
            for ping in ctrl.responses(timeout=10):
                print(ping.inst.name, ping.min_rtt)
    """

    def __init__(self, controller: str | None = None, *, cert: Any = None, key: Any = None, ca: Any = None,
                 insecure: bool = False, outfile: Any = None, morecb: Callable[..., Any] | None = None,
                 eofcb: Callable[..., Any] | None = None, param: Any = None, vps: Iterable[Any] | None = None,
                 local_vps: int | list[tuple[str, dict[str, Any]]] | None = None, embedded: Any = None,
                 window: int = DEFAULT_WINDOW, errors: str = "raise", reconnect: bool = True,
                 attach_timeout: float = 10.0, connect_timeout: float = 10.0, _start: bool = True) -> None:
        self._lt: LoopThread | None = None
        self._a: AsyncCtrl | None = None
        self._closed = False
        self._kw = dict(cert=cert, key=key, ca=ca, insecure=insecure, outfile=outfile, morecb=morecb,
                        eofcb=eofcb, param=param, vps=vps, local_vps=local_vps, embedded=embedded,
                        window=window, errors=errors, reconnect=reconnect, attach_timeout=attach_timeout,
                        connect_timeout=connect_timeout)
        self._controller = controller
        if _start:
            self._start()

    def _start(self) -> None:
        """Start the loop thread, build the ``AsyncCtrl`` on it and connect."""
        if self._a is not None:
            return
        lt = LoopThread()
        self._lt = lt

        async def make() -> AsyncCtrl:
            a = AsyncCtrl(self._controller, **self._kw)
            a._lt = lt
            a._owner = self
            await a.start()
            return a

        try:
            self._a = lt.run(make())
            _open.add(self)
        except BaseException:
            lt.stop()
            self._lt = None
            raise

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        if self._a is None:
            self._start()
        assert self._lt is not None
        return self._lt.run(coro, timeout)

    @property
    def _actrl(self) -> AsyncCtrl:
        if self._a is None:
            self._start()
        assert self._a is not None
        return self._a

    # ------------------------------------------------------------- life
    def __enter__(self) -> "Ctrl":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(raise_errors=exc_type is None)

    def close(self, raise_errors: bool = True) -> None:
        """Detach, stop the embedded controller (if ours), stop the loop;
        raise errors nobody retrieved (``ExceptionGroup`` of ``InstError``)."""
        if self._closed:
            return
        self._closed = True
        _open.discard(self)
        if self._a is None or self._lt is None:
            return
        try:
            self._lt.run(self._a.close(raise_errors=raise_errors))
        finally:
            self._lt.stop()

    def __del__(self) -> None:
        try:
            if not self._closed and self._lt is not None:
                self.close(raise_errors=False)
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass

    # ------------------------------------------------------- attributes
    @property
    def morecb(self) -> Callable[..., Any] | None:
        return self._actrl.morecb

    @morecb.setter
    def morecb(self, cb: Callable[..., Any] | None) -> None:
        self._actrl.morecb = cb

    @property
    def eofcb(self) -> Callable[..., Any] | None:
        return self._actrl.eofcb

    @eofcb.setter
    def eofcb(self, cb: Callable[..., Any] | None) -> None:
        self._actrl.eofcb = cb

    @property
    def param(self) -> Any:
        return self._actrl.param

    @param.setter
    def param(self, value: Any) -> None:
        self._actrl.param = value

    @property
    def outfile(self) -> Any:
        return self._actrl.outfile

    @property
    def outfile_errors(self) -> int:
        """Results the outfile could not take (each one is in ``exceptions()``)."""
        return self._actrl.outfile_errors

    @property
    def embedded(self) -> Any:
        """The embedded controller (``Embedded``) when this Ctrl started one."""
        return self._actrl.embedded

    @property
    def controller(self) -> str | None:
        return self._actrl.controller

    @property
    def instc(self) -> int:
        return self._actrl.instc

    @property
    def taskc(self) -> int:
        return self._actrl.taskc

    # --------------------------------------------------------- registry
    def instances(self, **select: Any) -> list[Inst]:
        """Attached instances; select with ``name=`` (shell pattern),
        ``tags={k: v}``, ``tag=KEY``, ``cc=``, ``asn=``."""
        a = self._actrl
        return a._call(functools.partial(a.instances, **select))

    def instance(self, name: str) -> Inst:
        return self._actrl.instance(name)

    vps = _sync(AsyncCtrl.vps)
    add_vps = _sync(AsyncCtrl.add_vps)
    remove = _sync(AsyncCtrl.remove)

    def exceptions(self) -> Iterator[InstError]:
        """Errors not yet retrieved, oldest first (retrieving forgets them)."""
        return iter(self._run(self._async_exceptions()))

    async def _async_exceptions(self) -> list[InstError]:
        return self._actrl.exceptions()

    def done(self) -> None:
        """No more tasks for any instance."""
        self._actrl.done()

    def is_done(self) -> bool:
        return self._actrl.is_done()

    # ------------------------------------------------------------ tasks
    do_ping = _sync(AsyncCtrl.do_ping)
    do_trace = _sync(AsyncCtrl.do_trace)  # type: ignore[attr-defined]
    do_tracelb = _sync(AsyncCtrl.do_tracelb)  # type: ignore[attr-defined]
    do_dns = _sync(AsyncCtrl.do_dns)  # type: ignore[attr-defined]
    do_http = _sync(AsyncCtrl.do_http)  # type: ignore[attr-defined]
    do_throughput = _sync(AsyncCtrl.do_throughput)  # type: ignore[attr-defined]
    do_udpprobe = _sync(AsyncCtrl.do_udpprobe)  # type: ignore[attr-defined]
    do_sniff = _sync(AsyncCtrl.do_sniff)  # type: ignore[attr-defined]
    do_tbit = _sync(AsyncCtrl.do_tbit)  # type: ignore[attr-defined]
    do_ally = _sync(AsyncCtrl.do_ally)  # type: ignore[attr-defined]
    do_mercator = _sync(AsyncCtrl.do_mercator)  # type: ignore[attr-defined]
    do_radargun = _sync(AsyncCtrl.do_radargun)  # type: ignore[attr-defined]
    do_prefixscan = _sync(AsyncCtrl.do_prefixscan)  # type: ignore[attr-defined]
    do_midarest = _sync(AsyncCtrl.do_midarest)  # type: ignore[attr-defined]
    do_midardisc = _sync(AsyncCtrl.do_midardisc)  # type: ignore[attr-defined]

    def _do(self, primitive: str, params: dict[str, Any], inst: Any = None, sync: bool = False,
            userid: int | None = None) -> Any:
        return self._run(self._actrl._do(primitive, params, inst, sync, userid))

    # ----------------------------------------------------------- events
    def poll(self, timeout: float | _dt.timedelta | None = None, until: _dt.datetime | None = None,
             errors: str | None = None) -> Any:
        """The next result, or None when nothing is outstanding or the
        deadline passed. Runs ``morecb``/``eofcb`` (on this thread) on the
        way; raises ``InstError`` for a failure unless ``errors="collect"``."""
        return self._poll_until(deadline_of(timeout, until), errors)

    def _poll_until(self, deadline: float | None, errors: str | None) -> Any:
        a = self._actrl
        while True:
            item = self._run(a._next_item(deadline, errors))
            if item is None:
                return None
            kind, obj = item
            if kind == "result":
                return obj
            cb = a.morecb if kind == "more" else a.eofcb
            if cb is not None:
                cb(self, obj, a.param)

    def responses(self, timeout: float | _dt.timedelta | None = None, until: _dt.datetime | None = None,
                  errors: str | None = None) -> Iterator[Any]:
        """Yield results as they arrive until no task is outstanding or the
        deadline (``timeout`` from now, or ``until``) passes.

        A failure raises ``InstError`` here, at its place in the stream
        (call ``responses()`` again to go on), unless ``errors="collect"``
        (then read them with ``exceptions()``).
        """
        deadline = deadline_of(timeout, until)
        while True:
            r = self._poll_until(deadline, errors)
            if r is None:
                return
            yield r

    def __repr__(self) -> str:
        if self._a is None:
            return "Ctrl(not started)"
        return f"Ctrl({self._a.controller}, instc={self.instc}, taskc={self.taskc})"

