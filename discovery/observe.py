"""Process-wide observation hooks: what metrics and tracing see of every channel.

An :class:`Observer` hears about every RPC attempt of every channel, sync and
asyncio alike, from the one place where an attempt's books open and close
(:mod:`discovery.calls.books`). :mod:`discovery.metrics` and
:mod:`discovery.otel` are observers; :func:`add_observer` turns one on for
channels that already exist too, because the hook is process-wide.

The hot path pays for this only when someone observes: with no observer
installed, opening and closing an attempt's books costs one read of a
module global more than before.

Control-plane facts (resolver updates and errors, ejections, each backend's
state and in-flight count) are not pushed anywhere: every channel keeps them
as plain numbers (:class:`ChannelStats`, ``ChannelCore.backends``) and a
collector reads them when asked, through :func:`channels`, a weak registry of
the channels that are open.

Threading: ``attempt_started`` runs on the thread (and in the
:mod:`contextvars` context) that starts the attempt: the caller's thread for
blocking calls and streams, the event loop for asyncio, ``.future()`` and
hedged calls (where the caller's context is carried along).
``attempt_ended`` runs on any thread. Neither may block. An observer that
raises is logged and otherwise ignored.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .attempts import Attempts
    from .backend import Backend
    from .balancer import DoneInfo
    from .core import ChannelCore

__all__ = ["ChannelStats", "ObservabilityConfig", "Observer", "add_observer", "apply_observability", "channels",
           "observers", "parse_observability", "register_channel", "remove_observer",
           "stop_metrics_servers"]


class Observer:
    """Hears about every RPC attempt of every channel. Subclass and override what you need.

    Both methods must be quick and must not block: they run inside every RPC.
    """

    def attempt_started(self, core: ChannelCore, backend: Backend, method: str, att: Attempts | None) -> None:
        """An attempt of ``method`` was just counted in flight on ``backend``.

        ``att`` is the RPC's attempt state, or None for a first attempt that
        has none (the fast path of a call without retry policy): ``len(att.tried)``
        backends were picked before this one; ``att.hedging`` tells a hedge,
        ``att.last_transparent`` a transparent re-pick from a retry.
        """

    def attempt_ended(self, core: ChannelCore, backend: Backend, method: str, info: DoneInfo) -> None:
        """The attempt ended with ``info`` (its ``trailing_metadata`` may be empty)."""


class ChannelStats:
    """Control-plane counters one channel keeps whether or not anyone reads them.

    Written on the channel's control thread only; read from any thread
    (single int reads and dict copies under the GIL are consistent enough
    for metrics).
    """

    __slots__ = ("ejections", "resolver_errors", "resolver_updates")

    def __init__(self) -> None:
        self.resolver_updates = 0
        self.resolver_errors = 0
        # backend address -> times a policy ejected it (while it is in the address set).
        self.ejections: dict[str, int] = {}


_lock = threading.Lock()
_observers: tuple[Observer, ...] = ()
_channels: weakref.WeakSet[ChannelCore] = weakref.WeakSet()


class _FanOut(Observer):
    """Several observers behind one hook."""

    __slots__ = ("_all",)

    def __init__(self, observers: tuple[Observer, ...]) -> None:
        self._all = observers

    def attempt_started(self, core: ChannelCore, backend: Backend, method: str, att: Attempts | None) -> None:
        for o in self._all:
            o.attempt_started(core, backend, method, att)

    def attempt_ended(self, core: ChannelCore, backend: Backend, method: str, info: DoneInfo) -> None:
        for o in self._all:
            o.attempt_ended(core, backend, method, info)


def _install() -> None:
    from .calls import books

    obs = _observers
    books.set_observer(None if not obs else obs[0] if len(obs) == 1 else _FanOut(obs))


def add_observer(observer: Observer) -> None:
    """Start calling ``observer`` for every attempt of every channel, existing ones included.

    Adding the same observer twice is a no-op. Thread-safe.
    """
    global _observers
    if not isinstance(observer, Observer):
        raise TypeError(f"expected a discovery.observe.Observer, got {type(observer).__name__}")
    with _lock:
        if observer in _observers:
            return
        _observers = (*_observers, observer)
        _install()


def remove_observer(observer: Observer) -> None:
    """Stop calling ``observer``; a no-op if it was not added. Thread-safe.

    Attempts already under way may still report to it once.
    """
    global _observers
    with _lock:
        if observer not in _observers:
            return
        _observers = tuple(o for o in _observers if o is not observer)
        _install()


def observers() -> tuple[Observer, ...]:
    """The observers installed now, in the order they were added."""
    return _observers


def register_channel(core: ChannelCore) -> None:
    """Called by every channel as it is made; the registry holds it weakly."""
    with _lock:
        _channels.add(core)


def channels() -> Iterator[ChannelCore]:
    """The channels that are open now (closed ones are skipped), in no particular order."""
    with _lock:
        found = list(_channels)
    return (c for c in found if not c.closed)



# -- the [observability] table of a config file ----------------------------------


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """A config file's ``[observability]`` table, validated.

    ``prometheus`` turns on :func:`discovery.metrics.enable_prometheus` (the
    default registry); ``prometheus_port`` also serves ``/metrics`` there on
    ``prometheus_addr`` (default 127.0.0.1); ``tracing`` turns on
    :func:`discovery.otel.enable_tracing`.
    """

    prometheus: bool = False
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    tracing: bool = False


_OBS_KEYS = {"prometheus", "prometheus_port", "prometheus_addr", "tracing"}


def parse_observability(raw: Any, source: str | None = None, key_path: str = "observability"
                        ) -> ObservabilityConfig:
    """Validate an ``[observability]`` table; ConfigError names the key and what was expected."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a table, got {raw!r}", source=source, key_path=key_path)
    unknown = set(raw) - _OBS_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected some of {sorted(_OBS_KEYS)}",
                          source=source, key_path=key_path)
    for key in ("prometheus", "tracing"):
        if key in raw and not isinstance(raw[key], bool):
            raise ConfigError(f"expected true or false, got {raw[key]!r}", source=source,
                              key_path=f"{key_path}.{key}")
    port = raw.get("prometheus_port")
    if port is not None and (not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536):
        raise ConfigError(f"expected a port number 1..65535, got {port!r}", source=source,
                          key_path=f"{key_path}.prometheus_port")
    addr = raw.get("prometheus_addr", "127.0.0.1")
    if not isinstance(addr, str) or not addr:
        raise ConfigError(f"expected an address to listen on, such as \"127.0.0.1\", got {addr!r}",
                          source=source, key_path=f"{key_path}.prometheus_addr")
    prometheus = bool(raw.get("prometheus", port is not None))
    if port is not None and not prometheus:
        raise ConfigError("prometheus_port needs prometheus = true", source=source,
                          key_path=f"{key_path}.prometheus_port")
    return ObservabilityConfig(prometheus, port, addr, bool(raw.get("tracing", False)))


# (addr, port) -> the HTTP server a config file started there.
_served: dict[tuple[str, int], Any] = {}


def apply_observability(cfg: ObservabilityConfig) -> None:
    """Turn on what ``cfg`` asks for (idempotent: a second channel from the same file changes nothing).

    Raises ImportError saying which extra to install when prometheus_client or
    opentelemetry-api is missing; OSError when the metrics port is taken.
    """
    if cfg.prometheus:
        from .metrics import enable_prometheus

        enable_prometheus()
        if cfg.prometheus_port is not None:
            from prometheus_client import start_http_server

            where = (cfg.prometheus_addr, cfg.prometheus_port)
            with _lock:
                if where not in _served:
                    server, _thread = start_http_server(cfg.prometheus_port, addr=cfg.prometheus_addr)
                    _served[where] = server
    if cfg.tracing:
        from .otel import enable_tracing

        enable_tracing()


def stop_metrics_servers() -> None:
    """Stop the ``/metrics`` HTTP servers config files started (``prometheus_port``). Blocks briefly."""
    with _lock:
        servers = list(_served.values())
        _served.clear()
    for server in servers:
        server.shutdown()
        server.server_close()
