"""The built-in static resolver: a fixed list of addresses from the target itself.

``static:///10.0.0.1:50051,10.0.0.2:50051`` plus gRPC's own list forms
``ipv4:10.0.0.1:50051,10.0.0.2`` and ``ipv6:[::1]:50051``. Hostnames are allowed
in ``static:`` (each backend channel resolves its own name), not in ``ipv4:``
or ``ipv6:``. A missing port is gRPC's default, 443.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..address import Address, Attributes, ResolverState
from ..errors import ConfigError, TargetError
from ..resolver import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from ..target import Target, parse_host_port

__all__ = ["IPv4ResolverBuilder", "IPv6ResolverBuilder", "StaticResolver", "StaticResolverBuilder"]

_KEYS = ("weights", "endpoints")
_ENDPOINT_KEYS = ("weight", "priority", "zone", "attributes")
_SCALARS = (str, int, float, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _plain(value: Any) -> Any:
    """``value`` as the user wrote it (a config file's frozen tuples and mappings shown as lists and dicts)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _canonical(host: str, port: int) -> tuple[str, int]:
    """How two spellings of one address compare: IPs in their canonical form, names case-insensitively."""
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return host.lower().rstrip("."), port


def _attributes(value: Any, path: str) -> Attributes:
    """Endpoint attributes: a table of strings, numbers, booleans or lists of them (kept as tuples)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table such as {{version = \"v2\"}}, got {_plain(value)!r}", key_path=path)
    out: dict[str, Any] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise ConfigError(f"expected string keys, got {k!r}", key_path=path)
        if isinstance(v, Sequence) and not isinstance(v, str):
            if not all(isinstance(item, _SCALARS) for item in v):
                raise ConfigError(f"expected a list of strings, numbers or booleans, got {_plain(v)!r}",
                                  key_path=f"{path}.{k}")
            v = tuple(v)
        elif not isinstance(v, _SCALARS):
            raise ConfigError(f"expected a string, number, boolean or a list of them, got {_plain(v)!r}",
                              key_path=f"{path}.{k}")
        out[k] = v
    return Attributes(out)


class StaticResolver(Resolver):
    """Publishes its one state at start; ``resolve_now`` re-publishes nothing."""

    def __init__(self, listener: ResolverListener, state: ResolverState) -> None:
        listener.update_state(state)

    def close(self) -> None:
        pass


class StaticResolverBuilder(ResolverBuilder):
    """``static:///host:port,host:port``.

    Options (``resolver_config=`` or a config file's ``resolver`` table):

    - ``weights``: a list of non-negative integers, one per address in target order;
    - ``endpoints``: per-address data keyed by an address of the target,
      ``{"10.0.0.1:50051": {"weight": 3, "priority": 0, "zone": "eu-1a",
      "attributes": {"version": "v2"}}}``; each key optional. These become
      the :class:`~discovery.address.Address` fields balancers read.

    An unknown key, an address not in the target or a bad value is a
    ConfigError naming the key path. :meth:`check` and :meth:`build` validate
    the same way; neither blocks.
    """

    scheme: ClassVar[str] = "static"
    family: ClassVar[int | None] = None

    def parse(self, target: Target) -> tuple[Address, ...]:
        if target.authority:
            raise TargetError(f"target {target}: {self.scheme} takes no authority")
        out: list[Address] = []
        seen: set[str] = set()
        for i, part in enumerate(target.endpoint.split(",")):
            if not part.strip():
                raise TargetError(f"target {target}: address #{i + 1} is empty")
            try:
                host, port = parse_host_port(part, 443)
            except TargetError as exc:
                raise TargetError(f"target {target}: address #{i + 1}: {exc}") from exc
            if self.family is not None:
                try:
                    ip = ipaddress.ip_address(host)
                except ValueError:
                    ip = None
                if ip is None or ip.version != self.family:
                    raise TargetError(
                        f"target {target}: {host!r} is not an IPv{self.family} address"
                    )
            addr = Address(host, port)
            if addr.addr not in seen:
                seen.add(addr.addr)
                out.append(addr)
        return tuple(out)

    def check(self, target: Target, options: ResolverOptions) -> None:
        self._addresses(target, options)

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> Resolver:
        return StaticResolver(listener, ResolverState(self._addresses(target, options)))

    def _addresses(self, target: Target, options: ResolverOptions) -> tuple[Address, ...]:
        addrs = self.parse(target)
        config = options.config
        if not isinstance(config, Mapping):
            raise ConfigError(f"expected a table of resolver options, got {type(config).__name__}",
                              key_path="resolver")
        unknown = sorted(str(k) for k in config if k not in _KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown}; expected some of: {', '.join(_KEYS)}",
                              key_path="resolver")
        # Per address: the Address fields the options set (weights and endpoints).
        fields: list[dict[str, Any]] = [{} for _ in addrs]
        weights = config.get("weights")
        if weights is not None:
            # A config file hands lists over as tuples (the parsed file is frozen):
            # any sequence but a string is a list here.
            if (
                isinstance(weights, str | bytes)
                or not isinstance(weights, Sequence)
                or len(weights) != len(addrs)
                or not all(_is_count(w) for w in weights)
            ):
                raise ConfigError(
                    f"expected a list of {len(addrs)} non-negative integers, got {_plain(weights)!r}",
                    key_path="resolver.weights",
                )
            for f, w in zip(fields, weights, strict=True):
                f["weight"] = w
        if "endpoints" in config:
            self._endpoints(target, addrs, config["endpoints"], fields, weights is not None)
        return tuple(Address(a.host, a.port, **f) if f else a for a, f in zip(addrs, fields, strict=True))

    def _endpoints(self, target: Target, addrs: tuple[Address, ...], table: Any, fields: list[dict[str, Any]],
                   have_weights: bool) -> None:
        """Apply ``endpoints = {"host:port" = {weight, priority, zone, attributes}}`` to ``fields``."""
        if not isinstance(table, Mapping):
            raise ConfigError(f'expected a table of {{"host:port" = {{weight, priority, zone, attributes}}}}, '
                              f"got {_plain(table)!r}", key_path="resolver.endpoints")
        index = {_canonical(a.host, a.port): i for i, a in enumerate(addrs)}
        known = ", ".join(a.addr for a in addrs)
        for key, spec in table.items():
            path = f'resolver.endpoints."{key}"'
            if not isinstance(key, str):
                raise ConfigError(f"expected an address of the target as the key, got {key!r}", key_path=path)
            try:
                host, port = parse_host_port(key, 443)
            except TargetError as exc:
                raise ConfigError(f"not an address: {exc}", key_path=path) from exc
            i = index.get(_canonical(host, port))
            if i is None:
                raise ConfigError(f"not an address of the target; its addresses are: {known}", key_path=path)
            if not isinstance(spec, Mapping):
                raise ConfigError(f"expected a table of {', '.join(_ENDPOINT_KEYS)}, got {_plain(spec)!r}",
                                  key_path=path)
            unknown = sorted(str(k) for k in spec if k not in _ENDPOINT_KEYS)
            if unknown:
                raise ConfigError(f"unknown key(s) {unknown}; expected some of: {', '.join(_ENDPOINT_KEYS)}",
                                  key_path=path)
            f = fields[i]
            if "weight" in spec:
                if have_weights:
                    raise ConfigError("the weight of this address is also given by resolver.weights; "
                                      "give it in one place", key_path=f"{path}.weight")
                if not _is_count(spec["weight"]):
                    raise ConfigError(f"expected a non-negative integer, got {spec['weight']!r}",
                                      key_path=f"{path}.weight")
                f["weight"] = spec["weight"]
            if "priority" in spec:
                if not _is_count(spec["priority"]):
                    raise ConfigError(f"expected a non-negative integer (0 is the preferred tier), "
                                      f"got {spec['priority']!r}", key_path=f"{path}.priority")
                f["priority"] = spec["priority"]
            if "zone" in spec:
                if not isinstance(spec["zone"], str):
                    raise ConfigError(f"expected a string, got {spec['zone']!r}", key_path=f"{path}.zone")
                f["zone"] = spec["zone"]
            if "attributes" in spec:
                f["attributes"] = _attributes(spec["attributes"], f"{path}.attributes")

    def default_authority(self, target: Target) -> str | None:
        # An address list is not a service name; each backend sees its own address.
        return None


class IPv4ResolverBuilder(StaticResolverBuilder):
    """gRPC's ``ipv4:addr[:port],...`` form."""

    scheme: ClassVar[str] = "ipv4"
    family: ClassVar[int | None] = 4


class IPv6ResolverBuilder(StaticResolverBuilder):
    """gRPC's ``ipv6:[addr]:port,...`` form (unbracketed addresses take port 443)."""

    scheme: ClassVar[str] = "ipv6"
    family: ClassVar[int | None] = 6
