"""The resolver against the in-process API server: list then watch, 410, bookmarks, faults, auth, backoff, close."""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path

import pytest
from discovery_kubernetes import KubernetesResolverBuilder
from discovery_kubernetes.testing import KubeApiServer, RequestRecord, endpoint, endpoint_port
from k8splugin_support import TOKEN, MakeResolver

from discovery.address import ResolverState
from discovery.testing import FakeClock, RecordingListener, wait_for

GRPC = [endpoint_port(50051, "grpc")]


def hostports(state: ResolverState | None) -> set[str]:
    assert state is not None
    return {a.addr for a in state.addresses}


def has(*addrs: str):  # type: ignore[no-untyped-def]
    want = set(addrs)
    return lambda s: hostports(s) == want


def watches(api: KubeApiServer) -> list[RequestRecord]:
    return [r for r in api.requests if r.verb == "watch"]


def seed(api: KubeApiServer) -> None:
    api.create_slice("orders-a", "orders", [endpoint("127.0.0.1"), endpoint("127.0.0.2")], GRPC)
    api.create_slice("orders-b", "orders", [endpoint("127.0.0.2"), endpoint("127.0.0.3")], GRPC)
    api.create_slice("billing-a", "billing", [endpoint("127.0.0.9")], GRPC)


def never_empty(listener: RecordingListener) -> None:
    assert all(s.addresses for s in listener.states), [s.note for s in listener.states if not s.addresses]


def test_lists_then_watches_from_the_list_version_with_bookmarks(api: KubeApiServer,
                                                                 make_resolver: MakeResolver) -> None:
    seed(api)
    rv = api.resource_version
    r, listener = make_resolver(watch_timeout="90s")
    assert hostports(listener.wait_for_state()) == {"127.0.0.1:50051", "127.0.0.2:50051", "127.0.0.3:50051"}
    api.wait_for(lambda a: a.open_watches == 1)
    first, second = api.requests[:2]
    assert first.verb == "list" and first.params["labelSelector"] == "kubernetes.io/service-name=orders"
    assert first.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert second.verb == "watch"
    assert second.params["resourceVersion"] == rv
    assert second.params["allowWatchBookmarks"] == "true"
    assert second.params["timeoutSeconds"] == "90"
    assert r.lists == 1 and r.namespace == "default"


def test_default_watch_timeout_is_random_in_five_to_ten_minutes(api: KubeApiServer,
                                                                make_resolver: MakeResolver) -> None:
    seed(api)
    make_resolver()
    api.wait_for(lambda a: a.open_watches == 1)
    assert 300 <= int(watches(api)[0].params["timeoutSeconds"]) <= 600


def test_events_update_the_set_and_a_deleted_slice_removes_only_its_own(api: KubeApiServer,
                                                                        make_resolver: MakeResolver) -> None:
    seed(api)
    _, listener = make_resolver()
    listener.wait_for_state(has("127.0.0.1:50051", "127.0.0.2:50051", "127.0.0.3:50051"))
    api.delete_slice("orders-a")
    listener.wait_for_state(has("127.0.0.2:50051", "127.0.0.3:50051"))
    api.update_slice("orders-b", endpoints=[endpoint("127.0.0.3"), endpoint("127.0.0.4", ready=False)])
    api.create_slice("orders-c", "orders", [endpoint("127.0.0.5")], GRPC)
    api.update_slice("billing-a", endpoints=[endpoint("127.0.0.8")])  # another Service: not selected
    listener.wait_for_state(has("127.0.0.3:50051", "127.0.0.5:50051"))
    never_empty(listener)
    assert not listener.errors


@pytest.mark.parametrize("gone", ["event", "status"])
def test_410_relists_and_publishes_the_difference_without_an_empty_set(
        gone: str, api: KubeApiServer, make_resolver: MakeResolver) -> None:
    api.watch_gone = gone
    seed(api)
    r, listener = make_resolver()
    listener.wait_for_state(has("127.0.0.1:50051", "127.0.0.2:50051", "127.0.0.3:50051"))
    api.wait_for(lambda a: a.open_watches == 1)
    # The watch goes silent, everything changes meanwhile and the history is compacted:
    # resuming from the old resourceVersion is impossible.
    api.hang_watches()
    api.delete_slice("orders-a")
    api.delete_slice("orders-b")
    api.create_slice("orders-c", "orders", [endpoint("127.0.0.7")], GRPC)
    api.compact()
    api.break_watches()
    listener.wait_for_state(has("127.0.0.7:50051"))
    assert r.lists == 2
    never_empty(listener)
    assert not listener.errors


def test_expired_watch_relists(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    r, listener = make_resolver()
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.expire_watches()
    api.wait_for(lambda a: a.lists_served == 2 and a.open_watches == 1)
    assert r.lists == 2 and len(listener.states) == 1 and not listener.errors


def test_cut_watch_resumes_from_the_last_version_without_listing(api: KubeApiServer,
                                                                 make_resolver: MakeResolver) -> None:
    seed(api)
    r, listener = make_resolver()
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.update_slice("orders-a", endpoints=[endpoint("127.0.0.4")])
    listener.wait_for_count(states=2)
    rv = api.resource_version
    api.break_watches()
    api.wait_for(lambda a: a.watches_started == 2 and a.open_watches == 1)
    assert watches(api)[-1].params["resourceVersion"] == rv
    assert r.lists == 1 and api.lists_served == 1


def test_a_bookmark_moves_the_resume_point(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    _, listener = make_resolver()
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.update_slice("billing-a", endpoints=None)  # not ours: only a bookmark tells us about its version
    rv = api.resource_version
    assert api.send_bookmarks() == 1
    api.close_watches()  # clean end, as timeoutSeconds does
    api.wait_for(lambda a: a.watches_started == 2 and a.open_watches == 1)
    assert watches(api)[-1].params["resourceVersion"] == rv
    assert api.lists_served == 1


def test_a_silent_watch_is_dropped_after_watch_timeout(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    _, listener = make_resolver(watch_timeout="400ms")
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    hung_at = time.monotonic()
    api.hang_watches()  # the connection stays open and brings nothing, as a dead NAT mapping would
    api.delete_slice("orders-b")
    listener.wait_for_state(has("127.0.0.1:50051", "127.0.0.2:50051"), timeout=10)
    # The server ends its own watches after timeoutSeconds (1 s here): only the client's
    # read timeout can have dropped the hung one this early... or at the latest within
    # watch_timeout plus the one-second floor between two watch runs.
    assert time.monotonic() - hung_at < 0.4 + 1.0 + 1.0
    assert not listener.errors


def test_401_is_explained_without_the_token(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    api.set_tokens("another-token-entirely")
    r, listener = make_resolver()
    listener.wait_for_count(errors=1)
    message = str(listener.errors[0])
    assert "401 Unauthorized" in message and "rejected the credentials" in message
    assert "kubeconfig" in message and "endpointslices" in message
    assert TOKEN not in message and TOKEN not in repr(r)
    assert not listener.states


def test_403_names_the_verbs_and_resource_needed_and_keeps_the_set(api: KubeApiServer,
                                                                   make_resolver: MakeResolver) -> None:
    seed(api)
    api.deny("watch", "endpointslices", namespace="default")
    _, listener = make_resolver()
    listener.wait_for_state()  # the list is allowed
    listener.wait_for_count(errors=1)
    message = str(listener.errors[0])
    assert "RBAC denies the watch of endpointslices" in message
    assert 'API group "discovery.k8s.io"' in message and "namespace default" in message
    assert "list and watch" in message and "403 Forbidden" in message
    assert len(listener.states) == 1


def test_403_on_the_legacy_endpoints_api(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    api.make_endpoints("orders", ["127.0.0.1"], GRPC)
    api.deny("list", "endpoints")
    _, listener = make_resolver(endpoints_api="endpoints")
    listener.wait_for_count(errors=1)
    assert 'RBAC denies the list of endpoints (API group "")' in str(listener.errors[0])


def test_legacy_endpoints_api(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    api.make_endpoints("orders", ["127.0.0.1"], GRPC, not_ready=["127.0.0.2"])
    api.make_endpoints("billing", ["127.0.0.9"], GRPC)
    _, listener = make_resolver(endpoints_api="endpoints")
    listener.wait_for_state(has("127.0.0.1:50051"))
    api.make_endpoints("orders", ["127.0.0.1", "127.0.0.2"], GRPC)
    listener.wait_for_state(has("127.0.0.1:50051", "127.0.0.2:50051"))
    api.delete("Endpoints", "orders")
    state = listener.wait_for_state(lambda s: not s.addresses)
    assert "no Endpoints object for Service default/orders" in state.note
    assert api.requests[0].params["fieldSelector"] == "metadata.name=orders"


def test_an_ambiguous_port_is_reported_until_the_service_has_one_port(api: KubeApiServer,
                                                                      make_resolver: MakeResolver) -> None:
    api.create_slice("orders-a", "orders", [endpoint("127.0.0.1")],
                     [endpoint_port(50051, "grpc"), endpoint_port(9090, "metrics")])
    _, listener = make_resolver("kubernetes:///orders")
    listener.wait_for_count(errors=1)
    assert "grpc (50051), metrics (9090)" in str(listener.errors[0])
    assert not listener.states
    api.update_slice("orders-a", ports=[endpoint_port(50051, "grpc")])
    listener.wait_for_state(has("127.0.0.1:50051"))


def test_dual_stack_and_namespaces(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    api.create_slice("orders-v4", "orders", [endpoint("127.0.0.1")], GRPC, namespace="shop")
    api.create_slice("orders-v6", "orders", [endpoint("::1")], GRPC, namespace="shop", address_type="IPv6")
    api.create_slice("orders-x", "orders", [endpoint("127.0.0.9")], GRPC)  # namespace default: not ours
    r, listener = make_resolver("k8s://shop/orders:grpc")
    listener.wait_for_state(has("127.0.0.1:50051", "[::1]:50051"))
    assert r.namespace == "shop"
    assert api.requests[0].path == "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"


# -- failures, backoff and close on the injected clock ------------------------------------------------


def test_api_server_down_keeps_the_set_and_backs_off_800ms_to_30s(api: KubeApiServer,
                                                                  make_resolver: MakeResolver) -> None:
    clock = FakeClock()
    seed(api)
    r, listener = make_resolver(clock=clock)
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.stop()
    # The cut watch ends the run normally; the next run waits out the 1 s floor between runs.
    assert clock.wait_for_blocked() == [pytest.approx(1.0)]
    clock.advance(1.0)
    delays = []
    for _ in range(9):
        [delay] = clock.wait_for_blocked()
        assert delay is not None
        delays.append(delay)
        clock.advance(delay)
    expected = [0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0, 30.0]
    for got, base in zip(delays, expected, strict=True):
        assert base * 0.8 <= got <= base * 1.2, delays
    assert len(listener.errors) >= 9
    assert "cannot reach the Kubernetes API" in str(listener.errors[-1])
    assert len(listener.states) == 1  # the last good set stays: nothing empty was published
    [delay] = clock.wait_for_blocked()  # the tenth attempt failed too, and waits
    assert delay is not None
    api.start()
    clock.advance(delay)
    # After an error the same set is published again, so the channel knows the error is over.
    listener.wait_for_count(states=2)
    assert listener.states[1] == listener.states[0]
    assert api.lists_served == 2 and r.lists == 11  # one list failed after each of the nine backoffs


def test_backoff_starts_over_after_a_healthy_run(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    clock = FakeClock()
    seed(api)
    _, listener = make_resolver(clock=clock)
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.deny("watch")
    api.break_watches()
    clock.wait_for_blocked()
    clock.advance(1.0)  # the floor between runs
    grown = []
    for _ in range(3):
        [delay] = clock.wait_for_blocked()
        assert delay is not None
        grown.append(delay)
        clock.advance(delay)
    assert grown[2] >= 3.2 * 0.8
    api.allow_all()
    api.wait_for(lambda a: a.open_watches == 1)
    clock.advance(31.0)  # a healthy run, longer than healthy_after
    api.break_watches()
    api.deny("watch")
    # The run that ends here was healthy: the next failure waits the initial delay again.
    [floor_or_delay] = clock.wait_for_blocked()
    assert floor_or_delay is not None
    if floor_or_delay == pytest.approx(1.0):
        clock.advance(1.0)
        [floor_or_delay] = clock.wait_for_blocked()
    assert floor_or_delay is not None and 0.64 <= floor_or_delay <= 0.96


def test_close_interrupts_a_pending_watch_at_once(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    r, listener = make_resolver(watch_timeout="10m")
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    t0 = time.monotonic()
    r.close()
    assert r.join(5)
    assert time.monotonic() - t0 < 5.0  # the watch would stay open for its 10 minutes
    api.wait_for(lambda a: a.open_watches == 0)
    seen = len(listener.states), len(listener.errors)
    api.create_slice("orders-c", "orders", [endpoint("127.0.0.7")], GRPC)
    assert (len(listener.states), len(listener.errors)) == seen


def test_close_interrupts_a_pending_list_at_once(api: KubeApiServer, make_resolver: MakeResolver) -> None:
    seed(api)
    api.hang_requests()
    r, listener = make_resolver()
    api.wait_for(lambda a: a.requests_received == 1)
    t0 = time.monotonic()
    r.close()
    assert r.join(5)
    assert time.monotonic() - t0 < 5.0  # the hung list never answers
    assert not listener.states and not listener.errors


# -- in-cluster, tokens, logs ----------------------------------------------------------------------


def test_in_cluster_with_ca_and_a_rotating_token(pki: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    api = KubeApiServer(token="first-token-aaaa", ssl_context=ctx).start()
    request.addfinalizer(api.stop)
    api.create_slice("orders-a", "orders", [endpoint("127.0.0.1")], GRPC, namespace="shop")
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("first-token-aaaa")
    (sa / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
    (sa / "namespace").write_text("shop")
    builder = KubernetesResolverBuilder(
        environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port),
                 "HOME": str(tmp_path)},
        service_account_dir=str(sa))
    from discovery.resolver import ResolverOptions
    from discovery.target import parse_target

    listener = RecordingListener()
    r = builder.build(parse_target("kubernetes:///orders:grpc"), listener, ResolverOptions())
    request.addfinalizer(r.close)
    assert r.access.mode == "in-cluster" and r.namespace == "shop"
    listener.wait_for_state(has("127.0.0.1:50051"))
    api.wait_for(lambda a: a.open_watches == 1)
    # The kubelet swaps in a new token (atomically, by rename); the old one stops working.
    fresh = sa / "token.new"
    fresh.write_text("second-token-bbbbbb")
    os.replace(fresh, sa / "token")
    api.set_tokens("second-token-bbbbbb")
    api.break_watches()
    api.wait_for(lambda a: a.watches_started == 2 and a.open_watches == 1)
    api.create_slice("orders-b", "orders", [endpoint("127.0.0.2")], GRPC, namespace="shop")
    listener.wait_for_state(has("127.0.0.1:50051", "127.0.0.2:50051"))
    assert not listener.errors
    assert [rec.status for rec in api.requests] == [200, 200, 200]


def test_the_token_never_appears_in_logs_reprs_or_errors(api: KubeApiServer, make_resolver: MakeResolver,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed(api)
    r, listener = make_resolver(watch_timeout="300ms")
    listener.wait_for_state()
    api.wait_for(lambda a: a.open_watches == 1)
    api.hang_watches()  # a dropped silent watch (logged)
    api.wait_for(lambda a: a.watches_started >= 2)
    api.deny("watch")  # 403 (logged)
    api.break_watches()
    api.wait_for(lambda a: any(rec.status == 403 for rec in a.requests))
    api.allow_all()
    api.set_tokens("rotated-elsewhere")  # 401 (logged)
    api.break_watches()
    wait_for(lambda: any("401" in str(e) for e in listener.errors), timeout=10, message="a 401 error")
    r.close()
    assert r.join(2)
    text = "\n".join(caplog.text.splitlines() + [str(e) for e in listener.errors] + [repr(r)])
    assert "401" in text and "403" in text and "GET /apis/discovery.k8s.io" in text  # the logs did see it all
    assert TOKEN not in text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
        assert TOKEN not in str(record.args)
