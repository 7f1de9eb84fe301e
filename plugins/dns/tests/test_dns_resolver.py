"""The dns: resolver against a real Knot server, driven by a fake clock."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import discovery_dns._resolver as resolver_module
import pytest
from discovery_dns import DnsResolverBuilder
from discovery_dns.testing import KnotServer
from dnsplugin_support import MakeResolver, poll_until

from discovery.address import Address, ResolverState
from discovery.errors import ResolverError
from discovery.testing import FakeClock, RecordingListener

pytestmark = pytest.mark.integration


def settle(clock: FakeClock) -> float | None:
    """Wait (real time, bounded) until the resolver thread has acted and sleeps; return how long (None: until woken)."""
    return clock.wait_for_blocked()[0]


def next_delay(clock: FakeClock) -> float:
    """Seconds until the next scheduled lookup, once the resolver thread sleeps."""
    delay = settle(clock)
    assert delay is not None, "no lookup scheduled"
    return delay


def advance(clock: FakeClock, seconds: float) -> None:
    settle(clock)
    clock.advance(seconds)


def hostports(state: ResolverState) -> list[str]:
    return [a.addr for a in state.addresses]


def target(knot: KnotServer, endpoint: str) -> str:
    return f"dns://{knot.address}/{endpoint}"


# -- A / AAAA -----------------------------------------------------------------------


def test_spreads_over_all_a_records(knot: KnotServer, make_resolver: MakeResolver) -> None:
    r, listener = make_resolver(target(knot, "a.test.internal:50051"))
    state = listener.wait_for_state()
    assert hostports(state) == ["127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"]
    assert all(a.weight == 1 and a.priority == 0 for a in state.addresses)
    assert state.note == ""
    assert listener.errors == []
    assert r.lookups == 1


def test_default_port_is_443_and_cname_is_followed(knot: KnotServer, make_resolver: MakeResolver) -> None:
    _, listener = make_resolver(target(knot, "alias.test.internal"))
    assert hostports(listener.wait_for_state()) == ["127.0.0.2:443", "127.0.0.3:443", "127.0.0.4:443"]


def test_a_and_aaaa_deduplicated_in_stable_order(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(target(knot, "dual.test.internal:50051"))
    first = listener.wait_for_state()
    # IPv4 first (the families order), each family sorted; the mapped address is IPv6
    assert hostports(first) == ["127.0.0.2:50051", "[::1]:50051", "[::ffff:7f00:5]:50051"]
    # Re-resolving the same answer publishes nothing new (no churn downstream).
    advance(clock, 2.0)
    assert poll_until(lambda: r.lookups == 2, 5.0)
    settle(clock)
    assert len(listener.states) == 1

    _, l6 = make_resolver(target(knot, "dual.test.internal:50051"), families=["ipv6", "ipv4"])
    assert hostports(l6.wait_for_state()) == ["[::1]:50051", "[::ffff:7f00:5]:50051", "127.0.0.2:50051"]
    _, l4 = make_resolver(target(knot, "dual.test.internal:50051"), families=["ipv4"])
    assert hostports(l4.wait_for_state()) == ["127.0.0.2:50051"]


def test_ip_literals_resolve_to_themselves_without_a_query(make_resolver: MakeResolver) -> None:
    # Port 1 on loopback: nothing listens, and nothing must be asked.
    for endpoint, expected in [
        ("127.0.0.9:50051", "127.0.0.9:50051"),
        ("[::1]:50051", "[::1]:50051"),
        ("::1", "[::1]:443"),
        ("127.0.0.9", "127.0.0.9:443"),
    ]:
        r, listener = make_resolver(f"dns://127.0.0.1:1/{endpoint}")
        assert hostports(listener.wait_for_state()) == [expected]
        r.resolve_now()
        assert r.lookups == 0 and r.queries == 0


def test_ttl_is_clamped_to_min_and_max_interval(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    cases = [
        ("a.test.internal:1", {}, 2.0),  # TTL 2 s
        ("long.test.internal:1", {}, 300.0),  # TTL 600 s > max 300 s
        ("long.test.internal:1", {"max_interval": "1m"}, 60.0),
        ("zero.test.internal:1", {}, 2.0),  # TTL 0 -> min 2 s
        ("a.test.internal:1", {"min_interval": 5}, 5.0),
    ]
    for endpoint, config, expected in cases:
        r, listener = make_resolver(target(knot, endpoint), **config)
        listener.wait_for_state()
        assert settle(clock) == pytest.approx(expected), (endpoint, config)
        r.close()


# -- SRV --------------------------------------------------------------------------------------


def test_srv_ports_weights_and_priority_failover(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _r, listener = make_resolver(target(knot, "_grpc._tcp.svc.test.internal"))
    state = listener.wait_for_state()
    # tier 0 (dead: no address records, gone: NXDOMAIN) is unusable: tier 1 is published, tier 2 is not
    assert state.addresses == (
        Address("127.0.0.6", 50061, weight=30, priority=1),
        Address("127.0.0.7", 50062, weight=70, priority=1),
        Address("::1", 50062, weight=70, priority=1),
    )
    # Give a tier 0 target an address: tier 0 takes over once the TTL has passed.
    knot.set("dead", "A", "127.0.0.8")
    advance(clock, 2.0)
    state = listener.wait_for_state(lambda s: any(a.priority == 0 for a in s.addresses))
    assert state.addresses == (Address("127.0.0.8", 50051, weight=10, priority=0),)
    # And back to tier 1 when it goes away again.
    knot.delete("dead", "A")
    advance(clock, 2.0)
    listener.wait_for_state(lambda s: s.addresses and s.addresses[0].priority == 1 and s is not state)
    assert listener.errors == []


def test_srv_all_tiers_publishes_every_tier_that_resolves(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _r, listener = make_resolver(target(knot, "_grpc._tcp.svc.test.internal"), srv_tiers="all")
    state = listener.wait_for_state()
    assert state.addresses == (
        Address("127.0.0.6", 50061, weight=30, priority=1),
        Address("127.0.0.7", 50062, weight=70, priority=1),
        Address("::1", 50062, weight=70, priority=1),
        Address("127.0.0.2", 50071, weight=5, priority=2),
        Address("127.0.0.3", 50071, weight=5, priority=2),
        Address("127.0.0.4", 50071, weight=5, priority=2),
    )
    knot.set("dead", "A", "127.0.0.8")
    advance(clock, 2.0)
    state = listener.wait_for_state(lambda s: any(a.priority == 0 for a in s.addresses))
    assert [(a.addr, a.priority) for a in state.addresses][:2] == [("127.0.0.8:50051", 0), ("127.0.0.6:50061", 1)]
    assert listener.errors == []


def test_srv_duplicates_are_merged_heaviest_first(knot: KnotServer, make_resolver: MakeResolver) -> None:
    _, listener = make_resolver(target(knot, "_grpc._tcp.dup.test.internal"))
    assert listener.wait_for_state().addresses == (
        Address("127.0.0.6", 50051, weight=20),
        Address("127.0.0.6", 50052, weight=5),
    )


def test_srv_unavailable_and_missing(knot: KnotServer, make_resolver: MakeResolver) -> None:
    _, l1 = make_resolver(target(knot, "_grpc._tcp.none.test.internal"))
    s1 = l1.wait_for_state()
    assert s1.addresses == () and "_grpc._tcp.none.test.internal" in s1.note and "'.'" in s1.note
    _, l2 = make_resolver(target(knot, "_grpc._tcp.nothing.test.internal"))
    assert l2.wait_for_state().note == "NXDOMAIN for _grpc._tcp.nothing.test.internal"
    # srv forced on for a name without SRV records
    _, l3 = make_resolver(target(knot, "b1.test.internal"), srv=True)
    assert l3.wait_for_state().note == "no SRV records for b1.test.internal"
    # srv forced off: an underscore name looked up as A/AAAA on port 443
    _, l4 = make_resolver(target(knot, "_grpc._tcp.svc.test.internal"), srv=False)
    assert l4.wait_for_state().note == "no A/AAAA records for _grpc._tcp.svc.test.internal"


def test_srv_every_tier_unresolvable_is_an_empty_set(knot: KnotServer, make_resolver: MakeResolver) -> None:
    knot.delete("a", "A")
    knot.delete("b1", "A")
    knot.delete("b2")
    _, listener = make_resolver(target(knot, "_grpc._tcp.svc.test.internal"))
    state = listener.wait_for_state()
    assert state.addresses == ()
    assert state.note.startswith("no SRV target of _grpc._tcp.svc.test.internal resolves")
    assert "gone.test.internal (NXDOMAIN" in state.note


# -- changes over time ------------------------------------------------------------------------


def test_record_added_shows_up_when_the_ttl_expires(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(target(knot, "a.test.internal:50051"))
    listener.wait_for_state()
    knot.add("a", "A", "127.0.0.5", ttl=2)
    advance(clock, 1.9)  # TTL not yet expired: no lookup
    settle(clock)
    assert r.lookups == 1 and len(listener.states) == 1
    clock.advance(0.1)
    state = listener.wait_for_state(lambda s: len(s.addresses) == 4)
    assert hostports(state)[-1] == "127.0.0.5:50051"
    assert r.lookups == 2


def test_record_removed_disappears(knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver) -> None:
    _r, listener = make_resolver(target(knot, "a.test.internal:50051"))
    listener.wait_for_state()
    knot.delete("a", "A", "127.0.0.3")
    advance(clock, 2.0)
    state = listener.wait_for_state(lambda s: len(s.addresses) == 2)
    assert hostports(state) == ["127.0.0.2:50051", "127.0.0.4:50051"]


def test_server_down_reports_errors_and_keeps_the_last_set(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _r, listener = make_resolver(target(knot, "a.test.internal:50051"), min_interval=1, max_interval=4, timeout=0.3)
    good = listener.wait_for_state()
    knot.stop()
    advance(clock, 2.0)
    listener.wait_for_count(errors=1)
    err = listener.errors[0]
    assert isinstance(err, ResolverError)
    assert "timed out" in str(err) and knot.address in str(err) and "a.test.internal" in str(err)
    assert err.__cause__ is not None  # the dnspython exception
    # Retries back off (jittered, within [min, max]) and never publish an empty set.
    delays = []
    for n in range(2, 6):
        delay = next_delay(clock)
        delays.append(delay)
        assert 1.0 - 1e-6 <= delay <= 4.0 + 1e-6
        clock.advance(delay)
        listener.wait_for_count(errors=n)
    assert delays[-1] > delays[0]
    assert listener.states == [good]
    # The server comes back: the same set is published again (the error is over).
    knot.start()
    clock.advance(next_delay(clock))
    listener.wait_for_count(states=2)
    assert listener.states[-1] == good


def test_nxdomain_publishes_an_empty_set_then_recovers(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _r, listener = make_resolver(target(knot, "orders.test.internal:50051"))
    state = listener.wait_for_state()
    assert state == ResolverState((), note="NXDOMAIN for orders.test.internal")
    assert listener.errors == []
    knot.add("orders", "A", "127.0.0.2")
    delay = next_delay(clock)
    assert 2.0 - 1e-6 <= delay <= 2.0 * 1.2 + 1e-6  # backoff starts at min_interval
    clock.advance(delay)
    assert hostports(listener.wait_for_state(lambda s: bool(s.addresses))) == ["127.0.0.2:50051"]


def test_nxdomain_keeps_re_resolving_with_backoff(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(target(knot, "orders.test.internal:50051"), max_interval=10)
    listener.wait_for_state()
    delays = []
    for n in range(2, 8):
        delay = next_delay(clock)
        delays.append(delay)
        clock.advance(delay)
        assert poll_until(lambda n=n: r.lookups == n, 5.0)  # type: ignore[misc]
    assert all(2.0 - 1e-6 <= d <= 10.0 + 1e-6 for d in delays), delays
    assert delays[-1] >= 10.0 * 0.8 - 1e-6 and delays[0] < 3.0  # capped, still jittered
    assert len(listener.states) == 1  # the same empty answer is not re-published


def test_no_address_records_is_an_empty_set(knot: KnotServer, make_resolver: MakeResolver) -> None:
    _, listener = make_resolver(target(knot, "nodata.test.internal:50051"))
    assert listener.wait_for_state() == ResolverState((), note="no A/AAAA records for nodata.test.internal")
    _, l4 = make_resolver(target(knot, "nodata.test.internal:50051"), families=["ipv4"])
    assert l4.wait_for_state().note == "no A records for nodata.test.internal"


def test_refused_is_an_error_not_an_empty_set(knot: KnotServer, make_resolver: MakeResolver) -> None:
    # Knot is not authoritative for this name and answers REFUSED.
    _, listener = make_resolver(target(knot, "orders.elsewhere.internal:50051"))
    listener.wait_for_count(errors=1)
    assert "REFUSED" in str(listener.errors[0])
    assert listener.states == []


# -- resolve_now --------------------------------------------------------------------------------


def test_resolve_now_storm_gives_one_lookup_per_min_interval(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(target(knot, "long.test.internal:50051"))  # TTL 600 -> next in 300 s
    listener.wait_for_state()
    for _ in range(100):
        r.resolve_now()
    # The last lookup was less than min_interval (2 s) ago: one more when 2 s have passed, not 300 s.
    assert settle(clock) == pytest.approx(2.0)
    assert r.lookups == 1
    clock.advance(1.0)
    settle(clock)
    assert r.lookups == 1
    clock.advance(1.0)
    assert poll_until(lambda: r.lookups == 2, 5.0)
    for _ in range(100):
        r.resolve_now()
    settle(clock)
    clock.advance(1.99)
    settle(clock)
    assert r.lookups == 2
    clock.advance(0.01)
    assert poll_until(lambda: r.lookups == 3, 5.0)
    settle(clock)
    clock.advance(10.0)  # no pending request: nothing until the TTL says so
    assert settle(clock) == pytest.approx(290.0)
    assert r.lookups == 3


def test_resolve_now_runs_at_once_when_allowed(knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver) -> None:
    r, listener = make_resolver(target(knot, "long.test.internal:50051"))
    listener.wait_for_state()
    knot.add("long", "A", "127.0.0.3", ttl=600)
    advance(clock, 5.0)
    settle(clock)
    assert r.lookups == 1
    r.resolve_now()
    assert len(listener.wait_for_state(lambda s: len(s.addresses) == 2).addresses) == 2
    assert r.lookups == 2


# -- robustness -------------------------------------------------------------------------------


def test_cname_loop_is_reported_and_the_thread_survives(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _r, listener = make_resolver(target(knot, "loop1.test.internal:50051"))
    listener.wait_for_count(errors=1)
    assert "CNAME" in str(listener.errors[0])
    assert listener.states == []
    knot.delete("loop1")
    knot.add("loop1", "A", "127.0.0.2")
    clock.advance(next_delay(clock))
    assert hostports(listener.wait_for_state()) == ["127.0.0.2:50051"]


def _bad_answer(query: bytes, mode: str) -> bytes:
    import dns.flags
    import dns.message
    import dns.rcode
    import dns.rrset

    if mode == "junk":  # the query id, QR set, then nonsense counts and bytes
        return query[:2] + b"\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00\xff\xfe\x03abc"
    msg = dns.message.from_wire(query)
    resp = dns.message.make_response(msg)
    if mode == "formerr":
        resp.set_rcode(dns.rcode.FORMERR)
    elif mode == "wrong_type":  # a TXT record in answer to an A/AAAA question
        resp.answer.append(dns.rrset.from_text(msg.question[0].name, 5, "IN", "TXT", '"surprise"'))
    elif mode == "wrong_name":
        resp.answer.append(dns.rrset.from_text("elsewhere.test.", 5, "IN", "A", "127.0.0.9"))
    elif mode == "truncated":  # forces a TCP retry, and nothing listens on TCP
        resp.flags |= dns.flags.TC
    elif mode == "bad_rdata":  # an A record whose rdata is 3 bytes long
        wire = bytearray(resp.to_wire())
        wire[6:8] = b"\x00\x01"
        wire += b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x05\x00\x03\x7f\x00\x00"
        return bytes(wire)
    return resp.to_wire()


@pytest.fixture
def bad_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A UDP 'DNS server' on loopback that answers every query badly (``request.param``)."""
    mode = request.param
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            sock.sendto(_bad_answer(data, mode), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    t.join(2)
    sock.close()


BAD = ["junk", "formerr", "wrong_type", "wrong_name", "truncated", "bad_rdata"]


@pytest.mark.parametrize("bad_server", BAD, indirect=True)
def test_malformed_answers_never_kill_the_thread(
    bad_server: str, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(f"dns://{bad_server}/orders.test.internal:50051", min_interval=1, timeout=0.3)
    assert poll_until(lambda: listener.errors or listener.states, 5.0)
    advance(clock, 1.2)
    assert poll_until(lambda: r.lookups == 2, 5.0)
    settle(clock)
    assert not r.join(0)  # still running
    # whatever it was, it is an error or an empty set with a reason, never a crash or an address
    assert all(isinstance(e, ResolverError) and str(e) for e in listener.errors)
    assert all(s.addresses == () and s.note for s in listener.states)


def test_unexpected_exceptions_are_reported_and_the_thread_survives(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = resolver_module.resolve_host_set
    calls = []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(resolver_module, "resolve_host_set", flaky)
    _r, listener = make_resolver(target(knot, "a.test.internal:50051"))
    listener.wait_for_count(errors=1)
    assert "RuntimeError: boom" in str(listener.errors[0])
    assert isinstance(listener.errors[0].__cause__, RuntimeError)
    advance(clock, 2.4)
    assert len(listener.wait_for_state().addresses) == 3


class ExplodingListener(RecordingListener):
    def update_state(self, state: ResolverState) -> None:
        super().update_state(state)
        raise RuntimeError("listener bug")


def test_a_failing_listener_does_not_kill_the_thread(knot: KnotServer, clock: FakeClock) -> None:
    from discovery.resolver import ResolverOptions
    from discovery.target import parse_target

    listener = ExplodingListener()
    r = DnsResolverBuilder().build(
        parse_target(target(knot, "a.test.internal:50051")),
        listener,
        ResolverOptions(config={"timeout": 1.0}, clock=clock),
    )
    try:
        listener.wait_for_count(states=1)
        knot.add("a", "A", "127.0.0.5")
        advance(clock, 2.0)
        listener.wait_for_count(states=2)
    finally:
        r.close()
    assert r.join(5)


def test_close_stops_the_thread_and_silences_the_listener(
    knot: KnotServer, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver(target(knot, "a.test.internal:50051"))
    listener.wait_for_state()
    settle(clock)
    r.close()
    assert r.join(2.0)
    knot.add("a", "A", "127.0.0.5")
    clock.advance(100)
    r.resolve_now()
    assert len(listener.states) == 1 and listener.errors == []
    assert r.lookups == 1


def test_close_while_a_query_is_in_flight(clock: FakeClock, make_resolver: MakeResolver) -> None:
    # A UDP socket that never answers: the first query hangs for the timeout.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        r, listener = make_resolver(f"dns://127.0.0.1:{port}/a.test.internal:1", timeout=0.5)
        assert poll_until(lambda: r.queries >= 1, 5.0)
        r.close()  # returns without waiting for the query
        assert r.join(3.0)
    assert listener.states == [] and listener.errors == []


# -- where the queries go ------------------------------------------------------------------------


def test_system_configuration_is_used_without_an_authority(knot: KnotServer, make_resolver: MakeResolver) -> None:
    import dns.resolver

    def local() -> dns.resolver.Resolver:  # stands in for /etc/resolv.conf: loopback only
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = knot.port
        return res

    builder = DnsResolverBuilder(resolver_factory=local)
    r, listener = make_resolver("dns:///a.test.internal:50051", builder=builder)
    assert len(listener.wait_for_state().addresses) == 3
    assert r.target.server is None


def test_system_resolver_factory_default() -> None:
    assert resolver_module._system_resolver.__module__ == "discovery_dns._resolver"


def test_server_option_overrides_the_authority(knot: KnotServer, make_resolver: MakeResolver) -> None:
    r, listener = make_resolver("dns://127.0.0.1:1/a.test.internal:50051", server=knot.address)
    assert len(listener.wait_for_state().addresses) == 3
    assert r.target.server == ("127.0.0.1", knot.port)
