"""gRPC JSON durations (``"10s"``, ``"0.5s"``), shared by every config parser."""

from __future__ import annotations

import re
from typing import Any

from .errors import ConfigError

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^(-?\d+(?:\.\d{1,9})?)s$")


def parse_duration(value: Any, *, key_path: str, source: str | None = None) -> float:
    """A gRPC JSON duration (``"10s"``, ``"0.5s"``) or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"expected a duration like \"10s\", got {value!r}", source=source, key_path=key_path)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
        seconds = float(m.group(1))
    else:
        raise ConfigError(f"expected a duration like \"10s\", got {value!r}", source=source, key_path=key_path)
    if seconds < 0:
        raise ConfigError(f"duration must not be negative, got {value!r}", source=source, key_path=key_path)
    return seconds
