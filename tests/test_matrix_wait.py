"""Feature x call shape: waitForReady (call argument and methodConfig) and deadlines (the call's
timeout and methodConfig's, the earlier wins; well under 2 s, grpc/grpc#34547), on every
sync and asyncio call shape, against real servers."""

from __future__ import annotations

import grpc
import pytest
from callshapes import METHOD, SHAPES, method_config

import discovery
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import static_target

C = grpc.ChannelConnectivity
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


def _parked(core) -> bool:  # type: ignore[no-untyped-def]
    """An RPC is waiting in the channel for a picker (blocking or asyncio)."""
    return bool(core._async_waiters or core.cond._waiters)


@pytest.mark.parametrize("source", ["call", "methodConfig"])
@pytest.mark.parametrize("shape", SHAPES)
def test_wait_for_ready_waits_for_a_backend(shape, source, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    sc = method_config(waitForReady=True) if source == "methodConfig" else None
    # Backends re-read every 50 ms: the stopped server is noticed sooner than with the default 250 ms.
    c = clients(shape, static_target([s]), service_config=sc, settings=discovery.ChannelSettings(slow_poll=0.05))
    assert c.call(shape).ok
    s.stop()
    wait_for(lambda: c.channel.get_state() is C.TRANSIENT_FAILURE, 10, message="channel in TRANSIENT_FAILURE")
    # Fail fast without it (an explicit False beats the method config: gRPC's rule).
    failed = c.call(shape, wait_for_ready=False)
    assert failed.code is UNAVAILABLE and "0 of 1 backends ready" in failed.details
    wfr = True if source == "call" else None
    # Waiting ends at the deadline.
    late = c.call(shape, wait_for_ready=wfr, timeout=0.3)
    assert late.code is DEADLINE and 0.28 <= late.elapsed < 1.5 and "waiting for a backend" in late.details
    pending = c.start(shape, wait_for_ready=wfr, timeout=30)
    wait_for(lambda: _parked(c.core), 10, message="RPC parked waiting for a backend")
    assert not pending.done()
    s.start()
    out = pending.result(30)
    assert out.ok and out.backend == s.name
    assert s.calls[METHOD[shape]] == 2
    c.wait_idle()


# (call timeout, methodConfig timeout): the earlier wins, whichever states it.
DEADLINES = [(0.3, "5s"), (5.0, "0.3s"), (None, "0.3s")]


@pytest.mark.parametrize(("call_timeout", "config_timeout"), DEADLINES,
                         ids=["call-earlier", "config-earlier", "config-only"])
@pytest.mark.parametrize("shape", SHAPES)
def test_deadline_the_earlier_wins(shape, call_timeout, config_timeout, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    c = clients(shape, static_target([s]), service_config=method_config(timeout=config_timeout))
    wait_ready(c.channel, 1)
    fast = c.call(shape, timeout=call_timeout)
    assert fast.ok, "a short methodConfig timeout must not fail an RPC that is quicker (grpc/grpc#34547)"
    s.delay = 5.0
    out = c.call(shape, timeout=call_timeout)
    assert out.code is DEADLINE
    assert 0.28 <= out.elapsed < 1.5, out.elapsed
    # The deadline reached the server: it saw the call go.
    wait_for(lambda: s.cancelled == 1, 5, message="server saw the deadline pass")
    c.wait_idle()
