"""Prometheus metrics for every discovery channel (optional extra ``prometheus``).

::

    import discovery.metrics
    discovery.metrics.enable_prometheus()      # the default prometheus_client registry
    prometheus_client.start_http_server(9464, addr="127.0.0.1")

From then on every channel of the process, sync and asyncio, including the
ones made before the call, is measured:

=====================================  ===============================  ==========================================
metric                                 labels                           what
=====================================  ===============================  ==========================================
``discovery_rpcs_total``               target, backend, method, code    attempts that ended (one per attempt: a
                                                                        retried RPC counts each try); ``code`` is
                                                                        the status name, e.g. ``OK``
``discovery_rpc_duration_seconds``     target, backend, method          histogram of attempt latency, from the
                                                                        pick to the attempt's end
``discovery_backends``                 target, state                    backends per connectivity state (the
                                                                        names of ``grpc.ChannelConnectivity``)
``discovery_backend_in_flight``        target, backend                  attempts in flight on each backend
``discovery_resolver_updates_total``   target                           address sets the resolver delivered
``discovery_resolver_errors_total``    target                           errors the resolver reported
``discovery_ejections_total``          target, backend                  ejections by an outlier-detection policy
=====================================  ===============================  ==========================================

``method`` is as grpc spells it (``/pkg.Service/Method``), ``backend`` is
``host:port``. Channels with the same target add up. The per-attempt
metrics are read from the balancer contract's :class:`~discovery.balancer.DoneInfo`
through :mod:`discovery.observe` (no interceptor); the others are read from
the channels when Prometheus scrapes. Series of a backend that left the
address set (and of a closed channel) are dropped at the next scrape.

A config file turns it on too: ``[observability]`` with ``prometheus = true``
(and ``prometheus_port = 9464`` to serve ``/metrics``), applied by
:func:`discovery.channel_from_config` (see :func:`discovery.observe.parse_observability`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "discovery.metrics needs prometheus_client: pip install 'grpc-discovery[prometheus]'"
    ) from exc

import grpc

from . import observe

if TYPE_CHECKING:
    from .backend import Backend
    from .balancer import DoneInfo
    from .core import ChannelCore

__all__ = ["DEFAULT_BUCKETS", "PrometheusMetrics", "disable_prometheus", "enable_prometheus", "prometheus_enabled"]

# Attempt latencies on a LAN run from a fraction of a millisecond to seconds.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_STATES = tuple(s.name for s in grpc.ChannelConnectivity)

_lock = threading.Lock()
_active: PrometheusMetrics | None = None


class PrometheusMetrics(observe.Observer):
    """The metrics of every channel in one Prometheus registry. Made by :func:`enable_prometheus`.

    ``attempt_ended`` runs inside every RPC on any thread: one dict lookup,
    a counter increment and a histogram observation (prometheus_client's
    own short locks).
    """

    def __init__(self, registry: CollectorRegistry, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.registry = registry
        # Not registered themselves: the collector below hands their samples
        # over, after dropping series of backends that are gone.
        self._rpcs = Counter("discovery_rpcs", "RPC attempts that ended, by backend and status code",
                             ("target", "backend", "method", "code"), registry=None)
        self._duration = Histogram("discovery_rpc_duration_seconds",
                                   "Latency of RPC attempts from the pick to their end",
                                   ("target", "backend", "method"), registry=None, buckets=tuple(buckets))
        # (target, backend, method, code) -> (counter child, histogram child): one lookup per attempt.
        self._children: dict[tuple[str, str, str, grpc.StatusCode], tuple[Any, Any]] = {}
        self._children_lock = threading.Lock()
        self._collector = _Collector(self)

    # -- Observer ------------------------------------------------------------------

    def attempt_ended(self, core: ChannelCore, backend: Backend, method: str, info: DoneInfo) -> None:
        key = (core.target, backend.addr, method, info.code)
        pair = self._children.get(key)
        if pair is None:
            pair = self._child(key)
        pair[0].inc()
        pair[1].observe(info.latency)

    def _child(self, key: tuple[str, str, str, grpc.StatusCode]) -> tuple[Any, Any]:
        target, backend, method, code = key
        with self._children_lock:
            pair = self._children.get(key)
            if pair is None:
                pair = (self._rpcs.labels(target, backend, method, code.name),
                        self._duration.labels(target, backend, method))
                self._children[key] = pair
            return pair

    # -- scrape ----------------------------------------------------------------------

    def _prune(self, live: set[tuple[str, str]]) -> None:
        """Forget the series of backends that no open channel has any more."""
        with self._children_lock:
            gone = [k for k in self._children if (k[0], k[1]) not in live]
            for k in gone:
                del self._children[k]
                target, backend, method, code = k
                self._rpcs.remove(target, backend, method, code.name)
                # The histogram child is shared by every code of (target, backend, method).
                if all(other[:3] != k[:3] for other in self._children):
                    self._duration.remove(target, backend, method)

    def collect(self) -> Iterable[Metric]:
        """Every metric, read now (what the registry calls on a scrape)."""
        return self._collector.collect()

    def register(self) -> None:
        self.registry.register(self._collector)

    def unregister(self) -> None:
        self.registry.unregister(self._collector)


class _Collector(Collector):
    def __init__(self, owner: PrometheusMetrics) -> None:
        self._owner = owner

    def describe(self) -> Iterable[Metric]:
        # What the registry checks for clashing names, without reading any channel.
        yield from self._owner._rpcs.describe()
        yield from self._owner._duration.describe()
        for name in ("discovery_backends", "discovery_backend_in_flight"):
            yield GaugeMetricFamily(name, "")
        for name in ("discovery_resolver_updates", "discovery_resolver_errors", "discovery_ejections"):
            yield CounterMetricFamily(name, "")

    def collect(self) -> Iterable[Metric]:
        owner = self._owner
        backends = GaugeMetricFamily("discovery_backends", "Backends of each target by connectivity state",
                                     labels=("target", "state"))
        in_flight = GaugeMetricFamily("discovery_backend_in_flight", "RPC attempts in flight on each backend",
                                      labels=("target", "backend"))
        updates = CounterMetricFamily("discovery_resolver_updates", "Address sets the resolver delivered",
                                      labels=("target",))
        errors = CounterMetricFamily("discovery_resolver_errors", "Errors the resolver reported",
                                     labels=("target",))
        ejections = CounterMetricFamily("discovery_ejections", "Backends ejected by outlier detection",
                                        labels=("target", "backend"))
        by_state: dict[str, dict[str, int]] = {}
        flights: dict[tuple[str, str], int] = {}
        per_target: dict[str, list[int]] = {}
        ejected: dict[tuple[str, str], int] = {}
        live: set[tuple[str, str]] = set()
        for core in observe.channels():
            target = core.target
            states = by_state.setdefault(target, dict.fromkeys(_STATES, 0))
            for b in core.manager.backends:
                states[b.state.name] += 1
                key = (target, b.addr)
                flights[key] = flights.get(key, 0) + b.in_flight
                live.add(key)
            # Backends still draining after removal finish their RPCs: keep their series until then.
            live.update((target, b.addr) for b in core.manager.draining)
            counts = per_target.setdefault(target, [0, 0])
            counts[0] += core.stats.resolver_updates
            counts[1] += core.stats.resolver_errors
            for addr, n in list(core.stats.ejections.items()):
                ejected[(target, addr)] = ejected.get((target, addr), 0) + n
        for target, states in by_state.items():
            for state, n in states.items():
                backends.add_metric((target, state), n)
        for key, n in flights.items():
            in_flight.add_metric(key, n)
        for target, (u, e) in per_target.items():
            updates.add_metric((target,), u)
            errors.add_metric((target,), e)
        for key, n in ejected.items():
            ejections.add_metric(key, n)
        owner._prune(live)
        yield from owner._rpcs.collect()
        yield from owner._duration.collect()
        yield from (backends, in_flight, updates, errors, ejections)


def enable_prometheus(registry: CollectorRegistry | None = None, *,
                      buckets: Sequence[float] = DEFAULT_BUCKETS) -> PrometheusMetrics:
    """Measure every channel of the process into ``registry`` (default: prometheus_client's ``REGISTRY``).

    Covers channels made before and after the call, sync and asyncio.
    Idempotent for the same registry; with another registry the metrics move
    there. Thread-safe; returns at once. Serve them with prometheus_client
    (``start_http_server``, ``make_wsgi_app``...).
    """
    global _active
    reg = REGISTRY if registry is None else registry
    if not isinstance(reg, CollectorRegistry):
        raise TypeError(f"expected a prometheus_client.CollectorRegistry, got {type(reg).__name__}")
    if not buckets or any(not isinstance(b, int | float) or isinstance(b, bool) for b in buckets):
        raise TypeError(f"buckets must be a non-empty sequence of numbers, got {buckets!r}")
    with _lock:
        if _active is not None:
            if _active.registry is reg:
                return _active
            _disable_locked()
        metrics = PrometheusMetrics(reg, buckets)
        metrics.register()
        observe.add_observer(metrics)
        _active = metrics
        return metrics


def disable_prometheus() -> None:
    """Stop measuring and take the metrics out of their registry. Idempotent; thread-safe."""
    with _lock:
        _disable_locked()


def prometheus_enabled() -> PrometheusMetrics | None:
    """The active metrics, or None."""
    return _active


def _disable_locked() -> None:
    global _active
    if _active is None:
        return
    observe.remove_observer(_active)
    _active.unregister()
    _active = None
