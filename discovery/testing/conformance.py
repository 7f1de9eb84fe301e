"""A conformance suite resolver plugin authors subclass in their own tests.

::

    from discovery.testing.conformance import ResolverConformance

    class TestMyResolver(ResolverConformance):
        def make_builder(self):
            return MyResolverBuilder()

        def target(self):
            return "my:///orders"          # must resolve to at least one address here

The inherited tests check the contract every resolver must keep: the first
state arrives and is complete and hashable, ``resolve_now()`` never blocks,
``close()`` stops all listener calls and leaves no thread behind, bad
targets and unknown options fail in ``build()`` before anything starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from ..address import ResolverState
from ..errors import ConfigError
from ..resolver import Resolver, ResolverBuilder, ResolverOptions
from ..target import parse_target
from . import RecordingListener

__all__ = ["ResolverConformance"]


class ResolverConformance:
    """Subclass with ``make_builder()`` and ``target()``; override the rest as needed."""

    #: Seconds to wait for the first state.
    first_state_timeout = 10.0

    def make_builder(self) -> ResolverBuilder:
        raise NotImplementedError

    def target(self) -> str:
        raise NotImplementedError

    def config(self) -> Mapping[str, Any]:
        """Resolver options for :meth:`target`."""
        return {}

    def expected_addresses(self) -> set[str] | None:
        """``host:port`` strings the first state must hold exactly, or None for any non-empty set."""
        return None

    def bad_targets(self) -> list[str]:
        """Targets ``build()`` must reject with a ConfigError (TargetError is one)."""
        return []

    # -- helpers ------------------------------------------------------------------

    def _build(self, target: str | None = None, config: Mapping[str, Any] | None = None,
               ) -> tuple[Resolver, RecordingListener]:
        listener = RecordingListener()
        t = parse_target(target or self.target())
        r = self.make_builder().build(t, listener, ResolverOptions(config=dict(config or self.config())))
        return r, listener

    # -- the contract ---------------------------------------------------------------

    def test_first_state_is_complete_and_hashable(self) -> None:
        r, listener = self._build()
        try:
            state = listener.wait_for_state(lambda s: bool(s.addresses), self.first_state_timeout)
        finally:
            r.close()
        assert isinstance(state, ResolverState)
        hash(state)
        assert len({a.addr for a in state.addresses}) == len(state.addresses), "duplicate addresses"
        expected = self.expected_addresses()
        if expected is not None:
            assert {a.addr for a in state.addresses} == expected

    def test_resolve_now_never_blocks(self) -> None:
        r, listener = self._build()
        try:
            listener.wait_for_state(lambda s: bool(s.addresses), self.first_state_timeout)
            t0 = time.monotonic()
            for _ in range(100):
                r.resolve_now()
            assert time.monotonic() - t0 < 1.0, "resolve_now() blocked"
        finally:
            r.close()

    def test_close_stops_listener_calls_and_threads(self) -> None:
        before = {t.ident for t in threading.enumerate()}
        r, listener = self._build()
        listener.wait_for_state(lambda s: bool(s.addresses), self.first_state_timeout)
        r.close()
        seen = (len(listener.states), len(listener.errors))
        r.resolve_now()
        deadline = time.monotonic() + 5
        pause = threading.Event()
        while time.monotonic() < deadline:
            extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
            if not extra:
                break
            pause.wait(0.02)
        assert not extra, f"threads still running after close(): {[t.name for t in extra]}"
        assert (len(listener.states), len(listener.errors)) == seen, "listener called after close()"

    def test_bad_targets_fail_in_build(self) -> None:
        for target in self.bad_targets():
            try:
                r, _ = self._build(target)
            except ConfigError:
                continue
            r.close()
            raise AssertionError(f"build() accepted the bad target {target!r}")

    def test_unknown_option_is_a_config_error(self) -> None:
        config = dict(self.config())
        config["surely_not_an_option"] = 1
        try:
            r, _ = self._build(config=config)
        except ConfigError as exc:
            assert "surely_not_an_option" in str(exc)
            return
        r.close()
        raise AssertionError("build() accepted an unknown option")
