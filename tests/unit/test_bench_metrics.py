"""Metric definitions on hand-made traces (times in seconds, numbers worked out by hand)."""

from __future__ import annotations

import math

import pytest

from benchmarks.metrics import aggregate, met_slo, percentile, steady_window, summarize
from benchmarks.record import RequestRecord, record_from_json
from benchmarks.slo import parse_duration, parse_slo


def rec(index: int, sent: float, chunks: tuple[float, ...], end: float, out: int | None = None,
        prompt: int = 10, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, sent=sent, end=end, chunk_times=chunks,
                         output_tokens=len(chunks) if out is None else out, prompt_tokens=prompt,
                         token_source="usage", error_kind=error)


def test_per_request_latencies_follow_the_definitions() -> None:
    # sent at 1.0, first content at 1.2, then chunks every 0.05 s; [DONE] at 1.41.
    r = rec(0, 1.0, (1.2, 1.25, 1.30, 1.35, 1.40), 1.41)
    assert r.ttft == pytest.approx(0.2)
    assert r.e2e == pytest.approx(0.41)
    assert r.tpot == pytest.approx((0.41 - 0.2) / 4)  # (E2E - TTFT) / (out - 1)
    assert r.itls == pytest.approx([0.05] * 4)


def test_tpot_uses_token_count_not_chunk_count() -> None:
    # Two chunks carrying 9 tokens (e.g. speculative decoding): TPOT divides by 8 tokens, ITL has one gap.
    r = rec(0, 0.0, (0.1, 0.5), 0.5, out=9)
    assert r.tpot == pytest.approx(0.4 / 8)
    assert r.itls == pytest.approx([0.4])
    assert rec(1, 0.0, (0.1,), 0.1, out=1).tpot is None


def test_percentiles_interpolate_linearly_like_numpy() -> None:
    v = [1.0, 2.0, 3.0, 4.0]
    assert percentile(v, 50) == pytest.approx(2.5)
    assert percentile(v, 90) == pytest.approx(3.7)
    assert percentile([5.0], 99) == 5.0
    s = summarize([1.0, 2.0, 3.0, 4.0], scale=1e3)
    assert s["mean"] == pytest.approx(2500.0)
    assert s["std"] == pytest.approx(math.sqrt(1.25) * 1e3)
    assert (s["min"], s["max"], s["count"]) == (1000.0, 4000.0, 4)
    assert summarize([])["p99"] is None


def test_aggregate_pools_itl_and_counts_errors_and_throughput() -> None:
    records = [
        rec(0, 0.0, (0.1, 0.2, 0.3), 0.3),  # gaps 0.1, 0.1
        rec(1, 0.0, (0.2, 0.6), 0.7),  # gap 0.4
        rec(2, 0.5, (), 0.6, error="http_503"),
        rec(3, 0.5, (), 1.0, error="timeout"),
    ]
    a = aggregate(records)
    assert (a["completed"], a["failed"]) == (2, 2)
    assert a["errors"] == {"http_503": 1, "timeout": 1}
    assert a["itl_ms"]["count"] == 3
    assert a["itl_ms"]["mean"] == pytest.approx(200.0)
    assert a["ttft_ms"]["mean"] == pytest.approx(150.0)
    # Measured window [0.0, 1.0]: 2 good requests, 5 output tokens, 20 prompt tokens.
    assert a["duration_s"] == pytest.approx(1.0)
    assert a["request_throughput"] == pytest.approx(2.0)
    assert a["output_throughput"] == pytest.approx(5.0)
    assert a["total_token_throughput"] == pytest.approx(25.0)


def test_steady_window_drops_ramp_up_and_drain() -> None:
    # Closed loop, concurrency 2, 4 requests, 1 chunk per 0.1 s. First completion at 1.0, last send at 1.5.
    records = [
        rec(0, 0.0, tuple(0.1 * k for k in range(1, 11)), 1.0),
        rec(1, 0.0, tuple(0.15 * k for k in range(1, 11)), 1.5),
        rec(2, 1.0, tuple(1.0 + 0.1 * k for k in range(1, 11)), 2.0),
        rec(3, 1.5, tuple(1.5 + 0.1 * k for k in range(1, 11)), 2.5),
    ]
    w = steady_window(records)
    assert w is not None and (w.start, w.end) == pytest.approx((1.0, 1.5))
    steady = aggregate(records)["steady_state"]
    # Chunks inside [1.0, 1.5]: r0 t=1.0 (1), r1 t=1.05,1.2,1.35,1.5 (4), r2 t=1.1..1.5 (5), r3 none.
    assert steady["output_throughput"] == pytest.approx(10 / 0.5)
    assert steady["request_throughput"] == pytest.approx(2 / 0.5)  # r0 at 1.0 and r1 at 1.5
    assert steady["start_s"] == pytest.approx(1.0)


def test_steady_window_absent_when_all_requests_start_together() -> None:
    records = [rec(i, 0.0, (0.5,), 1.0 + i * 0.01) for i in range(4)]
    assert steady_window(records) is None
    assert aggregate(records)["steady_state"] is None


def test_goodput_counts_requests_meeting_every_slo() -> None:
    fast = rec(0, 0.0, (0.1, 0.12, 0.14), 0.14)  # ttft 100 ms, tpot 20 ms
    slow_first = rec(1, 0.0, (0.9, 0.92), 0.92)  # ttft 900 ms
    slow_tokens = rec(2, 0.0, (0.1, 0.3, 0.5), 0.5)  # tpot 200 ms
    failed = rec(3, 0.0, (), 0.2, error="read")
    slo = parse_slo("ttft=500ms,tpot=50ms")
    assert [met_slo(r, slo) for r in (fast, slow_first, slow_tokens, failed)] == [True, False, False, False]
    a = aggregate([fast, slow_first, slow_tokens, failed], slo)
    assert a["goodput"] == pytest.approx(1 / 0.92)
    assert a["slo_attainment"] == pytest.approx(0.25)
    assert aggregate([fast])["goodput"] is None


def test_slo_parsing_and_errors() -> None:
    assert parse_slo("ttft=500ms,tpot=50,e2e=2s") == pytest.approx({"ttft": 0.5, "tpot": 0.05, "e2e": 2.0})
    assert parse_duration("150us") == pytest.approx(150e-6)
    for bad in ("ttft", "latency=5ms", "ttft=fast", "ttft=1ms,ttft=2ms", "ttft=0ms"):
        with pytest.raises(ValueError):
            parse_slo(bad)


def test_record_json_round_trip_keeps_latencies() -> None:
    r = rec(3, 10.0, (10.2, 10.25, 10.3), 10.31)
    d = r.to_json(origin=9.0)
    assert d["sent"] == pytest.approx(1.0)
    assert d["ttft_ms"] == pytest.approx(200.0)
    back = record_from_json(d)
    assert back.ttft == pytest.approx(r.ttft)
    assert back.tpot == pytest.approx(r.tpot)
    assert back.itls == pytest.approx(r.itls)
