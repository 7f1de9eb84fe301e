"""Every input is checked where it enters: one ConfigError (or TargetError) naming the key.

Options, compression, settings, targets, addresses and service configs, each
case a one-line reproduction of something that used to be accepted (and
then failed on a background thread, or inside grpcio) or that raised a bare
TypeError/ValueError/RecursionError.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import discovery
from discovery import Address, ChannelSettings, ConfigError, TargetError, aio, parse_service_config, parse_target
from discovery.config import load_config_file
from discovery.options import check_options
from discovery.testing.servers import BackendServer, EchoStub, static_target


@pytest.fixture
def no_new_threads() -> Iterator[None]:
    """The factory failed before starting anything: no control thread is left behind."""
    before = set(threading.enumerate())
    yield
    assert not [t for t in threading.enumerate() if t not in before and t.name.startswith("discovery")]


# -- channel options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [([("grpc.keepalive_time_ms", [1])], r"options\.grpc\.keepalive_time_ms: expected an integer, got list"),
     ([("grpc.keepalive_time_ms", "1000")], r"options\.grpc\.keepalive_time_ms: expected an integer in \[1, "),
     ([("grpc.keepalive_time_ms", 1.5)], r"options\.grpc\.keepalive_time_ms: expected an integer, got float"),
     ([("grpc.keepalive_time_ms", 2**31)], r"options\.grpc\.keepalive_time_ms: expected an integer in"),
     ([("grpc.keepalive_time_ms", 0)], r"options\.grpc\.keepalive_time_ms: expected an integer in \[1, "),
     ([("grpc.max_receive_message_length", -2)], r"grpc\.max_receive_message_length: .*\[-1, "),
     ([("grpc.x", 2**40)], r"options\.grpc\.x: expected an integer in \[-2147483648, 2147483647\]"),
     ([("grpc.x", None)], r"options\.grpc\.x: expected an integer or a string, got NoneType"),
     ([("grpc.x", object())], r"options\.grpc\.x: expected an integer or a string, got object"),
     ([("grpc.x", "\ud800")], r"options\.grpc\.x: value .*lone surrogate"),
     ([("grpc.x", "a\x00b")], r"options\.grpc\.x: value .* NUL"),
     ([("grpc.default_authority", 5)], r"options\.grpc\.default_authority: expected a string, got 5"),
     ([("grpc.optimization_target", "fast")], r"grpc\.optimization_target: expected one of"),
     ([(5, 1)], r"options\[0\]: a channel argument name must be a string, got int 5"),
     ([("", 1)], r"options\[0\]: empty channel argument name"),
     ([("grpc.\ud800", 1)], r"options\[0\]: channel argument name .*lone surrogate"),
     ([("grpc.keepalive_time", 1000)], r"unknown channel argument 'grpc.keepalive_time'; did you mean "
                                       r"'grpc.keepalive_time_ms'"),
     ([("grpc.keepalive_time_ms", 1), ("grpc.keepalive_time_ms", 2)],
      r"options\.grpc\.keepalive_time_ms: given more than once"),
     ([("grpc.use_local_subchannel_pool", 0)], r"grpc\.use_local_subchannel_pool: must stay 1"),
     ([("grpc.x",)], r"options\[0\]: expected a \(key, value\) pair"),
     ({"grpc.keepalive_time_ms": 1000}, r"options: expected a list of \(key, value\) pairs, got dict"),
     ("grpc.keepalive_time_ms", r"options: expected a list of \(key, value\) pairs, got str"),
     ([("grpc.service_config", "{not json")], r"options\.grpc\.service_config: not valid JSON")],
)
def test_bad_options_fail_at_the_factory(options: Any, message: str, no_new_threads: None) -> None:
    for factory in (discovery.insecure_channel, aio.insecure_channel):
        with pytest.raises(ConfigError, match=message):
            factory("static:///127.0.0.1:1", options=options)


def test_good_options_are_normalised_as_grpcio_reads_them() -> None:
    checked = check_options([("grpc.keepalive_permit_without_calls", True), (b"grpc.primary_user_agent", b"me"),
                             ("my.interceptor.setting", "x"), ("grpc.some_future_option", 3)])
    assert checked.args == (("grpc.keepalive_permit_without_calls", 1), ("grpc.primary_user_agent", "me"),
                            ("my.interceptor.setting", "x"), ("grpc.some_future_option", 3))


@pytest.mark.parametrize("compression", ["gzip", 2, grpc.Compression])
def test_compression_must_be_a_grpc_compression(compression: Any, no_new_threads: None) -> None:
    with pytest.raises(ConfigError, match="compression: expected a grpc.Compression"):
        discovery.insecure_channel("static:///127.0.0.1:1", compression=compression)


@pytest.mark.integration
def test_compressed_channel_works(start_backends) -> None:  # type: ignore[no-untyped-def]
    (server,) = start_backends(1)
    with discovery.insecure_channel(static_target([server]), compression=grpc.Compression.Gzip) as ch:
        assert EchoStub(ch).Unary(b"x" * 1000, timeout=10) == server.name.encode()


# -- grpc.service_config and the other options the channel acts on ------------------


def served_by(ch: grpc.Channel, n: int) -> set[bytes]:
    stub = EchoStub(ch)
    return {stub.Unary(b"", timeout=10) for _ in range(n)}


@pytest.mark.integration
def test_the_grpc_service_config_option_is_the_channels_service_config(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    pick_first = json.dumps({"loadBalancingConfig": [{"pick_first": {}}]})
    with discovery.insecure_channel(static_target(servers), options=[("grpc.service_config", pick_first)]) as ch:
        assert served_by(ch, 10) == {servers[0].name.encode()}
    # grpc.lb_policy_name picks the policy when the service config names none, as in grpcio.
    with discovery.insecure_channel(static_target(servers), options=[("grpc.lb_policy_name", "pick_first")]) as ch:
        assert served_by(ch, 10) == {servers[0].name.encode()}
    with discovery.insecure_channel(static_target(servers), options=[("grpc.lb_policy_name", "pick_first")],
                                    service_config={"loadBalancingConfig": [{"round_robin": {}}]}) as ch:
        from discovery.testing import wait_ready

        wait_ready(ch, 2)
        assert served_by(ch, 10) == {s.name.encode() for s in servers}


def test_service_config_given_twice_is_an_error(no_new_threads: None) -> None:
    with pytest.raises(ConfigError, match=r"options\.grpc\.service_config: a service config is given twice"):
        discovery.insecure_channel("static:///127.0.0.1:1", options=[("grpc.service_config", "{}")],
                                   service_config={})
    with pytest.raises(ConfigError, match="none of the policies"):
        discovery.insecure_channel("static:///127.0.0.1:1", options=[("grpc.lb_policy_name", "grpclb")])


def test_backend_channels_never_get_the_users_service_config(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[list[tuple[str, Any]]] = []
    real = discovery.plain_channel  # type: ignore[attr-defined]

    def record(target: str, options: Any, compression: Any, credentials: Any) -> grpc.Channel:
        made.append(list(options or ()))
        return real(target, options, compression, credentials)  # type: ignore[no-any-return]

    # Backend channels are made with grpc's own channel class (see discovery._grpc_compat).
    monkeypatch.setattr(discovery, "plain_channel", record)
    user = json.dumps({"loadBalancingConfig": [{"pick_first": {}}],
                       "methodConfig": [{"name": [{}], "timeout": "1s", "waitForReady": True,
                                         "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s",
                                                         "maxBackoff": "1s", "backoffMultiplier": 2,
                                                         "retryableStatusCodes": ["UNAVAILABLE"]}}]})
    with discovery.insecure_channel("static:///127.0.0.1:1", options=[("grpc.service_config", user),
                                                                      ("grpc.lb_policy_name", "round_robin")]) as ch:
        from discovery.testing import wait_for

        wait_for(lambda: made, message="a backend channel")
        assert ch.backends()
    (opts,) = made
    assert [v for k, v in opts if k == "grpc.service_config"] == []  # nothing for grpcio to apply per backend
    assert "grpc.lb_policy_name" not in dict(opts)


@pytest.mark.integration
def test_enable_retries_0_turns_retries_off_as_in_grpcio(start_backends) -> None:  # type: ignore[no-untyped-def]
    servers = start_backends(2)
    for s in servers:
        s.fail_with = grpc.StatusCode.UNAVAILABLE
    sc = {"methodConfig": [{"name": [{}], "retryPolicy": {
        "maxAttempts": 3, "initialBackoff": "0.01s", "maxBackoff": "0.01s", "backoffMultiplier": 1,
        "retryableStatusCodes": ["UNAVAILABLE"]}}]}

    def attempts(options: list[tuple[str, Any]]) -> int:
        before = sum(s.total for s in servers)
        with discovery.insecure_channel(static_target(servers), options, service_config=sc) as ch:
            from discovery.testing import wait_ready

            wait_ready(ch, 2)
            with pytest.raises(grpc.RpcError):
                EchoStub(ch).Unary(b"", timeout=10)
        return sum(s.total for s in servers) - before

    assert attempts([]) == 3
    assert attempts([("grpc.enable_retries", 0)]) == 1


# -- settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"slow_poll": 0}, r"ChannelSettings: slow_poll: must be >= 0.001"),
     ({"fast_poll": -1}, "fast_poll: must be >= 0.001"),
     ({"fast_poll": math.nan}, "fast_poll: expected a finite number"),
     ({"slow_poll": math.inf}, "slow_poll: expected a finite number"),
     ({"slow_poll": "1"}, "slow_poll: expected a finite number"),
     ({"slow_poll": True}, "slow_poll: expected a finite number"),
     ({"drain_grace": -1}, "drain_grace: must be >= 0"),
     ({"clock": object()}, "clock: expected a discovery.clock.Clock")],
)
def test_channel_settings_are_validated(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ChannelSettings(**kwargs)


def test_settings_are_immutable_and_checked_at_the_factory(no_new_threads: None) -> None:
    s = ChannelSettings(slow_poll=1)
    assert s.slow_poll == 1.0
    with pytest.raises(AttributeError):
        s.slow_poll = 0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="settings: expected a discovery.ChannelSettings"):
        discovery.insecure_channel("static:///127.0.0.1:1", settings={"slow_poll": 1})  # type: ignore[arg-type]
    assert discovery.channel.ChannelSettings is ChannelSettings


# -- targets and addresses ----------------------------------------------------------


@pytest.mark.parametrize("target", [None, 5, b"static:///127.0.0.1:1", ["static:///127.0.0.1:1"]])
def test_a_target_that_is_not_a_string_is_a_target_error(target: Any, no_new_threads: None) -> None:
    for factory in (discovery.insecure_channel, aio.insecure_channel):
        with pytest.raises(TargetError, match="target must be a string"):
            factory(target)


@pytest.mark.parametrize("target", ["", "   "])
def test_an_empty_target_is_named_as_given(target: str, no_new_threads: None) -> None:
    # Not "target 'dns:///' has an empty endpoint": the user never wrote dns:///.
    for factory in (discovery.insecure_channel, aio.insecure_channel):
        with pytest.raises(TargetError, match=f"target must be a non-empty string, got '{target}'"):
            factory(target)


@pytest.mark.parametrize("credentials", [None, "tls"])
def test_secure_channel_credentials_are_a_config_error(credentials: Any, no_new_threads: None) -> None:
    for factory in (discovery.secure_channel, aio.secure_channel):
        with pytest.raises(ConfigError, match=r"^credentials: expected grpc\.ChannelCredentials"):
            factory("static:///127.0.0.1:1", credentials)


@pytest.mark.parametrize(
    ("target", "message"),
    [("static:///::1:50051", r"IPv6 address in brackets .*\[::1\]:50051"),
     ("static:///::1:8080", r"ambiguous.*\[::1\]:8080 for port 8080, or \[::1:8080\]"),
     ("static:///a:b:c", "more than one ':' outside brackets, and not an IPv6 address"),
     ("static:///127.0.0.1:80:90", "more than one ':' outside brackets"),
     ("static:///bad host:80", "whitespace"),
     ("static:///127.0.0.1:80 ", "whitespace"),
     ("static:///bad%20host:80", "not a valid host name"),
     ("static:///:80", "empty host"),
     ("static:///127.0.0.1:¹", r"port must be a number 1\.\.65535, got '¹'"),
     ("static:///127.0.0.1:٨٠", r"port must be a number 1\.\.65535, got '٨٠'"),
     ("static:///127.0.0.1:0", "port must be a number 1..65535"),
     ("static:///999.0.0.1:80", "not a valid IPv4 address"),
     ("static:///\ud800:80", "lone surrogate"),
     ("static:///%ff:80", "not UTF-8"),
     ("static:///caf\u00e9.example:80", "IDNA"),
     ("ipv6:[::1:50051]", "not an IPv6 address")],
)
def test_bad_targets_fail_at_the_factory(target: str, message: str, no_new_threads: None) -> None:
    with pytest.raises(TargetError, match=message):
        discovery.insecure_channel(target)


def test_unbracketed_ipv6_without_a_port_still_works_as_in_grpc() -> None:
    from discovery.target import parse_host_port

    assert parse_host_port("::1") == ("::1", 443)
    assert parse_host_port("[::1]:50051") == ("::1", 50051)
    assert parse_host_port("2001:db8::1") == ("2001:db8::1", 443)


def test_userinfo_in_a_target_is_never_shown(manual, no_new_threads: None) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TargetError) as info:
        discovery.insecure_channel("static://user:s3cret@/127.0.0.1:1")
    assert "s3cret" not in str(info.value) and "***@" in str(info.value)
    with pytest.raises(TargetError) as info:
        parse_target("dns://user:s3cret@host")
    assert "s3cret" not in str(info.value)
    t = parse_target("manual://user:s3cret@host/svc")
    assert "s3cret" not in repr(t) and "s3cret" not in str(t)
    assert t.authority == "user:s3cret@host"  # the plugin still gets it
    with discovery.insecure_channel("manual://user:s3cret@host/svc") as ch:
        assert "s3cret" not in repr(ch)
        assert all("s3cret" not in t.name for t in threading.enumerate())


@pytest.mark.parametrize(
    ("args", "message"),
    [(("a:b:c", 80), "contains ':' but is not an IPv6 address"),
     (("127.0.0.1:80", 80), "contains ':' but is not an IPv6 address"),
     (("bad host", 80), "not a valid host name"),
     (("", 80), "empty host"),
     (("\ud800", 80), "not ASCII"),
     ((None, 80), "host must be a string"),
     (("127.0.0.1", True), "port must be an integer"),
     (("127.0.0.1", 80.5), "port must be an integer"),
     (("127.0.0.1", "80"), "port must be an integer"),
     (("127.0.0.1", 65536), "port must be an integer 1..65535"),
     (("127.0.0.1", 1, 1.5), "weight must be an integer"),
     (("127.0.0.1", 1, 1, -1), "priority must be an integer >= 0"),
     (("127.0.0.1", 1, 1, 0, 5), "zone must be a string"),
     (("127.0.0.1", 1, 1, 0, "", {1: "x"}), "attribute names must be strings"),
     (("127.0.0.1", 1, 1, 0, "", {"tags": ["a"]}), "attribute values must be hashable")],
)
def test_address_rejects_what_could_never_be_a_backend(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Address(*args)


def test_address_accepts_every_form_grpc_dials() -> None:
    for host in ("127.0.0.1", "::1", "fe80::1%eth0", "localhost", "orders.internal.", "_grpc._tcp.x", "xn--caf-dma"):
        assert Address(host, 1).host == host


# -- service configs ----------------------------------------------------------------


def nested_child_policies_json(depth: int) -> str:
    """The JSON text of :func:`nested_child_policies` (json.dumps itself would hit the recursion limit)."""
    head = '{"outlier_detection": {"childPolicy": [' * depth
    return '{"loadBalancingConfig": [' + head + '{"round_robin": {}}' + "]}}" * depth + "]}"


def nested_child_policies(depth: int) -> dict[str, Any]:
    cfg: dict[str, Any] = {"round_robin": {}}
    for _ in range(depth):
        cfg = {"outlier_detection": {"childPolicy": [cfg]}}
    return {"loadBalancingConfig": [cfg]}


RETRY = {"maxAttempts": 2, "initialBackoff": "1s", "maxBackoff": "1s", "backoffMultiplier": 2,
         "retryableStatusCodes": ["UNAVAILABLE"]}


@pytest.mark.parametrize(
    ("config", "message"),
    [({"methodConfig": [{"name": [{}], "timeout": 1.5}]},
      r"methodConfig\[0\]\.timeout: expected a duration string like \"1\.5s\" \(gRPC's JSON has no numeric"),
     ({"methodConfig": [{"name": [{}], "timeout": "315576000001s"}]}, r"timeout: duration .* out of range"),
     ({"methodConfig": [{"name": [{}], "timeout": math.inf}]}, r"timeout: expected a finite number"),
     ({"methodConfig": [{"name": [{}], "timeout": math.nan}]}, r"timeout: expected a finite number"),
     ({"methodConfig": [{"name": [{}], "timeout": "٣s"}]}, r"timeout: expected a duration string"),
     ({"methodConfig": [{"name": [{}], "timeout": "1.0000000001s"}]}, r"timeout: expected a duration string"),
     ({"methodConfig": [{"name": [{}], "timeout": "-1s"}]}, r"timeout: a duration must not be negative"),
     ({"methodConfig": [{"name": [{"service": 5}]}]}, r"name\[0\]\.service: expected a string service name"),
     ({"methodConfig": [{"name": [{"servce": "x"}]}]}, r"name\[0\]: unknown key\(s\) \['servce'\]"),
     ({"methodConfig": [{"name": [{"method": "M"}]}]}, r"name\[0\]: a method name needs a service name"),
     ({"methodConfig": [{"name": [{}]}, {"name": [{"service": ""}]}]}, r"\[1\]\.name\[0\]: a second default"),
     ({"methodConfig": [{"name": [{"service": "S"}, {"service": "S"}]}]}, r"name\[1\]: duplicate name"),
     ({"methodConfig": [{"name": [{}], "maxRequestMessageBytes": "lots"}]},
      r"maxRequestMessageBytes: expected an integer in \[0, 4294967295\]"),
     ({"methodConfig": [{"name": [{}], "maxResponseMessageBytes": 10**30}]}, r"maxResponseMessageBytes: expected"),
     ({"methodConfig": [{"name": [{}], "maxResponseMessageBytes": -1}]}, r"maxResponseMessageBytes: expected"),
     ({"methodConfig": [{"name": [{}], "maxResponseMessageBytes": 1.5}]}, r"maxResponseMessageBytes: expected"),
     ({"methodConfig": [{"name": [{}], "retryPolicy": RETRY, "hedgingPolicy": {"maxAttempts": 2}}]},
      "mutually exclusive"),
     ({"methodConfig": [{"name": [{}], "retryPolicy": {**RETRY, "retryableStatusCodes": [[14]]}}]},
      "is not a gRPC status code"),
     ({"methodConfig": [{"name": [{}], "retryPolicy": {**RETRY, "initialBackoff": 1}}]},
      r"initialBackoff: expected a duration string"),
     ({"x": 1, 2: 3}, r"service_config: object keys must be strings, got int 2"),
     ({"loadBalancingConfig": [{"round_robin": {2: 3}}]}, "object keys must be strings"),
     ({"loadBalancingConfig": [{"outlier_detection": {2: 3}}]}, "object keys must be strings"),
     ({"loadBalancingConfig": [{5: {}}]}, "object keys must be strings"),
     ({"loadBalancingConfig": [{"outlier_detection": {"interval": "0.000000001s"}}]},
      r"outlier_detection\.interval: must be at least 0\.01s"),
     ({"loadBalancingConfig": [{"outlier_detection": {"interval": 10}}]}, r"interval: expected a duration string"),
     ({"healthCheckConfig": {"serviceName": "\ud800"}}, r"healthCheckConfig\.serviceName: .*lone surrogate"),
     ({"retryThrottling": {"maxTokens": 10, "tokenRatio": math.nan}}, "expected a finite number"),
     ({"retryThrottling": {"maxTokens": 10}}, r"retryThrottling: missing 'tokenRatio'"),
     ({"methodConfig": [{"name": [{}], "timeout": {1, 2}}]}, "expected JSON data"),
     (nested_child_policies(3000), "nested more than 255 levels deep"),
     (nested_child_policies_json(3000), "nested more than 255 levels deep"),
     ("[" * 100000, "nested more than 255 levels deep"),
     ('{"retryThrottling": {"maxTokens": 10, "tokenRatio": NaN}}', "NaN is not JSON"),
     ('{"methodConfig": [], "methodConfig": []}', "duplicate key 'methodConfig'")],
)
def test_service_config_values_grpc_would_reject_fail_at_the_factory(config: Any, message: str,
                                                                     no_new_threads: None) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_service_config(config)
    with pytest.raises(ConfigError, match=message):
        discovery.insecure_channel("static:///127.0.0.1:1", service_config=config)


def test_a_config_too_deep_is_reported_in_one_short_line() -> None:
    # The key path of the 256th level would be kilobytes long; the message keeps its two ends.
    with pytest.raises(ConfigError) as info:
        parse_service_config(nested_child_policies(3000))
    message = str(info.value)
    assert len(message) < 300 and "\n" not in message
    assert message.startswith("service_config.loadBalancingConfig[0].outlier_detection.")
    assert message.endswith(".outlier_detection: nested more than 255 levels deep")
    assert "..." in message


def test_a_grpc_users_json_means_what_it_means_in_grpc() -> None:
    sc = parse_service_config({
        "loadBalancingConfig": None,  # null means absent in gRPC's JSON
        "methodConfig": [
            {"name": [{}], "timeout": "+0.5s", "maxRequestMessageBytes": "1024", "waitForReady": None},
            {"name": [{"service": "S"}], "timeout": "2s", "maxResponseMessageBytes": 4294967295},
            {"name": [{"service": "S", "method": "M", "method_ignored": None}], "waitForReady": True},
        ],
        "retryThrottling": {"maxTokens": "10", "tokenRatio": 0.1},
    })
    assert sc.policy == "round_robin"
    default, service, method = (sc.method_config(m) for m in ("/Other/X", "/S/Y", "/S/M"))
    assert default is not None and (default.timeout, default.max_request_bytes, default.wait_for_ready) == \
        (0.5, 1024, None)
    assert service is not None and (service.timeout, service.max_response_bytes) == (2.0, 4294967295)
    assert method is not None and (method.timeout, method.wait_for_ready) == (None, True)
    assert sc.throttling is not None and sc.throttling.max_tokens == 10


def test_backend_json_carries_only_sizes_and_health_with_grpcs_matching_kept() -> None:
    sc = parse_service_config({
        "healthCheckConfig": {"serviceName": "svc"},
        "methodConfig": [
            {"name": [{}], "maxRequestMessageBytes": 100, "timeout": "1s", "waitForReady": True},
            {"name": [{"service": "S"}], "timeout": "2s", "retryPolicy": RETRY},
        ]})
    backend = json.loads(sc.backend_json)
    assert backend["loadBalancingConfig"] == [{"round_robin": {}}]
    assert backend["healthCheckConfig"] == {"serviceName": "svc"}
    for entry in backend["methodConfig"]:
        assert set(entry) <= {"name", "maxRequestMessageBytes", "maxResponseMessageBytes"}
    # S keeps an entry without limits, so grpc does not fall back to the default's 100 bytes for it.
    names = {json.dumps(n, sort_keys=True): e.get("maxRequestMessageBytes")
             for e in backend["methodConfig"] for n in e["name"]}
    assert names == {"{}": 100, '{"service": "S"}': None}
    assert parse_service_config({"methodConfig": [{"name": [{}], "timeout": "1s"}]}).backend_json == ""


@pytest.mark.integration
@pytest.mark.parametrize("config", [
    {"methodConfig": [{"name": [{}], "maxRequestMessageBytes": 1}]},
    {"healthCheckConfig": {"serviceName": "discovery.testing.Echo"},
     "methodConfig": [{"name": [{"service": "discovery.testing.Echo", "method": "Unary"}],
                       "maxRequestMessageBytes": "1", "timeout": "1s"},
                      {"name": [{"service": "other"}, {}], "timeout": "1s"}]},
])
def test_grpc_core_accepts_the_backend_json_and_applies_the_limits(config: dict[str, Any],
                                                                   start_backends) -> None:  # type: ignore[no-untyped-def]
    (server,) = start_backends(1)
    sc = parse_service_config(config)
    # Straight to grpcio: a service config grpc-core rejected would leave the channel failing every call.
    plain = grpc.insecure_channel(server.addr, [("grpc.service_config", sc.backend_json)])
    try:
        assert EchoStub(plain).Unary(b"x", timeout=10) == server.name.encode()
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(plain).Unary(b"xx", timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        plain.close()
    with discovery.insecure_channel(static_target([server]), service_config=config) as ch:
        assert EchoStub(ch).Unary(b"x", timeout=10) == server.name.encode()
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(ch).Unary(b"xx", timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


# -- config files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\noptions = { "grpc.keepalive_time_ms" = "1s" }\n',
      r"services\.a\.options\.grpc\.keepalive_time_ms: expected an integer"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\noptions = { "grpc.service_config" = "{}" }\n'
                '[services.a.service_config]\n', r"services\.a\.options\.grpc\.service_config: .* given twice"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\n[services.a.service_config]\n'
                'methodConfig = [{ name = [{}], timeout = 3 }]\n',
      r"services\.a\.service_config\.methodConfig\[0\]\.timeout: expected a duration string"),
     ("a.toml", '[services.a]\ntarget = "static:///::1:50051"\n', r"services\.a\.target: .*brackets"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\nwhen = 1979-05-27\n',
      r"services\.a\.when: expected JSON data"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\nresolver = { when = 1979-05-27 }\n',
      r"services\.a\.resolver\.when: expected JSON data"),
     ("a.toml", "x = " + "[" * 5000 + "]" * 5000 + "\n", "cannot parse TOML: nested too deeply"),
     ("a.json", '{"services": {"a": {"target": "static:///127.0.0.1:1", "drain_grace": NaN}}}', "NaN is not JSON"),
     ("a.json", "[" * 100000, "nested more than 255 levels deep"),
     ("a.json", '{"services": {}, "services": {}}', "duplicate key 'services'"),
     ("a.yaml", "services:\n  1: {target: 'static:///127.0.0.1:1'}\n", "object keys must be strings, got int 1"),
     ("a.yaml", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
         f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
         for p, c in zip("abcdefgh", "bcdefghi", strict=True)), "more than 100000 values"),
     ("a.toml", b'[services.a]\ntarget = "static:///\xff"\n', "cannot read the file"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\ntls = { cert_file = "c.pem" }\n',
      r"services\.a\.tls\.cert_file: file 'c.pem' does not exist .*relative to the config file's folder"),
     ("a.toml", '[services.a]\ntarget = "static:///127.0.0.1:1"\ndrain_grace = "forever"\n',
      r"services\.a\.drain_grace: expected a duration string like \"1\.5s\" or a number of seconds")],
)
def test_bad_config_files_name_the_file_and_key(tmp_path: Path, name: str, body: str | bytes, message: str,
                                                no_new_threads: None) -> None:
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    with pytest.raises(ConfigError) as info:
        discovery.channel_from_config("a", path)
    assert str(path) in str(info.value)
    assert info.match(message)


PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_tls_files_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.pem").write_text(PEM)
    (conf / "client.pem").write_text(PEM)
    (conf / "client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (conf / "d.toml").write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\n'
                                 'tls = { ca_file = "ca.pem", cert_file = "client.pem", key_file = "client.key" }\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tls = load_config_file(Path("../conf/d.toml"))["a"].tls
    assert tls is not None
    assert (tls.ca_file, tls.cert_file, tls.key_file) == (str(conf / "ca.pem"), str(conf / "client.pem"),
                                                          str(conf / "client.key"))
    (conf / "d.toml").write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\ntls = { key_file = "client.key" }\n')
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_config_file(conf / "d.toml")
    (conf / "bad.pem").write_text("not a certificate")
    (conf / "d.toml").write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\ntls = { ca_file = "bad.pem" }\n')
    with pytest.raises(ConfigError, match="is not a PEM file"):
        load_config_file(conf / "d.toml")


def test_drain_grace_in_a_file_takes_a_number_of_seconds(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\ndrain_grace = 3\n')
    assert load_config_file(path)["a"].drain_grace == 3.0


def test_a_server_that_serves_big_requests_to_a_config_with_message_limits(tmp_path: Path) -> None:
    # grpc.service_config in a file's options is the service's service config too.
    path = tmp_path / "d.toml"
    path.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\n'
                    'options = { "grpc.service_config" = \'{"loadBalancingConfig": [{"pick_first": {}}]}\' }\n')
    entry = load_config_file(path)["a"]
    assert entry.service_config.policy == "pick_first"
    assert "grpc.service_config" not in dict(entry.options)


def test_backend_server_options_reach_grpc() -> None:
    server = BackendServer(options=(("grpc.max_receive_message_length", 1),)).start()
    try:
        ch = grpc.insecure_channel(server.addr)
        with pytest.raises(grpc.RpcError) as info:
            EchoStub(ch).Unary(b"xx", timeout=10)
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        ch.close()
    finally:
        server.stop()
