"""``pick_first``: one connection at a time, in resolver order, sticky while it works."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import grpc

from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    ErrorPicker,
    Metadata,
    Picker,
    QueuePicker,
    SubConn,
    describe_states,
)

__all__ = ["PickFirstBuilder"]

_C = grpc.ChannelConnectivity


def pickable(b: SubConn) -> bool:
    """READY, healthy and not ejected: the only backends a picker may return."""
    return b.state is _C.READY and b.healthy and not b.ejected


class FixedPicker(Picker):
    """Always the same backend."""

    __slots__ = ("_backend",)

    def __init__(self, backend: SubConn) -> None:
        self._backend = backend

    def pick(self, method: str, metadata: Metadata | None) -> SubConn | None:
        return self._backend


class PickFirst(Balancer):
    def __init__(self, helper: BalancerHelper) -> None:
        self._helper = helper
        self._selected: SubConn | None = None

    def update(self, backends: Sequence[SubConn]) -> None:
        sel = self._selected
        if sel is None or sel not in backends or not pickable(sel):
            sel = next((b for b in backends if pickable(b)), None)
            self._selected = sel
        if sel is not None:
            self._helper.update_picker(_C.READY, FixedPicker(sel))
            return
        # Like gRPC's pick_first: try addresses in order, moving on only when
        # the one before has failed. Backend channels retry failed connections
        # themselves with gRPC's backoff, so a TRANSIENT_FAILURE one is skipped.
        for b in backends:
            if b.state is _C.IDLE:
                b.connect()
                break
            if b.state is _C.CONNECTING:
                break
        else:
            self._helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker(describe_states(backends)))
            return
        self._helper.update_picker(_C.CONNECTING, QueuePicker(describe_states(backends)))


class PickFirstBuilder(BalancerBuilder):
    name: ClassVar[str] = "pick_first"

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return PickFirst(helper)
