"""Instances (attached VPs), tasks and the errors they raise.

These objects are shared by the asyncio API (``AsyncCtrl``) and the sync
wrapper (``Ctrl``): their state is owned by the controller object's event
loop, and the few methods that change it (``Inst.done()``,
``Task.halt()``) hand the change to that loop, so they are safe to call
from a sync callback running on the caller's thread.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from marionet.client.actrl import AsyncCtrl
    from marionet.client.packet import PacketSession

# Metadata attributes an instance (and a registry entry) carries, as in
# scamper's ScamperInst / ScamperVp.
META_ATTRS = ("name", "shortname", "tags", "asn4", "asn6", "ipv4", "ipv6", "cc", "st", "place",
              "loc", "iata")


class InstError(Exception):
    """A measurement on instance ``inst`` failed (the VP went away, the
    endpoint refused the task, the primitive failed).

    ``task`` is the failed ``Task`` when the failure belongs to one.
    """

    def __init__(self, message: str, inst: "Inst | None" = None, task: "Task | None" = None) -> None:
        super().__init__(message)
        self.message = message
        self.inst = inst
        self.task = task


class VpInfo:
    """One registry entry (what ``Ctrl.vps()`` returns): attributes as in
    scamper's ``ScamperVp``, plus ``alive``, ``arrival``, clock offset, and
    dict-style access (``vp["cc"]``) to the raw registry fields."""

    def __init__(self, d: dict[str, Any]) -> None:
        self._d = dict(d)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_d"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, key: str) -> Any:
        return self._d[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._d.get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._d)

    @property
    def loc(self) -> tuple[float, float] | None:
        v = self._d.get("loc")
        return tuple(v) if v is not None else None  # type: ignore[return-value]

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._d.get("tags") or {})

    @property
    def arrival(self) -> _dt.datetime | None:
        ns = self._d.get("arrival_ns")
        return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc) if ns else None

    @property
    def clock_offset(self) -> _dt.timedelta | None:
        ns = self._d.get("clock_offset_ns")
        return _dt.timedelta(microseconds=ns / 1000) if ns is not None else None

    def __repr__(self) -> str:
        return f"VpInfo({self._d.get('name')!r}, cc={self._d.get('cc')!r}, alive={self._d.get('alive')})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VpInfo) and other._d.get("name") == self._d.get("name")

    def __hash__(self) -> int:
        return hash(self._d.get("name"))


def matches(meta: dict[str, Any], *, name: str | None = None, tags: dict[str, str] | None = None,
            cc: str | list[str] | tuple[str, ...] | set[str] | None = None, asn: int | None = None,
            tag: str | None = None) -> bool:
    """The selection rule shared by ``vps()`` and ``instances()``:
    ``name`` a shell pattern, ``tags`` all given key=value pairs, ``tag`` a
    key that must be present, ``cc`` one or several country codes, ``asn``
    either AS number."""
    import fnmatch

    if name is not None and not fnmatch.fnmatchcase(meta.get("name") or "", name):
        return False
    vtags = meta.get("tags") or {}
    if tags and any(vtags.get(k) != v for k, v in tags.items()):
        return False
    if tag is not None and tag not in vtags:
        return False
    if cc is not None:
        ccs = {cc} if isinstance(cc, str) else set(cc)
        if meta.get("cc") not in ccs:
            return False
    if asn is not None and asn not in (meta.get("asn4"), meta.get("asn6")):
        return False
    return True


class Inst:
    """An attached vantage point (scamper's ``ScamperInst``).

    ``taskc`` counts tasks issued and not yet finished; ``resultc`` results
    received. After ``done()`` no more tasks may be issued; once the last
    one finishes the instance is at EOF (``is_eof()``) and ``eofcb`` runs.
    An instance whose VP goes away is at EOF too (its tasks fail with
    ``InstError``); if the VP comes back, marionet re-attaches it and it is
    usable again (``is_eof()`` false, ``morecb`` runs) unless ``done()``
    was called.
    """

    def __init__(self, ctrl: "AsyncCtrl", meta: dict[str, Any]) -> None:
        self._ctrl = ctrl
        self._meta: dict[str, Any] = dict(meta)
        self.session: "PacketSession | None" = None
        self.taskc = 0
        self.resultc = 0
        self._done = False
        self._eof = False
        self._removed = False
        self._tasks: dict[int, "Task"] = {}  # endpoint task id -> Task
        self._early: dict[int, Any] = {}  # results that beat their task's registration
        self._attached = asyncio.Event()
        self._more_pending = False
        self._pump: asyncio.Task | None = None
        self.detach_reason: str | None = None

    # -------------------------------------------------------------- metadata
    def __getattr__(self, name: str) -> Any:
        if name in META_ATTRS or name in ("addresses", "clock_offset_ns", "clock_rtt_ns", "alive"):
            return self.__dict__["_meta"].get(name)
        raise AttributeError(name)

    @property
    def name(self) -> str:
        return self._meta["name"]

    @property
    def tags(self) -> dict[str, str]:
        return dict(self._meta.get("tags") or {})

    @property
    def loc(self) -> tuple[float, float] | None:
        v = self._meta.get("loc")
        return tuple(v) if v is not None else None  # type: ignore[return-value]

    @property
    def clock_offset(self) -> _dt.timedelta | None:
        """The VP's clock minus the controller's, as the controller last
        estimated it (NTP-style over the keepalives), or None."""
        ns = self._meta.get("clock_offset_ns")
        return _dt.timedelta(microseconds=ns / 1000) if ns is not None else None

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self._meta)

    @property
    def attached(self) -> bool:
        return self.session is not None and not self.session.closed

    # ------------------------------------------------------------- life cycle
    def done(self) -> None:
        """No more tasks will be issued to this instance; EOF follows once
        its outstanding tasks finish."""
        self._ctrl._call(self._ctrl._inst_done, self)

    def is_done(self) -> bool:
        return self._done

    def is_eof(self) -> bool:
        return self._eof

    def tasks(self) -> Iterator["Task"]:
        """Outstanding tasks."""
        return iter(list(self._tasks.values()))

    def __repr__(self) -> str:
        state = "eof" if self._eof else "done" if self._done else "attached" if self.attached else "detached"
        return f"Inst({self.name!r}, {state}, taskc={self.taskc})"

    def __str__(self) -> str:
        return self.name

    def __lt__(self, other: "Inst") -> bool:
        return self.name < other.name

    def __hash__(self) -> int:
        return id(self)


class Task:
    """A measurement issued to one instance (scamper's ``ScamperTask``).

    ``halt()`` asks the endpoint to stop it; whatever result the primitive
    had (partial, with stop reason "halted") is delivered as usual, or the
    task simply finishes with none. Asyncio users can ``await task`` for
    its result.
    """

    def __init__(self, ctrl: "AsyncCtrl", inst: Inst, primitive: str, params: dict[str, Any],
                 userid: int | None, sync: bool) -> None:
        self._ctrl = ctrl
        self.inst = inst
        self.primitive = primitive
        self.params = params
        self.userid = userid
        self.sync = sync
        self.id: int | None = None  # the endpoint's task id (None for a remote-placement task)
        self.placement = "endpoint"  # or "remote": the primitive runs in this process
        self._halt_event: asyncio.Event | None = None  # a remote task's halt
        self.halted = False
        self.result: Any = None
        self.error: InstError | None = None
        self._future: asyncio.Future = asyncio.get_running_loop().create_future()

    def halt(self) -> None:
        """Stop the task on the endpoint (returns at once)."""
        self._ctrl._call(self._ctrl._halt_soon, self)

    def is_finished(self) -> bool:
        return self._future.done()

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._wait().__await__()

    async def _wait(self) -> Any:
        await self._future
        if self.error is not None:
            self._ctrl._forget_error(self.error)
            raise self.error
        return self.result

    def __repr__(self) -> str:
        state = "halted" if self.halted else "finished" if self._future.done() else "running"
        return f"Task({self.primitive} {self.params.get('dst', '')} on {self.inst.name}, {state})"

    def __lt__(self, other: "Task") -> bool:
        return (self.inst.name, self.id or 0) < (other.inst.name, other.id or 0)
