"""Test helpers shipped with the package, for this project's tests and users' own.

- :class:`ManualResolver` / :class:`ManualResolverBuilder`: a resolver a test
  pushes address sets and errors into (grpc-go's ``manual`` resolver).
- :class:`RecordingListener`: a :class:`~discovery.resolver.ResolverListener`
  that records what a resolver pushes and lets a test wait for it.
- :class:`FakeClock`: a clock a test advances by hand, so interval and backoff
  logic runs without sleeping.
- :class:`FakeSubConn`: a backend stand-in for balancer unit tests.
- :mod:`discovery.testing.conformance`: a test-suite base class resolver
  plugin authors subclass.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from ..address import Address, ResolverState
from ..errors import ResolverError
from ..resolver import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from ..target import Target

__all__ = [
    "FakeClock",
    "FakeHelper",
    "FakeStream",
    "FakeSubConn",
    "ManualResolver",
    "ManualResolverBuilder",
    "RecordingListener",
    "addresses",
    "check_distribution",
    "chi_square",
    "chi_square_critical",
    "finish",
    "pick_all",
    "update",
    "wait_for",
    "wait_ready",
]


def wait_ready(channel: Any, n: int, timeout: float = 10.0) -> None:
    """Wait until at least ``n`` of ``channel.backends()`` are READY (a sync or asyncio channel)."""
    wait_for(lambda: sum(b.state is grpc.ChannelConnectivity.READY for b in channel.backends()) >= n, timeout,
             message=f"{n} backends READY")


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01,
             message: str = "") -> Any:
    """Re-check ``predicate`` until it returns something truthy; return that.

    For conditions with no event to wait on (a server's call counter, a
    channel's backend list). Raises TimeoutError naming ``message`` after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s")
        pause.wait(interval)


def addresses(*hostports: str, **kwargs: Any) -> tuple[Address, ...]:
    """``addresses("127.0.0.1:5001", "127.0.0.1:5002")`` as Address values."""
    from ..target import parse_host_port

    out = []
    for hp in hostports:
        host, port = parse_host_port(hp, None)
        out.append(Address(host, port, **kwargs))
    return tuple(out)


class FakeClock:
    """A manual clock. ``advance()`` moves time and wakes waiters whose time has come.

    ``wait()`` blocks the calling thread until its event is set or the fake
    time reaches its deadline; it never returns because real time passed.
    :meth:`wait_for_blocked` lets a test wait (in real time, bounded) until a
    background thread has settled in ``wait()``, and tells for how long it
    sleeps, so a test can check an interval or a backoff delay and then
    ``advance()`` exactly that far. Thread-safe.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        # One entry per thread inside wait(): its event and its deadline (None: none).
        self._waits: list[tuple[threading.Event, float | None]] = []

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every waiter to re-check."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds!r}")
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait(self, event: threading.Event, timeout: float | None) -> bool:
        with self._cond:
            entry = (event, None if timeout is None else self._now + timeout)
            self._waits.append(entry)
            self._cond.notify_all()
            try:
                while not event.is_set() and (entry[1] is None or self._now < entry[1]):
                    # Event.set() cannot notify this condition, so re-check it
                    # often; advance() and wake() notify at once.
                    self._cond.wait(0.01)
                return event.is_set()
            finally:
                self._waits.remove(entry)
                self._cond.notify_all()

    def wake(self) -> None:
        """Make waiters re-check their events now (after setting one)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def waiters(self) -> int:
        """How many threads are inside :meth:`wait` right now."""
        with self._cond:
            return len(self._waits)

    def wait_for_waiters(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block (real time) until at least ``n`` threads wait on this clock."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._waits) >= n, timeout)

    def _blocked(self) -> list[float | None]:
        # A waiter whose event is set or whose deadline has come is about to
        # return and act: it is not settled yet.
        out = [None if deadline is None else deadline - self._now
               for event, deadline in self._waits
               if not event.is_set() and (deadline is None or deadline > self._now)]
        return sorted(out, key=lambda t: math.inf if t is None else t)

    def blocked(self) -> list[float | None]:
        """Remaining fake seconds of each thread settled in :meth:`wait` (None: no timeout), soonest first."""
        with self._cond:
            return self._blocked()

    def wait_for_blocked(self, n: int = 1, timeout: float = 5.0) -> list[float | None]:
        """Block (real time) until at least ``n`` threads are settled in :meth:`wait`; return :meth:`blocked`.

        Settled means waiting with the event unset and the deadline still
        ahead: after a ``resolve_now()`` (which sets the event) or an
        ``advance()`` past a deadline, this waits until the thread has acted
        and is waiting again. Raises TimeoutError after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                blocked = self._blocked()
                if len(blocked) >= n:
                    return blocked
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"wanted {n} threads settled in FakeClock.wait() within {timeout}s, "
                                       f"got {len(blocked)} of {len(self._waits)} waiting")
                # Waiters notify when they come and go; an event set elsewhere
                # does not, so look again soon.
                self._cond.wait(min(left, 0.01))


class RecordingListener:
    """Records resolver output; tests wait on it with timeouts. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.states: list[ResolverState] = []
        self.errors: list[ResolverError] = []

    def update_state(self, state: ResolverState) -> None:
        with self._cond:
            self.states.append(state)
            self._cond.notify_all()

    def report_error(self, error: ResolverError) -> None:
        with self._cond:
            self.errors.append(error)
            self._cond.notify_all()

    @property
    def last(self) -> ResolverState | None:
        with self._cond:
            return self.states[-1] if self.states else None

    def wait_for_state(
        self, predicate: Callable[[ResolverState], bool] = lambda s: True, timeout: float = 5.0
    ) -> ResolverState:
        """The first state (oldest first) matching ``predicate``, waiting up to ``timeout``."""
        found: list[ResolverState] = []

        def check() -> bool:
            for s in self.states:
                if predicate(s):
                    found.append(s)
                    return True
            return False

        with self._cond:
            if not self._cond.wait_for(check, timeout):
                raise TimeoutError(f"no matching resolver state within {timeout}s; got {self.states!r}")
        return found[0]

    def wait_for_count(self, states: int = 0, errors: int = 0, timeout: float = 5.0) -> None:
        """Wait until at least ``states`` states and ``errors`` errors arrived."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self.states) >= states and len(self.errors) >= errors, timeout
            )
        if not ok:
            raise TimeoutError(
                f"wanted {states} states/{errors} errors within {timeout}s, "
                f"got {len(self.states)}/{len(self.errors)}"
            )


class ManualResolver(Resolver):
    """A resolver a test drives: :meth:`push` a state, :meth:`fail` an error."""

    def __init__(self, listener: ResolverListener, initial: ResolverState | None) -> None:
        self._listener = listener
        self._closed = False
        self.resolve_now_calls = 0
        if initial is not None:
            listener.update_state(initial)

    def push(self, state: ResolverState | Iterable[Address]) -> None:
        """Publish ``state`` (or a plain iterable of addresses) to the channel."""
        if not isinstance(state, ResolverState):
            state = ResolverState(tuple(state))
        if not self._closed:
            self._listener.update_state(state)

    def fail(self, message: str) -> None:
        """Report a resolver error; the channel keeps its last good set."""
        if not self._closed:
            self._listener.report_error(ResolverError(message))

    def resolve_now(self) -> None:
        self.resolve_now_calls += 1

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed


class ManualResolverBuilder(ResolverBuilder):
    """Builds :class:`ManualResolver` instances for a scheme of the test's choosing.

    Register it (``register_resolver(b, scheme="manual", replace=True)``), open
    a channel on ``manual:///anything`` and drive :attr:`resolver`.
    """

    _counter = itertools.count()

    def __init__(self, scheme: str = "manual", initial: ResolverState | None = None) -> None:
        self.scheme_name = scheme
        self.initial = initial
        self.resolvers: list[ManualResolver] = []
        self._built = threading.Condition()

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> ManualResolver:
        r = ManualResolver(listener, self.initial)
        with self._built:
            self.resolvers.append(r)
            self._built.notify_all()
        return r

    def default_authority(self, target: Target) -> str | None:
        return None

    @property
    def resolver(self) -> ManualResolver:
        """The most recently built resolver."""
        with self._built:
            if not self._built.wait_for(lambda: bool(self.resolvers), 5.0):
                raise TimeoutError("no channel built a manual resolver")
            return self.resolvers[-1]


# Re-exported at the end: balancing imports nothing from this module.
from .balancing import (  # noqa: E402
    FakeHelper,
    FakeStream,
    FakeSubConn,
    check_distribution,
    chi_square,
    chi_square_critical,
    finish,
    pick_all,
    update,
)
