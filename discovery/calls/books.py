"""The books of one attempt: in flight on its backend, then reported once.

An attempt starts with :func:`begin_attempt` (which refuses a backend that
closed under the RPC: the caller re-picks) and ends with exactly one
:func:`end_attempt`, on any thread. A picker that gave no ``done`` callback
costs one attribute test here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

from .._calls import LocalRpcError
from ..balancer import NOT_ATTEMPTED, DoneInfo, Drop, PickResult

if TYPE_CHECKING:
    from ..core import ChannelCore

__all__ = ["dropped", "end_attempt", "metadata_tuple", "unused"]

log = logging.getLogger("discovery.channel")

_OK = grpc.StatusCode.OK


def metadata_tuple(md: Any) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata from grpcio (a tuple, a grpc.aio.Metadata, or None) as a tuple of pairs."""
    if not md:
        return ()
    return tuple((k, v) for k, v in (md if isinstance(md, Sequence) else md.items()))


def end_attempt(core: ChannelCore, pr: PickResult, t0: float, code: grpc.StatusCode, details: str | None,
                trailing: Any = ()) -> None:
    """The attempt that ``pr`` started at ``t0`` (``time.perf_counter``) ended with ``code``."""
    b = pr.subconn.backend
    b.end()
    if code is not _OK:
        core.attempt_failed(b, code, details)
    done = pr.done
    if done is not None:
        try:
            done(DoneInfo(code, time.perf_counter() - t0, metadata_tuple(trailing)))
        except Exception:
            log.exception("done callback of %r failed", pr)


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
