"""Pure logic of the consul resolver: index rules, the token bucket, read timeouts, answers to address sets."""

from __future__ import annotations

import re
from typing import Any

import consul.base
import pytest
from discovery_consul import ConsulConfig, ConsulResolver, ConsulTarget, TokenBucket, entries_to_state, next_index
from discovery_consul._http import READ_SLACK, REQUEST_TIMEOUT, read_timeout
from discovery_consul._resolver import _go_duration

from discovery.errors import ResolverError
from discovery.testing import FakeClock, RecordingListener

TARGET = ConsulTarget(host="127.0.0.1", port=8500, service="orders")
PASSING = ConsulConfig()


# -- index rules -------------------------------------------------------------------------------


@pytest.mark.parametrize(("previous", "returned", "expected"), [
    (0, 42, 42),    # first answer
    (42, 42, 42),   # wait ran out, nothing changed
    (42, 50, 50),   # a change
    (50, 42, 0),    # went backwards: start over with a query that answers at once
    (0, 0, 1),      # 0 would not block: use 1
    (5, 0, 0),      # backwards to 0: reset, then the next answer is clamped
])
def test_next_index(previous: int, returned: int, expected: int) -> None:
    assert next_index(previous, returned) == expected


# -- token bucket --------------------------------------------------------------------------------


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.delay() == pytest.approx(0.5)
    assert bucket.delay() == pytest.approx(0.5), "asking again takes nothing"
    clock.advance(0.5)
    assert bucket.delay() == 0.0
    assert bucket.delay() == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.delay() == pytest.approx(0.25)


def test_token_bucket_refills_up_to_the_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    clock.advance(3600)
    assert [bucket.delay() for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_token_bucket_bounds_the_rate_over_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=5, clock=clock)
    queries = 0
    for _ in range(1000):  # a loop that asks every 10 ms for 10 s
        if bucket.delay() == 0.0:
            queries += 1
        clock.advance(0.01)
    # The burst, then one a second (give or take the last one: 0.01 s steps add up inexactly).
    assert 5 + 9 <= queries <= 5 + 10, queries


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0), (1, 1.5)])
def test_token_bucket_rejects_nonsense(rate: float, burst: Any) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, FakeClock())


# -- timeouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("wait", "seconds"), [("300s", 300.0), ("10m", 600.0), ("1s", 1.0), ("250ms", 0.25)])
def test_read_timeout_of_a_blocking_query_exceeds_wait_plus_jitter(wait: str, seconds: float) -> None:
    timeout = read_timeout(f"http://127.0.0.1:8500/v1/health/service/orders?index=7&wait={wait}&passing=1")
    assert timeout > seconds * 17 / 16
    assert timeout == pytest.approx(seconds * 17 / 16 + READ_SLACK)


def test_read_timeout_without_index_or_wait() -> None:
    assert read_timeout("http://127.0.0.1:8500/v1/health/service/orders?passing=1") == REQUEST_TIMEOUT
    # index without wait: the agent's default of 5 minutes
    assert read_timeout("http://h/v1/health/service/orders?index=7") == pytest.approx(300 * 17 / 16 + READ_SLACK)


def test_go_duration_formatting() -> None:
    assert _go_duration(300.0) == "300s"
    assert _go_duration(0.25) == "250ms"
    assert _go_duration(1.5) == "1500ms"


# -- answers to address sets ------------------------------------------------------------------------


def entry(sid: str, port: int, *, address: str = "", node_address: str = "127.0.0.1", node: str = "n1",
          statuses: tuple[str, ...] = ("passing",), tags: list[str] | None = None,
          meta: dict[str, str] | None = None, weights: dict[str, int] | None = None,
          node_meta: dict[str, str] | None = None, dc: str = "dc1", **service: Any) -> dict[str, Any]:
    return {
        "Node": {"Node": node, "Address": node_address, "Datacenter": dc, "Meta": node_meta or {}},
        "Service": {"ID": sid, "Service": "orders", "Address": address, "Port": port, "Tags": tags or [],
                    "Meta": meta or {}, "Weights": weights or {"Passing": 1, "Warning": 1}, **service},
        "Checks": [{"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""}]
        + [{"CheckID": f"c{i}", "Status": s, "ServiceID": sid} for i, s in enumerate(statuses)],
    }


def test_service_address_or_node_address() -> None:
    state = entries_to_state([entry("a", 5001, address="127.0.0.5"), entry("b", 5002, node_address="127.0.0.6")],
                             TARGET, PASSING)
    assert [a.addr for a in state.addresses] == ["127.0.0.5:5001", "127.0.0.6:5002"]
    assert state.note == ""


def test_ipv6_addresses_bracketed() -> None:
    state = entries_to_state([entry("a", 5001, address="::1"), entry("b", 5002, address="[::1]"),
                              entry("c", 5003, node_address="fe80::1")], TARGET, PASSING)
    assert [a.addr for a in state.addresses] == ["[::1]:5001", "[::1]:5002", "[fe80::1]:5003"]
    assert state.addresses[1].host == "::1"


def test_weights_attributes_and_zone() -> None:
    state = entries_to_state([
        entry("a", 5001, tags=["v2", "eu"], meta={"version": "2"}, weights={"Passing": 10, "Warning": 1},
              node="node-a", node_meta={"rack": "r1"}),
        entry("b", 5002, meta={"zone": "eu-west-1b"}),
        entry("c", 5003, node_meta={"zone": "eu-west-1c"}),
        entry("d", 5004, meta={"zone": "meta-zone"}, Locality={"Region": "eu-west-1", "Zone": "eu-west-1a"}),
    ], TARGET, PASSING)
    a, b, c, d = state.addresses
    assert a.weight == 10
    assert dict(a.attributes) == {"tags": ("v2", "eu"), "meta": {"version": "2"}, "node": "node-a",
                                  "node_meta": {"rack": "r1"}, "datacenter": "dc1", "service_id": "a"}
    assert [x.zone for x in (a, b, c, d)] == ["", "eu-west-1b", "eu-west-1c", "eu-west-1a"]
    hash(state)


def test_passing_only_by_default() -> None:
    state = entries_to_state([entry("a", 5001), entry("b", 5002, statuses=("warning",)),
                              entry("c", 5003, statuses=("passing", "critical"))], TARGET, PASSING)
    assert [a.port for a in state.addresses] == [5001]


def test_fallback_to_warning_only_when_none_pass() -> None:
    config = ConsulConfig(fallback_to_warning=True)
    mixed = [entry("a", 5001, statuses=("warning",), weights={"Passing": 5, "Warning": 2}),
             entry("b", 5002, statuses=("critical",))]
    state = entries_to_state(mixed, TARGET, config)
    assert [(a.port, a.weight) for a in state.addresses] == [(5001, 2)], "a warning instance weighs Weights.Warning"
    assert "no passing instance" in state.note and "warnings" in state.note
    state = entries_to_state([*mixed, entry("c", 5003)], TARGET, config)
    assert [a.port for a in state.addresses] == [5003]
    assert entries_to_state(mixed[1:], TARGET, config).addresses == ()


def test_passing_false_keeps_every_instance() -> None:
    state = entries_to_state([entry("a", 5001), entry("b", 5002, statuses=("critical",))], TARGET,
                             ConsulConfig(passing=False))
    assert [a.port for a in state.addresses] == [5001, 5002]


def test_duplicates_are_dropped_first_wins() -> None:
    state = entries_to_state([entry("a", 5001, address="127.0.0.5", node="n1"),
                              entry("b", 5001, address="127.0.0.5", node="n2")], TARGET, PASSING)
    assert len(state.addresses) == 1 and state.addresses[0].attributes["service_id"] == "a"


def test_order_is_the_agents() -> None:
    entries = [entry(s, p) for s, p in [("z", 5003), ("a", 5001), ("m", 5002)]]
    assert [a.port for a in entries_to_state(entries, TARGET, PASSING).addresses] == [5003, 5001, 5002]


def test_identical_answers_make_equal_states() -> None:
    one = entries_to_state([entry("a", 5001, tags=["x"])], TARGET, PASSING)
    two = entries_to_state([entry("a", 5001, tags=["x"])], TARGET, PASSING)
    assert one == two and hash(one) == hash(two)
    assert one != entries_to_state([entry("a", 5001, tags=["y"])], TARGET, PASSING), "a tag change is a change"


def test_empty_sets_say_why() -> None:
    t = ConsulTarget(host="127.0.0.1", port=8500, service="orders", tags=("v2",), dc="dc2")
    state = entries_to_state([], t, PASSING)
    assert state.addresses == ()
    assert "no passing instance of service 'orders' with tags v2 in datacenter dc2" in state.note
    assert "127.0.0.1:8500" in state.note
    state = entries_to_state([entry("a", 0)], t, PASSING)
    assert "1 registered without a port" in state.note
    state = entries_to_state([], t, ConsulConfig(token="x", token_source="CONSUL_HTTP_TOKEN"), filtered_by_acl=True)
    assert "filtered results by ACL" in state.note and "CONSUL_HTTP_TOKEN" in state.note


@pytest.mark.parametrize("answer", [
    {"not": "a list"},
    [1],
    [{"Node": {}, "Checks": []}],
    [entry("a", 5001) | {"Checks": "passing"}],
    [entry("a", "5001")],  # type: ignore[arg-type]
    [entry("a", 5001, address="", node_address="")],
    [entry("a", 5001, weights={"Passing": -1, "Warning": 1})],
    [entry("a", 5001, tags="v2")],  # type: ignore[arg-type]
    [entry("a", 5001, meta={"k": 1})],  # type: ignore[dict-item]
])
def test_malformed_answers_raise(answer: Any) -> None:
    with pytest.raises(ValueError):
        entries_to_state(answer, TARGET, PASSING)


# -- one raw answer ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "headers", "body", "expected"), [
    (200, {"X-Consul-Index": "5"}, "not json", "invalid JSON"),
    (200, {"X-Consul-Index": "-1"}, "[]", "without a valid X-Consul-Index"),
    (200, {"X-Consul-Index": "five"}, "[]", "without a valid X-Consul-Index"),
    (403, {}, "Permission denied", "got no ACL token for service 'orders' (403 Permission denied); "
                                   "a token with service:read on it is needed"),
    (502, {}, "bad gateway", "answered 502"),
])
def test_raw_answers_that_are_errors(code: int, headers: dict[str, str], body: str, expected: str) -> None:
    r = ConsulResolver(TARGET, PASSING, RecordingListener())  # never started: no thread, no I/O
    with pytest.raises(ResolverError, match=re.escape(expected)):
        r._answer(consul.base.Response(code, headers, body))


def test_a_raw_answer() -> None:
    r = ConsulResolver(TARGET, PASSING, RecordingListener())
    headers = {"X-Consul-Index": "12", "X-Consul-Results-Filtered-By-ACLs": "true"}
    assert r._answer(consul.base.Response(200, headers, "[]")) == (12, [], True)
