"""Resolver helpers: the thread, the timing and the ``close()`` every resolver plugin needs, written once.

A plugin writes only what talks to its registry:

- :class:`PollingResolver` — the plugin writes ``lookup() -> ResolverState``
  (DNS, a file, an HTTP endpoint without change notification). The helper
  calls it at once, then every ``interval`` seconds, retries failures with
  jittered exponential backoff, and runs an early lookup on
  :meth:`~PollingResolver.resolve_now`, at most one per ``min_interval``.
- :class:`WatchResolver` — the plugin writes one watch loop ``watch(ctx)``
  (Consul blocking queries, a Kubernetes watch, an etcd watch) that publishes
  states through a :class:`WatchContext` until ``ctx.stopped``. The helper
  calls it again when it returns, and after a backoff when it raises.

Both own exactly one daemon thread per resolver. A plugin function may be a
plain function or an ``async def``: a coroutine runs on a private event loop
in that same thread, and ``close()`` cancels its task. All timing (intervals,
backoff, rate limits) runs on the injected :class:`~discovery.clock.Clock`,
so tests drive it with :class:`discovery.testing.FakeClock` and never sleep.

Common rules:

- ``close()`` returns at once: it never joins a thread that may be blocked in
  I/O. It sets the stop flag, wakes any wait, runs the interrupters a watch
  registered with :meth:`WatchContext.on_interrupt` (for example closing the
  socket of a pending long poll), cancels a running coroutine, and after it
  returns the listener gets no more calls.
- Identical consecutive states are published once. After an error, the same
  state is published again so the channel learns the error is over.
- Errors keep the last good set: they are reported to the listener, and
  logged on the logger ``discovery.resolver.<scheme>`` once per change, where
  ``name`` is ``"<scheme>"`` or ``"<scheme>:<target>"`` (the target goes in each
  record's ``extra`` as ``target``; an
  identical repeated error is not logged again). Anything a plugin raises is
  reported as a :class:`~discovery.errors.ResolverError` (others wrapped, the
  original as ``__cause__``); nothing a plugin raises ends the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from ..address import ResolverState
from ..clock import SYSTEM_CLOCK, Backoff, Clock
from ..errors import ConfigError, ResolverError
from . import Resolver, ResolverListener

__all__ = ["PollingResolver", "WatchContext", "WatchResolver", "default_backoff", "shutdown_socket"]

#: Used when an ``interval`` callable fails: the plain default of PollingResolver.
_FALLBACK_INTERVAL = 30.0


def default_backoff() -> Backoff:
    """The helpers' reconnect backoff: 1 s initial, x1.6, jitter 0.2, 30 s cap."""
    return Backoff(initial=1.0, multiplier=1.6, jitter=0.2, maximum=30.0)


def shutdown_socket(sock: socket.socket | None) -> None:
    """Wake every thread blocked reading or writing ``sock``: an interrupter for a pending request.

    ``ctx.on_interrupt(lambda: shutdown_socket(conn.sock))`` aborts an
    ``http.client`` long poll: its read ends at once (with an error the watch
    may raise; after close() it is not reported). Closing a socket does not
    wake a thread blocked on it, and a response object keeps the descriptor
    open anyway; ``shutdown()`` does both jobs. Never raises; None and a
    closed socket are fine. The owner still closes the socket.
    """
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ConfigError(f"expected a non-empty name without spaces (it names the logger), got {name!r}",
                          key_path="name")
    return name


def _check_seconds(value: object, key: str, *, allow_zero: bool, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected seconds as a number, got {type(value).__name__} {value!r}", key_path=key)
    seconds = float(value)
    if math.isnan(seconds) or (math.isinf(seconds) and not allow_inf) or seconds < 0 or (
            seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"expected a finite number of seconds {bound}, got {value!r}", key_path=key)
    return seconds


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_resolver_error(name: str, exc: BaseException) -> ResolverError:
    """``exc`` itself if it is a ResolverError, else a ResolverError caused by it."""
    if isinstance(exc, ResolverError):
        return exc
    err = ResolverError(f"{name} resolver failed: {_describe(exc)}")
    # What `raise err from exc` records, without raising: the cause stays visible.
    err.__cause__ = exc
    err.__suppress_context__ = True
    return err


class _Helper(Resolver):
    """The thread, the stop flag, the listener guard and the event loop shared by both helpers."""

    def __init__(self, listener: ResolverListener, fn: Callable[..., Any], fn_key: str, *, name: str,
                 clock: Clock, backoff: Backoff | None) -> None:
        if not callable(fn):
            raise ConfigError(f"expected a function, got {type(fn).__name__}", key_path=fn_key)
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigError(f"expected a discovery.clock.Backoff, got {type(backoff).__name__}",
                              key_path="backoff")
        self._name = _check_name(name)
        self._listener = listener
        self._fn = fn
        self._clock = clock
        self._backoff = backoff if backoff is not None else default_backoff()
        # The logger is named by what comes before a ':' (``system:orders:50051``
        # logs to discovery.resolver.system); every record carries the rest as
        # its ``target``.
        scheme, _, where = self._name.partition(":")
        self._log = logging.LoggerAdapter(logging.getLogger(f"discovery.resolver.{scheme}"),
                                          {"target": where or self._name})
        # One re-entrant lock guards setting the stop flag, the interrupters,
        # the event loop handles and every listener call: close() takes it, so
        # it cannot return while a listener call is under way and none can
        # start after it. Re-entrant because a listener may close the resolver
        # from inside its own callback. resolve_now() and reading the stop flag
        # take no lock, so they never wait for a listener call.
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopped = False
        self._started = False
        self._poked = False
        self._interrupters: dict[int, Callable[[], None]] = {}
        self._interrupter_ids = 0
        self._last_state: ResolverState | None = None
        self._error_since_state = False
        self._logged_error: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[Any] | None = None
        self._thread = threading.Thread(target=self._main, name=f"discovery-resolver {self._name}", daemon=True)

    # -- public -----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The name given at construction (the logger is ``discovery.resolver.<name>``)."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._stopped

    def start(self) -> None:
        """Start the resolver's thread; the first lookup or watch runs at once. Never blocks.

        A second call, or a call after :meth:`close`, does nothing.
        """
        with self._lock:
            if self._started or self._stopped:
                return
            self._started = True
        self._thread.start()

    def resolve_now(self) -> None:
        """Ask for a fresh lookup (polling) or wake ``ctx.wait`` (watch). Never blocks; thread-safe.

        Takes no lock: the sleeping thread clears its event before it reads
        the flag, so the wake-up cannot be lost. A request that arrives just
        as a lookup starts is answered by that lookup.
        """
        if self._stopped:
            return
        self._poked = True
        self._wake.set()

    def close(self) -> None:
        """Stop. Returns at once, without waiting for the thread; thread-safe and idempotent.

        Sets the stop flag, wakes every wait, cancels a running coroutine and
        calls the registered interrupters on this thread. After it returns the
        listener gets no more calls: it waits only for a listener call already
        under way (listener calls never block), never for I/O.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            interrupters = list(self._interrupters.values())
            self._interrupters.clear()
            loop, task = self._loop, self._task
        self._wake.set()
        if loop is not None and task is not None:
            # RuntimeError: the loop closed meanwhile, and the thread is finishing anyway.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(task.cancel)
        for fn in interrupters:
            self._interrupt(fn)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (real time) for the thread to end after :meth:`close`; True if it has (or never started).

        Never needed for correctness (the thread is a daemon and makes no
        listener call after close); useful for an orderly shutdown.
        """
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._name} {'closed' if self.closed else 'open'}>"

    # -- for WatchContext and subclasses ------------------------------------------

    def _is_stopped(self) -> bool:
        return self._stopped

    def _interrupt(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:  # an interrupter's failure must not stop close()
            self._log.warning("interrupting %s failed: %s", self._name, _describe(exc))

    def _add_interrupter(self, fn: Callable[[], None]) -> Callable[[], None]:
        if not callable(fn):
            raise TypeError(f"on_interrupt() needs a function, got {type(fn).__name__}")
        with self._lock:
            if not self._stopped:
                key = self._interrupter_ids
                self._interrupter_ids += 1
                self._interrupters[key] = fn

                def unregister() -> None:
                    with self._lock:
                        self._interrupters.pop(key, None)

                return unregister
        # Already closed: abort the I/O the caller is about to start, now.
        self._interrupt(fn)
        return lambda: None

    def _publish(self, state: ResolverState) -> None:
        if not isinstance(state, ResolverState):
            raise TypeError(f"expected a ResolverState, got {type(state).__name__}")
        with self._lock:
            if self._stopped:
                return
            if self._error_since_state is False and state == self._last_state:
                return  # nothing new to say
            self._last_state = state
            self._error_since_state = False
            if self._logged_error is not None:
                self._log.info("%s resolver recovered: %d addresses", self._name, len(state.addresses))
                self._logged_error = None
            try:
                self._listener.update_state(state)
            except Exception:
                self._log.exception("the listener of %s failed in update_state", self._name)

    def _report(self, error: ResolverError, *, unexpected: BaseException | None = None) -> None:
        """Report ``error``; ``unexpected`` is the plugin's own exception it wraps, logged with its traceback."""
        if not isinstance(error, ResolverError):
            raise TypeError(f"expected a ResolverError, got {type(error).__name__}")
        with self._lock:
            if self._stopped:
                return
            self._error_since_state = True
            text = str(error)
            if text != self._logged_error:
                self._logged_error = text
                # A ResolverError is an expected failure and its message says
                # enough; anything else is a plugin bug or a surprise from its
                # client library, where the traceback helps.
                self._log.warning("%s (keeping the last good address set)", text, exc_info=unexpected)
            try:
                self._listener.report_error(error)
            except Exception:
                self._log.exception("the listener of %s failed in report_error", self._name)

    def _report_failure(self, exc: BaseException) -> None:
        if isinstance(exc, ResolverError):
            self._report(exc)
        else:
            self._report(_as_resolver_error(self._name, exc), unexpected=exc)

    def _sleep(self, seconds: float | None, *, pokeable: bool) -> bool:
        """Wait ``seconds`` of the clock (None: forever). True at once when stopped or, if ``pokeable``, poked."""
        deadline = None if seconds is None else self._clock.monotonic() + seconds
        while True:
            # Clear first, then read the flags: resolve_now() and close() set
            # their flag before the event, so no wake-up in between is lost.
            self._wake.clear()
            if self._stopped:
                return True
            if pokeable and self._poked:
                self._poked = False
                return True
            timeout = None
            if deadline is not None:
                timeout = deadline - self._clock.monotonic()
                if timeout <= 0:
                    return False
            self._clock.wait(self._wake, timeout)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a plugin function; an awaitable result runs on the private loop (cancelled by close())."""
        result = fn(*args)
        if not inspect.isawaitable(result):
            return result
        with self._lock:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.new_event_loop()
        task = asyncio.ensure_future(result, loop=loop)
        with self._lock:
            self._task = task
            if self._stopped:
                task.cancel()
        try:
            return loop.run_until_complete(task)
        finally:
            with self._lock:
                self._task = None

    # -- thread -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            self._run()
        except BaseException:  # only a bug in the helper itself can get here
            self._log.critical("the %s resolver thread failed", self._name, exc_info=True)
        finally:
            self._close_loop()

    def _run(self) -> None:
        raise NotImplementedError

    def _close_loop(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            # Tasks a plugin left behind (a client library's keep-alive, say) are cancelled, not abandoned.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as exc:
            self._log.warning("shutting down the event loop of %s failed: %s", self._name, _describe(exc))
        finally:
            loop.close()


class WatchContext:
    """What a watch loop gets: the stop flag, an interruptible wait, publish and report. Thread-safe."""

    __slots__ = ("_owner",)

    def __init__(self, owner: WatchResolver) -> None:
        self._owner = owner

    @property
    def stopped(self) -> bool:
        """True once ``close()`` was called: return from the watch."""
        return self._owner._is_stopped()

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` on the resolver's clock (``math.inf``: until woken).

        Returns True at once when the resolver is stopped or ``resolve_now()``
        asked for a fresh look; False when the time ran out. Blocks the
        calling thread (in an ``async`` watch, the private loop, which runs
        nothing else).
        """
        s = _check_seconds(seconds, "seconds", allow_zero=True, allow_inf=True)
        return self._owner._sleep(None if math.isinf(s) else s, pokeable=True)

    def publish(self, state: ResolverState) -> None:
        """Publish a complete address set. A state identical to the last one is dropped.

        Counts as healthy: once a watch has been healthy for ``healthy_after``
        seconds, the reconnect backoff starts again from its initial delay.
        Never blocks for long; does nothing after close().
        """
        self._owner._watch_publish(state)

    def report_error(self, error: ResolverError) -> None:
        """Report a non-fatal error: the channel keeps its last good set. Logged once per change.

        To be retried with backoff instead, raise from the watch.
        """
        self._owner._watch_report(error)

    def on_interrupt(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Have ``close()`` call ``fn`` (on the closing thread) to abort blocking I/O.

        For example shut down the socket of a pending long poll, so the watch
        wakes and sees :attr:`stopped`. Returns a function that unregisters
        ``fn``; call it when that I/O is over. If the resolver is already
        closed, ``fn`` runs at once.
        """
        return self._owner._add_interrupter(fn)


WatchFn = Callable[[WatchContext], None] | Callable[[WatchContext], Awaitable[None]]
LookupFn = Callable[[], ResolverState] | Callable[[], Awaitable[ResolverState]]


class WatchResolver(_Helper):
    """Runs a plugin's watch loop on one daemon thread; see the module docstring for the rules.

    ``watch(ctx)`` — a function or an ``async def`` — publishes with
    ``ctx.publish`` until ``ctx.stopped``. When it raises, the error is
    reported (wrapped into a ResolverError unless it is one) and ``watch`` is
    called again after ``backoff.next()`` seconds (default 1 s -> 30 s, x1.6,
    jitter 0.2); the backoff starts over once a run stayed healthy (from its
    first publish) for ``healthy_after`` seconds. When it returns normally it
    is called again, but never sooner than ``min_interval`` after the previous
    call started. ``resolve_now()`` wakes ``ctx.wait``.

    The constructor starts nothing; call :meth:`start`.
    """

    def __init__(self, listener: ResolverListener, watch: WatchFn, *, name: str,
                 clock: Clock = SYSTEM_CLOCK, backoff: Backoff | None = None,
                 healthy_after: float = 30.0, min_interval: float = 1.0) -> None:
        super().__init__(listener, watch, "watch", name=name, clock=clock, backoff=backoff)
        self._healthy_after = _check_seconds(healthy_after, "healthy_after", allow_zero=True)
        self._min_interval = _check_seconds(min_interval, "min_interval", allow_zero=True)
        self._healthy_since: float | None = None

    def _watch_publish(self, state: ResolverState) -> None:
        self._publish(state)
        with self._lock:
            if self._healthy_since is None:
                self._healthy_since = self._clock.monotonic()

    def _watch_report(self, error: ResolverError) -> None:
        self._report(error)
        with self._lock:
            self._healthy_since = None  # an error ends a healthy stretch

    def _run(self) -> None:
        ctx = WatchContext(self)
        while True:
            with self._lock:
                if self._stopped:
                    return
                # A new run reads the registry afresh: an older resolve_now() is answered.
                self._poked = False
                self._healthy_since = None
            started = self._clock.monotonic()
            failure: BaseException | None = None
            try:
                self._call(self._fn, ctx)
            except BaseException as exc:  # nothing a plugin raises may end the thread
                failure = exc
            if self._is_stopped():
                return  # an exception caused by close() interrupting the watch is no error
            now = self._clock.monotonic()
            with self._lock:
                healthy_since = self._healthy_since
            if healthy_since is not None and now - healthy_since >= self._healthy_after:
                self._backoff.reset()
            if failure is None:
                delay = started + self._min_interval - now
            else:
                self._report_failure(failure)
                delay = self._backoff.next()
            if delay > 0 and self._sleep(delay, pokeable=False):
                return


class PollingResolver(_Helper):
    """Runs a plugin's ``lookup()`` on a schedule on one daemon thread; see the module docstring.

    The first lookup runs at once. After a success the next runs ``interval``
    seconds after it ended (a number, or a function of the state just
    published, e.g. from a TTL; ``math.inf`` means only on ``resolve_now``).
    After a failure it runs after ``backoff.next()`` seconds (default 1 s ->
    30 s, x1.6, jitter 0.2; reset by a success), and ``resolve_now()`` does
    not cut that short. Otherwise ``resolve_now()`` runs a lookup at once,
    but never sooner than ``min_interval`` after the last one ended: a storm of
    calls gives at most one lookup per ``min_interval``. ``min_interval`` is
    also the floor of every other delay.

    An ``async def`` lookup runs on the private loop; ``close()`` cancels it.
    A blocking lookup cannot be interrupted: ``close()`` still returns at once
    and its result is dropped, and the thread ends when the lookup does, so
    give blocking lookups a timeout. The constructor starts nothing; call
    :meth:`start`.
    """

    def __init__(self, listener: ResolverListener, lookup: LookupFn, *, name: str,
                 clock: Clock = SYSTEM_CLOCK, interval: float | Callable[[ResolverState], float] = 30.0,
                 min_interval: float = 2.0, backoff: Backoff | None = None) -> None:
        super().__init__(listener, lookup, "lookup", name=name, clock=clock, backoff=backoff)
        if not callable(interval):
            interval = _check_seconds(interval, "interval", allow_zero=False, allow_inf=True)
        self._interval = interval
        self._min_interval = _check_seconds(min_interval, "min_interval", allow_zero=True)
        self._last_end: float | None = None
        self._next_at: float | None = None
        self._in_backoff = False
        self._bad_interval_logged = False

    def _interval_after(self, state: ResolverState) -> float:
        interval = self._interval
        if not callable(interval):
            return interval
        try:
            value = _check_seconds(interval(state), "interval", allow_zero=True, allow_inf=True)
        except Exception as exc:  # a plugin bug must not stop the polling
            if not self._bad_interval_logged:
                self._bad_interval_logged = True
                self._log.warning("the interval function of %s failed (%s); polling every %gs",
                                  self._name, _describe(exc), _FALLBACK_INTERVAL)
            return _FALLBACK_INTERVAL
        return value

    def _schedule(self, delay: float, *, in_backoff: bool) -> None:
        # Scheduling state belongs to the helper's thread alone: no lock.
        self._last_end = self._clock.monotonic()
        delay = max(delay, self._min_interval)
        self._next_at = None if math.isinf(delay) else self._last_end + delay
        self._in_backoff = in_backoff

    def _wait_until_due(self) -> bool:
        """Block until a lookup is due; False once stopped."""
        while True:
            self._wake.clear()  # before reading the flags, as in _sleep()
            if self._stopped:
                return False
            now = self._clock.monotonic()
            due = self._next_at
            if self._last_end is None:
                due = now
            elif self._poked and not self._in_backoff:
                soonest = self._last_end + self._min_interval
                due = soonest if due is None else min(due, soonest)
            if due is not None and now >= due:
                self._poked = False
                return True
            timeout = None if due is None else due - now
            self._clock.wait(self._wake, timeout)

    def _run(self) -> None:
        while self._wait_until_due():
            try:
                state = self._call(self._fn)
                if not isinstance(state, ResolverState):
                    raise TypeError(f"lookup() returned {type(state).__name__}, not a ResolverState")
            except BaseException as exc:  # nothing a plugin raises may end the thread
                if self._is_stopped():
                    return
                self._schedule(self._backoff.next(), in_backoff=True)
                self._report_failure(exc)
                continue
            if self._is_stopped():
                return
            self._backoff.reset()
            self._schedule(self._interval_after(state), in_backoff=False)
            self._publish(state)
