"""consul: targets and options: validation, Consul's environment variables, precedence, secrets kept out."""

from __future__ import annotations

from pathlib import Path

import pytest
from discovery_consul import ConsulResolverBuilder, ConsulTarget, parse_config, parse_target
from discovery_consul._config import MAX_WAIT

import discovery
from discovery.errors import ConfigError, TargetError
from discovery.resolver import ResolverOptions
from discovery.target import parse_target as parse_uri

SECRET = "b1gs3cret-0f-the-acl"


def target(uri: str, config: dict[str, object] | None = None, env: dict[str, str] | None = None) -> ConsulTarget:
    return parse_target(parse_uri(uri), parse_config(config or {}, env or {}), env or {})


# -- targets -----------------------------------------------------------------------------------


def test_full_target() -> None:
    t = target("consul://10.0.0.5:8501/orders?tag=v2&tag=eu&dc=dc2&near=_agent&stale=true")
    assert (t.host, t.port, t.service, t.tags, t.dc, t.near, t.consistency) == (
        "10.0.0.5", 8501, "orders", ("v2", "eu"), "dc2", "_agent", "stale")
    assert t.address_source == "target" and t.scheme == "http" and t.agent == "10.0.0.5:8501"


def test_agent_address_forms() -> None:
    assert target("consul://consul.local/orders").port == 8500
    t = target("consul://[::1]:8600/orders")
    assert (t.host, t.port, t.agent) == ("::1", 8600, "[::1]:8600")


def test_empty_authority_means_consul_http_addr_then_the_default() -> None:
    t = target("consul:///orders")
    assert (t.host, t.port, t.address_source) == ("127.0.0.1", 8500, "default")
    t = target("consul:///orders", env={"CONSUL_HTTP_ADDR": "10.1.2.3:9500"})
    assert (t.host, t.port, t.address_source, t.scheme) == ("10.1.2.3", 9500, "CONSUL_HTTP_ADDR", "http")
    t = target("consul:///orders", env={"CONSUL_HTTP_ADDR": "https://consul.internal:8501"})
    assert (t.host, t.port, t.scheme) == ("consul.internal", 8501, "https")
    # An address in the target wins, and the variable's scheme goes with the variable.
    t = target("consul://127.0.0.1:8500/orders", env={"CONSUL_HTTP_ADDR": "https://consul.internal:8501"})
    assert (t.host, t.scheme) == ("127.0.0.1", "http")
    with pytest.raises(ConfigError, match="CONSUL_HTTP_ADDR.*unix"):
        target("consul:///orders", env={"CONSUL_HTTP_ADDR": "unix:///var/run/consul.sock"})
    with pytest.raises(ConfigError, match="CONSUL_HTTP_ADDR"):
        target("consul:///orders", env={"CONSUL_HTTP_ADDR": "host:notaport"})


def test_consistent_and_stale() -> None:
    assert target("consul://h/orders?consistent").consistency == "consistent"
    assert target("consul://h/orders?stale=false").consistency == ""
    with pytest.raises(TargetError, match="exclude"):
        target("consul://h/orders?stale=true&consistent=true")


@pytest.mark.parametrize(("uri", "message"), [
    ("consul://h/orders?colour=red", "unknown query parameter 'colour'"),
    ("consul://h/orders?wait=5m", "unknown query parameter 'wait'.*resolver_config"),
    ("consul://h/orders?dc=a&dc=b", "dc given more than once"),
    ("consul://h/orders?dc=", "dc is empty"),
    ("consul://h/orders?tag=", "empty tag"),
    ("consul://h/orders?stale=maybe", "stale must be true or false"),
    ("consul://h:99999/orders", "bad agent address"),
    ("consul://h/or ders", "whitespace or a control character"),
    ("consul://h/a/b", "not a Consul service name"),
])
def test_bad_targets(uri: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        target(uri)


def test_a_token_in_the_target_is_refused_without_echoing_it() -> None:
    with pytest.raises(TargetError, match="never goes in the target") as info:
        target(f"consul://h/orders?token={SECRET}")
    assert SECRET not in str(info.value)
    with pytest.raises(TargetError) as info:
        target(f"consul://h/orders?Token={SECRET}&colour=1")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("uri", [
    f"consul://user:{SECRET}@127.0.0.1:8500/orders",
    f"consul://user:{SECRET}@127.0.0.1:8500/orders?token=x",
    f"consul://{SECRET}@h/orders",
])
def test_userinfo_in_the_target_is_refused_without_echoing_it(uri: str) -> None:
    with pytest.raises(TargetError) as info:
        target(uri)
    assert SECRET not in str(info.value)
    # Through the channel factory too, where the message reaches the user.
    with pytest.raises(TargetError) as info:
        discovery.insecure_channel(uri)
    assert SECRET not in str(info.value)


def test_userinfo_in_consul_http_addr_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        target("consul:///orders", env={"CONSUL_HTTP_ADDR": f"http://user:{SECRET}@h:notaport"})
    assert SECRET not in str(info.value)


# -- options -------------------------------------------------------------------------------------


def test_defaults() -> None:
    c = parse_config({}, {})
    assert (c.scheme, c.token, c.verify, c.cert, c.wait, c.passing, c.fallback_to_warning) == (
        None, None, True, None, 300.0, True, False)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match="surely_not") as info:
        parse_config({"surely_not": 1}, {})
    assert info.value.key_path == "surely_not"


@pytest.mark.parametrize(("value", "seconds"), [("5m", 300.0), ("90s", 90.0), ("1m30s", 90.0), (45, 45.0),
                                                ("250ms", 0.25), ("10m", 600.0), ("20m", MAX_WAIT), ("2h", MAX_WAIT)])
def test_wait_values_and_the_ten_minute_clamp(value: object, seconds: float) -> None:
    assert parse_config({"wait": value}, {}).wait == seconds


@pytest.mark.parametrize("value", ["0s", "-5s", 0, "soon", True, None, float("nan")])
def test_bad_wait(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"wait": value}, {})
    assert info.value.key_path == "wait"


@pytest.mark.parametrize(("key", "value"), [("passing", "yes"), ("passing", 2), ("scheme", "ftp"),
                                            ("fallback_to_warning", "sometimes"), ("token", 123)])
def test_bad_values_name_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({key: value}, {})
    assert info.value.key_path == key


def test_fallback_needs_passing() -> None:
    assert parse_config({"fallback_to_warning": True}, {}).fallback_to_warning
    with pytest.raises(ConfigError, match="fallback_to_warning"):
        parse_config({"passing": False, "fallback_to_warning": True}, {})


def test_explicit_token_wins_over_the_environment() -> None:
    env = {"CONSUL_HTTP_TOKEN": "from-env"}
    c = parse_config({"token": "from-config"}, env)
    assert (c.token, c.token_source) == ("from-config", "resolver_config token")
    c = parse_config({}, env)
    assert (c.token, c.token_source) == ("from-env", "CONSUL_HTTP_TOKEN")


def test_token_files(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text(f"  {SECRET}\n")
    assert parse_config({"token_file": str(f)}, {"CONSUL_HTTP_TOKEN": "env"}).token == SECRET
    # As Consul's API client: CONSUL_HTTP_TOKEN_FILE wins over CONSUL_HTTP_TOKEN.
    c = parse_config({}, {"CONSUL_HTTP_TOKEN_FILE": str(f), "CONSUL_HTTP_TOKEN": "env"})
    assert (c.token, c.token_source) == (SECRET, "CONSUL_HTTP_TOKEN_FILE")
    with pytest.raises(ConfigError, match="either token or token_file"):
        parse_config({"token": "a", "token_file": str(f)}, {})
    with pytest.raises(ConfigError, match="cannot read the token file") as info:
        parse_config({"token_file": str(tmp_path / "missing")}, {})
    assert info.value.key_path == "token_file"


def test_bad_tokens_are_refused_without_showing_them() -> None:
    for bad in [f"{SECRET}\r\nX-Evil: 1", f"two {SECRET}", ""]:
        with pytest.raises(ConfigError, match="value not shown") as info:
            parse_config({"token": bad}, {})
        assert SECRET not in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config({}, {"CONSUL_HTTP_TOKEN": f"{SECRET} x"})
    assert SECRET not in str(info.value) and "CONSUL_HTTP_TOKEN" in str(info.value)


def test_the_token_is_not_in_the_repr() -> None:
    c = parse_config({"token": SECRET}, {})
    assert SECRET not in repr(c) and SECRET not in str(c)


def test_scheme_from_options_and_consul_http_ssl() -> None:
    assert parse_config({"scheme": "https"}, {}).scheme == "https"
    assert parse_config({}, {"CONSUL_HTTP_SSL": "true"}).scheme == "https"
    assert parse_config({}, {"CONSUL_HTTP_SSL": "0"}).scheme is None
    assert parse_config({"scheme": "http"}, {"CONSUL_HTTP_SSL": "true"}).scheme == "http"
    with pytest.raises(ConfigError, match="CONSUL_HTTP_SSL"):
        parse_config({}, {"CONSUL_HTTP_SSL": "yes please"})
    t = target("consul:///orders", {"scheme": "http"}, {"CONSUL_HTTP_ADDR": "https://c:8501"})
    assert t.scheme == "http", "an explicit scheme wins over the address variable's"


def test_tls_files(tmp_path: Path) -> None:
    ca, cert, key = (tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem"))
    for f in (ca, cert, key):
        f.write_text("-----BEGIN CERTIFICATE-----\n")
    c = parse_config({"scheme": "https", "ca_file": str(ca), "cert_file": str(cert), "key_file": str(key)}, {})
    assert (c.verify, c.cert) == (str(ca), (str(cert), str(key)))
    c = parse_config({}, {"CONSUL_CACERT": str(ca), "CONSUL_CLIENT_CERT": str(cert), "CONSUL_CLIENT_KEY": str(key)})
    assert (c.verify, c.cert) == (str(ca), (str(cert), str(key)))
    assert parse_config({"scheme": "https", "ca_path": str(tmp_path)}, {}).verify == str(tmp_path)
    assert parse_config({"ca_file": str(ca)}, {"CONSUL_CAPATH": str(tmp_path)}).verify == str(ca)
    assert parse_config({}, {"CONSUL_HTTP_SSL_VERIFY": "false"}).verify is False
    with pytest.raises(ConfigError, match="key_file"):
        parse_config({"scheme": "https", "cert_file": str(cert)}, {})
    with pytest.raises(ConfigError, match="not a readable file") as info:
        parse_config({"ca_file": str(tmp_path / "nope.pem")}, {})
    assert info.value.key_path == "ca_file"
    # TLS files with plain http are a mistake worth naming.
    with pytest.raises(ConfigError, match='ca_file is set but the scheme is http') as info:
        target("consul://h/orders", {"ca_file": str(ca)})
    assert info.value.key_path == "ca_file"


# -- the builder: check() for config files ---------------------------------------------------------------


def test_builder_check_validates_without_starting() -> None:
    b = ConsulResolverBuilder(environ={})
    b.check(parse_uri("consul://127.0.0.1:1/orders"), ResolverOptions(config={"wait": "1m"}))
    with pytest.raises(ConfigError, match="colour"):
        b.check(parse_uri("consul://127.0.0.1:1/orders"), ResolverOptions(config={"colour": 1}))
    with pytest.raises(TargetError):
        b.check(parse_uri("consul://127.0.0.1:1/orders?colour=1"), ResolverOptions())


def test_the_entry_point_is_installed() -> None:
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="discovery.resolvers") if ep.name == "consul"]
    assert ep.load() is ConsulResolverBuilder


@pytest.mark.parametrize(("table", "key"), [('{ wait = "soon" }', "wait"), ('{ colour = 1 }', "colour"),
                                            ('{ passing = "maybe" }', "passing")])
def test_bad_options_in_a_config_file_name_the_file_and_key(tmp_path: Path, table: str, key: str) -> None:
    path = tmp_path / "discovery.toml"
    path.write_text(f'[services.orders]\ntarget = "consul://127.0.0.1:8500/orders"\nresolver = {table}\n')
    with pytest.raises(discovery.ConfigError, match=rf"services\.orders\.resolver\.{key}: ") as info:
        discovery.channel_from_config("orders", path)
    assert str(path) in str(info.value)


def test_a_bad_target_in_a_config_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "discovery.toml"
    path.write_text('[services.orders]\ntarget = "consul://127.0.0.1:8500/orders?tags=v2"\n')
    with pytest.raises(discovery.ConfigError, match="services.orders.target: .*'tags'"):
        discovery.channel_from_config("orders", path)
