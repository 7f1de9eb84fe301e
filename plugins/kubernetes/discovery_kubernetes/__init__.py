"""Kubernetes resolver plugin for grpc-discovery: ``kubernetes:`` and ``k8s:`` targets.

Registered under the ``discovery.resolvers`` entry-point group as
``kubernetes`` and ``k8s``; the core never imports this package by name.
Needs the official ``kubernetes`` client. :mod:`discovery_kubernetes.testing`
is an in-process API server for tests.
"""

from __future__ import annotations

try:
    import kubernetes as _kubernetes
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the kubernetes: resolver needs the official kubernetes client: pip install kubernetes "
        "(or pip install discovery-kubernetes, which depends on it)"
    ) from _exc

del _kubernetes

from ._cluster import SERVICE_ACCOUNT_DIR, ClusterAccess, find_access  # noqa: E402
from ._config import (  # noqa: E402
    DEFAULT_WATCH_TIMEOUT,
    KubeConfig,
    KubeTarget,
    parse_config,
    parse_go_duration,
    parse_target,
)
from ._resolver import (  # noqa: E402
    K8sResolverBuilder,
    KubernetesResolver,
    KubernetesResolverBuilder,
    reconnect_backoff,
)
from ._view import EndpointView  # noqa: E402

__all__ = [
    "DEFAULT_WATCH_TIMEOUT",
    "SERVICE_ACCOUNT_DIR",
    "ClusterAccess",
    "EndpointView",
    "K8sResolverBuilder",
    "KubeConfig",
    "KubeTarget",
    "KubernetesResolver",
    "KubernetesResolverBuilder",
    "find_access",
    "parse_config",
    "parse_go_duration",
    "parse_target",
    "reconnect_backoff",
]
