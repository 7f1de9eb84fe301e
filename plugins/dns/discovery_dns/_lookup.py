"""One resolution round: DNS queries turned into an address set, or a ResolverError.

A round either succeeds completely or fails: any timeout, SERVFAIL, REFUSED,
unreachable server or malformed answer among the queries it needs makes the
whole round a :class:`~discovery.errors.ResolverError`, so the channel keeps
its last good set instead of a partial one. NXDOMAIN and "no records" are
answers, not failures: they give an empty set with a note.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from discovery.address import Address
from discovery.errors import ResolverError

from ._hosts import HOSTS_TTL, HostsFile

__all__ = ["Lookup", "Querier", "resolve_host_set", "resolve_srv"]

_RDTYPE = {"ipv4": dns.rdatatype.A, "ipv6": dns.rdatatype.AAAA}
_TYPE_NAME = {"ipv4": "A", "ipv6": "AAAA"}


@dataclass(frozen=True, slots=True)
class Lookup:
    """The outcome of a round that got answers.

    ``ttl`` is the shortest TTL among the records used (None when nothing was
    found); ``note`` says why ``addresses`` is empty.
    """

    addresses: tuple[Address, ...]
    ttl: float | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: Literal["ok", "nxdomain", "nodata"]
    rrset: dns.rrset.RRset | None = None
    ttl: float | None = None


class Querier:
    """Answers names from the hosts file if it has one, else runs single DNS queries and classifies them.

    ``connect`` builds the dnspython resolver and names its server(s); it runs
    at the first DNS query, so a name the hosts file answers needs no DNS
    configuration at all. It raises ResolverError when it cannot.
    """

    def __init__(
        self,
        connect: Callable[[], tuple[dns.resolver.Resolver, str]],
        *,
        search: bool,
        hosts: HostsFile | None = None,
    ) -> None:
        self._connect = connect
        self._resolver: dns.resolver.Resolver | None = None
        self._search = search
        self.hosts = hosts
        self.server = ""
        self.queries = 0

    def from_hosts(self, name: str) -> tuple[str, ...]:
        """Addresses the hosts file lists for ``name``; () without a hosts file or entry."""
        return () if self.hosts is None else self.hosts.lookup(name)

    def query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        if self._resolver is None:
            self._resolver, self.server = self._connect()
        resolver = self._resolver
        self.queries += 1
        what = f"{name} {dns.rdatatype.to_text(rdtype)}"
        try:
            answer = resolver.resolve(name, rdtype, raise_on_no_answer=False, search=self._search)
            rrset = answer.rrset
            if rrset is None or len(rrset) == 0:
                return _Answer("nodata")
            return _Answer("ok", rrset, float(answer.chaining_result.minimum_ttl))
        except dns.resolver.NXDOMAIN:
            return _Answer("nxdomain")
        except dns.resolver.NoAnswer:
            return _Answer("nodata")
        except dns.resolver.LifetimeTimeout as exc:
            raise ResolverError(
                f"DNS query {what} to {self.server} timed out after {resolver.lifetime:g}s"
            ) from exc
        except dns.resolver.NoNameservers as exc:
            # SERVFAIL, REFUSED, unreachable server, malformed answer, CNAME loop...
            raise ResolverError(f"DNS query {what} to {self.server} failed: {_reasons(exc)}") from exc
        except dns.exception.DNSException as exc:
            raise ResolverError(f"DNS query {what} to {self.server} failed: {exc}") from exc
        except Exception as exc:  # anything else from the client library or the socket layer
            raise ResolverError(
                f"DNS query {what} to {self.server} failed unexpectedly: {type(exc).__name__}: {exc}"
            ) from exc


def _reasons(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    parts = []
    for err in errors:
        # (server, tcp, port, exception or rcode text, response); shape varies by version
        try:
            detail = err[3]
        except (TypeError, IndexError):
            detail = err
        text = str(detail) if detail is not None else ""
        if text:
            parts.append(text)
    return "; ".join(dict.fromkeys(parts)) or str(exc)


def _ip_key(text: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(text)
    return ip.version, int(ip)


def _name_text(name: str) -> str:
    return name.rstrip(".") or "."


def resolve_host(
    q: Querier,
    host: str,
    port: int,
    families: Iterable[str],
    *,
    weight: int = 1,
    priority: int = 0,
) -> tuple[list[Address], float | None, str]:
    """Addresses of ``host`` in ``families`` order (each family sorted), min TTL, why empty.

    A name the hosts file lists in any of ``families`` is answered from it
    alone, as the system resolver does; DNS is asked for the others.
    """
    listed = q.from_hosts(host)
    if listed:
        by_family = {"ipv4": 4, "ipv6": 6}
        found = [
            Address(ip, port, weight=weight, priority=priority)
            for family in families
            for ip in sorted((ip for ip in listed if ipaddress.ip_address(ip).version == by_family[family]),
                             key=_ip_key)
        ]
        if found:
            return found, HOSTS_TTL, ""
    out: list[Address] = []
    ttl: float | None = None
    missing: list[str] = []
    for family in families:
        ans = q.query(host, _RDTYPE[family])
        if ans.kind == "nxdomain":
            # The name does not exist, whatever the type: no need to ask for the other family.
            return [], None, f"NXDOMAIN for {_name_text(host)}"
        if ans.kind == "nodata" or ans.rrset is None:
            missing.append(_TYPE_NAME[family])
            continue
        ips = sorted({str(ipaddress.ip_address(rd.address)) for rd in ans.rrset}, key=_ip_key)
        out.extend(Address(ip, port, weight=weight, priority=priority) for ip in ips)
        ttl = ans.ttl if ttl is None or ans.ttl is None else min(ttl, ans.ttl)
    why = "" if out else f"no {'/'.join(missing)} records for {_name_text(host)}"
    return out, ttl, why


def _dedupe(addresses: Iterable[Address]) -> tuple[Address, ...]:
    seen: set[str] = set()
    out = []
    for a in addresses:
        if a.addr not in seen:
            seen.add(a.addr)
            out.append(a)
    return tuple(out)


def resolve_host_set(q: Querier, host: str, port: int, families: Iterable[str]) -> Lookup:
    """A/AAAA mode: every address of ``host`` on ``port``."""
    addresses, ttl, why = resolve_host(q, host, port, families)
    return Lookup(_dedupe(addresses), ttl, why)


def resolve_srv(q: Querier, name: str, families: Iterable[str], *, all_tiers: bool = False) -> Lookup:
    """SRV mode: the lowest priority tier with at least one resolvable target.

    Weights and priorities go to :attr:`Address.weight` / :attr:`Address.priority`.
    Higher tiers are used only when no target of a lower tier resolves to an
    address ("usable" means resolvable here; failover on backend health is the
    balancer's job). A transient failure in a tier is an error for the round,
    never a reason to fail over. With ``all_tiers`` every tier that resolves
    is published, each address with its priority, for a balancer such as
    ``priority_failover`` to fail over by health.
    """
    families = tuple(families)
    ans = q.query(name, dns.rdatatype.SRV)
    shown = _name_text(name)
    if ans.kind == "nxdomain":
        return Lookup((), None, f"NXDOMAIN for {shown}")
    if ans.kind == "nodata" or ans.rrset is None:
        return Lookup((), None, f"no SRV records for {shown}")
    records = []
    skipped: list[str] = []
    for rd in ans.rrset:
        target = rd.target.to_text()
        if rd.target == dns.name.root:
            skipped.append("target '.' (service not available)")
            continue
        if not 0 < rd.port < 65536:
            skipped.append(f"{_name_text(target)} port {rd.port}")
            continue
        # heaviest first so deduplication keeps the largest weight
        records.append((int(rd.priority), _name_text(target).lower(), int(rd.port), -int(rd.weight)))
    records.sort()
    if not records:
        return Lookup((), None, f"SRV records for {shown} name no usable target: {', '.join(skipped)}")
    hosts: dict[str, tuple[list[Address], float | None, str]] = {}
    reasons: list[str] = []
    every: list[Address] = []
    every_ttl: float | None = ans.ttl
    for priority, tier in itertools.groupby(records, key=lambda r: r[0]):
        found: list[Address] = []
        ttl: float | None = ans.ttl
        for _, target, port, neg_weight in tier:
            if target not in hosts:
                hosts[target] = resolve_host(q, target, 1, families)
            addrs, host_ttl, why = hosts[target]
            if not addrs:
                reasons.append(f"{target} ({why})")
                continue
            found.extend(Address(a.host, port, weight=-neg_weight, priority=priority) for a in addrs)
            if host_ttl is not None:
                ttl = host_ttl if ttl is None else min(ttl, host_ttl)
        if found and not all_tiers:
            return Lookup(_dedupe(found), ttl)
        if found:
            every.extend(found)
            every_ttl = ttl if every_ttl is None or (ttl is not None and ttl < every_ttl) else every_ttl
    if every:
        # An address in two tiers keeps the lower one (records are sorted by priority).
        return Lookup(_dedupe(every), every_ttl)
    return Lookup((), None, f"no SRV target of {shown} resolves: {'; '.join(reasons)}")
