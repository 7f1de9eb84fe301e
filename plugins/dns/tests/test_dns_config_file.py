"""DNS options from a config file: applied to the channel, and checked before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from discovery_dns.testing import KnotServer

import discovery
from discovery.testing import wait_for


def test_config_file_resolver_table_reaches_the_dns_resolver(knot: KnotServer, tmp_path: Path) -> None:
    path = tmp_path / "discovery.toml"
    path.write_text(
        "[services.orders]\n"
        f'target = "dns://{knot.address}/a.test.internal:50051"\n'
        'resolver = { min_interval = "1s", max_interval = "60s", timeout = "2s", families = ["ipv4"] }\n'
    )
    with discovery.channel_from_config("orders", path) as ch:
        wait_for(lambda: len(ch.backends()) == 3, 10, message="three A records resolved")
        assert sorted(b.address for b in ch.backends()) == ["127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"]
        resolver = ch._core.resolver
        assert resolver is not None and resolver.config.min_interval == 1.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("table", "message"),
    [('{ min_interval = "soon" }', r"services\.orders\.resolver\.min_interval: "),
     ("{ families = [\"ipx\"] }", r"services\.orders\.resolver\.families: "),
     ("{ colour = 1 }", r"services\.orders\.resolver\.colour: ")],
)
def test_bad_dns_options_in_a_file_name_the_file_and_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "discovery.toml"
    path.write_text(f'[services.orders]\ntarget = "dns:///orders.test.internal:50051"\nresolver = {table}\n')
    with pytest.raises(discovery.ConfigError, match=message) as info:
        discovery.channel_from_config("orders", path)
    assert str(path) in str(info.value)
