"""The core's system resolver: bare host:port and dns:/// targets with the core alone."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import discovery
from discovery import ConfigError, ResolverOptions, TargetError, parse_target
from discovery.resolver import Resolver
from discovery.resolvers.static import StaticResolver
from discovery.resolvers.system import SystemResolverBuilder
from discovery.testing import FakeClock, RecordingListener, wait_ready
from discovery.testing.conformance import ResolverConformance
from discovery.testing.servers import EchoStub

if TYPE_CHECKING:
    from conftest import PluginEnv


def hosts_file_addresses(name: str) -> set[str]:
    """The addresses /etc/hosts gives ``name``."""
    out = set()
    for line in Path("/etc/hosts").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1 and name in fields[1:]:
            out.add(fields[0])
    return out


class FakeGetaddrinfo:
    """Stands in for the operating system's resolver: answers per host name, counts calls. Thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.answers: dict[str, list[str] | BaseException] = {}
        self.calls = 0

    def set(self, host: str, answer: list[str] | BaseException) -> None:
        with self._cond:
            self.answers[host] = answer

    def __call__(self, host: str, port: int, family: int, type_: int, proto: int) -> list[tuple[Any, ...]]:
        assert (family, type_, proto) == (socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        with self._cond:
            self.calls += 1
            self._cond.notify_all()
            answer = self.answers.get(host, socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
        if isinstance(answer, BaseException):
            raise answer
        out: list[tuple[Any, ...]] = []
        for ip in answer:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    def wait_calls(self, n: int, timeout: float = 5.0) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.calls >= n, timeout):
                raise TimeoutError(f"wanted {n} lookups, saw {self.calls}")


class Harness:
    def __init__(self) -> None:
        self.gai = FakeGetaddrinfo()
        self.clock = FakeClock()
        self.listener = RecordingListener()
        self.resolvers: list[Resolver] = []

    def build(self, target: str = "dns:///orders.test:50051", **config: Any) -> Resolver:
        r = SystemResolverBuilder(self.gai).build(parse_target(target), self.listener,
                                                  ResolverOptions(config=config, clock=self.clock))
        self.resolvers.append(r)
        return r

    def settle(self) -> float | None:
        """Wait until the resolver thread sleeps on the fake clock again; how long it will sleep."""
        (left,) = self.clock.wait_for_blocked(1)
        return left

    def addrs(self, index: int = -1) -> list[str]:
        return [a.addr for a in self.listener.states[index].addresses]


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    for r in harness.resolvers:
        r.close()


class TestSystemConformance(ResolverConformance):
    def make_builder(self) -> SystemResolverBuilder:
        return SystemResolverBuilder()

    def target(self) -> str:
        return "dns:///localhost:50051"

    def bad_targets(self) -> list[str]:
        return ["dns://127.0.0.1:53/localhost:50051", "dns:///local host:1", "dns:///localhost:x",
                "dns:///localhost:1?srv=true", "dns:///-bad-.example:1", "dns:///a..b:1"]


def test_localhost_comes_from_the_hosts_file() -> None:
    expected = hosts_file_addresses("localhost")
    assert expected, "this test needs a localhost line in /etc/hosts"
    listener = RecordingListener()
    r = SystemResolverBuilder().build(parse_target("dns:///localhost:50051"), listener, ResolverOptions())
    try:
        state = listener.wait_for_state(lambda s: bool(s.addresses))
    finally:
        r.close()
    got = {a.host for a in state.addresses}
    assert got and got <= expected
    assert {a.port for a in state.addresses} == {50051}


@pytest.mark.parametrize("form", ["localhost:{port}", "dns:///localhost:{port}", "dns:localhost:{port}"])
def test_bare_host_port_works_with_the_core_alone(core_only: PluginEnv, start_backends, form: str) -> None:  # type: ignore[no-untyped-def]
    (server,) = start_backends(1)
    with discovery.insecure_channel(form.format(port=server.port)) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()
        wait_ready(ch, 1)
        assert f"127.0.0.1:{server.port}" in {b.address for b in ch.backends()}


def test_bare_host_port_in_a_config_file_with_the_core_alone(core_only: PluginEnv, tmp_path: Path,
                                                             start_backends) -> None:  # type: ignore[no-untyped-def]
    (server,) = start_backends(1)
    path = tmp_path / "discovery.toml"
    path.write_text(f'[services.a]\ntarget = "localhost:{server.port}"\nresolver = {{ interval = "10s" }}\n')
    with discovery.channel_from_config("a", path) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()
    path.write_text(f'[services.a]\ntarget = "localhost:{server.port}"\nresolver = {{ interval = "0.5s" }}\n')
    with pytest.raises(ConfigError) as info:
        discovery.channel_from_config("a", path)
    assert info.match(r"services.a.resolver.interval: expected a duration of at least \"1s\"")
    assert str(path) in str(info.value)


def test_a_dns_server_in_the_target_needs_the_plugin(core_only: PluginEnv) -> None:
    with pytest.raises(TargetError) as info:
        discovery.insecure_channel("dns://127.0.0.1:53/orders.internal:50051")
    assert info.match(r"querying a specific DNS server \('127.0.0.1:53'\) needs the DNS plugin: "
                      r"pip install -e plugins/dns \(in a grpc-discovery checkout\)\. Without it")


def test_an_ip_literal_needs_no_thread(h: Harness) -> None:
    before = threading.active_count()
    r = h.build("dns:///[::1]:50051")
    assert isinstance(r, StaticResolver)
    assert threading.active_count() == before
    assert h.addrs() == ["[::1]:50051"]
    assert h.gai.calls == 0


def test_ipv4_and_ipv6_in_system_order_deduplicated_and_bracketed(h: Harness) -> None:
    h.gai.set("orders.test", ["::1", "127.0.0.2", "::1", "127.0.0.3", "127.0.0.2"])
    h.build()
    h.listener.wait_for_count(states=1)
    assert h.addrs() == ["[::1]:50051", "127.0.0.2:50051", "127.0.0.3:50051"]


def test_default_port_is_443(h: Harness) -> None:
    h.gai.set("orders.test", ["127.0.0.1"])
    h.build("dns:///orders.test")
    h.listener.wait_for_count(states=1)
    assert h.addrs() == ["127.0.0.1:443"]


def test_re_resolves_every_30_seconds_by_default(h: Harness) -> None:
    h.gai.set("orders.test", ["127.0.0.1"])
    h.build()
    h.listener.wait_for_count(states=1)
    assert h.settle() == 30.0
    h.gai.set("orders.test", ["127.0.0.1", "127.0.0.2"])
    h.clock.advance(29.0)
    assert h.settle() == pytest.approx(1.0)
    assert h.gai.calls == 1
    h.clock.advance(1.0)
    h.listener.wait_for_count(states=2)
    assert h.addrs() == ["127.0.0.1:50051", "127.0.0.2:50051"]
    assert h.settle() == 30.0 and h.gai.calls == 2


def test_interval_option(h: Harness) -> None:
    h.gai.set("orders.test", ["127.0.0.1"])
    h.build(interval="5s")
    h.gai.wait_calls(1)
    assert h.settle() == 5.0
    h.clock.advance(5.0)
    h.gai.wait_calls(2)
    assert h.settle() == 5.0


def test_resolve_now_looks_up_at_once_but_at_most_every_2_seconds(h: Harness) -> None:
    h.gai.set("orders.test", ["127.0.0.1"])
    r = h.build()
    h.gai.wait_calls(1)
    h.settle()
    h.gai.set("orders.test", ["127.0.0.2"])
    h.clock.advance(10.0)
    r.resolve_now()  # 10 s after the last lookup: at once
    h.listener.wait_for_state(lambda s: [a.addr for a in s.addresses] == ["127.0.0.2:50051"])
    assert h.settle() == 30.0
    h.gai.set("orders.test", ["127.0.0.3"])
    for _ in range(50):
        r.resolve_now()
    assert h.settle() == pytest.approx(2.0)  # right after a lookup: rate-limited to one per 2 s
    assert h.gai.calls == 2
    h.clock.advance(2.0)
    h.listener.wait_for_state(lambda s: [a.addr for a in s.addresses] == ["127.0.0.3:50051"])
    assert h.settle() == 30.0
    assert h.gai.calls == 3  # fifty calls, one lookup


def test_unknown_name_is_an_empty_set_re_resolved_with_backoff(h: Harness) -> None:
    h.build()  # the fake knows no name yet: NXDOMAIN
    state = h.listener.wait_for_state()
    assert state.addresses == () and "'orders.test' not found by the system resolver" in state.note
    # Backoff 1 s x1.6 per empty answer (jitter 20 %), never under the 2 s floor, capped at the interval.
    for n in range(1, 11):
        delay = h.settle()
        base = min(30.0, 1.6 ** (n - 1))
        assert delay is not None
        assert max(2.0, base * 0.8) - 1e-9 <= delay <= max(2.0, min(30.0, base * 1.2)) + 1e-9, (n, delay)
        h.clock.advance(delay)
        h.gai.wait_calls(n + 1)
    delay = h.settle()
    assert delay is not None and 24.0 - 1e-9 <= delay <= 30.0  # capped at the interval (jitter below it)
    h.gai.set("orders.test", ["127.0.0.1"])
    h.clock.advance(30.0)
    h.listener.wait_for_state(lambda s: bool(s.addresses))
    # Found again: back to the plain interval, the backoff reset.
    assert h.settle() == 30.0
    assert h.listener.errors == []


def test_a_failing_system_resolver_keeps_the_last_addresses(h: Harness) -> None:
    h.gai.set("orders.test", ["127.0.0.1"])
    h.build()
    h.listener.wait_for_count(states=1)
    h.settle()
    h.gai.set("orders.test", socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"))
    h.clock.advance(30.0)
    h.listener.wait_for_count(errors=1)
    assert "Temporary failure in name resolution" in str(h.listener.errors[0])
    assert len(h.listener.states) == 1  # no empty set pushed over the good one
    h.gai.set("orders.test", UnicodeError("label too long"))
    h.settle()
    h.clock.advance(30.0)
    h.listener.wait_for_count(errors=2)
    assert "label too long" in str(h.listener.errors[1]) and len(h.listener.states) == 1


@pytest.mark.parametrize(
    ("config", "message"),
    [({"interval": "0.5s"}, r"resolver.interval: expected a duration of at least \"1s\""),
     ({"interval": 0}, "resolver.interval"),
     ({"interval": float("inf")}, "resolver.interval"),
     ({"interval": "soon"}, "resolver.interval"),
     ({"interval": True}, "resolver.interval"),
     ({"server": "127.0.0.1:53"}, r"unknown key\(s\) \['server'\].*pip install -e plugins/dns")],
)
def test_bad_options_name_the_key(config: dict[str, Any], message: str) -> None:
    t = parse_target("dns:///localhost:1")
    with pytest.raises(ConfigError, match=message):
        SystemResolverBuilder().check(t, ResolverOptions(config=config))
    with pytest.raises(ConfigError, match=message):
        SystemResolverBuilder().build(t, RecordingListener(), ResolverOptions(config=config))


@pytest.mark.parametrize(
    ("target", "message"),
    [("dns://8.8.8.8/orders:1", "needs the DNS plugin"),
     ("dns:///orders:1?x=1", "takes no query parameters"),
     ("dns:///or ders:1", "whitespace or a control character"),
     ("dns:///orders:99999", "port must be a number"),
     ("dns:///" + "a" * 64 + ".test:1", "not a valid host name")],
)
def test_bad_targets(target: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        SystemResolverBuilder().check(parse_target(target), ResolverOptions())


def test_default_authority_is_the_endpoint() -> None:
    assert SystemResolverBuilder().default_authority(parse_target("dns:///localhost:50051")) == "localhost:50051"


def test_credentials_in_the_authority_are_not_echoed() -> None:
    with pytest.raises(TargetError) as info:
        SystemResolverBuilder().check(parse_target("dns://user:s3cret@127.0.0.1/orders:1"), ResolverOptions())
    assert "s3cret" not in str(info.value) and "user" not in str(info.value)
    assert info.match(r"'dns://127.0.0.1/orders:1': querying a specific DNS server \('127.0.0.1'\)")


@pytest.mark.parametrize("endpoint", ["orders\n.test:1", "orders.test\n:1", "\ud800:80", "a_b.-c:1"])
def test_host_names_are_checked_whole(endpoint: str) -> None:
    with pytest.raises(TargetError):
        SystemResolverBuilder().check(parse_target("dns:///" + endpoint), ResolverOptions())
