"""Service configs in gRPC's vocabulary and config files (TOML, YAML, JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import discovery
from discovery import ConfigError, UnknownPolicyError, parse_service_config
from discovery.config import load_config_file, parse_duration
from discovery.testing.servers import EchoStub


def test_first_supported_policy_wins_and_experimental_spellings_work() -> None:
    sc = parse_service_config({"loadBalancingConfig": [{"grpclb": {}}, {"round_robin": {}}, {"pick_first": {}}]})
    assert sc.policy == "round_robin"
    assert parse_service_config('{"loadBalancingConfig":[{"pick_first_experimental":{}}]}').policy == "pick_first"
    assert parse_service_config({"loadBalancingPolicy": "ROUND_ROBIN"}).policy == "round_robin"
    assert parse_service_config(None).policy == "round_robin"


def test_unknown_policies_list_the_known_ones() -> None:
    with pytest.raises(UnknownPolicyError, match=r"loadBalancingConfig.*\['grpclb'\].*round_robin"):
        parse_service_config({"loadBalancingConfig": [{"grpclb": {}}]})


def test_grpc_users_json_is_accepted_and_only_what_grpcio_must_do_reaches_backends() -> None:
    sc = parse_service_config({
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "ecommerce.v1.OrderService"},
        "methodConfig": [{"name": [{"service": "ecommerce.v1.OrderService"}], "timeout": "1.5s",
                          "waitForReady": True,
                          "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                                          "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1},
    })
    assert sc.health_service_name == "ecommerce.v1.OrderService"
    mc = sc.method_config("/ecommerce.v1.OrderService/GetOrder")
    assert mc is not None and mc.timeout == 1.5 and mc.wait_for_ready is True
    assert mc.retry is not None and mc.retry.max_attempts == 3
    # The channel applies timeout, waitForReady and retries itself; backends
    # get only health checking (and message size limits, when given).
    backend = json.loads(sc.backend_json)
    assert backend == {"healthCheckConfig": {"serviceName": "ecommerce.v1.OrderService"},
                       "loadBalancingConfig": [{"round_robin": {}}]}


@pytest.mark.parametrize(
    ("config", "path"),
    [({"nope": 1}, "service_config: unknown key"),
     ({"loadBalancingConfig": []}, "service_config.loadBalancingConfig"),
     ({"loadBalancingConfig": [{"a": {}, "b": {}}]}, r"loadBalancingConfig\[0\]"),
     ({"loadBalancingConfig": [{"round_robin": {"x": 1}}]}, r"loadBalancingConfig\[0\].round_robin"),
     ({"methodConfig": [{"name": [], "timeout": "soon"}]}, r"methodConfig\[0\].timeout"),
     ({"methodConfig": [{"name": [], "waitForReady": "yes"}]}, r"methodConfig\[0\].waitForReady"),
     ({"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}}, "retryThrottling.maxTokens"),
     ({"healthCheckConfig": {"serviceName": 3}}, "healthCheckConfig.serviceName"),
     ("{not json", "not valid JSON")],
)
def test_bad_service_configs_name_the_key(config: object, path: str) -> None:
    with pytest.raises(ConfigError, match=path):
        parse_service_config(config)  # type: ignore[arg-type]


def test_durations() -> None:
    assert parse_duration("10s", key_path="k") == 10.0
    assert parse_duration("0.25s", key_path="k") == 0.25
    assert parse_duration(3, key_path="k", allow_number=True) == 3.0
    for bad in ("10", "1m", True, -1, 3):
        with pytest.raises(ConfigError, match="k"):
            parse_duration(bad, key_path="k")


TOML = """
[services.orders]
target = "static:///{addrs}"
options = {{ "grpc.keepalive_time_ms" = 30000, "grpc.max_receive_message_length" = 1048576 }}
drain_grace = "5s"
[services.orders.service_config]
loadBalancingConfig = [{{ round_robin = {{}} }}]
healthCheckConfig = {{ serviceName = "discovery.testing.Echo" }}
"""


def test_channel_from_toml_file_works_end_to_end(tmp_path: Path, start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    path = tmp_path / "discovery.toml"
    path.write_text(TOML.format(addrs=",".join(s.addr for s in servers)))
    with discovery.channel_from_config("orders", path) as ch:
        stub = EchoStub(ch)
        got = {stub.Unary(b"", timeout=10) for _ in range(10)}
    assert got == {s.name.encode() for s in servers}


def test_env_var_and_default_file_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         start_backends) -> None:  # type: ignore[no-untyped-def]
    (server,) = start_backends(1)
    env_file = tmp_path / "elsewhere.json"
    env_file.write_text(json.dumps({"services": {"a": {"target": f"static:///{server.addr}"}}}))
    monkeypatch.setenv("DISCOVERY_CONFIG", str(env_file))
    with discovery.channel_from_config("a") as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()
    monkeypatch.delenv("DISCOVERY_CONFIG")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"discovery.toml.*\(the default ./discovery.toml\) does not exist"):
        discovery.channel_from_config("a")


def test_yaml_file_uses_safe_loading(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("services:\n  a:\n    target: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="d.yaml: cannot parse YAML"):
        load_config_file(path)
    path.write_text("services:\n  a:\n    target: static:///127.0.0.1:1\n")
    assert load_config_file(path)["a"].target == "static:///127.0.0.1:1"


@pytest.mark.parametrize(
    ("body", "message"),
    [('[services.a]\ntarget = "static:///127.0.0.1:1"\ntargte = 1\n', r"services.a: unknown key\(s\) \['targte'\]"),
     ("[services.a]\n", "services.a: missing required key 'target'"),
     ('[services.a]\ntarget = "nosuch:///x"\n', "services.a.target: unknown resolver 'nosuch'"),
     ('[services.a]\ntarget = "static:///127.0.0.1:1"\noptions = { "grpc.x" = 1.5 }\n',
      r"services.a.options.grpc.x: expected an integer or a string"),
     ('[services.a]\ntarget = "static:///127.0.0.1:1"\n'
      '[services.a.service_config]\nloadBalancingConfig = [{ magic = {} }]\n',
      r"services.a.service_config.loadBalancingConfig: none of the policies \['magic'\]"),
     ('[services.a]\ntarget = "static:///127.0.0.1:1"\ntls = { ca_file = "/nonexistent.pem" }\n',
      "services.a.tls.ca_file: file '/nonexistent.pem' does not exist"),
     ('[other]\nx = 1\n', r"unknown top-level key\(s\) \['other'\]"),
     ("[services.a\n", "cannot parse TOML")],
)
def test_bad_files_name_file_key_and_expectation(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        discovery.channel_from_config("a", path)
    assert str(path) in str(info.value)
    assert info.match(message)


def test_a_bad_service_anywhere_in_the_file_applies_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import discovery as d

    opened: list[str] = []
    real_open = d._open
    monkeypatch.setattr(d, "_open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    path = tmp_path / "half.toml"
    path.write_text('[services.good]\ntarget = "static:///127.0.0.1:1"\n'
                    '[services.bad]\ntarget = "static:///127.0.0.1:1"\ndrain_grace = "forever"\n')
    with pytest.raises(ConfigError, match="services.bad.drain_grace"):
        discovery.channel_from_config("good", path)
    assert opened == []


def test_resolver_options_of_every_service_are_checked_up_front(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text('[services.good]\ntarget = "static:///127.0.0.1:1"\n'
                    '[services.bad]\ntarget = "static:///127.0.0.1:1,127.0.0.1:2"\nresolver = { weights = [1] }\n')
    with pytest.raises(ConfigError) as info:
        discovery.channel_from_config("good", path)
    assert str(path) in str(info.value)
    assert info.match("services.bad.resolver.weights: expected a list of 2 non-negative integers")
    path.write_text('[services.a]\ntarget = "ipv4:localhost:1"\n')
    with pytest.raises(ConfigError, match="services.a.target: .*not an IPv4 address"):
        discovery.channel_from_config("a", path)


def test_bad_resolver_options_fail_before_anything_starts(tmp_path: Path) -> None:
    import threading

    before = threading.active_count()
    path = tmp_path / "r.toml"
    path.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\nresolver = { weights = "heavy" }\n')
    with pytest.raises(ConfigError, match="resolver.weights"):
        discovery.channel_from_config("a", path)
    assert threading.active_count() <= before  # no control thread left running


STATIC_TOML = """
[services.orders]
target = "static:///{a},{b}"
[services.orders.resolver]
weights = [3, 1]
[services.orders.resolver.endpoints."{a}"]
priority = 0
zone = "eu-1a"
attributes = {{ version = "v2", tags = ["blue", "canary"] }}
[services.orders.resolver.endpoints."{b}"]
priority = 1
zone = "eu-1b"
"""

STATIC_YAML = """
services:
  orders:
    target: static:///{a},{b}
    resolver:
      weights: [3, 1]
      endpoints:
        "{a}": {{priority: 0, zone: eu-1a, attributes: {{version: v2, tags: [blue, canary]}}}}
        "{b}": {{priority: 1, zone: eu-1b}}
"""


@pytest.mark.parametrize(("suffix", "template"), [(".toml", STATIC_TOML), (".yaml", STATIC_YAML)])
def test_static_weights_and_endpoints_from_a_config_file(tmp_path: Path, start_backends, suffix: str,
                                                         template: str) -> None:  # type: ignore[no-untyped-def]
    from discovery import ResolverOptions, get_resolver, parse_target
    from discovery.testing import RecordingListener, wait_ready

    a, b = start_backends(2)
    path = tmp_path / f"discovery{suffix}"
    path.write_text(template.format(a=a.addr, b=b.addr))
    entry = load_config_file(path)["orders"]
    # What the static resolver publishes from the file's (frozen) resolver table.
    listener = RecordingListener()
    get_resolver("static").build(parse_target(entry.target), listener, ResolverOptions(config=entry.resolver)).close()
    assert listener.last is not None
    first, second = listener.last.addresses
    assert (first.weight, first.priority, first.zone) == (3, 0, "eu-1a")
    assert dict(first.attributes) == {"version": "v2", "tags": ("blue", "canary")}
    assert (second.weight, second.priority, second.zone, dict(second.attributes)) == (1, 1, "eu-1b", {})
    # And the channel the file describes works, its backends carrying the weights.
    with discovery.channel_from_config("orders", path) as ch:
        wait_ready(ch, 2)
        assert {s.address: s.weight for s in ch.backends()} == {a.addr: 3, b.addr: 1}
        assert EchoStub(ch).Unary(b"", timeout=10) in {a.name.encode(), b.name.encode()}


def test_static_endpoints_in_a_config_file_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\n'
                    '[services.a.resolver.endpoints."127.0.0.1:2"]\nweight = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert info.match(r'services.a.resolver.endpoints."127.0.0.1:2": not an address of the target')
    path.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\n'
                    '[services.a.resolver.endpoints."127.0.0.1:1"]\nzone = 5\n')
    with pytest.raises(ConfigError, match=r'resolver.endpoints."127.0.0.1:1".zone: expected a string, got 5'):
        load_config_file(path)
