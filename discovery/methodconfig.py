"""``methodConfig`` and ``retryThrottling`` of a gRPC service config, as values.

Parsed once when the channel is built (see :mod:`discovery.config`); the data
plane looks a method's :class:`MethodConfig` up once per multicallable, never
per RPC. Field meanings are gRPC's own (gRFC A6 for retries and hedging,
``grpc/service_config.proto`` for the rest).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from .durations import parse_duration
from .errors import ConfigError

__all__ = [
    "HedgingPolicy",
    "MethodConfig",
    "RetryPolicy",
    "RetryThrottling",
    "lookup_method_config",
    "parse_codes",
]

_CODES = {c.name: c for c in grpc.StatusCode}
_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}

# gRPC caps maxAttempts at 5 for both retries and hedging (gRFC A6).
MAX_ATTEMPTS_CAP = 5


def parse_codes(value: Any, key_path: str) -> frozenset[grpc.StatusCode]:
    """Status codes given as names (``"UNAVAILABLE"``) or numbers (14)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"expected a list of status codes, got {value!r}", key_path=key_path)
    out = set()
    for v in value:
        code = None
        if isinstance(v, str):
            code = _CODES.get(v.upper())
        elif isinstance(v, int) and not isinstance(v, bool):  # True is an int to Python, but no status code
            code = _CODES_BY_NUMBER.get(v)
        if code is None or code is grpc.StatusCode.OK:
            raise ConfigError(f"{v!r} is not a gRPC status code name or number", key_path=key_path)
        out.add(code)
    return frozenset(out)


# protobuf's JSON mapping (and so gRPC) also takes numbers written as strings.
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _numeric(value: Any) -> Any:
    """``"3"`` -> 3 and ``"1.5"`` -> 1.5 (ASCII digits only); anything else unchanged."""
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return float(value) if "." in value else int(value)
    return value


def _present(raw: Mapping[str, Any]) -> dict[str, Any]:
    # gRPC reads a null field as an absent one.
    return {k: v for k, v in raw.items() if v is not None}


def _attempts(raw: Mapping[str, Any], key_path: str) -> int:
    attempts = _numeric(raw["maxAttempts"])
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
        raise ConfigError(f"maxAttempts must be an integer >= 2, got {attempts!r}",
                          key_path=f"{key_path}.maxAttempts")
    return min(attempts, MAX_ATTEMPTS_CAP)


def _check_keys(raw: Mapping[str, Any], required: set[str], optional: set[str], key_path: str) -> None:
    missing = required - set(raw)
    if missing:
        raise ConfigError(f"missing {sorted(missing)}", key_path=key_path)
    unknown = set(raw) - required - optional
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(map(str, unknown))}; expected some of "
                          f"{sorted(required | optional)}", key_path=key_path)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``methodConfig[].retryPolicy`` (gRFC A6). ``max_attempts`` is capped at 5 as in gRPC."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    retryable: frozenset[grpc.StatusCode]
    per_attempt_recv_timeout: float | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], key_path: str) -> RetryPolicy:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected an object, got {raw!r}", key_path=key_path)
        raw = _present(raw)
        _check_keys(raw, {"maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier",
                          "retryableStatusCodes"}, {"perAttemptRecvTimeout"}, key_path)
        attempts = _attempts(raw, key_path)
        mult = _numeric(raw["backoffMultiplier"])
        if not isinstance(mult, int | float) or isinstance(mult, bool) or not 0 < mult < math.inf:
            raise ConfigError(f"backoffMultiplier must be a number > 0, got {mult!r}",
                              key_path=f"{key_path}.backoffMultiplier")
        initial = parse_duration(raw["initialBackoff"], key_path=f"{key_path}.initialBackoff")
        maximum = parse_duration(raw["maxBackoff"], key_path=f"{key_path}.maxBackoff")
        if initial <= 0 or maximum <= 0:
            raise ConfigError("initialBackoff and maxBackoff must be > 0", key_path=key_path)
        codes = parse_codes(raw["retryableStatusCodes"], f"{key_path}.retryableStatusCodes")
        if not codes:
            raise ConfigError("retryableStatusCodes must not be empty", key_path=f"{key_path}.retryableStatusCodes")
        recv = None
        if "perAttemptRecvTimeout" in raw:
            recv = parse_duration(raw["perAttemptRecvTimeout"], key_path=f"{key_path}.perAttemptRecvTimeout")
            if recv <= 0:
                raise ConfigError("perAttemptRecvTimeout must be > 0", key_path=f"{key_path}.perAttemptRecvTimeout")
        return cls(attempts, initial, maximum, float(mult), codes, recv)

    def backoff(self, retry_number: int, rng: random.Random | None = None) -> float:
        """gRPC's delay before retry ``retry_number`` (1-based): uniform in [0, cap)."""
        cap = min(self.initial_backoff * self.multiplier ** (retry_number - 1), self.max_backoff)
        return (rng or random).uniform(0, cap)


@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    """``methodConfig[].hedgingPolicy`` (gRFC A6): up to ``max_attempts`` copies of the RPC,
    one every ``hedging_delay`` seconds, each to a backend not tried yet; a status in
    ``non_fatal`` lets the remaining hedges go on, any other ends the RPC."""

    max_attempts: int
    hedging_delay: float = 0.0
    non_fatal: frozenset[grpc.StatusCode] = frozenset()

    @classmethod
    def parse(cls, raw: Mapping[str, Any], key_path: str) -> HedgingPolicy:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"expected an object, got {raw!r}", key_path=key_path)
        raw = _present(raw)
        _check_keys(raw, {"maxAttempts"}, {"hedgingDelay", "nonFatalStatusCodes"}, key_path)
        attempts = _attempts(raw, key_path)
        delay = 0.0
        if "hedgingDelay" in raw:
            delay = parse_duration(raw["hedgingDelay"], key_path=f"{key_path}.hedgingDelay")
            if delay < 0:
                raise ConfigError("hedgingDelay must be >= 0", key_path=f"{key_path}.hedgingDelay")
        codes: frozenset[grpc.StatusCode] = frozenset()
        if "nonFatalStatusCodes" in raw:
            codes = parse_codes(raw["nonFatalStatusCodes"], f"{key_path}.nonFatalStatusCodes")
        return cls(attempts, delay, codes)


@dataclass(frozen=True, slots=True)
class RetryThrottling:
    """``retryThrottling`` (gRFC A6): the channel-wide token bucket's size and refill ratio."""

    max_tokens: float
    token_ratio: float


@dataclass(frozen=True, slots=True)
class MethodConfig:
    """What ``methodConfig`` says about one method. ``timeout`` in seconds.

    ``retry`` and ``hedging`` are mutually exclusive (gRPC rejects a config with both).
    """

    timeout: float | None = None
    wait_for_ready: bool | None = None
    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None
    max_request_bytes: int | None = None
    max_response_bytes: int | None = None


# Keyed by (service, method); ("", "") is the default entry, (service, "") a service-wide one.
MethodTable = Mapping[tuple[str, str], MethodConfig]


def lookup_method_config(table: MethodTable, method: str) -> MethodConfig | None:
    """gRPC's matching for ``/pkg.Service/Method``: the exact {service, method} entry, else
    the {service} entry, else the default (empty) name; None if none applies."""
    service, _, name = method.lstrip("/").partition("/")
    return table.get((service, name)) or table.get((service, "")) or table.get(("", ""))
