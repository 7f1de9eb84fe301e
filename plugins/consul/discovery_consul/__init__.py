"""Consul resolver plugin for grpc-discovery: ``consul://`` targets, health-filtered blocking queries.

Registered under the ``discovery.resolvers`` entry-point group as ``consul``
(``discovery_consul:ConsulResolverBuilder``); the core never imports this
package by name. Needs py-consul (``pip install discovery-consul`` pulls it
in). :mod:`discovery_consul.testing` is an in-process Consul agent for tests.
"""

from __future__ import annotations

try:
    import consul as _consul
    import requests as _requests
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the consul: resolver needs py-consul: pip install py-consul "
        "(or pip install discovery-consul, which depends on it)"
    ) from _exc

del _consul, _requests

from ._config import (  # noqa: E402
    DEFAULT_PORT,
    DEFAULT_WAIT,
    MAX_WAIT,
    ConsulConfig,
    ConsulTarget,
    parse_config,
    parse_target,
)
from ._resolver import (  # noqa: E402
    DEFAULT_BURST,
    DEFAULT_RATE,
    ConsulResolver,
    ConsulResolverBuilder,
    TokenBucket,
    entries_to_state,
    next_index,
)

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_PORT",
    "DEFAULT_RATE",
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "ConsulConfig",
    "ConsulResolver",
    "ConsulResolverBuilder",
    "ConsulTarget",
    "TokenBucket",
    "entries_to_state",
    "next_index",
    "parse_config",
    "parse_target",
]
