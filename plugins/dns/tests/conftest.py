"""Fixtures for the DNS plugin: a real Knot DNS server on loopback per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from discovery_dns import DnsResolver, DnsResolverBuilder
from discovery_dns.testing import KnotServer
from dnsplugin_support import MakeResolver

from discovery.resolver import ResolverOptions
from discovery.target import parse_target
from discovery.testing import FakeClock, RecordingListener

# The zone every test starts from (relative to test.internal., default TTL 2 s).
ZONE_RECORDS = [
    "a        A     127.0.0.2",
    "a        A     127.0.0.3",
    "a        A     127.0.0.4",
    "alias    CNAME a",
    "dual     A     127.0.0.2",
    "dual     AAAA  ::1",
    "dual     AAAA  ::ffff:127.0.0.5",
    "long 600 A     127.0.0.2",
    "zero 0   A     127.0.0.2",
    'nodata   TXT   "no addresses here"',
    "loop1    CNAME loop2",
    "loop2    CNAME loop1",
    "b1       A     127.0.0.6",
    "b2       A     127.0.0.7",
    "b2       AAAA  ::1",
    # tier 0 has no resolvable target (dead: no A/AAAA yet, gone: NXDOMAIN); tier 1 does
    "_grpc._tcp.svc  SRV 0 10 50051 dead",
    "_grpc._tcp.svc  SRV 0 20 50052 gone",
    "_grpc._tcp.svc  SRV 1 30 50061 b1",
    "_grpc._tcp.svc  SRV 1 70 50062 b2",
    "_grpc._tcp.svc  SRV 2 5  50071 a",
    'dead     TXT   "not an address"',
    # duplicates: same target and port twice, plus another port
    "_grpc._tcp.dup  SRV 0 10 50051 b1",
    "_grpc._tcp.dup  SRV 0 20 50051 b1",
    "_grpc._tcp.dup  SRV 0 5  50052 b1",
    "_grpc._tcp.none SRV 0 0  0     .",
]

if shutil.which("knotd") is None and not Path("/usr/sbin/knotd").exists():  # pragma: no cover
    if os.environ.get("CI"):
        # In CI a missing DNS server is an install bug, not a reason to skip.
        raise RuntimeError("Knot DNS (knotd) is not installed: apt-get install knot")
    pytest.skip("Knot DNS (knotd) is not installed: apt-get install knot", allow_module_level=True)


@pytest.fixture
def knot(tmp_path: Path, request: pytest.FixtureRequest) -> KnotServer:
    """A fresh ``knotd`` serving test.internal. on 127.0.0.1 at a free port."""
    server = KnotServer(tmp_path / "knot", ZONE_RECORDS, zone="test.internal.")
    request.addfinalizer(server.stop)  # by PID: SIGTERM, then SIGKILL
    server.start()
    return server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_resolver(clock: FakeClock) -> Iterator[MakeResolver]:
    """Build a DnsResolver on the fake clock; every one is closed at teardown.

    ``make_resolver(target, **config)``; ``timeout`` defaults to 1 s (tests
    that expect timeouts pass a shorter one).
    """
    built: list[DnsResolver] = []

    def make(
        target: str, builder: DnsResolverBuilder | None = None, **config: Any
    ) -> tuple[DnsResolver, RecordingListener]:
        config.setdefault("timeout", 1.0)
        listener = RecordingListener()
        resolver = (builder or DnsResolverBuilder()).build(
            parse_target(target), listener, ResolverOptions(config=config, clock=clock)
        )
        built.append(resolver)
        return resolver, listener

    yield make
    for r in built:
        r.close()
    for r in built:
        assert r.join(5), "resolver thread did not stop after close()"
