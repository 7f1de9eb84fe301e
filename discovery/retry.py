"""Retries across backends: transparent re-picks, gRPC retry policies and A6 throttling.

Two kinds of second attempt exist:

- A *transparent* re-pick: the backend channel failed the RPC before any
  server saw it (its own pick failed: the connection had just gone, or the
  backend turned unhealthy). Nothing was sent, so the RPC goes to another
  backend at once and it does not count as a retry (gRFC A6 does the same).
- A *retry* under ``methodConfig.retryPolicy``: the server answered with a
  retryable status. Each attempt goes to a backend not tried yet when one
  exists (Envoy's previous-hosts rule), after gRPC's randomised exponential
  backoff, and only while :class:`RetryThrottle` has tokens.

Only calls whose request can be replayed are retried: unary requests (unary
and server-streaming calls, the latter before the first response message).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from .config import parse_duration
from .errors import ConfigError

__all__ = ["RetryPolicy", "RetryThrottle", "never_sent", "policy_for_method"]

# What grpcio's core says when the backend channel's own pick fails, i.e. the
# RPC was never written to any connection. Matching on the text is the only
# signal grpcio exposes for "not sent".
_NOT_SENT_PREFIXES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "empty address list",
)


def never_sent(exc: BaseException) -> bool:
    """True if ``exc`` is an UNAVAILABLE that grpcio raised before sending anything.

    Works for sync errors (a :class:`grpc.Call`) and grpc.aio's AioRpcError alike.
    """
    code = getattr(exc, "code", None)
    if code is None or code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    details = exc.details() or ""  # type: ignore[attr-defined]
    return bool(details.startswith(_NOT_SENT_PREFIXES))


_CODES = {c.name: c for c in grpc.StatusCode}
_CODES_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}


def parse_codes(value: Any, key_path: str) -> frozenset[grpc.StatusCode]:
    """Status codes given as names (``"UNAVAILABLE"``) or numbers (14)."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"expected a list of status codes, got {value!r}", key_path=key_path)
    out = set()
    for v in value:
        code = _CODES.get(v.upper()) if isinstance(v, str) else _CODES_BY_NUMBER.get(v)
        if code is None or code is grpc.StatusCode.OK:
            raise ConfigError(f"{v!r} is not a gRPC status code name or number", key_path=key_path)
        out.add(code)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``methodConfig[].retryPolicy`` (gRFC A6). ``max_attempts`` is capped at 5 as in gRPC."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float
    multiplier: float
    retryable: frozenset[grpc.StatusCode]

    @classmethod
    def parse(cls, raw: Mapping[str, Any], key_path: str) -> RetryPolicy:
        required = {"maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier", "retryableStatusCodes"}
        missing = required - set(raw)
        if missing:
            raise ConfigError(f"missing {sorted(missing)}", key_path=key_path)
        unknown = set(raw) - required - {"perAttemptRecvTimeout"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}", key_path=key_path)
        attempts = raw["maxAttempts"]
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 2:
            raise ConfigError(f"maxAttempts must be an integer >= 2, got {attempts!r}",
                              key_path=f"{key_path}.maxAttempts")
        mult = raw["backoffMultiplier"]
        if not isinstance(mult, int | float) or isinstance(mult, bool) or mult <= 0:
            raise ConfigError(f"backoffMultiplier must be > 0, got {mult!r}",
                              key_path=f"{key_path}.backoffMultiplier")
        initial = parse_duration(raw["initialBackoff"], key_path=f"{key_path}.initialBackoff")
        maximum = parse_duration(raw["maxBackoff"], key_path=f"{key_path}.maxBackoff")
        if initial <= 0 or maximum <= 0:
            raise ConfigError("initialBackoff and maxBackoff must be > 0", key_path=key_path)
        codes = parse_codes(raw["retryableStatusCodes"], f"{key_path}.retryableStatusCodes")
        if not codes:
            raise ConfigError("retryableStatusCodes must not be empty", key_path=f"{key_path}.retryableStatusCodes")
        return cls(min(attempts, 5), initial, maximum, float(mult), codes)

    def backoff(self, retry_number: int) -> float:
        """gRPC's delay before retry ``retry_number`` (1-based): uniform in [0, cap)."""
        cap = min(self.initial_backoff * self.multiplier ** (retry_number - 1), self.max_backoff)
        return random.uniform(0, cap)


class RetryThrottle:
    """gRFC A6 retry throttling: a token bucket shared by one channel's RPCs. Thread-safe.

    Each failed attempt costs a token, each success returns ``token_ratio``;
    retries are allowed only while more than half the tokens remain.
    """

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self._tokens = self.max_tokens
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def on_failure(self) -> None:
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1)

    def on_success(self) -> None:
        with self._lock:
            self._tokens = min(self.max_tokens, self._tokens + self.token_ratio)

    def allows_retry(self) -> bool:
        return self._tokens > self.max_tokens / 2


def policy_for_method(method_config: Any, method: str) -> RetryPolicy | None:
    """The retry policy ``methodConfig`` assigns to ``/pkg.Service/Method``, if any.

    gRPC's matching: an exact {service, method} entry wins over a {service}
    entry, which wins over an empty (default) name.
    """
    service, _, name = method.lstrip("/").partition("/")
    best: tuple[int, Any] | None = None
    for i, entry in enumerate(method_config or ()):
        for n in entry.get("name", ()):
            s, m = n.get("service", ""), n.get("method", "")
            if s == service and m == name:
                rank = 3
            elif s == service and not m:
                rank = 2
            elif not s and not m:
                rank = 1
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, (i, entry))
    if best is None or "retryPolicy" not in best[1][1]:
        return None
    i, entry = best[1]
    return RetryPolicy.parse(entry["retryPolicy"], f"service_config.methodConfig[{i}].retryPolicy")
