"""Thread offload that never orphans a thread.

``WorkerPool.run`` awaits a function in a thread; if the awaiting task is cancelled it still waits for
the thread to finish (a running thread cannot be interrupted) and only then re-raises the cancellation.
``stop`` is set on cancellation so long-running functions that poll it return early; ``run_abortable``
instead calls an ``abort`` given with the function (for one blocked in a socket). ``close`` joins
the threads; since every ``run`` has returned by then, nothing is left running.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    def __init__(self, threads: int, name: str) -> None:
        self.threads = threads
        self.stop = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self.stop.set()
            await _finished(future)
            raise

    async def run_abortable(
        self, abort: Callable[[], None], fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """As ``run``, for a function that blocks on something ``abort`` can interrupt (a socket it shuts
        down): if the awaiting task is cancelled, ``abort()`` is called from the loop's thread, then the
        thread is waited for and the cancellation re-raised. The pool's ``stop`` is left alone: the other
        calls go on."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            abort()
            await _finished(future)
            raise

    def close(self) -> None:
        self.stop.set()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def offload(fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(stop)`` in a thread of the loop's default executor. If the awaiting task is cancelled,
    ``stop`` is set (``fn`` should return soon when it sees it) and the cancellation is re-raised only
    once ``fn`` has returned: no thread outlives its caller."""
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, fn, stop)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        await _finished(future)
        raise


async def _finished(future: asyncio.Future[T]) -> None:
    """Wait until a thread's future is done, through any number of cancellations; its outcome is moot."""
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            continue
        except BaseException:  # noqa: BLE001 - the cancellation wins; the error is moot
            break
    if not future.cancelled():
        future.exception()  # mark retrieved
