"""The in-process Consul test agent, driven through the real py-consul client (and raw HTTP where py-consul
cannot say something): it must answer as Consul documents, or the resolver tests prove nothing."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import consul
import pytest
import requests
from consulplugin_support import MakeAgent
from discovery_consul.testing import MAX_WAIT, ConsulTestAgent, parse_go_duration
from grpc_health.v1 import health_pb2

from discovery.testing import wait_for
from discovery.testing.servers import BackendServer


def _ids(nodes: list[dict[str, Any]]) -> list[str]:
    return [n["Service"]["ID"] for n in nodes]


def _until(client: consul.Consul, service: str, predicate: Callable[[list[dict[str, Any]]], bool],
           timeout: float = 10.0, **kwargs: Any) -> list[dict[str, Any]]:
    """Follow ``service`` with blocking queries until ``predicate(nodes)`` holds (TimeoutError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    index, nodes = client.health.service(service, **kwargs)
    while not predicate(nodes):
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{service}: condition not met within {timeout}s; last answer {nodes!r}")
        index, nodes = client.health.service(service, index=index, wait="2s", **kwargs)
    return list(nodes)


def _service_checks(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in entry["Checks"] if c["ServiceID"]]


def _background(fn: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(1)
    fut = pool.submit(fn)
    pool.shutdown(wait=False)
    return fut


# -- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("5m", 300.0), ("10s", 10.0), ("1m30s", 90.0), ("250ms", 0.25), ("1.5h", 5400.0),
    ("100us", 1e-4), ("2h45m", 9900.0),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 m", "m", "1x", "5m garbage", "1.2.3s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


# -- reads -----------------------------------------------------------------------------------


def test_register_through_the_agent_api_and_read_health(agent: ConsulTestAgent, client: consul.Consul) -> None:
    assert client.agent.service.register("orders", service_id="o1", port=5001, tags=["v2"],
                                         meta={"zone": "eu-1"}, weights={"Passing": 7, "Warning": 2})
    index, nodes = client.health.service("orders")
    assert int(index) == agent.index("orders") > 0
    [entry] = nodes
    assert entry["Service"] == {**entry["Service"], "ID": "o1", "Service": "orders", "Address": "", "Port": 5001,
                                "Tags": ["v2"], "Meta": {"zone": "eu-1"}, "Weights": {"Passing": 7, "Warning": 2}}
    # No service address given: clients must fall back to the node's.
    assert entry["Node"]["Address"] == "127.0.0.1" and entry["Node"]["Node"] == agent.node
    assert entry["Node"]["Datacenter"] == "dc1"
    # The node's serfHealth check comes with every instance.
    assert [c["CheckID"] for c in entry["Checks"]] == ["serfHealth"]


def test_unknown_service_is_an_empty_list_with_an_index(client: consul.Consul) -> None:
    index, nodes = client.health.service("nothing-here")
    assert nodes == [] and int(index) >= 1


def test_new_checks_start_critical_and_passing_filters_them(agent: ConsulTestAgent, client: consul.Consul) -> None:
    client.agent.service.register("orders", service_id="o1", port=5001, check=consul.Check.ttl("60s"))
    client.agent.service.register("orders", service_id="o2", port=5002,
                                  check={"TTL": "60s", "Status": "passing"})
    _, nodes = client.health.service("orders")
    statuses = {n["Service"]["ID"]: [c["Status"] for c in _service_checks(n)] for n in nodes}
    assert statuses == {"o1": ["critical"], "o2": ["passing"]}
    _, nodes = client.health.service("orders", passing=True)
    assert _ids(nodes) == ["o2"]
    client.agent.check.ttl_warn("service:o2", notes="slow")
    _, nodes = client.health.service("orders", passing=True)
    assert nodes == [], "a warning check is not passing"
    client.agent.check.ttl_pass("service:o1")
    client.agent.check.ttl_pass("service:o2")
    _, nodes = client.health.service("orders", passing=True)
    assert _ids(nodes) == ["o1", "o2"]


def test_passing_values_as_consul_parses_them(agent: ConsulTestAgent) -> None:
    agent.register("orders", 5001, status="critical")
    url = f"{agent.url}/v1/health/service/orders"
    assert requests.get(url + "?passing", timeout=5).json() == []
    assert requests.get(url + "?passing=true", timeout=5).json() == []
    assert len(requests.get(url + "?passing=false", timeout=5).json()) == 1
    bad = requests.get(url + "?passing=maybe", timeout=5)
    assert bad.status_code == 400 and "passing" in bad.text


def test_repeated_tags_mean_all_of_them(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001, service_id="a", tags=["v2", "eu"])
    agent.register("orders", 5002, service_id="b", tags=["v2"])
    agent.register("orders", 5003, service_id="c", tags=["eu"])
    assert _ids(client.health.service("orders", tag="v2")[1]) == ["a", "b"]
    assert _ids(client.health.service("orders", tag=["v2", "eu"])[1]) == ["a"]
    assert _ids(client.health.service("orders", tag=["v3"])[1]) == []


def test_datacenters_have_their_own_catalog_and_index(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001, service_id="here")
    agent.register("orders", 6001, service_id="there", node="remote-1", node_address="127.0.0.9",
                   datacenter="dc2")
    assert _ids(client.health.service("orders")[1]) == ["here"]
    index, nodes = client.health.service("orders", dc="dc2")
    assert _ids(nodes) == ["there"] and nodes[0]["Node"]["Datacenter"] == "dc2"
    assert int(index) == agent.index("orders", datacenter="dc2")
    with pytest.raises(consul.ConsulException, match="No path to datacenter"):
        client.health.service("orders", dc="nowhere")


def test_near_sorts_by_coordinates(agent: ConsulTestAgent, client: consul.Consul) -> None:
    for i, x in enumerate([30.0, 10.0, 20.0]):
        agent.register("orders", 5000 + i, service_id=f"s{i}", node=f"n{i}", node_address=f"127.0.0.{i + 2}")
        agent.set_coordinate(f"n{i}", x)
    agent.set_coordinate(agent.node, 0.0)
    assert _ids(client.health.service("orders")[1]) == ["s0", "s1", "s2"]
    assert _ids(client.health.service("orders", near="_agent")[1]) == ["s1", "s2", "s0"]
    assert _ids(client.health.service("orders", near="n0")[1]) == ["s0", "s2", "s1"]


def test_node_meta_filter(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001, service_id="a", node="n1", node_meta={"rack": "r1"})
    agent.register("orders", 5002, service_id="b", node="n2", node_meta={"rack": "r2"})
    assert _ids(client.health.service("orders", node_meta={"rack": "r2"})[1]) == ["b"]


def test_consistency_modes(agent: ConsulTestAgent) -> None:
    agent.register("orders", 5001)
    url = f"{agent.url}/v1/health/service/orders"
    stale = requests.get(url + "?stale", timeout=5)
    assert stale.status_code == 200 and stale.headers["X-Consul-Effective-Consistency"] == "stale"
    assert "X-Consul-LastContact" in stale.headers and stale.headers["X-Consul-KnownLeader"] == "true"
    assert requests.get(url + "?consistent", timeout=5).headers["X-Consul-Effective-Consistency"] == "consistent"
    both = requests.get(url + "?stale&consistent", timeout=5)
    assert both.status_code == 400 and "conflicting" in both.text


def test_bad_index_and_wait_are_400(agent: ConsulTestAgent) -> None:
    url = f"{agent.url}/v1/health/service/orders"
    assert requests.get(url + "?index=abc", timeout=5).status_code == 400
    assert requests.get(url + "?index=-1", timeout=5).status_code == 400
    assert requests.get(url + "?index=5&wait=forever", timeout=5).status_code == 400


def test_wait_defaults_to_five_minutes_and_is_clamped_to_ten() -> None:
    parse = ConsulTestAgent._blocking_params
    assert parse({"index": ["7"]}) == (7, 300.0)
    assert parse({"index": ["7"], "wait": ["20m"]}) == (7, MAX_WAIT)
    assert parse({"index": ["7"], "wait": ["90s"]}) == (7, 90.0)


# -- blocking queries -----------------------------------------------------------------------


def test_blocking_query_returns_on_change(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001, service_id="a")
    index, _ = client.health.service("orders")
    fut = _background(lambda: client.health.service("orders", index=index, wait="30s"))
    agent.wait_for_pending("orders")
    agent.register("orders", 5002, service_id="b")
    new_index, nodes = fut.result(timeout=5)
    assert int(new_index) > int(index) and _ids(nodes) == ["a", "b"]


def test_blocking_query_times_out_after_wait_plus_jitter(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001)
    index, _ = client.health.service("orders")
    t0 = time.monotonic()
    same, nodes = client.health.service("orders", index=index, wait="1s")
    elapsed = time.monotonic() - t0
    assert same == index and len(nodes) == 1
    # wait plus at most wait/16 of jitter, plus loopback overhead.
    assert 1.0 <= elapsed < 1.0 + 1 / 16 + 0.5


def test_index_zero_never_blocks(agent: ConsulTestAgent) -> None:
    t0 = time.monotonic()
    r = requests.get(f"{agent.url}/v1/health/service/orders?index=0&wait=30s", timeout=10)
    assert r.status_code == 200 and time.monotonic() - t0 < 5.0  # blocking would take the 30 s wait


def test_other_services_do_not_wake_a_blocking_query(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001)
    index, _ = client.health.service("orders")
    fut = _background(lambda: client.health.service("orders", index=index, wait="30s"))
    agent.wait_for_pending("orders")
    agent.register("payments", 6001)
    agent.set_check("service:payments", "critical")
    touched = agent.touch("orders")
    new_index, _ = fut.result(timeout=5)
    # Had the payments writes woken it, the answer would carry the old orders index.
    assert int(new_index) == touched


def test_check_output_churn_moves_the_index(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001)
    index, first = client.health.service("orders", passing=True)
    agent.set_check("service:orders", "passing")  # no change: no write
    assert agent.index("orders") == int(index)
    agent.set_check("service:orders", "passing", output="still fine")
    index2, second = client.health.service("orders", index=index, wait="5s", passing=True)
    assert int(index2) > int(index) and _ids(first) == _ids(second)


def test_a_client_that_goes_away_frees_its_handler(agent: ConsulTestAgent) -> None:
    agent.register("orders", 5001)
    index = agent.index("orders")
    with socket.create_connection((agent.host, agent.port)) as sock:
        sock.sendall(f"GET /v1/health/service/orders?index={index}&wait=60s HTTP/1.1\r\n"
                     f"Host: {agent.address}\r\n\r\n".encode())
        agent.wait_for_pending("orders")
    wait_for(lambda: agent.pending("orders") == 0, 2.0, message="handler noticed the closed connection")


# -- checks that really run ------------------------------------------------------------------------


def test_ttl_check_expires_to_critical(agent: ConsulTestAgent, client: consul.Consul) -> None:
    client.agent.service.register("orders", port=5001, check={"TTL": "1s", "Status": "passing"})
    index, nodes = client.health.service("orders", passing=True)
    assert len(nodes) == 1
    index, nodes = client.health.service("orders", index=index, wait="10s", passing=True)
    assert nodes == []
    _, all_nodes = client.health.service("orders")
    [check] = _service_checks(all_nodes[0])
    assert check["Status"] == "critical" and check["Output"] == "TTL expired"


def test_grpc_check_follows_the_backend_health_service(
        agent: ConsulTestAgent, client: consul.Consul, backends: Callable[[int], list[BackendServer]]) -> None:
    [b] = backends(1)
    client.agent.service.register("orders", address=b.host, port=b.port, check=consul.Check.grpc(b.addr, "1s"))
    _until(client, "orders", bool, passing=True)
    b.set_health(health_pb2.HealthCheckResponse.NOT_SERVING, service="")
    _until(client, "orders", lambda nodes: not nodes, passing=True)
    _, all_nodes = client.health.service("orders")
    assert "NOT_SERVING" in _service_checks(all_nodes[0])[0]["Output"]


def test_tcp_and_http_checks(agent: ConsulTestAgent, client: consul.Consul,
                             backends: Callable[[int], list[BackendServer]]) -> None:
    [b] = backends(1)
    client.agent.service.register("tcp-svc", port=b.port, check=consul.Check.tcp(b.host, b.port, "1s"))
    client.agent.service.register("http-ok", port=1, check=consul.Check.http(f"{agent.url}/v1/status/leader", "1s"))
    client.agent.service.register("http-404", port=2, check=consul.Check.http(f"{agent.url}/v1/nope", "1s"))
    _until(client, "tcp-svc", bool, passing=True)
    _until(client, "http-ok", bool, passing=True)
    [entry] = _until(client, "http-404", lambda nodes: "404" in _service_checks(nodes[0])[0]["Output"])
    assert _service_checks(entry)[0]["Status"] == "critical"
    b.stop()
    _until(client, "tcp-svc", lambda nodes: not nodes, passing=True)


def test_maintenance_mode(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001)
    client.agent.service.maintenance("orders", True, reason="deploy")
    assert client.health.service("orders", passing=True)[1] == []
    client.agent.service.maintenance("orders", False)
    assert len(client.health.service("orders", passing=True)[1]) == 1


def test_node_check_takes_all_its_services_out(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001, service_id="a", node="n1")
    agent.register("orders", 5002, service_id="b", node="n2")
    agent.set_node_status("n1", "critical")
    assert _ids(client.health.service("orders", passing=True)[1]) == ["b"]


def test_deregister(agent: ConsulTestAgent, client: consul.Consul) -> None:
    client.agent.service.register("orders", service_id="o1", port=5001)
    assert client.agent.service.deregister("o1")
    assert client.health.service("orders")[1] == []
    assert not client.agent.service.deregister("o1"), "unknown ID is a 404"
    assert client.agent.services() == {}


def test_catalog_register_and_deregister_external_node(agent: ConsulTestAgent, client: consul.Consul) -> None:
    assert client.catalog.register("ext-1", "127.0.0.7", service={"Service": "orders", "ID": "x", "Port": 7001},
                                   check={"Name": "ext", "Status": "warning", "ServiceID": "x"})
    [entry] = client.health.service("orders")[1]
    assert entry["Node"]["Address"] == "127.0.0.7" and entry["Service"]["Port"] == 7001
    assert [c["Status"] for c in _service_checks(entry)] == ["warning"]
    assert client.catalog.deregister("ext-1", service_id="x")
    assert client.health.service("orders")[1] == []


def test_register_validation(agent: ConsulTestAgent) -> None:
    url = f"{agent.url}/v1/agent/service/register"
    assert requests.put(url, data="{}", timeout=5).status_code == 400
    assert requests.put(url, data="not json", timeout=5).status_code == 400
    r = requests.put(url, json={"Name": "x", "Weights": {"Passing": 0}}, timeout=5)
    assert r.status_code == 400 and "Passing" in r.text
    assert requests.put(url, json={"Name": "x", "Meta": {"consul-x": "1"}}, timeout=5).status_code == 400
    assert requests.get(url, timeout=5).status_code == 405
    # snake_case and lower-case keys are Consul's too
    assert requests.put(url, json={"name": "x", "service_id": "ignored", "id": "x1", "port": 1},
                        timeout=5).status_code == 200
    assert agent.index("x") > 0


# -- ACLs --------------------------------------------------------------------------------------------


@pytest.fixture
def acl_agent(make_agent: MakeAgent) -> ConsulTestAgent:
    a = make_agent(acl_default_policy="deny", tokens={"reader-secret": ("orders",)})
    a.add_token("writer-secret", write=("orders",))
    a.register("orders", 5001)
    a.register("payments", 6001)
    return a


def test_acl_reads_are_filtered_and_unknown_tokens_are_403(acl_agent: ConsulTestAgent) -> None:
    anonymous = consul.Consul(host=acl_agent.host, port=acl_agent.port)
    anonymous.token = None  # py-consul would take $CONSUL_HTTP_TOKEN
    url = f"{acl_agent.url}/v1/health/service/orders"
    r = requests.get(url, timeout=5)
    assert r.json() == [] and r.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
    assert anonymous.health.service("orders")[1] == []
    reader = consul.Consul(host=acl_agent.host, port=acl_agent.port, token="reader-secret")
    reader.token = "reader-secret"
    assert len(reader.health.service("orders")[1]) == 1
    assert reader.health.service("payments")[1] == []
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        anonymous.health.service("orders", token="wrong-secret")
    bearer = requests.get(url, headers={"Authorization": "Bearer reader-secret"}, timeout=5)
    assert len(bearer.json()) == 1
    sources = [(r.token, r.token_source) for r in acl_agent.requests]
    assert ("reader-secret", "header") in sources and ("reader-secret", "bearer") in sources


def test_acl_writes_need_write_permission(acl_agent: ConsulTestAgent) -> None:
    reader = consul.Consul(host=acl_agent.host, port=acl_agent.port)
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        reader.agent.service.register("orders", service_id="o2", port=5002, token="reader-secret")
    assert reader.agent.service.register("orders", service_id="o2", port=5002, token="writer-secret")
    with pytest.raises(consul.ACLPermissionDenied):
        reader.agent.service.register("payments", service_id="p2", port=6002, token="writer-secret")


# -- faults ----------------------------------------------------------------------------------------------


def test_stop_resets_pending_long_polls_and_refuses_until_start(
        agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.register("orders", 5001)
    index, _ = client.health.service("orders")
    fut = _background(lambda: client.health.service("orders", index=index, wait="60s"))
    agent.wait_for_pending("orders")
    t0 = time.monotonic()
    agent.stop()
    with pytest.raises(requests.ConnectionError):
        fut.result(timeout=5)
    assert time.monotonic() - t0 < 2.0, "the pending long poll was not reset at once"
    with pytest.raises(requests.ConnectionError):
        client.health.service("orders")
    agent.start()
    index2, nodes = client.health.service("orders")
    assert index2 == index and len(nodes) == 1, "an outage keeps the catalog and its index"


def test_restart_resets_the_index(agent: ConsulTestAgent, client: consul.Consul) -> None:
    for i in range(20):
        agent.register("orders", 5001, service_id="o", tags=[str(i)])
    index, _ = client.health.service("orders")
    fut = _background(lambda: client.health.service("orders", index=index, wait="60s"))
    agent.wait_for_pending("orders")
    agent.restart()
    with pytest.raises(requests.ConnectionError):
        fut.result(timeout=5)
    new_index, nodes = client.health.service("orders")
    assert 1 <= int(new_index) < int(index) and len(nodes) == 1, "same catalog, fresh lower index"
    # A client that keeps its old index waits out the whole wait: that is why clients drop it.
    t0 = time.monotonic()
    stale_index, _ = client.health.service("orders", index=index, wait="1s")
    assert time.monotonic() - t0 >= 1.0 and stale_index == new_index


def test_set_index_backwards_and_zero(agent: ConsulTestAgent, client: consul.Consul) -> None:
    for i in range(5):
        agent.register("orders", 5001, tags=[str(i)])
    index, _ = client.health.service("orders")
    fut = _background(lambda: client.health.service("orders", index=index, wait="1s"))
    agent.wait_for_pending("orders")
    agent.set_index(2)
    agent.register("orders", 5001, tags=["x"])
    # Index 3 is not greater than the client's: the query waits out its wait and answers the lower index,
    # which is how a client learns that the index went backwards.
    new_index, nodes = fut.result(timeout=5)
    assert int(new_index) == 3 < int(index) and nodes[0]["Service"]["Tags"] == ["x"]
    agent.set_index(0)
    assert client.health.service("orders")[0] == "0"


def test_fail_next_answers_errors(agent: ConsulTestAgent, client: consul.Consul) -> None:
    agent.fail_next(2, 500, "rpc error: No cluster leader")
    for _ in range(2):
        with pytest.raises(consul.ConsulException, match="No cluster leader"):
            client.health.service("orders")
    assert client.health.service("orders")[1] == []


def test_ipv6_agent(ipv6_agent: ConsulTestAgent) -> None:
    ipv6_agent.register("orders", 5001, address="::1")
    assert ipv6_agent.address.startswith("[::1]:")
    nodes = requests.get(f"{ipv6_agent.url}/v1/health/service/orders", timeout=5).json()
    assert nodes[0]["Service"]["Address"] == "::1" and nodes[0]["Node"]["Address"] == "::1"


def test_programmatic_registration_is_validated(agent: ConsulTestAgent) -> None:
    with pytest.raises(ValueError, match="Passing must be greater than 0"):
        agent.register("orders", 5001, weights={"Passing": 0, "Warning": 1})
    with pytest.raises(ValueError, match="Invalid service port"):
        agent.register("orders", 70000)
    with pytest.raises(KeyError):
        agent.deregister("nope")
    with pytest.raises(ValueError, match="status must be one of"):
        agent.register("orders", 5001)
        agent.set_check("service:orders", "fine")
