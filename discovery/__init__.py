"""grpc-discovery: client-side service discovery and load balancing for grpcio.

Replace ``grpc.insecure_channel(target)`` with
``discovery.insecure_channel(target)``: the target is resolved by a resolver
plugin (``static:``, ``ipv4:``, ``dns:``, ``consul:``, ...), one grpc channel is
kept per backend, and each RPC goes to a backend the balancer picks.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from . import observe
from ._grpc_compat import plain_aio_channel, plain_channel
from .address import Address, Attributes, ResolverState
from .backend import BackendSnapshot
from .balancer import Balancer, BalancerBuilder, BalancerHelper, Picker, SubConn
from .channel import Channel, build_channel
from .config import ServiceConfig, load_config, parse_service_config, resolve_service_config
from .errors import (
    ConfigError,
    DiscoveryError,
    PluginError,
    ResolverError,
    TargetError,
    UnknownPolicyError,
    UnknownSchemeError,
)
from .options import check_options
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
from .settings import ChannelSettings
from .target import Target, parse_target, redact_target

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


def _resolve_target(target: str) -> Target:
    """Parse ``target``; a bare ``host:port`` gets gRPC's default scheme, ``dns``."""
    return resolve_target(target)


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
    # leave a half-built channel or a running resolver behind, nor reach a
    # thread where it could only fail silently.
    t = resolve_target(target)
    checked = check_options(options)
    if compression is not None and not isinstance(compression, grpc.Compression):
        raise ConfigError(f"expected a grpc.Compression (e.g. grpc.Compression.Gzip) or None, got "
                          f"{type(compression).__name__} {compression!r}", key_path="compression")
    if credentials is not None and not isinstance(credentials, grpc.ChannelCredentials):
        raise ConfigError(f"expected grpc.ChannelCredentials, got {type(credentials).__name__}",
                          key_path="credentials")
    if settings is not None and not isinstance(settings, ChannelSettings):
        raise ConfigError(f"expected a discovery.ChannelSettings, got {type(settings).__name__} {settings!r}",
                          key_path="settings")
    if resolver_config is not None and not isinstance(resolver_config, Mapping):
        raise ConfigError(f"expected a mapping of resolver options, got {type(resolver_config).__name__} "
                          f"{resolver_config!r}", key_path="resolver_config")
    bad_keys = [k for k in (resolver_config or {}) if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"option names must be strings, got {bad_keys[0]!r}", key_path="resolver_config")
    sc = resolve_service_config(service_config, checked)
    resolver_builder = get_resolver(t.scheme)
    balancer_builder = get_balancer(sc.policy)
    settings = settings or ChannelSettings()
    opts = ResolverOptions(config=dict(resolver_config or {}), clock=settings.clock)
    _guard(lambda: resolver_builder.check(t, opts), f"resolver {t.scheme!r}")
    user_opts = checked.for_backends()
    names = {k for k, _ in user_opts}
    # grpc takes the first of two equal keys, so the ones the channel relies
    # on come first (check_options refuses user values for them).
    backend_opts: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
    if sc.backend_json:
        backend_opts.append(("grpc.service_config", sc.backend_json))
    backend_opts += user_opts
    authority = resolver_builder.default_authority(t)
    if authority and "grpc.default_authority" not in names:
        backend_opts.append(("grpc.default_authority", authority))

    # grpc's own channels even when an instrumentation patched grpc.insecure_channel
    # (see discovery._grpc_compat): interceptors belong on the discovery channel.
    def make_channel(address: Address) -> grpc.Channel:
        return plain_channel(address.addr, backend_opts, compression, credentials)

    def make_aio_channel(address: Address) -> grpc.aio.Channel:
        # The twin that serves .future() calls: same arguments, same credentials.
        return plain_aio_channel(address.addr, backend_opts, compression, credentials)

    build: Any = build_channel
    if aio:
        from .aio import build_aio_channel

        build = build_aio_channel
    return build(
        # Userinfo in the target may be a secret: the channel's repr, thread
        # name and log lines show it redacted.
        target=redact_target(target),
        resolver_factory=lambda core: _guard(lambda: resolver_builder.build(t, core, opts), f"resolver {t.scheme!r}"),
        balancer_factory=lambda core: balancer_builder.build(core, sc.policy_config),
        make_channel=make_channel,
        settings=settings,
        service_config=sc,
        make_aio_channel=make_aio_channel,
    )


_T = TypeVar("_T")


def _guard(fn: Callable[[], _T], what: str) -> _T:
    """Run a plugin's check or build; anything but a DiscoveryError is its bug, reported as a ConfigError."""
    try:
        return fn()
    except DiscoveryError:
        raise
    except Exception as exc:
        raise ConfigError(f"{what} failed on its options: {type(exc).__name__}: {exc}") from exc


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
        raise ConfigError("expected grpc.ChannelCredentials, got None; use insecure_channel for plaintext",
                          key_path="credentials")
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
    if not isinstance(service, str):
        raise ConfigError(f"expected a service name (a string), got {type(service).__name__} {service!r}",
                          key_path="service")
    loaded = load_config(path)
    entries = loaded.services
    if service not in entries:
        raise ConfigError(f"no service {service!r}; the file defines {sorted(entries)}",
                          source=str(path or os.environ.get("DISCOVERY_CONFIG") or "discovery.toml"),
                          key_path="services")
    e = entries[service]
    # [observability] is process-wide (metrics, tracing): on before the channel starts.
    observe.apply_observability(loaded.observability)
    if e.drain_grace is not None:
        if settings is not None and not isinstance(settings, ChannelSettings):
            raise ConfigError(f"expected a discovery.ChannelSettings, got {type(settings).__name__}",
                              key_path="settings")
        settings = dataclasses.replace(settings or ChannelSettings(), drain_grace=e.drain_grace)
    if e.connections_per_backend is not None:
        if settings is not None and not isinstance(settings, ChannelSettings):
            raise ConfigError(f"expected a discovery.ChannelSettings, got {type(settings).__name__}",
                              key_path="settings")
        settings = dataclasses.replace(settings or ChannelSettings(),
                                       connections_per_backend=e.connections_per_backend)
    options: list[tuple[str, Any]] = list(e.options)
    if e.tls is None:
        return _open(e.target, None, options, None, e.service_config, e.resolver, settings, aio=aio)

    def read(p: str | None) -> bytes | None:
        if p is None:
            return None
        try:
            with open(p, "rb") as f:
                return f.read()
        except OSError as exc:  # checked when the file was loaded, but it may have gone since
            raise ConfigError(f"cannot read {p!r}: {exc}", key_path=f"services.{service}.tls") from exc

    creds = grpc.ssl_channel_credentials(read(e.tls.ca_file), read(e.tls.key_file), read(e.tls.cert_file))
    if e.tls.server_name:
        options.append(("grpc.ssl_target_name_override", e.tls.server_name))
    return _open(e.target, creds, options, None, e.service_config, e.resolver, settings, aio=aio)
