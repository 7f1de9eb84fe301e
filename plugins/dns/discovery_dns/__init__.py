"""DNS resolver plugin for grpc-discovery: ``dns:`` targets (A/AAAA and SRV).

Registered under the ``discovery.resolvers`` entry-point group as ``dns``; the
core never imports this package by name. Needs dnspython 2.4 or newer.
"""

from __future__ import annotations

try:
    import dns.resolver as _dns_resolver
    import dns.version as _dns_version
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the dns: resolver needs dnspython>=2.4: pip install dnspython "
        "(or pip install discovery-dns, which depends on it)"
    ) from _exc

if (_dns_version.MAJOR, _dns_version.MINOR) < (2, 4):  # pragma: no cover
    raise ImportError(
        f"the dns: resolver needs dnspython>=2.4, found {_dns_version.version}: "
        "pip install -U dnspython (or pip install discovery-dns)"
    )

del _dns_resolver

from ._config import (  # noqa: E402
    DEFAULT_MAX_INTERVAL,
    DEFAULT_MIN_INTERVAL,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    DnsConfig,
    DnsTarget,
    parse_config,
    parse_target,
)
from ._hosts import DEFAULT_HOSTS_FILE  # noqa: E402
from ._resolver import DnsResolver, DnsResolverBuilder  # noqa: E402

__all__ = [
    "DEFAULT_HOSTS_FILE",
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DnsConfig",
    "DnsResolver",
    "DnsResolverBuilder",
    "DnsTarget",
    "parse_config",
    "parse_target",
]
