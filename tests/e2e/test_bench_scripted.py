"""Honest measurement: `sluice bench serve` against a scripted upstream (a test fixture that streams at
known times) must recover TTFT, ITL, TPOT and throughput within 5%, and its own cost must be small."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serve.cli import main

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
# A TTFT typical of a real server; the client's own few ms of send cost are measured and reported apart.
TTFT_MS, ITL_MS, N_OUT = 300.0, 20.0, 20


def start_upstream(*flags: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.e2e.bench_scripted_upstream", *flags],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"scripted upstream did not start: {line!r}")
    return proc, int(line.split()[1])


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    proc, port = start_upstream("--ttft-ms", str(TTFT_MS), "--itl-ms", str(ITL_MS))
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"question number {i}"}) + "\n" for i in range(5)))
    return p


def bench(port: int, prompts: Path, tmp_path: Path, *flags: str) -> dict:
    out = tmp_path / "r.json"
    rc = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--model", "scripted",
               "--dataset", "jsonl", "--dataset-path", str(prompts), "--output-len", str(N_OUT),
               "--quiet", "--out", str(out), *flags])
    assert rc == 0
    return json.loads(out.read_text())


def within(measured: float, truth: float, tol: float = 0.05) -> bool:
    return abs(measured - truth) <= tol * truth


@pytest.mark.slow
def test_recovers_scripted_timings(upstream: int, prompts: Path, tmp_path: Path) -> None:
    res = bench(upstream, prompts, tmp_path, "--concurrency", "2", "--num-requests", "6", "--warmup", "2",
                "--html", str(tmp_path / "r.html"), "--csv", str(tmp_path / "r.csv"))
    a = res["runs"][0]["aggregates"]
    assert (a["completed"], a["failed"]) == (6, 0)
    assert a["token_count_source"] == "usage"
    assert within(a["ttft_ms"]["p50"], TTFT_MS), a["ttft_ms"]
    assert within(a["itl_ms"]["mean"], ITL_MS), a["itl_ms"]
    assert within(a["tpot_ms"]["mean"], ITL_MS), a["tpot_ms"]
    # Three closed-loop waves of 2, each request lasting TTFT + (n-1) * ITL.
    expected = 6 * N_OUT / (3 * (TTFT_MS + (N_OUT - 1) * ITL_MS) / 1e3)
    assert within(a["output_throughput"], expected), (a["output_throughput"], expected)
    lag = [r["ttft_ms"] - TTFT_MS for r in res["runs"][0]["requests"]]
    print(f"\nTTFT lag over script: mean {sum(lag) / len(lag):.2f} ms; ITL mean {a['itl_ms']['mean']:.3f} ms; "
          f"client parse {a['client_overhead_us_per_event']['mean']:.1f} us/event, "
          f"send {a['client_send_ms']['mean']:.2f} ms")
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "TTFT" in html
    assert (tmp_path / "r.csv").read_text().count("\n") == 7


@pytest.mark.slow
def test_chat_role_only_chunk_is_not_the_first_token(upstream: int, prompts: Path, tmp_path: Path) -> None:
    res = bench(upstream, prompts, tmp_path, "--endpoint", "chat", "--num-requests", "2", "--load", "sync")
    a = res["runs"][0]["aggregates"]
    assert a["completed"] == 2
    assert within(a["ttft_ms"]["p50"], TTFT_MS)  # the role chunk arrives at ~0 ms and must be skipped


def test_client_cost_per_event_is_small(prompts: Path, tmp_path: Path) -> None:
    """An upstream that sends 2,000 chunks back to back: how fast can the client take them in?"""
    proc, port = start_upstream("--ttft-ms", "0", "--itl-ms", "0", "--no-usage")
    try:
        res = bench(port, prompts, tmp_path, "--output-len", "2000", "--num-requests", "1", "--warmup", "1")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    req = res["runs"][0]["requests"][0]
    assert req["token_source"] == "chunks"  # no usage and no tokenizer: counted from chunks, and said so
    assert req["output_tokens"] == 2000
    parse_us = req["client_overhead"] / req["events"] * 1e6
    wall_us = req["e2e_ms"] * 1e3 / req["events"]  # includes the upstream's own cost of writing
    print(f"\nclient parse cost {parse_us:.1f} us/event; end-to-end {wall_us:.1f} us/event")
    assert parse_us < 200


def test_time_limit_stops_sending_and_says_so(upstream: int, prompts: Path, tmp_path: Path) -> None:
    # Each request lasts ~0.68 s; a 0.3 s limit lets exactly one wave of 2 start.
    res = bench(upstream, prompts, tmp_path, "--concurrency", "2", "--num-requests", "50", "--time-limit", "0.3")
    assert res["runs"][0]["aggregates"]["completed"] == 2
    assert any("time limit" in n for n in res["notes"])


def test_failures_are_recorded_by_kind_not_dropped(prompts: Path, tmp_path: Path) -> None:
    proc, port = start_upstream("--ttft-ms", "20", "--itl-ms", "2", "--fail-every", "3", "--truncate-every", "4")
    try:
        res = bench(port, prompts, tmp_path, "--concurrency", "2", "--num-requests", "12")
        out = tmp_path / "slow.json"
        rc = main(["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--model", "scripted", "--quiet",
                   "--dataset", "jsonl", "--dataset-path", str(prompts), "--num-requests", "1",
                   "--timeout", "0.001", "--out", str(out)])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    a = res["runs"][0]["aggregates"]
    # Upstream requests 3, 6, 9, 12 fail with 503; 4 and 8 are cut short (12 is already a 503).
    assert a["errors"] == {"http_503": 4, "truncated": 2}
    assert (a["completed"], a["failed"]) == (6, 6)
    assert rc == 1  # nothing succeeded: a failing exit code, and still a result file saying why
    assert json.loads(out.read_text())["runs"][0]["aggregates"]["errors"] == {"timeout": 1}
