"""The hosts file (``/etc/hosts``), read as the system resolver reads it.

With no explicit DNS server in the target, the system resolver (glibc with
``hosts: files dns``, Go's resolver, grpcio) answers a name listed in the
hosts file from that file and asks DNS only for names it does not list. The
``dns:`` resolver does the same, so ``dns:///localhost:50051`` works.
"""

from __future__ import annotations

import ipaddress
import os
import threading

__all__ = ["DEFAULT_HOSTS_FILE", "HOSTS_TTL", "HostsFile", "parse_hosts"]

#: Where the system keeps it (POSIX); the ``hosts_file`` option overrides it.
DEFAULT_HOSTS_FILE = "/etc/hosts"
#: How long an answer from the hosts file counts as fresh (it has no TTL): the
#: file is looked at again this often, clamped to [min_interval, max_interval].
HOSTS_TTL = 30.0


def parse_hosts(text: str) -> dict[str, tuple[str, ...]]:
    """Name (lower case, no trailing dot) -> its addresses in file order, without duplicates.

    Each line is ``ADDRESS NAME [ALIAS...]``; ``#`` starts a comment. A line
    whose first field is not an IP address is skipped, as the system does.
    """
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            key = name.rstrip(".").lower()
            if key:
                ips = table.setdefault(key, [])
                if ip not in ips:
                    ips.append(ip)
    return {name: tuple(ips) for name, ips in table.items()}


class HostsFile:
    """One hosts file, re-read when it changes (the system resolver re-reads it too). Thread-safe.

    A file that is missing or unreadable lists nothing: every name goes to DNS.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, tuple[str, ...]] = {}

    def lookup(self, name: str) -> tuple[str, ...]:
        """The addresses the file lists for ``name`` (any case, trailing dot or not); () if none."""
        return self._current().get(name.rstrip(".").lower(), ())

    def _current(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    with open(self.path, encoding="utf-8", errors="replace") as f:
                        self._table = parse_hosts(f.read())
                    self._stamp = stamp
            except OSError:
                self._stamp = None
                self._table = {}
            return self._table
