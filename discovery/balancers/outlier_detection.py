"""``outlier_detection``: eject backends whose RPCs fail, around any child policy.

The config is gRFC A50's (``interval``, ``baseEjectionTime``,
``maxEjectionTime``, ``maxEjectionPercent``, ``successRateEjection``,
``failurePercentageEjection``, ``childPolicy``) plus two extensions:
``consecutiveErrors`` (Envoy's consecutive_5xx: eject at once after N failures
in a row, default 5, 0 turns it off) and ``failureStatusCodes`` (which statuses
count as failures; UNAVAILABLE, INTERNAL, UNKNOWN and DEADLINE_EXCEEDED by
default).

An ejected backend stays connected but the child's pickers skip it. It comes
back after ``baseEjectionTime`` x (times ejected), capped at
``max(baseEjectionTime, maxEjectionTime)``; each interval without an ejection
lowers that multiplier again. Ejections stop while ``maxEjectionPercent`` of
the backends are ejected, but one can always be ejected.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..balancer import DEFAULT_FAILURE_CODES, Balancer, BalancerBuilder, BalancerHelper, SubConn
from ..config import parse_duration, select_policy
from ..errors import ConfigError
from ..registry import get_balancer

__all__ = ["OutlierDetectionBuilder", "OutlierDetectionConfig"]

log = logging.getLogger(__name__)


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


class _State:
    __slots__ = ("ejected_at", "multiplier")

    def __init__(self) -> None:
        self.ejected_at: float | None = None
        self.multiplier = 0


class OutlierDetection(Balancer):
    def __init__(self, helper: BalancerHelper, cfg: OutlierDetectionConfig) -> None:
        self._helper = helper
        self._cfg = cfg
        builder = get_balancer(cfg.child)
        self._child = builder.build(helper, cfg.child_config)
        self._backends: tuple[SubConn, ...] = ()
        self._states: dict[str, _State] = {}
        self._closed = False
        self.ticks = 0  # intervals evaluated so far (tests wait on it)
        helper.track_outcomes(cfg.failure_codes, cfg.consecutive_errors,
                              self._on_consecutive if cfg.consecutive_errors else None)
        self._timer = helper.schedule(cfg.interval, self._tick)

    # -- Balancer -----------------------------------------------------------

    def update(self, backends: Sequence[SubConn]) -> None:
        self._backends = tuple(backends)
        live = {b.address.addr for b in backends}
        for addr in list(self._states):
            if addr not in live:
                del self._states[addr]
        for b in backends:
            st = self._states.setdefault(b.address.addr, _State())
            # A backend object re-created for a known address keeps its ejection.
            b.ejected = st.ejected_at is not None
        self._child.update(self._backends)

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        self._child.close()

    # -- ejection -----------------------------------------------------------

    def _may_eject(self) -> bool:
        n = len(self._backends)
        ejected = sum(1 for b in self._backends if b.ejected)
        return n > 0 and ejected * 100 < self._cfg.max_ejection_percent * n

    def _eject(self, b: SubConn, why: str) -> None:
        st = self._states.setdefault(b.address.addr, _State())
        st.ejected_at = self._helper.clock.monotonic()
        st.multiplier += 1
        b.ejected = True
        b.consecutive_failures = 0
        log.warning("ejecting backend %s for %.0fs: %s", b.address.addr, self._ejection_time(st), why)

    def _ejection_time(self, st: _State) -> float:
        cfg = self._cfg
        return min(cfg.base_ejection * st.multiplier, max(cfg.base_ejection, cfg.max_ejection))

    def _on_consecutive(self, b: SubConn) -> None:
        if self._closed or b.ejected or b not in self._backends or not self._may_eject():
            return
        self._eject(b, f"{self._cfg.consecutive_errors} consecutive failures")
        self._child.update(self._backends)

    def _tick(self) -> None:
        if self._closed:
            return
        cfg = self._cfg
        counts = {b: b.take_counts() for b in self._backends}
        changed = False
        if cfg.success_rate is not None:
            changed |= self._success_rate(cfg.success_rate, counts)
        if cfg.failure_percentage is not None:
            changed |= self._failure_percentage(cfg.failure_percentage, counts)
        now = self._helper.clock.monotonic()
        for b in self._backends:
            st = self._states.get(b.address.addr)
            if st is None:
                continue
            if st.ejected_at is None:
                st.multiplier = max(0, st.multiplier - 1)
            elif now >= st.ejected_at + self._ejection_time(st):
                st.ejected_at = None
                b.ejected = False
                b.consecutive_failures = 0
                changed = True
                log.info("backend %s returns from ejection", b.address.addr)
        if changed:
            self._child.update(self._backends)
        self.ticks += 1
        self._timer = self._helper.schedule(cfg.interval, self._tick)

    def _success_rate(self, sr: SuccessRate, counts: dict[SubConn, tuple[int, int]]) -> bool:
        volume = {b: s + f for b, (s, f) in counts.items() if s + f >= sr.request_volume}
        if len(volume) < sr.minimum_hosts:
            return False
        rates = {b: counts[b][0] / v for b, v in volume.items()}
        mean = statistics.fmean(rates.values())
        threshold = mean - statistics.pstdev(rates.values()) * sr.stdev_factor
        changed = False
        for b, rate in rates.items():
            if rate < threshold and not b.ejected and self._may_eject() and random.randrange(100) < sr.enforcement:
                self._eject(b, f"success rate {rate:.1%} below {threshold:.1%}")
                changed = True
        return changed

    def _failure_percentage(self, fp: FailurePercentage, counts: dict[SubConn, tuple[int, int]]) -> bool:
        volume = {b: s + f for b, (s, f) in counts.items() if s + f >= fp.request_volume}
        if len(volume) < fp.minimum_hosts:
            return False
        changed = False
        for b, v in volume.items():
            pct = 100 * counts[b][1] / v
            if pct > fp.threshold and not b.ejected and self._may_eject() and random.randrange(100) < fp.enforcement:
                self._eject(b, f"{pct:.0f}% of {v} RPCs failed (threshold {fp.threshold}%)")
                changed = True
        return changed


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
