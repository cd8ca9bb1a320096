"""Scalar types shared by the configuration model: durations, sizes, names, ports.

Each accepts the human spelling in YAML ("500ms", "10m", "64k") and stores a plain number,
so compiled runtimes never parse units. Nothing here knows about any config object.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg])?i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s or 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as 500ms, 5s or 1m, got {value!r}")
    if seconds < 0 or seconds != seconds or seconds == float("inf"):
        raise ValueError("a duration must be a finite number of seconds, not negative")
    return seconds


def parse_size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8k, 10m or 1g")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower() or None]
    else:
        raise ValueError(f"expected a size such as 8k, 10m or 1g, got {value!r}")
    if size < 0:
        raise ValueError("a size cannot be negative")
    return size


def _format_duration(seconds: float) -> str | float:
    if seconds and (seconds * 1000) % 1000 and (seconds * 1000) == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return int(seconds) if seconds == int(seconds) else seconds


Duration = Annotated[
    float, BeforeValidator(parse_duration), PlainSerializer(_format_duration, return_type=Any, when_used="json")
]
Size = Annotated[int, BeforeValidator(parse_size)]
Port = Annotated[int, Field(ge=1, le=65535)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
