"""``ring_hash``: consistent hashing on a request header (gRFC A42, with A76's ``requestHashHeader``).

Config (gRPC's; ``ring_hash_experimental`` is accepted as the name too)::

    {"ring_hash": {"minRingSize": 1024, "maxRingSize": 4096, "requestHashHeader": "x-user-id"}}

The ring is built as gRPC builds it: every backend's hash key (its
``host:port``, or ``Address.attributes["hash_key"]`` as A76's endpoint hash
key) gets ``scale x weight`` entries, each the XXH64 (seed 0) of
``"<key>_<n>"``, sorted by hash; ``scale`` gives the lightest backend a whole
number of entries within ``minRingSize..maxRingSize`` (at most 8M). Weights
come from ``Address.weight`` (0 counts as 1, as in gRPC). So a key maps to
the same backend in every process, and to the backend gRPC would choose.

An RPC's hash is the XXH64 of its ``requestHashHeader`` value (several
values joined with ``,``). The pick is the first ring entry at or after that
hash (binary search). If its backend is READY it gets the RPC; IDLE ones are
asked to connect and the RPC waits, as it does for CONNECTING ones; one in
TRANSIENT_FAILURE (or unhealthy, or ejected by a parent) passes the RPC to
the next entry of the ring, and stays failed while it retries until it is
READY again (gRFC A62's sticky failure). An RPC without the header gets a random hash and
goes to the first READY backend from there, asking at most one IDLE backend
to connect on the way (A76). Backends connect lazily, on a pick, as in gRPC,
except that one IDLE backend is asked to connect while the policy is
CONNECTING or failing with none connecting (A42's rule to keep recovering).
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc
import xxhash

from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    BalancerState,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    SubConn,
    describe_states,
)
from ..errors import ConfigError

__all__ = ["RING_SIZE_CAP", "RingHashBuilder", "RingHashConfig", "build_ring", "request_hash"]

_C = grpc.ChannelConnectivity
RING_SIZE_CAP = 8 * 1024 * 1024
_HEADER = re.compile(r"[0-9a-z_.-]+")
_xxh64 = xxhash.xxh64_intdigest
_getrandbits = random.getrandbits

# Per-backend states as the picker sees them (small ints: compared on the hot path).
_READY, _IDLE, _CONNECTING, _FAILED = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class RingHashConfig:
    min_ring_size: int = 1024
    max_ring_size: int = 4096
    header: str = ""


def build_ring(keys: Sequence[str], weights: Sequence[int], min_size: int, max_size: int
               ) -> tuple[list[int], list[int]]:
    """gRPC's ring for backends with hash ``keys`` and ``weights``: (sorted hashes, backend index per entry).

    The arithmetic is gRPC's own (its C++ ``RingHash::Ring``) in the same IEEE
    doubles, so the ring is the same entry for entry.
    """
    if not keys:
        return [], []
    ws = [w if w > 0 else 1 for w in weights]
    total = sum(ws)
    normalized = [w / total for w in ws]
    low = min(normalized)
    scale = min(math.ceil(low * min_size) / low, float(max_size))
    entries: list[tuple[int, int]] = []
    current = 0.0
    target = 0.0
    for i, key in enumerate(keys):
        prefix = key.encode() + b"_"
        target += scale * normalized[i]
        count = 0
        while current < target:
            entries.append((_xxh64(prefix + str(count).encode()), i))
            count += 1
            current += 1.0
    # Ties between two 64-bit hashes are left in backend order (gRPC's sort
    # leaves them unspecified; none is expected in practice).
    entries.sort(key=lambda e: e[0])
    return [h for h, _ in entries], [i for _, i in entries]


def request_hash(header: str, metadata: Metadata | None) -> int | None:
    """XXH64 of the header's value(s) joined by ``,`` (A76), or None when the RPC has no such header."""
    value: str | bytes | None = None
    if metadata:
        for k, v in metadata:
            if k == header:
                if value is None:
                    value = v
                else:
                    value = (value if isinstance(value, str) else value.decode("latin-1")) + "," + (
                        v if isinstance(v, str) else v.decode("latin-1"))
    if value is None:
        return None
    return _xxh64(value.encode() if isinstance(value, str) else value)


class _Ring:
    """One ring (immutable): shared by every picker until the address set or config changes."""

    __slots__ = ("hashes", "owners", "size")

    def __init__(self, hashes: list[int], owners: list[int]) -> None:
        self.hashes = hashes
        self.owners = owners
        self.size = len(hashes)


class RingHashPicker(Picker):
    """Binary search on the ring, then gRPC's walk past failed backends. Lock-free; allocates
    nothing when the backend found is READY (the usual case)."""

    __slots__ = ("_balancer", "_connecting", "_header", "_requested", "_results", "_ring", "_states", "queue",
                 "reason")

    def __init__(self, balancer: RingHash, ring: _Ring, results: list[PickResult], states: list[int],
                 header: str, reason: str) -> None:
        self._balancer = balancer
        self._ring = ring
        self._results = results
        self._states = states
        self._header = header
        self._connecting = _CONNECTING in states
        # Backends this picker already asked to connect (each once per picker).
        self._requested: set[int] = set()
        # Nothing but failed backends: RPCs fail fast. Anything else: a pick
        # that finds nothing waits for a backend to connect.
        self.queue = any(s != _FAILED for s in states)
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        ring = self._ring
        h = request_hash(self._header, metadata)
        random_hash = h is None
        if h is None:
            h = _getrandbits(64)
        i = bisect_left(ring.hashes, h)
        if i == ring.size:
            i = 0
        owners = ring.owners
        o = owners[i]
        states = self._states
        if states[o] == _READY:
            return self._results[o]
        # The walk past the first backend (gRPC's rules).
        n = ring.size
        if not random_hash:
            for k in range(n):
                o = owners[(i + k) % n]
                s = states[o]
                if s == _READY:
                    return self._results[o]
                if s == _IDLE:
                    self._connect(o)
                    return None
                if s == _CONNECTING:
                    return None
            return None
        requested = self._connecting
        for k in range(n):
            o = owners[(i + k) % n]
            s = states[o]
            if s == _READY:
                return self._results[o]
            if s == _IDLE and not requested:
                self._connect(o)
                requested = True
        return None

    def _connect(self, index: int) -> None:
        if index not in self._requested:
            self._requested.add(index)
            self._balancer.request_connect(index)


class RingHash(Balancer):
    """Keeps the ring (rebuilt only when hash keys, weights or sizes change) and publishes
    a :class:`RingHashPicker` over the backends' states. Control thread only."""

    def __init__(self, helper: BalancerHelper, config: RingHashConfig) -> None:
        self.helper = helper
        self.config = config
        self.subconns: tuple[SubConn, ...] = ()
        self._ring = _Ring([], [])
        self._ring_key: tuple[object, ...] | None = None
        self._results: list[PickResult] = []
        # (address-set generation, states) of the last picker: unchanged means nothing to publish.
        self._generation = 0
        self._published: tuple[int, list[int]] | None = None
        self._closed = False
        # Backends that failed and have not been READY since (sticky failure).
        self._failed: set[SubConn] = set()
        self.rebuilds = 0  # how many rings were built (tests read it)

    # -- Balancer -------------------------------------------------------------

    def update_state(self, state: BalancerState) -> None:
        if isinstance(state.config, RingHashConfig):
            self.config = state.config
        cfg = self.config
        self.subconns = state.subconns
        keys = tuple(_hash_key(sc) for sc in self.subconns)
        weights = tuple(sc.address.weight for sc in self.subconns)
        ring_key = (keys, weights, cfg.min_ring_size, cfg.max_ring_size)
        if ring_key != self._ring_key:
            self._ring_key = ring_key
            self._ring = _Ring(*build_ring(keys, weights, cfg.min_ring_size, cfg.max_ring_size))
            self.rebuilds += 1
        self._failed &= set(self.subconns)
        self._results = [PickResult(sc) for sc in self.subconns]
        self._generation += 1
        self._regenerate()

    def subconn_state(self, subconn: SubConn) -> None:
        self._regenerate()

    def close(self) -> None:
        self._closed = True

    def _state(self, sc: SubConn) -> int:
        s = sc.state
        if s is _C.READY:
            if sc.healthy:
                self._failed.discard(sc)
                return _READY
            # Failing its health check or ejected by a parent: a failure, as
            # gRPC's health-checked child reports it.
            return _FAILED
        if s is _C.TRANSIENT_FAILURE:
            self._failed.add(sc)
            return _FAILED
        if sc in self._failed:
            # Sticky TRANSIENT_FAILURE (gRFC A62): a failed backend retrying its
            # connection stays failed until it is READY, so that the keys it lost
            # do not wait on every retry; an idle one is asked to retry.
            if s is _C.IDLE:
                sc.connect()
            return _FAILED
        return _IDLE if s is _C.IDLE else _CONNECTING

    # -- picker -------------------------------------------------------------------

    def request_connect(self, index: int) -> None:
        """From a picker, any thread: connect backend ``index`` (on the control thread)."""
        subconns = self.subconns

        def run() -> None:
            # The address set may have changed since the pick: connect only a
            # backend that is still ours and still idle.
            if not self._closed and self.subconns is subconns and subconns[index].state is _C.IDLE:
                subconns[index].connect()
        self.helper.schedule(0.0, run)

    def _regenerate(self) -> None:
        subconns = self.subconns
        if not subconns:
            self.helper.update_picker(_C.TRANSIENT_FAILURE, ErrorPicker("no addresses"))
            return
        states = [self._state(sc) for sc in subconns]
        key = (self._generation, states)
        if key == self._published:
            return  # nothing a picker reads has changed
        self._published = key
        ready = states.count(_READY)
        failed = states.count(_FAILED)
        connecting = states.count(_CONNECTING)
        idle = states.count(_IDLE)
        # gRPC's aggregation for ring_hash (A42): READY if any backend is;
        # TRANSIENT_FAILURE once two have failed (a pick would walk on past
        # them); CONNECTING while one connects or only one has failed.
        if ready:
            agg = _C.READY
        elif failed >= 2:
            agg = _C.TRANSIENT_FAILURE
        elif connecting or (failed == 1 and len(subconns) > 1):
            agg = _C.CONNECTING
        elif idle:
            agg = _C.IDLE
        else:
            agg = _C.TRANSIENT_FAILURE
        reason = "ring_hash: " + describe_states(subconns)
        self.helper.update_picker(agg, RingHashPicker(self, self._ring, self._results, states, self.config.header,
                                                      reason))
        # A parent may stop sending picks while this policy is not READY: keep
        # one backend connecting so that it can recover (gRPC does the same).
        if agg in (_C.CONNECTING, _C.TRANSIENT_FAILURE) and not connecting and idle:
            subconns[states.index(_IDLE)].connect()


def _hash_key(sc: SubConn) -> str:
    # A76: an endpoint may carry its own hash key, so that a backend that
    # changes its address keeps its place on the ring.
    key = sc.address.attributes.get("hash_key")
    return key if isinstance(key, str) and key else sc.addr


def _size(raw: Mapping[str, Any], key: str, default: int, path: str) -> int:
    v = raw.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= RING_SIZE_CAP:
        raise ConfigError(f"expected an integer 1..{RING_SIZE_CAP}, got {v!r}", key_path=f"{path}.{key}")
    return v


class RingHashBuilder(BalancerBuilder):
    name: ClassVar[str] = "ring_hash"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> RingHashConfig:
        allowed = {"minRingSize", "maxRingSize", "requestHashHeader"}
        unknown = set(config) - allowed
        if unknown:
            raise ConfigError(f"unknown option(s) {sorted(map(str, unknown))} for ring_hash; "
                              f"expected some of {sorted(allowed)}", key_path=key_path)
        lo = _size(config, "minRingSize", 1024, key_path)
        hi = _size(config, "maxRingSize", 4096, key_path)
        if lo > hi:
            raise ConfigError(f"minRingSize {lo} is above maxRingSize {hi}", key_path=key_path)
        header = config.get("requestHashHeader")
        path = f"{key_path}.requestHashHeader"
        if header is None:
            # gRPC without xDS fails every RPC here ("hash attribute not present"): say so up front.
            raise ConfigError("required: the request header whose value is hashed (gRFC A76), "
                              "e.g. \"x-user-id\"", key_path=path)
        if not isinstance(header, str) or not _HEADER.fullmatch(header.lower()):
            raise ConfigError(f"expected a header name of 0-9 a-z _ . -, got {header!r}", key_path=path)
        header = header.lower()
        if header.endswith("-bin"):
            raise ConfigError(f"a binary header ({header!r}) cannot be the hash key (gRFC A76)", key_path=path)
        return RingHashConfig(lo, hi, header)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        if not isinstance(config, RingHashConfig):
            raise ConfigError("ring_hash needs its parsed config (requestHashHeader)", key_path="ring_hash")
        return RingHash(helper, config)
