"""pick_first, round_robin and outlier_detection against fake backends (discovery.testing)."""

from __future__ import annotations

import collections
import threading

import grpc
import pytest

from discovery import get_balancer
from discovery.balancer import Balancer, ErrorPicker, PickResult, QueuePicker, aggregate_state, describe_states
from discovery.testing import FakeClock, FakeHelper, FakeSubConn, addresses, update

C = grpc.ChannelConnectivity


def subconns(n: int, state: grpc.ChannelConnectivity = C.READY) -> list[FakeSubConn]:
    return [FakeSubConn(a, state=state) for a in addresses(*(f"127.0.0.1:{5000 + i}" for i in range(n)))]


def build(name: str, config: dict[str, object] | None = None) -> tuple[FakeHelper, Balancer]:
    h = FakeHelper(FakeClock())
    b = get_balancer(name)
    return h, b.build(h, b.parse_config(config or {}, key_path="x"))


def sc_of(r: PickResult | None) -> object:
    assert r is not None
    return r.subconn


def test_round_robin_spreads_evenly_over_ready_backends_only() -> None:
    h, rr = build("round_robin")
    scs = subconns(4)
    scs[3].state = C.TRANSIENT_FAILURE
    update(rr, scs)
    state, picker = h.last
    assert state is C.READY
    counts = collections.Counter(sc_of(picker.pick("/m", None)).address.port for _ in range(300))  # type: ignore[union-attr]
    assert counts == {5000: 100, 5001: 100, 5002: 100}


def test_round_robin_excludes_unhealthy() -> None:
    h, rr = build("round_robin", {"panicThreshold": 0})
    scs = subconns(3)
    scs[0].healthy = False
    scs[1].healthy = False  # how a parent policy's ejection looks to its child
    update(rr, scs)
    picker = h.last[1]
    assert {sc_of(picker.pick("/m", None)) for _ in range(10)} == {scs[2]}


def test_round_robin_connects_idle_and_queues_while_connecting() -> None:
    h, rr = build("round_robin")
    scs = subconns(3, C.IDLE)
    update(rr, scs)
    assert [s.connects for s in scs] == [1, 1, 1]
    state, picker = h.last
    assert state is C.CONNECTING and isinstance(picker, QueuePicker) and picker.queue


def test_round_robin_all_failed_is_transient_failure_with_reason() -> None:
    h, rr = build("round_robin")
    update(rr, subconns(2, C.TRANSIENT_FAILURE))
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and isinstance(picker, ErrorPicker) and not picker.queue
    assert "0 of 2 backends ready (2 TRANSIENT_FAILURE)" in picker.reason
    update(rr, [])
    assert h.last[1].reason == "no addresses"


def test_round_robin_keeps_picker_when_ready_set_is_unchanged() -> None:
    h, rr = build("round_robin")
    scs = subconns(2)
    update(rr, scs)
    update(rr, scs)
    assert len(h.updates) == 1


def test_round_robin_picker_is_safe_under_threads() -> None:
    h, rr = build("round_robin")
    update(rr, subconns(5))
    picker = h.last[1]
    counts: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def work() -> None:
        local = collections.Counter(sc_of(picker.pick("/m", None)).address.port for _ in range(2000))  # type: ignore[union-attr]
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts.values()) == 16000
    assert max(counts.values()) - min(counts.values()) <= 8  # each pick is one atomic step


def test_pick_first_connects_in_order_and_sticks() -> None:
    h, pf = build("pick_first")
    scs = subconns(3, C.IDLE)
    update(pf, scs)
    assert [s.connects for s in scs] == [1, 0, 0]
    assert h.last[0] is C.CONNECTING
    scs[0].state = C.TRANSIENT_FAILURE
    update(pf, scs)
    assert [s.connects for s in scs] == [1, 1, 0]
    scs[1].state = C.READY
    scs[2].state = C.READY
    update(pf, scs)
    assert sc_of(h.last[1].pick("/m", None)) is scs[1]
    scs[0].state = C.READY  # an earlier address coming back does not steal traffic
    update(pf, scs)
    assert sc_of(h.last[1].pick("/m", None)) is scs[1]
    scs[1].state = C.IDLE
    update(pf, scs)
    assert sc_of(h.last[1].pick("/m", None)) is scs[0]


def test_pick_first_all_failed() -> None:
    h, pf = build("pick_first")
    update(pf, subconns(2, C.TRANSIENT_FAILURE))
    assert h.last[0] is C.TRANSIENT_FAILURE


@pytest.mark.parametrize(
    ("states", "expected"),
    [([C.READY, C.TRANSIENT_FAILURE], C.READY), ([C.CONNECTING, C.IDLE], C.CONNECTING),
     ([C.IDLE, C.TRANSIENT_FAILURE], C.IDLE), ([C.TRANSIENT_FAILURE], C.TRANSIENT_FAILURE),
     ([], C.TRANSIENT_FAILURE)],
)
def test_aggregate_state(states: list[grpc.ChannelConnectivity], expected: grpc.ChannelConnectivity) -> None:
    assert aggregate_state(states) is expected


def test_describe_states_names_the_last_connection_error() -> None:
    scs = subconns(3)
    scs[0].state = C.IDLE
    assert describe_states(scs) == "2 of 3 backends ready (1 IDLE)"
    scs[1].state = C.TRANSIENT_FAILURE
    scs[1].last_error = "failed to connect to all addresses; last error: UNKNOWN: Connection refused"
    assert describe_states(scs) == ("1 of 3 backends ready (1 IDLE, 1 TRANSIENT_FAILURE); last connection error: "
                                    "127.0.0.1:5001: failed to connect to all addresses; last error: UNKNOWN: "
                                    "Connection refused")


def test_policies_reject_unknown_options() -> None:
    from discovery.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lb: unknown option\(s\) \['x'\] for pick_first"):
        get_balancer("pick_first").parse_config({"x": 1}, key_path="lb")
    with pytest.raises(ConfigError, match="lb.shuffleAddressList"):
        get_balancer("pick_first").parse_config({"shuffleAddressList": "yes"}, key_path="lb")
    with pytest.raises(ConfigError, match=r"lb: unknown option\(s\) \['x'\] for round_robin"):
        get_balancer("round_robin").parse_config({"x": 1}, key_path="lb")
    with pytest.raises(ConfigError, match="lb.panicMode"):
        get_balancer("round_robin").parse_config({"panicMode": "scream"}, key_path="lb")
    with pytest.raises(ConfigError, match="lb.panicThreshold"):
        get_balancer("round_robin").parse_config({"panicThreshold": 150}, key_path="lb")


def test_panic_spread_uses_ejected_backends_when_too_few_are_usable() -> None:
    h, rr = build("round_robin")  # Envoy's default: 50 %, spread
    scs = subconns(4)
    for s in scs[:3]:
        s.healthy = False  # READY but kept out (ejected by a parent)
    update(rr, scs)
    state, picker = h.last
    assert state is C.READY
    assert {sc_of(picker.pick("/m", None)) for _ in range(8)} == set(scs)
    scs[0].healthy = scs[1].healthy = True  # 3 of 4 usable: out of panic
    rr.subconn_state(scs[0])
    rr.subconn_state(scs[1])
    assert {sc_of(h.last[1].pick("/m", None)) for _ in range(8)} == {scs[0], scs[1], scs[3]}


def test_panic_fail_mode_fails_fast_and_says_why() -> None:
    h, rr = build("round_robin", {"panicThreshold": 60, "panicMode": "fail"})
    scs = subconns(5)
    scs[0].state = scs[1].state = scs[2].state = C.TRANSIENT_FAILURE
    update(rr, scs)
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and not picker.queue
    assert picker.pick("/m", None) is None
    assert picker.reason == "panic: 2 of 5 backends usable, below the 60% threshold"


def test_with_nothing_connected_panic_is_not_mentioned_only_the_states() -> None:
    h, rr = build("round_robin")
    update(rr, subconns(2, C.TRANSIENT_FAILURE))
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and "panic" not in picker.reason
    assert "0 of 2 backends ready" in picker.reason
