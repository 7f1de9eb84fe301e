"""Request iterators of sync stream-unary ``.future()`` calls, read without blocking the futures loop.

grpc.aio reads a call's request iterator on the loop the call runs on. A
user's generator may block (on a queue, a file, a socket); on the shared
futures loop that would stall every future of the process. So such an
iterator is read by a short-lived thread of the call (as grpcio's own
``.future()`` does), a few messages ahead of the writes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from typing import Any

__all__ = ["RequestsOffLoop", "requests_off_loop"]

log = logging.getLogger("discovery.channel")


# Iterators over values already in memory: next() never blocks, so the loop may call it.
_IN_MEMORY: tuple[type, ...] = (type(iter([])), type(iter(())), type(iter(range(0))))

# How many request messages the reading thread may take ahead of grpc.aio's writes.
_READ_AHEAD = 8
_END = object()


class RequestsOffLoop:
    """A sync request iterator, read for a grpc.aio call on the futures loop without
    ever blocking that loop: a thread of the call's own runs ``next()`` (as grpcio's own
    ``.future()`` does: it starts a thread per call too) and hands the messages over,
    at most ``_READ_AHEAD`` ahead of the writes. The thread ends when the iterator
    does, or, once the call is over, after its pending ``next()`` returns."""

    __slots__ = ("_buffer", "_closed", "_cond", "_it", "_loop", "_waiter", "error")

    def __init__(self, it: Any) -> None:
        self._it = it
        self.error: BaseException | None = None  # what the iterator raised, if it did
        self._cond = threading.Condition(threading.Lock())
        self._buffer: collections.deque[Any] = collections.deque()
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __aiter__(self) -> Any:
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, name="discovery-requests", daemon=True).start()
        return self._read()

    def _pump(self) -> None:
        """The reading thread."""
        it, cond = self._it, self._cond
        while True:
            try:
                item = next(it, _END)
            except Exception as exc:
                self.error = exc
                log.error("exception iterating requests", exc_info=exc)
                item = _END
            with cond:
                while len(self._buffer) >= _READ_AHEAD and not self._closed:
                    cond.wait()
                if self._closed:
                    return
                self._buffer.append(item)
                waiter, self._waiter = self._waiter, None
            if waiter is not None:
                assert self._loop is not None
                with contextlib.suppress(RuntimeError):  # a closed loop has nobody waiting
                    self._loop.call_soon_threadsafe(_resolve, waiter)
            if item is _END:
                return

    async def _read(self) -> Any:
        loop = asyncio.get_running_loop()
        try:
            while True:
                with self._cond:
                    if self._buffer:
                        item = self._buffer.popleft()
                        self._cond.notify()
                        waiter = None
                    else:
                        item = None
                        waiter = self._waiter = loop.create_future()
                if waiter is not None:
                    await waiter
                    continue
                if item is _END:
                    if self.error is not None:
                        raise self.error
                    return
                yield item
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def requests_off_loop(request_iterator: Any) -> Any:
    """``request_iterator`` as grpc.aio should read it on the shared futures loop: as is if it
    cannot block (an iterator over a list, tuple or range, or an async iterator), else
    read on a thread of its own (a user's generator may wait on anything)."""
    if isinstance(request_iterator, _IN_MEMORY) or hasattr(request_iterator, "__aiter__"):
        return request_iterator
    return RequestsOffLoop(iter(request_iterator))
