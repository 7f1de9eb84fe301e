"""Service configs (gRPC's own JSON vocabulary) and config files.

:func:`parse_service_config` takes the dict or JSON string a gRPC user already
has (``loadBalancingConfig``, ``healthCheckConfig``, ``methodConfig``,
``retryThrottling``) and validates all of it before anything is built.
:func:`load_config_file` reads ``.toml``, ``.yaml``/``.yml`` (safe loading) or
``.json`` and validates every service in the file, so a bad file never
half-applies. Errors name the file, the key path and what was expected.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import registry
from .durations import parse_duration
from .errors import ConfigError, DiscoveryError, TargetError, UnknownPolicyError
from .methodconfig import (
    HedgingPolicy,
    MethodConfig,
    MethodTable,
    RetryPolicy,
    RetryThrottling,
    lookup_method_config,
)
from .resolver import ResolverOptions

__all__ = [
    "DEFAULT_POLICY",
    "ServiceConfig",
    "ServiceEntry",
    "TLSConfig",
    "find_config_file",
    "load_config_file",
    "parse_duration",
    "parse_service_config",
]

# gRPC's default is pick_first. This library exists to spread load, so with no
# loadBalancingConfig it balances round robin; set pick_first to get gRPC's.
DEFAULT_POLICY = "round_robin"

_TOP_KEYS = {"loadBalancingConfig", "loadBalancingPolicy", "healthCheckConfig", "methodConfig",
             "retryThrottling"}


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """A validated service config.

    ``policy`` and ``policy_config`` are the first supported entry of
    ``loadBalancingConfig`` (parsed by that policy's builder).
    ``backend_json`` is what each backend channel gets as ``grpc.service_config``
    so grpcio's core applies ``methodConfig`` and gRFC A17 health checking.
    """

    policy: str = DEFAULT_POLICY
    policy_config: Any = None
    health_service_name: str | None = None
    retry_throttling: Mapping[str, Any] | None = None
    backend_json: str = ""
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    methods: MethodTable = field(default_factory=lambda: MappingProxyType({}))
    throttling: RetryThrottling | None = None

    def method_config(self, method: str) -> MethodConfig | None:
        """What ``methodConfig`` says about ``/pkg.Service/Method`` (gRPC's matching), or None."""
        return lookup_method_config(self.methods, method)


def _expect(cond: bool, what: str, value: Any, source: str | None, key_path: str) -> None:
    if not cond:
        raise ConfigError(f"expected {what}, got {value!r}", source=source, key_path=key_path)


def select_policy(lbc: Any, source: str | None, key_path: str) -> tuple[str, Any]:
    """The first registered policy of a ``loadBalancingConfig`` list and its parsed config."""
    _expect(isinstance(lbc, Sequence) and not isinstance(lbc, str) and len(lbc) > 0,
            "a non-empty list of {policy_name: {config}} objects", lbc, source, key_path)
    names = []
    for i, entry in enumerate(lbc):
        path = f"{key_path}[{i}]"
        _expect(isinstance(entry, Mapping) and len(entry) == 1,
                "an object with exactly one policy name", entry, source, path)
        (name, cfg), = entry.items()
        cfg = {} if cfg is None else cfg
        _expect(isinstance(cfg, Mapping), f"an object of {name} options", cfg, source, f"{path}.{name}")
        names.append(name)
        for candidate in (name, name.removesuffix("_experimental")):
            if registry.has_balancer(candidate):
                builder = registry.get_balancer(candidate)
                try:
                    return candidate, builder.parse_config(cfg, key_path=f"{path}.{name}")
                except ConfigError as exc:
                    if exc.source is None and source is not None:
                        raise ConfigError(str(exc), source=source) from exc
                    raise
    known = ", ".join(sorted(registry.balancer_names()))
    raise UnknownPolicyError(
        f"none of the policies {names} is registered; known: {known}", source=source, key_path=key_path
    )


def _method_table(mc: Any, source: str | None, key_path: str) -> dict[tuple[str, str], MethodConfig]:
    """Validate ``methodConfig`` and index it by (service, method) as gRPC matches names."""
    _expect(isinstance(mc, Sequence) and not isinstance(mc, str), "a list of method configs", mc, source,
            key_path)
    table: dict[tuple[str, str], MethodConfig] = {}
    for i, entry in enumerate(mc):
        path = f"{key_path}[{i}]"
        _expect(isinstance(entry, Mapping), "an object", entry, source, path)
        allowed = {"name", "timeout", "waitForReady", "retryPolicy", "hedgingPolicy",
                   "maxRequestMessageBytes", "maxResponseMessageBytes"}
        unknown = set(entry) - allowed
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected some of {sorted(allowed)}",
                              source=source, key_path=path)
        names = entry.get("name", [])
        _expect(isinstance(names, Sequence) and not isinstance(names, str)
                and all(isinstance(n, Mapping) for n in names),
                "a list of {service, method} objects", names, source, f"{path}.name")
        timeout = None
        if "timeout" in entry:
            timeout = parse_duration(entry["timeout"], key_path=f"{path}.timeout", source=source)
        wfr = entry.get("waitForReady")
        _expect(wfr is None or isinstance(wfr, bool), "true or false", wfr, source, f"{path}.waitForReady")
        retry = hedging = None
        try:
            if "retryPolicy" in entry:
                retry = RetryPolicy.parse(entry["retryPolicy"], f"{path}.retryPolicy")
            if "hedgingPolicy" in entry:
                hedging = HedgingPolicy.parse(entry["hedgingPolicy"], f"{path}.hedgingPolicy")
        except ConfigError as exc:
            raise ConfigError(str(exc), source=source) from exc
        if retry is not None and hedging is not None:
            raise ConfigError("retryPolicy and hedgingPolicy are mutually exclusive", source=source, key_path=path)
        sizes: dict[str, int | None] = {}
        for key in ("maxRequestMessageBytes", "maxResponseMessageBytes"):
            v = entry.get(key)
            _expect(v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**31),
                    "an integer in [0, 2147483647]", v, source, f"{path}.{key}")
            sizes[key] = v
        value = MethodConfig(timeout, wfr, retry, hedging, sizes["maxRequestMessageBytes"],
                             sizes["maxResponseMessageBytes"])
        for j, n in enumerate(names):
            npath = f"{path}.name[{j}]"
            unknown = set(n) - {"service", "method"}
            if unknown:
                raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected service and method",
                                  source=source, key_path=npath)
            s, m = n.get("service", ""), n.get("method", "")
            _expect(isinstance(s, str) and isinstance(m, str), "string service and method names", n, source, npath)
            if m and not s:
                raise ConfigError("a method name needs a service name", source=source, key_path=npath)
            if (s, m) in table:
                raise ConfigError(f"duplicate method config name {dict(n)!r}", source=source, key_path=npath)
            table[(s, m)] = value
    return table


def parse_service_config(value: Mapping[str, Any] | str | None, *, source: str | None = None,
                         key_path: str = "service_config") -> ServiceConfig:
    """Validate a gRPC service config (dict or JSON string); raise ConfigError on anything wrong."""
    if value is None:
        value = {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not valid JSON: {exc}", source=source, key_path=key_path) from exc
    _expect(isinstance(value, Mapping), "an object", value, source, key_path)
    assert isinstance(value, Mapping)
    unknown = set(value) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}",
                          source=source, key_path=key_path)
    if "loadBalancingConfig" in value:
        policy, policy_config = select_policy(value["loadBalancingConfig"], source,
                                               f"{key_path}.loadBalancingConfig")
    elif "loadBalancingPolicy" in value:
        name = value["loadBalancingPolicy"]
        _expect(isinstance(name, str), "a policy name", name, source, f"{key_path}.loadBalancingPolicy")
        policy, policy_config = select_policy([{name.lower(): {}}], source,
                                               f"{key_path}.loadBalancingPolicy")
    else:
        policy, policy_config = select_policy([{DEFAULT_POLICY: {}}], source, key_path)
    health = None
    if "healthCheckConfig" in value:
        hc = value["healthCheckConfig"]
        _expect(isinstance(hc, Mapping) and set(hc) <= {"serviceName"}, "{\"serviceName\": ...}", hc, source,
                f"{key_path}.healthCheckConfig")
        health = hc.get("serviceName", "")
        _expect(isinstance(health, str), "a string", health, source, f"{key_path}.healthCheckConfig.serviceName")
    method_config = value.get("methodConfig", [])
    methods = _method_table(method_config, source, f"{key_path}.methodConfig")
    throttling = value.get("retryThrottling")
    if throttling is not None:
        path = f"{key_path}.retryThrottling"
        _expect(isinstance(throttling, Mapping) and set(throttling) == {"maxTokens", "tokenRatio"},
                "{\"maxTokens\": N, \"tokenRatio\": X}", throttling, source, path)
        mt, tr = throttling["maxTokens"], throttling["tokenRatio"]
        _expect(isinstance(mt, int | float) and not isinstance(mt, bool) and 0 < mt <= 1000,
                "a number in (0, 1000]", mt, source, f"{path}.maxTokens")
        _expect(isinstance(tr, int | float) and not isinstance(tr, bool) and tr > 0,
                "a number > 0", tr, source, f"{path}.tokenRatio")
    backend: dict[str, Any] = {}
    # Retries are this library's job (each attempt on another backend), so
    # backend channels get the method configs without retry or hedging
    # policies, and no retry throttling: grpcio would otherwise retry on the
    # same backend underneath.
    per_backend = [{k: v for k, v in _thawed(_frozen(m)).items() if k not in ("retryPolicy", "hedgingPolicy")}
                   for m in method_config]
    if any(set(m) - {"name"} for m in per_backend):
        backend["methodConfig"] = per_backend
    if health is not None:
        # gRPC core runs gRFC A17 health checks only under a policy that
        # supports them; round_robin over the one address does.
        backend["healthCheckConfig"] = {"serviceName": health}
        backend["loadBalancingConfig"] = [{"round_robin": {}}]
    return ServiceConfig(
        policy=policy,
        policy_config=policy_config,
        health_service_name=health,
        retry_throttling=_frozen(throttling) if throttling is not None else None,
        methods=MappingProxyType(methods),
        throttling=(None if throttling is None
                    else RetryThrottling(float(throttling["maxTokens"]), float(throttling["tokenRatio"]))),
        backend_json=json.dumps(backend, sort_keys=True) if backend else "",
        raw=_frozen(value),
    )


# -- config files -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """``[services.x.tls]``: PEM file paths; ``server_name`` overrides the verified name."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """One validated ``[services.NAME]`` table."""

    name: str
    target: str
    options: tuple[tuple[str, int | str], ...] = ()
    service_config: ServiceConfig = field(default_factory=ServiceConfig)
    resolver: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    tls: TLSConfig | None = None
    drain_grace: float | None = None
    connections_per_backend: int | None = None


_SERVICE_KEYS = {"target", "options", "service_config", "resolver", "tls", "drain_grace", "connections_per_backend"}
_TLS_KEYS = {"ca_file", "cert_file", "key_file", "server_name"}


def find_config_file(path: str | os.PathLike[str] | None) -> Path:
    """``path``, else ``$DISCOVERY_CONFIG``, else ``./discovery.toml``; must exist."""
    if path is not None:
        candidate, why = Path(path), "the path given"
    elif os.environ.get("DISCOVERY_CONFIG"):
        candidate, why = Path(os.environ["DISCOVERY_CONFIG"]), "$DISCOVERY_CONFIG"
    else:
        candidate, why = Path("discovery.toml"), "the default ./discovery.toml"
    if not candidate.is_file():
        raise ConfigError(f"config file {str(candidate)!r} ({why}) does not exist")
    return candidate


def _read(path: Path) -> Any:
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    try:
        if suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError as exc:
                raise ImportError(
                    f"{path}: reading YAML needs PyYAML: pip install 'grpc-discovery[yaml]'"
                ) from exc
            return yaml.safe_load(text)
        if suffix == ".json":
            return json.loads(text)
    except ImportError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot parse {suffix[1:].upper()}: {exc}", source=str(path)) from exc
    raise ConfigError(f"unsupported file type {suffix!r}; expected .toml, .yaml, .yml or .json",
                      source=str(path))


def _entry(name: str, raw: Any, src: str) -> ServiceEntry:
    base = f"services.{name}"
    _expect(isinstance(raw, Mapping), "a table", raw, src, base)
    unknown = set(raw) - _SERVICE_KEYS
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_SERVICE_KEYS)}",
                          source=src, key_path=base)
    if "target" not in raw:
        raise ConfigError("missing required key 'target' (e.g. \"dns:///orders.internal:50051\")",
                          source=src, key_path=base)
    target = raw["target"]
    _expect(isinstance(target, str) and bool(target.strip()), "a target URI string", target, src,
            f"{base}.target")
    try:
        # A bare host:port gets gRPC's default scheme, dns, as in the channel factories.
        parsed_target = registry.resolve_target(target)
    except ConfigError as exc:
        raise ConfigError(str(exc), source=src, key_path=f"{base}.target") from exc
    try:
        resolver_builder = registry.get_resolver(parsed_target.scheme)
    except DiscoveryError as exc:
        raise ConfigError(str(exc), source=src, key_path=f"{base}.target") from exc
    options = raw.get("options", {})
    _expect(isinstance(options, Mapping), "a table of grpc channel arguments", options, src, f"{base}.options")
    opts: list[tuple[str, int | str]] = []
    for k, v in options.items():
        if isinstance(v, bool):
            v = int(v)
        _expect(isinstance(v, int | str), "an integer or a string", v, src, f"{base}.options.{k}")
        opts.append((str(k), v))
    sc = parse_service_config(raw.get("service_config"), source=src, key_path=f"{base}.service_config")
    resolver = raw.get("resolver", {})
    _expect(isinstance(resolver, Mapping), "a table of resolver options", resolver, src, f"{base}.resolver")
    try:
        resolver_builder.check(parsed_target, ResolverOptions(config=dict(resolver)))
    except TargetError as exc:
        raise ConfigError(str(exc), source=src, key_path=f"{base}.target") from exc
    except ConfigError as exc:
        raise ConfigError(str(exc), source=src, key_path=f"{base}.resolver") from exc
    tls = None
    if "tls" in raw:
        t = raw["tls"]
        _expect(isinstance(t, Mapping), "a table", t, src, f"{base}.tls")
        unknown = set(t) - _TLS_KEYS
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(_TLS_KEYS)}",
                              source=src, key_path=f"{base}.tls")
        for k, v in t.items():
            _expect(isinstance(v, str), "a string", v, src, f"{base}.tls.{k}")
            if k.endswith("_file") and not Path(v).is_file():
                raise ConfigError(f"file {v!r} does not exist", source=src, key_path=f"{base}.tls.{k}")
        tls = TLSConfig(**t)
    grace = None
    if "drain_grace" in raw:
        grace = parse_duration(raw["drain_grace"], key_path=f"{base}.drain_grace", source=src)
    conns = None
    if "connections_per_backend" in raw:
        conns = raw["connections_per_backend"]
        _expect(isinstance(conns, int) and not isinstance(conns, bool) and 1 <= conns <= 64,
                "an integer 1..64", conns, src, f"{base}.connections_per_backend")
    return ServiceEntry(name, target, tuple(opts), sc, _frozen(resolver), tls, grace, conns)


def load_config_file(path: str | os.PathLike[str] | None = None) -> dict[str, ServiceEntry]:
    """Read and validate every service in a config file. All or nothing."""
    p = find_config_file(path)
    src = str(p)
    data = _read(p)
    _expect(isinstance(data, Mapping), "a table with a [services] section", type(data).__name__, src, "(top)")
    unknown = set(data) - {"services"}
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; expected 'services'", source=src,
                          key_path="(top)")
    services = data.get("services")
    _expect(isinstance(services, Mapping) and len(services) > 0, "a non-empty [services] table", services, src,
            "services")
    return {name: _entry(name, raw, src) for name, raw in services.items()}
