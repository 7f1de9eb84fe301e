"""Shared fixtures: real backend servers on loopback and a manual resolver."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import discovery
from discovery.testing import ManualResolverBuilder
from discovery.testing.servers import BackendServer


@pytest.fixture
def start_backends() -> Iterator[Callable[..., list[BackendServer]]]:
    """``start_backends(n)`` starts n echo+health servers on 127.0.0.1; all stop at teardown."""
    started: list[BackendServer] = []

    def start(n: int, host: str = "127.0.0.1", port: int = 0) -> list[BackendServer]:
        out = [BackendServer(host, port, name=None).start() for _ in range(n)]
        started.extend(out)
        return out

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def manual() -> Iterator[ManualResolverBuilder]:
    """A manual resolver registered for the ``manual`` scheme during one test."""
    builder = ManualResolverBuilder("manual")
    discovery.register_resolver(builder, scheme="manual", replace=True)
    yield builder
    discovery.unregister_resolver("manual")
