"""Structured outputs and tool calling against a real `sluice serve --backend llamacpp`, through the
official `openai` client."""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.slow

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 10}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}}, "required": ["name"],
          "additionalProperties": False}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int = Field(ge=0, le=50_000_000)
    continent: Literal["Europe", "Asia", "Africa", "America", "Oceania"]


def test_parse_with_a_pydantic_model(client: openai.OpenAI, model: str) -> None:
    done = client.chat.completions.parse(model=model, messages=[{"role": "user", "content": "Describe Paris."}],
                                         response_format=City, temperature=0, max_tokens=120)
    choice = done.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)


@pytest.mark.parametrize("fmt", [{"type": "json_object"}, {"type": "text"}])
def test_json_object_and_text(client: openai.OpenAI, model: str, fmt: dict) -> None:
    done = client.chat.completions.create(model=model, messages=ASK, response_format=fmt,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=60)
    if fmt["type"] == "json_object" and done.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(done.choices[0].message.content or ""), dict)


def test_structured_outputs_extra_body(client: openai.OpenAI, model: str) -> None:
    done = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Pick one."}],
                                          extra_body={"structured_outputs": {"choice": ["left", "right"]}},
                                          temperature=0.8, max_tokens=10, n=3)
    assert all(c.message.content in ("left", "right") for c in done.choices)


def test_two_constraints_are_a_400_naming_the_field(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=ASK, response_format={"type": "json_object"},
                                       extra_body={"structured_outputs": {"regex": "a+"}})
    assert e.value.body["param"] == "structured_outputs"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=ASK, extra_body={"structured_outputs": {"regex": "[a-"}})
    assert e.value.body["param"] == "structured_outputs"  # type: ignore[index]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_call_round_trip(client: openai.OpenAI, model: str, choice: object) -> None:
    done = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                          tool_choice=choice, parallel_tool_calls=False,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=80)
    c = done.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    (call,) = c.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    if isinstance(choice, dict):
        assert call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        assert set(args) == {"city", "unit"} and args["unit"] in ("C", "F")
    # the follow-up turn: the call and its result in the history
    follow = client.chat.completions.create(model=model, temperature=0, max_tokens=30, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                            messages=[*ASK, c.message.model_dump(exclude_none=True),  # type: ignore[list-item]
                                                      {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_streamed_tool_calls_reassemble(client: openai.OpenAI, model: str, choice: object) -> None:
    stream = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                            tool_choice=choice, temperature=0.8, seed=3,  # type: ignore[arg-type]
                                            max_tokens=120, stream=True)
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or ():
                if d.index not in calls:  # the first delta of a call names it
                    assert d.id and d.type == "function" and d.function and d.function.name
                    calls[d.index] = {"name": d.function.name, "arguments": d.function.arguments or ""}
                else:
                    assert d.id is None and d.function and d.function.name is None
                    calls[d.index]["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and calls
    for call in calls.values():
        args = json.loads(call["arguments"])
        assert isinstance(args, dict)
        if isinstance(choice, dict):
            assert call["name"] == "get_time" and "zone" in args


def test_auto_answers_text_or_a_call(client: openai.OpenAI, model: str) -> None:
    done = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                          tools=[WEATHER], temperature=0, max_tokens=40)
    c = done.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls" and json.loads(c.message.tool_calls[0].function.arguments)
    else:
        assert c.message.content and not c.message.content.startswith("<tool_call>")


@pytest.mark.parametrize(("extra", "field"), [
    ({"tool_choice": "required", "response_format": PERSON_FORMAT}, "response_format"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "response_format": PERSON_FORMAT},
     "response_format"),
    ({"tool_choice": "required", "extra_body": {"structured_outputs": {"json": PERSON}}}, "structured_outputs"),
])
def test_tools_that_may_call_and_an_output_format_are_a_400_naming_the_field(
        client: openai.OpenAI, model: str, extra: dict, field: str) -> None:
    """Tool calls that must happen are a constraint of their own (the call grammar): a second one is
    refused before any decoding."""
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                       max_tokens=20, **extra)
    body = e.value.body
    assert body["param"] == field and "one output constraint" in body["message"], body  # type: ignore[index]


def test_auto_with_a_response_format_answers_in_the_format_or_calls(client: openai.OpenAI, model: str) -> None:
    """tools + response_format under auto (what agent SDKs send): a valid call, or content in the format."""
    done = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER, TIME],  # type: ignore[list-item]
                                          tool_choice="auto", response_format=PERSON_FORMAT,  # type: ignore[arg-type]
                                          temperature=0, max_tokens=80)
    c = done.choices[0]
    if c.message.tool_calls:
        assert c.finish_reason == "tool_calls"
        assert all(isinstance(json.loads(t.function.arguments), dict) for t in c.message.tool_calls)
    else:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content or ""), PERSON)


def test_tool_choice_none_with_a_response_format_answers_in_the_format(client: openai.OpenAI, model: str) -> None:
    done = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Name a person."}],
                                          tools=[WEATHER], tool_choice="none",  # type: ignore[list-item]
                                          response_format=PERSON_FORMAT, temperature=0, max_tokens=60)  # type: ignore[arg-type]
    c = done.choices[0]
    assert not c.message.tool_calls and c.finish_reason == "stop"  # the schema's bounds end it well before 60
    jsonschema.validate(json.loads(c.message.content or ""), PERSON)
