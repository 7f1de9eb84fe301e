"""``subset``: route an RPC by a request header to the backends whose attribute matches
(Envoy's subset load balancer; Istio's ``subsets`` with ``x-version: v2``).

Config::

    {"subset": {"header": "x-version", "attribute": "version", "fallback": "any",
                "defaultSubset": {"version": "v1"}, "childPolicy": [{"round_robin": {}}]}}

An RPC whose metadata carries ``header`` goes to the backends whose
``Address.attributes[attribute]`` equals the header's value (attributes
from static ``endpoints``, Consul meta or tags, ...). An attribute that is a
list (Consul tags) puts the backend in a subset per element; numbers and
booleans match their text (``2``, ``true``). An RPC without the header, or
asking for a value no backend has, takes the ``fallback``:

- ``"any"`` (the default): every backend;
- ``"default_subset"``: the backends matching every key and value of
  ``defaultSubset``;
- ``"none"``: it fails fast with UNAVAILABLE naming the value it asked for.

Each subset (and the fallback set) has its own instance of ``childPolicy``
(round_robin by default), so its state (rotation, outlier statistics, a hash
ring) is its own. A subset whose backends are all down does not fall back:
its child policy decides (waits while they connect, fails, or panics), as in
Envoy, where the fallback is for subsets with no backends at all.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grpc

from ..address import Attributes
from ..balancer import (
    Balancer,
    BalancerBuilder,
    BalancerHelper,
    ErrorPicker,
    Metadata,
    Picker,
    PickResult,
    SubConn,
    aggregate_state,
)
from ..errors import ConfigError
from ._groups import GroupBalancer, check_keys, parse_child

__all__ = ["SubsetBuilder", "SubsetConfig", "SubsetPicker"]

_HEADER = re.compile(r"[0-9a-z_.-]+")
_FALLBACKS = ("any", "none", "default_subset")
_ANY = ("any",)
_DEFAULT = ("default",)


@dataclass(frozen=True, slots=True)
class SubsetConfig:
    header: str
    attribute: str
    fallback: str = "any"
    default_subset: tuple[tuple[str, str], ...] = ()
    child: str = "round_robin"
    child_config: Any = None


def _texts(value: Any) -> tuple[str, ...]:
    """An attribute value as the header values it matches."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, bool):
        return ("true" if value else "false",)
    if isinstance(value, int | float):
        return (str(value),)
    if isinstance(value, Sequence | frozenset | set):
        # One level: a list of scalars (Consul tags), not lists of lists.
        return tuple(t for item in value if isinstance(item, str | int | float) for t in _texts(item))
    return ()


def _header_value(header: str, metadata: Metadata | None) -> str | bytes | None:
    if metadata:
        for k, v in metadata:
            if k == header:
                return v
    return None


class SubsetPicker(Picker):
    """Header value -> that subset's picker (a dict lookup), else the fallback's."""

    __slots__ = ("_attribute", "_fallback", "_fallback_name", "_header", "_subsets", "queue", "reason")

    def __init__(self, config: SubsetConfig, subsets: dict[str | bytes, Picker], fallback: Picker | None,
                 queue: bool, reason: str) -> None:
        self._header = config.header
        self._attribute = config.attribute
        self._fallback_name = config.fallback
        self._subsets = subsets
        self._fallback = fallback
        self.queue = queue
        self.reason = reason

    def pick(self, method: str, metadata: Metadata | None) -> PickResult | None:
        if metadata:
            header = self._header
            for k, v in metadata:
                if k == header:
                    p = self._subsets.get(v)
                    if p is not None:
                        return p.pick(method, metadata)
                    break
        fallback = self._fallback
        return None if fallback is None else fallback.pick(method, metadata)

    def why_none(self, method: str, metadata: Metadata | None) -> tuple[bool, str]:
        value = _header_value(self._header, metadata)
        if value is not None:
            p = self._subsets.get(value)
            if p is not None:
                q, reason = p.why_none(method, metadata)
                return q, f"subset {self._attribute}={value!r}: {reason}"
            asked = f"no backend has {self._attribute}={value!r} (asked by header {self._header}: {value!r})"
        else:
            asked = f"the RPC has no {self._header} header"
        if self._fallback is None:
            return False, f"{asked} and the subset fallback is none"
        q, reason = self._fallback.why_none(method, metadata)
        return q, f"{asked}; fallback {self._fallback_name}: {reason}"


class Subset(GroupBalancer):
    def __init__(self, helper: BalancerHelper, config: SubsetConfig) -> None:
        super().__init__(helper, config.child, config.child_config)
        self.config = config

    def partition(self, subconns: tuple[SubConn, ...]) -> Mapping[Hashable, tuple[SubConn, ...]]:
        cfg = self.config
        subsets: dict[Hashable, list[SubConn]] = {}
        default: list[SubConn] = []
        for sc in subconns:
            attrs = sc.address.attributes
            for text in dict.fromkeys(_texts(attrs.get(cfg.attribute))):
                subsets.setdefault(("value", text), []).append(sc)
            if cfg.fallback == "default_subset" and _matches(attrs, cfg.default_subset):
                default.append(sc)
        out: dict[Hashable, tuple[SubConn, ...]] = {k: tuple(v) for k, v in subsets.items()}
        if cfg.fallback == "any" and subconns:
            out[_ANY] = subconns
        if default:
            out[_DEFAULT] = tuple(default)
        return out

    def make_picker(self) -> tuple[grpc.ChannelConnectivity, Picker]:
        cfg = self.config
        subsets: dict[str | bytes, Picker] = {}
        fallback: Picker | None = None
        for key, g in self.groups.items():
            if key in (_ANY, _DEFAULT):
                fallback = g.picker
            else:
                assert isinstance(key, tuple)
                subsets[key[1]] = g.picker
        if cfg.fallback == "default_subset" and fallback is None:
            wanted = ", ".join(f"{k}={v}" for k, v in cfg.default_subset)
            fallback = ErrorPicker(f"no backend matches the default subset {wanted}")
        groups = list(self.groups.values())
        state = aggregate_state([g.state for g in groups])
        queue = any(g.picker.queue for g in groups)
        reason = "; ".join(f"{_label(g.key)}: {g.picker.reason}" for g in groups if g.picker.reason)
        return state, SubsetPicker(cfg, subsets, fallback, queue, reason)


def _label(key: Hashable) -> str:
    if key == _ANY:
        return "all backends"
    if key == _DEFAULT:
        return "default subset"
    assert isinstance(key, tuple)
    return f"subset {key[1]!r}"


def _matches(attrs: Attributes, wanted: tuple[tuple[str, str], ...]) -> bool:
    return all(v in _texts(attrs.get(k)) for k, v in wanted)


class SubsetBuilder(BalancerBuilder):
    name: ClassVar[str] = "subset"

    def parse_config(self, config: Mapping[str, Any], *, key_path: str) -> SubsetConfig:
        raw = check_keys(config, key_path, {"header", "attribute", "fallback", "defaultSubset", "childPolicy"},
                         self.name)
        header = raw.get("header")
        if not isinstance(header, str) or not _HEADER.fullmatch(header.lower()):
            raise ConfigError(f"required: a request header name of 0-9 a-z _ . - (such as \"x-version\"), "
                              f"got {header!r}", key_path=f"{key_path}.header")
        header = header.lower()
        if header.endswith("-bin"):
            raise ConfigError(f"a binary header ({header!r}) cannot select a subset", key_path=f"{key_path}.header")
        attribute = raw.get("attribute")
        if not isinstance(attribute, str) or not attribute:
            raise ConfigError(f"required: the Address attribute to match (such as \"version\"), got {attribute!r}",
                              key_path=f"{key_path}.attribute")
        fallback = raw.get("fallback", "any")
        if fallback not in _FALLBACKS:
            raise ConfigError(f"expected one of {', '.join(_FALLBACKS)}, got {fallback!r}",
                              key_path=f"{key_path}.fallback")
        default: tuple[tuple[str, str], ...] = ()
        path = f"{key_path}.defaultSubset"
        if fallback == "default_subset":
            ds = raw.get("defaultSubset")
            if not isinstance(ds, Mapping) or not ds:
                raise ConfigError(f"required with fallback default_subset: an object of attribute values "
                                  f"such as {{\"version\": \"v1\"}}, got {ds!r}", key_path=path)
            for k, v in ds.items():
                texts = _texts(v) if isinstance(v, str | int | float | bool) else ()
                if not isinstance(k, str) or len(texts) != 1:
                    raise ConfigError(f"expected a string, number or boolean, got {v!r}", key_path=f"{path}.{k}")
                default += ((k, texts[0]),)
        elif "defaultSubset" in raw:
            raise ConfigError(f"used only with fallback default_subset (fallback is {fallback!r})", key_path=path)
        child, child_cfg = parse_child(raw, key_path, self.name)
        return SubsetConfig(header, attribute, fallback, default, child, child_cfg)

    def build(self, helper: BalancerHelper, config: Any) -> Balancer:
        if not isinstance(config, SubsetConfig):
            raise ConfigError("subset needs its parsed config (header, attribute)", key_path=self.name)
        return Subset(helper, config)
