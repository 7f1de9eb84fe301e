"""Knobs of a balancing channel's control plane (not grpc channel arguments)."""

from __future__ import annotations

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["ChannelSettings"]


class ChannelSettings:
    """Knobs of the control plane (not grpc channel arguments).

    ``fast_poll`` is how often backends in a transition (CONNECTING, or asked to
    connect) are re-read; ``slow_poll`` how often every backend is (this bounds
    how late a health-check or connection change is seen); ``drain_grace`` how
    long a removed backend may finish its in-flight RPCs. ``clock`` is what
    policies (ejection times) and resolvers (re-resolution) measure time with.
    """

    __slots__ = ("clock", "drain_grace", "fast_poll", "slow_poll")

    def __init__(
        self,
        *,
        fast_poll: float = 0.02,
        slow_poll: float = 0.25,
        drain_grace: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.fast_poll = fast_poll
        self.slow_poll = slow_poll
        self.drain_grace = drain_grace
        self.clock = clock
