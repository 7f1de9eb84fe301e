"""A conformance suite resolver plugin authors subclass in their own tests.

::

    from discovery.testing.conformance import ResolverConformance

    class TestMyResolver(ResolverConformance):
        def make_builder(self):
            return MyResolverBuilder()

        def target(self):
            return "my:///orders"          # must resolve to at least one address here

        def silent_target(self, address):   # optional: "127.0.0.1:PORT" never answers
            return f"my://{address}/orders"

The inherited tests check the contract every resolver must keep: the first
state arrives and is complete and hashable, ``resolve_now()`` never blocks,
``close()`` returns at once (right after ``build()``, and while a request to
a server that never answers is pending), no listener call comes after it and
no thread is left behind, bad targets and unknown options fail in
``build()`` before anything starts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from ..address import ResolverState
from ..errors import ConfigError
from ..resolver import Resolver, ResolverBuilder, ResolverOptions
from ..target import parse_target
from . import RecordingListener
from .servers import SilentServer

__all__ = ["ResolverConformance"]


class ResolverConformance:
    """Subclass with ``make_builder()`` and ``target()``; override the rest as needed."""

    #: Seconds to wait for the first state.
    first_state_timeout = 10.0
    #: Real seconds a resolver's threads may take to end after close(). A
    #: blocking client that cannot be interrupted ends at its own timeout.
    close_timeout = 5.0
    #: Real seconds close() and resolve_now() may take: "at once", with room for a loaded machine.
    prompt = 0.5

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

    def silent_target(self, address: str) -> str | None:
        """A target that makes the resolver ask ``address`` (``127.0.0.1:PORT``), or None.

        A :class:`~discovery.testing.servers.SilentServer` listens there on TCP
        and UDP: it takes every request and never answers. None (the default)
        skips the tests that need a pending request, for resolvers that do no I/O.
        """
        return None

    def silent_config(self) -> Mapping[str, Any]:
        """Resolver options for :meth:`silent_target` (for example a short client timeout)."""
        return self.config()

    # -- helpers ------------------------------------------------------------------

    def _build(self, target: str | None = None, config: Mapping[str, Any] | None = None,
               ) -> tuple[Resolver, RecordingListener]:
        listener = RecordingListener()
        t = parse_target(target or self.target())
        r = self.make_builder().build(t, listener, ResolverOptions(config=dict(config or self.config())))
        return r, listener

    def _close_promptly(self, r: Resolver) -> None:
        t0 = time.monotonic()
        r.close()
        took = time.monotonic() - t0
        assert took < self.prompt, f"close() took {took:.2f}s: it must return at once"

    def _wait_threads_end(self, before: set[int | None]) -> None:
        deadline = time.monotonic() + self.close_timeout
        pause = threading.Event()
        while True:
            extra = [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]
            if not extra or time.monotonic() >= deadline:
                break
            pause.wait(0.02)
        assert not extra, f"threads still running {self.close_timeout}s after close(): {[t.name for t in extra]}"

    def _silent(self) -> tuple[SilentServer, str]:
        server = SilentServer()
        target = self.silent_target(server.address)
        if target is None:
            server.stop()
            pytest.skip("silent_target() is None: this resolver sends no requests")
        return server, target

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
            assert time.monotonic() - t0 < self.prompt, "resolve_now() blocked"
        finally:
            r.close()

    def test_close_stops_listener_calls_and_threads(self) -> None:
        before = {t.ident for t in threading.enumerate()}
        r, listener = self._build()
        listener.wait_for_state(lambda s: bool(s.addresses), self.first_state_timeout)
        self._close_promptly(r)
        seen = (len(listener.states), len(listener.errors))
        r.resolve_now()
        self._wait_threads_end(before)
        assert (len(listener.states), len(listener.errors)) == seen, "listener called after close()"

    def test_close_right_after_build_is_prompt_and_final(self) -> None:
        before = {t.ident for t in threading.enumerate()}
        r, listener = self._build()
        self._close_promptly(r)  # the first lookup or watch is most likely still running
        seen = (len(listener.states), len(listener.errors))
        self._wait_threads_end(before)
        assert (len(listener.states), len(listener.errors)) == seen, "listener called after close()"

    def test_close_is_prompt_and_final_while_a_request_is_pending(self) -> None:
        server, target = self._silent()
        try:
            before = {t.ident for t in threading.enumerate()}
            r, listener = self._build(target, self.silent_config())
            assert server.received.wait(self.first_state_timeout), f"the resolver sent nothing to {server.address}"
            seen = (len(listener.states), len(listener.errors))
            self._close_promptly(r)
            r.resolve_now()
            self._wait_threads_end(before)
            assert (len(listener.states), len(listener.errors)) == seen, "listener called after close()"
        finally:
            server.stop()

    def test_resolve_now_never_blocks_while_a_request_is_pending(self) -> None:
        server, target = self._silent()
        try:
            r, _ = self._build(target, self.silent_config())
            try:
                assert server.received.wait(self.first_state_timeout), f"the resolver sent nothing to {server.address}"
                t0 = time.monotonic()
                for _ in range(100):
                    r.resolve_now()
                took = time.monotonic() - t0
                assert took < self.prompt, f"100 resolve_now() calls took {took:.2f}s while a request was pending"
            finally:
                r.close()
        finally:
            server.stop()

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
