"""benchmarks/ray_summary.py reads the Ray bars from bench result files: ratios, hits, per-round overhead."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import ray_summary
from benchmarks.results_index import kind_and_figure


def _result(path: Path, ttft: float, tpot: float, e2e: float, tok_s: float, cached: list[int]) -> None:
    agg = {"ttft_ms": {"p50": ttft}, "tpot_ms": {"p50": tpot}, "e2e_ms": {"p50": e2e}, "output_throughput": tok_s}
    runs = [{"aggregates": agg, "requests": [{"cached_tokens": c} for c in cached]}]
    path.write_text(json.dumps({"runs": runs, "machine": {"cpu_model": "test"}}))


def test_summary_reads_ratios_hits_and_round_medians(tmp_path: Path) -> None:
    _result(tmp_path / "prefix4-prefix-affinity.json", 250, 10, 400, 20, [0, 1024, 1024, 1024])
    _result(tmp_path / "prefix4-round-robin.json", 4000, 10, 4200, 5, [0, 0, 1024, 0])
    # Three rounds: Ray 10%, 20% and 5% slower end to end; the median is the middle one.
    for r, (ray_e2e, ray_tok) in enumerate([(1100, 90), (1200, 80), (1050, 95)], start=1):
        _result(tmp_path / f"c1-ray-r{r}.json", 300, 8, ray_e2e, ray_tok, [0])
        _result(tmp_path / f"c1-single-r{r}.json", 250, 7, 1000, 100, [0])
    out = ray_summary.summarize(tmp_path)
    assert out["prefix_routing"] == [{"prefixes": 4, "affinity_ttft_p50_ms": 250, "round_robin_ttft_p50_ms": 4000,
                                      "ttft_p50_ratio": 16.0, "affinity_hits": "3/4", "round_robin_hits": "1/4"}]
    rounds = out["ray_overhead"]["rounds"]
    assert [r["e2e_ms_overhead_pct"] for r in rounds] == [10.0, 20.0, 5.0]
    assert out["ray_overhead"]["median_pct"] == {"e2e_ms_overhead_pct": 10.0, "tpot_ms_overhead_pct": 14.3,
                                                 "ttft_ms_overhead_pct": 20.0, "throughput_overhead_pct": 10.0}
    assert out["machine"] == {"cpu_model": "test"}
    kind, figure = kind_and_figure(tmp_path / "summary.json", out)
    assert kind == "ray serve" and "16.0x with 4 prefixes" in figure and "3 rounds" in figure
    assert "E2E p50 +10.0%, throughput -10.0%" in figure


def test_summary_without_overhead_rounds(tmp_path: Path) -> None:
    _result(tmp_path / "prefix6-prefix-affinity.json", 300, 10, 400, 20, [0])
    _result(tmp_path / "prefix6-round-robin.json", 900, 10, 1000, 5, [0])
    out = ray_summary.summarize(tmp_path)
    assert out["ray_overhead"] == {"rounds": [], "median_pct": {}}
    assert "no c=1 rounds" in kind_and_figure(tmp_path / "summary.json", out)[1]
