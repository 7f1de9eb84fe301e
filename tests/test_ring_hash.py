"""ring_hash against fake backends: gRPC's ring, its walk past failed backends, lazy connects, config."""

from __future__ import annotations

import collections
import random
from bisect import bisect_left

import pytest
import xxhash
from routing_support import CHI2_999, C, backends, build, chi_square, routing_policies

import discovery
from discovery.address import Address, Attributes
from discovery.balancer import PickResult
from discovery.balancers.ring_hash import RING_SIZE_CAP, RingHash, build_ring, request_hash
from discovery.errors import ConfigError
from discovery.testing import FakeSubConn, update

__all__ = ["routing_policies"]
pytestmark = pytest.mark.usefixtures("routing_policies")

CFG = {"requestHashHeader": "x-user"}


def md(user: str) -> list[tuple[str, str]]:
    return [("x-other", "1"), ("x-user", user)]


def picked(r: PickResult | None) -> FakeSubConn:
    assert r is not None, "nothing picked"
    assert isinstance(r.subconn, FakeSubConn)
    return r.subconn


def owner_of(keys: list[str], hashes: list[int], owners: list[int], user: str) -> str:
    """The backend the ring gives ``user``'s key, read off the ring by hand."""
    h = xxhash.xxh64_intdigest(user.encode())
    i = bisect_left(hashes, h)
    return keys[owners[i % len(owners)]]


def test_xxh64_is_the_reference_function_with_seed_0() -> None:
    # XXH64 of the empty input with seed 0, from the xxHash specification's test vectors.
    assert xxhash.xxh64_intdigest(b"") == 0xEF46DB3751D8E999
    assert request_hash("x-user", [("x-user", "")]) == 0xEF46DB3751D8E999


def test_ring_is_built_as_grpc_builds_it() -> None:
    # gRPC's ring for weights {3, 3, 4} at min 10 / max 20: ten entries, each the
    # XXH64 of "<address>_<n>" with n counting per backend, sorted by hash.
    keys = ["127.0.0.1:5000", "127.0.0.1:5001", "[::1]:5002"]
    hashes, owners = build_ring(keys, [3, 3, 4], 10, 20)
    expected = sorted((xxhash.xxh64_intdigest(f"{k}_{n}".encode()), i)
                      for i, (k, count) in enumerate(zip(keys, (3, 3, 4), strict=True)) for n in range(count))
    assert list(zip(hashes, owners, strict=True)) == expected


def test_ring_sizes_follow_weights_and_bounds() -> None:
    keys = [f"10.0.0.{i}:80" for i in range(4)]
    _, owners = build_ring(keys, [1, 2, 3, 4], 1024, 4096)
    # scale = ceil(0.1 x 1024) / 0.1 = 1030 entries, 103 per unit of weight.
    assert collections.Counter(owners) == {0: 103, 1: 206, 2: 309, 3: 412}
    _, owners = build_ring(keys, [0, 1, 1, 1], 1024, 4096)  # weight 0 counts as 1, as in gRPC
    assert set(collections.Counter(owners).values()) == {256}
    hashes, _ = build_ring([f"k{i}" for i in range(10_000)], [1] * 10_000, 1024, 4096)
    assert len(hashes) == 4096  # capped by maxRingSize: not every backend gets an entry (as in gRPC)
    assert len(build_ring(keys, [1, 1, 1, 1], 3, 3)[0]) == 3  # maxRingSize wins over one entry each
    assert build_ring([], [], 1024, 4096) == ([], [])


def test_same_key_same_backend_in_every_picker_and_instance() -> None:
    scs = backends(10)
    h1, rh1 = build("ring_hash", CFG)
    update(rh1, scs)
    h2, rh2 = build("ring_hash", CFG)
    update(rh2, list(reversed(scs)))  # another order, another instance: the ring is by hash key
    keys = [sc.addr for sc in scs]
    hashes, owners = build_ring(keys, [1] * 10, 1024, 4096)
    for i in range(200):
        user = f"user-{i}"
        a = picked(h1.picker.pick("/m", md(user)))
        assert a is picked(h1.picker.pick("/other", md(user)))
        assert a is picked(h2.picker.pick("/m", md(user)))
        assert a.addr == owner_of(keys, hashes, owners, user)


def test_keys_spread_as_the_ring_arcs_say_chi_square() -> None:
    """Uniform keys land on each backend in proportion to the ring arcs it owns (weights 1..4)."""
    scs = [FakeSubConn(Address("127.0.0.1", 5000 + i, weight=i + 1), state=C.READY) for i in range(4)]
    h, rh = build("ring_hash", CFG)
    update(rh, scs)
    hashes, owners = build_ring([sc.addr for sc in scs], [1, 2, 3, 4], 1024, 4096)
    space = 2 ** 64
    share = collections.Counter[int]()
    for i, hv in enumerate(hashes):
        # Entry i owns the hashes after the entry before it, up to its own (wrapping at 2**64).
        share[owners[i]] += (hv - (hashes[i - 1] if i else hashes[-1] - space)) / space
    n = 40_000
    rng = random.Random(7)
    counts = collections.Counter(picked(h.picker.pick("/m", md(f"{rng.getrandbits(64):x}"))).address.port
                                 for _ in range(n))
    expected = {5000 + i: share[i] * n for i in range(4)}
    assert chi_square(counts, expected) < CHI2_999[3]
    # And the arcs follow the weights (within the scatter of ~100-400 random points each).
    for i in range(4):
        assert share[i] == pytest.approx((i + 1) / 10, rel=0.2)


def test_adding_an_eleventh_backend_moves_a_small_share_of_keys() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(11)
    update(rh, scs[:10])
    users = [f"user-{i}" for i in range(20_000)]
    before = [picked(h.picker.pick("/m", md(u))) for u in users]
    update(rh, scs)
    after = [picked(h.picker.pick("/m", md(u))) for u in users]
    moved = sum(a is not b for a, b in zip(before, after, strict=True)) / len(users)
    to_new = sum(a is scs[10] for a in after) / len(users)
    # The new backend takes about 1/11 of the keys, and the entries the others
    # lose (1,030 -> 1,034 entries, 103 -> 94 each) move about as many again:
    # ~16 %, against ~91 % for hashing modulo the number of backends.
    assert 0.06 < to_new < 0.13
    assert 0.10 < moved < 0.22


def test_a_failed_backend_passes_its_keys_to_the_next_distinct_backend_on_the_ring() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(5)
    update(rh, scs)
    keys = [sc.addr for sc in scs]
    hashes, owners = build_ring(keys, [1] * 5, 1024, 4096)
    user = "alice"
    first = picked(h.picker.pick("/m", md(user)))
    i = bisect_left(hashes, xxhash.xxh64_intdigest(user.encode())) % len(hashes)
    nxt = next(keys[owners[(i + k) % len(owners)]] for k in range(len(owners))
               if keys[owners[(i + k) % len(owners)]] != first.addr)
    for how in ("failed", "unhealthy"):
        if how == "failed":
            first.state = C.TRANSIENT_FAILURE
        else:
            first.state, first.healthy = C.READY, False  # failing health checks, or ejected by a parent
        rh.subconn_state(first)
        assert picked(h.picker.pick("/m", md(user))).addr == nxt
        first.state, first.healthy = C.READY, True
        rh.subconn_state(first)
        assert picked(h.picker.pick("/m", md(user))) is first


def test_an_idle_backend_is_asked_to_connect_and_the_rpc_waits() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(3, C.IDLE)
    update(rh, scs)
    state, picker = h.last
    assert state is C.IDLE and [s.connects for s in scs] == [0, 0, 0]  # lazy, as in gRPC
    assert picker.pick("/m", md("bob")) is None
    assert picker.pick("/m", md("bob")) is None  # asked once per picker
    assert picker.why_none("/m", md("bob"))[0] is True  # the RPC waits
    h.run_due()  # the connect runs on the control thread
    target = next(s for s in scs if s.connects)
    assert [s.connects for s in scs].count(1) == 1
    target.state = C.CONNECTING
    rh.subconn_state(target)
    assert h.last[0] is C.CONNECTING and h.picker.pick("/m", md("bob")) is None
    target.state = C.READY
    rh.subconn_state(target)
    assert h.last[0] is C.READY and picked(h.picker.pick("/m", md("bob"))) is target


def test_without_the_header_a_random_key_picks_ready_backends_and_wakes_at_most_one() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(4, C.IDLE)
    update(rh, scs)
    picker = h.picker
    assert picker.pick("/m", None) is None and picker.why_none("/m", None)[0]
    h.run_due()
    assert sum(s.connects for s in scs) == 1  # one pick wakes one backend (A76), not the whole ring
    woken = next(s for s in scs if s.connects)
    woken.state = C.CONNECTING
    rh.subconn_state(woken)
    assert all(h.picker.pick("/m", None) is None for _ in range(50))
    h.run_due()
    assert sum(s.connects for s in scs) == 1  # while one connects, random picks wake no other
    for s in scs:
        s.state = C.READY
        rh.subconn_state(s)
    seen = collections.Counter(picked(h.picker.pick("/m", [("x-other", "1")])).addr for _ in range(4000))
    assert set(seen) == {s.addr for s in scs}


def test_aggregate_state_and_recovery_connects_follow_grpc() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(3, C.IDLE)
    update(rh, scs)
    scs[0].state = C.TRANSIENT_FAILURE
    rh.subconn_state(scs[0])
    # One failed of three: CONNECTING, and one idle backend asked to connect to make progress.
    assert h.last[0] is C.CONNECTING and scs[1].connects + scs[2].connects == 1
    scs[1].state = C.TRANSIENT_FAILURE
    rh.subconn_state(scs[1])
    assert h.last[0] is C.TRANSIENT_FAILURE
    scs[2].state = C.TRANSIENT_FAILURE
    rh.subconn_state(scs[2])
    state, picker = h.last
    assert state is C.TRANSIENT_FAILURE and picker.pick("/m", md("x")) is None
    assert picker.why_none("/m", md("x")) == (False, picker.reason)
    assert "0 of 3 backends ready (3 TRANSIENT_FAILURE)" in picker.reason
    update(rh, [])
    assert h.last[0] is C.TRANSIENT_FAILURE and h.picker.reason == "no addresses"


def test_ring_is_rebuilt_only_when_keys_or_weights_change() -> None:
    h, rh = build("ring_hash", CFG)
    assert isinstance(rh, RingHash)
    scs = backends(3)
    update(rh, scs)
    scs[0].state = C.TRANSIENT_FAILURE
    rh.subconn_state(scs[0])
    update(rh, scs)
    assert rh.rebuilds == 1
    update(rh, scs[:2])
    assert rh.rebuilds == 2
    n = len(h.updates)
    rh.subconn_state(scs[1])  # nothing changed: no new picker
    assert len(h.updates) == n


def test_an_endpoint_hash_key_attribute_replaces_the_address_on_the_ring() -> None:
    h, rh = build("ring_hash", CFG)
    a = FakeSubConn(Address("127.0.0.1", 5000, attributes=Attributes({"hash_key": "orders-0"})), state=C.READY)
    b = FakeSubConn(Address("127.0.0.1", 5001, attributes=Attributes({"hash_key": "orders-1"})), state=C.READY)
    update(rh, [a, b])
    hashes, owners = build_ring(["orders-0", "orders-1"], [1, 1], 1024, 4096)
    for u in ("u1", "u2", "u3", "u4"):
        assert picked(h.picker.pick("/m", md(u))).address.attributes["hash_key"] == owner_of(
            ["orders-0", "orders-1"], hashes, owners, u)


def test_several_header_values_are_joined_with_commas() -> None:
    assert request_hash("x-user", [("x-user", "a"), ("x-user", "b")]) == xxhash.xxh64_intdigest(b"a,b")
    assert request_hash("x-user", [("x-other", "a")]) is None
    assert request_hash("x-user", None) is None


@pytest.mark.parametrize(("config", "message"), [
    ({}, r"lb.requestHashHeader: required"),
    ({"requestHashHeader": "x-id-bin"}, r"binary header"),
    ({"requestHashHeader": "bad header"}, r"lb.requestHashHeader: expected a header name"),
    ({"requestHashHeader": "x", "minRingSize": 0}, r"lb.minRingSize: expected an integer 1\.\.8388608"),
    ({"requestHashHeader": "x", "maxRingSize": RING_SIZE_CAP + 1}, r"lb.maxRingSize"),
    ({"requestHashHeader": "x", "minRingSize": 100, "maxRingSize": 10}, r"minRingSize 100 is above maxRingSize"),
    ({"requestHashHeader": "x", "ringSize": 1}, r"unknown option\(s\) \['ringSize'\]"),
])
def test_config_errors_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        discovery.get_balancer("ring_hash").parse_config(config, key_path="lb")


def test_grpc_spelling_and_header_case_are_accepted() -> None:
    sc = discovery.parse_service_config(
        {"loadBalancingConfig": [{"ring_hash_experimental": {"requestHashHeader": "X-User", "minRingSize": 8,
                                                              "maxRingSize": 8}}]})
    assert sc.policy == "ring_hash"
    assert (sc.policy_config.header, sc.policy_config.max_ring_size) == ("x-user", 8)


def test_picker_is_safe_under_threads() -> None:
    import threading

    h, rh = build("ring_hash", CFG)
    update(rh, backends(8))
    picker = h.picker
    want = {f"u{i}": picked(picker.pick("/m", md(f"u{i}"))) for i in range(100)}
    bad: list[str] = []

    def work() -> None:
        for _ in range(20):
            for u, sc in want.items():
                if picked(picker.pick("/m", md(u))) is not sc:
                    bad.append(u)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


def test_rpcs_wait_while_backends_connect() -> None:
    h, rh = build("ring_hash", CFG)
    scs = backends(2, C.CONNECTING)
    update(rh, scs)
    state, picker = h.last
    assert state is C.CONNECTING and picker.queue and picker.pick("/m", md("a")) is None


def test_a_failed_backend_stays_failed_while_it_retries_until_ready() -> None:
    """gRFC A62's sticky TRANSIENT_FAILURE: keys do not wait on a failed backend's reconnects."""
    h, rh = build("ring_hash", CFG)
    scs = backends(3)
    update(rh, scs)
    home = picked(h.picker.pick("/m", md("dave")))
    home.state = C.TRANSIENT_FAILURE
    rh.subconn_state(home)
    elsewhere = picked(h.picker.pick("/m", md("dave")))
    assert elsewhere is not home
    for state in (C.CONNECTING, C.IDLE, C.CONNECTING):
        home.state = state
        rh.subconn_state(home)
        assert picked(h.picker.pick("/m", md("dave"))) is elsewhere
    assert home.connects == 1  # idle after failing: asked to retry
    home.state = C.READY
    rh.subconn_state(home)
    assert picked(h.picker.pick("/m", md("dave"))) is home
