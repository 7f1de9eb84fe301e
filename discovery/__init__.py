"""grpc-discovery: client-side service discovery and load balancing for grpcio.

Replace ``grpc.insecure_channel(target)`` with
``discovery.insecure_channel(target)``: the target is resolved by a resolver
plugin (``static:``, ``ipv4:``, ``dns:``, ``consul:``, ...), one grpc channel is
kept per backend, and each RPC goes to a backend the balancer picks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from .address import Address, Attributes, ResolverState
from .backend import BackendSnapshot
from .balancer import Balancer, BalancerBuilder, BalancerHelper, Picker, SubConn
from .channel import Channel, ChannelSettings, build_channel
from .config import ServiceConfig, load_config_file, parse_service_config
from .errors import (
    ConfigError,
    DiscoveryError,
    PluginError,
    ResolverError,
    TargetError,
    UnknownPolicyError,
    UnknownSchemeError,
)
from .registry import (
    get_balancer,
    get_resolver,
    register_balancer,
    register_resolver,
    registered_balancers,
    registered_resolvers,
    resolve_target,
    unregister_balancer,
    unregister_resolver,
)
from .resolver import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from .target import Target, parse_target

__all__ = [
    "Address",
    "Attributes",
    "BackendSnapshot",
    "Balancer",
    "BalancerBuilder",
    "BalancerHelper",
    "Channel",
    "ChannelSettings",
    "ConfigError",
    "DiscoveryError",
    "Picker",
    "PluginError",
    "Resolver",
    "ResolverBuilder",
    "ResolverError",
    "ResolverListener",
    "ResolverOptions",
    "ResolverState",
    "ServiceConfig",
    "SubConn",
    "Target",
    "TargetError",
    "UnknownPolicyError",
    "UnknownSchemeError",
    "channel_from_config",
    "get_balancer",
    "get_resolver",
    "insecure_channel",
    "parse_service_config",
    "parse_target",
    "register_balancer",
    "register_resolver",
    "registered_balancers",
    "registered_resolvers",
    "secure_channel",
    "unregister_balancer",
    "unregister_resolver",
]

__version__ = "0.1.0"

ChannelOptions = Sequence[tuple[str, Any]] | None


# Kept for callers of the old private name.
_resolve_target = resolve_target


def _open(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: ChannelOptions,
    compression: grpc.Compression | None,
    service_config: Mapping[str, Any] | str | ServiceConfig | None,
    resolver_config: Mapping[str, Any] | None,
    settings: ChannelSettings | None,
    *,
    aio: bool = False,
) -> Any:
    # Validate everything before anything starts: a bad argument must not
    # leave a half-built channel or a running resolver behind.
    sc = service_config if isinstance(service_config, ServiceConfig) else parse_service_config(service_config)
    t = resolve_target(target)
    resolver_builder = get_resolver(t.scheme)
    balancer_builder = get_balancer(sc.policy)
    settings = settings or ChannelSettings()
    user_opts = list(options or ())
    names = {k for k, _ in user_opts}
    backend_opts: list[tuple[str, Any]] = [*user_opts, ("grpc.use_local_subchannel_pool", 1)]
    authority = resolver_builder.default_authority(t)
    if authority and "grpc.default_authority" not in names:
        backend_opts.append(("grpc.default_authority", authority))
    if sc.backend_json and "grpc.service_config" not in names:
        backend_opts.append(("grpc.service_config", sc.backend_json))

    def make_channel(address: Address) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(address.addr, backend_opts, compression)
        return grpc.secure_channel(address.addr, credentials, backend_opts, compression)

    def make_aio_channel(address: Address) -> grpc.aio.Channel:
        # The twin that serves .future() calls: same arguments, same credentials.
        if credentials is None:
            return grpc.aio.insecure_channel(address.addr, backend_opts, compression)
        return grpc.aio.secure_channel(address.addr, credentials, backend_opts, compression)

    opts = ResolverOptions(config=dict(resolver_config or {}), clock=settings.clock)
    build: Any = build_channel
    if aio:
        from .aio import build_aio_channel

        build = build_aio_channel
    return build(
        target=target,
        resolver_factory=lambda core: resolver_builder.build(t, core, opts),
        balancer_factory=lambda core: balancer_builder.build(core, sc.policy_config),
        make_channel=make_channel,
        settings=settings,
        service_config=sc,
        make_aio_channel=make_aio_channel,
    )


def insecure_channel(
    target: str,
    options: ChannelOptions = None,
    compression: grpc.Compression | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """A balancing channel without transport security, like :func:`grpc.insecure_channel`.

    ``options`` are grpc channel arguments applied to every backend channel.
    ``service_config`` is a gRPC service config (dict or JSON string);
    ``resolver_config`` the resolver plugin's own options. Raises
    :class:`~discovery.errors.ConfigError` (or a subclass) for a bad argument,
    before starting anything. Returns at once; resolution and connection
    happen on the channel's control thread.
    """
    return _open(target, None, options, compression, service_config, resolver_config,  # type: ignore[no-any-return]
                 settings)


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: ChannelOptions = None,
    compression: grpc.Compression | None = None,
    *,
    service_config: Mapping[str, Any] | str | None = None,
    resolver_config: Mapping[str, Any] | None = None,
    settings: ChannelSettings | None = None,
) -> Channel:
    """A balancing channel with ``credentials``, like :func:`grpc.secure_channel`.

    TLS to an IP address verifies the service name through
    ``grpc.default_authority`` (the target's endpoint unless the resolver says
    otherwise, or your own option), never by disabling verification.
    """
    if credentials is None:
        raise TypeError("secure_channel needs credentials; use insecure_channel for plaintext")
    return _open(target, credentials, options, compression, service_config, resolver_config,  # type: ignore[no-any-return]
                 settings)


def channel_from_config(
    service: str, path: str | os.PathLike[str] | None = None, *, settings: ChannelSettings | None = None
) -> Channel:
    """The channel for ``[services.SERVICE]`` of a config file.

    ``path`` None means ``$DISCOVERY_CONFIG``, then ``./discovery.toml``. The
    whole file is validated first; any error names the file and the key.
    """
    return _from_config(service, path, settings, aio=False)  # type: ignore[no-any-return]


def _from_config(service: str, path: str | os.PathLike[str] | None, settings: ChannelSettings | None, *,
                 aio: bool) -> Any:
    entries = load_config_file(path)
    if service not in entries:
        raise ConfigError(f"no service {service!r}; the file defines {sorted(entries)}",
                          source=str(path or os.environ.get("DISCOVERY_CONFIG") or "discovery.toml"),
                          key_path="services")
    e = entries[service]
    if e.drain_grace is not None:
        settings = (settings or ChannelSettings()).replace(drain_grace=e.drain_grace)
    if e.connections_per_backend is not None:
        settings = (settings or ChannelSettings()).replace(connections_per_backend=e.connections_per_backend)
    options: list[tuple[str, Any]] = list(e.options)
    if e.tls is None:
        return _open(e.target, None, options, None, e.service_config, e.resolver, settings, aio=aio)

    def read(p: str | None) -> bytes | None:
        if p is None:
            return None
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(read(e.tls.ca_file), read(e.tls.key_file), read(e.tls.cert_file))
    if e.tls.server_name:
        options.append(("grpc.ssl_target_name_override", e.tls.server_name))
    return _open(e.target, creds, options, None, e.service_config, e.resolver, settings, aio=aio)
