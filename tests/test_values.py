"""Address, ResolverState and target parsing."""

from __future__ import annotations

import pytest

from discovery import Address, Attributes, ResolverState, TargetError, parse_target
from discovery.target import parse_host_port, split_host_port


def test_address_is_frozen_hashable_and_formats_ipv6() -> None:
    a = Address("::1", 50051, attributes={"zone": "a"})
    assert a.addr == "[::1]:50051"
    assert isinstance(a.attributes, Attributes)
    assert hash(a) == hash(Address("::1", 50051, attributes={"zone": "a"}))
    with pytest.raises(AttributeError):
        a.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"host": "", "port": 1}, {"host": "h", "port": 0},
                                    {"host": "h", "port": 70000}, {"host": "h", "port": 1, "weight": -1}])
def test_address_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Address(**kwargs)  # type: ignore[arg-type]


def test_equal_states_compare_equal_even_when_built_separately() -> None:
    s1 = ResolverState([Address("127.0.0.1", 1), Address("127.0.0.1", 2, weight=3)])
    s2 = ResolverState((Address("127.0.0.1", 1), Address("127.0.0.1", 2, weight=3)))
    assert s1 == s2 and hash(s1) == hash(s2)
    assert s1 != ResolverState((Address("127.0.0.1", 1), Address("127.0.0.1", 2, weight=4)))


@pytest.mark.parametrize(
    ("raw", "scheme", "authority", "endpoint"),
    [
        ("dns:///orders.internal:50051", "dns", "", "orders.internal:50051"),
        ("dns://127.0.0.1:53/orders.internal:50051", "dns", "127.0.0.1:53", "orders.internal:50051"),
        ("dns://[::1]:53/orders", "dns", "[::1]:53", "orders"),
        ("ipv4:10.0.0.1:50051,10.0.0.2:50051", "ipv4", "", "10.0.0.1:50051,10.0.0.2:50051"),
        ("ipv6:[::1]:50051", "ipv6", "", "[::1]:50051"),
        ("static:///a:1,b:2", "static", "", "a:1,b:2"),
        ("kubernetes:///orders.shop:grpc", "kubernetes", "", "orders.shop:grpc"),
    ],
)
def test_parse_target(raw: str, scheme: str, authority: str, endpoint: str) -> None:
    t = parse_target(raw)
    assert (t.scheme, t.authority, t.endpoint) == (scheme, authority, endpoint)
    assert str(t) == raw


def test_target_query_parameters_keep_repeats() -> None:
    t = parse_target("consul://127.0.0.1:8500/orders?tag=v2&tag=eu&dc=dc1")
    assert t.endpoint == "orders"
    assert t.params() == {"tag": ["v2", "eu"], "dc": ["dc1"]}


@pytest.mark.parametrize("raw", ["", "   ", "no-scheme-here", "dns://authority-without-slash", "dns:///"])
def test_bad_targets_raise_target_error(raw: str) -> None:
    with pytest.raises(TargetError):
        parse_target(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("h:1", ("h", "1")), ("h", ("h", None)), ("[::1]:80", ("::1", "80")), ("[::1]", ("::1", None)),
     ("::1", ("::1", None)), ("orders.shop:grpc", ("orders.shop", "grpc"))],
)
def test_split_host_port(raw: str, expected: tuple[str, str | None]) -> None:
    assert split_host_port(raw) == expected


def test_parse_host_port_defaults_to_443_and_checks_range() -> None:
    assert parse_host_port("example") == ("example", 443)
    with pytest.raises(TargetError, match="1..65535"):
        parse_host_port("h:99999")
    with pytest.raises(TargetError, match="port is required"):
        parse_host_port("h", None)
    for bad in ("[::1", "[]:1", "h:", ":80", "[::1]x"):
        with pytest.raises(TargetError):
            split_host_port(bad)
