"""The endpoints of one Service: every EndpointSlice (or its Endpoints object) merged into one address set.

Pure data handling, no I/O: the watch loop feeds it the objects a list
returned and the objects of watch events, and asks it for the complete
:class:`~discovery.address.ResolverState` to publish. It reads the JSON the
API server sends and tolerates any shape of it (``null`` lists, missing or
mistyped fields): a malformed endpoint is skipped, never a crash.

Rules, as kube-proxy reads EndpointSlices:

- ``conditions.ready`` absent means ready; ``ready: false`` is left out.
- ``terminating: true`` is left out, unless ``keep_serving_terminating`` and
  ``serving: true`` (a pod draining gracefully that still answers).
- Only the first of an endpoint's ``addresses`` counts (the API defines no
  meaning for the others, and kube-proxy ignores them).
- A numeric target port is used as is; a port name is looked up in each
  slice (a slice without it contributes nothing); with no port, each slice's
  only TCP port is used, and a Service with more than one port is an error
  naming them.
- The same address in several slices (a controller moving endpoints between
  slices) is published once; a ready entry wins over a terminating one.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from discovery.address import Address, Attributes, ResolverState
from discovery.errors import ResolverError

from ._config import KubeTarget

__all__ = ["EndpointView"]

_FQDN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class _Candidate:
    address: Address
    terminating: bool


@dataclass(frozen=True, slots=True)
class _Part:
    """What one EndpointSlice (or one Endpoints object) contributes."""

    candidates: tuple[_Candidate, ...] = ()
    #: (name, number) of every TCP port the object lists.
    ports: tuple[tuple[str, int], ...] = ()
    #: Endpoints left out because they are not ready, or terminating.
    not_ready: int = 0
    #: True when the endpoints were skipped because the object lacks the asked port.
    lacks_port: bool = False
    #: True when one slice (or subset) lists more than one TCP port.
    multi: bool = False


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _host(raw: Any, address_type: str) -> str | None:
    """The canonical form of an endpoint address of ``address_type``, None if it is not one."""
    if not isinstance(raw, str) or not raw:
        return None
    if address_type == "FQDN":
        name = raw.rstrip(".").lower()
        return name if _FQDN.match(name) else None
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if address_type and f"IPv{ip.version}" != address_type:
        return None
    return str(ip)


def _tcp_ports(ports: Iterable[Any]) -> tuple[tuple[str, int], ...]:
    out = []
    for p in ports:
        p = _dict(p)
        number = p.get("port")
        # protocol defaults to TCP; a UDP or SCTP port of the same name is no gRPC port.
        if (p.get("protocol") or "TCP") != "TCP" or isinstance(number, bool) or not isinstance(number, int):
            continue
        if 0 < number < 65536:
            out.append((_text(p.get("name")), number))
    return tuple(out)


def _sort_key(a: Address) -> tuple[int, int, str, int]:
    try:
        ip = ipaddress.ip_address(a.host)
    except ValueError:
        return (7, 0, a.host, a.port)
    return (ip.version, int(ip), "", a.port)


class EndpointView:
    """The merged endpoints of one Service. Not thread-safe: the watch thread owns it.

    ``kind`` is ``"slices"`` (EndpointSlice objects) or ``"endpoints"`` (the
    legacy Endpoints object).
    """

    def __init__(self, target: KubeTarget, namespace: str, *, kind: str = "slices",
                 keep_serving_terminating: bool = False) -> None:
        if kind not in ("slices", "endpoints"):
            raise ValueError(f"kind must be 'slices' or 'endpoints', got {kind!r}")
        self._target = target
        self._namespace = namespace
        self._kind = kind
        self._keep = keep_serving_terminating
        self._parts: dict[str, _Part] = {}

    def __len__(self) -> int:
        """How many objects (slices) are held."""
        return len(self._parts)

    def replace_all(self, objects: Iterable[Any]) -> None:
        """Replace everything with what a list returned (one complete snapshot)."""
        parts: dict[str, _Part] = {}
        for obj in objects:
            name = self._name(obj)
            if name is not None:
                parts[name] = self._part(obj)
        self._parts = parts

    def apply(self, event_type: str, obj: Any) -> bool:
        """Apply one watch event (ADDED, MODIFIED, DELETED); False if it was not about an object of ours."""
        name = self._name(obj)
        if name is None:
            return False
        if event_type == "DELETED":
            # Only this object's own endpoints go: the others' stay (kuberesolver#66).
            self._parts.pop(name, None)
        elif event_type in ("ADDED", "MODIFIED"):
            self._parts[name] = self._part(obj)
        else:
            return False
        return True

    def state(self) -> ResolverState | ResolverError:
        """The complete, deduplicated address set, or an error when the target's port is ambiguous."""
        ambiguous = self._ambiguity()
        if ambiguous is not None:
            return ambiguous
        chosen: dict[str, _Candidate] = {}
        for name in sorted(self._parts):
            for c in self._parts[name].candidates:
                prev = chosen.get(c.address.addr)
                if prev is None or (prev.terminating and not c.terminating):
                    chosen[c.address.addr] = c
        addresses = sorted((c.address for c in chosen.values()), key=_sort_key)
        return ResolverState(tuple(addresses), note="" if addresses else self._empty_note())

    # -- internals ----------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"Service {self._namespace}/{self._target.service}"

    def _name(self, obj: Any) -> str | None:
        name = _dict(_dict(obj).get("metadata")).get("name")
        return name if isinstance(name, str) and name else None

    def _ambiguity(self) -> ResolverError | None:
        if self._target.port is not None:
            return None
        names: dict[str, int] = {}
        several = False
        for part in self._parts.values():
            several = several or part.multi
            for name, number in part.ports:
                names.setdefault(name, number)
        if not several and len(names) <= 1:
            return None
        listed = ", ".join(f"{name} ({number})" if name else f"unnamed ({number})" for name, number in
                           sorted(names.items()))
        example = next((name for name in sorted(names) if name), str(min(names.values())))
        return ResolverError(
            f"{self._where} has more than one port: {listed}; name the one to use in the target, "
            f"e.g. kubernetes:///{self._target.service}.{self._namespace}:{example}")

    def _empty_note(self) -> str:
        what = "EndpointSlices" if self._kind == "slices" else "Endpoints object"
        if not self._parts:
            return f"no {what} for {self._where} (does the Service exist and select running pods?)"
        port = self._target.port
        if isinstance(port, str) and any(p.lacks_port for p in self._parts.values()):
            names = sorted({n for p in self._parts.values() for n, _ in p.ports if n})
            return f"{self._where} has no port named {port!r} (its ports: {', '.join(names) or 'none named'})"
        if port is None and not any(p.ports for p in self._parts.values()):
            return f"{self._where} lists no TCP port in its {what}"
        not_ready = sum(p.not_ready for p in self._parts.values())
        return f"{self._where} has no ready endpoints ({not_ready} not ready or terminating)"

    def _select_port(self, ports: tuple[tuple[str, int], ...]) -> tuple[int | None, bool]:
        """(port to use or None, lacks the asked port?)."""
        want = self._target.port
        if isinstance(want, int):
            return want, False
        if isinstance(want, str):
            for name, number in ports:
                if name == want:
                    return number, False
            return None, True
        if len(ports) == 1:
            return ports[0][1], False
        return None, False  # none (nothing to use) or several (reported by _ambiguity)

    def _part(self, obj: Any) -> _Part:
        obj = _dict(obj)
        if self._kind == "endpoints":
            return self._endpoints_part(obj)
        address_type = _text(obj.get("addressType"))
        ports = _tcp_ports(_list(obj.get("ports")))
        if address_type not in ("IPv4", "IPv6", "FQDN"):
            return _Part(ports=ports, multi=len(ports) > 1)
        port, lacks = self._select_port(ports)
        candidates: list[_Candidate] = []
        not_ready = 0
        for ep in _list(obj.get("endpoints")):
            ep = _dict(ep)
            conditions = _dict(ep.get("conditions"))
            ready, serving = conditions.get("ready"), conditions.get("serving")
            terminating = conditions.get("terminating") is True
            if terminating:
                if not (self._keep and serving is True):
                    not_ready += 1
                    continue
            elif ready is False:
                not_ready += 1
                continue
            if port is None:
                continue
            addresses = _list(ep.get("addresses"))
            host = _host(addresses[0] if addresses else None, address_type)
            if host is None:
                continue
            for_zones = tuple(sorted({_text(_dict(z).get("name")) for z in _list(_dict(ep.get("hints")).get("forZones"))
                                      } - {""}))
            zone = _text(ep.get("zone")) or (for_zones[0] if for_zones else "")
            attrs = self._attributes(ep, ep.get("nodeName"))
            if for_zones:
                attrs["for_zones"] = for_zones
            if terminating:
                attrs["terminating"] = True
            candidates.append(_Candidate(Address(host, port, zone=zone, attributes=Attributes(attrs)), terminating))
        return _Part(tuple(candidates), ports, not_ready, lacks, len(ports) > 1)

    def _attributes(self, ep: Mapping[str, Any], node: Any) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if isinstance(node, str) and node:
            attrs["node"] = node
        ref = _dict(ep.get("targetRef"))
        if ref.get("kind", "Pod") == "Pod" and _text(ref.get("name")):
            attrs["pod"] = ref["name"]
            attrs["pod_namespace"] = _text(ref.get("namespace")) or self._namespace
        if _text(ep.get("hostname")):
            attrs["hostname"] = ep["hostname"]
        return attrs

    def _endpoints_part(self, obj: Mapping[str, Any]) -> _Part:
        candidates: list[_Candidate] = []
        all_ports: list[tuple[str, int]] = []
        not_ready = 0
        lacks_any = multi = False
        for subset in _list(obj.get("subsets")):
            subset = _dict(subset)
            ports = _tcp_ports(_list(subset.get("ports")))
            all_ports.extend(p for p in ports if p not in all_ports)
            multi = multi or len(ports) > 1
            not_ready += len(_list(subset.get("notReadyAddresses")))
            port, lacks = self._select_port(ports)
            lacks_any = lacks_any or lacks
            if port is None:
                continue
            for a in _list(subset.get("addresses")):
                a = _dict(a)
                host = _host(a.get("ip"), "")
                if host is None:
                    continue
                address = Address(host, port, attributes=Attributes(self._attributes(a, a.get("nodeName"))))
                candidates.append(_Candidate(address, False))
        return _Part(tuple(candidates), tuple(all_ports), not_ready, lacks_any, multi)
