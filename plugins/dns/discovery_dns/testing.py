"""A real authoritative DNS server (Knot) on loopback, for integration tests.

:class:`KnotServer` writes a Knot config and one zone file into a work
directory, runs ``knotd -c CONF`` in the foreground as a child process on
``127.0.0.1`` at a free UDP+TCP port, waits until it answers a SOA query and
lets tests change records with RFC 2136 dynamic updates over TCP::

    with KnotServer(tmp_path, records=["orders 2 A 127.0.0.2"]) as knot:
        target = f"dns://{knot.address}/orders.{knot.zone_name}:50051"
        knot.add("orders", "A", "127.0.0.3", ttl=2)

Nothing here is imported by the resolver itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.update

__all__ = ["KnotServer", "free_port"]

_KNOT_CONF = """\
server:
    rundir: "{rundir}"
    listen: {host}@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1

log:
  - target: stderr
    any: info

database:
    storage: "{storage}"

acl:
  - id: local_update
    address: {host}
    action: update

template:
  - id: default
    storage: "{storage}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: changes

zone:
  - domain: {zone}
    file: "{zonefile}"
    acl: local_update
"""


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` right now."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


class KnotServer:
    """One ``knotd`` serving ``zone`` on ``host`` (a loopback address).

    ``records`` are zone-file lines relative to the zone (``"a 2 A 127.0.0.2"``);
    the zone's SOA and NS come first. Dynamic updates from ``host`` are allowed.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        records: Iterable[str] = (),
        *,
        zone: str = "test.internal.",
        host: str = "127.0.0.1",
        default_ttl: int = 2,
        knotd: str | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.zone = dns.name.from_text(zone)
        self.host = host
        self.default_ttl = default_ttl
        self.records = list(records)
        self.knotd = knotd or shutil.which("knotd") or "/usr/sbin/knotd"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "knot.log"
        self.conf_path = self.workdir / "knot.conf"

    # -- names ---------------------------------------------------------------

    @property
    def zone_name(self) -> str:
        """The zone without its trailing dot (``test.internal``)."""
        return self.zone.to_text(omit_final_dot=True)

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: the authority of a ``dns://`` target."""
        return f"{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        return [self.knotd, "-c", str(self.conf_path)]

    def fqdn(self, name: str) -> str:
        """``name.test.internal`` for a relative ``name`` (``@`` is the apex)."""
        if name == "@":
            return self.zone_name
        if name.endswith("."):
            return name.rstrip(".")
        return f"{name}.{self.zone_name}"

    # -- lifecycle -------------------------------------------------------------

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "run").mkdir(exist_ok=True)
        (self.workdir / "db").mkdir(exist_ok=True)
        zonefile = self.workdir / f"{self.zone_name}.zone"
        lines = [
            f"$ORIGIN {self.zone.to_text()}",
            f"$TTL {self.default_ttl}",
            f"@ SOA ns.{self.zone.to_text()} admin.{self.zone.to_text()} 1 60 60 3600 {self.default_ttl}",
            "@ NS ns",
            f"ns A {self.host}",
            *self.records,
            "",
        ]
        zonefile.write_text("\n".join(lines))
        self.conf_path.write_text(
            _KNOT_CONF.format(
                rundir=self.workdir / "run",
                storage=self.workdir / "db",
                host=self.host,
                port=self.port,
                zone=self.zone.to_text(),
                zonefile=zonefile,
            )
        )

    def start(self, timeout: float = 10.0) -> KnotServer:
        """Start ``knotd`` (same port on a restart) and wait until it answers."""
        if self.process is not None:
            raise RuntimeError("knotd is already running")
        fixed_port = self.port != 0
        attempts = 1 if fixed_port else 3
        last_error = ""
        for _ in range(attempts):
            if not fixed_port:
                self.port = free_port(self.host)
            self._write_files()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
            if self._wait_ready(timeout):
                return self
            last_error = self.log_path.read_text(errors="replace")[-2000:]
            self.stop()
        raise RuntimeError(f"knotd did not answer on {self.address}; log:\n{last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                # The query's own timeout paces this loop.
                resp = dns.query.udp(query, self.host, port=self.port, timeout=0.05)
            except (dns.exception.Timeout, OSError):
                continue
            if resp.rcode() == dns.rcode.NOERROR and resp.answer:
                return True
        return False

    def stop(self) -> None:
        """Stop ``knotd`` by PID: SIGTERM, then SIGKILL if it lingers."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> KnotServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- records -----------------------------------------------------------------

    def _send(self, update: dns.update.UpdateMessage) -> None:
        resp = dns.query.tcp(update, self.host, port=self.port, timeout=5)
        if resp.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"dynamic update refused: {dns.rcode.to_text(resp.rcode())}")

    def _rel(self, name: str) -> dns.name.Name:
        if name == "@":
            return dns.name.empty
        if name.endswith("."):
            return dns.name.from_text(name).relativize(self.zone)
        return dns.name.from_text(name, origin=None)

    def set(self, name: str, rdtype: str, *values: str, ttl: int | None = None) -> None:
        """Replace the ``rdtype`` records of ``name`` with ``values`` (RFC 2136)."""
        upd = dns.update.UpdateMessage(self.zone)
        upd.replace(self._rel(name), self.default_ttl if ttl is None else ttl, rdtype, *values)
        self._send(upd)

    def add(self, name: str, rdtype: str, *values: str, ttl: int | None = None) -> None:
        """Add ``values`` to the ``rdtype`` records of ``name``."""
        upd = dns.update.UpdateMessage(self.zone)
        upd.add(self._rel(name), self.default_ttl if ttl is None else ttl, rdtype, *values)
        self._send(upd)

    def delete(self, name: str, rdtype: str | None = None, *values: str) -> None:
        """Delete ``values`` (or the whole rrset, or every rrset of ``name``)."""
        upd = dns.update.UpdateMessage(self.zone)
        if rdtype is None:
            upd.delete(self._rel(name))
        else:
            upd.delete(self._rel(name), rdtype, *values)
        self._send(upd)
