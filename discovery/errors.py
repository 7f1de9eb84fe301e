"""The one exception root of grpc-discovery and its shallow tree.

Every exception this library raises on purpose derives from
:class:`DiscoveryError`. Exceptions coming out of a third-party client library
(dnspython, a registry client) are wrapped with ``raise ... from exc`` so the
cause stays visible without leaking the client's types into callers' ``except``
clauses.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DiscoveryError",
    "PluginError",
    "ResolverError",
    "TargetError",
    "UnknownPolicyError",
    "UnknownSchemeError",
]


class DiscoveryError(Exception):
    """Root of every error raised by grpc-discovery."""


class ConfigError(DiscoveryError, ValueError):
    """A configuration value is wrong: a config file, a service config or an option.

    ``source`` names the file (or ``"service_config"``), ``key_path`` the dotted
    path of the offending key, so the message can say exactly what to fix.
    """

    def __init__(self, message: str, *, source: str | None = None, key_path: str | None = None):
        self.source = source
        self.key_path = key_path
        prefix = ""
        if source:
            prefix += f"{source}: "
        if key_path:
            prefix += f"{key_path}: "
        super().__init__(prefix + message)


class TargetError(ConfigError):
    """A target URI cannot be parsed or does not fit its resolver."""


class UnknownSchemeError(ConfigError):
    """No resolver is registered for a target's scheme."""


class UnknownPolicyError(ConfigError):
    """No balancer is registered under a policy name."""


class PluginError(DiscoveryError):
    """A plugin cannot be used: it fails to import, is not a builder, or clashes on registration.

    ``plugin`` names the scheme or policy (None for a registration clash);
    ``missing_module`` the module whose import failed, when that is the cause
    (``"dns"`` when dnspython is not installed), so a caller can say what to
    install.
    """

    def __init__(self, message: str, *, plugin: str | None = None, missing_module: str | None = None):
        self.plugin = plugin
        self.missing_module = missing_module
        super().__init__(message)


class ResolverError(DiscoveryError):
    """A resolver could not produce an address set (registry down, bad answer).

    Resolvers report these to their listener; the last good address set is kept.
    """
