"""The ``consul:`` resolver: one blocking-query loop per channel on the core's watch helper.

Consul's documented rules for blocking queries, each one here:

- ``/v1/health/service/:name?index=I&wait=W``: the agent answers when the
  service's index passes ``I`` or after ``W`` plus up to ``W/16`` of jitter;
  the read timeout exceeds that (see :mod:`discovery_consul._http`).
- An answer is no proof of change: an identical address set publishes nothing.
- An index lower than the last one resets it to 0; an index below 1 is used
  as 1 (0 would not block); after any error the index is dropped, so a
  restarted agent (whose index starts low again) answers at once.
- The loop is rate-limited by a token bucket, so a churning index cannot make
  the client hammer the agent.
- Errors keep the last good set and are retried with jittered, capped backoff
  (the helper's), and reported to the channel; a 403 says the ACL token was
  refused, never what it is.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import consul
import requests

from discovery.address import Address, Attributes, ResolverState
from discovery.clock import SYSTEM_CLOCK, Backoff, Clock
from discovery.errors import ResolverError
from discovery.resolver import ResolverBuilder, ResolverListener, ResolverOptions, WatchContext, WatchResolver
from discovery.target import Target

from ._config import ConsulConfig, ConsulTarget, parse_config, parse_target
from ._http import InterruptibleTransport

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_RATE",
    "ConsulResolver",
    "ConsulResolverBuilder",
    "TokenBucket",
    "entries_to_state",
    "next_index",
]

log = logging.getLogger("discovery_consul")

#: Queries per second the loop may make in the long run, and how many it may make at once.
DEFAULT_RATE = 1.0
DEFAULT_BURST = 5

_TOKEN_HEADER = "X-Consul-Token"
_REDACTED = "<redacted>"


class TokenBucket:
    """A token bucket on an injected clock: ``burst`` queries at once, then ``rate`` per second.

    :meth:`delay` takes a token and returns 0, or returns how long to wait
    for one. Not thread-safe: one watch loop owns one.
    """

    def __init__(self, rate: float, burst: int, clock: Clock = SYSTEM_CLOCK) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a positive number of queries per second, got {rate!r}")
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"burst must be a positive integer, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock.monotonic()

    def delay(self) -> float:
        """0 after taking a token, else the seconds until one is there (nothing taken)."""
        now = self._clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


def next_index(previous: int, returned: int) -> int:
    """The index for the next blocking query, by Consul's documented rules.

    An index that went backwards (a restored snapshot, a restarted agent)
    resets to 0, so the next query answers at once with the current state;
    an index below 1 is used as 1, because index 0 would not block and the
    loop would spin.
    """
    if returned < previous:
        return 0
    return max(returned, 1)


def _go_duration(seconds: float) -> str:
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def _status(checks: Sequence[Mapping[str, Any]]) -> str:
    """An instance's aggregate health: the worst of its node and service checks."""
    statuses = {c.get("Status") for c in checks}
    if statuses - {"passing", "warning"}:
        return "critical"  # critical, maintenance or anything unknown
    return "warning" if "warning" in statuses else "passing"


@dataclass(frozen=True, slots=True)
class _Instance:
    address: Address
    status: str


def _str_dict(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f"{what} is not an object of strings")
    return dict(value)


def _weight(weights: Any, key: str) -> int:
    if weights is None:
        return 1
    if not isinstance(weights, Mapping):
        raise ValueError("Service.Weights is not an object")
    value = weights.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"Service.Weights.{key} is not a non-negative integer: {value!r}")
    return value


def _instance(entry: Any, default_dc: str) -> _Instance | None:
    """One health entry as an address, or None for an instance without a usable port.

    Raises ValueError for a malformed entry (the whole answer is then an error).
    """
    if not isinstance(entry, Mapping):
        raise ValueError("an entry is not an object")
    service, node, checks = entry.get("Service"), entry.get("Node"), entry.get("Checks") or []
    if not isinstance(service, Mapping) or not isinstance(node, Mapping):
        raise ValueError("an entry lacks its Service or Node object")
    if not isinstance(checks, list) or not all(isinstance(c, Mapping) for c in checks):
        raise ValueError("an entry's Checks is not a list of objects")
    port = service.get("Port")
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"Service.Port is not an integer: {port!r}")
    if not 0 < port < 65536:
        return None  # Consul allows services without a port; there is nothing to dial
    # An empty Service.Address means "the node's address", as Consul documents.
    host = service.get("Address") or node.get("Address")
    if not isinstance(host, str) or not host.strip():
        raise ValueError("neither Service.Address nor Node.Address is set")
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # an IPv6 literal registered in brackets
    status = _status(checks)
    weights = service.get("Weights")
    weight = _weight(weights, "Passing" if status == "passing" else "Warning")
    tags = service.get("Tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ValueError("Service.Tags is not a list of strings")
    meta = _str_dict(service.get("Meta"), "Service.Meta")
    node_meta = _str_dict(node.get("Meta"), "Node.Meta")
    locality = service.get("Locality")
    zone = ""
    if isinstance(locality, Mapping) and isinstance(locality.get("Zone"), str):
        zone = locality["Zone"]
    zone = zone or meta.get("zone", "") or node_meta.get("zone", "")
    datacenter = node.get("Datacenter") or default_dc
    attributes = Attributes({
        "tags": tuple(tags),
        "meta": Attributes(meta),
        "node": str(node.get("Node", "")),
        "node_meta": Attributes(node_meta),
        "datacenter": str(datacenter),
        "service_id": str(service.get("ID", "")),
    })
    return _Instance(Address(host, port, weight=weight, zone=zone, attributes=attributes), status)


def entries_to_state(entries: Any, target: ConsulTarget, config: ConsulConfig, *,
                     filtered_by_acl: bool = False) -> ResolverState:
    """A ``/v1/health/service`` answer as a complete address set.

    Keeps the agent's order (``near`` sorts by round-trip time), drops
    duplicate ``host:port`` pairs (the first wins), and applies the health
    policy: ``passing`` keeps instances whose every check passes, falling
    back to warning instances when none pass if ``fallback_to_warning``;
    ``passing = false`` keeps every instance. Raises ValueError for a
    malformed answer, so the last good set stays.
    """
    if not isinstance(entries, list):
        raise ValueError(f"expected a JSON list, got {type(entries).__name__}")
    instances: list[_Instance] = []
    portless = 0
    for entry in entries:
        inst = _instance(entry, target.dc)
        if inst is None:
            portless += 1
        else:
            instances.append(inst)
    note = ""
    if config.passing:
        chosen = [i for i in instances if i.status == "passing"]
        if not chosen and config.fallback_to_warning:
            chosen = [i for i in instances if i.status == "warning"]
            if chosen:
                note = f"no passing instance of {target.service!r}: using {len(chosen)} with warnings"
    else:
        chosen = instances
    seen: set[str] = set()
    addresses: list[Address] = []
    for inst in chosen:
        if inst.address.addr not in seen:
            seen.add(inst.address.addr)
            addresses.append(inst.address)
    if not addresses:
        where = f"service {target.service!r}" + (f" with tags {', '.join(target.tags)}" if target.tags else "")
        where += f" in datacenter {target.dc}" if target.dc else ""
        which = "passing " if config.passing and not config.fallback_to_warning else (
            "passing or warning " if config.passing else "")
        note = f"consul at {target.agent} has no {which}instance of {where}"
        if portless:
            note += f" ({portless} registered without a port)"
        if filtered_by_acl:
            note += (f"; the agent filtered results by ACL: the token ({config.token_source or 'anonymous'}) "
                     f"may lack service:read on {target.service!r}")
    return ResolverState(tuple(addresses), note=note)


def _scrub(exc: BaseException) -> None:
    """Remove the token from the request a ``requests`` exception carries (it reaches ``__cause__``)."""
    for holder in (getattr(exc, "request", None), getattr(getattr(exc, "response", None), "request", None)):
        headers = getattr(holder, "headers", None)
        if headers is not None and _TOKEN_HEADER in headers:
            headers[_TOKEN_HEADER] = _REDACTED


def _why(exc: requests.RequestException) -> str:
    """The root cause of a ``requests`` failure in a few words (urllib3 nests it in MaxRetryError)."""
    if isinstance(exc, requests.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.ReadTimeout):
        return "no answer within the read timeout"
    inner: Any = exc.args[0] if exc.args else exc
    reason = getattr(inner, "reason", None) or inner
    args: tuple[Any, ...] = tuple(getattr(reason, "args", ()))
    if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], BaseException):
        # urllib3's ProtocolError("Connection aborted.", RemoteDisconnected(...))
        text = f"{args[0].rstrip('.').lower()}: {args[1] or type(args[1]).__name__}"
    else:
        text = str(reason)
    # "_Conn(host='127.0.0.1', port=8500): Failed to establish ..." -> the useful half.
    if "): " in text:
        text = text.split("): ", 1)[1]
    return text or type(exc).__name__


class ConsulResolver(WatchResolver):
    """Follows one Consul service with blocking queries, on one daemon thread (the core's watch helper).

    ``rate`` and ``burst`` size the token bucket that limits the query rate;
    ``backoff`` the retry delays after an error (default 1 s -> 30 s, x1.6,
    jitter 0.2). :meth:`close` returns at once and cuts a pending long poll.
    The constructor starts nothing; :meth:`start` does.
    """

    def __init__(self, target: ConsulTarget, config: ConsulConfig, listener: ResolverListener,
                 clock: Clock = SYSTEM_CLOCK, *, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST,
                 backoff: Backoff | None = None) -> None:
        self._target = target
        self._config = config
        self._index = 0
        self._bucket = TokenBucket(rate, burst, clock)
        self._transport = InterruptibleTransport()
        host = f"[{target.host}]" if ":" in target.host else target.host
        client = consul.Consul(host=host, port=target.port, scheme=target.scheme, verify=config.verify,
                               cert=config.cert)
        # py-consul copies $CONSUL_HTTP_TOKEN onto the client, overriding an explicit token; this
        # resolver sends the token it settled on itself, in the header only.
        client.token = None
        client.http.session.mount("http://", self._transport)
        client.http.session.mount("https://", self._transport)
        self._client = client
        self._headers = {_TOKEN_HEADER: config.token} if config.token else {}
        self._path = "/v1/health/service/" + target.service
        if config.verify is False:
            log.warning("consul: TLS certificate verification of %s is off (CONSUL_HTTP_SSL_VERIFY=false)",
                        target.agent)
        super().__init__(listener, self._watch, name="consul", clock=clock, backoff=backoff)

    def __repr__(self) -> str:
        t = self._target
        return (f"<ConsulResolver {t.service!r} at {t.scheme}://{t.agent} "
                f"{'closed' if self.closed else 'open'}>")

    @property
    def target(self) -> ConsulTarget:
        return self._target

    @property
    def index(self) -> int:
        """The index the next blocking query will send (0: a query that answers at once)."""
        return self._index

    # -- one query -------------------------------------------------------------------------

    def _params(self, index: int) -> list[tuple[str, str]]:
        t, c = self._target, self._config
        params: list[tuple[str, str]] = []
        if index > 0:
            params += [("index", str(index)), ("wait", _go_duration(c.wait))]
        if c.passing and not c.fallback_to_warning:
            params.append(("passing", "1"))  # let the agent filter; the state still checks every instance
        params += [("tag", tag) for tag in t.tags]
        if t.dc:
            params.append(("dc", t.dc))
        if t.near:
            params.append(("near", t.near))
        if t.consistency:
            params.append((t.consistency, ""))
        return params

    def _answer(self, response: Any) -> tuple[int, Any, bool]:
        """py-consul's callback: (index, entries, filtered by ACL) from a raw answer, or ResolverError."""
        t = self._target
        code, headers, body = response.code, response.headers, response.body
        if code == 403:
            # Say which token and where it came from, never what it is.
            who = (f"refused the ACL token from {self._config.token_source}" if self._config.token
                   else "got no ACL token")
            raise ResolverError(
                f"consul at {t.agent} {who} for service {t.service!r} (403 {str(body).strip()[:200]}); "
                "a token with service:read on it is needed (resolver_config token or token_file, "
                "or CONSUL_HTTP_TOKEN)")
        if code != 200:
            raise ResolverError(f"consul at {t.agent} answered {code} for service {t.service!r}: "
                                f"{str(body).strip()[:300]}")
        raw_index = headers.get("X-Consul-Index")
        try:
            index = int(raw_index)
            if index < 0:
                raise ValueError(raw_index)
        except (TypeError, ValueError):
            raise ResolverError(f"consul at {t.agent} answered without a valid X-Consul-Index "
                                f"({raw_index!r}) for service {t.service!r}") from None
        try:
            entries = json.loads(body)
        except ValueError as exc:
            raise ResolverError(f"consul at {t.agent} answered invalid JSON for service {t.service!r}: {exc}") \
                from exc
        filtered = str(headers.get("X-Consul-Results-Filtered-By-ACLs", "")).lower() == "true"
        return index, entries, filtered

    def _query(self, index: int) -> tuple[int, ResolverState]:
        t = self._target
        log.debug("consul: GET %s at %s (index %d)", self._path, t.agent, index)
        try:
            new_index, entries, filtered = self._client.http.get(
                self._answer, self._path, params=self._params(index), headers=dict(self._headers))
        except requests.RequestException as exc:
            _scrub(exc)
            raise ResolverError(f"consul at {t.agent} ({t.address_source}) unreachable for service "
                                f"{t.service!r}: {_why(exc)}") from exc
        try:
            state = entries_to_state(entries, t, self._config, filtered_by_acl=filtered)
        except ValueError as exc:
            raise ResolverError(f"consul at {t.agent} answered a malformed entry for service "
                                f"{t.service!r}: {exc}") from exc
        log.debug("consul: %r index %d -> %d, %d addresses", t.service, index, new_index, len(state.addresses))
        return new_index, state

    # -- the loop ----------------------------------------------------------------------------

    def _watch(self, ctx: WatchContext) -> None:
        unregister = ctx.on_interrupt(self._transport.interrupt)
        try:
            while not ctx.stopped:
                delay = self._bucket.delay()
                if delay > 0:
                    ctx.wait(delay)  # resolve_now() wakes this early: the bucket is asked again
                    continue
                try:
                    returned, state = self._query(self._index)
                except BaseException:
                    # The agent may have restarted with a fresh, lower index: start over
                    # with a query that answers at once instead of waiting out a stale index.
                    self._index = 0
                    raise
                self._index = next_index(self._index, returned)
                ctx.publish(state)
        finally:
            unregister()
            if ctx.stopped:
                self._client.http.session.close()


class ConsulResolverBuilder(ResolverBuilder):
    """Builds :class:`ConsulResolver` for ``consul://`` targets (entry point ``consul``).

    ``environ`` replaces ``os.environ`` (for tests); it is read when a
    resolver is built or checked.
    """

    scheme = "consul"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    def parse(self, target: Target, options: ResolverOptions) -> tuple[ConsulTarget, ConsulConfig]:
        """Validate the target and options (ConfigError / TargetError naming what is wrong)."""
        config = parse_config(options.config, self._environ)
        return parse_target(target, config, self._environ), config

    def check(self, target: Target, options: ResolverOptions) -> None:
        self.parse(target, options)

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> ConsulResolver:
        consul_target, config = self.parse(target, options)
        resolver = ConsulResolver(consul_target, config, listener, options.clock)
        resolver.start()
        return resolver
