"""Blocking calls on the caller's thread: unary requests, and server streams as iterators.

The hot path (no method config, the first pick works, the attempt succeeds)
is one picker read, one dict lookup, two uncontended lock operations and the
grpc call: :class:`~discovery.attempts.Attempts` is made only once an attempt
fails or a policy needs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from .._calls import LocalRpcError, ReplayableStream
from ..attempts import Attempts, effective_deadline
from ..backend import forget_closed
from ..balancer import Drop, Metadata, PickResult
from ..methodconfig import MethodConfig
from . import books
from .books import begin_attempt, deadline_after, dropped, end_attempt, unused

if TYPE_CHECKING:
    from ..backend import Backend, CallableKey
    from ..core import ChannelCore

__all__ = ["backend_mcall", "blocking_unary", "start_stream", "wait_for_ready_of"]

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def wait_for_ready_of(wait_for_ready: bool | None, mc: MethodConfig | None) -> bool | None:
    """The call's own ``wait_for_ready`` wins; else the method config's (gRPC's rule)."""
    if wait_for_ready is not None or mc is None:
        return wait_for_ready
    return mc.wait_for_ready


def _new_attempts(core: ChannelCore, mc: MethodConfig | None, deadline: float | None,
                  wfr: bool | None, replayable: bool) -> Attempts:
    att = Attempts(mc, core.throttle, deadline, wfr, len(core.manager.backends) + 1)
    return att if replayable else att.no_replay()


def _pick(core: ChannelCore, method: str, metadata: Metadata | None, att: Attempts | None,
          deadline: float | None, wfr: bool | None) -> PickResult:
    tried = None if att is None else att.tried
    try:
        r = core.picker.pick(method, metadata) if not tried else core.pick_avoiding(method, metadata, tried)
    except Drop as drop:
        raise dropped(drop) from None
    if r is None or core.closed:
        if r is not None:
            unused(r)
        r = core.wait_pick(method, metadata, deadline, wfr, tried)
    return r


def blocking_unary(core: ChannelCore, key: CallableKey, method: str, with_call: bool, request: Any,
                   timeout: float | None, metadata: Metadata | None, credentials: grpc.CallCredentials | None,
                   wait_for_ready: bool | None, compression: grpc.Compression | None,
                   mc: MethodConfig | None, replayable: bool, mcalls: dict[Backend, Any]) -> Any:
    """One unary-request RPC with re-picks and retries, on this thread. Returns what
    grpc's ``__call__`` (or ``with_call``) would; raises its :class:`grpc.RpcError`.

    ``mcalls`` is the caller's cache of each backend's multicallable for
    ``key`` (see :func:`backend_mcall`), shared by the threads calling it."""
    if mc is not None:
        return _attempts(core, key, method, with_call, request, timeout, metadata, credentials, wait_for_ready,
                         compression, mc, replayable, None, None)
    # The hot path: no method config, the first pick works and nobody wants
    # the attempt's result. It is written out here rather than going through
    # _pick and the books because each Python call costs several times what a
    # micro-benchmark shows: the RPC itself evicts the interpreter's caches
    # (measured: ~6 us per RPC of the calling thread's CPU).
    try:
        pr = core.picker.pick(method, metadata)
    except Drop as drop:
        raise dropped(drop) from None
    if pr is None or core.closed:
        if pr is not None:
            unused(pr)
        return _attempts(core, key, method, with_call, request, timeout, metadata, credentials, wait_for_ready,
                         compression, None, replayable, None, None)
    b = pr.subconn.backend
    if pr.done is not None or books.observer is not None:
        # Someone wants the attempt's result.
        return _attempts(core, key, method, with_call, request, timeout, metadata, credentials, wait_for_ready,
                         compression, None, replayable, None, pr)
    # Backend.begin, written out (in the same order: add, then read closed).
    b.tokens.append(None)
    if b.closed:
        # Refused: the backend closed under us (an address-set change). Never
        # sent; the general path re-picks.
        b.end()
        return _attempts(core, key, method, with_call, request, timeout, metadata, credentials, wait_for_ready,
                         compression, None, replayable, None, pr)
    mcall = mcalls.get(b) or backend_mcall(mcalls, b, key)
    t0 = time.perf_counter()
    try:
        # wait_for_ready is the channel's job (no backend channel's service
        # config sets it): a backend that just failed must not hold the RPC
        # while others could serve it.
        if with_call:
            result = mcall.with_call(request, timeout, metadata, credentials, None, compression)
        else:
            result = mcall(request, timeout, metadata, credentials, None, compression)
    except grpc.RpcError as exc:
        deadline = deadline_after(timeout, t0)
        att = _failed(core, pr, t0, exc, method, None, None, deadline, wait_for_ready, replayable)
        return _attempts(core, key, method, with_call, request, timeout, metadata, credentials, wait_for_ready,
                         compression, None, replayable, att, None)
    except BaseException:
        # Not an RPC outcome (a request that does not serialize, an interrupt):
        # the books still close, as for an unsent attempt.
        b.end()
        raise
    # Backend.end, written out.
    b.tokens.pop()
    if b.closing:
        b.check_idle()
    return result


def backend_mcall(mcalls: dict[Backend, Any], b: Backend, key: CallableKey) -> Any:
    """``b``'s multicallable for ``key``, cached in ``mcalls``: the hot path's lookup is then
    keyed by the backend's identity, not by hashing the 5-tuple ``key``. Any thread."""
    forget_closed(mcalls)
    mcall = mcalls[b] = b.callables.get(key) or b.callable(key)
    return mcall


def _failed(core: ChannelCore, pr: PickResult, t0: float, exc: grpc.RpcError, method: str, att: Attempts | None,
            mc: MethodConfig | None, deadline: float | None, wfr: bool | None, replayable: bool) -> Attempts:
    """Close the books of ``pr``'s failed attempt and wait out the backoff before the next
    one: the RPC's :class:`Attempts` for it. Re-raises ``exc`` when there is none."""
    code, details = exc.code(), exc.details()
    trailing = exc.trailing_metadata()
    end_attempt(core, pr, t0, code, details, trailing, method)
    if not replayable:
        # A request iterator may be partly consumed already: never replayed.
        raise exc
    att = att or _new_attempts(core, mc, deadline, wfr, replayable)
    att.tried.append(pr.subconn.backend)
    delay = att.after_failure(code, details, trailing)
    if delay is None:
        raise exc
    if delay > 0:
        threading.Event().wait(delay)
    return att


def _attempts(core: ChannelCore, key: CallableKey, method: str, with_call: bool, request: Any,
              timeout: float | None, metadata: Metadata | None, credentials: grpc.CallCredentials | None,
              wait_for_ready: bool | None, compression: grpc.Compression | None, mc: MethodConfig | None,
              replayable: bool, att: Attempts | None, first: PickResult | None) -> Any:
    """:func:`blocking_unary` in full: every attempt until one commits. ``att`` carries on
    after attempts already made (its deadline is the RPC's); ``first`` is a pick to use
    for the first attempt made here."""
    if att is not None:
        deadline = att.deadline
    elif timeout is not None or mc is not None:
        deadline = effective_deadline(timeout, mc, time.monotonic())
    else:
        deadline = None
    wfr = wait_for_ready_of(wait_for_ready, mc)
    if att is None and mc is not None and (mc.retry is not None or mc.timeout is not None):
        att = _new_attempts(core, mc, deadline, wfr, replayable)
    while True:
        if first is None:
            pr = _pick(core, method, metadata, att, deadline, wfr)
        else:
            pr, first = first, None
        b = pr.subconn.backend
        if not begin_attempt(core, pr, method, att):
            # Closed under us by an address-set change: never sent, re-pick.
            unused(pr)
            att = att or _new_attempts(core, mc, deadline, wfr, replayable)
            att.tried.append(b)
            if att.after_failure(_UNAVAILABLE, None, refused=True) is None:
                raise LocalRpcError(_UNAVAILABLE, core.explain(core.picker))
            continue
        mcall = b.callables.get(key) or b.callable(key)
        t0 = time.perf_counter()
        if att is None:
            attempt_timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        else:
            attempt_timeout = att.attempt_timeout()
        try:
            if pr.done is None and not with_call:
                result = mcall(request, attempt_timeout, metadata, credentials, None, compression)
                trailing: Any = ()
            else:
                response, call = mcall.with_call(request, attempt_timeout, metadata, credentials, None, compression)
                trailing = call.trailing_metadata()
                result = (response, call) if with_call else response
        except grpc.RpcError as exc:
            att = _failed(core, pr, t0, exc, method, att, mc, deadline, wfr, replayable)
            continue
        except BaseException:
            b.end()
            unused(pr)
            raise
        end_attempt(core, pr, t0, _OK, None, trailing, method)
        if att is not None:
            att.succeeded()
        return result


def start_stream(core: ChannelCore, key: CallableKey, method: str, request: Any, timeout: float | None,
                 metadata: Metadata | None, credentials: grpc.CallCredentials | None, wait_for_ready: bool | None,
                 compression: grpc.Compression | None, mc: MethodConfig | None, replayable: bool) -> Any:
    """Start a streaming-response call; a unary request is replayed on another backend
    (transparent re-pick, or ``retryPolicy``) until the first response message."""
    deadline = effective_deadline(timeout, mc, time.monotonic())
    wfr = wait_for_ready_of(wait_for_ready, mc)
    att = _new_attempts(core, mc, deadline, wfr, replayable)
    try:
        call = _start_one(core, key, method, request, metadata, credentials, compression, att, deadline, wfr)
    except LocalRpcError as exc:
        return exc
    if not replayable:
        return call

    def restart(tried: list[Any], exc: grpc.RpcError, attempt: int) -> tuple[Any, int] | None:
        code, details = exc.code(), exc.details()
        delay = att.after_failure(code, details, exc.trailing_metadata())
        if delay is None:
            return None
        if delay > 0:
            threading.Event().wait(delay)
        try:
            new_call = _start_one(core, key, method, request, metadata, credentials, compression, att,
                                            deadline, wfr)
        except LocalRpcError:
            return None
        return new_call, attempt + 1

    return ReplayableStream(call, restart, att.tried)


def _start_one(core: ChannelCore, key: CallableKey, method: str, arg: Any, metadata: Metadata | None,
               credentials: grpc.CallCredentials | None, compression: grpc.Compression | None, att: Attempts,
               deadline: float | None, wfr: bool | None) -> Any:
    """Pick, begin and start one non-blocking attempt; its books close when the call ends."""
    while True:
        pr = _pick(core, method, metadata, att, deadline, wfr)
        b = pr.subconn.backend
        started = begin_attempt(core, pr, method, att)
        att.tried.append(b)
        if started:
            break
        unused(pr)
        if att.after_failure(_UNAVAILABLE, None, refused=True) is None:
            raise LocalRpcError(_UNAVAILABLE, core.explain(core.picker))
    mcall = b.callables.get(key) or b.callable(key)
    t0 = time.perf_counter()
    try:
        call = mcall(arg, att.attempt_timeout(), metadata, credentials, None, compression)
    except BaseException:
        b.end()
        unused(pr)
        raise
    call.add_done_callback(_closer(core, pr, t0, method))
    return call


def _closer(core: ChannelCore, pr: PickResult, t0: float, method: str) -> Callable[[Any], None]:
    def done(call: Any) -> None:
        code = call.code()
        if code is _OK:
            end_attempt(core, pr, t0, _OK, None, call.trailing_metadata() if pr.done is not None else (), method)
        else:
            end_attempt(core, pr, t0, code, call.details(), call.trailing_metadata(), method)
    return done
