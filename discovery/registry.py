"""Plugin registries for resolvers (by URI scheme) and balancers (by policy name).

Built-ins and third-party plugins arrive the same way: entry points in the
groups ``discovery.resolvers`` and ``discovery.balancers``. The list of entry
points is read on first use and each plugin is imported only when its name is
first asked for (or when the whole registry is listed).

What a name resolves to, in order:

1. a builder registered in code (:func:`register_resolver`,
   :func:`register_balancer`);
2. the first installed entry point of that name that loads. A broken one (its
   import fails, or it does not give a builder) is logged and skipped, so it
   never shadows a working one. When several distributions provide one name,
   the clash is logged once, naming every distribution and the one that wins
   (the first Python finds, in ``sys.path`` order);
3. a built-in fallback: scheme ``dns`` falls back to the core's system
   resolver (:mod:`discovery.resolvers.system`, the operating system's
   resolver with its hosts file), so ``localhost:50051`` works with the core
   alone. An installed DNS plugin wins over it.

When nothing provides a name, asking for it raises
:class:`~discovery.errors.UnknownSchemeError` /
:class:`~discovery.errors.UnknownPolicyError` listing the known names, or,
when a plugin of that name is installed but broken,
:class:`~discovery.errors.PluginError` naming the plugin and the module that
failed to import (never a raw ImportError).

Plugins load only from installed entry points, never from a dotted path in a
config file, so a config file cannot make the process import arbitrary code.
Every function here is thread-safe.
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
from .target import Target, parse_channel_target

__all__ = [
    "BALANCER_GROUP",
    "RESOLVER_GROUP",
    "balancer_names",
    "get_balancer",
    "get_resolver",
    "has_balancer",
    "has_resolver",
    "install_hint",
    "register_balancer",
    "register_resolver",
    "registered_balancers",
    "registered_resolvers",
    "reload_plugins",
    "resolve_target",
    "unregister_balancer",
    "unregister_resolver",
]

log = logging.getLogger(__name__)

RESOLVER_GROUP = "discovery.resolvers"
BALANCER_GROUP = "discovery.balancers"

# The resolver plugins this repository ships, by scheme: the folder to install
# from a checkout. Only paths in this repository, never distribution names on
# PyPI: none of them is published there, and a name on PyPI could be taken by
# anyone.
_SHIPPED_PLUGINS = {
    "dns": "plugins/dns",
    "consul": "plugins/consul",
    "kubernetes": "plugins/kubernetes",
    "k8s": "plugins/kubernetes",
}

# Built-in builders used for a name when no installed entry point of that name
# loads. They are part of the core (not plugins), written like entry-point
# values so one loader serves both.
_RESOLVER_FALLBACKS = {"dns": "discovery.resolvers.system:SystemResolverBuilder"}

B = TypeVar("B", ResolverBuilder, BalancerBuilder)


def install_hint(scheme: str) -> str | None:
    """What to run to get the resolver plugin for ``scheme`` this repository ships, or None."""
    path = _SHIPPED_PLUGINS.get(scheme.lower())
    if path is None:
        return None
    return f"pip install -e {path} (in a grpc-discovery checkout)"


def _describe(ep: EntryPoint) -> str:
    """``discovery-dns 0.1.0 (discovery_dns:DnsResolverBuilder)``: who provides an entry point."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return f"entry point {ep.value}"
    return f"{dist.name} {dist.version} ({ep.value})"


def _missing_module(exc: BaseException) -> str | None:
    """The module an ImportError (or one it was raised from) could not find."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ImportError) and cur.name:
            return cur.name
        cur = cur.__cause__ or cur.__context__
    return None


class _Registry(Generic[B]):
    def __init__(self, group: str, kind: str, base: type[Any], unknown: type[Exception],
                 fallbacks: Mapping[str, str] | None = None):
        self._group = group
        self._kind = kind
        self._base: type[Any] = base
        self._unknown = unknown
        self._fallbacks = dict(fallbacks or {})
        self._lock = threading.RLock()
        # Explicit registrations, kept across reload(); they win over everything.
        self._registered: dict[str, B] = {}
        # What a name resolved to from entry points or a fallback (cached, so
        # each plugin is imported and each clash logged once).
        self._loaded: dict[str, B] = {}
        # Names whose every installed entry point is broken and that have no
        # fallback: why, so asking again raises the same clear error.
        self._failed: dict[str, PluginError] = {}
        # Names whose cached builder is the built-in fallback, not a plugin.
        self._fallback_used: set[str] = set()
        self._candidates: dict[str, list[EntryPoint]] | None = None

    # -- entry points -------------------------------------------------------------

    def _eps(self) -> dict[str, list[EntryPoint]]:
        if self._candidates is None:
            found: dict[str, list[EntryPoint]] = {}
            for ep in entry_points(group=self._group):
                same = found.setdefault(ep.name, [])
                # One distribution seen twice on sys.path (or two pointing at the
                # same object) is not a clash.
                if all(other.value != ep.value for other in same):
                    same.append(ep)
            self._candidates = found
        return self._candidates

    def _instantiate(self, name: str, ep: EntryPoint) -> B:
        """Import ``ep`` and make its builder; every failure is a PluginError naming the plugin."""
        what = f"{self._kind} plugin {name!r} from {_describe(ep)}"
        try:
            obj = ep.load()
        except ImportError as exc:
            missing = _missing_module(exc)
            why = f"missing module {missing!r}: {exc}" if missing else str(exc)
            raise PluginError(f"{what} cannot be imported: {why}", plugin=name, missing_module=missing) from exc
        except Exception as exc:  # a plugin's import may raise anything; it must not break the others
            raise PluginError(f"{what} fails on import: {type(exc).__name__}: {exc}", plugin=name) from exc
        try:
            builder = obj() if isinstance(obj, type) else obj
        except Exception as exc:
            raise PluginError(f"{what} cannot be instantiated: {type(exc).__name__}: {exc}", plugin=name) from exc
        if not isinstance(builder, self._base):
            raise PluginError(f"{what} gave a {type(builder).__name__}, not a {self._base.__name__}", plugin=name)
        return builder  # type: ignore[no-any-return]

    def _load(self, name: str) -> B | None:
        """What the entry points (or the fallback) give for ``name``; logs broken plugins and clashes once."""
        if name in self._loaded:
            return self._loaded[name]
        if name in self._failed:
            return None
        candidates = self._eps().get(name, [])
        errors: list[PluginError] = []
        winner: tuple[EntryPoint, B] | None = None
        for ep in candidates:
            try:
                winner = (ep, self._instantiate(name, ep))
                break
            except PluginError as exc:
                errors.append(exc)
        fallback = self._fallbacks.get(name)
        builder: B | None = None
        if winner is not None:
            builder = winner[1]
            if len(candidates) > 1:
                # Two distributions for one name: say which ones and who won,
                # once, at the first use of the name.
                providers = ", ".join(_describe(ep) for ep in candidates)
                broken = "".join(f"; skipped, broken: {e}" for e in errors)
                log.warning(
                    "%s %r is provided by %d installed plugins: %s; using %s%s "
                    "(uninstall the others, or register_%s(..., replace=True) to choose)",
                    self._kind, name, len(candidates), providers, _describe(winner[0]), broken, self._kind,
                )
        else:
            failure: PluginError | None = None
            if len(errors) == 1:
                failure = errors[0]
            elif errors:
                failure = PluginError(
                    f"every installed {self._kind} plugin {name!r} is broken: " + "; ".join(map(str, errors)),
                    plugin=name, missing_module=errors[0].missing_module,
                )
                failure.__cause__ = errors[0]
            if fallback is not None:
                # A built-in failing to load is a bug in this package: let it raise.
                builder = self._instantiate(name, EntryPoint(name, fallback, self._group))
                self._fallback_used.add(name)
            if failure is not None:
                using = f"; using the built-in {fallback}" if fallback is not None else ""
                log.error("skipping a broken plugin: %s%s", failure, using)
                if builder is None:
                    self._failed[name] = failure
        if builder is not None:
            self._loaded[name] = builder
        return builder

    # -- queries ----------------------------------------------------------------------

    def get(self, name: str) -> B:
        with self._lock:
            builder = self._registered.get(name) or self._load(name)
            if builder is not None:
                return builder
            failed = self._failed.get(name)
            if failed is not None:
                # A fresh exception each time, so tracebacks do not pile up on one object.
                raise PluginError(str(failed), plugin=name, missing_module=failed.missing_module) from (
                    failed.__cause__ or failed
                )
            known = ", ".join(sorted(self.names())) or "none"
            hint = install_hint(name) if self._kind == "resolver" else None
            extra = f": its plugin ships with grpc-discovery, {hint}" if hint else ""
            raise self._unknown(f"unknown {self._kind} {name!r}{extra}; known: {known}")

    def has(self, name: str) -> bool:
        """Whether ``name`` gives a working builder (imports its plugin if need be; never raises)."""
        with self._lock:
            return name in self._registered or self._load(name) is not None

    def names(self) -> set[str]:
        with self._lock:
            return set(self._registered) | set(self._loaded) | set(self._fallbacks) | (
                set(self._eps()) - set(self._failed)
            )

    def view(self) -> Mapping[str, B]:
        with self._lock:
            out: dict[str, B] = {}
            for name in sorted(set(self._eps()) | set(self._fallbacks) | set(self._registered)):
                builder = self._registered.get(name) or self._load(name)
                if builder is not None:
                    out[name] = builder
            return MappingProxyType(out)

    # -- changes ----------------------------------------------------------------------

    def register(self, name: str, builder: B, replace: bool) -> None:
        if not isinstance(builder, self._base):
            raise PluginError(f"{builder!r} is not a {self._base.__name__}")
        if not name:
            raise PluginError(f"{self._kind} builder {builder!r} has no name")
        with self._lock:
            existing = self._registered.get(name)
            if existing is None and not replace:
                # Only a working installed plugin counts as taken; a built-in
                # fallback is there to be replaced.
                loaded = self._load(name)
                if loaded is not None and name not in self._fallback_used:
                    existing = loaded
            if existing is not None and existing is not builder and not replace:
                raise PluginError(
                    f"{self._kind} {name!r} is already registered ({type(existing).__name__}); "
                    "pass replace=True to override it"
                )
            self._registered[name] = builder

    def unregister(self, name: str) -> None:
        with self._lock:
            self._registered.pop(name, None)

    def reload(self) -> None:
        with self._lock:
            self._loaded.clear()
            self._failed.clear()
            self._fallback_used.clear()
            self._candidates = None


_resolvers: _Registry[ResolverBuilder] = _Registry(
    RESOLVER_GROUP, "resolver", ResolverBuilder, UnknownSchemeError, _RESOLVER_FALLBACKS
)
_balancers: _Registry[BalancerBuilder] = _Registry(
    BALANCER_GROUP, "balancer", BalancerBuilder, UnknownPolicyError
)


def register_resolver(builder: ResolverBuilder, *, scheme: str | None = None, replace: bool = False) -> None:
    """Register ``builder`` for ``scheme`` (default ``builder.scheme``); it wins over installed plugins.

    Raises :class:`~discovery.errors.PluginError` if the scheme is already
    registered or provided by a working installed plugin, unless ``replace`` is
    true (a built-in fallback, such as the system resolver for ``dns``, is
    replaced without it). Thread-safe; may import the installed plugin of
    that scheme to see whether it works.
    """
    _resolvers.register((scheme or builder.scheme).lower(), builder, replace)


def register_balancer(builder: BalancerBuilder, *, name: str | None = None, replace: bool = False) -> None:
    """Register ``builder`` under policy ``name`` (default ``builder.name``). Thread-safe."""
    _balancers.register(name or builder.name, builder, replace)


def unregister_resolver(scheme: str) -> None:
    """Undo :func:`register_resolver`: an installed plugin (or built-in) of that scheme applies again."""
    _resolvers.unregister(scheme.lower())


def unregister_balancer(name: str) -> None:
    """Undo :func:`register_balancer`: an installed plugin of that name applies again."""
    _balancers.unregister(name)


def reload_plugins() -> None:
    """Read the installed entry points again on next use (after installing a plugin at run time).

    Explicit registrations stay. Plugins already imported stay imported;
    channels already open keep the builders they were made with.
    """
    _resolvers.reload()
    _balancers.reload()


def resolve_target(target: str) -> Target:
    """Parse a channel target as gRPC does: without a known scheme it is ``dns:///`` + target.

    ``localhost:50051`` parses as scheme ``localhost``, which no resolver
    serves, and ``127.0.0.1:50051`` or ``[::1]:50051`` do not parse as URIs at
    all: gRPC gives both its default scheme, ``dns``, and so does this
    function. A target with ``://`` is taken as written. Raises TargetError.
    """
    return parse_channel_target(target, has_resolver)


def get_resolver(scheme: str) -> ResolverBuilder:
    """The builder for ``scheme``.

    Raises UnknownSchemeError listing the known schemes (and, for a plugin this
    repository ships, how to install it), or PluginError when the installed
    plugin is broken. May import the plugin on first use.
    """
    return _resolvers.get(scheme.lower())


def get_balancer(name: str) -> BalancerBuilder:
    """The builder for policy ``name``; UnknownPolicyError lists the known ones, PluginError a broken one."""
    return _balancers.get(name)


def has_resolver(scheme: str) -> bool:
    """Whether ``scheme`` has a working resolver: registered, an installed plugin that loads, or built in.

    Imports the plugin on first use (a broken one is logged, and the answer is
    False); never raises.
    """
    return _resolvers.has(scheme.lower())


def has_balancer(name: str) -> bool:
    """Whether policy ``name`` has a working balancer (imports the plugin on first use; never raises)."""
    return _balancers.has(name)


def balancer_names() -> set[str]:
    """Names of every registered or installed policy (not imported)."""
    return _balancers.names()


def registered_resolvers() -> Mapping[str, ResolverBuilder]:
    """A read-only snapshot of every loadable resolver builder, by scheme (imports every plugin)."""
    return _resolvers.view()


def registered_balancers() -> Mapping[str, BalancerBuilder]:
    """A read-only snapshot of every loadable balancer builder, by policy name (imports every plugin)."""
    return _balancers.view()
