"""Types shared by the Consul plugin's tests (a module of its own: test modules must not import conftest)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from discovery_consul import DEFAULT_BURST, DEFAULT_RATE, ConsulResolver
from discovery_consul.testing import ConsulTestAgent

from discovery.clock import Clock
from discovery.testing import RecordingListener


class MakeAgent(Protocol):
    def __call__(self, *, host: str = "127.0.0.1", acl_default_policy: str | None = None,
                 tokens: Mapping[str, tuple[str, ...]] | None = None) -> ConsulTestAgent: ...


class MakeResolver(Protocol):
    def __call__(self, query: str = "", *, config: Mapping[str, Any] | None = None, clock: Clock | None = None,
                 rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, env: Mapping[str, str] | None = None,
                 service: str = "orders", authority: str | None = None,
                 agent: ConsulTestAgent | None = None) -> tuple[ConsulResolver, RecordingListener]: ...
