"""EndpointView: how EndpointSlices (and Endpoints) become one address set. Pure data, no I/O."""

from __future__ import annotations

from typing import Any

import pytest
from discovery_kubernetes import EndpointView, KubeTarget
from discovery_kubernetes.testing import (
    endpoint,
    endpoint_address,
    endpoint_port,
    endpoint_slice,
    endpoint_subset,
    endpoints_object,
)

from discovery.address import ResolverState
from discovery.errors import ResolverError


def view(port: int | str | None = "grpc", **kwargs: Any) -> EndpointView:
    return EndpointView(KubeTarget("orders", "shop", port), "shop", **kwargs)


_GRPC: Any = object()


def grpc_slice(name: str, *endpoints: dict[str, Any], port: int = 50051, address_type: str = "IPv4",
               ports: list[dict[str, Any]] | None = _GRPC) -> dict[str, Any]:
    """A slice of orders in shop; its one port is ``grpc`` (``port``) unless ``ports`` (None: null) says else."""
    return endpoint_slice(name, "orders", list(endpoints),
                          [endpoint_port(port, "grpc")] if ports is _GRPC else ports,
                          namespace="shop", address_type=address_type)


def addrs(v: EndpointView) -> list[str]:
    state = v.state()
    assert isinstance(state, ResolverState), state
    return [a.addr for a in state.addresses]


def test_ready_absent_means_ready_and_not_ready_is_left_out() -> None:
    v = view()
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1", ready=None), endpoint("10.0.0.2", ready=True),
                              endpoint("10.0.0.3", ready=False))])
    assert addrs(v) == ["10.0.0.1:50051", "10.0.0.2:50051"]


def test_terminating_endpoints_are_left_out_unless_serving_ones_are_kept() -> None:
    s = grpc_slice("a", endpoint("10.0.0.1"),
                   endpoint("10.0.0.2", ready=False, serving=True, terminating=True),
                   endpoint("10.0.0.3", ready=False, serving=False, terminating=True),
                   endpoint("10.0.0.4", ready=None, terminating=True))
    plain = view()
    plain.replace_all([s])
    assert addrs(plain) == ["10.0.0.1:50051"]
    draining = view(keep_serving_terminating=True)
    draining.replace_all([s])
    state = draining.state()
    assert isinstance(state, ResolverState)
    assert [(a.addr, a.attributes.get("terminating")) for a in state.addresses] == [
        ("10.0.0.1:50051", None), ("10.0.0.2:50051", True)]


def test_named_port_is_looked_up_per_slice_and_a_slice_without_it_is_skipped() -> None:
    v = view("grpc")
    v.replace_all([
        grpc_slice("a", endpoint("10.0.0.1"), port=50051),
        grpc_slice("b", endpoint("10.0.0.2"), port=6000),  # pods whose named targetPort maps elsewhere
        grpc_slice("c", endpoint("10.0.0.3"), ports=[endpoint_port(8080, "http")]),
        grpc_slice("d", endpoint("10.0.0.4"), ports=[endpoint_port(50051, "grpc", protocol="UDP")]),
    ])
    assert addrs(v) == ["10.0.0.1:50051", "10.0.0.2:6000"]


def test_numeric_port_is_used_as_is() -> None:
    v = view(7000)
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1"), ports=None), grpc_slice("b", endpoint("10.0.0.2"))])
    assert addrs(v) == ["10.0.0.1:7000", "10.0.0.2:7000"]


def test_no_port_takes_the_only_port_and_several_ports_are_an_error_naming_them() -> None:
    v = view(None)
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1"), ports=[endpoint_port(9000)])])
    assert addrs(v) == ["10.0.0.1:9000"]
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1"),
                              ports=[endpoint_port(50051, "grpc"), endpoint_port(9090, "metrics")])])
    error = v.state()
    assert isinstance(error, ResolverError)
    assert "grpc (50051)" in str(error) and "metrics (9090)" in str(error)
    assert "kubernetes:///orders.shop:grpc" in str(error)


def test_merge_every_slice_and_count_an_address_in_two_slices_once() -> None:
    v = view()
    v.replace_all([
        grpc_slice("a", endpoint("10.0.0.1"), endpoint("10.0.0.2")),
        grpc_slice("b", endpoint("10.0.0.2"), endpoint("10.0.0.3")),
    ])
    assert addrs(v) == ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"]
    # A ready copy wins over a terminating one, whichever slice comes first.
    kept = view(keep_serving_terminating=True)
    kept.replace_all([grpc_slice("a", endpoint("10.0.0.2", ready=False, serving=True, terminating=True)),
                      grpc_slice("b", endpoint("10.0.0.2", zone="z"))])
    state = kept.state()
    assert isinstance(state, ResolverState)
    [only] = state.addresses
    assert only.zone == "z" and "terminating" not in only.attributes


def test_deleting_one_slice_removes_only_its_own_endpoints() -> None:
    v = view()
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1"), endpoint("10.0.0.2")),
                   grpc_slice("b", endpoint("10.0.0.2"), endpoint("10.0.0.3"))])
    assert v.apply("DELETED", grpc_slice("a"))
    assert addrs(v) == ["10.0.0.2:50051", "10.0.0.3:50051"]
    assert v.apply("ADDED", grpc_slice("c", endpoint("10.0.0.9")))
    assert v.apply("MODIFIED", grpc_slice("b", endpoint("10.0.0.3")))
    assert addrs(v) == ["10.0.0.3:50051", "10.0.0.9:50051"]
    assert not v.apply("BOOKMARK", grpc_slice("c"))
    assert not v.apply("ADDED", {"metadata": {}})


def test_dual_stack_slices_give_both_families() -> None:
    v = view()
    v.replace_all([grpc_slice("v4", endpoint("10.0.0.1")),
                   grpc_slice("v6", endpoint("fd00::0001"), address_type="IPv6")])
    assert addrs(v) == ["10.0.0.1:50051", "[fd00::1]:50051"]


def test_an_address_of_the_wrong_family_or_no_ip_is_skipped() -> None:
    v = view()
    v.replace_all([grpc_slice("v4", endpoint("fd00::1"), endpoint("not-an-ip"), endpoint("10.0.0.1")),
                   grpc_slice("odd", endpoint("10.0.0.2"), address_type="Unknown")])
    assert addrs(v) == ["10.0.0.1:50051"]
    fqdn = view()
    fqdn.replace_all([grpc_slice("f", endpoint("Orders.Example.com."), endpoint("bad_name"), address_type="FQDN")])
    assert addrs(fqdn) == ["orders.example.com:50051"]


def test_zone_node_pod_and_hints_become_address_fields() -> None:
    v = view()
    v.replace_all([grpc_slice("a",
                              endpoint("10.0.0.1", zone="eu-1a", node="node-1", pod="orders-7f9", hostname="h1"),
                              endpoint("10.0.0.2", node="node-2", pod="orders-abc", pod_namespace="other",
                                       for_zones=["eu-1b", "eu-1c"]))])
    state = v.state()
    assert isinstance(state, ResolverState)
    a, b = state.addresses
    assert a.zone == "eu-1a"
    assert dict(a.attributes) == {"node": "node-1", "pod": "orders-7f9", "pod_namespace": "shop", "hostname": "h1"}
    assert b.zone == "eu-1b"
    assert dict(b.attributes) == {"node": "node-2", "pod": "orders-abc", "pod_namespace": "other",
                                  "for_zones": ("eu-1b", "eu-1c")}


def test_null_lists_and_malformed_objects_never_crash() -> None:
    v = view()
    bad_endpoints = [None, 1, {"addresses": None}, {"addresses": [5]}, {"addresses": []},
                     {"conditions": "x", "addresses": ["10.0.0.7"]},
                     {"addresses": ["10.0.0.8"], "hints": 3, "targetRef": [], "zone": 9}]
    bad_ports = [None, {"name": "grpc", "port": "50051"}, {"name": "grpc", "port": True},
                 {"name": "grpc", "port": 70000}, {"name": "grpc", "port": 50051}]
    junk: list[Any] = [
        {"metadata": {"name": "n1"}, "addressType": "IPv4", "endpoints": None, "ports": None},
        {"metadata": {"name": "n2"}, "addressType": "IPv4", "endpoints": "x", "ports": {"a": 1}},
        {"metadata": {"name": "n3"}, "addressType": "IPv4", "endpoints": bad_endpoints, "ports": bad_ports},
        {"metadata": None}, None, "text", 5, {"metadata": {"name": ""}},
    ]
    v.replace_all(junk)
    assert addrs(v) == ["10.0.0.7:50051", "10.0.0.8:50051"]
    for event in ("ADDED", "MODIFIED", "DELETED"):
        for obj in junk:
            v.apply(event, obj)
    assert isinstance(v.state(), ResolverState)


def test_empty_sets_say_why() -> None:
    v = view()
    v.replace_all([])
    state = v.state()
    assert isinstance(state, ResolverState) and not state.addresses
    assert "no EndpointSlices for Service shop/orders" in state.note
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1", ready=False))])
    assert "no ready endpoints (1 not ready or terminating)" in v.state().note  # type: ignore[union-attr]
    v.replace_all([grpc_slice("a", endpoint("10.0.0.1"), ports=[endpoint_port(80, "http")])])
    assert "no port named 'grpc' (its ports: http)" in v.state().note  # type: ignore[union-attr]
    portless = view(None)
    portless.replace_all([grpc_slice("a", endpoint("10.0.0.1"), ports=[])])
    assert "lists no TCP port in its EndpointSlices" in portless.state().note  # type: ignore[union-attr]


def test_identical_input_gives_an_equal_state() -> None:
    one, two = view(), view()
    a1, a2, a3 = endpoint("10.0.0.1"), endpoint("10.0.0.2"), endpoint("10.0.0.3")
    one.replace_all([grpc_slice("a", a2, a1), grpc_slice("b", a3)])
    two.replace_all([grpc_slice("b", a3), grpc_slice("a", a1, a2)])
    assert one.state() == two.state()


def test_legacy_endpoints_ready_addresses_with_ports_per_subset() -> None:
    v = view(kind="endpoints")
    v.replace_all([endpoints_object("orders", [
        endpoint_subset([endpoint_address("10.0.0.1", node="n1", pod="p1")], [endpoint_port(50051, "grpc")],
                        not_ready=["10.0.0.2"]),
        endpoint_subset(["10.0.0.3"], [endpoint_port(6000, "grpc"), endpoint_port(80, "http")]),
    ], namespace="shop")])
    state = v.state()
    assert isinstance(state, ResolverState)
    assert [a.addr for a in state.addresses] == ["10.0.0.1:50051", "10.0.0.3:6000"]
    assert dict(state.addresses[0].attributes) == {"node": "n1", "pod": "p1", "pod_namespace": "shop"}
    v.apply("DELETED", endpoints_object("orders", [], namespace="shop"))
    assert addrs(v) == []


def test_legacy_endpoints_without_a_port_need_exactly_one() -> None:
    v = view(None, kind="endpoints")
    v.replace_all([endpoints_object("orders", [endpoint_subset(["10.0.0.1"], [endpoint_port(9000)]),
                                               endpoint_subset(["10.0.0.2"], [endpoint_port(9001)])])])
    assert addrs(v) == ["10.0.0.1:9000", "10.0.0.2:9001"]
    v.replace_all([endpoints_object("orders", [endpoint_subset(["10.0.0.1"], [endpoint_port(9000, "a"),
                                                                            endpoint_port(9001, "b")])])])
    assert isinstance(v.state(), ResolverError)


def test_kind_is_checked() -> None:
    with pytest.raises(ValueError):
        view(kind="pods")
