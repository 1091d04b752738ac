"""`sluice bench offline`: a real backend in-process through the Backend protocol."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from serve.cli import main
from tests.requirements import model_missing, requires

MODEL = "smollm2-135m-instruct"


@pytest.mark.slow
@requires("model", model_missing(MODEL))
def test_offline_llamacpp_reports_prefill_and_decode(tmp_path: Path) -> None:
    out = tmp_path / "off.json"
    rc = main(["bench", "offline", "--backend", "llamacpp", "--model", MODEL, "--num-prompts", "3",
               "--input-len", "24", "--output-len", "6", "--concurrency", "2", "-o", "n_parallel=2",
               "-o", "n_ctx_per_seq=128", "-o", "n_threads=1", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["schema"] == "sluice.bench.offline"
    gen, pre = res["phases"]["generate"], res["phases"]["prefill"]
    assert gen["output_tokens"] == 3 * 6  # ignore_eos: every request ran to max_tokens
    assert pre["output_tokens"] == 3 and pre["prompt_tokens"] == 3 * 24
    assert res["prefill_tokens_per_s"] > 0 and res["decode_tokens_per_s"] > 0


def test_offline_unknown_backend_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "offline", "--backend", "warp-drive"]) == 1
    err = capsys.readouterr().err.strip()
    assert "warp-drive" in err and len(err.splitlines()) == 1 and "Traceback" not in err
