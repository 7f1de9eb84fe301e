"""The static, ipv4 and ipv6 resolvers."""

from __future__ import annotations

import pytest

from discovery import Address, ConfigError, ResolverOptions, TargetError, get_resolver, parse_target
from discovery.testing import RecordingListener


def resolve(target: str, **config: object) -> tuple[Address, ...]:
    t = parse_target(target)
    listener = RecordingListener()
    r = get_resolver(t.scheme).build(t, listener, ResolverOptions(config=config))
    r.resolve_now()
    r.close()
    assert listener.last is not None
    return listener.last.addresses


def test_static_list_keeps_order_dedupes_and_defaults_port() -> None:
    got = resolve("static:///127.0.0.2:50051,localhost,127.0.0.2:50051,[::1]:7")
    assert [a.addr for a in got] == ["127.0.0.2:50051", "localhost:443", "[::1]:7"]


def test_ipv4_and_ipv6_forms() -> None:
    assert [a.addr for a in resolve("ipv4:127.0.0.1:1,127.0.0.2")] == ["127.0.0.1:1", "127.0.0.2:443"]
    assert [a.addr for a in resolve("ipv6:[::1]:5,::1")] == ["[::1]:5", "[::1]:443"]


@pytest.mark.parametrize(
    ("target", "message"),
    [("ipv4:localhost:1", "not an IPv4"), ("ipv6:127.0.0.1:1", "not an IPv6"),
     ("static:///a:1,,b:2", "address #2 is empty"), ("static:///a:x", "port must be a number"),
     ("static://auth/a:1", "takes no authority")],
)
def test_bad_static_targets(target: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        resolve(target)


def test_weights_option() -> None:
    got = resolve("static:///127.0.0.1:1,127.0.0.1:2", weights=[3, 1])
    assert [a.weight for a in got] == [3, 1]
    with pytest.raises(ConfigError, match="resolver.weights"):
        resolve("static:///127.0.0.1:1,127.0.0.1:2", weights=[3])
    with pytest.raises(ConfigError, match="unknown key"):
        resolve("static:///127.0.0.1:1", nope=1)
