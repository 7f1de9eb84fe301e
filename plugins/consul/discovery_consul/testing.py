"""An in-process Consul agent for tests: the documented HTTP API on loopback, no Consul binary.

:class:`ConsulTestAgent` serves the parts of Consul's HTTP API a service
discovery client and a registering service use, faithfully enough for a real
client (py-consul, ``requests``, ``curl``) to talk to it:

- ``GET /v1/health/service/:name`` and ``GET /v1/catalog/service/:name`` as
  *blocking queries*: ``X-Consul-Index`` on every answer, ``?index=`` +
  ``?wait=`` (default 5 m, clamped to 10 m, plus up to ``wait/16`` of random
  jitter, as Consul adds), ``?passing`` (every node and service check
  passing), repeated ``?tag=`` (all of them), ``?dc=`` (an unknown one is
  Consul's 500 "No path to datacenter"), ``?near=`` (sorted by network
  coordinates, ``_agent`` for the agent's own node), ``?node-meta=``,
  ``?stale`` / ``?consistent`` (both at once is a 400). Each datacenter has its
  own Raft index; a service's index moves only when something about that
  service changes, so other services' writes do not wake its watchers.
- ``PUT /v1/agent/service/register`` (Consul's JSON, any key case, ``check``
  and ``checks`` with TTL, TCP, HTTP and gRPC checks that really run),
  ``/v1/agent/service/deregister/:id``, ``/v1/agent/service/maintenance/:id``,
  ``/v1/agent/check/{register,deregister,pass,warn,fail,update}``,
  ``PUT /v1/catalog/register`` and ``/v1/catalog/deregister`` (services on
  other nodes), ``GET /v1/agent/services``, ``/v1/agent/checks``,
  ``/v1/agent/self``, ``/v1/catalog/services``, ``/v1/status/leader``.
- ACLs when ``acl_default_policy`` is given: tokens by ``X-Consul-Token``,
  ``Authorization: Bearer`` or the legacy ``?token=``; an unknown token is
  Consul's 403 "ACL not found"; reads a token may not see are filtered out
  (with ``X-Consul-Results-Filtered-By-ACLs: true``); writes without
  permission are a 403 "Permission denied".

Faults a test injects: :meth:`~ConsulTestAgent.stop` / :meth:`~ConsulTestAgent.start`
(an outage: connection refused, pending long polls reset),
:meth:`~ConsulTestAgent.restart` (connections reset and the Raft index starts
again from a low value, as after a dev agent restart),
:meth:`~ConsulTestAgent.set_index` (the index going backwards, or 0),
:meth:`~ConsulTestAgent.fail_next` (HTTP errors), and churn by changing check
output (every write moves the index, though the address set stays the same).

::

    with ConsulTestAgent() as agent:
        agent.register("orders", 50051, address="127.0.0.1", tags=["v2"])
        target = f"consul://{agent.address}/orders?tag=v2"

Everything is thread-safe. Handler threads wait on a condition variable;
nothing here sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import logging
import math
import random
import socket
import ssl
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ._duration import parse_go_duration

__all__ = [
    "CRITICAL",
    "MAX_WAIT",
    "PASSING",
    "WARNING",
    "ConsulTestAgent",
    "RecordedRequest",
    "parse_go_duration",
]

log = logging.getLogger(__name__)

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
_STATUSES = (PASSING, WARNING, CRITICAL)

#: Consul's default blocking-query wait, and its ceiling.
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0
#: Consul runs interval checks at most once a second.
MIN_CHECK_INTERVAL = 1.0

def _go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError(text)


class _HTTPError(ValueError):
    """An error answer: status code and Consul's plain-text message (a ValueError for programmatic callers)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Aborted(Exception):
    """The agent stopped (or the client went away) while a request waited: answer nothing."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request the agent received (tests assert on how a client talks to it).

    ``token_source`` says how a token came: ``"header"`` (``X-Consul-Token``),
    ``"bearer"`` (``Authorization: Bearer``), ``"query"`` (``?token=``) or None.
    ``query`` is the raw query string exactly as sent.
    """

    method: str
    path: str
    query: str
    token: str | None
    token_source: str | None
    time: float


@dataclass(frozen=True, slots=True)
class _Token:
    secret: str
    accessor: str
    read: tuple[str, ...]
    write: tuple[str, ...]
    management: bool = False

    def can(self, service: str, write: bool) -> bool:
        if self.management:
            return True
        prefixes = self.write if write else self.read + self.write
        return any(service.startswith(p) for p in prefixes)


@dataclass(slots=True)
class _Node:
    name: str
    id: str
    address: str
    datacenter: str
    meta: dict[str, str]
    create_index: int
    modify_index: int
    coordinate: tuple[float, float] | None = None


@dataclass(slots=True)
class _Service:
    node: str
    id: str
    name: str
    tags: list[str]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    enable_tag_override: bool
    tagged_addresses: dict[str, Any]
    create_index: int
    modify_index: int


@dataclass(slots=True)
class _Check:
    node: str
    check_id: str
    name: str
    status: str
    service_id: str
    service_name: str
    notes: str = ""
    output: str = ""
    type: str = ""
    ttl: float | None = None
    interval: float | None = None
    timeout: float = 10.0
    http: str = ""
    http_method: str = "GET"
    tcp: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    create_index: int = 0
    modify_index: int = 0
    # When a TTL check expires or an interval check runs next (monotonic seconds).
    due: float = 0.0


@dataclass(slots=True)
class _Datacenter:
    """One datacenter's catalog with its own Raft index."""

    name: str
    index: int = 1
    nodes: dict[str, _Node] = field(default_factory=dict)
    services: dict[tuple[str, str], _Service] = field(default_factory=dict)
    checks: dict[tuple[str, str], _Check] = field(default_factory=dict)
    # The index of the last write that touched each service name (Consul's "service.<name>" index entries).
    service_index: dict[str, int] = field(default_factory=dict)
    # The index of the last write that removed a service's last instance ("service_last_extinction").
    extinction_index: int = 0


def _key(d: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """A field of a Consul JSON body: Consul accepts any case and snake_case (``ServiceID``, ``service_id``)."""
    want = name.replace("_", "").lower()
    for k, v in d.items():
        if isinstance(k, str) and k.replace("_", "").lower() == want:
            return v
    return default


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _HTTPError(400, f"Invalid {what}: expected an object of strings")
    if len(value) > 64:
        raise _HTTPError(400, f"Node metadata cannot contain more than 64 key/value pairs ({what})")
    for k, v in value.items():
        if not k or len(k) > 128 or len(v) > 512:
            raise _HTTPError(400, f"Invalid {what} key/value {k!r}")
        if k.startswith("consul-"):
            raise _HTTPError(400, f"Key prefix 'consul-' is reserved for internal use ({what} {k!r})")
    return dict(value)


def _duration_field(value: Any, what: str) -> float | None:
    if value in (None, "", 0):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1e9  # Go's JSON encoding of a time.Duration is nanoseconds
    if isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError:
            raise _HTTPError(400, f"Request decode failed: {what}: invalid duration {value!r}") from None
    raise _HTTPError(400, f"Request decode failed: {what}: invalid duration {value!r}")


class ConsulTestAgent:
    """A Consul agent (and its servers) in this process, on ``host`` at ``port`` (0 picks a free one).

    ``datacenter`` and ``node`` name the agent's own datacenter and node (its
    address is ``host``). ``acl_default_policy`` None leaves ACLs disabled;
    ``"allow"`` or ``"deny"`` enables them (anonymous requests get the
    default policy; :meth:`add_token` adds tokens). ``tls`` is a server-side
    ``ssl.SSLContext`` for HTTPS (make it require client certificates to
    test ``verify_incoming``). ``seed`` fixes the wait jitter for
    reproducible tests.

    :meth:`start` binds and serves on daemon threads; :meth:`stop` and
    :meth:`start` may alternate (the port stays the same). All methods are
    thread-safe and return promptly.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, datacenter: str = "dc1",
                 node: str = "test-agent", acl_default_policy: str | None = None,
                 seed: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        if acl_default_policy not in (None, "allow", "deny"):
            raise ValueError(f"acl_default_policy must be None, 'allow' or 'deny', got {acl_default_policy!r}")
        self.host = host
        self.port = port
        self.datacenter = datacenter
        self.node = node
        self.acl_default_policy = acl_default_policy
        self.tls = tls
        self._rng = random.Random(seed)
        self._cond = threading.Condition()
        self._dcs: dict[str, _Datacenter] = {}
        self._tokens: dict[str, _Token] = {}
        self._requests: list[RecordedRequest] = []
        self._pending: dict[tuple[str, str], int] = {}
        self._fail_next: list[tuple[int, str]] = []
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._checks_thread: threading.Thread | None = None
        self._generation = 0  # bumped by stop(): waiting handlers of an older generation abort
        self._running = False
        self._query_counts: dict[str, int] = {}
        self._routes = self._make_routes()
        with self._cond:
            self._ensure_node(self._dc(datacenter), node, host, {})

    # -- lifecycle --------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` (IPv6 in brackets), as a ``consul://`` target's authority."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with ``tls``)."""
        return f"{'https' if self.tls else 'http'}://{self.address}"

    @property
    def running(self) -> bool:
        with self._cond:
            return self._running

    def start(self) -> ConsulTestAgent:
        """Bind (the same port again after a stop) and serve. Returns self."""
        with self._cond:
            if self._running:
                return self
        server = _Server(self, (self.host, self.port))
        self.port = int(server.server_address[1])
        with self._cond:
            self._server = server
            self._running = True
        self._serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name=f"consul-test-agent:{self.port}", daemon=True)
        self._serve_thread.start()
        if self._checks_thread is None or not self._checks_thread.is_alive():
            self._checks_thread = threading.Thread(target=self._run_checks, name=f"consul-test-checks:{self.port}",
                                                   daemon=True)
            self._checks_thread.start()
        return self

    def stop(self) -> None:
        """An outage: stop listening and reset every open connection (pending long polls fail at once).

        The catalog is kept. Blocks until every connection is closed.
        """
        with self._cond:
            server, self._server = self._server, None
            self._running = False
            self._generation += 1
            self._cond.notify_all()
        if server is None:
            return
        server.shutdown()
        server.reset_connections()
        server.server_close()
        if self._serve_thread is not None:
            self._serve_thread.join(5)
        if self._checks_thread is not None:
            self._checks_thread.join(5)
            self._checks_thread = None

    def restart(self, *, reset_index: bool = True) -> None:
        """Stop, then start on the same port, like a restarted dev agent.

        Connections are reset. With ``reset_index`` the Raft index of every
        datacenter starts again from a low value and every entry is re-stamped
        (anti-entropy re-registers the agent's services on a fresh state
        store), so clients holding an old, higher index must drop it.
        """
        self.stop()
        if reset_index:
            with self._cond:
                for dc in self._dcs.values():
                    self._renumber(dc)
        self.start()

    close = stop

    def __enter__(self) -> ConsulTestAgent:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- the catalog, programmatically ------------------------------------------------------

    def register(self, name: str, port: int, *, address: str = "", service_id: str | None = None,
                 tags: Iterable[str] = (), meta: Mapping[str, str] | None = None,
                 weights: Mapping[str, int] | None = None, status: str | None = PASSING,
                 node: str | None = None, node_address: str | None = None,
                 node_meta: Mapping[str, str] | None = None, datacenter: str | None = None) -> str:
        """Register a service instance and return its ID (``name`` unless ``service_id`` is given).

        On the agent's own node by default, else on ``node`` (created with
        ``node_address``, default ``127.0.0.1``) in ``datacenter`` (created if
        new), like ``PUT /v1/catalog/register``. ``address`` "" leaves
        ``Service.Address`` empty, so clients must use ``Node.Address``.
        ``status`` adds one check ``service:<id>`` in that state (None adds no
        check). Bad values raise ValueError with Consul's message.
        """
        body: dict[str, Any] = {"Name": name, "ID": service_id or name, "Port": port, "Address": address,
                                "Tags": list(tags), "Meta": dict(meta or {})}
        if weights is not None:
            body["Weights"] = dict(weights)
        if status is not None:
            body["Check"] = {"CheckID": f"service:{service_id or name}", "TTL": "87600h", "Status": status}
        with self._cond:
            dc = self._dc(datacenter or self.datacenter)
            node_name = node or self.node
            known = dc.nodes.get(node_name)
            self._ensure_node(dc, node_name,
                              node_address or (known.address if known else "127.0.0.1"),
                              dict(node_meta) if node_meta is not None else (known.meta if known else {}))
            return self._register_service(dc, node_name, body)

    def deregister(self, service_id: str, *, node: str | None = None, datacenter: str | None = None) -> None:
        """Remove a service instance and its checks (KeyError if unknown)."""
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            if not self._deregister_service(dc, node or self.node, service_id):
                raise KeyError(service_id)

    def set_check(self, check_id: str, status: str, *, output: str = "", node: str | None = None,
                  datacenter: str | None = None) -> None:
        """Set a check's status (``passing``, ``warning``, ``critical``) and output.

        A service registered with :meth:`register` has the check
        ``service:<service_id>``. Like Consul, a write that changes nothing
        does not move the index; a changed output does (that is churn).
        """
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            check = dc.checks.get((node or self.node, check_id))
            if check is None:
                raise KeyError(check_id)
            self._update_check(dc, check, status, output)

    def set_node_status(self, node: str, status: str, *, datacenter: str | None = None) -> None:
        """Set the node's ``serfHealth`` check: critical takes every service on it out of ``?passing``."""
        self.set_check("serfHealth", status, output=f"Agent {status}", node=node, datacenter=datacenter)

    def set_coordinate(self, node: str, x: float, y: float = 0.0, *, datacenter: str | None = None) -> None:
        """Place ``node`` at (x, y) for ``?near=`` sorting (estimated RTT = distance)."""
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            dc.nodes[node].coordinate = (float(x), float(y))

    def add_datacenter(self, name: str) -> None:
        """Make ``?dc=name`` routable (an empty catalog with its own index)."""
        with self._cond:
            self._dc(name)

    def add_token(self, secret: str, *, read: Iterable[str] = ("",), write: Iterable[str] = (),
                  management: bool = False) -> None:
        """Add an ACL token. ``read``/``write`` are service-name prefixes (Consul's ``service_prefix`` rules).

        The default lets the token read every service and write none.
        """
        with self._cond:
            self._tokens[secret] = _Token(secret, str(uuid.uuid4()), tuple(read), tuple(write), management)

    def set_index(self, index: int, *, datacenter: str | None = None) -> None:
        """Force a datacenter's Raft index (a fault: lower it to make it go backwards, or 0).

        Entries stamped higher are lowered to it. Wakes every blocking query.
        """
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            dc.index = index
            for name in dc.service_index:
                dc.service_index[name] = min(dc.service_index[name], index)
            dc.extinction_index = min(dc.extinction_index, index)
            entries: list[_Node | _Service | _Check] = [*dc.nodes.values(), *dc.services.values(),
                                                         *dc.checks.values()]
            for entry in entries:
                entry.create_index = min(entry.create_index, index)
                entry.modify_index = min(entry.modify_index, index)
            self._cond.notify_all()

    def touch(self, service: str, *, datacenter: str | None = None) -> int:
        """Move ``service``'s index without changing anything a client sees (churn); returns the new index."""
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            self._bump(dc, service)
            return dc.index

    def fail_next(self, count: int = 1, status: int = 500, message: str = "rpc error: No cluster leader") -> None:
        """Answer the next ``count`` requests (any path) with ``status`` and ``message``."""
        with self._cond:
            self._fail_next.extend([(status, message)] * count)

    def index(self, service: str | None = None, *, datacenter: str | None = None) -> int:
        """The index a query for ``service`` would return now (the datacenter's index if None)."""
        with self._cond:
            dc = self._dc(datacenter or self.datacenter, create=False)
            return dc.index if service is None else self._service_query_index(dc, service)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._cond:
            return list(self._requests)

    def queries(self, service: str) -> int:
        """How many ``/v1/health/service/<service>`` requests arrived so far."""
        with self._cond:
            return self._query_counts.get("/v1/health/service/" + service, 0)

    def pending(self, service: str, *, datacenter: str | None = None) -> int:
        """How many blocking queries for ``service`` are parked waiting for a change right now."""
        with self._cond:
            return self._pending.get((datacenter or self.datacenter, service), 0)

    def wait_for_pending(self, service: str, n: int = 1, timeout: float = 5.0,
                         *, datacenter: str | None = None) -> None:
        """Block until at least ``n`` blocking queries for ``service`` are parked (TimeoutError otherwise)."""
        key = (datacenter or self.datacenter, service)
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending.get(key, 0) >= n, timeout):
                raise TimeoutError(f"{n} blocking queries for {service!r} not parked within {timeout}s "
                                   f"(now {self._pending.get(key, 0)})")

    def wait_for_queries(self, service: str, n: int, timeout: float = 5.0) -> None:
        """Block until ``/v1/health/service/<service>`` was requested at least ``n`` times in all."""
        path = "/v1/health/service/" + service
        with self._cond:
            ok = self._cond.wait_for(lambda: self._query_counts.get(path, 0) >= n, timeout)
        if not ok:
            raise TimeoutError(f"fewer than {n} queries for {service!r} within {timeout}s")

    # -- state (callers hold self._cond) -------------------------------------------------

    def _dc(self, name: str, create: bool = True) -> _Datacenter:
        dc = self._dcs.get(name)
        if dc is None:
            if not create:
                raise KeyError(f"unknown datacenter {name!r}")
            dc = self._dcs[name] = _Datacenter(name)
        return dc

    def _bump(self, dc: _Datacenter, *services: str) -> int:
        dc.index += 1
        for name in services:
            dc.service_index[name] = dc.index
        self._cond.notify_all()
        return dc.index

    def _ensure_node(self, dc: _Datacenter, name: str, address: str, meta: dict[str, str]) -> None:
        """Create ``name`` (with its passing ``serfHealth`` check) or update it; one write if anything changed."""
        node = dc.nodes.get(name)
        if node is not None and node.address == address and node.meta == meta:
            return
        idx = self._bump(dc, *sorted({s.name for s in dc.services.values() if s.node == name}))
        if node is None:
            dc.nodes[name] = _Node(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{dc.name}.{name}")),
                                   address, dc.name, meta, idx, idx)
            dc.checks[(name, "serfHealth")] = _Check(name, "serfHealth", "Serf Health Status", PASSING, "", "",
                                                     output="Agent alive and reachable",
                                                     create_index=idx, modify_index=idx)
        else:
            node.address, node.meta, node.modify_index = address, meta, idx

    def _register_service(self, dc: _Datacenter, node: str, body: Mapping[str, Any],
                          replace_checks: bool = False) -> str:
        """``PUT /v1/agent/service/register`` on ``node``: validate, then one write."""
        name = _key(body, "Name")
        if not isinstance(name, str) or not name:
            raise _HTTPError(400, "Missing service name")
        sid = _key(body, "ID") or name
        if not isinstance(sid, str):
            raise _HTTPError(400, "Request decode failed: ID must be a string")
        port = _key(body, "Port", 0)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise _HTTPError(400, f"Invalid service port {port!r}")
        address = _key(body, "Address", "") or ""
        if not isinstance(address, str):
            raise _HTTPError(400, "Request decode failed: Address must be a string")
        tags = _key(body, "Tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _HTTPError(400, "Request decode failed: Tags must be a list of strings")
        meta = _str_map(_key(body, "Meta"), "service meta")
        raw_weights = _key(body, "Weights")
        weights = {"Passing": 1, "Warning": 1}
        if raw_weights is not None:
            if not isinstance(raw_weights, dict):
                raise _HTTPError(400, "Request decode failed: Weights must be an object")
            passing = _key(raw_weights, "Passing", 1)
            warning = _key(raw_weights, "Warning", 1)
            if not isinstance(passing, int) or not isinstance(warning, int) or isinstance(passing, bool):
                raise _HTTPError(400, "Request decode failed: weights must be integers")
            if passing < 1:
                raise _HTTPError(400, "Passing must be greater than 0")
            if warning < 0:
                raise _HTTPError(400, "Warning must be greater or equal than 0")
            weights = {"Passing": passing, "Warning": warning}
        checks: list[Any] = []
        single = _key(body, "Check")
        if single:
            checks.append(single)
        many = _key(body, "Checks") or []
        if not isinstance(many, list):
            raise _HTTPError(400, "Request decode failed: Checks must be a list")
        checks.extend(many)
        parsed = [self._parse_check(c, node, sid, name, i + 1, len(checks)) for i, c in enumerate(checks)]

        old = dc.services.get((node, sid))
        idx = dc.index + 1
        old_name = old.name if old else None
        dc.services[(node, sid)] = _Service(
            node, sid, name, list(tags), address, port, meta, weights, bool(_key(body, "EnableTagOverride", False)),
            dict(_key(body, "TaggedAddresses") or {}), old.create_index if old else idx, idx)
        for check in parsed:
            prev = dc.checks.get((node, check.check_id))
            check.create_index = prev.create_index if prev else idx
            check.modify_index = idx
            dc.checks[(node, check.check_id)] = check
        if replace_checks:
            keep = {c.check_id for c in parsed}
            for key in [k for k, c in dc.checks.items() if c.service_id == sid and k[0] == node]:
                if key[1] not in keep:
                    del dc.checks[key]
        self._bump(dc, name, *([old_name] if old_name and old_name != name else []))
        return sid

    def _parse_check(self, raw: Any, node: str, sid: str, sname: str, n: int, total: int) -> _Check:
        if not isinstance(raw, dict):
            raise _HTTPError(400, "Request decode failed: a check must be an object")
        cid = _key(raw, "CheckID") or _key(raw, "ID") or (f"service:{sid}" if total == 1 else f"service:{sid}:{n}")
        status = _key(raw, "Status") or CRITICAL
        if status not in _STATUSES:
            raise _HTTPError(400, f"Status for checks must 'passing', 'warning', 'critical', got {status!r}")
        check = _Check(node, str(cid), _key(raw, "Name") or f"Service '{sname}' check", status, sid, sname,
                       notes=_key(raw, "Notes") or "")
        ttl = _duration_field(_key(raw, "TTL"), "TTL")
        interval = _duration_field(_key(raw, "Interval"), "Interval")
        timeout = _duration_field(_key(raw, "Timeout"), "Timeout")
        if ttl is not None:
            check.type, check.ttl, check.due = "ttl", ttl, time.monotonic() + ttl
        elif _key(raw, "HTTP"):
            check.type, check.http = "http", str(_key(raw, "HTTP"))
            check.http_method = str(_key(raw, "Method") or "GET")
        elif _key(raw, "TCP"):
            check.type, check.tcp = "tcp", str(_key(raw, "TCP"))
        elif _key(raw, "GRPC"):
            check.type, check.grpc = "grpc", str(_key(raw, "GRPC"))
            check.grpc_use_tls = bool(_key(raw, "GRPCUseTLS", False))
        elif _key(raw, "Args") or _key(raw, "Script"):
            # Script checks never run here: they keep the status they were registered with.
            check.type = "script"
        else:
            raise _HTTPError(400, "Invalid check: TTL, HTTP, TCP, GRPC or Args must be specified")
        if check.type in ("http", "tcp", "grpc"):
            if interval is None:
                raise _HTTPError(400, "Invalid check: Interval must be > 0 for HTTP, TCP and gRPC checks")
            check.interval = max(interval, MIN_CHECK_INTERVAL)
            check.timeout = timeout or 10.0
            check.due = time.monotonic()  # Consul runs a new check at once (after a random stagger)
        return check

    def _deregister_service(self, dc: _Datacenter, node: str, sid: str) -> bool:
        service = dc.services.pop((node, sid), None)
        if service is None:
            return False
        for key in [k for k, c in dc.checks.items() if c.service_id == sid and k[0] == node]:
            del dc.checks[key]
        idx = self._bump(dc, service.name)
        if not any(s.name == service.name for s in dc.services.values()):
            dc.extinction_index = idx
            del dc.service_index[service.name]
        return True

    def _update_check(self, dc: _Datacenter, check: _Check, status: str, output: str) -> None:
        if check.ttl is not None:
            check.due = time.monotonic() + check.ttl
        if check.status == status and check.output == output:
            return
        check.status, check.output = status, output
        if check.service_id:
            names = [check.service_name]
        else:  # a node check affects every service on the node
            names = sorted({s.name for s in dc.services.values() if s.node == check.node})
        check.modify_index = self._bump(dc, *names)

    def _renumber(self, dc: _Datacenter) -> None:
        """A fresh state store after a restart: the same entries, re-stamped from a low index."""
        idx = 1
        for node in dc.nodes.values():
            idx += 1
            node.create_index = node.modify_index = idx
        dc.service_index.clear()
        for s in dc.services.values():
            idx += 1
            s.create_index = s.modify_index = idx
            dc.service_index[s.name] = idx
        for c in dc.checks.values():
            idx += 1
            c.create_index = c.modify_index = idx
            if c.service_name:
                dc.service_index[c.service_name] = idx
        dc.index = idx
        dc.extinction_index = 0

    def _service_query_index(self, dc: _Datacenter, service: str) -> int:
        # As Consul's state store: a live service has its own index; a missing one
        # reports the last extinction if any, else the index of the whole catalog.
        if service in dc.service_index:
            return dc.service_index[service]
        return dc.extinction_index or dc.index

    # -- health checks -----------------------------------------------------------------

    def _run_checks(self) -> None:
        """Expire TTL checks and run HTTP/TCP/gRPC checks when due, until stopped."""
        gen = self._generation
        while True:
            with self._cond:
                if self._generation != gen or not self._running:
                    return
                now = time.monotonic()
                due: list[tuple[str, _Check]] = []
                next_due = now + 0.5
                for dc in self._dcs.values():
                    for check in dc.checks.values():
                        if check.type == "ttl" and check.ttl is not None:
                            if check.due <= now and check.status != CRITICAL:
                                self._update_check(dc, check, CRITICAL, "TTL expired")
                            elif check.due > now:
                                next_due = min(next_due, check.due)
                        elif check.interval is not None:
                            if check.due <= now:
                                check.due = now + check.interval
                                due.append((dc.name, check))
                            next_due = min(next_due, check.due)
                if not due:
                    self._cond.wait(max(0.0, next_due - now))
                    continue
            for dc_name, check in due:
                status, output = _probe(check)
                with self._cond:
                    dc = self._dcs[dc_name]
                    if dc.checks.get((check.node, check.check_id)) is check:
                        self._update_check(dc, check, status, output)

    # -- rendering ------------------------------------------------------------------------

    def _node_json(self, dc: _Datacenter, node: _Node) -> dict[str, Any]:
        return {"ID": node.id, "Node": node.name, "Address": node.address, "Datacenter": dc.name,
                "TaggedAddresses": {"lan": node.address, "wan": node.address}, "Meta": dict(node.meta),
                "CreateIndex": node.create_index, "ModifyIndex": node.modify_index}

    @staticmethod
    def _service_json(s: _Service) -> dict[str, Any]:
        return {"ID": s.id, "Service": s.name, "Tags": list(s.tags), "Address": s.address, "Port": s.port,
                "Meta": dict(s.meta), "Weights": dict(s.weights), "EnableTagOverride": s.enable_tag_override,
                "TaggedAddresses": dict(s.tagged_addresses), "Namespace": "default", "Partition": "default",
                "CreateIndex": s.create_index, "ModifyIndex": s.modify_index}

    def _check_json(self, dc: _Datacenter, c: _Check) -> dict[str, Any]:
        svc = dc.services.get((c.node, c.service_id)) if c.service_id else None
        return {"Node": c.node, "CheckID": c.check_id, "Name": c.name, "Status": c.status, "Notes": c.notes,
                "Output": c.output, "ServiceID": c.service_id, "ServiceName": c.service_name,
                "ServiceTags": list(svc.tags) if svc else [], "Type": c.type, "Namespace": "default",
                "CreateIndex": c.create_index, "ModifyIndex": c.modify_index}

    def _instances(self, dc: _Datacenter, service: str, tags: list[str], node_meta: list[tuple[str, str]],
                   near: str, token: _Token | None) -> tuple[list[_Service], bool]:
        out: list[_Service] = []
        filtered = False
        for s in sorted(dc.services.values(), key=lambda s: (s.node, s.id)):
            if s.name != service or not all(t in s.tags for t in tags):
                continue
            node = dc.nodes[s.node]
            if not all(node.meta.get(k) == v for k, v in node_meta):
                continue
            if not self._may(token, s.name, write=False):
                filtered = True
                continue
            out.append(s)
        if near:
            origin = dc.nodes.get(self.node if near == "_agent" else near)
            if origin is not None and origin.coordinate is not None:
                ox, oy = origin.coordinate

                def distance(s: _Service) -> float:
                    c = dc.nodes[s.node].coordinate
                    return math.inf if c is None else math.hypot(c[0] - ox, c[1] - oy)

                out.sort(key=distance)
        return out, filtered

    # -- ACL ------------------------------------------------------------------------------

    def _may(self, token: _Token | None, service: str, write: bool) -> bool:
        if self.acl_default_policy is None:
            return True
        if token is not None and token.can(service, write):
            return True
        return self.acl_default_policy == "allow"

    # -- request handling (called on handler threads) ------------------------------------------

    def _record(self, req: RecordedRequest) -> tuple[int, str] | None:
        with self._cond:
            self._requests.append(req)
            self._query_counts[req.path] = self._query_counts.get(req.path, 0) + 1
            self._cond.notify_all()
            if self._fail_next:
                return self._fail_next.pop(0)
        return None

    def _resolve_token(self, secret: str | None) -> _Token | None:
        if self.acl_default_policy is None or not secret:
            return None
        with self._cond:
            token = self._tokens.get(secret)
        if token is None:
            raise _HTTPError(403, "ACL not found")
        return token

    def _make_routes(self) -> list[tuple[str, str, Callable[..., tuple[int, dict[str, str], Any]]]]:
        return [
            ("GET", "/v1/health/service/", self._get_health_service),
            ("GET", "/v1/catalog/service/", self._get_catalog_service),
            ("GET", "/v1/catalog/services", self._get_catalog_services),
            ("PUT", "/v1/agent/service/register", self._put_register),
            ("PUT", "/v1/agent/service/deregister/", self._put_deregister),
            ("PUT", "/v1/agent/service/maintenance/", self._put_maintenance),
            ("PUT", "/v1/agent/check/register", self._put_check_register),
            ("PUT", "/v1/agent/check/deregister/", self._put_check_deregister),
            ("PUT", "/v1/agent/check/pass/", functools.partial(self._put_ttl, PASSING)),
            ("PUT", "/v1/agent/check/warn/", functools.partial(self._put_ttl, WARNING)),
            ("PUT", "/v1/agent/check/fail/", functools.partial(self._put_ttl, CRITICAL)),
            ("PUT", "/v1/agent/check/update/", self._put_check_update),
            ("PUT", "/v1/catalog/register", self._put_catalog_register),
            ("PUT", "/v1/catalog/deregister", self._put_catalog_deregister),
            ("GET", "/v1/agent/services", self._get_agent_services),
            ("GET", "/v1/agent/checks", self._get_agent_checks),
            ("GET", "/v1/agent/self", self._get_agent_self),
            ("GET", "/v1/status/leader", self._get_leader),
        ]

    def handle(self, method: str, path: str, params: dict[str, list[str]], body: bytes, secret: str | None,
               alive: Callable[[], bool]) -> tuple[int, dict[str, str], bytes]:
        """Route one request; returns status, headers and body. Raises _Aborted to answer nothing."""
        token = self._resolve_token(secret)
        for want_method, prefix, fn in self._routes:
            exact = not prefix.endswith("/")
            if (path == prefix) if exact else (path.startswith(prefix) and len(path) > len(prefix)):
                if method != want_method and not (want_method == "PUT" and method == "POST"):
                    raise _HTTPError(405, f"method {method} not allowed")
                arg = urllib.parse.unquote(path[len(prefix):]) if not exact else ""
                status, headers, payload = fn(arg=arg, params=params, body=body, token=token, alive=alive)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                return status, headers, data
        raise _HTTPError(404, f"Invalid URL path: not a recognized HTTP API endpoint: {path}")

    def _query_dc(self, params: dict[str, list[str]]) -> _Datacenter:
        name = params.get("dc", [""])[-1] or self.datacenter
        with self._cond:
            dc = self._dcs.get(name)
        if dc is None:
            raise _HTTPError(500, "No path to datacenter")
        return dc

    @staticmethod
    def _blocking_params(params: dict[str, list[str]]) -> tuple[int, float]:
        index_text = params.get("index", ["0"])[-1] or "0"
        try:
            min_index = int(index_text)
            if min_index < 0:
                raise ValueError(index_text)
        except ValueError:
            raise _HTTPError(400, "Invalid index") from None
        wait = 0.0
        if "wait" in params:
            try:
                wait = parse_go_duration(params["wait"][-1])
            except ValueError:
                raise _HTTPError(400, "Invalid wait time") from None
        if wait <= 0:
            wait = DEFAULT_WAIT
        return min_index, min(wait, MAX_WAIT)

    def _consistency(self, params: dict[str, list[str]]) -> dict[str, str]:
        stale, consistent = "stale" in params, "consistent" in params
        if stale and consistent:
            raise _HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if "filter" in params:
            raise _HTTPError(400, "ConsulTestAgent does not implement ?filter expressions")
        return {"X-Consul-Effective-Consistency": "stale" if stale else ("consistent" if consistent else "leader"),
                "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}

    def _block(self, dc: _Datacenter, service: str | None, min_index: int, wait: float,
               alive: Callable[[], bool]) -> None:
        """Park until the index passes ``min_index`` or ``wait`` (+ up to wait/16 of jitter) ends.

        ``service`` None watches the datacenter's whole index. Index 0 never
        blocks; an index ahead of the agent's (a client that kept its index
        across a restart) blocks for the whole wait, as in Consul. Checks every
        0.1 s that the client is still there (Go's net/http cancels a request
        whose client went away).
        """
        if min_index <= 0:
            return

        def current() -> int:
            return dc.index if service is None else self._service_query_index(dc, service)

        with self._cond:
            deadline = time.monotonic() + wait + self._rng.uniform(0, wait / 16)
            gen = self._generation
            key = (dc.name, service or "")
            self._pending[key] = self._pending.get(key, 0) + 1
            self._cond.notify_all()
            try:
                while current() <= min_index:
                    if self._generation != gen:
                        raise _Aborted
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(min(left, 0.1))
                    if not alive():
                        raise _Aborted
            finally:
                self._pending[key] -= 1
                self._cond.notify_all()

    def _get_health_service(self, arg: str, params: dict[str, list[str]], token: _Token | None,
                            alive: Callable[[], bool], **_: Any) -> tuple[int, dict[str, str], Any]:
        return self._service_query(arg, params, token, alive, health=True)

    def _get_catalog_service(self, arg: str, params: dict[str, list[str]], token: _Token | None,
                             alive: Callable[[], bool], **_: Any) -> tuple[int, dict[str, str], Any]:
        return self._service_query(arg, params, token, alive, health=False)

    def _service_query(self, service: str, params: dict[str, list[str]], token: _Token | None,
                       alive: Callable[[], bool], health: bool) -> tuple[int, dict[str, str], Any]:
        dc = self._query_dc(params)
        headers = self._consistency(params)
        min_index, wait = self._blocking_params(params)
        passing = False
        if health and "passing" in params:
            value = params["passing"][-1]
            try:
                passing = value == "" or _go_bool(value)
            except ValueError:
                raise _HTTPError(400, "Invalid value for ?passing") from None
        tags = [t for t in params.get("tag", []) if t]
        node_meta: list[tuple[str, str]] = []
        for item in params.get("node-meta", []):
            k, sep, v = item.partition(":")
            if not sep:
                raise _HTTPError(400, f"Invalid node metadata filter {item!r}")
            node_meta.append((k, v))
        near = params.get("near", [""])[-1]
        self._block(dc, service, min_index, wait, alive)
        with self._cond:
            index = self._service_query_index(dc, service)
            instances, filtered = self._instances(dc, service, tags, node_meta, near, token)
            result: list[dict[str, Any]] = []
            for s in instances:
                node = dc.nodes[s.node]
                checks = [c for c in dc.checks.values()
                          if c.node == s.node and c.service_id in ("", s.id)]
                checks.sort(key=lambda c: (c.service_id != "", c.check_id))
                if passing and any(c.status != PASSING for c in checks):
                    continue
                if health:
                    result.append({"Node": self._node_json(dc, node), "Service": self._service_json(s),
                                   "Checks": [self._check_json(dc, c) for c in checks]})
                else:
                    result.append({"ID": node.id, "Node": node.name, "Address": node.address, "Datacenter": dc.name,
                                   "NodeMeta": dict(node.meta), "ServiceID": s.id, "ServiceName": s.name,
                                   "ServiceTags": list(s.tags), "ServiceAddress": s.address, "ServicePort": s.port,
                                   "ServiceMeta": dict(s.meta), "ServiceWeights": dict(s.weights),
                                   "CreateIndex": s.create_index, "ModifyIndex": s.modify_index})
        headers["X-Consul-Index"] = str(index)
        if filtered:
            headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
        return 200, headers, result

    def _get_catalog_services(self, params: dict[str, list[str]], token: _Token | None,
                              alive: Callable[[], bool], **_: Any) -> tuple[int, dict[str, str], Any]:
        dc = self._query_dc(params)
        headers = self._consistency(params)
        min_index, wait = self._blocking_params(params)
        self._block(dc, None, min_index, wait, alive)
        with self._cond:
            out: dict[str, list[str]] = {}
            for s in dc.services.values():
                if self._may(token, s.name, write=False):
                    tags = out.setdefault(s.name, [])
                    tags.extend(t for t in s.tags if t not in tags)
            headers["X-Consul-Index"] = str(dc.index)
        return 200, headers, out

    def _write_check(self, token: _Token | None, service: str) -> None:
        if not self._may(token, service, write=True):
            raise _HTTPError(403, f"Permission denied: token lacks permission 'service:write' on \"{service}\"")

    @staticmethod
    def _json_body(body: bytes) -> dict[str, Any]:
        try:
            data = json.loads(body or b"{}")
        except ValueError as exc:
            raise _HTTPError(400, f"Request decode failed: {exc}") from None
        if not isinstance(data, dict):
            raise _HTTPError(400, "Request decode failed: expected a JSON object")
        return data

    def _put_register(self, params: dict[str, list[str]], body: bytes, token: _Token | None,
                      **_: Any) -> tuple[int, dict[str, str], Any]:
        data = self._json_body(body)
        name = _key(data, "Name")
        self._write_check(token, name if isinstance(name, str) else "")
        replace = "replace-existing-checks" in params and params["replace-existing-checks"][-1] in ("true", "1", "")
        with self._cond:
            self._register_service(self._dc(self.datacenter), self.node, data, replace_checks=replace)
        return 200, {}, b""

    def _put_deregister(self, arg: str, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            dc = self._dc(self.datacenter)
            service = dc.services.get((self.node, arg))
            if service is None:
                raise _HTTPError(404, f'Unknown service ID "{arg}". Ensure that the service ID is passed, '
                                      "not the service name.")
            self._write_check(token, service.name)
            self._deregister_service(dc, self.node, arg)
        return 200, {}, b""

    def _put_maintenance(self, arg: str, params: dict[str, list[str]], token: _Token | None,
                         **_: Any) -> tuple[int, dict[str, str], Any]:
        enable_text = params.get("enable", [""])[-1]
        try:
            enable = _go_bool(enable_text)
        except ValueError:
            raise _HTTPError(400, "Missing value for enable" if not enable_text else
                             f"Invalid value for enable: {enable_text!r}") from None
        reason = params.get("reason", [""])[-1] or "Maintenance mode is enabled for this service"
        with self._cond:
            dc = self._dc(self.datacenter)
            service = dc.services.get((self.node, arg))
            if service is None:
                raise _HTTPError(404, f'Unknown service ID "{arg}"')
            self._write_check(token, service.name)
            cid = f"_service_maintenance:{arg}"
            if enable and (self.node, cid) not in dc.checks:
                idx = dc.index + 1
                dc.checks[(self.node, cid)] = _Check(self.node, cid, "Service Maintenance Mode", CRITICAL, arg,
                                                     service.name, notes=reason, type="maintenance",
                                                     create_index=idx, modify_index=idx)
                self._bump(dc, service.name)
            elif not enable and (self.node, cid) in dc.checks:
                del dc.checks[(self.node, cid)]
                self._bump(dc, service.name)
        return 200, {}, b""

    def _put_check_register(self, body: bytes, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        data = self._json_body(body)
        with self._cond:
            dc = self._dc(self.datacenter)
            sid = _key(data, "ServiceID") or ""
            service = dc.services.get((self.node, sid)) if sid else None
            if sid and service is None:
                raise _HTTPError(400, f"ServiceID {sid!r} does not exist")
            self._write_check(token, service.name if service else "")
            name = _key(data, "Name")
            if not name:
                raise _HTTPError(400, "Missing check name")
            data.setdefault("CheckID", _key(data, "ID") or name)
            check = self._parse_check(data, self.node, sid, service.name if service else "", 1, 1)
            check.name = str(name)
            idx = dc.index + 1
            check.create_index = check.modify_index = idx
            dc.checks[(self.node, check.check_id)] = check
            self._bump(dc, *([service.name] if service else sorted(
                {s.name for s in dc.services.values() if s.node == self.node})))
        return 200, {}, b""

    def _agent_check(self, dc: _Datacenter, cid: str, token: _Token | None) -> _Check:
        check = dc.checks.get((self.node, cid))
        if check is None:
            raise _HTTPError(404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.')
        self._write_check(token, check.service_name)
        return check

    def _put_check_deregister(self, arg: str, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            dc = self._dc(self.datacenter)
            check = self._agent_check(dc, arg, token)
            del dc.checks[(self.node, arg)]
            self._bump(dc, *([check.service_name] if check.service_name else []))
        return 200, {}, b""

    def _put_ttl(self, status: str, arg: str, params: dict[str, list[str]], token: _Token | None,
                 **_: Any) -> tuple[int, dict[str, str], Any]:
        return self._ttl_update(arg, token, status, params.get("note", [""])[-1])

    def _ttl_update(self, cid: str, token: _Token | None, status: str, output: str) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            dc = self._dc(self.datacenter)
            check = self._agent_check(dc, cid, token)
            if check.type != "ttl":
                raise _HTTPError(500, f'CheckID "{cid}" does not have associated TTL')
            self._update_check(dc, check, status, output)
        return 200, {}, b""

    def _put_check_update(self, arg: str, body: bytes, token: _Token | None,
                          **_: Any) -> tuple[int, dict[str, str], Any]:
        data = self._json_body(body)
        status = _key(data, "Status")
        if status not in _STATUSES:
            raise _HTTPError(400, f"Invalid check status: {status!r}")
        return self._ttl_update(arg, token, str(status), str(_key(data, "Output") or ""))

    def _put_catalog_register(self, body: bytes, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        data = self._json_body(body)
        node = _key(data, "Node")
        address = _key(data, "Address")
        if not node or not isinstance(node, str):
            raise _HTTPError(400, "Must provide node")
        if not address or not isinstance(address, str):
            raise _HTTPError(400, "Must provide address")
        service = _key(data, "Service")
        if service is not None and not isinstance(service, dict):
            raise _HTTPError(400, "Request decode failed: Service must be an object")
        sname = str(_key(service, "Service") or "") if service is not None else ""
        self._write_check(token, sname)
        raw_checks = [c for c in [_key(data, "Check"), *(_key(data, "Checks") or [])] if c]
        with self._cond:
            dc = self._dcs.get(_key(data, "Datacenter") or self.datacenter)
            if dc is None:
                raise _HTTPError(500, "No path to datacenter")
            self._ensure_node(dc, node, address, _str_map(_key(data, "NodeMeta"), "node meta"))
            sid = ""
            if service is not None:
                sid = self._register_service(dc, node, {**service, "Name": sname})
            for raw in raw_checks:
                # Catalog checks are not run by any agent: they hold the status they are given.
                check_sid = str(_key(raw, "ServiceID") or "")
                if check_sid and (node, check_sid) not in dc.services:
                    raise _HTTPError(400, f"Unknown service ID {check_sid!r} for check")
                owner = dc.services.get((node, check_sid))
                check = self._parse_check({**raw, "TTL": None, "Args": ["catalog"]}, node, check_sid,
                                          owner.name if owner else "", 1, 1)
                check.type = ""
                if not (_key(raw, "CheckID") or _key(raw, "ID")):
                    check.check_id = str(_key(raw, "Name") or f"service:{sid}")
                prev = dc.checks.get((node, check.check_id))
                idx = self._bump(dc, *([owner.name] if owner else sorted(
                    {s.name for s in dc.services.values() if s.node == node})))
                check.create_index = prev.create_index if prev else idx
                check.modify_index = idx
                dc.checks[(node, check.check_id)] = check
        return 200, {}, b"true"

    def _put_catalog_deregister(self, body: bytes, token: _Token | None,
                                **_: Any) -> tuple[int, dict[str, str], Any]:
        data = self._json_body(body)
        node = _key(data, "Node")
        with self._cond:
            dc = self._dcs.get(_key(data, "Datacenter") or self.datacenter)
            if dc is None:
                raise _HTTPError(500, "No path to datacenter")
            if node not in dc.nodes:
                return 200, {}, b"true"
            sid = _key(data, "ServiceID")
            if sid:
                service = dc.services.get((node, sid))
                if service is not None:
                    self._write_check(token, service.name)
                    self._deregister_service(dc, node, sid)
            else:
                for key in [k for k in dc.services if k[0] == node]:
                    self._write_check(token, dc.services[key].name)
                    self._deregister_service(dc, node, key[1])
                if node != self.node:
                    del dc.nodes[node]
                    for key in [k for k in dc.checks if k[0] == node]:
                        del dc.checks[key]
                    self._bump(dc)
        return 200, {}, b"true"

    def _get_agent_services(self, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            dc = self._dc(self.datacenter)
            out = {s.id: {**self._service_json(s), "Datacenter": dc.name}
                   for s in dc.services.values() if s.node == self.node and self._may(token, s.name, False)}
        return 200, {}, out

    def _get_agent_checks(self, token: _Token | None, **_: Any) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            dc = self._dc(self.datacenter)
            out = {c.check_id: self._check_json(dc, c) for c in dc.checks.values()
                   if c.node == self.node and self._may(token, c.service_name, False)}
        return 200, {}, out

    def _get_agent_self(self, **_: Any) -> tuple[int, dict[str, str], Any]:
        with self._cond:
            node = self._dcs[self.datacenter].nodes[self.node]
            return 200, {}, {"Config": {"Datacenter": self.datacenter, "NodeName": self.node, "NodeID": node.id,
                                        "Server": True, "Version": "1.20.0-testagent"},
                             "Member": {"Name": self.node, "Addr": self.host, "Port": 8301, "Status": 1}}

    def _get_leader(self, **_: Any) -> tuple[int, dict[str, str], Any]:
        return 200, {}, f"{self.host}:8300"


def _probe(check: _Check) -> tuple[str, str]:
    """Run one HTTP, TCP or gRPC check as Consul does; returns (status, output). Never raises."""
    try:
        if check.type == "tcp":
            host, _, port = check.tcp.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=check.timeout):
                return PASSING, f"TCP connect {check.tcp}: Success"
        if check.type == "http":
            req = urllib.request.Request(check.http, method=check.http_method)
            try:
                with urllib.request.urlopen(req, timeout=check.timeout) as resp:
                    code = resp.status
            except urllib.error.HTTPError as exc:
                code = exc.code
            out = f"HTTP {check.http_method} {check.http}: {code}"
            if 200 <= code < 300:
                return PASSING, out
            return (WARNING if code == 429 else CRITICAL), out
        if check.type == "grpc":
            return _probe_grpc(check)
    except (OSError, ValueError) as exc:
        return CRITICAL, f"{check.type} check failed: {exc}"
    return check.status, check.output


def _probe_grpc(check: _Check) -> tuple[str, str]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target, _, service = check.grpc.partition("/")
    creds = grpc.ssl_channel_credentials() if check.grpc_use_tls else None
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=check.timeout)
    except grpc.RpcError as exc:
        return CRITICAL, f"gRPC check {check.grpc}: {exc.code().name}"
    finally:
        channel.close()
    if resp.status == health_pb2.HealthCheckResponse.SERVING:
        return PASSING, f"gRPC check {check.grpc}: success"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return CRITICAL, f"gRPC check {check.grpc}: {name}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("consul test agent: " + format, *args)

    def _alive(self) -> bool:
        """False once the client closed its end (EOF readable) or the agent stopped."""
        try:
            self.connection.setblocking(False)
            try:
                # The plain socket's recv, also under TLS: it peeks at the raw stream for EOF.
                data = socket.socket.recv(self.connection, 1, socket.MSG_PEEK)
            finally:
                self.connection.setblocking(True)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return bool(data)

    def _serve(self, method: str) -> None:
        agent = self.server.agent
        parts = urllib.parse.urlsplit(self.path)
        params = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        secret, source = self.headers.get("X-Consul-Token"), "header"
        if not secret:
            auth = self.headers.get("Authorization", "")
            secret, source = (auth[7:].strip(), "bearer") if auth.lower().startswith("bearer ") else (None, "")
        if not secret and params.get("token", [""])[-1]:
            secret, source = params["token"][-1], "query"
        injected = agent._record(RecordedRequest(method, parts.path, parts.query, secret or None,
                                                 source if secret else None, time.monotonic()))
        try:
            if injected is not None:
                raise _HTTPError(*injected)
            status, headers, data = agent.handle(method, parts.path, params, body, secret, self._alive)
        except _Aborted:
            self.close_connection = True
            return
        except _HTTPError as exc:
            status, headers, data = exc.status, {"Content-Type": "text/plain; charset=utf-8"}, exc.message.encode()
        else:
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True

    def __init__(self, agent: ConsulTestAgent, address: tuple[str, int]) -> None:
        self.agent = agent
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._resetting = False
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.agent.tls is not None:
            # The handshake runs on the handler thread, at its first read, not in the accept loop.
            sock = self.agent.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._conns_lock:
            if self._resetting:
                self._reset(request)
                return
            self._conns.add(request)
        super().process_request(request, client_address)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # SO_LINGER with a zero timeout makes close() send a RST, as a crashed agent's kernel would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.close()

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.discard(request)
            resetting = self._resetting
        if resetting:
            self._reset(request)
        else:
            super().shutdown_request(request)

    def reset_connections(self) -> None:
        """Reset every open connection: wake readers with SHUT_RD, then the handler closes with RST."""
        with self._conns_lock:
            self._resetting = True
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RD)  # the plain socket's, also under TLS

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("consul test agent: connection from %s ended with an error", client_address, exc_info=True)
