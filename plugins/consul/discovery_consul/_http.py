"""The HTTP transport under py-consul's ``requests`` session: timeouts that fit blocking queries, and an interrupt.

py-consul gives every request one timeout number, and closing a ``requests``
session does not wake a thread blocked reading a pending response (urllib3
closes only idle pooled connections). So the resolver mounts
:class:`InterruptibleTransport` on the session:

- the connect timeout is short, and the read timeout of a blocking query
  exceeds its ``wait`` plus the up to ``wait/16`` of jitter the agent adds,
  so a normal long poll is never a timeout;
- every socket it opens is tracked, and :meth:`InterruptibleTransport.interrupt`
  shuts them all down: a thread blocked in a long poll wakes at once with a
  connection error, and no new connection can be made afterwards.

Requests through an HTTP(S) proxy are tracked too; through a SOCKS proxy
they are not, and such a poll ends at its read timeout.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
import weakref
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.poolmanager import ProxyManager

from ._duration import parse_go_duration

__all__ = ["CONNECT_TIMEOUT", "READ_SLACK", "REQUEST_TIMEOUT", "InterruptibleTransport", "read_timeout"]

#: Seconds to set up a TCP (and TLS) connection to the agent.
CONNECT_TIMEOUT = 10.0
#: Seconds an agent may take to answer a query that does not block.
REQUEST_TIMEOUT = 30.0
#: Added to ``wait * 17/16`` for a blocking query: the agent's own work and the network.
READ_SLACK = 10.0
#: The wait the agent uses when a blocking query names none.
_DEFAULT_WAIT = 300.0


def read_timeout(url: str) -> float:
    """The read timeout for a request to ``url``: beyond ``wait * 17/16`` for a blocking query.

    A query with ``index`` blocks for up to ``wait`` (default 5 m) plus a
    random ``wait/16`` (Consul's jitter), then answers; only a read that
    takes longer than that plus :data:`READ_SLACK` is a dead connection.
    """
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query, keep_blank_values=True)
    if "index" not in query:
        return REQUEST_TIMEOUT
    wait = _DEFAULT_WAIT
    if query.get("wait", [""])[-1]:
        with contextlib.suppress(ValueError):
            wait = parse_go_duration(query["wait"][-1]) or _DEFAULT_WAIT
    return wait * 17 / 16 + READ_SLACK


class InterruptibleTransport(HTTPAdapter):
    """A ``requests`` adapter whose connections :meth:`interrupt` can cut from another thread."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._connect_timeout = connect_timeout
        self._tracked_lock = threading.Lock()
        self._tracked: weakref.WeakSet[HTTPConnection] = weakref.WeakSet()
        self._interrupted = False
        self._pool_classes = _tracking_pools(self)
        # One connection is all a watch loop uses; no retries (the watch loop owns retrying).
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)

    # -- tracking -------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        with self._tracked_lock:
            return self._interrupted

    def _check_open(self) -> None:
        if self.interrupted:
            raise requests.ConnectionError("the consul resolver was closed")

    def _track(self, conn: HTTPConnection) -> None:
        with self._tracked_lock:
            interrupted = self._interrupted
            if not interrupted:
                self._tracked.add(conn)
        if interrupted:
            # close() ran while this connection was being set up: cut it now.
            _shutdown(conn)

    def interrupt(self) -> None:
        """Shut down every connection (a pending read fails at once) and refuse new ones. Thread-safe."""
        with self._tracked_lock:
            self._interrupted = True
            conns = list(self._tracked)
        for conn in conns:
            _shutdown(conn)

    # -- requests hooks -----------------------------------------------------------------

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:
            manager.pool_classes_by_scheme = self._pool_classes
        return manager

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        self._check_open()
        # Whatever timeout py-consul computed, use ours: short to connect, wait-aware to read.
        return super().send(request, stream=stream, timeout=(self._connect_timeout, read_timeout(request.url or "")),
                            verify=verify, cert=cert, proxies=proxies)


def _shutdown(conn: HTTPConnection) -> None:
    sock = conn.sock
    if sock is None:
        return
    # The plain socket's shutdown, also for a TLS socket: it wakes a thread blocked
    # reading it (close() from another thread would not) and sends nothing more.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _tracking_pools(transport: InterruptibleTransport) -> dict[str, type[HTTPConnectionPool]]:
    """Connection-pool classes whose connections report themselves to ``transport`` once connected."""
    owner = weakref.ref(transport)

    def track(conn: HTTPConnection) -> None:
        t = owner()
        if t is not None:
            t._track(conn)

    class _Tracked:
        """Mixed into urllib3's connection classes: refuse to connect once interrupted, report when connected."""

        def connect(self) -> None:
            t = owner()
            if t is not None:
                t._check_open()
            super().connect()  # type: ignore[misc]
            track(self)  # type: ignore[arg-type]

    class _Conn(_Tracked, HTTPConnection):
        pass

    class _TLSConn(_Tracked, HTTPSConnection):
        pass

    class _Pool(HTTPConnectionPool):
        ConnectionCls = _Conn

    class _TLSPool(HTTPSConnectionPool):
        ConnectionCls = _TLSConn

    return {"http": _Pool, "https": _TLSPool}
