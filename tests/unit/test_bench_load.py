"""Load patterns, sweep stop rule, offline interval math, and clear errors for bad input."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from benchmarks.datasets import DatasetSpec, build
from benchmarks.loadgen import LoadSpec, arrival_offsets
from benchmarks.offline import union_length
from benchmarks.sweep import SweepSpec, stop_reason
from serve.cli import main


@pytest.mark.parametrize("burstiness", [1.0, 4.0, 0.25])
def test_gamma_arrivals_have_the_asked_rate_and_burstiness(burstiness: float) -> None:
    offsets = arrival_offsets(20000, rate=5.0, burstiness=burstiness, seed=1)
    gaps = [b - a for a, b in zip([0.0, *offsets], offsets, strict=False)]
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(0.2, rel=0.05)
    # Gamma with shape k has squared coefficient of variation 1/k (1 for Poisson).
    assert statistics.pvariance(gaps) / mean**2 == pytest.approx(1 / burstiness, rel=0.1)
    assert arrival_offsets(5, 5.0, burstiness, seed=1) == offsets[:5]  # seeded: reproducible


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(3, float("inf"), 1.0, 0) == [0.0, 0.0, 0.0]


def agg(tput: float, p50: float, failed: int = 0) -> dict:
    return {"output_throughput": tput, "ttft_ms": {"p50": p50}, "completed": 10 - failed, "failed": failed}


def test_sweep_stops_when_throughput_plateaus_or_latency_explodes() -> None:
    spec = SweepSpec()
    assert stop_reason(spec, [agg(100, 50), agg(180, 60)]) is None
    assert "stopped rising" in (stop_reason(spec, [agg(100, 50), agg(180, 60), agg(185, 70)]) or "")
    assert "exploded" in (stop_reason(spec, [agg(100, 50), agg(300, 1500)]) or "")
    assert "failed" in (stop_reason(spec, [agg(100, 50), agg(300, 60, failed=5)]) or "")
    assert stop_reason(SweepSpec(stop=False), [agg(100, 50), agg(50, 5000)]) is None


def test_union_length_counts_overlaps_once() -> None:
    assert union_length([(0, 1), (0.5, 2), (3, 4)]) == pytest.approx(3.0)
    assert union_length([]) == 0.0


def test_jsonl_dataset_cycles_and_reports_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a b"}\n\n{"turns": ["hi", "more"], "output_len": 7}\n')
    convs = build(DatasetSpec("jsonl", num_requests=5, path=str(good)), tok=None)
    assert [len(c.turns) for c in convs] == [1, 2, 1, 1]
    assert convs[1].turns[1].output_len == 7 and convs[0].turns[0].output_len == 128
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        build(DatasetSpec("jsonl", num_requests=2, path=str(bad)), tok=None)


def test_specs_reject_bad_values() -> None:
    for kwargs in ({"kind": "zigzag"}, {"concurrency": 0}, {"kind": "rate", "rate": 0.0}, {"burstiness": 0}):
        with pytest.raises(ValueError):
            LoadSpec(**kwargs)
    with pytest.raises(ValueError):
        DatasetSpec(range_ratio=1.5)
    with pytest.raises(ValueError):
        SweepSpec(values=(1.5,))


def serve_args(*extra: str) -> list[str]:
    return ["bench", "serve", "--base-url", "http://127.0.0.1:9", "--model", "m", "--dataset", "jsonl",
            "--dataset-path", "/nonexistent.jsonl", *extra]


def test_cli_bad_input_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(serve_args("--slo", "ttft=fast")) == 2
    assert "cannot read duration" in capsys.readouterr().err
    assert main([*serve_args()[:3], "ftp://x", *serve_args()[4:]]) == 2
    assert "must start with http" in capsys.readouterr().err
    # Port 9 (discard) is closed on loopback: unreachable target, exit 1, no traceback.
    assert main(serve_args()) == 1
    err = capsys.readouterr().err
    assert "cannot reach" in err and "Traceback" not in err
