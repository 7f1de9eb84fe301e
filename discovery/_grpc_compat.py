"""The few grpcio internals this library leans on, in one place.

grpcio's public API can only learn a sync channel's connectivity through
``Channel.subscribe``, which starts a polling thread per channel (and can miss
transitions, grpc/grpc#14498). At thousands of backends that is thousands of
threads, so the control loop reads the state directly instead, through the
same core call ``subscribe``'s poller uses. If a future grpcio moves it,
:func:`state_reader` fails loudly rather than guess.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import grpc.aio
from grpc import _channel, _common
from grpc._cython import cygrpc
from grpc.aio import _call as _aio_call
from grpc.aio import _channel as _aio_channel

__all__ = ["AIO_EOF", "AIO_STATUS_OK", "AIO_WRITE_RACE_DETAILS", "AioUnaryParts", "aio_code_now", "aio_state_reader",
           "aio_status_now", "aio_unary_parts", "hand_over_calls", "now", "plain_aio_channel", "plain_channel",
           "state_reader"]

_TO_CONNECTIVITY = _common.CYGRPC_CONNECTIVITY_STATE_TO_CHANNEL_CONNECTIVITY


def state_reader(channel: grpc.Channel) -> Callable[[bool], grpc.ChannelConnectivity]:
    """A function ``(try_to_connect) -> ChannelConnectivity`` for a sync grpc channel.

    Non-blocking; safe from any thread. A connection pool
    (:class:`discovery.pool.PooledChannel`) answers for its members.
    """
    pooled = getattr(channel, "read_state", None)
    if pooled is not None:
        return pooled  # type: ignore[no-any-return]
    core = getattr(channel, "_channel", None)
    check = getattr(core, "check_connectivity_state", None)
    if check is None:
        raise RuntimeError(
            f"grpcio {grpc.__version__}: cannot read channel connectivity "
            "(grpc._channel.Channel._channel.check_connectivity_state is gone)"
        )

    def read(try_to_connect: bool) -> grpc.ChannelConnectivity:
        return _TO_CONNECTIVITY[check(try_to_connect)]

    return read


def aio_state_reader(channel: grpc.aio.Channel) -> Callable[[bool], grpc.ChannelConnectivity]:
    """The same for a grpc.aio channel, whose ``get_state`` is public and synchronous.

    Safe from any thread: it is one C-core call, which is thread-safe.
    """
    return channel.get_state


# grpc.aio (seen with 1.85) can end a request-streaming call twice when the
# server ends it while a request message is being written: the failed write
# records INTERNAL with this text (``set_internal_error``) and the server's
# status arrives on its own; the later of the two overwrites the earlier, and
# done-callbacks run on the first. So a done-callback may see this INTERNAL
# before the real status, and the caller may see it after the real status
# (a bidi call the server failed with UNAVAILABLE then reads INTERNAL).
AIO_WRITE_RACE_DETAILS = "Internal error from Core"


def now(coro: Any) -> Any:
    """The value of a coroutine that finishes without suspending (a done grpc.aio call's getters)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the call is not finished")


def aio_code_now(call: Any) -> grpc.StatusCode:
    """The status code of a done grpc.aio call, read without awaiting (its ``code()`` is a
    coroutine, and this runs once per RPC). Falls back to that getter where the call
    object is not grpc's own."""
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is None:
        return now(call.code())  # type: ignore[no-any-return]
    return _common.CYGRPC_STATUS_CODE_TO_STATUS_CODE[status.code()]


# -- grpc.aio's unary calls, read on the asyncio hot path ------------------------
# An asyncio RPC with no policy (discovery.calls.aio.UnaryStart and
# AioUnaryCall.__await__) reads three internals of grpc.aio's
# UnaryUnaryCall/StreamUnaryCall, each with a fallback to the public API for a
# call object that is not grpc's own (tests/test_grpc_compat.py pins them):
#  * ``call._call_response``: the Task grpc's own ``__await__`` awaits; it
#    returns the response, or AIO_EOF when the call failed or was cancelled
#    (grpc's ``__await__`` then raises the error, at once since the task is done);
#  * ``call._cython_call.add_done_callback(fn)``: runs ``fn()`` with no
#    argument when the call is done (the public one wraps ``fn`` in a
#    functools.partial per call);
#  * ``call._cython_call._status.code()``: the C-level status code, AIO_STATUS_OK for OK.
# Awaiting the task directly and registering on the C-level call save a
# generator and a partial per RPC (python -m bench instructions --mode aio).
AIO_EOF: Any = cygrpc.EOF
AIO_STATUS_OK: int = cygrpc.StatusCode.ok


# -- grpc.aio's unary-unary calls, made without the multicallable ---------------
# grpc.aio's UnaryUnaryMultiCallable.__call__ (seen with 1.85) turns the
# metadata into a Metadata object, the timeout into a time.time() deadline,
# makes a grpc.aio UnaryUnaryCall, and registers it with its channel: a WeakSet
# entry plus a done-callback, so that Channel.close() can cancel calls still
# running. That is about ten Python frames per RPC. The asyncio hot path
# (discovery.calls.aio.UnaryStart) makes the same UnaryUnaryCall itself from
# the parts below, and keeps its calls in a plain set of its own (added on
# start, discarded by the done-callback it registers anyway); before the
# backend channel closes, hand_over_calls gives them to grpc's registry, so
# close() cancels them exactly as it cancels its own. Compression (which
# rewrites the metadata) and a grpcio whose UnaryUnaryCall takes other
# arguments take the public multicallable (tests/test_grpc_compat.py).
_DIRECT_PARAMS = ("self", "request", "deadline", "metadata", "credentials", "wait_for_ready", "channel", "method",
                  "request_serializer", "response_deserializer", "loop", "registered_call_handle")
_DIRECT = tuple(inspect.signature(_aio_call.UnaryUnaryCall.__init__).parameters) == _DIRECT_PARAMS

# (UnaryUnaryCall or None, its channel, method, request serializer,
# response deserializer, registered call handle): the arguments of grpc.aio's
# UnaryUnaryCall after (request, deadline, metadata, credentials,
# wait_for_ready) and before/after the loop, as
# ``make(request, deadline, metadata, credentials, wait_for_ready, *parts[1:5], loop, parts[5])``.
AioUnaryParts = tuple[Any, Any, bytes, Any, Any, int]


def aio_unary_parts(multicallable: Any) -> AioUnaryParts | None:
    """What grpc.aio's unary-unary ``multicallable`` makes its calls from, or None where this
    grpcio's differ (or the multicallable has interceptors): then call it the public way."""
    if not _DIRECT or getattr(multicallable, "_interceptors", True):
        return None
    try:
        return (_aio_call.UnaryUnaryCall, multicallable._channel, multicallable._method,
                multicallable._request_serializer, multicallable._response_deserializer,
                multicallable._registered_call_handle)
    except AttributeError:
        return None


def hand_over_calls(channel: grpc.aio.Channel, calls: set[Any]) -> None:
    """Before ``channel.close()``: give the calls made from :func:`aio_unary_parts` to the
    channel's own registry, so that its close cancels them as it cancels its own.
    Where that registry is gone, cancel them here. Loop thread."""
    registry = getattr(channel, "_active_calls", None)
    if registry is not None:
        registry.update(calls)
    else:
        for call in list(calls):
            call.cancel()
    calls.clear()


def aio_status_now(call: object) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]] | None:
    """The status a grpc.aio call holds at this moment (None if none yet), read without awaiting.

    Its getters (``code()``...) cannot tell a status the write race is about to
    replace; this reads what the call object stores.
    """
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is None:
        return None
    return (_common.CYGRPC_STATUS_CODE_TO_STATUS_CODE[status.code()], status.details(),
            tuple(status.trailing_metadata() or ()))


# -- backend channels, made past any monkeypatch --------------------------------
# Instrumentations replace grpc.insecure_channel/secure_channel (OpenTelemetry's
# GrpcInstrumentorClient wraps them to return an interceptor wrapper whose
# streams are plain generators) and grpc.aio's (adding interceptors). A
# backend channel must be grpc's own: the control loop reads its
# connectivity, and every attempt closes its books from the grpc call's done
# callback. So backend channels are made exactly as those two functions'
# bodies make them. Interceptors and instrumentation belong on the discovery
# channel itself (see discovery.otel).


def _core_credentials(credentials: grpc.ChannelCredentials) -> Any:
    from grpc.experimental import _insecure_channel_credentials

    core = credentials._credentials  # type: ignore[attr-defined]  # grpc's own attribute, not in the stubs
    if core is _insecure_channel_credentials:
        raise ValueError("secure_channel cannot be called with insecure credentials. Call insecure_channel instead.")
    return core


def plain_channel(target: str, options: Sequence[tuple[str, Any]], compression: grpc.Compression | None,
                  credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """``grpc.insecure_channel`` (or ``secure_channel`` with ``credentials``) as grpc defines it, unpatched."""
    creds = None if credentials is None else _core_credentials(credentials)
    return _channel.Channel(target, tuple(options), creds, compression)


def plain_aio_channel(target: str, options: Sequence[tuple[str, Any]], compression: grpc.Compression | None,
                      credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
    """``grpc.aio.insecure_channel`` (or ``secure_channel``) as grpc defines it, without interceptors."""
    creds = None if credentials is None else credentials._credentials  # type: ignore[attr-defined]
    channel: Any = _aio_channel.Channel(target, tuple(options), creds, compression, None)
    return channel  # type: ignore[no-any-return]  # the stubs know grpc.aio.Channel, not its implementation
