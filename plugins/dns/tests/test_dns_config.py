"""Options, targets, registration and packaging of the dns: plugin (no DNS server needed)."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import pytest
from discovery_dns import DnsConfig, DnsResolverBuilder, parse_config, parse_target

from discovery.errors import ConfigError, TargetError
from discovery.resolver import ResolverOptions
from discovery.target import parse_target as parse_uri
from discovery.testing import FakeClock, RecordingListener


def build(target: str, **config: Any) -> Any:
    return DnsResolverBuilder().build(
        parse_uri(target), RecordingListener(), ResolverOptions(config=config, clock=FakeClock())
    )


def dns_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "discovery-resolver dns")


def test_defaults() -> None:
    assert parse_config({}) == DnsConfig(
        server=None, min_interval=2.0, max_interval=300.0, timeout=5.0, srv=None, families=("ipv4", "ipv6")
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"min_interval": "30s"}, {"min_interval": 30.0}),
        ({"min_interval": "1.5s", "max_interval": 90}, {"min_interval": 1.5, "max_interval": 90.0}),
        ({"timeout": "500ms"}, {"timeout": 0.5}),
        ({"max_interval": "5m"}, {"max_interval": 300.0}),
        ({"max_interval": "1h"}, {"max_interval": 3600.0}),
        ({"timeout": 0.25}, {"timeout": 0.25}),
        ({"srv": True}, {"srv": True}),
        ({"srv": False}, {"srv": False}),
        ({"srv": "auto"}, {"srv": None}),
        ({"families": ["ipv6"]}, {"families": ("ipv6",)}),
        ({"families": ["IPv6", "ipv4"]}, {"families": ("ipv6", "ipv4")}),
        ({}, {"srv_tiers": "lowest"}),
        ({"srv_tiers": "all"}, {"srv_tiers": "all"}),
        ({"server": "127.0.0.1"}, {"server": ("127.0.0.1", 53)}),
        ({"server": "127.0.0.1:5353"}, {"server": ("127.0.0.1", 5353)}),
        ({"server": "[::1]:5353"}, {"server": ("::1", 5353)}),
        ({"server": "::1"}, {"server": ("::1", 53)}),
    ],
)
def test_good_values(config: dict[str, Any], expected: dict[str, Any]) -> None:
    parsed = parse_config(config)
    for key, value in expected.items():
        assert getattr(parsed, key) == value


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"servr": "127.0.0.1"}, "servr"),
        ({"interval": 5}, "interval"),
        ({"min_interval": 0}, "min_interval"),
        ({"min_interval": -1}, "min_interval"),
        ({"min_interval": "soon"}, "min_interval"),
        ({"min_interval": "30"}, "min_interval"),
        ({"min_interval": True}, "min_interval"),
        ({"min_interval": float("nan")}, "min_interval"),
        ({"max_interval": [1]}, "max_interval"),
        ({"min_interval": 10, "max_interval": 5}, "max_interval"),
        ({"min_interval": 400}, "min_interval"),
        ({"timeout": "0s"}, "timeout"),
        ({"srv": "maybe"}, "srv"),
        ({"srv": 1}, "srv"),
        ({"families": "ipv4"}, "families"),
        ({"families": []}, "families"),
        ({"families": ["ipv5"]}, "families"),
        ({"families": ["ipv4", "ipv4"]}, "families"),
        ({"srv_tiers": "every"}, "srv_tiers"),
        ({"srv_tiers": True}, "srv_tiers"),
        ({"server": "dns.example.org"}, "server"),
        ({"server": "127.0.0.1:99999"}, "server"),
        ({"server": ""}, "server"),
        ({"server": 53}, "server"),
    ],
)
def test_bad_values_name_the_key_before_any_thread_starts(config: dict[str, Any], key: str) -> None:
    before = dns_threads()
    with pytest.raises(ConfigError) as info:
        build("dns://127.0.0.1:1/a.test.internal:50051", **config)
    assert info.value.key_path == key
    assert key in str(info.value)
    assert dns_threads() == before


@pytest.mark.parametrize(
    "target",
    [
        "dns://not-an-ip/a.test.internal:50051",
        "dns://127.0.0.1:0/a.test.internal:50051",
        "dns://127.0.0.1/a.test.internal:0",
        "dns://127.0.0.1/a.test.internal:http",
        "dns://127.0.0.1/a..test.internal:50051",
        "dns://127.0.0.1/a test:50051",
        "dns://127.0.0.1/a.test.internal:50051?tag=x",
        "dns://127.0.0.1/" + "x" * 64 + ".test:1",
    ],
)
def test_bad_targets(target: str) -> None:
    before = dns_threads()
    with pytest.raises(TargetError):
        build(target)
    assert dns_threads() == before


@pytest.mark.parametrize("target", ["dns://user:s3cret@127.0.0.1/a.test.internal:50051",
                                    "dns://s3cret@/a.test.internal:50051"])
def test_userinfo_in_the_target_is_not_echoed(target: str) -> None:
    with pytest.raises(TargetError) as info:
        build(target)
    assert "s3cret" not in str(info.value)


def test_the_system_resolvers_interval_says_what_the_plugin_takes_instead() -> None:
    # A config file written for the core alone (resolver = { interval = "10s" }) meets
    # this plugin as soon as it is installed.
    with pytest.raises(ConfigError, match=r"^interval: the system resolver's option; .*min_interval and max_interval"):
        build("dns:///orders.internal:50051", interval="10s")


def test_srv_forced_with_a_port_or_an_ip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="srv"):
        build("dns://127.0.0.1/orders.internal:50051", srv=True)
    with pytest.raises(ConfigError, match="srv"):
        build("dns://127.0.0.1/_grpc._tcp.orders.internal:50051", srv=True)
    with pytest.raises(ConfigError, match="srv"):
        build("dns://127.0.0.1/127.0.0.2", srv=True)


@pytest.mark.parametrize(
    ("uri", "config", "host", "port", "srv", "literal", "server"),
    [
        ("dns:///orders.internal:50051", {}, "orders.internal", 50051, False, False, None),
        ("dns:///orders.internal", {}, "orders.internal", 443, False, False, None),
        ("dns:///orders.internal.:8080", {}, "orders.internal", 8080, False, False, None),
        ("dns://127.0.0.1/orders.internal:1", {}, "orders.internal", 1, False, False, ("127.0.0.1", 53)),
        ("dns://[::1]:5353/orders:1", {}, "orders", 1, False, False, ("::1", 5353)),
        ("dns:///_grpc._tcp.orders.internal", {}, "_grpc._tcp.orders.internal", None, True, False, None),
        (
            "dns:///_grpc._tcp.orders.internal",
            {"srv": False},
            "_grpc._tcp.orders.internal",
            443,
            False,
            False,
            None,
        ),
        (
            "dns:///_grpc._tcp.orders.internal:50051",
            {},
            "_grpc._tcp.orders.internal",
            50051,
            False,
            False,
            None,
        ),
        ("dns:///orders.internal", {"srv": True}, "orders.internal", None, True, False, None),
        ("dns:///[::1]:50051", {}, "::1", 50051, False, True, None),
        ("dns:///::1", {}, "::1", 443, False, True, None),
        ("dns:///127.0.0.1:7", {}, "127.0.0.1", 7, False, True, None),
        ("dns://127.0.0.1:1/x:2", {"server": "[::1]:5353"}, "x", 2, False, False, ("::1", 5353)),
    ],
)
def test_target_forms(
    uri: str, config: dict[str, Any], host: str, port: int | None, srv: bool, literal: bool, server: Any
) -> None:
    t = parse_target(parse_uri(uri), parse_config(config))
    assert (t.host, t.port, t.srv, t.literal, t.server) == (host, port, srv, literal, server)


@pytest.mark.parametrize(
    ("uri", "authority"),
    [
        ("dns:///orders.internal:50051", "orders.internal:50051"),
        ("dns://127.0.0.1:53/orders.internal", "orders.internal"),
        ("dns:///_grpc._tcp.orders.internal", "orders.internal"),
        ("dns:///_grpc._tcp.orders.internal.", "orders.internal"),
        ("dns:///[::1]:50051", "[::1]:50051"),
        ("dns:///::1", "[::1]"),
    ],
)
def test_default_authority(uri: str, authority: str) -> None:
    assert DnsResolverBuilder().default_authority(parse_uri(uri)) == authority


def test_registered_through_the_entry_point() -> None:
    from importlib.metadata import entry_points

    (ep,) = [ep for ep in entry_points(group="discovery.resolvers") if ep.name == "dns"]
    assert ep.value == "discovery_dns:DnsResolverBuilder"
    assert ep.load() is DnsResolverBuilder
    assert DnsResolverBuilder.scheme == "dns"
    from discovery import registry

    assert isinstance(registry.get_resolver("dns"), DnsResolverBuilder)


def test_missing_dnspython_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['dns'] = None\n"
        "try:\n"
        "    import discovery_dns\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert "pip install dnspython" in out.stdout and "pip install discovery-dns" in out.stdout, out


def test_core_does_not_import_the_plugin() -> None:
    code = "import sys, discovery, discovery.registry\nprint('discovery_dns' in sys.modules, 'dns' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["False", "False"], out
