"""Validation of ``consul:`` targets and the resolver's options, environment included (no network I/O).

Precedence follows Consul's CLI: a ``resolver_config`` value wins over the
environment, the environment over the defaults. Consul's own variables are
read as its CLI reads them (``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``,
``CONSUL_HTTP_TOKEN_FILE``, ``CONSUL_HTTP_SSL``, ``CONSUL_HTTP_SSL_VERIFY``,
``CONSUL_CACERT``, ``CONSUL_CAPATH``, ``CONSUL_CLIENT_CERT``,
``CONSUL_CLIENT_KEY``). Unlike py-consul, ``CONSUL_HTTP_TOKEN`` never
overrides an explicit ``token``.

The token is a secret: it is kept out of every repr and every error message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery.errors import ConfigError, TargetError
from discovery.target import Target, parse_host_port, redact_target

from ._duration import parse_go_duration

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "DEFAULT_WAIT",
    "KEYS",
    "MAX_WAIT",
    "QUERY_PARAMS",
    "ConsulConfig",
    "ConsulTarget",
    "parse_config",
    "parse_target",
]

#: Where the agent is when neither the target nor ``$CONSUL_HTTP_ADDR`` says.
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8500
#: Consul's default blocking-query wait, and the ceiling its agent clamps to.
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0

KEYS = ("token", "token_file", "scheme", "ca_file", "ca_path", "cert_file", "key_file", "wait", "passing",
        "fallback_to_warning")
QUERY_PARAMS = ("tag", "dc", "near", "stale", "consistent")

_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


@dataclass(frozen=True, slots=True)
class ConsulConfig:
    """The validated options, environment folded in.

    ``token`` is None for no token; ``token_source`` names where it came from
    (``"resolver_config token"``, ``"CONSUL_HTTP_TOKEN"`` ...) so errors can
    say which one to fix without showing it. ``verify`` is True, False
    (``CONSUL_HTTP_SSL_VERIFY=false``) or a CA file or directory path;
    ``cert`` the client certificate and key files, or None. ``scheme`` is
    None when neither the options nor ``CONSUL_HTTP_SSL`` set it (the agent
    address may still, see :func:`parse_target`); ``tls_keys`` names the TLS
    options given explicitly.
    """

    scheme: str | None = None
    token: str | None = field(default=None, repr=False)
    token_source: str = ""
    verify: bool | str = True
    cert: tuple[str, str] | None = None
    wait: float = DEFAULT_WAIT
    passing: bool = True
    fallback_to_warning: bool = False
    tls_keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ConsulTarget:
    """What a ``consul:`` target asks for: the agent, the service and its query parameters.

    ``address_source`` says where the agent address came from (the target, or
    ``$CONSUL_HTTP_ADDR``, or the default), for messages.
    """

    host: str
    port: int
    service: str
    tags: tuple[str, ...] = ()
    dc: str = ""
    near: str = ""
    consistency: str = ""  # "", "stale" or "consistent"
    address_source: str = "target"
    scheme: str = "http"

    @property
    def agent(self) -> str:
        """``host:port`` of the agent (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip() in _TRUE + _FALSE:
        return value.strip() in _TRUE
    raise ConfigError(f"expected true or false, got {value!r}", key_path=key)


def _check_token(token: str, where: str) -> str:
    # The value is never shown: a token pasted in the wrong place is still a secret.
    token = token.strip()
    if not token or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ConfigError(f"the token from {where} must be a non-empty string of printable ASCII without spaces "
                          "(value not shown)", key_path="token" if where.startswith("resolver_config") else None)
    return token


def _read_token_file(path: str, where: str, key: str | None) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path!r} from {where}: {exc.strerror or 'I/O error'}",
                          key_path=key) from exc
    except UnicodeError as exc:
        raise ConfigError(f"the token file {path!r} from {where} is not UTF-8 text", key_path=key) from exc
    return _check_token(text, where)


def _file(value: Any, key: str, directory: bool = False) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"expected a {'directory' if directory else 'file'} path, got {value!r}", key_path=key)
    path = Path(value).expanduser()
    if directory and not path.is_dir():
        raise ConfigError(f"{value!r} is not a directory", key_path=key)
    if not directory and not path.is_file():
        raise ConfigError(f"{value!r} is not a readable file", key_path=key)
    return str(path)


def parse_wait(value: Any, key: str = "wait") -> float:
    """A positive wait: a Go duration (``"5m"``, ``"90s"``, ``"1m30s"``) or seconds; above 10 m it is 10 m."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration like \"5m\" or \"30s\", got {value!r}", key_path=key)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = parse_go_duration(value)
        except ValueError:
            raise ConfigError(f"expected a duration like \"5m\" or \"30s\", got {value!r}", key_path=key) from None
    else:
        raise ConfigError(f"expected a duration like \"5m\" or \"30s\", got {type(value).__name__}", key_path=key)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"must be a positive duration, got {value!r}", key_path=key)
    # The agent clamps a longer wait to 10 minutes; doing the same keeps the read timeout honest.
    return min(seconds, MAX_WAIT)


def parse_config(config: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> ConsulConfig:
    """Validate the resolver table and fold in Consul's environment variables.

    ConfigError names the offending key (or variable) and never shows a token.
    """
    env = os.environ if environ is None else environ
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"the consul resolver options must be a table, got {type(config).__name__}")
    for key in config:
        if key not in KEYS:
            raise ConfigError(f"unknown consul resolver option; expected one of {', '.join(KEYS)}",
                              key_path=str(key))

    scheme: str | None = None
    if "scheme" in config:
        value = config["scheme"]
        if value not in ("http", "https"):
            raise ConfigError(f'expected "http" or "https", got {value!r}', key_path="scheme")
        scheme = value
    else:
        ssl = env.get("CONSUL_HTTP_SSL", "")
        if ssl:
            if ssl not in _TRUE + _FALSE:
                raise ConfigError(f"CONSUL_HTTP_SSL must be true or false, got {ssl!r}")
            if ssl in _TRUE:
                scheme = "https"

    if "token" in config and "token_file" in config:
        raise ConfigError("give either token or token_file, not both", key_path="token_file")
    token: str | None = None
    source = ""
    if "token" in config:
        if not isinstance(config["token"], str):
            raise ConfigError(f"expected a string, got {type(config['token']).__name__} (value not shown)",
                              key_path="token")
        source = "resolver_config token"
        token = _check_token(config["token"], source)
    elif "token_file" in config:
        path = config["token_file"]
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"expected a file path, got {path!r}", key_path="token_file")
        source = f"resolver_config token_file {path!r}"
        token = _read_token_file(path, source, "token_file")
    elif env.get("CONSUL_HTTP_TOKEN_FILE"):
        # As Consul's API client: the token file, when set, wins over CONSUL_HTTP_TOKEN.
        source = "CONSUL_HTTP_TOKEN_FILE"
        token = _read_token_file(env["CONSUL_HTTP_TOKEN_FILE"], source, None)
    elif env.get("CONSUL_HTTP_TOKEN"):
        source = "CONSUL_HTTP_TOKEN"
        token = _check_token(env["CONSUL_HTTP_TOKEN"], source)

    verify: bool | str = True
    if "ca_file" in config and "ca_path" in config:
        raise ConfigError("give either ca_file or ca_path, not both", key_path="ca_path")
    if "ca_file" in config:
        verify = _file(config["ca_file"], "ca_file")
    elif "ca_path" in config:
        verify = _file(config["ca_path"], "ca_path", directory=True)
    elif env.get("CONSUL_CACERT"):
        verify = _file(env["CONSUL_CACERT"], "CONSUL_CACERT")
    elif env.get("CONSUL_CAPATH"):
        verify = _file(env["CONSUL_CAPATH"], "CONSUL_CAPATH", directory=True)
    ssl_verify = env.get("CONSUL_HTTP_SSL_VERIFY", "")
    if ssl_verify:
        if ssl_verify not in _TRUE + _FALSE:
            raise ConfigError(f"CONSUL_HTTP_SSL_VERIFY must be true or false, got {ssl_verify!r}")
        if ssl_verify in _FALSE:
            verify = False

    cert_file = (_file(config["cert_file"], "cert_file") if "cert_file" in config
                 else _file(env["CONSUL_CLIENT_CERT"], "CONSUL_CLIENT_CERT") if env.get("CONSUL_CLIENT_CERT")
                 else None)
    key_file = (_file(config["key_file"], "key_file") if "key_file" in config
                else _file(env["CONSUL_CLIENT_KEY"], "CONSUL_CLIENT_KEY") if env.get("CONSUL_CLIENT_KEY")
                else None)
    if (cert_file is None) != (key_file is None):
        missing = "key_file" if key_file is None else "cert_file"
        raise ConfigError("a client certificate needs both cert_file and key_file (or CONSUL_CLIENT_CERT and "
                          "CONSUL_CLIENT_KEY)", key_path=missing)

    wait = parse_wait(config["wait"]) if "wait" in config else DEFAULT_WAIT
    passing = _bool(config["passing"], "passing") if "passing" in config else True
    fallback = _bool(config["fallback_to_warning"], "fallback_to_warning") if "fallback_to_warning" in config \
        else False
    if fallback and not passing:
        raise ConfigError("fallback_to_warning only means something with passing = true (passing = false "
                          "already includes warning instances)", key_path="fallback_to_warning")
    return ConsulConfig(scheme=scheme, token=token, token_source=source, verify=verify,
                        cert=(cert_file, key_file) if cert_file and key_file else None,
                        wait=wait, passing=passing, fallback_to_warning=fallback,
                        tls_keys=tuple(k for k in ("ca_file", "ca_path", "cert_file", "key_file") if k in config))


def _query_bool(values: list[str], name: str, target: str) -> bool:
    value = values[-1]
    if value == "":
        return True
    if value in _TRUE + _FALSE:
        return value in _TRUE
    raise TargetError(f"target {target}: {name} must be true or false, got {value!r}")


def _agent_from_env(value: str) -> tuple[str, int, str]:
    """``CONSUL_HTTP_ADDR`` as Consul's CLI reads it: ``host:port``, ``http://...`` or ``https://...``."""
    scheme = ""
    text = value.strip()
    value = redact_target(value)  # for messages: userinfo (user:password@) is a secret
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            scheme, text = prefix[:-3], text[len(prefix):]
    if text.startswith("unix://"):
        raise ConfigError(f"CONSUL_HTTP_ADDR={value!r}: unix sockets are not supported by the consul resolver")
    text = text.rstrip("/")
    try:
        host, port = parse_host_port(text, DEFAULT_PORT)
    except TargetError as exc:
        raise ConfigError(f"CONSUL_HTTP_ADDR={value!r} is not host:port: {exc}") from exc
    return host, port, scheme


def _redacted(target: Target) -> str:
    """The target for messages, with any query value named token replaced (it may hold a secret)."""
    if "token" not in target.query.lower():
        return repr(str(target))  # str() hides userinfo
    return repr(redact_target(f"{target.scheme}://{target.authority}/{target.endpoint}")
                + "?<query not shown: it holds a token>")


def parse_target(target: Target, config: ConsulConfig | None = None,
                 environ: Mapping[str, str] | None = None) -> ConsulTarget:
    """Validate a ``consul:`` target against ``config``; TargetError/ConfigError say what is wrong.

    The scheme is the ``scheme`` option, else ``CONSUL_HTTP_SSL``, else the
    ``https://`` of ``$CONSUL_HTTP_ADDR`` when that variable supplies the
    address, else http.
    """
    env = os.environ if environ is None else environ
    config = config or ConsulConfig()
    shown = _redacted(target)
    params = target.params()
    for name in params:
        if name.lower() == "token":
            raise TargetError(f"target {shown}: a token never goes in the target (it would end up in logs); "
                              "use resolver_config token or CONSUL_HTTP_TOKEN")
        if name not in QUERY_PARAMS:
            raise TargetError(f"target {shown}: unknown query parameter {name!r}; expected one of "
                              f"{', '.join(QUERY_PARAMS)} (options such as wait go in resolver_config)")
    service = target.endpoint
    if not service or "/" in service or any(c.isspace() for c in service):
        raise TargetError(f"target {shown}: {service!r} is not a Consul service name")
    env_scheme = ""
    if "@" in target.authority:
        # user:password@ would be a secret in every log line that shows the target;
        # Consul takes its ACL token in a header, from the options or the environment.
        raise TargetError(f"target {shown}: the agent address takes no userinfo (user@ or user:password@); "
                          "give an ACL token as resolver_config token or token_file, or CONSUL_HTTP_TOKEN")
    if target.authority:
        try:
            host, port = parse_host_port(target.authority, DEFAULT_PORT)
        except TargetError as exc:
            raise TargetError(f"target {shown}: bad agent address {target.authority!r}: {exc}") from exc
        source = "target"
    elif env.get("CONSUL_HTTP_ADDR"):
        host, port, env_scheme = _agent_from_env(env["CONSUL_HTTP_ADDR"])
        source = "CONSUL_HTTP_ADDR"
    else:
        host, port, source = DEFAULT_ADDRESS, DEFAULT_PORT, "default"
    for name in ("dc", "near"):
        if len(params.get(name, [])) > 1:
            raise TargetError(f"target {shown}: {name} given more than once")
        if name in params and not params[name][0]:
            raise TargetError(f"target {shown}: {name} is empty")
    tags = tuple(params.get("tag", ()))
    if any(not t for t in tags):
        raise TargetError(f"target {shown}: empty tag")
    stale = _query_bool(params["stale"], "stale", shown) if "stale" in params else False
    consistent = _query_bool(params["consistent"], "consistent", shown) if "consistent" in params else False
    if stale and consistent:
        raise TargetError(f"target {shown}: stale and consistent exclude each other")
    scheme = config.scheme or env_scheme or "http"
    if scheme != "https" and config.tls_keys:
        key = config.tls_keys[0]
        raise ConfigError(f'{key} is set but the scheme is http; set scheme = "https" (or CONSUL_HTTP_SSL=true)',
                          key_path=key)
    return ConsulTarget(host=host, port=port, service=service, tags=tags,
                        dc=params.get("dc", [""])[0], near=params.get("near", [""])[0],
                        consistency="stale" if stale else ("consistent" if consistent else ""),
                        address_source=source, scheme=scheme)
