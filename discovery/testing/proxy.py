"""A TCP proxy on loopback that can turn into a black hole: for keepalive tests.

A backend that hangs (a frozen process, a dropped route) keeps its TCP
connection open and answers nothing. That is what HTTP/2 keepalive is for,
and it cannot be staged with a real server alone: stopping the server closes
the connection. :class:`BlackholeProxy` sits between a client and a real
server, forwards bytes both ways, and on :meth:`~BlackholeProxy.blackhole`
stops forwarding in both directions without closing anything, so the client
sees an open connection that never answers. :meth:`~BlackholeProxy.restore`
resumes forwarding (the bytes held meanwhile are delivered, as when a frozen
process thaws).

Threading: one accept thread plus two pump threads per connection, all
daemons. Every method is thread-safe and returns at once except
:meth:`~BlackholeProxy.close`, which waits for the threads to end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["BlackholeProxy"]

_CHUNK = 65536


class BlackholeProxy:
    """Listens on ``127.0.0.1:<ephemeral>`` and forwards each connection to ``upstream``.

    ``upstream`` is ``(host, port)`` of the real server (a loopback address).
    :attr:`addr` is what the client dials. :meth:`wait_connections` waits, on
    a condition, until that many connections were accepted, and
    :meth:`wait_writes` until the client's side has sent that many more
    reads' worth of bytes (an HTTP/2 keepalive ping on an idle connection is
    one such read: what a keepalive test counts).
    """

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._cond = threading.Condition()
        self._forwarding = True
        self._closed = False
        self._accepted = 0
        self._client_writes = 0
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._start(self._accept_loop, "blackhole-proxy accept")

    @property
    def addr(self) -> str:
        """``host:port`` the client should dial."""
        return f"{self.host}:{self.port}"

    @property
    def accepted(self) -> int:
        """How many client connections were accepted so far."""
        with self._cond:
            return self._accepted

    def blackhole(self) -> None:
        """Stop forwarding in both directions; connections stay open, nothing is answered."""
        with self._cond:
            self._forwarding = False

    def restore(self) -> None:
        """Forward again, delivering what was held while black-holed."""
        with self._cond:
            self._forwarding = True
            self._cond.notify_all()

    @property
    def client_writes(self) -> int:
        """How many reads from client sockets were forwarded so far (each a burst the client sent)."""
        with self._cond:
            return self._client_writes

    def wait_writes(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until :attr:`client_writes` reaches ``n``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._client_writes >= n, timeout)

    def wait_connections(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` connections were accepted; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._accepted >= n, timeout)

    def close(self) -> None:
        """Close the listener and every connection, and join the threads."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            sockets = list(self._sockets)
            self._cond.notify_all()
        self._shutdown(self._listener)
        for s in sockets:
            self._shutdown(s)
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(5)

    def __enter__(self) -> BlackholeProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- internals -------------------------------------------------------------

    def _start(self, target: object, name: str, *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        self._threads.append(t)
        t.start()

    @staticmethod
    def _shutdown(s: socket.socket) -> None:
        # shutdown() wakes a thread blocked in accept()/recv() on this socket;
        # close() alone does not on Linux.
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._cond:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets += [client, server]
                self._accepted += 1
                self._cond.notify_all()
            self._start(self._pump, "blackhole-proxy c->s", client, server, True)
            self._start(self._pump, "blackhole-proxy s->c", server, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(_CHUNK)
            except OSError:
                data = b""
            # Hold what was read while black-holed; deliver it on restore().
            with self._cond:
                self._cond.wait_for(lambda: self._forwarding or self._closed)
                if self._closed:
                    return
            if not data:
                # The peer closed its side: pass the half-close on.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return
            if from_client:
                with self._cond:
                    self._client_writes += 1
                    self._cond.notify_all()
