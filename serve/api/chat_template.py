"""Chat templates rendered in Jinja's sandbox: a template comes from a model file, an untrusted input."""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used when a model ships no template: ChatML, what most small instruct models are trained on.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ChatTemplateError(ValueError):
    pass


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox answers an unsafe attribute with an Undefined that prints as '', so
    `{{ f.__globals__ }}` would render silently; a template probing the sandbox must fail loudly."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")


@lru_cache(maxsize=16)
def _compile(source: str):  # noqa: ANN202 - jinja2 Template
    env = _StrictSandbox(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    return env.from_string(source)


def _tojson(value: Any, indent: int | None = None) -> str:
    import json

    return json.dumps(value, ensure_ascii=False, indent=indent)


def render(template: str | None, messages: list[dict[str, Any]], bos_token: str = "", eos_token: str = "",
           add_generation_prompt: bool = True, **extra: Any) -> str:
    """messages -> prompt text. Raises ChatTemplateError (a 400) for bad messages or a broken template."""
    try:
        tpl = _compile(template or DEFAULT_TEMPLATE)
        return tpl.render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                          add_generation_prompt=add_generation_prompt, **extra)
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, AttributeError) as e:
        # SecurityError (sandbox violation) is a TemplateError subclass.
        raise ChatTemplateError(f"chat template failed to render: {e}") from e


Segment = tuple[str, bool]  # (text, is message content)


def render_segments(template: str | None, messages: list[dict[str, Any]], bos_token: str = "",
                    eos_token: str = "", add_generation_prompt: bool = True, **extra: Any) -> list[Segment]:
    """Render, and say which stretches of the prompt are message content (user text that must never
    be read as control tokens) and which are the template's own text.

    Content is wrapped in markers holding a random nonce (a client cannot forge them). A template may
    transform content (`| trim`), so the markers first go around the whole content, then around its
    stripped core; the first placement whose marker-free text equals the plain rendering is used."""
    plain = render(template, messages, bos_token, eos_token, add_generation_prompt, **extra)
    nonce = secrets.token_hex(8)
    left, right = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
    segments: list[Segment] = [(plain, False)]
    for inner in (False, True):
        marked = [_mark(m, left, right, inner) for m in messages]
        segments = _split(render(template, marked, bos_token, eos_token, add_generation_prompt, **extra),
                          left, right)
        if "".join(t for t, _ in segments) == plain:
            break
    return segments


def _mark(message: dict[str, Any], left: str, right: str, inner: bool) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, str) or not content:
        return message
    if not inner:
        return {**message, "content": f"{left}{content}{right}"}
    core = content.strip()
    head = content[:len(content) - len(content.lstrip())]
    tail = content[len(content.rstrip()):] if core else ""
    return {**message, "content": f"{head}{left}{core}{right}{tail}"}


def _split(rendered: str, left: str, right: str) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for m in re.finditer(re.escape(left) + "(.*?)" + re.escape(right), rendered, flags=re.DOTALL):
        if m.start() > pos:
            out.append((rendered[pos:m.start()], False))
        if m.group(1):
            out.append((m.group(1), True))
        pos = m.end()
    if pos < len(rendered):
        out.append((rendered[pos:], False))
    # A marker the template cut in half (e.g. content sliced) must not leak into the prompt.
    return [(t.replace(left, "").replace(right, ""), c) for t, c in out]
