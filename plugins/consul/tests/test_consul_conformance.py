"""The consul resolver passes the conformance suite every resolver plugin should pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from discovery_consul import ConsulResolverBuilder
from discovery_consul.testing import ConsulTestAgent

from discovery.resolver import ResolverBuilder
from discovery.testing.conformance import ResolverConformance


class TestConsulConformance(ResolverConformance):
    @pytest.fixture(autouse=True)
    def _agent(self, agent: ConsulTestAgent) -> None:
        self.agent = agent
        agent.register("orders", 50051, address="127.0.0.2", service_id="a")
        agent.register("orders", 50052, service_id="b")  # the node's address
        agent.register("orders", 50053, address="127.0.0.4", service_id="c", status="critical")

    def make_builder(self) -> ResolverBuilder:
        return ConsulResolverBuilder(environ={})

    def target(self) -> str:
        return f"consul://{self.agent.address}/orders"

    def config(self) -> Mapping[str, Any]:
        return {"wait": "30s"}

    def expected_addresses(self) -> set[str] | None:
        return {"127.0.0.2:50051", "127.0.0.1:50052"}

    def bad_targets(self) -> list[str]:
        return [f"consul://{self.agent.address}/orders?colour=red", f"consul://{self.agent.address}/a/b",
                "consul://[::1/orders", f"consul://{self.agent.address}/orders?token=abc",
                f"consul://{self.agent.address}/orders?stale&consistent"]
