"""Kubernetes resolver plugin for grpc-discovery: ``kubernetes:`` and ``k8s:`` targets.

Registered under the ``discovery.resolvers`` entry-point group as
``kubernetes`` and ``k8s``; the core never imports this package by name.
Needs the official ``kubernetes`` client.
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

__all__: list[str] = []
