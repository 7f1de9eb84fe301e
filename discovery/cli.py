"""The ``discovery`` command (also ``python -m discovery``): see a target resolve and a channel connect.

::

    discovery resolve TARGET [--resolver-config JSON] [--json] [--timeout S]
    discovery watch TARGET [--resolver-config JSON] [--json]
    discovery check CONFIG [SERVICE]
    discovery backends SERVICE [--config FILE] [--watch] [--interval S] [--wait S]

``resolve`` and ``watch`` run the target's resolver directly (no grpc
channel, no connection to the backends): what the registry says, as the
channel would receive it. ``backends`` opens the channel a config file
defines and shows each backend as the channel sees it.

Exit codes: 0 success, 1 any error (its one line on stderr, never a
traceback), 2 bad usage (argparse), 130 interrupted (Ctrl-C). ``-v``/``-vv``
show the library's own log records (INFO/DEBUG) on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import Any, TextIO

import grpc

from . import config as _config
from .address import Address, ResolverState
from .errors import ConfigError, DiscoveryError, ResolverError
from .observe import parse_observability
from .registry import get_resolver, resolve_target
from .resolver import Resolver, ResolverOptions

__all__ = ["format_address", "main"]

PROG = "discovery"
_C = grpc.ChannelConnectivity


class CliError(Exception):
    """An error the command reports as one line and exit code 1."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: stop quietly."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# -- formatting ------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """An attribute value as JSON data: mappings to objects, sequences to arrays, the rest as is or as text."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _field(value: Any) -> str:
    """An attribute value for a ``key=value`` field: one token, quoted as JSON when it would not be."""
    data = _plain(value)
    if isinstance(data, list):
        text = ",".join(x if isinstance(x, str) else json.dumps(x, sort_keys=True) for x in data)
    elif isinstance(data, dict):
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    elif isinstance(data, str):
        text = data
    else:
        text = json.dumps(data)
    if not text or any(c.isspace() for c in text) or text.startswith('"'):
        return json.dumps(text)
    return text


def format_address(a: Address) -> str:
    """``host:port weight=W priority=P zone=Z key=value ...``: one line per address."""
    parts = [a.addr, f"weight={a.weight}", f"priority={a.priority}", f"zone={_field(a.zone) if a.zone else ''}"]
    parts += [f"{k}={_field(v)}" for k, v in a.attributes.items()]
    return " ".join(parts)


def address_json(a: Address) -> dict[str, Any]:
    return {"address": a.addr, "weight": a.weight, "priority": a.priority, "zone": a.zone,
            "attributes": _plain(dict(a.attributes))}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- running a resolver ----------------------------------------------------------------


class _Listener:
    """Receives what the resolver pushes; the command's thread takes it from a queue."""

    def __init__(self) -> None:
        self.events: queue.Queue[ResolverState | ResolverError] = queue.Queue()

    def update_state(self, state: ResolverState) -> None:
        self.events.put(state)

    def report_error(self, error: ResolverError) -> None:
        self.events.put(error)


def _resolver_config(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"--resolver-config: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CliError(f"--resolver-config: expected a JSON object, got {type(value).__name__}")
    return value


def _start(target: str, resolver_config: str | None) -> tuple[Resolver, _Listener]:
    t = resolve_target(target)
    builder = get_resolver(t.scheme)
    listener = _Listener()
    resolver = builder.build(t, listener, ResolverOptions(config=_resolver_config(resolver_config)))
    return resolver, listener


def _next_event(listener: _Listener, deadline: float | None) -> ResolverState | ResolverError | None:
    """The next event, None at the deadline. Wakes often so that signals are handled promptly."""
    while True:
        wait = 0.25 if deadline is None else min(0.25, deadline - time.monotonic())
        if wait <= 0:
            return None
        try:
            return listener.events.get(timeout=wait)
        except queue.Empty:
            continue


def cmd_resolve(args: argparse.Namespace, out: TextIO) -> int:
    resolver, listener = _start(args.target, args.resolver_config)
    try:
        event = _next_event(listener, time.monotonic() + args.timeout)
    finally:
        resolver.close()
    if event is None:
        raise CliError(f"{args.target}: the resolver gave no answer within {args.timeout:g}s")
    if isinstance(event, ResolverError):
        raise CliError(f"{args.target}: {event}")
    if args.json:
        out.write(json.dumps([address_json(a) for a in event.addresses], indent=2) + "\n")
    else:
        for a in event.addresses:
            out.write(format_address(a) + "\n")
        if not event.addresses:
            sys.stderr.write(f"{args.target}: no addresses" + (f" ({event.note})" if event.note else "") + "\n")
    out.flush()
    return 0


def diff(old: Mapping[str, Address], new: Sequence[Address]) -> list[tuple[str, Address]]:
    """``+``/``-``/``~`` changes from ``old`` (by ``host:port``) to ``new``, in the new set's order."""
    now: dict[str, Address] = {}
    for a in new:
        now.setdefault(a.addr, a)
    out: list[tuple[str, Address]] = [("-", a) for key, a in old.items() if key not in now]
    for key, a in now.items():
        before = old.get(key)
        if before is None:
            out.append(("+", a))
        elif before != a:
            out.append(("~", a))
    return out


def cmd_watch(args: argparse.Namespace, out: TextIO) -> int:
    resolver, listener = _start(args.target, args.resolver_config)
    current: dict[str, Address] = {}
    last_error = ""

    def emit(record: dict[str, Any], line: str) -> None:
        out.write((json.dumps(record) if args.json else line) + "\n")

    try:
        while True:
            event = _next_event(listener, None)
            if event is None:  # pragma: no cover - no deadline
                continue
            stamp = _now()
            if isinstance(event, ResolverError):
                text = _one_line(str(event))
                if text != last_error:
                    last_error = text
                    emit({"time": stamp, "op": "!", "error": text}, f"{stamp} ! {text}")
                    out.flush()
                continue
            last_error = ""
            changes = diff(current, event.addresses)
            for op, a in changes:
                emit({"time": stamp, "op": op, **address_json(a)}, f"{stamp} {op} {format_address(a)}")
            if not event.addresses and (changes or not current) and event.note:
                emit({"time": stamp, "op": "#", "note": event.note}, f"{stamp} # {_one_line(event.note)}")
            current = {}
            for a in event.addresses:
                current.setdefault(a.addr, a)
            out.flush()
    finally:
        resolver.close()


# -- check ------------------------------------------------------------------------------------


def _check_errors(path: str, service: str | None) -> tuple[list[str], list[_config.ServiceEntry]]:
    """Every error of a config file (each service on its own), and the services that are fine."""
    p = _config.find_config_file(path)
    src = str(p)
    data = _config._read(p)
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table with a [services] section, got {type(data).__name__}", source=src,
                          key_path="(top)")
    errors: list[str] = []
    unknown = set(data) - {"services", "observability"}
    if unknown:
        errors.append(str(ConfigError(f"unknown top-level key(s) {sorted(map(str, unknown))}; expected "
                                      "'services' (and optionally 'observability')", source=src,
                                      key_path="(top)")))
    if "observability" in data:
        try:
            parse_observability(data["observability"], src)
        except ConfigError as exc:
            errors.append(str(exc))
    services = data.get("services")
    if not isinstance(services, Mapping) or not services:
        errors.append(str(ConfigError(f"expected a non-empty [services] table, got {services!r}", source=src,
                                      key_path="services")))
        return errors, []
    names = list(services)
    if service is not None:
        if service not in services:
            errors.append(str(ConfigError(f"no service {service!r}; the file defines {sorted(map(str, names))}",
                                          source=src, key_path="services")))
            return errors, []
        names = [service]
    good = []
    for name in names:
        try:
            good.append(_config._entry(str(name), services[name], src))
        except ConfigError as exc:
            errors.append(str(exc))
    return errors, good


def _describe_entry(e: _config.ServiceEntry) -> str:
    sc = e.service_config
    parts = [f"{e.name}: {e.target}", f"policy={sc.policy}"]
    if sc.health_service_name is not None:
        parts.append(f"health={sc.health_service_name or '(server)'}")
    if sc.methods:
        parts.append(f"method_configs={len(set(map(id, sc.methods.values())))}")
    if e.tls is not None:
        parts.append("tls")
    if e.resolver:
        parts.append(f"resolver_keys={','.join(sorted(map(str, e.resolver)))}")
    return " ".join(parts)


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    errors, good = _check_errors(args.config, args.service)
    for e in good:
        out.write(f"ok {_describe_entry(e)}\n")
    for text in errors:
        sys.stderr.write(f"{PROG}: error: {_one_line(text)}\n")
    out.flush()
    return 1 if errors else 0


# -- backends ---------------------------------------------------------------------------------

_COLUMNS = ("address", "state", "healthy", "ejected", "in_flight", "weight", "priority", "zone")


def _rows(channel: Any) -> list[tuple[str, ...]]:
    return [(b.address, b.state.name, "yes" if b.healthy else "no", "yes" if b.ejected else "no", str(b.in_flight),
             str(b.weight), str(b.priority), b.zone or "-") for b in channel.backends()]


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """A plain text table of backends, columns aligned."""
    table = [_COLUMNS, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if not rows:
        lines.append("(no backends)")
    return "\n".join(lines)


def _settled(channel: Any) -> bool:
    bs = channel.backends()
    return bool(bs) and all(b.state not in (_C.CONNECTING, _C.IDLE) for b in bs)


def _rich_table(title: str, rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    styles = {"READY": "green", "TRANSIENT_FAILURE": "red", "CONNECTING": "yellow", "IDLE": "dim"}
    table = Table(title=title, title_justify="left")
    for c in _COLUMNS:
        table.add_column(c, justify="right" if c in ("in_flight", "weight", "priority") else "left")
    for r in rows:
        table.add_row(*r, style=styles.get(r[1]))
    return table


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def cmd_backends(args: argparse.Namespace, out: TextIO) -> int:
    from . import channel_from_config

    channel = channel_from_config(args.service, args.config)
    title = f"{args.service} ({channel.target})"
    try:
        channel.get_state(try_to_connect=True)
        deadline = time.monotonic() + args.wait
        pause = threading.Event()
        while time.monotonic() < deadline and not _settled(channel):
            pause.wait(0.05)
        if not args.watch:
            out.write(f"{title}\n{format_table(_rows(channel))}\n")
            out.flush()
            return 0
        if out.isatty() and _rich_available():
            from rich.console import Console
            from rich.live import Live

            with Live(_rich_table(title, _rows(channel)), console=Console(file=out), auto_refresh=False) as live:
                while True:
                    pause.wait(args.interval)
                    live.update(_rich_table(f"{title}  {_now()}", _rows(channel)), refresh=True)
        # Not a terminal: a new table, stamped, whenever something changed.
        last: list[tuple[str, ...]] | None = None
        while True:
            rows = _rows(channel)
            if rows != last:
                last = rows
                out.write(f"{_now()} {title}\n{format_table(rows)}\n\n")
                out.flush()
            pause.wait(args.interval)
    finally:
        channel.close()


# -- main ---------------------------------------------------------------------------------------


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description="Resolve targets, watch them, check config files and "
                                 "see a channel's backends (grpc-discovery).")
    ap.add_argument("-v", "--verbose", action="count", default=0,
                    help="show the library's log records on stderr (-v INFO, -vv DEBUG)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rc_help = "the resolver's options as a JSON object (what [services.x.resolver] holds in a config file)"
    r = sub.add_parser("resolve", help="what a target resolves to now, one address per line")
    r.add_argument("target", help="a target URI (dns:///orders.internal:50051) or host:port")
    r.add_argument("--resolver-config", metavar="JSON", help=rc_help)
    r.add_argument("--json", action="store_true", help="print a JSON array of addresses")
    r.add_argument("--timeout", type=_positive, default=10.0, metavar="S",
                   help="how long to wait for the resolver's first answer (default 10)")
    r.set_defaults(run=cmd_resolve)

    w = sub.add_parser("watch", help="the target's addresses, then every change as it happens (Ctrl-C ends)")
    w.add_argument("target", help="a target URI or host:port")
    w.add_argument("--resolver-config", metavar="JSON", help=rc_help)
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.set_defaults(run=cmd_watch)

    c = sub.add_parser("check", help="validate a config file; explain every error")
    c.add_argument("config", help="a .toml, .yaml/.yml or .json config file")
    c.add_argument("service", nargs="?", help="check only this service")
    c.set_defaults(run=cmd_check)

    b = sub.add_parser("backends", help="connect as a service's channel would; show each backend")
    b.add_argument("service", help="a service of the config file ([services.NAME])")
    b.add_argument("--config", metavar="FILE",
                   help="the config file (default: $DISCOVERY_CONFIG, then ./discovery.toml)")
    b.add_argument("--watch", action="store_true", help="keep showing the backends live until Ctrl-C")
    b.add_argument("--interval", type=_positive, default=0.5, metavar="S",
                   help="refresh interval with --watch (default 0.5)")
    b.add_argument("--wait", type=_positive, default=3.0, metavar="S",
                   help="how long to let connections settle before the first table (default 3)")
    b.set_defaults(run=cmd_backends)
    return ap


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(128 + signum)


def _setup_logging(verbose: int) -> None:
    if not verbose:
        # The command reports errors itself; the library's warnings would say them twice.
        logging.getLogger("discovery").addHandler(logging.NullHandler())
        logging.getLogger("discovery").propagate = False
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("discovery")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    stdout = out or sys.stdout
    run: Callable[[argparse.Namespace, TextIO], int] = args.run
    previous: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.signal(sig, _on_signal)))
    try:
        return run(args, stdout)
    except Interrupted as stop:
        return 130 if stop.code == 128 + signal.SIGINT else stop.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``| head``): nothing more to say to it.
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    except (CliError, DiscoveryError, ImportError, OSError, ValueError) as exc:
        sys.stderr.write(f"{PROG}: error: {_one_line(str(exc)) or type(exc).__name__}\n")
        return 1
    except Exception as exc:  # a bug: still one line, never a traceback
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(str(exc))}\n")
        return 1
    finally:
        for signum, handler in previous:
            signal.signal(signum, handler)
