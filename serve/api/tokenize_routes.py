"""POST /tokenize and /detokenize (vLLM's shape): with the model's own tokenizer and chat template."""

from __future__ import annotations

from fastapi import Request

from serve.api.chat_prompt import chat_prompt
from serve.api.errors import invalid
from serve.api.protocol import DetokenizeRequest, TokenizeRequest, parse
from serve.api.state import AppState, read_json
from serve.api.tenancy import visible_models
from serve.api.token_ids import check_token_ids
from serve.router.router import ModelGroup


def _group(state: AppState, model: str | None, request: Request) -> ModelGroup:
    if model:
        return state.resolve(model, request)
    return state.resolve(visible_models(request, state.router)[0], request)


async def tokenize(request: Request) -> dict:
    state: AppState = request.app.state.sluice
    req: TokenizeRequest = parse(TokenizeRequest, await read_json(request, state))
    group = _group(state, req.model, request)
    replica = state.router.pick(group, "")
    info = replica.backend.info
    if req.messages is not None:
        # The same path as a chat request, so /tokenize counts exactly what the engine will see.
        _, tokens = await chat_prompt(replica.backend, info, [m.flat() for m in req.messages],
                                      req.add_generation_prompt)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": info.max_model_len}
    if req.prompt is not None:
        text, add_special = req.prompt, req.add_special_tokens
    else:
        raise invalid("give either 'prompt' or 'messages'", "prompt")
    tokens = await replica.backend.tokenize(text, add_special=add_special)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": info.max_model_len}


async def detokenize(request: Request) -> dict:
    state: AppState = request.app.state.sluice
    req: DetokenizeRequest = parse(DetokenizeRequest, await read_json(request, state))
    replica = state.router.pick(_group(state, req.model, request), "")
    check_token_ids(req.tokens, replica.backend.info.vocab_size, "tokens")
    return {"prompt": await replica.backend.detokenize(req.tokens)}
