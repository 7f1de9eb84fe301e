"""Plugin registries for resolvers (by URI scheme) and balancers (by policy name).

Built-ins and third-party plugins arrive the same way: entry points in the
groups ``discovery.resolvers`` and ``discovery.balancers``. The list of entry
points is read on first use and each plugin is imported only when its name is
first asked for (or when the whole registry is listed). A plugin that fails to
import is logged and skipped; asking for it by name then raises an error that
says why. Code that does not want entry points calls :func:`register_resolver`
or :func:`register_balancer`; a clash is an error unless ``replace=True``.

Plugins load only from installed entry points, never from a dotted path in a
config file, so a config file cannot make the process import arbitrary code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from .balancer import BalancerBuilder
from .errors import PluginError, UnknownPolicyError, UnknownSchemeError
from .resolver import ResolverBuilder

__all__ = [
    "BALANCER_GROUP",
    "RESOLVER_GROUP",
    "get_balancer",
    "get_resolver",
    "register_balancer",
    "register_resolver",
    "registered_balancers",
    "registered_resolvers",
    "unregister_balancer",
    "unregister_resolver",
]

log = logging.getLogger(__name__)

RESOLVER_GROUP = "discovery.resolvers"
BALANCER_GROUP = "discovery.balancers"

# Which distribution provides a scheme we know of but do not ship in the core,
# so "unknown scheme" can say what to pip install.
_KNOWN_PLUGINS = {
    "dns": "discovery-dns",
    "consul": "discovery-consul",
    "kubernetes": "discovery-kubernetes",
}

B = TypeVar("B", ResolverBuilder, BalancerBuilder)


class _Registry(Generic[B]):
    def __init__(self, group: str, kind: str, base: type[Any], unknown: type[Exception]):
        self._group = group
        self._kind = kind
        self._base: type[Any] = base
        self._unknown = unknown
        self._lock = threading.RLock()
        self._entries: dict[str, B] = {}
        self._entry_points: dict[str, EntryPoint] | None = None
        self._broken: dict[str, BaseException] = {}

    def _eps(self) -> dict[str, EntryPoint]:
        if self._entry_points is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self._group):
                if ep.name in found and found[ep.name].value != ep.value:
                    log.warning(
                        "%s %r is provided by both %s and %s; using the first",
                        self._kind, ep.name, found[ep.name].value, ep.value,
                    )
                    continue
                found.setdefault(ep.name, ep)
            self._entry_points = found
        return self._entry_points

    def _load(self, name: str) -> B | None:
        ep = self._eps().get(name)
        if ep is None or name in self._broken:
            return None
        try:
            obj = ep.load()
            builder = obj() if isinstance(obj, type) else obj
            if not isinstance(builder, self._base):
                raise PluginError(
                    f"entry point {ep.value!r} gave {type(builder).__name__}, "
                    f"not a {self._base.__name__}"
                )
        except Exception as exc:  # a broken plugin must not break the others
            self._broken[name] = exc
            log.error("skipping %s plugin %r (%s): %s", self._kind, name, ep.value, exc)
            return None
        self._entries[name] = builder
        return builder  # type: ignore[no-any-return]

    def get(self, name: str) -> B:
        with self._lock:
            builder = self._entries.get(name) or self._load(name)
            if builder is not None:
                return builder
            exc = self._broken.get(name)
            if isinstance(exc, ImportError):
                raise ImportError(f"{self._kind} plugin {name!r} cannot be imported: {exc}") from exc
            if exc is not None:
                raise self._unknown(f"{self._kind} plugin {name!r} is broken: {exc}") from exc
            known = ", ".join(sorted(self.names())) or "none"
            hint = ""
            if name in _KNOWN_PLUGINS and self._kind == "resolver":
                hint = f" (pip install {_KNOWN_PLUGINS[name]})"
            raise self._unknown(f"unknown {self._kind} {name!r}{hint}; known: {known}")

    def names(self) -> set[str]:
        with self._lock:
            return set(self._entries) | (set(self._eps()) - set(self._broken))

    def view(self) -> Mapping[str, B]:
        with self._lock:
            for name in list(self._eps()):
                if name not in self._entries:
                    self._load(name)
            return MappingProxyType(dict(self._entries))

    def register(self, name: str, builder: B, replace: bool) -> None:
        if not isinstance(builder, self._base):
            raise PluginError(f"{builder!r} is not a {self._base.__name__}")
        if not name:
            raise PluginError(f"{self._kind} builder {builder!r} has no name")
        with self._lock:
            existing = self._entries.get(name)
            if existing is None and name in self._eps() and not replace:
                existing = self._load(name)
            if existing is not None and existing is not builder and not replace:
                raise PluginError(
                    f"{self._kind} {name!r} is already registered ({type(existing).__name__}); "
                    "pass replace=True to override it"
                )
            self._entries[name] = builder
            self._broken.pop(name, None)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._entries.pop(name, None)
            if self._entry_points is not None:
                self._entry_points.pop(name, None)


_resolvers: _Registry[ResolverBuilder] = _Registry(
    RESOLVER_GROUP, "resolver", ResolverBuilder, UnknownSchemeError
)
_balancers: _Registry[BalancerBuilder] = _Registry(
    BALANCER_GROUP, "balancer", BalancerBuilder, UnknownPolicyError
)


def register_resolver(builder: ResolverBuilder, *, scheme: str | None = None, replace: bool = False) -> None:
    """Register ``builder`` for ``scheme`` (default ``builder.scheme``).

    Raises :class:`~discovery.errors.PluginError` if the scheme is taken,
    unless ``replace`` is true. Thread-safe.
    """
    _resolvers.register((scheme or builder.scheme).lower(), builder, replace)


def register_balancer(builder: BalancerBuilder, *, name: str | None = None, replace: bool = False) -> None:
    """Register ``builder`` under policy ``name`` (default ``builder.name``). Thread-safe."""
    _balancers.register(name or builder.name, builder, replace)


def unregister_resolver(scheme: str) -> None:
    """Forget ``scheme`` (an entry point of that name is not reloaded)."""
    _resolvers.unregister(scheme.lower())


def unregister_balancer(name: str) -> None:
    """Forget policy ``name`` (an entry point of that name is not reloaded)."""
    _balancers.unregister(name)


def get_resolver(scheme: str) -> ResolverBuilder:
    """The builder for ``scheme``; UnknownSchemeError lists the known ones."""
    return _resolvers.get(scheme.lower())


def get_balancer(name: str) -> BalancerBuilder:
    """The builder for policy ``name``; UnknownPolicyError lists the known ones."""
    return _balancers.get(name)


def has_resolver(scheme: str) -> bool:
    """Whether ``scheme`` has a (loadable) resolver, without raising."""
    return scheme.lower() in _resolvers.names()


def has_balancer(name: str) -> bool:
    """Whether policy ``name`` has a (loadable) balancer, without raising."""
    return name in _balancers.names()


def balancer_names() -> set[str]:
    """Names of every registered or installed policy (not imported)."""
    return _balancers.names()


def registered_resolvers() -> Mapping[str, ResolverBuilder]:
    """A read-only snapshot of every loadable resolver builder, by scheme."""
    return _resolvers.view()


def registered_balancers() -> Mapping[str, BalancerBuilder]:
    """A read-only snapshot of every loadable balancer builder, by policy name."""
    return _balancers.view()
