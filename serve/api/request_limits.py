"""Checks of one parsed request against the server's Limits, each a 400 or 413 naming the field.

Counts and token numbers are 400 (the request asks for more than this server grants, like the
context-length check it sits beside, so clients handle both the same way); byte sizes of embedded
documents (tools, schemas) are 413, the status of the body limit they refine.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from serve.api.errors import APIError, invalid
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, _Common
from serve.limits import Limits


def _over(value: int, limit: int, what: str, param: str) -> None:
    if value > limit:
        raise invalid(f"{what} is {value}, over this server's limit of {limit}", param, "limit_exceeded")


def _json_bytes(value: Any) -> int:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True, exclude_none=True)
    elif isinstance(value, list):
        value = [v.model_dump(mode="json", by_alias=True, exclude_none=True) for v in value]
    return len(json.dumps(value, separators=(",", ":")).encode())


def _check_bytes(value: Any, limit: int, param: str) -> None:
    if value is None:
        return
    size = _json_bytes(value)
    if size > limit:
        raise APIError(413, f"'{param}' is {size} bytes as JSON, over this server's limit of {limit} bytes",
                       param=param, code="limit_exceeded")


def _check_common(req: _Common, limits: Limits) -> None:
    _over(req.n, limits.max_n, "n", "n")
    stops = [req.stop] if isinstance(req.stop, str) else (req.stop or [])
    _over(len(stops), limits.max_stop, "the number of stop sequences", "stop")
    for s in stops:
        _over(len(s), limits.max_stop_chars, "the length of a stop sequence", "stop")
    _over(len(req.logit_bias or {}), limits.max_logit_bias, "the number of logit_bias entries", "logit_bias")


def check_chat(req: ChatCompletionRequest, limits: Limits) -> None:
    _over(len(req.messages), limits.max_messages, "the number of messages", "messages")
    _check_common(req, limits)
    _check_bytes(req.tools, limits.max_tools_bytes, "tools")
    _check_bytes(req.response_format, limits.max_schema_bytes, "response_format")


def check_completion(req: CompletionRequest, limits: Limits, n_prompts: int) -> None:
    _over(n_prompts, limits.max_prompts, "the number of prompts", "prompt")
    _check_common(req, limits)


def check_max_tokens(max_tokens: int | None, limits: Limits) -> None:
    """Checked after the context check (a max_tokens past the model's context is better answered
    with context_length_exceeded); named max_tokens for max_completion_tokens too, as SamplingParams does."""
    if max_tokens is not None:
        _over(max_tokens, limits.max_tokens, "max_tokens", "max_tokens")


def check_prompt_tokens(n_tokens: int, limits: Limits, param: str) -> None:
    _over(n_tokens, limits.max_prompt_tokens, "the prompt's length in tokens", param)

