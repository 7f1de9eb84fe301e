"""``outlier_detection``: eject backends whose RPCs fail, around any child policy.

The config is gRFC A50's (``interval``, ``baseEjectionTime``,
``maxEjectionTime``, ``maxEjectionPercent``, ``successRateEjection``,
``failurePercentageEjection``, ``childPolicy``) plus two extensions:
``consecutiveErrors`` (Envoy's consecutive_5xx: eject at once after N failures
in a row, default 5, 0 turns it off) and ``failureStatusCodes`` (which statuses
count as failures; UNAVAILABLE, INTERNAL, UNKNOWN and DEADLINE_EXCEEDED by
default).

Outcomes are counted from the ``done`` callback of every pick the child's
pickers make, on every call shape. An ejected backend stays connected; the
child sees it as unhealthy (as gRFC A50 hides it), so any child policy,
third-party ones included, skips it without knowing about ejection. It comes
back after ``baseEjectionTime`` x (times ejected), capped at
``max(baseEjectionTime, maxEjectionTime)``; each interval without an ejection
lowers that multiplier again. Ejections stop while ``maxEjectionPercent`` of
the backends are ejected, but one can always be ejected.
"""

from __future__ import annotations

import logging
import random
import statistics
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import (
    DEFAULT_FAILURE_CODES,
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    DelegatingHelper,
    DoneInfo,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    QueuePicker,
    SubConn,
    SubConnView,
    build_child,
)
from ..config import select_policy
from ..durations import parse_duration
from ..errors import ConfigError

__all__ = ["OutlierDetectionBuilder", "OutlierDetectionConfig"]

log = logging.getLogger("discovery.balancer.outlier_detection")

_CANCELLED = grpc.StatusCode.CANCELLED


@dataclass(frozen=True, slots=True)
class SuccessRate:
    stdev_factor: float = 1.9
    enforcement: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100


@dataclass(frozen=True, slots=True)
class FailurePercentage:
    threshold: int = 85
    enforcement: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    interval: float = 10.0
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 10
    success_rate: SuccessRate | None = None
    failure_percentage: FailurePercentage | None = None
    consecutive_errors: int = 5
    failure_codes: frozenset[grpc.StatusCode] = DEFAULT_FAILURE_CODES
    child: str = "round_robin"
    child_config: Any = None


def _int(raw: Mapping[str, Any], key: str, default: int, path: str, lo: int, hi: int | None = None) -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        span = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"expected an integer {span}, got {v!r}", key_path=f"{path}.{key}")
    return v


def _section(raw: Any, path: str, keys: set[str]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected an object, got {raw!r}", key_path=path)
    unknown = set(raw) - keys
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(keys)}", key_path=path)
    return raw


class _Stats:
    """One backend's outcome counters, written by ``done`` callbacks on RPC threads."""

    __slots__ = ("consecutive", "failures", "lock", "successes")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.successes = 0
        self.failures = 0
        self.consecutive = 0

    def take(self) -> tuple[int, int]:
        with self.lock:
            out = (self.successes, self.failures)
            self.successes = self.failures = 0
            return out


class _State:
    __slots__ = ("ejected_at", "multiplier", "stats", "view")

    def __init__(self, view: SubConnView) -> None:
        self.view = view
        self.stats = _Stats()
        self.ejected_at: float | None = None
        self.multiplier = 0


class _Picker(Picker):
    """The child's picker, with each pick's ``done`` wrapped to count its outcome."""

    __slots__ = ("_child", "_od", "queue", "reason")

    def __init__(self, child: Picker, od: OutlierDetection) -> None:
        self._child = child
        self._od = od
        self.queue = child.queue
        self.reason = child.reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        r = self._child.pick(method, metadata)
        if r is None:
            return None
        st = self._od.by_backend.get(r.subconn.backend)
        if st is None:  # a backend the child kept from an older address set
            return r
        record = st.stats
        od = self._od
        inner = r.done

        def done(info: DoneInfo) -> None:
            if info.attempted:  # a pick the channel did not use says nothing about the backend
                od.record(st, record, info)
            if inner is not None:
                inner(info)

        return PickResult(r.subconn, done)

    def why_none(self, method: str, metadata: Metadata | None) -> tuple[bool, str]:
        return self._child.why_none(method, metadata)


class _ChildHelper(DelegatingHelper):
    def __init__(self, od: OutlierDetection) -> None:
        super().__init__(od.helper)
        self._od = od

    def update_picker(self, state: grpc.ChannelConnectivity, picker: Picker) -> None:
        if not isinstance(picker, ErrorPicker | QueuePicker):
            picker = _Picker(picker, self._od)
        self._od.helper.update_picker(state, picker)


class OutlierDetection(Balancer):
    """Counts every attempt's outcome through the child's pickers and hides ejected
    backends from the child (as unhealthy), so any child policy works unchanged."""

    def __init__(self, helper: BalancerHelper, cfg: OutlierDetectionConfig) -> None:
        self.helper = helper
        self._cfg = cfg
        self._child = build_child(_ChildHelper(self), cfg.child, cfg.child_config)
        self._states: dict[str, _State] = {}
        # Read by pickers on RPC threads: replaced whole, never mutated.
        self.by_backend: dict[object, _State] = {}
        self._closed = False
        self.ticks = 0  # intervals evaluated so far (tests wait on it)
        self._timer = helper.schedule(cfg.interval, self._tick)

    # -- Balancer -----------------------------------------------------------

    def update_state(self, state: BalancerState) -> None:
        live = {sc.addr: sc for sc in state.subconns}
        for addr in list(self._states):
            if addr not in live:
                del self._states[addr]
        views = []
        for addr, sc in live.items():
            st = self._states.get(addr)
            if st is None or st.view.inner is not sc:
                old = st
                st = self._states[addr] = _State(SubConnView(sc))
                if old is not None:
                    # A backend object re-created for a known address keeps its ejection.
                    st.ejected_at, st.multiplier = old.ejected_at, old.multiplier
                    st.view.excluded = old.view.excluded
                    if st.view.excluded:
                        self.helper.report_ejection(sc, True)
            views.append(st.view)
        self.by_backend = {st.view.backend: st for st in self._states.values()}
        self._child.update_state(BalancerState(tuple(views), state.resolver_state, self._cfg.child_config))

    def subconn_state(self, subconn: SubConn) -> None:
        st = self._states.get(subconn.addr)
        if st is not None:
            self._child.subconn_state(st.view)

    def resolver_error(self, error: Exception) -> None:
        self._child.resolver_error(error)

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        self._child.close()

    # -- outcomes (any thread) ------------------------------------------------

    def record(self, st: _State, stats: _Stats, info: DoneInfo) -> None:
        failed = info.code in self._cfg.failure_codes
        if info.code is _CANCELLED and not failed:
            # Cancelled by this client (a losing hedge, the application): it says nothing
            # about the backend. Counted as a success, a slow backend whose hedges always
            # lose would look perfect and reset its run of consecutive errors.
            return
        limit = self._cfg.consecutive_errors
        with stats.lock:
            if failed:
                stats.failures += 1
                stats.consecutive += 1
                hit = stats.consecutive == limit
            else:
                stats.successes += 1
                stats.consecutive = 0
                hit = False
        if hit:
            # Ejection changes what the child sees: that is control-thread work.
            self.helper.schedule(0.0, lambda: self._on_consecutive(st))

    # -- ejection (control thread) ----------------------------------------------

    def _may_eject(self) -> bool:
        n = len(self._states)
        ejected = sum(1 for st in self._states.values() if st.view.excluded)
        return n > 0 and ejected * 100 < self._cfg.max_ejection_percent * n

    def _set_excluded(self, st: _State, excluded: bool) -> None:
        st.view.excluded = excluded
        with st.stats.lock:
            st.stats.consecutive = 0
        self.helper.report_ejection(st.view.inner, excluded)
        self._child.subconn_state(st.view)

    def _eject(self, st: _State, why: str) -> None:
        st.ejected_at = self.helper.clock.monotonic()
        st.multiplier += 1
        log.warning("ejecting backend %s of %s for %.0fs: %s", st.view.addr, self.helper.target,
                    self._ejection_time(st), why, extra={"target": self.helper.target, "backend": st.view.addr})
        self._set_excluded(st, True)

    def _ejection_time(self, st: _State) -> float:
        cfg = self._cfg
        return min(cfg.base_ejection * st.multiplier, max(cfg.base_ejection, cfg.max_ejection))

    def _on_consecutive(self, st: _State) -> None:
        if self._closed or st.view.excluded or self._states.get(st.view.addr) is not st or not self._may_eject():
            return
        self._eject(st, f"{self._cfg.consecutive_errors} consecutive failures")

    def _tick(self) -> None:
        if self._closed:
            return
        cfg = self._cfg
        counts = {st: st.stats.take() for st in self._states.values()}
        if cfg.success_rate is not None:
            self._success_rate(cfg.success_rate, counts)
        if cfg.failure_percentage is not None:
            self._failure_percentage(cfg.failure_percentage, counts)
        now = self.helper.clock.monotonic()
        for st in list(self._states.values()):
            if st.ejected_at is None:
                st.multiplier = max(0, st.multiplier - 1)
            elif now >= st.ejected_at + self._ejection_time(st):
                st.ejected_at = None
                log.info("backend %s of %s returns from ejection", st.view.addr, self.helper.target,
                         extra={"target": self.helper.target, "backend": st.view.addr})
                self._set_excluded(st, False)
        self.ticks += 1
        self._timer = self.helper.schedule(cfg.interval, self._tick)

    def _success_rate(self, sr: SuccessRate, counts: dict[_State, tuple[int, int]]) -> None:
        volume = {st: s + f for st, (s, f) in counts.items() if s + f >= sr.request_volume}
        if len(volume) < sr.minimum_hosts:
            return
        rates = {st: counts[st][0] / v for st, v in volume.items()}
        mean = statistics.fmean(rates.values())
        threshold = mean - statistics.pstdev(rates.values()) * sr.stdev_factor
        for st, rate in rates.items():
            if (rate < threshold and not st.view.excluded and self._may_eject()
                    and random.randrange(100) < sr.enforcement):
                self._eject(st, f"success rate {rate:.1%} below {threshold:.1%}")

    def _failure_percentage(self, fp: FailurePercentage, counts: dict[_State, tuple[int, int]]) -> None:
        volume = {st: s + f for st, (s, f) in counts.items() if s + f >= fp.request_volume}
        if len(volume) < fp.minimum_hosts:
            return
        for st, v in volume.items():
            pct = 100 * counts[st][1] / v
            if (pct > fp.threshold and not st.view.excluded and self._may_eject()
                    and random.randrange(100) < fp.enforcement):
                self._eject(st, f"{pct:.0f}% of {v} RPCs failed (threshold {fp.threshold}%)")


class OutlierDetectionBuilder(BalancerBuilder):
    name: ClassVar[str] = "outlier_detection"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> OutlierDetectionConfig:
        from ..methodconfig import parse_codes

        raw = _section(config, key_path, {
            "interval", "baseEjectionTime", "maxEjectionTime", "maxEjectionPercent", "successRateEjection",
            "failurePercentageEjection", "childPolicy", "consecutiveErrors", "failureStatusCodes"})
        d = OutlierDetectionConfig()
        sr = fp = None
        if "successRateEjection" in raw:
            p = f"{key_path}.successRateEjection"
            s = _section(raw["successRateEjection"], p,
                         {"stdevFactor", "enforcementPercentage", "minimumHosts", "requestVolume"})
            sr = SuccessRate(_int(s, "stdevFactor", 1900, p, 0) / 1000,
                             _int(s, "enforcementPercentage", 100, p, 0, 100),
                             _int(s, "minimumHosts", 5, p, 1), _int(s, "requestVolume", 100, p, 1))
        if "failurePercentageEjection" in raw:
            p = f"{key_path}.failurePercentageEjection"
            s = _section(raw["failurePercentageEjection"], p,
                         {"threshold", "enforcementPercentage", "minimumHosts", "requestVolume"})
            fp = FailurePercentage(_int(s, "threshold", 85, p, 0, 100),
                                   _int(s, "enforcementPercentage", 100, p, 0, 100),
                                   _int(s, "minimumHosts", 5, p, 1), _int(s, "requestVolume", 50, p, 1))
        child, child_cfg = select_policy(raw.get("childPolicy", [{"round_robin": {}}]), None,
                                         f"{key_path}.childPolicy")
        if child == self.name:
            raise ConfigError("childPolicy cannot be outlier_detection itself", key_path=f"{key_path}.childPolicy")
        codes = d.failure_codes
        if "failureStatusCodes" in raw:
            codes = parse_codes(raw["failureStatusCodes"], f"{key_path}.failureStatusCodes")
        # A floor of 10 ms: "0.000000001s" would run the ejection sweep
        # continuously and burn a core; no real interval is that short.
        interval = parse_duration(raw.get("interval", "10s"), key_path=f"{key_path}.interval", minimum=0.01)
        return OutlierDetectionConfig(
            interval=interval,
            base_ejection=parse_duration(raw.get("baseEjectionTime", "30s"), key_path=f"{key_path}.baseEjectionTime"),
            max_ejection=parse_duration(raw.get("maxEjectionTime", "300s"), key_path=f"{key_path}.maxEjectionTime"),
            max_ejection_percent=_int(raw, "maxEjectionPercent", 10, key_path, 0, 100),
            success_rate=sr,
            failure_percentage=fp,
            consecutive_errors=_int(raw, "consecutiveErrors", 5, key_path, 0),
            failure_codes=codes,
            child=child,
            child_config=child_cfg,
        )

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        return OutlierDetection(helper, config)
