"""Target URIs in gRPC's naming syntax.

``scheme://authority/endpoint`` (``dns://127.0.0.1:53/orders:50051``), the
authority-less ``scheme:///endpoint`` and gRPC's opaque forms such as
``ipv4:10.0.0.1:50051,10.0.0.2:50051``. A bare ``host:port`` is not a URI: the
channel factories give it gRPC's default scheme, ``dns``.

Userinfo in an authority (``consul://user:secret@host/orders``) may be a
secret: ``str()``, ``repr()`` and every error message show it as ``***@``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote

from .address import host_error
from .errors import TargetError

__all__ = ["Target", "parse_channel_target", "parse_host_port", "parse_target", "redact_target", "split_host_port"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)
# Userinfo: whatever precedes an '@' back to the previous '/' (the authority
# of scheme://user:pw@host/..., or a mistyped target without a scheme).
_USERINFO = re.compile(r"[^/@]*@")
_PORT = re.compile(r"[0-9]{1,5}")


def redact_target(target: str) -> str:
    """``target`` with any userinfo replaced by ``***``, for logs and errors.

    Errs on the side of hiding: anything before an ``@`` outside the query
    string goes, back to the previous ``/``.
    """
    head, sep, query = target.partition("?")
    return _USERINFO.sub("***@", head) + sep + query


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: ``scheme``, ``authority`` (may be empty), ``endpoint``.

    ``query`` is the raw query string (after ``?``), for resolvers that take
    parameters such as ``consul://host/orders?tag=v2``; :meth:`params` parses it.
    """

    scheme: str
    authority: str = field(repr=False)
    endpoint: str
    query: str = ""
    raw: str = field(default="", repr=False)

    def params(self) -> dict[str, list[str]]:
        """The query string as a dict of lists (repeated keys keep every value)."""
        return parse_qs(self.query, keep_blank_values=True)

    def __str__(self) -> str:
        """The target as given, with userinfo redacted."""
        return redact_target(self.raw or f"{self.scheme}://{self.authority}/{self.endpoint}")

    def __repr__(self) -> str:
        return f"Target({str(self)!r})"


def parse_target(target: str) -> Target:
    """Parse ``target`` as a gRPC naming URI.

    Raises :class:`~discovery.errors.TargetError` if it is not a string, has
    whitespace, control characters or lone surrogates (a URI has none), no
    scheme or an empty endpoint. Whether the scheme is known is the
    registry's business.
    """
    if not isinstance(target, str):
        raise TargetError(f"target must be a string, got {type(target).__name__} {target!r}")
    if not target.strip():
        raise TargetError(f"target must be a non-empty string, got {target!r}")
    shown = redact_target(target)
    _check_characters(target, shown)
    m = _SCHEME.match(target)
    if m is None:
        raise TargetError(f"target {shown!r} has no scheme (expected scheme://authority/endpoint)")
    scheme, rest = m.group(1).lower(), m.group(2)
    query = ""
    if rest.startswith("//"):
        body = rest[2:]
        authority, sep, path = body.partition("/")
        if not sep:
            raise TargetError(
                f"target {shown!r}: expected '/' after the authority (scheme://authority/endpoint)"
            )
    else:
        authority, path = "", rest
    if "?" in path:
        path, _, query = path.partition("?")
    try:
        endpoint = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise TargetError(f"target {shown!r}: a %-escape in the endpoint is not UTF-8") from None
    if not endpoint:
        raise TargetError(f"target {shown!r} has an empty endpoint")
    return Target(scheme=scheme, authority=authority, endpoint=endpoint, query=query, raw=target)


def parse_channel_target(target: object, known_scheme: Callable[[str], bool]) -> Target:
    """A channel factory's target: a URI, or a bare ``host:port`` that gets gRPC's default scheme ``dns``.

    As in gRPC, ``localhost:50051`` parses as scheme ``localhost``, which
    ``known_scheme`` (the resolver registry) does not know, so it is taken as
    ``dns:///localhost:50051``. Raises TargetError for anything but a string.
    """
    if not isinstance(target, str):
        raise TargetError(f"target must be a string, got {type(target).__name__} {target!r}")
    if not target.strip():
        # Said here: with the default scheme added it would read "target 'dns:///' ...".
        raise TargetError(f"target must be a non-empty string, got {target!r}")
    try:
        t = parse_target(target)
    except TargetError:
        if "://" in target:
            raise
        return parse_target("dns:///" + target)
    if "://" not in target and not known_scheme(t.scheme):
        return parse_target("dns:///" + target)
    return t


def _check_characters(target: str, shown: str) -> None:
    try:
        target.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TargetError(f"target {shown!r} is not valid Unicode (a lone surrogate at position {exc.start})") from None
    for i, ch in enumerate(target):
        if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise TargetError(f"target {shown!r} has whitespace or a control character at position {i}; "
                              "a target URI has none (percent-encode it)")


def split_host_port(hostport: str) -> tuple[str, str | None]:
    """Split ``host[:port]``; IPv6 literals must be bracketed to carry a port.

    Returns the host without brackets and the port text, or None if absent.
    A bare IPv6 address (``::1``) is accepted as a host without a port, as in
    gRPC, unless its last group could be a port (``::1:8080``): that is
    ambiguous, and so is an error asking for brackets. Any other host with
    more than one ``:`` is an error too. The host itself is not checked here
    (:func:`parse_host_port` does); the port text is returned as it is.
    """
    s = hostport
    shown = redact_target(hostport)  # what error messages may echo
    if not s:
        raise TargetError("empty host")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise TargetError(f"{shown!r}: unterminated '[' in IPv6 literal")
        host, rest = s[1:end], s[end + 1 :]
        if not host:
            raise TargetError(f"{shown!r}: empty IPv6 literal")
        if not rest:
            return host, None
        if not rest.startswith(":") or len(rest) == 1:
            raise TargetError(f"{shown!r}: expected ':port' after ']'")
        return host, rest[1:]
    if s.count(":") > 1:
        return _bare_ipv6(s, shown), None
    host, sep, port = s.partition(":")
    if not host:
        raise TargetError(f"{shown!r}: empty host")
    if sep and not port:
        raise TargetError(f"{shown!r}: empty port after ':'")
    return host, (port if sep else None)


def parse_host_port(hostport: str, default_port: int | None = 443) -> tuple[str, int]:
    """Split and validate ``host[:port]`` with a numeric port.

    ``default_port`` applies when the port is absent (gRPC defaults to 443);
    pass None to make a missing port an error.
    """
    host, port = split_host_port(hostport)
    shown = redact_target(hostport)
    problem = host_error(host)
    if problem is not None:
        raise TargetError(f"{shown!r}: {problem}")
    if port is None:
        if default_port is None:
            raise TargetError(f"{shown!r}: a port is required")
        return host, default_port
    # ASCII digits only: str.isdigit() and int() also take '¹' or Arabic-Indic digits.
    if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        raise TargetError(f"{shown!r}: port must be a number 1..65535, got {redact_target(port)!r}")
    return host, int(port)


def _bare_ipv6(s: str, shown: str) -> str:
    """An unbracketed host with several ':' must be an unambiguous IPv6 address."""
    addr = s.partition("%")[0]
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        head, _, tail = s.rpartition(":")
        hint = f"[{head}]:{tail}" if _PORT.fullmatch(tail) and _is_ipv6(head) else "[::1]:50051"
        # (head is an IPv6 address here, or unused: it never carries userinfo.)
        raise TargetError(
            f"{shown!r}: more than one ':' outside brackets, and not an IPv6 address; write an IPv6 address "
            f"in brackets with the port after them ({hint}); any other host takes one ':port'"
        ) from None
    head, _, tail = addr.rpartition(":")
    if "%" not in s and _PORT.fullmatch(tail) and _is_ipv6(head):
        raise TargetError(
            f"{s!r} is ambiguous: is {tail} a port? Write the IPv6 address in brackets: "
            f"[{head}]:{tail} for port {tail}, or [{s}] for the whole address"
        )
    return s


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
