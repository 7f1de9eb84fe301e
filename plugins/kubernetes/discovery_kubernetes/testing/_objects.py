"""Builders for the objects the test API server stores, in the API server's own JSON shape.

EndpointSlice (``discovery.k8s.io/v1``) and the legacy Endpoints (``v1``), as
plain dicts exactly as the API server serialises them. Optional fields are
left out when not given, as Go's ``omitempty`` leaves them out, so a resolver
under test sees what a real cluster sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "SERVICE_NAME_LABEL",
    "endpoint",
    "endpoint_address",
    "endpoint_port",
    "endpoint_slice",
    "endpoint_subset",
    "endpoints_object",
]

#: The label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: The label naming the controller that manages a slice.
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"


def _target_ref(pod: str | None, namespace: str | None) -> dict[str, Any] | None:
    if pod is None:
        return None
    ref: dict[str, Any] = {"kind": "Pod", "name": pod}
    if namespace is not None:
        ref["namespace"] = namespace
    return ref


def endpoint(
    *addresses: str,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    zone: str | None = None,
    node: str | None = None,
    hostname: str | None = None,
    pod: str | None = None,
    pod_namespace: str | None = None,
    for_zones: Iterable[str] | None = None,
) -> dict[str, Any]:
    """One entry of an EndpointSlice's ``endpoints`` list.

    ``ready``/``serving``/``terminating`` of None leave that condition out
    (``ready`` absent means ready to a consumer). ``pod`` fills ``targetRef``;
    ``for_zones`` fills ``hints.forZones`` (topology-aware routing).
    """
    if not addresses:
        raise ValueError("an endpoint needs at least one address")
    conditions = {
        key: value
        for key, value in (("ready", ready), ("serving", serving), ("terminating", terminating))
        if value is not None
    }
    ep: dict[str, Any] = {"addresses": list(addresses), "conditions": conditions}
    if hostname is not None:
        ep["hostname"] = hostname
    ref = _target_ref(pod, pod_namespace)
    if ref is not None:
        ep["targetRef"] = ref
    if node is not None:
        ep["nodeName"] = node
    if zone is not None:
        ep["zone"] = zone
    if for_zones is not None:
        ep["hints"] = {"forZones": [{"name": z} for z in for_zones]}
    return ep


def endpoint_port(
    port: int | None, name: str | None = None, protocol: str = "TCP", app_protocol: str | None = None
) -> dict[str, Any]:
    """One entry of an EndpointSlice's ``ports`` list (also the shape of an Endpoints subset port).

    ``port`` None leaves the number out, as the API allows ("all ports").
    """
    out: dict[str, Any] = {}
    if name is not None:
        out["name"] = name
    out["protocol"] = protocol
    if port is not None:
        out["port"] = port
    if app_protocol is not None:
        out["appProtocol"] = app_protocol
    return out


def endpoint_slice(
    name: str,
    service: str | None,
    endpoints: Sequence[Mapping[str, Any]] | None,
    ports: Sequence[Mapping[str, Any]] | None,
    *,
    namespace: str = "default",
    address_type: str = "IPv4",
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """An EndpointSlice labelled with ``kubernetes.io/service-name=service`` (unless ``service`` is None)."""
    all_labels: dict[str, str] = {}
    if service is not None:
        all_labels[SERVICE_NAME_LABEL] = service
        all_labels[MANAGED_BY_LABEL] = "endpointslice-controller.k8s.io"
    all_labels.update(labels or {})
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "labels": all_labels},
        "addressType": address_type,
        "endpoints": None if endpoints is None else [dict(e) for e in endpoints],
        "ports": None if ports is None else [dict(p) for p in ports],
    }


def endpoint_address(
    ip: str, *, node: str | None = None, hostname: str | None = None, pod: str | None = None,
    pod_namespace: str | None = None,
) -> dict[str, Any]:
    """One address of a legacy Endpoints subset."""
    out: dict[str, Any] = {"ip": ip}
    if hostname is not None:
        out["hostname"] = hostname
    if node is not None:
        out["nodeName"] = node
    ref = _target_ref(pod, pod_namespace)
    if ref is not None:
        out["targetRef"] = ref
    return out


def _as_address(a: str | Mapping[str, Any]) -> dict[str, Any]:
    return endpoint_address(a) if isinstance(a, str) else dict(a)


def endpoint_subset(
    addresses: Iterable[str | Mapping[str, Any]] = (),
    ports: Iterable[Mapping[str, Any]] = (),
    not_ready: Iterable[str | Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """One subset of a legacy Endpoints object; plain strings are taken as IPs."""
    out: dict[str, Any] = {}
    ready = [_as_address(a) for a in addresses]
    pending = [_as_address(a) for a in not_ready]
    port_list = [dict(p) for p in ports]
    if ready:
        out["addresses"] = ready
    if pending:
        out["notReadyAddresses"] = pending
    if port_list:
        out["ports"] = port_list
    return out


def endpoints_object(
    service: str, subsets: Iterable[Mapping[str, Any]], *, namespace: str = "default"
) -> dict[str, Any]:
    """A legacy ``v1`` Endpoints object; its name is the Service's name."""
    out: dict[str, Any] = {
        "kind": "Endpoints",
        "apiVersion": "v1",
        "metadata": {"name": service, "namespace": namespace},
    }
    subset_list = [dict(s) for s in subsets]
    if subset_list:
        out["subsets"] = subset_list
    return out
