"""Starting and killing the backend process (:mod:`bench.server`).

The child is killed by PID in ``close()`` (call it from ``finally``), again
from an ``atexit`` hook, and it also exits by itself when its stdin closes.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
from types import TracebackType

__all__ = ["BackendProcess"]


class BackendProcess:
    """``with BackendProcess(n) as bp: bp.ports`` — n loopback ports in a child process."""

    def __init__(self, ports: int, workers: int = 64, timeout: float = 60.0, *, module: str = "bench.server",
                 args: list[str] | None = None) -> None:
        self.n = ports
        extra = ["--ports", str(ports), "--workers", str(workers)] if args is None else args
        self._proc = subprocess.Popen(
            [sys.executable, "-m", module, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        self.pid = self._proc.pid
        atexit.register(self.close)
        try:
            line = self._readline(timeout)
            info = json.loads(line)
        except BaseException:
            self.close()
            raise
        self.ports: list[int] = list(info["ports"])
        self.targets = [f"127.0.0.1:{p}" for p in self.ports]

    def _readline(self, timeout: float) -> str:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        # The child prints one line when it listens; a dead child gives EOF.
        line = self._proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"bench.server exited with {self._proc.wait()} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError("bench.server took too long to start")
        return line

    def close(self) -> None:
        """Kill the child by PID and reap it. Idempotent."""
        p = self._proc
        if p.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                p.wait(5)
            except ProcessLookupError:
                pass
        for f in (p.stdin, p.stdout):
            if f is not None and not f.closed:
                f.close()
        atexit.unregister(self.close)

    def __enter__(self) -> BackendProcess:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
