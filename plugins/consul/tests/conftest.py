"""Fixtures for the Consul plugin: an in-process Consul test agent per test, real grpc backends."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import consul
import pytest
from consulplugin_support import MakeAgent, MakeResolver
from discovery_consul import DEFAULT_BURST, DEFAULT_RATE, ConsulResolver, ConsulResolverBuilder
from discovery_consul.testing import ConsulTestAgent

from discovery.clock import SYSTEM_CLOCK, Clock
from discovery.resolver import ResolverOptions
from discovery.target import parse_target as parse_uri
from discovery.testing import RecordingListener
from discovery.testing.servers import BackendServer


@pytest.fixture
def make_agent(request: pytest.FixtureRequest) -> MakeAgent:
    """Start a :class:`ConsulTestAgent` (stopped at teardown); ``tokens`` maps secrets to readable prefixes."""

    def make(*, host: str = "127.0.0.1", acl_default_policy: str | None = None,
             tokens: Mapping[str, tuple[str, ...]] | None = None) -> ConsulTestAgent:
        a = ConsulTestAgent(host=host, acl_default_policy=acl_default_policy, seed=1)
        request.addfinalizer(a.stop)
        for secret, read in (tokens or {}).items():
            a.add_token(secret, read=read)
        return a.start()

    return make


@pytest.fixture
def agent(make_agent: MakeAgent) -> ConsulTestAgent:
    """A started :class:`ConsulTestAgent` on 127.0.0.1 at a free port, ACLs off (stopped at teardown)."""
    return make_agent()


@pytest.fixture
def ipv6_agent(make_agent: MakeAgent) -> ConsulTestAgent:
    """A started agent on ``::1``; skips where the machine has no IPv6 loopback."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    return make_agent(host="::1")


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


@pytest.fixture
def make_resolver(agent: ConsulTestAgent) -> Iterator[MakeResolver]:
    """Start a ConsulResolver on ``consul://<agent>/<service><query>``; all are closed (and joined) at teardown.

    ``env`` replaces the environment; the default is an empty one, so the machine's CONSUL_* variables
    cannot leak into a test (pass ``os.environ`` to read the real one).
    """
    built: list[ConsulResolver] = []

    def make(query: str = "", *, config: Mapping[str, Any] | None = None, clock: Clock | None = None,
             rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, env: Mapping[str, str] | None = None,
             service: str = "orders", authority: str | None = None,
             agent: ConsulTestAgent | None = None) -> tuple[ConsulResolver, RecordingListener]:
        where = authority if authority is not None else (agent or default_agent).address
        uri = parse_uri(f"consul://{where}/{service}{query}")
        t, c = ConsulResolverBuilder(environ={} if env is None else env).parse(
            uri, ResolverOptions(config=dict(config or {})))
        listener = RecordingListener()
        r = ConsulResolver(t, c, listener, clock or SYSTEM_CLOCK, rate=rate, burst=burst)
        built.append(r)
        r.start()
        return r, listener

    default_agent = agent
    yield make
    for r in built:
        r.close()
    for r in built:
        assert r.join(5), f"{r!r}: thread still running 5 s after close()"
