"""Aggregate metrics from request records. Pure math: no I/O, no clock.

Definitions (also in benchmarks/README.md):
- TTFT: sent -> first chunk carrying generated content (role-only chunks do not count).
- E2E: sent -> last event of the stream.
- TPOT per request: (E2E - TTFT) / (output_tokens - 1). vLLM calls this TPOT; genai-perf calls it ITL.
- ITL: every gap between successive content chunks, pooled over all requests (vLLM's ITL).
- Throughputs over the measured window [first sent, last end]; and over a steady-state window
  [first completion, last send], which drops the ramp-up (nothing has finished yet) and the drain
  (no new work arrives).
- Goodput: successful requests that met every SLO, per second of the measured window.
Latency summaries are in milliseconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.record import RequestRecord

PERCENTILES = (50, 90, 95, 99)
# A steady window shorter than this fraction of the measured window says nothing; report none.
MIN_STEADY_FRACTION = 0.1


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def contains(self, t: float) -> bool:
        return self.start <= t <= self.end


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear' method)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: Iterable[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """count, mean, std (population), min, p50/p90/p95/p99, max; values multiplied by `scale`."""
    v = sorted(x * scale for x in values)
    if not v:
        return {"count": 0, "mean": None, "std": None, "min": None,
                **{f"p{q}": None for q in PERCENTILES}, "max": None}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / len(v))
    out: dict[str, float | int | None] = {"count": len(v), "mean": mean, "std": std, "min": v[0]}
    out.update({f"p{q}": percentile(v, q) for q in PERCENTILES})
    out["max"] = v[-1]
    return out


def measured_window(records: Sequence[RequestRecord]) -> Window | None:
    if not records:
        return None
    return Window(min(r.sent for r in records), max(r.end for r in records))


def steady_window(records: Sequence[RequestRecord]) -> Window | None:
    """[first successful completion, last request sent], or None when that is too short to mean much."""
    ok = [r for r in records if r.ok]
    full = measured_window(records)
    if not ok or full is None or full.duration <= 0:
        return None
    w = Window(min(r.end for r in ok), max(r.sent for r in records))
    if w.duration < MIN_STEADY_FRACTION * full.duration:
        return None
    return w


def met_slo(r: RequestRecord, slo: dict[str, float]) -> bool:
    """True when the request succeeded and every given limit (seconds) holds. A request whose TPOT is
    undefined (one output token) is judged on the other limits only."""
    if not r.ok:
        return False
    values = {"ttft": r.ttft, "tpot": r.tpot, "e2e": r.e2e}
    for key, limit in slo.items():
        v = values[key]
        if key == "ttft" and v is None:
            return False
        if v is not None and v > limit:
            return False
    return True


def _tokens_in(r: RequestRecord, w: Window) -> float:
    """Output tokens of `r` that arrived inside `w`, spreading its tokens evenly over its chunks."""
    if not r.chunk_times or not r.output_tokens:
        return 0.0
    per_chunk = r.output_tokens / len(r.chunk_times)
    return per_chunk * sum(1 for t in r.chunk_times if w.contains(t))


def throughputs(records: Sequence[RequestRecord], w: Window, steady: bool) -> dict[str, float]:
    """Request, output-token and total-token rates over `w`. For the full window every successful
    request counts; for a steady window only what happened inside it (prompt tokens at first token)."""
    ok = [r for r in records if r.ok]
    if w.duration <= 0:
        return {"request_throughput": 0.0, "output_throughput": 0.0, "total_token_throughput": 0.0}
    if steady:
        n_req = sum(1 for r in ok if w.contains(r.end))
        out_tok = sum(_tokens_in(r, w) for r in ok)
        in_tok = sum(r.prompt_tokens or 0 for r in ok if r.chunk_times and w.contains(r.chunk_times[0]))
    else:
        n_req = len(ok)
        out_tok = float(sum(r.output_tokens or 0 for r in ok))
        in_tok = sum(r.prompt_tokens or 0 for r in ok)
    d = w.duration
    return {"request_throughput": n_req / d, "output_throughput": out_tok / d,
            "total_token_throughput": (in_tok + out_tok) / d}


def token_source(records: Sequence[RequestRecord]) -> str:
    """'usage' when the server counted every token, 'tokenizer' when we did, else 'mixed'/'none'."""
    kinds = {r.token_source for r in records if r.ok}
    if not kinds:
        return "none"
    return kinds.pop() if len(kinds) == 1 else "mixed"


def aggregate(records: Sequence[RequestRecord], slo: dict[str, float] | None = None) -> dict[str, Any]:
    """Every summary number of one run. Latencies in ms; throughputs per second."""
    ok = [r for r in records if r.ok]
    window = measured_window(records)
    steady = steady_window(records)
    agg: dict[str, Any] = {
        "completed": len(ok), "failed": len(records) - len(ok),
        "errors": dict(Counter(r.error_kind for r in records if not r.ok)),
        "duration_s": window.duration if window else 0.0,
        "total_input_tokens": sum(r.prompt_tokens or 0 for r in ok),
        "total_output_tokens": sum(r.output_tokens or 0 for r in ok),
        "token_count_source": token_source(records),
        "latency_unit": "ms",
        "ttft_ms": summarize((r.ttft for r in ok if r.ttft is not None), 1e3),
        "tpot_ms": summarize((r.tpot for r in ok if r.tpot is not None), 1e3),
        "itl_ms": summarize((g for r in ok for g in r.itls), 1e3),
        "e2e_ms": summarize((r.e2e for r in ok), 1e3),
        "output_tokens_per_request": summarize(r.output_tokens or 0 for r in ok),
        "client_send_ms": summarize((r.client_send for r in ok if r.client_send is not None), 1e3),
        "client_overhead_us_per_event": summarize(
            (r.client_overhead / r.events for r in ok if r.events), 1e6),
    }
    agg.update(throughputs(records, window, steady=False) if window else throughputs([], Window(0, 0), False))
    agg["steady_state"] = None if steady is None else {
        "start_s": steady.start - window.start, "duration_s": steady.duration,  # type: ignore[union-attr]
        **throughputs(records, steady, steady=True)}
    agg.update(goodput(records, slo, window))
    return agg


def goodput(records: Sequence[RequestRecord], slo: dict[str, float] | None,
            window: Window | None) -> dict[str, float | None]:
    if not slo or window is None or window.duration <= 0:
        return {"goodput": None, "slo_attainment": None}
    good = sum(1 for r in records if met_slo(r, slo))
    return {"goodput": good / window.duration, "slo_attainment": good / len(records)}
