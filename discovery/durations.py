"""gRPC JSON durations (``"10s"``, ``"0.5s"``), shared by every config parser.

gRPC's own parser (grpc-core's JSON object loader, protobuf's Duration JSON
mapping) takes a *string*: ASCII digits, an optional fraction of at most 9
digits, then ``s``, at most 315,576,000,000 seconds (protobuf Duration's
range), never negative. A JSON number is not a duration there, so it is not
one here in gRPC's vocabulary (``methodConfig``, retry and hedging policies,
``outlier_detection``). This library's own keys that document numbers of
seconds (a config file's ``drain_grace``) pass ``allow_number=True``.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import ConfigError

__all__ = ["MAX_DURATION_SECONDS", "parse_duration"]

# google.protobuf.Duration's range: +-10,000 years.
MAX_DURATION_SECONDS = 315_576_000_000

# [0-9], not \d: \d also matches '٣' and other Unicode digits, which float() accepts.
_DURATION = re.compile(r"\+?([0-9]+)(?:\.([0-9]{1,9}))?s")


def parse_duration(value: Any, *, key_path: str, source: str | None = None, allow_number: bool = False,
                   minimum: float = 0.0) -> float:
    """Seconds from a gRPC JSON duration string (``"10s"``, ``"0.5s"``).

    ``allow_number`` also takes a finite number of seconds. ``minimum`` is the
    smallest value allowed (0 by default). Raises
    :class:`~discovery.errors.ConfigError` naming ``key_path`` otherwise.
    """
    expected = 'a duration string like "1.5s"' + (" or a number of seconds" if allow_number else "")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not allow_number:
            hint = f'; write "{value}s"' if _DURATION.fullmatch(f"{value}s") else ""
            raise ConfigError(f"expected {expected} (gRPC's JSON has no numeric durations), got {value!r}{hint}",
                              source=source, key_path=key_path)
        if not math.isfinite(value):
            raise ConfigError(f"expected {expected}, got {value!r}", source=source, key_path=key_path)
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        whole, frac = m.group(1), m.group(2) or ""
        if int(whole) > MAX_DURATION_SECONDS:
            raise ConfigError(f"duration {value!r} is out of range (at most {MAX_DURATION_SECONDS}s)",
                              source=source, key_path=key_path)
        seconds = int(whole) + (int(frac) / 10 ** len(frac) if frac else 0.0)
    elif isinstance(value, str) and _DURATION.fullmatch(value[1:]) and value.startswith("-"):
        raise ConfigError(f"a duration must not be negative, got {value!r}", source=source, key_path=key_path)
    else:
        raise ConfigError(f"expected {expected}, got {value!r}", source=source, key_path=key_path)
    if seconds < 0 or seconds > MAX_DURATION_SECONDS:
        raise ConfigError(f"duration must be in [0, {MAX_DURATION_SECONDS}] seconds, got {value!r}",
                          source=source, key_path=key_path)
    if seconds < minimum:
        raise ConfigError(f"must be at least {minimum:g}s, got {value!r}", source=source, key_path=key_path)
    return seconds
