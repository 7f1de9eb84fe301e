"""The built-in static resolver: a fixed list of addresses from the target itself.

``static:///10.0.0.1:50051,10.0.0.2:50051`` plus gRPC's own list forms
``ipv4:10.0.0.1:50051,10.0.0.2`` and ``ipv6:[::1]:50051``. Hostnames are allowed
in ``static:`` (each backend channel resolves its own name), not in ``ipv4:``
or ``ipv6:``. A missing port is gRPC's default, 443.
"""

from __future__ import annotations

import ipaddress
from typing import ClassVar

from ..address import Address, ResolverState
from ..errors import ConfigError, TargetError
from ..resolver import Resolver, ResolverBuilder, ResolverListener, ResolverOptions
from ..target import Target, parse_host_port

__all__ = ["IPv4ResolverBuilder", "IPv6ResolverBuilder", "StaticResolver", "StaticResolverBuilder"]


class StaticResolver(Resolver):
    """Publishes its one state at start; ``resolve_now`` re-publishes nothing."""

    def __init__(self, listener: ResolverListener, state: ResolverState) -> None:
        listener.update_state(state)

    def close(self) -> None:
        pass


class StaticResolverBuilder(ResolverBuilder):
    """``static:///host:port,host:port``. Options: ``weights`` (list, one per address)."""

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
        unknown = set(options.config) - {"weights"}
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)}; expected: weights", key_path="resolver")
        weights = options.config.get("weights")
        if weights is not None:
            if (
                not isinstance(weights, list)
                or len(weights) != len(addrs)
                or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in weights)
            ):
                raise ConfigError(
                    f"expected a list of {len(addrs)} non-negative integers, got {weights!r}",
                    key_path="resolver.weights",
                )
            addrs = tuple(
                Address(a.host, a.port, weight=w) for a, w in zip(addrs, weights, strict=True)
            )
        return addrs

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
