"""The ``discovery`` command, run for real in a subprocess against real backends and a real DNS server."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discovery.testing.servers import BackendServer, static_target

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins" / "dns")]),
       "GRPC_VERBOSITY": "ERROR"}
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00"

Start = Callable[..., list[BackendServer]]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "discovery", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(p: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("discovery: error: ")
    for f in fragments:
        assert f in lines[0]


class Running:
    """A long-running command whose stdout lines a test reads with timeouts."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "discovery", *args], cwd=ROOT, env=ENV, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, timeout: float = 20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s") from None

    def until(self, pattern: str, timeout: float = 20.0) -> str:
        """The first line (skipping others) matching ``pattern``."""
        while True:
            line = self.line(timeout)
            if re.search(pattern, line):
                return line

    def interrupt(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(20)
        assert self.proc.stderr is not None
        return code, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str) -> Running:
        r = Running(*args)
        started.append(r)
        return r

    yield start
    for r in started:
        r.kill()


# -- resolve --------------------------------------------------------------------------------------


def test_resolve_prints_one_address_per_line_with_its_fields() -> None:
    endpoints = {"endpoints": {"127.0.0.1:50051": {"weight": 3, "zone": "eu-1a", "priority": 1,
                                                   "attributes": {"version": "v2", "tags": ["a", "b"],
                                                                  "note": "two words"}}}}
    p = run("resolve", "static:///127.0.0.1:50051,[::1]:50052", "--resolver-config", json.dumps(endpoints))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        '127.0.0.1:50051 weight=3 priority=1 zone=eu-1a note="two words" tags=a,b version=v2',
        "[::1]:50052 weight=1 priority=0 zone=",
    ]
    assert p.stderr == ""


def test_resolve_json() -> None:
    endpoints = {"endpoints": {"[::1]:50052": {"weight": 2, "attributes": {"tags": ["a", "b"], "n": 3}}}}
    p = run("resolve", "static:///127.0.0.1:50051,[::1]:50052", "--json", "--resolver-config",
            json.dumps(endpoints))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [
        {"address": "127.0.0.1:50051", "weight": 1, "priority": 0, "zone": "", "attributes": {}},
        {"address": "[::1]:50052", "weight": 2, "priority": 0, "zone": "", "attributes": {"n": 3, "tags": ["a", "b"]}},
    ]


def test_resolve_bare_host_port_uses_the_default_scheme() -> None:
    p = run("resolve", "127.0.0.1:50051")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "127.0.0.1:50051 weight=1 priority=0 zone=\n"


@pytest.mark.parametrize(("args", "fragments"), [
    (("resolve", "nope:///svc"), ("unknown resolver 'nope'",)),
    (("resolve", "static:///"), ("empty endpoint",)),
    (("resolve", "static:///127.0.0.1:1", "--resolver-config", "{bad"), ("--resolver-config", "not valid JSON")),
    (("resolve", "static:///127.0.0.1:1", "--resolver-config", "[1]"), ("expected a JSON object",)),
    (("resolve", "static:///127.0.0.1:1", "--resolver-config", '{"token": "s3cret"}'), ("unknown key(s)",)),
    (("watch", "nope:///svc"), ("unknown resolver 'nope'",)),
    (("backends", "orders", "--config", "/nonexistent/discovery.toml"), ("does not exist",)),
])
def test_errors_are_one_line_and_exit_1(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    p = run(*args)
    assert_one_line_error(p, *fragments)
    assert "Traceback" not in p.stderr
    assert "s3cret" not in p.stderr


def test_bad_usage_exits_2() -> None:
    p = run("resolve")
    assert p.returncode == 2
    assert "usage: discovery resolve" in p.stderr


# -- DNS: a real authoritative server -------------------------------------------------------------

knot_missing = shutil.which("knotd") is None and not Path("/usr/sbin/knotd").exists()


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[object]:
    if knot_missing:
        if os.environ.get("CI"):
            raise RuntimeError("Knot DNS (knotd) is not installed: apt-get install knot")
        pytest.skip("Knot DNS (knotd) is not installed")
    sys.path.insert(0, str(ROOT / "plugins" / "dns"))
    try:
        from discovery_dns.testing import KnotServer
    finally:
        sys.path.remove(str(ROOT / "plugins" / "dns"))
    server = KnotServer(tmp_path / "knot", [
        "a     A    127.0.0.2",
        "a     A    127.0.0.3",
        "_grpc._tcp.svc SRV 0 10 50061 a",
    ], default_ttl=1)
    server.start()
    yield server
    server.stop()


def test_resolve_against_a_real_dns_server(knot: object) -> None:
    p = run("resolve", f"dns://{knot.address}/a.test.internal:50051")  # type: ignore[attr-defined]
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == ["127.0.0.2:50051 weight=1 priority=0 zone=",
                                             "127.0.0.3:50051 weight=1 priority=0 zone="]
    p = run("resolve", f"dns://{knot.address}/missing.test.internal:50051")  # type: ignore[attr-defined]
    assert p.returncode == 0
    assert p.stdout == ""
    assert "no addresses" in p.stderr and "NXDOMAIN" in p.stderr


def test_watch_shows_each_change_with_a_timestamp_until_ctrl_c(knot: object,
                                                               running: Callable[..., Running]) -> None:
    k: object = knot
    w = running("watch", f"dns://{k.address}/_grpc._tcp.svc.test.internal",  # type: ignore[attr-defined]
                "--resolver-config", '{"min_interval": "0.1s"}')
    first = w.line()
    assert re.fullmatch(STAMP + r" \+ 127\.0\.0\.[23]:50061 weight=10 priority=0 zone=", first), first
    second = w.line()
    assert {first.split(" ", 2)[2], second.split(" ", 2)[2]} == {"127.0.0.2:50061 weight=10 priority=0 zone=",
                                           "127.0.0.3:50061 weight=10 priority=0 zone="}
    k.add("b", "A", "127.0.0.4")  # type: ignore[attr-defined]
    k.add("_grpc._tcp.svc", "SRV", "0 20 50062 b")  # type: ignore[attr-defined]
    assert re.fullmatch(STAMP + r" \+ 127\.0\.0\.4:50062 weight=20 priority=0 zone=", w.until("50062"))
    k.delete("a", "A", "127.0.0.3")  # type: ignore[attr-defined]
    assert re.fullmatch(STAMP + r" - 127\.0\.0\.3:50061 weight=10 priority=0 zone=", w.until("127.0.0.3"))
    # One atomic update (RFC 2136 replace): a delete then an add would let a lookup in between see
    # b's record gone ("- ...50062") before it comes back, and that line is not the change under test.
    k.set("_grpc._tcp.svc", "SRV", "0 10 50061 a", "0 30 50062 b")  # type: ignore[attr-defined]
    assert re.fullmatch(STAMP + r" ~ 127\.0\.0\.4:50062 weight=30 priority=0 zone=", w.until("50062"))
    code, err = w.interrupt()
    assert code == 130
    assert "Traceback" not in err
    assert err == ""


def test_watch_json_lines(running: Callable[..., Running]) -> None:
    w = running("watch", "static:///127.0.0.1:50051", "--json")
    event = json.loads(w.line())
    assert re.fullmatch(STAMP, event.pop("time"))
    assert event == {"op": "+", "address": "127.0.0.1:50051", "weight": 1, "priority": 0, "zone": "",
                     "attributes": {}}
    code, err = w.interrupt()
    assert (code, err) == (130, "")


# -- check ---------------------------------------------------------------------------------------


def test_check_accepts_a_good_file() -> None:
    p = run("check", str(ROOT / "examples" / "discovery.toml"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("ok orders: static:///127.0.0.1:50051,127.0.0.1:50052 policy=outlier_detection "
                        "health=ecommerce.v1.OrderService method_configs=1\n")


def test_check_explains_every_error_with_file_and_key_path(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("""
[observability]
prometheus = "yes"

[services.good]
target = "static:///127.0.0.1:50051"

[services.orders]
target = "static:///127.0.0.1:50051"
[services.orders.service_config]
loadBalancingConfig = [{ round_robin = {} }]
methodConfig = [{ name = [{ service = "x" }], timeout = "soon" }]

[services.users]
target = "dns:///users.internal:50051"
drain_grace = -1
""")
    p = run("check", str(cfg))
    assert p.returncode == 1
    assert p.stdout == "ok good: static:///127.0.0.1:50051 policy=round_robin\n"
    errors = p.stderr.splitlines()
    assert len(errors) == 3, p.stderr
    assert errors[0].startswith(f"discovery: error: {cfg}: observability.prometheus: expected true or false")
    assert errors[1].startswith(f"discovery: error: {cfg}: services.orders.service_config.methodConfig[0].timeout:")
    assert errors[2].startswith(f"discovery: error: {cfg}: services.users.drain_grace:")
    # One service only:
    p = run("check", str(cfg), "good")
    assert p.returncode == 1  # the file-level error still counts
    assert len(p.stderr.splitlines()) == 1
    p = run("check", str(cfg), "nope")
    assert "no service 'nope'" in p.stderr


def test_check_unreadable_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[services\n")
    assert_one_line_error(run("check", str(cfg)), str(cfg), "cannot parse TOML")


# -- backends --------------------------------------------------------------------------------------


def _config(tmp_path: Path, servers: list[BackendServer]) -> Path:
    cfg = tmp_path / "discovery.toml"
    cfg.write_text(f'[services.echo]\ntarget = "{static_target(servers)}"\n'
                   '[services.echo.service_config]\nhealthCheckConfig = { serviceName = "discovery.testing.Echo" }\n')
    return cfg


def test_backends_table(start_backends: Start, tmp_path: Path) -> None:
    up, down = start_backends(2)
    down.stop()
    p = run("backends", "echo", "--config", str(_config(tmp_path, [up, down])), "--wait", "5")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == f"echo ({static_target([up, down])})"
    assert lines[1].split() == ["address", "state", "healthy", "ejected", "in_flight", "weight", "priority", "zone"]
    assert lines[2].split() == [up.addr, "READY", "yes", "no", "0", "1", "0", "-"]
    assert lines[3].split()[0] == down.addr
    assert lines[3].split()[1] in ("TRANSIENT_FAILURE", "CONNECTING", "IDLE")


def test_backends_watch_follows_changes(start_backends: Start, tmp_path: Path,
                                        running: Callable[..., Running]) -> None:
    a, b = start_backends(2)
    w = running("backends", "echo", "--config", str(_config(tmp_path, [a, b])), "--watch", "--interval", "0.1")
    # Tables until both backends are READY.
    while True:
        header = w.until(STAMP + " echo ")
        rows = [w.line(), w.line(), w.line()]
        if all(" READY " in r for r in rows[1:]):
            break
    b.health.set("discovery.testing.Echo", 2)  # NOT_SERVING  # type: ignore[union-attr]
    while True:
        header = w.until(STAMP + " echo ")
        assert re.match(STAMP, header)
        rows = [w.line(), w.line(), w.line()]
        if rows[2].split()[2] == "no":
            break
    assert rows[1].split()[:3] == [a.addr, "READY", "yes"]
    assert rows[2].split()[0] == b.addr
    code, err = w.interrupt()
    assert code == 130
    assert "Traceback" not in err


def test_backends_watch_on_a_terminal_is_a_live_table(start_backends: Start, tmp_path: Path) -> None:
    pytest.importorskip("rich")
    import pty

    (server,) = start_backends(1)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "discovery", "backends", "echo", "--config",
                             str(_config(tmp_path, [server])), "--watch", "--interval", "0.1"],
                            cwd=ROOT, env={**ENV, "COLUMNS": "160", "TERM": "xterm"}, stdin=slave, stdout=slave,
                            stderr=subprocess.PIPE, text=False)
    os.close(slave)
    seen = b""
    found = threading.Event()

    def read() -> None:
        nonlocal seen
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen += chunk
            if b"READY" in seen and server.addr.encode() in seen and "│".encode() in seen:
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(20), seen[-2000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
        if proc.stderr is not None:
            proc.stderr.close()
