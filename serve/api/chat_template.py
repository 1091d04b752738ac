"""Chat templates rendered in Jinja's sandbox: a template comes from a model file, an untrusted input."""

from __future__ import annotations

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
