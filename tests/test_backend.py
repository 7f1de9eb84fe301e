"""A backend's in-flight accounting, which takes no lock (see discovery.backend).

The invariants, checked under a tiny GIL switch interval and with the GIL
given up right after each read of ``closed``, so that the threads interleave
where an unsafe order would break:

* an attempt that :meth:`Backend.begin` admitted never sees the backend's
  channel closed before it ends (``try_close_idle`` either saw it, or
  ``begin`` saw ``closed`` and refused);
* once draining starts, the backend is reported idle when the last attempt
  ends, whichever thread ends it, and ``in_flight`` returns to zero.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from discovery import Address
from discovery.backend import Backend

_C = __import__("grpc").ChannelConnectivity


class _Channel:
    """Just what Backend needs of a sync channel: a state and close()."""

    def __init__(self) -> None:
        self.closed = False

    def read_state(self, try_to_connect: bool) -> object:
        return _C.READY

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


class _SlowReads(Backend):
    """A backend whose ``closed`` flag is read, then the reading thread yields the GIL
    before it acts on what it read (and a writer yields before it writes): the
    windows in which a check-then-act order (read ``closed`` then count the
    attempt, or count the attempts then set ``closed``) would lose the race."""

    __slots__ = ("_closed",)

    @property  # type: ignore[override]
    def closed(self) -> bool:
        value = self._closed
        # Not a wait: gives up the GIL to widen the race window.
        time.sleep(0)  # noqa: sleep-ok
        return value

    @closed.setter
    def closed(self, value: bool) -> None:
        # And before a write takes effect.
        time.sleep(0)  # noqa: sleep-ok
        self._closed = value


def _backend() -> tuple[Backend, _Channel]:
    ch = _Channel()
    return _SlowReads(Address("127.0.0.1", 1), ch), ch  # type: ignore[arg-type]


def test_an_admitted_attempt_never_sees_its_channel_closed(fast_switching: None) -> None:
    """The manager's protocol: start draining; close at once if idle, else close once an
    end() reports idle, unless an attempt from an older picker got in meanwhile."""
    rng = random.Random(7)
    admitted = refused = 0
    for _ in range(300):
        b, ch = _backend()
        go = threading.Barrier(3)
        seen_closed: list[bool] = []
        outcomes: list[bool] = []
        decided = threading.Semaphore(0)  # released once per attempt admitted or refused

        def rpc(b: Backend = b, ch: _Channel = ch, go: threading.Barrier = go, seen: list[bool] = seen_closed,
                outcomes: list[bool] = outcomes, decided: threading.Semaphore = decided,
                n: int = rng.randrange(1, 8)) -> None:
            go.wait()
            for _ in range(n):  # attempts one after the other, as stragglers of an older picker
                ok = b.begin()
                outcomes.append(ok)
                decided.release()
                if not ok:
                    return
                seen.append(ch.closed)
                # Gives up the GIL while in flight.
                time.sleep(0)  # noqa: sleep-ok
                seen.append(ch.closed)
                b.end()

        threads = [threading.Thread(target=rpc) for _ in range(2)]
        for t in threads:
            t.start()
        go.wait()
        # Attempts let in before the drain starts (each thread makes at least one).
        for _ in range(rng.randrange(3)):
            assert decided.acquire(timeout=10), "an attempt thread did not start"
        idle = threading.Event()
        closed = b.start_drain(lambda _b, idle=idle: idle.set()) and b.try_close_idle()
        while not closed:
            assert idle.wait(10), "attempts ended and the backend was never reported idle"
            idle.clear()
            closed = b.try_close_idle()
        for t in threads:
            t.join()
        assert not any(seen_closed), "an admitted attempt saw its backend's channel closed"
        assert ch.closed and b.closed and b.in_flight == 0
        admitted += outcomes.count(True)
        refused += outcomes.count(False)
    # Both outcomes happened: the race was exercised, not avoided.
    assert admitted and refused, (admitted, refused)


def test_draining_reports_idle_once_the_last_attempt_ends(fast_switching: None) -> None:
    for _ in range(300):
        b, _ = _backend()
        idle = threading.Event()
        for _ in range(4):
            assert b.begin()
        go = threading.Barrier(3)

        def finish(b: Backend = b, go: threading.Barrier = go) -> None:
            go.wait()
            b.end()
            b.end()

        threads = [threading.Thread(target=finish) for _ in range(2)]
        for t in threads:
            t.start()
        go.wait()
        already = b.start_drain(lambda _b, idle=idle: idle.set())
        for t in threads:
            t.join()
        assert b.in_flight == 0
        assert already or idle.is_set(), "the last attempt ended and nobody reported the backend idle"
