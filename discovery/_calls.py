"""Call objects the sync channel makes itself: a local RPC error and a restartable stream.

:class:`LocalRpcError` is what an RPC raises when the channel fails it before
any backend sees it (nothing pickable, deadline spent waiting). Like grpc's own
inactive-RPC error it is at once a :class:`grpc.RpcError`, a
:class:`grpc.Call` and a finished :class:`grpc.Future`, so code written for
grpcio handles it unchanged.

:class:`ReplayableStream` is a server stream that may start over on another
backend until its first message arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    _Future = grpc.Future[Any]
else:  # grpc.Future is generic only in the type stubs
    _Future = grpc.Future

__all__ = ["LocalRpcError", "ReplayableStream"]


class _Finished:
    """The grpc.Future/grpc.Call answers of a call that is over."""

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class LocalRpcError(_Finished, grpc.RpcError, grpc.Call, _Future):  # type: ignore[misc]  # grpc returns None here too
    """An RPC failed by the channel itself, before it reached a backend."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def debug_error_string(self) -> str:
        return self._details

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Exception:
        return self

    def traceback(self, timeout: float | None = None) -> TracebackType | None:
        try:
            raise self
        except LocalRpcError as exc:
            return exc.__traceback__

    def __iter__(self) -> LocalRpcError:
        return self

    def __next__(self) -> Any:
        raise self

    def __repr__(self) -> str:
        return f"<LocalRpcError of RPC that terminated with:\n\tstatus = {self._code}\n\tdetails = \"{self._details}\">"

    __str__ = __repr__


class _Delegating(_Future, grpc.Call):
    """grpc.Call and grpc.Future methods answered by another call object, ``_target()``."""

    def _target(self, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def cancel(self) -> bool:
        return bool(self._target().cancel())

    def cancelled(self) -> bool:
        return bool(self._target().cancelled())

    def running(self) -> bool:
        return bool(self._target().running())

    def done(self) -> bool:
        return bool(self._target().done())

    def result(self, timeout: float | None = None) -> Any:
        return self._target(timeout).result(timeout)

    def exception(self, timeout: float | None = None) -> Any:
        return self._target(timeout).exception(timeout)

    def traceback(self, timeout: float | None = None) -> Any:
        return self._target(timeout).traceback(timeout)

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._target().add_done_callback(lambda _f: fn(self))

    def is_active(self) -> bool:
        return bool(self._target().is_active())

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return self._target().time_remaining()  # type: ignore[no-any-return]

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._target().add_callback(callback))

    def initial_metadata(self) -> Any:
        return self._target().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self._target().trailing_metadata()

    def code(self) -> Any:
        return self._target().code()

    def details(self) -> Any:
        return self._target().details()


Restart = Callable[[list[Any], grpc.RpcError, int], "tuple[Any, int] | None"]


class ReplayableStream(_Delegating):
    """A server-streaming call that may be restarted on another backend until its first message.

    ``restart(tried, error, attempt)`` returns a new grpc call and the attempt
    number, or None to give up. Once a message has arrived the stream is
    committed to its backend and errors pass through unchanged.
    """

    def __init__(self, call: Any, restart: Restart, tried: list[Any]) -> None:
        self._call = call
        self._restart = restart
        self._committed = False
        self._tried = tried
        self._attempt = 1

    def _target(self, timeout: float | None = None) -> Any:
        return self._call

    def __iter__(self) -> ReplayableStream:
        return self

    def __next__(self) -> Any:
        if self._committed:
            return next(self._call)
        while True:
            try:
                message = next(self._call)
            except grpc.RpcError as exc:
                outcome = self._restart(self._tried, exc, self._attempt)
                if outcome is None:
                    raise
                self._call, self._attempt = outcome
                continue
            self._committed = True
            return message

    def cancel(self) -> bool:
        self._committed = True
        return bool(self._call.cancel())

    def debug_error_string(self) -> Any:
        return self._call.debug_error_string()
