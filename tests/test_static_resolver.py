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


def test_weights_accept_any_sequence_as_a_config_file_gives_them() -> None:
    # A config file's resolver table reaches the builder frozen: lists become tuples.
    got = resolve("static:///127.0.0.1:1,127.0.0.1:2", weights=(3, 1))
    assert [a.weight for a in got] == [3, 1]
    for bad in ("31", [3, -1], [3, True], [3, 1.5]):
        with pytest.raises(ConfigError, match="resolver.weights: expected a list of 2 non-negative integers"):
            resolve("static:///127.0.0.1:1,127.0.0.1:2", weights=bad)


ENDPOINTS = {
    "127.0.0.1:1": {"weight": 3, "priority": 0, "zone": "eu-1a", "attributes": {"version": "v2"}},
    "[::1]:2": {"priority": 1, "attributes": {"tags": ["a", "b"], "canary": True}},
}


def test_endpoints_set_address_fields() -> None:
    a, b, c = resolve("static:///127.0.0.1:1,[::1]:2,localhost:3", endpoints=ENDPOINTS)
    assert (a.weight, a.priority, a.zone, dict(a.attributes)) == (3, 0, "eu-1a", {"version": "v2"})
    assert (b.weight, b.priority, b.zone, dict(b.attributes)) == (1, 1, "", {"tags": ("a", "b"), "canary": True})
    assert c == Address("localhost", 3)
    assert len({a, b, c}) == 3  # hashable, as de-duplicating resolver states needs


def test_endpoints_keys_match_other_spellings_of_an_address() -> None:
    got = resolve("static:///LocalHost,[::1]:2", endpoints={"localhost:443": {"zone": "z1"},
                                                          "[0:0::1]:2": {"zone": "z2"}})
    assert [a.zone for a in got] == ["z1", "z2"]


def test_endpoints_combine_with_weights() -> None:
    got = resolve("static:///127.0.0.1:1,127.0.0.1:2", weights=[5, 6], endpoints={"127.0.0.1:2": {"zone": "z"}})
    assert [(a.weight, a.zone) for a in got] == [(5, ""), (6, "z")]


@pytest.mark.parametrize(
    ("endpoints", "message"),
    [({"127.0.0.9:1": {}}, r'resolver.endpoints."127.0.0.9:1": not an address of the target; '
                           r"its addresses are: 127.0.0.1:1, 127.0.0.1:2"),
     ({"127.0.0.1:x": {}}, r'resolver.endpoints."127.0.0.1:x": not an address'),
     ({"127.0.0.1:1": {"wieght": 3}}, r"""resolver.endpoints."127.0.0.1:1": unknown key\(s\) \['wieght'\]"""),
     ({"127.0.0.1:1": {"weight": -1}}, r'resolver.endpoints."127.0.0.1:1".weight: expected a non-negative'),
     ({"127.0.0.1:1": {"weight": "3"}}, r'"127.0.0.1:1".weight: expected a non-negative integer'),
     ({"127.0.0.1:1": {"priority": 0.5}}, r'"127.0.0.1:1".priority: expected a non-negative integer'),
     ({"127.0.0.1:1": {"zone": 1}}, r'"127.0.0.1:1".zone: expected a string'),
     ({"127.0.0.1:1": {"attributes": {"v": {"x": 1}}}}, r'"127.0.0.1:1".attributes.v: expected a string'),
     ({"127.0.0.1:1": {"attributes": {"v": [None]}}}, r'"127.0.0.1:1".attributes.v: expected a list'),
     ({"127.0.0.1:1": {"attributes": ["v"]}}, r'"127.0.0.1:1".attributes: expected a table'),
     ({"127.0.0.1:1": 3}, r'"127.0.0.1:1": expected a table of weight, priority, zone, attributes'),
     (["127.0.0.1:1"], r"resolver.endpoints: expected a table")],
)
def test_bad_endpoints_name_the_key_path(endpoints: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve("static:///127.0.0.1:1,127.0.0.1:2", endpoints=endpoints)


def test_a_weight_given_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r'"127.0.0.1:1".weight: .*also given by resolver.weights'):
        resolve("static:///127.0.0.1:1", weights=[1], endpoints={"127.0.0.1:1": {"weight": 2}})


def test_check_validates_like_build() -> None:
    t = parse_target("static:///127.0.0.1:1")
    builder = get_resolver("static")
    builder.check(t, ResolverOptions(config={"endpoints": {"127.0.0.1:1": {"zone": "z"}}}))
    with pytest.raises(ConfigError, match="not an address of the target"):
        builder.check(t, ResolverOptions(config={"endpoints": {"127.0.0.2:1": {}}}))
