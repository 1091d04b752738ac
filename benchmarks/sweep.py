"""Sweep: a ladder of concurrencies (or rates) up to saturation.

Stop rule, checked after each step: throughput stopped rising (less than `min_gain` over the best so
far), or latency exploded (TTFT p50 above `latency_factor` x the first step's and above 1 s), or too
many requests failed. A fixed ladder (`stop=False`) runs every step, as `bench peers` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_CONCURRENCIES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class SweepSpec:
    by: str = "concurrency"  # "concurrency" | "rate"
    values: tuple[float, ...] = DEFAULT_CONCURRENCIES
    stop: bool = True
    min_gain: float = 0.05
    latency_factor: float = 10.0
    max_error_rate: float = 0.1

    def __post_init__(self) -> None:
        if self.by not in ("concurrency", "rate"):
            raise ValueError("--sweep-by must be 'concurrency' or 'rate'")
        if not self.values or any(v <= 0 for v in self.values):
            raise ValueError("--sweep-values must be positive numbers, e.g. 1,2,4,8")
        if self.by == "concurrency" and any(v != int(v) for v in self.values):
            raise ValueError("concurrency sweep values must be integers")


def parse_values(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError as e:
        raise ValueError(f"--sweep-values {text!r}: write numbers separated by commas") from e


def stop_reason(spec: SweepSpec, steps: list[dict[str, Any]]) -> str | None:
    """Why the ladder ends after the last of `steps` (their aggregates), or None to go on."""
    if not spec.stop or len(steps) < 2:
        return None
    last, first = steps[-1], steps[0]
    total = last["completed"] + last["failed"]
    if total and last["failed"] / total > spec.max_error_rate:
        return f"{last['failed']} of {total} requests failed"
    best_before = max(s["output_throughput"] for s in steps[:-1])
    if last["output_throughput"] < best_before * (1 + spec.min_gain):
        return f"output throughput stopped rising ({last['output_throughput']:.1f} vs best {best_before:.1f} tok/s)"
    p50, p50_first = last["ttft_ms"]["p50"], first["ttft_ms"]["p50"]
    if p50 is not None and p50_first and p50 > 1000 and p50 > spec.latency_factor * p50_first:
        return f"TTFT p50 exploded ({p50:.0f} ms vs {p50_first:.0f} ms at the first step)"
    return None
