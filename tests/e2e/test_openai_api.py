"""The OpenAI-compatible API of a real `sluice serve` (llamacpp backend, bundled SmolLM2), driven
with the official openai client."""

from __future__ import annotations

import math

import openai
import pytest

pytestmark = pytest.mark.e2e

HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_models_lists_default(client: openai.OpenAI, model: str) -> None:
    assert model in [m.id for m in client.models.list().data]


def test_chat_non_streaming_has_content_and_usage(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=16, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 5
    assert 1 <= r.usage.completion_tokens <= 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_equals_non_stream_on_greedy(client: openai.OpenAI, model: str) -> None:
    full = client.chat.completions.create(model=model, messages=HELLO, max_tokens=24, temperature=0)
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stream_without_include_usage_sends_no_usage(client: openai.OpenAI, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, max_tokens=4, stream=True))
    assert all(c.usage is None for c in chunks)


def test_completion_max_tokens_and_ignore_eos(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt="The quick brown fox", max_tokens=20, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 20
    assert r.choices[0].finish_reason == "length"


def test_completion_prompt_batch_and_token_ids(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt=["Hello", "One two three"], max_tokens=5, temperature=0)
    assert sorted(c.index for c in r.choices) == [0, 1]
    tok = openai.OpenAI(base_url=str(client.base_url).replace("/v1/", ""), api_key="x")
    ids = tok.post("/tokenize", body={"model": model, "prompt": "One two three"}, cast_to=object)["tokens"]
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == r.choices[1].text


def test_seed_makes_sampling_reproducible(client: openai.OpenAI, model: str) -> None:
    def run(seed: int) -> str:
        r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=24, temperature=1.0,
                                      seed=seed, extra_body={"ignore_eos": True})
        return r.choices[0].text

    a, b = run(1234), run(1234)
    assert a == b
    assert any(run(s) != a for s in (1, 2, 3))


def test_stop_string_is_excluded(client: openai.OpenAI, model: str) -> None:
    base = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0).choices[0]
    # Stop on a piece of the greedy continuation: the output must end right before it.
    stop = base.text[4:7]
    assert len(stop) == 3
    r = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=16, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == base.text[: base.text.index(stop)]


def test_n_choices(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=8, n=3, temperature=1.0, seed=7)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(c.message.content for c in r.choices)
    assert 3 <= r.usage.completion_tokens <= 24
    assert len({c.message.content for c in r.choices}) > 1  # sampled with per-choice seeds, not copies


def test_chat_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        assert len(item.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert math.isclose(item.logprob, item.top_logprobs[0].logprob, abs_tol=1e-4)
    assert "".join(i.token for i in content).strip() == r.choices[0].message.content.strip()


def test_completion_logprobs(client: openai.OpenAI, model: str) -> None:
    r = client.completions.create(model=model, prompt="The sky is", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    assert all(len(t) == 2 for t in lp.top_logprobs)


def test_logit_bias_forces_token(client: openai.OpenAI, model: str) -> None:
    tok = openai.OpenAI(base_url=str(client.base_url).replace("/v1/", ""), api_key="x")
    target = tok.post("/tokenize", body={"prompt": " banana", "add_special_tokens": False}, cast_to=object)["tokens"]
    r = client.completions.create(model=model, prompt="My favourite word is", max_tokens=3, temperature=0,
                                  logit_bias={str(target[0]): 100})
    assert r.choices[0].text.startswith(tok.post("/detokenize", body={"tokens": target[:1]}, cast_to=object)["prompt"])
