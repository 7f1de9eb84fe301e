"""Writing a balancer: a policy of your own that hears how every attempt ended.

Run it with ``python -m examples.custom_balancer``. It starts two echo backends on
loopback (one fails its first RPC with UNAVAILABLE), registers the ``tally``
policy, sends one RPC of each call shape through a channel whose service config
selects ``tally`` and retries UNAVAILABLE, then prints what the policy's
``done`` callbacks saw: one line per attempt, the retried one included.

``tally`` is round robin (built on :class:`discovery.balancer.base.BaseBalancer`,
so it writes only a picker) whose picks carry a ``done`` callback. The channel
calls it exactly once per pick, on whatever thread ended the attempt, with a
:class:`discovery.balancer.DoneInfo`: the status code, the latency from the
pick, and the trailing metadata of the attempt; or ``NOT_ATTEMPTED``
(``info.attempted`` False) for a pick the channel did not use (say, a re-pick
that avoided a backend already tried), which ``tally`` counts apart. README,
"Writing a balancer", walks through it.
"""

from __future__ import annotations

import functools
import itertools
import random
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import grpc

import discovery
from discovery.balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    DoneInfo,
    Metadata,
    Picker,
    PickResult,
    SubConn,
)
from discovery.balancer.base import BaseBalancer, PickerInfo

__all__ = ["Tally", "TallyBuilder", "TallyPicker", "main"]


class Tally:
    """Every attempt's (backend address, DoneInfo), in the order they ended. Thread-safe:
    ``done`` callbacks run on RPC threads, grpc's threads and event loops alike."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: list[tuple[str, DoneInfo]] = []
        self.unused = 0  # picks the channel did not send an attempt with

    def record(self, addr: str, info: DoneInfo) -> None:
        # A done callback must not block: append under a short lock and return.
        with self._lock:
            if info.attempted:
                self._seen.append((addr, info))
            else:
                self.unused += 1

    def seen(self) -> list[tuple[str, DoneInfo]]:
        with self._lock:
            return list(self._seen)


class TallyPicker(Picker):
    """Round robin over the usable backends; each pick's ``done`` records the attempt.

    Immutable and lock-free, as a picker must be: the results are built once, and
    ``next()`` on an ``itertools.count`` is atomic under the GIL.
    """

    __slots__ = ("_next", "_results")

    def __init__(self, ready: Sequence[SubConn], tally: Tally) -> None:
        self._results = tuple(PickResult(sc, functools.partial(tally.record, sc.addr)) for sc in ready)
        self._next = itertools.count(random.randrange(len(self._results)))

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return self._results[next(self._next) % len(self._results)]


class TallyBuilder(BalancerBuilder):
    """The ``tally`` policy. One :class:`Tally` per builder, shared by its balancers."""

    name: ClassVar[str] = "tally"

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = tally or Tally()

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        def build_picker(info: PickerInfo) -> Picker | None:
            # None: nothing usable; the base then queues RPCs while backends connect,
            # or fails them fast naming the backends' states.
            return TallyPicker(info.ready, self.tally) if info.ready else None

        return BaseBalancer(helper, build_picker)


def main() -> None:
    from discovery.testing import wait_for, wait_ready
    from discovery.testing.servers import BackendServer, EchoStub, static_target

    servers = [BackendServer(name=name).start() for name in ("alpha", "beta")]
    for s in servers:
        s.trailing_metadata = (("x-served-by", s.name),)
    builder = TallyBuilder()
    discovery.register_balancer(builder, replace=True)  # or an entry point in group discovery.balancers
    service_config = {
        "loadBalancingConfig": [{"tally": {}}],
        "methodConfig": [{"name": [{}], "retryPolicy": {
            "maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.2s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"]}}],
    }
    try:
        with discovery.insecure_channel(static_target(servers), service_config=service_config) as channel:
            wait_ready(channel, 2)
            servers[0].fail_next(grpc.StatusCode.UNAVAILABLE)  # alpha's next RPC fails: retried on beta
            stub = EchoStub(channel)
            stub.Unary(b"", timeout=10)
            stub.Unary.with_call(b"", timeout=10)
            stub.Unary.future(b"", timeout=10).result()
            list(stub.ServerStream(b"2", timeout=10))
            stub.ClientStream(iter([b"a", b"b"]), timeout=10)
            list(stub.Bidi(iter([b"a"]), timeout=10))
            attempts = sum(s.total for s in servers)
            # Futures and streams report when grpc ends the call, which may come just after the reply.
            wait_for(lambda: len(builder.tally.seen()) == attempts, 5)
    finally:
        for s in servers:
            s.stop()
        discovery.unregister_balancer("tally")
    print(f"{'backend':8} {'status':12} {'latency':>9}  trailing metadata")
    for addr, info in builder.tally.seen():
        name = next(s.name for s in servers if s.addr == addr)
        print(f"{name:8} {info.code.name:12} {info.latency * 1000:7.1f}ms  {dict(info.trailing_metadata)}")


if __name__ == "__main__":
    main()
