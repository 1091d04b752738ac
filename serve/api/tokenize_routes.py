"""POST /tokenize and /detokenize (vLLM's shape): with the model's own tokenizer and chat template."""

from __future__ import annotations

from fastapi import Request

from serve.api.chat_prompt import chat_prompt
from serve.api.errors import invalid
from serve.api.protocol import DetokenizeRequest, TokenizeRequest, parse
from serve.api.state import AppState, read_json
from serve.api.tenancy import visible_models
from serve.api.token_ids import check_token_ids
from serve.router.replica import Replica
from serve.router.router import ModelGroup


def _group(state: AppState, model: str | None, request: Request) -> ModelGroup:
    if model:
        return state.resolve(model, request)
    return state.resolve(visible_models(request, state.router)[0], request)


async def tokenize(request: Request) -> dict:
    state: AppState = request.app.state.sluice
    req: TokenizeRequest = parse(TokenizeRequest, await read_json(request, state))
    if req.messages is None and req.prompt is None:
        raise invalid("give either 'prompt' or 'messages'", "prompt")
    group = _group(state, req.model, request)
    async with state.router.pinned(group):  # models on demand: loads it, and keeps it while we use it
        return await _tokenize(req, state.router.pick(group, ""))


async def _tokenize(req: TokenizeRequest, replica: Replica) -> dict:
    info = replica.backend.info
    if req.messages is not None:
        # The same path as a chat request, so /tokenize counts exactly what the engine will see.
        _, tokens = await chat_prompt(replica.backend, info, [m.flat() for m in req.messages],
                                      req.add_generation_prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": info.max_model_len}
    assert req.prompt is not None  # checked before the model was loaded
    tokens = await replica.backend.tokenize(req.prompt, add_special=req.add_special_tokens)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": info.max_model_len}


async def detokenize(request: Request) -> dict:
    state: AppState = request.app.state.sluice
    req: DetokenizeRequest = parse(DetokenizeRequest, await read_json(request, state))
    group = _group(state, req.model, request)
    async with state.router.pinned(group):
        replica = state.router.pick(group, "")
        check_token_ids(req.tokens, replica.backend.info.vocab_size, "tokens")
        return {"prompt": await replica.backend.detokenize(req.tokens)}
