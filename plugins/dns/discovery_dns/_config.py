"""Validation of the DNS resolver's options and targets (no network I/O here)."""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.name

from discovery.errors import ConfigError, TargetError
from discovery.target import Target, parse_host_port, redact_target, split_host_port

__all__ = [
    "DEFAULT_MAX_INTERVAL",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "DNS_PORT",
    "DnsConfig",
    "DnsTarget",
    "parse_config",
    "parse_duration",
    "parse_target",
]

#: gRPC's default port for a target without one.
DEFAULT_PORT = 443
#: The port of a DNS server given without one.
DNS_PORT = 53
#: Never look up more often than this (TTL floor, resolve_now rate limit, first error retry).
DEFAULT_MIN_INTERVAL = 2.0
#: Always look up at least this often (TTL ceiling, backoff cap).
DEFAULT_MAX_INTERVAL = 300.0
#: How long one DNS query may take before it counts as a timeout.
DEFAULT_TIMEOUT = 5.0

FAMILIES = ("ipv4", "ipv6")
KEYS = ("server", "min_interval", "max_interval", "timeout", "srv", "families", "hosts_file", "srv_tiers")
SRV_TIERS = ("lowest", "all")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The validated ``[services.x.resolver]`` table of a ``dns:`` target.

    ``srv`` is True (always SRV), False (never) or None ("auto": SRV when the
    endpoint has no port and its first label starts with ``_``).
    ``hosts_file`` is None for the system's (``/etc/hosts``), ``""`` when the
    hosts file is not consulted, else the path of the file to read instead.
    It applies only without an explicit DNS server.
    """

    server: tuple[str, int] | None = None
    min_interval: float = DEFAULT_MIN_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    srv: bool | None = None
    families: tuple[str, ...] = FAMILIES
    hosts_file: str | None = None
    #: "lowest": only the lowest SRV priority that resolves; "all": every tier that
    #: resolves, each with its priority (for a balancer that fails over by health).
    srv_tiers: str = "lowest"


@dataclass(frozen=True, slots=True)
class DnsTarget:
    """What a ``dns:`` target asks for.

    ``host`` is a DNS name (no trailing dot) or an IP literal (``literal``);
    ``port`` is None in SRV mode, where the SRV records carry the ports.
    ``server`` is the DNS server to ask, None for the system configuration.
    """

    host: str
    port: int | None
    srv: bool
    literal: bool
    server: tuple[str, int] | None

    @property
    def display(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number or a duration string (gRPC's ``"30s"``, also ms/m/h)."""
    if isinstance(value, bool):
        raise ConfigError(f"expected seconds (a number or a string like '30s'), got {value!r}", key_path=key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ConfigError(f"expected a duration like '30s', '1.5s', '500ms' or '5m', got {value!r}", key_path=key)
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ConfigError(
            f"expected seconds (a number or a string like '30s'), got {type(value).__name__} {value!r}",
            key_path=key,
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"must be a positive duration, got {value!r}", key_path=key)
    return seconds


def _parse_server(text: str, what: str, key: str | None) -> tuple[str, int]:
    error = ConfigError if key else TargetError
    try:
        host, port = parse_host_port(text, DNS_PORT)
    except TargetError as exc:
        # redact_target: the target's authority may carry userinfo (user:password@), a secret.
        raise error(f"bad DNS server {redact_target(text)!r}: {exc}", key_path=key) from exc
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise error(
            f"{what} must be an IP address with an optional port (127.0.0.1:5353, [::1]:53), got {text!r}",
            key_path=key,
        ) from exc
    return str(ip), port


def _parse_srv(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        low = value.strip().lower()
        if low == "auto":
            return None
        if low in ("true", "false"):
            return low == "true"
    raise ConfigError(f'expected true, false or "auto", got {value!r}', key_path="srv")


def _parse_families(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f'expected a list such as ["ipv4", "ipv6"], got {value!r}', key_path="families")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or item.lower() not in FAMILIES:
            raise ConfigError(f'each entry must be "ipv4" or "ipv6", got {item!r}', key_path="families")
        if item.lower() in out:
            raise ConfigError(f"{item!r} is listed twice", key_path="families")
        out.append(item.lower())
    if not out:
        raise ConfigError('must name at least one of "ipv4", "ipv6"', key_path="families")
    return tuple(out)


def _parse_hosts_file(value: Any) -> str:
    if value is False:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected the path of a hosts file, or false, got {value!r}", key_path="hosts_file")
    if not os.path.isfile(value):
        raise ConfigError(f"no such file: {value!r}", key_path="hosts_file")
    return value


def parse_config(config: Mapping[str, Any] | None) -> DnsConfig:
    """Validate the resolver table; ConfigError names the offending key."""
    if config is None:
        return DnsConfig()
    if not isinstance(config, Mapping):
        raise ConfigError(f"the dns resolver options must be a table, got {type(config).__name__}")
    for key in config:
        if key == "interval":
            # The core's system resolver takes it; a config written for the core alone
            # must say what to write once this plugin serves dns: instead.
            raise ConfigError("the system resolver's option; the DNS plugin, which now serves dns: targets, "
                              "re-resolves when the answer's TTL expires, bounded by min_interval and "
                              "max_interval (give those instead)", key_path="interval")
        if key not in KEYS:
            raise ConfigError(f"unknown dns resolver option; expected one of {', '.join(KEYS)}", key_path=str(key))
    server = None
    if "server" in config:
        value = config["server"]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"expected 'host[:port]' of a DNS server, got {value!r}", key_path="server")
        server = _parse_server(value, "server", "server")
    min_interval = (
        parse_duration(config["min_interval"], "min_interval") if "min_interval" in config else DEFAULT_MIN_INTERVAL
    )
    max_interval = (
        parse_duration(config["max_interval"], "max_interval") if "max_interval" in config else DEFAULT_MAX_INTERVAL
    )
    if min_interval > max_interval:
        key = "max_interval" if "max_interval" in config else "min_interval"
        raise ConfigError(
            f"min_interval ({min_interval:g}s) must not exceed max_interval ({max_interval:g}s)", key_path=key
        )
    timeout = parse_duration(config["timeout"], "timeout") if "timeout" in config else DEFAULT_TIMEOUT
    srv = _parse_srv(config["srv"]) if "srv" in config else None
    families = _parse_families(config["families"]) if "families" in config else FAMILIES
    hosts_file = _parse_hosts_file(config["hosts_file"]) if "hosts_file" in config else None
    if server is not None and hosts_file is not None:
        raise ConfigError("the hosts file is not consulted when a DNS server is given", key_path="hosts_file")
    srv_tiers = config.get("srv_tiers", "lowest")
    if srv_tiers not in SRV_TIERS:
        raise ConfigError(f'expected "lowest" or "all", got {srv_tiers!r}', key_path="srv_tiers")
    return DnsConfig(
        server=server,
        min_interval=min_interval,
        max_interval=max_interval,
        timeout=timeout,
        srv=srv,
        families=families,
        hosts_file=hosts_file,
        srv_tiers=srv_tiers,
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_name(host: str, target: Target) -> str:
    if any(c.isspace() or c in "/?#@[]:" for c in host):
        raise TargetError(f"target {str(target)!r}: {host!r} is not a valid DNS name")
    try:
        name = dns.name.from_text(host)
    except dns.exception.DNSException as exc:
        raise TargetError(f"target {str(target)!r}: {host!r} is not a valid DNS name: {exc}") from exc
    if name == dns.name.root:
        raise TargetError(f"target {str(target)!r}: the root name is not a host")
    return host.rstrip(".")


def _looks_srv(host: str) -> bool:
    return host.startswith("_")


def parse_target(target: Target, config: DnsConfig) -> DnsTarget:
    """Validate a ``dns:`` target together with its options (TargetError/ConfigError)."""
    if target.query:
        raise TargetError(
            f"target {str(target)!r}: dns targets take no query parameters; "
            "put resolver options in the service's resolver table"
        )
    server = config.server
    if server is None and target.authority:
        server = _parse_server(target.authority, f"the authority of {str(target)!r}", None)
        if config.hosts_file is not None:
            raise ConfigError(
                f"target {str(target)!r} names a DNS server, which is asked directly; "
                "the hosts file applies only to dns:///name targets",
                key_path="hosts_file",
            )
    host_text, port_text = split_host_port(target.endpoint)
    if _is_ip(host_text):
        if config.srv:
            raise ConfigError(f"SRV mode needs a DNS name, not the IP literal {host_text!r}", key_path="srv")
        _, port = parse_host_port(target.endpoint, DEFAULT_PORT)
        return DnsTarget(str(ipaddress.ip_address(host_text)), port, False, True, server)
    host = _check_name(host_text, target)
    srv = config.srv if config.srv is not None else (port_text is None and _looks_srv(host))
    if srv:
        if port_text is not None:
            raise ConfigError(
                f"SRV mode takes the ports from the SRV records; drop ':{port_text}' from {str(target)!r}",
                key_path="srv",
            )
        return DnsTarget(host, None, True, False, server)
    _, port = parse_host_port(target.endpoint, DEFAULT_PORT)
    return DnsTarget(host, port, False, False, server)


def service_domain(host: str) -> str:
    """``orders.internal`` for ``_grpc._tcp.orders.internal`` (RFC 2782's Name part)."""
    labels = host.rstrip(".").split(".")
    while len(labels) > 1 and labels[0].startswith("_"):
        labels.pop(0)
    return ".".join(labels)
