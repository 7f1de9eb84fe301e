"""grpc channel arguments (``options=``), checked before any channel exists.

What grpcio itself does with ``options`` (grpcio 1.85, measured):

- A key must be ``str`` (or ``bytes``); anything else is a ``TypeError``
  inside ``grpc.insecure_channel``. A lone surrogate in a key or a string
  value is a ``UnicodeEncodeError`` there.
- An ``int`` value becomes an integer argument; beyond the C ``int`` range it
  is an ``OverflowError``. ``str``/``bytes`` become string arguments.
- Any other object with ``__int__`` (a ``float``!) is taken for a C pointer
  and passed on as one; anything else is a ``TypeError``.
- The core then *logs and ignores* an argument of the wrong type (a string
  for ``grpc.keepalive_time_ms``, a number for ``grpc.default_authority`` —
  the latter leaves every call failing), and takes the *first* of two equal keys.

So building a throwaway grpc channel catches only some mistakes; this module
checks every argument itself: keys are non-empty strings, values integers
(``bool`` counts as 0/1) in the C ``int`` range or strings, the arguments
grpc documents as integers are integers in their range, those it documents
as strings are strings, a key is given once, and a ``grpc.`` key one edit
away from a known one is a typo. Unknown keys are passed on, as grpc does
(interceptors and custom transports read their own).

Threading: pure functions of their arguments.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["CheckedOptions", "OptionValue", "backend_keepalive", "check_options"]

OptionValue = int | str

INT_MAX = 2**31 - 1
INT_MIN = -(2**31)

_BOOL = (0, 1)
_NON_NEGATIVE = (0, INT_MAX)
_POSITIVE = (1, INT_MAX)

# Integer arguments from grpc's channel_arg_names.h, with the range grpc
# gives them. Times are milliseconds.
_INT_OPTIONS: dict[str, tuple[int, int]] = {
    "grpc.max_receive_message_length": (-1, INT_MAX),   # -1 = unlimited
    "grpc.max_send_message_length": (-1, INT_MAX),
    "grpc.max_metadata_size": _NON_NEGATIVE,
    "grpc.absolute_max_metadata_size": _NON_NEGATIVE,
    "grpc.max_concurrent_streams": _NON_NEGATIVE,
    "grpc.keepalive_time_ms": _POSITIVE,
    "grpc.keepalive_timeout_ms": _POSITIVE,
    "grpc.keepalive_permit_without_calls": _BOOL,
    "grpc.http2.max_pings_without_data": _NON_NEGATIVE,
    "grpc.http2.min_time_between_pings_ms": _NON_NEGATIVE,
    "grpc.http2.min_ping_interval_without_data_ms": _NON_NEGATIVE,
    "grpc.http2.max_ping_strikes": _NON_NEGATIVE,
    "grpc.http2.ping_timeout_ms": _POSITIVE,
    "grpc.http2.bdp_probe": _BOOL,
    "grpc.http2.lookahead_bytes": _NON_NEGATIVE,
    "grpc.http2.hpack_table_size.decoder": _NON_NEGATIVE,
    "grpc.http2.hpack_table_size.encoder": _NON_NEGATIVE,
    "grpc.http2.max_frame_size": (16384, 16777215),     # RFC 9113 SETTINGS_MAX_FRAME_SIZE
    "grpc.http2.write_buffer_size": _NON_NEGATIVE,
    "grpc.http2.initial_sequence_number": _NON_NEGATIVE,
    "grpc.http2.true_binary": _BOOL,
    "grpc.http2.max_inflight_pings": _NON_NEGATIVE,
    "grpc.initial_reconnect_backoff_ms": _NON_NEGATIVE,
    "grpc.min_reconnect_backoff_ms": _NON_NEGATIVE,
    "grpc.max_reconnect_backoff_ms": _NON_NEGATIVE,
    "grpc.dns_min_time_between_resolutions_ms": _NON_NEGATIVE,
    "grpc.dns_enable_srv_queries": _BOOL,
    "grpc.dns_ares_query_timeout": _NON_NEGATIVE,
    "grpc.enable_retries": _BOOL,
    "grpc.experimental.enable_hedging": _BOOL,
    "grpc.per_rpc_retry_buffer_size": _NON_NEGATIVE,
    "grpc.client_idle_timeout_ms": _NON_NEGATIVE,
    "grpc.max_connection_idle_ms": _NON_NEGATIVE,
    "grpc.max_connection_age_ms": _NON_NEGATIVE,
    "grpc.max_connection_age_grace_ms": _NON_NEGATIVE,
    "grpc.use_local_subchannel_pool": _BOOL,
    "grpc.minimal_stack": _BOOL,
    "grpc.enable_channelz": _BOOL,
    "grpc.enable_http_proxy": _BOOL,
    "grpc.inhibit_health_checking": _BOOL,
    "grpc.service_config_disable_resolution": _BOOL,
    "grpc.so_reuseport": _BOOL,
    "grpc.expand_wildcard_addrs": _BOOL,
    "grpc.max_channel_trace_event_memory_per_node": _NON_NEGATIVE,
    "grpc.default_compression_algorithm": (0, 2),       # none, deflate, gzip (grpc.Compression)
    "grpc.default_compression_level": (0, 3),           # none, low, medium, high
    "grpc.compression_enabled_algorithms_bitset": _NON_NEGATIVE,
    "grpc.happy_eyeballs_connection_attempt_delay_ms": _NON_NEGATIVE,
    "grpc.server_handshake_timeout_ms": _NON_NEGATIVE,
    "grpc.grpclb_call_timeout_ms": _NON_NEGATIVE,
    "grpc.grpclb_fallback_timeout_ms": _NON_NEGATIVE,
    "grpc.priority_failover_timeout_ms": _NON_NEGATIVE,
    "grpc.xds_resource_does_not_exist_timeout_ms": _NON_NEGATIVE,
    "grpc.max_allowed_incoming_connections": _NON_NEGATIVE,
    "grpc.tcp_receive_buffer_size": (-1, INT_MAX),
    "grpc.experimental.tcp_read_chunk_size": _POSITIVE,
    "grpc.experimental.tcp_min_read_chunk_size": _POSITIVE,
    "grpc.experimental.tcp_max_read_chunk_size": _POSITIVE,
    "grpc.experimental.tcp_tx_zerocopy_enabled": _BOOL,
    "grpc.experimental.tcp_tx_zerocopy_send_bytes_threshold": _NON_NEGATIVE,
    "grpc.experimental.tcp_tx_zerocopy_max_simultaneous_sends": _NON_NEGATIVE,
}

# String arguments; the value sets where grpc has one.
_STR_OPTIONS: dict[str, frozenset[str] | None] = {
    "grpc.primary_user_agent": None,
    "grpc.secondary_user_agent": None,
    "grpc.default_authority": None,
    "grpc.ssl_target_name_override": None,
    "grpc.lb_policy_name": None,
    "grpc.service_config": None,
    "grpc.http_proxy": None,
    "grpc.optimization_target": frozenset({"latency", "blend", "throughput"}),
}

_KNOWN = frozenset(_INT_OPTIONS) | frozenset(_STR_OPTIONS)


@dataclass(frozen=True, slots=True)
class CheckedOptions:
    """Channel arguments after :func:`check_options`.

    ``args`` are every argument as given (keys and values normalised to
    ``str``/``int``), in order. ``service_config`` is the value of
    ``grpc.service_config``, ``lb_policy_name`` that of
    ``grpc.lb_policy_name`` and ``retries_disabled`` is True for
    ``grpc.enable_retries = 0``: the channel itself acts on those three, as
    grpcio's channel does, so :meth:`for_backends` leaves the first two out.
    """

    args: tuple[tuple[str, OptionValue], ...] = ()
    service_config: str | None = None
    lb_policy_name: str | None = None
    retries_disabled: bool = False

    def get(self, key: str) -> OptionValue | None:
        for k, v in self.args:
            if k == key:
                return v
        return None

    def for_backends(self) -> list[tuple[str, OptionValue]]:
        """What every backend channel gets: the user's arguments, minus those the
        balancing channel applies itself, plus what keepalive needs underneath
        (:func:`backend_keepalive`)."""
        own = {"grpc.service_config", "grpc.lb_policy_name"}
        out = [(k, v) for k, v in self.args if k not in own]
        return out + backend_keepalive(dict(out))


def backend_keepalive(args: Mapping[str, OptionValue]) -> list[tuple[str, OptionValue]]:
    """The arguments grpcio needs for keepalive to do what its options say.

    Measured with grpcio 1.85 through :class:`discovery.testing.proxy.BlackholeProxy`
    (a backend whose TCP connection stays open and answers nothing):

    - ``grpc.keepalive_timeout_ms`` alone changes nothing: the core waits
      ``grpc.http2.ping_timeout_ms`` (default 60 s) for the ping's ack. With
      keepalive 1 s / timeout 0.5 s a black-holed backend stayed READY for
      60.5 s; with the ping timeout set to the keepalive timeout, ~1 s.
      So the ping timeout becomes the keepalive timeout (grpc's default 20 s
      when only ``grpc.keepalive_time_ms`` is given).
    - With ``grpc.keepalive_permit_without_calls`` and no call in flight, the
      core stops pinging after ``grpc.http2.max_pings_without_data`` (default
      2) pings: a backend that hangs after a few idle seconds was not
      detected in 30 s. So that limit becomes 0 (unlimited).

    An argument the user set explicitly is never overridden.
    """
    if "grpc.keepalive_time_ms" not in args:
        return []
    out: list[tuple[str, OptionValue]] = []
    if "grpc.http2.ping_timeout_ms" not in args:
        out.append(("grpc.http2.ping_timeout_ms", args.get("grpc.keepalive_timeout_ms", 20000)))
    if args.get("grpc.keepalive_permit_without_calls") == 1 and "grpc.http2.max_pings_without_data" not in args:
        out.append(("grpc.http2.max_pings_without_data", 0))
    return out


def _text(value: str | bytes, what: str, key_path: str, source: str | None) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{what} {value!r} is not UTF-8", source=source, key_path=key_path) from None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {value!r} is not valid Unicode (lone surrogate)", source=source,
                          key_path=key_path) from None
    if "\x00" in value:
        raise ConfigError(f"{what} {value!r} contains a NUL character", source=source, key_path=key_path)
    return value


def _check_value(key: str, value: Any, key_path: str, source: str | None) -> OptionValue:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        if key in _STR_OPTIONS:
            raise ConfigError(f"expected a string, got {value!r}", source=source, key_path=key_path)
        lo, hi = _INT_OPTIONS.get(key, (INT_MIN, INT_MAX))
        if not lo <= value <= hi:
            raise ConfigError(f"expected an integer in [{lo}, {hi}], got {value!r}", source=source,
                              key_path=key_path)
        return value
    if isinstance(value, str | bytes):
        if key in _INT_OPTIONS:
            lo, hi = _INT_OPTIONS[key]
            raise ConfigError(f"expected an integer in [{lo}, {hi}], got {value!r}", source=source,
                              key_path=key_path)
        text = _text(value, "value", key_path, source)
        allowed = _STR_OPTIONS.get(key)
        if allowed is not None and text not in allowed:
            raise ConfigError(f"expected one of {sorted(allowed)}, got {text!r}", source=source, key_path=key_path)
        return text
    what = "an integer" if key in _INT_OPTIONS else "a string" if key in _STR_OPTIONS else "an integer or a string"
    raise ConfigError(f"expected {what}, got {type(value).__name__} {value!r}", source=source, key_path=key_path)


def _check_key(key: Any, key_path: str, source: str | None) -> str:
    if not isinstance(key, str | bytes):
        raise ConfigError(f"a channel argument name must be a string, got {type(key).__name__} {key!r}",
                          source=source, key_path=key_path)
    name = _text(key, "channel argument name", key_path, source)
    if not name:
        raise ConfigError("empty channel argument name", source=source, key_path=key_path)
    if name.startswith("grpc.") and name not in _KNOWN:
        close = difflib.get_close_matches(name, _KNOWN, n=1, cutoff=0.9)
        if close:
            raise ConfigError(f"unknown channel argument {name!r}; did you mean {close[0]!r}?", source=source,
                              key_path=key_path)
    return name


def check_options(options: Any, *, source: str | None = None, key_path: str = "options") -> CheckedOptions:
    """Validate ``options`` (a sequence of ``(key, value)`` pairs, as grpcio takes).

    Raises :class:`~discovery.errors.ConfigError` naming the argument (as
    ``options.<key>``, or ``options[i]`` when the key itself is bad) and what
    was expected. Never builds a channel.
    """
    if options is None:
        return CheckedOptions()
    if isinstance(options, str | bytes | Mapping) or not isinstance(options, Iterable):
        raise ConfigError(f"expected a list of (key, value) pairs, got {type(options).__name__} {options!r}",
                          source=source, key_path=key_path)
    args: list[tuple[str, OptionValue]] = []
    seen: set[str] = set()
    for i, pair in enumerate(options):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ConfigError(f"expected a (key, value) pair, got {pair!r}", source=source,
                              key_path=f"{key_path}[{i}]")
        key = _check_key(pair[0], f"{key_path}[{i}]", source)
        path = f"{key_path}.{key}"
        if key in seen:
            # grpc would silently take the first one.
            raise ConfigError("given more than once", source=source, key_path=path)
        seen.add(key)
        value = _check_value(key, pair[1], path, source)
        if key == "grpc.use_local_subchannel_pool" and value != 1:
            raise ConfigError("must stay 1: the channel keeps one grpc channel per backend, each with its own "
                              "subchannel", source=source, key_path=path)
        args.append((key, value))
    checked = dict(args)
    sc = checked.get("grpc.service_config")
    lb = checked.get("grpc.lb_policy_name")
    return CheckedOptions(
        args=tuple(args),
        service_config=sc if isinstance(sc, str) else None,
        lb_policy_name=lb if isinstance(lb, str) else None,
        retries_disabled=checked.get("grpc.enable_retries") == 0,
    )
