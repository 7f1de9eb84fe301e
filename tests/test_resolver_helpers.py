"""The resolver helpers (PollingResolver, WatchResolver) on a FakeClock.

Synchronisation is FakeClock.wait_for_blocked(): it returns once the helper's
thread has acted and settled in clock.wait(), and says how long it sleeps, so
every delay below is read from the clock, never guessed, and no test sleeps.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import math
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from discovery.address import Address, ResolverState
from discovery.clock import Backoff
from discovery.errors import ConfigError, ResolverError
from discovery.resolver import PollingResolver, Resolver, WatchContext, WatchResolver, shutdown_socket
from discovery.testing import FakeClock, RecordingListener, addresses, wait_for
from discovery.testing.servers import SilentServer

A = ResolverState(addresses("127.0.0.1:5001"))
B = ResolverState(addresses("127.0.0.1:5001", "127.0.0.1:5002"))


def no_jitter(initial: float = 1.0, maximum: float = 30.0) -> Backoff:
    return Backoff(initial=initial, multiplier=1.6, jitter=0.0, maximum=maximum)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def listener() -> RecordingListener:
    return RecordingListener()


@pytest.fixture
def built() -> Iterator[list[PollingResolver | WatchResolver]]:
    """Resolvers a test starts; each is closed at teardown and its thread must end."""
    out: list[PollingResolver | WatchResolver] = []
    yield out
    for r in out:
        r.close()
    for r in out:
        assert r.join(5), f"{r!r}: thread still running 5 s after close()"


class Script:
    """A lookup that returns (or raises) the next scripted result; the last one repeats."""

    def __init__(self, *results: ResolverState | BaseException) -> None:
        self.results = list(results)
        self.calls = 0

    def __call__(self) -> ResolverState:
        self.calls += 1
        result = self.results.pop(0) if len(self.results) > 1 else self.results[0]
        if isinstance(result, BaseException):
            raise result
        return result


def polling(built: list[Any], listener: RecordingListener, lookup: Callable[[], Any], clock: FakeClock,
            **kwargs: Any) -> PollingResolver:
    r = PollingResolver(listener, lookup, name="test", clock=clock, **kwargs)
    built.append(r)
    r.start()
    return r


def watching(built: list[Any], listener: RecordingListener, watch: Callable[[WatchContext], Any],
             clock: FakeClock, **kwargs: Any) -> WatchResolver:
    r = WatchResolver(listener, watch, name="test", clock=clock, **kwargs)
    built.append(r)
    r.start()
    return r


def step(clock: FakeClock) -> float:
    """Wait until the helper sleeps, then advance the clock by exactly its sleep; return that delay."""
    delay = clock.wait_for_blocked()[0]
    assert delay is not None
    clock.advance(delay)
    return delay


# -- the interface -------------------------------------------------------------------------


def test_helpers_are_resolvers_and_exported_from_discovery_resolver() -> None:
    import discovery.resolver as pkg
    import discovery.resolver.helpers as helpers

    assert pkg.PollingResolver is helpers.PollingResolver and pkg.WatchResolver is helpers.WatchResolver
    assert pkg.WatchContext is helpers.WatchContext
    assert issubclass(PollingResolver, Resolver) and issubclass(WatchResolver, Resolver)


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"name": ""}, "name"),
    ({"name": "has space"}, "name"),
    ({"name": 5}, "name"),
    ({"interval": 0}, "interval"),
    ({"interval": -1}, "interval"),
    ({"interval": math.nan}, "interval"),
    ({"interval": "30s"}, "interval"),
    ({"interval": True}, "interval"),
    ({"min_interval": -0.5}, "min_interval"),
    ({"min_interval": math.inf}, "min_interval"),
    ({"backoff": 3}, "backoff"),
])
def test_polling_rejects_bad_arguments_with_a_config_error(
        listener: RecordingListener, kwargs: dict[str, Any], key: str) -> None:
    args: dict[str, Any] = {"name": "ok"}
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        PollingResolver(listener, Script(A), **args)
    assert info.value.key_path == key


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"healthy_after": -1}, "healthy_after"),
    ({"healthy_after": math.inf}, "healthy_after"),
    ({"min_interval": "1"}, "min_interval"),
])
def test_watch_rejects_bad_arguments_with_a_config_error(
        listener: RecordingListener, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        WatchResolver(listener, lambda ctx: None, name="ok", **kwargs)
    assert info.value.key_path == key
    with pytest.raises(ConfigError) as info:
        WatchResolver(listener, "not callable", name="ok")  # type: ignore[arg-type]
    assert info.value.key_path == "watch"


# -- PollingResolver --------------------------------------------------------------------------


def test_polling_publishes_at_once_then_every_interval_and_drops_identical_states(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    lookup = Script(A, A, A, B, B)
    polling(built, listener, lookup, clock, interval=30.0)
    assert clock.wait_for_blocked() == pytest.approx([30.0])
    assert listener.states == [A] and lookup.calls == 1
    assert step(clock) == pytest.approx(30.0)
    assert step(clock) == pytest.approx(30.0)
    clock.wait_for_blocked()
    assert lookup.calls == 3 and listener.states == [A]  # the same set twice more: nothing published
    assert step(clock) == pytest.approx(30.0)
    clock.wait_for_blocked()
    assert listener.states == [A, B]
    step(clock)
    clock.wait_for_blocked()
    assert lookup.calls == 5 and listener.states == [A, B]
    assert listener.errors == []


def test_interval_from_the_state_and_min_interval_floor(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    seen: list[ResolverState] = []

    def interval(state: ResolverState) -> float:
        seen.append(state)
        return 0.5 if len(state.addresses) == 2 else 7.0

    polling(built, listener, Script(A, B), clock, interval=interval, min_interval=2.0)
    assert clock.wait_for_blocked() == pytest.approx([7.0])
    step(clock)
    assert clock.wait_for_blocked() == pytest.approx([2.0])  # 0.5 s asked, min_interval is the floor
    assert seen == [A, B]


def test_infinite_interval_waits_for_resolve_now(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    lookup = Script(A, B)
    r = polling(built, listener, lookup, clock, interval=math.inf, min_interval=1.0)
    assert clock.wait_for_blocked() == [None]
    clock.advance(10_000)
    assert clock.wait_for_blocked() == [None] and lookup.calls == 1
    r.resolve_now()
    listener.wait_for_count(states=2)
    assert lookup.calls == 2


def test_errors_are_reported_keep_the_last_set_and_polling_goes_on(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    down = ResolverError("registry 127.0.0.1:1 unreachable")
    lookup = Script(ResolverError("first try failed"), A, down, down, A, B)
    polling(built, listener, lookup, clock, interval=30.0, min_interval=0.0, backoff=no_jitter())
    assert clock.wait_for_blocked() == pytest.approx([1.0])
    assert listener.states == [] and [str(e) for e in listener.errors] == ["first try failed"]
    step(clock)
    listener.wait_for_count(states=1)
    # The success reset the backoff and went back to the interval.
    assert clock.wait_for_blocked() == pytest.approx([30.0])
    step(clock)
    assert clock.wait_for_blocked() == pytest.approx([1.0])
    step(clock)
    assert clock.wait_for_blocked() == pytest.approx([1.6])
    assert listener.states == [A] and listener.errors[1:] == [down, down]  # never an empty set
    step(clock)
    # The same set again after errors is published again: it tells the channel the error is over.
    listener.wait_for_count(states=2)
    assert listener.states == [A, A]
    step(clock)
    listener.wait_for_count(states=3)
    assert listener.states == [A, A, B] and len(listener.errors) == 3


def test_polling_backoff_sequence_is_exponential_capped_and_jittered(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    polling(built, listener, Script(ResolverError("down")), clock, min_interval=0.0, backoff=no_jitter())
    delays = [step(clock) for _ in range(10)]
    assert delays == pytest.approx([1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576, 16.777216, 26.8435456, 30.0, 30.0])

    other = RecordingListener()
    clock2 = FakeClock()
    polling(built, other, Script(ResolverError("down")), clock2, min_interval=0.0)  # the default backoff
    jittered = [step(clock2) for _ in range(12)]
    nominal = [min(1.6**i, 30.0) for i in range(12)]
    assert all(0.8 * n - 1e-9 <= d <= 1.2 * n + 1e-9 for d, n in zip(jittered, nominal, strict=True)), jittered
    assert jittered != nominal  # jitter is applied
    assert max(jittered) <= 36.0 + 1e-9


def test_resolve_now_is_rate_limited_by_min_interval(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    lookup = Script(A)
    r = polling(built, listener, lookup, clock, interval=300.0, min_interval=2.0)
    clock.wait_for_blocked()
    t0 = time.monotonic()
    for _ in range(1000):
        r.resolve_now()
    # A blocking resolve_now would wait for a lookup the fake clock never lets happen.
    assert time.monotonic() - t0 < 5.0, "resolve_now() blocked"
    assert clock.wait_for_blocked() == pytest.approx([2.0])  # the storm: one lookup when 2 s have passed
    assert lookup.calls == 1
    clock.advance(1.0)
    assert clock.wait_for_blocked() == pytest.approx([1.0]) and lookup.calls == 1
    clock.advance(1.0)
    assert clock.wait_for_blocked() == pytest.approx([300.0])
    assert lookup.calls == 2
    # Later than min_interval after a lookup, resolve_now runs one at once.
    clock.advance(5.0)
    clock.wait_for_blocked()
    r.resolve_now()
    assert clock.wait_for_blocked() == pytest.approx([300.0]) and lookup.calls == 3


def test_resolve_now_does_not_cut_an_error_backoff_short(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    lookup = Script(ResolverError("down"), ResolverError("down"), A)
    r = polling(built, listener, lookup, clock, min_interval=0.0, backoff=no_jitter(initial=8.0))
    assert clock.wait_for_blocked() == pytest.approx([8.0])
    r.resolve_now()
    assert clock.wait_for_blocked() == pytest.approx([8.0]) and lookup.calls == 1
    clock.advance(8.0)
    assert clock.wait_for_blocked() == pytest.approx([12.8]) and lookup.calls == 2


def test_a_lookup_that_raises_anything_is_wrapped_and_never_ends_the_thread(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    boom = RuntimeError("boom")
    results: list[Any] = [boom, SystemExit(3), KeyboardInterrupt(), "not a state", None, A]
    lookup = Script(*results)
    polling(built, listener, lookup, clock, min_interval=0.0, backoff=no_jitter())
    for _ in range(len(results) - 1):
        step(clock)
    listener.wait_for_count(states=1)
    assert listener.states == [A]
    errors = listener.errors
    assert all(isinstance(e, ResolverError) for e in errors) and len(errors) == 5
    assert str(errors[0]) == "test resolver failed: RuntimeError: boom" and errors[0].__cause__ is boom
    assert isinstance(errors[1].__cause__, SystemExit) and isinstance(errors[2].__cause__, KeyboardInterrupt)
    assert "returned str, not a ResolverState" in str(errors[3])
    assert "returned NoneType" in str(errors[4])


def test_a_failing_interval_function_or_listener_does_not_end_the_thread(
        clock: FakeClock, built: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    class Exploding(RecordingListener):
        def update_state(self, state: ResolverState) -> None:
            super().update_state(state)
            raise RuntimeError("listener bug")

    def interval(state: ResolverState) -> float:
        raise ValueError("interval bug")

    listener = Exploding()
    lookup = Script(A, B)
    with caplog.at_level(logging.WARNING, logger="discovery.resolver.test"):
        polling(built, listener, lookup, clock, interval=interval)
        assert clock.wait_for_blocked() == pytest.approx([30.0])  # the fallback interval
        step(clock)
        listener.wait_for_count(states=2)
        clock.wait_for_blocked()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("interval bug" in m for m in messages) == 1  # logged once, not per round
    assert sum("failed in update_state" in m for m in messages) == 2


def test_close_returns_at_once_while_a_blocking_lookup_is_pending(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    entered = threading.Event()
    release = threading.Event()

    def lookup() -> ResolverState:
        entered.set()
        release.wait(10)
        return A

    r = polling(built, listener, lookup, clock)
    assert entered.wait(5)
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5.0  # waiting for the lookup would take 10 s
    assert not r.join(0)  # close() did not wait for the blocked thread
    release.set()
    assert r.join(5)
    assert listener.states == [] and listener.errors == []  # the late answer was dropped


def test_async_lookup_runs_on_the_helper_thread_and_close_cancels_it(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    threads: list[str] = []
    started = threading.Event()
    cancelled = threading.Event()

    async def lookup() -> ResolverState:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            return A
        started.set()
        try:
            await asyncio.Event().wait()  # a request that never completes
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return B

    r = polling(built, listener, lookup, clock, interval=5.0)
    listener.wait_for_count(states=1)
    step(clock)
    assert started.wait(5)
    r.close()
    assert cancelled.wait(5) and r.join(5)
    assert threads == ["discovery-resolver test"] * 2
    assert listener.states == [A] and listener.errors == []


# -- WatchResolver ---------------------------------------------------------------------------


def test_watch_publishes_dedupes_and_wakes_on_resolve_now(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    woken: list[bool] = []

    def watch(ctx: WatchContext) -> None:
        ctx.publish(A)
        ctx.publish(A)
        while not ctx.stopped:
            woken.append(ctx.wait(600))
            ctx.publish(B if len(woken) > 1 else A)

    r = watching(built, listener, watch, clock)
    assert clock.wait_for_blocked() == pytest.approx([600.0])
    assert listener.states == [A]
    r.resolve_now()
    assert clock.wait_for_blocked() == pytest.approx([600.0])
    assert woken == [True] and listener.states == [A]
    clock.advance(600)
    listener.wait_for_count(states=2)
    assert woken == [True, False] and listener.states == [A, B]


def test_watch_errors_are_wrapped_reported_and_retried_with_backoff(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    calls: list[float] = []

    def watch(ctx: WatchContext) -> None:
        calls.append(clock.monotonic())
        if len(calls) == 1:
            ctx.publish(A)
        raise ConnectionResetError("peer went away")

    watching(built, listener, watch, clock, backoff=no_jitter())
    delays = [step(clock) for _ in range(4)]
    assert delays == pytest.approx([1.0, 1.6, 2.56, 4.096])
    clock.wait_for_blocked()
    assert listener.states == [A]  # the last good set stays
    assert len(listener.errors) == 5
    assert all(str(e) == "test resolver failed: ConnectionResetError: peer went away" for e in listener.errors)
    assert all(isinstance(e.__cause__, ConnectionResetError) for e in listener.errors)


def test_watch_backoff_resets_after_a_healthy_stretch(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    # Each entry: how long the run stays healthy (after publishing) before it fails; None fails at once.
    plan: list[float | None] = [None, None, None, 40.0, None, 10.0, None]

    def watch(ctx: WatchContext) -> None:
        healthy = plan.pop(0) if plan else None
        if healthy is not None:
            ctx.publish(A)
            ctx.wait(healthy)
        raise ResolverError("stream broke")

    watching(built, listener, watch, clock, backoff=no_jitter(), healthy_after=30.0)
    got = [step(clock) for _ in range(3)]  # three quick failures
    assert got == pytest.approx([1.0, 1.6, 2.56])
    assert step(clock) == pytest.approx(40.0)  # the healthy run
    got = [step(clock) for _ in range(1)]
    assert got == pytest.approx([1.0])  # 40 s healthy >= 30 s: the backoff started over
    assert step(clock) == pytest.approx(1.6)  # the quick failure after it
    assert step(clock) == pytest.approx(10.0)  # healthy, but only 10 s
    assert clock.wait_for_blocked() == pytest.approx([2.56])  # not long enough: the backoff kept growing


def test_watch_that_returns_is_called_again_no_sooner_than_min_interval(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    starts: list[float] = []

    def watch(ctx: WatchContext) -> None:
        starts.append(clock.monotonic())
        if len(starts) == 2:
            ctx.wait(5)  # a run that lasts longer than min_interval is followed at once

    watching(built, listener, watch, clock, min_interval=1.0)
    assert step(clock) == pytest.approx(1.0)
    assert step(clock) == pytest.approx(5.0)
    assert clock.wait_for_blocked() == pytest.approx([1.0])
    assert [s - starts[0] for s in starts] == pytest.approx([0.0, 1.0, 6.0])
    assert listener.errors == []


def test_nothing_a_watch_does_ends_the_thread(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    def bad_publish(ctx: WatchContext) -> None:
        ctx.publish(["127.0.0.1:1"])  # type: ignore[arg-type]

    def bad_report(ctx: WatchContext) -> None:
        ctx.report_error("text")  # type: ignore[arg-type]

    def bad_wait(ctx: WatchContext) -> None:
        ctx.wait(-1)

    def exits(ctx: WatchContext) -> None:
        raise SystemExit(1)

    def generator_exit(ctx: WatchContext) -> None:
        raise GeneratorExit

    def fine(ctx: WatchContext) -> None:
        ctx.publish(A)
        ctx.wait(math.inf)

    plan = [bad_publish, bad_report, bad_wait, exits, generator_exit, fine]

    def watch(ctx: WatchContext) -> None:
        plan.pop(0)(ctx)

    watching(built, listener, watch, clock, backoff=no_jitter())
    for _ in range(5):
        step(clock)
    listener.wait_for_count(states=1, errors=5)
    causes = [type(e.__cause__) for e in listener.errors]
    assert causes == [TypeError, TypeError, ConfigError, SystemExit, GeneratorExit]
    assert clock.wait_for_blocked() == [None]


def test_non_fatal_report_error_keeps_the_watch_running(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    def watch(ctx: WatchContext) -> None:
        ctx.publish(A)
        ctx.report_error(ResolverError("one bad event skipped"))
        ctx.publish(A)  # the same set after an error: published again (the error is over)
        ctx.wait(math.inf)

    watching(built, listener, watch, clock)
    assert clock.wait_for_blocked() == [None]
    assert listener.states == [A, A] and [str(e) for e in listener.errors] == ["one bad event skipped"]


def test_async_watch_runs_on_a_private_loop_and_close_cancels_it(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    waiting = threading.Event()
    cancelled = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def watch(ctx: WatchContext) -> None:
        loops.append(asyncio.get_running_loop())
        ctx.publish(A)
        waiting.set()
        try:
            await asyncio.Event().wait()  # a watch stream with nothing to say
        except asyncio.CancelledError:
            cancelled.set()
            raise

    r = watching(built, listener, watch, clock)
    assert waiting.wait(5)
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5.0  # the watch never ends by itself
    assert cancelled.wait(5) and r.join(5)
    assert listener.states == [A] and listener.errors == []  # the cancellation is no error
    assert loops[0].is_closed()


def test_async_watch_errors_are_retried_on_the_same_loop(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def watch(ctx: WatchContext) -> None:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        if len(loops) < 3:
            raise OSError("connection refused")
        ctx.publish(B)

    watching(built, listener, watch, clock, backoff=no_jitter())
    step(clock)
    step(clock)
    listener.wait_for_count(states=1)
    assert [str(e) for e in listener.errors] == ["test resolver failed: OSError: connection refused"] * 2
    assert len(set(map(id, loops))) == 1


# -- close() and a real pending long poll -----------------------------------------------------


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    with SilentServer() as server:
        yield server


def in_call(thread_name: str, function: str) -> bool:
    """True while the thread named ``thread_name`` has ``function`` on its stack (it is blocked in it)."""
    idents = [t.ident for t in threading.enumerate() if t.name == thread_name]
    frames = sys._current_frames()
    for ident in idents:
        frame = frames.get(ident) if ident is not None else None
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
    return False


def test_close_interrupts_a_pending_long_poll(
        clock: FakeClock, listener: RecordingListener, built: list[Any], silent_server: SilentServer) -> None:
    outcomes: list[str] = []

    def watch(ctx: WatchContext) -> None:
        ctx.publish(A)
        conn = http.client.HTTPConnection("127.0.0.1", silent_server.port, timeout=60)
        unregister = ctx.on_interrupt(lambda: shutdown_socket(conn.sock))
        try:
            if ctx.stopped:
                return
            conn.request("GET", "/v1/health/service/orders?index=42&wait=600s")
            try:
                conn.getresponse().read()
            except Exception as exc:
                outcomes.append(type(exc).__name__)
                raise
            ctx.publish(B)  # never: the server never answers
        finally:
            unregister()
            conn.close()

    r = watching(built, listener, watch, clock)
    assert silent_server.received.wait(5)
    assert silent_server.data[0].startswith(b"GET /v1/health/service/orders?index=42&wait=600s ")
    listener.wait_for_count(states=1)
    # The watch thread is blocked reading the response.
    wait_for(lambda: in_call("discovery-resolver test", "readinto"), message="watch blocked in the GET")
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5.0, "close() waited"  # for a GET that is never answered
    assert r.join(5), "the interrupter did not wake the blocked GET"
    assert outcomes == ["RemoteDisconnected"]
    assert listener.states == [A] and listener.errors == []  # the aborted GET is not reported


def test_async_watch_on_a_real_socket_is_cancelled_by_close(
        clock: FakeClock, listener: RecordingListener, built: list[Any], silent_server: SilentServer) -> None:
    async def watch(ctx: WatchContext) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", silent_server.port)
        try:
            writer.write(b"GET /watch?resourceVersion=7 HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            await reader.read(1)  # blocks: no answer ever comes
            ctx.publish(B)
        finally:
            writer.close()

    r = watching(built, listener, watch, clock)
    assert silent_server.received.wait(5)
    t0 = time.monotonic()
    r.close()
    assert time.monotonic() - t0 < 5.0  # the read never ends by itself
    assert r.join(5)
    assert listener.states == [] and listener.errors == []


def test_no_listener_call_after_close_even_from_a_busy_watch(
        clock: FakeClock, built: list[Any]) -> None:
    class Counting(RecordingListener):
        def __init__(self) -> None:
            super().__init__()
            self.closed = threading.Event()
            self.after_close = 0

        def update_state(self, state: ResolverState) -> None:
            if self.closed.is_set():
                self.after_close += 1
            super().update_state(state)

        def report_error(self, error: ResolverError) -> None:
            if self.closed.is_set():
                self.after_close += 1
            super().report_error(error)

    listener = Counting()
    published = threading.Event()
    finished = threading.Event()

    def watch(ctx: WatchContext) -> None:
        # Publishes as fast as it can, alternating sets and errors, ignoring the stop flag a while.
        n = 0
        try:
            while n < 20_000:
                n += 1
                ctx.publish(ResolverState((Address("127.0.0.1", 1 + n % 50000),)))
                ctx.report_error(ResolverError(f"error {n}"))
                published.set()
        finally:
            finished.set()

    r = watching(built, listener, watch, clock)
    assert published.wait(5)
    r.close()
    listener.closed.set()  # set after close() returned: any call from now on is a violation
    assert finished.wait(30)
    assert listener.after_close == 0
    assert len(listener.states) < 20_000


def test_interrupters_run_on_close_and_can_be_unregistered(
        clock: FakeClock, listener: RecordingListener, built: list[Any]) -> None:
    calls: list[str] = []
    registered = threading.Event()

    def watch(ctx: WatchContext) -> None:
        ctx.on_interrupt(lambda: calls.append(f"a on {threading.current_thread().name}"))
        drop = ctx.on_interrupt(lambda: calls.append("dropped"))
        def failing() -> None:
            raise OSError("already closed")

        ctx.on_interrupt(failing)  # a failing interrupter must not stop the others
        ctx.on_interrupt(lambda: calls.append("c"))
        drop()
        registered.set()
        ctx.wait(math.inf)

    r = watching(built, listener, watch, clock)
    assert registered.wait(5)
    r.close()
    assert calls == [f"a on {threading.current_thread().name}", "c"]
    assert r.join(5)
    late: list[str] = []
    from discovery.resolver.helpers import WatchContext as Ctx
    Ctx(r).on_interrupt(lambda: late.append("at once"))  # registered after close(): runs at once
    assert late == ["at once"]


def test_close_from_inside_the_listener_does_not_deadlock(clock: FakeClock, built: list[Any]) -> None:
    holder: list[PollingResolver] = []

    class ClosingListener(RecordingListener):
        def update_state(self, state: ResolverState) -> None:
            super().update_state(state)
            holder[0].close()

    listener = ClosingListener()
    r = PollingResolver(listener, Script(A, B), name="test", clock=clock, interval=1.0, min_interval=0.0)
    holder.append(r)
    built.append(r)
    r.start()
    assert r.join(5)
    assert listener.states == [A]


def test_close_before_start_and_twice(listener: RecordingListener, clock: FakeClock) -> None:
    lookup = Script(A)
    r = PollingResolver(listener, lookup, name="test", clock=clock)
    r.close()
    r.close()
    r.start()
    r.resolve_now()
    assert r.join(1) and lookup.calls == 0 and r.closed
    assert repr(r) == "<PollingResolver test closed>"


# -- logging --------------------------------------------------------------------------------------


def test_an_identical_repeated_error_is_logged_once_per_change(
        clock: FakeClock, listener: RecordingListener, built: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    down = ResolverError("registry 127.0.0.1:8500 unreachable")
    refused = ResolverError("registry 127.0.0.1:8500 refused the token")
    lookup = Script(down, down, down, refused, refused, down, A, down)
    with caplog.at_level(logging.INFO, logger="discovery.resolver.test"):
        polling(built, listener, lookup, clock, min_interval=0.0, backoff=no_jitter())
        for _ in range(7):
            step(clock)
        listener.wait_for_count(errors=7)
    records = [r for r in caplog.records if r.name == "discovery.resolver.test"]
    assert [r.getMessage() for r in records] == [
        f"{down} (keeping the last good address set)",
        f"{refused} (keeping the last good address set)",
        f"{down} (keeping the last good address set)",
        "test resolver recovered: 1 addresses",
        f"{down} (keeping the last good address set)",
    ]
    assert [r.levelno for r in records] == [logging.WARNING] * 3 + [logging.INFO, logging.WARNING]
    assert len(listener.errors) == 7  # the channel still hears every one


def test_unexpected_exceptions_are_logged_with_their_traceback(
        clock: FakeClock, listener: RecordingListener, built: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="discovery.resolver.test"):
        polling(built, listener, Script(KeyError("Service")), clock)
        listener.wait_for_count(errors=1)
        clock.wait_for_blocked()
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "KeyError: 'Service'" in record.getMessage()


# -- FakeClock.wait_for_blocked ------------------------------------------------------------------


def test_fake_clock_wait_for_blocked_sees_only_settled_waiters() -> None:
    clock = FakeClock()
    assert clock.blocked() == []
    with pytest.raises(TimeoutError):
        clock.wait_for_blocked(timeout=0.05)
    ev = threading.Event()
    results: list[bool] = []
    t = threading.Thread(target=lambda: results.append(clock.wait(ev, 10.0)))
    t.start()
    assert clock.wait_for_blocked() == pytest.approx([10.0])
    clock.advance(4.0)
    assert clock.wait_for_blocked() == pytest.approx([6.0])
    ev.set()
    assert clock.blocked() == []  # its event is set: about to return, not settled
    t.join(5)
    assert results == [True]
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_silent_server_takes_requests_on_tcp_and_udp_and_never_answers() -> None:
    with SilentServer() as server:
        tcp = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        tcp.sendall(b"GET /v1/kv?index=3 HTTP/1.1\r\n\r\n")
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"\x12\x34query", ("127.0.0.1", server.port))
        wait_for(lambda: len(server.data) == 2 and all(server.data), message="both requests recorded")
        assert set(server.data) == {b"GET /v1/kv?index=3 HTTP/1.1\r\n\r\n", b"\x12\x34query"}
        assert server.connections == 1 and server.address == f"127.0.0.1:{server.port}"
        udp.settimeout(0.2)
        with pytest.raises(TimeoutError):
            udp.recvfrom(100)  # no answer
    # stop() closes the pending connection: the client sees end of file instead of waiting forever.
    assert tcp.recv(100) == b""
    tcp.close()
    udp.close()


def test_shutdown_socket_accepts_none_and_closed_sockets() -> None:
    shutdown_socket(None)
    s = socket.socket()
    shutdown_socket(s)  # never connected: ENOTCONN is swallowed
    s.close()
    shutdown_socket(s)  # closed: EBADF is swallowed


def test_resolve_now_does_not_wait_for_a_listener_call_in_progress(clock: FakeClock, built: list[Any]) -> None:
    entered = threading.Event()
    release = threading.Event()

    class SlowListener(RecordingListener):
        def update_state(self, state: ResolverState) -> None:
            entered.set()
            release.wait(10)
            super().update_state(state)

    listener = SlowListener()
    lookup = Script(A, B)
    r = polling(built, listener, lookup, clock, interval=300.0, min_interval=0.0)
    assert entered.wait(5)
    t0 = time.monotonic()
    r.resolve_now()
    assert time.monotonic() - t0 < 5.0  # the listener call holds for 10 s
    release.set()
    listener.wait_for_count(states=2)  # the request was kept: a second lookup ran at once
    assert lookup.calls == 2
