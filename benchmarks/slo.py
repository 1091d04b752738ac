"""Parse `--slo ttft=500ms,tpot=50ms,e2e=2s` into limits in seconds."""

from __future__ import annotations

import re

SLO_KEYS = ("ttft", "tpot", "e2e")
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")


def parse_duration(text: str) -> float:
    """'500ms' | '2s' | '150us' | '250' (bare numbers are milliseconds, as in vLLM's --goodput)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"cannot read duration {text!r}; write e.g. 500ms, 2s or 150us")
    return float(m.group(1)) * _UNITS[m.group(2) or "ms"]


def parse_slo(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    limits: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"bad SLO term {part!r}; write key=duration with key one of {', '.join(SLO_KEYS)}")
        if key in limits:
            raise ValueError(f"SLO {key!r} given twice")
        limits[key] = parse_duration(value)
        if limits[key] <= 0:
            raise ValueError(f"SLO {key!r} must be positive")
    return limits
