"""The consul resolver against the in-process agent: blocking-query rules, errors, close(), secrets.

Real HTTP on loopback through py-consul; timing that matters (rate limit,
backoff) runs on a FakeClock, and every wait is on an event or a bounded poll.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from consulplugin_support import MakeAgent, MakeResolver
from discovery_consul.testing import ConsulTestAgent, RecordedRequest

from discovery.errors import ResolverError
from discovery.testing import FakeClock, wait_for

SECRET = "4f2c9e1a-s3cret-acl-token"


def health_queries(agent: ConsulTestAgent, service: str = "orders") -> list[RecordedRequest]:
    return [r for r in agent.requests if r.path == f"/v1/health/service/{service}"]


def params(req: RecordedRequest) -> dict[str, list[str]]:
    return urllib.parse.parse_qs(req.query, keep_blank_values=True)


def ports(state: object) -> list[int]:
    return [a.port for a in state.addresses]  # type: ignore[attr-defined]


# -- the happy path -------------------------------------------------------------------------------


def test_first_state_then_blocking_queries_with_the_token_in_the_header_only(
        agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001, address="127.0.0.5", service_id="a")
    agent.register("orders", 5002, service_id="b")  # no service address: the node's
    _, listener = make_resolver(config={"token": SECRET})
    state = listener.wait_for_state(lambda s: len(s.addresses) == 2)
    assert [a.addr for a in state.addresses] == ["127.0.0.5:5001", "127.0.0.1:5002"]
    agent.wait_for_pending("orders")
    first, second = health_queries(agent)[:2]
    assert "index" not in params(first) and params(first)["passing"] == ["1"]
    assert params(second)["index"] == [str(agent.index("orders"))] and params(second)["wait"] == ["300s"]
    for req in health_queries(agent):
        assert (req.token, req.token_source) == (SECRET, "header")
        assert SECRET not in req.query and SECRET not in req.path


def test_a_change_publishes_within_a_second(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001, service_id="a")
    _, listener = make_resolver()
    listener.wait_for_state(lambda s: len(s.addresses) == 1)
    agent.wait_for_pending("orders")
    t0 = time.monotonic()
    agent.register("orders", 5002, service_id="b")
    listener.wait_for_state(lambda s: len(s.addresses) == 2, timeout=1.0)
    assert time.monotonic() - t0 < 1.0
    agent.deregister("a")
    assert ports(listener.wait_for_state(lambda s: ports(s) == [5002], timeout=1.0)) == [5002]


def test_an_identical_answer_publishes_nothing(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001)
    _, listener = make_resolver()
    agent.wait_for_pending("orders")
    for i in range(3):
        sent = agent.queries("orders")
        agent.set_check("service:orders", "passing", output=f"still fine {i}")  # the index moves, the set does not
        agent.wait_for_queries("orders", sent + 1)
    # Each answer was handled before the next query went out.
    assert len(listener.states) == 1 and listener.errors == []
    assert params(health_queries(agent)[-1])["index"] == [str(agent.index("orders"))]


def test_health_filter_and_warning_fallback(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001, service_id="a", weights={"Passing": 10, "Warning": 3})
    agent.register("orders", 5002, service_id="b")
    _, strict = make_resolver()
    _, lenient = make_resolver(config={"fallback_to_warning": True})
    for listener in (strict, lenient):
        listener.wait_for_state(lambda s: ports(s) == [5001, 5002])
    agent.set_check("service:a", "warning")
    strict.wait_for_state(lambda s: ports(s) == [5002])
    lenient.wait_for_state(lambda s: ports(s) == [5002])
    agent.set_check("service:b", "critical")
    assert strict.wait_for_state(lambda s: not s.addresses).note.startswith("consul at")
    state = lenient.wait_for_state(lambda s: ports(s) == [5001])
    assert state.addresses[0].weight == 3 and "warnings" in state.note
    agent.set_check("service:a", "passing")
    assert lenient.wait_for_state(lambda s: ports(s) == [5001] and not s.note).addresses[0].weight == 10


def test_query_parameters_reach_the_agent(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 6001, service_id="both", tags=["v2", "eu"], node="far-1", datacenter="dc2")
    agent.register("orders", 6002, service_id="one", tags=["v2"], node="far-2", datacenter="dc2")
    agent.register("orders", 5001, service_id="local", tags=["v2", "eu"])
    _, listener = make_resolver("?tag=v2&tag=eu&dc=dc2&near=_agent&stale=true", config={"wait": "20m"})
    state = listener.wait_for_state(lambda s: bool(s.addresses))
    assert ports(state) == [6001]
    assert state.addresses[0].attributes["datacenter"] == "dc2"
    agent.wait_for_pending("orders", datacenter="dc2")
    p = params(health_queries(agent)[-1])
    assert p["tag"] == ["v2", "eu"] and p["dc"] == ["dc2"] and p["near"] == ["_agent"] and p["stale"] == [""]
    assert p["wait"] == ["600s"], "a wait above 10 minutes is clamped to 10"
    _, consistent = make_resolver("?consistent=true")
    consistent.wait_for_state(lambda s: bool(s.addresses))
    assert "consistent" in params(health_queries(agent)[-1])


def test_a_normal_long_poll_is_never_an_error(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001)
    _, listener = make_resolver(config={"wait": "1s"})
    agent.wait_for_queries("orders", 4, timeout=10)  # the answer, then three long polls that ran out
    assert listener.errors == [] and len(listener.states) == 1


def test_ipv6_agent_and_addresses(ipv6_agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    ipv6_agent.register("orders", 5001, address="::1", service_id="a")
    ipv6_agent.register("orders", 5002, service_id="b")  # Node.Address is ::1 as well
    _, listener = make_resolver(agent=ipv6_agent)
    state = listener.wait_for_state(lambda s: len(s.addresses) == 2)
    assert [a.addr for a in state.addresses] == ["[::1]:5001", "[::1]:5002"]


# -- index rules ---------------------------------------------------------------------------------------


def test_an_index_that_goes_backwards_resets_to_zero(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    for i in range(10):
        agent.register("orders", 5001, tags=[str(i)])
    _, listener = make_resolver(config={"wait": "1s"})
    agent.wait_for_pending("orders")
    high = agent.index("orders")
    sent = agent.queries("orders")
    agent.set_index(3)
    agent.wait_for_queries("orders", sent + 2, timeout=5)
    after = health_queries(agent)[sent:sent + 2]
    # The parked query ran out and answered 3 < high: the next query starts over without an index,
    # and the one after blocks on the new, lower index.
    assert params(health_queries(agent)[sent - 1])["index"] == [str(high)]
    assert "index" not in params(after[0])
    assert params(after[1])["index"] == ["3"]
    assert listener.errors == []


def test_index_zero_is_used_as_one(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001)
    agent.set_index(0)
    _, listener = make_resolver()
    listener.wait_for_state(lambda s: bool(s.addresses))
    agent.wait_for_pending("orders")  # parked, not spinning on index 0
    assert [params(r).get("index") for r in health_queries(agent)] == [None, ["1"]]


def test_agent_restart_drops_the_index_and_recovers_in_seconds(
        agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    for i in range(20):
        agent.register("orders", 5001, service_id="a", tags=[str(i)])
    _, listener = make_resolver()
    listener.wait_for_state(lambda s: bool(s.addresses))
    agent.wait_for_pending("orders")
    old_index = agent.index("orders")
    sent = agent.queries("orders")
    t0 = time.monotonic()
    agent.restart()  # the pending long poll is reset; the new index is far lower
    agent.register("orders", 5002, service_id="b")
    listener.wait_for_state(lambda s: ports(s) == [5001, 5002], timeout=5)
    assert time.monotonic() - t0 < 4.0
    assert agent.index("orders") < old_index
    # The first query after the error carries no index: recovery does not wait out the old one.
    assert "index" not in params(health_queries(agent)[sent])
    assert len(listener.errors) == 1 and "unreachable" in str(listener.errors[0])
    assert all(s.addresses for s in listener.states), "an error never published an empty set"


# -- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "body", "expected"), [
    (500, "rpc error: No cluster leader", "answered 500 for service 'orders': rpc error: No cluster leader"),
    (200, "this is not JSON", "answered without a valid X-Consul-Index"),  # nor an index header
])
def test_bad_answers_keep_the_last_set_and_are_reported(agent: ConsulTestAgent, make_resolver: MakeResolver,
                                                        status: int, body: str, expected: str) -> None:
    agent.register("orders", 5001)
    _, listener = make_resolver()
    agent.wait_for_pending("orders")
    agent.fail_next(1, status, body)
    agent.touch("orders")
    listener.wait_for_count(errors=1)
    assert expected in str(listener.errors[0])
    agent.register("orders", 5002, service_id="b")
    listener.wait_for_state(lambda s: len(s.addresses) == 2, timeout=5)
    assert all(s.addresses for s in listener.states), "an error never published an empty set"


def test_403_says_the_token_was_refused_without_showing_it(make_agent: MakeAgent,
                                                           make_resolver: MakeResolver) -> None:
    acl = make_agent(acl_default_policy="deny")
    acl.register("orders", 5001)
    _, listener = make_resolver(agent=acl, config={"token": SECRET})
    listener.wait_for_count(errors=1)
    text = str(listener.errors[0])
    assert "refused the ACL token from resolver_config token for service 'orders' (403 ACL not found)" in text
    assert SECRET not in text
    assert listener.states == []


def test_results_filtered_by_acl_are_explained(make_agent: MakeAgent, make_resolver: MakeResolver) -> None:
    acl = make_agent(acl_default_policy="deny", tokens={SECRET: ("payments",)})
    acl.register("orders", 5001)
    _, listener = make_resolver(agent=acl, config={"token": SECRET})
    state = listener.wait_for_state()
    assert state.addresses == () and "filtered results by ACL" in state.note and SECRET not in state.note


# -- close() -------------------------------------------------------------------------------------------


def test_close_interrupts_a_pending_long_poll_at_once(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001)
    resolver, listener = make_resolver()
    agent.wait_for_pending("orders")
    t0 = time.monotonic()
    resolver.close()
    # The pending long poll waits 300 s: anything near that is close() blocking or the thread not ending.
    assert time.monotonic() - t0 < 2.0, "close() blocked"
    assert resolver.join(5.0), "the watch thread did not end"
    wait_for(lambda: agent.pending("orders") == 0, 2, message="the agent saw the connection close")
    seen = (len(listener.states), len(listener.errors))
    agent.register("orders", 5002, service_id="b")
    assert (len(listener.states), len(listener.errors)) == seen


def test_close_while_the_agent_is_down(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.stop()
    resolver, listener = make_resolver()
    listener.wait_for_count(errors=1)
    resolver.close()
    assert resolver.join(2.0)


# -- timing on a fake clock ---------------------------------------------------------------------------------


@pytest.fixture
def churn(agent: ConsulTestAgent) -> Iterator[threading.Event]:
    """Wake every parked query for orders at once with a new index (and no visible change), until the test ends."""
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                agent.wait_for_pending("orders", 1, timeout=0.05)
            except TimeoutError:
                continue
            agent.touch("orders")

    t = threading.Thread(target=run, name="churn", daemon=True)
    t.start()
    yield stop
    stop.set()
    t.join(5)


def test_churn_is_rate_limited_by_a_token_bucket(agent: ConsulTestAgent, make_resolver: MakeResolver,
                                                 churn: threading.Event) -> None:
    agent.register("orders", 5001)
    clock = FakeClock()
    _, listener = make_resolver(clock=clock, rate=0.5, burst=3)
    # Three queries at once (the burst), then the loop waits on the clock for the next token.
    assert clock.wait_for_blocked() == [pytest.approx(2.0)]
    assert agent.queries("orders") == 3
    clock.advance(1.0)
    assert clock.wait_for_blocked() == [pytest.approx(1.0)]
    assert agent.queries("orders") == 3
    clock.advance(1.0)
    assert clock.wait_for_blocked() == [pytest.approx(2.0)]
    assert agent.queries("orders") == 4
    assert len(listener.states) == 1 and listener.errors == []


def test_errors_back_off_with_jitter(agent: ConsulTestAgent, make_resolver: MakeResolver) -> None:
    agent.register("orders", 5001)
    agent.stop()
    clock = FakeClock()
    _, listener = make_resolver(clock=clock)
    delays = []
    for n in range(1, 4):
        [delay] = clock.wait_for_blocked()
        assert delay is not None
        delays.append(delay)
        assert len(listener.errors) == n
        clock.advance(delay)
    # The helper's backoff: 1 s, x1.6, +/-20 % jitter.
    for delay, base in zip(delays, (1.0, 1.6, 2.56), strict=True):
        assert base * 0.8 <= delay <= base * 1.2
    [delay] = clock.wait_for_blocked()  # backing off after the fourth failure
    assert len(listener.errors) == 4
    agent.start()
    clock.advance(delay)
    listener.wait_for_state(lambda s: bool(s.addresses))
    assert all("unreachable" in str(e) and "Connection refused" in str(e) for e in listener.errors)


# -- secrets -------------------------------------------------------------------------------------------------


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_the_token_never_reaches_logs_reprs_or_errors(
        make_agent: MakeAgent, make_resolver: MakeResolver, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    acl = make_agent(acl_default_policy="deny", tokens={SECRET: ("",)})
    acl.register("orders", 5001)
    good, good_listener = make_resolver(agent=acl, config={"token": SECRET})
    good_listener.wait_for_state(lambda s: bool(s.addresses))
    _, refused = make_resolver(agent=acl, config={"token": SECRET + "-revoked"})  # a 403
    refused.wait_for_count(errors=1)
    acl.wait_for_pending("orders")
    acl.stop()  # a connection error with the token in flight
    good_listener.wait_for_count(errors=1)
    errors: list[ResolverError] = [*good_listener.errors, *refused.errors]
    assert len(errors) == 2
    for err in errors:
        for exc in _chain(err):
            assert SECRET not in str(exc) and SECRET not in repr(exc)
            for holder in (getattr(exc, "request", None), getattr(getattr(exc, "response", None), "request", None)):
                if holder is not None:
                    assert SECRET not in str(holder.headers)
    assert SECRET not in repr(good)
    assert caplog.records, "DEBUG logging captured nothing"
    assert SECRET not in caplog.text


def test_explicit_token_wins_over_consul_http_token(agent: ConsulTestAgent, make_resolver: MakeResolver,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    agent.register("orders", 5001)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "from-the-environment")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", agent.address)
    monkeypatch.delenv("CONSUL_HTTP_TOKEN_FILE", raising=False)
    monkeypatch.delenv("CONSUL_HTTP_SSL", raising=False)
    _, explicit = make_resolver(config={"token": "from-the-config"}, env=os.environ, authority="")
    explicit.wait_for_state(lambda s: bool(s.addresses))
    agent.wait_for_pending("orders")  # its next query is out too
    assert {r.token for r in health_queries(agent)} == {"from-the-config"}
    before = len(health_queries(agent))
    _, from_env = make_resolver(env=os.environ, authority="")
    from_env.wait_for_state(lambda s: bool(s.addresses))
    assert {r.token for r in health_queries(agent)[before:]} == {"from-the-environment"}
