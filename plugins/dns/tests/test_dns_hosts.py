"""The hosts file: honoured for dns:///name targets as the system resolver does, never with an explicit server."""

from __future__ import annotations

from pathlib import Path

import discovery_dns._hosts as hosts_module
import dns.resolver
import pytest
from discovery_dns import DnsResolverBuilder
from discovery_dns._hosts import HostsFile, parse_hosts
from discovery_dns.testing import KnotServer
from dnsplugin_support import Backends, MakeResolver, health_check

import discovery
from discovery.address import Address, ResolverState
from discovery.errors import ConfigError
from discovery.testing import FakeClock

HOSTS = """\
# a comment line
127.0.0.1   localhost
::1         localhost ip6-localhost ip6-loopback
127.0.0.9   A.Test.Internal.   alias-a   # a name the zone also has, with other addresses
127.0.0.21  dead.test.internal
127.0.0.30  v4only.test.internal dual.test.internal
not-an-ip   broken.test.internal
127.0.0.1   localhost
"""


def hostports(state: ResolverState) -> list[str]:
    return [a.addr for a in state.addresses]


@pytest.fixture
def hosts_file(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    return path


@pytest.fixture
def system_dns(knot: KnotServer) -> DnsResolverBuilder:
    """A builder whose 'system DNS configuration' is the loopback Knot server (never the machine's)."""

    def local() -> dns.resolver.Resolver:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = ["127.0.0.1"]
        res.port = knot.port
        return res

    return DnsResolverBuilder(resolver_factory=local)


# -- the file itself -------------------------------------------------------------------------


def test_parse_hosts_reads_names_aliases_and_comments() -> None:
    table = parse_hosts(HOSTS)
    assert table["localhost"] == ("127.0.0.1", "::1")  # both lines, file order, the repeat dropped
    assert table["ip6-loopback"] == ("::1",)
    assert table["a.test.internal"] == ("127.0.0.9",)  # lower case, no trailing dot
    assert table["alias-a"] == ("127.0.0.9",)
    assert "broken.test.internal" not in table and "a" not in table and "comment" not in table
    assert "name" not in table  # nothing from a comment


def test_hosts_file_is_re_read_when_it_changes_and_missing_means_empty(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    hosts = HostsFile(str(path))
    assert hosts.lookup("localhost") == ()
    path.write_text("127.0.0.1 localhost\n")
    assert hosts.lookup("LOCALHOST.") == ("127.0.0.1",)
    path.write_text("127.0.0.1 localhost\n127.0.0.2 localhost\n")
    assert hosts.lookup("localhost") == ("127.0.0.1", "127.0.0.2")
    path.unlink()
    assert hosts.lookup("localhost") == ()


# -- dns:///name: the hosts file first ----------------------------------------------------------


def test_localhost_is_answered_from_the_hosts_file_without_a_query(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver("dns:///localhost:50051", builder=system_dns, hosts_file=str(hosts_file))
    assert hostports(listener.wait_for_state()) == ["127.0.0.1:50051", "[::1]:50051"]
    assert r.queries == 0 and listener.errors == []
    _, l4 = make_resolver("dns:///localhost:50051", builder=system_dns, hosts_file=str(hosts_file),
                          families=["ipv4"])
    assert hostports(l4.wait_for_state()) == ["127.0.0.1:50051"]


def test_a_listed_name_wins_over_dns_and_other_names_go_to_dns(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver
) -> None:
    r, listener = make_resolver("dns:///a.test.internal:50051", builder=system_dns, hosts_file=str(hosts_file))
    assert hostports(listener.wait_for_state()) == ["127.0.0.9:50051"]  # the zone has .2, .3, .4
    assert r.queries == 0
    r2, l2 = make_resolver("dns:///b1.test.internal:50051", builder=system_dns, hosts_file=str(hosts_file))
    assert hostports(l2.wait_for_state()) == ["127.0.0.6:50051"]  # not listed: from Knot
    assert r2.queries > 0


def test_a_family_the_file_does_not_list_goes_to_dns(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver
) -> None:
    # The file lists dual.test.internal with an IPv4 address only.
    _, l4 = make_resolver("dns:///dual.test.internal:1", builder=system_dns, hosts_file=str(hosts_file),
                          families=["ipv4"])
    assert hostports(l4.wait_for_state()) == ["127.0.0.30:1"]
    _, l6 = make_resolver("dns:///dual.test.internal:1", builder=system_dns, hosts_file=str(hosts_file),
                          families=["ipv6"])
    assert hostports(l6.wait_for_state()) == ["[::1]:1", "[::ffff:7f00:5]:1"]  # from Knot


def test_listed_names_need_no_dns_configuration(hosts_file: Path, make_resolver: MakeResolver) -> None:
    def no_resolv_conf() -> dns.resolver.Resolver:
        raise dns.resolver.NoResolverConfiguration("no /etc/resolv.conf")

    builder = DnsResolverBuilder(resolver_factory=no_resolv_conf)
    _, listener = make_resolver("dns:///localhost:50051", builder=builder, hosts_file=str(hosts_file))
    assert hostports(listener.wait_for_state()) == ["127.0.0.1:50051", "[::1]:50051"]
    assert listener.errors == []
    _, other = make_resolver("dns:///b1.test.internal:50051", builder=builder, hosts_file=str(hosts_file))
    other.wait_for_count(errors=1)
    assert "cannot read the system DNS configuration" in str(other.errors[0])


def test_srv_targets_are_looked_up_in_the_hosts_file(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver
) -> None:
    # Tier 0's target "dead" has no address in the zone; the file gives it one, so tier 0 is used.
    _, listener = make_resolver("dns:///_grpc._tcp.svc.test.internal", builder=system_dns,
                                hosts_file=str(hosts_file))
    assert listener.wait_for_state().addresses == (Address("127.0.0.21", 50051, weight=10, priority=0),)


def test_a_change_to_the_file_is_seen_on_the_next_lookup(
    system_dns: DnsResolverBuilder, hosts_file: Path, clock: FakeClock, make_resolver: MakeResolver
) -> None:
    _, listener = make_resolver("dns:///localhost:50051", builder=system_dns, hosts_file=str(hosts_file),
                                families=["ipv4"])
    listener.wait_for_state()
    # An answer from the file has no TTL: it is looked at again after 30 s.
    assert clock.wait_for_blocked() == pytest.approx([30.0])
    hosts_file.write_text("127.0.0.1 localhost\n127.0.0.2 localhost\n")
    clock.advance(30.0)
    state = listener.wait_for_state(lambda s: len(s.addresses) == 2)
    assert hostports(state) == ["127.0.0.1:50051", "127.0.0.2:50051"]


def test_hosts_file_false_turns_the_file_off(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver
) -> None:
    _, listener = make_resolver("dns:///a.test.internal:50051", builder=system_dns, hosts_file=False)
    assert hostports(listener.wait_for_state()) == ["127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"]


def test_the_system_hosts_file_is_the_default(
    system_dns: DnsResolverBuilder, hosts_file: Path, make_resolver: MakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hosts_module, "DEFAULT_HOSTS_FILE", str(hosts_file))
    r, listener = make_resolver("dns:///alias-a:7", builder=system_dns)
    assert hostports(listener.wait_for_state()) == ["127.0.0.9:7"]
    assert r.queries == 0


# -- an explicit server: that server only ----------------------------------------------------------


def test_an_explicit_authority_never_reads_the_hosts_file(
    knot: KnotServer, hosts_file: Path, make_resolver: MakeResolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hosts_module, "DEFAULT_HOSTS_FILE", str(hosts_file))
    r, listener = make_resolver(f"dns://{knot.address}/a.test.internal:50051")
    assert hostports(listener.wait_for_state()) == ["127.0.0.2:50051", "127.0.0.3:50051", "127.0.0.4:50051"]
    assert r.queries > 0
    # localhost is not Knot's to answer (REFUSED): an error, never 127.0.0.1 from the file.
    _, l2 = make_resolver(f"dns://{knot.address}/localhost:50051")
    l2.wait_for_count(errors=1)
    assert "REFUSED" in str(l2.errors[0]) and l2.states == []
    # The server option is an explicit server too.
    _, l3 = make_resolver("dns:///a.test.internal:50051", server=knot.address)
    assert len(l3.wait_for_state().addresses) == 3


@pytest.mark.parametrize(
    ("target", "config", "match"),
    [
        ("dns://127.0.0.1:53/localhost:1", {"hosts_file": "HOSTS"}, "applies only to dns:///name targets"),
        ("dns:///localhost:1", {"hosts_file": "HOSTS", "server": "127.0.0.1"}, "not consulted when a DNS server"),
        ("dns:///localhost:1", {"hosts_file": "/nonexistent/hosts"}, "no such file"),
        ("dns:///localhost:1", {"hosts_file": ""}, "expected the path of a hosts file"),
        ("dns:///localhost:1", {"hosts_file": True}, "expected the path of a hosts file"),
        ("dns:///localhost:1", {"hosts_file": 5}, "expected the path of a hosts file"),
    ],
)
def test_bad_hosts_file_options_are_config_errors(
    hosts_file: Path, make_resolver: MakeResolver, target: str, config: dict[str, object], match: str
) -> None:
    config = {k: str(hosts_file) if v == "HOSTS" else v for k, v in config.items()}
    with pytest.raises(ConfigError, match=match) as info:
        make_resolver(target, **config)
    assert info.value.key_path == "hosts_file"


# -- through the channel ---------------------------------------------------------------------------


def test_dns_localhost_target_works_through_the_channel(hosts_file: Path) -> None:
    with Backends(["127.0.0.1"]) as backends:
        ch = discovery.insecure_channel(f"dns:///localhost:{backends.port}",
                                        resolver_config={"hosts_file": str(hosts_file), "families": ["ipv4"]})
        try:
            assert health_check(ch, timeout=5, wait_for_ready=True).status == 1  # SERVING
            assert [b.address for b in ch.backends()] == [f"127.0.0.1:{backends.port}"]
        finally:
            ch.close()


def _system_hosts_lists_localhost() -> bool:
    try:
        return "127.0.0.1" in HostsFile(hosts_module.DEFAULT_HOSTS_FILE).lookup("localhost")
    except OSError:
        return False


@pytest.mark.skipif(not _system_hosts_lists_localhost(), reason="the system hosts file does not list localhost")
def test_localhost_with_the_system_hosts_file() -> None:
    # The machine's own /etc/hosts, as a user would have it: no DNS query is needed (or sent).
    with Backends(["127.0.0.1"]) as backends:
        ch = discovery.insecure_channel(f"dns:///localhost:{backends.port}", resolver_config={"families": ["ipv4"]})
        try:
            assert health_check(ch, timeout=5, wait_for_ready=True).status == 1
            assert [b.address for b in ch.backends()] == [f"127.0.0.1:{backends.port}"]
        finally:
            ch.close()
