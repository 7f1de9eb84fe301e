"""The subchannel manager: diffs, no churn on identical updates, drain of removed backends."""

from __future__ import annotations

import threading

import grpc
import pytest

from discovery import Address, ResolverState
from discovery.address import Attributes
from discovery.backend import Backend
from discovery.control import ControlLoop
from discovery.manager import SubchannelManager
from discovery.testing import FakeClock


@pytest.fixture
def manager():  # type: ignore[no-untyped-def]
    clock = FakeClock()
    loop = ControlLoop("m", clock)
    made: list[grpc.Channel] = []

    def make(a: Address) -> Backend:
        # Real grpc channels to ports nobody listens on: nothing connects
        # until asked, which is all these tests need.
        ch = grpc.insecure_channel(a.addr)
        made.append(ch)
        return Backend(a, ch)

    m = SubchannelManager(loop, make, drain_grace=5.0)
    yield m, loop, clock, made
    on_loop(loop, m.close_all)
    loop.stop()


def on_loop(loop: ControlLoop, fn):  # type: ignore[no-untyped-def]
    out: list[object] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    loop.submit(run)
    assert done.wait(5)
    if errors:
        raise errors[0]
    return out[0]


def apply(m: SubchannelManager, st: ResolverState) -> bool:
    """What the channel does with a resolver state: reconcile, then drain what left."""
    changed, removed = m.update(st)
    m.drain(removed)
    return changed


def state(*ports: int, weight: int = 1) -> ResolverState:
    return ResolverState(tuple(Address("127.0.0.1", p, weight=weight) for p in ports))


def test_identical_state_causes_no_churn(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, made = manager
    assert on_loop(loop, lambda: apply(m, state(1, 2, 3)))
    before = m.backends
    assert not on_loop(loop, lambda: apply(m, state(1, 2, 3)))
    assert m.backends is before and len(made) == 3


def test_diff_keeps_unchanged_backends_and_creates_only_new_ones(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, made = manager
    on_loop(loop, lambda: apply(m, state(1, 2, 3)))
    kept = {b.addr: b for b in m.backends}
    on_loop(loop, lambda: apply(m, state(2, 3, 4)))
    assert [b.addr for b in m.backends] == ["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]
    assert m.backends[0] is kept["127.0.0.1:2"] and m.backends[1] is kept["127.0.0.1:3"]
    assert len(made) == 4 and m.closed == 1  # the idle removed backend closed at once


def test_weight_change_updates_address_without_a_new_channel(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, made = manager
    on_loop(loop, lambda: apply(m, state(1)))
    b = m.backends[0]
    new = ResolverState((Address("127.0.0.1", 1, weight=5, attributes=Attributes({"zone": "a"})),))
    assert on_loop(loop, lambda: apply(m, new))
    assert m.backends[0] is b and b.address.weight == 5 and len(made) == 1


def test_removed_backend_with_rpcs_in_flight_drains_then_closes(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, _ = manager
    on_loop(loop, lambda: apply(m, state(1, 2)))
    b = m.backends[0]
    b.begin()
    on_loop(loop, lambda: apply(m, state(2)))
    assert b not in m.backends and b in m.draining and m.closed == 0
    b.end()  # the last RPC finishing closes it, on the loop thread
    from discovery.testing import wait_for

    wait_for(lambda: m.closed == 1, message="drained backend was not closed")
    assert not m.draining


def test_an_attempt_that_begins_after_the_drain_went_idle_is_waited_for(manager) -> None:  # type: ignore[no-untyped-def]
    """An RPC holding an older picker may begin on a draining backend after its count
    reached zero and before the loop closes it: the close waits for that RPC too."""
    m, loop, _, _ = manager
    on_loop(loop, lambda: apply(m, state(1, 2)))
    b = m.backends[0]
    b.begin()
    on_loop(loop, lambda: apply(m, state(2)))
    assert b in m.draining
    hold, held = threading.Event(), threading.Event()

    def block() -> None:
        held.set()
        hold.wait(10)

    loop.submit(block)  # the loop runs nothing else until released
    assert held.wait(5)
    b.end()  # idle: the close is queued behind block()
    assert b.begin()  # a straggler gets in before the loop closes the backend
    hold.set()
    on_loop(loop, lambda: None)  # the queued close has run
    assert not b.closed and b in m.draining and m.closed == 0
    b.end()
    from discovery.testing import wait_for

    wait_for(lambda: m.closed == 1 and b.closed, message="the backend closed once the straggler ended")
    assert not m.draining


def test_drain_grace_bounds_the_wait(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, clock, _ = manager
    on_loop(loop, lambda: apply(m, state(1, 2)))
    b = m.backends[0]
    b.begin()  # never ends
    on_loop(loop, lambda: apply(m, state(2)))
    clock.advance(4.9)
    on_loop(loop, lambda: None)
    assert m.closed == 0
    clock.advance(0.2)
    from discovery.testing import wait_for

    wait_for(lambda: m.closed == 1, message="grace period did not close the backend")


def test_duplicate_addresses_keep_one_backend(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, made = manager
    on_loop(loop, lambda: apply(m, state(1, 1, 2)))
    assert [b.addr for b in m.backends] == ["127.0.0.1:1", "127.0.0.1:2"] and len(made) == 2


def test_an_update_that_fails_half_way_applies_nothing(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, made = manager
    on_loop(loop, lambda: apply(m, state(1)))
    before = m.backends
    real = m._make_backend
    calls = 0

    def flaky(a: Address) -> Backend:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise UnicodeEncodeError("idna", "x", 0, 1, "bad host")
        return real(a)

    m._make_backend = flaky
    with pytest.raises(UnicodeEncodeError):
        on_loop(loop, lambda: apply(m, state(1, 2, 3)))
    assert m.backends is before
    # The channel made before the failure was closed, not leaked ...
    assert m.closed == 0 and len(made) == 2
    m._make_backend = real
    # ... and the same state pushed again is applied (it was not recorded).
    assert on_loop(loop, lambda: apply(m, state(1, 2, 3)))
    assert [b.addr for b in m.backends] == ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]


def test_removed_idle_backend_refuses_an_rpc_from_an_old_picker(manager) -> None:  # type: ignore[no-untyped-def]
    m, loop, _, _ = manager
    on_loop(loop, lambda: apply(m, state(1, 2)))
    b = m.backends[0]
    on_loop(loop, lambda: apply(m, state(2)))
    # Closed at once (nothing in flight), and an RPC that still holds it is refused: it re-picks.
    assert b.closed and not b.begin() and b.in_flight == 0
