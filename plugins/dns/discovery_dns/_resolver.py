"""The ``dns:`` resolver: A/AAAA or SRV lookups re-run when the shortest TTL expires."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import dns.resolver

from discovery.address import Address, ResolverState, format_host_port
from discovery.clock import Backoff, Clock
from discovery.errors import ResolverError
from discovery.resolver import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from discovery.target import Target

from ._config import DnsConfig, DnsTarget, parse_config, parse_target, service_domain
from ._lookup import Lookup, Querier, resolve_host_set, resolve_srv

__all__ = ["DnsResolver", "DnsResolverBuilder"]

# The resolver logger of the dns scheme (see the README, "Logging").
log = logging.getLogger("discovery.resolver.dns")


def _system_resolver() -> dns.resolver.Resolver:
    """dnspython's resolver configured from the system (``/etc/resolv.conf``)."""
    return dns.resolver.Resolver()


class DnsResolver(Resolver):
    """Watches one ``dns:`` target on its own daemon thread.

    Timing, all on the injected clock:

    - after a successful lookup, the next one runs when the shortest TTL of
      the records used expires, clamped to ``[min_interval, max_interval]``;
    - after an error (timeout, SERVFAIL, REFUSED, unreachable server,
      malformed answer) or an empty answer (NXDOMAIN, no records), retries
      follow a jittered exponential backoff from ``min_interval`` up to
      ``max_interval``;
    - :meth:`resolve_now` runs a lookup at once unless the last one ended
      less than ``min_interval`` ago, in which case it runs when that much
      time has passed: a storm of calls gives at most one lookup per
      ``min_interval``.

    ``lookups`` counts resolution rounds, ``queries`` single DNS queries.
    """

    def __init__(
        self,
        target: DnsTarget,
        config: DnsConfig,
        listener: ResolverListener,
        clock: Clock,
        *,
        resolver_factory: Callable[[], dns.resolver.Resolver] | None = None,
    ) -> None:
        self._target = target
        self._extra = {"target": target.display}  # on every log record (README, "Logging")
        self._config = config
        self._listener = listener
        self._clock = clock
        self._resolver_factory = resolver_factory
        self._querier: Querier | None = None
        self._lock = threading.Lock()  # guards the scheduling fields below
        self._emit_lock = threading.RLock()  # held while calling the listener; close() takes it
        self._wake = threading.Event()
        self._closed = False
        self._want_now = False
        self._last_end: float | None = None
        self._next_at: float | None = None
        self._lookups = 0
        self._backoff = Backoff(initial=config.min_interval, maximum=config.max_interval)
        self._last_state: ResolverState | None = None
        self._error_since_state = False
        self._thread = threading.Thread(target=self._run, name=f"discovery-dns {target.display}", daemon=True)

    # -- public ------------------------------------------------------------

    @property
    def target(self) -> DnsTarget:
        return self._target

    @property
    def config(self) -> DnsConfig:
        return self._config

    @property
    def lookups(self) -> int:
        """Resolution rounds run so far (an IP literal needs none)."""
        with self._lock:
            return self._lookups

    @property
    def queries(self) -> int:
        """Single DNS queries sent so far."""
        q = self._querier
        return 0 if q is None else q.queries

    @property
    def next_lookup_at(self) -> float | None:
        """When (on the resolver's clock) the next scheduled lookup runs; None if none."""
        with self._lock:
            return self._next_at

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (real time) for the thread to end after :meth:`close`; True if it did."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def resolve_now(self) -> None:
        with self._lock:
            if self._closed or self._target.literal:
                return
            self._want_now = True
        self._wake.set()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        wake = getattr(self._clock, "wake", None)
        if callable(wake):
            wake()
        # Wait out a listener call in progress: after this, none can start.
        with self._emit_lock:
            pass

    # -- thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            if self._target.literal:
                addr = Address(self._target.host, self._target.port or 443)
                self._emit_state(ResolverState((addr,)))
                while not self.closed:
                    self._clock.wait(self._wake, None)
                    self._wake.clear()
                return
            while self._wait_until_due():
                self._round()
        except BaseException:  # pragma: no cover - the loop itself catches everything
            log.exception("dns resolver thread for %s died", self._target.display, extra=self._extra)

    def _wait_until_due(self) -> bool:
        """Block until a lookup is due; False once closed."""
        while True:
            self._wake.clear()
            with self._lock:
                if self._closed:
                    return False
                now = self._clock.monotonic()
                due = self._next_at
                if self._last_end is None:
                    due = now
                elif self._want_now:
                    soonest = self._last_end + self._config.min_interval
                    due = soonest if due is None else min(due, soonest)
                if due is not None and now >= due:
                    self._want_now = False
                    self._lookups += 1
                    self._next_at = None
                    return True
                timeout = None if due is None else due - now
            self._clock.wait(self._wake, timeout)

    def _round(self) -> None:
        try:
            lookup = self._lookup()
        except ResolverError as err:
            self._schedule(self._retry_delay())
            log.debug("dns lookup of %s failed: %s", self._target.display, err, extra=self._extra)
            self._emit_error(err)
            return
        except Exception as exc:  # never let a bad answer kill the thread
            unexpected = ResolverError(
                f"DNS lookup of {self._target.display} failed unexpectedly: {type(exc).__name__}: {exc}"
            )
            unexpected.__cause__ = exc
            self._schedule(self._retry_delay())
            log.warning("%s", unexpected, exc_info=True, extra=self._extra)
            self._emit_error(unexpected)
            return
        if lookup.addresses:
            self._backoff.reset()
            ttl = lookup.ttl if lookup.ttl is not None else self._config.max_interval
            self._schedule(min(max(ttl, self._config.min_interval), self._config.max_interval))
            self._emit_state(ResolverState(lookup.addresses))
        else:
            # NXDOMAIN / no records: an answer, published as an empty set; keep asking with backoff.
            self._schedule(self._retry_delay())
            self._emit_state(ResolverState((), note=lookup.note))

    def _retry_delay(self) -> float:
        """Jittered exponential backoff, kept within [min_interval, max_interval]."""
        return min(max(self._backoff.next(), self._config.min_interval), self._config.max_interval)

    def _schedule(self, delay: float) -> None:
        with self._lock:
            self._last_end = self._clock.monotonic()
            self._next_at = self._last_end + delay

    def _querier_for(self) -> Querier:
        if self._querier is None:
            server = self._target.server
            if server is None:
                factory = self._resolver_factory or _system_resolver
                try:
                    res = factory()
                except Exception as exc:
                    raise ResolverError(f"cannot read the system DNS configuration: {exc}") from exc
                res.lifetime = self._config.timeout
                res.timeout = min(res.timeout, self._config.timeout)
                shown = ", ".join(str(ns) for ns in res.nameservers) or "the system resolver"
                self._querier = Querier(res, search=True, server=shown)
            else:
                res = dns.resolver.Resolver(configure=False)
                res.nameservers = [server[0]]
                res.port = server[1]
                res.timeout = self._config.timeout
                res.lifetime = self._config.timeout
                self._querier = Querier(res, search=False, server=format_host_port(*server))
        return self._querier

    def _lookup(self) -> Lookup:
        q = self._querier_for()
        t = self._target
        if t.srv:
            return resolve_srv(q, t.host, self._config.families)
        assert t.port is not None
        return resolve_host_set(q, t.host, t.port, self._config.families)

    def _emit_state(self, state: ResolverState) -> None:
        with self._emit_lock:
            if self.closed:
                return
            if state == self._last_state and not self._error_since_state:
                return  # nothing new to say
            self._last_state = state
            self._error_since_state = False
            try:
                self._listener.update_state(state)
            except Exception:
                log.exception("resolver listener failed on update_state for %s", self._target.display,
                              extra=self._extra)

    def _emit_error(self, err: ResolverError) -> None:
        with self._emit_lock:
            if self.closed:
                return
            self._error_since_state = True
            try:
                self._listener.report_error(err)
            except Exception:
                log.exception("resolver listener failed on report_error for %s", self._target.display,
                              extra=self._extra)


class DnsResolverBuilder(ResolverBuilder):
    """Builds :class:`DnsResolver` for ``dns:`` targets.

    ``dns:///host[:port]`` uses the system's DNS configuration;
    ``dns://SERVER[:PORT]/host[:port]`` asks that server (port 53 by default,
    IPv6 in brackets). The port defaults to 443; an IP literal resolves to
    itself without a query. ``dns:///_grpc._tcp.orders.internal`` (no port,
    first label starting with ``_``) is an SRV lookup.

    Options (``[services.x.resolver]``): ``server``, ``min_interval``,
    ``max_interval``, ``timeout``, ``srv`` and ``families``; see the README.
    """

    scheme = "dns"

    def __init__(self, *, resolver_factory: Callable[[], dns.resolver.Resolver] | None = None) -> None:
        #: How a resolver without an explicit server gets its dnspython resolver
        #: (default: the system configuration); tests point it at a local server.
        self.resolver_factory = resolver_factory

    def check(self, target: Target, options: ResolverOptions) -> None:
        parse_target(target, parse_config(options.config))

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> DnsResolver:
        config = parse_config(options.config)
        dns_target = parse_target(target, config)
        resolver = DnsResolver(dns_target, config, listener, options.clock, resolver_factory=self.resolver_factory)
        resolver.start()
        return resolver

    def default_authority(self, target: Target) -> str | None:
        """The endpoint as written; for an SRV name the domain it serves (``orders.internal``).

        ``_grpc._tcp.orders.internal`` is not a name a certificate carries, so
        TLS and ``:authority`` use the RFC 2782 *Name* part instead.
        """
        endpoint = target.endpoint
        host = endpoint.rstrip(".")
        if host.startswith("_") and ":" not in host:
            return service_domain(host)
        if endpoint.count(":") > 1 and not endpoint.startswith("["):
            return f"[{endpoint}]"  # a bare IPv6 literal
        return endpoint
