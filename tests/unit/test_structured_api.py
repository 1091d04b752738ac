"""The request surface of structured outputs and tools: one constraint per request (400s naming the
field), tool plans and their grammar, tool-call output parsed and streamed per OpenAI, tools in the
prompt and in the history, per-backend support, and pass-through to an upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from serve.api.errors import APIError
from serve.api.openai_routes import check_supported
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, parse
from serve.api.protocol_tools import Tool
from serve.api.responses import ChoiceState, chat_response
from serve.api.tool_calls import ToolOutput, tool_events
from serve.api.tool_prompt import prepare, template_reads_tools
from serve.api.tool_spec import PREFIX, plan_tools
from serve.backends import native
from serve.backends.base import Delta, GenerateRequest, ModelInfo, Unsupported, Usage
from serve.backends.remote import RemoteBackend
from serve.config import ReplicaSpec
from serve.sampling_params import SamplingParams

MSG = {"role": "user", "content": "hi"}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}


def chat(**kw: Any) -> ChatCompletionRequest:
    return parse(ChatCompletionRequest, {"model": "m", "messages": [MSG], **kw})


def param_of(fn: Any) -> str | None:
    with pytest.raises(APIError) as info:
        fn()
    assert info.value.status == 400
    return info.value.param


# ---- one constraint per request ----------------------------------------------------------------------

@pytest.mark.parametrize(("kw", "kind"), [
    ({"response_format": {"type": "json_object"}}, "json"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}}}}, "json"),
    ({"structured_outputs": {"json": {"type": "integer"}}}, "json"),
    ({"structured_outputs": {"regex": "[0-9]+"}}, "regex"),
    ({"structured_outputs": {"choice": ["a", "b"]}}, "choice"),
    ({"structured_outputs": {"grammar": 'start: "x"'}}, "grammar"),
    ({"tools": [WEATHER], "tool_choice": "required"}, "grammar"),
])
def test_each_field_becomes_one_spec_in_sampling_params(kw: dict[str, Any], kind: str) -> None:
    req = chat(**kw)
    spec, _ = req.constraint()
    assert spec.kind == kind and req.sampling_params(spec).structured == spec


@pytest.mark.parametrize(("kw", "param"), [
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}}, "structured_outputs"),
    # tools that will call (required, named) plus a response format: two constraints
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": PERSON_FORMAT}, "response_format"),
    ({"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
      "response_format": PERSON_FORMAT}, "response_format"),
    # under auto only a JSON object schema can replace the free-text answer
    ({"tools": [WEATHER], "tool_choice": "auto", "structured_outputs": {"regex": "[a-z]+"}}, "structured_outputs"),
    ({"tools": [WEATHER], "structured_outputs": {"choice": ["a", "b"]}}, "structured_outputs"),
    ({"tools": [WEATHER], "tool_choice": "required", "structured_outputs": {"json": {"type": "object"}}},
     "structured_outputs"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
      "structured_outputs": {"regex": "[a-z]+"}}, "structured_outputs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"structured_outputs": {"json": "{not json"}}, "structured_outputs"),
])
def test_conflicts_and_bad_values_are_400s_naming_the_field(kw: dict[str, Any], param: str) -> None:
    assert param_of(lambda: chat(**kw).constraint()) == param


def test_tool_choice_none_leaves_the_response_format_as_the_one_constraint() -> None:
    """Tools offered with tool_choice "none" are rendered, never called: no tool grammar, so the
    response format constrains the answer alone."""
    req = chat(tools=[WEATHER], tool_choice="none", response_format=PERSON_FORMAT)
    assert req.tool_plan() is None
    spec, field = req.constraint()
    assert (spec.kind, json.loads(spec.value), field) == ("json", PERSON, "response_format")
    assert req.sampling_params(spec).structured == spec


def test_unknown_structured_outputs_keys_are_refused_not_ignored() -> None:
    assert param_of(lambda: chat(structured_outputs={"structural_tag": "x"})) == "structured_outputs"


def test_completions_take_structured_outputs() -> None:
    req = parse(CompletionRequest, {"model": "m", "prompt": "x", "structured_outputs": {"choice": ["a"]}})
    assert req.constraint()[0].kind == "choice"


def test_no_op_settings_set_no_field() -> None:
    req = chat(response_format={"type": "text"}, tool_choice="none", tools=[WEATHER], parallel_tool_calls=False)
    assert req.set_fields().isdisjoint(native.STRUCTURED_FIELDS) and req.constraint() is None


# ---- nothing silently ignored, per backend ----------------------------------------------------------------

FIELD_BODIES = {
    "response_format": {"response_format": {"type": "json_object"}},
    "structured_outputs": {"structured_outputs": {"regex": "a"}},
    "tools": {"tools": [WEATHER]},
    "tool_choice": {"tools": [WEATHER], "tool_choice": "required"},
}


@pytest.mark.parametrize("field", sorted(FIELD_BODIES))
def test_a_backend_that_declares_a_field_unsupported_refuses_it(field: str) -> None:
    """The 400 path every backend shares (ModelInfo.unsupported); the native engine itself now masks
    all of these (tests/e2e/test_structured_native.py)."""
    req = chat(**FIELD_BODIES[field])
    with pytest.raises(Unsupported) as e:
        check_supported(req, ModelInfo(max_model_len=8, unsupported=native.STRUCTURED_FIELDS), "some")
    assert e.value.param in (field, "tool_choice", "tools") and e.value.status == 400
    check_supported(req, ModelInfo(max_model_len=8), "native")


@pytest.mark.parametrize("field", sorted(FIELD_BODIES))
def test_remote_and_vllm_accept_each_field(field: str) -> None:
    backend = RemoteBackend(ReplicaSpec(backend="remote", model="up", url="http://upstream/v1"))
    check_supported(chat(**FIELD_BODIES[field]), backend.info, "remote")


# ---- pass-through to an upstream -------------------------------------------------------------------------

UPSTREAM_SSE = (
    'data: {"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"call_1",'
    '"type":"function","function":{"name":"get_weather","arguments":""}}]}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\":"}}]}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\\"Oslo\\"}"}}]}}]}\n\n'
    'data: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\n'
    'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}\n\ndata: [DONE]\n\n')


def test_remote_forwards_the_fields_unchanged_and_returns_upstream_tool_calls() -> None:
    bodies: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, text=UPSTREAM_SSE, headers={"content-type": "text/event-stream"})

    backend = RemoteBackend(ReplicaSpec(backend="remote", model="up", url="http://upstream/v1"))
    backend.client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    fields = {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": False,
              "structured_outputs": {"regex": "a", "x-extra": 1}}
    req = GenerateRequest("r", SamplingParams(max_tokens=5), messages=(MSG,), upstream_fields=fields)

    async def run() -> list[Any]:
        return [ev async for ev in backend.generate(req)]

    events = asyncio.run(run())
    assert {k: bodies[0][k] for k in fields} == fields
    state = ChoiceState()
    for ev in events:
        if isinstance(ev, Delta):
            state.add(ev)
    msg = chat_response("id", 0, "m", {0: state}, None, False)["choices"][0]
    assert msg["finish_reason"] == "tool_calls"
    assert msg["message"]["tool_calls"] == [{"id": "call_1", "type": "function",
                                             "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
    assert msg["message"]["content"] is None


def test_an_upstream_400_keeps_its_status() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": {"message": "bad schema", "param": "response_format"}})

    backend = RemoteBackend(ReplicaSpec(backend="remote", model="up", url="http://upstream/v1"))
    backend.client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    req = GenerateRequest("r", SamplingParams(max_tokens=5), messages=(MSG,),
                          upstream_fields={"response_format": {"type": "json_object"}})

    async def run() -> None:
        async for _ in backend.generate(req):
            pass

    from serve.backends.base import BackendError

    with pytest.raises(BackendError) as e:
        asyncio.run(run())
    assert (e.value.status, e.value.param) == (400, "response_format")


# ---- tool plans, grammar, output --------------------------------------------------------------------------

def _tools(*raw: dict[str, Any]) -> list[Tool]:
    return [Tool.model_validate(t) for t in raw]


def test_plans() -> None:
    assert plan_tools(None, None, None) is None
    assert plan_tools(_tools(WEATHER), "none", None) is None
    auto = plan_tools(_tools(WEATHER, TIME), None, None)
    assert (auto.mode, auto.parallel, auto.callable) == ("auto", True, ("get_weather", "get_time"))
    named = plan_tools(_tools(WEATHER, TIME), parse(ChatCompletionRequest, {
        "model": "m", "messages": [MSG], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
    }).tool_choice, False)
    assert (named.mode, named.callable, named.parallel) == ("named", ("get_time",), False)


def _stream(plan: Any, text: str, chunk: int) -> tuple[str, list[dict[str, Any]]]:
    out = ToolOutput(plan)
    content, deltas = "", []
    for i in range(0, len(text), chunk):
        c, d = out.feed(text[i:i + chunk])
        content += c
        deltas += d
    return content + out.finish(), deltas


CALLS = [{"name": "get_weather", "arguments": {"city": "Paris {\"x\"}"}}, {"name": "get_time", "arguments": {}}]


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_streamed_tool_calls_reassemble_exactly(chunk: int) -> None:
    plan = plan_tools(_tools(WEATHER, TIME), "required", True)
    text = PREFIX + json.dumps(CALLS, separators=(",", ":"))
    content, deltas = _stream(plan, text, chunk)
    assert content == ""
    state = ChoiceState()
    state.add(Delta(0, tool_calls=tuple(deltas)))
    calls = state.message()["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [c["arguments"] for c in CALLS]
    firsts = [d for d in deltas if "id" in d]
    assert [d["index"] for d in firsts] == [0, 1] and all(d["id"].startswith("call_") for d in firsts)
    # the header of each call comes before any of its argument fragments
    assert deltas.index(firsts[1]) > max(i for i, d in enumerate(deltas) if d["index"] == 0)


def test_single_call_form_and_text_answers() -> None:
    single = plan_tools(_tools(WEATHER), "auto", False)
    _, deltas = _stream(single, PREFIX + json.dumps(CALLS[0], separators=(",", ":")), 2)
    assert deltas[0]["function"]["name"] == "get_weather"
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == CALLS[0]["arguments"]
    assert _stream(single, "Hello <tool_call> there", 2) == ("Hello <tool_call> there", [])
    assert _stream(single, "<tool", 2) == ("<tool", [])  # ended as a prefix of the marker: content


def test_tool_events_rewrite_local_output_and_pass_upstream_output() -> None:
    plan = plan_tools(_tools(WEATHER), "required", False)
    text = PREFIX + '{"name":"get_weather","arguments":{"city":"Rome"}}'

    async def source() -> Any:
        for i in range(0, len(text), 5):
            yield Delta(0, text=text[i:i + 5])
        yield Delta(0, finish_reason="stop")
        yield Usage(1, 2)

    async def run(local: bool) -> list[Any]:
        return [ev async for ev in tool_events(source(), plan, lambda: local)]

    local = asyncio.run(run(True))
    assert all(ev.text == "" for ev in local if isinstance(ev, Delta))
    assert local[-2].finish_reason == "tool_calls" and isinstance(local[-1], Usage)
    upstream = asyncio.run(run(False))
    assert "".join(ev.text for ev in upstream if isinstance(ev, Delta)) == text


@pytest.mark.parametrize("kw", [
    {"tool_choice": "auto", "response_format": PERSON_FORMAT},
    {"response_format": PERSON_FORMAT},  # tool_choice absent: auto
    {"tool_choice": "auto", "structured_outputs": {"json": PERSON}},
])
def test_auto_tools_with_a_json_format_answer_in_the_format_or_call(kw: dict[str, Any]) -> None:
    """As OpenAI allows (agents send tools + response_format): one grammar, the answer's JSON or a call."""
    from serve.models.loader import load_tokenizer
    from serve.structured.matcher import GrammarFactory
    from tests.unit.model_fixtures import gguf_path

    spec, field = chat(tools=[WEATHER], **kw).constraint()
    assert field == "tools" and spec.kind == "grammar"
    tok = load_tokenizer(gguf_path())
    factory = GrammarFactory.for_hf(tok)

    def accepts(text: str) -> bool:
        m = factory.matcher(spec)
        return all(m.accept(t) for t in tok.encode(text, add_special_tokens=False)) and m.is_finished()

    assert accepts('{"name":"Ada"}')
    assert accepts(PREFIX + '[{"name":"get_weather","arguments":{"city":"Rome"}}]')
    assert not accepts('{"age":3}')  # the format's required field
    assert not accepts("Hi there")  # free text is no longer an answer
    json_object = chat(tools=[WEATHER], response_format={"type": "json_object"}).constraint()
    assert json_object is not None and json_object[1] == "tools"


def test_tool_grammar_forces_the_format() -> None:
    """The plan's grammar on the real HF vocabulary: required forces the prefix; auto allows text but
    never text that starts with the prefix; arguments follow the parameters schema."""
    from serve.models.loader import load_tokenizer
    from serve.structured.matcher import GrammarFactory
    from tests.unit.model_fixtures import gguf_path

    tok = load_tokenizer(gguf_path())
    factory = GrammarFactory.for_hf(tok)

    def accepts(plan: Any, text: str) -> bool:
        """Every token accepted, and the grammar complete (calls) or open-ended (text)."""
        m = factory.matcher(plan.spec())
        ok = all(m.accept(t) for t in tok.encode(text, add_special_tokens=False))
        return ok and (m.is_finished() or not text.startswith(PREFIX))

    required = plan_tools(_tools(WEATHER), "required", False)
    assert accepts(required, PREFIX + '{"name":"get_weather","arguments":{"city":"Rome"}}')
    assert not accepts(required, PREFIX + '{"name":"get_weather","arguments":{}}')  # city is required
    assert not accepts(required, "Hi there")
    auto = plan_tools(_tools(WEATHER), "auto", True)
    assert accepts(auto, "Hi there")
    assert accepts(auto, PREFIX + '[{"name":"get_weather","arguments":{"city":"Rome"}}]')
    assert not accepts(auto, PREFIX + "not a call")


# ---- prompting ----------------------------------------------------------------------------------------------

SMOL = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
HERMES = "{% if tools %}TOOLS:{{ tools | tojson }}{% endif %}" + SMOL


def test_templates_without_tools_get_our_system_turn_and_history_as_text() -> None:
    plan = plan_tools(_tools(WEATHER), "required", False)
    history = [MSG, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12C"}]
    assert not template_reads_tools(SMOL)
    msgs, extra = prepare(history, plan, SMOL)
    assert extra == {} and msgs[0]["role"] == "system" and '"name": "get_weather"' in msgs[0]["content"]
    assert "You must call a function." in msgs[0]["content"]
    assert msgs[2]["content"] == PREFIX + '{"name":"get_weather","arguments":{"city":"Oslo"}}'
    assert msgs[3] == history[2]


def test_templates_with_tools_get_them_and_parsed_arguments() -> None:
    plan = plan_tools(_tools(WEATHER), "auto", True)
    history = [{"role": "system", "content": "S"}, MSG, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]}]
    msgs, extra = prepare(history, plan, HERMES)
    assert extra["tools"][0]["function"]["name"] == "get_weather" and msgs[0] == history[0]
    assert msgs[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
