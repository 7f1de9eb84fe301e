"""Plugin registration: built-ins via entry points, explicit registration, installed plugin distributions."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import discovery
from discovery import registry
from discovery.errors import DiscoveryError, PluginError, UnknownPolicyError, UnknownSchemeError
from discovery.resolvers.static import StaticResolverBuilder
from discovery.resolvers.system import SystemResolverBuilder

if TYPE_CHECKING:
    from conftest import PluginEnv


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



# Plugin sources the tests install as distributions (see PluginEnv in conftest.py).
WORKING = """
from discovery import Address, ResolverBuilder, ResolverState
from discovery.balancers.round_robin import RoundRobinBuilder
from discovery.resolvers.static import StaticResolver


class FixedBuilder(ResolverBuilder):
    scheme = "throwaway"

    def build(self, target, listener, options):
        return StaticResolver(listener, ResolverState((Address("127.0.0.1", int(target.endpoint)),)))


class AliasRoundRobin(RoundRobinBuilder):
    name = "throwaway_rr"
"""
BROKEN = "raise RuntimeError('this plugin is broken on purpose')\n"
MISSING_DEP = "import module_that_is_not_installed_anywhere\n"
NOT_A_BUILDER = "class Builder:\n    pass\n"


def clash_records(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "discovery.registry" and repr(name) in r.getMessage()]


def test_third_party_plugin_is_found_and_used(plugin_env: PluginEnv, start_backends) -> None:  # type: ignore[no-untyped-def]
    from discovery.testing.servers import EchoStub

    plugin_env.install("throwaway-plugin", modules={"throwaway_plugin": WORKING},
                       resolvers={"throwaway": "throwaway_plugin:FixedBuilder"},
                       balancers={"throwaway_rr": "throwaway_plugin:AliasRoundRobin"})
    (server,) = start_backends(1)
    assert "throwaway" in discovery.registered_resolvers()
    with discovery.insecure_channel(
        f"throwaway:///{server.port}", service_config={"loadBalancingConfig": [{"throwaway_rr": {}}]}
    ) as ch:
        assert EchoStub(ch).Unary(b"", timeout=10) == server.name.encode()


def test_broken_plugin_is_logged_once_and_skipped(plugin_env: PluginEnv, caplog: pytest.LogCaptureFixture) -> None:
    plugin_env.install("broken-plugin", modules={"broken_plugin": BROKEN},
                       resolvers={"brokenscheme": "broken_plugin:Builder"})
    with caplog.at_level(logging.ERROR, logger="discovery.registry"):
        names = set(discovery.registered_resolvers())
        for _ in range(3):
            with pytest.raises(PluginError, match="broken on purpose") as info:
                discovery.get_resolver("brokenscheme")
    assert "static" in names and "brokenscheme" not in names
    assert not registry.has_resolver("brokenscheme")
    (message,) = clash_records(caplog, "brokenscheme")
    assert "broken-plugin 1.0 (broken_plugin:Builder)" in message and "RuntimeError" in message
    assert info.value.plugin == "brokenscheme"


def test_missing_dependency_is_a_plugin_error_naming_plugin_and_module(plugin_env: PluginEnv) -> None:
    plugin_env.install("needs-dep", modules={"needs_dep_plugin": MISSING_DEP},
                       resolvers={"needsdep": "needs_dep_plugin:Builder"})
    with pytest.raises(PluginError) as info:
        discovery.get_resolver("needsdep")
    assert not isinstance(info.value, ImportError)
    assert isinstance(info.value, DiscoveryError)
    assert info.value.plugin == "needsdep"
    assert info.value.missing_module == "module_that_is_not_installed_anywhere"
    assert info.match(r"^resolver plugin 'needsdep' from needs-dep 1.0 \(needs_dep_plugin:Builder\) cannot be "
                      r"imported: missing module 'module_that_is_not_installed_anywhere': No module named")
    assert isinstance(info.value.__cause__, ImportError)  # the original stays visible


def test_channel_factory_reports_a_broken_plugin_as_plugin_error(plugin_env: PluginEnv) -> None:
    plugin_env.install("needs-dep", modules={"needs_dep_plugin": MISSING_DEP},
                       resolvers={"needsdep": "needs_dep_plugin:Builder"})
    with pytest.raises(PluginError, match="missing module 'module_that_is_not_installed_anywhere'"):
        discovery.insecure_channel("needsdep:///x:1")


@pytest.mark.parametrize("broken", [MISSING_DEP, BROKEN, NOT_A_BUILDER])
@pytest.mark.parametrize("broken_first", [True, False])
def test_a_broken_plugin_never_shadows_a_working_one(plugin_env: PluginEnv, caplog: pytest.LogCaptureFixture,
                                                     broken: str, broken_first: bool) -> None:
    dists = [("bad-plugin", "bad_plugin", broken), ("good-plugin", "good_plugin", WORKING)]
    if not broken_first:
        dists.reverse()
    for dist, module, source in dists:
        plugin_env.install(dist, modules={module: source}, resolvers={"twice": f"{module}:FixedBuilder"},
                           balancers={"twice_rr": f"{module}:AliasRoundRobin"})
    with caplog.at_level(logging.WARNING, logger="discovery.registry"):
        for _ in range(3):
            assert type(discovery.get_resolver("twice")).__name__ == "FixedBuilder"
            assert type(discovery.get_balancer("twice_rr")).__name__ == "AliasRoundRobin"
        assert "twice" in discovery.registered_resolvers()
    # The clash is logged once per name, naming both distributions and the winner.
    for name in ("twice", "twice_rr"):
        (message,) = clash_records(caplog, name)
        assert "bad-plugin 1.0" in message and "good-plugin 1.0" in message, message
        assert "using good-plugin 1.0" in message, message
        if broken_first:
            assert "skipped, broken" in message, message


def test_two_working_plugins_the_first_found_wins_and_the_clash_is_logged(
        plugin_env: PluginEnv, caplog: pytest.LogCaptureFixture) -> None:
    for dist in ("first-plugin", "second-plugin"):
        module = dist.replace("-", "_")
        plugin_env.install(dist, modules={module: WORKING}, resolvers={"twice": f"{module}:FixedBuilder"})
    with caplog.at_level(logging.WARNING, logger="discovery.registry"):
        builder = discovery.get_resolver("twice")
        discovery.get_resolver("twice")
    assert type(builder).__module__ == "first_plugin"  # found first on sys.path
    (message,) = clash_records(caplog, "twice")
    assert message.startswith("resolver 'twice' is provided by 2 installed plugins: "
                              "first-plugin 1.0 (first_plugin:FixedBuilder), "
                              "second-plugin 1.0 (second_plugin:FixedBuilder); "
                              "using first-plugin 1.0 (first_plugin:FixedBuilder)"), message


def test_every_broken_plugin_of_one_name_is_named_and_logged_once(plugin_env: PluginEnv,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    plugin_env.install("bad-one", modules={"bad_one": MISSING_DEP}, resolvers={"twice": "bad_one:B"})
    plugin_env.install("bad-two", modules={"bad_two": BROKEN}, resolvers={"twice": "bad_two:B"})
    with caplog.at_level(logging.ERROR, logger="discovery.registry"):
        for _ in range(2):
            with pytest.raises(PluginError, match="every installed resolver plugin 'twice' is broken") as info:
                discovery.get_resolver("twice")
    assert info.match("bad-one 1.0") and info.match("bad-two 1.0") and info.match("broken on purpose")
    assert info.value.missing_module == "module_that_is_not_installed_anywhere"
    (message,) = clash_records(caplog, "twice")
    assert "bad-one 1.0" in message and "bad-two 1.0" in message


def test_register_in_code_wins_and_unregister_restores_the_installed_plugin(plugin_env: PluginEnv) -> None:
    plugin_env.install("throwaway-plugin", modules={"throwaway_plugin": WORKING},
                       resolvers={"throwaway": "throwaway_plugin:FixedBuilder"})
    installed = discovery.get_resolver("throwaway")
    mine = StaticResolverBuilder()
    with pytest.raises(PluginError, match="already registered"):
        discovery.register_resolver(mine, scheme="throwaway")
    discovery.register_resolver(mine, scheme="throwaway", replace=True)
    assert discovery.get_resolver("throwaway") is mine
    discovery.unregister_resolver("throwaway")
    assert discovery.get_resolver("throwaway") is installed


def test_dns_falls_back_to_the_system_resolver_without_a_plugin(core_only: PluginEnv) -> None:
    assert isinstance(discovery.get_resolver("dns"), SystemResolverBuilder)
    assert registry.has_resolver("dns")
    assert isinstance(discovery.registered_resolvers()["dns"], SystemResolverBuilder)


def test_an_installed_dns_plugin_wins_over_the_system_resolver(core_only: PluginEnv) -> None:
    core_only.install("other-dns", modules={"other_dns": WORKING}, resolvers={"dns": "other_dns:FixedBuilder"})
    assert type(discovery.get_resolver("dns")).__name__ == "FixedBuilder"


def test_a_broken_dns_plugin_falls_back_to_the_system_resolver(core_only: PluginEnv,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    core_only.install("broken-dns", modules={"broken_dns": MISSING_DEP}, resolvers={"dns": "broken_dns:B"})
    with caplog.at_level(logging.ERROR, logger="discovery.registry"):
        assert isinstance(discovery.get_resolver("dns"), SystemResolverBuilder)
        discovery.get_resolver("dns")
    (message,) = clash_records(caplog, "dns")
    assert "broken-dns 1.0" in message and "module_that_is_not_installed_anywhere" in message
    assert "using the built-in discovery.resolvers.system:SystemResolverBuilder" in message


def test_registering_dns_replaces_the_built_in_fallback_without_replace(core_only: PluginEnv) -> None:
    mine = StaticResolverBuilder()
    discovery.register_resolver(mine, scheme="dns")
    try:
        assert discovery.get_resolver("dns") is mine
    finally:
        discovery.unregister_resolver("dns")
    assert isinstance(discovery.get_resolver("dns"), SystemResolverBuilder)


def test_unknown_shipped_schemes_say_how_to_install_them_from_this_repository(core_only: PluginEnv) -> None:
    for scheme, folder in (("consul", "plugins/consul"), ("kubernetes", "plugins/kubernetes"),
                           ("k8s", "plugins/kubernetes")):
        with pytest.raises(UnknownSchemeError) as info:
            discovery.get_resolver(scheme)
        assert info.match(f"unknown resolver '{scheme}': its plugin ships with grpc-discovery, "
                          f"pip install -e {folder} \\(in a grpc-discovery checkout\\); known: ")
        assert "discovery-" not in str(info.value)  # no distribution name that is not published


def test_known_plugins_are_only_folders_of_this_repository() -> None:
    root = Path(__file__).resolve().parent.parent
    assert set(registry._SHIPPED_PLUGINS) == {"dns", "consul", "kubernetes", "k8s"}
    for scheme, folder in registry._SHIPPED_PLUGINS.items():
        assert folder == f"plugins/{folder.rsplit('/', 1)[-1]}" and registry.install_hint(scheme) == (
            f"pip install -e {folder} (in a grpc-discovery checkout)")
    assert (root / "plugins" / "dns" / "pyproject.toml").is_file()


def test_reload_plugins_keeps_registrations(plugin_env: PluginEnv) -> None:
    mine = StaticResolverBuilder()
    discovery.register_resolver(mine, scheme="kept")
    try:
        registry.reload_plugins()
        assert discovery.get_resolver("kept") is mine
        assert isinstance(discovery.get_resolver("static"), StaticResolverBuilder)
    finally:
        discovery.unregister_resolver("kept")


def test_a_broken_balancer_is_skipped_like_an_unsupported_one_in_load_balancing_config(
        plugin_env: PluginEnv) -> None:
    plugin_env.install("bad-policy", modules={"bad_policy": MISSING_DEP}, balancers={"fancy": "bad_policy:B"})
    assert not registry.has_balancer("fancy")
    sc = discovery.parse_service_config({"loadBalancingConfig": [{"fancy": {}}, {"pick_first": {}}]})
    assert sc.policy == "pick_first"
