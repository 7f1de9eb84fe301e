"""Cluster access as the kubernetes client does it: a kubeconfig or the pod's service account.

:func:`find_access` decides, at build time and from files only, how to reach
the API server and which namespace to read; :func:`open_client` loads the
credentials (which may run a kubeconfig's exec plugin) on the watch thread
and returns an API client whose connections :meth:`Client.interrupt` can cut
at once, so ``close()`` never waits for a pending watch.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.incluster_config import InClusterConfigLoader

from discovery.errors import ConfigError, ResolverError

from ._config import KubeConfig, KubeTarget

__all__ = ["SERVICE_ACCOUNT_DIR", "Client", "ClusterAccess", "find_access", "open_client"]

#: Where Kubernetes mounts a pod's service account: token, ca.crt, namespace.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True, slots=True)
class ClusterAccess:
    """How to reach the API server and which namespace to read; no secrets held here.

    ``mode`` is ``"kubeconfig"`` (``kubeconfig`` is the path, or a
    ``os.pathsep``-separated list as in ``$KUBECONFIG``, and ``context`` the
    context, None for the current one) or ``"in-cluster"`` (the service
    account under ``service_account_dir``). ``namespace_source`` says where
    the namespace came from, for messages.
    """

    mode: str
    namespace: str
    namespace_source: str
    kubeconfig: str | None = None
    context: str | None = None
    service_account_dir: str = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] | None = None

    @property
    def description(self) -> str:
        if self.mode == "in-cluster":
            return "the pod's service account"
        ctx = f"context {self.context!r}" if self.context else "the current context"
        return f"{ctx} of kubeconfig {self.kubeconfig}"


def _expand(path: str, environ: Mapping[str, str]) -> str:
    if path == "~" or path.startswith("~/"):
        home = environ.get("HOME") or os.path.expanduser("~")
        return home + path[1:]
    return path


def _kubeconfig_contexts(paths: str, where: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every context of the kubeconfig (merged over a path list) and the current one."""
    try:
        contexts, current = k8s_config.list_kube_config_contexts(paths)
    except Exception as exc:  # ConfigException, YAML errors, unreadable files
        raise ConfigError(f"cannot read the kubeconfig {paths}: {type(exc).__name__}: {exc}", key_path=where) from exc
    return [c for c in contexts if isinstance(c, dict)], current if isinstance(current, dict) else None


def _pod_namespace(sa_dir: str) -> str | None:
    try:
        text = (Path(sa_dir) / "namespace").read_text().strip()
    except OSError:
        return None
    return text or None


def find_access(target: KubeTarget, config: KubeConfig, *, environ: Mapping[str, str] | None = None,
                service_account_dir: str = SERVICE_ACCOUNT_DIR) -> ClusterAccess:
    """Decide how to reach the cluster, as the kubernetes client would; ConfigError if there is no way.

    An explicit ``kubeconfig`` (or ``context``) option wins; else the pod's
    service account when running in a pod (``KUBERNETES_SERVICE_HOST`` set
    and a token mounted); else ``$KUBECONFIG`` or ``~/.kube/config``.
    Namespace: the target's, the ``namespace`` option, the kubeconfig
    context's, the pod's own, then ``default``. Reads files only.
    """
    env = os.environ if environ is None else environ
    in_cluster = (bool(env.get("KUBERNETES_SERVICE_HOST")) and bool(env.get("KUBERNETES_SERVICE_PORT"))
                  and (Path(service_account_dir) / "token").is_file())
    mode = "kubeconfig"
    paths: str | None = None
    where = "kubeconfig"
    if config.kubeconfig is not None:
        paths = _expand(config.kubeconfig, env)
        if not Path(paths).is_file():
            raise ConfigError(f"no kubeconfig file at {paths}", key_path="kubeconfig")
    elif config.context is None and in_cluster:
        mode = "in-cluster"
    else:
        paths = env.get("KUBECONFIG") or "~/.kube/config"
        expanded = [_expand(p, env) for p in paths.split(os.pathsep) if p]
        paths = os.pathsep.join(expanded)
        where = "context" if config.context is not None else "kubeconfig"
        if not any(Path(p).is_file() for p in expanded):
            raise ConfigError(
                "no cluster access: not running in a pod (KUBERNETES_SERVICE_HOST unset or no service account "
                f"token), and no kubeconfig at {paths or '~/.kube/config'}; set $KUBECONFIG or the resolver "
                "option kubeconfig", key_path=where)
    context_namespace = None
    if mode == "kubeconfig":
        assert paths is not None
        contexts, current = _kubeconfig_contexts(paths, where)
        if config.context is not None:
            chosen = next((c for c in contexts if c.get("name") == config.context), None)
            if chosen is None:
                names = ", ".join(sorted(str(c.get("name")) for c in contexts)) or "none"
                raise ConfigError(f"the kubeconfig {paths} has no context {config.context!r} (it has: {names})",
                                  key_path="context")
        else:
            chosen = current
            if chosen is None:
                raise ConfigError(f"the kubeconfig {paths} has no current-context; set the resolver option context",
                                  key_path="context")
        ns = (chosen.get("context") or {}).get("namespace")
        context_namespace = ns if isinstance(ns, str) and ns else None
    for source, value in (("the target", target.namespace), ("the namespace option", config.namespace),
                          ("the kubeconfig context", context_namespace),
                          ("the pod's namespace", _pod_namespace(service_account_dir))):
        if value:
            namespace, namespace_source = value, source
            break
    else:
        namespace, namespace_source = "default", "the default"
    return ClusterAccess(mode=mode, namespace=namespace, namespace_source=namespace_source, kubeconfig=paths,
                         context=config.context, service_account_dir=service_account_dir,
                         environ=None if environ is None else dict(environ))


class _TokenFile:
    """Re-reads a projected service-account token whenever the kubelet rotates the file.

    The client's own in-cluster loader re-reads it once a minute; this checks
    the file's identity (inode, mtime, size) on every request instead, which
    costs one ``stat`` and never sends a token the kubelet already replaced.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._header: str | None = None

    def __call__(self, configuration: Any) -> None:
        with self._lock:
            try:
                st = self._path.stat()
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                if stamp != self._stamp:
                    token = self._path.read_text().strip()
                    if token:
                        self._stamp, self._header = stamp, "Bearer " + token
            except OSError:
                pass  # keep the last token; a 401 will say so if it stopped working
            if self._header is not None:
                configuration.api_key["BearerToken"] = self._header


class _Tracker:
    """Knows every connection of one API client, so :meth:`interrupt` can shut them all down at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: weakref.WeakSet[Any] = weakref.WeakSet()
        self._closed = False

    def adopt(self, conn: Any) -> None:
        with self._lock:
            self._conns.add(conn)

    def after_connect(self, conn: Any) -> None:
        # A connection that finished connecting after interrupt() is shut at once.
        with self._lock:
            closed = self._closed
        if closed:
            _shut(getattr(conn, "sock", None))

    def interrupt(self) -> None:
        with self._lock:
            self._closed = True
            conns = list(self._conns)
        for conn in conns:
            _shut(getattr(conn, "sock", None))

    def install(self, pool_manager: Any) -> bool:
        """Make ``pool_manager`` build tracked connections; False for a manager it cannot track (SOCKS)."""
        if type(pool_manager) not in (urllib3.PoolManager, urllib3.ProxyManager):
            return False
        tracker = self

        class _HTTPConnection(urllib3.connection.HTTPConnection):
            def connect(self) -> None:
                tracker.adopt(self)
                super().connect()
                tracker.after_connect(self)

        class _HTTPSConnection(urllib3.connection.HTTPSConnection):
            def connect(self) -> None:
                tracker.adopt(self)
                super().connect()
                tracker.after_connect(self)

        class _HTTPPool(urllib3.HTTPConnectionPool):
            ConnectionCls = _HTTPConnection

        class _HTTPSPool(urllib3.HTTPSConnectionPool):
            ConnectionCls = _HTTPSConnection

        pool_manager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        return True


def _shut(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # not connected (yet, or any more)
        sock.shutdown(socket.SHUT_RDWR)


class Client:
    """An API client for one resolver plus the means to cut its connections. Thread-safe."""

    def __init__(self, api: Any, tracker: _Tracker, host: str) -> None:
        self.api = api
        self.host = host
        self._tracker = tracker

    def interrupt(self) -> None:
        """Shut down every connection now: a blocked list or watch fails at once. Permanent."""
        self._tracker.interrupt()
        self.api.rest_client.pool_manager.clear()

    def close(self) -> None:
        self.api.close()


def open_client(access: ClusterAccess) -> Client:
    """Load credentials and build the API client (may run a kubeconfig exec plugin); ResolverError on failure.

    urllib3's own retries are off: the resolver's backoff decides when to try again.
    """
    configuration = k8s_client.Configuration()
    try:
        if access.mode == "in-cluster":
            sa = Path(access.service_account_dir)
            loader = InClusterConfigLoader(token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt"),
                                           try_refresh_token=True,
                                           environ=os.environ if access.environ is None else access.environ)
            loader.load_and_set(configuration)
            configuration.refresh_api_key_hook = _TokenFile(sa / "token")
        else:
            k8s_config.load_kube_config(config_file=access.kubeconfig, context=access.context,
                                        client_configuration=configuration, persist_config=False)
    except Exception as exc:
        # The client's messages name files and keys, never a credential's value.
        raise ResolverError(f"cannot load the cluster credentials from {access.description}: "
                            f"{type(exc).__name__}: {exc}") from exc
    configuration.retries = False
    api = k8s_client.ApiClient(configuration)
    tracker = _Tracker()
    tracker.install(api.rest_client.pool_manager)
    return Client(api, tracker, str(configuration.host))
