"""An asyncio event loop on a background thread, for the synchronous API.

Why: ``Ctrl`` must work where an event loop already runs in the caller's
thread (Jupyter, or a sync helper called from async code). ``asyncio.run``
would fail there ("cannot be called from a running event loop"), and
nesting loops is fragile. Instead marionet's own loop lives on its own
thread; sync calls hand it coroutines with ``run_coroutine_threadsafe`` and
block on the ``concurrent.futures.Future``. The caller's loop (if any) is
merely paused for the duration of the call, like any blocking call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop running forever on a daemon thread until ``stop()``."""

    def __init__(self, name: str = "marionet-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        self.stopped = False

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                self._cancel_all()
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def _cancel_all(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result (or exception).

        Calling this from the loop's own thread would deadlock, so that is a
        clear error instead (e.g. a sync ``Ctrl`` method called from an
        ``AsyncCtrl`` callback).
        """
        if self.stopped:
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError("marionet's event loop has been stopped (the Ctrl is closed)")
        if self.in_loop_thread():
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError("a synchronous marionet call was made from marionet's own event loop "
                               "thread; use the asyncio API (marionet.aio.AsyncCtrl) there")
        fut = asyncio.run_coroutine_threadsafe(_as_coro(coro), self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"marionet call did not finish within {timeout} s") from None
        except BaseException:
            # KeyboardInterrupt in the caller's thread: stop the work too.
            if not fut.done():
                fut.cancel()
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule a plain callback on the loop (from any thread)."""
        if self.in_loop_thread():
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop (cancelling what is left) and join the thread."""
        if self.stopped:
            return
        self.stopped = True
        if self.in_loop_thread():
            self.loop.stop()
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


async def _as_coro(aw: Awaitable[T]) -> T:
    return await aw
