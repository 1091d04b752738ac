"""Chat messages -> prompt token ids such that message content can never become control tokens.

`<|im_end|>` typed by a user is text, not the end of a turn: the template's own text is tokenized
with special-token parsing, content without. Content with no special-token text (nearly all of it)
tokenizes the same either way, and then the whole prompt is tokenized in one piece, exactly as before,
so ordinary prompts keep their token boundaries.
"""

from __future__ import annotations

from typing import Any

from serve.api.chat_template import render, render_segments
from serve.backends.base import Backend, ModelInfo


async def chat_prompt(backend: Backend, info: ModelInfo, messages: list[dict[str, Any]],
                      add_generation_prompt: bool, extra: dict[str, Any] | None = None) -> tuple[str, list[int]]:
    """(rendered text, token ids). Only a backend that templates locally can tokenize content as
    plain text; for one that does not (its upstream templates) this is an estimate, as before.
    `extra`: more template variables (`tools`, see tool_prompt.py)."""
    extra = extra or {}
    if not info.templates_locally:
        text = render(info.chat_template, messages, info.bos_token, info.eos_token, add_generation_prompt, **extra)
        return text, await backend.tokenize(text, add_special=False)
    segments = render_segments(info.chat_template, messages, info.bos_token, info.eos_token,
                               add_generation_prompt, **extra)
    text = "".join(t for t, _ in segments)
    if not await _any_control_text(backend, [t for t, content in segments if content]):
        return text, await backend.tokenize(text, add_special=False)
    ids: list[int] = []
    for seg, content in segments:
        ids += await backend.tokenize(seg, add_special=False, parse_special=not content)
    return text, ids


async def _any_control_text(backend: Backend, contents: list[str]) -> bool:
    for seg in contents:
        parsed = await backend.tokenize(seg, add_special=False, parse_special=True)
        if parsed != await backend.tokenize(seg, add_special=False, parse_special=False):
            return True
    return False
