"""The in-process API server (discovery_kubernetes.testing), driven through the official kubernetes client."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from discovery_kubernetes.testing import (
    FieldSelector,
    KubeApiServer,
    LabelSelector,
    SelectorError,
    endpoint,
    endpoint_port,
    endpoint_slice,
)
from k8splugin_support import TOKEN
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from discovery.testing import wait_for

SELECTOR = "kubernetes.io/service-name=orders"


def slices(kube: client.ApiClient) -> client.DiscoveryV1Api:
    return client.DiscoveryV1Api(kube)


def raw_list(kube: client.ApiClient, namespace: str = "default", **kwargs: Any) -> dict[str, Any]:
    resp = slices(kube).list_namespaced_endpoint_slice(namespace, _preload_content=False, **kwargs)
    try:
        return dict(json.loads(resp.data))
    finally:
        resp.release_conn()


def raw_watch(kube: client.ApiClient, namespace: str = "default", **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every event of one watch request, as the JSON the server sent (no client-side retries)."""
    kwargs.setdefault("timeout_seconds", 5)
    kwargs.setdefault("_request_timeout", (5, 10))
    resp = slices(kube).list_namespaced_endpoint_slice(namespace, watch=True, _preload_content=False, **kwargs)
    try:
        for line in watch.watch.iter_resp_lines(resp):
            if line:
                yield json.loads(line)
    finally:
        resp.release_conn()


def watch_opens(kube: client.ApiClient, namespace: str) -> bool:
    """Whether a watch request is accepted (200: the stream starts); it is closed at once, not waited out.

    A refused one raises ApiException, as :func:`raw_watch` does.
    """
    resp = slices(kube).list_namespaced_endpoint_slice(namespace, watch=True, _preload_content=False,
                                                       timeout_seconds=5, _request_timeout=(5, 10))
    try:
        return resp.status == 200
    finally:
        resp.close()


def seed(api: KubeApiServer) -> None:
    api.create_slice("orders-a", "orders", [endpoint("127.0.0.1")], [endpoint_port(50051, "grpc")])
    api.create_slice("orders-b", "orders", [endpoint("127.0.0.2")], [endpoint_port(50051, "grpc")])
    api.create_slice("billing-a", "billing", [endpoint("127.0.0.9")], [endpoint_port(50051, "grpc")])
    api.create_slice("orders-x", "orders", [endpoint("127.0.0.3")], [endpoint_port(50051, "grpc")], namespace="shop")


# -- list ------------------------------------------------------------------------------


def test_list_selects_by_label_and_namespace_and_reports_the_current_version(
        api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    typed = slices(kube).list_namespaced_endpoint_slice("default", label_selector=SELECTOR)
    assert [s.metadata.name for s in typed.items] == ["orders-a", "orders-b"]
    assert typed.metadata.resource_version == api.resource_version
    assert typed.items[0].endpoints[0].addresses == ["127.0.0.1"]
    everywhere = client.DiscoveryV1Api(kube).list_endpoint_slice_for_all_namespaces(label_selector=SELECTOR)
    assert sorted(s.metadata.name for s in everywhere.items) == ["orders-a", "orders-b", "orders-x"]
    body = raw_list(kube, label_selector=SELECTOR)
    assert body["kind"] == "EndpointSliceList" and body["apiVersion"] == "discovery.k8s.io/v1"
    # List items carry no kind/apiVersion, as the API server's lists don't.
    assert "kind" not in body["items"][0]


def test_each_write_gets_a_new_resource_version_and_empty_lists_come_back_null(
        api: KubeApiServer, kube: client.ApiClient) -> None:
    created = api.create_slice("orders-a", "orders", [], [])
    assert created["endpoints"] is None and created["ports"] is None
    updated = api.update_slice("orders-a", endpoints=[endpoint("127.0.0.1")])
    assert int(updated["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    assert updated["metadata"]["generation"] == 2
    item = raw_list(kube)["items"][0]
    assert item["ports"] is None and item["endpoints"][0]["addresses"] == ["127.0.0.1"]
    with pytest.raises(ValueError, match="already exists"):
        api.create_slice("orders-a", "orders", None, None)
    with pytest.raises(KeyError):
        api.delete_slice("nope")


def test_exact_list_reconstructs_history_and_is_gone_after_compaction(
        api: KubeApiServer, kube: client.ApiClient) -> None:
    api.create_slice("orders-a", "orders", [endpoint("127.0.0.1")], [endpoint_port(1)])
    before = api.resource_version
    api.create_slice("orders-b", "orders", [endpoint("127.0.0.2")], [endpoint_port(1)])
    api.update_slice("orders-a", endpoints=[endpoint("127.0.0.5")])
    old = raw_list(kube, resource_version=before, resource_version_match="Exact")
    assert old["metadata"]["resourceVersion"] == before
    assert [(i["metadata"]["name"], i["endpoints"][0]["addresses"]) for i in old["items"]] == [
        ("orders-a", ["127.0.0.1"])]
    api.compact()
    with pytest.raises(ApiException) as gone:
        slices(kube).list_namespaced_endpoint_slice("default", resource_version=before,
                                                    resource_version_match="Exact")
    assert gone.value.status == 410
    assert json.loads(gone.value.body)["reason"] == "Expired"
    # NotOlderThan (the default) is served from the current state.
    assert len(raw_list(kube, resource_version=before)["items"]) == 2
    with pytest.raises(ApiException) as too_new:
        slices(kube).list_namespaced_endpoint_slice("default", resource_version="999999")
    assert too_new.value.status == 504


def test_get_one_slice(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    one = slices(kube).read_namespaced_endpoint_slice("orders-a", "default")
    assert one.metadata.name == "orders-a" and one.kind == "EndpointSlice"
    with pytest.raises(ApiException) as missing:
        slices(kube).read_namespaced_endpoint_slice("nope", "default")
    assert missing.value.status == 404


# -- watch ------------------------------------------------------------------------------


def test_watch_from_a_list_version_sees_every_later_change_in_order(
        api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    rv = raw_list(kube, label_selector=SELECTOR)["metadata"]["resourceVersion"]
    api.update_slice("orders-a", endpoints=[endpoint("127.0.0.1", ready=False)])
    api.create_slice("billing-b", "billing", [endpoint("127.0.0.8")], None)  # not selected
    api.delete_slice("orders-b")
    seen = []
    for event in raw_watch(kube, label_selector=SELECTOR, resource_version=rv):
        meta = event["object"]["metadata"]
        seen.append((event["type"], meta["name"], meta["resourceVersion"]))
        if len(seen) == 2:
            # a live change, made while the watch is open
            api.create_slice("orders-c", "orders", [endpoint("127.0.0.4")], None)
        if len(seen) == 3:
            break
    assert [(t, n) for t, n, _ in seen] == [("MODIFIED", "orders-a"), ("DELETED", "orders-b"), ("ADDED", "orders-c")]
    versions = [int(v) for _, _, v in seen]
    assert versions == sorted(versions) and int(rv) < versions[0]


def test_watch_without_version_starts_with_synthetic_adds(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    w = watch.Watch()
    names = []
    for event in w.stream(slices(kube).list_namespaced_endpoint_slice, "default", label_selector=SELECTOR,
                          timeout_seconds=5):
        assert event["type"] == "ADDED"
        names.append(event["object"].metadata.name)
        if len(names) == 2:
            w.stop()
    assert names == ["orders-a", "orders-b"]


def test_filtered_watch_sees_objects_enter_and_leave_the_selection(
        api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    rv = api.resource_version
    moved = api.get("EndpointSlice", "orders-a")
    assert moved is not None
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = "billing"
    api.update(moved)
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = "orders"
    api.update(moved)
    events = []
    for event in raw_watch(kube, label_selector=SELECTOR, resource_version=rv):
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if len(events) == 2:
            break
    assert events == [("DELETED", "orders-a"), ("ADDED", "orders-a")]


def test_watch_from_a_compacted_version_gets_an_error_event_410(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    rv = api.resource_version
    api.update_slice("orders-a", endpoints=None)
    api.compact()
    events = list(raw_watch(kube, label_selector=SELECTOR, resource_version=rv))
    assert [e["type"] for e in events] == ["ERROR"]
    assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"
    # The client's own Watch turns it into an ApiException(410) when it may not retry.
    with pytest.raises(ApiException) as gone:
        for _ in watch.Watch().stream(slices(kube).list_namespaced_endpoint_slice, "default",
                                      resource_version=rv, timeout_seconds=5):
            pass
    assert gone.value.status == 410
    # Watching from the compaction point itself is still fine.
    api.update_slice("orders-b", endpoints=None)
    assert [e["type"] for e in raw_watch(kube, label_selector=SELECTOR, resource_version=str(int(rv) + 1),
                                         timeout_seconds=1)] == ["MODIFIED"]


def test_watch_gone_as_http_status(kubeconfig: Path, request: pytest.FixtureRequest) -> None:
    api = KubeApiServer(token=TOKEN, watch_gone="status").start()
    request.addfinalizer(api.stop)
    kube = config.new_client_from_config(str(api.write_kubeconfig(kubeconfig.parent / "kc2")),
                                         persist_config=False)
    seed(api)
    rv = api.resource_version
    api.update_slice("orders-a", endpoints=None)
    api.compact()
    with pytest.raises(ApiException) as gone:
        list(raw_watch(kube, resource_version=rv))
    assert gone.value.status == 410
    kube.close()


def test_bookmarks_only_when_allowed(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    rv = api.resource_version
    seen: list[dict[str, Any]] = []

    def consume(allow: bool) -> None:
        for event in raw_watch(kube, label_selector=SELECTOR, resource_version=rv, allow_watch_bookmarks=allow,
                               timeout_seconds=3):
            seen.append(event)
            if event["type"] == "ADDED":
                break

    threads = [threading.Thread(target=consume, args=(allow,)) for allow in (True, False)]
    for t in threads:
        t.start()
    api.wait_for(lambda a: a.open_watches == 2)
    assert api.send_bookmarks() == 1
    wait_for(lambda: len(seen) == 1, message="the bookmark")
    api.create_slice("orders-c", "orders", [endpoint("127.0.0.4")], None)
    for t in threads:
        t.join(10)
    types = [e["type"] for e in seen]
    assert types == ["BOOKMARK", "ADDED", "ADDED"]
    assert seen[0]["object"]["metadata"] == {"resourceVersion": rv}
    assert seen[0]["object"]["kind"] == "EndpointSlice"


def test_periodic_bookmarks_and_the_client_tracks_their_version(tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    api = KubeApiServer(bookmark_interval=0.05).start()
    request.addfinalizer(api.stop)
    kube = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kc")), persist_config=False)
    request.addfinalizer(kube.close)
    seed(api)
    w = watch.Watch()
    for event in w.stream(slices(kube).list_namespaced_endpoint_slice, "default", resource_version="1",
                          allow_watch_bookmarks=True, timeout_seconds=5):
        if event["type"] == "BOOKMARK":
            w.stop()
    assert w.resource_version == api.resource_version


def test_send_initial_events_ends_with_an_annotated_bookmark(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    events = []
    for event in raw_watch(kube, label_selector=SELECTOR, send_initial_events=True, allow_watch_bookmarks=True,
                           resource_version_match="NotOlderThan"):
        events.append(event)
        if event["type"] == "BOOKMARK":
            break
    assert [e["type"] for e in events] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[-1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    with pytest.raises(ApiException) as invalid:
        list(raw_watch(kube, send_initial_events=True))
    assert invalid.value.status == 422


def test_timeout_seconds_ends_the_stream_cleanly(api: KubeApiServer, kube: client.ApiClient) -> None:
    events = list(raw_watch(kube, resource_version=api.resource_version, timeout_seconds=1))
    assert events == []
    assert api.watches_started == 1


def test_close_and_expire_watches_on_command(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    got: list[list[dict[str, Any]]] = []

    def consume() -> None:
        got.append(list(raw_watch(kube, resource_version=api.resource_version, timeout_seconds=30)))

    t = threading.Thread(target=consume)
    t.start()
    api.wait_for(lambda a: a.open_watches == 1)
    assert api.close_watches() == 1
    t.join(10)
    assert got == [[]]
    t = threading.Thread(target=consume)
    t.start()
    api.wait_for(lambda a: a.open_watches == 1)
    assert api.expire_watches() == 1
    t.join(10)
    assert [e["type"] for e in got[1]] == ["ERROR"] and got[1][0]["object"]["code"] == 410


def test_broken_watch_is_a_protocol_error(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            list(raw_watch(kube, resource_version=api.resource_version, timeout_seconds=30))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    api.wait_for(lambda a: a.open_watches == 1)
    assert api.break_watches() == 1
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], urllib3.exceptions.ProtocolError)


def test_hung_watch_stays_silent_until_the_client_gives_up(api: KubeApiServer, kube: client.ApiClient) -> None:
    seed(api)
    errors: list[BaseException] = []
    events: list[dict[str, Any]] = []

    def consume() -> None:
        try:
            for event in raw_watch(kube, resource_version=api.resource_version, timeout_seconds=30,
                                   allow_watch_bookmarks=True, _request_timeout=(5, 0.5)):
                events.append(event)
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    api.wait_for(lambda a: a.open_watches == 1)
    assert api.hang_watches() == 1
    assert api.open_watches == 0
    api.create_slice("orders-c", "orders", [endpoint("127.0.0.4")], None)  # never delivered
    assert api.send_bookmarks() == 0
    t.join(10)
    assert events == []
    assert len(errors) == 1
    assert isinstance(errors[0], urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ProtocolError)


def test_hang_requests_and_stop_start_on_the_same_port(api: KubeApiServer) -> None:
    seed(api)
    cfg = client.Configuration()
    cfg.retries = False  # urllib3 would otherwise retry each failure three times
    one_shot = client.DiscoveryV1Api(config.new_client_from_config_dict(api.kubeconfig(), persist_config=False,
                                                                        client_configuration=cfg))
    api.hang_requests()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        one_shot.list_namespaced_endpoint_slice("default", _request_timeout=(5, 0.3))
    api.hang_requests(False)
    port = api.port
    api.stop()
    with pytest.raises(urllib3.exceptions.NewConnectionError):
        one_shot.list_namespaced_endpoint_slice("default")
    api.start()
    assert api.port == port
    assert len(one_shot.list_namespaced_endpoint_slice("default", label_selector=SELECTOR).items) == 2
    one_shot.api_client.close()


def test_stop_cuts_open_watches(api: KubeApiServer, kube: client.ApiClient) -> None:
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            list(raw_watch(kube, resource_version=api.resource_version, timeout_seconds=30))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    api.wait_for(lambda a: a.open_watches == 1)
    api.stop()
    t.join(10)
    assert not t.is_alive() and len(errors) == 1


def test_a_watch_whose_client_left_ends_on_the_server(api: KubeApiServer, kube: client.ApiClient) -> None:
    resp = slices(kube).list_namespaced_endpoint_slice("default", watch=True, timeout_seconds=30,
                                                       _preload_content=False)
    api.wait_for(lambda a: a.open_watches == 1)
    resp.close()  # closes the connection, as a client going away does
    api.wait_for(lambda a: a.open_watches == 0)


# -- auth ------------------------------------------------------------------------------


def test_bearer_token_is_required(api: KubeApiServer, kube: client.ApiClient, tmp_path: Path) -> None:
    wrong = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "wrong", token="nope")),
                                          persist_config=False)
    anonymous = config.new_client_from_config_dict(api.kubeconfig(token=None) | {"users": [
        {"name": "discovery-test", "user": {}}]}, persist_config=False)
    for c in (wrong, anonymous):
        with pytest.raises(ApiException) as denied:
            slices(c).list_namespaced_endpoint_slice("default")
        assert denied.value.status == 401
        assert json.loads(denied.value.body)["reason"] == "Unauthorized"
        c.close()
    assert [r.status for r in api.requests] == [401, 401]
    assert not any(r.authenticated for r in api.requests)
    api.set_tokens("rotated")
    with pytest.raises(ApiException):
        slices(kube).list_namespaced_endpoint_slice("default")
    api.set_tokens(TOKEN, "rotated")
    slices(kube).list_namespaced_endpoint_slice("default")


def test_rbac_denial_names_the_verb_resource_and_group(api: KubeApiServer, kube: client.ApiClient) -> None:
    api.deny("watch", "endpointslices", namespace="shop")
    slices(kube).list_namespaced_endpoint_slice("shop")
    assert watch_opens(kube, "default")  # the denial is for the one namespace only
    with pytest.raises(ApiException) as denied:
        list(raw_watch(kube, "shop"))
    status = json.loads(denied.value.body)
    assert denied.value.status == 403 and status["reason"] == "Forbidden"
    assert status["message"] == (
        'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:default:discovery-test" '
        'cannot watch resource "endpointslices" in API group "discovery.k8s.io" in the namespace "shop"')
    assert status["details"] == {"group": "discovery.k8s.io", "kind": "endpointslices"}
    api.deny("list", "endpoints")
    with pytest.raises(ApiException) as core:
        client.CoreV1Api(kube).list_namespaced_endpoints("default")
    assert 'cannot list resource "endpoints" in API group ""' in json.loads(core.value.body)["message"]
    api.allow_all()
    assert watch_opens(kube, "shop")


# -- legacy Endpoints ------------------------------------------------------------------------


def test_legacy_endpoints_list_and_watch(api: KubeApiServer, kube: client.ApiClient) -> None:
    api.make_endpoints("orders", ["127.0.0.1"], [endpoint_port(50051, "grpc")], not_ready=["127.0.0.2"])
    api.make_endpoints("billing", ["127.0.0.9"], [endpoint_port(50051, "grpc")])
    core = client.CoreV1Api(kube)
    resp = core.list_namespaced_endpoints("default", field_selector="metadata.name=orders", _preload_content=False)
    assert "deprecated" in resp.headers["Warning"]
    body = json.loads(resp.data)
    assert body["kind"] == "EndpointsList"
    [item] = body["items"]
    assert item["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
    assert item["subsets"][0]["notReadyAddresses"] == [{"ip": "127.0.0.2"}]


def test_legacy_endpoints_watch_sees_changes(api: KubeApiServer, kube: client.ApiClient) -> None:
    api.make_endpoints("orders", ["127.0.0.1"], [endpoint_port(50051, "grpc")])
    rv = api.resource_version
    api.make_endpoints("orders", ["127.0.0.1", "127.0.0.2"], [endpoint_port(50051, "grpc")])
    api.make_endpoints("orders")  # every pod gone: no subsets at all
    core = client.CoreV1Api(kube)
    resp = core.list_namespaced_endpoints("default", watch=True, resource_version=rv, timeout_seconds=1,
                                          field_selector="metadata.name=orders", _preload_content=False)
    events = [json.loads(line) for line in watch.watch.iter_resp_lines(resp) if line]
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED"]
    assert len(events[0]["object"]["subsets"][0]["addresses"]) == 2
    assert "subsets" not in events[1]["object"]
    assert events[1]["object"]["kind"] == "Endpoints"


# -- selectors, kubeconfig, TLS -------------------------------------------------------------


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ("app=a", {"app": "a"}, True),
    ("app==a", {"app": "b"}, False),
    ("app!=a", {}, True),
    ("app", {"app": ""}, True),
    ("!app", {"app": "a"}, False),
    ("app in (a, b),tier notin (db)", {"app": "b", "tier": "web"}, True),
    ("app in (a,b)", {}, False),
    ("tier notin (db)", {}, True),
    ("kubernetes.io/service-name=orders", {"kubernetes.io/service-name": "orders"}, True),
    ("n>3", {"n": "4"}, True),
    ("n<3", {"n": "4"}, False),
    ("", {"x": "y"}, True),
])
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector.parse(selector).matches({"metadata": {"labels": labels}}) is expected


@pytest.mark.parametrize("bad", ["app in (a", "=x", "a=b=c", "app)"])
def test_bad_label_selectors(bad: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector.parse(bad)


def test_bad_selectors_are_400(api: KubeApiServer, kube: client.ApiClient) -> None:
    with pytest.raises(ApiException) as bad:
        slices(kube).list_namespaced_endpoint_slice("default", label_selector="app in (a")
    assert bad.value.status == 400
    with pytest.raises(ApiException) as field:
        slices(kube).list_namespaced_endpoint_slice("default", field_selector="spec.x=1")
    assert field.value.status == 400
    assert FieldSelector.parse("metadata.name!=a").matches({"metadata": {"name": "b"}})


def test_kubeconfig_carries_namespace_and_token(api: KubeApiServer, tmp_path: Path) -> None:
    path = api.write_kubeconfig(tmp_path / "kc", namespace="shop", context="ctx")
    assert path.stat().st_mode & 0o777 == 0o600
    _contexts, current = config.list_kube_config_contexts(str(path))
    assert current["name"] == "ctx" and current["context"]["namespace"] == "shop"
    assert api.kubeconfig()["users"][0]["user"] == {"token": TOKEN}


def test_object_builders_match_the_api_shape() -> None:
    s = endpoint_slice("a", "orders", [endpoint("10.0.0.1", "10.0.0.2", ready=None, serving=True, terminating=True,
                                                zone="z", node="n", pod="p", pod_namespace="ns", for_zones=["z"])],
                       [endpoint_port(None, "grpc")], address_type="IPv6")
    [ep] = s["endpoints"]
    assert ep == {"addresses": ["10.0.0.1", "10.0.0.2"], "conditions": {"serving": True, "terminating": True},
                  "targetRef": {"kind": "Pod", "name": "p", "namespace": "ns"}, "nodeName": "n", "zone": "z",
                  "hints": {"forZones": [{"name": "z"}]}}
    assert s["ports"] == [{"name": "grpc", "protocol": "TCP"}]
    assert s["addressType"] == "IPv6"


def test_https_with_a_ca_from_the_kubeconfig(pki: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    api = KubeApiServer(token=TOKEN, ssl_context=ctx).start()
    request.addfinalizer(api.stop)
    assert api.url.startswith("https://127.0.0.1:")
    seed(api)
    kube = config.new_client_from_config(str(api.write_kubeconfig(tmp_path / "kc", ca_file=pki / "ca.crt")),
                                         persist_config=False)
    assert len(slices(kube).list_namespaced_endpoint_slice("default", label_selector=SELECTOR).items) == 2
    kube.close()
