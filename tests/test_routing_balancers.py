"""subset, priority_failover and zone_aware against fake backends: routing, shares, fallbacks, composition."""

from __future__ import annotations

import collections
import random
from typing import Any

import grpc
import pytest
from routing_support import CHI2_999, C, backends, build, chi_square, routing_policies

import discovery
from discovery.address import Address, Attributes
from discovery.balancer import Balancer, BalancerBuilder, DoneInfo, ErrorPicker, Picker, PickResult
from discovery.balancer.base import BaseBalancer, PickerInfo
from discovery.balancers.priority_failover import priority_loads
from discovery.balancers.zone_aware import LOCAL_ZONE_ENV, zone_shares
from discovery.errors import ConfigError
from discovery.testing import FakeSubConn, finish, update

__all__ = ["routing_policies"]
pytestmark = pytest.mark.usefixtures("routing_policies")


def picked(r: PickResult | None) -> FakeSubConn:
    assert r is not None, "nothing picked"
    b = r.subconn.backend  # the FakeSubConn behind any parent's view of it
    assert isinstance(b, FakeSubConn)
    return b


def versioned(*versions: Any) -> list[FakeSubConn]:
    return [FakeSubConn(Address("127.0.0.1", 5000 + i, attributes=Attributes({"version": v})), state=C.READY)
            for i, v in enumerate(versions)]


def ports(picker: Any, n: int, metadata: Any = None) -> collections.Counter[int]:
    return collections.Counter(picked(picker.pick("/m", metadata)).address.port for _ in range(n))


SUBSET = {"header": "x-version", "attribute": "version"}

# -- subset ------------------------------------------------------------------------


def test_subset_routes_by_header_and_falls_back_to_any() -> None:
    h, sub = build("subset", SUBSET)
    scs = versioned("v1", "v1", "v2", "v2", "v3")
    update(sub, scs)
    state, picker = h.last
    assert state is C.READY
    assert ports(picker, 100, [("x-version", "v2")]) == {5002: 50, 5003: 50}
    assert ports(picker, 100, [("x-version", "v1"), ("other", "x")]) == {5000: 50, 5001: 50}
    assert ports(picker, 500, None) == dict.fromkeys(range(5000, 5005), 100)  # no header: every backend
    assert ports(picker, 500, [("x-version", "v9")]) == dict.fromkeys(range(5000, 5005), 100)


def test_subset_fallback_none_fails_fast_naming_the_value() -> None:
    h, sub = build("subset", {**SUBSET, "fallback": "none"})
    update(sub, versioned("v1", "v2"))
    picker = h.picker
    assert picked(picker.pick("/m", [("x-version", "v1")])).address.port == 5000
    assert picker.pick("/m", [("x-version", "v3")]) is None
    queue, reason = picker.why_none("/m", [("x-version", "v3")])
    assert not queue and reason == ("no backend has version='v3' (asked by header x-version: 'v3') and the subset "
                                    "fallback is none")
    assert picker.pick("/m", None) is None
    assert picker.why_none("/m", None) == (False, "the RPC has no x-version header and the subset fallback is none")


def test_subset_default_subset_fallback() -> None:
    h, sub = build("subset", {**SUBSET, "fallback": "default_subset", "defaultSubset": {"version": "v1"}})
    update(sub, versioned("v1", "v2", "v1"))
    assert ports(h.picker, 100, None) == {5000: 50, 5002: 50}
    assert ports(h.picker, 100, [("x-version", "v7")]) == {5000: 50, 5002: 50}
    update(sub, versioned("v2", "v3"))  # nothing matches the default subset
    assert h.picker.pick("/m", None) is None
    assert "no backend matches the default subset version=v1" in h.picker.why_none("/m", None)[1]


def test_subset_matches_list_numbers_and_booleans_as_text() -> None:
    h, sub = build("subset", {"header": "x-tag", "attribute": "tags", "fallback": "none"})
    scs = [FakeSubConn(Address("127.0.0.1", 5000, attributes=Attributes({"tags": ("eu", "canary")})), state=C.READY),
           FakeSubConn(Address("127.0.0.1", 5001, attributes=Attributes({"tags": ("us",)})), state=C.READY),
           FakeSubConn(Address("127.0.0.1", 5002, attributes=Attributes({"tags": 2})), state=C.READY),
           FakeSubConn(Address("127.0.0.1", 5003, attributes=Attributes({"tags": True})), state=C.READY)]
    update(sub, scs)
    for value, port in (("canary", 5000), ("eu", 5000), ("us", 5001), ("2", 5002), ("true", 5003)):
        assert ports(h.picker, 4, [("x-tag", value)]) == {port: 4}


def test_subset_waits_or_fails_by_the_state_of_the_subset_asked_for() -> None:
    h, sub = build("subset", SUBSET)
    scs = versioned("v1", "v2")
    scs[1].state = C.CONNECTING
    update(sub, scs)
    picker = h.picker
    assert picker.pick("/m", [("x-version", "v2")]) is None
    assert picker.why_none("/m", [("x-version", "v2")])[0] is True  # v2 is connecting: the RPC waits
    scs[1].state = C.TRANSIENT_FAILURE
    sub.subconn_state(scs[1])
    q, reason = h.picker.why_none("/m", [("x-version", "v2")])
    assert not q and reason.startswith("subset version='v2': 0 of 1 backends ready (1 TRANSIENT_FAILURE)")
    assert picked(h.picker.pick("/m", [("x-version", "v1")])) is scs[0]


def test_subset_config_errors() -> None:
    b = discovery.get_balancer("subset")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"attribute": "version"}, r"lb.header: required"),
        ({"header": "x-v-bin", "attribute": "v"}, r"lb.header: a binary header"),
        ({"header": "x-v"}, r"lb.attribute: required"),
        ({**SUBSET, "fallback": "all"}, r"lb.fallback: expected one of any, none, default_subset"),
        ({**SUBSET, "fallback": "default_subset"}, r"lb.defaultSubset: required with fallback default_subset"),
        ({**SUBSET, "defaultSubset": {"version": "v1"}}, r"lb.defaultSubset: used only with fallback"),
        ({**SUBSET, "fallback": "default_subset", "defaultSubset": {"version": ["v1"]}}, r"lb.defaultSubset.version"),
        ({**SUBSET, "childPolicy": [{"subset": SUBSET}]}, r"lb.childPolicy: childPolicy cannot be subset"),
        ({**SUBSET, "childPolicy": [{"nope": {}}]}, r"none of the policies \['nope'\] is registered"),
        ({**SUBSET, "colour": 1}, r"unknown option\(s\) \['colour'\] for subset"),
    ]
    for config, message in cases:
        with pytest.raises(ConfigError, match=message):
            b.parse_config(config, key_path="lb")


def test_each_subset_keeps_its_own_child_state() -> None:
    """outlier_detection as the child: failures seen through subset v2 eject the backend
    there only; the fallback's own child has seen nothing and keeps it."""
    h, sub = build("subset", {**SUBSET, "childPolicy": [{"outlier_detection": {
        "consecutiveErrors": 3, "maxEjectionPercent": 100, "childPolicy": [{"round_robin": {"panicThreshold": 0}}]}}]})
    scs = versioned("v1", "v2", "v2")
    update(sub, scs)
    v2 = [("x-version", "v2")]
    bad = scs[1]
    for _ in range(6):
        r = h.picker.pick("/m", v2)
        assert r is not None and r.done is not None  # the child's done comes through
        finish(r, grpc.StatusCode.UNAVAILABLE if picked(r) is bad else grpc.StatusCode.OK)
    h.run_due()
    assert h.ejections == [(bad.addr, True)]
    assert ports(h.picker, 10, v2) == {5002: 10}
    assert set(ports(h.picker, 30, None)) == {5000, 5001, 5002}  # the fallback's child still uses it


def test_outlier_detection_over_subset_hides_ejected_backends_from_every_subset() -> None:
    h, od = build("outlier_detection", {"consecutiveErrors": 2, "maxEjectionPercent": 100, "childPolicy": [
        {"subset": {**SUBSET, "childPolicy": [{"round_robin": {"panicThreshold": 0}}]}}]})
    scs = versioned("v1", "v2", "v2")
    update(od, scs)
    v2 = [("x-version", "v2")]
    for _ in range(4):
        r = h.picker.pick("/m", v2)
        finish(r, grpc.StatusCode.INTERNAL if picked(r) is scs[1] else grpc.StatusCode.OK)
    h.run_due()
    assert h.ejections == [(scs[1].addr, True)]
    assert ports(h.picker, 10, v2) == {5002: 10}
    assert 5001 not in ports(h.picker, 30, None)


def test_outlier_detection_passes_the_per_rpc_reason_of_its_child_through() -> None:
    h, _ = build("outlier_detection", {"childPolicy": [{"subset": {**SUBSET, "fallback": "none"}}]})
    update(_, versioned("v1"))
    assert h.picker.pick("/m", [("x-version", "v9")]) is None
    assert h.picker.why_none("/m", [("x-version", "v9")]) == (
        False, "no backend has version='v9' (asked by header x-version: 'v9') and the subset fallback is none")


# -- priority_failover --------------------------------------------------------------

# Envoy's documented examples (overprovisioning factor 1.4): health of P0 (and P1, P2) -> load per priority.
ENVOY_PRIORITY_TABLE = [
    ([100, 100], [100, 0]),
    ([72, 100], [100, 0]),
    ([71, 100], [99, 1]),
    ([50, 100], [70, 30]),
    ([25, 100], [35, 65]),
    ([0, 100], [0, 100]),
    ([20, 20, 100], [28, 28, 44]),
    ([20, 20, 20], [34, 33, 33]),
    ([0, 0], [0, 0]),
]


@pytest.mark.parametrize(("healthy", "loads"), ENVOY_PRIORITY_TABLE)
def test_priority_loads_are_envoys(healthy: list[int], loads: list[int]) -> None:
    assert priority_loads([(h, 100) for h in healthy], 140) == loads


def tiers(*sizes: int) -> list[FakeSubConn]:
    out: list[FakeSubConn] = []
    for p, n in enumerate(sizes):
        out += backends(n, priority=p, port0=5000 + 100 * p)
    return out


def test_priority_stays_in_tier_0_then_spills_proportionally_chi_square() -> None:
    rng = random.Random(3)
    h, pf = build("priority_failover", rand=rng.random)
    scs = tiers(10, 4)
    update(pf, scs)
    assert set(ports(h.picker, 200)) == set(range(5000, 5010))
    for sc in scs[:5]:  # half of tier 0 fails: health 70 %, 30 % of the RPCs spill to tier 1
        sc.state = C.TRANSIENT_FAILURE
        pf.subconn_state(sc)
    assert pf.loads == [70, 30]  # type: ignore[attr-defined]
    n = 20_000
    counts = ports(h.picker, n)
    tier_counts = {0: sum(v for p, v in counts.items() if p < 5100), 1: sum(v for p, v in counts.items() if p >= 5100)}
    assert chi_square(tier_counts, {0: 0.7 * n, 1: 0.3 * n}) < CHI2_999[1]
    assert set(counts) == set(range(5005, 5010)) | set(range(5100, 5104))
    for sc in scs[:5]:  # recovery: all traffic back in tier 0
        sc.state = C.READY
        pf.subconn_state(sc)
    assert pf.loads == [100, 0] and set(ports(h.picker, 200)) == set(range(5000, 5010))  # type: ignore[attr-defined]


def test_priority_a_new_tier_0_is_waited_for_not_skipped() -> None:
    h, pf = build("priority_failover")
    scs = tiers(2, 2)
    for sc in scs[:2]:
        sc.state = C.CONNECTING
    update(pf, scs)
    state, picker = h.last
    # Tier 0 has not connected or failed yet: its backends count as healthy (Envoy's new hosts).
    assert pf.loads == [100, 0] and picker.pick("/m", None) is None and picker.why_none("/m", None)[0]  # type: ignore[attr-defined]
    assert state is C.CONNECTING
    scs[0].state = C.READY
    pf.subconn_state(scs[0])
    assert set(ports(h.picker, 20)) == {5000}


def test_priority_nothing_healthy_fails_fast_naming_every_tier() -> None:
    h, pf = build("priority_failover")
    update(pf, tiers(1, 1))
    for sc in pf.state.subconns:
        assert isinstance(sc, FakeSubConn)
        sc.state = C.TRANSIENT_FAILURE
        pf.subconn_state(sc)
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and isinstance(picker, ErrorPicker) and not picker.queue
    assert picker.reason == ("priority 0: 0 of 1 backends ready (1 TRANSIENT_FAILURE); "
                             "priority 1: 0 of 1 backends ready (1 TRANSIENT_FAILURE)")


def test_priority_under_outlier_detection_fails_over_on_ejections() -> None:
    h, od = build("outlier_detection", {"consecutiveErrors": 2, "maxEjectionPercent": 100,
                                        "childPolicy": [{"priority_failover": {}}]})
    scs = tiers(2, 2)
    update(od, scs)
    for _ in range(8):
        r = h.picker.pick("/m", None)
        assert r is not None and r.done is not None
        finish(r, grpc.StatusCode.UNAVAILABLE if picked(r) is scs[0] else grpc.StatusCode.OK)
    h.run_due()
    assert h.ejections == [(scs[0].addr, True)]
    # Tier 0 is half healthy (70 %): its healthy backend and tier 1 share the RPCs.
    assert set(ports(h.picker, 400)) == {5001, 5100, 5101}


def test_priority_config_errors() -> None:
    b = discovery.get_balancer("priority_failover")
    for config, message in [({"overprovisioningFactor": -1}, r"lb.overprovisioningFactor: expected an integer"),
                            ({"overprovisioningFactor": 1.4}, r"lb.overprovisioningFactor"),
                            ({"childPolicy": "round_robin"}, r"lb.childPolicy"),
                            ({"tiers": 2}, r"unknown option\(s\) \['tiers'\]")]:
        with pytest.raises(ConfigError, match=message):
            b.parse_config(config, key_path="lb")


# -- zone_aware ------------------------------------------------------------------------


def zoned(**zones: int) -> list[FakeSubConn]:
    out: list[FakeSubConn] = []
    for i, (zone, n) in enumerate(zones.items()):
        out += backends(n, zone=zone.replace("_", "-"), port0=5000 + 100 * i)
    return out


@pytest.mark.parametrize(("zones", "min_size", "expected"), [
    ({"a": (4, 4), "b": (4, 4)}, 6, {"a": 1.0, "b": 0.0}),
    ({"a": (2, 4), "b": (4, 4), "c": (2, 2)}, 6, {"a": 0.7, "b": 0.2, "c": 0.1}),
    ({"a": (0, 4), "b": (3, 3), "c": (1, 1)}, 6, {"a": 0.0, "b": 0.75, "c": 0.25}),
    ({"a": (1, 4), "b": (0, 4)}, 6, {"a": 1.0, "b": 0.0}),  # nowhere else to go
    ({"a": (2, 2), "b": (3, 3)}, 6, {"a": 0.4, "b": 0.6}),  # 5 < minClusterSize: a flat pool
    ({"b": (3, 3), "c": (3, 3)}, 6, {"b": 0.5, "c": 0.5}),  # no local backend at all
    ({"a": (0, 3), "b": (0, 3)}, 6, {"a": 0.0, "b": 0.0}),
])
def test_zone_shares(zones: dict[str, tuple[int, int]], min_size: int, expected: dict[str, float]) -> None:
    assert zone_shares("a", zones, min_size, 140) == pytest.approx(expected)


def test_zone_aware_keeps_local_then_spills_by_healthy_backends_chi_square() -> None:
    rng = random.Random(5)
    h, za = build("zone_aware", {"localZone": "eu-1a"}, rand=rng.random)
    scs = zoned(eu_1a=4, eu_1b=4, eu_1c=2)
    update(za, scs)
    assert set(ports(h.picker, 100)) == {5000, 5001, 5002, 5003}
    for sc in scs[:2]:
        sc.state = C.TRANSIENT_FAILURE
        za.subconn_state(sc)
    # h = 1/2 -> local 70 %; the other 30 % by healthy backends: eu-1b 4/6, eu-1c 2/6.
    n = 30_000
    counts = ports(h.picker, n)
    by_zone = collections.Counter({"eu-1a": 0, "eu-1b": 0, "eu-1c": 0})
    for port, c in counts.items():
        by_zone[{50: "eu-1a", 51: "eu-1b", 52: "eu-1c"}[port // 100]] += c
    assert chi_square(by_zone, {"eu-1a": 0.7 * n, "eu-1b": 0.2 * n, "eu-1c": 0.1 * n}) < CHI2_999[2]


def test_zone_aware_is_off_below_min_cluster_size() -> None:
    rng = random.Random(9)
    h, za = build("zone_aware", {"localZone": "eu-1a", "minClusterSize": 10}, rand=rng.random)
    update(za, zoned(eu_1a=2, eu_1b=6))
    n = 16_000
    counts = ports(h.picker, n)
    local = sum(v for p, v in counts.items() if p < 5100)
    assert chi_square({"local": local, "other": n - local}, {"local": n / 4, "other": 3 * n / 4}) < CHI2_999[1]


def test_zone_aware_local_zone_from_the_environment_config_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    b = discovery.get_balancer("zone_aware")
    monkeypatch.delenv(LOCAL_ZONE_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"lb.localZone: required: the client's own zone \(or set "
                                          r"\$DISCOVERY_LOCAL_ZONE\)"):
        b.parse_config({}, key_path="lb")
    monkeypatch.setenv(LOCAL_ZONE_ENV, "us-2b")
    assert b.parse_config({}, key_path="lb").local_zone == "us-2b"
    assert b.parse_config({"localZone": "eu-1a"}, key_path="lb").local_zone == "eu-1a"
    for config, message in [({"localZone": ""}, r"lb.localZone: expected a zone name"),
                            ({"minClusterSize": -1}, r"lb.minClusterSize"),
                            ({"overprovisioningFactor": "140"}, r"lb.overprovisioningFactor")]:
        with pytest.raises(ConfigError, match=message):
            b.parse_config(config, key_path="lb")


def test_zone_aware_with_outlier_detection_as_child_per_zone() -> None:
    h, za = build("zone_aware", {"localZone": "eu-1a", "minClusterSize": 0, "childPolicy": [
        {"outlier_detection": {"consecutiveErrors": 2, "maxEjectionPercent": 50}}]})
    scs = zoned(eu_1a=2, eu_1b=2)
    update(za, scs)
    for _ in range(6):
        r = h.picker.pick("/m", None)
        assert r is not None and r.done is not None
        finish(r, grpc.StatusCode.INTERNAL if picked(r) is scs[0] else grpc.StatusCode.OK)
    h.run_due()
    assert h.ejections == [(scs[0].addr, True)]
    assert set(ports(h.picker, 50)) == {5001}  # still local: the zone's child hides it, the zone stays healthy


class _Recorder(BalancerBuilder):
    """A third-party child policy: round robin whose every PickResult carries a done that records."""

    name = "recording_child"

    def __init__(self) -> None:
        self.results: list[PickResult] = []
        self.done: list[tuple[PickResult, DoneInfo]] = []

    def build(self, helper: Any, config: Any) -> Balancer:
        def make(info: PickerInfo) -> Picker | None:
            return _RecordingPicker(self, info.ready) if info.ready else None
        return BaseBalancer(helper, make)


class _RecordingPicker(Picker):
    def __init__(self, rec: _Recorder, ready: tuple[Any, ...]) -> None:
        self._rec = rec
        self._ready = ready
        self._n = 0

    def pick(self, method: str, metadata: Any) -> PickResult | None:
        self._n += 1
        sc = self._ready[self._n % len(self._ready)]
        r = PickResult(sc, lambda info: self._rec.done.append((r, info)))
        self._rec.results.append(r)
        return r


@pytest.mark.parametrize(("name", "config", "scs"), [
    ("subset", SUBSET, lambda: versioned("v1", "v2")),
    ("priority_failover", {}, lambda: tiers(2, 1)),
    ("zone_aware", {"localZone": "a"}, lambda: backends(3, zone="a")),
])
def test_group_parents_pass_the_childs_pick_result_and_done_through_unchanged(name: str, config: dict[str, Any],
                                                                               scs: Any) -> None:
    rec = _Recorder()
    discovery.register_balancer(rec, replace=True)
    try:
        h, parent = build(name, {**config, "childPolicy": [{"recording_child": {}}]})
        update(parent, scs())
        for _ in range(5):
            r = h.picker.pick("/m", [("x-version", "v1")])
            assert r is rec.results[-1]  # the very object the child made
            finish(r, grpc.StatusCode.ABORTED, latency=0.25)
            assert rec.done[-1] == (r, DoneInfo(grpc.StatusCode.ABORTED, 0.25, ()))
        assert len(rec.done) == 5
    finally:
        discovery.unregister_balancer(rec.name)
