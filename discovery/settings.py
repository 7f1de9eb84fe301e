"""Knobs of a balancing channel's control plane (not grpc channel arguments)."""

from __future__ import annotations

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError

__all__ = ["MAX_CONNECTIONS_PER_BACKEND", "ChannelSettings"]

MAX_CONNECTIONS_PER_BACKEND = 64


class ChannelSettings:
    """Knobs of the control plane (not grpc channel arguments).

    ``fast_poll`` is how often backends in a transition (CONNECTING, or asked to
    connect) are re-read; ``slow_poll`` how often every backend is (this bounds
    how late a health-check or connection change is seen); ``drain_grace`` how
    long a removed backend may finish its in-flight RPCs. ``clock`` is what
    policies (ejection times) and resolvers (re-resolution) measure time with.
    ``connections_per_backend`` is how many grpc channels (HTTP/2 connections)
    each backend gets, 1..64; each RPC goes to the least-loaded one
    (:mod:`discovery.pool`).
    """

    __slots__ = ("clock", "connections_per_backend", "drain_grace", "fast_poll", "slow_poll")

    def __init__(
        self,
        *,
        fast_poll: float = 0.02,
        slow_poll: float = 0.25,
        drain_grace: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        connections_per_backend: int = 1,
    ) -> None:
        n = connections_per_backend
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CONNECTIONS_PER_BACKEND:
            raise ConfigError(f"expected an integer 1..{MAX_CONNECTIONS_PER_BACKEND}, got {n!r}",
                              key_path="connections_per_backend")
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self.drain_grace = drain_grace
        self.clock = clock
        self.connections_per_backend = n

    def replace(self, **changes: object) -> ChannelSettings:
        """A copy with ``changes`` applied (the constructor's keyword arguments)."""
        values: dict[str, object] = {name: getattr(self, name) for name in self.__slots__}
        values.update(changes)
        return ChannelSettings(**values)  # type: ignore[arg-type]
