"""The `native` backend behind the real HTTP server, driven with the openai client (bundled SmolLM2)."""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STORY = ("Once upon a time, in a small village at the edge of a great forest, there lived an old clockmaker "
         "who repaired every clock in the valley. ") * 4


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server(["--backend", "native", "-o", "kv_cache_bytes=67108864", "-o", "max_num_seqs=16"],
                     tmp_path_factory.mktemp("native"), timeout_s=240)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(native: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{native.base_url}/v1", api_key="unused", max_retries=0, timeout=180)


def engine_stat(server: ServerProc, name: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    m = re.search(rf"^sluice:{name}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


def test_chat_stream_equals_non_stream_on_greedy(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Write one sentence about the sea."}]
    full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens <= 16


def test_concurrent_requests_equal_sequential_ones(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "def add(a, b):", "My favourite colour is", STORY[:80]]

    def one(p: str) -> str:
        r = client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0,
                                      extra_body={"ignore_eos": True})
        assert r.usage.completion_tokens == 10 and r.choices[0].finish_reason == "length"
        return r.choices[0].text

    sequential = [one(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(one, prompts)) == sequential


def test_a_repeated_long_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    first = client.completions.create(model=MODEL, prompt=STORY, max_tokens=4, temperature=0)
    second = client.completions.create(model=MODEL, prompt=STORY, max_tokens=4, temperature=0)
    assert second.choices[0].text == first.choices[0].text
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached == 16 * ((first.usage.prompt_tokens - 1) // 16) > 0  # every full block but the last token's


def test_n_samples_and_stop_strings(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="Count: one, two, three,", max_tokens=12, temperature=0, n=2)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text
    word = r.choices[0].text.split()[1] if len(r.choices[0].text.split()) > 1 else r.choices[0].text.strip()
    s = client.completions.create(model=MODEL, prompt="Count: one, two, three,", max_tokens=12,
                                  temperature=0, stop=[word])
    assert s.choices[0].finish_reason == "stop" and word not in s.choices[0].text
    assert r.choices[0].text.startswith(s.choices[0].text)


def test_a_request_larger_than_the_cache_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="context length|KV cache"):
        client.completions.create(model=MODEL, prompt="hello", max_tokens=5000)


def test_client_disconnect_aborts_and_frees_the_kv_cache(native: ServerProc, client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt=STORY, max_tokens=1000, stream=True,
                                       extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if engine_stat(native, "engine_requests_running") == 0 and engine_stat(native, "kv_cache_usage_perc") == 0:
            return
        time.sleep(0.2)
    pytest.fail("the aborted request still holds the engine / KV blocks")
