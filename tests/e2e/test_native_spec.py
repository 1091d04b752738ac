"""Speculative decoding in the native backend through `sluice serve` and the openai client: greedy text
with n-gram speculation equals the same server's text with speculation switched off per request
(`num_speculative_tokens: 0`) on a completion that copies its prompt, and the spec_decode counters move."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.server_proc import MODEL, REPO, ServerProc, metric_sum, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
_PASSAGE = (REPO / "benchmarks/data/kjv_genesis37-45_ruth.txt").read_text()[2000:2400]
# Raw completion prompt: the chat turn plus the start of the answer, so the answer copies the passage.
_PROMPT = (f"<|im_start|>user\nRepeat the following passage exactly, word for word:\n\n{_PASSAGE}<|im_end|>\n"
           f"<|im_start|>assistant\n{_PASSAGE[:60]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server(["--backend", "native", "-o", "kv_cache_bytes=33554432", "-o", "num_threads=1",
                      "-o", "quantization=none", "-o", "speculative_method=ngram",
                      "-o", "num_speculative_tokens=4"], tmp_path_factory.mktemp("spec"), timeout_s=240)
    yield s
    s.stop()


def _counter(server: ServerProc, name: str) -> float:
    return metric_sum(server.base_url, f"{name}_total")


def test_ngram_greedy_equals_no_speculation_and_counts(server: ServerProc) -> None:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=180)

    def complete(**extra: int) -> str:
        r = client.completions.create(model=MODEL, prompt=_PROMPT, max_tokens=32, temperature=0,
                                      extra_body=extra or None)
        return r.choices[0].text

    plain = complete(num_speculative_tokens=0)
    assert _counter(server, "spec_decode_num_drafts") == 0
    spec = complete()
    assert spec and spec == plain
    drafts = _counter(server, "spec_decode_num_drafts")
    accepted = _counter(server, "spec_decode_num_accepted_tokens")
    assert drafts > 0 and accepted > 0
    assert _counter(server, "spec_decode_num_accepted_tokens_per_pos") == accepted
