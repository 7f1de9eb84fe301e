"""Validation of ``kubernetes:`` targets and the resolver's options (no I/O here)."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from discovery.errors import ConfigError, TargetError
from discovery.target import Target, redact_target

__all__ = [
    "DEFAULT_WATCH_TIMEOUT",
    "ENDPOINTS_APIS",
    "KEYS",
    "KubeConfig",
    "KubeTarget",
    "parse_config",
    "parse_go_duration",
    "parse_target",
]

#: Without a ``watch_timeout`` option each watch gets a random timeout in this range
#: (seconds), as client-go's reflector does, so that many clients do not reconnect in step.
DEFAULT_WATCH_TIMEOUT = (300.0, 600.0)
#: The two ways to read a Service's endpoints.
ENDPOINTS_APIS = ("slices", "endpoints")
KEYS = ("kubeconfig", "context", "namespace", "watch_timeout", "endpoints_api", "keep_serving_terminating")

# A DNS-1035 label (Service names), a DNS-1123 label (namespaces, port names).
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """What a ``kubernetes:`` target names.

    ``namespace`` is None when the target leaves it to the options, the
    kubeconfig context or the pod. ``port`` is a number (used as is), a port
    name (looked up in each EndpointSlice) or None (the service's only port).
    """

    service: str
    namespace: str | None
    port: int | str | None

    @property
    def display(self) -> str:
        ns = f".{self.namespace}" if self.namespace else ""
        port = "" if self.port is None else f":{self.port}"
        return f"{self.service}{ns}{port}"


@dataclass(frozen=True, slots=True)
class KubeConfig:
    """The validated ``[services.x.resolver]`` table of a ``kubernetes:`` target.

    ``watch_timeout`` None means a random 5 to 10 minutes per watch.
    """

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    watch_timeout: float | None = None
    endpoints_api: str = "slices"
    keep_serving_terminating: bool = False


def parse_go_duration(value: Any, key: str) -> float:
    """Seconds from a number or a Go duration string (``"3s"``, ``"500ms"``, ``"1m30s"``); must be positive."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration such as \"3s\" or \"5m\", got {value!r}", key_path=key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for m in _GO_DURATION.finditer(text):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if not text or pos != len(text):
            raise ConfigError(f"expected a duration such as \"3s\", \"500ms\", \"5m\" or \"1m30s\", got {value!r}",
                              key_path=key)
    else:
        raise ConfigError(f"expected a duration such as \"3s\" or a number of seconds, got {type(value).__name__}",
                          key_path=key)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"must be a positive duration, got {value!r}", key_path=key)
    return seconds


def _text(config: Mapping[str, Any], key: str, what: str) -> str | None:
    if key not in config:
        return None
    value = config[key]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected {what} (a non-empty string), got {value!r}", key_path=key)
    return value.strip()


def _namespace(value: str, *, key: str | None, target: Target | None = None) -> str:
    if not _DNS1123.match(value):
        # redact_target: a namespace from the target's authority may be userinfo (user:password@).
        message = (f"{redact_target(value)!r} is not a valid namespace (lowercase letters, digits and '-', "
                   "starting and ending with a letter or digit, at most 63 characters)")
        if key is not None:
            raise ConfigError(message, key_path=key)
        raise TargetError(f"target {str(target)!r}: {message}")
    return value


def parse_config(config: Mapping[str, Any] | None) -> KubeConfig:
    """Validate the resolver table; ConfigError names the offending key."""
    if config is None:
        return KubeConfig()
    if not isinstance(config, Mapping):
        raise ConfigError(f"the kubernetes resolver options must be a table, got {type(config).__name__}")
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"unknown kubernetes resolver option; expected one of {', '.join(KEYS)}",
                              key_path=str(key))
    namespace = _text(config, "namespace", "a namespace")
    if namespace is not None:
        _namespace(namespace, key="namespace")
    watch_timeout = None
    if "watch_timeout" in config:
        watch_timeout = parse_go_duration(config["watch_timeout"], "watch_timeout")
    endpoints_api = "slices"
    if "endpoints_api" in config:
        value = config["endpoints_api"]
        if not isinstance(value, str) or value.strip().lower() not in ENDPOINTS_APIS:
            raise ConfigError(f'expected "slices" (EndpointSlices, discovery.k8s.io/v1) or "endpoints" '
                              f'(the legacy v1 Endpoints), got {value!r}', key_path="endpoints_api")
        endpoints_api = value.strip().lower()
    keep = config.get("keep_serving_terminating", False)
    if not isinstance(keep, bool):
        raise ConfigError(f"expected true or false, got {keep!r}", key_path="keep_serving_terminating")
    return KubeConfig(
        kubeconfig=_text(config, "kubeconfig", "the path of a kubeconfig file"),
        context=_text(config, "context", "the name of a kubeconfig context"),
        namespace=namespace,
        watch_timeout=watch_timeout,
        endpoints_api=endpoints_api,
        keep_serving_terminating=keep,
    )


def _port(text: str, target: Target) -> int | str:
    if text.isdigit():
        number = int(text)
        if not 0 < number < 65536:
            raise TargetError(f"target {str(target)!r}: port must be 1..65535, got {text}")
        return number
    if not _DNS1123.match(text) or not any(c.isalpha() for c in text):
        raise TargetError(f"target {str(target)!r}: {text!r} is neither a port number nor a valid port name "
                          "(lowercase letters, digits and '-', at most 63 characters)")
    return text


def parse_target(target: Target) -> KubeTarget:
    """Validate a ``kubernetes:`` target (kuberesolver's forms); TargetError says what is wrong.

    ``kubernetes:///SERVICE[.NAMESPACE][:PORT]``, also written
    ``SERVICE.NAMESPACE.svc[.cluster.local]``, and
    ``kubernetes://NAMESPACE/SERVICE[:PORT]``.
    """
    if target.query:
        raise TargetError(f"target {str(target)!r}: kubernetes targets take no query parameters; "
                          "put resolver options in the service's resolver table")
    endpoint = target.endpoint.strip()
    host, sep, port_text = endpoint.partition(":")
    if sep and not port_text:
        raise TargetError(f"target {str(target)!r}: empty port after ':'")
    if ":" in port_text or "/" in endpoint:
        raise TargetError(f"target {str(target)!r}: expected SERVICE[.NAMESPACE][:PORT]")
    labels = host.split(".")
    namespace: str | None = None
    if target.authority:
        if len(labels) != 1:
            raise TargetError(f"target {str(target)!r}: with the namespace in the authority "
                              f"({target.authority!r}) the endpoint is just SERVICE[:PORT]")
        namespace = _namespace(target.authority, key=None, target=target)
    elif len(labels) == 2:
        namespace = _namespace(labels[1], key=None, target=target)
    elif len(labels) > 2:
        if labels[2] != "svc" or not all(labels[3:]):
            raise TargetError(f"target {str(target)!r}: expected SERVICE, SERVICE.NAMESPACE or "
                              "SERVICE.NAMESPACE.svc[.CLUSTER_DOMAIN]")
        namespace = _namespace(labels[1], key=None, target=target)
    service = labels[0]
    if not _DNS1035.match(service):
        raise TargetError(f"target {str(target)!r}: {service!r} is not a valid Service name (lowercase letters, "
                          "digits and '-', starting with a letter, at most 63 characters)")
    return KubeTarget(service=service, namespace=namespace, port=_port(port_text, target) if sep else None)
