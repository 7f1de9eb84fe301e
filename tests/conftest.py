"""Shared fixtures: real backend servers on loopback and a manual resolver."""

from __future__ import annotations

import importlib
import importlib.metadata
import socket
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest
from callshapes import Clients

import discovery
from discovery import registry
from discovery.testing import ManualResolverBuilder
from discovery.testing.servers import BackendServer


@pytest.fixture
def start_backends() -> Iterator[Callable[..., list[BackendServer]]]:
    """``start_backends(n)`` starts n echo+health servers on 127.0.0.1; all stop at teardown."""
    started: list[BackendServer] = []

    def start(n: int, host: str = "127.0.0.1", port: int = 0) -> list[BackendServer]:
        out = [BackendServer(host, port, name=None).start() for _ in range(n)]
        started.extend(out)
        return out

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def manual() -> Iterator[ManualResolverBuilder]:
    """A manual resolver registered for the ``manual`` scheme during one test."""
    builder = ManualResolverBuilder("manual")
    discovery.register_resolver(builder, scheme="manual", replace=True)
    yield builder
    discovery.unregister_resolver("manual")


class PluginEnv:
    """The installed plugins as the registry sees them during one test.

    ``hide("dns")`` makes installed entry points of those names invisible (the
    DNS plugin "not installed"); ``install(...)`` adds a distribution with
    real metadata (a ``.dist-info`` folder with ``entry_points.txt``) and its
    modules in a folder of its own on ``sys.path``, found by
    ``importlib.metadata`` exactly as a pip-installed plugin is. Distributions
    are found in the order they were installed (their folders come first on
    ``sys.path`` in that order).
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.hidden: set[str] = set()
        self.modules: list[str] = []
        self._added: set[str] = set()
        self._dirs: list[str] = []
        self._mp = monkeypatch
        self._path = list(sys.path)
        real = importlib.metadata.entry_points

        def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
            return [ep for ep in real(group=group)
                    if ep.name not in self.hidden or (ep.dist is not None and ep.dist.name in self._added)]

        monkeypatch.setattr(registry, "entry_points", entry_points)
        registry.reload_plugins()

    def hide(self, *names: str) -> None:
        self.hidden.update(names)
        registry.reload_plugins()

    def install(self, dist: str, *, resolvers: Mapping[str, str] = MappingProxyType({}),
                balancers: Mapping[str, str] = MappingProxyType({}),
                modules: Mapping[str, str] = MappingProxyType({})) -> None:
        folder = self.root / dist
        info = folder / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        lines = []
        for group, eps in ((registry.RESOLVER_GROUP, resolvers), (registry.BALANCER_GROUP, balancers)):
            if eps:
                lines.append(f"[{group}]")
                lines.extend(f"{name} = {value}" for name, value in eps.items())
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in modules.items():
            (folder / f"{name}.py").write_text(textwrap.dedent(source))
            self.modules.append(name)
        self._added.add(dist)
        self._dirs.append(str(folder))
        self._mp.setattr(sys, "path", [*self._dirs, *self._path])
        importlib.invalidate_caches()
        registry.reload_plugins()


@pytest.fixture
def plugin_env(tmp_path: Path) -> Iterator[PluginEnv]:
    """A :class:`PluginEnv`; afterwards the registry reads the real entry points again."""
    with pytest.MonkeyPatch.context() as mp:
        env = PluginEnv(tmp_path / "site", mp)
        yield env
        for name in env.modules:
            sys.modules.pop(name, None)
    importlib.invalidate_caches()
    registry.reload_plugins()


@pytest.fixture
def core_only(plugin_env: PluginEnv) -> PluginEnv:
    """The core without any resolver plugin for ``dns``, consul or kubernetes (as after ``pip install .``)."""
    plugin_env.hide("dns", "consul", "kubernetes", "k8s")
    return plugin_env


# Real servers make a test an integration test, so that `python3 -m pytest -m "not integration"`
# runs the fast unit tests (fakes, injected clocks) alone. A test counts if it takes a fixture
# that starts servers, or if its module uses a real test server class directly.
_SERVER_FIXTURES = frozenset({"start_backends"})
_SERVER_NAMES = frozenset({"BackendServer", "KnotServer", "BackendProcess", "static_target"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        uses_servers = bool(_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
        uses_servers |= module is not None and bool(_SERVER_NAMES & set(vars(module)))
        if uses_servers:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def clients() -> Iterator[Clients]:
    """``clients(shape, target, **kw)``: a discovery channel (sync, or asyncio for ``aio_*`` shapes)
    that runs any call shape from the test's thread (see tests/callshapes.py); all closed at teardown."""
    made = Clients()
    yield made
    made.close()


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the whole test."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()
