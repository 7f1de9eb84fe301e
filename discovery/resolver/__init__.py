"""The resolver interface: builders keyed by URI scheme, resolvers that push states.

Modelled on grpc-go's ``resolver`` package. A :class:`ResolverBuilder` is
registered under a scheme (entry-point group ``discovery.resolvers``). For each
channel it builds one :class:`Resolver`, which watches its registry on its own
thread (or timer) and pushes *complete, immutable* :class:`ResolverState`
values, or errors, to a :class:`ResolverListener`. A resolver never touches
grpc channels.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol

from ..address import ResolverState
from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ResolverError
from ..target import Target

__all__ = [
    "PollingResolver",
    "Resolver",
    "ResolverBuilder",
    "ResolverListener",
    "ResolverOptions",
    "WatchContext",
    "WatchResolver",
    "shutdown_socket",
]



class ResolverListener(Protocol):
    """Receives what a resolver finds. Both methods are thread-safe and never block."""

    def update_state(self, state: ResolverState) -> None:
        """Replace the whole address set with ``state``."""
        ...

    def report_error(self, error: ResolverError) -> None:
        """Record a failure; the last good state stays in use."""
        ...


@dataclass(frozen=True, slots=True)
class ResolverOptions:
    """What a builder gets beside the target.

    ``config`` is the plugin's own table from the config file
    (``[services.x.resolver]``) or the ``resolver_config=`` argument; a builder
    validates it and raises :class:`~discovery.errors.ConfigError` naming the
    key. ``clock`` is injected so tests can drive intervals and backoff.
    """

    config: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    clock: Clock = SYSTEM_CLOCK


class Resolver(abc.ABC):
    """Watches one target. Methods are thread-safe and must not block for long."""

    def resolve_now(self) -> None:  # noqa: B027 - optional hook, empty by design
        """Hint that the channel saw a failure and a fresh lookup may help.

        Resolvers may rate-limit or ignore it. Never blocks.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching. After it returns the listener gets no more calls."""


class ResolverBuilder(abc.ABC):
    """Builds resolvers for one URI scheme.

    Subclasses set ``scheme``; the registry instantiates the class with no
    arguments when loading it from an entry point.
    """

    scheme: ClassVar[str] = ""

    @abc.abstractmethod
    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> Resolver:
        """Validate ``target`` and ``options`` and start a resolver.

        Raises :class:`~discovery.errors.TargetError` or
        :class:`~discovery.errors.ConfigError` before starting anything if either
        is wrong. Called once per channel; may block briefly (no network I/O).
        """

    def check(self, target: Target, options: ResolverOptions) -> None:  # noqa: B027 - optional hook
        """Validate ``target`` and ``options`` without starting anything.

        Config files call it for every service they define, so one bad entry
        fails the whole file before any channel exists. Raise
        :class:`~discovery.errors.ConfigError` naming the key. The default
        accepts everything (``build`` still validates).
        """

    def default_authority(self, target: Target) -> str | None:
        """The ``:authority`` backends should see, or None for each address's own.

        gRPC uses the target's endpoint (``orders.internal:50051``); that is also
        the name TLS verifies. Resolvers whose endpoint is not a service name
        (address lists) return None.
        """
        return target.endpoint


# The helpers build on the interface above, so they are imported after it.
from .helpers import PollingResolver, WatchContext, WatchResolver, shutdown_socket  # noqa: E402
