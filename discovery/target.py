"""Target URIs in gRPC's naming syntax.

``scheme://authority/endpoint`` (``dns://127.0.0.1:53/orders:50051``), the
authority-less ``scheme:///endpoint`` and gRPC's opaque forms such as
``ipv4:10.0.0.1:50051,10.0.0.2:50051``. A bare ``host:port`` is not a URI: the
channel factories give it gRPC's default scheme, ``dns``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

from .errors import TargetError

__all__ = ["Target", "parse_host_port", "parse_target", "split_host_port"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: ``scheme``, ``authority`` (may be empty), ``endpoint``.

    ``query`` is the raw query string (after ``?``), for resolvers that take
    parameters such as ``consul://host/orders?tag=v2``; :meth:`params` parses it.
    """

    scheme: str
    authority: str
    endpoint: str
    query: str = ""
    raw: str = ""

    def params(self) -> dict[str, list[str]]:
        """The query string as a dict of lists (repeated keys keep every value)."""
        return parse_qs(self.query, keep_blank_values=True)

    def __str__(self) -> str:
        return self.raw or f"{self.scheme}://{self.authority}/{self.endpoint}"


def parse_target(target: str) -> Target:
    """Parse ``target`` as a gRPC naming URI.

    Raises :class:`~discovery.errors.TargetError` if it has no scheme or an
    empty endpoint. Whether the scheme is known is the registry's business.
    """
    if not isinstance(target, str) or not target.strip():
        raise TargetError(f"target must be a non-empty string, got {target!r}")
    m = _SCHEME.match(target)
    if m is None:
        raise TargetError(f"target {target!r} has no scheme (expected scheme://authority/endpoint)")
    scheme, rest = m.group(1).lower(), m.group(2)
    query = ""
    if rest.startswith("//"):
        body = rest[2:]
        authority, sep, path = body.partition("/")
        if not sep:
            raise TargetError(
                f"target {target!r}: expected '/' after the authority (scheme://authority/endpoint)"
            )
    else:
        authority, path = "", rest
    if "?" in path:
        path, _, query = path.partition("?")
    endpoint = unquote(path)
    if not endpoint:
        raise TargetError(f"target {target!r} has an empty endpoint")
    return Target(scheme=scheme, authority=authority, endpoint=endpoint, query=query, raw=target)


def split_host_port(hostport: str) -> tuple[str, str | None]:
    """Split ``host[:port]``; IPv6 literals must be bracketed to carry a port.

    Returns the host without brackets and the port text, or None if absent.
    A bare IPv6 literal (``::1``) is accepted as a host without a port.
    """
    s = hostport.strip()
    if not s:
        raise TargetError("empty host")
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise TargetError(f"{hostport!r}: unterminated '[' in IPv6 literal")
        host, rest = s[1:end], s[end + 1 :]
        if not host:
            raise TargetError(f"{hostport!r}: empty IPv6 literal")
        if not rest:
            return host, None
        if not rest.startswith(":") or len(rest) == 1:
            raise TargetError(f"{hostport!r}: expected ':port' after ']'")
        return host, rest[1:]
    if s.count(":") > 1:
        return s, None
    host, sep, port = s.partition(":")
    if not host:
        raise TargetError(f"{hostport!r}: empty host")
    if sep and not port:
        raise TargetError(f"{hostport!r}: empty port after ':'")
    return host, (port if sep else None)


def parse_host_port(hostport: str, default_port: int | None = 443) -> tuple[str, int]:
    """Split and validate ``host[:port]`` with a numeric port.

    ``default_port`` applies when the port is absent (gRPC defaults to 443);
    pass None to make a missing port an error.
    """
    host, port = split_host_port(hostport)
    if port is None:
        if default_port is None:
            raise TargetError(f"{hostport!r}: a port is required")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"{hostport!r}: port must be a number 1..65535, got {port!r}")
    return host, int(port)
