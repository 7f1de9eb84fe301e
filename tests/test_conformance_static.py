"""The built-in static resolver passes the conformance suite plugin authors use."""

from __future__ import annotations

from discovery.resolver import ResolverBuilder
from discovery.resolvers.static import StaticResolverBuilder
from discovery.testing.conformance import ResolverConformance


class TestStaticConformance(ResolverConformance):
    def make_builder(self) -> ResolverBuilder:
        return StaticResolverBuilder()

    def target(self) -> str:
        return "static:///127.0.0.1:50051,[::1]:50052"

    def expected_addresses(self) -> set[str] | None:
        return {"127.0.0.1:50051", "[::1]:50052"}

    def bad_targets(self) -> list[str]:
        return ["static:///", "static:///a:b", "static://x/127.0.0.1:1"]
