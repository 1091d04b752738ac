"""The `vllm` backend end to end: sluice starts vLLM's OpenAI server (CPU build, its own venv from
`make vllm-env`) as a managed child on the bundled model, converted offline to a HF directory, and
routes to it like any replica."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server
from tests.requirements import require, vllm_missing

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
VLLM_PYTHON = os.environ.get("SLUICE_VLLM_PYTHON", "")


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    require("vllm", vllm_missing(VLLM_PYTHON))
    s = start_server(["--backend", "vllm", "-o", f"python={VLLM_PYTHON}", "-o", "max_model_len=1024",
                      "-o", "kv_cache_space_gib=1", "-o", "max_num_seqs=8"],
                     tmp_path_factory.mktemp("vllm"), timeout_s=900)
    yield s
    s.stop()


def test_vllm_serves_chat_and_streams_through_router(vllm_server: ServerProc) -> None:
    c = openai.OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="x", max_retries=0, timeout=300)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    full = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    assert full.choices[0].message.content
    assert full.usage.prompt_tokens > 5
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_vllm_completion_ignore_eos_and_errors(vllm_server: ServerProc) -> None:
    c = openai.OpenAI(base_url=f"{vllm_server.base_url}/v1", api_key="x", max_retries=0, timeout=300)
    r = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=12, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 12
    with pytest.raises(openai.BadRequestError):  # vLLM's own context check, passed through our envelope
        c.completions.create(model=MODEL, prompt="word " * 2000, max_tokens=10)
