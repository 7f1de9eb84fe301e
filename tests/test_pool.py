"""Connection pools: connections_per_backend grpc channels (HTTP/2 connections) per backend."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import grpc
import pytest

import discovery
from discovery import ChannelSettings, aio
from discovery.errors import ConfigError
from discovery.pool import PooledChannel
from discovery.testing import wait_for, wait_ready
from discovery.testing.servers import EchoStub, static_target

pytestmark = pytest.mark.integration


def test_settings_check_the_pool_size() -> None:
    assert ChannelSettings().connections_per_backend == 1
    assert dataclasses.replace(ChannelSettings(connections_per_backend=4), drain_grace=1.0).connections_per_backend == 4
    for bad in (0, 65, "2", True):
        with pytest.raises(ConfigError) as ei:
            ChannelSettings(connections_per_backend=bad)  # type: ignore[arg-type]
        assert ei.value.key_path == "connections_per_backend"


def test_config_file_key(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\nconnections_per_backend = 3\n'
                 '[services.b]\ntarget = "static:///127.0.0.1:1"\nconnections_per_backend = 0\n')
    with pytest.raises(ConfigError) as ei:
        discovery.channel_from_config("a", f)
    assert ei.value.key_path == "services.b.connections_per_backend"
    f.write_text('[services.a]\ntarget = "static:///127.0.0.1:1"\nconnections_per_backend = 3\n')
    with discovery.channel_from_config("a", f) as ch:
        assert ch._core.settings.connections_per_backend == 3


def test_rpcs_spread_over_the_connections_of_a_backend(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s]),
                                    settings=ChannelSettings(connections_per_backend=3)) as ch:
        wait_ready(ch, 1)
        pool = ch._core.manager.backends[0].channel
        assert isinstance(pool, PooledChannel)
        wait_for(lambda: len(pool._pool.ready) == 3, 10, message="3 READY connections")
        stub = EchoStub(ch)
        s.unary_gate.clear()
        replies: list[bytes] = []
        threads = [threading.Thread(target=lambda: replies.append(stub.Unary(b"", timeout=10))) for _ in range(6)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: s.active == 6, 10, message="6 RPCs on the server")
            assert pool.in_flight() == [2, 2, 2]  # the least-loaded connection each time
            (row,) = ch.backends()  # one row per address, in_flight summed
            assert row.in_flight == 6
        finally:
            s.unary_gate.set()
        for t in threads:
            t.join()
        assert replies == [s.name.encode()] * 6
        assert len(list(stub.ServerStream(b"2", timeout=10))) == 2
        assert pool.in_flight() == [0, 0, 0]
    assert len(s.peers) == 3  # three connections


def test_futures_spread_evenly_over_the_pool(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    with discovery.insecure_channel(static_target([s]),
                                    settings=ChannelSettings(connections_per_backend=2)) as ch:
        wait_ready(ch, 1)
        stub = EchoStub(ch)
        s.unary_gate.clear()
        held = [stub.Unary.future(b"", timeout=10) for _ in range(4)]
        try:
            wait_for(lambda: s.active == 4, 10)
            backend = ch._core.manager.backends[0]
            (twin,) = backend.aio_twins.values()
            assert sorted(twin.channel.in_flight()) == [2, 2]
        finally:
            s.unary_gate.set()
        for f in held:
            f.result(10)


def test_asyncio_channel_pools_too(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)

    async def main() -> None:
        async with aio.insecure_channel(static_target([s]),
                                        settings=ChannelSettings(connections_per_backend=3)) as ch:
            stub = EchoStub(ch)
            await stub.Unary(b"", timeout=10, wait_for_ready=True)
            s.unary_gate.clear()
            held = [asyncio.ensure_future(stub.Unary(b"", timeout=10)) for _ in range(6)]
            try:
                await asyncio.to_thread(wait_for, lambda: s.active == 6, 10)
                backend = ch._core.manager.backends[0]
                (twin,) = backend.aio_twins.values()
                assert sorted(twin.channel.in_flight()) == [2, 2, 2]
                assert ch.backends()[0].in_flight == 6
            finally:
                s.unary_gate.set()
            assert await asyncio.gather(*held) == [s.name.encode()] * 6

    asyncio.run(main())
    assert len(s.peers) == 3


def test_a_pool_is_ready_when_one_connection_is(start_backends) -> None:  # type: ignore[no-untyped-def]
    (s,) = start_backends(1)
    chans = [grpc.insecure_channel(s.addr, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(2)]
    pool = PooledChannel(chans)
    try:
        assert pool.read_state(False) is grpc.ChannelConnectivity.IDLE
        pool.read_state(True)
        wait_for(lambda: pool.read_state(False) is grpc.ChannelConnectivity.READY, 10)
        assert pool.unary_unary(f"/{'discovery.testing.Echo'}/Unary")(b"", timeout=10) == s.name.encode()
    finally:
        pool.close()
