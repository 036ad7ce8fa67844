"""The native placement on a lab VP: a worker process in the VP's namespace.

Why a process: "native" means the measurement runs on the VP itself, on
its own sockets, with no endpoint or controller in the way. In a lab the VP
is a network namespace, and sockets belong to the namespace they were
created in, so the study starts one long-lived Python process per VP inside
its namespace (one interpreter start per study, not per run) and hands it
measurements as JSON lines:

    → {"id": 1, "primitive": "trace", "params": {...}}
    ← {"id": 1, "result": {...scamper JSON...}}    or  {"id": 1, "error": "..."}
    → {"id": 2, "call": "sendgap.train", "kwargs": {...}}   (see ``CALLS``)
    ← {"id": 2, "value": {...}}

The worker runs each primitive with ``marionet.measure.run_primitive`` over
a private in-process endpoint (``native_session``), exactly the code the
endpoint and remote placements run.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, Awaitable, Callable

__all__ = ["NativeWorker", "WorkerError", "CALLS"]

MAX_LINE = 64 << 20


class WorkerError(RuntimeError):
    """The worker failed or answered with an error."""


async def _sendgap_train(io: Any, **kwargs: Any) -> Any:
    from marionet.evaluate import sendgap

    train = await sendgap.marionet_train(io, **kwargs)
    return train.to_dict()


async def _sendgap_native_train(io: Any, **kwargs: Any) -> Any:
    """The native sender (plain sockets, sleep then spin; not through the
    endpoint) run by this process — so a study needs no process start per
    train. It blocks the loop on purpose: nothing else may run meanwhile."""
    from marionet.evaluate import sendgap

    return sendgap.native_train(**kwargs).to_dict()


#: the non-primitive calls a worker answers (name -> coroutine f(io, **kwargs) -> JSON value)
CALLS: dict[str, Callable[..., Awaitable[Any]]] = {
    "sendgap.train": _sendgap_train,
    "sendgap.native_train": _sendgap_native_train,
}


async def _serve() -> int:
    from marionet.endpoint.local import native_session
    from marionet.endpoint.primitives import result_dict
    from marionet.measure.registry import run_primitive

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout

    def answer(d: dict[str, Any]) -> None:
        out.write(json.dumps(d, separators=(",", ":")) + "\n")
        out.flush()

    async with native_session() as io:
        answer({"ready": True})
        while True:
            line = await reader.readline()
            if not line:
                return 0
            try:
                req = json.loads(line)
                rid = req["id"]
            except (ValueError, KeyError, TypeError) as e:
                answer({"id": None, "error": f"bad request line: {e}"})
                continue
            try:
                if "primitive" in req:
                    obj = await run_primitive(io, req["primitive"], dict(req.get("params") or {}), max_s=None)
                    answer({"id": rid, "result": result_dict(obj)})
                else:
                    fn = CALLS.get(req.get("call"))
                    if fn is None:
                        raise ValueError(f"unknown call {req.get('call')!r} (known: {', '.join(sorted(CALLS))})")
                    answer({"id": rid, "value": await fn(io, **dict(req.get("kwargs") or {}))})
            except Exception as e:  # noqa: BLE001 - every failure is this request's answer
                answer({"id": rid, "error": f"{type(e).__name__}: {e}"})


class NativeWorker:
    """A worker in namespace ``netns`` (None: this one); ``run``/``call`` one at a time."""

    def __init__(self, netns: str | None, *, start_timeout: float = 30.0) -> None:
        self.netns = netns
        self.start_timeout = start_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._next = 0

    async def start(self) -> "NativeWorker":
        argv = [sys.executable, "-m", "marionet.evaluate.nativeworker"]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        self._proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, limit=MAX_LINE)
        first = await self._read(self.start_timeout)
        if not first.get("ready"):
            raise WorkerError(f"native worker in {self.netns} did not start: {first}")
        return self

    async def _read(self, timeout: float | None) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            raise WorkerError(f"native worker in {self.netns}: no answer within {timeout:g} s") from None
        if not line:
            raise WorkerError(f"native worker in {self.netns} exited (rc {self._proc.returncode})")
        return json.loads(line)

    async def _ask(self, req: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        if self._proc is None or self._proc.returncode is not None:
            raise WorkerError(f"native worker in {self.netns} is not running")
        async with self._lock:
            self._next += 1
            req = {"id": self._next, **req}
            assert self._proc.stdin is not None
            self._proc.stdin.write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
            await self._proc.stdin.drain()
            while True:
                ans = await self._read(timeout)
                if ans.get("id") == self._next:
                    break
        if "error" in ans:
            raise WorkerError(ans["error"])
        return ans

    async def run(self, primitive: str, params: dict[str, Any], timeout: float | None = 600) -> Any:
        """Run ``primitive`` natively on the VP; its result object."""
        from marionet.results import from_json

        return from_json((await self._ask({"primitive": primitive, "params": params}, timeout))["result"])

    async def call(self, name: str, timeout: float | None = 600, **kwargs: Any) -> Any:
        return (await self._ask({"call": name, "kwargs": kwargs}, timeout))["value"]

    async def close(self) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        if p.stdin is not None:
            p.stdin.close()
        try:
            await asyncio.wait_for(p.wait(), 5)
        except asyncio.TimeoutError:
            p.kill()
            await p.wait()

    async def __aenter__(self) -> "NativeWorker":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(_serve()))
