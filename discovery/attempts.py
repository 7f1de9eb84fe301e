"""One RPC's attempts as a value: what to do after each attempt ends.

Every call shape (blocking, ``.future()``, streams, asyncio) asks the same
:class:`Attempts` what comes next, like urllib3's ``Retry``; the drivers in
:mod:`discovery.calls` only carry the answer out. Three kinds of second
attempt exist:

- A *transparent* re-pick: the attempt never left the client (the backend
  channel's own pick failed, or the backend was closed under the RPC by an
  address-set change). It goes to another backend at once and is no retry
  (gRFC A6 does the same), bounded so an address set whose every backend
  refuses cannot spin.
- A *retry* under ``methodConfig.retryPolicy`` (gRFC A6): after a retryable
  status, or an attempt that outlived ``perAttemptRecvTimeout``, with gRPC's
  randomised exponential backoff or the server's pushback, while the
  channel's :class:`RetryThrottle` has tokens, each to a backend not tried
  yet when one exists (Envoy's previous-hosts rule).
- A *hedge* under ``hedgingPolicy``: another copy every ``hedgingDelay``
  while no attempt has succeeded or failed fatally.

The effective deadline is the earlier of the call's own timeout and the
method config's ``timeout`` (gRPC's rule), so it is applied here, not by
grpcio (whose per-backend timeout handling has grpc/grpc#34547).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc

from .methodconfig import HedgingPolicy, MethodConfig, RetryPolicy

__all__ = ["Attempts", "RetryThrottle", "effective_deadline", "never_sent", "pushback_of"]

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED

# What grpcio's core says when the backend channel's own pick fails, i.e. the
# RPC was never written to any connection. grpcio exposes no other signal for
# "not sent"; tests/test_attempts.py pins this wording against a real grpcio.
_NOT_SENT_PREFIXES = (
    "failed to connect to all addresses",
    "connections to all backends failing",
    "empty address list",
)

# The pushback trailer of gRFC A6: a server asks for no retry (negative or
# malformed) or a retry after exactly this many milliseconds.
PUSHBACK_KEY = "grpc-retry-pushback-ms"


def never_sent(code: grpc.StatusCode | None, details: str | None) -> bool:
    """True if an attempt that ended with ``code``/``details`` never reached a server.

    The one place that reads grpcio's error text.
    """
    return code is _UNAVAILABLE and bool(details) and details.startswith(_NOT_SENT_PREFIXES)  # type: ignore[union-attr]


def pushback_of(trailing_metadata: Sequence[Any] | None) -> float | None:
    """The server's retry pushback in seconds; -1.0 means "do not retry"; None if absent."""
    if not trailing_metadata:
        return None
    for key, value in trailing_metadata:
        if key == PUSHBACK_KEY:
            text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
            if text.isascii() and text.isdigit():
                return int(text) / 1000.0
            return -1.0
    return None


def effective_deadline(timeout: float | None, mc: MethodConfig | None, now: float) -> float | None:
    """The absolute deadline: the earlier of the call's ``timeout`` and the method's."""
    limits = [t for t in (timeout, None if mc is None else mc.timeout) if t is not None]
    return now + min(limits) if limits else None


class RetryThrottle:
    """gRFC A6 retry throttling: a token bucket shared by one channel's RPCs. Thread-safe.

    Each failed attempt costs a token, each success returns ``token_ratio``;
    retries and hedges are allowed only while more than half the tokens remain.
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


class Attempts:
    """The attempt state of one RPC. Owned by one driver; not thread-safe.

    ``deadline`` is absolute on :func:`time.monotonic`. ``tried`` holds the
    backends attempts went to, in order. ``retries`` counts attempts beyond
    the first that the retry or hedging policy allowed (transparent re-picks
    are not counted). ``max_transparent`` bounds re-picks of never-sent
    attempts (the number of backends, plus one).
    """

    __slots__ = ("deadline", "hedging", "last_transparent", "max_transparent", "retries", "retry", "throttle",
                 "transparent", "tried", "wait_for_ready")

    def __init__(self, mc: MethodConfig | None, throttle: RetryThrottle | None, deadline: float | None,
                 wait_for_ready: bool | None, max_transparent: int) -> None:
        self.retry: RetryPolicy | None = None if mc is None else mc.retry
        self.hedging: HedgingPolicy | None = None if mc is None else mc.hedging
        self.throttle = throttle if (self.retry is not None or self.hedging is not None) else None
        self.deadline = deadline
        self.wait_for_ready = wait_for_ready
        self.tried: list[Any] = []
        self.retries = 0
        self.transparent = 0
        self.max_transparent = max_transparent
        # Whether the latest after_failure was a transparent re-pick (observers
        # name the next attempt by it: a retry, or a re-pick that is none).
        self.last_transparent = False

    def no_replay(self) -> Attempts:
        """For a call with a request stream, which is never replayed: no retry or hedging
        policy applies (so it takes no part in retry throttling either); only a transparent
        re-pick before the call starts (its backend closed under it) remains."""
        self.retry = self.hedging = None
        self.throttle = None
        return self

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (never negative), or None without one."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - (time.monotonic() if now is None else now))

    def attempt_timeout(self, now: float | None = None) -> float | None:
        """The timeout for the next attempt: what is left, capped by ``perAttemptRecvTimeout``."""
        left = self.remaining(now)
        per = None if self.retry is None else self.retry.per_attempt_recv_timeout
        if per is None:
            return left
        return per if left is None else min(per, left)

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (time.monotonic() if now is None else now) >= self.deadline

    # -- outcomes -------------------------------------------------------------

    def succeeded(self) -> None:
        """The RPC committed to a successful attempt."""
        if self.throttle is not None:
            self.throttle.on_success()

    def after_failure(self, code: grpc.StatusCode, details: str | None,
                      trailing_metadata: Sequence[Any] | None = None,
                      *, refused: bool = False, rng: random.Random | None = None) -> float | None:
        """An attempt failed: seconds to wait before the next one (0 for at once), or None to give up.

        ``refused`` means the channel itself refused the backend (closed under
        the RPC): never sent by construction.
        """
        self.last_transparent = refused or never_sent(code, details)
        if self.last_transparent:
            self.transparent += 1
            return 0.0 if self.transparent <= self.max_transparent and not self.expired() else None
        policy = self.retry
        if policy is None:
            return None
        per_attempt_timeout = (code is _DEADLINE and policy.per_attempt_recv_timeout is not None
                               and not self.expired())
        retryable = code in policy.retryable or per_attempt_timeout
        if retryable and self.throttle is not None:
            self.throttle.on_failure()
        if not retryable or self.retries + 1 >= policy.max_attempts:
            return None
        if self.throttle is not None and not self.throttle.allows_retry():
            return None
        pushback = pushback_of(trailing_metadata)
        if pushback is not None and pushback < 0:
            return None
        self.retries += 1
        delay = pushback if pushback is not None else policy.backoff(self.retries, rng)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        return delay

    # -- hedging ----------------------------------------------------------------

    def may_hedge(self, started: int) -> bool:
        """Whether another hedge may start now, ``started`` attempts having started."""
        h = self.hedging
        if h is None or started >= h.max_attempts or self.expired():
            return False
        return self.throttle is None or self.throttle.allows_retry()

    def hedge_failed(self, code: grpc.StatusCode, trailing_metadata: Sequence[Any] | None
                     ) -> tuple[bool, float | None]:
        """A hedge failed: (fatal, pushback). A fatal status ends the RPC with it.

        A pushback asks for the next hedge after that many seconds (or for no
        more hedges when negative), as gRFC A6 says.
        """
        h = self.hedging
        assert h is not None
        fatal = code not in h.non_fatal
        if not fatal and self.throttle is not None:
            self.throttle.on_failure()
        return fatal, pushback_of(trailing_metadata)
