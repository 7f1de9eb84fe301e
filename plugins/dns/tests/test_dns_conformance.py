"""The DNS resolver passes the conformance suite every resolver plugin should pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from discovery_dns import DnsResolverBuilder
from discovery_dns.testing import KnotServer

from discovery.resolver import ResolverBuilder
from discovery.testing.conformance import ResolverConformance


class TestDnsConformance(ResolverConformance):
    @pytest.fixture(autouse=True)
    def _server(self, knot: KnotServer) -> None:
        self.knot = knot

    def make_builder(self) -> ResolverBuilder:
        return DnsResolverBuilder()

    def target(self) -> str:
        return f"dns://{self.knot.address}/a.test.internal:50051"

    def expected_addresses(self) -> set[str] | None:
        return {"127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"}

    def bad_targets(self) -> list[str]:
        return ["dns:///", "dns:///a.test.internal:port", f"dns://{self.knot.address}/[::1"]

    def silent_target(self, address: str) -> str | None:
        return f"dns://{address}/a.test.internal:50051"

    def silent_config(self) -> Mapping[str, Any]:
        # A query to a server that never answers blocks until this timeout; close() must not wait for it.
        return {"timeout": "1s"}
