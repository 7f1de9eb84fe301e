"""The ``dns:`` resolver: A/AAAA or SRV lookups re-run when the shortest TTL expires."""

from __future__ import annotations

import math
from collections.abc import Callable

import dns.resolver

from discovery.address import Address, ResolverState, format_host_port
from discovery.clock import Backoff, Clock
from discovery.errors import ResolverError
from discovery.resolver import PollingResolver, ResolverBuilder, ResolverListener, ResolverOptions
from discovery.target import Target

from . import _hosts
from ._config import DEFAULT_PORT, DnsConfig, DnsTarget, parse_config, parse_target, service_domain
from ._hosts import HostsFile
from ._lookup import Lookup, Querier, resolve_host_set, resolve_srv

__all__ = ["DnsResolver", "DnsResolverBuilder"]


def _system_resolver() -> dns.resolver.Resolver:
    """dnspython's resolver configured from the system (``/etc/resolv.conf``)."""
    return dns.resolver.Resolver()


class _CappedBackoff(Backoff):
    """Backoff whose jittered delay never exceeds ``maximum`` (``max_interval`` is a promise)."""

    def next(self) -> float:
        return min(Backoff.next(self), self.maximum)


class DnsResolver(PollingResolver):
    """Watches one ``dns:`` target on the core's polling helper (one daemon thread).

    Timing, all on the injected clock:

    - after an answer with addresses, the next lookup runs when the shortest
      TTL of the records used expires, clamped to ``[min_interval, max_interval]``;
    - after an empty answer (NXDOMAIN, no records), published as an empty set
      with a note, and after an error (timeout, SERVFAIL, REFUSED, unreachable
      server, malformed answer), which keeps the last good set, lookups are
      retried with jittered exponential backoff from ``min_interval`` up to
      ``max_interval``;
    - :meth:`resolve_now` runs a lookup at once unless the last one ended
      less than ``min_interval`` ago, in which case it runs when that much
      time has passed: a storm of calls gives at most one lookup per
      ``min_interval``. It does not cut an error backoff short.

    An IP literal resolves to itself once, without a query. ``lookups``
    counts resolution rounds, ``queries`` single DNS queries.
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
        self._resolver_factory = resolver_factory
        self._querier: Querier | None = None
        self._lookups = 0
        # Set by each lookup and read by the interval function right after it, on the same thread.
        self._ttl: float | None = None
        self._empty_backoff = _CappedBackoff(initial=config.min_interval, maximum=config.max_interval)
        super().__init__(
            listener,
            self._lookup_state,
            name="dns",
            clock=clock,
            interval=self._interval,
            min_interval=config.min_interval,
            backoff=_CappedBackoff(initial=config.min_interval, maximum=config.max_interval),
        )

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
        return self._lookups

    @property
    def queries(self) -> int:
        """Single DNS queries sent so far."""
        q = self._querier
        return 0 if q is None else q.queries

    def resolve_now(self) -> None:
        if not self._target.literal:  # an IP literal has nothing to look up
            super().resolve_now()

    def __repr__(self) -> str:
        return f"<DnsResolver {self._target.display} {'closed' if self.closed else 'open'}>"

    # -- on the helper's thread ---------------------------------------------------

    def _lookup_state(self) -> ResolverState:
        t = self._target
        if t.literal:
            return ResolverState((Address(t.host, t.port or DEFAULT_PORT),))
        self._lookups += 1
        try:
            lookup = self._lookup()
        except ResolverError:
            raise
        except Exception as exc:  # a surprise from dnspython or a bug: reported, never fatal
            raise ResolverError(
                f"DNS lookup of {t.display} failed unexpectedly: {type(exc).__name__}: {exc}"
            ) from exc
        self._ttl = lookup.ttl
        return ResolverState(lookup.addresses, note=lookup.note)

    def _interval(self, state: ResolverState) -> float:
        if self._target.literal:
            return math.inf
        if not state.addresses:
            # NXDOMAIN / no records: an answer, published as an empty set; keep asking with backoff.
            return self._empty_backoff.next()
        self._empty_backoff.reset()
        ttl = self._ttl if self._ttl is not None else self._config.max_interval
        return min(max(ttl, self._config.min_interval), self._config.max_interval)

    def _querier_for(self) -> Querier:
        if self._querier is None:
            server = self._target.server
            if server is None:
                path = self._config.hosts_file
                hosts = HostsFile(_hosts.DEFAULT_HOSTS_FILE if path is None else path) if path != "" else None
                self._querier = Querier(self._system_dns, search=True, hosts=hosts)
            else:
                self._querier = Querier(lambda: self._explicit_dns(server), search=False)
        return self._querier

    def _system_dns(self) -> tuple[dns.resolver.Resolver, str]:
        factory = self._resolver_factory or _system_resolver
        try:
            res = factory()
        except Exception as exc:
            raise ResolverError(f"cannot read the system DNS configuration: {exc}") from exc
        res.lifetime = self._config.timeout
        res.timeout = min(res.timeout, self._config.timeout)
        return res, ", ".join(str(ns) for ns in res.nameservers) or "the system resolver"

    def _explicit_dns(self, server: tuple[str, int]) -> tuple[dns.resolver.Resolver, str]:
        # Only this server: no resolv.conf, no search list, no hosts file.
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [server[0]]
        res.port = server[1]
        res.timeout = self._config.timeout
        res.lifetime = self._config.timeout
        return res, format_host_port(*server)

    def _lookup(self) -> Lookup:
        q = self._querier_for()
        t = self._target
        if t.srv:
            return resolve_srv(q, t.host, self._config.families, all_tiers=self._config.srv_tiers == "all")
        assert t.port is not None
        return resolve_host_set(q, t.host, t.port, self._config.families)


class DnsResolverBuilder(ResolverBuilder):
    """Builds :class:`DnsResolver` for ``dns:`` targets.

    ``dns:///host[:port]`` uses the system's configuration: a name the hosts
    file (``/etc/hosts``, or the ``hosts_file`` option) lists is answered from
    it, as the system resolver does, and other names are asked of the DNS
    servers in ``/etc/resolv.conf``. ``dns://SERVER[:PORT]/host[:port]`` asks
    that server only (port 53 by default, IPv6 in brackets), never the hosts
    file. The port defaults to 443; an IP literal resolves to itself without
    a query. ``dns:///_grpc._tcp.orders.internal`` (no port, first label
    starting with ``_``) is an SRV lookup.

    Options (``[services.x.resolver]``): ``server``, ``min_interval``,
    ``max_interval``, ``timeout``, ``srv``, ``families`` and ``hosts_file``;
    see the README.
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
