"""pick_first and round_robin against fake backends."""

from __future__ import annotations

import collections
import threading

import grpc
import pytest

from discovery import get_balancer
from discovery.balancer import ErrorPicker, Picker, QueuePicker, aggregate_state, describe_states
from discovery.testing import FakeSubConn, addresses

C = grpc.ChannelConnectivity


class Helper:
    def __init__(self) -> None:
        self.updates: list[tuple[grpc.ChannelConnectivity, Picker]] = []

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        self.updates.append((state, picker))

    @property
    def last(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        return self.updates[-1]


def subconns(n: int, state: grpc.ChannelConnectivity = C.READY) -> list[FakeSubConn]:
    return [FakeSubConn(a, state=state) for a in addresses(*(f"127.0.0.1:{5000 + i}" for i in range(n)))]


def build(name: str, config: dict[str, object] | None = None) -> tuple[Helper, object]:
    h = Helper()
    b = get_balancer(name)
    return h, b.build(h, b.parse_config(config or {}, key_path="x"))


def test_round_robin_spreads_evenly_over_ready_backends_only() -> None:
    h, rr = build("round_robin")
    scs = subconns(4)
    scs[3].state = C.TRANSIENT_FAILURE
    rr.update(scs)  # type: ignore[attr-defined]
    state, picker = h.last
    assert state is C.READY
    counts = collections.Counter(picker.pick("/m", None).address.port for _ in range(300))  # type: ignore[union-attr]
    assert counts == {5000: 100, 5001: 100, 5002: 100}


def test_round_robin_excludes_unhealthy_and_ejected() -> None:
    h, rr = build("round_robin", {"panicThreshold": 0})
    scs = subconns(3)
    scs[0].healthy = False
    scs[1].ejected = True
    rr.update(scs)  # type: ignore[attr-defined]
    picker = h.last[1]
    assert {picker.pick("/m", None) for _ in range(10)} == {scs[2]}


def test_round_robin_connects_idle_and_queues_while_connecting() -> None:
    h, rr = build("round_robin")
    scs = subconns(3, C.IDLE)
    rr.update(scs)  # type: ignore[attr-defined]
    assert [s.connects for s in scs] == [1, 1, 1]
    state, picker = h.last
    assert state is C.CONNECTING and isinstance(picker, QueuePicker) and picker.queue


def test_round_robin_all_failed_is_transient_failure_with_reason() -> None:
    h, rr = build("round_robin")
    rr.update(subconns(2, C.TRANSIENT_FAILURE))  # type: ignore[attr-defined]
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and isinstance(picker, ErrorPicker) and not picker.queue
    assert "0 of 2 backends ready (2 TRANSIENT_FAILURE)" in picker.reason
    rr.update([])  # type: ignore[attr-defined]
    assert h.last[1].reason == "no addresses"


def test_round_robin_keeps_picker_when_ready_set_is_unchanged() -> None:
    h, rr = build("round_robin")
    scs = subconns(2)
    rr.update(scs)  # type: ignore[attr-defined]
    rr.update(scs)  # type: ignore[attr-defined]
    assert len(h.updates) == 1


def test_round_robin_picker_is_safe_under_threads() -> None:
    h, rr = build("round_robin")
    rr.update(subconns(5))  # type: ignore[attr-defined]
    picker = h.last[1]
    counts: collections.Counter[int] = collections.Counter()
    lock = threading.Lock()

    def work() -> None:
        local = collections.Counter(picker.pick("/m", None).address.port for _ in range(2000))  # type: ignore[union-attr]
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
    pf.update(scs)  # type: ignore[attr-defined]
    assert [s.connects for s in scs] == [1, 0, 0]
    assert h.last[0] is C.CONNECTING
    scs[0].state = C.TRANSIENT_FAILURE
    pf.update(scs)  # type: ignore[attr-defined]
    assert [s.connects for s in scs] == [1, 1, 0]
    scs[1].state = C.READY
    scs[2].state = C.READY
    pf.update(scs)  # type: ignore[attr-defined]
    assert h.last[1].pick("/m", None) is scs[1]
    scs[0].state = C.READY  # an earlier address coming back does not steal traffic
    pf.update(scs)  # type: ignore[attr-defined]
    assert h.last[1].pick("/m", None) is scs[1]
    scs[1].state = C.IDLE
    pf.update(scs)  # type: ignore[attr-defined]
    assert h.last[1].pick("/m", None) is scs[0]


def test_pick_first_all_failed() -> None:
    h, pf = build("pick_first")
    pf.update(subconns(2, C.TRANSIENT_FAILURE))  # type: ignore[attr-defined]
    assert h.last[0] is C.TRANSIENT_FAILURE


@pytest.mark.parametrize(
    ("states", "expected"),
    [([C.READY, C.TRANSIENT_FAILURE], C.READY), ([C.CONNECTING, C.IDLE], C.CONNECTING),
     ([C.IDLE, C.TRANSIENT_FAILURE], C.IDLE), ([C.TRANSIENT_FAILURE], C.TRANSIENT_FAILURE),
     ([], C.TRANSIENT_FAILURE)],
)
def test_aggregate_state(states: list[grpc.ChannelConnectivity], expected: grpc.ChannelConnectivity) -> None:
    assert aggregate_state(states) is expected


def test_describe_states() -> None:
    scs = subconns(3)
    scs[0].state = C.IDLE
    assert describe_states(scs) == "2 of 3 backends ready (1 IDLE)"


def test_policies_reject_unknown_options() -> None:
    from discovery.errors import ConfigError

    with pytest.raises(ConfigError, match="pick_first.*takes no options"):
        get_balancer("pick_first").parse_config({"x": 1}, key_path="lb")
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
        s.ejected = True
    rr.update(scs)  # type: ignore[attr-defined]
    state, picker = h.last
    assert state is C.READY
    assert {picker.pick("/m", None) for _ in range(8)} == set(scs)
    scs[0].ejected = scs[1].ejected = False  # 3 of 4 usable: out of panic
    rr.update(scs)  # type: ignore[attr-defined]
    assert {h.last[1].pick("/m", None) for _ in range(8)} == {scs[0], scs[1], scs[3]}


def test_panic_fail_mode_fails_fast_and_says_why() -> None:
    h, rr = build("round_robin", {"panicThreshold": 60, "panicMode": "fail"})
    scs = subconns(5)
    scs[0].state = scs[1].state = scs[2].state = C.TRANSIENT_FAILURE
    rr.update(scs)  # type: ignore[attr-defined]
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and not picker.queue
    assert picker.pick("/m", None) is None
    assert picker.reason == "panic: 2 of 5 backends usable, below the 60% threshold"


def test_panic_spread_with_nothing_connected_fails_fast_with_the_states() -> None:
    h, rr = build("round_robin")
    rr.update(subconns(2, C.TRANSIENT_FAILURE))  # type: ignore[attr-defined]
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and "panic" in picker.reason and "0 of 2 backends ready" in picker.reason
