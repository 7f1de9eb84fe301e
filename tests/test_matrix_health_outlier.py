"""Feature x call shape: health filtering (gRFC A17) and outlier detection (gRFC A50, plus
consecutive errors), on every sync and asyncio call shape. Outlier detection counts failures
from every shape, over round_robin and over a child policy registered as a third party would
(examples/custom_balancer.py's ``tally``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import pytest
from callshapes import METHOD, SHAPES
from grpc_health.v1 import health_pb2
from policies import registered

from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import SERVICE, static_target
from examples.custom_balancer import Tally, TallyBuilder

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("shape", SHAPES)
def test_unhealthy_backend_is_never_picked(shape, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    sick, well = start_backends(2)
    c = clients(shape, static_target([sick, well]), service_config={"healthCheckConfig": {"serviceName": SERVICE}})
    wait_ready(c.channel, 2)
    sick.set_health(NOT_SERVING)
    wait_for(lambda: [b.healthy for b in c.backends()] == [False, True], 10, message="sick seen unhealthy")
    method = METHOD[shape]
    before = sick.calls[method]
    outcomes = [c.call(shape) for _ in range(6)]
    assert [o.backend for o in outcomes] == [well.name] * 6
    assert sick.calls[method] == before
    # Healthy again: it is picked again.
    sick.set_health(SERVING)
    wait_for(lambda: c.call(shape).backend == sick.name, 10, message="sick picked again once SERVING")
    c.wait_idle()


@contextlib.contextmanager
def _child(name: str) -> Iterator[None]:
    if name == "tally":
        with registered(TallyBuilder(Tally())):
            yield
    else:
        yield


@pytest.mark.parametrize("child", ["round_robin", "tally"])
@pytest.mark.parametrize("shape", SHAPES)
def test_outlier_detection_ejects_from_failures_of_any_shape(shape, child, start_backends, clients) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(3)
    bad = servers[0]
    bad.fail_with = grpc.StatusCode.INTERNAL
    sc = {"loadBalancingConfig": [{"outlier_detection": {
        "consecutiveErrors": 3, "maxEjectionPercent": 50, "baseEjectionTime": "30s",
        "childPolicy": [{child: {}}]}}]}
    method = METHOD[shape]
    with _child(child):
        c = clients(shape, static_target(servers), service_config=sc)
        wait_ready(c.channel, 3)
        failures = 0
        for _ in range(30):  # round robin: bad gets every third RPC
            failures += not c.call(shape).ok
            if failures == 3:
                break
        # The third failure's DoneInfo ejects it (on the control thread, soon after the RPC ended).
        wait_for(lambda: any(b.ejected for b in c.backends()), 5, message="a backend ejected")
        assert [b.address for b in c.backends() if b.ejected] == [bad.addr]
        assert bad.calls[method] == 3
        outcomes = [c.call(shape) for _ in range(6)]
    assert all(o.ok and o.backend != bad.name for o in outcomes)
    assert bad.calls[method] == 3
    c.wait_idle()


def test_cancelled_attempts_count_neither_way() -> None:
    """A losing hedge is CANCELLED by the client: it must not hide a failing backend."""
    from discovery.balancers.outlier_detection import OutlierDetectionBuilder
    from discovery.testing import FakeClock, FakeHelper, FakeSubConn, addresses, finish, update

    builder = OutlierDetectionBuilder()
    cfg = builder.parse_config({"consecutiveErrors": 3, "maxEjectionPercent": 50}, key_path="od")
    helper = FakeHelper(FakeClock())
    od = builder.build(helper, cfg)
    subconns = [FakeSubConn(a, state=grpc.ChannelConnectivity.READY)
                for a in addresses("127.0.0.1:1", "127.0.0.1:2")]
    update(od, subconns, cfg)
    bad = subconns[0]

    def pick_bad():  # type: ignore[no-untyped-def]
        for _ in range(4):
            r = helper.picker.pick("/svc/M", None)
            if r is not None and r.subconn.backend is bad:
                return r
        raise AssertionError("bad never picked")

    for code in ("INTERNAL", "CANCELLED", "INTERNAL", "CANCELLED", "INTERNAL"):
        finish(pick_bad(), grpc.StatusCode[code])
    helper.run_due()
    assert helper.ejections == [(bad.addr, True)]
