"""The Kubernetes resolver passes the conformance suite every resolver plugin should pass."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from discovery_kubernetes import KubernetesResolverBuilder
from discovery_kubernetes.testing import KubeApiServer, endpoint, endpoint_port, write_kubeconfig

from discovery.resolver import ResolverBuilder
from discovery.testing.conformance import ResolverConformance


class TestKubernetesConformance(ResolverConformance):
    @pytest.fixture(autouse=True)
    def _cluster(self, api: KubeApiServer, kubeconfig: Path, tmp_path: Path) -> None:
        api.create_slice("orders-a", "orders", [endpoint("127.0.0.2"), endpoint("127.0.0.3")],
                         [endpoint_port(50051, "grpc")], namespace="shop")
        api.create_slice("orders-b", "orders", [endpoint("127.0.0.3"), endpoint("127.0.0.4")],
                         [endpoint_port(50051, "grpc")], namespace="shop")
        self.environ = {"KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
        self.tmp_path = tmp_path
        self.no_service_account = str(tmp_path / "no-service-account")

    def make_builder(self) -> ResolverBuilder:
        return KubernetesResolverBuilder(environ=self.environ, service_account_dir=self.no_service_account)

    def target(self) -> str:
        return "kubernetes:///orders.shop:grpc"

    def expected_addresses(self) -> set[str] | None:
        return {"127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"}

    def bad_targets(self) -> list[str]:
        return ["kubernetes:///Orders", "kubernetes:///orders:0", "kubernetes://shop/orders.other",
                "kubernetes:///orders?port=grpc", "kubernetes:///orders.shop.cluster"]

    def silent_target(self, address: str) -> str | None:
        # The API server comes from the kubeconfig, not the target: point one at the silent server.
        write_kubeconfig(self.tmp_path / "silent-kubeconfig", f"http://{address}", token="t")
        return self.target()

    def silent_config(self) -> Mapping[str, Any]:
        return {"kubeconfig": str(self.tmp_path / "silent-kubeconfig")}
