"""The common case of a balancer, like grpc-go's ``balancer/base``.

A policy built on :class:`BaseBalancer` writes only a picker builder: a
function from :class:`PickerInfo` (the usable backends, and all of them) to a
:class:`~discovery.balancer.Picker`. The base keeps the address set, asks
IDLE backends to connect, rebuilds the picker when something that matters
changes, and publishes a queueing picker while backends connect or a failing
one (naming the backends' states and last connection error) when none can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from . import (
    Balancer,
    BalancerHelper,
    BalancerState,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    QueuePicker,
    SubConn,
    describe_states,
    usable,
)

__all__ = ["BaseBalancer", "PickerInfo", "StaticPicker"]

_C = grpc.ChannelConnectivity


@dataclass(frozen=True, slots=True)
class PickerInfo:
    """What a picker builder gets: ``ready`` (usable backends, resolver order) and
    ``subconns`` (every backend), plus the resolver state the set came from."""

    ready: tuple[SubConn, ...]
    subconns: tuple[SubConn, ...]
    state: BalancerState


class StaticPicker(Picker):
    """Always the same :class:`PickResult` (pick_first's picker, and a building block)."""

    __slots__ = ("_result",)

    def __init__(self, result: PickResult) -> None:
        self._result = result

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        return self._result


class BaseBalancer(Balancer):
    """Calls ``build_picker`` whenever the set of usable backends may have changed.

    ``build_picker`` may return None to mean "nothing to pick"; then the base
    publishes a :class:`QueuePicker` while any backend is connecting, else an
    :class:`ErrorPicker`. With ``connect_all`` (the default) every IDLE backend
    is asked to connect, as round_robin does. Control thread only.
    """

    def __init__(self, helper: BalancerHelper, build_picker: Callable[[PickerInfo], Picker | None],
                 *, connect_all: bool = True) -> None:
        self.helper = helper
        self._build_picker = build_picker
        self._connect_all = connect_all
        self.state = BalancerState(())
        # What the last picker was built from: an update that changes no
        # backend's state (a poll that saw nothing new) publishes nothing.
        self._last_states: tuple[tuple[SubConn, grpc.ChannelConnectivity, bool], ...] | None = None
        self._last_picker: Picker | None = None

    def update_state(self, state: BalancerState) -> None:
        self.state = state
        self._last_states = None
        self._connect_idle()
        self.regenerate()

    def subconn_state(self, subconn: SubConn) -> None:
        if self._connect_all and subconn.state is _C.IDLE:
            subconn.connect()
        self.regenerate()

    def _connect_idle(self) -> None:
        if self._connect_all:
            for sc in self.state.subconns:
                if sc.state is _C.IDLE:
                    sc.connect()

    def regenerate(self, force: bool = False) -> None:
        """Rebuild the picker if any backend's state changed; publish it if it is new.

        A builder that returns the very picker it returned last time (because
        the backends it uses did not change) keeps that picker, and with it
        its rotation.
        """
        subconns = self.state.subconns
        states = tuple((sc, sc.state, sc.healthy) for sc in subconns)
        if not force and states == self._last_states:
            return
        self._last_states = states
        ready = tuple(sc for sc in subconns if usable(sc))
        picker = self._build_picker(PickerInfo(ready, subconns, self.state))
        if picker is not None and picker is self._last_picker:
            return
        self._last_picker = picker
        if picker is not None and not isinstance(picker, ErrorPicker | QueuePicker):
            self.helper.update_picker(_C.READY, picker)
        elif picker is not None:
            self.helper.update_picker(_C.CONNECTING if picker.queue else _C.TRANSIENT_FAILURE, picker)
        elif any(sc.state is _C.CONNECTING or sc.state is _C.IDLE for sc in subconns) and subconns:
            self.helper.update_picker(_C.CONNECTING, QueuePicker(describe_states(subconns)))
        else:
            self.helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker(describe_states(subconns)))
