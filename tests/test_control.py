"""The control loop, the fake clock and backoff."""

from __future__ import annotations

import random
import threading

from discovery.clock import Backoff
from discovery.control import ControlLoop
from discovery.testing import FakeClock


def test_submitted_callables_run_in_order_on_one_thread() -> None:
    loop = ControlLoop("t")
    seen: list[tuple[int, str]] = []
    done = threading.Event()
    for i in range(100):
        loop.submit(lambda i=i: seen.append((i, threading.current_thread().name)))
    loop.submit(done.set)
    assert done.wait(5)
    assert [i for i, _ in seen] == list(range(100))
    assert {name for _, name in seen} == {"t"}
    loop.stop()


def test_timers_fire_when_the_fake_clock_reaches_them_and_not_before() -> None:
    clock = FakeClock()
    loop = ControlLoop("t", clock)
    fired = threading.Event()
    loop.call_later_clock(30.0, fired.set)
    cancelled = loop.call_later_clock(10.0, lambda: fired.set())
    cancelled.cancel()
    clock.advance(29.0)
    assert not fired.wait(0.2)
    clock.advance(1.0)
    assert fired.wait(5)
    loop.stop()


def test_a_failing_callable_does_not_stop_the_loop() -> None:
    loop = ControlLoop("t")
    done = threading.Event()
    loop.submit(lambda: 1 / 0)  # type: ignore[func-returns-value]
    loop.submit(done.set)
    assert done.wait(5)
    loop.stop()


def test_after_each_runs_after_every_callable_and_timer_even_a_failing_one() -> None:
    seen: list[str] = []
    done = threading.Event()

    def fail() -> None:
        seen.append("fail")
        raise RuntimeError("boom")

    def last() -> None:
        seen.append("last")
        done.set()

    loop = ControlLoop("t", after_each=lambda: seen.append("after"))
    loop.submit(lambda: seen.append("a"))
    loop.submit(fail)
    loop.call_later(0.0, lambda: seen.append("timer"))
    loop.call_later(0.05, last)
    assert done.wait(5)
    loop.stop()  # joins the loop thread: the last after_each has run
    # A timer may run before or after a callable submitted earlier; each task is followed by after_each.
    assert seen[1::2] == ["after"] * 4
    assert sorted(seen[0::2]) == ["a", "fail", "last", "timer"]
    assert seen[-2] == "last"


def test_backoff_follows_grpc_numbers() -> None:
    b = Backoff(_rng=random.Random(1))
    delays = [b.next() for _ in range(14)]
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 * 0.8 <= delays[1] <= 1.6 * 1.2
    assert all(d <= 120 * 1.2 for d in delays)
    assert delays[-1] >= 120 * 0.8
    b.reset()
    assert b.next() <= 1.2
