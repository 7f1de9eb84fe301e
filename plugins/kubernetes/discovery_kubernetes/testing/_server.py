"""An in-process Kubernetes API server for EndpointSlices and Endpoints: list and watch by the book.

It speaks the HTTP protocol of the real API server for two resources,
``endpointslices`` (``discovery.k8s.io/v1``) and ``endpoints`` (``v1``):

- ``GET .../namespaces/NS/endpointslices`` lists; ``?watch=true`` watches;
  ``.../endpointslices/NAME`` gets one. The cluster-wide paths without
  ``namespaces/NS`` work too. Writes go through the Python API of
  :class:`KubeApiServer` (a test plays the controllers).
- Every write bumps one global resourceVersion, as etcd's revision does.
  A list returns the current state and its resourceVersion
  (``resourceVersionMatch=Exact`` reconstructs an older state from the
  history); a watch from resourceVersion ``X`` replays every change after
  ``X`` and then streams new ones as ``ADDED``/``MODIFIED``/``DELETED``
  events, one JSON object a line over chunked transfer encoding. A watch
  without a resourceVersion (or ``"0"``) starts with synthetic ``ADDED``
  events for what exists.
- :meth:`KubeApiServer.compact` drops history: a watch from an older
  resourceVersion then gets ``410 Gone`` (reason ``Expired``), as an
  ``ERROR`` event in a 200 stream (``watch_gone="event"``, the watch cache's
  way) or as the HTTP status (``watch_gone="status"``); an ``Exact`` list
  from before the compaction gets HTTP 410.
- Watches with ``allowWatchBookmarks=true`` get ``BOOKMARK`` events every
  ``bookmark_interval`` seconds and on :meth:`KubeApiServer.send_bookmarks`;
  ``timeoutSeconds`` ends a watch cleanly; ``sendInitialEvents`` is honoured.
- Label selectors (``kubernetes.io/service-name=orders``, set-based too)
  and field selectors on ``metadata.name``/``metadata.namespace`` filter lists
  and watches; an object that stops matching is a ``DELETED`` event to a
  filtered watch, one that starts matching an ``ADDED``.
- Bearer-token authentication (401 with a Status object) and RBAC denials
  (403 with the API server's message, naming the verb, resource and group).
- Faults on command: :meth:`~KubeApiServer.break_watches` (connection cut
  mid-stream), :meth:`~KubeApiServer.hang_watches` (the connection stays open
  and goes silent), :meth:`~KubeApiServer.expire_watches` (an ``ERROR`` 410
  event), :meth:`~KubeApiServer.hang_requests`, :meth:`~KubeApiServer.stop`
  and :meth:`~KubeApiServer.start` on the same port.

Empty ``endpoints``/``ports`` of a slice are stored as ``null``, as a real
API server returns them after its protobuf round trip. ``limit`` is ignored
and the whole list returned, which the API allows a server to do.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import logging
import select
import socket
import ssl
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ._objects import endpoint_slice, endpoint_subset, endpoints_object
from ._selectors import FieldSelector, LabelSelector, SelectorError

__all__ = ["ENDPOINTS", "ENDPOINT_SLICES", "KubeApiServer", "RequestRecord", "Resource", "kubeconfig",
           "write_kubeconfig"]

log = logging.getLogger("discovery_kubernetes.testing")


@dataclass(frozen=True, slots=True)
class Resource:
    """One API resource the server serves."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """The URL prefix of the resource's API group version."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:
        """``endpointslices.discovery.k8s.io`` (the name RBAC messages use)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
ENDPOINTS = Resource("", "v1", "endpoints", "Endpoints")
_BY_KIND = {r.kind: r for r in (ENDPOINT_SLICES, ENDPOINTS)}
_BY_PLURAL = {r.plural: r for r in (ENDPOINT_SLICES, ENDPOINTS)}

#: Seconds between checks whether a watching client is still there.
_POLL = 0.05

_ENDPOINTS_WARNING = '299 - "v1 Endpoints is deprecated in v1.33+; use discovery.k8s.io/v1 EndpointSlice"'


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the server answered. The credentials themselves are never recorded."""

    method: str
    path: str
    params: Mapping[str, str]
    verb: str
    status: int
    authenticated: bool


@dataclass(frozen=True, slots=True)
class _Change:
    rv: int
    type: str
    resource: Resource
    old: dict[str, Any] | None
    new: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class _Spec:
    """What one watch or list selects."""

    resource: Resource
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        return self.labels.matches(obj) and self.fields.matches(obj)

    def event(self, change: _Change) -> tuple[str, dict[str, Any]] | None:
        """The watch event ``change`` means to a watch with this spec, if any."""
        if change.resource is not self.resource:
            return None
        was, now = self.matches(change.old), self.matches(change.new)
        if change.type == "DELETED":
            return ("DELETED", _with_kind(change.resource, _at(change.old, change.rv))) if was else None
        if now:
            return ("MODIFIED" if was else "ADDED", _with_kind(change.resource, change.new))
        if was:
            # The object left the selection: a filtered watch sees it deleted,
            # carrying its previous state at the new resourceVersion.
            return "DELETED", _with_kind(change.resource, _at(change.old, change.rv))
        return None


def _with_kind(resource: Resource, obj: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {"kind": resource.kind, "apiVersion": resource.api_version}
    out.update(copy.deepcopy(dict(obj or {})))
    return out


class _Watch:
    """One open watch stream (state guarded by the server's condition)."""

    __slots__ = ("bookmark_now", "bookmarks", "conn", "mode", "queue", "spec", "streaming")

    def __init__(self, spec: _Spec, bookmarks: bool, conn: socket.socket) -> None:
        self.spec = spec
        self.bookmarks = bookmarks
        self.conn = conn
        self.queue: deque[tuple[str, dict[str, Any]]] = deque()
        # open | hung | broken | expired | closed
        self.mode = "open"
        self.bookmark_now = False
        # True once the response headers are out: the client then holds an open watch.
        self.streaming = False


def _status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        out["details"] = dict(details)
    return out


def _go_bool(value: str | None) -> bool:
    """Go's strconv.ParseBool, as the API server parses ``watch=``; anything else is false."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = True  # server_close() joins the handler threads
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], owner: KubeApiServer, ssl_context: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.ssl_context = ssl_context
        super().__init__(addr, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # The handshake runs in the handler thread (do_handshake_on_connect
            # would run it here, in the accept loop, where one slow client
            # would stall every other).
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def handle(self) -> None:
        try:
            if isinstance(self.connection, ssl.SSLSocket):
                self.connection.do_handshake()
            super().handle()
        except (OSError, ssl.SSLError):
            pass  # the client went away, or stop() cut the connection

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.owner._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self.server.owner._serve_get(self)

    def _not_allowed(self) -> None:
        self.server.owner._reply(self, 405, _status(405, "MethodNotAllowed",
                                                    "writes go through the KubeApiServer Python API"))

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed


class KubeApiServer:
    """A Kubernetes API server on ``host:port`` (port 0 picks one) serving EndpointSlices and Endpoints.

    ``token``: when set, requests must carry ``Authorization: Bearer <token>``
    (else 401); None accepts everyone. ``user`` is the name 403 messages
    give. ``bookmark_interval``: seconds between BOOKMARK events on watches
    that asked for them (None: only on :meth:`send_bookmarks`).
    ``watch_gone``: how a watch from a compacted resourceVersion fails,
    ``"event"`` (an ERROR event in a 200 stream) or ``"status"`` (HTTP 410).
    ``ssl_context``: serve HTTPS with it.

    Every method is thread-safe and returns at once; :meth:`stop` blocks
    until every connection is closed and every handler thread has ended.
    Use it as a context manager or stop it in a test finalizer.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        user: str = "system:serviceaccount:default:discovery-test",
        bookmark_interval: float | None = 60.0,
        watch_gone: str = "event",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if watch_gone not in ("event", "status"):
            raise ValueError(f'watch_gone must be "event" or "status", got {watch_gone!r}')
        self.host = host
        self.port = port
        self.user = user
        self.bookmark_interval = bookmark_interval
        self.watch_gone = watch_gone
        self.ssl_context = ssl_context
        self._cond = threading.Condition(threading.RLock())
        self._tokens: frozenset[str] | None = None if token is None else frozenset((token,))
        self._denied: set[tuple[str, str, str | None]] = set()
        self._rv = 1
        self._compacted = 0
        self._objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._log: list[_Change] = []
        self._watches: list[_Watch] = []
        self._conns: set[socket.socket] = set()
        self._requests: list[RequestRecord] = []
        self._received = 0
        self._lists = 0
        self._watches_started = 0
        self._hang_requests = False
        self._stopping = False
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https`` with an ``ssl_context``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"

    def start(self) -> KubeApiServer:
        """Start serving (again, on the same port after :meth:`stop`); the stored objects survive."""
        with self._cond:
            if self._http is not None:
                return self
            self._stopping = False
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_Server", (_HTTPServer,), {"address_family": family})
        httpd = server_cls((self.host, self.port), self, self.ssl_context)
        self.port = httpd.server_address[1]
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  name=f"kube-apiserver {self.port}", daemon=True)
        with self._cond:
            self._http, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: cut every open connection (watches end abruptly), as a crashed API server does."""
        with self._cond:
            httpd, thread = self._http, self._thread
            self._http = self._thread = None
            self._stopping = True
            conns = list(self._conns)
            self._cond.notify_all()
        if httpd is None:
            return
        httpd.shutdown()
        for conn in conns:
            _cut(conn)
        httpd.server_close()  # joins the handler threads
        if thread is not None:
            thread.join(5)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access control ----------------------------------------------------------

    def set_tokens(self, *tokens: str) -> None:
        """Accept exactly these bearer tokens from now on (none: accept everyone)."""
        with self._cond:
            self._tokens = frozenset(tokens) if tokens else None

    def deny(self, verbs: str | Iterable[str], resource: str = "endpointslices",
             namespace: str | None = None) -> None:
        """Answer these verbs (``list``, ``watch``, ``get``) on ``resource`` with 403 (in ``namespace``, or all)."""
        if resource not in _BY_PLURAL:
            raise ValueError(f"unknown resource {resource!r}; expected one of {sorted(_BY_PLURAL)}")
        with self._cond:
            for verb in [verbs] if isinstance(verbs, str) else verbs:
                self._denied.add((verb, resource, namespace))

    def allow_all(self) -> None:
        """Undo every :meth:`deny`."""
        with self._cond:
            self._denied.clear()

    # -- objects -----------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current (latest) resourceVersion."""
        with self._cond:
            return str(self._rv)

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """A copy of a stored object (``kind`` is ``"EndpointSlice"`` or ``"Endpoints"``), or None."""
        resource = _resource_for(kind)
        with self._cond:
            obj = self._objects.get((resource.plural, namespace, name))
            return None if obj is None else _with_kind(resource, obj)

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Store a new object; ValueError if one with its name exists. Returns the stored copy."""
        resource, key = self._key_of(obj)
        with self._cond:
            if key in self._objects:
                raise ValueError(f"{resource.kind} {key[1]}/{key[2]} already exists")
            return self._commit("ADDED", resource, key, None, obj)

    def update(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Replace an existing object; KeyError if there is none. Returns the stored copy."""
        resource, key = self._key_of(obj)
        with self._cond:
            old = self._objects.get(key)
            if old is None:
                raise KeyError(f"{resource.kind} {key[1]}/{key[2]} does not exist")
            return self._commit("MODIFIED", resource, key, old, obj)

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace ``obj``. Returns the stored copy."""
        resource, key = self._key_of(obj)
        with self._cond:
            old = self._objects.get(key)
            return self._commit("ADDED" if old is None else "MODIFIED", resource, key, old, obj)

    def delete(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        """Delete an object; KeyError if there is none. Returns its last state."""
        resource = _resource_for(kind)
        key = (resource.plural, namespace, name)
        with self._cond:
            old = self._objects.get(key)
            if old is None:
                raise KeyError(f"{kind} {namespace}/{name} does not exist")
            return self._commit("DELETED", resource, key, old, None)

    def create_slice(self, name: str, service: str | None, endpoints: Sequence[Mapping[str, Any]] | None,
                     ports: Sequence[Mapping[str, Any]] | None, *, namespace: str = "default",
                     address_type: str = "IPv4", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create an EndpointSlice of ``service`` (see :func:`~._objects.endpoint_slice`)."""
        return self.create(endpoint_slice(name, service, endpoints, ports, namespace=namespace,
                                          address_type=address_type, labels=labels))

    _KEEP: Any = object()

    def update_slice(self, name: str, *, endpoints: Any = _KEEP, ports: Any = _KEEP,
                     namespace: str = "default", labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Change the ``endpoints`` and/or ``ports`` (and add ``labels``) of an existing slice."""
        with self._cond:
            current = self.get("EndpointSlice", name, namespace)
            if current is None:
                raise KeyError(f"EndpointSlice {namespace}/{name} does not exist")
            if endpoints is not self._KEEP:
                current["endpoints"] = None if endpoints is None else [dict(e) for e in endpoints]
            if ports is not self._KEEP:
                current["ports"] = None if ports is None else [dict(p) for p in ports]
            if labels:
                current["metadata"].setdefault("labels", {}).update(labels)
            return self.update(current)

    def delete_slice(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """Delete an EndpointSlice."""
        return self.delete("EndpointSlice", name, namespace)

    def make_endpoints(self, service: str, addresses: Iterable[str | Mapping[str, Any]] = (),
                       ports: Iterable[Mapping[str, Any]] = (), *, not_ready: Iterable[str | Mapping[str, Any]] = (),
                       subsets: Iterable[Mapping[str, Any]] | None = None,
                       namespace: str = "default") -> dict[str, Any]:
        """Create or replace the legacy ``v1`` Endpoints object of ``service``.

        Either one subset from ``addresses``/``ports``/``not_ready`` or the
        given ``subsets`` (built with :func:`~._objects.endpoint_subset`).
        """
        if subsets is None:
            one = endpoint_subset(addresses, ports, not_ready)
            subsets = [one] if one else []
        return self.apply(endpoints_object(service, subsets, namespace=namespace))

    def compact(self, resource_version: str | None = None) -> None:
        """Forget the history up to ``resource_version`` (default: all of it), as etcd compaction does.

        A watch or ``Exact`` list from before that point then gets 410 Gone.
        Open watches are not affected (they are past it).
        """
        with self._cond:
            upto = self._rv if resource_version is None else int(resource_version)
            self._compacted = max(self._compacted, min(upto, self._rv))
            self._log = [c for c in self._log if c.rv > self._compacted]

    # -- faults and events on command ------------------------------------------------

    def _set_mode(self, mode: str) -> int:
        with self._cond:
            targets = [w for w in self._watches if w.mode == "open"]
            for w in targets:
                w.mode = mode
            self._cond.notify_all()
        return len(targets)

    def hang_watches(self) -> int:
        """Make every open watch go silent for good (the connection stays open). Returns how many."""
        return self._set_mode("hung")

    def break_watches(self) -> int:
        """Cut every open watch's connection mid-stream. Returns how many."""
        with self._cond:
            targets = [w for w in self._watches if w.mode in ("open", "hung")]
            for w in targets:
                w.mode = "broken"
            self._cond.notify_all()
        for w in targets:
            _cut(w.conn)
        return len(targets)

    def expire_watches(self) -> int:
        """Send every open watch an ERROR event (410 Expired) and end it. Returns how many."""
        return self._set_mode("expired")

    def close_watches(self) -> int:
        """End every open watch cleanly, as its timeoutSeconds would. Returns how many."""
        return self._set_mode("closed")

    def send_bookmarks(self) -> int:
        """Send a BOOKMARK now on every open watch that allows bookmarks. Returns how many."""
        with self._cond:
            targets = [w for w in self._watches if w.mode == "open" and w.bookmarks]
            for w in targets:
                w.bookmark_now = True
            self._cond.notify_all()
        return len(targets)

    def hang_requests(self, on: bool = True) -> None:
        """While on, new requests are read and never answered (until turned off or :meth:`stop`)."""
        with self._cond:
            self._hang_requests = on
            self._cond.notify_all()

    # -- observation ---------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def requests_received(self) -> int:
        """Requests read so far, answered or not (see :meth:`hang_requests`)."""
        with self._cond:
            return self._received

    @property
    def open_watches(self) -> int:
        """Watches currently streaming (their response headers sent; hung ones not counted)."""
        with self._cond:
            return sum(1 for w in self._watches if w.mode == "open" and w.streaming)

    @property
    def lists_served(self) -> int:
        """Successful (200) list requests so far."""
        with self._cond:
            return self._lists

    @property
    def watches_started(self) -> int:
        """Watch requests answered with a 200 stream so far."""
        with self._cond:
            return self._watches_started

    def wait_for(self, predicate: Callable[[KubeApiServer], Any], timeout: float = 5.0) -> Any:
        """Block until ``predicate(self)`` is truthy (re-checked on every request and write).

        Returns its value; raises TimeoutError after ``timeout`` seconds.
        """
        result: list[Any] = []

        def check() -> bool:
            value = predicate(self)
            if value:
                result.append(value)
            return bool(value)

        with self._cond:
            if not self._cond.wait_for(check, timeout):
                raise TimeoutError(f"API server condition not met within {timeout}s")
        return result[0]

    # -- kubeconfig ----------------------------------------------------------------

    def kubeconfig(self, *, namespace: str | None = None, token: str | None = None,
                   context: str = "discovery-test", ca_file: str | Path | None = None) -> dict[str, Any]:
        """A kubeconfig (as a dict) whose current context points at this server.

        ``token`` defaults to the server's only accepted token, if it has
        exactly one. ``ca_file`` is the CA that signed an HTTPS server's
        certificate.
        """
        if token is None:
            with self._cond:
                if self._tokens is not None and len(self._tokens) == 1:
                    token = next(iter(self._tokens))
        return kubeconfig(self.url, namespace=namespace, token=token, context=context, ca_file=ca_file)

    def write_kubeconfig(self, path: str | Path, **kwargs: Any) -> Path:
        """Write :meth:`kubeconfig` (same keyword arguments) to ``path`` (mode 0600); returns the path."""
        return _write_yaml(path, self.kubeconfig(**kwargs))

    # -- internals: store ------------------------------------------------------------

    @staticmethod
    def _key_of(obj: Mapping[str, Any]) -> tuple[Resource, tuple[str, str, str]]:
        resource = _resource_for(str(obj.get("kind", "")))
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("metadata.name is required")
        namespace = meta.get("namespace") or "default"
        return resource, (resource.plural, namespace, name)

    def _commit(self, kind: str, resource: Resource, key: tuple[str, str, str],
                old: dict[str, Any] | None, obj: Mapping[str, Any] | None) -> dict[str, Any]:
        """Apply one change at the next resourceVersion and fan it out (caller holds the lock)."""
        self._rv += 1
        rv = self._rv
        new: dict[str, Any] | None = None
        if obj is not None:
            new = _normalise(resource, obj)
            meta = new["metadata"]
            meta["namespace"] = key[1]
            meta["resourceVersion"] = str(rv)
            if old is None:
                meta["uid"] = str(uuid.uuid4())
                meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                meta["generation"] = 1
            else:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
            self._objects[key] = new
            result = new
        else:
            assert old is not None
            del self._objects[key]
            result = _at(old, rv)
        change = _Change(rv, kind, resource, old, new)
        self._log.append(change)
        for w in self._watches:
            event = w.spec.event(change)
            if event is not None:
                w.queue.append(event)
        self._cond.notify_all()
        return _with_kind(resource, result)

    def _select(self, spec: _Spec, at: int | None = None) -> list[dict[str, Any]]:
        """Objects matching ``spec`` now, or as of resourceVersion ``at`` (caller holds the lock)."""
        objects = dict(self._objects)
        if at is not None:
            for change in reversed(self._log):
                if change.rv <= at:
                    break
                key = _key(change.resource, change.old or change.new)
                if change.type == "ADDED":
                    objects.pop(key, None)
                else:
                    assert change.old is not None
                    objects[key] = change.old
        out = [o for (plural, _, _), o in objects.items() if plural == spec.resource.plural and spec.matches(o)]
        out.sort(key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))
        return out

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)
            stopping = self._stopping
        if add and stopping:
            _cut(conn)

    # -- internals: HTTP --------------------------------------------------------------

    def _record(self, h: _Handler, params: Mapping[str, str], verb: str, status: int, authed: bool) -> None:
        with self._cond:
            self._requests.append(RequestRecord("GET", urlsplit(h.path).path, MappingProxyType(dict(params)),
                                                verb, status, authed))
            self._cond.notify_all()

    def _reply(self, h: _Handler, code: int, body: Mapping[str, Any],
               headers: Sequence[tuple[str, str]] = ()) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(data)

    def _authenticate(self, h: _Handler) -> bool:
        with self._cond:
            tokens = self._tokens
        if tokens is None:
            return True
        scheme, _, credential = (h.headers.get("Authorization") or "").strip().partition(" ")
        # The API server takes the scheme case-insensitively (the kubernetes
        # client's in-cluster loader sends "bearer").
        return scheme.lower() == "bearer" and credential.strip() in tokens

    def _route(self, path: str) -> tuple[Resource, str | None, str | None] | None:
        """(resource, namespace or None, name or None) for a URL path, None if not served."""
        for resource in (ENDPOINT_SLICES, ENDPOINTS):
            if not path.startswith(resource.prefix + "/"):
                continue
            parts = path[len(resource.prefix) + 1:].strip("/").split("/")
            namespace = None
            if len(parts) >= 3 and parts[0] == "namespaces" and parts[1]:
                namespace, parts = parts[1], parts[2:]
            if parts and parts[0] == resource.plural and len(parts) <= 2:
                name = parts[1] if len(parts) == 2 else None
                if name is not None and namespace is None:
                    return None
                return resource, namespace, name
        return None

    def _forbidden(self, verb: str, resource: Resource, namespace: str | None) -> dict[str, Any] | None:
        with self._cond:
            denied = ((verb, resource.plural, None) in self._denied
                      or (namespace is not None and (verb, resource.plural, namespace) in self._denied))
        if not denied:
            return None
        scope = f'in the namespace "{namespace}"' if namespace is not None else "at the cluster scope"
        message = (f'{resource.qualified} is forbidden: User "{self.user}" cannot {verb} resource '
                   f'"{resource.plural}" in API group "{resource.group}" {scope}')
        return _status(403, "Forbidden", message, {"group": resource.group, "kind": resource.plural})

    def _serve_get(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        params = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self._cond:
            self._received += 1
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._hang_requests or self._stopping)
            if self._stopping:
                h.close_connection = True
                return
        authed = self._authenticate(h)
        if not authed:
            self._record(h, params, "", 401, False)
            self._reply(h, 401, _status(401, "Unauthorized", "Unauthorized"))
            return
        route = self._route(url.path)
        if route is None:
            self._record(h, params, "", 404, True)
            self._reply(h, 404, _status(404, "NotFound", "the server could not find the requested resource"))
            return
        resource, namespace, name = route
        verb = "get" if name is not None else ("watch" if _go_bool(params.get("watch")) else "list")
        headers = [("Warning", _ENDPOINTS_WARNING)] if resource is ENDPOINTS else []
        denial = self._forbidden(verb, resource, namespace)
        if denial is not None:
            self._record(h, params, verb, 403, True)
            self._reply(h, 403, denial, headers)
            return
        try:
            spec = _Spec(resource, namespace, LabelSelector.parse(params.get("labelSelector")),
                         FieldSelector.parse(params.get("fieldSelector")))
        except SelectorError as exc:
            self._record(h, params, verb, 400, True)
            self._reply(h, 400, _status(400, "BadRequest", f"unable to parse requirement: {exc}"), headers)
            return
        if verb == "get":
            assert name is not None and namespace is not None
            self._serve_one(h, params, resource, namespace, name, headers)
        elif verb == "list":
            self._serve_list(h, params, spec, headers)
        else:
            self._serve_watch(h, params, spec, headers)

    def _serve_one(self, h: _Handler, params: Mapping[str, str], resource: Resource, namespace: str, name: str,
                   headers: Sequence[tuple[str, str]]) -> None:
        with self._cond:
            obj = self._objects.get((resource.plural, namespace, name))
            body = None if obj is None else _with_kind(resource, obj)
        if body is None:
            self._record(h, params, "get", 404, True)
            self._reply(h, 404, _status(404, "NotFound", f'{resource.qualified} "{name}" not found',
                                        {"name": name, "group": resource.group, "kind": resource.plural}), headers)
            return
        self._record(h, params, "get", 200, True)
        self._reply(h, 200, body, headers)

    def _parse_rv(self, value: str | None) -> int | None:
        if value is None or value in ("", "0"):
            return None
        if not value.isdigit():
            raise ValueError(f"resourceVersion: Invalid value: {value!r}: must be an unsigned integer")
        return int(value)

    def _serve_list(self, h: _Handler, params: Mapping[str, str], spec: _Spec,
                    headers: Sequence[tuple[str, str]]) -> None:
        match = params.get("resourceVersionMatch", "")
        try:
            rv = self._parse_rv(params.get("resourceVersion"))
        except ValueError as exc:
            self._record(h, params, "list", 400, True)
            self._reply(h, 400, _status(400, "BadRequest", str(exc)), headers)
            return
        if match not in ("", "NotOlderThan", "Exact") or (match and rv is None and match == "Exact"):
            self._record(h, params, "list", 422, True)
            self._reply(h, 422, _status(422, "Invalid", f"resourceVersionMatch: Unsupported value: {match!r}"),
                        headers)
            return
        with self._cond:
            current = self._rv
            code, body = 200, None
            if rv is not None and rv > current:
                code, body = 504, _status(504, "Timeout", f"Too large resource version: {rv}, current: {current}",
                                          {"causes": [{"reason": "ResourceVersionTooLarge",
                                                       "message": "Too large resource version"}],
                                           "retryAfterSeconds": 1})
            elif match == "Exact" and rv is not None and rv < self._compacted:
                code, body = 410, _status(410, "Expired", "The resourceVersion for the provided list is too old.")
            else:
                at = rv if match == "Exact" else None
                items = self._select(spec, at)
                body = {
                    "kind": spec.resource.kind + "List",
                    "apiVersion": spec.resource.api_version,
                    "metadata": {"resourceVersion": str(at if at is not None else current)},
                    "items": [copy.deepcopy(o) for o in items],
                }
                self._lists += 1
        self._record(h, params, "list", code, True)
        self._reply(h, code, body, headers)

    def _serve_watch(self, h: _Handler, params: Mapping[str, str], spec: _Spec,
                     headers: Sequence[tuple[str, str]]) -> None:
        bookmarks = _go_bool(params.get("allowWatchBookmarks"))
        initial_events = _go_bool(params.get("sendInitialEvents"))
        try:
            rv = self._parse_rv(params.get("resourceVersion"))
            timeout = int(params.get("timeoutSeconds") or 1800)
        except ValueError as exc:
            self._record(h, params, "watch", 400, True)
            self._reply(h, 400, _status(400, "BadRequest", str(exc)), headers)
            return
        if initial_events and (not bookmarks or params.get("resourceVersionMatch") != "NotOlderThan"):
            self._record(h, params, "watch", 422, True)
            self._reply(h, 422, _status(422, "Invalid", "sendInitialEvents needs allowWatchBookmarks=true and "
                                                        "resourceVersionMatch=NotOlderThan"), headers)
            return
        watch = _Watch(spec, bookmarks, h.connection)
        gone: dict[str, Any] | None = None
        with self._cond:
            if rv is not None and rv < self._compacted and not initial_events:
                gone = _status(410, "Expired", f"too old resource version: {rv} ({self._compacted})")
            else:
                if rv is None or initial_events:
                    for obj in self._select(spec):
                        watch.queue.append(("ADDED", _with_kind(spec.resource, obj)))
                    if initial_events:
                        marker = {"kind": spec.resource.kind, "apiVersion": spec.resource.api_version,
                                  "metadata": {"resourceVersion": str(self._rv),
                                               "annotations": {"k8s.io/initial-events-end": "true"}}}
                        watch.queue.append(("BOOKMARK", marker))
                else:
                    for change in self._log:
                        if change.rv > rv:
                            event = spec.event(change)
                            if event is not None:
                                watch.queue.append(event)
                self._watches.append(watch)
                self._watches_started += 1
        if gone is not None and self.watch_gone == "status":
            self._record(h, params, "watch", 410, True)
            self._reply(h, 410, gone, headers)
            return
        self._record(h, params, "watch", 200, True)
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.send_header("Cache-Control", "no-cache, private")
            for name, value in headers:
                h.send_header(name, value)
            h.end_headers()
            if gone is not None:
                _chunk(h, {"type": "ERROR", "object": gone})
                _end(h)
                return
            h.wfile.flush()
            with self._cond:
                watch.streaming = True
                self._cond.notify_all()
            self._stream(h, watch, timeout)
        except OSError:
            h.close_connection = True
        finally:
            with self._cond:
                if watch in self._watches:
                    self._watches.remove(watch)
                self._cond.notify_all()

    def _stream(self, h: _Handler, watch: _Watch, timeout: int) -> None:
        start = time.monotonic()
        deadline = start + timeout
        interval = self.bookmark_interval
        next_bookmark = start + interval if watch.bookmarks and interval else float("inf")
        while True:
            out: list[dict[str, Any]] = []
            end = ""
            with self._cond:
                while True:
                    now = time.monotonic()
                    if self._stopping or watch.mode == "broken" or _client_gone(watch.conn):
                        end = "cut"
                        break
                    if watch.mode == "hung":
                        self._cond.wait(_POLL)
                        continue
                    if watch.queue:
                        out = [{"type": t, "object": o} for t, o in watch.queue]
                        watch.queue.clear()
                        break
                    if watch.mode == "expired":
                        out = [{"type": "ERROR", "object": _status(
                            410, "Expired", f"The resourceVersion for the provided watch is too old. ({self._rv})")}]
                        end = "clean"
                        break
                    if watch.bookmark_now or now >= next_bookmark:
                        watch.bookmark_now = False
                        next_bookmark = now + interval if interval else float("inf")
                        out = [{"type": "BOOKMARK", "object": {
                            "kind": watch.spec.resource.kind, "apiVersion": watch.spec.resource.api_version,
                            "metadata": {"resourceVersion": str(self._rv)}}}]
                        break
                    if watch.mode == "closed" or now >= deadline:
                        end = "clean"
                        break
                    # Wake now and then to notice a client that went away, as the
                    # API server ends a watch whose connection closed.
                    self._cond.wait(min(deadline, next_bookmark, now + _POLL) - now)
            if end == "cut":
                h.close_connection = True
                _cut(h.connection)
                return
            for event in out:
                _chunk(h, event)
            if end == "clean":
                _end(h)
                return


def kubeconfig(server: str, *, namespace: str | None = None, token: str | None = None,
               context: str = "discovery-test", ca_file: str | Path | None = None) -> dict[str, Any]:
    """A kubeconfig (as a dict) with one context, ``context``, that reaches ``server`` (a URL).

    ``token`` is the bearer token (None: no credentials); ``namespace`` the
    context's namespace; ``ca_file`` the CA of an HTTPS server's certificate.
    """
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    ctx: dict[str, Any] = {"cluster": context, "user": context}
    if namespace is not None:
        ctx["namespace"] = namespace
    user: dict[str, Any] = {} if token is None else {"token": token}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": context, "cluster": cluster}],
        "users": [{"name": context, "user": user}],
        "contexts": [{"name": context, "context": ctx}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: str | Path, server: str, **kwargs: Any) -> Path:
    """Write :func:`kubeconfig` (same keyword arguments) to ``path`` (mode 0600); returns the path."""
    return _write_yaml(path, kubeconfig(server, **kwargs))


def _write_yaml(path: str | Path, data: Mapping[str, Any]) -> Path:
    import yaml

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(dict(data), default_flow_style=False))
    out.chmod(0o600)
    return out


def _at(obj: Mapping[str, Any] | None, rv: int) -> dict[str, Any]:
    """A copy of ``obj`` stamped with resourceVersion ``rv`` (a deletion's own version)."""
    out = copy.deepcopy(dict(obj or {}))
    out["metadata"] = dict(out.get("metadata") or {})
    out["metadata"]["resourceVersion"] = str(rv)
    return out


def _key(resource: Resource, obj: Mapping[str, Any] | None) -> tuple[str, str, str]:
    meta = (obj or {}).get("metadata") or {}
    return resource.plural, meta.get("namespace") or "default", meta.get("name", "")


def _resource_for(kind: str) -> Resource:
    resource = _BY_KIND.get(kind)
    if resource is None:
        raise ValueError(f"unsupported kind {kind!r}; expected one of {sorted(_BY_KIND)}")
    return resource


def _normalise(resource: Resource, obj: Mapping[str, Any]) -> dict[str, Any]:
    """Store ``obj`` the way the API server returns it (no kind/apiVersion, empty lists as null)."""
    out = copy.deepcopy(dict(obj))
    out.pop("kind", None)
    out.pop("apiVersion", None)
    out["metadata"] = dict(out.get("metadata") or {})
    if resource is ENDPOINT_SLICES:
        for list_field in ("endpoints", "ports"):
            if not out.get(list_field):
                out[list_field] = None
    elif not out.get("subsets"):
        out.pop("subsets", None)
    return out


def _client_gone(conn: socket.socket) -> bool:
    """True when a watching client closed its end (it sends nothing else while a watch streams)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _chunk(h: _Handler, event: Mapping[str, Any]) -> None:
    data = json.dumps(event).encode() + b"\n"
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def _end(h: _Handler) -> None:
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()


def _cut(conn: socket.socket) -> None:
    """Shut a connection down in both directions at once (a blocked reader or writer wakes)."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)

