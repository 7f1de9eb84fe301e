"""The core's system resolver: ``host:port`` and ``dns:///host:port`` through the operating system.

With the core alone, scheme ``dns`` (gRPC's default, so also a bare
``localhost:50051``) is served by this resolver: the registry uses it when no
installed plugin provides ``dns``; the DNS plugin (``pip install -e
plugins/dns``) wins when installed. It asks the operating system's resolver,
:func:`socket.getaddrinfo`, as grpcio's own resolver does for
``localhost:50051``, so the hosts file, ``nsswitch.conf`` and ``resolv.conf``
apply. A and AAAA (IPv4 and IPv6) results are kept in the order the system
gives them; IPv6 addresses are bracketed as gRPC writes them.

Re-resolution follows DESIGN.md's DNS rule: every 30 s by default (the
``interval`` option), and on ``resolve_now()`` (the channel asks after a
connection failure), never more often than every 2 s. A name the system does
not know (NXDOMAIN) is an empty address set, so RPCs fail fast, re-resolved
with backoff (1 s growing to the interval); any other failure (no DNS server
answering) is an error that keeps the last good set.

Querying a specific DNS server (``dns://8.8.8.8/orders:50051``), SRV records
and TTL-driven intervals need the DNS plugin; such a target is a TargetError
here that says so.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..address import Address, ResolverState
from ..clock import Backoff
from ..durations import parse_duration
from ..errors import ConfigError, ResolverError, TargetError
from ..registry import install_hint
from ..resolver import PollingResolver, Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from ..target import Target, parse_host_port
from .static import StaticResolver

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_PORT",
    "MIN_INTERVAL",
    "RESOLVE_NOW_FLOOR",
    "SystemConfig",
    "SystemResolverBuilder",
    "SystemTarget",
]

#: gRPC's port for a target without one.
DEFAULT_PORT = 443
#: Seconds between two resolutions by default (DESIGN.md's DNS minimum).
DEFAULT_INTERVAL = 30.0
#: The smallest ``interval`` accepted: a smaller one would keep a core busy for nothing.
MIN_INTERVAL = 1.0
#: Never two lookups closer than this, ``resolve_now()`` included.
RESOLVE_NOW_FLOOR = 2.0

KEYS = ("interval",)

# getaddrinfo's answers for "this name does not exist" (NXDOMAIN, or a name
# with no address of any family): an empty set, not an error. EAI_NODATA is
# not defined on every platform.
_NOT_FOUND = {socket.EAI_NONAME} | ({socket.EAI_NODATA} if hasattr(socket, "EAI_NODATA") else set())

# A DNS label (RFC 1123) plus the underscore, which hosts files and service
# names use in practice.
_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")

GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class SystemTarget:
    """What a ``dns:`` target asks the system resolver for. ``literal``: ``host`` is an IP address."""

    host: str
    port: int
    literal: bool

    @property
    def display(self) -> str:
        return Address(self.host, self.port).addr


@dataclass(frozen=True, slots=True)
class SystemConfig:
    """The validated resolver options: ``interval`` in seconds."""

    interval: float = DEFAULT_INTERVAL


def _shown(target: Target) -> str:
    """The target for a message, without any ``user:password@`` in its authority."""
    authority = target.authority.rpartition("@")[2]
    return f"{target.scheme}://{authority}/{target.endpoint}"


def _dns_plugin_needed(target: Target, what: str) -> TargetError:
    return TargetError(
        f"target {_shown(target)!r}: {what} needs the DNS plugin: {install_hint('dns')}. "
        "Without it, dns: targets are resolved by the operating system (hosts file, then the "
        "DNS servers of resolv.conf)"
    )


def parse_target(target: Target) -> SystemTarget:
    """Validate a ``dns:`` target for the system resolver; TargetError says what is wrong."""
    if target.authority:
        server = target.authority.rpartition("@")[2]
        raise _dns_plugin_needed(target, f"querying a specific DNS server ({server!r})")
    if target.query:
        raise TargetError(f"target {_shown(target)!r}: the system resolver takes no query parameters "
                          f"(got {target.query!r})")
    try:
        host, port = parse_host_port(target.endpoint, DEFAULT_PORT)
    except TargetError as exc:
        raise TargetError(f"target {_shown(target)!r}: {exc}") from exc
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return SystemTarget(host, port, literal=True)
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise TargetError(f"target {_shown(target)!r}: {host!r} is not a valid host name ({exc})") from exc
    name = ascii_host[:-1] if ascii_host.endswith(".") else ascii_host
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise TargetError(
            f"target {_shown(target)!r}: {host!r} is not a valid host name or IP address "
            "(IPv6 addresses with a port go in brackets: [::1]:50051)"
        )
    return SystemTarget(host, port, literal=False)


def parse_config(config: Mapping[str, Any]) -> SystemConfig:
    """Validate the resolver options; ConfigError names the key."""
    unknown = sorted(str(k) for k in config if k not in KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} for the system resolver; expected: {', '.join(KEYS)}. "
            f"DNS server, SRV and TTL options need the DNS plugin: {install_hint('dns')}",
            key_path="resolver",
        )
    interval = DEFAULT_INTERVAL
    if "interval" in config:
        interval = parse_duration(config["interval"], key_path="resolver.interval")
        if not math.isfinite(interval) or interval < MIN_INTERVAL:
            raise ConfigError(f'expected a duration of at least "{MIN_INTERVAL:g}s", got {config["interval"]!r}',
                              key_path="resolver.interval")
    return SystemConfig(interval=interval)


class _Schedule:
    """The interval after each lookup: the configured one, or backoff while the name does not exist.

    Called only on the resolver's own thread.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._backoff = Backoff(initial=1.0, maximum=interval)

    def __call__(self, state: ResolverState) -> float:
        if state.addresses:
            self._backoff.reset()
            return self._interval
        return min(self._backoff.next(), self._interval)


def lookup(target: SystemTarget, getaddrinfo: GetAddrInfo | None = None) -> ResolverState:
    """One resolution through the operating system. Blocks for as long as the system resolver does.

    Returns the addresses (IPv4 and IPv6, deduplicated, in the system's order),
    an empty state with a note when the name does not exist, or raises
    ResolverError for any other failure.
    """
    gai = getaddrinfo or socket.getaddrinfo
    try:
        infos = gai(target.host, target.port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        if exc.errno in _NOT_FOUND:
            return ResolverState((), note=f"{target.host!r} not found by the system resolver: {exc.strerror}")
        raise ResolverError(
            f"system resolver failed for {target.host!r}: {exc.strerror or exc}; keeping the last addresses"
        ) from exc
    except (OSError, UnicodeError) as exc:
        raise ResolverError(f"system resolver failed for {target.host!r}: {exc}") from exc
    seen: set[str] = set()
    out: list[Address] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = Address(str(sockaddr[0]), target.port)
        if addr.addr not in seen:
            seen.add(addr.addr)
            out.append(addr)
    if not out:
        return ResolverState((), note=f"{target.host!r} has no IPv4 or IPv6 address")
    return ResolverState(tuple(out))


class SystemResolverBuilder(ResolverBuilder):
    """Builds system resolvers for ``dns:`` targets (the registry's fallback for ``dns``).

    ``getaddrinfo`` replaces :func:`socket.getaddrinfo` (tests inject one);
    the registry builds this class with no arguments.
    """

    scheme: ClassVar[str] = "dns"

    def __init__(self, getaddrinfo: GetAddrInfo | None = None) -> None:
        self._getaddrinfo = getaddrinfo

    def check(self, target: Target, options: ResolverOptions) -> None:
        parse_target(target)
        parse_config(options.config)

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> Resolver:
        """Validate, then start a resolver (its own daemon thread; an IP literal needs none)."""
        st = parse_target(target)
        cfg = parse_config(options.config)
        if st.literal:
            # An IP address resolves to itself; no thread, nothing to re-resolve.
            return StaticResolver(listener, ResolverState((Address(st.host, st.port),)))
        resolver = PollingResolver(
            listener,
            lambda: lookup(st, self._getaddrinfo),
            name=f"system:{st.display}",
            clock=options.clock,
            interval=_Schedule(cfg.interval),
            min_interval=min(RESOLVE_NOW_FLOOR, cfg.interval),
        )
        resolver.start()
        return resolver
