"""Service configs (gRPC's own JSON vocabulary) and config files.

:func:`parse_service_config` takes the dict or JSON string a gRPC user already
has (``loadBalancingConfig``, ``healthCheckConfig``, ``methodConfig``,
``retryThrottling``) and validates all of it before anything is built.
:func:`load_config_file` reads ``.toml``, ``.yaml``/``.yml`` (safe loading) or
``.json`` and validates every service in the file, so a bad file never
half-applies. Errors name the file, the key path and what was expected.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from .observe import ObservabilityConfig, parse_observability
from .options import CheckedOptions, check_options
from .resolver import ResolverOptions

__all__ = [
    "DEFAULT_POLICY",
    "ConfigFile",
    "ServiceConfig",
    "ServiceEntry",
    "TLSConfig",
    "find_config_file",
    "load_config",
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


# gRPC core's JSON reader refuses documents nested deeper than this
# (GRPC_JSON_MAX_DEPTH); so does this library, before anything recursive
# (json.loads, a policy's childPolicy) can hit Python's recursion limit.
MAX_JSON_DEPTH = 255
# And at most this many values in all: a YAML file's aliases (or a Python
# dict that shares sub-dicts) can otherwise make a few lines expand to
# billions of values.
MAX_JSON_NODES = 100_000


def _elide_path(path: str, keep: int = 60) -> str:
    """A key path short enough for a one-line message: its start and end around ``...``.

    A path 255 levels deep is several kilobytes; its two ends say where it is.
    """
    if len(path) <= 3 * keep:
        return path
    return f"{path[:keep]}...{path[-keep:]}"


def check_json(value: Any, source: str | None, key_path: str) -> None:
    """Raise ConfigError unless ``value`` is plain JSON data gRPC's parser would take.

    Objects (any Mapping) with string keys, lists or tuples, strings, finite
    numbers, booleans and None, nested at most :data:`MAX_JSON_DEPTH` deep;
    strings and keys encodable as UTF-8 (no lone surrogates); at most
    :data:`MAX_JSON_NODES` values. Iterative, so no input can exhaust the
    stack, and bounded, so none can make it run for long.
    """
    stack: list[tuple[Any, str, int]] = [(value, key_path, 0)]
    visited = 0
    while stack:
        v, path, depth = stack.pop()
        visited += 1
        if visited > MAX_JSON_NODES:
            raise ConfigError(f"more than {MAX_JSON_NODES} values (after expanding any aliases)", source=source,
                              key_path=key_path)
        if isinstance(v, Mapping | list | tuple):
            if depth >= MAX_JSON_DEPTH:
                raise ConfigError(f"nested more than {MAX_JSON_DEPTH} levels deep", source=source,
                                  key_path=_elide_path(path))
            if isinstance(v, Mapping):
                for k, item in v.items():
                    if not isinstance(k, str):
                        raise ConfigError(f"object keys must be strings, got {type(k).__name__} {k!r}",
                                          source=source, key_path=path)
                    _check_text(k, source, path)
                    stack.append((item, f"{path}.{k}" if path else k, depth + 1))
            else:
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(v))
        elif isinstance(v, str):
            _check_text(v, source, path)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ConfigError(f"expected a finite number, got {v!r}", source=source, key_path=path)
        elif v is not None and not isinstance(v, int):
            raise ConfigError(f"expected JSON data (object, list, string, number, boolean or null), got "
                              f"{type(v).__name__} {v!r}", source=source, key_path=path)


def _check_text(text: str, source: str | None, key_path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{text!r} is not valid Unicode (lone surrogate)", source=source,
                          key_path=key_path) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            # json.loads would keep the last; gRPC's JSON reader rejects the document.
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(text: str, source: str | None, key_path: str) -> Any:
    """Parse strict JSON: no NaN/Infinity, no duplicate keys, no nesting bomb."""
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ConfigError(f"not valid JSON: nested more than {MAX_JSON_DEPTH} levels deep", source=source,
                          key_path=key_path) from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ConfigError(f"not valid JSON: {exc}", source=source, key_path=key_path) from exc
    check_json(value, source, key_path)
    return value


def _present(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An object's fields without the null ones: gRPC reads a null field as absent."""
    return {k: v for k, v in raw.items() if v is not None}


def _unknown(raw: Mapping[str, Any], allowed: set[str], source: str | None, key_path: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected some of {sorted(allowed)}",
                          source=source, key_path=key_path)


def _uint(value: Any, hi: int, source: str | None, key_path: str) -> int:
    """An integer in [0, hi]: a JSON integer or, as protobuf's JSON mapping allows, a string of ASCII digits."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    _expect(isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= hi,
            f"an integer in [0, {hi}]", value, source, key_path)
    return int(value)


def select_policy(lbc: Any, source: str | None, key_path: str) -> tuple[str, Any]:
    """The first registered policy of a ``loadBalancingConfig`` list and its parsed config.

    A policy's own ``parse_config`` raising anything but a ConfigError (a
    plugin's bug) becomes a ConfigError naming the policy, with the cause chained.
    """
    _expect(isinstance(lbc, Sequence) and not isinstance(lbc, str) and len(lbc) > 0,
            "a non-empty list of {policy_name: {config}} objects", lbc, source, key_path)
    names = []
    for i, entry in enumerate(lbc):
        path = f"{key_path}[{i}]"
        _expect(isinstance(entry, Mapping) and len(entry) == 1,
                "an object with exactly one policy name", entry, source, path)
        (name, cfg), = entry.items()
        _expect(isinstance(name, str), "a policy name", name, source, path)
        cfg = {} if cfg is None else cfg
        _expect(isinstance(cfg, Mapping), f"an object of {name} options", cfg, source, f"{path}.{name}")
        names.append(name)
        for candidate in (name, name.removesuffix("_experimental")):
            if registry.has_balancer(candidate):
                builder = registry.get_balancer(candidate)
                try:
                    return candidate, builder.parse_config(_present(cfg), key_path=f"{path}.{name}")
                except ConfigError as exc:
                    if exc.source is None and source is not None:
                        raise ConfigError(str(exc), source=source) from exc
                    raise
                except DiscoveryError:
                    raise
                except Exception as exc:
                    raise ConfigError(f"policy {candidate!r} cannot read its options: {type(exc).__name__}: {exc}",
                                      source=source, key_path=f"{path}.{name}") from exc
    known = ", ".join(sorted(registry.balancer_names()))
    raise UnknownPolicyError(
        f"none of the policies {names} is registered; known: {known}", source=source, key_path=key_path
    )


_METHOD_KEYS = {"name", "timeout", "waitForReady", "retryPolicy", "hedgingPolicy", "maxRequestMessageBytes",
                "maxResponseMessageBytes"}
# gRPC reads the message size limits as uint32.
_MAX_MESSAGE_BYTES = 2**32 - 1


def _method_table(mc: Any, source: str | None, key_path: str) -> dict[tuple[str, str], MethodConfig]:
    """Validate ``methodConfig`` and index it by (service, method) as gRPC matches names.

    As grpc-core: a ``name`` is ``{"service": S, "method": M}`` with string
    values; ``{}`` or an empty service is the default entry, and there may be
    one; a method needs a service; no (service, method) twice; null fields
    are absent. Stricter than grpc-core: unknown keys are errors (grpc-core
    ignores them, so a typo like ``servce`` silently widens the entry to the
    default), and so is ``{"service": "", "method": "M"}``.
    """
    _expect(isinstance(mc, Sequence) and not isinstance(mc, str), "a list of method configs", mc, source,
            key_path)
    table: dict[tuple[str, str], MethodConfig] = {}
    for i, raw_entry in enumerate(mc):
        path = f"{key_path}[{i}]"
        _expect(isinstance(raw_entry, Mapping), "an object", raw_entry, source, path)
        entry = _present(raw_entry)
        _unknown(entry, _METHOD_KEYS, source, path)
        names = entry.get("name", [])
        _expect(isinstance(names, Sequence) and not isinstance(names, str),
                "a list of {service, method} objects", names, source, f"{path}.name")
        timeout = None
        if "timeout" in entry:
            timeout = parse_duration(entry["timeout"], key_path=f"{path}.timeout", source=source)
        wfr = entry.get("waitForReady")
        _expect(wfr is None or isinstance(wfr, bool), "true or false", wfr, source, f"{path}.waitForReady")
        if "retryPolicy" in entry and "hedgingPolicy" in entry:
            raise ConfigError("retryPolicy and hedgingPolicy are mutually exclusive (gRFC A6)", source=source,
                              key_path=path)
        retry = hedging = None
        try:
            if "retryPolicy" in entry:
                retry = RetryPolicy.parse(entry["retryPolicy"], f"{path}.retryPolicy")
            if "hedgingPolicy" in entry:
                hedging = HedgingPolicy.parse(entry["hedgingPolicy"], f"{path}.hedgingPolicy")
        except ConfigError as exc:
            if source is None:
                raise
            raise ConfigError(str(exc), source=source) from exc
        sizes = {key: _uint(entry[key], _MAX_MESSAGE_BYTES, source, f"{path}.{key}") if key in entry else None
                 for key in ("maxRequestMessageBytes", "maxResponseMessageBytes")}
        value = MethodConfig(timeout, wfr, retry, hedging, sizes["maxRequestMessageBytes"],
                             sizes["maxResponseMessageBytes"])
        for j, raw_name in enumerate(names):
            npath = f"{path}.name[{j}]"
            _expect(isinstance(raw_name, Mapping), "a {service, method} object", raw_name, source, npath)
            n = _present(raw_name)
            _unknown(n, {"service", "method"}, source, npath)
            s, m = n.get("service", ""), n.get("method", "")
            _expect(isinstance(s, str), "a string service name", s, source, f"{npath}.service")
            _expect(isinstance(m, str), "a string method name", m, source, f"{npath}.method")
            if m and not s:
                raise ConfigError("a method name needs a service name", source=source, key_path=npath)
            if (s, m) in table:
                what = "a second default entry ({} or an empty service)" if not s else f"duplicate name {dict(n)!r}"
                raise ConfigError(what, source=source, key_path=npath)
            table[(s, m)] = value
    return table


def _backend_json(table: Mapping[tuple[str, str], MethodConfig], health: str | None) -> str:
    """The service config every backend channel gets, or "" for none.

    Only what grpcio must do inside one backend's channel: the message size
    limits, and gRFC A17 health checking (which grpc-core runs only under a
    policy that supports it; round_robin over the one address does). The
    channel applies timeout, waitForReady, retries and hedging itself, across
    backends; grpcio would otherwise retry on the same backend underneath
    (and its timeouts under 2 s misfire, grpc/grpc#34547). Built from parsed
    values, never copied from the user's JSON, so grpc-core accepts it.
    """
    backend: dict[str, Any] = {}
    entries = []
    if any(mc.max_request_bytes is not None or mc.max_response_bytes is not None for mc in table.values()):
        # Every name goes along, limits or not: an entry without limits still
        # shadows the service-wide and default entries in grpc's matching.
        grouped: dict[tuple[int | None, int | None], list[dict[str, str]]] = {}
        for (service, method), mc in table.items():
            name = {"service": service, "method": method} if method else {"service": service} if service else {}
            grouped.setdefault((mc.max_request_bytes, mc.max_response_bytes), []).append(name)
        for (req, resp), names in grouped.items():
            entry: dict[str, Any] = {"name": names}
            if req is not None:
                entry["maxRequestMessageBytes"] = req
            if resp is not None:
                entry["maxResponseMessageBytes"] = resp
            entries.append(entry)
    if entries:
        backend["methodConfig"] = entries
    if health is not None:
        backend["healthCheckConfig"] = {"serviceName": health}
        backend["loadBalancingConfig"] = [{"round_robin": {}}]
    return json.dumps(backend, sort_keys=True) if backend else ""


def parse_service_config(value: Mapping[str, Any] | str | None, *, source: str | None = None,
                         key_path: str = "service_config", default_policy: str | None = None,
                         default_policy_path: str = "options.grpc.lb_policy_name",
                         retries: bool = True) -> ServiceConfig:
    """Validate a gRPC service config (dict or JSON string); raise ConfigError on anything wrong.

    ``default_policy`` is the policy when the config names none (the
    ``grpc.lb_policy_name`` channel argument, as in grpcio), else
    :data:`DEFAULT_POLICY`. ``retries=False`` (``grpc.enable_retries = 0``)
    drops every retry and hedging policy, as grpcio does.
    """
    if value is None:
        value = {}
    if isinstance(value, str):
        value = load_json(value, source, key_path)
    else:
        check_json(value, source, key_path)
    _expect(isinstance(value, Mapping), "an object", value, source, key_path)
    assert isinstance(value, Mapping)
    top = _present(value)
    _unknown(top, _TOP_KEYS, source, key_path)
    if "loadBalancingConfig" in top:
        policy, policy_config = select_policy(top["loadBalancingConfig"], source,
                                               f"{key_path}.loadBalancingConfig")
    elif "loadBalancingPolicy" in top:
        name = top["loadBalancingPolicy"]
        _expect(isinstance(name, str), "a policy name", name, source, f"{key_path}.loadBalancingPolicy")
        policy, policy_config = select_policy([{name.lower(): {}}], source,
                                               f"{key_path}.loadBalancingPolicy")
    elif default_policy is not None:
        policy, policy_config = select_policy([{default_policy.lower(): {}}], source, default_policy_path)
    else:
        policy, policy_config = select_policy([{DEFAULT_POLICY: {}}], source, key_path)
    health = None
    if "healthCheckConfig" in top:
        hc = top["healthCheckConfig"]
        _expect(isinstance(hc, Mapping), '{"serviceName": ...}', hc, source, f"{key_path}.healthCheckConfig")
        hc = _present(hc)
        _unknown(hc, {"serviceName"}, source, f"{key_path}.healthCheckConfig")
        health = hc.get("serviceName", "")
        _expect(isinstance(health, str), "a string", health, source, f"{key_path}.healthCheckConfig.serviceName")
    methods = _method_table(top.get("methodConfig", []), source, f"{key_path}.methodConfig")
    if not retries:
        methods = {k: dataclasses.replace(v, retry=None, hedging=None) for k, v in methods.items()}
    throttling = top.get("retryThrottling")
    if throttling is not None:
        path = f"{key_path}.retryThrottling"
        _expect(isinstance(throttling, Mapping), '{"maxTokens": N, "tokenRatio": X}', throttling, source, path)
        throttling = _present(throttling)
        _unknown(throttling, {"maxTokens", "tokenRatio"}, source, path)
        for key in ("maxTokens", "tokenRatio"):
            if key not in throttling:
                raise ConfigError(f"missing {key!r}", source=source, key_path=path)
        mt = _uint(throttling["maxTokens"], 1000, source, f"{path}.maxTokens")
        _expect(mt > 0, "an integer in (0, 1000]", mt, source, f"{path}.maxTokens")
        tr = throttling["tokenRatio"]
        _expect(isinstance(tr, int | float) and not isinstance(tr, bool) and 0 < tr < math.inf,
                "a number > 0", tr, source, f"{path}.tokenRatio")
        throttling = {"maxTokens": mt, "tokenRatio": tr}
    return ServiceConfig(
        policy=policy,
        policy_config=policy_config,
        health_service_name=health,
        retry_throttling=_frozen(throttling) if throttling is not None else None,
        methods=MappingProxyType(methods),
        throttling=(None if throttling is None
                    else RetryThrottling(float(throttling["maxTokens"]), float(throttling["tokenRatio"]))),
        backend_json=_backend_json(methods, health),
        raw=_frozen(value),
    )


def resolve_service_config(service_config: Mapping[str, Any] | str | ServiceConfig | None,
                           options: CheckedOptions, *, source: str | None = None,
                           key_path: str = "service_config",
                           options_path: str = "options") -> ServiceConfig:
    """The channel's service config, from ``service_config=`` or the ``grpc.service_config`` option.

    grpcio takes a channel's service config from the ``grpc.service_config``
    channel argument, so that works here too; giving both is a ConfigError
    (which should win is a guess, so this library does not guess).
    ``grpc.lb_policy_name`` picks the policy when the config names none, and
    ``grpc.enable_retries = 0`` turns retries and hedging off, as in grpcio.
    """
    option_path = f"{options_path}.grpc.service_config"
    if service_config is not None and options.service_config is not None:
        raise ConfigError(f"a service config is given twice, as {key_path} and as the grpc.service_config "
                          f"option; give one (preferably {key_path})", source=source, key_path=option_path)
    if isinstance(service_config, ServiceConfig):
        if options.lb_policy_name is None and not options.retries_disabled:
            return service_config
        service_config = service_config.raw
    if service_config is None and options.service_config is not None:
        service_config, key_path = options.service_config, option_path
    return parse_service_config(service_config, source=source, key_path=key_path,
                                default_policy=options.lb_policy_name,
                                default_policy_path=f"{options_path}.grpc.lb_policy_name",
                                retries=not options.retries_disabled)


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
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the file: {exc}", source=str(path)) from exc
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
            return load_json(text, str(path), "(top)")
    except (ImportError, ConfigError):
        raise
    except RecursionError:
        raise ConfigError(f"cannot parse {suffix[1:].upper()}: nested too deeply", source=str(path)) from None
    except Exception as exc:
        raise ConfigError(f"cannot parse {suffix[1:].upper()}: {exc}", source=str(path)) from exc
    raise ConfigError(f"unsupported file type {suffix!r}; expected .toml, .yaml, .yml or .json",
                      source=str(path))


def _tls_file(value: str, src: str, key_path: str) -> str:
    """A PEM file path, relative to the config file's folder; it must exist and look like PEM."""
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = Path(src).resolve().parent / p
    if not p.is_file():
        raise ConfigError(f"file {value!r} does not exist (looked for {str(p)!r}; a relative path is relative "
                          "to the config file's folder)", source=src, key_path=key_path)
    try:
        head = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {str(p)!r}: {exc}", source=src, key_path=key_path) from exc
    if b"-----BEGIN " not in head:
        raise ConfigError(f"{str(p)!r} is not a PEM file (no '-----BEGIN ' line)", source=src, key_path=key_path)
    return str(p)


def _resolver_error(exc: ConfigError, src: str, path: str) -> ConfigError:
    """A resolver plugin's ConfigError, its key path placed under the service's ``resolver`` table.

    Plugins name the key as they see it (``endpoints."10.0.0.9:50051"``, or
    ``resolver.endpoints...`` as the static resolver says at the factory);
    in a file it is ``services.NAME.resolver.endpoints...``.
    """
    key, message = exc.key_path, str(exc)
    if exc.source is None and key and message.startswith(f"{key}: "):
        message = message[len(key) + 2:]
        rest = key.removeprefix("resolver").lstrip(".")
        return ConfigError(message, source=src, key_path=f"{path}.{rest}" if rest else path)
    return ConfigError(message, source=src, key_path=path)


def _entry(name: str, raw: Any, src: str) -> ServiceEntry:
    base = f"services.{name}"
    _expect(isinstance(raw, Mapping), "a table", raw, src, base)
    _unknown(raw, _SERVICE_KEYS, src, base)
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
    checked = check_options(list(options.items()), source=src, key_path=f"{base}.options")
    sc = resolve_service_config(raw.get("service_config"), checked, source=src, key_path=f"{base}.service_config",
                                options_path=f"{base}.options")
    # The service config (and grpc.lb_policy_name) now live in sc; the
    # channel must not see them twice.
    opts = tuple((k, v) for k, v in checked.args if k not in ("grpc.service_config", "grpc.lb_policy_name"))
    resolver = raw.get("resolver", {})
    _expect(isinstance(resolver, Mapping), "a table of resolver options", resolver, src, f"{base}.resolver")
    try:
        resolver_builder.check(parsed_target, ResolverOptions(config=dict(resolver)))
    except TargetError as exc:
        raise ConfigError(str(exc), source=src, key_path=f"{base}.target") from exc
    except ConfigError as exc:
        raise _resolver_error(exc, src, f"{base}.resolver") from exc
    except DiscoveryError:
        raise
    except Exception as exc:
        raise ConfigError(f"resolver {parsed_target.scheme!r} failed on its options: {type(exc).__name__}: {exc}",
                          source=src, key_path=f"{base}.resolver") from exc
    tls = None
    if "tls" in raw:
        t = raw["tls"]
        _expect(isinstance(t, Mapping), "a table", t, src, f"{base}.tls")
        _unknown(t, _TLS_KEYS, src, f"{base}.tls")
        files: dict[str, str] = {}
        for k, v in t.items():
            _expect(isinstance(v, str) and bool(v), "a non-empty string", v, src, f"{base}.tls.{k}")
            files[k] = _tls_file(v, src, f"{base}.tls.{k}") if k.endswith("_file") else v
        if ("cert_file" in files) != ("key_file" in files):
            raise ConfigError("cert_file and key_file go together (a client certificate and its key)",
                              source=src, key_path=f"{base}.tls")
        tls = TLSConfig(**files)
        if tls.server_name is not None and checked.get("grpc.ssl_target_name_override") is not None:
            raise ConfigError("tls.server_name and the grpc.ssl_target_name_override option say the same; "
                              "give one", source=src, key_path=f"{base}.tls.server_name")
    grace = None
    if "drain_grace" in raw:
        # This library's own key: a number of seconds is documented as fine here.
        grace = parse_duration(raw["drain_grace"], key_path=f"{base}.drain_grace", source=src, allow_number=True)
    conns = None
    if "connections_per_backend" in raw:
        conns = raw["connections_per_backend"]
        _expect(isinstance(conns, int) and not isinstance(conns, bool) and 1 <= conns <= 64,
                "an integer 1..64", conns, src, f"{base}.connections_per_backend")
    return ServiceEntry(name, target, opts, sc, _frozen(resolver), tls, grace, conns)


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A validated config file: its services and its ``[observability]`` table."""

    path: str
    services: Mapping[str, ServiceEntry]
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)


def load_config(path: str | os.PathLike[str] | None = None) -> ConfigFile:
    """Read and validate a whole config file (every service, and ``[observability]``). All or nothing."""
    p = find_config_file(path)
    src = str(p)
    data = _read(p)
    check_json(data, src, "")
    _expect(isinstance(data, Mapping), "a table with a [services] section", type(data).__name__, src, "(top)")
    unknown = set(data) - {"services", "observability"}
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)}; expected 'services' (and optionally "
                          "'observability')", source=src, key_path="(top)")
    services = data.get("services")
    _expect(isinstance(services, Mapping) and len(services) > 0, "a non-empty [services] table", services, src,
            "services")
    entries = {name: _entry(name, raw, src) for name, raw in services.items()}
    obs = parse_observability(data["observability"], src) if "observability" in data else ObservabilityConfig()
    return ConfigFile(src, MappingProxyType(entries), obs)


def load_config_file(path: str | os.PathLike[str] | None = None) -> dict[str, ServiceEntry]:
    """Read and validate every service in a config file. All or nothing."""
    return dict(load_config(path).services)
