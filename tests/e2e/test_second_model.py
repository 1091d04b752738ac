"""The second catalog model (Gemma 3 270M base, GGUF Q4_K_M, pulled from its four registry parts)
serves through the llamacpp backend; as a base model without a chat template, chat is refused loudly."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from serve import model_store
from tests.e2e.server_proc import ServerProc, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    model_store.pull("gemma3-270m", progress=False)
    s = start_server(["--model", "gemma3-270m", "-o", "n_parallel=1", "-o", "n_ctx_per_seq=1024"],
                     tmp_path_factory.mktemp("gemma"))
    yield s
    s.stop()


def test_gemma_completes_greedy(gemma: ServerProc) -> None:
    body = {"model": "gemma3-270m", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"{gemma.base_url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert "Paris" in r.json()["choices"][0]["text"] or "capital" in r.json()["choices"][0]["text"]


def test_chat_without_template_is_a_clear_400(gemma: ServerProc) -> None:
    body = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(f"{gemma.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "no_chat_template"
