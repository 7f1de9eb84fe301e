"""Fixtures for the Kubernetes plugin: an in-process API server per test and clients for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_kubernetes.testing import KubeApiServer
from kubernetes import client, config

TOKEN = "k8s-test-token-0123456789"


@pytest.fixture
def api(request: pytest.FixtureRequest) -> KubeApiServer:
    """A fresh API server on 127.0.0.1 that wants the bearer token :data:`TOKEN`."""
    server = KubeApiServer(token=TOKEN, bookmark_interval=None)
    request.addfinalizer(server.stop)
    return server.start()


@pytest.fixture
def kubeconfig(api: KubeApiServer, tmp_path: Path) -> Path:
    """A kubeconfig whose current context points at ``api`` (namespace unset)."""
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def kube(kubeconfig: Path) -> Iterator[client.ApiClient]:
    """The official kubernetes client, configured from :func:`kubeconfig`."""
    c = config.new_client_from_config(str(kubeconfig), persist_config=False)
    yield c
    c.close()
