"""Fixtures for the Consul plugin: an in-process Consul test agent per test, real grpc backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import consul
import pytest
from discovery_consul.testing import ConsulTestAgent

from discovery.testing.servers import BackendServer


@pytest.fixture
def agent(request: pytest.FixtureRequest) -> ConsulTestAgent:
    """A started :class:`ConsulTestAgent` on 127.0.0.1 at a free port (stopped at teardown)."""
    a = ConsulTestAgent(seed=1)
    request.addfinalizer(a.stop)
    return a.start()


@pytest.fixture
def client(agent: ConsulTestAgent) -> Iterator[consul.Consul]:
    """A py-consul client pointed at ``agent`` (its own session, closed at teardown)."""
    c = consul.Consul(host=agent.host, port=agent.port, scheme="http")
    yield c
    c.http.session.close()


@pytest.fixture
def backends(request: pytest.FixtureRequest) -> Callable[[int], list[BackendServer]]:
    """``backends(n)``: n real grpc servers (echo + health) on 127.0.0.1, stopped at teardown."""

    def make(n: int) -> list[BackendServer]:
        out = []
        for i in range(n):
            b = BackendServer(name=f"b{i}")
            request.addfinalizer(b.stop)
            out.append(b.start())
        return out

    return make
