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

import threading

import grpc

__all__ = ["RetryThrottle", "never_sent"]

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
