"""weighted_round_robin (gRFC A58) with fake backends and a fake ORCA server, and discovery.orca itself."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

import discovery
from discovery import orca
from discovery.balancer import Balancer, PickResult
from discovery.balancers.weighted_round_robin import WeightedRoundRobinBuilder
from discovery.errors import ConfigError
from discovery.testing import FakeClock, FakeHelper, FakeSubConn, addresses, check_distribution, update

C = grpc.ChannelConnectivity


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    discovery.register_balancer(WeightedRoundRobinBuilder(), replace=True)
    yield
    discovery.unregister_balancer("weighted_round_robin")


def build(config: dict[str, object] | None = None, clock: FakeClock | None = None) -> tuple[FakeHelper, Balancer]:
    h = FakeHelper(clock or FakeClock())
    b = discovery.get_balancer("weighted_round_robin")
    return h, b.build(h, b.parse_config(config or {}, key_path="lb"))


def backends(*weights: int, state: grpc.ChannelConnectivity = C.READY) -> list[FakeSubConn]:
    return [FakeSubConn(a, state=state)
            for a in (addresses(f"127.0.0.1:{5000 + i}", weight=w)[0] for i, w in enumerate(weights))]


def counts(h: FakeHelper, scs: list[FakeSubConn], n: int) -> list[int]:
    got = {sc: 0 for sc in scs}
    for _ in range(n):
        r = h.picker.pick("/m", None)
        assert isinstance(r, PickResult)
        got[r.subconn] += 1  # type: ignore[index]
    return [got[sc] for sc in scs]


def report(qps: float, util: float, eps: float = 0.0, app: float = 0.0) -> bytes:
    r = orca.OrcaLoadReport(rps_fractional=qps, cpu_utilization=util, eps=eps, application_utilization=app)
    return r.SerializeToString()  # type: ignore[no-any-return]


OOB = {"enableOobLoadReport": True, "oobReportingPeriod": "5s", "blackoutPeriod": "10s",
       "weightExpirationPeriod": "60s", "weightUpdatePeriod": "1s"}


def test_config_defaults_and_errors() -> None:
    b = WeightedRoundRobinBuilder()
    cfg = b.parse_config({}, key_path="lb")
    assert (cfg.enable_oob, cfg.oob_period, cfg.blackout, cfg.expiration, cfg.update_period, cfg.error_penalty) == (
        False, 10.0, 10.0, 180.0, 1.0, 1.0)
    assert b.parse_config({"weightUpdatePeriod": "0.01s"}, key_path="lb").update_period == 0.1  # A58's floor
    for bad, key in (({"enableOobLoadReport": "yes"}, "lb.enableOobLoadReport"),
                     ({"errorUtilizationPenalty": -1}, "lb.errorUtilizationPenalty"),
                     ({"blackoutPeriod": "soon"}, "lb.blackoutPeriod"), ({"weights": 1}, "lb")):
        with pytest.raises(ConfigError) as ei:
            b.parse_config(bad, key_path="lb")
        assert ei.value.key_path == key


def test_experimental_spelling_selects_it() -> None:
    sc = discovery.parse_service_config({"loadBalancingConfig": [{"weighted_round_robin_experimental": {}}]})
    assert sc.policy == "weighted_round_robin"


def test_registry_weights_without_orca() -> None:
    h, wrr = build()
    scs = backends(1, 2, 3, 0)
    update(wrr, scs)
    got = counts(h, scs, 6030)
    check_distribution(got, [1, 2, 3, 0.01])
    assert h.streams == []  # no ORCA without enableOobLoadReport


def test_equal_registry_weights_are_plain_round_robin() -> None:
    h, wrr = build()
    update(wrr, backends(1, 1, 1))
    assert type(h.picker).__name__ == "RoundRobinPicker"


def test_orca_streams_open_on_ready_backends_and_ask_for_the_period() -> None:
    h, wrr = build(OOB)
    scs = backends(1, 1, 1)
    scs[2].state = C.CONNECTING
    update(wrr, scs)
    streams = h.open_streams(orca.OOB_METHOD)
    assert set(streams) == {scs[0].addr, scs[1].addr}
    req = orca.OrcaLoadReportRequest.FromString(streams[scs[0].addr].request)
    assert req.report_interval.seconds == 5
    scs[2].state = C.READY
    wrr.subconn_state(scs[2])
    assert scs[2].addr in h.open_streams(orca.OOB_METHOD)
    scs[0].state = C.TRANSIENT_FAILURE
    wrr.subconn_state(scs[0])
    assert streams[scs[0].addr].cancelled


def test_orca_weights_after_blackout_then_expiry_back_to_registry() -> None:
    clock = FakeClock()
    h, wrr = build(OOB, clock)
    scs = backends(1, 1, 5, 1)  # registry weights until ORCA weights count
    update(wrr, scs)
    streams = h.open_streams()
    # qps / utilization: 100/0.5 = 200, 100/0.25 = 400, 300/0.5 = 600; the fourth sends nothing.
    for sc, (qps, util) in zip(scs, [(100, 0.5), (100, 0.25), (300, 0.5)], strict=False):
        streams[sc.addr].send(report(qps, util))
    clock.advance(5.0)
    h.run_due()
    check_distribution(counts(h, scs, 8000), [1, 1, 5, 1])  # still in the blackout: registry weights
    for sc, (qps, util) in zip(scs, [(100, 0.5), (100, 0.25), (300, 0.5)], strict=False):
        streams[sc.addr].send(report(qps, util))
    clock.advance(6.0)
    h.run_due()
    assert wrr.weights() == {scs[0].addr: 200, scs[1].addr: 400, scs[2].addr: 600, scs[3].addr: 0}  # type: ignore[attr-defined]
    # The backend without a report gets the mean of the others (A58).
    check_distribution(counts(h, scs, 16000), [200, 400, 600, 400])
    clock.advance(60.0)  # no report for weightExpirationPeriod
    h.run_due()
    check_distribution(counts(h, scs, 8000), [1, 1, 5, 1])


def test_orca_weight_formula_uses_application_utilization_and_error_penalty() -> None:
    clock = FakeClock()
    h, wrr = build({**OOB, "blackoutPeriod": "0s", "errorUtilizationPenalty": 2.0}, clock)
    scs = backends(1, 1)
    update(wrr, scs)
    streams = h.open_streams()
    streams[scs[0].addr].send(report(100, util=0.9, app=0.5))           # app utilization wins: 100/0.5
    streams[scs[1].addr].send(report(100, util=0.25, eps=25))            # 100 / (0.25 + 0.25 * 2)
    streams[scs[1].addr].send(report(0, util=0.25))                      # no qps: ignored (A58)
    w = wrr.weights()  # type: ignore[attr-defined]
    assert w[scs[0].addr] == pytest.approx(200) and w[scs[1].addr] == pytest.approx(100 / 0.75)


def test_one_reporting_backend_means_plain_rotation() -> None:
    clock = FakeClock()
    h, wrr = build({**OOB, "blackoutPeriod": "0s"}, clock)
    scs = backends(1, 3, 1)
    update(wrr, scs)
    h.open_streams()[scs[0].addr].send(report(100, 0.1))
    clock.advance(1.0)
    h.run_due()
    assert type(h.picker).__name__ == "RoundRobinPicker"


def test_stream_end_retries_with_backoff_and_unimplemented_stops() -> None:
    clock = FakeClock()
    h, wrr = build(OOB, clock)
    scs = backends(1, 1)
    update(wrr, scs)
    first = h.open_streams()
    first[scs[0].addr].end(grpc.StatusCode.UNAVAILABLE)
    first[scs[1].addr].end(grpc.StatusCode.UNIMPLEMENTED)
    assert h.open_streams() == {}
    clock.advance(1.0)
    h.run_due()
    assert set(h.open_streams()) == {scs[0].addr}  # retried; the one without ORCA is not
    h.open_streams()[scs[0].addr].end(grpc.StatusCode.UNAVAILABLE)
    clock.advance(1.0)
    h.run_due()
    assert h.open_streams() == {}  # the backoff doubled
    clock.advance(1.0)
    h.run_due()
    assert set(h.open_streams()) == {scs[0].addr}


def test_reconnecting_backend_starts_a_new_blackout() -> None:
    clock = FakeClock()
    h, wrr = build(OOB, clock)
    scs = backends(1, 1)
    update(wrr, scs)
    for st in h.open_streams().values():
        st.send(report(100, 0.5))
    clock.advance(11.0)
    for st in h.open_streams().values():
        st.send(report(100, 0.5))
    assert wrr.weights()[scs[0].addr] == 200  # type: ignore[attr-defined]
    scs[0].state = C.IDLE
    wrr.subconn_state(scs[0])
    scs[0].state = C.READY
    wrr.subconn_state(scs[0])
    h.open_streams()[scs[0].addr].send(report(100, 0.5))
    assert wrr.weights()[scs[0].addr] == 0  # type: ignore[attr-defined]


def test_close_cancels_streams_and_timers() -> None:
    h, wrr = build(OOB)
    update(wrr, backends(1, 1))
    streams = list(h.open_streams().values())
    wrr.close()
    assert all(st.cancelled for st in streams)
    n = len(h.updates)
    h.clock.advance(5.0)  # type: ignore[attr-defined]
    h.run_due()
    assert len(h.updates) == n


def test_slow_start_scales_the_weights() -> None:
    clock = FakeClock()
    h, wrr = build({"slowStart": {"window": "10s", "minWeightPercent": 50}}, clock)
    first = backends(2, 2)
    update(wrr, first)
    late = [FakeSubConn(addresses("127.0.0.1:6000", weight=2)[0], state=C.READY)]
    update(wrr, first + late)
    check_distribution(counts(h, first + late, 5000), [2, 2, 1])


# -- discovery.orca ----------------------------------------------------------------------------------


def test_server_metrics_measure_and_let_the_application_override() -> None:
    t = [0.0]
    cpu = [0.0]
    m = orca.ServerMetrics(window=1.0, clock=lambda: t[0], cpu_time=lambda: cpu[0], cpus=2)
    for i in range(30):
        m.record_call(failed=i % 10 == 0)
    t[0], cpu[0] = 2.0, 1.0
    r = m.report()
    assert (r.rps_fractional, r.eps, r.cpu_utilization) == (15.0, 1.5, 0.25)
    m.set_qps(99)
    m.set_application_utilization(0.7)
    m.set_named_metric("queue", 3)
    m.set_utilization("pool", 0.5)
    r = m.report()
    assert (r.rps_fractional, r.application_utilization, dict(r.named_metrics), dict(r.utilization)) == (
        99, pytest.approx(0.7), {"queue": 3.0}, {"pool": 0.5})
    m.clear("rps_fractional")
    assert m.report().rps_fractional == 15.0
    with pytest.raises(ValueError, match="mem_utilization"):
        m.set_memory_utilization(1.5)
    with pytest.raises(ValueError):
        m.set_cpu_utilization(float("nan"))


def test_report_request_round_trips() -> None:
    req = orca.OrcaLoadReportRequest.FromString(orca.report_request(2.5, ["a"]))
    assert (req.report_interval.seconds, req.report_interval.nanos, list(req.request_cost_names)) == (
        2, 500_000_000, ["a"])


def test_wire_names_are_upstreams() -> None:
    # What makes the reports readable by grpc-go, Java, C++ and Envoy.
    assert orca.OrcaLoadReport.DESCRIPTOR.full_name == "xds.data.orca.v3.OrcaLoadReport"
    fields = {f.name: f.number for f in orca.OrcaLoadReport.DESCRIPTOR.fields}
    assert fields == {"cpu_utilization": 1, "mem_utilization": 2, "rps": 3, "request_cost": 4, "utilization": 5,
                      "rps_fractional": 6, "eps": 7, "named_metrics": 8, "application_utilization": 9}
    assert orca.OOB_METHOD == "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics"
