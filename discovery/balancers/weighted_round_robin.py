"""``weighted_round_robin`` (gRFC A58): backends in turn, each as often as its weight says.

gRPC's spelling ``weighted_round_robin_experimental`` selects it too. The
scheduler is A58's earliest-deadline-first one
(:class:`~discovery.balancer.weights.EdfPicker`), rebuilt every
``weightUpdatePeriod`` with the current weights.

Weights, in order of precedence:

1. **ORCA load reports** (``enableOobLoadReport: true``): the policy opens
   ``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`` to each READY
   backend, asking for a report every ``oobReportingPeriod``, and sets
   weight = qps / (utilization + eps/qps x ``errorUtilizationPenalty``),
   utilization being ``application_utilization``, else ``cpu_utilization``
   (A58's formula; a report with no qps or no utilization is ignored). A
   weight counts only after ``blackoutPeriod`` of reports (again after each
   reconnection) and lapses ``weightExpirationPeriod`` after the last one.
   Once any backend has a weight, A58's rules apply: backends without one
   get the mean of the others; with fewer than two weights, plain rotation.
   Python servers report with :mod:`discovery.orca`.
2. **The registry** (beyond A58): while no backend has an ORCA weight,
   ``Address.weight`` (static ``weights``/``endpoints``, SRV weight, Consul
   ``Weights``) is the weight; 0 means a hundredth of the smallest positive
   weight.

A58's per-call reports (the ``endpoint-load-metrics-bin`` trailer) cannot
be used from Python: grpcio's core consumes that trailer, and the
application never sees it. Without ``enableOobLoadReport`` the weights are
the registry's.

Config: A58's ``enableOobLoadReport`` (false), ``oobReportingPeriod``
(``"10s"``), ``blackoutPeriod`` (``"10s"``), ``weightExpirationPeriod``
(``"180s"``), ``weightUpdatePeriod`` (``"1s"``, at least 0.1 s),
``errorUtilizationPenalty`` (1.0, >= 0), plus ``slowStart``
(:mod:`discovery.balancer.weights`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
from google.protobuf.message import DecodeError

from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    Cancellable,
    Picker,
    PickResult,
    StreamHandle,
    SubConn,
)
from ..balancer.base import PickerInfo
from ..balancer.weights import EdfPicker, SlowStart, SlowStartBalancer
from ..durations import parse_duration
from ..errors import ConfigError
from .round_robin import RoundRobinPicker

__all__ = ["WeightedRoundRobinBuilder", "WrrConfig"]

log = logging.getLogger(__name__)

_READY = grpc.ChannelConnectivity.READY


@dataclass(frozen=True, slots=True)
class WrrConfig:
    enable_oob: bool = False
    oob_period: float = 10.0
    blackout: float = 10.0
    expiration: float = 180.0
    update_period: float = 1.0
    error_penalty: float = 1.0
    slow_start: SlowStart | None = None


class _Backend:
    """One backend's ORCA weight (A58's endpointWeight) and its out-of-band stream. Control thread."""

    __slots__ = ("backoff", "last_updated", "non_empty_since", "retry", "stream", "unsupported", "weight")

    def __init__(self) -> None:
        self.weight = 0.0
        self.non_empty_since: float | None = None
        self.last_updated = 0.0
        self.stream: StreamHandle | None = None
        self.retry: Cancellable | None = None
        self.backoff = 1.0
        self.unsupported = False

    def update(self, qps: float, eps: float, utilization: float, cfg: WrrConfig, now: float) -> None:
        if utilization <= 0 or qps <= 0:
            return  # A58: ignored
        self.weight = qps / (utilization + eps / qps * cfg.error_penalty)
        self.last_updated = now
        if self.non_empty_since is None:
            self.non_empty_since = now

    def current(self, now: float, cfg: WrrConfig) -> float:
        """The weight to use now: 0 before the blackout ends, and once the last report expired."""
        since = self.non_empty_since
        if since is None:
            return 0.0
        if now - self.last_updated >= cfg.expiration:
            self.non_empty_since = None  # the next report starts a new blackout
            return 0.0
        if cfg.blackout > 0 and now - since < cfg.blackout:
            return 0.0
        return self.weight

    def stop(self) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stream = None
        if self.retry is not None:
            self.retry.cancel()
            self.retry = None


class WeightedRoundRobin(SlowStartBalancer):
    def __init__(self, helper: BalancerHelper, cfg: WrrConfig) -> None:
        super().__init__(helper, self._picker, cfg.slow_start)
        self.cfg = cfg
        self.backends: dict[SubConn, _Backend] = {}
        self._last: tuple[tuple[SubConn, ...], Picker] | None = None
        self._update_timer: Cancellable | None = None
        self._closing = False
        if cfg.enable_oob:
            self._update_timer = helper.schedule(cfg.update_period, self._periodic)
        else:
            log.debug("weighted_round_robin for %s without enableOobLoadReport: registry weights only "
                      "(per-call ORCA trailers never reach Python)", helper.target)

    # -- Balancer -------------------------------------------------------------------------

    def update_state(self, state: BalancerState) -> None:
        live = set(state.subconns)
        for sc in [sc for sc in self.backends if sc not in live]:
            self.backends.pop(sc).stop()
        for sc in state.subconns:
            self.backends.setdefault(sc, _Backend())
        super().update_state(state)
        self._sync_streams()

    def subconn_state(self, subconn: SubConn) -> None:
        be = self.backends.get(subconn)
        if be is not None and subconn.state is not _READY:
            # A58: a backend that reconnects starts a new blackout.
            be.non_empty_since = None
            be.stop()
            be.unsupported = False
            be.backoff = 1.0
        super().subconn_state(subconn)
        self._sync_streams()

    def close(self) -> None:
        self._closing = True
        if self._update_timer is not None:
            self._update_timer.cancel()
        for be in self.backends.values():
            be.stop()
        super().close()

    # -- weights ---------------------------------------------------------------------------

    def weights(self) -> dict[str, float]:
        """Each backend's ORCA weight in effect now (0: none yet, or expired), by address."""
        now = self.helper.clock.monotonic()
        return {sc.addr: be.current(now, self.cfg) for sc, be in self.backends.items()}

    def _periodic(self) -> None:
        if self._closing:
            return
        self.regenerate(force=True)
        self._update_timer = self.helper.schedule(self.cfg.update_period, self._periodic)

    def _picker(self, info: PickerInfo) -> Picker | None:
        ready = info.ready
        if not ready:
            self._last = None
            return None
        now = self.helper.clock.monotonic()
        orca = [self.backends[sc].current(now, self.cfg) if sc in self.backends else 0.0 for sc in ready]
        have = [w for w in orca if w > 0]
        if have:
            if len(ready) - len(have) >= len(ready) - 1:
                weights = [1.0] * len(ready)  # A58: fewer than two weights, plain rotation
            else:
                mean = sum(have) / len(have)
                weights = [w if w > 0 else mean for w in orca]
        else:
            reg = [float(sc.address.weight) for sc in ready]
            positive = [w for w in reg if w > 0]
            floor = min(positive) / 100 if positive else 1.0
            weights = [w if w > 0 else floor for w in reg]
        ramp = self.ramp
        if ramp is not None and ramp.ramping:
            weights = [w * ramp.factor(sc.addr) for w, sc in zip(weights, ready, strict=True)]
        if max(weights) == min(weights):
            key = tuple(ready)
            if self._last is None or self._last[0] != key:
                self._last = (key, RoundRobinPicker(key))
            return self._last[1]
        self._last = None
        return EdfPicker([PickResult(sc) for sc in ready], weights)

    # -- out-of-band reports (control thread) ---------------------------------------------------

    def _sync_streams(self) -> None:
        if not self.cfg.enable_oob or self._closing:
            return
        for sc, be in self.backends.items():
            if sc.state is _READY and be.stream is None and be.retry is None and not be.unsupported:
                self._open(sc, be)

    def _open(self, sc: SubConn, be: _Backend) -> None:
        from ..orca import OOB_METHOD, report_request

        be.retry = None
        be.stream = self.helper.open_stream(
            sc, OOB_METHOD, report_request(self.cfg.oob_period),
            lambda msg: self._on_report(sc, be, msg), lambda code, details: self._on_end(sc, be, code, details))

    def _on_report(self, sc: SubConn, be: _Backend, msg: bytes) -> None:
        from ..orca import parse_report

        if self.backends.get(sc) is not be:
            return
        try:
            r = parse_report(msg)
        except DecodeError:
            log.warning("backend %s of %s sent a load report that does not parse", sc.addr, self.helper.target)
            return
        be.backoff = 1.0
        util = r.application_utilization or r.cpu_utilization
        be.update(r.rps_fractional, r.eps, util, self.cfg, self.helper.clock.monotonic())

    def _on_end(self, sc: SubConn, be: _Backend, code: grpc.StatusCode, details: str) -> None:
        be.stream = None
        if self._closing or self.backends.get(sc) is not be or sc.state is not _READY:
            return
        if code is grpc.StatusCode.UNIMPLEMENTED:
            # Like grpc-go's ORCA producer: a server without the service is not asked again (until it reconnects).
            be.unsupported = True
            log.info("backend %s of %s does not serve ORCA load reports: %s", sc.addr, self.helper.target,
                     details)
            return
        delay, be.backoff = be.backoff, min(be.backoff * 2, 30.0)
        be.retry = self.helper.schedule(delay, lambda: self._retry(sc, be))

    def _retry(self, sc: SubConn, be: _Backend) -> None:
        be.retry = None
        if not self._closing and self.backends.get(sc) is be and sc.state is _READY and be.stream is None:
            self._open(sc, be)


def _duration(raw: Mapping[str, Any], key: str, default: str, key_path: str) -> float:
    return parse_duration(raw.get(key, default), key_path=f"{key_path}.{key}")


class WeightedRoundRobinBuilder(BalancerBuilder):
    name: ClassVar[str] = "weighted_round_robin"

    KEYS = frozenset({"enableOobLoadReport", "oobReportingPeriod", "blackoutPeriod", "weightExpirationPeriod",
                      "weightUpdatePeriod", "errorUtilizationPenalty", "slowStart"})

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> WrrConfig:
        unknown = set(config) - self.KEYS
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for weighted_round_robin; "
                              f"expected some of {sorted(self.KEYS)}", key_path=key_path)
        oob = config.get("enableOobLoadReport", False)
        if not isinstance(oob, bool):
            raise ConfigError(f"expected true or false, got {oob!r}", key_path=f"{key_path}.enableOobLoadReport")
        penalty = config.get("errorUtilizationPenalty", 1.0)
        if not isinstance(penalty, int | float) or isinstance(penalty, bool) or penalty < 0:
            raise ConfigError(f"expected a number >= 0, got {penalty!r}",
                              key_path=f"{key_path}.errorUtilizationPenalty")
        period = _duration(config, "oobReportingPeriod", "10s", key_path)
        if period <= 0:
            raise ConfigError("oobReportingPeriod must be > 0", key_path=f"{key_path}.oobReportingPeriod")
        slow = SlowStart.parse(config["slowStart"], f"{key_path}.slowStart") if "slowStart" in config else None
        return WrrConfig(
            enable_oob=oob,
            oob_period=period,
            blackout=_duration(config, "blackoutPeriod", "10s", key_path),
            expiration=_duration(config, "weightExpirationPeriod", "180s", key_path),
            # A58: weightUpdatePeriod below 100 ms is raised to 100 ms.
            update_period=max(0.1, _duration(config, "weightUpdatePeriod", "1s", key_path)),
            error_penalty=float(penalty),
            slow_start=slow,
        )

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return WeightedRoundRobin(helper, config if isinstance(config, WrrConfig) else WrrConfig())
