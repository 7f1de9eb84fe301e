"""least_request, peak_ewma, circuit_breaker, slow start and the EDF picker against fake backends."""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterator

import grpc
import pytest

import discovery
from discovery.balancer import NOT_ATTEMPTED, Balancer, Drop, PickResult, QueuePicker
from discovery.balancer.weights import EdfPicker, SlowStart
from discovery.balancers.circuit_breaker import CircuitBreakerBuilder
from discovery.balancers.least_request import LeastRequestBuilder
from discovery.balancers.peak_ewma import PeakEwmaBuilder
from discovery.errors import ConfigError
from discovery.testing import (
    FakeClock,
    FakeHelper,
    FakeSubConn,
    addresses,
    check_distribution,
    chi_square,
    finish,
    update,
)

C = grpc.ChannelConnectivity
S = grpc.StatusCode


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    # Entry points resolve only once the distribution is (re)installed; the
    # tests register the builders as a third-party plugin could.
    for b in (LeastRequestBuilder(), PeakEwmaBuilder(), CircuitBreakerBuilder()):
        discovery.register_balancer(b, replace=True)
    yield
    for name in ("least_request", "peak_ewma", "circuit_breaker"):
        discovery.unregister_balancer(name)


def subconns(n: int, state: grpc.ChannelConnectivity = C.READY, port0: int = 5000) -> list[FakeSubConn]:
    return [FakeSubConn(a, state=state) for a in addresses(*(f"127.0.0.1:{port0 + i}" for i in range(n)))]


def build(name: str, config: dict[str, object] | None = None, clock: FakeClock | None = None
          ) -> tuple[FakeHelper, Balancer]:
    h = FakeHelper(clock or FakeClock())
    b = discovery.get_balancer(name)
    return h, b.build(h, b.parse_config(config or {}, key_path="lb"))


def counts_of(results: list[PickResult | None], scs: list[FakeSubConn]) -> list[int]:
    c = collections.Counter(r.subconn for r in results if r is not None)
    return [c[sc] for sc in scs]


# -- the statistics helper itself ----------------------------------------------------------------


def test_check_distribution_rejects_a_wrong_fit_and_accepts_a_right_one() -> None:
    assert chi_square([100, 100], [1, 1]) == 0
    check_distribution([990, 2010], [1, 2])
    with pytest.raises(AssertionError, match="do not fit"):
        check_distribution([1500, 1500], [1, 2])
    with pytest.raises(AssertionError, match="too few"):
        check_distribution([1, 2], [1, 2])


# -- EDF --------------------------------------------------------------------------------------------


def test_edf_picker_gives_each_backend_its_weighted_share() -> None:
    scs = subconns(4)
    weights = [1.0, 2.0, 3.0, 4.0]
    picker = EdfPicker([PickResult(sc) for sc in scs], weights)
    got = counts_of([picker.pick("/m", None) for _ in range(10_000)], scs)
    check_distribution(got, weights)
    # EDF is exact to within one pick per backend, not just in distribution.
    assert all(abs(c - 1000 * w) <= 1 for c, w in zip(got, weights, strict=True))


def test_edf_picker_interleaves_instead_of_bursting() -> None:
    scs = subconns(2)
    picker = EdfPicker([PickResult(sc) for sc in scs], [1.0, 1.0])
    seq = [picker.pick("/m", None).subconn for _ in range(20)]  # type: ignore[union-attr]
    assert all(a is not b for a, b in itertools.pairwise(seq))


def test_edf_picker_is_safe_under_threads() -> None:
    scs = subconns(3)
    picker = EdfPicker([PickResult(sc) for sc in scs], [1.0, 1.0, 2.0])
    out: list[PickResult | None] = []
    lock = threading.Lock()

    def run() -> None:
        local = [picker.pick("/m", None) for _ in range(4000)]
        with lock:
            out.extend(local)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 16_000 and None not in out
    check_distribution(counts_of(out, scs), [1, 1, 2])


# -- slow start (round_robin, least_request) ----------------------------------------------------------


def test_slow_start_config_is_checked() -> None:
    assert SlowStart.parse({}, "x") == SlowStart(30.0, 1.0, 10.0)
    assert SlowStart.parse({"window": "10s", "aggression": 2, "minWeightPercent": 5}, "x") == SlowStart(10, 2, 5)
    for bad, key in (({"window": "0s"}, "x.window"), ({"aggression": 0}, "x.aggression"),
                     ({"minWeightPercent": 101}, "x.minWeightPercent"), ({"speed": 1}, "x")):
        with pytest.raises(ConfigError) as ei:
            SlowStart.parse(bad, "x")
        assert ei.value.key_path == key


def test_slow_start_factor_follows_envoys_formula() -> None:
    ss = SlowStart(window=30.0, aggression=2.0, min_weight_percent=10.0)
    assert ss.factor(0.0) == 0.1
    assert ss.factor(7.5) == pytest.approx(0.5)  # (7.5/30) ** (1/2)
    assert ss.factor(30.0) == 1.0


def test_round_robin_ramps_a_backend_added_later_and_not_the_initial_ones() -> None:
    clock = FakeClock()
    h, rr = build("round_robin", {"slowStart": {"window": "20s"}, "panicThreshold": 0}, clock)
    first = subconns(2)
    update(rr, first)
    # Present at start: plain rotation, no ramp.
    assert type(h.picker).__name__ == "RoundRobinPicker"
    late = subconns(1, port0=6000)
    update(rr, first + late)
    clock.advance(10.0)
    h.run_due()  # the ramp timer rebuilt the picker at t = 10 s: factor 0.5
    scs = first + late
    got = counts_of([h.picker.pick("/m", None) for _ in range(5000)], scs)
    check_distribution(got, [1.0, 1.0, 0.5])
    clock.advance(10.0)
    h.run_due()
    assert type(h.picker).__name__ == "RoundRobinPicker"  # ramp over: plain rotation again


def test_a_backend_back_from_failure_ramps_again_from_min_weight() -> None:
    clock = FakeClock()
    h, rr = build("round_robin", {"slowStart": {"window": "30s", "minWeightPercent": 20}, "panicThreshold": 0},
                  clock)
    scs = subconns(3)
    update(rr, scs)
    scs[2].state = C.TRANSIENT_FAILURE
    rr.subconn_state(scs[2])
    scs[2].state = C.READY
    rr.subconn_state(scs[2])
    got = counts_of([h.picker.pick("/m", None) for _ in range(4400)], scs)
    check_distribution(got, [1.0, 1.0, 0.2])


def test_least_request_slow_start_draws_a_ramping_backend_less() -> None:
    clock = FakeClock()
    h, lr = build("least_request", {"slowStart": {"window": "10s", "minWeightPercent": 25}}, clock)
    first = subconns(1)
    update(lr, first)
    late = subconns(1, port0=6000)
    update(lr, first + late)
    # Idle backends (nothing in flight) tie, and a tie goes to the first draw,
    # which is the ramping backend with its weighted share: 0.25 / 1.25 = 20 %.
    picks = []
    for _ in range(5000):
        r = h.picker.pick("/m", None)
        picks.append(r)
        finish(r)
    got = counts_of(picks, first + late)
    check_distribution(got, [0.8, 0.2])


# -- least_request -----------------------------------------------------------------------------------


def test_least_request_config() -> None:
    b = LeastRequestBuilder()
    assert b.parse_config({}, key_path="lb").choice_count == 2
    assert b.parse_config({"choiceCount": 50}, key_path="lb").choice_count == 10  # clamped, as gRFC A48 says
    with pytest.raises(ConfigError, match="choiceCount"):
        b.parse_config({"choiceCount": 1}, key_path="lb")
    with pytest.raises(ConfigError):
        b.parse_config({"choice_count": 3}, key_path="lb")


def test_least_request_spreads_evenly_when_loads_are_equal() -> None:
    h, lr = build("least_request")
    scs = subconns(5)
    update(lr, scs)
    picks = []
    for _ in range(5000):
        r = h.picker.pick("/m", None)
        picks.append(r)
        finish(r)
    check_distribution(counts_of(picks, scs), [1] * 5)


def test_least_request_avoids_the_backend_with_most_in_flight() -> None:
    h, lr = build("least_request", {"choiceCount": 2})
    scs = subconns(4)
    update(lr, scs)
    picker = h.picker
    # Hold 50 RPCs on whatever backend comes first, then look at where new RPCs go.
    held = []
    while len(held) < 50:
        r = picker.pick("/m", None)
        assert r is not None
        if r.subconn is scs[0]:
            held.append(r)
        else:
            finish(r)
    picks = []
    for _ in range(4000):
        r = picker.pick("/m", None)
        picks.append(r)
        finish(r)
    got = counts_of(picks, scs)
    # scs[0] is picked only when both draws hit it: 1/16 of the time.
    check_distribution(got, [1 / 16, 5 / 16, 5 / 16, 5 / 16])
    for r in held:
        finish(r)


def test_least_request_counts_from_done_and_unused_picks_release() -> None:
    h, lr = build("least_request")
    scs = subconns(2)
    update(lr, scs)
    loads = lr.loads  # type: ignore[attr-defined]
    r1 = h.picker.pick("/m", None)
    r2 = h.picker.pick("/m", None)
    assert sum(ld.n for ld in loads.values()) == 2
    finish(r1, S.UNAVAILABLE)
    assert r2 is not None and r2.done is not None
    r2.done(NOT_ATTEMPTED)
    assert sum(ld.n for ld in loads.values()) == 0
    # A new picker (a backend's state changed) keeps the counts.
    r3 = h.picker.pick("/m", None)
    scs[0].state = C.TRANSIENT_FAILURE
    lr.subconn_state(scs[0])
    assert sum(ld.n for ld in loads.values()) == 1
    finish(r3)
    assert sum(ld.n for ld in loads.values()) == 0


def test_least_request_queues_while_connecting() -> None:
    h, lr = build("least_request")
    update(lr, subconns(2, C.IDLE))
    assert isinstance(h.picker, QueuePicker)


# -- peak_ewma -----------------------------------------------------------------------------------------


def test_peak_ewma_config() -> None:
    b = PeakEwmaBuilder()
    cfg = b.parse_config({}, key_path="lb")
    assert (cfg.decay, cfg.default_rtt, cfg.failure_penalty) == (10.0, 0.03, pytest.approx(0.3))
    assert b.parse_config({"defaultRtt": "0.1s"}, key_path="lb").failure_penalty == pytest.approx(1.0)
    with pytest.raises(ConfigError) as ei:
        b.parse_config({"decay": "0s"}, key_path="lb")
    assert ei.value.key_path == "lb.decay"
    with pytest.raises(ConfigError):
        b.parse_config({"decay": "ten"}, key_path="lb")


def _drive(h: FakeHelper, clock: FakeClock, scs: list[FakeSubConn], latency: dict[FakeSubConn, float],
           code: dict[FakeSubConn, grpc.StatusCode], n: int) -> list[int]:
    """n sequential RPCs, each taking latency[sc] seconds of the fake clock."""
    picks = []
    for _ in range(n):
        r = h.picker.pick("/m", None)
        assert r is not None
        clock.advance(latency[r.subconn])  # type: ignore[index]
        finish(r, code.get(r.subconn, S.OK), latency[r.subconn])  # type: ignore[call-overload]
        picks.append(r)
    return counts_of(picks, scs)


def test_peak_ewma_sends_less_to_a_slow_backend() -> None:
    clock = FakeClock()
    h, pe = build("peak_ewma", {"decay": "1s"}, clock)
    scs = subconns(3)
    update(pe, scs)
    lat = {scs[0]: 0.001, scs[1]: 0.001, scs[2]: 0.010}
    _drive(h, clock, scs, lat, {}, 300)  # warm the estimates
    got = _drive(h, clock, scs, lat, {}, 3000)
    # With two distinct draws, the slow backend wins only a comparison it is
    # not in... so it gets (almost) nothing once its estimate is known.
    assert got[2] < 0.05 * sum(got), got
    check_distribution(got[:2], [1, 1])


def test_peak_ewma_penalises_a_backend_that_fails_fast() -> None:
    clock = FakeClock()
    h, pe = build("peak_ewma", {"decay": "10s", "failurePenalty": "1s"}, clock)
    scs = subconns(3)
    update(pe, scs)
    lat = {sc: 0.005 for sc in scs}
    lat[scs[0]] = 0.0005  # fails ten times faster than the others answer
    got = _drive(h, clock, scs, lat, {scs[0]: S.UNAVAILABLE}, 2000)
    assert got[0] < 0.05 * sum(got), got


def test_peak_ewma_estimate_is_peak_sensitive_and_decays() -> None:
    clock = FakeClock()
    _h, pe = build("peak_ewma", {"decay": "10s", "defaultRtt": "0.01s"}, clock)
    scs = subconns(2)
    update(pe, scs)
    st = pe.states[scs[0]]  # type: ignore[attr-defined]
    r = st.take()
    finish(r, S.OK, 0.5)  # slower than the estimate: taken at once (the peak)
    assert st.cost(clock.monotonic()) == pytest.approx(0.5)
    clock.advance(10.0)  # no response for one decay period: e^-1 of it is left
    assert st.cost(clock.monotonic()) == pytest.approx(0.5 / 2.718281828, rel=1e-3)
    st.take()
    assert st.cost(clock.monotonic()) == pytest.approx(2 * 0.5 / 2.718281828, rel=1e-3)  # x (in flight + 1)


# -- circuit_breaker -------------------------------------------------------------------------------------


def test_circuit_breaker_config() -> None:
    b = CircuitBreakerBuilder()
    cfg = b.parse_config({}, key_path="lb")
    assert (cfg.max_requests, cfg.max_per_backend, cfg.child) == (1024, None, "round_robin")
    for bad in ({"maxRequests": 0}, {"maxRequestsPerBackend": "5"}, {"childPolicy": [{"circuit_breaker": {}}]},
                {"max": 1}):
        with pytest.raises(ConfigError):
            b.parse_config(bad, key_path="lb")


def test_circuit_breaker_caps_the_channel_and_drops_with_the_limit() -> None:
    h, cb = build("circuit_breaker", {"maxRequests": 3})
    update(cb, subconns(2))
    held = [h.picker.pick("/m", None) for _ in range(3)]
    with pytest.raises(Drop) as ei:
        h.picker.pick("/m", None)
    assert ei.value.code is S.UNAVAILABLE
    assert "circuit breaker" in ei.value.details and "maxRequests limit is 3" in ei.value.details
    finish(held[0])
    assert h.picker.pick("/m", None) is not None


def test_circuit_breaker_skips_full_backends_and_releases_the_childs_unused_picks() -> None:
    h, cb = build("circuit_breaker", {"maxRequestsPerBackend": 2, "childPolicy": [{"least_request": {}}]})
    scs = subconns(3)
    update(cb, scs)
    held = [h.picker.pick("/m", None) for _ in range(6)]
    assert collections.Counter(r.subconn for r in held if r is not None) == {sc: 2 for sc in scs}
    with pytest.raises(Drop, match="maxRequestsPerBackend"):
        h.picker.pick("/m", None)
    # The child (least_request) was asked again and again: every pick it gave
    # and the breaker did not take was released, so once the RPCs end its
    # counts are back to zero (a leaked pick would stay counted).
    child_loads = cb._child.loads  # type: ignore[attr-defined]
    assert all(ld.n <= 2 for ld in child_loads.values())
    finish(held[4])
    r = h.picker.pick("/m", None)
    assert r is not None and r.subconn is held[4].subconn  # type: ignore[union-attr]
    for done in [*held[:4], held[5], r]:
        finish(done)
    assert [ld.n for ld in child_loads.values()] == [0, 0, 0]
    assert cb.limits.total == 0  # type: ignore[attr-defined]


def test_circuit_breaker_limits_hold_under_simultaneous_picks() -> None:
    h, cb = build("circuit_breaker", {"maxRequests": 40, "maxRequestsPerBackend": 15})
    scs = subconns(3)
    update(cb, scs)
    picker = h.picker
    in_flight = collections.Counter[object]()
    peak = collections.Counter[object]()
    total = [0, 0]
    lock = threading.Lock()
    go = threading.Barrier(8)
    holding = threading.Barrier(8)
    held_at_once = []

    def take() -> PickResult | None:
        try:
            r = picker.pick("/m", None)
        except Drop:
            return None
        if r is not None:
            with lock:
                in_flight[r.subconn] += 1
                total[0] += 1
                peak[r.subconn] = max(peak[r.subconn], in_flight[r.subconn])
                total[1] = max(total[1], total[0])
        return r

    def run() -> None:
        go.wait()
        # Everyone grabs 6 at once (48 wanted, 40 allowed) and holds them.
        mine = [r for r in (take() for _ in range(6)) if r is not None]
        if holding.wait() == 0:
            held_at_once.append(total[0])
        holding.wait()
        for i in range(3000):
            r = take()
            if r is not None:
                mine.append(r)
            if len(mine) > 6 or (i % 7 == 0 and mine):
                done = mine.pop(0)
                with lock:
                    in_flight[done.subconn] -= 1
                    total[0] -= 1
                finish(done)
        for done in mine:
            with lock:
                in_flight[done.subconn] -= 1
                total[0] -= 1
            finish(done)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert held_at_once == [40]  # the limit was reached, and held
    assert total[1] <= 40 and max(peak.values()) <= 15
    lim = cb.limits  # type: ignore[attr-defined]
    assert lim.total == 0 and lim.full == 0 and all(s.n == 0 for s in lim.slots.values())


def test_circuit_breaker_drop_is_not_an_outlier_failure_whichever_is_parent() -> None:
    od_over_cb = {"outlier_detection": {"consecutiveErrors": 1, "childPolicy": [
        {"circuit_breaker": {"maxRequests": 1}}]}}
    cb_over_od = {"circuit_breaker": {"maxRequests": 1, "childPolicy": [
        {"outlier_detection": {"consecutiveErrors": 1}}]}}
    for cfg in (od_over_cb, cb_over_od):
        (name, inner), = cfg.items()
        h, top = build(name, inner)
        scs = subconns(2)
        update(top, scs)
        held = h.picker.pick("/m", None)
        for _ in range(5):
            with pytest.raises(Drop):
                h.picker.pick("/m", None)
        finish(held)
        h.run_due()
        assert h.ejections == []


def test_pyproject_registers_every_policy_under_its_name() -> None:
    # The entry points resolve only once the distribution is (re)installed;
    # this checks what an install will register.
    import tomllib
    from importlib.metadata import EntryPoint
    from pathlib import Path

    from discovery.balancer import BalancerBuilder

    eps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["entry-points"]["discovery.balancers"]
    assert {"least_request", "peak_ewma", "weighted_round_robin", "circuit_breaker"} <= set(eps)
    for name, value in eps.items():
        builder = EntryPoint(name, value, "discovery.balancers").load()()
        assert isinstance(builder, BalancerBuilder) and builder.name == name
