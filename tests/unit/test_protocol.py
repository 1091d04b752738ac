"""Request schemas: parse() gives a 400 naming the field; sampling_params() maps OpenAI fields."""

from __future__ import annotations

from typing import Any

import pytest

from serve.api.errors import APIError
from serve.api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    DetokenizeRequest,
    parse,
)

MSG = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> ChatCompletionRequest:
    return parse(ChatCompletionRequest, {"model": "m", "messages": MSG, **kw})


def completion(**kw: Any) -> CompletionRequest:
    return parse(CompletionRequest, {"model": "m", "prompt": "hello", **kw})


def api_error(fn: Any, *args: Any, **kw: Any) -> APIError:
    with pytest.raises(APIError) as info:
        fn(*args, **kw)
    return info.value


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": MSG}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"model": "m", "messages": MSG, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": MSG, "n": "many"}, "n"),
    ({"model": "m", "messages": MSG, "stop": 3}, "stop"),
    ({"model": "m", "messages": MSG, "stream_options": {"include_usage": "maybe"}}, "stream_options"),
])
def test_schema_failure_is_a_400_naming_the_field(body: dict[str, Any], param: str) -> None:
    err = api_error(parse, ChatCompletionRequest, body)
    assert err.status == 400
    assert err.param == param
    assert err.body()["error"]["type"] == "invalid_request_error"
    assert param in err.message
    # pydantic's raw shape (input_value, url to its docs) never reaches the client
    assert "input_value" not in err.message and "pydantic" not in err.message


def test_missing_field_says_required() -> None:
    err = api_error(parse, ChatCompletionRequest, {"messages": MSG})
    assert "field required" in err.message


def test_empty_prompt_list_is_rejected_on_prompt() -> None:
    err = api_error(parse, CompletionRequest, {"model": "m", "prompt": []})
    assert err.status == 400 and err.param == "prompt"


def test_unknown_fields_are_ignored() -> None:
    req = chat(frobnicate=True, tools_choice_2={"x": 1})
    assert req.model == "m"
    assert not hasattr(req, "frobnicate")


def test_defaults_map_to_default_sampling_params() -> None:
    p = chat().sampling_params()
    assert (p.n, p.max_tokens, p.temperature, p.top_p, p.top_k, p.min_p) == (1, None, 1.0, 1.0, 0, 0.0)
    assert (p.repetition_penalty, p.logprobs, p.stop, p.logit_bias, p.seed) == (1.0, None, (), {}, None)


def test_fields_are_carried_to_sampling_params() -> None:
    p = chat(temperature=0, top_p=0.9, top_k=40, min_p=0.05, seed=7, n=3, presence_penalty=0.5,
             frequency_penalty=-0.5, repetition_penalty=1.2, stop="END", stop_token_ids=[2, 3],
             ignore_eos=True).sampling_params()
    assert p.greedy and p.temperature == 0.0
    assert (p.top_p, p.top_k, p.min_p, p.seed, p.n) == (0.9, 40, 0.05, 7, 3)
    assert (p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.5, -0.5, 1.2)
    assert p.stop == ("END",) and p.stop_token_ids == (2, 3) and p.ignore_eos


def test_stop_list_becomes_tuple() -> None:
    assert chat(stop=["a", "bc"]).sampling_params().stop == ("a", "bc")


@pytest.mark.parametrize(("kw", "expected"), [
    ({"max_tokens": 10}, 10),
    ({"max_completion_tokens": 7}, 7),
    ({"max_tokens": 10, "max_completion_tokens": 7}, 7),  # the newer field wins
    ({}, None),
])
def test_chat_max_tokens_mapping(kw: dict[str, Any], expected: int | None) -> None:
    assert chat(**kw).sampling_params().max_tokens == expected


def test_completion_max_tokens_defaults_to_16_like_openai() -> None:
    assert completion().sampling_params().max_tokens == 16
    assert completion(max_tokens=3).sampling_params().max_tokens == 3


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, None),
    ({"logprobs": False}, None),
    ({"logprobs": True}, 0),
    ({"logprobs": True, "top_logprobs": 5}, 5),
])
def test_chat_logprobs_mapping(kw: dict[str, Any], expected: int | None) -> None:
    assert chat(**kw).sampling_params().logprobs == expected


def test_top_logprobs_needs_logprobs() -> None:
    err = api_error(chat(top_logprobs=3).sampling_params)
    assert err.status == 400 and err.param == "top_logprobs"


def test_completion_logprobs_is_an_int() -> None:
    assert completion(logprobs=2).sampling_params().logprobs == 2
    assert completion().sampling_params().logprobs is None
    assert completion(echo=True).sampling_params().echo


def test_logit_bias_keys_become_token_ids() -> None:
    assert chat(logit_bias={"15": 5, "0": -100}).sampling_params().logit_bias == {15: 5.0, 0: -100.0}


@pytest.mark.parametrize("bias", [{"hello": 1.0}, {"1.5": 1.0}])
def test_logit_bias_non_integer_key_is_a_400(bias: dict[str, float]) -> None:
    err = api_error(chat(logit_bias=bias).sampling_params)
    assert err.status == 400 and err.param == "logit_bias"


@pytest.mark.parametrize(("kw", "param"), [
    ({"temperature": 3.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"n": 0}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_tokens"),
    ({"logit_bias": {"-3": 1.0}}, "logit_bias"),
    ({"logit_bias": {"3": 500.0}}, "logit_bias"),
    ({"logprobs": True, "top_logprobs": 21}, "logprobs"),
])
def test_value_errors_from_sampling_params_become_400(kw: dict[str, Any], param: str) -> None:
    err = api_error(chat(**kw).sampling_params)
    assert err.status == 400 and err.param == param


def test_include_usage() -> None:
    assert not chat().include_usage
    assert not chat(stream_options={"include_usage": False}).include_usage
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage


def test_set_fields_lists_only_non_default_values() -> None:
    req = chat(top_k=0, min_p=0.1, logit_bias={}, seed=1, user="u")
    assert req.set_fields() == {"model", "messages", "min_p", "seed", "user"}


def test_list_of_text_parts_is_joined() -> None:
    m = ChatMessage.model_validate({"role": "user", "content": [{"type": "text", "text": "a"},
                                                                 {"type": "text", "text": "b"}]})
    assert m.flat() == {"role": "user", "content": "ab"}


def test_non_text_part_is_a_400_on_messages() -> None:
    m = ChatMessage.model_validate({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]})
    err = api_error(m.flat)
    assert err.status == 400 and err.param == "messages"


def test_flat_keeps_extra_keys_and_empty_content() -> None:
    m = ChatMessage.model_validate({"role": "assistant", "content": None, "name": "bob"})
    assert m.flat() == {"role": "assistant", "content": "", "name": "bob"}


@pytest.mark.parametrize(("prompt", "expected"), [
    ("text", ["text"]),
    (["a", "b"], ["a", "b"]),
    ([1, 2, 3], [[1, 2, 3]]),
    ([[1, 2], [3]], [[1, 2], [3]]),
])
def test_completion_prompts_one_entry_per_prompt(prompt: Any, expected: list[Any]) -> None:
    assert completion(prompt=prompt).prompts() == expected


def test_detokenize_needs_int_tokens() -> None:
    assert parse(DetokenizeRequest, {"tokens": [1, 2]}).tokens == [1, 2]
    err = api_error(parse, DetokenizeRequest, {"tokens": ["x"]})
    assert err.status == 400 and err.param == "tokens"
