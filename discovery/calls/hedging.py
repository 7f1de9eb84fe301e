"""Hedged unary calls (gRFC A6 ``hedgingPolicy``), which grpcio's C-core never implemented.

Copies of the RPC go to backends no copy went to yet, one every
``hedgingDelay``, as grpc.aio calls on the caller's loop (the shared futures
loop for sync channels). Each copy is an attempt with its own books; the
losers are cancelled.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio

from .._calls import LocalRpcError
from .books import unused
from .context import CallContext, aio_error

__all__ = ["run_hedged"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def run_hedged(ctx: CallContext, first: Any) -> tuple[Any, Any]:
    """gRFC A6 hedging: a copy every ``hedgingDelay`` to an untried backend; the
    first success wins and the others are cancelled; a fatal status ends it.

    ``first`` is the attempt already started (or None). Returns the winning
    call and its response; raises the deciding :class:`grpc.aio.AioRpcError`.
    """
    att = ctx.att
    assert att.hedging is not None
    delay = att.hedging.hedging_delay
    attempts: dict[asyncio.Future[Any], Any] = {}
    started = 0
    last_error: grpc.aio.AioRpcError | None = None

    async def one(call: Any) -> Any:
        return await call

    async def launch() -> None:
        nonlocal started
        pr = ctx.pick_now()
        if pr is not None and started and pr.subconn.backend in ctx.tried and attempts:
            # No backend left that no copy went to: the running ones go on.
            unused(pr)
            return
        if pr is None:
            if attempts:
                return  # nothing pickable now; the running ones go on
            # Nothing in flight: wait for a backend as a first attempt would
            # (or fail fast), rather than spin until the deadline.
            pr = await ctx.pick()
        call = ctx.start(pr)
        if call is None:
            # Its backend closed under us: never sent, a bounded transparent re-pick.
            if att.after_failure(_UNAVAILABLE, None, refused=True) is None:
                raise aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
            return
        started += 1
        attempts[asyncio.ensure_future(one(call))] = call

    if first is not None:
        started = 1
        attempts[asyncio.ensure_future(one(first))] = first
    else:
        await launch()
    next_at = time.monotonic() + delay
    # A server's pushback (gRFC A6): no hedge before this time, even with nothing in flight.
    not_before = 0.0
    try:
        while True:
            may_hedge = att.may_hedge(started)
            if not attempts and not may_hedge:
                if last_error is not None:
                    raise last_error
                raise aio_error(LocalRpcError(_UNAVAILABLE, ctx.core.explain(ctx.core.picker)))
            now_ = time.monotonic()
            if not attempts:
                next_at = max(now_, not_before)  # nothing in flight: the next hedge goes now
            wait = max(0.0, next_at - now_) if may_hedge else att.remaining()
            left = att.remaining()
            if wait is not None and left is not None:
                wait = min(wait, left)
            done: set[asyncio.Future[Any]] = set()
            if attempts:
                done, _ = await asyncio.wait(list(attempts), timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            elif wait:
                await asyncio.sleep(wait)
            if not done:
                if att.may_hedge(started) and time.monotonic() >= next_at:
                    await launch()
                    next_at = time.monotonic() + delay
                elif att.expired():
                    if last_error is not None:
                        raise last_error
                    raise aio_error(LocalRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))
                continue
            for t in done:
                call = attempts.pop(t)
                exc = t.exception()
                if exc is None:
                    att.succeeded()
                    return call, t.result()
                if not isinstance(exc, grpc.aio.AioRpcError):
                    raise exc
                last_error = exc
                fatal, pushback = att.hedge_failed(exc.code(), exc.trailing_metadata())
                if fatal:
                    raise exc
                if pushback is not None:
                    if pushback < 0:
                        att.hedging = None  # the server asked for no more hedges
                    else:
                        not_before = next_at = time.monotonic() + pushback
    finally:
        for t, call in attempts.items():
            call.cancel()
            t.cancel()

