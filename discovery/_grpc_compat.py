"""The few grpcio internals this library leans on, in one place.

grpcio's public API can only learn a sync channel's connectivity through
``Channel.subscribe``, which starts a polling thread per channel (and can miss
transitions, grpc/grpc#14498). At thousands of backends that is thousands of
threads, so the control loop reads the state directly instead, through the
same core call ``subscribe``'s poller uses. If a future grpcio moves it,
:func:`state_reader` fails loudly rather than guess.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio
from grpc import _common

__all__ = ["aio_state_reader", "state_reader"]

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
