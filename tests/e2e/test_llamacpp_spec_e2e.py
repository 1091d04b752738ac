"""Prompt-lookup speculation in the llama.cpp backend through `sluice serve` and the openai client:
greedy text equals a plain server's, the spec_decode metrics count drafts, a bad method fails startup."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from tests.e2e.server_proc import MODEL, REPO, metric_sum, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

_PASSAGE = (REPO / "benchmarks/data/kjv_genesis37-45_ruth.txt").read_text()[2000:2600]
# Raw completion prompt: the chat turn plus the start of the answer, so the answer copies the passage.
_PROMPT = (f"<|im_start|>user\nRepeat the following passage exactly, word for word:\n\n{_PASSAGE}<|im_end|>\n"
           f"<|im_start|>assistant\n{_PASSAGE[:60]}")


def _complete(base_url: str) -> str:
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)
    out = client.completions.create(model=MODEL, prompt=_PROMPT, max_tokens=40, temperature=0.0)
    return out.choices[0].text


def _metric(base_url: str, name: str) -> float:
    return metric_sum(base_url, rf"{name}(?:_total)?")


def test_greedy_http_equals_plain_and_metrics(tmp_path: Path) -> None:
    common = ["--backend", "llamacpp", "-o", "n_threads=1", "-o", "n_parallel=1"]
    spec = start_server([*common, "-o", "speculative_method=ngram", "-o", "num_speculative_tokens=4"], tmp_path)
    try:
        spec_text = _complete(spec.base_url)
        assert _metric(spec.base_url, "spec_decode_num_drafts_total") > 0
        assert _metric(spec.base_url, "spec_decode_num_accepted_tokens_total") > 0
    finally:
        spec.stop()
    plain = start_server(common, tmp_path)
    try:
        assert _complete(plain.base_url) == spec_text
    finally:
        plain.stop()


def test_draft_method_is_a_startup_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="speculative_method"):
        start_server(["--backend", "llamacpp", "-o", "speculative_method=draft"], tmp_path, timeout_s=60)
