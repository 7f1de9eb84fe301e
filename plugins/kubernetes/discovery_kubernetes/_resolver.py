"""The ``kubernetes:`` resolver: list, then watch, a Service's EndpointSlices (or Endpoints), by the book."""

from __future__ import annotations

import json
import logging
import math
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from discovery.clock import SYSTEM_CLOCK, Backoff, Clock
from discovery.errors import ResolverError
from discovery.resolver import (
    Resolver,
    ResolverBuilder,
    ResolverListener,
    ResolverOptions,
    WatchContext,
    WatchResolver,
)
from discovery.target import Target

from ._cluster import SERVICE_ACCOUNT_DIR, Client, ClusterAccess, find_access, open_client
from ._config import DEFAULT_WATCH_TIMEOUT, KubeConfig, KubeTarget, parse_config, parse_target
from ._view import EndpointView

__all__ = ["K8sResolverBuilder", "KubernetesResolver", "KubernetesResolverBuilder", "reconnect_backoff"]

log = logging.getLogger("discovery_kubernetes")

#: Seconds to wait for a TCP (and TLS) connection to the API server.
CONNECT_TIMEOUT = 10.0
#: Seconds a list may stay silent before it counts as failed.
LIST_TIMEOUT = 60.0
#: The label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def reconnect_backoff() -> Backoff:
    """client-go's reflector backoff: 800 ms, doubling, capped at 30 s, jittered."""
    return Backoff(initial=0.8, multiplier=2.0, jitter=0.2, maximum=30.0)


class _Relist(Exception):
    """The watch cannot continue from its resourceVersion (410 Gone): list again."""


def _status_message(exc: ApiException) -> str:
    """The API server's own message from a Status body, else the HTTP reason."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"]:
        return str(body["message"])
    return str(exc.reason or "no reason given")


class KubernetesResolver(Resolver):
    """Watches one Service's endpoints on a daemon thread (a :class:`~discovery.resolver.WatchResolver`).

    Each run of the watch loop lists the Service's EndpointSlices (selected by
    the label ``kubernetes.io/service-name``) when it has no resourceVersion
    to continue from, publishes the merged set, then opens one watch from
    that resourceVersion with bookmarks and applies its events one by one,
    publishing the complete set after each. A watch that ends (its
    ``timeoutSeconds``, a cut connection, nothing at all for ``watch_timeout``)
    is opened again from the last resourceVersion seen; 410 Gone means a
    fresh list, whose result replaces the set in one step. Any other failure
    is reported to the channel, which keeps the last good set, and retried
    after a backoff (800 ms doubling to 30 s, jittered; it starts over after a
    healthy run), always with a fresh list.

    :meth:`close` returns at once and shuts down the connection of a pending
    list or watch, so the thread ends at once too.
    """

    def __init__(self, target: KubeTarget, config: KubeConfig, access: ClusterAccess, listener: ResolverListener,
                 *, clock: Clock = SYSTEM_CLOCK, backoff: Backoff | None = None,
                 client_factory: Callable[[ClusterAccess], Client] = open_client) -> None:
        self._name = f"kubernetes:{target.service}.{access.namespace}"
        self._watcher = WatchResolver(listener, self._run_once, name=self._name, clock=clock,
                                      backoff=backoff or reconnect_backoff())
        self._target = target
        self._config = config
        self._access = access
        self._client_factory = client_factory
        self._view = EndpointView(target, access.namespace, kind=config.endpoints_api,
                                  keep_serving_terminating=config.keep_serving_terminating)
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._rv: str | None = None
        self._rng = random.Random()
        self._stats_lock = threading.Lock()
        self._lists = 0
        self._watches = 0

    # -- public ------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``kubernetes:SERVICE.NAMESPACE``; also names the logger ``discovery.resolver.<name>``."""
        return self._name

    def start(self) -> None:
        """Start the watch thread (the first list runs at once). Never blocks."""
        self._watcher.start()

    def resolve_now(self) -> None:
        """Nothing to do: a watch learns every change as it happens. Never blocks."""
        self._watcher.resolve_now()

    def join(self, timeout: float | None = None) -> bool:
        """Wait (real time) for the thread to end after :meth:`close`; True if it has."""
        return self._watcher.join(timeout)

    @property
    def target(self) -> KubeTarget:
        return self._target

    @property
    def namespace(self) -> str:
        """The namespace read (see :func:`~discovery_kubernetes.find_access` for the precedence)."""
        return self._access.namespace

    @property
    def access(self) -> ClusterAccess:
        return self._access

    @property
    def lists(self) -> int:
        """Lists sent so far."""
        with self._stats_lock:
            return self._lists

    @property
    def watches(self) -> int:
        """Watch requests sent so far."""
        with self._stats_lock:
            return self._watches

    def close(self) -> None:
        """Stop. Returns at once; a pending list or watch is cut. Thread-safe and idempotent."""
        self._watcher.close()
        with self._client_lock:
            c = self._client
        if c is not None:
            c.interrupt()

    def __repr__(self) -> str:
        return (f"<KubernetesResolver {self._target.service}.{self._access.namespace} "
                f"port={self._target.port!r} via {self._access.description}>")

    # -- the watch loop (one run) ----------------------------------------------------------------

    @property
    def _resource(self) -> str:
        if self._config.endpoints_api == "endpoints":
            return 'endpoints (API group "")'
        return 'endpointslices (API group "discovery.k8s.io")'

    def _get_client(self, ctx: WatchContext) -> Client:
        with self._client_lock:
            c = self._client
        if c is None:
            c = self._client_factory(self._access)
            with self._client_lock:
                self._client = c
            # close() may have run before the client existed: it could not cut it then.
            if ctx.stopped:
                c.interrupt()
        return c

    def _run_once(self, ctx: WatchContext) -> None:
        c = self._get_client(ctx)
        unregister = ctx.on_interrupt(c.interrupt)
        try:
            for _ in range(2):
                if self._rv is None:
                    self._relist(ctx, c)
                if ctx.stopped:
                    return
                try:
                    self._watch_once(ctx, c)
                    return
                except _Relist:
                    # List again: at once the first time; a second 410 in a row
                    # waits for the next run (at most one run a second).
                    self._rv = None
        except BaseException:
            # After a failure the next run starts from a fresh list: the API
            # server may have restarted, and its history with it.
            self._rv = None
            if ctx.stopped:
                return
            raise
        finally:
            unregister()
            if ctx.stopped:
                c.close()

    def _request(self, c: Client, **kwargs: Any) -> Any:
        """One list or watch request; the raw urllib3 response (the JSON is read here, tolerantly)."""
        namespace = self._access.namespace
        if self._config.endpoints_api == "endpoints":
            return k8s_client.CoreV1Api(c.api).list_namespaced_endpoints(
                namespace, field_selector=f"metadata.name={self._target.service}", _preload_content=False, **kwargs)
        return k8s_client.DiscoveryV1Api(c.api).list_namespaced_endpoint_slice(
            namespace, label_selector=f"{SERVICE_NAME_LABEL}={self._target.service}", _preload_content=False,
            **kwargs)

    def _error(self, verb: str, c: Client, exc: BaseException) -> ResolverError:
        """A ResolverError that says what failed and what to do; it never carries a credential."""
        where = f"{self._target.service} in namespace {self._access.namespace} (from {self._access.namespace_source})"
        if isinstance(exc, ApiException):
            status = exc.status
            said = _status_message(exc)
            if status == 401:
                return ResolverError(
                    f"the Kubernetes API at {c.host} rejected the credentials of {self._access.description} "
                    f"(401 Unauthorized) to {verb} {self._resource} of {where}: {said}")
            if status == 403:
                return ResolverError(
                    f"RBAC denies the {verb} of {self._resource} in namespace {self._access.namespace} "
                    f"(403 Forbidden: {said}); the resolver needs the verbs list and watch on that resource: "
                    "grant them with a Role and RoleBinding (see the discovery-kubernetes README)")
            if status == 404 and self._config.endpoints_api == "slices":
                return ResolverError(
                    f"the Kubernetes API at {c.host} has no discovery.k8s.io/v1 EndpointSlices (404: {said}); "
                    'Kubernetes before 1.21? set the resolver option endpoints_api = "endpoints"')
            return ResolverError(f"{verb} of {self._resource} of {where} at {c.host} failed: "
                                 f"{status} {exc.reason}: {said}")
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return ResolverError(f"cannot reach the Kubernetes API at {c.host} to {verb} {self._resource} of "
                                 f"{where}: {type(exc).__name__}: {exc}")
        return ResolverError(f"{verb} of {self._resource} of {where} failed: {type(exc).__name__}: {exc}")

    def _publish_view(self, ctx: WatchContext) -> None:
        result = self._view.state()
        if isinstance(result, ResolverError):
            ctx.report_error(result)
        else:
            ctx.publish(result)

    def _relist(self, ctx: WatchContext, c: Client) -> None:
        with self._stats_lock:
            self._lists += 1
        try:
            resp = self._request(c, _request_timeout=(CONNECT_TIMEOUT, LIST_TIMEOUT))
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
        except ApiException as exc:
            raise self._error("list", c, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._error("list", c, exc) from exc
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ResolverError(f"the list of {self._resource} from {c.host} is not a List object")
        rv = body["metadata"].get("resourceVersion")
        items = body.get("items")
        if not isinstance(rv, str) or not rv or not isinstance(items, list | type(None)):
            raise ResolverError(f"the list of {self._resource} from {c.host} has no resourceVersion or items")
        # One complete snapshot replaces the old set in one step: no transient empty set.
        self._view.replace_all(items or [])
        self._rv = rv
        self._publish_view(ctx)

    def _watch_timeout(self) -> float:
        if self._config.watch_timeout is not None:
            return self._config.watch_timeout
        low, high = DEFAULT_WATCH_TIMEOUT
        return self._rng.uniform(low, high)

    def _watch_once(self, ctx: WatchContext, c: Client) -> None:
        timeout = self._watch_timeout()
        with self._stats_lock:
            self._watches += 1
        try:
            # timeoutSeconds ends the watch server-side; the read timeout drops
            # a connection that brings nothing, not even a bookmark, for as
            # long (a silently dead connection must not freeze the set).
            resp = self._request(c, watch=True, resource_version=self._rv, allow_watch_bookmarks=True,
                              timeout_seconds=max(1, math.ceil(timeout)),
                              _request_timeout=(CONNECT_TIMEOUT, timeout))
        except ApiException as exc:
            if exc.status == 410:
                log.debug("watch of %s from resourceVersion %s: 410 Gone; listing again", self.name, self._rv)
                raise _Relist() from exc
            raise self._error("watch", c, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._error("watch", c, exc) from exc
        try:
            for line in iter_resp_lines(resp):
                if ctx.stopped:
                    return
                if line:
                    self._event(ctx, c, line)
        except urllib3.exceptions.ReadTimeoutError:
            if not ctx.stopped:
                log.info("the watch of %s brought nothing for %.3gs, not even a bookmark; watching again from "
                         "resourceVersion %s", self.name, timeout, self._rv)
        except (urllib3.exceptions.ProtocolError, OSError) as exc:
            if not ctx.stopped:
                # A cut watch continues from the last resourceVersion; if the
                # API server is gone, that next request fails and backs off.
                log.debug("the watch of %s was cut (%s); watching again from resourceVersion %s",
                          self.name, exc, self._rv)
        finally:
            resp.close()
            resp.release_conn()

    def _event(self, ctx: WatchContext, c: Client, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise ResolverError(f"the watch of {self._resource} from {c.host} sent a line that is not JSON") from exc
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if kind == "ERROR":
            status: Mapping[str, Any] = obj if isinstance(obj, dict) else {}
            if status.get("code") == 410:
                log.debug("watch of %s: %s; listing again", self.name, status.get("message"))
                raise _Relist()
            raise ResolverError(f"the watch of {self._resource} of {self._target.service} in namespace "
                                f"{self._access.namespace} failed: {status.get('code')} {status.get('reason')}: "
                                f"{status.get('message')}")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if kind == "BOOKMARK":
            if isinstance(rv, str) and rv:
                self._rv = rv
            state = self._view.state()
            if not isinstance(state, ResolverError):
                ctx.publish(state)  # unchanged, so dropped, but it marks the run healthy
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not isinstance(rv, str) or not rv:
            log.warning("ignoring a watch event of %s without a known type or resourceVersion: %.200s",
                        self.name, line)
            return
        self._view.apply(kind, obj)
        self._rv = rv
        self._publish_view(ctx)


class KubernetesResolverBuilder(ResolverBuilder):
    """Builds :class:`KubernetesResolver` for ``kubernetes:`` targets.

    ``kubernetes:///SERVICE[.NAMESPACE][:PORT]`` or
    ``kubernetes://NAMESPACE/SERVICE[:PORT]`` (kuberesolver's forms); PORT
    is a number (used as is) or a port name. Options
    (``[services.x.resolver]``): ``kubeconfig``, ``context``, ``namespace``,
    ``watch_timeout``, ``endpoints_api``, ``keep_serving_terminating``; see
    the README.

    ``environ`` and ``service_account_dir`` replace ``os.environ`` and the
    pod's service-account mount (for tests); ``client_factory`` builds the
    API client from the access found.
    """

    scheme = "kubernetes"

    def __init__(self, *, environ: Mapping[str, str] | None = None,
                 service_account_dir: str = SERVICE_ACCOUNT_DIR,
                 client_factory: Callable[[ClusterAccess], Client] = open_client,
                 backoff: Callable[[], Backoff] = reconnect_backoff) -> None:
        self.environ = environ
        self.service_account_dir = service_account_dir
        self.client_factory = client_factory
        self.backoff = backoff

    def check(self, target: Target, options: ResolverOptions) -> None:
        """Validate the target and the options (no file or network access: config files stay portable)."""
        parse_config(options.config)
        parse_target(target)

    def build(self, target: Target, listener: ResolverListener, options: ResolverOptions) -> KubernetesResolver:
        """Validate, find the cluster access (reads the kubeconfig), and start watching. No network I/O."""
        config = parse_config(options.config)
        kube_target = parse_target(target)
        access = find_access(kube_target, config, environ=self.environ,
                             service_account_dir=self.service_account_dir)
        resolver = KubernetesResolver(kube_target, config, access, listener, clock=options.clock,
                                      backoff=self.backoff(), client_factory=self.client_factory)
        resolver.start()
        return resolver

    def default_authority(self, target: Target) -> str | None:
        """``SERVICE.NAMESPACE.svc`` (the name a Service's certificate carries), with a numeric port if given."""
        try:
            t = parse_target(target)
        except Exception:
            return target.endpoint
        host = f"{t.service}.{t.namespace}.svc" if t.namespace else t.service
        return f"{host}:{t.port}" if isinstance(t.port, int) else host


class K8sResolverBuilder(KubernetesResolverBuilder):
    """The same resolver under the alias scheme ``k8s:``."""

    scheme = "k8s"
