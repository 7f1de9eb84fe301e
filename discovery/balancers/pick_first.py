"""``pick_first``: one connection at a time, in resolver order, sticky while it works.

Config (gRPC's, gRFC A62): ``shuffleAddressList`` (default false) shuffles
each new address list before trying it, so that many clients given the same
list do not all pick its first address.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, ClassVar

import grpc

from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    ErrorPicker,
    PickResult,
    QueuePicker,
    SubConn,
    describe_states,
    usable,
)
from ..balancer.base import StaticPicker
from ..errors import ConfigError

__all__ = ["PickFirstBuilder", "PickFirstConfig"]

_C = grpc.ChannelConnectivity


class PickFirstConfig:
    __slots__ = ("shuffle",)

    def __init__(self, shuffle: bool = False) -> None:
        self.shuffle = shuffle


class PickFirst(Balancer):
    def __init__(self, helper: BalancerHelper, config: PickFirstConfig, rng: random.Random | None = None) -> None:
        self._helper = helper
        self._config = config
        self._rng = rng or random.Random()
        self._order: tuple[SubConn, ...] = ()
        self._selected: SubConn | None = None
        self._published: object = None

    def update_state(self, state: BalancerState) -> None:
        order = list(state.subconns)
        if self._config.shuffle:
            self._rng.shuffle(order)
        self._order = tuple(order)
        self._regenerate()

    def subconn_state(self, subconn: SubConn) -> None:
        self._regenerate()

    def _regenerate(self) -> None:
        backends = self._order
        sel = self._selected
        if sel is None or sel not in backends or not usable(sel):
            sel = next((b for b in backends if usable(b)), None)
        if sel is not None:
            if sel is not self._selected or self._published is not sel:
                self._selected = sel
                self._published = sel
                self._helper.update_picker(_C.READY, StaticPicker(PickResult(sel)))
            return
        self._selected = None
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
            self._publish_failure(_C.TRANSIENT_FAILURE)
            return
        self._publish_failure(_C.CONNECTING)

    def _publish_failure(self, state: grpc.ChannelConnectivity) -> None:
        reason = describe_states(self._order)
        key = (state, reason)
        if self._published == key:
            return
        self._published = key
        picker = QueuePicker(reason) if state is _C.CONNECTING else ErrorPicker(reason)
        self._helper.update_picker(state, picker)


class PickFirstBuilder(BalancerBuilder):
    name: ClassVar[str] = "pick_first"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> PickFirstConfig:
        unknown = set(config) - {"shuffleAddressList"}
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for pick_first; "
                              "expected shuffleAddressList", key_path=key_path)
        shuffle = config.get("shuffleAddressList", False)
        if not isinstance(shuffle, bool):
            raise ConfigError(f"expected true or false, got {shuffle!r}", key_path=f"{key_path}.shuffleAddressList")
        return PickFirstConfig(shuffle)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return PickFirst(helper, config if isinstance(config, PickFirstConfig) else PickFirstConfig())
