"""`sluice bench compare` on two result files built from hand-made traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.record import RequestRecord
from benchmarks.result import ResultError, build_result, load_result, run_entry, write_json
from serve.cli import main


def trace(itl: float, conc: int, n: int = 4, tokens: int = 10) -> list[RequestRecord]:
    """`n` requests in waves of `conc`; each: TTFT 0.1 s, then a token every `itl` seconds."""
    out, wave_len = [], 0.1 + (tokens - 1) * itl
    for i in range(n):
        sent = (i // conc) * wave_len
        chunks = tuple(sent + 0.1 + k * itl for k in range(tokens))
        out.append(RequestRecord(index=i, sent=sent, end=chunks[-1], chunk_times=chunks, prompt_tokens=5,
                                 output_tokens=tokens, token_source="usage"))
    return out


def result_file(tmp_path: Path, name: str, itl: float) -> Path:
    runs = [run_entry({"kind": "concurrency", "concurrency": c, "duration_s": None}, trace(itl, c), {})
            for c in (1, 2)]
    res = build_result(command_line=["test"], label=name, target={"base_url": "http://x/v1", "model": "m",
                       "endpoint": "completions", "ignore_eos": True}, workload={"dataset": "random"},
                       load={"kind": "sweep"}, slo={}, runs=runs, git_commit=None, notes=[],
                       machine={"cpu_model": "cpu", "cores_logical": 2, "ram_gib": 1, "os": "linux"})
    path = tmp_path / f"{name}.json"
    write_json(res, path)
    return path


def test_compare_reports_ratios_to_the_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = result_file(tmp_path, "slow", itl=0.02), result_file(tmp_path, "fast", itl=0.01)
    md, html = tmp_path / "cmp.md", tmp_path / "cmp.html"
    assert main(["bench", "compare", str(a), str(b), "--markdown", str(md), "--html", str(html)]) == 0
    rows = [r for r in md.read_text().splitlines() if r.startswith("| concurrency 1 | TPOT p50")]
    assert len(rows) == 1
    # TPOT is the ITL here: 20 ms vs 10 ms -> 0.50x.
    assert "| 20.0 | 10.0 (0.50x) |" in rows[0]
    a_res, b_res = load_result(a), load_result(b)
    ratio = b_res["runs"][1]["aggregates"]["output_throughput"] / a_res["runs"][1]["aggregates"]["output_throughput"]
    assert f"({ratio:.2f}x)" in md.read_text()
    assert html.read_text().count("data:image/png;base64,") == 2
    assert "ratios to slow" in capsys.readouterr().out


def test_compare_rejects_a_file_that_is_not_a_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert main(["bench", "compare", str(bad)]) == 1
    assert "not a sluice bench result" in capsys.readouterr().err
    with pytest.raises(ResultError, match="no such file"):
        load_result(tmp_path / "missing.json")
