"""Fixtures for the Kubernetes plugin: an in-process API server per test, clients and resolvers for it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from discovery_kubernetes import KubernetesResolver, KubernetesResolverBuilder
from discovery_kubernetes.testing import KubeApiServer
from k8splugin_support import TOKEN, MakeResolver
from kubernetes import client, config

from discovery.clock import SYSTEM_CLOCK, Clock
from discovery.resolver import ResolverOptions
from discovery.target import parse_target
from discovery.testing import RecordingListener


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


@pytest.fixture
def make_resolver(kubeconfig: Path, tmp_path: Path) -> Iterator[MakeResolver]:
    """Build a KubernetesResolver reaching ``api`` through :func:`kubeconfig`; all closed and joined at teardown.

    ``make_resolver(target="kubernetes:///orders:grpc", clock=SYSTEM_CLOCK, builder=None, **options)``.
    The environment is replaced: $KUBECONFIG names the test kubeconfig, $HOME
    is the test's directory and no service account is mounted.
    """
    built: list[KubernetesResolver] = []

    def make(target: str = "kubernetes:///orders:grpc", clock: Clock = SYSTEM_CLOCK,
             builder: KubernetesResolverBuilder | None = None, **options: Any,
             ) -> tuple[KubernetesResolver, RecordingListener]:
        listener = RecordingListener()
        b = builder or KubernetesResolverBuilder(environ={"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)},
                                                 service_account_dir=str(tmp_path / "no-service-account"))
        resolver = b.build(parse_target(target), listener, ResolverOptions(config=options, clock=clock))
        built.append(resolver)
        return resolver, listener

    yield make
    for r in built:
        r.close()
    for r in built:
        assert r.join(5), f"{r!r} did not stop after close()"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA (ca.crt) and a certificate for 127.0.0.1 (server.crt, server.key), made with openssl."""
    d = tmp_path_factory.mktemp("kpki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=kube test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=kube-apiserver")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return d


# A test that starts a server (the test API server, grpc backends) is an integration test,
# as in the core's tests: `python3 -m pytest -m "not integration"` runs the pure ones alone.
_SERVER_FIXTURES = frozenset({"api", "kubeconfig", "kube", "make_resolver", "start_pods", "pki"})
_SERVER_NAMES = frozenset({"KubeApiServer", "BackendServer"})
_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE not in Path(str(item.path)).resolve().parents:
            continue  # another directory's test
        module = getattr(item, "module", None)
        uses_servers = bool(_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
        uses_servers |= module is not None and bool(_SERVER_NAMES & set(vars(module)))
        if uses_servers:
            item.add_marker(pytest.mark.integration)
