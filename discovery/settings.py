"""The control plane's own knobs (not grpc channel arguments), validated when built."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .clock import SYSTEM_CLOCK, Clock
from .errors import ConfigError

__all__ = ["MAX_CONNECTIONS_PER_BACKEND", "MIN_POLL", "ChannelSettings"]

MAX_CONNECTIONS_PER_BACKEND = 64

# Below a millisecond the control thread would do little but poll: slow_poll=0
# burns a whole core. A millisecond is already far below anything useful.
MIN_POLL = 0.001


def _seconds(name: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"expected a finite number of seconds, got {value!r}", source="ChannelSettings",
                          key_path=name)
    if value < minimum:
        raise ConfigError(f"must be >= {minimum:g} seconds, got {value!r}", source="ChannelSettings", key_path=name)
    return float(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelSettings:
    """Knobs of the control plane (not grpc channel arguments).

    ``fast_poll`` is how often backends in a transition (CONNECTING, or asked to
    connect) are re-read; ``slow_poll`` how often every backend is (this bounds
    how late a health-check or connection change is seen); both at least 1 ms.
    ``drain_grace`` is how long a removed backend may finish its in-flight RPCs
    (>= 0). ``clock`` is what policies (ejection times) and resolvers
    (re-resolution) measure time with. All in seconds, finite; anything else is
    a :class:`~discovery.errors.ConfigError` here, when the settings are made.
    ``connections_per_backend`` is how many grpc channels (HTTP/2
    connections) each backend gets, 1..64; each RPC goes to the least-loaded
    one (:mod:`discovery.pool`).
    Immutable, so one instance can be shared by many channels and threads.
    """

    fast_poll: float = 0.02
    slow_poll: float = 0.25
    drain_grace: float = 30.0
    clock: Clock = SYSTEM_CLOCK
    connections_per_backend: int = 1

    def __post_init__(self) -> None:
        n = self.connections_per_backend
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CONNECTIONS_PER_BACKEND:
            raise ConfigError(f"expected an integer 1..{MAX_CONNECTIONS_PER_BACKEND}, got {n!r}",
                              source="ChannelSettings", key_path="connections_per_backend")
        object.__setattr__(self, "fast_poll", _seconds("fast_poll", self.fast_poll, MIN_POLL))
        object.__setattr__(self, "slow_poll", _seconds("slow_poll", self.slow_poll, MIN_POLL))
        object.__setattr__(self, "drain_grace", _seconds("drain_grace", self.drain_grace, 0.0))
        if not (callable(getattr(self.clock, "monotonic", None)) and callable(getattr(self.clock, "wait", None))):
            raise ConfigError(f"expected a discovery.clock.Clock (monotonic() and wait()), got {self.clock!r}",
                              source="ChannelSettings", key_path="clock")
