"""Plugin registration: built-ins via entry points, explicit registration, real plugin distributions."""

from __future__ import annotations

import importlib
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import discovery
from discovery import registry
from discovery.errors import PluginError, UnknownPolicyError, UnknownSchemeError
from discovery.resolvers.static import StaticResolverBuilder


def test_builtins_come_from_entry_points() -> None:
    eps = {ep.name for ep in importlib.metadata.entry_points(group=registry.RESOLVER_GROUP)}
    assert {"static", "ipv4", "ipv6"} <= eps
    assert {"pick_first", "round_robin"} <= set(discovery.registered_balancers())
    assert isinstance(discovery.get_resolver("static"), StaticResolverBuilder)


def test_views_are_read_only() -> None:
    view = discovery.registered_resolvers()
    with pytest.raises(TypeError):
        view["x"] = StaticResolverBuilder()  # type: ignore[index]


def test_unknown_scheme_lists_known_ones_and_names_the_plugin_to_install() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        discovery.get_resolver("nosuchscheme")
    assert "static" in str(info.value) and "nosuchscheme" in str(info.value)
    if not registry.has_resolver("consul"):
        with pytest.raises(UnknownSchemeError, match="pip install discovery-consul"):
            discovery.get_resolver("consul")
    with pytest.raises(UnknownPolicyError, match="round_robin"):
        discovery.get_balancer("nosuchpolicy")


def test_register_clash_raises_unless_replace() -> None:
    class Other(StaticResolverBuilder):
        scheme = "static"

    with pytest.raises(PluginError, match="already registered"):
        discovery.register_resolver(Other())
    b = StaticResolverBuilder()
    discovery.register_resolver(b, scheme="static2")
    try:
        with pytest.raises(PluginError):
            discovery.register_resolver(StaticResolverBuilder(), scheme="static2")
        replacement = StaticResolverBuilder()
        discovery.register_resolver(replacement, scheme="static2", replace=True)
        assert discovery.get_resolver("static2") is replacement
    finally:
        discovery.unregister_resolver("static2")


def test_register_rejects_non_builders() -> None:
    with pytest.raises(PluginError, match="not a ResolverBuilder"):
        discovery.register_resolver(object(), scheme="x")  # type: ignore[arg-type]


PLUGIN = '''
from discovery import Address, ResolverBuilder, ResolverState
from discovery.balancers.round_robin import RoundRobinBuilder
from discovery.resolvers.static import StaticResolver


class FixedBuilder(ResolverBuilder):
    scheme = "throwaway"

    def build(self, target, listener, options):
        return StaticResolver(listener, ResolverState((Address("127.0.0.1", int(target.endpoint)),)))


class AliasRoundRobin(RoundRobinBuilder):
    name = "throwaway_rr"
'''

BROKEN = "raise RuntimeError('this plugin is broken on purpose')\n"
MISSING_DEP = "import module_that_is_not_installed_anywhere\n"


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build and pip-install three throwaway distributions into a private directory on sys.path."""
    root = tmp_path_factory.mktemp("plugins")
    site = root / "site"
    specs = {
        "throwaway_plugin": (PLUGIN, {"discovery.resolvers": 'throwaway = "throwaway_plugin:FixedBuilder"',
                                      "discovery.balancers": 'throwaway_rr = "throwaway_plugin:AliasRoundRobin"'}),
        "broken_plugin": (BROKEN, {"discovery.resolvers": 'brokenscheme = "broken_plugin:Builder"'}),
        "needs_dep_plugin": (MISSING_DEP, {"discovery.resolvers": 'needsdep = "needs_dep_plugin:Builder"'}),
    }
    for name, (code, groups) in specs.items():
        src = root / name
        src.mkdir()
        (src / f"{name}.py").write_text(code)
        eps = "\n".join(f'[project.entry-points."{g}"]\n{line}' for g, line in groups.items())
        (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"
            [project]
            name = "{name.replace('_', '-')}"
            version = "0.0.1"
            [tool.setuptools]
            py-modules = ["{name}"]
            """) + eps + "\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
             "--no-index", "--target", str(site), str(src)],
            check=True, capture_output=True,
        )
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    # The registries read entry points once; make them read them again.
    saved = (registry._resolvers._entry_points, registry._balancers._entry_points)
    registry._resolvers._entry_points = registry._balancers._entry_points = None
    yield site
    sys.path.remove(str(site))
    registry._resolvers._entry_points, registry._balancers._entry_points = saved
    for scheme in ("throwaway", "brokenscheme", "needsdep"):
        registry._resolvers._entries.pop(scheme, None)
        registry._resolvers._broken.pop(scheme, None)
    registry._balancers._entries.pop("throwaway_rr", None)


def test_third_party_plugin_is_found_and_used(installed_plugins: Path, start_backends) -> None:  # type: ignore[no-untyped-def]
    from discovery.testing.servers import EchoStub

    (server,) = start_backends(1)
    assert "throwaway" in discovery.registered_resolvers()
    with discovery.insecure_channel(
        f"throwaway:///{server.port}", service_config={"loadBalancingConfig": [{"throwaway_rr": {}}]}
    ) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()


def test_broken_plugin_is_logged_and_skipped(installed_plugins: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry._resolvers._broken.pop("brokenscheme", None)  # an earlier listing may have logged it already
    with caplog.at_level(logging.ERROR, logger="discovery.registry"):
        names = set(discovery.registered_resolvers())
    assert "static" in names and "brokenscheme" not in names
    assert any("brokenscheme" in r.getMessage() and "broken on purpose" in r.getMessage() for r in caplog.records)
    with pytest.raises(UnknownSchemeError, match="broken on purpose"):
        discovery.get_resolver("brokenscheme")


def test_missing_dependency_gives_import_error(installed_plugins: Path) -> None:
    with pytest.raises(ImportError, match="module_that_is_not_installed_anywhere"):
        discovery.get_resolver("needsdep")
