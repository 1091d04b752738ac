"""What /openapi.json says about the endpoints that read raw JSON.

The routes parse their bodies themselves (`read_json` + `parse`, so that size, time and error shape
are ours), which hides the bodies from FastAPI. Here the same pydantic request models are published
as the request bodies, with the OpenAI error envelope for every failure status and the shapes of
the success answers, so that clients and fuzzers (schemathesis in tests/chaos) see the real contract.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

_REF = "#/components/schemas/{model}"


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class UsageDoc(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class ChatMessageOut(BaseModel):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageDoc | None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageDoc | None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]  # empty in the final usage chunk
    usage: UsageDoc | None = None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]  # empty in the final usage chunk
    usage: UsageDoc | None = None


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    prompt: str


_ERRORS = {
    400: "invalid request: a field fails validation or a server limit (`param` names the field)",
    401: "missing or wrong API key",
    404: "unknown model",
    408: "the body was not received in time, or the request ran past the server's time limit",
    413: "the body, or an embedded document (tools, response_format), is over the size limit",
    429: "rate limited; see Retry-After",
    503: "overloaded or no healthy replica; see Retry-After",
}
STREAM_MODELS: list[type[BaseModel]] = [ChatCompletionChunk, CompletionChunk, ErrorResponse]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _sse(chunk: type[BaseModel]) -> dict[str, Any]:
    """One SSE event (OpenAPI 3.1: the schema of a text/event-stream describes each event): a JSON
    chunk, an error envelope after a failure mid-stream, or the final `[DONE]`."""
    payload = {"type": "string", "contentMediaType": "application/json",
               "contentSchema": {"anyOf": [_ref(chunk), _ref(ErrorResponse)]}}
    event = {"type": "object", "required": ["data"], "properties": {"data": {"type": "string"}},
             "if": {"properties": {"data": {"const": "[DONE]"}}},
             "else": {"properties": {"data": payload}}}
    return {"text/event-stream": {"schema": event}}


def route_doc(request: type[BaseModel], response: type[BaseModel],
              chunk: type[BaseModel] | None = None) -> dict[str, Any]:
    """Keyword arguments for `app.post(...)`: the request body, the success answer (and its stream
    events, for routes that stream), the error envelope."""
    ok: dict[str, Any] = {"model": response, "description": "the answer" + (" (or an SSE stream)" if chunk else "")}
    if chunk is not None:
        ok["content"] = _sse(chunk)
    responses: dict[int | str, dict[str, Any]] = {200: ok}
    responses.update({code: {"model": ErrorResponse, "description": d} for code, d in _ERRORS.items()})
    body = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    return {"responses": responses, "openapi_extra": {"requestBody": body}}


def install(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Serve an OpenAPI document whose components also hold `models` (request bodies, stream chunks)
    and the models they use."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=_REF)
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
