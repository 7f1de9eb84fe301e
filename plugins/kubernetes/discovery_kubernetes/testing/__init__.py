"""A Kubernetes API server in the test process, for this plugin's tests and users' own.

:class:`KubeApiServer` implements list and watch of EndpointSlices
(``discovery.k8s.io/v1``) and legacy Endpoints (``v1``) over real HTTP on a
loopback port, faithfully enough that the official ``kubernetes`` client
(and this plugin's resolver) talk to it as to a cluster: resourceVersion
history and compaction (410 Gone), bookmarks, ``timeoutSeconds``, label and
field selectors, bearer tokens (401) and RBAC denials (403), plus faults on
command (cut, silent and expired watches, an API server that goes away).

::

    from discovery_kubernetes.testing import KubeApiServer, endpoint, endpoint_port

    with KubeApiServer(token="t0ken") as api:
        api.create_slice("orders-abc", "orders", [endpoint("127.0.0.1")], [endpoint_port(50051, "grpc")])
        path = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="default")
        channel = discovery.insecure_channel("kubernetes:///orders:grpc",
                                             resolver_config={"kubeconfig": str(path)})

The object builders (:func:`endpoint`, :func:`endpoint_port`,
:func:`endpoint_slice`, :func:`endpoint_subset`, :func:`endpoint_address`,
:func:`endpoints_object`) produce the JSON the API server itself returns.
"""

from __future__ import annotations

from ._objects import (
    SERVICE_NAME_LABEL,
    endpoint,
    endpoint_address,
    endpoint_port,
    endpoint_slice,
    endpoint_subset,
    endpoints_object,
)
from ._selectors import FieldSelector, LabelSelector, SelectorError
from ._server import ENDPOINT_SLICES, ENDPOINTS, KubeApiServer, RequestRecord, Resource, kubeconfig, write_kubeconfig

__all__ = [
    "ENDPOINTS",
    "ENDPOINT_SLICES",
    "SERVICE_NAME_LABEL",
    "FieldSelector",
    "KubeApiServer",
    "LabelSelector",
    "RequestRecord",
    "Resource",
    "SelectorError",
    "endpoint",
    "endpoint_address",
    "endpoint_port",
    "endpoint_slice",
    "endpoint_subset",
    "endpoints_object",
    "kubeconfig",
    "write_kubeconfig",
]
