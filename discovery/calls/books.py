"""The books of one attempt: in flight on its backend, then reported once.

An attempt starts with :func:`begin_attempt` (which refuses a backend that
closed under the RPC: the caller re-picks) and ends with exactly one
:func:`end_attempt`, on any thread. A picker that gave no ``done`` callback
costs one attribute test here.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import grpc

from .._calls import LocalRpcError
from ..balancer import NOT_ATTEMPTED, DoneInfo, Drop, PickResult

if TYPE_CHECKING:
    from ..attempts import Attempts
    from ..core import ChannelCore
    from ..observe import Observer

__all__ = ["begin_attempt", "deadline_after", "dropped", "end_attempt", "metadata_tuple", "observer", "set_observer",
           "unused"]

log = logging.getLogger("discovery.channel")

_OK = grpc.StatusCode.OK

# -- observability hook (discovery.observe) ------------------------------------
# The process-wide observer (metrics, tracing), or None. Read once per attempt
# start and end: with nobody observing, that one global read is all the hot
# path pays (the drivers' hot paths read it as ``books.observer`` and call
# begin_attempt/end_attempt only when it is set). Set only through
# discovery.observe.add_observer/remove_observer.
observer: Observer | None = None


def set_observer(new: Observer | None) -> None:
    """Install the one observer every attempt reports to (see :mod:`discovery.observe`)."""
    global observer
    observer = new
# -- end of the observability hook -----------------------------------------------


def metadata_tuple(md: Any) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata from grpcio (a tuple, a grpc.aio.Metadata, or None) as a tuple of pairs."""
    if not md:
        return ()
    # Both iterate as (key, value) pairs; a grpc.aio.Metadata's items() would give
    # (key, [values]) instead, and merge repeated keys.
    return tuple((k, v) for k, v in md)


def begin_attempt(core: ChannelCore, pr: PickResult, method: str, att: Attempts | None) -> bool:
    """Count an attempt of ``method`` in flight on ``pr``'s backend; False if that backend is
    already closed (the caller re-picks). Call before adding the backend to ``att.tried``."""
    b = pr.subconn.backend
    if not b.begin():
        return False
    obs = observer
    if obs is not None:
        try:
            obs.attempt_started(core, b, method, att)
        except Exception:
            log.exception("observer %r failed", obs, extra={"target": core.target, "backend": b.addr})
    return True


def end_attempt(core: ChannelCore, pr: PickResult, t0: float, code: grpc.StatusCode, details: str | None,
                trailing: Any = (), method: str = "") -> None:
    """The attempt of ``method`` that ``pr`` started at ``t0`` (``time.perf_counter``) ended with ``code``."""
    b = pr.subconn.backend
    b.end()
    if code is not _OK:
        core.attempt_failed(b, code, details)
    done = pr.done
    obs = observer
    if done is None and obs is None:
        return
    info = DoneInfo(code, time.perf_counter() - t0, metadata_tuple(trailing))
    if done is not None:
        try:
            done(info)
        except Exception:
            log.exception("done callback of %r failed", pr, extra={"target": core.target, "backend": b.addr})
    if obs is not None:
        try:
            obs.attempt_ended(core, b, method, info)
        except Exception:
            log.exception("observer %r failed", obs, extra={"target": core.target, "backend": b.addr})


def deadline_after(timeout: float | None, t0: float) -> float | None:
    """The deadline (on ``time.monotonic``) of an RPC with ``timeout`` whose first attempt
    started at ``t0`` (``time.perf_counter``, as :func:`end_attempt` takes it). The hot
    paths read only the attempt's clock and derive the deadline when it is needed."""
    return None if timeout is None else time.monotonic() + timeout - (time.perf_counter() - t0)


def unused(pr: PickResult) -> None:
    """``pr`` was picked but no attempt was sent with it: its ``done`` gets :data:`NOT_ATTEMPTED`."""
    done = pr.done
    if done is not None:
        try:
            done(NOT_ATTEMPTED)
        except Exception:
            log.exception("done callback of %r failed", pr)


def dropped(drop: Drop) -> LocalRpcError:
    """The RPC's error for a picker's :class:`~discovery.balancer.Drop`: failed here, never sent."""
    return LocalRpcError(drop.code, drop.details)
