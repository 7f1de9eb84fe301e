"""Shared names for the Kubernetes plugin's tests (a module of its own: every plugin has a conftest)."""

from __future__ import annotations

from collections.abc import Callable

from discovery_kubernetes import KubernetesResolver

from discovery.testing import RecordingListener

#: The bearer token the test API server wants and the test kubeconfig carries.
TOKEN = "k8s-test-token-0123456789"

#: ``make_resolver(target=..., clock=..., builder=None, **options) -> (resolver, listener)``
MakeResolver = Callable[..., tuple[KubernetesResolver, RecordingListener]]
