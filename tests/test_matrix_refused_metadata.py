"""Metadata grpcio refuses on the client (a value that is not str/bytes, an illegal key), on
every call shape and policy: the RPC ends with grpc's own error, and no attempt stays
counted in flight.

grpc.aio raises such an error from the await but leaves its call running, never done
(so its done-callbacks never fire and grpc's channel keeps it in its registry). An
attempt left like that would hold its backend's in-flight count forever, so a
drained backend would wait out the whole drain grace, and metrics would show an
RPC in flight that is not. The channel cancels such an attempt
(``calls.context.abandon``).
"""

from __future__ import annotations

from typing import Any

import pytest
from callshapes import SHAPES, is_aio, method_config

from discovery.testing.servers import static_target

POLICIES: dict[str, Any] = {
    "none": None,
    "retry": method_config(retryPolicy={"maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}),
    "hedging": method_config(hedgingPolicy={"maxAttempts": 2, "hedgingDelay": "0.05s"}),
}
REFUSED = {"a value that is not a string": [("k", 5)], "an illegal key": [("Bad Key", "v")]}


@pytest.mark.parametrize("metadata", list(REFUSED), ids=list(REFUSED))
@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_refused_metadata_fails_the_rpc_and_closes_the_books(shape, policy, metadata, start_backends,  # type: ignore[no-untyped-def]
                                                             clients) -> None:
    (s,) = start_backends(1)
    c = clients(shape, static_target([s]), service_config=POLICIES[policy])
    assert c.call(shape, wait_for_ready=True).ok
    pending = c.start(shape, metadata=REFUSED[metadata])
    try:
        out = pending.result(10)  # ends, never hangs
    except Exception as exc:  # grpc's own local error, as grpcio/grpc.aio raise it
        if is_aio(shape) and metadata == "a value that is not a string":
            assert isinstance(exc, TypeError), exc
    else:
        assert not out.ok, out
    c.wait_idle()
    assert c.call(shape).ok  # the channel is fine afterwards
