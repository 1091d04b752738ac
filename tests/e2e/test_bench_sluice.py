"""A short real run: `sluice bench serve` against a real `sluice serve` on the bundled model."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.procs import free_port, running
from benchmarks.result import load_result
from serve.cli import main
from tests.requirements import model_missing, requires

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.e2e, pytest.mark.slow,
              requires("model", model_missing(MODEL))]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    argv = [sys.executable, "-m", "serve.cli", "serve", "--backend", "llamacpp", "--model", MODEL,
            "--port", str(port), "-o", "n_parallel=2", "-o", "n_ctx_per_seq=256", "-o", "n_threads=1",
            "--log-level", "warning"]  # one thread: two spinning threads collapse on a busy 2-core box
    log = tmp_path_factory.mktemp("sluice") / "serve.log"
    with running(argv, {"HF_HUB_OFFLINE": "1"}, log, port, timeout_s=180) as (base, _, _pid):
        yield base


def test_bench_serve_against_sluice_writes_valid_reports(server: str, tmp_path: Path) -> None:
    out, html, csv = tmp_path / "r.json", tmp_path / "r.html", tmp_path / "r.csv"
    rc = main(["bench", "serve", "--base-url", server, "--model", MODEL, "--dataset", "random",
               "--input-len", "32", "--output-len", "8", "--load", "concurrency", "--concurrency", "2",
               "--num-requests", "4", "--warmup", "1", "--ignore-eos", "--quiet", "--slo", "ttft=60s",
               "--out", str(out), "--html", str(html), "--csv", str(csv)])
    assert rc == 0
    res = load_result(out)  # validates schema name and version
    a = res["runs"][0]["aggregates"]
    assert (a["completed"], a["failed"]) == (4, 0), a["errors"]
    assert a["token_count_source"] == "usage"
    for req in res["runs"][0]["requests"]:
        assert req["output_tokens"] == 8  # ignore_eos honoured
        # The server's own count equals ours: prompts really have the requested length.
        assert req["prompt_tokens"] == req["expected_prompt_tokens"] == 32
        assert req["ttft_ms"] > 0 and req["e2e_ms"] >= req["ttft_ms"]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert a[key]["p50"] is not None and a[key]["p99"] >= a[key]["p50"]
    assert a["output_throughput"] > 0 and a["goodput"] is not None
    assert res["machine"]["cores_logical"] >= 1 and res["command_line"]
    assert json.loads(out.read_text())["workload"]["tokenizer"].endswith(".gguf")
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 2 and "<table" in text
    assert csv.read_text().count("\n") == 5


def test_chat_endpoint_counts_content_not_role(server: str, tmp_path: Path) -> None:
    out = tmp_path / "chat.json"
    rc = main(["bench", "serve", "--base-url", server, "--model", MODEL, "--endpoint", "chat",
               "--input-len", "16", "--output-len", "6", "--num-requests", "2", "--load", "sync",
               "--ignore-eos", "--quiet", "--out", str(out)])
    assert rc == 0
    a = load_result(out)["runs"][0]["aggregates"]
    assert a["completed"] == 2 and a["itl_ms"]["count"] >= 2 * 4
